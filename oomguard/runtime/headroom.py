"""Reading a budget's figures for the pressure response: its limit, its unreclaimable usage,
swap. Plain functions over a `CgroupFS` (the machine's memory is `oomguard.proc.meminfo`); nothing
here decides anything (that is `policy.pressure`).

A cgroup that is gone is an expected outcome: the figures of a vanished cgroup raise `Vanished`
where the caller must know (the budget's own cgroup), and read as nothing elsewhere.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from oomguard.cgroup.parse import parse_limit
from oomguard.errors import OomguardError, Vanished
from oomguard.policy import pressure as pp

if TYPE_CHECKING:
    from oomguard.cgroup.fs import CgroupFS
    from oomguard.cgroup.path import CgroupPath


def usage(fs: CgroupFS, path: CgroupPath) -> int:
    """What `path` holds that reclaim cannot take back without swap: memory.current minus
    the file cache on the LRU lists (memory.stat ``active_file + inactive_file``). Raises
    `Vanished` if the cgroup is gone; 0 if memory.current cannot be read.

    Why not memory.current itself: it counts the page cache of every file the cgroup
    reads or writes, and the kernel lets that cache grow up to memory.high before it
    reclaims any. It also raises ``high`` in memory.events every time usage is above
    memory.high on the way back to user space, *before* reclaiming (mm/memcontrol.c,
    reclaim_high), not only when reclaim fails. Measured on 6.1: `dd` of 300M to a file in
    a cgroup with memory.high=64M raised ``high`` 781 times with ``anon 0`` and
    memory.current pinned at 64M. Judged on memory.current, a database doing ordinary I/O
    (the cache of its data files) reads as "headroom+high" pressure at its watermark: every
    sidecar evicted, then a controlled restart of a healthy primary.

    Shmem (tmpfs files, PostgreSQL's shared_buffers, shared anonymous mappings) lives on the
    anon LRU lists, not the file ones, so it stays counted: without swap it cannot be
    reclaimed. Kubernetes' "working set" (usage minus inactive_file) is the same idea; active
    file pages are subtracted too, because they are reclaimable as well (after being
    deactivated) and are never what an OOM kill is about.
    """
    try:
        current = fs.read_int(path, "memory.current")
    except Vanished:
        raise
    except OomguardError:
        return 0
    try:
        stat = fs.read_flat(path, "memory.stat")
    except Vanished:
        raise
    except OomguardError:
        return current
    cache = stat.get("active_file", 0) + stat.get("inactive_file", 0)
    return max(0, current - cache)


def usage_or_zero(fs: CgroupFS, path: CgroupPath) -> int:
    """`usage`, or 0 if the cgroup is gone (a member that vanished holds nothing)."""
    try:
        return usage(fs, path)
    except OomguardError:
        return 0


def swap(fs: CgroupFS, cgroup: CgroupPath) -> int:
    """memory.swap.current, 0 where the file is missing (no swap accounting) or unreadable."""
    try:
        text = fs.read_optional(cgroup, "memory.swap.current")
    except OomguardError:
        return 0
    return int(text) if text is not None and text.strip().isdigit() else 0


def nearest_max(fs: CgroupFS, cgroup: CgroupPath) -> tuple[CgroupPath | None, int | None]:
    """The nearest memory.max at or above `cgroup` (below the mount's root), and where."""
    path: CgroupPath | None = cgroup
    while path is not None and not path.is_root:
        with contextlib.suppress(OomguardError):
            value = fs.read_limit(path, "memory.max")
            if value is not None:
                return path, value
        path = path.parent
    return None, None


def nearest_swap_max(fs: CgroupFS, cgroup: CgroupPath) -> int | None:
    """The lowest memory.swap.max at or above `cgroup` (None: no limit anywhere)."""
    path: CgroupPath | None = cgroup
    best: int | None = None
    while path is not None and not path.is_root:
        with contextlib.suppress(OomguardError):
            text = fs.read_optional(path, "memory.swap.max")
            value = None if text is None else parse_limit(text, "memory.swap.max")
            if value is not None and (best is None or value < best):
                best = value
        path = path.parent
    return best


def room_figures(
    fs: CgroupFS, cgroup: CgroupPath, meminfo: dict[str, int], *, machine: bool
) -> tuple[int | None, int]:
    """(limit, usage) of the budget at `cgroup`: the nearest memory.max at or above it,
    judged on the unreclaimable usage (`usage`) *of the cgroup that has the limit* (an
    ancestor's limit is shared with whatever else runs under it), swap counted where it
    exists (`pp.with_swap`). With no memory.max anywhere above and ``machine``: the
    machine's memory (`pp.machine_budget`). Raises `Vanished` if `cgroup` is gone."""
    where, limit = nearest_max(fs, cgroup)
    if where is None or limit is None:
        figures = pp.machine_budget(meminfo) if machine else None
        if figures is not None:
            return figures
        return None, usage(fs, cgroup)
    used = usage(fs, where)
    swap_total = meminfo.get("SwapTotal", 0)
    if swap_total <= 0:
        return limit, used
    return pp.with_swap(
        limit,
        used,
        swap_max=nearest_swap_max(fs, where),
        swap_current=swap(fs, where),
        swap_total=swap_total,
    )


def slice_figures(
    fs: CgroupFS, cgroup: CgroupPath, meminfo: dict[str, int]
) -> tuple[int | None, int]:
    """(limit, usage) of a ``[slice]``: the nearest memory.max at or above it (swap counted)
    against the slice's own usage. Raises `Vanished` if `cgroup` is gone."""
    used = usage(fs, cgroup)
    where, limit = nearest_max(fs, cgroup)
    swap_total = meminfo.get("SwapTotal", 0)
    if where is None or limit is None or swap_total <= 0:
        return limit, used
    return pp.with_swap(
        limit,
        used,
        swap_max=nearest_swap_max(fs, cgroup),
        swap_current=swap(fs, cgroup),
        swap_total=swap_total,
    )
