"""pidfds: a file descriptor that names one process, immune to pid reuse (Linux 5.3+).

A pidfd becomes readable (``EPOLLIN``) when the process exits, i.e. as soon as it is a zombie,
before anyone reaps it. That makes it the loop's per-service exit event: register it with
``EPOLLIN``, and when it fires let `runtime.reaper.Reaper` collect the status. Signalling through
the pidfd (`send_signal`) can never hit an unrelated process that reused the pid, which a plain
``kill(pid)`` after the child was reaped could.

The caller owns every fd returned here and closes it (pidfds are always O_CLOEXEC).
"""

from __future__ import annotations

import os
import select
import signal


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
