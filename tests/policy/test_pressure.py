from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oomguard.policy.pressure import (
    FOLLOW_IDLE,
    PAGE,
    BudgetSample,
    ControlledRestart,
    Evict,
    FollowReading,
    Group,
    Member,
    PressureAction,
    PressureLevel,
    PressureState,
    PrimarySample,
    Restore,
    Room,
    Thresholds,
    WouldDo,
    classify,
    evaluate,
    follow_highs,
    follow_interval,
    headroom,
    machine_budget,
    next_sample_at,
    with_swap,
)

MiB = 1 << 20
T = Thresholds()  # headroom 10%, psi 20, hysteresis 30 s, cooldown 5 s, sample every 1 s

DB = Member(
    "db", criticality=100, current=600 * MiB, running=True, evictable=False, is_primary=True
)
POOLER = Member("pooler", criticality=50, current=50 * MiB, running=True, evictable=True)
BACKUP = Member("backup", criticality=10, current=200 * MiB, running=True, evictable=True)
METRICS = Member("metrics", criticality=10, current=20 * MiB, running=True, evictable=True)
MEMBERS = (DB, POOLER, BACKUP, METRICS)


def sample(
    current: int = 500 * MiB,
    limit: int | None = 1000 * MiB,
    high_delta: int = 0,
    psi: float | None = 0.0,
    fired: bool = False,
    members: tuple[Member, ...] = MEMBERS,
) -> BudgetSample:
    return BudgetSample("tree", current, limit, high_delta, psi, fired, members)


PRESSURED = sample(current=950 * MiB, high_delta=3)  # 5% headroom and memory.high throttling
NEUTRAL = sample(current=950 * MiB)  # 5% headroom, no stress signal: the page cache
CLEAR = sample(current=500 * MiB)


def names(actions: list[PressureAction]) -> list[str]:
    """The member each action is about (WouldDo unwrapped)."""
    out = []
    for a in actions:
        inner = a.action if isinstance(a, WouldDo) else a
        out.append(inner.primary if isinstance(inner, ControlledRestart) else inner.name)
    return out


# --- The rule -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("s", "level", "reason"),
    [
        (sample(current=950 * MiB, high_delta=1), PressureLevel.PRESSURED, "headroom+high"),
        (sample(current=950 * MiB, fired=True), PressureLevel.PRESSURED, "headroom+psi_trigger"),
        (
            sample(current=950 * MiB, high_delta=2, fired=True, psi=30.0),
            PressureLevel.PRESSURED,
            "headroom+high+psi_trigger+psi_avg10",
        ),
        (sample(psi=25.0), PressureLevel.PRESSURED, "psi_avg10"),
        (sample(limit=None, psi=25.0), PressureLevel.PRESSURED, "psi_avg10"),
        (
            sample(current=950 * MiB),
            PressureLevel.NEUTRAL,
            "",
        ),  # low headroom alone: the page cache
        (sample(fired=True), PressureLevel.NEUTRAL, ""),  # a trigger with ample headroom
        (
            sample(high_delta=5),
            PressureLevel.CLEAR,
            "",
        ),  # a member throttled at its own memory.high
        (sample(psi=20.0), PressureLevel.CLEAR, ""),  # at the threshold is not above it
        (sample(limit=None, psi=None, high_delta=9), PressureLevel.CLEAR, ""),
        (sample(current=1100 * MiB, high_delta=1), PressureLevel.PRESSURED, "headroom+high"),
        # Above the limit itself (a watermark with no memory.high at it): a sample suffices.
        (sample(current=1100 * MiB), PressureLevel.PRESSURED, "headroom+over"),
        (sample(current=1000 * MiB), PressureLevel.NEUTRAL, ""),
    ],
)
def test_classify(s: BudgetSample, level: PressureLevel, reason: str) -> None:
    assert classify(s, T) == (level, reason)


def test_headroom() -> None:
    assert headroom(sample(current=900 * MiB)) == pytest.approx(0.1)
    assert headroom(sample(limit=None)) is None
    assert headroom(sample(limit=0)) == 0.0
    assert headroom(sample(current=1100 * MiB)) == pytest.approx(-0.1)


# --- Eviction -----------------------------------------------------------------------------------


def test_idle_budget_does_nothing_and_polls_nothing() -> None:
    for s in (CLEAR, NEUTRAL):
        state, actions = evaluate(PressureState(), s, T, 100.0)
        assert actions == [] and not state.sampling
        assert next_sample_at(state, T, 100.0) is None


def test_evicts_least_critical_then_largest_first_with_figures() -> None:
    state, actions = evaluate(PressureState(), PRESSURED, T, 10.0)
    assert len(actions) == 1
    action = actions[0]
    assert isinstance(action, Evict) and action.name == "backup"  # 10, and larger than metrics
    assert action.reason == "headroom+high"
    assert action.figures["current"] == 950 * MiB and action.figures["limit"] == 1000 * MiB
    assert action.figures["headroom"] == pytest.approx(0.05)
    assert action.figures["high_delta"] == 3 and action.figures["psi_some_avg10"] == 0.0
    assert action.figures["member_current"] == 200 * MiB
    assert state.evicted == ("backup",) and state.pressured_since == 10.0
    assert state.sampling and next_sample_at(state, T, 10.0) == 11.0


def test_one_action_per_cooldown_and_the_more_critical_only_if_pressure_persists() -> None:
    state, a1 = evaluate(PressureState(), PRESSURED, T, 0.0)
    state, a2 = evaluate(state, PRESSURED, T, 1.0)
    state, a3 = evaluate(state, PRESSURED, T, 4.99)
    assert [type(a) for a in a1] == [Evict] and a2 == [] and a3 == []
    state, a4 = evaluate(state, PRESSURED, T, 5.0)
    assert names(a4) == ["metrics"] and isinstance(a4[0], Evict)
    state, a5 = evaluate(state, PRESSURED, T, 10.0)
    assert names(a5) == ["pooler"]
    assert state.evicted == ("backup", "metrics", "pooler")
    assert state.pressured_since == 0.0


def test_pressure_that_stops_stops_the_evictions() -> None:
    state, _ = evaluate(PressureState(), PRESSURED, T, 0.0)
    state, actions = evaluate(state, NEUTRAL, T, 6.0)
    assert actions == [] and state.pressured_since is None
    # Still sampling: something is evicted and must be restored once it is clear.
    assert next_sample_at(state, T, 6.0) == 7.0


def test_only_running_evictable_members_are_evicted_never_the_primary() -> None:
    members = (
        replace(DB, evictable=True, criticality=-100),  # misconfigured: still never evicted
        replace(BACKUP, running=False),
        replace(METRICS, evictable=False),
        POOLER,
    )
    state, actions = evaluate(PressureState(), replace(PRESSURED, members=members), T, 0.0)
    assert names(actions) == ["pooler"]
    state, actions = evaluate(state, replace(PRESSURED, members=members), T, 10.0)
    assert actions == []  # nothing evictable, no PrimarySample: leave it to the kernel


def test_a_member_still_shown_running_after_its_eviction_is_not_picked_twice() -> None:
    state, _ = evaluate(PressureState(), PRESSURED, T, 0.0)
    state, actions = evaluate(state, PRESSURED, T, 5.0)
    assert names(actions) == ["metrics"]


# --- Controlled restart of the primary ----------------------------------------------------------

ONLY_DB = replace(PRESSURED, members=(DB, replace(POOLER, evictable=False)))


def test_controlled_restart_when_nothing_is_evictable_and_primary_is_over_its_watermark() -> None:
    over = PrimarySample(current=600 * MiB, watermark=500 * MiB)
    state, actions = evaluate(PressureState(), ONLY_DB, T, 0.0, primary=over)
    assert len(actions) == 1
    action = actions[0]
    assert isinstance(action, ControlledRestart) and action.primary == "db"
    assert action.figures["primary_current"] == 600 * MiB
    assert action.figures["watermark"] == 500 * MiB
    assert state.last_restart_at == 0.0 and state.evicted == ()
    # Not again within restart_hold, even after the cooldown.
    state, actions = evaluate(state, ONLY_DB, T, 30.0, primary=over)
    assert actions == []
    state, actions = evaluate(state, ONLY_DB, T, 60.0, primary=over)
    assert [type(a) for a in actions] == [ControlledRestart]


@pytest.mark.parametrize(
    ("primary", "members"),
    [
        (PrimarySample(current=400 * MiB, watermark=500 * MiB), ONLY_DB.members),  # under
        (PrimarySample(current=500 * MiB, watermark=500 * MiB), ONLY_DB.members),  # at
        (PrimarySample(current=600 * MiB, watermark=None), ONLY_DB.members),  # no watermark
        (None, ONLY_DB.members),
        (PrimarySample(600 * MiB, 500 * MiB), (replace(DB, running=False),)),  # not running
        (
            PrimarySample(600 * MiB, 500 * MiB),
            (Member("x", 1, 1, running=True, evictable=False),),
        ),  # no primary here
    ],
)
def test_no_controlled_restart_unless_every_condition_holds(
    primary: PrimarySample | None, members: tuple[Member, ...]
) -> None:
    s = replace(PRESSURED, members=members)
    state, actions = evaluate(PressureState(), s, T, 0.0, primary=primary)
    assert actions == [] and state.last_action_at is None


def test_evict_sidecars_before_restarting_the_primary() -> None:
    over = PrimarySample(current=600 * MiB, watermark=500 * MiB)
    kinds = []
    state = PressureState()
    for i in range(5):
        state, actions = evaluate(state, PRESSURED, T, i * 5.0, primary=over)
        kinds += [(type(a).__name__, n) for a, n in zip(actions, names(actions), strict=True)]
    assert kinds == [
        ("Evict", "backup"),
        ("Evict", "metrics"),
        ("Evict", "pooler"),
        ("ControlledRestart", "db"),
    ]


# --- Restore ------------------------------------------------------------------------------------


def _evict_two() -> PressureState:
    state, _ = evaluate(PressureState(), PRESSURED, T, 0.0)
    state, _ = evaluate(state, PRESSURED, T, 5.0)
    assert state.evicted == ("backup", "metrics")
    return state


def test_restore_last_evicted_first_after_hysteresis_one_per_cooldown() -> None:
    state = _evict_two()
    state, actions = evaluate(state, CLEAR, T, 10.0)  # clear from t=10
    assert actions == [] and state.clear_since == 10.0
    state, actions = evaluate(state, CLEAR, T, 39.9)
    assert actions == []
    state, actions = evaluate(state, CLEAR, T, 40.0)
    assert len(actions) == 1 and isinstance(actions[0], Restore)
    assert actions[0].name == "metrics"  # the last evicted comes back first
    assert actions[0].figures["clear_for"] == pytest.approx(30.0)
    state, actions = evaluate(state, CLEAR, T, 44.0)
    assert actions == []  # cooldown
    state, actions = evaluate(state, CLEAR, T, 45.0)
    assert names(actions) == ["backup"]
    assert state.evicted == () and not state.sampling
    assert next_sample_at(state, T, 45.0) is None  # idle again: no polling


def test_hysteresis_restarts_when_the_reading_is_not_clear() -> None:
    state = _evict_two()
    state, _ = evaluate(state, CLEAR, T, 10.0)
    state, _ = evaluate(state, NEUTRAL, T, 20.0)  # low headroom again: not clear
    assert state.clear_since is None and state.pressured_since is None
    state, actions = evaluate(state, CLEAR, T, 21.0)
    assert actions == [] and state.clear_since == 21.0
    state, actions = evaluate(state, CLEAR, T, 50.9)
    assert actions == []
    state, actions = evaluate(state, CLEAR, T, 51.0)
    assert [type(a) for a in actions] == [Restore]


def test_evict_restore_cycle_with_renewed_pressure() -> None:
    state = _evict_two()
    state, _ = evaluate(state, CLEAR, T, 10.0)
    state, actions = evaluate(state, CLEAR, T, 40.0)
    assert names(actions) == ["metrics"]
    state, actions = evaluate(state, PRESSURED, T, 41.0)
    assert actions == []  # cooldown after the restore
    # metrics is back (running, no longer in `evicted`): it is the next victim again.
    state, actions = evaluate(state, PRESSURED, T, 45.0)
    assert names(actions) == ["metrics"]
    assert state.evicted == ("backup", "metrics")


def test_psi_fired_blocks_restore() -> None:
    state = _evict_two()
    state, _ = evaluate(state, CLEAR, T, 10.0)
    state, actions = evaluate(state, replace(CLEAR, psi_fired=True), T, 40.0)
    assert actions == [] and state.clear_since is None


# --- Observe mode -------------------------------------------------------------------------------


def test_observe_mode_yields_only_would_do_and_advances_the_same() -> None:
    over = PrimarySample(current=600 * MiB, watermark=500 * MiB)
    enforce = observe = PressureState()
    readings = [PRESSURED] * 5 + [CLEAR] * 60
    for i, s in enumerate(readings):
        now = float(i * 5)
        enforce, e_actions = evaluate(enforce, s, T, now, "enforce", primary=over)
        observe, o_actions = evaluate(observe, s, T, now, "observe", primary=over)
        assert observe == enforce
        assert o_actions == [WouldDo(a) for a in e_actions]  # type: ignore[arg-type]
        assert not any(isinstance(a, Evict | Restore | ControlledRestart) for a in o_actions)


def test_bad_mode() -> None:
    # Bad thresholds never reach the policy: tests/config/test_compile.py shows the config
    # refuses them and every compiled Plan keeps the bounds.
    with pytest.raises(ValueError, match="mode"):
        evaluate(PressureState(), CLEAR, T, 0.0, "dry-run")  # type: ignore[arg-type]


# --- Properties ---------------------------------------------------------------------------------

member_strategy = st.builds(
    Member,
    name=st.sampled_from(["db", "pooler", "backup", "metrics", "agent"]),
    criticality=st.integers(-3, 3),
    current=st.integers(0, 500 * MiB),
    running=st.booleans(),
    evictable=st.booleans(),
    is_primary=st.booleans(),
)
primary_strategy = st.one_of(
    st.none(),
    st.builds(PrimarySample, st.integers(0, 1000), st.one_of(st.none(), st.integers(0, 1000))),
)
#: Readings come in runs of one regime, as on a real host, so that pressure can persist past
#: the cooldown and a clear spell can outlast the hysteresis.
REGIMES = {  # name: (current, high_delta, psi avg10, psi fired)
    "pressured": (950 * MiB, 2, 0.0, False),
    "psi": (500 * MiB, 0, 40.0, False),
    "neutral": (950 * MiB, 0, 0.0, False),
    "fired": (500 * MiB, 0, None, True),
    "clear": (500 * MiB, 0, None, False),
}
segment_strategy = st.tuples(
    st.sampled_from(sorted(REGIMES)),
    st.lists(member_strategy, max_size=5, unique_by=lambda m: m.name).map(tuple),
    primary_strategy,
    st.integers(1, 40),  # readings in this run
    st.sampled_from([0.5, 1.0, 2.5, 5.0]),  # seconds between readings
)


def expand(
    segments: list[tuple[str, tuple[Member, ...], PrimarySample | None, int, float]],
) -> list[tuple[BudgetSample, PrimarySample | None, float]]:
    out = []
    for regime, members, prim, count, dt in segments:
        current, high_delta, psi, fired = REGIMES[regime]
        reading = BudgetSample("tree", current, 1000 * MiB, high_delta, psi, fired, members)
        out += [(reading, prim, dt)] * count
    return out


@settings(max_examples=150, deadline=None)
@given(
    segments=st.lists(segment_strategy, min_size=1, max_size=12),
    mode=st.sampled_from(["enforce", "observe"]),
)
def test_invariants_over_random_readings(
    segments: list[tuple[str, tuple[Member, ...], PrimarySample | None, int, float]], mode: str
) -> None:
    """The primary is never evicted; at most one action per evaluation and per cooldown;
    restores undo evictions in reverse order; observe mode only ever yields WouldDo; idle
    means no polling."""
    state = PressureState()
    now = 0.0
    last_action: float | None = None
    last_restart: float | None = None
    stack: list[str] = []
    for s, prim, dt in expand(segments):
        now += dt
        state, actions = evaluate(state, s, T, now, mode, primary=prim)  # type: ignore[arg-type]
        assert len(actions) <= 1
        for wrapped in actions:
            if mode == "observe":
                assert isinstance(wrapped, WouldDo)
                action = wrapped.action
            else:
                assert not isinstance(wrapped, WouldDo)
                action = wrapped
            assert last_action is None or now - last_action >= T.cooldown
            last_action = now
            if isinstance(action, Evict):
                member = next(m for m in s.members if m.name == action.name)
                assert not member.is_primary and member.evictable and member.running
                assert action.name not in stack
                stack.append(action.name)
            elif isinstance(action, Restore):
                assert stack and action.name == stack.pop()
            elif isinstance(action, ControlledRestart):
                assert prim is not None and prim.watermark is not None
                assert prim.current > prim.watermark
                assert any(m.is_primary and m.name == action.primary for m in s.members)
                assert last_restart is None or now - last_restart >= T.restart_hold
                last_restart = now
        assert list(state.evicted) == stack
        idle = state.pressured_since is None and not state.evicted
        assert (next_sample_at(state, T, now) is None) == idle


# -- the automatic memory.high of the sidecar groups, and budgets without a cgroup limit --------


def test_follow_highs_split_the_slack_evenly_above_each_groups_usage() -> None:
    # 1000M limit, 10% headroom: the room may grow to 900M; 600M used, so 300M of slack.
    room = Room("tree", 1000 * MiB, 600 * MiB, 0.10, ("a", "b", "c"))
    highs = follow_highs(room_list(room), [Group("a", 10 * MiB), Group("b", 50 * MiB)])
    assert highs == {"a": 110 * MiB, "b": 150 * MiB}


def room_list(*rooms: Room) -> list[Room]:
    return list(rooms)


def test_follow_highs_pin_a_group_at_its_usage_once_the_room_is_gone() -> None:
    # Below the threshold: a negative share, but never below what the group holds (a write
    # below memory.current would reclaim synchronously in oomguard's loop).
    room = Room("tree", 1000 * MiB, 950 * MiB, 0.10, ("a",))
    current = 80 * MiB + 123
    assert follow_highs([room], [Group("a", current)]) == {"a": 80 * MiB + PAGE}


def test_follow_highs_follow_the_primarys_growth() -> None:
    """The primary's growth shows only in the room's usage: the sidecar's high comes down."""
    group = [Group("sidecars", 40 * MiB)]
    before = follow_highs([Room("tree", 300 * MiB, 150 * MiB, 0.1, ("sidecars",))], group)
    after = follow_highs([Room("tree", 300 * MiB, 250 * MiB, 0.1, ("sidecars",))], group)
    assert after["sidecars"] is not None and before["sidecars"] is not None
    assert after["sidecars"] < before["sidecars"]
    assert after["sidecars"] == 40 * MiB + (int(300 * MiB * 0.9) - 250 * MiB) // PAGE * PAGE


def test_follow_highs_take_the_tightest_room_and_respect_the_cap() -> None:
    tree = Room("tree", 2000 * MiB, 100 * MiB, 0.10, ("a", "b"))  # huge slack
    main = Room("main", 400 * MiB, 300 * MiB, 0.10, ("a",))  # 60M slack, only "a" inside
    highs = follow_highs([tree, main], [Group("a", 20 * MiB), Group("b", 20 * MiB, cap=100 * MiB)])
    assert highs == {"a": 80 * MiB, "b": 100 * MiB}


def test_follow_highs_without_any_limit_leave_max_or_the_cap() -> None:
    room = Room("tree", None, 100 * MiB, 0.10, ("a", "b"))
    got = follow_highs([room], [Group("a", MiB), Group("b", MiB, cap=64 * MiB)])
    assert got == {"a": None, "b": 64 * MiB}


@given(
    limit=st.integers(1, 1 << 40),
    usage=st.integers(0, 1 << 41),
    currents=st.lists(st.integers(0, 1 << 40), min_size=1, max_size=5),
    hm=st.floats(0.0, 1.0),
)
def test_follow_highs_are_page_aligned_and_never_below_usage(
    limit: int, usage: int, currents: list[int], hm: float
) -> None:
    names = tuple(f"g{i}" for i in range(len(currents)))
    room = Room("tree", limit, usage, hm, names)
    highs = follow_highs([room], [Group(n, c) for n, c in zip(names, currents, strict=True)])
    for name, current in zip(names, currents, strict=True):
        high = highs[name]
        assert high is not None and high % PAGE == 0 and high >= current


def test_follow_interval_is_slow_far_from_the_threshold_and_fast_near_it() -> None:
    far = Room("tree", 1000 * MiB, 300 * MiB, 0.10, ("a",))
    near = Room("tree", 1000 * MiB, 880 * MiB, 0.10, ("a",))
    below = Room("tree", 1000 * MiB, 950 * MiB, 0.10, ("a",))
    assert follow_interval([far], 1.0, now=0.0) == FOLLOW_IDLE
    assert 1.0 < follow_interval([near], 1.0, now=0.0) < FOLLOW_IDLE / 2
    assert follow_interval([below], 1.0, now=0.0) == 1.0
    assert follow_interval([Room("tree", None, 0, 0.1, ())], 1.0, now=0.0) == FOLLOW_IDLE


def test_follow_interval_shrinks_with_the_growth_rate() -> None:
    # 600M used of a 900M threshold, growing 100M/s: 3 s to go, so sample within 1 s.
    room = Room("tree", 1000 * MiB, 600 * MiB, 0.10, ("a",))
    prev = FollowReading(at=9.0, usage={"tree": 500 * MiB})
    assert follow_interval([room], 0.5, now=10.0) == FOLLOW_IDLE
    assert follow_interval([room], 0.5, now=10.0, previous=prev) == pytest.approx(1.0)


def test_machine_budget_is_memavailable_accounting_with_swap_counted() -> None:
    info = {"MemTotal": 1000 * MiB, "MemAvailable": 300 * MiB, "SwapTotal": 0, "SwapFree": 0}
    assert machine_budget(info) == (1000 * MiB, 700 * MiB)
    info |= {"SwapTotal": 500 * MiB, "SwapFree": 400 * MiB}
    assert machine_budget(info) == (1500 * MiB, 800 * MiB)
    assert machine_budget({"MemTotal": 1000 * MiB}) is None  # no MemAvailable: kernel < 3.14


def test_with_swap_adds_the_swap_allowance_and_the_swapped_usage() -> None:
    assert with_swap(300, 100, swap_max=None, swap_current=50, swap_total=0) == (300, 100)
    assert with_swap(300, 100, swap_max=None, swap_current=50, swap_total=1000) == (1300, 150)
    assert with_swap(300, 100, swap_max=200, swap_current=50, swap_total=1000) == (500, 150)


def test_among_equals_the_biggest_swap_user_is_evicted_first() -> None:
    a = Member("a", criticality=10, current=200 * MiB, running=True, evictable=True, swap=0)
    b = Member("b", criticality=10, current=50 * MiB, running=True, evictable=True, swap=MiB)
    c = Member("c", criticality=5, current=MiB, running=True, evictable=True, swap=0)
    s = sample(current=950 * MiB, high_delta=1, members=(DB, a, b))
    _, actions = evaluate(PressureState(), s, T, now=0.0)
    assert names(actions) == ["b"]
    # Criticality still comes first.
    s = sample(current=950 * MiB, high_delta=1, members=(DB, a, b, c))
    _, actions = evaluate(PressureState(), s, T, now=0.0)
    assert names(actions) == ["c"]
