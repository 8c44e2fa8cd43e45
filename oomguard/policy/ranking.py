"""Who goes first: orderings by criticality. Pure.

Criticality is an integer; higher means more important (the primary is the most important
service, so it is handled apart from the others).

* ``restart_order(names, criticality, primary)``: least critical first, ties by name, the
  primary last. When several services must be restarted together, the cheap ones go first and
  the primary gets the memory that is left once they have settled.
* ``eviction_order(candidates)``: least critical first; among equals the biggest swap user
  first (``swap``, memory.swap.current, where a candidate has it: its pages are the ones the
  budget thrashes on, and swap is counted in headroom), then the largest ``memory.current``,
  since evicting it frees the most memory for the same loss of function; then by name, so the
  order is deterministic. The caller filters the candidates
  (running, evictable, not the primary): this module only orders them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping


class Rankable(Protocol):
    """Anything with a name, a criticality and a memory.current (e.g. ``pressure.Member``)."""

    @property
    def name(self) -> str: ...

    @property
    def criticality(self) -> int: ...

    @property
    def current(self) -> int: ...


R = TypeVar("R", bound=Rankable)


def restart_order(names: Iterable[str], criticality: Mapping[str, int], primary: str) -> list[str]:
    """Least critical first, ties by name, ``primary`` last (if it is among ``names``).

    Raises ValueError if a name has no criticality: a silent default could put a sidecar after
    the primary."""
    listed = list(dict.fromkeys(names))  # de-duplicate, keep the first occurrence
    missing = [n for n in listed if n != primary and n not in criticality]
    if missing:
        raise ValueError(f"no criticality for {', '.join(sorted(missing))}")
    others = sorted((n for n in listed if n != primary), key=lambda n: (criticality[n], n))
    return [*others, primary] if primary in listed else others


def eviction_order(candidates: Iterable[R]) -> list[R]:
    """Least critical first; among equals the biggest swap user, then the largest
    memory.current first; then by name. A candidate without a ``swap`` attribute uses none."""
    return sorted(
        candidates,
        key=lambda c: (c.criticality, -int(getattr(c, "swap", 0)), -c.current, c.name),
    )
