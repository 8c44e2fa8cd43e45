"""One flat epoll loop for the supervisor's main thread (no asyncio, no threads).

Every event source in `oomguard.events` exposes a raw fd; the supervisor registers each with a
key of its choosing and dispatches on the keys `poll()` returns. The loop never reads or closes
a registered fd: the source that opened it owns it.

Which mask to register, per source:

- pidfd, inotify fd, signal wakeup socket, output pipes: ``EPOLLIN``.
- PSI trigger fd: ``EPOLLPRI`` *only*. A memory.pressure fd is always readable (``POLLIN``: it
  is a normal seq file), so an ``EPOLLIN`` registration would report it ready on every poll and
  the loop would spin. The kernel sets ``POLLPRI`` once per window in which the stall threshold
  was crossed, and clears it as it reports it. ``EPOLLERR`` needs no registration (epoll always
  reports it) and means the cgroup was removed: kernfs answers polls on a deactivated file with
  ``EPOLLERR | EPOLLPRI``, so check ``EPOLLERR`` first.

Level-triggered on purpose: a handler that reads only part of what is pending is called again
on the next poll instead of losing the rest.
"""

from __future__ import annotations

import errno
import math
import select
from typing import Generic, TypeVar

K = TypeVar("K")

#: The longest single wait, in seconds. epoll_wait takes an int of milliseconds (CPython raises
#: OverflowError past ~24.8 days, or "timestamp out of range" for a huge float), and a deadline
#: computed from a configured duration can be anything up to +inf. Waking once a day costs
#: nothing: the caller recomputes its deadlines every turn, so a clamped wait only means one
#: extra loop turn.
MAX_WAIT = 86400.0

EPOLLIN = select.EPOLLIN
EPOLLPRI = select.EPOLLPRI
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP


def clamp_timeout(timeout: float | None) -> float:
    """A caller's timeout as epoll can take it: None -> -1 (forever); negative -> 0; anything
    above `MAX_WAIT`, +inf or NaN (a deadline built from an absurd duration) -> `MAX_WAIT`."""
    if timeout is None:
        return -1.0
    if math.isnan(timeout) or timeout > MAX_WAIT:
        return MAX_WAIT
    return max(timeout, 0.0)


class Loop(Generic[K]):
    """An epoll instance plus the fd -> key map.

    Remove an fd *before* closing it. epoll tracks open files, not fd numbers: if the fd is
    closed while a dup of it lives (e.g. in a child that has not exec'd yet), the registration
    survives and a new file that reuses the number would be reported under the old key.
    """

    def __init__(self) -> None:
        # select.epoll() is created with EPOLL_CLOEXEC, so children never inherit it.
        self._epoll: select.epoll | None = select.epoll()
        self._keys: dict[int, K] = {}

    def _ep(self) -> select.epoll:
        if self._epoll is None:
            raise ValueError("the event loop is closed")
        return self._epoll

    def fileno(self) -> int:
        return self._ep().fileno()

    @property
    def closed(self) -> bool:
        return self._epoll is None

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, fd: object) -> bool:
        return fd in self._keys

    def add(self, fd: int, events: int, key: K) -> None:
        """Register `fd` for `events` (e.g. ``EPOLLIN``) under `key`. Raises FileExistsError
        if the fd is already registered (use `modify`)."""
        self._ep().register(fd, events)
        self._keys[fd] = key

    def modify(self, fd: int, events: int, key: K | None = None) -> None:
        """Change the mask of a registered fd (and optionally its key)."""
        self._ep().modify(fd, events)
        if key is not None:
            self._keys[fd] = key

    def remove(self, fd: int) -> None:
        """Unregister `fd`. An fd that is unknown, already closed or already dropped by the
        kernel is fine: removal is part of every teardown path and must not fail there."""
        self._keys.pop(fd, None)
        if self._epoll is None or fd < 0:
            return
        try:
            self._epoll.unregister(fd)
        except OSError as e:
            # ENOENT: not registered; EBADF: fd already closed (epoll dropped it by itself).
            if e.errno not in (errno.ENOENT, errno.EBADF):
                raise

    def poll(self, timeout: float | None = None) -> list[tuple[K, int]]:
        """Wait up to `timeout` seconds (None: forever, 0: don't block; clamped to `MAX_WAIT`)
        and return ``(key, mask)`` for every ready fd.

        EINTR is retried with the remaining time (PEP 475 does this inside epoll.poll; the
        loop below only matters if a signal handler raised InterruptedError itself). A signal
        that should wake the loop goes through `SignalQueue`'s wakeup fd, not through EINTR.
        """
        ep = self._ep()
        wait = clamp_timeout(timeout)
        while True:
            try:
                ready = ep.poll(wait)
            except InterruptedError:
                continue
            break
        # Every fd the kernel reports is registered (unregistering is synchronous). Within one
        # batch, though, a handler may remove or close a source whose event comes later in the
        # list: dispatchers must treat a key whose source is already closed as a no-op.
        return [(self._keys[fd], mask) for fd, mask in ready if fd in self._keys]

    def close(self) -> None:
        """Close the epoll fd. Registered fds stay open: their owners close them."""
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        self._keys.clear()

    def __enter__(self) -> Loop[K]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
