"""Graduated response to memory pressure, per budget. Pure: samples in, actions out.

A *budget* is a shared slice (e.g. ``sidecars``) or the whole tree; its ``limit`` is the nearest
memory.max at or above it, for the tree else the machine's memory (`machine_budget`), with swap
counted where it exists (`with_swap`). The supervisor samples it when woken (an inotify IN_MODIFY on
memory.events, a PSI trigger, or the ``next_sample_at`` timer) and calls ``evaluate``.

The pressure rule (``classify``)::

    low       = limit is set and (limit - current) / limit < headroom_min
    psi_high  = psi some avg10 > psi_some_avg10
    over      = limit is set and current > limit   (only the watermark allows it)
    PRESSURED = (low and (high_delta > 0 or psi_fired)) or over or psi_high
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

Actions, at most one per ``cooldown`` (a change needs time to show in the figures). For the
primary's own budget (its watermark) they form a ladder, cheapest first, the pressure re-checked
before each rung; notifying the primary itself (``pressure_watch``) is the rung before all of
these and needs no decision (the kernel fires the service's own PSI trigger):
  0. PRESSURED, the primary's budget, ``[service.X.shed]`` set: ``Shed`` the largest process of
     the primary's slice other than its main process (``PrimarySample.shed``, chosen by
     ``policy.shed``), at most once per ``Thresholds.shed_cooldown``. While that rung cools
     down, a persisting pressure goes on to the next one.
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

``next_sample_at`` returns None when nothing is pressured and nothing is evicted: inotify on
memory.events and PSI triggers wake the supervisor. Otherwise it asks for a sample every
``sample_interval`` seconds, to see pressure persist or clear.

The early signal of budgets without a memory.high of their own (`follow_highs`): each sidecar
group gets a memory.high that follows the room left in the budgets around the primary (the
primary itself never gets one), so the kernel raises ``high`` when the room runs out; the
rooms are sampled at `follow_interval` because the primary's growth raises no sidecar event.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Literal, TypeAlias

from oomguard.policy.ranking import eviction_order

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from oomguard.policy.shed import ProcMemory

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
    #: memory.swap.current (0 without swap): among equally critical members the biggest swap
    #: user is evicted first (``ranking.eviction_order``).
    swap: int = 0


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
    restart is allowed (None: never). ``shed``: the process to shed (`policy.shed.choose`),
    given only when the budget evaluated is the primary's own and ``[service.X.shed]`` is set;
    None: no shed rung."""

    current: int
    watermark: int | None
    shed: ProcMemory | None = None


@dataclass(frozen=True)
class Thresholds:
    """One budget's thresholds (see ``[oomguard.pressure]`` in docs/config.md).

    Not re-checked here: they come from the compiled Plan (``config/compile.py``), whose config
    field types bound each one (headroom_min a fraction 0..1, psi_some_avg10 in (0, 100],
    durations finite and > 0).
    """

    headroom_min: float = 0.10
    psi_some_avg10: float = 20.0
    hysteresis: float = 30.0
    cooldown: float = 5.0
    sample_interval: float = 1.0
    #: Minimum seconds between two controlled restarts of the primary.
    restart_hold: float = 60.0
    #: Minimum seconds between two sheds (``[service.X.shed] cooldown``).
    shed_cooldown: float = 30.0


@dataclass(frozen=True)
class PressureState:
    """Per-budget memory of what happened. ``evicted`` is in eviction order (last = newest)."""

    pressured_since: float | None = None
    clear_since: float | None = None
    evicted: tuple[str, ...] = ()
    last_action_at: float | None = None
    last_restart_at: float | None = None
    last_shed_at: float | None = None

    @property
    def sampling(self) -> bool:
        """Whether the supervisor should sample this budget every ``sample_interval``."""
        return self.pressured_since is not None or bool(self.evicted)


class PressureLevel(Enum):
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
class Shed:
    """Send the primary's shed signal to process ``pid`` of its slice (``size``: its
    unreclaimable private memory, `ProcMemory.private`)."""

    primary: str
    pid: int
    comm: str
    size: int
    reason: str
    figures: Figures = field(default_factory=dict)


Act: TypeAlias = Evict | Restore | ControlledRestart | Shed


@dataclass(frozen=True)
class WouldDo:
    """What enforce mode would have done (observe mode only logs it)."""

    action: Act


PressureAction: TypeAlias = Act | WouldDo


def headroom(sample: BudgetSample) -> float | None:
    """(limit - current) / limit, or None without a limit. Negative if current overshoots."""
    if sample.limit is None:
        return None
    if sample.limit <= 0:
        return 0.0
    return (sample.limit - sample.current) / sample.limit


def classify(sample: BudgetSample, thresholds: Thresholds) -> tuple[PressureLevel, str]:
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
    if not signals and room is not None and room < 0:
        # Unreclaimable usage above the limit itself. A kernel-enforced limit cannot be
        # overshot like this; the primary's watermark can (it may have no memory.high, or not
        # at the watermark), and then a sample is all the evidence there will be.
        signals.append("over")
    if signals:
        signals.insert(0, "headroom")
    if psi_high:
        signals.append("psi_avg10")
    if signals:
        return PressureLevel.PRESSURED, "+".join(signals)
    if not low and not psi_high and not sample.psi_fired:
        return PressureLevel.CLEAR, ""
    return PressureLevel.NEUTRAL, ""


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
            if level is PressureLevel.PRESSURED
            else None
        ),
        clear_since=(
            (state.clear_since if state.clear_since is not None else now)
            if level is PressureLevel.CLEAR
            else None
        ),
    )
    cooled = state.last_action_at is None or now - state.last_action_at >= thresholds.cooldown
    action: Act | None = None
    if level is PressureLevel.PRESSURED and cooled:
        new, action = _relieve(new, sample, thresholds, now, reason=reason, primary=primary)
    elif level is PressureLevel.CLEAR and cooled and new.evicted:
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


def shed_due(
    state: PressureState, sample: BudgetSample, thresholds: Thresholds, now: float
) -> bool:
    """Whether `evaluate` could take the shed rung on this sample: pressured, the cooldown and
    the shed rung's own cooldown passed. The runtime asks first, so that it reads the figures of
    every process in the primary's slice only when a shed may follow."""
    if classify(sample, thresholds)[0] is not PressureLevel.PRESSURED:
        return False
    if state.last_action_at is not None and now - state.last_action_at < thresholds.cooldown:
        return False
    return state.last_shed_at is None or now - state.last_shed_at >= thresholds.shed_cooldown


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
) -> tuple[PressureState, Evict | ControlledRestart | Shed | None]:
    """Pick the one action for a pressured budget, the next rung of the ladder: shed (the
    primary's budget only, when its rung is not cooling down), else evict the next member, else
    restart the primary if it alone is over its watermark, else nothing (the kernel's limits
    take over)."""
    shed = _shed(state, sample, thresholds, now, reason=reason, primary=primary)
    if shed is not None:
        return shed
    candidates = [
        m
        for m in sample.members
        if m.running and m.evictable and not m.is_primary and m.name not in state.evicted
    ]
    ordered = eviction_order(candidates)
    if ordered:
        victim = ordered[0]
        figures = _figures(sample)
        figures.update(
            member_current=victim.current, member_swap=victim.swap, criticality=victim.criticality
        )
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


def _shed(
    state: PressureState,
    sample: BudgetSample,
    thresholds: Thresholds,
    now: float,
    *,
    reason: str,
    primary: PrimarySample | None,
) -> tuple[PressureState, Shed] | None:
    """The shed rung: the primary's budget is pressured, a process to shed was found, and the
    rung has cooled down since the last shed."""
    if primary is None or primary.shed is None:
        return None
    if state.last_shed_at is not None and now - state.last_shed_at < thresholds.shed_cooldown:
        return None
    prim = next((m for m in sample.members if m.is_primary), None)
    if prim is None or not prim.running:
        return None
    victim = primary.shed
    figures = _figures(sample)
    figures.update(
        primary_current=primary.current,
        watermark=primary.watermark,
        pid=victim.pid,
        comm=victim.comm,
        size=victim.private,
        rss_anon=victim.rss_anon,
        swap=victim.swap,
    )
    new = replace(state, last_action_at=now, last_shed_at=now)
    return new, Shed(prim.name, victim.pid, victim.comm, victim.private, reason, figures)


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


# -- budgets without a cgroup limit, and swap ---------------------------------------------------


def machine_budget(meminfo: Mapping[str, int]) -> tuple[int, int] | None:
    """(limit, usage) of the machine itself, for a tree with no memory.max at or above it: the
    budget is the machine's memory, and the machine runs out for everyone, not for our tree
    alone. So the usage is the machine's: ``MemTotal - MemAvailable``, the kernel's own estimate
    of what cannot be had back without swapping (it leaves out the reclaimable page cache and
    slab, like `_usage` does for a cgroup). With swap (``SwapTotal > 0``), both count it: the
    limit adds SwapTotal, the usage adds ``SwapTotal - SwapFree``. ``meminfo`` is /proc/meminfo
    in bytes; None if it lacks MemTotal or MemAvailable (kernels before 3.14)."""
    total = meminfo.get("MemTotal")
    available = meminfo.get("MemAvailable")
    if total is None or available is None or total <= 0:
        return None
    limit = total
    usage = max(0, total - available)
    swap_total = meminfo.get("SwapTotal", 0)
    if swap_total > 0:
        limit += swap_total
        usage += max(0, swap_total - meminfo.get("SwapFree", swap_total))
    return limit, usage


def with_swap(
    limit: int, usage: int, *, swap_max: int | None, swap_current: int, swap_total: int
) -> tuple[int, int]:
    """(limit, usage) of a cgroup budget counting swap where it exists: the cgroup can hold
    memory.max in RAM plus its swap allowance (memory.swap.max, at most the machine's swap)
    before the OOM killer runs, and what it has swapped out is usage that did not go away.
    Without swap on the machine (``swap_total == 0``) both are unchanged."""
    if swap_total <= 0:
        return limit, usage
    room = swap_total if swap_max is None else min(swap_max, swap_total)
    return limit + room, usage + max(0, swap_current)


# -- automatic memory.high that follows the room left -------------------------------------------

#: Page size memory.high is kept aligned to (the kernel rounds down to pages anyway; aligned
#: values compare equal to what it reads back).
PAGE = 4096
#: Slowest sampling of the rooms, seconds, when every room is far from its threshold.
FOLLOW_IDLE = 10.0
#: Margin above headroom_min (a fraction of the limit) from which sampling is at its slowest.
FOLLOW_FAR = 0.25


@dataclass(frozen=True)
class Room:
    """A budget the primary lives in: the whole tree (its limit the nearest memory.max at or
    above it, else the machine's memory), or a ``[slice]`` around the primary with a
    memory_max. ``limit`` and ``usage`` count swap where it exists (`with_swap`,
    `machine_budget`); ``groups`` names the sidecar groups inside it."""

    name: str
    limit: int | None
    usage: int
    headroom_min: float
    groups: tuple[str, ...]

    @property
    def slack(self) -> int | None:
        """Bytes the room can still grow before its headroom falls below headroom_min
        (negative once below), or None without a limit."""
        if self.limit is None:
            return None
        return int(self.limit * (1 - self.headroom_min)) - self.usage

    @property
    def margin(self) -> float | None:
        """Headroom above headroom_min, as a fraction of the limit (None without a limit)."""
        if self.limit is None or self.limit <= 0:
            return None
        return (self.limit - self.usage) / self.limit - self.headroom_min


@dataclass(frozen=True)
class Group:
    """A sidecar group: the topmost cgroup of a branch of the tree that does not hold the
    primary (a ``[slice]`` of sidecars, or a sidecar service outside any slice). ``current``
    is its memory.current, which is what the kernel compares memory.high with. ``cap``: the
    highest value its memory.high may take (the user's memory_high, or a ``[slice]``'s
    automatic ``memory_max * (1 - headroom_min)``); None: none."""

    name: str
    current: int
    cap: int | None = None


def follow_highs(rooms: Sequence[Room], groups: Sequence[Group]) -> dict[str, int | None]:
    """The memory.high of each sidecar group (bytes, page-aligned; None: leave it at "max").

    Each room's slack (what it can still grow before its headroom drops below headroom_min) is
    split evenly among the groups inside it; a group may grow by its smallest share over the
    rooms it is in: high = current + share. So the kernel raises ``high`` in a group's
    memory.events (and throttles it) about when the room runs out, without oomguard polling the
    sidecars; a primary that grows shrinks the slack and so every sidecar's high.

    Never below the group's current usage: a high below memory.current makes the kernel reclaim
    synchronously in the write (oomguard's loop would block in it) and, without swap, throttle
    everything the group does, including the exit of a sidecar being evicted. At its current
    usage the group is pinned: it keeps what it holds and every further page raises the event.
    Never above ``cap``. The primary's cgroup and its ancestors never appear here.
    """
    out: dict[str, int | None] = {}
    for group in groups:
        shares = [
            slack // len(room.groups)
            for room in rooms
            if group.name in room.groups and (slack := room.slack) is not None
        ]
        high = group.current + min(shares) if shares else None
        if high is not None:
            high = max(high // PAGE * PAGE, -(-group.current // PAGE) * PAGE)
        if group.cap is not None and (high is None or high >= group.cap):
            high = group.cap
        out[group.name] = high
    return out


@dataclass(frozen=True)
class FollowReading:
    """The rooms' usage at one sample, to measure how fast they grow."""

    at: float
    usage: Mapping[str, int]


def follow_interval(
    rooms: Sequence[Room],
    sample_interval: float,
    now: float,
    previous: FollowReading | None = None,
) -> float:
    """Seconds until the next sample of the rooms (the primary's growth raises no sidecar
    event, so it is watched by sampling). ``FOLLOW_IDLE`` when every room is at least
    ``FOLLOW_FAR`` above its threshold, ``sample_interval`` at or below it, linear in between;
    and, when a room grew since ``previous``, no more than a third of the time it would take at
    that rate to reach its threshold (a fast leak is sampled fast)."""
    interval = FOLLOW_IDLE
    for room in rooms:
        margin = room.margin
        if margin is None:
            continue
        if margin <= 0:
            interval = sample_interval
            break
        span = FOLLOW_IDLE - sample_interval
        interval = min(interval, sample_interval + span * min(1.0, margin / FOLLOW_FAR))
        before = previous.usage.get(room.name) if previous is not None else None
        slack = room.slack
        if before is not None and previous is not None and slack is not None:
            elapsed = now - previous.at
            grown = room.usage - before
            if elapsed > 0 and grown > 0:
                interval = min(interval, slack / (grown / elapsed) / 3)
    return max(sample_interval, min(FOLLOW_IDLE, interval))
