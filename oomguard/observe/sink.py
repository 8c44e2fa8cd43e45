"""Writes to oomguard's own stdout/stderr that never block: a bounded buffer, dropped lines counted.

Whoever reads oomguard's output may stall (``oomguard run … | sleep 25``, a wedged log shipper, a
terminal paused with ^S). A blocking ``write()`` to that pipe would freeze the supervisor's one
thread: no reaping, no OOM reaction, SIGTERM ignored. So every line goes through an `OutputSink`:
it writes what the fd takes *now*, keeps the rest in a buffer of at most `limit` bytes, and drops
(and counts, per source) whole lines that do not fit. The loop registers `poll_fd()` for
``EPOLLOUT`` while `pending` is non-zero and calls `flush()` when it turns writable.

Why not just set O_NONBLOCK on fd 1: the flag belongs to the *open file description*, which
oomguard shares with every process that inherited the same stdout: its services in ``inherit``
mode, the shell that started it, the container runtime. Setting it would hand them EAGAIN on
writes they expect to block, and many programs treat that as a fatal write error. Instead, per
kind of file:

- pipe/FIFO or terminal: open ``/proc/self/fd/N`` again. That makes a *new* open file
  description of the same pipe or tty, whose O_NONBLOCK is ours alone (O_NOCTTY: never acquire a
  controlling terminal by accident).
- socket (journald's stream socket under systemd): ``send(MSG_DONTWAIT)`` is non-blocking per call
  and changes no shared flag.
- regular file, block device, /dev/null: a write does not wait for a reader; plain ``write()``.
- anything else, or a reopen that fails (no /proc, EACCES): ``poll(POLLOUT, 0)`` before each write
  of at most PIPE_BUF bytes. A pipe that polls writable has a free slot, so such a write does not
  block unless another writer fills the slot in between (a narrow race, the fallback's price).

Thread-safe: the log writes from the PSI and metrics threads too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import stat
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Literal

from oomguard import proc

if TYPE_CHECKING:
    from collections.abc import Iterable

Mode = Literal["direct", "private", "socket", "polled"]

#: Default bound of the buffer, per stream.
DEFAULT_LIMIT = 256 * 1024
#: The most one write() is handed (a pipe takes at most 64 KiB anyway by default).
_CHUNK = 64 * 1024
#: POSIX: writes of at most this many bytes to a pipe are atomic (Linux: 4096).
_PIPE_BUF = select.PIPE_BUF
#: The source name under which oomguard's own log lines are counted.
SELF = "oomguard"


def _open_private(fd: int) -> tuple[Mode, int, socket.socket | None]:
    """How to write to `fd` without blocking and without touching its shared flags."""
    st = os.fstat(fd)
    mode = st.st_mode
    if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
        return "direct", fd, None
    if stat.S_ISSOCK(mode):
        # A dup (os.dup is CLOEXEC), so closing the socket object never closes the caller's fd.
        return "socket", fd, socket.socket(fileno=os.dup(fd))
    if stat.S_ISCHR(mode) and not os.isatty(fd):
        return "direct", fd, None  # /dev/null, /dev/kmsg: never wait for a reader
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        try:
            own = proc.reopen_fd(fd, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:  # no /proc, EACCES, ENXIO (a FIFO without a reader)
            return "polled", fd, None
        st2 = os.fstat(own)
        if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino):  # pragma: no cover - paranoia
            os.close(own)
            return "polled", fd, None
        return "private", own, None
    return "polled", fd, None


class OutputSink:
    """Non-blocking, bounded, line-preserving writer for one of oomguard's output fds.

    The caller keeps owning `fd`; the sink owns only what it opened (a private description or
    a dup'd socket) and closes it in `close()`.
    """

    def __init__(self, fd: int, *, name: str, limit: int = DEFAULT_LIMIT) -> None:
        self.fd = fd
        self.name = name
        self.limit = limit
        self._lock = threading.Lock()
        self._pending: deque[tuple[bytes, str]] = deque()
        #: Bytes of the first pending line already written.
        self._offset = 0
        self._size = 0
        self._broken = False
        self._closed = False
        #: Lines dropped, per source (a service name, or `SELF` for oomguard's own log).
        self.dropped_by: dict[str, int] = {}
        try:
            self.mode, self._wfd, self._sock = _open_private(fd)
        except OSError:  # a closed fd: nothing will ever be written
            self.mode, self._wfd, self._sock = "direct", fd, None
            self._broken = True

    # -- state -------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Bytes buffered, waiting for the fd to turn writable."""
        return self._size - self._offset

    @property
    def dropped_lines(self) -> int:
        return sum(self.dropped_by.values())

    def poll_fd(self) -> int:
        """The fd to watch for ``EPOLLOUT`` while `pending` is non-zero."""
        return self._sock.fileno() if self._sock is not None else self._wfd

    # -- writing -----------------------------------------------------------------------------

    def write_lines(self, lines: Iterable[bytes], source: str) -> int:
        """Queue whole `lines` (each ending in a newline) and write what the fd takes now.
        A line that does not fit in the buffer is dropped and counted; returns how many lines
        of `source` were dropped during this call (a write error drops what was buffered)."""
        dropped = 0
        with self._lock:
            before = self.dropped_by.get(source, 0)
            if not (self._broken or self._closed):
                self._flush_locked()
            for line in lines:
                if not line:
                    continue
                unwritable = self._broken or self._closed
                full = self._size > 0 and self._size - self._offset + len(line) > self.limit
                if unwritable or full:
                    dropped += 1
                else:
                    # An empty buffer takes any one line, so an overlong line is never lost
                    # for its size alone (the pump splits lines at max_line anyway).
                    self._pending.append((line, source))
                    self._size += len(line)
            if dropped:
                self.dropped_by[source] = self.dropped_by.get(source, 0) + dropped
            if not (self._broken or self._closed):
                self._flush_locked()
            return self.dropped_by.get(source, 0) - before

    def flush(self) -> None:
        """Write as much of the buffer as the fd takes now (never blocks)."""
        with self._lock:
            if not self._closed:
                self._flush_locked()

    def _flush_locked(self) -> None:
        # The first write is a small probe: on a stalled fd it fails with EAGAIN, and copying
        # 64 KiB of buffer for that on every queued line would cost more than the lines.
        chunk = _PIPE_BUF
        while self._pending:
            lines = iter(self._pending)
            data = bytearray(next(lines)[0][self._offset :])
            for line, _ in lines:
                if len(data) + len(line) > chunk:
                    break
                data += line
            # Polled mode stays at PIPE_BUF: whole lines in one atomic write that a writable
            # pipe takes without blocking.
            chunk = _PIPE_BUF if self.mode == "polled" else _CHUNK
            try:
                n = self._try_write(memoryview(data))
            except OSError as err:
                # EPIPE: the reader is gone for good; later lines go straight to the counter.
                # Anything else (ENOSPC, EIO): lose what is buffered, try again with new lines.
                self._drop_pending()
                if err.errno in (errno.EPIPE, errno.EBADF, errno.ECONNRESET):
                    self._broken = True
                return
            if n == 0:
                return
            self._consume(n)

    def _consume(self, n: int) -> None:
        while n and self._pending:
            line = self._pending[0][0]
            left = len(line) - self._offset
            if n < left:
                self._offset += n
                return
            n -= left
            self._pending.popleft()
            self._size -= len(line)
            self._offset = 0

    def _drop_pending(self) -> None:
        for _, source in self._pending:
            self.dropped_by[source] = self.dropped_by.get(source, 0) + 1
        self._pending.clear()
        self._size = self._offset = 0

    def _try_write(self, view: memoryview) -> int:
        """Bytes written now; 0 if the fd would block. OSError for a real failure."""
        try:
            if self._sock is not None:
                return self._sock.send(view, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            if self.mode == "polled":
                p = select.poll()
                p.register(self._wfd, select.POLLOUT)
                ready = p.poll(0)
                if not ready or not ready[0][1] & select.POLLOUT:
                    if ready and ready[0][1] & (select.POLLERR | select.POLLNVAL):
                        raise OSError(errno.EPIPE, os.strerror(errno.EPIPE))
                    return 0
                view = view[:_PIPE_BUF]
            return os.write(self._wfd, view)
        except (BlockingIOError, InterruptedError):
            return 0

    # -- teardown ----------------------------------------------------------------------------

    def close(self, timeout: float = 1.0) -> None:
        """Give the buffer up to `timeout` seconds to drain, drop (and count) the rest, and
        close what the sink opened. Later writes are counted as dropped. Idempotent."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._closed:
                    return
                if not self._broken:
                    self._flush_locked()
                if not self._pending or self._broken:
                    break
                fd = self.poll_fd()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            p = select.poll()
            p.register(fd, select.POLLOUT)
            p.poll(min(left, 0.1) * 1000)
        with self._lock:
            self._drop_pending()
            self._closed = True
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            elif self._wfd != self.fd and self._wfd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._wfd)
            self._wfd = -1


class SinkStream:
    """The text-stream face of a sink, for `observe.log.Logger`: each ``write`` is one whole
    log line (the logger writes a line at a time), counted under `SELF` if dropped."""

    def __init__(self, sink: OutputSink) -> None:
        self.sink = sink

    def write(self, text: str, /) -> int:
        self.sink.write_lines([text.encode("utf-8", "backslashreplace")], SELF)
        return len(text)

    def flush(self) -> None:
        """Nothing to do: `write` already wrote what the fd takes."""
