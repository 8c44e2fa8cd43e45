"""PSI triggers: let the kernel wake the loop when a slice stalls on memory.

Writing ``some <stall_us> <window_us>`` to a cgroup's memory.pressure (or /proc/pressure/memory)
arms a trigger that lives as long as the fd: the kernel signals ``POLLPRI`` on that fd when tasks
in the group were stalled on memory for at least `stall` within any `window`. Facts that shape
this module:

- The fd is a seq file and always ``POLLIN``; only ``POLLPRI`` means "fired". Register
  ``EPOLLPRI`` alone (`loop.EPOLLPRI`); the event is consumed by the poll that reports it, at
  most once per window, so a level-triggered epoll does not spin.
- ``EPOLLERR`` means the cgroup was removed (kernfs answers polls on a deactivated file with
  ``EPOLLERR | EPOLLPRI``): close the trigger and treat the slice as vanished.
- Without CAP_SYS_RESOURCE (kernels >= 6.5 accept unprivileged triggers at all) the window must be
  a multiple of 2 s; the kernel answers anything else with EINVAL. Windows are capped at 10 s,
  and older kernels also require >= 500 ms.
- One trigger per fd (a second write is EBUSY); open a new PsiWatch per threshold.
- PSI is weak without swap (anonymous memory cannot be reclaimed, so tasks hit OOM instead of
  stalling). Combine it with memory.events ``high`` and headroom checks.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Literal

from oomguard.errors import CgroupError, Vanished

if TYPE_CHECKING:
    from pathlib import Path

PsiKind = Literal["some", "full"]

#: The kernel's WINDOW_MAX_US (10 s) and the historical WINDOW_MIN_US (500 ms).
MAX_WINDOW_S = 10.0
MIN_WINDOW_S = 0.5
#: Unprivileged triggers must use whole multiples of this window (kernels >= 6.5).
UNPRIVILEGED_WINDOW_QUANTUM_S = 2.0


def trigger_line(kind: str, stall_s: float, window_s: float) -> bytes:
    """The bytes written to arm a trigger; validates what the kernel would reject with a bare
    EINVAL, so the error can say which number is wrong. Pure."""
    if kind not in ("some", "full"):
        raise CgroupError(f"PSI trigger kind {kind!r} is not valid", hint="use 'some' or 'full'")
    stall_us = round(stall_s * 1_000_000)
    window_us = round(window_s * 1_000_000)
    if not MIN_WINDOW_S * 1_000_000 <= window_us <= MAX_WINDOW_S * 1_000_000:
        raise CgroupError(
            f"PSI trigger window {window_s}s is out of range",
            hint=f"use a window between {MIN_WINDOW_S}s and {MAX_WINDOW_S:g}s "
            "(a multiple of 2s unless oomguard has CAP_SYS_RESOURCE)",
        )
    if not 0 < stall_us <= window_us:
        raise CgroupError(
            f"PSI trigger stall {stall_s}s must be > 0 and <= its window {window_s}s",
            hint="lower the stall threshold or widen the window",
        )
    # NUL-terminated: the kernel parses with sscanf and accepts NUL or newline.
    return f"{kind} {stall_us} {window_us}\0".encode()


class PsiWatch:
    """An armed PSI trigger on one pressure file. Owns its fd; `close()` disarms it.

    Named apart from the config model `oomguard.config.model.PsiTrigger`, which only describes
    the trigger to arm (kind, stall, window).

    Raises `Vanished` if the cgroup is gone, `CgroupError` (with a hint) for a trigger the kernel
    refuses.
    """

    def __init__(
        self, path: Path, kind: PsiKind = "some", stall_s: float = 0.1, window_s: float = 2.0
    ) -> None:
        self.path = path
        self.kind = kind
        self.stall_s = stall_s
        self.window_s = window_s
        self._fd = -1
        line = trigger_line(kind, stall_s, window_s)
        try:
            # O_RDWR, not O_WRONLY: the trigger is polled on the same fd it was written to.
            # O_NONBLOCK so an accidental read can never stall the loop.
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError as e:
            if not path.parent.exists():
                raise Vanished(f"cannot arm a PSI trigger: {path.parent} is gone") from e
            raise CgroupError(
                f"cannot arm a PSI trigger: {path} does not exist",
                hint="the kernel has no PSI (CONFIG_PSI=n or booted with psi=0); "
                "boot with psi=1 or disable pressure triggers in the config",
            ) from e
        except PermissionError as e:
            raise CgroupError(
                f"cannot arm a PSI trigger: {path}: {e.strerror}",
                hint="run oomguard as the owner of the slice tree (or root)",
            ) from e
        self._fd = fd
        try:
            os.write(fd, line)
        except OSError as e:
            self.close()
            raise _write_error(path, line, e) from e

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError(f"the PSI trigger on {self.path} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Disarm: the kernel destroys the trigger when its fd is closed. Idempotent."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> PsiWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"PsiWatch({str(self.path)!r}, {self.kind!r}, stall_s={self.stall_s}, "
            f"window_s={self.window_s}, fd={self._fd})"
        )


def _write_error(path: Path, line: bytes, e: OSError) -> CgroupError:
    text = line.rstrip(b"\0").decode()
    if e.errno in (errno.ENODEV, errno.ENOENT):
        return Vanished(f"cannot arm PSI trigger {text!r} on {path}: the cgroup is gone")
    if e.errno == errno.EINVAL:
        return CgroupError(
            f"the kernel refused PSI trigger {text!r} on {path}",
            hint="without CAP_SYS_RESOURCE the window must be a multiple of 2s (e.g. 2s, 4s); "
            "give oomguard CAP_SYS_RESOURCE or change the window",
        )
    if e.errno in (errno.EPERM, errno.EACCES):
        return CgroupError(
            f"not allowed to arm PSI trigger {text!r} on {path}",
            hint="this kernel only lets privileged processes arm triggers: run oomguard with "
            "CAP_SYS_RESOURCE (e.g. as root), or use a 2s-multiple window on Linux >= 6.5",
        )
    if e.errno == errno.EOPNOTSUPP:
        return CgroupError(
            f"PSI is disabled for {path}",
            hint="boot with psi=1, or enable it for the cgroup (echo 1 > cgroup.pressure)",
        )
    return CgroupError(f"cannot arm PSI trigger {text!r} on {path}: {e.strerror}")
