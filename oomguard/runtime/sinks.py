"""oomguard's own output: its stdout/stderr as non-blocking sinks, and the lines they drop.

The loop never blocks on a stalled reader of oomguard's output (DESIGN: "the loop never
blocks"): every write goes to an `OutputSink` with a bounded buffer, which drops and counts
what does not fit. This module registers a sink for EPOLLOUT exactly while it holds unwritten
lines, makes the output pump when a service's output is prefixed, and reports dropped lines
as `output_dropped` events, rate-limited.
"""

from __future__ import annotations

import select
from typing import TYPE_CHECKING, Any

from oomguard.observe.sink import SELF, OutputSink
from oomguard.runtime.output import OutputPump

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping

    from oomguard.events.loop import Handler, Loop
    from oomguard.observe.log import Logger

#: At most one `output_dropped` report per stream and source this often: a stalled reader can
#: cost thousands of lines a second, and the report about them must not become a flood itself.
DROP_REPORT_INTERVAL = 10.0


class Sinks:
    """The sinks of oomguard's output fds, by fd: the caller's (e.g. the log's stderr), plus
    any made here for the pump (`own`, closed here)."""

    def __init__(
        self,
        loop: Loop,
        log: Logger,
        emit: Callable[..., None],
        *,
        stdout_fd: int,
        stderr_fd: int,
        sinks: Mapping[int, OutputSink] | None = None,
    ) -> None:
        self.loop = loop
        self.log = log
        self.emit = emit
        self.stdout_fd = stdout_fd
        self.stderr_fd = stderr_fd
        self.sinks: dict[int, OutputSink] = dict(sinks or {})
        self.own: list[OutputSink] = []
        self.pump: OutputPump | None = None
        #: The services whose output goes through the pump, with their names as prefixes.
        self.prefixed: tuple[str, ...] = ()
        #: Sinks registered in the loop for EPOLLOUT, by the fd registered.
        self._watched: dict[int, OutputSink] = {}
        #: Dropped-line totals already reported, and when the next report may go out.
        self._reported: dict[tuple[str, str], int] = {}
        self.next_report = 0.0

    def make_pump(self, prefixed: Collection[str], width: int) -> OutputPump | None:
        """The pump for the services in `prefixed` (None when there are none)."""
        if not prefixed:
            return None
        self.prefixed = tuple(prefixed)
        for fd, name in ((self.stdout_fd, "stdout"), (self.stderr_fd, "stderr")):
            if fd not in self.sinks:
                sink = OutputSink(fd, name=name)
                self.sinks[fd] = sink
                self.own.append(sink)
        self.pump = OutputPump(
            self.loop, width, stdout_fd=self.stdout_fd, stderr_fd=self.stderr_fd, sinks=self.sinks
        )
        return self.pump

    def _distinct(self) -> list[OutputSink]:
        return list({id(s): s for s in self.sinks.values()}.values())

    def watch(self) -> None:
        """Wait for EPOLLOUT on exactly the sinks that hold unwritten lines (a sink written
        from another thread, e.g. the log, is picked up on the next turn)."""
        for sink in self._distinct():
            fd = sink.poll_fd()
            if sink.pending and fd >= 0 and fd not in self._watched:
                self.loop.add(fd, select.EPOLLOUT, _flush_on_ready(sink))
                self._watched[fd] = sink
        for fd, sink in list(self._watched.items()):
            if not sink.pending or sink.poll_fd() != fd:
                self.loop.remove(fd)
                del self._watched[fd]

    def watching(self, fd: int) -> bool:
        return fd in self._watched

    def dropped(self) -> dict[tuple[str, str], int]:
        """Lines dropped because oomguard's stdout/stderr reader stalled, by (source, stream);
        the source is a service name or "oomguard" (its own log lines)."""
        out: dict[tuple[str, str], int] = {}
        # Every series that can rise exists from the start, at 0 (a counter that appears only
        # once something went wrong cannot be alerted on with increase()).
        log_sink = self.sinks.get(self.stderr_fd)
        if log_sink is not None and log_sink not in self.own:  # the caller's: the log's
            out[(SELF, log_sink.name)] = 0
        if self.pump is not None:
            for sink in self.pump.sinks:
                out.update(((name, sink.name), 0) for name in self.prefixed)
        for sink in self._distinct():
            for source, n in list(sink.dropped_by.items()):
                out[(source, sink.name)] = out.get((source, sink.name), 0) + n
        return out

    def unreported(self) -> bool:
        return any(self._reported.get(k, 0) != n for k, n in self.dropped().items())

    def report(self, now: float, services: Collection[str], final: bool = False) -> None:
        """One `output_dropped` event (and warning) per source and stream whose count rose,
        at most every DROP_REPORT_INTERVAL seconds (and once more at the end)."""
        if not final and now < self.next_report:
            return
        rose = False
        for (source, stream), total in sorted(self.dropped().items()):
            lines = total - self._reported.get((source, stream), 0)
            if lines <= 0:
                continue
            rose = True
            self._reported[(source, stream)] = total
            service = source if source in services else None
            fields: dict[str, Any] = {"source": source, "stream": stream}
            fields.update(lines=lines, total=total)
            if source != SELF:
                # Not for the log's own lost lines: the warning would go to the stalled stream
                # it is about, be lost in turn, and call for another report ten seconds later.
                self.log.warn("output_dropped", service=service, **fields)
            self.emit("output_dropped", None, service=service, **fields)
        if rose:
            self.next_report = now + DROP_REPORT_INTERVAL

    def close(self) -> None:
        """Close the pump (flushing what it holds) and the sinks made here."""
        if self.pump is not None:
            self.pump.close()
        for fd in list(self._watched):
            self.loop.remove(fd)
        self._watched.clear()
        for sink in self.own:
            sink.close()


def _flush_on_ready(sink: OutputSink) -> Handler:
    """The loop handler of a sink's fd: writable, so write out what is buffered."""

    def on_writable(_mask: int) -> None:
        sink.flush()

    return on_writable
