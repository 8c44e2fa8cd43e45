"""One flat epoll loop for the supervisor's main thread (no asyncio, no threads), in the style
of systemd's sd_event: every fd is registered with a handler, ``add(fd, mask, handler)``, and
`dispatch` calls each ready fd's handler with the mask the kernel reported. The loop never reads
or closes a registered fd: the source that opened it owns it.

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

`wait` and `dispatch` are separate steps (sd_event_wait / sd_event_dispatch) so the caller can
read its clock once between them; `run_once` does both. A handler that raises is a bug: the
exception propagates out of `dispatch` (the rest of that batch is reported again by the next
wait, level-triggered), and the supervisor's teardown runs.
"""

from __future__ import annotations

import errno
import math
import select
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

#: Called with the ready mask (``EPOLLIN``, ``EPOLLPRI | EPOLLERR``, ...).
Handler: TypeAlias = Callable[[int], None]

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


@dataclass(eq=False)
class Source:
    """One registration: the fd, the mask asked for, and its handler. A new object per `add`,
    so a batch can tell "this registration" from "a new one on the same fd number"."""

    fd: int
    events: int
    handler: Handler


#: What `wait` returns: the registration that was ready and the mask the kernel reported.
Ready: TypeAlias = list[tuple[Source, int]]


class Loop:
    """An epoll instance plus the fd -> `Source` map.

    Remove an fd *before* closing it. epoll tracks open files, not fd numbers: if the fd is
    closed while a dup of it lives (e.g. in a child that has not exec'd yet), the registration
    survives and a new file that reuses the number would be reported to the old handler.
    """

    def __init__(self) -> None:
        # select.epoll() is created with EPOLL_CLOEXEC, so children never inherit it.
        self._epoll: select.epoll | None = select.epoll()
        self._sources: dict[int, Source] = {}

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
        return len(self._sources)

    def __contains__(self, fd: object) -> bool:
        return fd in self._sources

    def add(self, fd: int, events: int, handler: Handler) -> None:
        """Register `fd` for `events` (e.g. ``EPOLLIN``); `handler(mask)` is called from
        `dispatch` while it is ready. Raises FileExistsError if the fd is already registered
        (use `modify`)."""
        self._ep().register(fd, events)
        self._sources[fd] = Source(fd, events, handler)

    def modify(self, fd: int, events: int, handler: Handler | None = None) -> None:
        """Change the mask of a registered fd (and optionally its handler). Raises KeyError for
        an fd that is not registered."""
        src = self._sources[fd]
        self._ep().modify(fd, events)
        src.events = events
        if handler is not None:
            src.handler = handler

    def remove(self, fd: int) -> None:
        """Unregister `fd`. An fd that is unknown, already closed or already dropped by the
        kernel is fine: removal is part of every teardown path and must not fail there. A
        ready event of `fd` still pending in the batch being dispatched is dropped."""
        self._sources.pop(fd, None)
        if self._epoll is None or fd < 0:
            return
        try:
            self._epoll.unregister(fd)
        except OSError as e:
            # ENOENT: not registered; EBADF: fd already closed (epoll dropped it by itself).
            if e.errno not in (errno.ENOENT, errno.EBADF):
                raise

    def wait(self, timeout: float | None = None) -> Ready:
        """Wait up to `timeout` seconds (None: forever, 0: don't block; clamped to `MAX_WAIT`)
        and return the ready registrations with their masks, for `dispatch`.

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
        # Every fd the kernel reports is registered (unregistering is synchronous).
        return [(self._sources[fd], mask) for fd, mask in ready if fd in self._sources]

    def dispatch(self, ready: Ready) -> int:
        """Call the handler of each ready registration with its mask, in the kernel's order;
        return how many were called.

        Within one batch a handler may remove (and close) a source whose event comes later in
        the list, or remove it and register a new file under the same fd number: such an event
        belongs to a registration that no longer exists, and is skipped. An event none of whose
        bits the registration still asks for (its mask was modified meanwhile) is skipped too;
        ``EPOLLERR``/``EPOLLHUP`` are always delivered, as epoll always reports them.
        """
        called = 0
        for src, reported in ready:
            if self._sources.get(src.fd) is not src:
                continue
            mask = reported & (src.events | EPOLLERR | EPOLLHUP)
            if not mask:
                continue
            src.handler(mask)
            called += 1
        return called

    def run_once(self, timeout: float | None = None) -> int:
        """`wait`, then `dispatch`: one turn of the loop; returns how many handlers ran."""
        return self.dispatch(self.wait(timeout))

    def close(self) -> None:
        """Close the epoll fd. Registered fds stay open: their owners close them."""
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        self._sources.clear()

    def __enter__(self) -> Loop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
