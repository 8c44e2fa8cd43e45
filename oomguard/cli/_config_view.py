"""A Plan seen through the attribute names the runtime still reads from a Config.

Temporary: `runtime/supervisor.py`, `runtime/pressure.py` and `runtime/metrics.py` take a
`Config` today and are being switched to read the Plan (lanes `split` and `engine`). Until then
the daemon, which has no pydantic to build a Config with, hands them this read-only view, built
from the Plan alone. Delete it once `Supervisor` takes a `Plan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from oomguard.cgroup.spec import TreeSpec
    from oomguard.config.model import Config
    from oomguard.plan import Plan, PressureSpec, PsiTriggerSpec, ServiceSpec


@dataclass(frozen=True)
class _Pressure:
    headroom_min: float
    psi_some_avg10: float
    hysteresis: float
    cooldown: float
    sample_interval: float
    psi_trigger: PsiTriggerSpec


def _pressure(spec: PressureSpec) -> _Pressure:
    t = spec.thresholds
    return _Pressure(
        t.headroom_min, t.psi_some_avg10, t.hysteresis, t.cooldown, t.sample_interval,
        spec.psi_trigger,
    )  # fmt: skip


class _Service:
    """A ServiceSpec under a ServiceConfig's attribute names."""

    def __init__(self, spec: ServiceSpec) -> None:
        r = spec.restart
        self.command = spec.argv
        self.env = spec.env
        self.inherit_env = spec.inherit_env
        self.cwd = Path(spec.cwd) if spec.cwd is not None else None
        self.user, self.group, self.log = spec.user, spec.group, spec.log
        self.pressure_watch = spec.pressure_watch
        self.restart, self.start_secs, self.essential = r.restart, r.start_secs, r.essential
        self.backoff_initial, self.backoff_max = r.backoff_initial, r.backoff_max
        self.backoff_reset, self.max_restarts = r.backoff_reset, r.max_restarts
        self.restart_window, self.stop_timeout = r.restart_window, r.stop_timeout
        self.stop_signal = r.stop_signal
        self.depends_on = spec.depends_on
        self.survive_partial_kill = spec.survive_partial_kill
        self.memory_max, self.memory_high = spec.limits.max, spec.limits.high
        self.criticality, self.is_primary = spec.criticality, spec.is_primary
        self.evictable, self.watermark = spec.evictable, spec.watermark
        self.slice = spec.path[-2] if len(spec.path) > 1 else None
        # The ShedSpec has a ShedConfig's attribute names (and the primary's stop_timeout).
        self.shed = spec.shed


@dataclass(frozen=True)
class _Slice:
    memory_max: int | None
    memory_high: int | None
    parent: str | None


@dataclass(frozen=True)
class _Top:
    mode: str
    state_dir: Path
    memory_max: int | None
    log_format: str
    metrics_listen: str | None
    cgroup: str | None
    require_cgroups: bool
    reserve: int
    pressure: _Pressure


class _ConfigView:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.primary_name = plan.primary
        tree = plan.tree
        self.oomguard = _Top(
            plan.mode, Path(plan.state_dir), tree.memory_max, plan.log_format,
            plan.metrics_listen, tree.root, plan.require_cgroups, tree.reserve,
            _pressure(plan.pressure),
        )  # fmt: skip
        self.service = {n: _Service(plan.service(n)) for n in _file_order(plan)}
        self.slice = {
            b.name: _Slice(b.memory_max, b.memory_high, b.path[-2] if len(b.path) > 1 else None)
            for b in plan.slices
        }
        self._budgets = {b.name: b for b in plan.slices}
        # The HooksSpec has the HooksConfig's attribute names.
        self.hooks = plan.hooks

    @property
    def primary(self) -> _Service:
        return self.service[self.primary_name]

    def start_order(self) -> list[str]:
        return self.plan.names()

    def stop_order(self) -> list[str]:
        return self.plan.stop_order()

    def tree_spec(self) -> TreeSpec:
        return self.plan.tree

    def oom_score_adj(self, name: str) -> int:
        return self.plan.service(name).oom_score_adj

    def slice_chain(self, name: str) -> list[str]:
        if name in self._budgets:
            return list(self._budgets[name].path)
        return list(self.plan.service(name).slices)

    def pressure_for(self, name: str) -> _Pressure:
        if name in self._budgets:
            return _pressure(self._budgets[name].pressure)
        return _pressure(self.plan.service(name).pressure)


def _file_order(plan: Plan) -> list[str]:
    """Services in an order that keeps each slice's members in config file order (the order
    `runtime/pressure.py` lists a budget's members in): start order, then each member moved
    after the members listed before it."""
    order = plan.names()
    for budget in plan.slices:
        slots = sorted(order.index(m) for m in budget.members)
        for slot, member in zip(slots, budget.members, strict=True):
            order[slot] = member
    return order


def config_view(plan: Plan) -> Config:
    """The view, typed as the Config the runtime's signatures still name."""
    return cast("Config", _ConfigView(plan))
