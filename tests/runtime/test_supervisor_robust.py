"""The supervisor never crashes on an absurd deadline and logs a clean end as info.

Set up on the fake cgroupfs of tests/cgroup/fakefs.py, like tests/runtime/test_supervisor.py;
no service is spawned.
"""

from __future__ import annotations

import io
import os
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from oomguard.cgroup.path import CgroupPath
from oomguard.config.compile import compile_plan
from oomguard.config.model import Config
from oomguard.observe.log import Logger
from oomguard.policy import restart as rp
from oomguard.runtime.supervisor import RunIO, Supervisor
from tests.cgroup.fakefs import FakeCgroupFS

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def out() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def sup(tmp_path: Path, out: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> Iterator[Supervisor]:
    fs = FakeCgroupFS(tmp_path / "cgroup")
    fs.add_proc(CgroupPath.ROOT, os.getpid())
    config = Config.from_mapping(
        {
            "oomguard": {"cgroup": "/og", "state_dir": str(tmp_path / "state")},
            "service": {
                "db": {"role": "primary", "command": ["sleep", "1000"], "restart": "never"},
                "side": {"command": ["sleep", "1000"]},
            },
        }
    )
    monkeypatch.setattr(Supervisor, "_protect_self", lambda self: None, raising=False)
    s = Supervisor(
        compile_plan(config), fs, CgroupPath.ROOT, Logger(out), io=RunIO(clock=lambda: 1000.0)
    )
    s._setup()
    s.now = 1000.0
    try:
        yield s
    finally:
        s._close()


@pytest.mark.parametrize("field", ["start_secs", "stop_timeout", "backoff_reset"])
@pytest.mark.parametrize("value", [3600.0 * 1000, 1e300])
def test_an_absurd_duration_does_not_crash_the_loop(
    sup: Supervisor, field: str, value: float
) -> None:
    # backoff_reset = "1000h" overflowed epoll (rc 70); start_secs/stop_timeout = 1e300 gave
    # "timestamp out of range". Each field is the deadline of one state.
    svc = sup.services["side"]
    svc.params = replace(svc.params, **{field: value})
    rec = replace(svc.rec, pid=4242, started_at=sup.now)
    if field == "start_secs":
        svc.rec = replace(rec, state=rp.State.STARTING)
    elif field == "stop_timeout":
        svc.rec = replace(rec, state=rp.State.STOPPING, stop_deadline=sup.now + value)
    else:
        svc.rec = replace(rec, state=rp.State.RUNNING, attempt=1, running_since=sup.now)
    assert rp.next_deadline(svc.params, svc.rec) is not None
    timeout = sup._timeout()
    assert timeout is not None and timeout > 0
    r, w = os.pipe()
    try:
        seen: list[int] = []
        sup.loop.add(r, 1, seen.append)
        os.write(w, b"x")
        assert sup.loop.run_once(timeout) == 1 and seen == [1]
    finally:
        sup.loop.remove(r)
        os.close(r)
        os.close(w)


def test_a_nan_or_infinite_extension_deadline_neither_spins_nor_crashes(sup: Supervisor) -> None:
    class Odd:
        def __init__(self, at: float) -> None:
            self.at = at

        def deadline(self) -> float:
            return self.at

    sup.extensions.append(Odd(float("nan")))  # type: ignore[arg-type]
    assert sup._timeout() is None  # never due, so no wake-up (not a 0 s busy loop)
    sup.extensions.append(Odd(float("inf")))  # type: ignore[arg-type]
    timeout = sup._timeout()
    assert timeout == float("inf")
    assert sup.loop.wait(0 if timeout is None else -timeout) == []
    sup.extensions.clear()


def test_a_clean_exit_with_restart_never_is_info_not_fatal(
    sup: Supervisor, out: io.StringIO
) -> None:
    db = sup.services["db"]
    db.rec = replace(db.rec, state=rp.State.RUNNING, pid=4242, started_at=sup.now)
    sup.feed(db, rp.Exited(rp.ExitInfo(code=0)))
    text = out.getvalue()
    assert "essential_exited service=db status=0" in text
    assert "level=error" not in text and "fatal" not in text
    outcome = sup._outcome()
    assert outcome.status == 0 and outcome.fatal_service is None


def test_a_failed_essential_exit_is_still_an_error(sup: Supervisor, out: io.StringIO) -> None:
    db = sup.services["db"]
    db.rec = replace(db.rec, state=rp.State.RUNNING, pid=4242, started_at=sup.now)
    sup.feed(db, rp.Exited(rp.ExitInfo(code=3)))
    assert "fatal level=error service=db status=3" in out.getvalue()
    assert sup._outcome().fatal_service == "db"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_dropped_output_is_reported_rate_limited_and_wakes_the_loop_to_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = FakeCgroupFS(tmp_path / "cgroup")
    fs.add_proc(CgroupPath.ROOT, os.getpid())
    config = Config.from_mapping(
        {
            "oomguard": {"cgroup": "/og", "state_dir": str(tmp_path / "state")},
            "service": {"db": {"role": "primary", "command": ["true"], "log": "prefix"}},
        }
    )
    monkeypatch.setattr(Supervisor, "_protect_self", lambda self: None, raising=False)
    r, w = os.pipe()  # oomguard's stdout, read by nobody
    clock = Clock()
    out = io.StringIO()
    s = Supervisor(
        compile_plan(config), fs, CgroupPath.ROOT, Logger(out), io=RunIO(clock=clock, stdout_fd=w)
    )
    try:
        s._setup()
        s.now = clock()
        sink = s.output.sinks[w]
        assert sink.name == "stdout" and s.output.pump is not None
        line = b"db | " + b"y" * 95 + b"\n"
        while sink.pending == 0:
            sink.write_lines([line], "db")
        s.output.watch()
        assert sink.poll_fd() in s.loop  # the loop waits for EPOLLOUT on the sink...
        for _ in range(5000):
            sink.write_lines([line], "db")
        s._tick()
        reports = [e for e in _events(tmp_path) if e["kind"] == "output_dropped"]
        first = sink.dropped_by["db"]
        assert [(e["service"], e["stream"], e["lines"]) for e in reports] == [
            ("db", "stdout", first)
        ]
        assert "output_dropped level=warn service=db source=db stream=stdout" in out.getvalue()
        assert s.output_dropped() == {("db", "stdout"): first, ("db", "stderr"): 0}
        # More drops within the interval: no second report yet, but a wake-up for it.
        sink.write_lines([line] * 10, "db")
        s._tick()
        assert len([e for e in _events(tmp_path) if e["kind"] == "output_dropped"]) == 1
        assert s._timeout() == pytest.approx(10.0)
        clock.t += 10
        s.now = clock()
        s._tick()
        last = [e for e in _events(tmp_path) if e["kind"] == "output_dropped"][-1]
        assert last["lines"] == 10 and last["total"] == first + 10
        # ...and once the reader catches up, flushes on EPOLLOUT and stops watching.
        while sink.pending:
            os.read(r, 1 << 16)
            s.loop.run_once(1)
        s.output.watch()
        assert sink.poll_fd() not in s.loop
    finally:
        s._close()
        os.close(r)
        os.close(w)


def _events(tmp_path: Path) -> list[dict[str, object]]:
    import json

    text = (tmp_path / "state" / "events.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


class FakeChild:
    def __init__(self) -> None:
        self.pid = 4242
        self.sent: list[int] = []

    def send_signal(self, sig: int) -> bool:
        self.sent.append(sig)
        return True


def test_signals_are_forwarded_to_the_primary_ignored_or_stop(
    sup: Supervisor, out: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    db = sup.services["db"]
    child = FakeChild()
    db.child = child  # type: ignore[assignment]
    arrived = [
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGALRM,
        signal.SIGHUP,
        signal.SIGWINCH,
        signal.SIGRTMIN + 3,
        signal.SIGTSTP,
        signal.SIGTTOU,
    ]
    assert sup.signals is not None
    monkeypatch.setattr(sup.signals, "drain", lambda: list(arrived))
    try:
        sup._on_signals()
        assert child.sent == arrived[:6]
        text = out.getvalue()
        for name in ("SIGUSR1", "SIGUSR2", "SIGALRM", "SIGHUP", "SIGWINCH", "SIGRTMIN+3"):
            assert f"forward signal={name} service=db sent=true" in text
        assert "signal_ignored signal=SIGTSTP" in text and "signal_ignored signal=SIGTTOU" in text
        assert sup.shutdown is None  # none of these stops anything
        reaped: list[bool] = []
        monkeypatch.setattr(sup.lifecycle, "on_exits", lambda: reaped.append(True))
        arrived[:] = [signal.SIGCHLD]
        sup._on_signals()
        assert reaped == [True] and len(child.sent) == 6  # reaps; nothing forwarded
        arrived[:] = [signal.SIGQUIT]
        sup._on_signals()
        assert sup.shutdown is not None and sup.shutdown.reason == "received SIGQUIT"
    finally:
        db.child = None


def test_the_logs_own_dropped_lines_are_an_event_but_no_log_line(
    sup: Supervisor, out: io.StringIO, tmp_path: Path
) -> None:
    from oomguard.observe.sink import SELF, OutputSink

    r, w = os.pipe()
    os.close(r)  # the log's reader is gone
    sink = OutputSink(w, name="stderr")
    try:
        sup.output.sinks[w] = sink
        sink.write_lines([b"lost\n"], SELF)
        sup.output.report(sup.now, sup.services)
        reports = [e for e in _events(tmp_path) if e["kind"] == "output_dropped"]
        assert [(e["source"], e["lines"]) for e in reports] == [(SELF, 1)]
        assert "output_dropped" not in out.getvalue()
        assert not sup.output.unreported()  # nothing calls for another report
    finally:
        del sup.output.sinks[w]
        sink.close()
        os.close(w)
