"""``compile_plan(config) -> Plan``: the one place a validated Config becomes runtime values.

Run once, after validation. Every default, derived figure and inherited setting is resolved
here (role defaults, oom_score_adj, the primary's memory.low, pressure overrides, start order),
so the runtime reads plain values and never looks at a config model or re-checks a range: the
config's field types and cross-field checks already bound every value the Plan holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from oomguard.plan import (
    BudgetSpec,
    HooksSpec,
    Plan,
    PressureSpec,
    PsiTriggerSpec,
    ReadySpec,
    ServiceSpec,
    ShedSpec,
)
from oomguard.policy.pressure import Thresholds
from oomguard.policy.restart import RestartParams

if TYPE_CHECKING:
    from oomguard.cgroup.spec import Limits
    from oomguard.config.model import (
        Config,
        PressureConfig,
        PsiTrigger,
        ReadyConfig,
        ServiceConfig,
    )

#: The primary's rank among services: above every sidecar's criticality (0..99).
PRIMARY_CRITICALITY = 100


def compile_plan(config: Config) -> Plan:
    """The Plan of a validated config."""
    top = config.oomguard
    tree = config.tree_spec()
    limits = {spec.name: spec.limits for spec in tree.slices}
    return Plan(
        tree=tree,
        services=tuple(_service(config, name, limits[name]) for name in config.start_order()),
        primary=config.primary_name,
        slices=tuple(_budget(config, name) for name in config.slice),
        pressure=pressure_spec(top.pressure),
        mode=top.mode,
        log_format=top.log_format,
        state_dir=str(top.state_dir),
        metrics_listen=top.metrics_listen,
        require_cgroups=top.require_cgroups,
        hooks=hooks_spec(config),
    )


def hooks_spec(config: Config) -> HooksSpec:
    h = config.hooks
    return HooksSpec(
        before_evict=h.before_evict,
        before_shed=h.before_shed,
        before_restart=h.before_restart,
        after_oom_kill=h.after_oom_kill,
        timeout=h.timeout,
    )


def shed_spec(svc: ServiceConfig) -> ShedSpec | None:
    """The primary's shed rung (the checks refuse it on a sidecar). A shed process gets as
    long to exit as the primary itself would to stop."""
    shed = svc.shed
    if shed is None or not svc.is_primary:
        return None
    return ShedSpec(
        signal=int(shed.signal),
        exclude_comm=tuple(shed.exclude_comm),
        min_size=shed.min_size,
        cooldown=shed.cooldown,
        wait=svc.stop_timeout,
    )


def restart_params(svc: ServiceConfig) -> RestartParams:
    """How the restart policy treats ``svc``."""
    return RestartParams(
        restart=svc.restart,
        start_secs=svc.start_secs,
        backoff_initial=svc.backoff_initial,
        backoff_max=svc.backoff_max,
        backoff_reset=svc.backoff_reset,
        max_restarts=svc.max_restarts,
        restart_window=svc.restart_window,
        essential=svc.essential,
        stop_timeout=svc.stop_timeout,
        stop_signal=int(svc.stop_signal),
        ready_timeout=svc.ready.timeout if svc.ready is not None else None,
    )


def ready_spec(cfg: ReadyConfig | None) -> ReadySpec | None:
    """``[service.X.ready]`` as plain values; a tcp host of "localhost" becomes 127.0.0.1."""
    if cfg is None:
        return None
    address: tuple[str, int] | None = None
    if cfg.tcp is not None:
        host, _, port = cfg.tcp.rpartition(":")
        host = host.strip("[]")
        address = ("127.0.0.1" if host == "localhost" else host, int(port))
    return ReadySpec(
        kind=cfg.kind,
        interval=cfg.interval,
        timeout=cfg.timeout,
        command=cfg.command or (),
        address=address,
        watchdog=cfg.watchdog,
    )


def pressure_spec(cfg: PressureConfig) -> PressureSpec:
    return PressureSpec(
        thresholds=Thresholds(
            headroom_min=cfg.headroom_min,
            psi_some_avg10=cfg.psi_some_avg10,
            hysteresis=cfg.hysteresis,
            cooldown=cfg.cooldown,
            sample_interval=cfg.sample_interval,
        ),
        psi_trigger=psi_trigger_spec(cfg.psi_trigger),
    )


def psi_trigger_spec(trigger: PsiTrigger) -> PsiTriggerSpec:
    return PsiTriggerSpec(kind=trigger.kind, stall=trigger.stall, window=trigger.window)


def _service(config: Config, name: str, limits: Limits) -> ServiceSpec:
    svc = config.service[name]
    primary = svc.is_primary
    return ServiceSpec(
        name=name,
        is_primary=primary,
        argv=svc.command,
        env=dict(svc.env),
        inherit_env=svc.inherit_env,
        cwd=str(svc.cwd) if svc.cwd is not None else None,
        user=svc.user,
        group=svc.group,
        log=svc.log,
        pressure_watch=svc.pressure_watch,
        restart=restart_params(svc),
        depends_on=svc.depends_on,
        path=config.slice_path(name),
        limits=limits,
        oom_score_adj=config.oom_score_adj(name),
        criticality=PRIMARY_CRITICALITY if primary else svc.criticality,
        # The checks refuse `evictable` on the primary; its default is False already.
        evictable=svc.evictable and not primary,
        survive_partial_kill=svc.survive_partial_kill,
        watermark=svc.watermark if primary else None,
        pressure=pressure_spec(config.pressure_for(name)),
        ready=ready_spec(svc.ready),
        shed=shed_spec(svc),
    )


def _budget(config: Config, name: str) -> BudgetSpec:
    sl = config.slice[name]
    return BudgetSpec(
        name=name,
        path=config.slice_path(name),
        members=tuple(s for s in config.service if name in config.slice_chain(s)),
        memory_max=sl.memory_max,
        memory_high=sl.memory_high,
        pressure=pressure_spec(config.pressure_for(name)),
    )
