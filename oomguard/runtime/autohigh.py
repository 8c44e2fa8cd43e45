"""oomguard's automatic memory.high (``auto_high``) for the pressure response, and where it goes.

A budget with only memory.max (or no limit at all) gives no kernel signal until it *hits* the
max, and without swap the OOM kill follows within milliseconds. memory.high is the early signal:
the kernel raises ``high`` and throttles the grower instead of killing. It is never written on
the primary's cgroup or a cgroup the primary lives under (the tree root, a slice around the
primary): it would throttle the primary. Instead:

* a sidecar ``[slice]`` with only memory_max gets ``memory_max * (1 - headroom_min)``
  (`static_high`);
* every *sidecar group* (the topmost cgroup of each branch without the primary: a sidecar
  slice, or a loose sidecar service) gets a high that follows the room left in each budget
  around the primary (`pp.follow_highs`: the tree, whose limit is its memory.max, else the
  nearest ancestor's, else the machine's memory; and any [slice] around the primary with a
  memory_max). The rooms are sampled adaptively (`pp.follow_interval`: ~10 s far from the
  threshold, ``sample_interval`` near it) since the primary's growth raises no sidecar event,
  and recomputed at once when a group reaches its high. Not in observe mode (a pinned leak
  would be held for good), and not on groups with nothing evictable.

A budget whose config sets memory_high keeps it as a cap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from oomguard.errors import OomguardError
from oomguard.policy import pressure as pp
from oomguard.runtime import headroom
from oomguard.units import format_size

if TYPE_CHECKING:
    from collections.abc import Iterable

    from oomguard.cgroup.path import CgroupPath
    from oomguard.runtime.context import Context, ServiceView, SliceView

#: Name of the synthetic budget that watches the primary's own watermark.
PRIMARY_BUDGET = "primary-watermark"
TREE_BUDGET = "tree"


@dataclass(eq=False)
class Group:
    """A sidecar group (`pp.Group`): its cgroup, the highest memory.high it may get, the
    ``[slice]``s it lies in, and the memory.high oomguard wrote last (None: none yet)."""

    name: str
    cgroup: CgroupPath
    cap: int | None
    slices: tuple[str, ...]
    written: int | None = None


@dataclass(frozen=True)
class RoomSpec:
    """A budget the primary lives in (`pp.Room`), and the sidecar groups inside it."""

    name: str
    cgroup: CgroupPath
    headroom_min: float
    groups: tuple[str, ...]
    #: The primary's watermark: a fixed limit against the primary's own usage.
    fixed_limit: int | None = None


def sidecar_groups(services: Iterable[ServiceView]) -> dict[str, tuple[str, ...]]:
    """The sidecar groups: for each branch of the tree that does not hold the primary, its
    topmost slice or service, with the ``[slice]``s around it (outermost first; all of them
    hold the primary too). Only branches with an evictable service among `services`: a group
    oomguard never evicts from gets no automatic high (a leak pinned at it would be throttled
    for good instead of being OOM-killed and restarted). Never the primary or a cgroup the
    primary lives under: by construction, a group is the first element of a service's chain
    that is not in the primary's."""
    views = list(services)
    primary = next(v for v in views if v.is_primary)
    primary_chain = [*primary.slices, primary.name]
    groups: dict[str, tuple[str, ...]] = {}
    for view in views:
        if view.is_primary or not view.evictable:
            continue
        chain = [*view.slices, view.name]
        top = next(n for n in chain if n not in primary_chain)
        groups.setdefault(top, tuple(chain[: chain.index(top)]))
    return groups


class AutoHigh:
    """The sidecar groups' automatic memory.high, following the rooms around the primary.

    `follow_at` is when the rooms are sampled next (None: never, e.g. no sidecar group)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.groups: dict[str, Group] = {}
        self.rooms: list[RoomSpec] = []
        self.follow_at: float | None = None
        self.follow_last: float | None = None
        self.follow_prev: pp.FollowReading | None = None

    def static_high(self, sl: SliceView) -> int | None:
        """Write a sidecar slice's static automatic memory.high; return the highest value its
        memory.high may take from now on (the user's memory_high, this one, or None)."""
        if sl.memory_max is None or sl.memory_high is not None:
            return sl.memory_high
        ctx = self.ctx
        headroom_min = sl.pressure.thresholds.headroom_min
        value = int(sl.memory_max * (1 - headroom_min)) // pp.PAGE * pp.PAGE
        try:
            ctx.fs.write(sl.cgroup, "memory.high", str(value))
        except OomguardError as err:
            ctx.log.warn("auto_high_failed", slice=str(sl.cgroup), error=str(err))
            return None
        ctx.log.info("auto_high", slice=str(sl.cgroup), memory_high=format_size(value))
        return value

    def setup(self, root: CgroupPath, slice_caps: dict[str, int | None]) -> None:
        """Find the sidecar groups (the topmost cgroup of each branch of the tree without the
        primary) and the rooms the primary lives in (the tree, and each ``[slice]`` around it
        with a memory_max, and a watermark with no memory.high at it), and arm the first
        sample."""
        ctx = self.ctx
        slices = ctx.slices()
        primary = ctx.service(ctx.primary)
        groups = self._groups(slice_caps)
        self.groups = groups
        rooms = [(TREE_BUDGET, root, ctx.tree_pressure.thresholds.headroom_min)]
        rooms += [
            (n, slices[n].cgroup, slices[n].pressure.thresholds.headroom_min)
            for n in primary.slices
            if slices[n].memory_max is not None
        ]
        self.rooms = [
            RoomSpec(
                name,
                path,
                hm,
                tuple(g.name for g in groups.values() if name == TREE_BUDGET or name in g.slices),
            )
            for name, path, hm in rooms
        ]
        if not groups:
            self.rooms = []
        watermark = primary.watermark
        if watermark is not None and primary.memory_high != watermark:
            # A watermark with no memory.high at it gives no kernel event when the primary
            # crosses it: sample it like a room (with no groups: it sets no highs).
            hm = primary.pressure.thresholds.headroom_min
            self.rooms.append(
                RoomSpec(PRIMARY_BUDGET, primary.cgroup, hm, (), fixed_limit=watermark)
            )
        if not self.rooms:
            return
        self.follow_at = ctx.now
        ctx.log.info(
            "auto_high",
            groups=",".join(groups) or "-",
            rooms=",".join(r.name for r in self.rooms),
            follows="primary",
        )

    def _groups(self, slice_caps: dict[str, int | None]) -> dict[str, Group]:
        ctx = self.ctx
        if ctx.mode == "observe":
            # These highs throttle: a leak pinned at one is held there until it is evicted.
            # Observe mode evicts nothing, so it would hold the leak for good where the kernel
            # would have OOM-killed and restarted it: not "changes nothing".
            return {}
        slices = ctx.slices()
        groups: dict[str, Group] = {}
        views = [ctx.service(n) for n in ctx.names()]
        for top, inside in sidecar_groups(views).items():
            if top in slices:
                cap = slice_caps.get(top, slices[top].memory_high)
                cgroup = slices[top].cgroup
            else:
                cap = ctx.service(top).memory_high
                cgroup = ctx.service(top).cgroup
            groups[top] = Group(top, cgroup, cap, inside)
        return groups

    @property
    def sample_interval(self) -> float:
        return self.ctx.tree_pressure.thresholds.sample_interval

    def on_counters(self, path: CgroupPath) -> None:
        """`path`'s memory.events.local shows ``high``/``max`` rises."""
        if self.follow_at is not None and any(
            path == g.cgroup or path.is_relative_to(g.cgroup) for g in self.groups.values()
        ):
            # A sidecar group reached its automatic memory.high. If the budgets above were not
            # pressured (evaluated just now), the room may still be fine: recompute the highs
            # (raising them), at most once per sample_interval (a throttled leaker raises
            # `high` up to 100 times a second).
            soonest = (self.follow_last or 0.0) + self.sample_interval
            self.follow_at = min(self.follow_at, soonest)

    def follow(self) -> list[pp.Room]:
        """Sample the rooms and the sidecar groups, rewrite the groups' memory.high where it
        changed, and arm the next sample (`pp.follow_interval`). Returns the rooms read."""
        ctx = self.ctx
        now = ctx.now
        self.follow_last = now
        rooms = self._read_rooms(ctx.meminfo())
        groups: list[pp.Group] = []
        for group in self.groups.values():
            try:
                current = ctx.fs.read_int(group.cgroup, "memory.current")
            except OomguardError:
                continue  # gone (being recreated): next sample
            groups.append(pp.Group(group.name, current, group.cap))
        for name, high in pp.follow_highs(rooms, groups).items():
            self._write_high(self.groups[name], high)
        self.follow_at = now + pp.follow_interval(
            rooms, self.sample_interval, now, self.follow_prev
        )
        self.follow_prev = pp.FollowReading(now, {r.name: r.usage for r in rooms})
        return rooms

    def _read_rooms(self, meminfo: dict[str, int]) -> list[pp.Room]:
        fs = self.ctx.fs
        rooms: list[pp.Room] = []
        for spec in self.rooms:
            limit: int | None
            try:
                if spec.fixed_limit is not None:
                    limit, usage = spec.fixed_limit, headroom.usage(fs, spec.cgroup)
                else:
                    limit, usage = headroom.room_figures(fs, spec.cgroup, meminfo, machine=True)
            except OomguardError:
                continue
            rooms.append(pp.Room(spec.name, limit, usage, spec.headroom_min, spec.groups))
        return rooms

    def _write_high(self, group: Group, high: int | None) -> None:
        ctx = self.ctx
        try:
            now_high = ctx.fs.read_limit(group.cgroup, "memory.high")
        except OomguardError:
            return
        if high == now_high or (high is None and group.written is None):
            return  # unchanged, or "max" that we never lowered
        try:
            ctx.fs.write(group.cgroup, "memory.high", "max" if high is None else str(high))
        except OomguardError as err:
            ctx.log.warn("auto_high_failed", slice=str(group.cgroup), error=str(err))
            return
        first = group.written is None
        group.written = high
        log = ctx.log.info if first else ctx.log.debug
        log(
            "auto_high",
            slice=str(group.cgroup),
            memory_high=format_size(high) if high is not None else "max",
        )
