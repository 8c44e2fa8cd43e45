"""`oomguard check`: can this host/container run oomguard, fully, degraded, or not at all?

`assess()` (cgroup/verdict.py) is a pure function from a `Discovery` to items and a verdict, so
every host shape is unit-tested without the host; `run` and `exec` degrade by the same function.
The command only observes (`discover()`), assesses and prints.

Exit status: 0 ready; 1 degraded (oomguard can only set oom_score_adj and watch usage, e.g.
cgroupfs read-only or no memory controller); 2 cannot run at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from oomguard.cgroup.verdict import Assessment, CheckLevel, assess

if TYPE_CHECKING:
    from oomguard.cgroup.discover import Discovery


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


@click.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the report as a JSON object.")
def command(as_json: bool) -> int:
    """Report whether this host/container can run oomguard, and how to fix what is missing.

    Exit 0: ready. 1: degraded (oom_score_adj only + usage watching). 2: cannot run.
    """
    from oomguard.cgroup.discover import discover

    d = discover()
    a = assess(d)
    if as_json:
        from oomguard.cli._output import dumps

        click.echo(dumps(to_dict(a, d)))
    else:
        click.echo(render(a, d))
    return int(a.exit_code)
