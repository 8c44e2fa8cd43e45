"""Signals as loop events: handlers only record, the loop dispatches (uvicorn style).

Python runs a signal handler between two bytecodes of the main thread, at an arbitrary point of
the supervisor's work. Doing anything real there (restarting a service, logging under a lock)
invites re-entrancy bugs. So the installed handler is a no-op, and `signal.set_wakeup_fd` makes
CPython's C-level handler write the signal number as one byte to a non-blocking socket. The
socket's read end is registered in the epoll loop (``EPOLLIN``); `drain()` turns the bytes back
into signals in arrival order.

Installing a handler explicitly matters most when oomguard is PID 1 in a container: the kernel
discards any signal sent to a namespace's init that init has no handler for, so without one
``docker stop``'s SIGTERM would do nothing and the container would be SIGKILLed after the grace
period, databases and all.

`close()` (or leaving the ``with`` block, even through an exception) restores the previous
handlers and the previous wakeup fd, so tests and embedding code get their process back as it was.

Every signal has an owner (tini's and dumb-init's rule): a signal whose default action kills
would otherwise end a non-PID-1 oomguard and leave its services running unsupervised. So by
default every catchable signal gets the recording handler, except those in `LEFT_DEFAULT`, and
the supervisor dispatches each by `disposition()`:

- ``stop``: SIGTERM, SIGINT, SIGQUIT, a graceful shutdown (a second SIGINT: kill now);
- ``reap``: SIGCHLD;
- ``ignore`` (logged): SIGTSTP, SIGTTIN, SIGTTOU. A stopped supervisor reacts to no OOM, so ^Z
  or a background tty access must not stop it;
- ``forward`` to the primary's main process: every other catchable signal (SIGHUP, SIGUSR1,
  SIGUSR2, SIGWINCH, SIGALRM, SIGCONT, SIGURG, SIGIO, SIGPWR, SIGPROF, SIGVTALRM, SIGXCPU,
  SIGSTKFLT, SIGRTMIN..SIGRTMAX);
- `LEFT_DEFAULT`: SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP, SIGSYS report a crash of
  oomguard itself (tini leaves them alone too): hiding one would keep a corrupted supervisor
  running. SIGPIPE and SIGXFSZ stay ignored as CPython sets them (a write then fails with
  EPIPE/EFBIG and is handled). SIGKILL and SIGSTOP cannot be caught.
"""

from __future__ import annotations

import signal
import socket
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import FrameType
    from typing import TypeAlias

    _Handler: TypeAlias = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

Disposition = Literal["stop", "reap", "ignore", "forward", "default"]

#: Stop oomguard (and its services, in reverse dependency order). SIGQUIT is handled so that,
#: as PID 1, it is not silently dropped; the supervisor treats it like SIGTERM.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
#: Job control: never let it stop the supervisor.
IGNORED_SIGNALS = frozenset({signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
#: Not caught (see the module docstring): crash reports, CPython's own SIG_IGNs, uncatchable.
LEFT_DEFAULT = frozenset(
    {
        signal.SIGSEGV,
        signal.SIGBUS,
        signal.SIGFPE,
        signal.SIGILL,
        signal.SIGABRT,
        signal.SIGTRAP,
        signal.SIGSYS,
        signal.SIGPIPE,
        signal.SIGXFSZ,
        signal.SIGKILL,
        signal.SIGSTOP,
    }
)


def disposition(sig: int) -> Disposition:
    """What the supervisor does with `sig` (the table in the module docstring and README)."""
    if sig in STOP_SIGNALS:
        return "stop"
    if sig == signal.SIGCHLD:
        return "reap"
    if sig in IGNORED_SIGNALS:
        return "ignore"
    if sig in LEFT_DEFAULT:
        return "default"
    return "forward"


def signal_name(sig: int) -> str:
    """``SIGUSR1``; real-time signals without a name of their own as ``SIGRTMIN+3``."""
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"SIGRTMIN+{sig - signal.SIGRTMIN}"


#: Every signal the supervisor catches: all of them but `LEFT_DEFAULT`. SIGCHLD wakes the loop
#: to reap orphans when oomguard is PID 1 or a subreaper (tracked services also have pidfds).
DEFAULT_SIGNALS: tuple[int, ...] = tuple(
    sorted(int(s) for s in signal.valid_signals() if int(s) not in LEFT_DEFAULT)
)


def _record(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: deliberately empty. CPython's C handler has already written
    `signum` to the wakeup fd before this runs; all work happens when the loop drains it."""


class SignalQueue:
    """Install recording handlers for `signals` and expose the queue as one readable fd.

    Must be created in the main thread (a CPython rule for `signal.signal`). One instance at a
    time: there is only one wakeup fd per process.
    """

    def __init__(self, signals: Iterable[int] = DEFAULT_SIGNALS) -> None:
        self._signals = tuple(int(s) for s in signals)
        self._prev_handlers: dict[int, _Handler] = {}
        self._prev_wakeup: int | None = None
        self._rsock: socket.socket | None = None
        self._wsock: socket.socket | None = None
        # socketpair() fds are CLOEXEC (PEP 446); both ends non-blocking: the C handler must
        # never block in write(), and drain() must stop at "empty".
        rsock, wsock = socket.socketpair()
        self._rsock, self._wsock = rsock, wsock
        try:
            rsock.setblocking(False)
            wsock.setblocking(False)
            # warn_on_full_buffer=False: if thousands of SIGCHLDs overflow the buffer, losing
            # duplicates is fine (one byte is enough to wake the loop and reap everything).
            self._prev_wakeup = signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
            for sig in self._signals:
                self._prev_handlers[sig] = signal.signal(sig, _record)
        except BaseException:
            self.close()
            raise

    @property
    def signals(self) -> tuple[int, ...]:
        return self._signals

    @property
    def closed(self) -> bool:
        return self._rsock is None

    def fileno(self) -> int:
        if self._rsock is None:
            raise ValueError("the signal queue is closed")
        return self._rsock.fileno()

    def drain(self) -> list[int]:
        """Every signal received since the last drain, oldest first, duplicates kept (two
        SIGINTs can mean "stop now" to the caller). Non-blocking; [] if none. A signal with a
        name comes back as a `signal.Signals`; a real-time one as its number."""
        if self._rsock is None:
            return []
        data = bytearray()
        while True:
            try:
                chunk = self._rsock.recv(4096)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:
                break
            data += chunk
        out: list[int] = []
        for b in data:
            try:
                out.append(signal.Signals(b))
            except ValueError:  # SIGRTMIN+1 .. SIGRTMAX-1 have no enum member
                out.append(b)
        return out

    def close(self) -> None:
        """Restore the previous handlers and wakeup fd, then close the socket pair.
        Idempotent. A previous handler that was installed from C (``getsignal`` gave None)
        cannot be reinstalled from Python; it becomes SIG_DFL."""
        for sig, prev in reversed(list(self._prev_handlers.items())):
            signal.signal(sig, signal.SIG_DFL if prev is None else prev)
        self._prev_handlers.clear()
        if self._prev_wakeup is not None:
            signal.set_wakeup_fd(self._prev_wakeup)
            self._prev_wakeup = None
        for sock in (self._rsock, self._wsock):
            if sock is not None:
                sock.close()
        self._rsock = self._wsock = None

    def __enter__(self) -> SignalQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
