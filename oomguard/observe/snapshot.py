"""A read-only snapshot of a slice tree: memory figures, event counters, PSI and processes.

Adapter: reads the cgroup mount only through `CgroupFS` and per-process figures only through
`oomguard.proc`; never writes. `oomguard status` and the metrics exporter print/serve what this
returns.

Vanishing is normal here: a slice can be removed and a process can exit between two reads. Such
a cgroup or pid is skipped, never reported as an error. A file that does not exist because the
controller is not enabled for that cgroup (or the kernel is too old, e.g. memory.peak before
5.19) yields None.

Import-light on purpose (`oomguard status` must start fast): stdlib + cgroup.fs/parse/path + proc.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, NamedTuple

from oomguard import proc
from oomguard.cgroup.parse import parse_flat_keyed, parse_int, parse_limit, parse_pressure
from oomguard.errors import CgroupError, Vanished

if TYPE_CHECKING:
    from oomguard.cgroup.fs import CgroupFS
    from oomguard.cgroup.parse import Pressure
    from oomguard.cgroup.path import CgroupPath

#: memory.events keys `status` always shows (0 when the kernel omits one, e.g. an old kernel
#: without oom_group_kill). memory.events is hierarchical: `oom_kill` there counts kills in this
#: cgroup *and its descendants*; memory.events.local counts only this cgroup's own.
EVENT_KEYS = ("low", "high", "max", "oom", "oom_kill", "oom_group_kill")


# NamedTuples rather than frozen dataclasses: same immutability and attribute access, but a
# 19-field frozen dataclass costs milliseconds of code generation at import, which is most of
# what this module would add to `oomguard status`'s cold start.


class ProcInfo(NamedTuple):
    pid: int
    comm: str
    oom_score_adj: int
    #: Resident set size from /proc/<pid>/statm (resident pages x page size).
    rss_bytes: int


class SliceSnapshot(NamedTuple):
    """One cgroup. Limits (`min` .. `swap_max`) use None for "max" when `memory` is True; when
    the memory controller is off for this cgroup (`memory` False) every memory figure is None.
    """

    path: CgroupPath
    #: Last path component; "/" for the mount root.
    name: str
    #: 0 for the snapshot's root, 1 for its children, ...
    depth: int
    #: True if the memory controller's files are present (the parent enables +memory).
    memory: bool
    #: True if memory.swap.max exists (swap accounting on); `swap_max` None then means "max".
    swap: bool
    current: int | None
    peak: int | None
    min: int | None
    low: int | None
    high: int | None
    max: int | None
    swap_max: int | None
    oom_group: bool | None
    events: dict[str, int] | None
    events_local: dict[str, int] | None
    pressure: Pressure | None
    procs: list[ProcInfo]
    #: cgroup.events "populated" (this cgroup or a descendant has a live process); None for the
    #: real root, which has no cgroup.events.
    populated: bool | None


class TreeSnapshot(NamedTuple):
    root: CgroupPath
    #: Pre-order: each parent before its children, siblings by name.
    slices: list[SliceSnapshot]

    def find(self, path: str) -> SliceSnapshot | None:
        return next((s for s in self.slices if str(s.path) == path), None)


_PAGE_SIZE: int | None = None


def _page_size() -> int:
    global _PAGE_SIZE  # noqa: PLW0603 - sysconf once per process, lazily
    if _PAGE_SIZE is None:
        _PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
    return _PAGE_SIZE


def proc_info(pid: int, proc_root: str = proc.PROC) -> ProcInfo | None:
    """Figures for one process, or None if it is gone (or became a zombie: no statm pages)."""
    # Gone (ENOENT/ESRCH) between cgroup.procs and here is expected: skip it. So is a torn read
    # of an exiting process (an empty oom_score_adj).
    name = proc.comm(pid, proc_root)
    adj = proc.oom_score_adj(pid, proc_root)
    pages = proc.rss_pages(pid, proc_root)
    if name is None or adj is None or pages is None:
        return None
    return ProcInfo(pid=pid, comm=name, oom_score_adj=adj, rss_bytes=pages * _page_size())


def _opt_int(fs: CgroupFS, p: CgroupPath, name: str) -> int | None:
    text = fs.read_optional(p, name)
    return None if text is None else parse_int(text, f"{p}/{name}")


def _opt_flat(fs: CgroupFS, p: CgroupPath, name: str) -> dict[str, int] | None:
    text = fs.read_optional(p, name)
    return None if text is None else parse_flat_keyed(text, f"{p}/{name}")


def _slice(fs: CgroupFS, p: CgroupPath, depth: int, proc_root: str) -> SliceSnapshot:
    # cgroup.procs exists in every cgroup, so reading it first is also the "still there?" test.
    pids = fs.procs(p)
    limits: dict[str, int | None] = {}
    # memory.max is absent on the root and wherever the parent does not enable +memory; its
    # presence says whether the other limit files' "max" means "unlimited" or "n/a".
    max_text = fs.read_optional(p, "memory.max")
    memory = max_text is not None
    if memory:
        limits["max"] = parse_limit(max_text or "", f"{p}/memory.max")
        for key, name in (
            ("min", "memory.min"),
            ("low", "memory.low"),
            ("high", "memory.high"),
            ("swap_max", "memory.swap.max"),
        ):
            text = fs.read_optional(p, name)
            if text is not None:
                limits[key] = parse_limit(text, f"{p}/{name}")
    group = _opt_int(fs, p, "memory.oom.group")
    pressure: Pressure | None = None
    try:
        text = fs.read_optional(p, "memory.pressure")
        if text is not None:
            pressure = parse_pressure(text, f"{p}/memory.pressure")
    except Vanished:
        raise
    except CgroupError:
        # PSI can be switched off per cgroup (cgroup.pressure 0, 6.1+): the read then fails
        # with EOPNOTSUPP. A status view shows "no PSI" rather than failing the whole tree.
        pressure = None
    events_text = fs.read_optional(p, "cgroup.events")
    populated = (
        None
        if events_text is None
        else parse_flat_keyed(events_text, f"{p}/cgroup.events").get("populated", 0) != 0
    )
    procs = [info for pid in pids if (info := proc_info(pid, proc_root)) is not None]
    return SliceSnapshot(
        path=p,
        name=p.name if not p.is_root else "/",
        depth=depth,
        memory=memory,
        swap="swap_max" in limits,
        current=_opt_int(fs, p, "memory.current"),
        peak=_opt_int(fs, p, "memory.peak"),
        min=limits.get("min"),
        low=limits.get("low"),
        high=limits.get("high"),
        max=limits.get("max"),
        swap_max=limits.get("swap_max"),
        oom_group=None if group is None else group != 0,
        events=_opt_flat(fs, p, "memory.events"),
        events_local=_opt_flat(fs, p, "memory.events.local"),
        pressure=pressure,
        procs=procs,
        populated=populated,
    )


def take_snapshot(fs: CgroupFS, root: CgroupPath, *, proc_root: str = "/proc") -> TreeSnapshot:
    """Snapshot `root` and every descendant, pre-order. A root that does not exist gives an
    empty snapshot; anything vanishing mid-walk is left out."""
    try:
        paths = fs.walk(root)
    except Vanished:
        return TreeSnapshot(root=root, slices=[])
    base = len(root.parts)
    slices: list[SliceSnapshot] = []
    for p in paths:
        try:
            slices.append(_slice(fs, p, len(p.parts) - base, proc_root))
        except Vanished:
            continue
    return TreeSnapshot(root=root, slices=slices)


def _limit(present: bool, value: int | None) -> int | str | None:
    # JSON: bytes, "max" for unlimited, null where the file does not exist (controller off).
    if not present:
        return None
    return "max" if value is None else value


def slice_to_dict(s: SliceSnapshot) -> dict[str, Any]:
    pressure: dict[str, Any] | None = None
    if s.pressure is not None:
        pressure = {
            kind: None
            if line is None
            else {
                "avg10": line.avg10,
                "avg60": line.avg60,
                "avg300": line.avg300,
                "total_us": line.total_us,
            }
            for kind, line in (("some", s.pressure.some), ("full", s.pressure.full))
        }
    return {
        "path": str(s.path),
        "name": s.name,
        "depth": s.depth,
        "memory": s.memory,
        "current": s.current,
        "peak": s.peak,
        "min": _limit(s.memory, s.min),
        "low": _limit(s.memory, s.low),
        "high": _limit(s.memory, s.high),
        "max": _limit(s.memory, s.max),
        # memory.swap.max is missing without swap accounting even when memory is on.
        "swap_max": _limit(s.swap, s.swap_max),
        "oom_group": s.oom_group,
        "events": s.events,
        "events_local": s.events_local,
        "pressure": pressure,
        "procs": [
            {
                "pid": p.pid,
                "comm": p.comm,
                "oom_score_adj": p.oom_score_adj,
                "rss_bytes": p.rss_bytes,
            }
            for p in s.procs
        ],
        "populated": s.populated,
    }


def snapshot_to_dict(snap: TreeSnapshot) -> dict[str, Any]:
    """Plain JSON-ready data: ``{"root": "/oomguard", "slices": [...]}``."""
    return {"root": str(snap.root), "slices": [slice_to_dict(s) for s in snap.slices]}
