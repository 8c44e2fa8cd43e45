"""Survivors of a killed supervisor are found only by proof (pid + start time, or the
instance token) and stopped: stop signal, wait, SIGKILL. Real processes we start ourselves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from oomguard import proc
from oomguard.runtime import survivors

if TYPE_CHECKING:
    from collections.abc import Iterator

TOKEN = "ab" * 16

#: Ignores SIGTERM: only the SIGKILL after the timeout stops it.
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(1000)"


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def spawn(
    procs: list[subprocess.Popen[bytes]], code: str = "import time; time.sleep(1000)", **env: str
) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(
        [sys.executable, "-c", code], start_new_session=True, env={**os.environ, **env}
    )
    procs.append(p)
    # Wait until the interpreter runs (its environment is final after exec).
    for _ in range(200):
        if os.path.exists(f"/proc/{p.pid}/environ") and proc.start_ticks(p.pid) is not None:
            break
    return p


def wait_ignoring(pid: int, sig: int, timeout: float = 30.0) -> None:
    """Until `pid` ignores `sig` (its SigIgn mask in /proc/<pid>/status): a fixed sleep loses
    the race on a loaded machine, where the interpreter takes longer to reach signal.signal."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigIgn:") and int(line.split()[1], 16) & (1 << (sig - 1)):
                    return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} never ignored signal {sig}")


def state(**services: dict[str, Any]) -> dict[str, Any]:
    return {"version": 1, "pid": 999999, "services": services}


def record(p: subprocess.Popen[bytes]) -> dict[str, Any]:
    return {"pid": p.pid, "pid_start": proc.start_ticks(p.pid), "pgid": p.pid}


def stop_all(
    found: list[survivors.Survivor], wait: float = 0.5
) -> list[tuple[str, dict[str, Any]]]:
    logged: list[tuple[str, dict[str, Any]]] = []
    survivors.stop(
        found,
        lambda name: int(signal.SIGTERM),
        lambda name: wait,
        lambda event, **fields: logged.append((event, fields)),
    )
    return logged


def test_a_recorded_survivor_is_stopped_with_its_stop_signal(
    procs: list[subprocess.Popen[bytes]],
) -> None:
    p = spawn(procs)
    found = survivors.find(state(db=record(p)))
    assert [(s.service, s.pid, s.how) for s in found] == [("db", p.pid, "pid+start")]
    logged = stop_all(found)
    assert p.wait(timeout=10) == -signal.SIGTERM
    assert [e for e, _ in logged] == ["survivor"]
    assert all(s.pidfd == -1 for s in found)


def test_a_survivor_that_ignores_its_stop_signal_is_killed(
    procs: list[subprocess.Popen[bytes]],
) -> None:
    p = spawn(procs, STUBBORN)
    wait_ignoring(p.pid, signal.SIGTERM)
    logged = stop_all(survivors.find(state(db=record(p))), wait=0.3)
    assert p.wait(timeout=10) == -signal.SIGKILL
    assert [e for e, _ in logged] == ["survivor", "survivor_kill"]


def test_a_reused_pid_is_left_alone(procs: list[subprocess.Popen[bytes]]) -> None:
    p = spawn(procs)
    rec = record(p)
    rec["pid_start"] -= 1  # the recorded process started earlier: this pid is someone else
    assert survivors.find(state(db=rec)) == []
    assert p.poll() is None


def test_a_child_of_a_gone_service_is_found_by_the_instance_token(
    procs: list[subprocess.Popen[bytes]],
) -> None:
    holder = spawn(procs, OOMGUARD_INSTANCE=TOKEN, OOMGUARD_SERVICE="backup")
    stranger = spawn(procs, OOMGUARD_INSTANCE="cd" * 16)
    doc = {**state(), "instance_sha256": survivors.token_hash(TOKEN)}
    found = survivors.find(doc)
    assert [(s.service, s.pid, s.how) for s in found] == [("backup", holder.pid, "instance token")]
    stop_all(found)
    assert holder.wait(timeout=10) == -signal.SIGTERM
    assert stranger.poll() is None


def test_the_token_itself_is_not_a_proof_without_its_hash(
    procs: list[subprocess.Popen[bytes]],
) -> None:
    spawn(procs, OOMGUARD_INSTANCE=TOKEN)
    assert survivors.find({**state(), "instance_sha256": TOKEN}) == []
    assert survivors.find(state()) == []


@pytest.mark.parametrize("bad", [None, "x", True, -1, 1, [1]])
def test_garbage_records_are_ignored(bad: object) -> None:
    doc = state(db={"pid": bad, "pid_start": bad})
    doc["instance_sha256"] = bad
    assert survivors.find(doc) == []
