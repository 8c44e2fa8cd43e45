"""`oomguard exec [options] -- CMD ARGS...`: the wrapper, with no config file.

The options build the same Config a TOML file would (one CLI -> config path); problems are
reported against the option that caused them, not an internal field path.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import click

from oomguard.cli._supervise import CGROUP, INIT, LOG_FORMAT, STATE_DIR, overrides, supervise
from oomguard.errors import ConfigError, ExitCode, Problem, UsageError

_NAME_RE = re.compile(r"[^a-z0-9_-]+")


def _service_name(argv0: str) -> str:
    """`/usr/lib/postgresql/15/bin/postgres` -> `postgres`: a valid, readable slice name."""
    base = _NAME_RE.sub("-", os.path.basename(argv0).lower()).strip("-_") or "main"
    if not base[0].isalnum():
        base = "x" + base
    return base[:63]


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise UsageError(
                f"{option} {value!r}: expected NAME=VALUE", hint=f"e.g. {option} exporter=..."
            )
        out[name] = rest
    return out


@click.command(
    "exec", context_settings={"ignore_unknown_options": False, "allow_interspersed_args": False}
)
@click.option("--name", default=None, help="Service name of CMD (default: CMD's basename).")
@click.option("--memory-max", default=None, help="memory.max of CMD's slice, e.g. 512M.")
@click.option("--memory-high", default=None, help="memory.high of CMD's slice (throttling).")
@click.option(
    "--oom-score-adj", type=int, default=None, help="oom_score_adj of CMD (default -999)."
)
@click.option("--tree-max", default=None, help="memory.max of the whole tree (shared budget).")
@click.option(
    "--sidecar",
    "sidecars",
    multiple=True,
    metavar="NAME=COMMAND",
    help="Run a sidecar beside CMD (repeatable); restarted if it dies.",
)
@click.option(
    "--sidecar-memory-max",
    "sidecar_max",
    multiple=True,
    metavar="NAME=SIZE",
    help="memory.max of a sidecar's slice (repeatable).",
)
@click.option(
    "--sidecars-max",
    default=None,
    help="A combined budget (memory.max) for all sidecars, in a 'sidecars' slice.",
)
@INIT
@LOG_FORMAT
@STATE_DIR
@CGROUP
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def command(
    name: str | None,
    memory_max: str | None,
    memory_high: str | None,
    oom_score_adj: int | None,
    tree_max: str | None,
    sidecars: tuple[str, ...],
    sidecar_max: tuple[str, ...],
    sidecars_max: str | None,
    init: bool,
    log_format: str | None,
    state_dir: str | None,
    cgroup_root: str | None,
    cmd: tuple[str, ...],
) -> int:
    """Run CMD as the primary in its own memory-limited slice; exit with its status.

    If the OOM killer kills CMD, print one line saying so and exit 137.
    """
    from oomguard.config.model import Config

    primary = name or _service_name(cmd[0])
    per_run = state_dir is None
    if state_dir is None:
        state_dir = str(per_run_state_dir())
    data: dict[str, Any] = overrides(
        state_dir=state_dir, cgroup_root=cgroup_root, log_format=log_format
    )
    data.setdefault("oomguard", {})
    if tree_max is not None:
        data["oomguard"]["memory_max"] = tree_max
    svc: dict[str, Any] = {"command": list(cmd), "role": "primary", "restart": "never"}
    if memory_max is not None:
        svc["memory_max"] = memory_max
    if memory_high is not None:
        svc["memory_high"] = memory_high
    if oom_score_adj is not None:
        svc["oom_score_adj"] = oom_score_adj
    services: dict[str, Any] = {primary: svc}
    limits = _pairs(sidecar_max, "--sidecar-memory-max")
    for sname, scmd in _pairs(sidecars, "--sidecar").items():
        side: dict[str, Any] = {"command": shlex.split(scmd), "restart": "always"}
        if sname in limits:
            side["memory_max"] = limits.pop(sname)
        if sidecars_max is not None:
            side["slice"] = "sidecars"
        services[sname] = side
    if limits:
        raise UsageError(
            f"--sidecar-memory-max names {', '.join(sorted(limits))}, which no --sidecar defines",
            hint="add --sidecar NAME=COMMAND for it, or fix the name",
        )
    data["service"] = services
    if sidecars_max is not None:
        data["slice"] = {"sidecars": {"memory_max": sidecars_max}}
    try:
        config = Config.from_mapping(data, source="oomguard exec")
    except ConfigError as err:
        raise ConfigError(
            [_as_option(p, primary) for p in err.problems], source=err.source
        ) from None

    try:
        outcome = supervise(config, init=init)
    finally:
        if per_run:
            _remove_state_dir(config.oomguard.state_dir)
    exit_ = outcome.primary_exit
    if exit_ is not None and exit_.oom_killed:
        for line in outcome.oom_lines:
            if line.startswith(primary + " "):
                click.echo(f"oomguard: {line}", err=True)
                break
        return int(ExitCode.OOM_KILLED)
    return outcome.status


def per_run_state_dir() -> Path:
    """exec's own state dir for this run, so parallel runs never share one: under /run/oomguard
    for root, under $XDG_RUNTIME_DIR/oomguard (the user's own tmpfs, mode 0700) otherwise."""
    from oomguard.errors import StateDirError
    from oomguard.observe.statedir import DEFAULT_ROOT_BASE

    if os.geteuid() == 0:
        base = DEFAULT_ROOT_BASE
    else:
        runtime = os.environ.get("XDG_RUNTIME_DIR", "")
        if not runtime.startswith("/"):
            raise StateDirError(
                "oomguard exec needs a state directory: $XDG_RUNTIME_DIR is not set for this "
                "non-root user",
                "pass --state-dir DIR (a directory of your own), or log in with a session "
                "that sets $XDG_RUNTIME_DIR",
            )
        base = Path(runtime) / "oomguard"
    return base / f"exec-{os.getpid()}"


def _remove_state_dir(path: Path) -> None:
    """Remove exec's per-run state dir at exit (nothing else may be left in it)."""
    from oomguard.errors import OomguardError
    from oomguard.observe.statedir import StateDir

    try:
        sd = StateDir.open(path, create=False)
    except OomguardError:
        return
    sd.remove()


_OPTION_OF = {
    "memory_max": "--memory-max",
    "memory_high": "--memory-high",
    "oom_score_adj": "--oom-score-adj",
}


def _as_option(p: Problem, primary: str) -> Problem:
    """Name the command-line option, not the internal field, in exec's errors."""
    parts = p.path.split(".")
    if len(parts) == 3 and parts[0] == "service" and parts[1] == primary:
        opt = _OPTION_OF.get(parts[2])
        if opt:
            return Problem(opt, p.message)
    if len(parts) == 3 and parts[0] == "service" and parts[2] == "memory_max":
        return Problem(f"--sidecar-memory-max {parts[1]}=", p.message)
    if p.path == "oomguard.memory_max":
        return Problem("--tree-max", p.message)
    if p.path == "slice.sidecars.memory_max":
        return Problem("--sidecars-max", p.message)
    if p.path == "oomguard.cgroup":
        return Problem("--cgroup", p.message)
    return p
