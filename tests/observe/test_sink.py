"""OutputSink: oomguard's own output never blocks, keeps whole lines, counts what it drops."""

from __future__ import annotations

import fcntl
import io
import os
import socket
import time
from typing import TYPE_CHECKING

import pytest

from oomguard.observe import sink as sinkmod
from oomguard.observe.log import Logger
from oomguard.observe.sink import SELF, OutputSink, SinkStream

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

LINE = b"x" * 99 + b"\n"


@pytest.fixture
def stalled_pipe() -> Iterator[tuple[int, int]]:
    """A pipe nobody reads: a blocking write to `w` would hang once 64 KiB are in it."""
    r, w = os.pipe()
    try:
        yield r, w
    finally:
        os.close(r)
        os.close(w)


def drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    out = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def nonblocking(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)


def test_a_stalled_pipe_never_blocks_and_drops_whole_lines(stalled_pipe: tuple[int, int]) -> None:
    r, w = stalled_pipe
    sink = OutputSink(w, name="stdout", limit=8 * 1024)
    assert sink.mode == "private"
    started = time.monotonic()
    for _ in range(50):
        sink.write_lines([LINE] * 100, "db")  # 500 KiB into a 64 KiB pipe
    assert time.monotonic() - started < 30  # a blocking write would hang here forever
    # The shared open file description is left as it was: other holders of it still block.
    assert not nonblocking(w)
    assert 0 < sink.pending <= 8 * 1024
    assert sink.dropped_by["db"] > 0
    written = drain(r)
    sink.flush()
    written += drain(r)
    sink.close()
    written += drain(r)
    # Whole lines only, in order; every line is either written or counted.
    assert written == LINE * (len(written) // len(LINE))
    assert len(written) // len(LINE) + sink.dropped_lines == 5000
    sink.close()  # idempotent


def test_lines_wait_in_the_buffer_and_go_out_when_the_reader_catches_up(
    stalled_pipe: tuple[int, int],
) -> None:
    r, w = stalled_pipe
    sink = OutputSink(w, name="stdout", limit=1 << 20)
    n = 0
    while sink.pending == 0:  # fill the pipe itself
        sink.write_lines([LINE], "db")
        n += 1
    sink.write_lines([b"last\n"], "db")
    got = drain(r)
    while sink.pending:
        sink.flush()
        got += drain(r)
    assert got == LINE * n + b"last\n" and sink.dropped_lines == 0
    sink.close()


def test_a_gone_reader_is_counted_not_raised() -> None:
    r, w = os.pipe()
    os.close(r)
    sink = OutputSink(w, name="stdout")
    try:
        assert sink.write_lines([LINE, LINE], "db") == 2
        assert sink.write_lines([LINE], SELF) == 1
        assert sink.dropped_by == {"db": 2, SELF: 1}
    finally:
        sink.close()
        os.close(w)


def test_a_socket_is_written_with_msg_dontwait() -> None:
    a, b = socket.socketpair()
    try:
        sink = OutputSink(a.fileno(), name="stderr", limit=4096)
        assert sink.mode == "socket"
        for _ in range(200):
            sink.write_lines([LINE] * 100, "db")
        assert sink.dropped_lines > 0 and a.getblocking()
        sink.close(timeout=0)
    finally:
        a.close()
        b.close()


def test_a_regular_file_is_written_directly(tmp_path: Path) -> None:
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        sink = OutputSink(fd, name="stdout")
        assert sink.mode == "direct"
        sink.write_lines([b"a\n", b"b\n"], "db")
        assert sink.pending == 0
        sink.close()
    finally:
        os.close(fd)
    assert path.read_bytes() == b"a\nb\n"


def test_without_proc_the_pipe_is_polled_before_each_small_write(
    stalled_pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    r, w = stalled_pipe
    real_open = os.open

    def no_proc(path: str, *args: int) -> int:
        if str(path).startswith("/proc/self/fd/"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args)

    monkeypatch.setattr(sinkmod.os, "open", no_proc)
    sink = OutputSink(w, name="stdout", limit=8 * 1024)
    assert sink.mode == "polled" and sink.poll_fd() == w
    started = time.monotonic()
    for _ in range(20):
        sink.write_lines([LINE] * 100, "db")
    assert time.monotonic() - started < 30
    assert sink.dropped_lines > 0 and not nonblocking(w)
    sink.close(timeout=0)
    assert drain(r) == LINE * (2000 - sink.dropped_lines)


def test_close_gives_up_after_its_timeout(stalled_pipe: tuple[int, int]) -> None:
    _, w = stalled_pipe
    sink = OutputSink(w, name="stdout")
    while sink.pending == 0:
        sink.write_lines([LINE], "db")
    started = time.monotonic()
    sink.close(timeout=0.2)
    assert time.monotonic() - started < 30
    assert sink.dropped_lines == 1 and sink.pending == 0
    assert sink.write_lines([LINE], "db") == 1  # closed: counted


def test_the_log_on_a_stalled_stderr_never_blocks(stalled_pipe: tuple[int, int]) -> None:
    _, w = stalled_pipe
    sink = OutputSink(w, name="stderr", limit=4096)
    log = Logger(SinkStream(sink), "kv", lambda: 0.0)
    started = time.monotonic()
    for i in range(5000):
        log.info("tick", n=i, pad="y" * 50)
    assert time.monotonic() - started < 30
    assert sink.dropped_by[SELF] > 0 and log.dropped == 0
    sink.close(timeout=0)


def test_sink_stream_is_a_logger_stream() -> None:
    buf = io.BytesIO()
    r, w = os.pipe()
    try:
        sink = OutputSink(w, name="stderr")
        Logger(SinkStream(sink), "kv", lambda: 0.0, timestamps=False).info("hello", who="x")
        sink.close()
        buf.write(drain(r))
    finally:
        os.close(r)
        os.close(w)
    assert buf.getvalue() == b"hello prog=x\n".replace(b"prog=x", b"who=x")
