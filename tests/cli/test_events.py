"""`oomguard events`: formatting, filters, errors (through the real entry point), and --follow
(a real subprocess: inotify, rotation, SIGTERM)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pytest

from oomguard.cli.events import format_event
from oomguard.cli.main import main
from oomguard.observe.eventlog import EVENTS_FILE, EventLog
from oomguard.observe.state import make_state, write_state

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parents[2]
# 2026-11-25T22:31:02Z
T0 = 1795645862.0


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(["events", *argv])
    out, err = capsys.readouterr()
    code = info.value.code
    assert isinstance(code, int)
    return code, out, err


def write_events(
    state_dir: Path, *events: tuple[float, str, str | None, dict[str, object]]
) -> None:
    clock = [0.0]
    with EventLog(state_dir, clock_wall=lambda: clock[0]) as log:
        for ts, kind, service, details in events:
            clock[0] = ts
            log.append(kind, service=service, **details)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    write_events(
        tmp_path,
        (T0, "oom_kill", "backup",
         {"cgroup": "/oomguard/sidecars/backup", "delta": 1, "current": 64 << 20, "max": 64 << 20}),
        (T0 + 1, "restart", "backup", {"reason": "oom_kill", "attempt": 3, "delay": 0.4}),
        (T0 + 2, "start", "db", {"pid": 123, "note": "two words"}),
    )  # fmt: skip
    return tmp_path


def test_human_output(capsys: pytest.CaptureFixture[str], state_dir: Path) -> None:
    code, out, err = run(capsys, "--state-dir", str(state_dir))
    assert code == 0 and err == ""
    assert out.splitlines() == [
        "2026-11-25T22:31:02Z  backup   oom_kill  "
        "cgroup=/oomguard/sidecars/backup delta=1 current=64M max=64M",
        "2026-11-25T22:31:03Z  backup   restart   reason=oom_kill attempt=3 delay=0.4s",
        '2026-11-25T22:31:04Z  db       start     pid=123 note="two words"',
    ]


def test_an_event_of_an_older_log_shows_its_slice_as_cgroup() -> None:
    # A log written before "slice" was renamed "cgroup" has only "slice".
    event = {"ts": T0, "kind": "exit", "service": "db", "slice": "/og/db", "code": 0}
    assert format_event(event) == "2026-11-25T22:31:02Z  db       exit      cgroup=/og/db code=0"


def test_a_new_event_shows_its_cgroup_once() -> None:
    event = {"ts": T0, "kind": "exit", "service": "db", "cgroup": "/og/db", "slice": "/og/db"}
    assert format_event({**event, "code": 0}) == (
        "2026-11-25T22:31:02Z  db       exit      cgroup=/og/db code=0"
    )


def test_format_event_edge_cases() -> None:
    assert format_event({"ts": T0, "kind": "supervisor_start", "service": None, "slice": None}) == (
        "2026-11-25T22:31:02Z  -        supervisor_start"
    )
    line = format_event(
        {"ts": T0, "kind": "evict", "service": "backup", "slice": None, "high": None,
         "x_bytes": 2048, "uptime": 90, "timeout_s": 1.5, "max": -1, "error": "a\nb"}
    )  # fmt: skip
    assert line.endswith(
        'evict     high=max x_bytes=2K uptime=90s timeout_s=1.5s max=-1 error="a\\nb"'
    )


def test_json_output_is_the_stored_objects(
    capsys: pytest.CaptureFixture[str], state_dir: Path
) -> None:
    code, out, _ = run(capsys, "--state-dir", str(state_dir), "--json")
    assert code == 0
    stored = [json.loads(line) for line in (state_dir / EVENTS_FILE).read_text().splitlines()]
    assert [json.loads(line) for line in out.splitlines()] == stored


def test_service_filter(capsys: pytest.CaptureFixture[str], state_dir: Path) -> None:
    code, out, _ = run(capsys, "--state-dir", str(state_dir), "--service", "db")
    assert code == 0
    assert [line.split()[2] for line in out.splitlines()] == ["start"]


def test_since_filter(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    now = time.time()
    write_events(tmp_path, (now - 600, "old", "db", {}), (now - 10, "recent", "db", {}))
    code, out, _ = run(capsys, "--state-dir", str(tmp_path), "--since", "5m", "--json")
    assert code == 0
    assert [json.loads(line)["kind"] for line in out.splitlines()] == ["recent"]
    code, out, _ = run(capsys, "--state-dir", str(tmp_path), "--since", "1h", "--json")
    assert [json.loads(line)["kind"] for line in out.splitlines()] == ["old", "recent"]


def test_state_dir_from_the_environment(
    capsys: pytest.CaptureFixture[str], state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OOMGUARD_STATE_DIR", str(state_dir))
    code, out, _ = run(capsys)
    assert code == 0 and len(out.splitlines()) == 3


def test_a_torn_last_line_is_ignored(capsys: pytest.CaptureFixture[str], state_dir: Path) -> None:
    with (state_dir / EVENTS_FILE).open("a") as f:
        f.write('{"ts": 1, "ki')
    code, out, err = run(capsys, "--state-dir", str(state_dir))
    assert code == 0 and err == "" and len(out.splitlines()) == 3


def test_missing_state_dir_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nope"
    code, out, err = run(capsys, "--state-dir", str(missing))
    assert code == 1 and out == ""
    assert err.splitlines() == [
        f"oomguard: error: state dir {missing} does not exist",
        "oomguard: hint: is oomguard running? pass --state-dir (or set $OOMGUARD_STATE_DIR) to "
        "the [oomguard] state_dir of the running supervisor",
    ]


def test_missing_log_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "--state-dir", str(tmp_path))
    assert code == 1
    assert f"oomguard: error: no event log at {tmp_path / EVENTS_FILE}" in err
    assert "is oomguard running?" in err
    assert "Traceback" not in err


def test_missing_log_with_a_live_supervisor_suggests_follow(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    write_state(tmp_path, make_state(root="/oomguard", mode="enforce", services={}, updated_at=1))
    code, _, err = run(capsys, "--state-dir", str(tmp_path))
    assert code == 1
    assert f"oomguard (pid {os.getpid()}) is running" in err and "--follow" in err


def test_bad_since_is_a_usage_error(capsys: pytest.CaptureFixture[str], state_dir: Path) -> None:
    code, out, err = run(capsys, "--state-dir", str(state_dir), "--since", "yesterday")
    assert code == 2 and out == ""
    assert "oomguard: error: --since: 'yesterday' is not a duration" in err
    assert "oomguard: hint: use a duration like 30s, 5m or 2h" in err


def test_the_command_does_not_import_pydantic() -> None:
    code = (
        "import sys, oomguard.cli.events\n"
        "assert 'pydantic' not in sys.modules, 'pydantic imported'\n"
        "assert 'prometheus_client' not in sys.modules, 'prometheus_client imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


# -- --follow ----------------------------------------------------------------------------------


class Follow:
    """`oomguard events --follow` in a subprocess, its output lines fed to queues by threads,
    so every wait has a deadline and nothing sleeps."""

    def __init__(self, *argv: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oomguard", "events", "--follow", *argv],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        self.err_lines: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for stream, q in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, q), daemon=True).start()

    @staticmethod
    def _pump(stream: IO[str], q: queue.Queue[str]) -> None:
        for line in stream:
            q.put(line.rstrip("\n"))

    def line(self, timeout: float = 20.0) -> str:
        try:
            return self.out.get(timeout=timeout)
        except queue.Empty:
            msg = f"no output line within {timeout}s; stderr: {self.err_lines}"
            raise AssertionError(msg) from None

    def wait_stderr(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.err.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise AssertionError(f"{text!r} not on stderr; got {self.err_lines}") from None
            self.err_lines.append(line)
            if text in line:
                return

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=20)
        while not self.err.empty():
            self.err_lines.append(self.err.get())
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def follow() -> Iterator[list[Follow]]:
    started: list[Follow] = []
    yield started
    for f in started:
        f.kill()


def test_follow_shows_backlog_then_new_lines_then_stops_on_sigterm(
    state_dir: Path, follow: list[Follow]
) -> None:
    f = Follow("--state-dir", str(state_dir))
    follow.append(f)
    f.wait_stderr("following")
    assert [f.line().split()[2] for _ in range(3)] == ["oom_kill", "restart", "start"]
    with EventLog(state_dir) as log:
        log.append("exit", service="db", code=1)
        log.append("restart", service="db", attempt=1)
    assert f.line().split()[1:3] == ["db", "exit"]
    assert f.line().split()[1:3] == ["db", "restart"]
    assert f.stop() == 0
    assert not any("Traceback" in line for line in f.err_lines)


def test_follow_across_rotation_with_json_and_a_service_filter(
    tmp_path: Path, follow: list[Follow]
) -> None:
    log = EventLog(tmp_path, max_bytes=400)
    log.append("supervisor_start")
    f = Follow("--state-dir", str(tmp_path), "--json", "--service", "db")
    follow.append(f)
    f.wait_stderr("following")
    for i in range(20):  # rotates several times; the reader keeps up through inotify
        log.append("tick", service="db", i=i)
        log.append("tick", service="other", i=i)
        assert json.loads(f.line())["i"] == i
    log.close()
    assert (tmp_path / (EVENTS_FILE + ".1")).exists()
    assert f.stop() == 0


def test_follow_waits_for_the_log_to_be_created(tmp_path: Path, follow: list[Follow]) -> None:
    f = Follow("--state-dir", str(tmp_path))
    follow.append(f)
    f.wait_stderr("waiting for")
    f.wait_stderr("following")
    with EventLog(tmp_path) as log:
        log.append("supervisor_start")
    assert f.line().split()[1:3] == ["-", "supervisor_start"]
    assert f.stop() == 0


def test_follow_with_since_shows_only_recent_history(tmp_path: Path, follow: list[Follow]) -> None:
    now = time.time()
    write_events(tmp_path, (now - 600, "old", "db", {}), (now - 5, "recent", "db", {}))
    f = Follow("--state-dir", str(tmp_path), "--since", "1m", "--json")
    follow.append(f)
    f.wait_stderr("following")
    with EventLog(tmp_path) as log:
        log.append("new", service="db")
    assert [json.loads(f.line())["kind"] for _ in range(2)] == ["recent", "new"]
    assert f.stop() == 0


def test_follow_on_a_missing_state_dir_fails_fast(tmp_path: Path, follow: list[Follow]) -> None:
    f = Follow("--state-dir", str(tmp_path / "nope"))
    follow.append(f)
    assert f.proc.wait(timeout=20) == 1
    f.wait_stderr("does not exist")


@pytest.mark.parametrize("ts", ["1e300", "-1", "Infinity", "NaN", "99999999999999", "true"])
def test_an_out_of_range_ts_is_skipped_not_a_crash(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, ts: str
) -> None:
    good = json.dumps({"ts": 1795732262.0, "slice": None, "service": "db", "kind": "start"})
    bad = '{"ts": ' + ts + ', "slice": null, "service": "db", "kind": "exit"}'
    (tmp_path / EVENTS_FILE).write_text(f"{bad}\n{good}\n{bad}\n")
    for extra in ((), ("--json",), ("--since", "1h")):
        code, out, err = run(capsys, "--state-dir", str(tmp_path), *extra)
        assert code == 0, err
        assert "Traceback" not in out + err
        assert "exit" not in out
    code, out, _ = run(capsys, "--state-dir", str(tmp_path))
    assert "start" in out
