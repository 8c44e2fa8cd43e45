"""The shed rung: ranking the primary's processes, and the ladder shed -> evict -> restart."""

from __future__ import annotations

from dataclasses import replace

import pytest

from oomguard.policy.pressure import (
    BudgetSample,
    ControlledRestart,
    Evict,
    Member,
    PressureAction,
    PressureState,
    PrimarySample,
    Shed,
    Thresholds,
    WouldDo,
    evaluate,
)
from oomguard.policy.shed import ProcMemory, choose, parse_status, ranked

MiB = 1 << 20

STATUS = """Name:\tpostgres
Umask:\t0077
State:\tS (sleeping)
Pid:\t4242
VmPeak:\t  900000 kB
VmRSS:\t  700000 kB
RssAnon:\t  650000 kB
RssFile:\t   10000 kB
RssShmem:\t   40000 kB
VmSwap:\t    2048 kB
Threads:\t1
"""


# --- /proc/<pid>/status ------------------------------------------------------------------------


def test_parse_status_reads_the_memory_fields_in_bytes() -> None:
    p = parse_status(4242, STATUS)
    assert p == ProcMemory(4242, "postgres", 650000 * 1024, 40000 * 1024, 2048 * 1024)
    # Shared memory is not what one process's exit frees: left out of the ranking figure.
    assert p.private == (650000 + 2048) * 1024


def test_parse_status_of_a_zombie_or_kernel_thread_is_none() -> None:
    assert parse_status(7, "Name:\tkworker/0:1\nState:\tI (idle)\nPid:\t7\n") is None
    assert parse_status(8, "Name:\tx\nState:\tZ (zombie)\n") is None


def test_parse_status_ignores_garbage_values() -> None:
    p = parse_status(9, "Name:\tx\nRssAnon:\t 12 kB\nVmSwap:\tlots kB\nnoise\n")
    assert p == ProcMemory(9, "x", 12 * 1024)


# --- ranking ------------------------------------------------------------------------------------

MAIN = ProcMemory(100, "postgres", 300 * MiB)  # the postmaster: the largest, never a candidate
RUNAWAY = ProcMemory(205, "postgres", 700 * MiB)
WORKER = ProcMemory(201, "postgres", 60 * MiB, rss_shmem=250 * MiB)
SWAPPED = ProcMemory(202, "postgres", 40 * MiB, swap=100 * MiB)
LAUNCHER = ProcMemory(203, "autovacuum", 800 * MiB)


def test_largest_private_first_never_the_main_process() -> None:
    order = ranked([MAIN, WORKER, SWAPPED, RUNAWAY], main_pid=100)
    assert [p.pid for p in order] == [205, 202, 201]


def test_shared_memory_does_not_rank_a_process_up() -> None:
    # 60 MiB private + 250 MiB of shared buffers loses to 140 MiB private (40 + 100 swapped).
    assert choose([WORKER, SWAPPED], main_pid=100) == SWAPPED


def test_excluded_comm_and_min_size() -> None:
    procs = [MAIN, LAUNCHER, RUNAWAY, WORKER]
    assert choose(procs, main_pid=100) == LAUNCHER
    assert choose(procs, main_pid=100, exclude_comm={"autovacuum"}) == RUNAWAY
    assert choose([MAIN, WORKER], main_pid=100, min_size=64 * MiB) is None
    assert choose([MAIN], main_pid=100) is None
    assert choose([], main_pid=None) is None


def test_ties_go_to_the_newest_and_pid_1_or_empty_never() -> None:
    a, b = ProcMemory(300, "x", 10 * MiB), ProcMemory(301, "x", 10 * MiB)
    assert choose([a, b], main_pid=None) == b
    assert choose([ProcMemory(1, "init", 10 * MiB), ProcMemory(5, "x", 0)], main_pid=None) is None


# --- the ladder ---------------------------------------------------------------------------------

WATERMARK = 500 * MiB
T = Thresholds(cooldown=5.0, shed_cooldown=30.0)
DB = Member(
    "db", criticality=100, current=600 * MiB, running=True, evictable=False, is_primary=True
)
POOLER = Member("pooler", criticality=50, current=50 * MiB, running=True, evictable=True)
BACKUP = Member("backup", criticality=10, current=200 * MiB, running=True, evictable=True)


def budget(current: int, high_delta: int = 0, members: tuple[Member, ...] = ()) -> BudgetSample:
    """The primary's own budget: its usage against its watermark."""
    return BudgetSample(
        "primary-watermark", current, WATERMARK, high_delta, 0.0, False, members or (DB, POOLER)
    )


OVER = budget(600 * MiB)
CALM = budget(100 * MiB)


def prim(current: int = 600 * MiB, shed: ProcMemory | None = RUNAWAY) -> PrimarySample:
    return PrimarySample(current=current, watermark=WATERMARK, shed=shed)


class Ladder:
    """One budget driven through evaluate() with a fake clock."""

    def __init__(self, thresholds: Thresholds = T, mode: str = "enforce") -> None:
        self.state = PressureState()
        self.now = 1000.0
        self.thresholds = thresholds
        self.mode = mode

    def at(
        self, t: float, sample: BudgetSample, primary: PrimarySample | None
    ) -> list[PressureAction]:
        self.now = 1000.0 + t
        self.state, actions = evaluate(
            self.state,
            sample,
            self.thresholds,
            self.now,
            self.mode,  # type: ignore[arg-type]
            primary=primary,
        )
        return actions


def test_every_rung_in_order_each_after_a_cooldown_while_the_pressure_persists() -> None:
    ladder = Ladder()
    # Rung 1: shed the runaway, not the main process, with the figures behind the choice.
    [shed] = ladder.at(0, OVER, prim())
    assert isinstance(shed, Shed)
    assert (shed.primary, shed.pid, shed.comm, shed.size) == ("db", 205, "postgres", 700 * MiB)
    assert shed.reason == "headroom+over"
    assert shed.figures["pid"] == 205 and shed.figures["watermark"] == WATERMARK
    # Within the cool-down nothing more, whatever the pressure.
    assert ladder.at(4.9, OVER, prim()) == []
    # Still pressured after the cool-down, the shed rung cooling down: evict a sidecar.
    [evict] = ladder.at(5, OVER, prim())
    assert isinstance(evict, Evict) and evict.name == "pooler"
    assert ladder.at(9, OVER, prim()) == []
    # Nothing left to evict (pooler is gone): the controlled restart, the last rung.
    gone = budget(600 * MiB, members=(DB, replace(POOLER, running=False)))
    [restart] = ladder.at(10, gone, prim())
    assert isinstance(restart, ControlledRestart) and restart.primary == "db"


def test_the_pressure_is_rechecked_between_rungs() -> None:
    ladder = Ladder()
    assert isinstance(ladder.at(0, OVER, prim())[0], Shed)
    # The shed helped: the next evaluations find no pressure and climb no further.
    for t in (5, 10, 20, 60):
        assert ladder.at(t, CALM, prim(current=100 * MiB)) == []
    assert ladder.state.pressured_since is None


def test_shed_again_only_after_its_own_cooldown() -> None:
    ladder = Ladder(Thresholds(cooldown=5.0, shed_cooldown=30.0))
    assert isinstance(ladder.at(0, OVER, prim())[0], Shed)
    assert ladder.at(10, CALM, prim(current=100 * MiB)) == []
    # A new runaway at 20 s: the shed rung is still cooling down (30 s), so the ladder evicts.
    assert isinstance(ladder.at(20, OVER, prim())[0], Evict)
    # At 30 s the shed rung is available again and comes first.
    [again] = ladder.at(30, OVER, prim())
    assert isinstance(again, Shed)
    assert ladder.state.last_shed_at == 1030.0


def test_no_candidate_means_the_next_rung() -> None:
    ladder = Ladder()
    [evict] = ladder.at(0, OVER, prim(shed=None))
    assert isinstance(evict, Evict)


def test_no_shed_when_the_primary_is_not_running_or_no_primary_sample() -> None:
    stopped = budget(600 * MiB, members=(replace(DB, running=False), POOLER))
    assert isinstance(Ladder().at(0, stopped, prim())[0], Evict)
    assert isinstance(Ladder().at(0, OVER, None)[0], Evict)


def test_no_shed_without_pressure() -> None:
    neutral = budget(480 * MiB)  # 4% headroom below the watermark, no high event: page cache
    assert Ladder().at(0, neutral, prim(current=480 * MiB)) == []
    assert Ladder().at(0, CALM, prim(current=100 * MiB)) == []


def test_high_events_with_low_headroom_also_shed() -> None:
    throttled = budget(470 * MiB, high_delta=4)
    [shed] = Ladder().at(0, throttled, prim(current=470 * MiB))
    assert isinstance(shed, Shed) and shed.reason == "headroom+high"


def test_observe_mode_would_shed_and_the_state_advances() -> None:
    ladder = Ladder(mode="observe")
    [would] = ladder.at(0, OVER, prim())
    assert isinstance(would, WouldDo) and isinstance(would.action, Shed)
    assert ladder.state.last_shed_at == 1000.0
    [next_] = ladder.at(5, OVER, prim())
    assert isinstance(next_, WouldDo) and isinstance(next_.action, Evict)


@pytest.mark.parametrize("cooldown", [0.0, 1.0])
def test_a_shed_cooldown_shorter_than_the_cooldown_still_waits_for_the_cooldown(
    cooldown: float,
) -> None:
    ladder = Ladder(Thresholds(cooldown=5.0, shed_cooldown=cooldown))
    assert isinstance(ladder.at(0, OVER, prim())[0], Shed)
    assert ladder.at(2, OVER, prim()) == []  # one action per cooldown, whatever the rung
    assert isinstance(ladder.at(5, OVER, prim())[0], Shed)


def test_shed_due_only_when_the_shed_rung_could_act() -> None:
    from oomguard.policy.pressure import shed_due

    fresh = PressureState()
    assert shed_due(fresh, OVER, T, 0.0)
    assert not shed_due(fresh, CALM, T, 0.0)
    cooling = replace(fresh, last_action_at=100.0, last_shed_at=100.0)
    assert not shed_due(cooling, OVER, T, 104.0)  # the cooldown
    assert not shed_due(cooling, OVER, T, 120.0)  # the shed rung's own cooldown
    assert shed_due(cooling, OVER, T, 130.0)
    # The rung due agrees with evaluate taking it.
    _state, [action] = evaluate(cooling, OVER, T, 130.0, primary=prim())
    assert isinstance(action, Shed)
