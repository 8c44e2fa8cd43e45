"""`oomguard exec [options] -- CMD ARGS...`: the wrapper, with no config file.

The options build the same Config a TOML file would (one CLI -> config path); problems are
reported against the option that caused them, not an internal field path.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import click

from oomguard.cli._options import CGROUP, INIT, LOG_FORMAT, STATE_DIR
from oomguard.cli._supervise import degrade_reason, overrides
from oomguard.cli.daemon import Job, hand_off
from oomguard.errors import ConfigError, Problem, UsageError

if TYPE_CHECKING:
    from oomguard.config.model import Config

_NAME_RE = re.compile(r"[^a-z0-9_-]+")


def _service_name(argv0: str) -> str:
    """`/usr/lib/postgresql/15/bin/postgres` -> `postgres`: a valid, readable slice name."""
    base = _NAME_RE.sub("-", os.path.basename(argv0).lower()).strip("-_") or "main"
    if not base[0].isalnum():
        base = "x" + base
    return base[:63]


_INT_RE = re.compile(r"-?[0-9]+")


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    """``NAME=VALUE`` options, each name once."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise UsageError(
                f"{option} {value!r}: expected NAME=VALUE", hint=f"e.g. {option} exporter=..."
            )
        _check_utf8(f"{option} {name!r}=", name)
        if name in out:
            raise UsageError(
                f"{option} {name}= is given twice", hint=f"give each {option} name once"
            )
        out[name] = rest
    return out


def _check_utf8(option: str, text: str) -> None:
    # Bytes that are not UTF-8 reach Python as lone surrogates; no name may hold them (a name
    # becomes a cgroup directory and a config key), and pydantic cannot even render them.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(
            f"{option} is not valid UTF-8",
            hint="use a name of a-z, 0-9, _ and -",
        ) from None


def _split_command(option: str, name: str, text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as err:  # an unbalanced quote, or a trailing backslash
        raise UsageError(
            f"{option} {name}=: {text!r} cannot be split like a shell would ({err})",
            hint="balance the quotes inside the sidecar's command",
        ) from None


def _oom_score_adj(text: str | None) -> int | None:
    # Parsed here, not by click.INT: int() also reads other scripts' digits ("٣" is 3).
    if text is None:
        return None
    if not _INT_RE.fullmatch(text.strip()) or len(text.strip()) > 6:
        raise UsageError(
            f"--oom-score-adj {text!r} is not a whole number",
            hint="give -999..1000 in ASCII digits, e.g. --oom-score-adj -500",
        )
    return int(text.strip())


class ExecArgs(NamedTuple):
    """What `exec`'s options ask for, before they become a Config."""

    name: str | None
    memory_max: str | None
    memory_high: str | None
    oom_score_adj: str | None
    tree_max: str | None
    sidecars: tuple[str, ...]
    sidecar_max: tuple[str, ...]
    sidecars_max: str | None
    log_format: str | None
    state_dir: str | None
    cgroup_root: str | None
    cmd: tuple[str, ...]

    def limit_options(self) -> list[str]:
        """The options that ask for a memory limit, as the user typed them."""
        given = [
            ("--memory-max", self.memory_max),
            ("--memory-high", self.memory_high),
            ("--tree-max", self.tree_max),
            ("--sidecars-max", self.sidecars_max),
        ]
        out = [f"{opt} {value}" for opt, value in given if value is not None]
        out += [f"--sidecar-memory-max {pair}" for pair in self.sidecar_max]
        return out


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # the directory was removed under us: the launcher's default applies
        return None


def build_config(args: ExecArgs) -> tuple[Config, str]:
    """The Config `exec` runs, and the primary's name. Raises UsageError or ConfigError (both
    exit 2). Pure apart from reading the current directory: nothing is spawned or touched."""
    from oomguard.config.model import Config

    if args.name is not None:
        _check_utf8("--name", args.name)
    primary = args.name or _service_name(args.cmd[0])
    data: dict[str, Any] = overrides(
        state_dir=args.state_dir, cgroup_root=args.cgroup_root, log_format=args.log_format
    )
    data.setdefault("oomguard", {})
    if args.tree_max is not None:
        data["oomguard"]["memory_max"] = args.tree_max
    # `exec` wraps a command typed in a shell: like `nice` or `systemd-run --same-dir -E`, it
    # keeps that shell's environment and directory (a config file's services start clean).
    cwd = _cwd()
    shell: dict[str, Any] = {"inherit_env": True, **({"cwd": cwd} if cwd else {})}
    svc: dict[str, Any] = {"command": list(args.cmd), "role": "primary", "restart": "never"}
    svc.update(shell)
    if args.memory_max is not None:
        svc["memory_max"] = args.memory_max
    if args.memory_high is not None:
        svc["memory_high"] = args.memory_high
    adj = _oom_score_adj(args.oom_score_adj)
    if adj is not None:
        svc["oom_score_adj"] = adj
    data["service"] = {primary: svc, **_sidecars(args, primary, shell)}
    if args.sidecars_max is not None:
        data["slice"] = {"sidecars": {"memory_max": args.sidecars_max}}
    try:
        config = Config.from_mapping(data, source="oomguard exec")
    except ConfigError as err:
        raise ConfigError(
            [_as_option(p, primary) for p in err.problems], source=err.source
        ) from None
    return config, primary


def _sidecars(args: ExecArgs, primary: str, shell: dict[str, Any]) -> dict[str, Any]:
    """The services of `--sidecar NAME=COMMAND`, with their `--sidecar-memory-max`."""
    services: dict[str, Any] = {}
    limits = _pairs(args.sidecar_max, "--sidecar-memory-max")
    for sname, scmd in _pairs(args.sidecars, "--sidecar").items():
        if sname == primary:
            raise UsageError(
                f"--sidecar {sname}= has the primary's name {sname!r}",
                hint="name the sidecar differently, or the command with --name",
            )
        side: dict[str, Any] = {
            "command": _split_command("--sidecar", sname, scmd),
            "restart": "always",
            **shell,
        }
        if sname in limits:
            side["memory_max"] = limits.pop(sname)
        if args.sidecars_max is not None:
            side["slice"] = "sidecars"
        services[sname] = side
    if limits:
        raise UsageError(
            f"--sidecar-memory-max names {', '.join(sorted(limits))}, which no --sidecar defines",
            hint="add --sidecar NAME=COMMAND for it, or fix the name",
        )
    return services


def refuse_unenforced(asked: list[str], reason: str | None, allow_degraded: bool) -> None:
    """Fail closed: a limit that was asked for but cannot be enforced is an error (exit 2),
    unless the user said a degraded run is acceptable. Running the command unlimited would
    silently give them something other than what they typed."""
    if reason is None or not asked or allow_degraded:
        return
    raise UsageError(
        f"cannot enforce {', '.join(asked)}: {reason}",
        hint="run `oomguard check` for what this host needs; or pass --allow-degraded to run "
        "without the limit (oom_score_adj and OOM detection only)",
    )


@click.command(
    "exec", context_settings={"ignore_unknown_options": False, "allow_interspersed_args": False}
)
@click.option("--name", default=None, help="Service name of CMD (default: CMD's basename).")
@click.option("--memory-max", default=None, help="memory.max of CMD's slice, e.g. 512M.")
@click.option("--memory-high", default=None, help="memory.high of CMD's slice (throttling).")
@click.option(
    "--oom-score-adj", default=None, metavar="N", help="oom_score_adj of CMD (default -999)."
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
@click.option(
    "--allow-degraded",
    is_flag=True,
    default=False,
    help="Run even if the memory limits asked for cannot be enforced on this host "
    "(default: refuse with exit status 2).",
)
@INIT
@LOG_FORMAT
@STATE_DIR
@CGROUP
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def command(allow_degraded: bool, init: bool, **options: Any) -> int:
    """Run CMD as the primary in its own memory-limited slice; exit with its status.

    If the OOM killer kills CMD, print one line saying so and exit 137. If a memory limit was
    asked for and this host cannot enforce it, exit 2 (unless --allow-degraded).
    """
    from oomguard.config.compile import compile_plan

    # Every other option is a field of ExecArgs, by the same name.
    per_run = options["state_dir"] is None
    if per_run:
        options["state_dir"] = str(per_run_state_dir())
    args = ExecArgs(**options)
    config, _primary = build_config(args)
    plan = compile_plan(config)
    refuse_unenforced(args.limit_options(), degrade_reason(plan), allow_degraded)
    return hand_off(Job(kind="exec", plan=plan, init=init, remove_state_dir=per_run))


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


_OPTION_OF = {
    "memory_max": "--memory-max",
    "memory_high": "--memory-high",
    "oom_score_adj": "--oom-score-adj",
}


#: Paths outside [service.*] and the option each comes from.
_OPTION_AT = {
    "oomguard.memory_max": "--tree-max",
    "slice.sidecars.memory_max": "--sidecars-max",
    "oomguard.cgroup": "--cgroup",
}


def _as_option(p: Problem, primary: str) -> Problem:
    """Name the command-line option, not the internal field, in exec's errors."""
    parts = p.path.split(".")
    opt = _OPTION_AT.get(p.path)
    if len(parts) >= 2 and parts[0] == "service":
        opt = _service_option(parts[1], parts[2:], primary)
    return Problem(opt, p.message) if opt else p


def _service_option(name: str, rest: list[str], primary: str) -> str | None:
    """The option behind ``service.<name>.<rest>``."""
    field = rest[0] if len(rest) == 1 else None
    if name == primary and field in _OPTION_OF:
        return _OPTION_OF[field]
    if field == "memory_max":
        return f"--sidecar-memory-max {name}="
    if name != primary:
        return f"--sidecar {name}="
    if not rest:
        return "--name"
    if rest[0].startswith("command"):
        return "CMD"
    return None
