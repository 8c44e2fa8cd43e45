"""`oomguard status`: a read-only view of a slice tree, merged with the supervisor's state.json.

It works for any cgroup path (`--root`), with or without a running supervisor, and it must start
fast: it is what people run in a loop while a database is in trouble. So it imports only what it
needs: no pydantic, no config, no runtime (a test checks sys.modules). state.json is read here
with plain json, tolerating missing keys, rather than through the supervisor's writer module.

Root, in order: `--root`; the `root` the running supervisor wrote into state.json;
`<our own cgroup>/oomguard` (the config-less default tree). A supervisor running degraded (no
writable cgroup v2 memory controller, e.g. a default container) has no tree: its state.json says
so, and status then shows the services alone, without needing a cgroup2 mount at all.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

from oomguard.errors import OomguardError, UsageError
from oomguard.observe.statefile import StateFileError, read_state, writer_running
from oomguard.paths import STATE_DIR

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from oomguard.cgroup.path import CgroupPath
    from oomguard.observe.snapshot import SliceSnapshot, TreeSnapshot

#: The tree name under our own cgroup when no config names a root (see cgroup/spec.py).
DEFAULT_TREE = "oomguard"
#: How many pids a table row lists before "+N".
MAX_PIDS_SHOWN = 3


class StatusError(OomguardError):
    """status could not find or read what it was asked to show."""


def read_state_problem(state_dir: str) -> tuple[dict[str, Any] | None, str | None]:
    """(document, problem) from the one state.json reader (observe/statefile.py). A missing
    file is (None, None): no supervisor has run here. A file that can't be used is (None, why):
    status still shows the cgroup tree. A newer format version is not caught: it stops status
    (exit 2), whose figures could otherwise be misread."""
    try:
        return read_state(state_dir), None
    except StateFileError as err:
        return None, err.message


def degraded_reason(doc: dict[str, Any] | None) -> str | None:
    """Why the supervisor that wrote `doc` has no slice tree, or None if it has one (or if no
    supervisor wrote a state file). An empty root also means "no tree": that is what a
    degraded supervisor writes there."""
    if not doc:
        return None
    reason = doc.get("degraded")
    if isinstance(reason, str) and reason:
        return reason
    if doc.get("root") == "":
        return "no slice tree"
    return None


def services_list(doc: dict[str, Any] | None, live: bool) -> list[dict[str, Any]]:
    """Every service of `doc`, in the supervisor's start order, each with its "name". With
    `live` (the writer runs in our pid namespace, so its pids are ours to read too), each gets
    the main process's current "rss_bytes" from /proc, None if it has none."""
    out: list[dict[str, Any]] = []
    if not doc:
        return out
    for name, svc in (doc.get("services") or {}).items():
        if not isinstance(svc, dict):
            continue
        entry = {"name": str(name), **svc}
        if live:
            entry["rss_bytes"] = _rss(svc.get("pid"))
        out.append(entry)
    return out


def _live(doc: dict[str, Any] | None) -> bool:
    return doc is not None and writer_running(doc) is True


def _rss(pid: object) -> int | None:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    from oomguard.observe.snapshot import proc_info

    info = proc_info(pid)
    return None if info is None else info.rss_bytes


def services_by_slice(doc: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """slice path -> service entry (with its "name"), for entries that name a slice."""
    out: dict[str, dict[str, Any]] = {}
    if not doc:
        return out
    for name, svc in (doc.get("services") or {}).items():
        if isinstance(svc, dict) and isinstance(svc.get("slice"), str):
            out[svc["slice"].rstrip("/") or "/"] = {"name": name, **svc}
    return out


# ----------------------------------------------------------------------------- formatting


def _size(v: int | None, present: bool = True) -> str:
    from oomguard.units import format_size

    return "-" if not present else format_size(v)


def _events(ev: dict[str, int] | None) -> str:
    from oomguard.observe.snapshot import EVENT_KEYS

    return "-" if ev is None else "/".join(str(ev.get(k, 0)) for k in EVENT_KEYS)


def _psi(s: SliceSnapshot) -> str:
    if s.pressure is None:
        return "-"
    full = s.pressure.full
    return f"{s.pressure.some.avg10:.2f}/{'-' if full is None else f'{full.avg10:.2f}'}"


def _pids(s: SliceSnapshot) -> str:
    shown = [f"{p.pid} {p.comm}({p.oom_score_adj:+d})" for p in s.procs[:MAX_PIDS_SHOWN]]
    more = len(s.procs) - MAX_PIDS_SHOWN
    return ", ".join(shown) + (f", +{more}" if more > 0 else "") if shown else "-"


def _service_cells(svc: dict[str, Any] | None) -> tuple[str, str]:
    if svc is None:
        return "-", "-"
    state = str(svc.get("state") or "?")
    restarts = svc.get("restarts")
    return f"{svc['name']}:{state}", "-" if restarts is None else str(restarts)


def _last_exit(last: object) -> str:
    """state.json's last_exit as a short cell: "exit 1", "SIGTERM", "SIGKILL (oom)"."""
    if not isinstance(last, dict):
        return "-"
    sig, code = last.get("signal"), last.get("code")
    if isinstance(sig, int) and not isinstance(sig, bool):
        import signal  # only when a service died of one

        try:
            text = signal.Signals(sig).name
        except ValueError:
            text = f"signal {sig}"
    elif isinstance(code, int) and not isinstance(code, bool):
        text = f"exit {code}"
    else:
        text = "?"
    return text + (" (oom)" if last.get("oom_killed") is True else "")


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _services_table(services: list[dict[str, Any]]) -> str:
    from oomguard.cli._output import render_table

    live = any("rss_bytes" in svc for svc in services)
    rows = []
    for svc in services:
        row = [
            svc["name"],
            _cell(svc.get("role")),
            str(svc.get("state") or "?"),
            _cell(svc.get("pid")),
            _cell(svc.get("restarts")),
            _cell(svc.get("evictions")),
            _last_exit(svc.get("last_exit")),
            _cell(svc.get("oom_score_adj")),
        ]
        if live:
            rss = svc.get("rss_bytes")
            row.append(_size(rss, rss is not None))
        rows.append(row)
    headers = ["SERVICE", "ROLE", "STATE", "PID", "RST", "EVICT", "LAST EXIT", "OOM_ADJ"]
    return render_table([*headers, "RSS"] if live else headers, rows)


class View(NamedTuple):
    """Everything one `status` run shows."""

    #: None when there is no tree to show (a degraded supervisor, no --root).
    snap: TreeSnapshot | None
    mount: str | None
    #: How the root was chosen: "--root", "state.json" or "default"; None without a tree.
    root_from: str | None
    state_file: str
    state: dict[str, Any] | None
    state_problem: str | None


def render(view: View, now: float) -> str:
    """The tree table (if any), then the services; `now` (wall clock) only ages the state
    file's updated_at."""
    services = services_list(view.state, _live(view.state))
    lines = []
    if view.snap is None:
        lines.append(f"no slice tree: oomguard runs degraded ({degraded_reason(view.state)})")
        lines.append(
            "  services run in its own cgroup with their oom_score_adj: no limits, no pressure "
            "response (`oomguard check` says what is missing)"
        )
        lines.append(_state_line(view, now))
    else:
        lines.extend(_render_tree(view, now))
    if services:
        lines.append(_services_table(services))
    elif view.state is not None:
        lines.append("services: none in state.json")
    return "\n".join(lines)


def _render_tree(view: View, now: float) -> list[str]:
    from oomguard.cli._output import render_table

    snap = view.snap
    assert snap is not None
    by_slice = services_by_slice(view.state)
    rows: list[list[str]] = []
    for s in snap.slices:
        svc_cell, restarts = _service_cells(by_slice.get(str(s.path)))
        rows.append(
            [
                "  " * s.depth + (str(s.path) if s.depth == 0 else s.name),
                svc_cell,
                restarts,
                _size(s.current, s.current is not None),
                _size(s.peak, s.peak is not None),
                _size(s.high, s.memory),
                _size(s.max, s.memory),
                _psi(s),
                _events(s.events_local),
                _events(s.events),
                _pids(s),
            ]
        )
    head = f"tree {snap.root} (from {view.root_from}) under {view.mount}"
    lines = [head, _state_line(view, now)]
    lines.append(
        render_table(
            [
                "SLICE",
                "SERVICE",
                "RST",
                "CURRENT",
                "PEAK",
                "HIGH",
                "MAX",
                "PSI10 some/full",
                "EVENTS local",
                "EVENTS tree",
                "PIDS (oom_score_adj)",
            ],
            rows,
        )
    )
    lines.append("events: low/high/max/oom/oom_kill/oom_group_kill (tree = incl. descendants)")
    in_tree = {str(s.path) for s in snap.slices}
    stray = [svc for path, svc in by_slice.items() if path not in in_tree]
    if stray:
        lines.append(
            "services whose slice is not in this tree: "
            + ", ".join(f"{v['name']}:{v.get('state') or '?'} ({v['slice']})" for v in stray)
        )
    return lines


def _state_line(view: View, now: float) -> str:
    state = view.state
    if view.state_problem:
        return f"state: {view.state_problem}"
    if state is None:
        return f"state: no {view.state_file} (no supervisor has run with this state dir)"
    parts = [f"state: {view.state_file}"]
    pid = state.get("pid")
    alive = writer_running(state)
    if alive is not None:
        parts.append(f"supervisor pid {pid} {'running' if alive else 'NOT running (stale)'}")
    updated = state.get("updated_at")
    if isinstance(updated, int | float) and not isinstance(updated, bool):
        parts.append(f"updated {max(0.0, now - updated):.0f}s ago")
    return ", ".join(parts)


def to_dict(view: View) -> dict[str, Any]:
    from oomguard.observe.snapshot import slice_to_dict

    state = view.state
    by_slice = services_by_slice(state)
    snap = view.snap
    slices = []
    for s in snap.slices if snap is not None else ():
        d = slice_to_dict(s)
        d["service"] = by_slice.get(str(s.path))
        slices.append(d)
    in_tree = {str(s.path) for s in snap.slices} if snap is not None else set()
    live = _live(state)
    return {
        "mount": view.mount,
        "root": str(snap.root) if snap is not None else None,
        "root_from": view.root_from,
        "degraded": degraded_reason(state),
        "state": {
            "file": view.state_file,
            "present": state is not None,
            "problem": view.state_problem,
            "supervisor_pid": state.get("pid") if state else None,
            "supervisor_running": writer_running(state) if state else None,
            "updated_at": state.get("updated_at") if state else None,
        },
        "slices": slices,
        "services": services_list(state, live),
        "services_not_in_tree": (
            [v for p, v in by_slice.items() if p not in in_tree] if snap is not None else []
        ),
    }


# ----------------------------------------------------------------------------- the command


def resolve_root(
    root_opt: str | None, mount: str, state: dict[str, Any] | None
) -> tuple[CgroupPath, str]:
    """(root, how it was chosen). Raises StatusError naming what was tried and how to fix it."""
    from oomguard.cgroup.path import CgroupPath

    if root_opt:
        from oomguard.cgroup.path import CgroupPathError

        try:
            return CgroupPath.parse(root_opt), "--root"
        except CgroupPathError as err:
            # A bad option value is a usage error (exit 2), not a runtime failure.
            raise UsageError(f"--root: {err.message}", err.hint) from None
    if state and isinstance(state.get("root"), str):
        return CgroupPath.parse(state["root"]), "state.json"
    from oomguard.cgroup.discover import own_cgroup

    default = own_cgroup().child(DEFAULT_TREE)
    if not os.path.isdir(os.path.join(mount, *default.parts)):
        raise StatusError(
            f"no oomguard tree at {default} (looked in {os.path.join(mount, *default.parts)}), "
            f"and no state.json names one",
            "point at the tree with --root PATH (the [oomguard] cgroup of your config, e.g. "
            "--root /oomguard), or --state-dir DIR where the supervisor writes state.json",
        )
    return default, "default"


class Opt(NamedTuple):
    """One option of `oomguard status`: `parse_args` and the help text are built from
    `OPTIONS`."""

    flag: str
    dest: str
    takes_value: bool
    help: str
    metavar: str | None = None
    envvar: str | None = None
    default: str | None = None
    hidden: bool = False


OPTIONS = (
    Opt("--json", "as_json", False, "Print full data as JSON."),
    Opt(
        "--root",
        "root_opt",
        True,
        "Cgroup path of the tree under the cgroup2 mount, e.g. /oomguard "
        "(default: the running supervisor's, else <own cgroup>/oomguard).",
        metavar="PATH",
    ),
    Opt(
        "--state-dir",
        "state_dir",
        True,
        "Where the supervisor writes state.json.",
        metavar="DIR",
        envvar="OOMGUARD_STATE_DIR",
        default=STATE_DIR,
    ),
    Opt(
        "--mount",
        "mount",
        True,
        "cgroup2 mount to read instead of the discovered one (tests, benchmarks).",
        metavar="DIR",
        envvar="OOMGUARD_CGROUP_MOUNT",
        hidden=True,
    ),
)
HELP_FLAGS = ("-h", "--help")

HELP = (
    "Show the slice tree (memory, events, PSI, pids) and every service's state, pid, restarts "
    "and last exit (read-only)."
)


def run(
    *,
    as_json: bool,
    root_opt: str | None,
    state_dir: str,
    mount: str | None,
    echo: Callable[[str], object],
) -> int:
    """The whole command, minus argument parsing. Raises OomguardError for the CLI to report."""
    state_file = os.path.join(state_dir, "state.json")
    state, problem = read_state_problem(state_dir)
    if root_opt is None and degraded_reason(state) is not None:
        # No tree to show, so no cgroup2 mount needed: a degraded supervisor may have none.
        view = View(None, None, None, state_file, state, problem)
    else:
        view = _tree_view(root_opt, mount, state_file, state, problem)
    if as_json:
        import json

        echo(json.dumps(to_dict(view), indent=2))
    else:
        import time

        echo(render(view, time.time()))
    return 0


def _tree_view(
    root_opt: str | None,
    mount: str | None,
    state_file: str,
    state: dict[str, Any] | None,
    problem: str | None,
) -> View:
    if mount is None:
        from oomguard.cgroup.discover import find_cgroup2_mount

        found = find_cgroup2_mount()
        if found is None:
            raise UsageError(
                "no cgroup2 mount found in /proc/self/mountinfo",
                "this host has no cgroup v2 (`oomguard check` says how to enable it); for the "
                "services of an oomguard running degraded here, pass --state-dir DIR (its "
                "[oomguard] state_dir)",
            )
        mount = str(found)
    elif not os.path.isdir(mount):
        raise UsageError(f"--mount {mount} is not a directory", "pass the cgroup2 mount point")
    root, root_from = resolve_root(root_opt, mount, state)

    from oomguard.cgroup.fs import CgroupFS
    from oomguard.observe.snapshot import take_snapshot

    fs = CgroupFS(mount)
    if not fs.exists(root):
        raise StatusError(
            f"cgroup {root} does not exist under {mount}",
            "check the path (it is relative to the cgroup2 mount, e.g. /oomguard), or start "
            "the supervisor first",
        )
    return View(take_snapshot(fs, root), mount, root_from, state_file, state, problem)


# ------------------------------------------------------------------------ the command line
#
# `status` parses its own arguments: it is run in loops while a database is in trouble, and
# click alone costs it more start-up than the 15 ms over a bare interpreter it may take
# (README, "Measured figures"). Every other command is a click command (cli/app.py); `oomguard
# status` reaches `main` before click is imported (cli/main.py), and through the click group it
# is a pass-through that hands its arguments here (cli/app.py), so there is one parser.


def parse_args(argv: Sequence[str]) -> dict[str, Any] | None:
    """The option values of `oomguard status ARGV`, or None for --help. The forms are click's:
    ``--opt VALUE``, ``--opt=VALUE``, flags; an environment default that is empty counts as
    unset. Raises UsageError (exit 2) naming the argument that is wrong."""
    by_flag = {o.flag: o for o in OPTIONS}
    values = _defaults()
    i = 0
    while i < len(argv):
        if argv[i] in HELP_FLAGS:
            return None
        name, eq, value = argv[i].partition("=")
        opt = by_flag.get(name)
        if opt is None:
            raise _unknown(argv[i], name)
        if not opt.takes_value:
            if eq:
                raise UsageError(f"{name} takes no value (got {argv[i]!r})", f"write {name} alone")
            values[opt.dest] = True
        elif eq:
            values[opt.dest] = value
        elif i + 1 < len(argv):
            i += 1
            values[opt.dest] = argv[i]
        else:
            raise UsageError(f"{name} needs a value", f"write {name} {opt.metavar}")
        i += 1
    return values


def _defaults() -> dict[str, Any]:
    values: dict[str, Any] = {}
    for o in OPTIONS:
        env = os.environ.get(o.envvar) if o.envvar else None
        values[o.dest] = False if not o.takes_value else (env or o.default)
    return values


def _unknown(arg: str, name: str) -> UsageError:
    usage = "`oomguard status --help` lists its options"
    if not arg.startswith("-"):
        return UsageError(f"oomguard status takes no argument {arg!r}, only options", usage)
    import difflib  # only on a mistake

    flags = [o.flag for o in OPTIONS if not o.hidden]
    close = difflib.get_close_matches(name, flags, n=1)
    hint = f"did you mean {close[0]}? {usage}" if close else usage
    return UsageError(f"oomguard status has no option {name}", hint)


def help_text() -> str:
    """What `oomguard status --help` prints (click's layout, built from `OPTIONS`)."""
    import textwrap  # only for --help

    rows = [(o.flag + (f" {o.metavar}" if o.metavar else ""), _help_of(o)) for o in OPTIONS]
    rows = [row for row, o in zip(rows, OPTIONS, strict=True) if not o.hidden]
    rows.append((", ".join(HELP_FLAGS), "Show this message and exit."))
    width = max(len(left) for left, _ in rows) + 2
    lines = ["Usage: oomguard status [OPTIONS]", ""]
    lines += textwrap.wrap(HELP, 78, initial_indent="  ", subsequent_indent="  ")
    lines += ["", "Options:"]
    for left, text in rows:
        wrapped = textwrap.wrap(text, 78 - width - 2) or [""]
        lines.append(f"  {left:<{width}}{wrapped[0]}")
        lines += [" " * (width + 2) + more for more in wrapped[1:]]
    return "\n".join(lines)


def _help_of(o: Opt) -> str:
    extra = [f"env var: {o.envvar}"] if o.envvar else []
    extra += [f"default: {o.default}"] if o.default is not None else []
    return o.help + (f"  [{'; '.join(extra)}]" if extra else "")


def execute(argv: Sequence[str], echo: Callable[[str], object]) -> int:
    """`oomguard status ARGV`, printing through `echo`. Raises OomguardError for the caller to
    report."""
    values = parse_args(argv)
    if values is None:
        echo(help_text())
        return 0
    return run(echo=echo, **values)


def main(argv: Sequence[str]) -> int:
    """`oomguard status ARGV` as a program: the exit status, every error reported the way every
    command reports it (cli/_output.guarded). Imports no click."""
    from oomguard.cli._output import guarded

    def echo(text: str) -> None:
        sys.stdout.write(text + "\n")

    def command() -> int:
        rc = execute(argv, echo)
        sys.stdout.flush()
        return rc

    return guarded(command)
