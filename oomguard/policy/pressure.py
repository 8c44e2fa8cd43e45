"""Graduated response to memory pressure, per budget. Pure: samples in, actions out.

A *budget* is a shared slice (e.g. ``sidecars``) or the whole tree; its ``limit`` is the nearest
memory.max at or above it. The supervisor samples it when woken (an inotify IN_MODIFY on
memory.events, a PSI trigger, or the ``next_sample_at`` timer) and calls ``evaluate``.

The pressure rule (``classify``)::

    low       = limit is set and (limit - current) / limit < headroom_min
    psi_high  = psi some avg10 > psi_some_avg10
    PRESSURED = (low and (high_delta > 0 or psi_fired)) or psi_high
    CLEAR     = not low and not psi_high and not psi_fired
    otherwise NEUTRAL: no eviction, no restore, no polling

Why this rule:
  * Low headroom alone is not pressure. memory.current includes the page cache, which the kernel
    reclaims on demand, so a database host routinely sits near its limit. Acting on it would
    evict sidecars from a healthy host.
  * ``high`` events (memory.events) mean usage went above memory.high and the cgroup was sent
    into reclaim. The kernel counts them before it reclaims anything, so page cache alone can
    raise them; the supervisor therefore measures usage without the file LRU lists. Near the
    limit, on that unreclaimable usage, they are pressure: the earliest cheap signal. With
    ample headroom they are not budget pressure: memory.events is hierarchical, so a member
    throttled at its *own* memory.high also raises the budget's counter; that member is
    limited by its own setting and the budget is fine.
  * A fired PSI trigger likewise counts only near the limit: a trigger fires on a short burst
    of stall, which with ample headroom is not this budget running out of memory.
  * PSI avg10 above the threshold counts alone: ten seconds of sustained stall is pressure
    whatever the headroom says (e.g. refaults of a working set that no longer fits). But PSI is
    weak without swap (anonymous memory cannot be reclaimed, so there is little to stall on
    until the OOM killer runs), and containers rarely have swap; that is why headroom + ``high``
    is the main signal and PSI the second.
  * Restoring needs a positively good reading, not merely the absence of pressure: headroom
    back above headroom_min and no stall at all, held for ``hysteresis`` seconds.

Actions, at most one per ``cooldown`` (a change needs time to show in the figures):
  1. PRESSURED: ``Evict`` the least critical RUNNING evictable non-primary member not already
     evicted (``ranking.eviction_order``: then the largest first). If pressure persists after
     the cooldown, the next one, and so on: a more critical member only goes if evicting the
     less critical one did not help.
  2. PRESSURED, nothing evictable left: ``ControlledRestart`` of the primary, only when a
     ``PrimarySample`` shows the primary's own slice over its watermark (so it is the primary
     that grew, not the page cache), the primary is running, and no controlled restart
     happened within ``restart_hold`` (a restart needs time to free memory and come back; two
     in a row are the worst outcome for a database). The primary is never evicted.
  3. CLEAR for ``hysteresis`` seconds: ``Restore`` the LAST evicted member (the most critical
     evicted first), one per cooldown.

``mode="observe"`` wraps every action in ``WouldDo`` (the supervisor only logs it). The state
advances exactly as if the actions had been carried out, so the log shows the sequence oomguard
would follow (the figures, of course, do not improve).

``next_sample_at`` returns None when nothing is pressured and nothing is evicted: idle means no
polling at all, since inotify on memory.events and PSI triggers wake the supervisor. Otherwise
it asks for a sample every ``sample_interval`` seconds, to see pressure persist or clear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Literal, TypeAlias

from oomguard.policy.ranking import eviction_order

if TYPE_CHECKING:
    from collections.abc import Sequence

Mode: TypeAlias = Literal["enforce", "observe"]
#: Numbers behind a decision, for the event log: plain scalars only.
Figures: TypeAlias = dict[str, str | int | float | bool | None]


@dataclass(frozen=True)
class Member:
    """One service in the budget, as sampled now."""

    name: str
    criticality: int
    current: int
    running: bool
    evictable: bool
    is_primary: bool = False


@dataclass(frozen=True)
class BudgetSample:
    """One reading of a budget. ``high_delta``: rise of memory.events ``high`` since the last
    sample (the counter is diffed, never the notifications: inotify coalesces them).
    ``psi_some_avg10`` is None when the kernel has no PSI (CONFIG_PSI off or ``psi=0``)."""

    name: str
    current: int
    limit: int | None
    high_delta: int
    psi_some_avg10: float | None
    psi_fired: bool
    members: Sequence[Member] = ()


@dataclass(frozen=True)
class PrimarySample:
    """The primary's own slice: memory.current and the watermark above which a controlled
    restart is allowed (None: never)."""

    current: int
    watermark: int | None


@dataclass(frozen=True)
class Thresholds:
    headroom_min: float = 0.10
    psi_some_avg10: float = 20.0
    hysteresis: float = 30.0
    cooldown: float = 5.0
    sample_interval: float = 1.0
    #: Minimum seconds between two controlled restarts of the primary.
    restart_hold: float = 60.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.headroom_min <= 1.0:
            raise ValueError(f"headroom_min={self.headroom_min!r}: must be a ratio in [0, 1]")
        if not 0.0 <= self.psi_some_avg10 <= 100.0:
            raise ValueError(f"psi_some_avg10={self.psi_some_avg10!r}: must be a % in [0, 100]")
        for name in ("hysteresis", "cooldown", "restart_hold"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}={value!r}: must be a finite duration >= 0")
        if not (math.isfinite(self.sample_interval) and self.sample_interval > 0):
            raise ValueError(f"sample_interval={self.sample_interval!r}: must be > 0")


@dataclass(frozen=True)
class PressureState:
    """Per-budget memory of what happened. ``evicted`` is in eviction order (last = newest)."""

    pressured_since: float | None = None
    clear_since: float | None = None
    evicted: tuple[str, ...] = ()
    last_action_at: float | None = None
    last_restart_at: float | None = None

    @property
    def sampling(self) -> bool:
        """Whether the supervisor should sample this budget every ``sample_interval``."""
        return self.pressured_since is not None or bool(self.evicted)


class Level(Enum):
    PRESSURED = "pressured"
    NEUTRAL = "neutral"
    CLEAR = "clear"


@dataclass(frozen=True)
class Evict:
    name: str
    reason: str
    figures: Figures = field(default_factory=dict)


@dataclass(frozen=True)
class Restore:
    name: str
    figures: Figures = field(default_factory=dict)


@dataclass(frozen=True)
class ControlledRestart:
    primary: str
    reason: str
    figures: Figures = field(default_factory=dict)


@dataclass(frozen=True)
class WouldDo:
    """What enforce mode would have done (observe mode only logs it)."""

    action: Evict | Restore | ControlledRestart


PressureAction: TypeAlias = Evict | Restore | ControlledRestart | WouldDo


def headroom(sample: BudgetSample) -> float | None:
    """(limit - current) / limit, or None without a limit. Negative if current overshoots."""
    if sample.limit is None:
        return None
    if sample.limit <= 0:
        return 0.0
    return (sample.limit - sample.current) / sample.limit


def classify(sample: BudgetSample, thresholds: Thresholds) -> tuple[Level, str]:
    """The rule in the module docstring; the reason names the signals, e.g. ``headroom+high``."""
    room = headroom(sample)
    low = room is not None and room < thresholds.headroom_min
    psi_high = (
        sample.psi_some_avg10 is not None and sample.psi_some_avg10 > thresholds.psi_some_avg10
    )
    signals: list[str] = []
    if low and sample.high_delta > 0:
        signals.append("high")
    if low and sample.psi_fired:
        signals.append("psi_trigger")
    if signals:
        signals.insert(0, "headroom")
    if psi_high:
        signals.append("psi_avg10")
    if signals:
        return Level.PRESSURED, "+".join(signals)
    if not low and not psi_high and not sample.psi_fired:
        return Level.CLEAR, ""
    return Level.NEUTRAL, ""


def evaluate(
    state: PressureState,
    sample: BudgetSample,
    thresholds: Thresholds,
    now: float,
    mode: Mode = "enforce",
    *,
    primary: PrimarySample | None = None,
) -> tuple[PressureState, list[PressureAction]]:
    """One evaluation of one budget at monotonic time ``now``."""
    if mode not in ("enforce", "observe"):
        raise ValueError(f"mode={mode!r}: use enforce or observe")
    level, reason = classify(sample, thresholds)
    new = replace(
        state,
        pressured_since=(
            (state.pressured_since if state.pressured_since is not None else now)
            if level is Level.PRESSURED
            else None
        ),
        clear_since=(
            (state.clear_since if state.clear_since is not None else now)
            if level is Level.CLEAR
            else None
        ),
    )
    cooled = state.last_action_at is None or now - state.last_action_at >= thresholds.cooldown
    action: Evict | Restore | ControlledRestart | None = None
    if level is Level.PRESSURED and cooled:
        new, action = _relieve(new, sample, thresholds, now, reason=reason, primary=primary)
    elif level is Level.CLEAR and cooled and new.evicted:
        assert new.clear_since is not None
        if now - new.clear_since >= thresholds.hysteresis:
            name = new.evicted[-1]
            figures = _figures(sample)
            figures["clear_for"] = round(now - new.clear_since, 3)
            action = Restore(name, figures)
            new = replace(new, evicted=new.evicted[:-1], last_action_at=now)
    if action is None:
        return new, []
    return new, [WouldDo(action) if mode == "observe" else action]


def next_sample_at(state: PressureState, thresholds: Thresholds, now: float) -> float | None:
    """None when idle (nothing pressured, nothing evicted); else ``now + sample_interval``."""
    return now + thresholds.sample_interval if state.sampling else None


def _relieve(
    state: PressureState,
    sample: BudgetSample,
    thresholds: Thresholds,
    now: float,
    *,
    reason: str,
    primary: PrimarySample | None,
) -> tuple[PressureState, Evict | ControlledRestart | None]:
    """Pick the one action for a pressured budget: evict the next member, else restart the
    primary if it alone is over its watermark, else nothing (the kernel's limits take over)."""
    candidates = [
        m
        for m in sample.members
        if m.running and m.evictable and not m.is_primary and m.name not in state.evicted
    ]
    ordered = eviction_order(candidates)
    if ordered:
        victim = ordered[0]
        figures = _figures(sample)
        figures.update(member_current=victim.current, criticality=victim.criticality)
        new = replace(state, evicted=(*state.evicted, victim.name), last_action_at=now)
        return new, Evict(victim.name, reason, figures)

    prim = next((m for m in sample.members if m.is_primary), None)
    if prim is None or not prim.running or primary is None or primary.watermark is None:
        return state, None
    if primary.current <= primary.watermark:
        return state, None  # not the primary's doing: leave it alone
    if state.last_restart_at is not None and now - state.last_restart_at < thresholds.restart_hold:
        return state, None
    figures = _figures(sample)
    figures.update(primary_current=primary.current, watermark=primary.watermark)
    new = replace(state, last_action_at=now, last_restart_at=now)
    return new, ControlledRestart(prim.name, reason, figures)


def _figures(sample: BudgetSample) -> Figures:
    room = headroom(sample)
    return {
        "budget": sample.name,
        "current": sample.current,
        "limit": sample.limit,
        "headroom": None if room is None else round(room, 4),
        "high_delta": sample.high_delta,
        "psi_some_avg10": sample.psi_some_avg10,
        "psi_fired": sample.psi_fired,
    }
