"""`oomguard run` on a real kernel (issue 3, acceptance 1-4, plus SIGHUP and stop order).

Every scenario runs the real CLI as a subprocess, with real workloads that are really OOM-killed
by the kernel, and judges it from the outside: events.jsonl, state.json, the kernel's own
memory.events.local counters, the heartbeat file of the primary, output and exit status.

Scenarios are sized for a slow TCG guest: tens of MB, hogs that allocate fast, short backoffs.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

import pytest

from tests.kernel.support import (
    MiB,
    Oomguard,
    assert_no_traceback,
    backoff_gaps,
    counter_events,
    exit_events,
    flat_keyed,
    heartbeats,
    max_gap,
    sh,
    start_run,
    wait_until,
    workload,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.kernel

#: Restart knobs that keep ten OOM cycles inside a minute: a short, capped backoff and a restart
#: budget far above what the test uses.
FAST_RESTART: dict[str, Any] = {
    "backoff_initial": "0.1s",
    "backoff_max": "0.2s",
    "max_restarts": 100,
    "start_secs": "0.5s",
}


#: The OOM scenarios need the *kernel* to choose the victim, so the pressure response (which
#: evicts a sidecar before the budget is full) runs as a dry run (mode = "observe": it logs its
#: decisions and changes nothing), and a budget's memory_high is set to its memory_max so that
#: oomguard's automatic memory.high (which would throttle the hog) is not applied.
OBSERVE = {"mode": "observe"}


def local_events(og: Oomguard, *parts: str) -> dict[str, int]:
    return flat_keyed(og.cgroup(*parts) / "memory.events.local")


def pids_of(og: Oomguard, service: str) -> list[int]:
    return [e["pid"] for e in og.events("spawned", service)]


# -- acceptance 1: a leaky sidecar ------------------------------------------------------------


@pytest.mark.slow
def test_leaky_sidecar_is_oom_killed_and_restarted_while_primary_beats(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    beat = tmp_path / "heartbeat"
    config = {
        "service": {
            "db": {
                "role": "primary",
                "command": workload("fakedb"),
                "env": {"FAKEDB_MB": "32", "FAKEDB_HEARTBEAT": str(beat)},
            },
            "leaky": {
                "command": workload("leaky"),
                "memory_max": "32M",
                # Start near the limit: each incarnation is OOM-killed soon after it starts.
                "env": {"LEAK_MB_S": "80", "LEAK_START_MB": "16"},
                "backoff_initial": "0.5s",
                "backoff_max": "2s",
                "start_secs": "0.5s",
            },
        }
    }
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        db_pid = og.wait_running("db")["db"]
        # Two OOM kills, each followed by a restart after its backoff.
        og.wait_event("restart", "leaky", count=2, where=lambda e: e["reason"] == "oom_kill")
        og.wait_event("spawned", "leaky", count=3)
        kernel = local_events(og, "leaky")
        db_kernel = local_events(og, "db")
        state = og.service_state("db")
        code = og.stop()
        output = og.output()

    assert_no_traceback(output)
    assert code == 0, output  # fakedb exits 0 on SIGTERM: oomguard passes its status on
    # The kernel's own count, in the sidecar's .local file; the primary's slice saw none.
    assert kernel["oom_kill"] >= 2, kernel
    assert db_kernel["oom_kill"] == 0, db_kernel
    # The supervisor attributed each kill to the leaky slice, with the slice's figures.
    kills = counter_events(og, "leaky")
    assert len(kills) >= 2, kills
    for k in kills:
        assert k["slice"].endswith("/og/leaky") and k["max"] == "32M", k
        assert k["limit_at"] == k["slice"], k  # the limit hit was the slice's own memory.max
    exits = [e for e in exit_events(og, "leaky") if not e["requested"]]
    assert len(exits) >= 2 and all(e["oom_killed"] and e["signal"] == 9 for e in exits), exits
    # Each restart waited its backoff: doubling from backoff_initial.
    backoffs = og.events("backoff", "leaky")
    assert [b["delay"] for b in backoffs[:2]] == [0.5, 1.0], backoffs
    for delay, gap in backoff_gaps(og.events(service="leaky")):
        assert gap >= delay, (delay, gap)
    leaky_pids = pids_of(og, "leaky")
    assert len(set(leaky_pids)) == len(leaky_pids) >= 3, leaky_pids
    # The primary was never touched: one pid, never an exit, never a restart.
    assert state is not None and state["pid"] == db_pid and state["restarts"] == 0, state
    assert pids_of(og, "db") == [db_pid]
    assert og.events("oom_kill", "db") == []
    assert [e["requested"] for e in exit_events(og, "db")] == [True]  # only the final stop
    beats = heartbeats(beat)
    assert {pid for _, pid in beats} == {db_pid}
    times = [t for t, _ in beats]
    assert times[-1] - times[0] > 2.0, "too few heartbeats to judge"
    gap = max_gap(times)
    assert gap <= 1.0, f"primary heartbeat had a {gap:.2f}s gap"


# -- SIGHUP is forwarded; SIGTERM stops in reverse dependency order ----------------------------


def trapper(name: str, log: Path, stop_secs: float) -> list[str]:
    """A shell service that records SIGHUP, and on SIGTERM takes `stop_secs` to shut down (so a
    dependency stopped too early would show up in the log), then exits 0."""
    return sh(
        f"trap 'echo \"hup {name}\" >> {log}' HUP\n"
        f'trap \'echo "stopping {name}" >> {log}; sleep {stop_secs}; '
        f'echo "stopped {name}" >> {log}; exit 0\' TERM\n'
        f'echo "ready {name}" >> {log}\n'
        "while :; do sleep 0.1; done"
    )


def test_sighup_reaches_the_primary_and_sigterm_stops_in_reverse_dependency_order(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    log = tmp_path / "services.log"
    config = {
        "service": {
            # Listed out of order on purpose: the order comes from depends_on.
            "agent": {"command": trapper("agent", log, 0.5), "depends_on": ["pooler"]},
            "db": {"role": "primary", "command": trapper("db", log, 0.5)},
            "pooler": {"command": trapper("pooler", log, 0.5), "depends_on": ["db"]},
        }
    }

    def lines() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        pids = og.wait_running("db", "pooler", "agent")
        # The traps must be installed before the signal: wait for each "ready".
        og.wait_for(lambda: len([ln for ln in lines() if ln.startswith("ready")]) == 3, "ready")
        og.signal(signal.SIGHUP)
        og.wait_for(lambda: "hup db" in lines(), "the primary to see SIGHUP")
        after_hup = og.state()
        code = og.stop()
        output = og.output()

    assert_no_traceback(output)
    assert code == 0, output
    assert [e["service"] for e in og.events("spawned")] == ["db", "pooler", "agent"]
    # SIGHUP went to the primary only, and did not restart anything.
    assert [ln for ln in lines() if ln.startswith("hup")] == ["hup db"]
    assert after_hup is not None
    assert {n: s["pid"] for n, s in after_hup["services"].items()} == pids
    # Each service was asked to stop only once its dependents had exited.
    stops = [ln for ln in lines() if ln.startswith("stop")]
    assert stops == [
        "stopping agent",
        "stopped agent",
        "stopping pooler",
        "stopped pooler",
        "stopping db",
        "stopped db",
    ], stops
    assert [e["service"] for e in og.events("stop")] == ["agent", "pooler", "db"]
    assert all(e["code"] == 0 for e in exit_events(og))


# -- acceptance 2: a shared budget, the less critical sidecar is the victim ------------------


#: Holds `mb` MB (touched) until killed, with no interpreter: `tail -n 1` keeps a line that never
#: ends in memory while `sleep` keeps its input open.
def holder(mb: int) -> list[str]:
    return sh(f"{{ head -c {mb * MiB} /dev/zero; exec sleep 100000; }} | tail -n 1")


def hog(mb: int) -> list[str]:
    """Touches `mb` MB as fast as anything can: one read() of /dev/zero into a fresh buffer, so
    the kernel faults the pages in one loop with no interpreter and no syscall per page. With
    `mb` above the budget it is OOM-killed in the middle of that read."""
    return ["dd", "if=/dev/zero", "of=/dev/null", f"bs={mb}M", "count=1", "status=none"]


RUNS = 10


@pytest.mark.slow
def test_shared_budget_less_critical_sidecar_is_the_victim_10_of_10(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    config = {
        "oomguard": OBSERVE,
        "slice": {"sidecars": {"memory_max": "64M", "memory_high": "64M"}},
        "service": {
            "db": {"role": "primary", "command": ["sleep", "100000"]},
            # oom_score_adj 200: holds 28M of the 64M budget, and grows to get there.
            "precious": {
                "command": holder(28),
                "slice": "sidecars",
                "criticality": 80,
                **FAST_RESTART,
            },
            # oom_score_adj 800: grows until the shared budget overflows.
            "cheap": {"command": hog(128), "slice": "sidecars", "criticality": 20, **FAST_RESTART},
        },
    }
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        og.wait_running("db", "precious")
        og.wait_event(
            "restart", "cheap", count=RUNS, where=lambda e: e["reason"] == "oom_kill", timeout=240
        )
        kernel = {n: local_events(og, *p) for n, p in SHARED_PATHS.items()}
        precious = og.service_state("precious")
        code = og.stop()
        output = og.output()

    assert_no_traceback(output)
    assert code == 143, output  # `sleep` has no SIGTERM handler: 128 + 15, passed on
    # Every OOM in the budget: the limit was hit at the shared slice, the victim was cheap.
    kills = counter_events(og)
    assert len(kills) >= RUNS, kills
    assert {k["service"] for k in kills} == {"cheap"}, kills
    assert {k["limit_at"] for k in kills} == {kills[0]["slice"].rsplit("/", 1)[0]}, kills
    # The kernel agrees: only cheap's own .local counter rose; the budget hit its limit each time.
    assert kernel["precious"]["oom_kill"] == 0, kernel
    assert kernel["cheap"]["oom_kill"] >= RUNS, kernel
    assert kernel["sidecars"]["oom"] >= RUNS, kernel
    # cheap was restarted after every kill; precious never went down.
    oom_exits = [e for e in exit_events(og, "cheap") if e["oom_killed"]]
    assert len(oom_exits) >= RUNS, oom_exits
    assert precious is not None and precious["restarts"] == 0, precious
    assert len(pids_of(og, "precious")) == 1
    assert [e for e in exit_events(og, "precious") if not e["requested"]] == []


SHARED_PATHS = {
    "sidecars": ("sidecars",),
    "precious": ("sidecars", "precious"),
    "cheap": ("sidecars", "cheap"),
}


# -- acceptance 3: the primary is the largest, yet never the victim ---------------------------


def _biggest_primary_config(beat: Path, adj: int | None) -> dict[str, Any]:
    """The primary holds ~72M of a 128M tree; a sidecar with no limit of its own starts growing
    once the primary is ready, and can get no bigger than ~55M. (oomguard's own leaf is in the
    tree, but its memory stays charged to the cgroup it started in: moving a process does not
    move its charges.)

    memory_min on the primary protects its pages from reclaim: without it, reclaim at the
    tree's limit evicts and refaults its Python code pages for tens of seconds (in a TCG guest)
    before the kernel gives up and OOM-kills. Protection changes how soon the OOM comes, not
    whom it picks: oom_badness ignores memory.min.
    """
    db: dict[str, Any] = {
        "role": "primary",
        "memory_min": "80M",
        "command": workload("fakedb"),
        "env": {"FAKEDB_MB": "64", "FAKEDB_HEARTBEAT": str(beat), "FAKEDB_INTERVAL_MS": "500"},
        **FAST_RESTART,
    }
    grower: dict[str, Any] = {
        "command": sh(
            f"until grep -q ready {beat} 2>/dev/null; do sleep 0.1; done; exec {' '.join(hog(256))}"
        ),
        **FAST_RESTART,
    }
    if adj is not None:
        db["oom_score_adj"] = adj
        grower["oom_score_adj"] = adj
    tree = {**OBSERVE, "memory_max": "128M"}
    return {"oomguard": tree, "service": {"db": db, "hog": grower}}


@pytest.mark.slow
def test_primary_is_never_the_victim_10_of_10(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    beat = tmp_path / "heartbeat"
    with start_run(
        tmp_path, cgroup2_mount, scratch_cgroup, _biggest_primary_config(beat, None)
    ) as og:
        db_pid = og.wait_running("db")["db"]

        def db_full() -> int | None:
            # The primary's size once it holds its 64M (it allocates after it starts).
            value = int((og.cgroup("db") / "memory.current").read_text())
            return value if value > 64 * MiB else None

        db_current = wait_until(db_full, "the primary to hold its 64M", timeout=120)
        og.wait_event(
            "restart", "hog", count=RUNS, where=lambda e: e["reason"] == "oom_kill", timeout=240
        )
        kernel_db = local_events(og, "db")
        kernel_root = local_events(og)
        code = og.stop()
        output = og.output()

    assert_no_traceback(output)
    assert code == 0, output
    # First: the primary was never replaced (a restart would explain any size figure below).
    assert pids_of(og, "db") == [db_pid], (og.events("exit", "db"), counter_events(og))
    assert db_current > 64 * MiB, "the primary must be the largest process in the tree"
    kills = counter_events(og)
    assert len(kills) >= RUNS, kills
    assert {k["service"] for k in kills} == {"hog"}, kills
    assert {k["limit_at"] for k in kills} == {rel_root(og)}, kills  # the tree's budget
    # The victim never got as big as the primary: size alone would have picked the primary.
    assert max(k["peak"] for k in kills) < db_current, (kills, db_current)
    assert kernel_db["oom_kill"] == 0, kernel_db
    assert kernel_root["oom"] >= RUNS, kernel_root
    assert pids_of(og, "db") == [db_pid]
    assert {pid for _, pid in heartbeats(beat)} == {db_pid}


@pytest.mark.slow
def test_without_oom_score_adj_the_primary_is_the_victim(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    """The control experiment: the same tree with oom_score_adj = 0 for both services. Badness is
    then plain size, so the kernel kills the primary; oomguard says so loudly and restarts it."""
    beat = tmp_path / "heartbeat"
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, _biggest_primary_config(beat, 0)) as og:
        first = og.wait_running("db")["db"]
        kills = og.wait_event("oom_kill", timeout=180)
        og.wait_event("spawned", "db", count=2)
        kernel_db = local_events(og, "db")
        code = og.stop()
        output = og.output()

    assert_no_traceback(output)
    assert kills[0]["service"] == "db", kills  # the first OOM took the largest: the primary
    assert kernel_db["oom_kill"] >= 1, kernel_db
    oom_exit = exit_events(og, "db")[0]
    assert oom_exit["pid"] == first and oom_exit["oom_killed"], oom_exit
    assert "primary_oom_killed" in output and "db was killed by the OOM killer" in output
    assert pids_of(og, "db")[1] != first  # restarted: the downtime counts
    assert code in (0, 143), output


def rel_root(og: Oomguard) -> str:
    return "/" + str(og.root.relative_to(og.mount))


# -- acceptance 4: the restart policy end to end ----------------------------------------------


def test_backoff_doubles_to_its_cap_then_fatal_and_a_fatal_primary_sets_the_exit_status(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    config = {
        "service": {
            # Fails at once, every time: 3 exits > max_restarts=2 -> FATAL; it is essential (the
            # primary's default), so oomguard stops and exits with its status, 3. The long
            # backoff leaves the sidecar time to go FATAL first.
            "db": {
                "role": "primary",
                "command": sh("exit 3"),
                "restart": "always",
                "max_restarts": 2,
                "backoff_initial": "4s",
                "backoff_max": "30s",
            },
            # Exits 0 at once under restart=always: still backed off (no tight loop), doubling
            # 0.1 -> 0.2 -> 0.4 and capped there, FATAL after 5 restarts; not essential.
            "flappy": {
                "command": sh("exit 0"),
                "restart": "always",
                "backoff_initial": "0.1s",
                "backoff_max": "0.4s",
                "max_restarts": 5,
            },
        }
    }
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        code = og.wait_exit(timeout=180)
        output = og.output()

    assert_no_traceback(output)
    assert code == 3, output
    assert "stopped because db failed for good (exit status 3)" in output
    flappy = og.events(service="flappy")
    assert [e["delay"] for e in flappy if e["kind"] == "backoff"] == [0.1, 0.2, 0.4, 0.4, 0.4]
    assert len([e for e in flappy if e["kind"] == "spawned"]) == 6
    assert [e["kind"] for e in flappy][-2:] == ["exit", "fatal"], flappy
    # No restart came sooner than its delay.
    gaps = backoff_gaps(flappy)
    assert len(gaps) == 5 and all(gap >= delay for delay, gap in gaps), gaps
    db = og.events(service="db")
    assert [e["delay"] for e in db if e["kind"] == "backoff"] == [4.0, 8.0]
    assert [e["code"] for e in db if e["kind"] == "exit"] == [3, 3, 3]
    fatal = [e for e in db if e["kind"] == "fatal"]
    assert len(fatal) == 1 and fatal[0]["essential"] is True, fatal
    # flappy went FATAL on its own, before the primary took everything down.
    kinds = [(e["kind"], e["service"]) for e in og.events()]
    assert kinds.index(("fatal", "flappy")) < kinds.index(("fatal", "db"))
    state = og.state()
    assert state is not None
    assert state["services"]["db"]["state"] == "FATAL"
    assert state["services"]["flappy"]["state"] == "FATAL"


GROUP_RUNS = 3


def test_group_oom_in_a_shared_budget_restarts_the_less_critical_first(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    """memory.oom.group on the budget: the kernel kills both sidecars in one OOM, and both must
    be restarted: the less critical first (issue 3: "restart the least critical first")."""
    config = {
        "oomguard": OBSERVE,
        "slice": {"pair": {"memory_max": "48M", "memory_high": "48M", "oom_group": True}},
        "service": {
            "db": {"role": "primary", "command": ["sleep", "100000"]},
            "hi": {"command": holder(16), "slice": "pair", "criticality": 90, **FAST_RESTART},
            "lo": {"command": hog(96), "slice": "pair", "criticality": 10, **FAST_RESTART},
        },
    }
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        og.wait_running("db")
        for name in ("lo", "hi"):
            og.wait_event(
                "restart", name, count=GROUP_RUNS, where=lambda e: e["reason"] == "oom_kill"
            )
        group_kills = local_events(og, "pair")["oom_group_kill"]
        code = og.stop()
        output = og.output()

    assert_no_traceback(output)
    assert code == 143, output
    assert group_kills >= GROUP_RUNS
    # Every victim's event names the budget whose limit was hit, the second one too.
    kills = counter_events(og)
    assert {k["service"] for k in kills} == {"lo", "hi"}, kills
    assert {k["limit_at"] for k in kills} == {rel_root(og) + "/pair"}, kills
    restarts = [e["service"] for e in og.events("restart") if e["reason"] == "oom_kill"]
    pairs = [restarts[i : i + 2] for i in range(0, 2 * GROUP_RUNS, 2)]
    assert pairs == [["lo", "hi"]] * GROUP_RUNS, restarts
