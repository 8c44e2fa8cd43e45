"""An early signal for every budget shape (issue 8), on a real kernel: a leaking sidecar is
evicted before any kernel OOM kill, and oomguard's own settings never throttle the primary.

The shapes tested here are the ones the `[slice]` scenarios of test_pressure.py do not cover:

* the whole tree is the only limit (``[oomguard] memory_max``, no ``[slice]``);
* no limit in the config, but an ancestor cgroup has one (as a container's or a systemd
  slice's): here a memory.max on the scratch cgroup the test made, above oomguard's tree;
* no limit anywhere: the machine's memory is the budget. The guest is made to run short by a
  "ballast" process outside oomguard's tree (another tenant of the machine), so the cell takes
  seconds whatever the guest's RAM.

In each, the leak is a loose sidecar (no ``[slice]``): its own cgroup gets the automatic
memory.high that follows the room left (runtime/pressure.py), the primary's never does. Each
cell prints the figures oomguard acted on (`usage at which oomguard acted`).
"""

from __future__ import annotations

import subprocess
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.kernel.pressure_support import (
    decisions,
    fast_pressure,
    primary,
    spawned_pids,
    tree_events,
    wait_beating,
    workload,
)
from tests.kernel.support import (
    PYTHON,
    MiB,
    Oomguard,
    assert_no_traceback,
    cg_write,
    flat_keyed,
    heartbeats,
    start_run,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

pytestmark = pytest.mark.kernel

HEADROOM_MIN = 0.10
PRIMARY_MB = 100

#: A leak that waits for GO_FILE to exist, then allocates RATE_MB_S (every page touched, so it
#: is charged) until it is stopped. Gated, so the machine cell can shrink the machine first.
GATED_LEAK = """
import os, time
MB, PAGE = 1 << 20, 4096
rate = float(os.environ["RATE_MB_S"])
go = os.environ.get("GO_FILE")
print(f"gated-leak: pid={os.getpid()} {rate:g} MB/s", flush=True)
while go and not os.path.exists(go):
    time.sleep(0.1)
held, start = [], time.monotonic()
while True:
    want = int(rate * (time.monotonic() - start)) + 1
    while len(held) < want:
        buf = bytearray(MB)
        buf[::PAGE] = b"x" * (MB // PAGE)
        held.append(buf)
    time.sleep(0.05)
"""

#: Holds BALLAST_MB of touched memory, outside oomguard's tree, until killed.
BALLAST = """
import os, sys, time
MB, PAGE = 1 << 20, 4096
held = []
for _ in range(int(os.environ["BALLAST_MB"])):
    buf = bytearray(MB)
    buf[::PAGE] = b"x" * (MB // PAGE)
    held.append(buf)
print("ballast ready", flush=True)
sys.stdout.close()
while True:
    time.sleep(60)
"""


def leak(rate_mb_s: float, go: Path | None = None) -> dict[str, Any]:
    env = {"RATE_MB_S": f"{rate_mb_s:g}"}
    if go is not None:
        env["GO_FILE"] = str(go)
    return {
        "command": [PYTHON, "-S", "-c", GATED_LEAK],
        "env": env,
        "criticality": 20,
        "start_secs": "0.5s",
    }


def config(beat: Path, sidecar: dict[str, Any], **oomguard: Any) -> dict[str, Any]:
    """A primary holding PRIMARY_MB and one loose sidecar; no `[slice]`."""
    return {
        "oomguard": {"pressure": fast_pressure(hysteresis="600s"), **oomguard},
        "service": {
            "db": primary(beat, env={"FAKEDB_MB": str(PRIMARY_MB)}),
            "leaky": sidecar,
            "steady": {
                "command": workload("steady"),
                "criticality": 80,
                "start_secs": "0.5s",
                "env": {"STEADY_MB": "8"},
            },
        },
    }


def vmstat_oom_kills() -> int:
    for line in open("/proc/vmstat").read().splitlines():  # noqa: SIM115
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


def meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    for line in open("/proc/meminfo").read().splitlines():  # noqa: SIM115
        key, _, rest = line.partition(":")
        out[key] = int(rest.split()[0]) * 1024
    return out


def evict_and_settle(og: Oomguard, beat: Path, *, go: Path | None = None) -> dict[str, Any]:
    """Run the scenario until the leak is evicted and gone; return what the kernel says."""
    pids = og.wait_running("db", "leaky", "steady")
    wait_beating(og, beat, pids["db"])
    running = time.monotonic()
    if go is not None:
        go.touch()
    og.wait_event("evict", "leaky", where=lambda e: "budget" not in e, timeout=180)
    evicted = time.monotonic()
    time.sleep(1.0)  # a few more heartbeats, and any late kernel event
    print(
        f"timing: start->running {running - og.started:.1f}s, "
        f"running->evicted {evicted - running:.1f}s"
    )
    return {
        "pids": pids,
        "tree": tree_events(og),
        "db_events": flat_keyed(og.cgroup("db") / "memory.events"),
        "highs": {
            "root": (og.root / "memory.high").read_text().strip(),
            "db": (og.cgroup("db") / "memory.high").read_text().strip(),
        },
        "leaky_high": (og.cgroup("leaky") / "memory.high").read_text().strip(),
    }


def assert_evicted_first_primary_untouched(
    og: Oomguard, beat: Path, seen: dict[str, Any], *, budget: str, limit: int | None
) -> dict[str, Any]:
    code = og.stop()
    output = og.output()
    assert_no_traceback(output)
    assert code == 0, output
    # No kernel OOM kill anywhere in the tree (hierarchical counter).
    assert seen["tree"]["oom_kill"] == 0, seen
    # oomguard evicted the leak, first and alone, on the budget under test.
    made = decisions(og)
    assert made and made[0]["kind"] == "evict" and made[0]["service"] == "leaky", made
    evict = made[0]
    assert evict["budget"] == budget, evict
    if limit is not None:
        assert evict["limit"] == limit, evict
    # (The logged headroom is rounded to 4 digits: 0.09996 reads 0.1.)
    assert evict["headroom"] <= HEADROOM_MIN or "psi_avg10" in evict["reason"], evict
    assert [e for e in made if e["service"] != "leaky"] == [], made
    # Never throttled by us: no memory.high on the primary or above it, and the primary's
    # cgroup never went over a memory.high (memory.events counts it and its descendants).
    assert seen["highs"] == {"root": "max", "db": "max"}, seen
    assert seen["db_events"]["high"] == 0, seen
    # The sidecar's own cgroup did get an automatic memory.high.
    assert seen["leaky_high"] != "max", seen
    assert "auto_high" in output, output
    # The primary: the same pid all along, beating.
    pid = seen["pids"]["db"]
    assert spawned_pids(og, "db") == [pid]
    assert {p for _, p in heartbeats(beat)} == {pid}
    assert spawned_pids(og, "steady") == [seen["pids"]["steady"]]
    print(
        f"acted budget={evict['budget']} reason={evict['reason']} "
        f"usage={evict['current'] / MiB:.1f}MiB limit={(evict['limit'] or 0) / MiB:.1f}MiB "
        f"headroom={evict['headroom']} leaky={evict['member_current'] / MiB:.1f}MiB"
    )
    return evict


@pytest.mark.parametrize("rate", [5, 20])
def test_tree_only_limit_leak_is_evicted_before_the_kernel_and_the_primary_is_never_throttled(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path, rate: int
) -> None:
    """Issue 8's first case: `[oomguard] memory_max = "300M"` is the only limit."""
    beat = tmp_path / "heartbeat"
    cfg = config(beat, leak(rate), memory_max="300M")
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, cfg) as og:
        seen = evict_and_settle(og, beat)
        assert_evicted_first_primary_untouched(og, beat, seen, budget="tree", limit=300 * MiB)


def test_ancestor_limit_is_the_budget_when_the_config_sets_none(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    """No limit in the config; the scratch cgroup above oomguard's tree (ours, made by the
    fixture) has memory.max, as a container's cgroup would."""
    limit = 320 * MiB
    cg_write(scratch_cgroup / "memory.max", str(limit))
    beat = tmp_path / "heartbeat"
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config(beat, leak(20))) as og:
        seen = evict_and_settle(og, beat)
        evict = assert_evicted_first_primary_untouched(og, beat, seen, budget="tree", limit=limit)
    # Judged on the usage of the cgroup that has the limit (it holds oomguard's tree).
    assert evict["current"] > limit * (1 - HEADROOM_MIN) - 32 * MiB, evict
    assert flat_keyed(scratch_cgroup / "memory.events")["oom_kill"] == 0


def test_no_limit_anywhere_the_machine_is_the_budget(
    cgroup2_mount: Path,
    scratch_cgroup: Path,
    tmp_path: Path,
    run_in_cgroup: Callable[..., Any],
) -> None:
    """No memory.max anywhere above the tree: the machine's memory is the budget, judged on
    MemTotal - MemAvailable. A ballast outside the tree leaves ~250 MiB above the threshold;
    then the sidecar leaks 20 MiB/s."""
    info = meminfo()
    assert "MemAvailable" in info
    beat = tmp_path / "heartbeat"
    go = tmp_path / "go"
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config(beat, leak(20, go))) as og:
        pids = og.wait_running("db", "leaky", "steady")
        wait_beating(og, beat, pids["db"])
        now = meminfo()
        spare = now["MemAvailable"] - int(now["MemTotal"] * HEADROOM_MIN) - 250 * MiB
        assert spare > 0, now
        ballast_cg = scratch_cgroup / "ballast"
        ballast_cg.mkdir()
        ballast = run_in_cgroup(
            ballast_cg,
            [PYTHON, "-S", "-c", BALLAST],
            env={"BALLAST_MB": str(spare // MiB)},
            stdout=subprocess.PIPE,
        )
        assert ballast.stdout is not None
        assert ballast.stdout.readline().strip() == b"ballast ready"
        kills_before = vmstat_oom_kills()
        seen = evict_and_settle(og, beat, go=go)
        kills_after = vmstat_oom_kills()
        evict = assert_evicted_first_primary_untouched(
            og, beat, seen, budget="tree", limit=info["MemTotal"] + info.get("SwapTotal", 0)
        )
    # Not one OOM kill on the whole machine, the ballast included.
    assert kills_after == kills_before, (kills_before, kills_after)
    assert ballast.poll() is None
    print(f"machine: MemTotal={info['MemTotal'] / MiB:.0f}MiB ballast={spare / MiB:.0f}MiB")
    assert evict["current"] > info["MemTotal"] * (1 - HEADROOM_MIN) - 64 * MiB, evict


def test_watermark_without_memory_high_is_watched_by_sampling(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    """A primary with a `watermark` but no memory_high (protected, not capped): crossing it
    raises no kernel event, so the sampled watermark is the signal. The sidecar goes first;
    then, nothing left to evict, the primary gets a controlled restart (never a kill)."""
    beat = tmp_path / "heartbeat"
    db = primary(
        beat,
        watermark="64M",
        memory_max="192M",
        stop_timeout="60s",
        env={"FAKEDB_MB": "40", "FAKEDB_GROW_MB_S": "4"},
    )
    cfg = {
        "oomguard": {"pressure": fast_pressure(hysteresis="600s")},
        "service": {
            "db": db,
            "steady": {
                "command": workload("steady"),
                "start_secs": "0.5s",
                "env": {"STEADY_MB": "8"},
            },
        },
    }
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, cfg) as og:
        pids = og.wait_running("db", "steady")
        wait_beating(og, beat, pids["db"])
        restart = og.wait_event("controlled_restart", "db", timeout=180)[0]
        og.wait_event("restarted", "db")
        # Past its start-up (signal handlers set) before the shutdown's SIGINT.
        wait_beating(og, beat, og.wait_running("db")["db"])
        db_high = (og.cgroup("db") / "memory.high").read_text().strip()
        kernel = tree_events(og)
        code = og.stop()
        output = og.output()

    assert_no_traceback(output)
    assert code == 0, output
    assert kernel["oom_kill"] == 0, kernel
    assert db_high == "max"
    order = [(e["kind"], e["service"]) for e in decisions(og)]
    assert order[:2] == [("evict", "steady"), ("controlled_restart", "db")], order
    assert restart["budget"] == "primary-watermark" and "over" in restart["reason"], restart
    assert restart["primary_current"] > 64 * MiB, restart
    assert og.events("kill", "db") == []
    print(
        f"acted budget=primary-watermark reason={restart['reason']} "
        f"usage={restart['current'] / MiB:.1f}MiB watermark=64MiB"
    )
