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
  signal (but not proof of pressure: see `headroom.usage`, page cache alone raises it);
* a PSI trigger per budget on memory.pressure (EPOLLPRI only: the fd is always readable);
  the policy's ``psi_some_avg10`` is avg10 capped by the stall rate since the previous reading
  (`stall_figure`: avg10 lags ~10 s behind an eviction that ended the stall);
* headroom (the budget's *unreclaimable* usage against the limit, `headroom.usage`) is read every
  ``sample_interval`` (default 1 s, minimum 1 s) while a budget is pressured or has evictions
  outstanding; the rooms around the primary are sampled adaptively, from every 10 s when idle
  (`runtime.autohigh`).

Why and where oomguard sets memory.high itself (``auto_high``): `runtime.autohigh`. How the
figures are read (unreclaimable usage, the nearest limit, swap): `runtime.headroom`. Headroom
counts swap where it exists (`pp.with_swap`, `pp.machine_budget`).

The response sees the supervisor only through its narrow `runtime.context.Context` (services,
fs, log, emit, evict/release/restart_primary, add_reader), so it runs on the host against a
fake context and a fake clock (tests/runtime/test_pressure_response.py).
"""

from __future__ import annotations

import contextlib
import select
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from oomguard.errors import OomguardError, Vanished
from oomguard.events.psi import PsiWatch
from oomguard.policy import pressure as pp
from oomguard.policy import restart as rp
from oomguard.runtime import headroom
from oomguard.runtime.autohigh import PRIMARY_BUDGET, TREE_BUDGET, AutoHigh, sidecar_groups
from oomguard.runtime.shed import ShedRung
from oomguard.units import format_size

if TYPE_CHECKING:
    from oomguard.cgroup.parse import Pressure
    from oomguard.cgroup.path import CgroupPath
    from oomguard.plan import PressureSpec
    from oomguard.runtime.context import Context

__all__ = ["PRIMARY_BUDGET", "TREE_BUDGET", "Budget", "PressureResponse", "sidecar_groups"]

#: PSI's avg10 is an exponentially weighted average over ~10 s: a reading older than this says
#: nothing that avg10 does not.
PSI_AVG_WINDOW = 10.0
#: Below this gap between two readings their difference is too noisy to be a rate.
PSI_MIN_SPAN = 0.5


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
    #: The previous PSI reading (`stall_figure`): when, memory.pressure ``some total`` (µs), and
    #: the stall rate (%) between the two readings before that.
    psi_at: float | None = None
    psi_total_us: int | None = None
    psi_recent: float | None = None
    #: An eviction of a member was in flight: measure the stall afresh from the next reading.
    psi_rebase: bool = False


class PressureResponse:
    """Graduated response: evict the least critical sidecar, restore after hysteresis, and
    restart the primary in a controlled way as the last resort. ``mode=observe`` only logs.

    An `Extension`: it sees the supervisor only through its `Context`."""

    def __init__(self) -> None:
        self._ctx: Context | None = None
        self.budgets: dict[str, Budget] = {}
        self.restart_pending: dict[str, float] = {}
        #: The sidecar groups' automatic memory.high (None until set up with a tree).
        self.auto: AutoHigh | None = None
        #: The shed rung of the primary's ladder (None: no ``[service.X.shed]``).
        self.shed: ShedRung | None = None

    @property
    def ctx(self) -> Context:
        if self._ctx is None:
            raise RuntimeError("the pressure response is not set up")
        return self._ctx

    # -- Extension ----------------------------------------------------------------------------

    def setup(self, ctx: Context) -> None:
        self._ctx = ctx
        root = ctx.root
        if root is None:
            # Degraded (no slice tree): there is no budget to measure or act on.
            ctx.log.warn("pressure", response="off", reason="no slice tree (degraded mode)")
            return
        primary = ctx.service(ctx.primary)
        self.auto = AutoHigh(ctx)
        caps: dict[str, int | None] = {}
        for name, sl in ctx.slices().items():
            if not sl.members:
                continue
            if name not in primary.slices:
                # Never on a slice the primary lives in: its memory.high would throttle the
                # primary (that slice is a `Room`; the sidecar groups in it get the highs).
                caps[name] = self.auto.static_high(sl)
            psi = ctx.service(sl.members[0]).pressure
            self._add(Budget(name, sl.cgroup, sl.members, sl.pressure.thresholds), psi)
        self.auto.setup(root, caps)
        names = ctx.names()
        tree = ctx.tree_pressure
        self._add(Budget(TREE_BUDGET, root, names, tree.thresholds), tree)
        watermark = primary.watermark
        if watermark is not None:
            thresholds = primary.pressure.thresholds
            self.shed = ShedRung.create(ctx)
            if self.shed is not None:
                thresholds = replace(thresholds, shed_cooldown=self.shed.settings.cooldown)
            budget = Budget(
                PRIMARY_BUDGET, primary.cgroup, names, thresholds, fixed_limit=watermark
            )
            self._add(budget, ctx.service(names[0]).pressure)
        ctx.log.info(
            "pressure",
            budgets=",".join(self.budgets),
            mode=ctx.mode,
            watermark=format_size(watermark) if watermark is not None else "-",
            shed="on" if self.shed is not None else "off",
        )

    def deadline(self) -> float | None:
        due = [b.next_at for b in self.budgets.values() if b.next_at is not None]
        if self.auto is not None and self.auto.follow_at is not None:
            due.append(self.auto.follow_at)
        return min(due) if due else None

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
        if self.auto is not None:
            self.auto.on_counters(path)

    def tick(self, now: float) -> None:
        for budget in self.budgets.values():
            if budget.next_at is not None and budget.next_at <= now:
                self._evaluate(budget, "sample")
        auto = self.auto
        if auto is None or self._ctx is None:
            return
        if self.ctx.stopping:
            auto.follow_at = None  # stopping: the highs no longer matter, and no more wake-ups
        elif auto.follow_at is not None and auto.follow_at <= now:
            self._follow(auto)

    def after_turn(self) -> None:
        ctx = self._ctx
        if ctx is None:
            return
        for name, since in list(self.restart_pending.items()):
            svc = ctx.service(name)
            if svc.state is rp.State.RUNNING:
                downtime = ctx.now - since
                del self.restart_pending[name]
                ctx.log.warn("primary_back", service=name, downtime=f"{downtime:.3f}s")
                ctx.emit("restarted", svc.cgroup, service=name, downtime=round(downtime, 3))
            elif svc.state in (rp.State.FATAL, rp.State.EXITED, rp.State.STOPPED):
                del self.restart_pending[name]

    def close(self) -> None:
        for budget in self.budgets.values():
            self._drop_trigger(budget)
        if self.shed is not None:
            self.shed.close()

    # -- PSI triggers -------------------------------------------------------------------------

    def _add(self, budget: Budget, psi: PressureSpec) -> None:
        ctx = self.ctx
        self.budgets[budget.name] = budget
        try:
            trig = psi.psi_trigger
            budget.trigger = PsiWatch(
                ctx.fs.file_path(budget.cgroup, "memory.pressure"),
                trig.kind,
                trig.stall,
                trig.window,
            )
        except OomguardError as err:
            # PSI may be off (psi=0 on the kernel command line) or need privileges for short
            # windows: the budget still works on memory.events alone.
            ctx.log.warn("psi_unavailable", budget=budget.name, error=str(err))
            return
        name = budget.name
        ctx.add_reader(
            budget.trigger.fileno(), select.EPOLLPRI, lambda mask: self._on_psi(name, mask)
        )

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

    def _drop_trigger(self, budget: Budget) -> None:
        if budget.trigger is None or self._ctx is None:
            return
        fd = budget.trigger.fileno()
        with contextlib.suppress(Exception):
            self._ctx.remove_reader(fd)
        budget.trigger.close()
        budget.trigger = None

    # -- the rooms around the primary -----------------------------------------------------------

    def _follow(self, auto: AutoHigh) -> None:
        for room in auto.follow():
            budget = self.budgets.get(room.name)
            margin = room.margin
            if budget is not None and budget.next_at is None and margin is not None and margin < 0:
                # Below the threshold with no kernel event yet (the primary grew, or something
                # outside the tree did): judge the budget on this sample too.
                self._evaluate(budget, "sample")

    # -- judging a budget -----------------------------------------------------------------------

    def _stopping(self, budget: Budget) -> str | None:
        """A member that the pressure response is stopping right now, if any."""
        for name in budget.members:
            svc = self.ctx.service(name)
            ours = svc.stop_reason in ("evict", "controlled_restart")
            if svc.state is rp.State.STOPPING and ours:
                return name
        return None

    def _member(self, name: str, swap_on: bool) -> pp.Member:
        svc = self.ctx.service(name)
        fs = self.ctx.fs
        return pp.Member(
            name=svc.name,
            criticality=svc.criticality,
            current=headroom.usage_or_zero(fs, svc.cgroup),
            running=svc.running,
            evictable=svc.evictable and not svc.is_primary,
            is_primary=svc.is_primary,
            swap=headroom.swap(fs, svc.cgroup) if swap_on else 0,
        )

    def _evaluate(self, budget: Budget, why: str) -> None:
        ctx = self.ctx
        if ctx.stopping:
            return
        held = self._stopping(budget) or (self.shed and self.shed.holding(budget.members))
        if held:
            # An eviction (or a controlled restart) of a member is still in flight: its memory
            # is uncharged only when its processes exit, so the budget reads as pressured as
            # before. Deciding now would evict the next, more critical member for pressure the
            # first eviction is about to relieve (seen on a real kernel: a sidecar slow to
            # exit got its more critical neighbour evicted once the cool-down had passed).
            # The signals stay pending; the next sample judges the budget once it is gone.
            budget.next_at = ctx.now + budget.thresholds.sample_interval
            budget.psi_rebase = True
            return
        sample = self._sample(budget)
        if sample is None:
            return
        budget.high_delta = 0
        budget.psi_fired = False
        budget.state, actions = pp.evaluate(
            budget.state,
            sample,
            budget.thresholds,
            ctx.now,
            ctx.mode,
            primary=self._primary_sample(budget, sample),
        )
        budget.next_at = pp.next_sample_at(budget.state, budget.thresholds, ctx.now)
        for action in actions:
            self._apply(budget, action, why)

    def _sample(self, budget: Budget) -> pp.BudgetSample | None:
        """The budget's figures now; None if its cgroup is gone (a normal outcome)."""
        ctx = self.ctx
        psi: Pressure | None
        meminfo = ctx.meminfo()
        swap_on = meminfo.get("SwapTotal", 0) > 0
        try:
            limit, current = self._budget_figures(budget, meminfo)
            psi = ctx.fs.read_pressure(budget.cgroup)
        except Vanished:
            return None
        except OomguardError:
            psi = None  # PSI off (psi=0) or unreadable: headroom and memory.events still work
        return pp.BudgetSample(
            name=budget.name,
            current=current,
            limit=limit,
            high_delta=budget.high_delta,
            psi_some_avg10=(
                stall_figure(budget, ctx.now, psi.some.avg10, psi.some.total_us)
                if psi is not None
                else None
            ),
            psi_fired=budget.psi_fired,
            members=tuple(self._member(m, swap_on) for m in budget.members),
        )

    def _budget_figures(self, budget: Budget, meminfo: dict[str, int]) -> tuple[int | None, int]:
        """(limit, usage) of a budget. The primary's watermark: the fixed watermark against the
        primary's usage. The tree: `headroom.room_figures`, down to the machine's memory when
        nothing above has a limit. A ``[slice]``: `headroom.slice_figures`."""
        fs = self.ctx.fs
        if budget.fixed_limit is not None:
            return budget.fixed_limit, headroom.usage(fs, budget.cgroup)
        if budget.name == TREE_BUDGET:
            return headroom.room_figures(fs, budget.cgroup, meminfo, machine=True)
        return headroom.slice_figures(fs, budget.cgroup, meminfo)

    def _primary_sample(self, budget: Budget, sample: pp.BudgetSample) -> pp.PrimarySample:
        ctx = self.ctx
        primary = ctx.service(ctx.primary)
        prim_current = headroom.usage_or_zero(ctx.fs, primary.cgroup)
        watermark = primary.watermark
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
        shed = None
        if self.shed is not None and budget.name == PRIMARY_BUDGET:
            shed = self.shed.candidate(budget.state, sample, budget.thresholds)
        return pp.PrimarySample(current=prim_current, watermark=watermark, shed=shed)

    # -- acting ---------------------------------------------------------------------------------

    def _apply(self, budget: Budget, action: pp.PressureAction, why: str) -> None:
        ctx = self.ctx
        if isinstance(action, pp.WouldDo):
            self._would_do(budget, action, why)
        elif isinstance(action, pp.Shed):
            assert self.shed is not None  # only the rung's candidate becomes a Shed
            self.shed.apply(action, _fields(budget, action.figures), why)
        elif isinstance(action, pp.Evict):
            svc = ctx.service(action.name)
            figs = _fields(budget, action.figures)
            ctx.log.warn("evict", service=svc.name, reason=action.reason, **figs)
            ctx.emit(
                "evict", svc.cgroup, service=svc.name, reason=action.reason, trigger=why, **figs
            )
            ctx.evict(svc.name)
        elif isinstance(action, pp.Restore):
            svc = ctx.service(action.name)
            figs = _fields(budget, action.figures)
            ctx.log.info("restore", service=svc.name, **figs)
            ctx.emit("restore", svc.cgroup, service=svc.name, **figs)
            ctx.release(svc.name)
        elif isinstance(action, pp.ControlledRestart):
            svc = ctx.service(action.primary)
            figs = _fields(budget, action.figures)
            ctx.log.error("controlled_restart", service=svc.name, reason=action.reason, **figs)
            ctx.emit(
                "controlled_restart", svc.cgroup, service=svc.name, reason=action.reason, **figs
            )
            self.restart_pending[svc.name] = ctx.now
            ctx.restart_primary()

    def _would_do(self, budget: Budget, action: pp.WouldDo, why: str) -> None:
        """Observe mode: say what enforce mode would do, and do nothing."""
        ctx = self.ctx
        inner = action.action
        kind = {
            pp.Evict: "would_evict",
            pp.Restore: "would_restore",
            pp.ControlledRestart: "would_restart",
            pp.Shed: "would_shed",
        }[type(inner)]
        name = inner.name if isinstance(inner, pp.Evict | pp.Restore) else inner.primary
        reason = getattr(inner, "reason", "clear")
        figs = _fields(budget, inner.figures)
        ctx.log.warn(kind, service=name, reason=reason, **figs)
        ctx.emit(kind, ctx.service(name).cgroup, service=name, reason=reason, trigger=why, **figs)


def stall_figure(budget: Budget, now: float, avg10: float, total_us: int) -> float:
    """The stall figure the policy judges: PSI ``some avg10``, but no more than the stall
    rate measured since the previous reading (from the cumulative ``total``), when that
    reading is recent enough to say something. Updates the budget's PSI readings.

    Why: avg10 decays over ~10 s, so after the cause of a stall is gone it still reads
    high. Seen on a real kernel: a leaking sidecar throttled at memory.high during its
    stop_timeout drove the budget's avg10 to 51 %; once it was evicted the stall stopped
    (``total`` flat), but the next sample, on avg10 alone, evicted the more critical
    sidecar too, with 34 % headroom. A stall that is still going on shows in both figures.
    Right after an eviction that was in flight the figure is 0 until a rate is measured
    (one sample later): the stall before was the evicted member's.
    """
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


def _fields(budget: Budget, figures: pp.Figures) -> dict[str, Any]:
    """The decision's figures for the log and the event, with the budget's name. The policy's
    figures already carry ``budget`` (its sample's name): passing it again as a keyword beside
    ``**figures`` was a TypeError that crashed the supervisor on its first pressure action."""
    return {**figures, "budget": budget.name}
