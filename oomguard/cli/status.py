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

import errno
import os
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

from oomguard.errors import OomguardError, UsageError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import click

    from oomguard.cgroup.path import CgroupPath
    from oomguard.observe.snapshot import SliceSnapshot, TreeSnapshot

DEFAULT_STATE_DIR = "/run/oomguard"
#: The tree name under our own cgroup when no config names a root (see cgroup/spec.py).
DEFAULT_TREE = "oomguard"
#: How many pids a table row lists before "+N".
MAX_PIDS_SHOWN = 3


class StatusError(OomguardError):
    """status could not find or read what it was asked to show."""


def read_state_file(path: str) -> tuple[dict[str, Any] | None, str | None]:
    """(document, problem). A missing file is (None, None): no supervisor has run here. A file
    that can't be used is (None, why): status still shows the cgroup tree."""
    try:
        # O_NOFOLLOW: status may run as root, and a planted link must not make it read (and
        # quote) whatever the link names. A state.json is a few KiB; 16 MiB caps a bogus one.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with open(fd, encoding="utf-8", errors="replace") as f:
            text = f.read(16 << 20)
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    except OSError as err:
        if err.errno == errno.ELOOP:
            return None, f"{path} is a symlink; oomguard never reads state through one"
        return None, f"cannot read {path}: {err.strerror or err}"
    import json  # only when there is a state file: a cold-start cost otherwise saved

    try:
        doc = json.loads(text)
    except ValueError as err:
        return None, f"{path} is not valid JSON ({err})"
    if not isinstance(doc, dict):
        return None, f"{path} does not hold a JSON object"
    if not isinstance(doc.get("services", {}), dict):
        return None, f"{path}: 'services' is not an object"
    return doc, None


def _start_ticks(pid: int) -> int | None:
    # Field 22 of /proc/<pid>/stat; comm (field 2) may contain spaces and ")", so split after
    # the last ")". Same rule as the writer uses for "pid_start".
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def writer_running(doc: dict[str, Any]) -> bool | None:
    """Is the supervisor that wrote `doc` alive? None if the document has no usable pid.
    pid_start (when present) guards against pid reuse after a crash."""
    pid = doc.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    ticks = _start_ticks(pid)
    start = doc.get("pid_start")
    if isinstance(start, int) and not isinstance(start, bool):
        return ticks == start
    return ticks is not None


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
    """One option of `oomguard status`. The click command and the click-free fast parser are
    both built from `OPTIONS`, so they cannot drift apart."""

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
        default=DEFAULT_STATE_DIR,
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
    state, problem = read_state_file(state_file)
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


# ------------------------------------------------------------------- click-free fast path


def parse_fast(argv: Sequence[str]) -> dict[str, Any] | None:
    """Parse `status` arguments without click, or None for anything but the plain forms
    (``--opt VALUE``, ``--opt=VALUE``, flags): --help, unknown options and mistakes go to
    click, which explains them. Environment defaults follow click's rule (empty = unset)."""
    by_flag = {o.flag: o for o in OPTIONS}
    values: dict[str, Any] = {}
    for o in OPTIONS:
        env = os.environ.get(o.envvar) if o.envvar else None
        values[o.dest] = False if not o.takes_value else (env or o.default)
    i = 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        opt = by_flag.get(name)
        if opt is None:
            return None
        if not opt.takes_value:
            if eq:
                return None
            values[opt.dest] = True
        elif eq:
            values[opt.dest] = value
        elif i + 1 < len(argv):
            i += 1
            values[opt.dest] = argv[i]
        else:
            return None
        i += 1
    return values


def fast_main(argv: Sequence[str]) -> int | None:
    """`oomguard status ARGS` without importing click: ~10-20 ms less cold start (see
    tools/bench.py). Returns the exit status, or None if click must handle `argv` (help,
    errors). For an entry point that dispatches ``status`` here before importing click."""
    values = parse_fast(argv)
    if values is None:
        return None

    def echo(text: str) -> None:
        sys.stdout.write(text + "\n")

    try:
        rc = run(echo=echo, **values)
        sys.stdout.flush()
    except OomguardError as err:
        # Same two lines as oomguard.cli.main.report(), which needs click.
        sys.stderr.write(f"oomguard: error: {err.message}\n")
        if err.hint:
            sys.stderr.write(f"oomguard: hint: {err.hint}\n")
        return int(err.exit_code)
    except BrokenPipeError:
        # `oomguard status | head`: the reader left; not an error of ours.
        return 0
    return rc


# ----------------------------------------------------------------------- the click command


def _build_command() -> click.Command:
    import click

    def callback(**values: Any) -> int:
        return run(echo=click.echo, **values)

    params: list[click.Parameter] = [
        click.Option(
            [o.flag, o.dest],
            is_flag=not o.takes_value,
            help=o.help,
            metavar=o.metavar,
            envvar=o.envvar,
            default=o.default if o.takes_value else False,
            show_default=o.default is not None,
            hidden=o.hidden,
        )
        for o in OPTIONS
    ]
    return click.Command("status", callback=callback, params=params, help=HELP)


def __getattr__(name: str) -> click.Command:
    # PEP 562: `command` (what oomguard.cli.main's LazyGroup loads) is built on first access, so
    # importing this module for fast_main() does not import click.
    if name == "command":
        cmd = _build_command()
        globals()["command"] = cmd
        return cmd
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
