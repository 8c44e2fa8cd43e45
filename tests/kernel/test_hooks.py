"""Hooks on a real kernel (issue 11, acceptance 5): a ``before_evict`` hook that hangs is killed
at its timeout, and the eviction it preceded happens on time, without waiting for it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from tests.kernel.pressure_support import capped_leak, shared_budget, workload
from tests.kernel.support import (
    PYTHON,
    assert_no_traceback,
    start_run,
    wait_until,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.kernel

#: A hook that records its pid, its environment and its start, then hangs (and ignores SIGTERM:
#: only the SIGKILL of its process group at the timeout ends it).
HANGING_HOOK = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
out = sys.argv[1]
with open(out, "w") as f:
    f.write(f"pid={os.getpid()} start={time.monotonic():.3f}\\n")
    for key in sorted(os.environ):
        if key.startswith("OOMGUARD_"):
            f.write(f"{key}={os.environ[key]}\\n")
child = os.fork()  # a grandchild in the hook's group: killed with it
if child == 0:
    time.sleep(600)
    os._exit(0)
with open(out + ".child", "w") as f:
    f.write(str(child))
time.sleep(600)
"""

HOOK_TIMEOUT = 3.0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_a_hanging_hook_is_killed_at_its_timeout_and_the_eviction_is_on_time(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    record = tmp_path / "hook.out"
    config = shared_budget(
        tmp_path / "heartbeat",
        {
            "steady": {"command": workload("steady"), "criticality": 80, "env": {"STEADY_MB": "8"}},
            "leaky": {
                "criticality": 20,
                **capped_leak(scratch_cgroup / "og" / "sidecars", rate_mb_s=8, cap_mb=124),
            },
        },
    )
    config["hooks"] = {
        "before_evict": [PYTHON, "-S", "-c", HANGING_HOOK, str(record)],
        "timeout": f"{HOOK_TIMEOUT:g}s",
    }
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        pids = og.wait_running("db", "steady", "leaky")
        evict = og.wait_event("evict", "leaky")[0]
        wait_until(
            lambda: "pid=" in _text(record), "the hook's record", timeout=120, context=og.context
        )
        hook_pid = int(_text(record).split()[0].removeprefix("pid="))
        wait_until(lambda: _text(record.with_suffix(".out.child")), "the hook's child", timeout=60)
        grandchild = int(_text(record.with_suffix(".out.child")))
        exit_ = og.wait_event("exit", "leaky")[0]
        wait_until(
            lambda: not _alive(hook_pid) and not _alive(grandchild),
            "the hook's group killed",
            timeout=HOOK_TIMEOUT + 30,
        )
        failed = wait_until(
            lambda: "hook_failed" in og.output() and og.output(), "the hook_failed line"
        )
        og.stop()
        output = og.output()
        events = og.events()

    assert_no_traceback(output)
    # The eviction did not wait for the hook: the stop signal went in the same loop turn, and
    # the sidecar was gone long before the hook's timeout.
    stop = next(e for e in events if e["kind"] == "stop" and e.get("service") == "leaky")
    assert stop["reason"] == "evict" and stop["ts"] - evict["ts"] < 1.0, (evict, stop)
    assert exit_["pid"] == pids["leaky"] and exit_["requested"], exit_
    # The hook was started by that eviction and described it.
    env = dict(line.split("=", 1) for line in _text(record).splitlines()[1:] if "=" in line)
    assert env["OOMGUARD_EVENT"] == "before_evict" and env["OOMGUARD_KIND"] == "evict", env
    assert env["OOMGUARD_SERVICE"] == "leaky" and env["OOMGUARD_BUDGET"] == "sidecars", env
    assert env["OOMGUARD_CGROUP"].endswith("/og/sidecars/leaky"), env
    assert int(env["OOMGUARD_USAGE"]) > 0 and int(env["OOMGUARD_LIMIT"]) == 128 << 20, env
    assert float(env["OOMGUARD_HEADROOM"]) < 0.1, env
    # Killed at its timeout (with its whole group), and said so.
    line = next(ln for ln in failed.splitlines() if "hook_failed" in ln)
    assert "hook=before_evict" in line and "timed out" in line and "outcome=timed_out" in line
    seconds = float(line.split("seconds=")[1].split()[0])
    assert HOOK_TIMEOUT <= seconds < HOOK_TIMEOUT + 2.0, line
    assert not os.path.exists(f"/proc/{hook_pid}") or not _alive(hook_pid)
