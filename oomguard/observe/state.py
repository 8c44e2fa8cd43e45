"""``<state_dir>/state.json``: the running supervisor's latest view, for ``oomguard status``.

The supervisor rewrites the whole file after every change (a start, an exit, a restart). Format
(version 1)::

    {"version": 1, "pid": 4242, "pid_start": 912345, "updated_at": 1795732262.4,
     "root": "/oomguard", "mode": "enforce", "degraded": null, "event_log_dropped": 0,
     "instance_sha256": "9f86d0...",
     "services": {"db": {"state": "RUNNING", "pid": 123, "pid_start": 912399, "pgid": 123,
                         "restarts": 0, "evictions": 0,
                         "slice": "/oomguard/db", "role": "primary", "criticality": null,
                         "oom_score_adj": -999,
                         "last_exit": {"code": null, "signal": 9, "oom_killed": true},
                         "started_at": 1795732200.0, "downtime_total": 0.0}}}

``degraded`` is why there is no slice tree (e.g. "the cgroup filesystem is read-only"), or null.
A degraded supervisor writes ``"root": ""`` and ``"slice": null`` for every service (they all run
in its own cgroup); ``oomguard status`` then shows the services alone.

``pid_start`` is the writer's start time in clock ticks since boot (field 22 of
/proc/<pid>/stat). With it, "is the writer alive" survives pid reuse: after a crash, the stale
file's pid may belong to an unrelated process by the time someone runs ``oomguard status``.

Atomicity without fsync: the new content goes to a temp file in the same directory, then
os.replace() renames it over state.json. rename(2) is atomic within a filesystem, so a reader
sees the old file or the new one, never a mix or a prefix. We do not fsync: the state dir is
normally /run (tmpfs, where fsync is a no-op), and on a disk the file is worthless after a
reboot anyway (its pid is dead), so paying milliseconds per state change for durability buys
nothing. The one cost: after a power loss on a disk filesystem the file may be empty or old;
`read_state` reports that as an error naming the file rather than trusting it.

``version`` is the major format version; what a reader does with it is in observe/statefile.py,
the one reader.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NotRequired, TypedDict

from oomguard import proc
from oomguard.errors import OomguardError
from oomguard.observe import statefile
from oomguard.observe.statedir import StateDir, check_path

if TYPE_CHECKING:
    from collections.abc import Mapping

    from oomguard.cgroup.path import CgroupPath

STATE_FILE = statefile.STATE_FILE
STATE_VERSION = statefile.STATE_VERSION
#: The tree ownership ledger (fallback marker, see cgroup/tree.py).
TREE_FILE = "tree.json"


class LastExit(TypedDict):
    code: int | None
    signal: int | None
    oom_killed: bool


class ServiceState(TypedDict, total=False):
    """One entry of ``services``. All keys are written by the supervisor; readers use ``.get``
    because an older writer may lack newer keys (``evictions`` was added after ``restarts``)."""

    state: str
    pid: int | None
    #: The main process's start time (clock ticks since boot): with `pid`, what lets the next
    #: start stop a survivor of a killed supervisor without hitting a reused pid.
    pid_start: int | None
    #: Its process group (the service is a session leader, so it equals `pid`).
    pgid: int | None
    restarts: int
    evictions: int
    #: Processes of its slice the shed rung signalled (the primary's ``[service.X.shed]``).
    sheds: int
    #: The service's cgroup; None when degraded (no slice: it runs in oomguard's own cgroup).
    slice: str | None
    role: Literal["primary", "sidecar"]
    #: A sidecar's configured criticality (0..99, higher is evicted later); None for the primary.
    criticality: int | None
    oom_score_adj: int
    last_exit: LastExit | None
    started_at: float | None
    downtime_total: float
    #: Seconds from the spawn to ready (RUNNING) of the current process; None if not ready.
    ready_seconds: float | None


class StateDoc(TypedDict):
    version: int
    pid: int
    pid_start: int | None
    updated_at: float
    root: str
    mode: str
    #: Why there is no slice tree, or None (see module docstring).
    degraded: str | None
    services: dict[str, ServiceState]
    #: SHA-256 of the run's token that every service has in $OOMGUARD_INSTANCE (see
    #: runtime/survivors.py; the token itself is never written here).
    instance_sha256: NotRequired[str]
    #: Event-log lines lost to failed writes (ENOSPC, EIO...) in this run.
    event_log_dropped: NotRequired[int]


def state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def ensure_state_dir(state_dir: Path) -> Path:
    """Create and check the state dir (see observe/statedir.py); raises `StateDirError` (exit 2)
    naming the directory. This runs at startup, so a wrong path stops oomguard before it
    touches any cgroup."""
    StateDir.open(state_dir).close()
    return check_path(Path(state_dir))


class TreeLedger:
    """The tree ownership record kept in ``<state_dir>/tree.json`` (see cgroup/tree.py,
    "Ownership"): the root's path and cgroup id, for where xattrs cannot be set."""

    def __init__(self, sd: StateDir) -> None:
        self.sd = sd

    def recorded(self, root: CgroupPath) -> int | None:
        try:
            raw = self.sd.read_file(TREE_FILE, 1 << 16)
            data = json.loads(raw) if raw is not None else None
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("root") != str(root):
            return None
        cgroup_id = data.get("cgroup_id")
        return cgroup_id if isinstance(cgroup_id, int) and not isinstance(cgroup_id, bool) else None

    def record(self, root: CgroupPath, cgroup_id: int) -> None:
        text = json.dumps({"version": 1, "root": str(root), "cgroup_id": cgroup_id}) + "\n"
        try:
            self.sd.write_atomic(TREE_FILE, text.encode(), 0o644)
        except OSError:
            # The xattr is the primary marker; a lost record only means a later run without
            # xattr support refuses to adopt this tree (which kills nothing).
            return


# Eight arguments (PLR0913): keyword-only, one per field of the document, each named at the
# call; a parameter object would only repeat the document's own TypedDict.
def make_state(  # noqa: PLR0913
    *,
    root: str,
    mode: str,
    services: Mapping[str, ServiceState],
    updated_at: float,
    pid: int | None = None,
    degraded: str | None = None,
    instance_sha256: str | None = None,
    event_log_dropped: int = 0,
) -> StateDoc:
    """A version-1 document for `write_state`; `pid` defaults to this process."""
    pid = os.getpid() if pid is None else pid
    doc: StateDoc = {
        "version": STATE_VERSION,
        "pid": pid,
        "pid_start": proc.start_ticks(pid),
        "updated_at": updated_at,
        "root": root,
        "mode": mode,
        "degraded": degraded,
        "services": {name: svc.copy() for name, svc in services.items()},
        "event_log_dropped": event_log_dropped,
    }
    if instance_sha256 is not None:
        doc["instance_sha256"] = instance_sha256
    return doc


def write_state(state_dir: Path | StateDir, data: Mapping[str, Any]) -> None:
    """Atomically replace ``<state_dir>/state.json`` with `data` (see module docstring).

    Through the directory fd: an O_EXCL temp file, fchmod 0644 (`oomguard status` may run as
    another user), rename. Raises OSError on failure (the caller, the supervisor, decides
    whether to warn); the previous state.json is then untouched and no temp file is left.
    A bare path is opened and checked like the supervisor's state dir (`StateDirError`).
    """
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    if isinstance(state_dir, StateDir):
        state_dir.write_atomic(STATE_FILE, text.encode("utf-8"), 0o644)
        return
    sd = StateDir.open(state_dir)
    try:
        sd.write_atomic(STATE_FILE, text.encode("utf-8"), 0o644)
    finally:
        sd.close()


def read_state(state_dir: Path) -> dict[str, Any] | None:
    """The current state document, or None if there is none; raises `StateFileError` or
    `StateVersionError` (observe/statefile.py, the one reader of state.json)."""
    return statefile.read_state(state_dir)


def remove_state(state_dir: Path) -> None:
    """Delete state.json (a clean shutdown may do this); already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        state_path(state_dir).unlink()


def pid_alive(
    pid: int, start_ticks: int | None = None, proc_root: str | os.PathLike[str] = proc.PROC
) -> bool:
    """True if `pid` exists and, when `start_ticks` is known, is the same process (no reuse)."""
    if pid <= 0:
        return False
    if start_ticks is not None:
        return proc.start_ticks(pid, proc_root) == start_ticks
    return proc.exists(pid, proc_root)


def state_writer_alive(
    state: Mapping[str, Any], proc_root: str | os.PathLike[str] = proc.PROC
) -> bool:
    """Is the supervisor that wrote `state` still running?

    Caveat for containers: /proc shows this PID namespace. ``kubectl exec``/``docker exec`` join
    the container's namespace, so the check holds there; from the host it would not.
    """
    pid = state.get("pid")
    start = state.get("pid_start")
    if not isinstance(pid, int) or isinstance(pid, bool):
        return False
    return pid_alive(pid, start if isinstance(start, int) else None, proc_root)


def writer_alive(state_dir: Path, proc_root: str | os.PathLike[str] = proc.PROC) -> bool:
    """The CLI's "is oomguard running here?": a state.json whose writer is alive.
    An unusable state.json counts as "not running" (the error is for `read_state` callers)."""
    try:
        state = read_state(state_dir)
    except OomguardError:
        return False
    return state is not None and state_writer_alive(state, proc_root)
