"""The pressure response: act before the kernel's OOM killer does. A supervisor `Extension`.

Budgets (each evaluated by the pure `policy.pressure.evaluate`):

* every ``[slice.X]``: members are the services inside it;
* the whole tree: members are all services; its limit is the nearest memory.max at or above
  the tree root (``[oomguard] memory_max``, else a container's or systemd slice's limit, judged
  on *that* cgroup's usage), else the machine's memory (/proc/meminfo);
* the primary's watermark: a synthetic budget whose "limit" is the primary's watermark
  (``watermark``, default its ``memory_high``), members all services. When the primary sits at
  its watermark, sidecars are evicted first; only when none is left is the primary restarted
  in a controlled way (stop signal, wait, start), never killed.

Signals, event-driven but for one slow sample of the rooms (~0.1 wake-ups/s when idle):

* ``high``/``max`` rises of memory.events.local anywhere in a budget (inotify, via the
  supervisor): a cgroup went above memory.high and was sent into reclaim: the earliest cheap
  signal (but not proof of pressure: see `_usage`, page cache alone raises it);
* a PSI trigger per budget on memory.pressure (EPOLLPRI only: the fd is always readable);
  the policy's ``psi_some_avg10`` is avg10 capped by the stall rate since the previous reading
  (`_stall`: avg10 lags ~10 s behind an eviction that ended the stall);
* headroom (the budget's *unreclaimable* usage against the limit, `_usage`) is read every
  ``sample_interval`` (default 1 s, minimum 1 s) while a budget is pressured or has evictions
  outstanding; the rooms around the primary are sampled adaptively, from every 10 s when idle
  (see below).

Why oomguard sets memory.high (``auto_high``), and where: a budget with only memory.max (or no
limit at all) gives no kernel signal until it *hits* the max, and without swap the OOM kill
follows within milliseconds. memory.high is the early signal: the kernel raises ``high`` and
throttles the grower instead of killing. It is never written on the primary's cgroup or a
cgroup the primary lives under (the tree root, a slice around the primary): it would throttle
the primary. Instead:

* a sidecar ``[slice]`` with only memory_max gets ``memory_max * (1 - headroom_min)``;
* every *sidecar group* (the topmost cgroup of each branch without the primary: a sidecar
  slice, or a loose sidecar service) gets a high that follows the room left in each budget
  around the primary (`pp.follow_highs`: the tree, whose limit is its memory.max, else the
  nearest ancestor's, else the machine's memory; and any [slice] around the primary with a
  memory_max). The rooms are sampled adaptively (`pp.follow_interval`: ~10 s far from the
  threshold, ``sample_interval`` near it) since the primary's growth raises no sidecar event,
  and recomputed at once when a group reaches its high. Not in observe mode (a pinned leak
  would be held for good), and not on groups with nothing evictable.

A budget whose config sets memory_high keeps it as a cap. Headroom counts swap where it exists
(`pp.with_swap`, `pp.machine_budget`).
"""

from __future__ import annotations

import contextlib
import select
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from oomguard.cgroup.parse import parse_limit, parse_meminfo
from oomguard.errors import OomguardError, Vanished
from oomguard.events.psi import PsiWatch
from oomguard.policy import pressure as pp
from oomguard.policy import restart as rp
from oomguard.units import format_size

if TYPE_CHECKING:
    from collections.abc import Iterable

    from oomguard.cgroup.parse import Pressure
    from oomguard.cgroup.path import CgroupPath
    from oomguard.config.model import Config, PressureConfig
    from oomguard.runtime.supervisor import Service, Supervisor

#: Name of the synthetic budget that watches the primary's own watermark.
PRIMARY_BUDGET = "primary-watermark"
TREE_BUDGET = "tree"


@dataclass(eq=False)
class Budget:
    name: str
    cgroup: CgroupPath
    members: tuple[str, ...]
    thresholds: pp.Thresholds
    #: None: read the nearest memory.max at or above `cgroup`. Else a fixed byte limit.
    fixed_limit: int | None = None
    state: pp.PressureState = field(default_factory=pp.PressureState)
    high_delta: int = 0
    psi_fired: bool = False
    trigger: PsiWatch | None = None
    next_at: float | None = None
    #: The previous PSI reading (`_stall`): when, memory.pressure ``some total`` (µs), and the
    #: stall rate (%) between the two readings before that.
    psi_at: float | None = None
    psi_total_us: int | None = None
    psi_recent: float | None = None
    #: An eviction of a member was in flight: measure the stall afresh from the next reading.
    psi_rebase: bool = False


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


def sidecar_groups(cfg: Config, services: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The sidecar groups: for each branch of the tree that does not hold the primary, its
    topmost slice or service, with the ``[slice]``s around it (outermost first; all of them
    hold the primary too). Only branches with an evictable service among `services`: a group
    oomguard never evicts from gets no automatic high (a leak pinned at it would be throttled
    for good instead of being OOM-killed and restarted). Never the primary or a cgroup the
    primary lives under: by construction, a group is the first element of a service's chain
    that is not in the primary's."""
    primary_chain = [*cfg.slice_chain(cfg.primary_name), cfg.primary_name]
    groups: dict[str, tuple[str, ...]] = {}
    for name in services:
        if name == cfg.primary_name or not cfg.service[name].evictable:
            continue
        chain = [*cfg.slice_chain(name), name]
        top = next(n for n in chain if n not in primary_chain)
        groups.setdefault(top, tuple(chain[: chain.index(top)]))
    return groups


#: The machine's memory figures, for a tree with no memory.max above it.
MEMINFO = "/proc/meminfo"


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes; {} if unreadable (then no machine budget and no swap)."""
    try:
        with open(MEMINFO, encoding="ascii", errors="replace") as f:
            return parse_meminfo(f.read(65536))
    except (OSError, OomguardError):
        return {}


#: PSI's avg10 is an exponentially weighted average over ~10 s: a reading older than this says
#: nothing that avg10 does not.
PSI_AVG_WINDOW = 10.0
#: Below this gap between two readings their difference is too noisy to be a rate.
PSI_MIN_SPAN = 0.5


def _thresholds(cfg: PressureConfig) -> pp.Thresholds:
    return pp.Thresholds(
        headroom_min=cfg.headroom_min,
        psi_some_avg10=cfg.psi_some_avg10,
        hysteresis=cfg.hysteresis,
        cooldown=cfg.cooldown,
        sample_interval=cfg.sample_interval,
    )


class PressureResponse:
    """Graduated response: evict the least critical sidecar, restore after hysteresis, and
    restart the primary in a controlled way as the last resort. ``mode=observe`` only logs."""

    def __init__(self) -> None:
        self.sup: Supervisor | None = None
        self.budgets: dict[str, Budget] = {}
        self.restart_pending: dict[str, float] = {}
        #: The sidecar groups that get an automatic memory.high, and the rooms it follows.
        self.groups: dict[str, Group] = {}
        self.rooms: list[RoomSpec] = []
        #: When to sample the rooms next (None: no sidecar group, never).
        self.follow_at: float | None = None
        self.follow_last: float | None = None
        self.follow_prev: pp.FollowReading | None = None

    # -- Extension ----------------------------------------------------------------------------

    def setup(self, sup: Supervisor) -> None:
        self.sup = sup
        cfg = sup.config
        if sup.built is None:
            # Degraded (no slice tree): there is no budget to measure or act on.
            sup.log.warn("pressure", response="off", reason="no slice tree (degraded mode)")
            return
        paths = sup.built.paths
        primary_chain = cfg.slice_chain(cfg.primary_name)
        caps: dict[str, int | None] = {}
        for name, scfg in cfg.slice.items():
            members = tuple(
                s for s in cfg.service if name in cfg.slice_chain(s) and s in sup.services
            )
            if not members:
                continue
            th = _thresholds(cfg.pressure_for(name))
            if name not in primary_chain:
                # Never on a slice the primary lives in: its memory.high would throttle the
                # primary (that slice is a `Room`; the sidecar groups in it get the highs).
                caps[name] = self._auto_high(paths[name], scfg.memory_max, scfg.memory_high, th)
            self._add(Budget(name, paths[name], members, th))
        self._setup_follow(caps)
        all_members = tuple(sup.services)
        self._add(
            Budget(TREE_BUDGET, sup.built.root, all_members, _thresholds(cfg.oomguard.pressure))
        )
        primary = cfg.primary
        watermark = primary.watermark
        if watermark is not None:
            self._add(
                Budget(
                    PRIMARY_BUDGET,
                    paths[cfg.primary_name],
                    all_members,
                    _thresholds(cfg.pressure_for(cfg.primary_name)),
                    fixed_limit=watermark,
                )
            )
        sup.log.info(
            "pressure",
            budgets=",".join(self.budgets),
            mode=cfg.oomguard.mode,
            watermark=format_size(watermark) if watermark is not None else "-",
        )

    def deadline(self) -> float | None:
        due = [b.next_at for b in self.budgets.values() if b.next_at is not None]
        if self.follow_at is not None:
            due.append(self.follow_at)
        return min(due) if due else None

    def _on_psi(self, name: str, mask: int) -> None:
        """The loop handler of a budget's PSI trigger fd."""
        budget = self.budgets.get(name)
        if budget is None:
            return
        if mask & (select.EPOLLERR | select.EPOLLHUP):
            # The cgroup went away under the trigger; it is dead for good.
            self._drop_trigger(budget)
            return
        if mask & select.EPOLLPRI:
            budget.psi_fired = True
            self._evaluate(budget, "psi_trigger")

    def on_counters(self, path: CgroupPath, delta: dict[str, int]) -> None:
        rise = delta.get("high", 0) + delta.get("max", 0)
        if not rise:
            return
        for budget in self.budgets.values():
            if path == budget.cgroup or path.is_relative_to(budget.cgroup):
                if budget.name == PRIMARY_BUDGET and path != budget.cgroup:
                    continue
                budget.high_delta += rise
                self._evaluate(budget, "memory.events")
        if self.follow_at is not None and any(
            path == g.cgroup or path.is_relative_to(g.cgroup) for g in self.groups.values()
        ):
            # A sidecar group reached its automatic memory.high. If the budgets above were not
            # pressured (evaluated just now), the room may still be fine: recompute the highs
            # (raising them), at most once per sample_interval (a throttled leaker raises
            # `high` up to 100 times a second).
            soonest = (self.follow_last or 0.0) + self._follow_sample_interval()
            self.follow_at = min(self.follow_at, soonest)

    def tick(self, now: float) -> None:
        for budget in self.budgets.values():
            if budget.next_at is not None and budget.next_at <= now:
                self._evaluate(budget, "sample")
        if self.sup is not None and self.sup.shutdown is not None:
            self.follow_at = None  # stopping: the highs no longer matter, and no more wake-ups
        elif self.follow_at is not None and self.follow_at <= now:
            self._follow()

    def after_turn(self) -> None:
        sup = self.sup
        if sup is None:
            return
        for name, since in list(self.restart_pending.items()):
            svc = sup.services[name]
            if svc.rec.state is rp.State.RUNNING:
                downtime = sup.now - since
                del self.restart_pending[name]
                sup.log.warn("primary_back", service=name, downtime=f"{downtime:.3f}s")
                sup.emit("restarted", svc.cgroup, service=name, downtime=round(downtime, 3))
            elif svc.rec.state in (rp.State.FATAL, rp.State.EXITED, rp.State.STOPPED):
                del self.restart_pending[name]

    def close(self) -> None:
        for budget in self.budgets.values():
            self._drop_trigger(budget)

    # -- internals ------------------------------------------------------------------------------

    def _add(self, budget: Budget) -> None:
        sup = self.sup
        assert sup is not None
        self.budgets[budget.name] = budget
        trig = sup.config.pressure_for(budget.members[0]).psi_trigger
        if budget.name == TREE_BUDGET:
            trig = sup.config.oomguard.pressure.psi_trigger
        try:
            budget.trigger = PsiWatch(
                sup.fs.file_path(budget.cgroup, "memory.pressure"),
                trig.kind,
                trig.stall,
                trig.window,
            )
        except OomguardError as err:
            # PSI may be off (psi=0 on the kernel command line) or need privileges for short
            # windows: the budget still works on memory.events alone.
            sup.log.warn("psi_unavailable", budget=budget.name, error=str(err))
            return
        name = budget.name
        sup.loop.add(
            budget.trigger.fileno(), select.EPOLLPRI, lambda mask: self._on_psi(name, mask)
        )

    def _drop_trigger(self, budget: Budget) -> None:
        if budget.trigger is None or self.sup is None:
            return
        fd = budget.trigger.fileno()
        with contextlib.suppress(Exception):
            self.sup.loop.remove(fd)
        budget.trigger.close()
        budget.trigger = None

    def _auto_high(
        self, path: CgroupPath, max_: int | None, high: int | None, th: pp.Thresholds
    ) -> int | None:
        """Write a sidecar slice's static automatic memory.high; return the highest value its
        memory.high may take from now on (the user's memory_high, this one, or None)."""
        if max_ is None or high is not None:
            return high
        sup = self.sup
        assert sup is not None
        value = int(max_ * (1 - th.headroom_min)) // pp.PAGE * pp.PAGE
        try:
            sup.fs.write(path, "memory.high", str(value))
        except OomguardError as err:
            sup.log.warn("auto_high_failed", slice=str(path), error=str(err))
            return None
        sup.log.info("auto_high", slice=str(path), memory_high=format_size(value))
        return value

    # -- the automatic memory.high of the sidecar groups (`pp.follow_highs`) ------------------

    def _setup_follow(self, slice_caps: dict[str, int | None]) -> None:
        """Find the sidecar groups (the topmost cgroup of each branch of the tree without the
        primary) and the rooms the primary lives in (the tree, and each ``[slice]`` around it
        with a memory_max, and a watermark with no memory.high at it), and arm the first
        sample."""
        sup = self.sup
        assert sup is not None and sup.built is not None
        cfg = sup.config
        paths = sup.built.paths
        groups = self._groups(slice_caps)
        self.groups = groups
        rooms = [(TREE_BUDGET, sup.built.root, cfg.oomguard.pressure.headroom_min)]
        rooms += [
            (n, paths[n], cfg.pressure_for(n).headroom_min)
            for n in cfg.slice_chain(cfg.primary_name)
            if cfg.slice[n].memory_max is not None
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
        watermark = cfg.primary.watermark
        if watermark is not None and cfg.primary.memory_high != watermark:
            # A watermark with no memory.high at it gives no kernel event when the primary
            # crosses it: sample it like a room (with no groups: it sets no highs).
            hm = cfg.pressure_for(cfg.primary_name).headroom_min
            self.rooms.append(
                RoomSpec(PRIMARY_BUDGET, paths[cfg.primary_name], hm, (), fixed_limit=watermark)
            )
        if not self.rooms:
            return
        self.follow_at = sup.now
        sup.log.info(
            "auto_high",
            groups=",".join(groups) or "-",
            rooms=",".join(r.name for r in self.rooms),
            follows="primary",
        )

    def _groups(self, slice_caps: dict[str, int | None]) -> dict[str, Group]:
        sup = self.sup
        assert sup is not None and sup.built is not None
        cfg = sup.config
        if cfg.oomguard.mode == "observe":
            # These highs throttle: a leak pinned at one is held there until it is evicted.
            # Observe mode evicts nothing, so it would hold the leak for good where the kernel
            # would have OOM-killed and restarted it: not "changes nothing".
            return {}
        groups: dict[str, Group] = {}
        for top, inside in sidecar_groups(cfg, sup.services).items():
            if top in cfg.slice:
                cap = slice_caps.get(top, cfg.slice[top].memory_high)
            else:
                cap = cfg.service[top].memory_high
            groups[top] = Group(top, sup.built.paths[top], cap, inside)
        return groups

    def _follow(self) -> None:
        """Sample the rooms and the sidecar groups, rewrite the groups' memory.high where it
        changed, and arm the next sample (`pp.follow_interval`)."""
        sup = self.sup
        assert sup is not None
        now = sup.now
        self.follow_last = now
        meminfo = _meminfo()
        rooms: list[pp.Room] = []
        for spec in self.rooms:
            limit: int | None
            try:
                if spec.fixed_limit is not None:
                    limit, usage = spec.fixed_limit, self._usage(spec.cgroup)
                else:
                    limit, usage = self._room_figures(spec.cgroup, meminfo, machine=True)
            except OomguardError:
                continue
            rooms.append(pp.Room(spec.name, limit, usage, spec.headroom_min, spec.groups))
        groups: list[pp.Group] = []
        for group in self.groups.values():
            try:
                current = sup.fs.read_int(group.cgroup, "memory.current")
            except OomguardError:
                continue  # gone (being recreated): next sample
            groups.append(pp.Group(group.name, current, group.cap))
        for name, high in pp.follow_highs(rooms, groups).items():
            self._write_high(self.groups[name], high)
        for room in rooms:
            budget = self.budgets.get(room.name)
            margin = room.margin
            if budget is not None and budget.next_at is None and margin is not None and margin < 0:
                # Below the threshold with no kernel event yet (the primary grew, or something
                # outside the tree did): judge the budget on this sample too.
                self._evaluate(budget, "sample")
        self.follow_at = now + pp.follow_interval(
            rooms, self._follow_sample_interval(), now, self.follow_prev
        )
        self.follow_prev = pp.FollowReading(now, {r.name: r.usage for r in rooms})

    def _follow_sample_interval(self) -> float:
        sup = self.sup
        assert sup is not None
        return sup.config.oomguard.pressure.sample_interval

    def _write_high(self, group: Group, high: int | None) -> None:
        sup = self.sup
        assert sup is not None
        try:
            now_high = sup.fs.read_limit(group.cgroup, "memory.high")
        except OomguardError:
            return
        if high == now_high or (high is None and group.written is None):
            return  # unchanged, or "max" that we never lowered
        try:
            sup.fs.write(group.cgroup, "memory.high", "max" if high is None else str(high))
        except OomguardError as err:
            sup.log.warn("auto_high_failed", slice=str(group.cgroup), error=str(err))
            return
        first = group.written is None
        group.written = high
        log = sup.log.info if first else sup.log.debug
        log(
            "auto_high",
            slice=str(group.cgroup),
            memory_high=format_size(high) if high is not None else "max",
        )

    def _room_figures(
        self, cgroup: CgroupPath, meminfo: dict[str, int], *, machine: bool
    ) -> tuple[int | None, int]:
        """(limit, usage) of the budget at `cgroup`: the nearest memory.max at or above it,
        judged on the unreclaimable usage (`_usage`) *of the cgroup that has the limit* (an
        ancestor's limit is shared with whatever else runs under it), swap counted where it
        exists (`pp.with_swap`). With no memory.max anywhere above and ``machine``: the
        machine's memory (`pp.machine_budget`). Raises `Vanished` if `cgroup` is gone."""
        sup = self.sup
        assert sup is not None
        where, limit = self._nearest_max(cgroup)
        if where is None or limit is None:
            figures = pp.machine_budget(meminfo) if machine else None
            if figures is not None:
                return figures
            return None, self._usage(cgroup)
        usage = self._usage(where)
        swap_total = meminfo.get("SwapTotal", 0)
        if swap_total <= 0:
            return limit, usage
        return pp.with_swap(
            limit,
            usage,
            swap_max=self._nearest_swap_max(where),
            swap_current=self._swap(where),
            swap_total=swap_total,
        )

    def _nearest_max(self, cgroup: CgroupPath) -> tuple[CgroupPath | None, int | None]:
        sup = self.sup
        assert sup is not None
        path: CgroupPath | None = cgroup
        while path is not None and not path.is_root:
            with contextlib.suppress(OomguardError):
                value = sup.fs.read_limit(path, "memory.max")
                if value is not None:
                    return path, value
            path = path.parent
        return None, None

    def _nearest_swap_max(self, cgroup: CgroupPath) -> int | None:
        sup = self.sup
        assert sup is not None
        path: CgroupPath | None = cgroup
        best: int | None = None
        while path is not None and not path.is_root:
            with contextlib.suppress(OomguardError):
                text = sup.fs.read_optional(path, "memory.swap.max")
                value = None if text is None else parse_limit(text, "memory.swap.max")
                if value is not None and (best is None or value < best):
                    best = value
            path = path.parent
        return best

    def _swap(self, cgroup: CgroupPath) -> int:
        """memory.swap.current, 0 where the file is missing (no swap accounting) or unreadable."""
        sup = self.sup
        assert sup is not None
        try:
            text = sup.fs.read_optional(cgroup, "memory.swap.current")
        except OomguardError:
            return 0
        return int(text) if text is not None and text.strip().isdigit() else 0

    def _budget_figures(self, budget: Budget, meminfo: dict[str, int]) -> tuple[int | None, int]:
        """(limit, usage) of a budget. The primary's watermark: the fixed watermark against the
        primary's usage. The tree: `_room_figures`, down to the machine's memory when nothing
        above has a limit. A ``[slice]``: the nearest memory.max at or above it (swap counted)
        against the slice's own usage."""
        if budget.fixed_limit is not None:
            return budget.fixed_limit, self._usage(budget.cgroup)
        if budget.name == TREE_BUDGET:
            return self._room_figures(budget.cgroup, meminfo, machine=True)
        usage = self._usage(budget.cgroup)
        where, limit = self._nearest_max(budget.cgroup)
        swap_total = meminfo.get("SwapTotal", 0)
        if where is None or limit is None or swap_total <= 0:
            return limit, usage
        return pp.with_swap(
            limit,
            usage,
            swap_max=self._nearest_swap_max(budget.cgroup),
            swap_current=self._swap(budget.cgroup),
            swap_total=swap_total,
        )

    def _usage(self, path: CgroupPath) -> int:
        """What `path` holds that reclaim cannot take back without swap: memory.current minus
        the file cache on the LRU lists (memory.stat ``active_file + inactive_file``). Raises
        `Vanished` if the cgroup is gone; 0 if memory.current cannot be read.

        Why not memory.current itself: it counts the page cache of every file the cgroup
        reads or writes, and the kernel lets that cache grow up to memory.high before it
        reclaims any. It also raises ``high`` in memory.events every time usage is above
        memory.high on the way back to user space, *before* reclaiming (mm/memcontrol.c,
        reclaim_high), not only when reclaim fails. Measured on 6.1: `dd` of 300M to a file in
        a cgroup with memory.high=64M raised ``high`` 781 times with ``anon 0`` and
        memory.current pinned at 64M. Judged on memory.current, a database doing ordinary I/O
        (the cache of its data files) reads as "headroom+high" pressure at its watermark: every
        sidecar evicted, then a controlled restart of a healthy primary.

        Shmem (tmpfs files, PostgreSQL's shared_buffers, shared anonymous mappings) lives on the
        anon LRU lists, not the file ones, so it stays counted: without swap it cannot be
        reclaimed. Kubernetes' "working set" (usage minus inactive_file) is the same idea; active
        file pages are subtracted too, because they are reclaimable as well (after being
        deactivated) and are never what an OOM kill is about.
        """
        sup = self.sup
        assert sup is not None
        try:
            current = sup.fs.read_int(path, "memory.current")
        except Vanished:
            raise
        except OomguardError:
            return 0
        try:
            stat = sup.fs.read_flat(path, "memory.stat")
        except Vanished:
            raise
        except OomguardError:
            return current
        cache = stat.get("active_file", 0) + stat.get("inactive_file", 0)
        return max(0, current - cache)

    def _current(self, path: CgroupPath) -> int:
        """`_usage`, or 0 if the cgroup is gone (a member that vanished holds nothing)."""
        try:
            return self._usage(path)
        except OomguardError:
            return 0

    def _stall(self, budget: Budget, avg10: float, total_us: int) -> float:
        """The stall figure the policy judges: PSI ``some avg10``, but no more than the stall
        rate measured since the previous reading (from the cumulative ``total``), when that
        reading is recent enough to say something.

        Why: avg10 decays over ~10 s, so after the cause of a stall is gone it still reads
        high. Seen on a real kernel: a leaking sidecar throttled at memory.high during its
        stop_timeout drove the budget's avg10 to 51 %; once it was evicted the stall stopped
        (``total`` flat), but the next sample, on avg10 alone, evicted the more critical
        sidecar too, with 34 % headroom. A stall that is still going on shows in both figures.
        Right after an eviction that was in flight the figure is 0 until a rate is measured
        (one sample later): the stall before was the evicted member's.
        """
        sup = self.sup
        assert sup is not None
        now = sup.now
        if budget.psi_rebase:
            # The first reading after an eviction (or controlled restart) that was in flight:
            # the stall until now was the leaving member's, and avg10 is full of it. Judge the
            # budget on the stall measured from here (at the next reading, >= 0.5 s on).
            budget.psi_rebase = False
            budget.psi_at, budget.psi_total_us, budget.psi_recent = now, total_us, 0.0
            return 0.0
        if budget.psi_at is not None and budget.psi_total_us is not None:
            span = now - budget.psi_at
            if span < PSI_MIN_SPAN:
                # Too close to the last reading to measure a rate: keep the last one, and keep
                # that reading as the base for the next.
                return avg10 if budget.psi_recent is None else min(avg10, budget.psi_recent)
            stalled = total_us - budget.psi_total_us
            if span <= PSI_AVG_WINDOW and stalled >= 0:  # < 0: the cgroup was recreated
                budget.psi_recent = min(100.0, 100.0 * stalled / (span * 1e6))
            else:
                budget.psi_recent = None
        budget.psi_at, budget.psi_total_us = now, total_us
        return avg10 if budget.psi_recent is None else min(avg10, budget.psi_recent)

    def _stopping(self, budget: Budget) -> str | None:
        """A member that the pressure response is stopping right now, if any."""
        sup = self.sup
        assert sup is not None
        for name in budget.members:
            rec = sup.services[name].rec
            ours = rec.stop_reason in ("evict", "controlled_restart")
            if rec.state is rp.State.STOPPING and ours:
                return name
        return None

    def _member(self, svc: Service, swap_on: bool) -> pp.Member:
        running = svc.rec.state in (rp.State.RUNNING, rp.State.STARTING) and svc.child is not None
        return pp.Member(
            name=svc.name,
            criticality=svc.criticality,
            current=self._current(svc.cgroup),
            running=running,
            evictable=svc.cfg.evictable and not svc.is_primary,
            is_primary=svc.is_primary,
            swap=self._swap(svc.cgroup) if swap_on else 0,
        )

    def _evaluate(self, budget: Budget, why: str) -> None:
        sup = self.sup
        assert sup is not None
        if sup.shutdown is not None:
            return
        stopping = self._stopping(budget)
        if stopping is not None:
            # An eviction (or a controlled restart) of a member is still in flight: its memory
            # is uncharged only when its processes exit, so the budget reads as pressured as
            # before. Deciding now would evict the next, more critical member for pressure the
            # first eviction is about to relieve (seen on a real kernel: a sidecar slow to
            # exit got its more critical neighbour evicted once the cool-down had passed).
            # The signals stay pending; the next sample judges the budget once it is gone.
            budget.next_at = sup.now + budget.thresholds.sample_interval
            budget.psi_rebase = True
            return
        psi: Pressure | None
        meminfo = _meminfo()
        swap_on = meminfo.get("SwapTotal", 0) > 0
        try:
            limit, current = self._budget_figures(budget, meminfo)
            psi = sup.fs.read_pressure(budget.cgroup)
        except Vanished:
            return
        except OomguardError:
            psi = None  # PSI off (psi=0) or unreadable: headroom and memory.events still work
        sample = pp.BudgetSample(
            name=budget.name,
            current=current,
            limit=limit,
            high_delta=budget.high_delta,
            psi_some_avg10=(
                self._stall(budget, psi.some.avg10, psi.some.total_us) if psi is not None else None
            ),
            psi_fired=budget.psi_fired,
            members=tuple(self._member(sup.services[m], swap_on) for m in budget.members),
        )
        budget.high_delta = 0
        budget.psi_fired = False
        primary = sup.services[sup.primary]
        prim_current = self._current(primary.cgroup)
        watermark = sup.config.primary.watermark
        if (
            budget.name == PRIMARY_BUDGET
            and watermark is not None
            and sample.high_delta > 0
            and watermark * (1 - budget.thresholds.headroom_min) <= prim_current <= watermark
        ):
            # Throttled at memory.high == watermark: reclaim holds the usage just under it, but
            # the primary wants more. That is "over its watermark". Only when its unreclaimable
            # usage is that close: `high` also rises when only page cache reached memory.high.
            prim_current = watermark + 1
        prim_sample = pp.PrimarySample(current=prim_current, watermark=watermark)
        budget.state, actions = pp.evaluate(
            budget.state,
            sample,
            budget.thresholds,
            sup.now,
            sup.config.oomguard.mode,
            primary=prim_sample,
        )
        budget.next_at = pp.next_sample_at(budget.state, budget.thresholds, sup.now)
        for action in actions:
            self._apply(budget, action, why)

    def _apply(self, budget: Budget, action: pp.PressureAction, why: str) -> None:
        sup = self.sup
        assert sup is not None
        if isinstance(action, pp.WouldDo):
            inner = action.action
            kind = {
                pp.Evict: "would_evict",
                pp.Restore: "would_restore",
                pp.ControlledRestart: "would_restart",
            }[type(inner)]
            name = inner.primary if isinstance(inner, pp.ControlledRestart) else inner.name
            reason = getattr(inner, "reason", "clear")
            figs = _fields(budget, inner.figures)
            sup.log.warn(kind, service=name, reason=reason, **figs)
            sup.emit(
                kind, sup.services[name].cgroup, service=name, reason=reason, trigger=why, **figs
            )
            return
        if isinstance(action, pp.Evict):
            svc = sup.services[action.name]
            svc.evictions += 1
            figs = _fields(budget, action.figures)
            sup.log.warn("evict", service=svc.name, reason=action.reason, **figs)
            sup.emit(
                "evict", svc.cgroup, service=svc.name, reason=action.reason, trigger=why, **figs
            )
            sup.feed(svc, rp.Stop("evict"))
        elif isinstance(action, pp.Restore):
            svc = sup.services[action.name]
            figs = _fields(budget, action.figures)
            sup.log.info("restore", service=svc.name, **figs)
            sup.emit("restore", svc.cgroup, service=svc.name, **figs)
            sup.feed(svc, rp.Release())
        elif isinstance(action, pp.ControlledRestart):
            svc = sup.services[action.primary]
            figs = _fields(budget, action.figures)
            sup.log.error("controlled_restart", service=svc.name, reason=action.reason, **figs)
            sup.emit(
                "controlled_restart", svc.cgroup, service=svc.name, reason=action.reason, **figs
            )
            self.restart_pending[svc.name] = sup.now
            sup.feed(svc, rp.Stop("controlled_restart"))


def _fields(budget: Budget, figures: pp.Figures) -> dict[str, Any]:
    """The decision's figures for the log and the event, with the budget's name. The policy's
    figures already carry ``budget`` (its sample's name): passing it again as a keyword beside
    ``**figures`` was a TypeError that crashed the supervisor on its first pressure action."""
    return {**figures, "budget": budget.name}
