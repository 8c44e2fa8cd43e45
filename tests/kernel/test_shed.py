"""The shed rung and the hints for other OOM killers, on a real kernel (issue 11).

* A primary whose main process forks a child that grows past the primary's memory_high: the
  kernel throttles the child there (memory.high never OOM-kills), oomguard sheds it (SIGTERM),
  the main process runs on with the same pid, nothing is evicted or restarted, and the kernel
  kills nothing.
* The ``user.oomd_avoid`` / ``user.oomd_prefer`` xattrs read back on the right cgroups.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

import pytest

from tests.kernel.pressure_support import fast_pressure, tree_events, workload
from tests.kernel.support import (
    PYTHON,
    MiB,
    assert_no_traceback,
    heartbeats,
    max_gap,
    start_run,
    wait_until,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.kernel

#: A primary like PostgreSQL's postmaster: it beats, forks one worker that grows (the runaway
#: session), reaps it and records how it ended, and never forks another.
FORKING_PRIMARY = """
import os, signal, sys, time
MB, PAGE = 1 << 20, 4096
beat_path, child_path = os.environ["BEAT"], os.environ["CHILD"]
rate, cap = float(os.environ["RATE_MB_S"]), int(os.environ["CAP_MB"])
stop = []
signal.signal(signal.SIGINT, lambda *_: stop.append(1))
child = os.fork()
if child == 0:
    held, start = [], time.monotonic()
    while True:
        want = min(cap, int(rate * (time.monotonic() - start)) + 1)
        while len(held) < want:
            buf = bytearray(MB)
            buf[::PAGE] = b"x" * (MB // PAGE)
            held.append(buf)
        time.sleep(0.05)
with open(child_path, "w") as f:
    f.write(f"child pid={child}\\n")
beat = open(beat_path, "a", buffering=1)
while not stop:
    beat.write(f"beat {time.monotonic():.3f} pid={os.getpid()}\\n")
    if child:
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
            with open(child_path, "a") as f:
                f.write(f"child exit signal={sig}\\n")
            child = 0
    time.sleep(0.1)
sys.exit(0)
"""


def forking_primary(beat: Path, child: Path, **extra: object) -> dict[str, object]:
    return {
        "role": "primary",
        "command": [PYTHON, "-S", "-c", FORKING_PRIMARY],
        "env": {"BEAT": str(beat), "CHILD": str(child), "RATE_MB_S": "8", "CAP_MB": "160"},
        "stop_signal": "SIGINT",
        "start_secs": "0.5s",
        **extra,
    }


def test_a_big_child_of_the_primary_is_shed_and_the_main_process_carries_on(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    beat, child_file = tmp_path / "heartbeat", tmp_path / "child"
    config = {
        "oomguard": {"pressure": fast_pressure()},
        "service": {
            "db": forking_primary(
                beat,
                child_file,
                memory_high="64M",  # the watermark: the child is throttled here
                memory_max="256M",  # above what it asks for: the kernel never kills
                shed={"signal": "SIGTERM", "min_size": "16M", "cooldown": "30s"},
            ),
            "steady": {"command": workload("steady"), "env": {"STEADY_MB": "8"}},
        },
    }
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        pids = og.wait_running("db", "steady")
        shed = og.wait_event("shed", "db")[0]
        wait_until(lambda: "child exit" in _text(child_file), "the child's exit", timeout=60)
        # The ladder re-checks after the shed: the pressure is gone, nothing more happens.
        time.sleep(5)
        kernel = tree_events(og)
        state = og.state()
        code = og.stop()
        output = og.output()
        events = og.events()

    assert_no_traceback(output)
    assert code == 0, output
    lines = child_file.read_text().splitlines()
    child_pid = int(lines[0].split("pid=")[1])
    # The child, not the main process, got the shed signal, and died of it.
    assert shed["pid"] == child_pid != pids["db"], shed
    assert lines[-1] == f"child exit signal={int(signal.SIGTERM)}", lines
    assert shed["signal"] == "SIGTERM" and shed["budget"] == "primary-watermark", shed
    assert shed["size"] >= 16 * MiB and shed["comm"], shed
    assert shed["reason"].startswith("headroom+"), shed
    # The main process ran on, never stopped: one pid, beats throughout.
    assert og.events("spawned", "db") and len(og.events("spawned", "db")) == 1
    beats = heartbeats(beat)
    assert {p for _, p in beats} == {pids["db"]}
    assert max_gap([t for t, _ in beats]) < 5.0
    # Shed first: no sidecar evicted, no controlled restart, and the kernel killed nothing.
    kinds = [e["kind"] for e in events]
    assert "evict" not in kinds and "controlled_restart" not in kinds, kinds
    assert kernel["oom_kill"] == 0, kernel
    assert state is not None and state["services"]["db"]["sheds"] == 1, state
    # The log line says which process, why and how big.
    line = next(ln for ln in output.splitlines() if " shed " in ln)
    assert f"service=db pid={child_pid} comm=" in line and "reason=headroom+" in line, line
    assert "size=" in line and "signal=SIGTERM" in line, line


def test_oomd_xattrs_read_back_on_the_right_cgroups(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    config = {
        "slice": {"sidecars": {"memory_max": "128M"}},
        "service": {
            "db": {"role": "primary", "command": workload("steady"), "env": {"STEADY_MB": "4"}},
            "pool": {"slice": "sidecars", "command": workload("steady"), "env": {"STEADY_MB": "4"}},
            "loose": {"command": workload("steady"), "env": {"STEADY_MB": "4"}},
        },
    }
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        og.wait_running("db", "pool", "loose")
        found = {
            name: {
                attr: _xattr(og.cgroup(*name.split("/")), attr)
                for attr in ("user.oomd_avoid", "user.oomd_prefer")
            }
            for name in ("db", "supervisor", "sidecars", "sidecars/pool", "loose")
        }
        root = {a: _xattr(og.root, a) for a in ("user.oomd_avoid", "user.oomd_prefer")}
        og.stop()  # the primary (steady) dies of SIGTERM: its status is not the point here
        assert_no_traceback(og.output())

    avoid, prefer = "user.oomd_avoid", "user.oomd_prefer"
    assert found == {
        "db": {avoid: b"1", prefer: None},
        "supervisor": {avoid: b"1", prefer: None},
        "sidecars": {avoid: None, prefer: b"1"},
        "sidecars/pool": {avoid: None, prefer: b"1"},
        "loose": {avoid: None, prefer: b"1"},
    }
    assert root == {avoid: None, prefer: None}  # it holds the primary and the sidecars


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _xattr(path: Path, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name)
    except OSError:
        return None
