"""Fast release: after oomguard SIGKILLs a slice, give its memory back at once.

A SIGKILLed process frees its memory only when it runs again, in its own exit path (exit_mmap).
That can take long: the dying process must get the CPU (on a busy machine, at a lower priority,
under a CPU quota), and until then the next allocation in the budget stalls or OOMs.
process_mrelease (`oomguard.events.pidfd.process_mrelease`, Linux 5.15+) does the unmapping in
oomguard's context instead, right after the kill.

It only helps before the dying process runs: its exit detaches its memory map first, and from
then on the kernel answers ESRCH ("gone") and the process frees the memory itself. On an idle CPU
a killed process at oomguard's priority usually preempts oomguard at once, and the call is too
late but also not needed; measured in the guest (tests/kernel/test_release.py), a killed process
at nice 19 had its 200 MiB released within the call. That is why the syscall is resolved at
startup (`prepare`) and called right after the kill, with nothing in between.

Which processes. process_mrelease needs a pidfd. oomguard holds one for each service's main
process. For the other members of the slice (a parallel job's workers, PostgreSQL's backends) it
opens pidfds right before the kill, and keeps only those it can prove name a member:

1. read the pids of the subtree (cgroup.procs);
2. ``pidfd_open`` each; a pid that died and was reused in between yields a pidfd of a stranger;
3. read the pids again, then check that each pidfd's process has not exited. A pidfd whose
   process is still running holds its pid, so a pid listed in step 3 and still held by the
   pidfd's live process was that process when it was listed: it was a member.

A stranger that slipped through would not be harmed anyway: process_mrelease kills nothing and
refuses (EINVAL) a process that is not dying; a member that moved out of the slice between the
check and the kill was not killed, so it is refused the same way. At most `MAX_PIDFDS` members
are held (a file descriptor each); the rest are freed by their own exit, as without this.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from oomguard.events.pidfd import (
    close_pidfd,
    is_alive,
    open_pidfd,
    prepare_mrelease,
    process_mrelease,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from oomguard.cgroup.fs import CgroupFS
    from oomguard.cgroup.path import CgroupPath

#: pidfds held for one kill, besides the main process's own.
MAX_PIDFDS = 256


def prepare() -> bool:
    """Resolve process_mrelease at startup. The call must follow the SIGKILL as closely as
    possible: a dying process that gets the CPU first drops its memory map on its way out, and
    from then on process_mrelease cannot help (ESRCH) while that process, perhaps starved of CPU,
    tears the memory down itself."""
    return prepare_mrelease()


def hold_members(fs: CgroupFS, cgroup: CgroupPath, skip: int | None = None) -> list[int]:
    """pidfds of the processes in `cgroup` and below, each proven a member (module docstring),
    except `skip` (the main process, whose pidfd oomguard holds already). The caller owns them:
    pass them to `release`, which closes them. Raises `Vanished` (nothing left open) if the
    cgroup is gone."""
    opened: dict[int, int] = {}
    try:
        for pid in fs.procs_recursive(cgroup):
            if pid == skip or pid in opened or len(opened) >= MAX_PIDFDS:
                continue
            try:
                fd = open_pidfd(pid)
            except OSError:  # EMFILE and the like: that one is freed by its own exit
                continue
            if fd is not None:
                opened[pid] = fd
        members = set(fs.procs_recursive(cgroup))
    except BaseException:
        for fd in opened.values():
            close_pidfd(fd)
        raise
    held: list[int] = []
    for pid, fd in opened.items():
        if pid in members and is_alive(fd):
            held.append(fd)
        else:
            close_pidfd(fd)
    return held


@dataclass(frozen=True)
class Released:
    """What `release` did: processes whose memory it released, of how many tried, how long it
    took; `unsupported` when the kernel has no process_mrelease."""

    released: int
    tried: int
    seconds: float
    unsupported: bool


def release(
    owned: Iterable[int],
    borrowed: Iterable[int] = (),
    clock: Callable[[], float] = time.monotonic,
) -> Released:
    """process_mrelease every pidfd, after the SIGKILL (before it, the kernel refuses: the
    processes are not dying yet). Closes `owned` (from `hold_members`); `borrowed` (the main
    process's pidfd) stays open for its owner."""
    t0 = clock()
    released = tried = 0
    unsupported = False
    owned = list(owned)
    try:
        for fd in [*borrowed, *owned]:
            if fd < 0 or unsupported:
                continue
            tried += 1
            outcome = process_mrelease(fd)
            released += outcome == "released"
            unsupported = outcome == "unsupported"
    finally:
        for fd in owned:
            close_pidfd(fd)
    return Released(released, tried, clock() - t0, unsupported)
