"""`oomguard check`: can this host/container run oomguard, fully, degraded, or not at all?

`assess()` (cgroup/verdict.py) is a pure function from a `Discovery` to items and a verdict, so
every host shape is unit-tested without the host; `run` and `exec` degrade by the same function.
The command only observes (`discover()`), assesses and prints.

Exit status: 0 ready; 1 degraded (oomguard can only set oom_score_adj and watch usage, e.g.
cgroupfs read-only or no memory controller); 2 cannot run at all.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import click

from oomguard.cgroup.verdict import Assessment, CheckLevel, assess

if TYPE_CHECKING:
    from collections.abc import Sequence

    from oomguard.cgroup.discover import Discovery
    from oomguard.cgroup.verdict import Item


def render(a: Assessment, d: Discovery) -> str:
    from oomguard.cli._output import render_table

    rows: list[list[str]] = []
    shown: set[str] = set()
    for i in a.items:
        rows.append(
            [i.level.value.upper() if i.level is not CheckLevel.OK else "ok", i.key, i.detail]
        )
        if i.fix and i.level is not CheckLevel.OK:
            # One root cause (e.g. a hybrid boot) fails several items; say its fix once.
            rows.append(["", "", "fix: as above" if i.fix in shown else f"fix: {i.fix}"])
            shown.add(i.fix)
    head = f"oomguard check: kernel {d.kernel_release}, {d.mode.value} cgroups"
    table = render_table(["STATUS", "CHECK", "DETAIL"], rows)
    return f"{head}\n{table}\nverdict: {a.summary} (exit {int(a.exit_code)})"


def to_dict(a: Assessment, d: Discovery) -> dict[str, object]:
    from oomguard.cli._output import jsonable

    facts = jsonable(d)
    # The full pid list can be long and is not a readiness fact; its size is.
    procs = d.other_procs
    facts["other_procs"] = None if procs is None else len(procs)
    return {
        "verdict": a.verdict.value,
        "exit_code": int(a.exit_code),
        "summary": a.summary,
        "items": [jsonable(i) for i in a.items],
        "facts": facts,
    }


def with_others(a: Assessment, others: Sequence[Item]) -> Assessment:
    """`a` with the items about other OOM killers on the host (cli/killers.py) after its own:
    they warn, never change the verdict."""
    return dataclasses.replace(a, items=(*a.items, *others))


def _killer_items(config: str | None) -> list[Item]:
    """The other OOM killers running here; with a config, earlyoom's suggested flags name the
    primary's and the sidecars' process names."""
    from oomguard.cli import killers

    primary: str | None = None
    sidecars: list[str] = []
    if config is not None:
        from oomguard.config.load import load_config

        cfg = load_config(config)
        primary = killers.comm_of(cfg.primary.command)
        sidecars = [killers.comm_of(cfg.service[n].command) for n in cfg.sidecar_names()]
    return killers.items(killers.scan(), primary_comm=primary, sidecar_comms=sidecars)


@click.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the report as a JSON object.")
@click.option(
    "--config",
    "config",
    metavar="CONFIG",
    help="A config file: advice about other OOM killers then names its services' processes.",
)
def command(as_json: bool, config: str | None) -> int:
    """Report whether this host/container can run oomguard, and how to fix what is missing.

    Exit 0: ready. 1: degraded (oom_score_adj only + usage watching). 2: cannot run.
    """
    from oomguard.cgroup.discover import discover

    others = _killer_items(config)
    d = discover()
    a = with_others(assess(d), others)
    if as_json:
        from oomguard.cli._output import dumps

        click.echo(dumps(to_dict(a, d)))
    else:
        click.echo(render(a, d))
    return int(a.exit_code)
