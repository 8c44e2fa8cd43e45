"""`OutputPump`: services' stdout/stderr copied to oomguard's, one prefixed line at a time.

Used for services with ``log = "prefix"``: the launcher gives each such `Child` the read ends of
its output pipes, and the pump takes them over. It never blocks the loop: the pipes are
non-blocking and drained a bounded amount per turn, and lines go out through `OutputSink`s,
which drop (and count) what a stalled reader cannot take.
"""

from __future__ import annotations

import os
import select
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from oomguard.observe.sink import OutputSink

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from oomguard.runtime.launcher import Child

__all__ = ["OutputPump", "PumpKey"]


@dataclass(frozen=True)
class PumpKey:
    """One of `OutputPump`'s output pipes: what its loop handler hands to `on_ready`."""

    fd: int


class _Registry(Protocol):
    """What the pump needs from the loop (`oomguard.events.loop.Loop` satisfies it)."""

    def add(self, fd: int, events: int, handler: Callable[[int], None], /) -> None: ...

    def remove(self, fd: int, /) -> None: ...


@dataclass(eq=False)
class _Stream:
    name: str
    fd: int
    dst: OutputSink
    buf: bytearray = field(default_factory=bytearray)


class OutputPump:
    """Copies services' stdout/stderr to oomguard's, one prefixed line at a time::

        db      | LOG:  database system is ready to accept connections
        pgbouncer | ...

    Names are padded to `width` (pass the longest service name; it grows if a longer name is
    attached). A service's stdout goes to `stdout_fd`, its stderr to `stderr_fd`. Lines longer
    than `max_line` are split; a last line without a newline is flushed at EOF.

    The pump owns the pipes it is given (`attach` takes them from the Child) and registers them
    in the loop with ``EPOLLIN``, each with a handler that calls `on_ready(key)`. Lines go out
    through one `OutputSink` per destination (pass `sinks` to share them, e.g. stderr's with
    the log): never a blocking write. When whoever reads oomguard's output
    stalls, lines beyond the sink's bound are dropped and counted (`OutputSink.dropped_by`,
    per service), and the pipes keep being drained, so neither the loop nor the services block.
    """

    def __init__(
        self,
        loop: _Registry,
        width: int = 0,
        *,
        stdout_fd: int = 1,
        stderr_fd: int = 2,
        max_line: int = 64 * 1024,
        sinks: Mapping[int, OutputSink] | None = None,
    ) -> None:
        self._loop = loop
        self.width = width
        self._max_line = max_line
        self._streams: dict[int, _Stream] = {}
        self._sinks: dict[int, OutputSink] = dict(sinks or {})
        #: The sinks this pump made (and closes); the caller closes the ones it passed in.
        self._own: list[OutputSink] = []
        for fd, name in ((stdout_fd, "stdout"), (stderr_fd, "stderr")):
            if fd not in self._sinks:
                sink = OutputSink(fd, name=name)
                self._sinks[fd] = sink
                self._own.append(sink)
        self._stdout = self._sinks[stdout_fd]
        self._stderr = self._sinks[stderr_fd]

    @property
    def sinks(self) -> list[OutputSink]:
        """Where the lines go, one per distinct destination fd."""
        return list({id(s): s for s in (self._stdout, self._stderr)}.values())

    @property
    def dropped_lines(self) -> int:
        return sum(s.dropped_lines for s in self.sinks)

    @property
    def active(self) -> int:
        """How many pipes are still open."""
        return len(self._streams)

    def attach(self, child: Child) -> list[PumpKey]:
        """Take over `child`'s output pipes (its fields become -1) and register them."""
        self.width = max(self.width, len(child.name))
        keys: list[PumpKey] = []
        for attr, dst in (("stdout_fd", self._stdout), ("stderr_fd", self._stderr)):
            fd: int = getattr(child, attr)
            if fd < 0:
                continue
            setattr(child, attr, -1)
            self._streams[fd] = _Stream(child.name, fd, dst)
            key = PumpKey(fd)
            try:
                self._loop.add(fd, select.EPOLLIN, self._handler(key))
            except BaseException:
                del self._streams[fd]
                os.close(fd)
                raise
            keys.append(key)
        return keys

    def _handler(self, key: PumpKey) -> Callable[[int], None]:
        return lambda _mask: self.on_ready(key)

    def on_ready(self, key: PumpKey, budget: int = 1 << 20) -> None:
        """Read what is available (up to `budget` bytes, for fairness between services; the
        level-triggered loop calls again for the rest) and write out complete lines."""
        stream = self._streams.get(key.fd)
        if stream is None:
            return  # already closed earlier in this batch
        got = 0
        while got < budget:
            try:
                chunk = os.read(stream.fd, 65536)
            except BlockingIOError:
                break
            except OSError:  # pragma: no cover - EIO etc.: treat as EOF
                chunk = b""
            if not chunk:
                self._finish(stream)
                return
            got += len(chunk)
            stream.buf += chunk
            self._emit(stream, final=False)

    def _prefix(self, name: str) -> bytes:
        return f"{name:<{self.width}} | ".encode()

    def _emit(self, stream: _Stream, final: bool) -> None:
        buf = stream.buf
        prefix = self._prefix(stream.name)
        lines: list[bytes] = []
        start = 0
        while True:
            nl = buf.find(b"\n", start, start + self._max_line)
            if nl >= 0:
                lines.append(prefix + buf[start : nl + 1])
                start = nl + 1
            elif len(buf) - start >= self._max_line:
                lines.append(prefix + buf[start : start + self._max_line] + b"\n")
                start += self._max_line
            else:
                break
        if final and start < len(buf):
            lines.append(prefix + buf[start:] + b"\n")
            start = len(buf)
        del buf[:start]
        if lines:
            stream.dst.write_lines(lines, stream.name)

    def _finish(self, stream: _Stream) -> None:
        self._emit(stream, final=True)
        self._loop.remove(stream.fd)
        del self._streams[stream.fd]
        os.close(stream.fd)

    def close(self, flush_timeout: float = 1.0) -> None:
        """Drain whatever is buffered in the pipes right now, flush partial lines, close all.
        The sinks the pump made get up to `flush_timeout` seconds to drain."""
        for stream in list(self._streams.values()):
            self.on_ready(PumpKey(stream.fd))
            if stream.fd in self._streams:
                self._finish(stream)
        for sink in self._own:
            sink.close(flush_timeout)
