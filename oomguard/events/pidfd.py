"""pidfds: a file descriptor that names one process, immune to pid reuse (Linux 5.3+).

A pidfd becomes readable (``EPOLLIN``) when the process exits, i.e. as soon as it is a zombie,
before anyone reaps it. That makes it the loop's per-service exit event: register it with
``EPOLLIN``, and when it fires let `runtime.reaper.Reaper` collect the status. Signalling through
the pidfd (`send_signal`) can never hit an unrelated process that reused the pid, which a plain
``kill(pid)`` after the child was reaped could.

The caller owns every fd returned here and closes it (pidfds are always O_CLOEXEC).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import select
import signal
from typing import TYPE_CHECKING, Literal, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Callable


def open_pidfd(pid: int) -> int | None:
    """``pidfd_open(pid)``, or None if the process is already gone (ESRCH).

    A zombie that has not been reaped still has its pid, so this succeeds for a child that has
    exited but not been waited for; the fd is then immediately readable.
    """
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def is_alive(pidfd: int) -> bool:
    """True while the process has not exited. Non-blocking.

    "Alive" means "not yet exited": a zombie counts as exited, because a pidfd turns readable
    at exit, not at reaping.
    """
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return not p.poll(0)


def send_signal(pidfd: int, sig: int) -> bool:
    """Send `sig` to the process behind `pidfd`. False if it has already exited and been reaped
    (ESRCH); a zombie accepts the signal and ignores it, which is equally harmless."""
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:  # ESRCH
        return False
    return True


def close_pidfd(pidfd: int) -> int:
    """Close `pidfd` if open. Returns -1, so owners write ``self.fd = close_pidfd(self.fd)``."""
    if pidfd >= 0:
        os.close(pidfd)
    return -1


# -- process_mrelease -----------------------------------------------------------------------
#
# process_mrelease(pidfd, 0) (Linux 5.15+) unmaps the private memory of a process that is already
# dying, in the caller's context, instead of waiting for the dying process to be scheduled and
# run exit_mmap itself (the OOM reaper's work, on demand). It kills nothing: a process that is
# not dying (no SIGKILL pending, not exiting) is refused with EINVAL. So it is only useful right
# after a SIGKILL, which sets the fatal state synchronously (cgroup.kill's write returns after
# every member has its SIGKILL).

#: __NR_process_mrelease: one number in the unified syscall table of every architecture that
#: has one (asm-generic and x86 alike); alpha (558) and the rest are left out: unsupported.
_NR_PROCESS_MRELEASE = {
    "x86_64": 448,
    "aarch64": 448,
    "arm64": 448,
    "riscv64": 448,
    "ppc64le": 448,
    "ppc64": 448,
    "s390x": 448,
    "loongarch64": 448,
    "i686": 448,
    "armv7l": 448,
}

Mrelease: TypeAlias = Literal["released", "unsupported", "gone", "not_dying", "busy", "failed"]


def _resolve() -> Callable[[int], int] | None:
    number = _NR_PROCESS_MRELEASE.get(platform.machine())
    if number is None:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long
    syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_uint]

    def call(pidfd: int) -> int:
        if syscall(number, pidfd, 0) == 0:
            return 0
        return ctypes.get_errno()

    return call


class MreleaseSyscall:
    """The syscall as ``call(pidfd) -> errno`` (0 on success), resolved on first use in the
    supervisor's own process (never in a forked child: loading a library through ctypes takes
    locks) and dropped once the kernel says ENOSYS, so a kernel without it costs one failed call
    in all. `resolve` is replaceable for tests."""

    def __init__(self, resolve: Callable[[], Callable[[int], int] | None] = _resolve) -> None:
        self._resolve: Callable[[], Callable[[int], int] | None] | None = resolve
        self._call: Callable[[int], int] | None = None

    def prepare(self) -> bool:
        """Resolve the syscall now (once), so that the first call after a kill does not spend
        the time: a dying process that gets the CPU first drops its memory map itself, and from
        then on the kernel answers ESRCH although the memory is not back yet. True if usable."""
        if self._resolve is not None:
            self._call, self._resolve = self._resolve(), None
        return self._call is not None

    def __call__(self, pidfd: int) -> Mrelease:
        self.prepare()
        if self._call is None or pidfd < 0:
            return "unsupported"
        err = self._call(pidfd)
        if err == 0:
            return "released"
        if err == errno.ENOSYS:
            self._call = None
            return "unsupported"
        if err == errno.ESRCH:
            return "gone"
        if err == errno.EINVAL:
            return "not_dying"
        if err in (errno.EAGAIN, errno.EINTR):
            return "busy"
        return "failed"


_MRELEASE = MreleaseSyscall()


def prepare_mrelease() -> bool:
    """Resolve process_mrelease ahead of the first kill (in the supervisor's own process)."""
    return _MRELEASE.prepare()


def process_mrelease(pidfd: int) -> Mrelease:
    """Release the memory of the dying process behind `pidfd` now. Never raises.

    * ``released``: done (also when exit_mmap or the OOM reaper had already done it);
    * ``unsupported``: no such syscall here (ENOSYS: a kernel older than 5.15, or seccomp);
    * ``gone``: ESRCH: the process no longer has a memory map (it has exited, or it got the CPU
      first and is tearing the map down itself: then its memory is on its way back);
    * ``not_dying``: it is not dying (EINVAL): call this after the SIGKILL, never before;
    * ``busy``: its mmap lock is held (EAGAIN/EINTR); its own exit frees the memory anyway;
    * ``failed``: anything else (EBADF...), equally harmless.
    """
    return _MRELEASE(pidfd)
