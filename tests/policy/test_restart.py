from __future__ import annotations

import signal
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oomguard.policy.restart import (
    DOWN_STATES,
    Emit,
    Exited,
    ExitInfo,
    Fatal,
    KillCgroup,
    Ready,
    Record,
    Release,
    RestartParams,
    Signal,
    Spawn,
    Spawned,
    SpawnFailed,
    Start,
    State,
    Stop,
    Tick,
    backoff_delay,
    decide,
    next_deadline,
)

if TYPE_CHECKING:
    from oomguard.policy.restart import Action, Event, StopReason

ALWAYS = RestartParams(restart="always", start_secs=1.0, max_restarts=1000)
CRASH = ExitInfo(code=1)
CLEAN = ExitInfo(code=0)
OOM = ExitInfo(signal=int(signal.SIGKILL), oom_killed=True)


def emits(actions: list[Action], kind: str | None = None) -> list[Emit]:
    return [a for a in actions if isinstance(a, Emit) and (kind is None or a.kind == kind)]


def non_emits(actions: list[Action]) -> list[Action]:
    return [a for a in actions if not isinstance(a, Emit)]


def starting(params: RestartParams, now: float = 0.0, pid: int = 100) -> Record:
    rec, _ = decide(params, Record("svc"), Start(), now)
    rec, _ = decide(params, rec, Spawned(pid), now)
    return rec


def running(params: RestartParams, now: float = 0.0, pid: int = 100) -> Record:
    rec = starting(params, now, pid)
    rec, _ = decide(params, rec, Tick(), now + params.start_secs)
    assert rec.state is State.RUNNING
    return rec


def respawn(params: RestartParams, rec: Record, pid: int = 200) -> Record:
    """From BACKOFF: tick at the deadline, then the launcher reports the new pid."""
    assert rec.state is State.BACKOFF and rec.next_start_at is not None
    now = rec.next_start_at
    rec, actions = decide(params, rec, Tick(), now)
    assert non_emits(actions) == [Spawn("svc")]
    rec, _ = decide(params, rec, Spawned(pid), now)
    return rec


# --- Starting and running -----------------------------------------------------------------------


def test_initial_start_requests_one_spawn_and_sets_no_timer_until_spawned() -> None:
    rec, actions = decide(ALWAYS, Record("svc"), Start(), 5.0)
    assert rec.state is State.STARTING and rec.pid is None
    assert non_emits(actions) == [Spawn("svc")]
    assert emits(actions, "start")[0].fields["reason"] == "initial"
    assert next_deadline(ALWAYS, rec) is None


def test_running_only_after_start_secs_without_exit() -> None:
    rec = starting(ALWAYS, now=10.0, pid=42)
    assert rec.pid == 42 and rec.started_at == 10.0
    assert next_deadline(ALWAYS, rec) == 11.0
    early, actions = decide(ALWAYS, rec, Tick(), 10.99)
    assert early == rec and actions == []
    rec, actions = decide(ALWAYS, rec, Tick(), 11.0)
    assert rec.state is State.RUNNING and rec.running_since == 11.0
    assert emits(actions, "running")[0].fields["pid"] == 42
    # Healthy and never restarted: idle means no timer at all.
    assert next_deadline(ALWAYS, rec) is None


def test_start_secs_zero_runs_on_spawned() -> None:
    params = replace(ALWAYS, start_secs=0.0)
    rec, _ = decide(params, Record("svc"), Start(), 0.0)
    rec, actions = decide(params, rec, Spawned(7), 0.0)
    assert rec.state is State.RUNNING
    assert [e.kind for e in emits(actions)] == ["spawned", "running"]


def test_start_is_a_no_op_when_already_active() -> None:
    rec = running(ALWAYS)
    assert decide(ALWAYS, rec, Start(), 3.0) == (rec, [])
    rec2 = starting(ALWAYS)
    assert decide(ALWAYS, rec2, Start(), 0.5) == (rec2, [])


# --- Backoff ------------------------------------------------------------------------------------


def test_backoff_doubles_to_its_cap() -> None:
    rec = starting(ALWAYS)
    delays = []
    now = 0.0
    for _ in range(12):
        rec, actions = decide(ALWAYS, rec, Exited(CRASH), now)
        assert rec.state is State.BACKOFF
        delays.append(emits(actions, "backoff")[0].fields["delay"])
        assert rec.next_start_at is not None
        assert next_deadline(ALWAYS, rec) == rec.next_start_at
        now = rec.next_start_at
        rec = respawn(ALWAYS, rec)
    expected = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0, 30.0]
    assert delays == pytest.approx(expected)


def test_backoff_delay_function() -> None:
    assert backoff_delay(ALWAYS, 1) == pytest.approx(0.1)
    assert backoff_delay(ALWAYS, 2) == pytest.approx(0.2)
    assert backoff_delay(ALWAYS, 10) == 30.0
    assert backoff_delay(ALWAYS, 10**6) == 30.0
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(ALWAYS, 0)


def test_backoff_tick_before_deadline_does_nothing() -> None:
    rec, _ = decide(ALWAYS, starting(ALWAYS), Exited(CRASH), 0.0)
    assert decide(ALWAYS, rec, Tick(), 0.05) == (rec, [])


def _crash_n_times(params: RestartParams, n: int) -> tuple[Record, float]:
    rec = starting(params)
    now = 0.0
    for _ in range(n):
        rec, _ = decide(params, rec, Exited(CRASH), now)
        assert rec.next_start_at is not None
        now = rec.next_start_at
        rec = respawn(params, rec)
    return rec, now


def test_attempt_resets_after_backoff_reset_of_running() -> None:
    rec, now = _crash_n_times(ALWAYS, 4)
    assert rec.attempt == 4
    rec, _ = decide(ALWAYS, rec, Tick(), now + 1.0)
    assert rec.state is State.RUNNING
    assert rec.running_since is not None
    # While attempt > 0 there is exactly one timer: the backoff reset.
    assert next_deadline(ALWAYS, rec) == rec.running_since + 60.0
    same, actions = decide(ALWAYS, rec, Tick(), rec.running_since + 59.9)
    assert same == rec and actions == []
    rec, actions = decide(ALWAYS, rec, Tick(), rec.running_since + 60.0)
    assert rec.attempt == 0 and emits(actions, "backoff_reset")
    assert next_deadline(ALWAYS, rec) is None
    rec, actions = decide(ALWAYS, rec, Exited(CRASH), now + 100.0)
    assert emits(actions, "backoff")[0].fields["delay"] == pytest.approx(0.1)


def test_attempt_resets_lazily_if_the_reset_tick_was_missed() -> None:
    rec, now = _crash_n_times(ALWAYS, 4)
    rec, _ = decide(ALWAYS, rec, Tick(), now + 1.0)
    assert rec.running_since is not None
    rec, actions = decide(ALWAYS, rec, Exited(CRASH), rec.running_since + 60.0)
    assert rec.attempt == 1
    assert emits(actions, "backoff")[0].fields["delay"] == pytest.approx(0.1)


def test_attempt_keeps_growing_when_running_shorter_than_backoff_reset() -> None:
    rec, now = _crash_n_times(ALWAYS, 4)
    rec, _ = decide(ALWAYS, rec, Tick(), now + 1.0)
    assert rec.running_since is not None
    rec, actions = decide(ALWAYS, rec, Exited(CRASH), rec.running_since + 59.0)
    assert rec.attempt == 5
    assert emits(actions, "backoff")[0].fields["delay"] == pytest.approx(1.6)


# --- Restart window and FATAL -------------------------------------------------------------------


def test_fatal_after_max_restarts_within_the_window() -> None:
    params = replace(ALWAYS, max_restarts=3, restart_window=300.0)
    rec, now = _crash_n_times(params, 3)  # three restarts: allowed
    assert rec.state is State.STARTING
    rec, actions = decide(params, rec, Exited(CRASH), now + 0.5)
    assert rec.state is State.FATAL
    assert not any(isinstance(a, Spawn | Fatal) for a in actions)  # not essential
    fatal = emits(actions, "fatal")[0]
    assert fatal.fields["essential"] is False and "4 restarts" in str(fatal.fields["reason"])
    assert next_deadline(params, rec) is None
    # Nothing but an explicit Start leaves FATAL.
    for event in (Tick(), Release(), Stop("shutdown"), Exited(CRASH)):
        after, _ = decide(params, rec, event, now + 1000.0)
        assert after == rec


def test_no_fatal_when_restarts_are_spread_out() -> None:
    params = replace(ALWAYS, max_restarts=3, restart_window=100.0)
    rec = running(params)
    now = 1.0
    for _ in range(30):
        now += 40.0  # at most 3 restarts ever fall inside a 100 s window
        rec, _ = decide(params, rec, Exited(CRASH), now)
        assert rec.state is State.BACKOFF
        assert len(rec.restart_times) <= 3
        rec = respawn(params, rec)
        assert rec.started_at is not None
        rec, _ = decide(params, rec, Tick(), rec.started_at + params.start_secs)
        assert rec.state is State.RUNNING


def test_max_restarts_zero_means_the_first_restart_is_fatal() -> None:
    params = replace(ALWAYS, max_restarts=0)
    rec, _ = decide(params, running(params), Exited(CRASH), 5.0)
    assert rec.state is State.FATAL


def test_essential_fatal_emits_fatal_with_the_exit() -> None:
    params = replace(ALWAYS, max_restarts=0, essential=True)
    rec, actions = decide(params, running(params), Exited(OOM), 5.0)
    assert rec.state is State.FATAL
    assert non_emits(actions) == [Fatal("svc", OOM)]
    assert emits(actions, "exit")[0].fields["oom_killed"] is True and emits(actions, "fatal")


def test_explicit_start_from_fatal_forgets_earlier_failures() -> None:
    params = replace(ALWAYS, max_restarts=0)
    rec, _ = decide(params, running(params), Exited(CRASH), 5.0)
    assert rec.state is State.FATAL and rec.attempt == 1
    rec, actions = decide(params, rec, Start(reason="explicit"), 6.0)
    assert rec.state is State.STARTING and rec.attempt == 0 and rec.restart_times == ()
    assert Spawn("svc") in actions


# --- Restart policies ---------------------------------------------------------------------------


@pytest.mark.parametrize("info", [CLEAN, CRASH, OOM, ExitInfo(signal=15)])
def test_never_exits_whatever_the_status(info: ExitInfo) -> None:
    params = replace(ALWAYS, restart="never")
    rec, actions = decide(params, running(params), Exited(info), 5.0)
    assert rec.state is State.EXITED and rec.last_exit == info
    assert non_emits(actions) == []
    assert next_deadline(params, rec) is None


def test_never_essential_takes_the_supervisor_down_with_its_status() -> None:
    params = replace(ALWAYS, restart="never", essential=True)
    rec, actions = decide(params, running(params), Exited(ExitInfo(code=3)), 5.0)
    assert rec.state is State.EXITED
    assert non_emits(actions) == [Fatal("svc", ExitInfo(code=3))]


def test_on_failure_exits_on_clean_exit() -> None:
    params = replace(ALWAYS, restart="on-failure")
    rec, actions = decide(params, running(params), Exited(CLEAN), 5.0)
    assert rec.state is State.EXITED and non_emits(actions) == []


@pytest.mark.parametrize("info", [CRASH, OOM, ExitInfo(signal=15), ExitInfo()])
def test_on_failure_restarts_on_failure(info: ExitInfo) -> None:
    params = replace(ALWAYS, restart="on-failure")
    rec, _ = decide(params, running(params), Exited(info), 5.0)
    assert rec.state is State.BACKOFF and rec.attempt == 1


def test_always_restarts_a_clean_exit_with_backoff_so_it_cannot_loop_tightly() -> None:
    rec = starting(ALWAYS)
    rec, a1 = decide(ALWAYS, rec, Exited(CLEAN), 0.5)
    assert rec.state is State.BACKOFF and rec.attempt == 1
    rec = respawn(ALWAYS, rec)
    rec, a2 = decide(ALWAYS, rec, Exited(CLEAN), 0.7)
    assert rec.attempt == 2
    assert emits(a2, "backoff")[0].fields["delay"] == pytest.approx(0.2)
    assert emits(a1, "exit")[0].fields["failed"] is False


def test_exit_in_starting_is_a_failed_start() -> None:
    rec, actions = decide(ALWAYS, starting(ALWAYS), Exited(CRASH), 0.3)
    assert rec.state is State.BACKOFF
    exit_emit = emits(actions, "exit")[0]
    assert exit_emit.fields["was"] == "starting" and exit_emit.fields["failed"] is True


def test_oom_kill_is_a_failure_and_reported_as_such() -> None:
    params = replace(ALWAYS, restart="on-failure")
    rec, actions = decide(params, running(params), Exited(OOM), 5.0)
    assert rec.state is State.BACKOFF
    assert rec.last_exit is not None and rec.last_exit.oom_killed
    emit = emits(actions, "exit")[0]
    assert emit.fields["oom_killed"] is True and emit.fields["failed"] is True
    assert emit.fields["signal"] == signal.SIGKILL
    assert emits(actions, "backoff")[0].fields["reason"] == "oom_kill"
    _, actions = decide(params, rec, Tick(), 100.0)
    assert emits(actions, "restart")[0].fields["reason"] == "oom_kill"


def test_spawn_failed_backs_off_and_is_reported() -> None:
    rec, _ = decide(ALWAYS, Record("svc"), Start(), 0.0)
    rec, actions = decide(ALWAYS, rec, SpawnFailed("no such file: /usr/bin/pg"), 0.0)
    assert rec.state is State.BACKOFF and rec.last_error == "no such file: /usr/bin/pg"
    assert emits(actions, "spawn_failed")[0].fields["message"] == "no such file: /usr/bin/pg"
    rec, actions = decide(ALWAYS, rec, Tick(), 1.0)
    assert emits(actions, "restart")[0].fields["reason"] == "spawn_failed"
    rec, _ = decide(ALWAYS, rec, Spawned(9), 1.0)
    assert rec.last_error is None


def test_spawn_failed_essential_never_has_no_exit() -> None:
    params = replace(ALWAYS, restart="never", essential=True)
    rec, _ = decide(params, Record("svc"), Start(), 0.0)
    rec, actions = decide(params, rec, SpawnFailed("boom"), 0.0)
    assert rec.state is State.EXITED
    assert non_emits(actions) == [Fatal("svc", None)]


def test_restarts_total_counts_respawns() -> None:
    rec, _ = _crash_n_times(ALWAYS, 3)
    assert rec.restarts_total == 3


# --- Stopping -----------------------------------------------------------------------------------


def test_stop_signals_then_kills_the_cgroup_after_the_timeout() -> None:
    params = replace(ALWAYS, stop_timeout=10.0, stop_signal=int(signal.SIGINT))
    rec = running(params)
    rec, actions = decide(params, rec, Stop("shutdown"), 100.0)
    assert rec.state is State.STOPPING
    assert non_emits(actions) == [Signal("svc", int(signal.SIGINT))]
    assert next_deadline(params, rec) == 110.0
    assert decide(params, rec, Tick(), 109.0) == (rec, [])
    rec, actions = decide(params, rec, Tick(), 110.0)
    assert non_emits(actions) == [KillCgroup("svc")]
    # Re-armed: a process stuck in D state gets the (idempotent) kill again, not a busy loop.
    assert next_deadline(params, rec) == 120.0
    rec, actions = decide(params, rec, Tick(), 120.0)
    assert non_emits(actions) == [KillCgroup("svc")] and rec.kills_sent == 2
    rec, actions = decide(params, rec, Exited(ExitInfo(signal=9)), 121.0)
    assert rec.state is State.STOPPED and non_emits(actions) == []
    assert emits(actions, "exit")[0].fields["requested"] is True
    assert next_deadline(params, rec) is None


def test_an_exit_we_asked_for_is_not_judged() -> None:
    params = replace(ALWAYS, essential=True, max_restarts=0)
    rec, _ = decide(params, running(params), Stop("shutdown"), 5.0)
    rec, actions = decide(params, rec, Exited(ExitInfo(signal=15)), 6.0)
    assert rec.state is State.STOPPED
    assert non_emits(actions) == []  # no Fatal, no restart


def test_stop_from_starting() -> None:
    rec, actions = decide(ALWAYS, starting(ALWAYS), Stop("shutdown"), 0.5)
    assert rec.state is State.STOPPING and Signal("svc", 15) in actions


def test_stop_while_spawn_in_flight_signals_once_spawned() -> None:
    rec, _ = decide(ALWAYS, Record("svc"), Start(), 0.0)
    rec, actions = decide(ALWAYS, rec, Stop("shutdown"), 0.0)
    assert rec.state is State.STOPPING and non_emits(actions) == []
    assert next_deadline(ALWAYS, rec) is None
    stopping = rec
    rec, actions = decide(ALWAYS, stopping, Spawned(77), 0.1)
    assert rec.pid == 77 and non_emits(actions) == [Signal("svc", 15)]
    assert next_deadline(ALWAYS, rec) == pytest.approx(10.1)
    rec, _ = decide(ALWAYS, rec, Exited(ExitInfo(signal=15)), 0.2)
    assert rec.state is State.STOPPED
    # Or the spawn fails: the stop is complete with nothing to signal.
    rec, actions = decide(ALWAYS, stopping, SpawnFailed("nope"), 0.1)
    assert rec.state is State.STOPPED and non_emits(actions) == []


def test_shutdown_overrides_another_stop_reason() -> None:
    rec, _ = decide(ALWAYS, running(ALWAYS), Stop("evict"), 5.0)
    rec, actions = decide(ALWAYS, rec, Stop("shutdown"), 6.0)
    assert rec.stop_reason == "shutdown" and non_emits(actions) == []
    assert rec.stop_deadline == 15.0  # the original deadline stands
    rec, _ = decide(ALWAYS, rec, Exited(CLEAN), 7.0)
    assert rec.state is State.STOPPED


def test_other_second_stop_is_a_no_op() -> None:
    rec, _ = decide(ALWAYS, running(ALWAYS), Stop("shutdown"), 5.0)
    assert decide(ALWAYS, rec, Stop("evict"), 6.0) == (rec, [])
    assert decide(ALWAYS, rec, Stop("shutdown"), 6.0) == (rec, [])


def test_stop_on_a_down_service_is_a_no_op() -> None:
    rec = Record("svc")
    assert decide(ALWAYS, rec, Stop("shutdown"), 1.0) == (rec, [])


@pytest.mark.parametrize(
    ("reason", "target"), [("shutdown", State.STOPPED), ("evict", State.EVICTED)]
)
def test_stop_during_backoff_cancels_the_pending_start(reason: StopReason, target: State) -> None:
    rec, _ = decide(ALWAYS, running(ALWAYS), Exited(CRASH), 5.0)
    assert rec.state is State.BACKOFF
    rec, actions = decide(ALWAYS, rec, Stop(reason), 5.01)
    assert rec.state is target and rec.next_start_at is None
    assert non_emits(actions) == []
    assert emits(actions, "stop")[0].fields["cancelled_start"] is True
    assert next_deadline(ALWAYS, rec) is None
    assert decide(ALWAYS, rec, Tick(), 100.0) == (rec, [])


@pytest.mark.parametrize("reason", ["controlled_restart", "oom_cleanup"])
def test_restart_stops_during_backoff_keep_the_backoff(reason: StopReason) -> None:
    rec, _ = decide(ALWAYS, running(ALWAYS), Exited(CRASH), 5.0)
    assert decide(ALWAYS, rec, Stop(reason), 5.01) == (rec, [])


# --- Evict, release, controlled restart, oom cleanup --------------------------------------------


def test_evict_then_release_cycle() -> None:
    rec = running(ALWAYS)
    rec, actions = decide(ALWAYS, rec, Stop("evict"), 10.0)
    assert Signal("svc", 15) in actions
    rec, actions = decide(ALWAYS, rec, Exited(ExitInfo(signal=15)), 11.0)
    assert rec.state is State.EVICTED and emits(actions, "evict")
    assert next_deadline(ALWAYS, rec) is None
    # Only Release starts it again.
    assert decide(ALWAYS, rec, Start(), 12.0) == (rec, [])
    assert decide(ALWAYS, rec, Tick(), 12.0) == (rec, [])
    rec, actions = decide(ALWAYS, rec, Release(), 50.0)
    assert rec.state is State.STARTING and non_emits(actions) == [Spawn("svc")]
    assert rec.attempt == 0  # an eviction is not a failure
    rec, _ = decide(ALWAYS, rec, Spawned(5), 50.0)
    rec, actions = decide(ALWAYS, rec, Tick(), 51.0)
    assert rec.state is State.RUNNING
    assert rec.total_downtime == pytest.approx(41.0)
    assert emits(actions, "running")[0].fields["downtime"] == pytest.approx(41.0)


def test_evicted_shutdown_goes_to_stopped() -> None:
    rec = Record("svc", state=State.EVICTED)
    rec2, actions = decide(ALWAYS, rec, Stop("shutdown"), 1.0)
    assert rec2.state is State.STOPPED and emits(actions, "stop")
    assert decide(ALWAYS, rec, Stop("evict"), 1.0) == (rec, [])


def test_release_while_evicting_becomes_a_restart() -> None:
    rec, _ = decide(ALWAYS, running(ALWAYS), Stop("evict"), 10.0)
    rec, _ = decide(ALWAYS, rec, Release(), 12.0)
    assert rec.stop_reason == "controlled_restart"
    rec, actions = decide(ALWAYS, rec, Exited(ExitInfo(signal=15)), 13.0)
    assert rec.state is State.STARTING and Spawn("svc") in actions


def test_release_when_not_evicted_is_a_no_op() -> None:
    rec = running(ALWAYS)
    assert decide(ALWAYS, rec, Release(), 3.0) == (rec, [])


def test_controlled_restart_respawns_at_once_without_backoff_and_measures_downtime() -> None:
    rec, now = _crash_n_times(ALWAYS, 2)
    rec, _ = decide(ALWAYS, rec, Tick(), now + 1.0)
    window = rec.restart_times
    rec, actions = decide(ALWAYS, rec, Stop("controlled_restart"), 20.0)
    assert Signal("svc", 15) in actions
    rec, actions = decide(ALWAYS, rec, Exited(ExitInfo(signal=15)), 22.0)
    assert rec.state is State.STARTING and Spawn("svc") in actions
    assert emits(actions, "restart")[0].fields["reason"] == "controlled_restart"
    assert rec.attempt == 2 and rec.restart_times == window  # not a failure
    assert rec.restarts_total == 3
    assert rec.downtime(23.0) == pytest.approx(3.0)  # still down: counted live
    rec, _ = decide(ALWAYS, rec, Spawned(300), 22.0)
    rec, _ = decide(ALWAYS, rec, Tick(), 23.5)
    # Downtime is measured from the Stop until RUNNING, not until Spawned.
    assert rec.total_downtime == pytest.approx(3.5)
    assert rec.downtime(100.0) == pytest.approx(3.5)


def test_controlled_restart_whose_spawn_fails_backs_off() -> None:
    rec, _ = decide(ALWAYS, running(ALWAYS), Stop("controlled_restart"), 5.0)
    rec, _ = decide(ALWAYS, rec, Exited(ExitInfo(signal=15)), 6.0)
    rec, actions = decide(ALWAYS, rec, SpawnFailed("gone"), 6.0)
    assert rec.state is State.BACKOFF and emits(actions, "spawn_failed")


def test_oom_cleanup_counts_as_an_oom_failure() -> None:
    params = replace(ALWAYS, restart="on-failure")
    rec, _ = decide(params, running(params), Stop("oom_cleanup"), 5.0)
    rec, actions = decide(params, rec, Exited(CLEAN), 6.0)
    assert rec.state is State.BACKOFF and rec.attempt == 1
    assert rec.last_exit == ExitInfo(code=0, oom_killed=True)
    assert emits(actions, "exit")[0].fields["oom_killed"] is True
    assert len(rec.restart_times) == 1


def test_shutdown_is_not_downtime_but_a_crash_is() -> None:
    rec, _ = decide(ALWAYS, running(ALWAYS), Stop("shutdown"), 5.0)
    rec, _ = decide(ALWAYS, rec, Exited(CLEAN), 6.0)
    assert rec.down_since is None and rec.downtime(100.0) == 0.0
    rec, _ = decide(ALWAYS, running(ALWAYS), Exited(CRASH), 5.0)
    assert rec.down_since == 5.0 and rec.downtime(7.0) == pytest.approx(2.0)


def test_a_first_start_that_fails_is_not_downtime() -> None:
    rec, _ = decide(ALWAYS, starting(ALWAYS), Exited(CRASH), 0.5)
    assert rec.down_since is None


# --- Stale events and validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rec", "event"),
    [
        (Record("svc"), Exited(CRASH)),
        (Record("svc"), Spawned(5)),
        (Record("svc", state=State.EVICTED), SpawnFailed("x")),
        (Record("svc", state=State.STARTING), Exited(CRASH)),  # no pid yet
    ],
)
def test_stale_process_events_are_ignored_loudly(rec: Record, event: Event) -> None:
    after, actions = decide(ALWAYS, rec, event, 1.0)
    assert after == rec
    assert [a.kind for a in emits(actions)] == ["ignored"] and non_emits(actions) == []


def test_second_spawned_is_ignored() -> None:
    rec = running(ALWAYS)
    after, actions = decide(ALWAYS, rec, Spawned(999), 3.0)
    assert after == rec and emits(actions, "ignored")[0].fields["pid"] == 999


def test_exit_info() -> None:
    assert not CLEAN.failed and CLEAN.status == 0
    assert CRASH.failed and CRASH.status == 1
    assert OOM.failed and OOM.status == 137
    assert ExitInfo(code=0, oom_killed=True).failed
    assert ExitInfo().failed and ExitInfo().status == 1
    with pytest.raises(ValueError, match="not both"):
        ExitInfo(code=0, signal=9)


def test_stop_reason_validation() -> None:
    with pytest.raises(ValueError, match="stop reason"):
        Stop("bored")  # type: ignore[arg-type]


def test_invariant_violation_is_an_assertion_not_corruption() -> None:
    broken = Record("svc", state=State.RUNNING)  # RUNNING without a pid
    with pytest.raises(AssertionError, match="RUNNING"):
        decide(ALWAYS, broken, Tick(), 1.0)


# --- Properties ---------------------------------------------------------------------------------

durations = st.floats(min_value=0.001, max_value=1000.0, allow_nan=False)


@given(initial=durations, extra=durations, attempt=st.integers(min_value=1, max_value=5000))
def test_backoff_delay_is_within_initial_and_max_and_monotonic(
    initial: float, extra: float, attempt: int
) -> None:
    params = RestartParams(backoff_initial=initial, backoff_max=initial + extra)
    delay = backoff_delay(params, attempt)
    assert params.backoff_initial <= delay <= params.backoff_max
    assert backoff_delay(params, attempt + 1) >= delay


#: Events that are always possible; the driver adds the process events the world allows.
ALWAYS_POSSIBLE = (
    "start",
    "stop_shutdown",
    "stop_evict",
    "stop_controlled_restart",
    "stop_oom_cleanup",
    "release",
    "tick",
    "tick_deadline",
    "tick_deadline",  # twice: deadlines are what move a service along
)

param_sets = st.builds(
    RestartParams,
    restart=st.sampled_from(["always", "on-failure", "never"]),
    start_secs=st.sampled_from([0.0, 1.0]),
    backoff_initial=st.sampled_from([0.1, 1.0]),
    backoff_max=st.sampled_from([5.0, 30.0]),
    backoff_reset=st.sampled_from([0.0, 10.0, 60.0]),
    max_restarts=st.integers(min_value=0, max_value=5),
    restart_window=st.sampled_from([10.0, 300.0]),
    essential=st.booleans(),
    stop_timeout=st.sampled_from([0.5, 10.0]),
    ready_timeout=st.sampled_from([None, 5.0]),
)


@settings(max_examples=150, deadline=None)
@given(params=param_sets, n_steps=st.integers(min_value=1, max_value=80), data=st.data())
def test_random_event_sequences_keep_the_world_consistent(
    params: RestartParams, n_steps: int, data: st.DataObject
) -> None:
    """A simulated world holds at most one process per service. Drive the machine with random
    (but physically possible) events plus garbage, and check after every step that:
    no Spawn while a process or spawn exists (two Spawns need an exit in between); signals and
    kills only target a live process; a down state has no process; a Tick never leaves the
    deadline in the past (no busy loop); Fatal only for essential services; never more than
    max_restarts scheduled restarts within any restart_window between fresh starts."""
    rec = Record("svc")
    proc: int | str | None = None  # None, "pending" (spawn in flight), or a pid
    next_pid = 1000
    now = 0.0
    backoffs: list[float] = []

    def apply(event: Event) -> None:
        nonlocal rec, proc
        was_down = rec.state in (State.STOPPED, State.EXITED, State.FATAL)
        rec, actions = decide(params, rec, event, now)
        for action in actions:
            if isinstance(action, Spawn):
                assert proc is None, "two Spawns without an exit in between"
                proc = "pending"
            elif isinstance(action, Signal | KillCgroup):
                assert isinstance(proc, int), "signal or kill with no live process"
            elif isinstance(action, Fatal):
                assert params.essential and rec.state in (State.EXITED, State.FATAL)
            elif isinstance(action, Emit) and action.kind == "backoff":
                backoffs.append(now)
        if isinstance(event, Start) and was_down:
            backoffs.clear()

    for _ in range(n_steps):
        possible = list(ALWAYS_POSSIBLE)
        if proc == "pending":
            possible += ["spawned", "spawned", "spawned", "spawn_failed"]
        elif isinstance(proc, int):
            possible += ["exit_clean", "exit_crash", "exit_oom", "ready", "stale_ready"]
        else:
            possible += ["stale_exit"]
        op = data.draw(st.sampled_from(possible))
        now += data.draw(st.sampled_from([0.0, 0.01, 0.5, 5.0, 50.0]))
        if op == "start":
            apply(Start())
        elif op == "spawned" and proc == "pending":
            next_pid += 1
            proc = next_pid
            apply(Spawned(next_pid))
            assert rec.pid == next_pid
        elif op == "spawn_failed" and proc == "pending":
            proc = None
            apply(SpawnFailed("nope"))
        elif op.startswith("exit_") and isinstance(proc, int):
            info = {"exit_clean": CLEAN, "exit_crash": CRASH, "exit_oom": OOM}[op]
            proc = None
            apply(Exited(info))
        elif op == "ready" and isinstance(proc, int):
            apply(Ready(proc))
        elif op == "stale_ready" and isinstance(proc, int):
            before = rec
            apply(Ready(proc + 100_000))
            assert rec == before
        elif op == "stale_exit" and proc is None:
            before = rec
            apply(Exited(CRASH))
            assert rec == before
        elif op.startswith("stop_"):
            apply(Stop(op.removeprefix("stop_")))  # type: ignore[arg-type]
        elif op == "release":
            apply(Release())
        elif op == "tick":
            apply(Tick())
        elif op == "tick_deadline":
            deadline = next_deadline(params, rec)
            if deadline is not None:
                now = max(now, deadline)
                for _ in range(3):  # a deadline exactly at `now` may take one more tick
                    apply(Tick())
                    deadline = next_deadline(params, rec)
                    if deadline is None or deadline > now:
                        break
                assert deadline is None or deadline > now, "tick left a deadline in the past"

        # World and record agree.
        if isinstance(proc, int):
            assert rec.pid == proc
            assert rec.state in (State.STARTING, State.RUNNING, State.STOPPING)
        elif proc == "pending":
            assert rec.pid is None and rec.state in (State.STARTING, State.STOPPING)
        else:
            assert rec.pid is None
            assert rec.state in DOWN_STATES or rec.state is State.BACKOFF
        for t in backoffs:
            in_window = [u for u in backoffs if t - params.restart_window < u <= t]
            assert len(in_window) <= params.max_restarts
        assert rec.total_downtime >= 0.0


# --- Readiness ----------------------------------------------------------------------------------

PROBED = RestartParams(restart="on-failure", start_secs=1.0, max_restarts=3, ready_timeout=10.0)


def test_probed_service_is_running_only_when_ready_not_after_start_secs() -> None:
    rec = starting(PROBED, now=100.0, pid=42)
    # start_secs is unused: the deadline is the ready timeout.
    assert next_deadline(PROBED, rec) == 110.0
    same, actions = decide(PROBED, rec, Tick(), 101.0)
    assert same.state is State.STARTING and actions == []
    rec, actions = decide(PROBED, rec, Ready(42), 103.5)
    assert rec.state is State.RUNNING and rec.running_since == 103.5
    (ready,) = emits(actions)
    assert ready.kind == "ready"
    assert ready.fields == {"service": "svc", "pid": 42, "attempt": 0, "seconds": 3.5}
    assert next_deadline(PROBED, rec) is None


def test_start_secs_zero_does_not_skip_the_probe() -> None:
    params = replace(PROBED, start_secs=0.0)
    rec = starting(params, pid=5)
    assert rec.state is State.STARTING


def test_ready_of_another_pid_or_in_another_state_is_a_no_op() -> None:
    rec = starting(PROBED, pid=42)
    assert decide(PROBED, rec, Ready(41), 1.0) == (rec, [])
    up, _ = decide(PROBED, rec, Ready(42), 1.0)
    assert decide(PROBED, up, Ready(42), 2.0) == (up, [])  # READY=1 twice
    pending, _ = decide(PROBED, Record("svc"), Start(), 0.0)
    assert decide(PROBED, pending, Ready(42), 0.0) == (pending, [])
    # Without a probe a Ready means nothing: start_secs rules.
    plain = starting(ALWAYS, pid=42)
    assert decide(ALWAYS, plain, Ready(42), 0.5) == (plain, [])


def test_not_ready_within_timeout_is_a_failed_start_even_on_a_clean_exit() -> None:
    rec = starting(PROBED, now=0.0, pid=42)
    rec, actions = decide(PROBED, rec, Tick(), 10.0)
    assert rec.state is State.STOPPING and rec.stop_reason == "not_ready"
    assert [e.kind for e in emits(actions)] == ["not_ready", "stop"]
    assert emits(actions, "not_ready")[0].fields["timeout"] == 10.0
    assert non_emits(actions) == [Signal("svc", PROBED.stop_signal)]
    # It handles SIGTERM and exits 0: under on-failure that would be EXITED, but a start that
    # never became ready failed.
    rec, actions = decide(PROBED, rec, Exited(CLEAN), 10.5)
    assert rec.state is State.BACKOFF
    assert rec.attempt == 1
    (exit_event,) = emits(actions, "exit")
    assert exit_event.fields["requested"] is True
    assert emits(actions, "backoff")[0].fields["reason"] == "not_ready"
    # The next spawn clears the reason.
    rec = respawn(PROBED, rec, pid=43)
    assert not rec.not_ready


def test_never_ready_ends_fatal_and_essential_takes_the_supervisor_down() -> None:
    params = replace(PROBED, restart="always", max_restarts=2, essential=True)
    rec = starting(params, pid=1)
    fatal: list[Fatal] = []
    now = 0.0
    for pid in range(2, 10):
        now = rec.started_at + params.ready_timeout  # type: ignore[operator]
        rec, _ = decide(params, rec, Tick(), now)
        rec, actions = decide(params, rec, Exited(ExitInfo(signal=15)), now + 0.1)
        fatal += [a for a in actions if isinstance(a, Fatal)]
        if rec.state is State.FATAL:
            break
        rec = respawn(params, rec, pid=pid)
    assert rec.state is State.FATAL
    assert [f.name for f in fatal] == ["svc"]


def test_stop_timeout_still_applies_to_a_not_ready_stop() -> None:
    rec = starting(PROBED, pid=42)
    rec, _ = decide(PROBED, rec, Tick(), 10.0)
    assert next_deadline(PROBED, rec) == 10.0 + PROBED.stop_timeout
    rec, actions = decide(PROBED, rec, Tick(), 10.0 + PROBED.stop_timeout)
    assert non_emits(actions) == [KillCgroup("svc")]


def test_downtime_of_a_probed_service_counts_to_ready() -> None:
    rec = starting(PROBED, now=0.0, pid=1)
    rec, _ = decide(PROBED, rec, Ready(1), 2.0)
    # A controlled restart at 100: down until the new process is *ready*, not spawned.
    rec, _ = decide(PROBED, rec, Stop("controlled_restart"), 100.0)
    rec, _ = decide(PROBED, rec, Exited(CLEAN), 101.0)
    rec, _ = decide(PROBED, rec, Spawned(2), 101.0)
    assert rec.state is State.STARTING
    assert rec.downtime(104.0) == 4.0
    rec, actions = decide(PROBED, rec, Ready(2), 106.0)
    assert emits(actions, "ready")[0].fields["downtime"] == 6.0
    assert rec.total_downtime == 6.0 and rec.down_since is None


def test_evicted_service_counts_down_until_ready_after_release() -> None:
    rec = starting(PROBED, now=0.0, pid=1)
    rec, _ = decide(PROBED, rec, Ready(1), 1.0)
    rec, _ = decide(PROBED, rec, Stop("evict"), 10.0)
    rec, _ = decide(PROBED, rec, Exited(CLEAN), 11.0)
    assert rec.state is State.EVICTED
    rec, _ = decide(PROBED, rec, Release(), 50.0)
    rec, _ = decide(PROBED, rec, Spawned(2), 50.0)
    rec, actions = decide(PROBED, rec, Ready(2), 53.0)
    assert emits(actions, "ready")[0].fields["downtime"] == 43.0
