from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oomguard.policy.ranking import eviction_order, restart_order


@dataclass(frozen=True)
class Item:
    name: str
    criticality: int
    current: int


def test_restart_order_least_critical_first_primary_last() -> None:
    crit = {"db": 100, "pooler": 50, "backup": 10, "metrics": 10}
    order = restart_order(["db", "pooler", "metrics", "backup"], crit, primary="db")
    assert order == ["backup", "metrics", "pooler", "db"]


def test_restart_order_primary_last_even_if_it_is_not_the_most_critical() -> None:
    crit = {"db": 0, "pooler": 50}
    assert restart_order(["db", "pooler"], crit, primary="db") == ["pooler", "db"]


def test_restart_order_without_the_primary_and_with_duplicates() -> None:
    crit = {"a": 1, "b": 1}
    assert restart_order(["b", "a", "b"], crit, primary="db") == ["a", "b"]


def test_restart_order_needs_every_criticality_but_the_primarys() -> None:
    assert restart_order(["db"], {}, primary="db") == ["db"]
    with pytest.raises(ValueError, match="no criticality for backup"):
        restart_order(["db", "backup"], {"db": 1}, primary="db")


def test_eviction_order_criticality_then_largest_then_name() -> None:
    items = [
        Item("pooler", 50, 10),
        Item("metrics", 10, 100),
        Item("backup", 10, 900),
        Item("agent", 10, 100),
    ]
    assert [i.name for i in eviction_order(items)] == ["backup", "agent", "metrics", "pooler"]


def test_eviction_order_empty() -> None:
    assert eviction_order([]) == []


names = st.text(alphabet="abcdefgh", min_size=1, max_size=4)


@given(crit=st.dictionaries(names, st.integers(-5, 5), min_size=1, max_size=8), data=st.data())
def test_restart_order_is_a_sorted_permutation_with_the_primary_last(
    crit: dict[str, int], data: st.DataObject
) -> None:
    primary = data.draw(st.sampled_from(sorted(crit)))
    listed = data.draw(st.permutations(sorted(crit)))
    order = restart_order(listed, crit, primary)
    assert sorted(order) == sorted(crit)
    assert order[-1] == primary
    keys = [(crit[n], n) for n in order[:-1]]
    assert keys == sorted(keys)


@given(
    st.lists(
        st.builds(Item, names, st.integers(-5, 5), st.integers(0, 10**9)),
        max_size=10,
        unique_by=lambda i: i.name,
    )
)
def test_eviction_order_never_puts_a_more_critical_item_first(items: list[Item]) -> None:
    order = eviction_order(items)
    assert sorted(order, key=lambda i: i.name) == sorted(items, key=lambda i: i.name)
    for a, b in itertools.pairwise(order):
        assert a.criticality <= b.criticality
        if a.criticality == b.criticality:
            assert a.current >= b.current
