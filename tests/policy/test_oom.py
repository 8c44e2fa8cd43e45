"""OOM attribution (policy/oom.py): every combination of where `oom` rose, now or earlier.

The tree of these tests: /og (the root) > /og/pair (a shared budget) > /og/pair/lo (a
service), beside /og/db (the primary). The kernel raises `oom` where the limit was hit and
`oom_kill` in the victim's cgroup; the attribution must name the limit whichever order and
loop turns the two rises are read in.
"""

from __future__ import annotations

import itertools
import signal
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oomguard.cgroup.path import CgroupPath
from oomguard.policy import oom
from oomguard.policy.oom import (
    OOM_ATTRIBUTION_WINDOW,
    Kill,
    Rise,
    Sightings,
    attribute,
    classify,
    deepest_first,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

P = CgroupPath.parse
MOUNT, ROOT, PAIR, DB = P("/"), P("/og"), P("/og/pair"), P("/og/db")
LO, HI = P("/og/pair/lo"), P("/og/pair/hi")
SERVICES = {LO: "lo", HI: "hi", DB: "db"}
NOW = 1000.0


# -- classify -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delta", "rise"),
    [
        ({"oom_kill": 1}, Rise.KILL),
        ({"oom": 1, "oom_kill": 1}, Rise.KILL),
        ({"oom_kill": 2, "oom_group_kill": 1, "max": 5}, Rise.KILL),
        ({"oom": 1}, Rise.LIMIT),
        ({"oom": 3, "max": 7, "high": 1}, Rise.LIMIT),
        ({"high": 1}, Rise.OTHER),
        ({"max": 1, "low": 2}, Rise.OTHER),
        ({"oom_group_kill": 1}, Rise.OTHER),  # counted beside oom_kill, never alone
        ({}, Rise.OTHER),
        ({"oom": 0, "oom_kill": 0}, Rise.OTHER),
    ],
)
def test_classify(delta: dict[str, int], rise: Rise) -> None:
    assert classify(delta) is rise


# -- handling order -------------------------------------------------------------------------


def test_deepest_first_handles_a_victim_before_the_budgets_above_it() -> None:
    assert deepest_first([ROOT, PAIR, LO, DB, LO]) == [LO, DB, PAIR, ROOT]


@given(st.lists(st.sampled_from([ROOT, PAIR, LO, HI, DB]), max_size=12))
def test_deepest_first_is_each_once_and_never_a_parent_before_its_child(
    paths: list[CgroupPath],
) -> None:
    order = deepest_first(paths)
    assert sorted(order) == sorted(set(paths))
    for i, p in enumerate(order):
        assert not any(later.is_relative_to(p) and later != p for later in order[i + 1 :])


# -- sightings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "recent"),
    [
        (0.0, True),
        (0.5, True),
        (OOM_ATTRIBUTION_WINDOW, True),  # inclusive
        (OOM_ATTRIBUTION_WINDOW + 1e-6, False),
        (60.0, False),
    ],
)
def test_a_sighting_explains_kills_within_the_window(age: float, recent: bool) -> None:
    s = Sightings().seen([PAIR], NOW - age)
    assert s.recent(PAIR, NOW) is recent
    assert not s.recent(LO, NOW)  # only where it was seen


def test_sightings_are_values_a_new_sighting_replaces_the_old() -> None:
    old = Sightings().seen([PAIR], NOW - 60)
    new = old.seen([PAIR, ROOT], NOW)
    assert not old.recent(PAIR, NOW) and not old.recent(ROOT, NOW)
    assert new.recent(PAIR, NOW) and new.recent(ROOT, NOW)


# -- attribute: the cases the real kernel produced ------------------------------------------


def test_a_slice_of_its_own_limit() -> None:
    kill, _ = attribute(DB, {"oom": 1, "oom_kill": 1}, [(ROOT, {})], Sightings(), NOW, SERVICES)
    assert kill == Kill(DB, "db", 1, DB)
    assert kill.limit_text == str(DB) and not kill.limit_elsewhere


def test_a_budget_rise_read_in_the_same_turn_names_the_budget() -> None:
    kill, seen = attribute(
        LO, {"oom_kill": 1}, [(PAIR, {"oom": 1, "max": 3}), (ROOT, {})], Sightings(), NOW, SERVICES
    )
    assert kill == Kill(LO, "lo", 1, PAIR)
    assert kill.limit_elsewhere
    # Remembered for the other victims of the same OOM (a group kill).
    assert seen.recent(PAIR, NOW) and not seen.recent(ROOT, NOW)


def test_a_budget_rise_read_a_turn_earlier_still_names_the_budget() -> None:
    earlier = Sightings().seen([PAIR], NOW - 0.5)
    kill, _ = attribute(LO, {"oom_kill": 2}, [(PAIR, {}), (ROOT, {})], earlier, NOW, SERVICES)
    assert (kill.limit_at, kill.count) == (PAIR, 2)


def test_every_victim_of_a_group_kill_names_the_budget() -> None:
    first, seen = attribute(
        HI, {"oom_kill": 2}, [(PAIR, {"oom": 1, "oom_group_kill": 1})], Sightings(), NOW, SERVICES
    )
    # The budget's rise was consumed by the first victim: the second reads nothing new there.
    second, _ = attribute(LO, {"oom_kill": 2}, [(PAIR, {})], seen, NOW + 0.1, SERVICES)
    assert (first.service, first.limit_at) == ("hi", PAIR)
    assert (second.service, second.limit_at) == ("lo", PAIR)


def test_an_old_budget_rise_does_not_explain_a_later_kill() -> None:
    old = Sightings().seen([PAIR], NOW - OOM_ATTRIBUTION_WINDOW - 1)
    kill, _ = attribute(LO, {"oom_kill": 1}, [(PAIR, {}), (ROOT, {})], old, NOW, SERVICES)
    assert kill.limit_at is None
    assert kill.limit_text == oom.OUTSIDE == "outside the tree"
    assert not kill.limit_elsewhere


def test_a_kill_in_a_cgroup_without_a_service_names_none() -> None:
    kill, _ = attribute(PAIR, {"oom_kill": 1, "oom": 1}, [], Sightings(), NOW, SERVICES)
    assert kill == Kill(PAIR, None, 1, PAIR)


def test_a_fresh_rise_wins_over_a_nearer_memory() -> None:
    # PAIR was seen a moment ago, but the root's limit is the one hit by this OOM.
    earlier = Sightings().seen([PAIR], NOW - 0.5)
    kill, _ = attribute(
        LO, {"oom_kill": 1}, [(PAIR, {}), (ROOT, {"oom": 1})], earlier, NOW, SERVICES
    )
    assert kill.limit_at == ROOT


def test_the_nearest_fresh_rise_wins() -> None:
    kill, seen = attribute(
        LO, {"oom_kill": 1}, [(PAIR, {"oom": 1}), (ROOT, {"oom": 1})], Sightings(), NOW, SERVICES
    )
    assert kill.limit_at == PAIR
    assert seen.recent(PAIR, NOW) and seen.recent(ROOT, NOW)  # both remembered


def test_the_nearest_memory_wins_and_the_victims_own_counts() -> None:
    both = Sightings().seen([ROOT, PAIR], NOW - 1)
    assert attribute(LO, {"oom_kill": 1}, [], both, NOW, SERVICES)[0].limit_at == PAIR
    own = both.seen([LO], NOW - 1)
    assert attribute(LO, {"oom_kill": 1}, [], own, NOW, SERVICES)[0].limit_at == LO


def test_the_victims_own_rise_wins_over_everything() -> None:
    everything = Sightings().seen([ROOT, PAIR], NOW)
    kill, _ = attribute(
        LO, {"oom": 1, "oom_kill": 1}, [(PAIR, {"oom": 1})], everything, NOW, SERVICES
    )
    assert kill.limit_at == LO


# -- attribute: exhaustively ----------------------------------------------------------------

#: A rise read now at an ancestor: none, `oom`, or other counters only.
NOW_RISES: tuple[Mapping[str, int], ...] = ({}, {"oom": 1}, {"max": 2, "high": 1})
#: A remembered sighting's age: none, fresh, exactly the window, too old.
AGES: tuple[float | None, ...] = (None, 0.0, OOM_ATTRIBUTION_WINDOW, OOM_ATTRIBUTION_WINDOW + 0.5)


def _expected(
    own_oom: bool,
    rises: list[tuple[CgroupPath, Mapping[str, int]]],
    ages: dict[CgroupPath, float | None],
) -> CgroupPath | None:
    """The rule, stated once more from the kernel's side: the victim's own limit if its `oom`
    rose with the kill; else the nearest ancestor whose `oom` rose in this read; else the
    nearest cgroup (victim first) where `oom` rose at most the window ago; else outside."""
    if own_oom:
        return LO
    for anc, rise in rises:  # nearest first
        if rise.get("oom"):
            return anc
    for c in (LO, PAIR, ROOT, MOUNT):
        age = ages.get(c)
        if age is not None and age <= OOM_ATTRIBUTION_WINDOW:
            return c
    return None


@pytest.mark.parametrize("own_oom", [False, True])
@pytest.mark.parametrize("pair_now", NOW_RISES)
@pytest.mark.parametrize("root_now", NOW_RISES)
def test_every_combination_of_fresh_and_remembered_rises(
    own_oom: bool, pair_now: Mapping[str, int], root_now: Mapping[str, int]
) -> None:
    rises = [(PAIR, pair_now), (ROOT, root_now)]
    for lo_age, pair_age, root_age in itertools.product(AGES, repeat=3):
        ages = {LO: lo_age, PAIR: pair_age, ROOT: root_age}
        sightings = Sightings({c: NOW - a for c, a in ages.items() if a is not None})
        delta = {"oom_kill": 3, **({"oom": 1} if own_oom else {})}
        kill, after = attribute(LO, delta, rises, sightings, NOW, SERVICES)
        case = (own_oom, pair_now, root_now, ages)
        assert kill.limit_at == _expected(own_oom, rises, ages), case
        assert (kill.cgroup, kill.service, kill.count) == (LO, "lo", 3), case
        # Every fresh ancestor rise is remembered at `now`; other sightings are untouched.
        for anc, rise in rises:
            if rise.get("oom"):
                assert after.at[anc] == NOW, case
            else:
                assert after.at.get(anc) == sightings.at.get(anc), case
        assert after.at.get(LO) == sightings.at.get(LO), case


@given(
    st.dictionaries(st.sampled_from([LO, PAIR, ROOT]), st.floats(0, 10)),
    st.lists(st.booleans(), min_size=2, max_size=2),
)
def test_attribution_never_names_a_cgroup_that_is_not_the_victim_or_above_it(
    ages: dict[CgroupPath, float], rising: list[bool]
) -> None:
    sightings = Sightings({c: NOW - a for c, a in ages.items()})
    sightings = sightings.seen([HI, DB], NOW)  # siblings' and cousins' sightings
    rises = [(anc, {"oom": 1} if r else {}) for anc, r in zip([PAIR, ROOT], rising, strict=True)]
    kill, _ = attribute(LO, {"oom_kill": 1}, rises, sightings, NOW, SERVICES)
    assert kill.limit_at is None or LO.is_relative_to(kill.limit_at)


# -- what is logged ---------------------------------------------------------------------------


def test_kill_fields_with_the_budgets_figures_and_the_victim() -> None:
    kill = Kill(LO, "lo", 2, PAIR)
    fields = oom.kill_fields(
        kill, {"current": 10, "max": "32M"}, {"current": 48, "max": "48M"}, victim_pid=4242
    )
    assert fields == {
        "count": 2,
        "current": 10,
        "max": "32M",
        "limit_at": str(PAIR),
        "limit_current": 48,
        "limit_max": "48M",
        "victim_pid": 4242,
    }


def test_kill_fields_of_an_own_limit_or_outside_carry_no_limit_figures() -> None:
    own = oom.kill_fields(Kill(LO, "lo", 1, LO), {"current": 1}, {"current": 9}, None)
    assert own == {"count": 1, "current": 1, "limit_at": str(LO)}
    outside = oom.kill_fields(Kill(LO, "lo", 1, None), {}, {}, None)
    assert outside == {"count": 1, "limit_at": "outside the tree"}


def test_kill_fields_without_limit_figures_read() -> None:
    # The budget vanished before its figures were read: no limit_* keys, not None values.
    fields = oom.kill_fields(Kill(LO, "lo", 1, PAIR), {}, {}, None)
    assert fields == {"count": 1, "limit_at": str(PAIR)}


@pytest.mark.parametrize(
    ("main_alive", "survive", "sweep"),
    [(True, False, True), (True, True, False), (False, False, False), (False, True, False)],
)
def test_a_half_killed_service_is_swept_unless_it_copes(
    main_alive: bool, survive: bool, sweep: bool
) -> None:
    assert oom.sweep_rest(main_alive, survive) is sweep


@pytest.mark.parametrize(
    ("before", "after", "rise"),
    [(None, 5, 0), (5, None, 0), (None, None, 0), (5, 5, 0), (5, 4, 0), (5, 6, 1), (0, 3, 3)],
)
def test_vmstat_rise(before: int | None, after: int | None, rise: int) -> None:
    assert oom.vmstat_rise(before, after) == rise


@pytest.mark.parametrize(
    ("sig", "pending", "killed"),
    [
        (signal.SIGKILL, True, True),
        (signal.SIGKILL, False, False),
        (signal.SIGTERM, True, False),
        (None, True, False),
    ],
)
def test_an_oom_kill_is_a_sigkill_while_a_kill_was_seen(
    sig: int | None, pending: bool, killed: bool
) -> None:
    assert oom.oom_killed(sig, pending) is killed


def test_the_lines_for_humans() -> None:
    assert oom.oom_line("python3", "oomguard/python3", 64 << 20, 64 << 20) == (
        "python3 was killed by the OOM killer (slice oomguard/python3, memory.max 64M, peak 64M)"
    )
    assert oom.oom_line("db", "og/db", None, None) == (
        "db was killed by the OOM killer (slice og/db, memory.max max, peak ?)"
    )
    assert oom.degraded_oom_line("db", "the cgroup filesystem is read-only") == (
        "db was killed by the OOM killer (degraded mode, no slice: the cgroup filesystem is "
        "read-only)"
    )
