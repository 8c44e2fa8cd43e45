"""Which process to shed in the primary's slice. Pure: process figures in, one choice out.

Shedding is the rung of the ladder between notifying the primary (``pressure_watch``) and
evicting sidecars: oomguard sends ``[service.X.shed] signal`` (SIGTERM by default) to the
largest process in the primary's slice other than its main process. For PostgreSQL that is the
runaway backend: SIGTERM to a backend is what ``pg_terminate_backend`` does, so one session ends
and the postmaster and every other session carry on. The kernel's OOM killer would SIGKILL the
same backend, and the postmaster then resets every session (crash recovery).

Ranking: by *unreclaimable private* memory, ``RssAnon + VmSwap`` from /proc/<pid>/status:
what the process's exit gives back and what reclaim cannot take without swap.

* ``RssFile`` is left out: page cache of mapped files, reclaimable, and shared.
* ``RssShmem`` is left out: shared memory (PostgreSQL's ``shared_buffers``, tmpfs, shared
  anonymous mappings) stays allocated when one of its users exits. Counted, it would rank the
  backend that has touched the most shared buffers (every long-lived backend) above the one
  whose private memory runs away.
* ``VmSwap`` is counted: it is private memory the process holds, swapped out.

The main process is never a candidate, nor any process whose ``comm`` is in ``exclude_comm``, nor
one below ``min_size`` (shedding a small process frees too little to relieve the slice and only
costs its work).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable

#: /proc/<pid>/status fields read, and their attribute names. The kernel prints them in kB.
_FIELDS = {"RssAnon": "rss_anon", "RssShmem": "rss_shmem", "VmSwap": "swap"}


@dataclass(frozen=True)
class ProcMemory:
    """One process of the slice, as read from /proc/<pid>/status (bytes)."""

    pid: int
    comm: str
    rss_anon: int
    rss_shmem: int = 0
    swap: int = 0

    @property
    def private(self) -> int:
        """Private memory its exit frees and reclaim cannot take without swap (module doc)."""
        return self.rss_anon + self.swap


def parse_status(pid: int, text: str) -> ProcMemory | None:
    """The memory figures of /proc/<pid>/status; None when the process has no memory fields (a
    zombie, or a kernel thread: their status has no RssAnon line)."""
    comm = ""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        if key == "Name":
            # The kernel escapes "\n" and "\\" in the name; keep it as printed.
            comm = rest.strip()
        elif key in _FIELDS:
            words = rest.split()
            if words and words[0].isascii() and words[0].isdigit():
                values[_FIELDS[key]] = int(words[0]) * 1024
    if "rss_anon" not in values:
        return None
    return ProcMemory(pid=pid, comm=comm, **values)


def ranked(
    procs: Iterable[ProcMemory],
    *,
    main_pid: int | None,
    exclude_comm: Collection[str] = (),
    min_size: int = 0,
) -> list[ProcMemory]:
    """The candidates, largest private memory first (ties: the newest, highest pid, first:
    a runaway is more often the latest arrival than the oldest worker)."""
    candidates = [
        p
        for p in procs
        if p.pid != main_pid
        and p.pid > 1
        and p.comm not in exclude_comm
        and p.private >= min_size
        and p.private > 0
    ]
    return sorted(candidates, key=lambda p: (p.private, p.pid), reverse=True)


def choose(
    procs: Iterable[ProcMemory],
    *,
    main_pid: int | None,
    exclude_comm: Collection[str] = (),
    min_size: int = 0,
) -> ProcMemory | None:
    """The process to shed (`ranked`'s first), or None."""
    order = ranked(procs, main_pid=main_pid, exclude_comm=exclude_comm, min_size=min_size)
    return order[0] if order else None
