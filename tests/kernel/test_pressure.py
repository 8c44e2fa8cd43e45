"""The pressure response on a real kernel (issue 4, acceptance 1-4 and 6): oomguard acts before
the kernel's OOM killer does.

Each scenario runs the real `oomguard run` with real workloads that really grow, and is judged
from the outside: the decisions in events.jsonl (with the figures that triggered them), the
kernel's own counters (memory.events of the tree root is hierarchical, so its oom_kill covers
every slice), the primary's heartbeat file and /proc.

Why the scenarios trigger quickly: a `[slice.X]` budget with only memory.max gets an automatic
memory.high at ``memory_max * (1 - headroom_min)`` (runtime/pressure.py), so the kernel raises
``high`` in memory.events right when the headroom drops below 10 %. The tests use a short
hysteresis and cool-down (``fast_pressure``) so an evict -> clear -> restore cycle takes seconds.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from tests.kernel.conftest import SCRATCH_PREFIX, _destroy
from tests.kernel.pressure_support import (
    capped_leak,
    context_switches,
    decisions,
    fast_pressure,
    main_thread_sleep,
    open_files,
    primary,
    psi_some_avg10,
    shared_budget,
    spawned_pids,
    start_named,
    stubborn_leak,
    tree_events,
    wait_beating,
    wait_charged,
    workload,
)
from tests.kernel.support import (
    REPO,
    MiB,
    Oomguard,
    assert_no_traceback,
    cg_write,
    counter_events,
    flat_keyed,
    heartbeats,
    max_gap,
    procs,
    start_run,
    wait_until,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.kernel

BUDGET = 128 * MiB
#: The default headroom_min: a decision is taken only below it.
HEADROOM_MIN = 0.10
HYSTERESIS = 3.0
COOLDOWN = 1.0


def is_decision(kind: str) -> Any:
    return lambda e: e.get("kind") == kind and e.get("budget") is not None


def assert_pressure_figures(ev: dict[str, Any], *, limit: int) -> None:
    """The figures of a decision taken under pressure: the budget was near its limit, and a
    kernel signal (memory.events `high`, or a fired PSI trigger) confirmed it."""
    assert ev["limit"] == limit, ev
    # The event's headroom is rounded to 4 places (0.09998 shows as 0.1): judge the exact one.
    assert (limit - ev["current"]) / limit < HEADROOM_MIN, ev
    assert ev["current"] > limit * (1 - HEADROOM_MIN), ev
    assert abs(ev["headroom"] - (limit - ev["current"]) / limit) < 1e-3, ev
    assert ev["reason"].startswith("headroom+") or "psi_avg10" in ev["reason"], ev
    assert ev["high_delta"] > 0 or ev["psi_fired"] or "psi_avg10" in ev["reason"], ev


def assert_primary_untouched(og: Oomguard, beat: Path, pid: int) -> None:
    assert spawned_pids(og, "db") == [pid]
    assert og.events("exit", "db") == [] or all(e.get("requested") for e in og.events("exit", "db"))
    beats = heartbeats(beat)
    assert {p for _, p in beats} == {pid}
    times = [t for t, _ in beats]
    assert times[-1] - times[0] > 2.0, "too few heartbeats to judge"
    gap = max_gap(times)
    # Every beat is the same pid: never stopped, never killed. The gap bound is looser than
    # issue 3's 1 s: these scenarios run up to two oomguards and six Python processes on one
    # emulated CPU of a shared host, and a starved (not a stopped) primary beats late too.
    assert gap <= 2.5, f"the primary's heartbeat had a {gap:.2f}s gap"


# -- acceptance 1 and 4: one slow leak, run in enforce and in observe mode side by side ------------


@dataclass
class Twin:
    """The same slow-leak scenario run twice at once (trees `<scratch>/enforce` and
    `<scratch>/observe`), observed until enforce has evicted the leak, seen the pressure clear
    and restarted it. Acceptance 1 is judged on the enforce run, acceptance 4 on the observe run
    and on the comparison of their first decisions."""

    runs: dict[str, Oomguard]
    beats: dict[str, Path]
    pids: dict[str, dict[str, int]]
    kernel: dict[str, dict[str, int]]
    observe_state: dict[str, Any] | None
    observe_procs: dict[str, list[int]]
    codes: dict[str, int]
    outputs: dict[str, str]


@pytest.fixture(scope="module")
def twin(_kernel_env: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    # Module-scoped, so it cannot use the per-test scratch_cgroup: the same kind of scratch
    # cgroup, made and destroyed here with the harness's own helpers.
    scratch = _kernel_env.base / f"{SCRATCH_PREFIX}{secrets.token_hex(4)}"
    scratch.mkdir()
    tmp = tmp_path_factory.mktemp("twin")
    runs: dict[str, Oomguard] = {}
    beats = {mode: tmp / f"{mode}.heartbeat" for mode in ("enforce", "observe")}
    try:
        cg_write(scratch / "cgroup.subtree_control", "+memory +pids")
        for mode, beat in beats.items():
            config = shared_budget(
                beat,
                {
                    # Well-behaved and more critical: it fills most of the budget and stays.
                    "steady": {
                        "command": workload("steady"),
                        "criticality": 80,
                        "env": {"STEADY_MB": "80"},
                    },
                    # The slow leak, least critical. It stops growing at 119M of the budget's
                    # 128M: above the 10 % headroom threshold (115.2M), below memory.max, so
                    # in observe mode the kernel has no reason to kill anything either.
                    "leaky": {
                        "criticality": 20,
                        **capped_leak(scratch / mode / "sidecars", rate_mb_s=5, cap_mb=119),
                    },
                },
                mode=mode,
            )
            runs[mode] = start_named(mode, tmp, _kernel_env.mount, scratch, config)
        enforce, observe = runs["enforce"], runs["observe"]
        pids = {m: og.wait_running("db", "steady", "leaky") for m, og in runs.items()}
        for mode, og in runs.items():
            wait_beating(og, beats[mode], pids[mode]["db"])
        observe.wait_event("would_evict", "leaky")
        enforce.wait_event("restore", "leaky")
        enforce.wait_event("spawned", "leaky", count=2)
        kernel = {m: tree_events(og) for m, og in runs.items()}
        observe_state = observe.state()
        observe_procs = {n: procs(observe.cgroup("sidecars", n)) for n in ("steady", "leaky")}
        codes = {m: og.stop() for m, og in runs.items()}
        outputs = {m: og.output() for m, og in runs.items()}
        yield Twin(runs, beats, pids, kernel, observe_state, observe_procs, codes, outputs)
    finally:
        for og in runs.values():
            og.close()
        _destroy(scratch)


def test_slow_leak_is_evicted_before_any_oom_kill_and_restarted_after_pressure_clears(
    twin: Twin,
) -> None:
    og, pids = twin.runs["enforce"], twin.pids["enforce"]
    output = twin.outputs["enforce"]
    events = og.events()
    assert_no_traceback(output)
    assert twin.codes["enforce"] == 0, output
    # Before any kernel OOM kill: not one in the whole tree (hierarchical counters), and no OOM
    # situation either (the budget never reached its memory.max).
    kernel = twin.kernel["enforce"]
    assert kernel["oom_kill"] == 0 and kernel["oom"] == 0, kernel
    assert counter_events(og) == []
    # The decision, with the figures that triggered it.
    evict = decisions(og)[0]
    assert evict["kind"] == "evict" and evict["service"] == "leaky", evict
    assert evict["budget"] == "sidecars" and evict["criticality"] == 20, evict
    assert_pressure_figures(evict, limit=BUDGET)
    assert 0 < evict["member_current"] <= evict["current"], evict
    # Carried out the graceful way: its stop signal, a requested exit, then held EVICTED.
    after = [e for e in events if e["ts"] >= evict["ts"] and e.get("service") == "leaky"]
    kinds = [e["kind"] for e in after]
    assert kinds[:2] == ["evict", "stop"], after
    stop = after[1]
    assert stop["reason"] == "evict" and stop["signal"] == 15, stop
    exit_ = next(e for e in after if e["kind"] == "exit")
    assert exit_["requested"] and exit_["pid"] == pids["leaky"], exit_
    held = next(e for e in after if e["kind"] == "evict" and "budget" not in e)
    assert held["ts"] >= exit_["ts"]
    # Restored only after the pressure had cleared for the hysteresis period, with the figures.
    restore = next(e for e in decisions(og) if e["kind"] == "restore")
    assert restore["service"] == "leaky" and restore["budget"] == "sidecars", restore
    assert restore["headroom"] >= HEADROOM_MIN and restore["clear_for"] >= HYSTERESIS, restore
    assert restore["ts"] - held["ts"] >= HYSTERESIS - 0.1, (held, restore)
    start = next(e for e in events if e["kind"] == "start" and e["ts"] >= restore["ts"])
    assert start["service"] == "leaky" and start["reason"] == "release", start
    new_pids = spawned_pids(og, "leaky")
    assert len(new_pids) >= 2 and new_pids[0] == pids["leaky"] != new_pids[1], new_pids
    order = [e["kind"] for e in decisions(og)]
    assert order[:2] == ["evict", "restore"], order
    # Only the leak went: the more critical sidecar and the primary were left alone.
    assert spawned_pids(og, "steady") == [pids["steady"]]
    assert [e for e in decisions(og) if e["service"] != "leaky"] == []
    assert_primary_untouched(og, twin.beats["enforce"], pids["db"])


def test_observe_mode_changes_nothing_and_logs_the_decision_enforce_takes(twin: Twin) -> None:
    og, pids = twin.runs["observe"], twin.pids["observe"]
    output = twin.outputs["observe"]
    assert_no_traceback(output)
    assert twin.codes["observe"] == 0, output
    assert og.events("tree")[0]["mode"] == "observe"
    # The same first decision as enforce: which sidecar, which budget, on which kind of signal.
    first_enforce = decisions(twin.runs["enforce"])[0]
    first_observe = decisions(og)[0]
    assert first_enforce["kind"] == "evict" and first_observe["kind"] == "would_evict"
    for key in ("service", "budget", "criticality", "limit"):
        assert first_enforce[key] == first_observe[key], (first_enforce, first_observe)
    assert_pressure_figures(first_observe, limit=BUDGET)
    assert "would_evict" in output
    # ... and nothing changed while enforce evicted, waited out the hysteresis and restored:
    # no eviction, restore or restart, no stop, no kill, no exit, the same processes.
    acted = [e for e in decisions(og) if not e["kind"].startswith("would_")]
    assert acted == [], acted
    stops = [e for e in og.events("stop") if e.get("reason") != "shutdown"]
    assert stops == [] and og.events("kill") == [], stops
    exits = [e for e in og.events("exit") if not e.get("requested")]
    assert exits == [] and counter_events(og) == [], exits
    state = twin.observe_state
    assert state is not None
    for name, pid in pids.items():
        assert spawned_pids(og, name) == [pid], name
        assert state["services"][name]["pid"] == pid, state
        assert state["services"][name]["state"] == "RUNNING", state
    assert twin.observe_procs == {"steady": [pids["steady"]], "leaky": [pids["leaky"]]}
    assert twin.kernel["observe"]["oom_kill"] == 0, twin.kernel
    assert_primary_untouched(og, twin.beats["observe"], pids["db"])


# -- acceptance 2: two sidecars, least critical first ----------------------------------------------


def test_less_critical_sidecar_goes_first_the_more_critical_only_if_pressure_persists(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    """The leak is in the MORE critical sidecar. Evicting the less critical one (small) does not
    relieve the budget for long, so the leaker is evicted next, after the cool-down. (Test 1 is
    the converse: there, one eviction cleared the pressure and the more critical sidecar stayed.)
    """
    beat = tmp_path / "heartbeat"
    config = shared_budget(
        beat,
        {
            "small": {"command": workload("steady"), "criticality": 20, "env": {"STEADY_MB": "8"}},
            "leaky": {"command": workload("leaky"), "criticality": 80, "env": {"LEAK_MB_S": "10"}},
        },
        # A long hysteresis: nothing comes back while the test watches.
        pressure=fast_pressure(hysteresis="120s"),
    )
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        pids = og.wait_running("db", "small", "leaky")
        wait_beating(og, beat, pids["db"])
        og.wait_event("evict", "leaky", where=is_decision("evict"))
        kernel = tree_events(og)
        code = og.stop()
        output = og.output()

    assert_no_traceback(output)
    assert code == 0, output
    assert kernel["oom_kill"] == 0, kernel
    evicts = decisions(og, "evict")
    assert [e["service"] for e in evicts] == ["small", "leaky"], evicts
    first, second = evicts
    assert first["criticality"] < second["criticality"], evicts
    for e in evicts:
        assert e["budget"] == "sidecars", e
        assert_pressure_figures(e, limit=BUDGET)
    # "Only if pressure persists": the second decision was taken on a fresh reading, after the
    # cool-down, and that reading still showed the budget under pressure.
    assert second["ts"] - first["ts"] >= COOLDOWN - 0.05, evicts
    gone = next(e for e in og.events("exit", "small"))
    assert gone["ts"] < second["ts"], (gone, second)
    assert og.events("restore") == []
    assert spawned_pids(og, "small") == [pids["small"]]
    assert spawned_pids(og, "leaky") == [pids["leaky"]]
    assert_primary_untouched(og, beat, pids["db"])


def test_a_slow_eviction_does_not_take_the_more_critical_sidecar_on_stale_psi(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    """The leak ignores SIGTERM, so its eviction takes the whole stop_timeout and ends with
    cgroup.kill; meanwhile it is throttled at memory.high and the budget's PSI avg10 climbs far
    above 20 %. avg10 decays over ~10 s, so right after the kill it still reads high although
    nothing stalls any more: the more critical sidecar must stay (the budget has plenty of
    headroom and no stall is measured). Pressure no longer persists, so nothing more goes."""
    beat = tmp_path / "heartbeat"
    config = shared_budget(
        beat,
        {
            "steady": {
                "command": workload("steady"),
                "criticality": 80,
                "env": {"STEADY_MB": "80"},
            },
            "leaky": {"criticality": 20, "stop_timeout": "6s", **stubborn_leak(5)},
        },
        pressure=fast_pressure(hysteresis="600s"),
    )
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        pids = og.wait_running("db", "steady", "leaky")
        wait_beating(og, beat, pids["db"])
        og.wait_event("evict", "leaky", where=lambda e: "budget" not in e)  # gone: EVICTED
        budget = og.cgroup("sidecars")
        stale = [psi_some_avg10(budget)]
        # Watch for as long as avg10 stays above the threshold (it decays within ~10 s), and
        # one sample interval more.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and stale[-1] > 20.0:
            time.sleep(0.5)
            stale.append(psi_some_avg10(budget))
        time.sleep(1.5)
        code = og.stop()
        output = og.output()

    assert_no_traceback(output)
    assert code == 0, output
    # The scenario did what it is for: a stale avg10 above the 20 % threshold after the kill.
    assert stale[0] > 20.0, stale
    kills = og.events("kill", "leaky")
    assert [k["reason"] for k in kills] == ["evict", "stop_timeout"], kills
    gone = [e for e in og.events("exit", "leaky") if e.get("requested")]
    assert gone and gone[0]["signal"] == 9, gone
    evicts = decisions(og, "evict")
    assert [(e["service"], e["budget"]) for e in evicts] == [("leaky", "sidecars")], evicts
    assert spawned_pids(og, "steady") == [pids["steady"]]
    assert og.events("stop", "steady") == [] or all(
        e["reason"] == "shutdown" for e in og.events("stop", "steady")
    )
    assert tree_events(og)["oom_kill"] == 0


# -- acceptance 3: the primary over its watermark, no sidecar left ---------------------------------


def test_primary_over_its_watermark_is_restarted_gracefully_when_no_sidecar_is_left(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    """fakedb grows past its watermark (memory_high 64M). The one sidecar is evicted first;
    then, with nothing left to evict, the primary gets its stop signal (SIGINT), exits 0 by
    itself, runs again with a new pid, and the downtime is logged and printed."""
    beat = tmp_path / "heartbeat"
    config = {
        "oomguard": {"pressure": fast_pressure()},
        "service": {
            "db": primary(
                beat,
                memory_high="64M",  # the watermark, by default
                memory_max="160M",
                stop_timeout="60s",  # a throttled Python needs a while: never SIGKILL here
                env={"FAKEDB_MB": "48", "FAKEDB_GROW_MB_S": "2"},
            ),
            "steady": {"command": workload("steady"), "env": {"STEADY_MB": "8"}},
        },
    }
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        pids = og.wait_running("db", "steady")
        wait_beating(og, beat, pids["db"])
        restart = og.wait_event("controlled_restart", "db")[0]
        back = og.wait_event("restarted", "db")[0]
        new_pid = og.wait_running("db")["db"]
        wait_beating(og, beat, new_pid)
        kernel = tree_events(og)
        code = og.stop()
        output = og.output()
        events = og.events()

    assert_no_traceback(output)
    assert code == 0, output
    assert kernel["oom_kill"] == 0, kernel
    # First the sidecar, then (nothing left) the primary: both for the watermark budget.
    order = [(e["kind"], e["service"]) for e in decisions(og)]
    assert order[:2] == [("evict", "steady"), ("controlled_restart", "db")], order
    assert restart["budget"] == "primary-watermark", restart
    assert restart["watermark"] == 64 * MiB, restart
    assert restart["primary_current"] > restart["watermark"], restart
    assert restart["high_delta"] > 0 or restart["psi_fired"], restart
    # Stopped by its stop signal, and it exited by itself: status 0, no signal, no cgroup.kill.
    after = [e for e in events if e["ts"] >= restart["ts"] and e.get("service") == "db"]
    stop = next(e for e in after if e["kind"] == "stop")
    assert stop["reason"] == "controlled_restart" and stop["signal"] == 2, stop
    exit_ = next(e for e in after if e["kind"] == "exit")
    assert exit_["pid"] == pids["db"], exit_
    assert exit_["code"] == 0 and exit_["signal"] is None and exit_["requested"], exit_
    assert [e for e in og.events("kill", "db")] == []
    assert f"shutdown pid={pids['db']}" in beat.read_text()
    # Straight back up (no backoff), with a new pid; the downtime is recorded and printed.
    again = next(e for e in after if e["kind"] == "restart")
    assert again["reason"] == "controlled_restart", again
    assert new_pid != pids["db"] and spawned_pids(og, "db") == [pids["db"], new_pid]
    assert 0 < back["downtime"] < 60, back
    running = next(e for e in after if e["kind"] == "running")
    assert running["pid"] == new_pid and running["downtime"] > 0, running
    assert "primary_back" in output and "downtime=" in output, output
    assert {p for _, p in heartbeats(beat)} == {pids["db"], new_pid}


def test_primary_reading_a_file_larger_than_its_memory_high_is_left_alone(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    """The page cache of a file the primary reads fills its cgroup up to memory_high (its
    watermark) and raises ``high`` again and again; the usage oomguard judges leaves the file
    cache out, so that is neither a reason to restart the primary nor to evict a sidecar."""
    big = REPO / ".ktest" / f"bigread-{secrets.token_hex(4)}"
    big.parent.mkdir(exist_ok=True)
    chunk = b"\x5a" * MiB
    fd = os.open(big, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for _ in range(192):
            os.write(fd, chunk)
        os.fsync(fd)
        # Out of the page cache, so the primary's reads charge it to the primary's cgroup.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    beat = tmp_path / "heartbeat"
    db = primary(beat, memory_high="64M", env={"FAKEDB_MB": "32"})
    # The reader runs beside fakedb in the primary's cgroup, for as long as fakedb does ($$ is
    # the shell that then becomes fakedb).
    fakedb = " ".join(workload("fakedb"))
    reader = f'( while kill -0 $$ 2>/dev/null; do cat "{big}" > /dev/null; done ) &'
    db["command"] = ["/bin/sh", "-c", f"{reader} exec {fakedb}"]
    config = {
        "oomguard": {"pressure": fast_pressure()},
        "service": {
            "db": db,
            "steady": {
                "command": workload("steady"),
                "start_secs": "0.5s",
                "env": {"STEADY_MB": "8"},
            },
        },
    }
    try:
        with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
            pids = og.wait_running("db", "steady")
            wait_beating(og, beat, pids["db"])
            db_events = og.cgroup("db") / "memory.events"
            og.wait_for(lambda: flat_keyed(db_events)["high"] > 0, "the page cache at memory_high")
            time.sleep(8.0)  # several full reads of the file, each throttled at memory_high
            highs = flat_keyed(db_events)["high"]
            kernel = tree_events(og)
            code = og.stop()
            output = og.output()
    finally:
        big.unlink(missing_ok=True)

    assert_no_traceback(output)
    assert code == 0, output
    assert highs > 0 and kernel["oom_kill"] == 0, (highs, kernel)
    assert decisions(og) == [], decisions(og)
    assert og.events("controlled_restart") == []
    assert spawned_pids(og, "db") == [pids["db"]]
    assert spawned_pids(og, "steady") == [pids["steady"]]
    assert {p for _, p in heartbeats(beat)} == {pids["db"]}


# -- acceptance 6: idle means asleep in epoll_wait -------------------------------------------------


def test_idle_supervisor_sleeps_in_epoll_wait_with_psi_triggers_armed(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    """No busy-polling: with PSI triggers armed and nothing happening, oomguard's main thread
    is found blocked in epoll_wait every time we look, and hardly ever wakes up. The wake-up
    rate itself is a figure of tools/bench_supervisor.py; the bound here only catches a poller
    (which would wake thousands of times), not a slow machine."""
    beat = tmp_path / "heartbeat"
    config = shared_budget(
        beat, {"steady": {"command": workload("steady"), "env": {"STEADY_MB": "8"}}}
    )
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        pids = og.wait_running("db", "steady")
        wait_beating(og, beat, pids["db"])
        wait_charged(og, og.cgroup("sidecars", "steady"), 8 * MiB)
        pid = og.pid
        files = open_files(pid)
        # Let the last start-up work (state.json, start_secs ticks) settle.
        wait_until(lambda: main_thread_sleep(pid).in_epoll_wait, "oomguard to block", timeout=30)
        time.sleep(1.0)
        before = context_switches(pid)
        samples = []
        for _ in range(10):
            samples.append(main_thread_sleep(pid))
            time.sleep(0.5)
        woke = context_switches(pid) - before
        code = og.stop()
        output = og.output()

    assert_no_traceback(output)
    assert code == 0, output
    # Armed: a PSI trigger fd on memory.pressure of the sidecars budget and of the tree root.
    pressure_fds = [f for f in files if f.endswith("/memory.pressure")]
    assert any(f.endswith("/sidecars/memory.pressure") for f in pressure_fds), files
    assert any(f.endswith(f"{og.root.name}/memory.pressure") for f in pressure_fds), files
    assert "psi_unavailable" not in output
    assert all(s.in_epoll_wait for s in samples), samples
    print(f"idle oomguard: {woke} context switches in 5 s; main thread: {samples[0]}")
    assert woke <= 10, f"{woke} wake-ups in 5 s of idle: polling?"
