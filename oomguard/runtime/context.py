"""What an extension (the pressure response, metrics) sees of the supervisor: a narrow context,
like oomd's OomdContext, instead of the Supervisor itself.

An extension gets `now`, a read-only view of the services and ``[slice]``s, the CgroupFS, the
log, `emit`, a few actions (evict, release, a controlled restart of the primary, stop), and
`add_reader`/`remove_reader` for its own fds (each with its own handler, `events.loop`). It
never holds the supervisor, so it can be driven on the host by a fake context with a fake
clock (tests/runtime/test_pressure_response.py).

The views are plain frozen dataclasses around the compiled plan's specs (`oomguard.plan`:
limits, thresholds, where a service lives) and the cgroups the tree builder made
(`build_views`); the live part (state, pid) is filled in on each `service()` call, so a view
never goes stale behind the extension's back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from oomguard.policy import restart as rp
from oomguard.proc import meminfo as read_meminfo

if TYPE_CHECKING:
    from collections.abc import Mapping

    from oomguard.cgroup.fs import CgroupFS
    from oomguard.cgroup.path import CgroupPath
    from oomguard.events.loop import Handler
    from oomguard.observe.log import Logger
    from oomguard.plan import BudgetSpec, Plan, PressureSpec, ServiceSpec, ShedSpec
    from oomguard.policy.pressure import Mode
    from oomguard.runtime.supervisor import Service, Supervisor


@dataclass(frozen=True)
class SliceView:
    """A ``[slice]``: its compiled spec (limits, members, pressure settings) and its cgroup."""

    spec: BudgetSpec
    cgroup: CgroupPath

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def memory_max(self) -> int | None:
        return self.spec.memory_max

    @property
    def memory_high(self) -> int | None:
        return self.spec.memory_high

    @property
    def pressure(self) -> PressureSpec:
        return self.spec.pressure

    @property
    def members(self) -> tuple[str, ...]:
        """The services inside it (at any depth), in file order."""
        return self.spec.members


@dataclass(frozen=True)
class ServiceView:
    """A service, read-only: its compiled spec, its cgroup and, as of the `Context.service`
    call, its state."""

    spec: ServiceSpec
    cgroup: CgroupPath
    state: rp.State = rp.State.STOPPED
    stop_reason: str | None = None
    #: The main process, while there is one.
    pid: int | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_primary(self) -> bool:
        return self.spec.is_primary

    @property
    def criticality(self) -> int:
        return self.spec.criticality

    @property
    def evictable(self) -> bool:
        return self.spec.evictable

    @property
    def slices(self) -> tuple[str, ...]:
        """The ``[slice]``s it lies in, outermost first."""
        return self.spec.slices

    @property
    def memory_high(self) -> int | None:
        return self.spec.limits.high

    @property
    def watermark(self) -> int | None:
        """The primary's watermark (a controlled restart above it); None for a sidecar."""
        return self.spec.watermark

    @property
    def pressure(self) -> PressureSpec:
        return self.spec.pressure

    @property
    def shed(self) -> ShedSpec | None:
        """The primary's ``[service.X.shed]``; None: no shed rung (always for a sidecar)."""
        return self.spec.shed

    @property
    def running(self) -> bool:
        """Up (starting or running) with a main process."""
        return self.state in (rp.State.RUNNING, rp.State.STARTING) and self.pid is not None


class Context(Protocol):
    """The narrow context. Everything is called from the loop thread; nothing may block."""

    fs: CgroupFS
    log: Logger

    @property
    def now(self) -> float:
        """The monotonic time of this loop turn (read once per turn)."""

    @property
    def mode(self) -> Mode: ...

    @property
    def primary(self) -> str:
        """The primary's name."""

    @property
    def root(self) -> CgroupPath | None:
        """The tree's root; None in degraded mode (no slice tree)."""

    @property
    def stopping(self) -> bool:
        """A shutdown has begun."""

    @property
    def changed(self) -> bool:
        """Some service's state changed since state.json was last written."""

    @property
    def tree_pressure(self) -> PressureSpec:
        """``[oomguard.pressure]``: the settings of the tree as a whole."""

    def names(self) -> tuple[str, ...]:
        """The services, in start order."""

    def service(self, name: str) -> ServiceView: ...

    def slices(self) -> Mapping[str, SliceView]:
        """The ``[slice]``s, in file order."""

    def meminfo(self) -> dict[str, int]:
        """The machine's memory figures (/proc/meminfo, bytes); {} if unreadable."""

    def emit(self, kind: str, cgroup: CgroupPath | None, **fields: Any) -> None:
        """Append an event to the event log (never fails the loop)."""

    def evict(self, name: str) -> None:
        """Stop a sidecar for pressure; it stays down until `release`."""

    def release(self, name: str) -> None:
        """The pressure that evicted `name` has cleared: it may start again."""

    def restart_primary(self) -> None:
        """Stop the primary with its stop signal and start it again (no backoff)."""

    def count_shed(self, name: str) -> None:
        """A process of `name`'s slice was sent its shed signal (state.json, metrics)."""

    def state_services(self) -> dict[str, Any]:
        """Per-service state in state.json's "services" shape."""

    def output_dropped(self) -> dict[tuple[str, str], int]:
        """Lines of output dropped, by (source, stream)."""

    def add_reader(self, fd: int, mask: int, handler: Handler) -> None:
        """Watch `fd` in the loop; `handler(mask)` runs while it is ready. The extension owns
        the fd and calls `remove_reader` before closing it."""

    def remove_reader(self, fd: int) -> None: ...


class Extension(Protocol):
    """What plugs into the loop besides the restart policy: the pressure response, metrics.

    oomd's lesson: the engine knows only a tiny contract. Each method is called from the loop
    thread; none may block. An extension's fds carry their own handlers (`add_reader`).
    """

    def setup(self, ctx: Context) -> None:
        """After the tree is built and services are known, before the first start."""

    def deadline(self) -> float | None:
        """Earliest monotonic time this extension needs a `tick` (None: none)."""

    def on_counters(self, path: CgroupPath, delta: dict[str, int]) -> None:
        """memory.events.local of `path` rose by `delta` (high/max: throttling, reclaim)."""

    def tick(self, now: float) -> None:
        """Called every loop turn after events are handled (cheap when nothing is due)."""

    def after_turn(self) -> None:
        """Called once per loop turn after state changes were applied (e.g. publish metrics)."""

    def close(self) -> None:
        """Release fds. Called exactly once, also on error paths."""


# -- built from the plan -----------------------------------------------------------------------


def build_views(
    plan: Plan, cgroups: Mapping[str, CgroupPath], slice_paths: Mapping[str, CgroupPath]
) -> tuple[dict[str, ServiceView], dict[str, SliceView]]:
    """The views of the plan's services that have a cgroup in `cgroups` (in start order), and
    of its ``[slice]``s that have one in `slice_paths` (none when degraded: no slice tree)."""
    services = {s.name: ServiceView(s, cgroups[s.name]) for s in plan.services if s.name in cgroups}
    slices = {
        b.name: SliceView(b, slice_paths[b.name]) for b in plan.slices if b.name in slice_paths
    }
    return services, slices


# -- the supervisor's context ------------------------------------------------------------------


class SupervisorContext:
    """`Context` over a running `Supervisor`: the one place that knows its attributes."""

    def __init__(self, sup: Supervisor, plan: Plan) -> None:
        self._sup = sup
        self._plan = plan
        self.fs = sup.fs
        self.log = sup.log
        cgroups = {name: svc.cgroup for name, svc in sup.services.items()}
        paths = sup.built.paths if sup.built is not None else {}
        self._services, self._slices = build_views(plan, cgroups, paths)

    @property
    def now(self) -> float:
        return self._sup.now

    @property
    def mode(self) -> Mode:
        return self._plan.mode

    @property
    def primary(self) -> str:
        return self._sup.primary

    @property
    def root(self) -> CgroupPath | None:
        built = self._sup.built
        return built.root if built is not None else None

    @property
    def stopping(self) -> bool:
        return self._sup.shutdown is not None

    @property
    def changed(self) -> bool:
        return self._sup.dirty

    @property
    def tree_pressure(self) -> PressureSpec:
        return self._plan.pressure

    def names(self) -> tuple[str, ...]:
        return tuple(self._sup.services)

    def service(self, name: str) -> ServiceView:
        return live_view(self._services[name], self._sup.services[name])

    def slices(self) -> Mapping[str, SliceView]:
        return self._slices

    def meminfo(self) -> dict[str, int]:
        return read_meminfo()

    def emit(self, kind: str, cgroup: CgroupPath | None, **fields: Any) -> None:
        self._sup.emit(kind, cgroup, **fields)

    def evict(self, name: str) -> None:
        svc = self._sup.services[name]
        svc.evictions += 1
        self._sup.feed(svc, rp.Stop("evict"))

    def release(self, name: str) -> None:
        self._sup.feed(self._sup.services[name], rp.Release())

    def restart_primary(self) -> None:
        sup = self._sup
        sup.feed(sup.services[sup.primary], rp.Stop("controlled_restart"))

    def count_shed(self, name: str) -> None:
        self._sup.services[name].sheds += 1
        self._sup.changed()

    def state_services(self) -> dict[str, Any]:
        return self._sup.state_services()

    def output_dropped(self) -> dict[tuple[str, str], int]:
        return self._sup.output_dropped()

    def add_reader(self, fd: int, mask: int, handler: Handler) -> None:
        self._sup.loop.add(fd, mask, handler)

    def remove_reader(self, fd: int) -> None:
        self._sup.loop.remove(fd)


def live_view(static: ServiceView, svc: Service) -> ServiceView:
    """`static` with the service's state as of now."""
    return dataclasses.replace(
        static,
        state=svc.rec.state,
        stop_reason=svc.rec.stop_reason,
        pid=svc.child.pid if svc.child is not None else None,
    )
