"""The services' lifecycle: made from the plan, started, signalled, killed, reaped, stopped in
dependency order.

The restart policy (policy/restart.py) decides; this module carries its actions out (`feed`):
a spawn through the launcher, a signal, a kill through the placement (a slice's cgroup.kill or,
degraded, a process group), a fatal exit ending the run. Exits come from the reaper, the only
waitpid; the placement says whether an exit was an OOM kill. Each service's pidfd is read by
the loop with this module's handler.
"""

from __future__ import annotations

import base64
import os
import select
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from oomguard import proc
from oomguard.errors import LaunchError
from oomguard.policy import oom, ranking
from oomguard.policy import restart as rp
from oomguard.runtime import launcher
from oomguard.runtime.publish import Shutdown
from oomguard.runtime.service import Service

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from oomguard.cgroup.fs import CgroupFS
    from oomguard.cgroup.path import CgroupPath
    from oomguard.observe.log import Logger
    from oomguard.plan import Plan
    from oomguard.runtime.output import OutputPump
    from oomguard.runtime.placement import Placement
    from oomguard.runtime.reaper import Reaper


class Host(Protocol):
    """What the lifecycle needs from the supervisor around it."""

    @property
    def now(self) -> float:
        """The loop turn's monotonic time."""

    @property
    def log(self) -> Logger: ...

    @property
    def fs(self) -> CgroupFS: ...

    def emit(self, kind: str, cgroup: CgroupPath | None, **fields: Any) -> None:
        """Append to the event log (marks the state changed)."""

    def changed(self) -> None:
        """A service's state changed: state.json is to be written again."""

    def add_reader(self, fd: int, mask: int, handler: Callable[[int], None]) -> None: ...

    def remove_reader(self, fd: int) -> None: ...


@dataclass
class Identity:
    """Who this run is, as its services see it."""

    #: This run's token in every service's $OOMGUARD_INSTANCE (runtime/survivors.py).
    instance: str
    #: Wall-clock time, for what humans read (started_at).
    wall: Callable[[], float]


class Lifecycle:
    """Every service of one run, from its first start to its last exit."""

    def __init__(
        self,
        plan: Plan,
        placement: Placement,
        host: Host,
        reaper: Reaper,
        identity: Identity,
    ) -> None:
        self.plan = plan
        self.placement = placement
        self.host = host
        self.reaper = reaper
        self.identity = identity
        self.primary = plan.primary
        self.services: dict[str, Service] = {}
        self.by_pid: dict[int, Service] = {}
        self.shutdown: Shutdown | None = None
        #: One line per OOM kill of a service, for the CLI's closing words.
        self.oom_lines: list[str] = []
        #: Prefixes the output of services with log = "prefix" (made by the supervisor).
        self.pump: OutputPump | None = None
        #: Variables a service gets from other parts (readiness: $NOTIFY_SOCKET), by name.
        self.extra_env: Callable[[str], Mapping[str, str]] = lambda name: {}

    def make_services(self) -> None:
        """One `Service` per spec, in start order, where the placement puts it."""
        for spec in self.plan.services:
            svc = Service(spec, self.placement.cgroup_of(spec.name))
            self.placement.attach(svc)
            self.services[spec.name] = svc

    def start_all(self, hold: Callable[[str], bool] = lambda name: False) -> None:
        """The initial start, in start order; `hold(name)` True leaves a service for later
        (depends_on waits for readiness: runtime/readyhost.py starts it)."""
        for svc in self.services.values():
            if not hold(svc.name):
                self.feed(svc, rp.Start())

    # -- the restart policy ---------------------------------------------------------------------

    def feed(self, svc: Service, event: rp.Event) -> None:
        before = svc.rec.state
        svc.rec, actions = rp.decide(svc.params, svc.rec, event, self.host.now)
        if svc.rec.state is not before:
            self.host.changed()
        for action in actions:
            self._execute(svc, action)

    def _execute(self, svc: Service, action: rp.Action) -> None:
        if isinstance(action, rp.Spawn):
            self.spawn(svc)
        elif isinstance(action, rp.Signal):
            self.signal(svc, action.signum)
        elif isinstance(action, rp.KillCgroup):
            self.placement.kill(svc, "stop_timeout")
        elif isinstance(action, rp.Emit):
            self._emit_policy(svc, action)
        elif isinstance(action, rp.Fatal):
            self._fatal(svc, action)

    def _fatal(self, svc: Service, action: rp.Fatal) -> None:
        status = action.exit.status if action.exit is not None else 1
        if action.exit is not None and not action.exit.failed:
            # An essential service that finished with 0 and is not to be restarted
            # (restart = "never" / "on-failure"): a normal end of the run, not an error.
            self.host.log.info("essential_exited", service=svc.name, status=status)
            self.begin_shutdown(f"{svc.name} exited", status=status)
            return
        self.host.log.error("fatal", service=svc.name, status=status)
        self.begin_shutdown(f"{svc.name} is fatal", status=status, fatal=svc.name)

    def _emit_policy(self, svc: Service, action: rp.Emit) -> None:
        fields = dict(action.fields)
        fields.pop("service", None)
        # An exit we asked for (a stop: shutdown, eviction, controlled restart) is routine; an
        # unplanned one is worth a warning, and an error when it is the primary's.
        # A clean exit (code 0) is no failure even when unplanned: with restart = "never" it is
        # how a run ends normally.
        unplanned = action.kind == "fatal" or (
            action.kind == "exit"
            and not action.fields.get("requested", False)
            and action.fields.get("failed", True) is not False
        )
        level = "warn" if unplanned or action.kind in ("backoff", "not_ready") else "info"
        if svc.is_primary and unplanned:
            level = "error"
        self.host.log.log(level, action.kind, service=svc.name, **fields)  # type: ignore[arg-type]
        self.host.emit(action.kind, svc.cgroup, service=svc.name, **fields)

    # -- deadlines ------------------------------------------------------------------------------

    def deadlines(self) -> list[float | None]:
        return [rp.next_deadline(s.params, s.rec) for s in self.services.values()]

    def tick(self) -> None:
        """Serve the deadlines that are due. Several due at the same moment (restarts after
        one shared-budget OOM) go least critical first, the primary last."""
        now = self.host.now
        for name in self.restart_rank(self.services):
            svc = self.services[name]
            deadline = rp.next_deadline(svc.params, svc.rec)
            if deadline is not None and deadline <= now:
                self.feed(svc, rp.Tick())

    def restart_rank(self, names: Iterable[str]) -> list[str]:
        return ranking.restart_order(
            names, {n: s.criticality for n, s in self.services.items()}, self.primary
        )

    # -- actions --------------------------------------------------------------------------------

    def launch_spec(self, svc: Service) -> launcher.LaunchSpec:
        """What the launcher starts for `svc`."""
        spec = svc.spec
        # A clean environment by default (systemd's rule): the config's `env` over the user's
        # login variables, never oomguard's own environment and its secrets. inherit_env is
        # supervisord's rule: everything oomguard has, the config's `env` over it.
        env = {**os.environ, **spec.env} if spec.inherit_env else dict(spec.env)
        extra = {
            "OOMGUARD_SERVICE": svc.name,
            "OOMGUARD_SLICE": str(svc.cgroup),
            # Inherited by the service's children: how the next start finds the ones that
            # outlive a killed supervisor (runtime/survivors.py).
            "OOMGUARD_INSTANCE": self.identity.instance,
        }
        if spec.pressure_watch:
            # systemd's convention (sd_event_add_memory_pressure): the service watches this file
            # itself and sheds memory when its trigger fires.
            watch = self.host.fs.file_path(svc.cgroup, "memory.pressure")
            extra["MEMORY_PRESSURE_WATCH"] = str(watch)
            extra["MEMORY_PRESSURE_WRITE"] = _b64(spec.pressure.psi_trigger.kernel_line())
        extra.update(self.extra_env(svc.name))
        return launcher.LaunchSpec(
            name=svc.name,
            argv=tuple(spec.argv),
            env=env,
            cwd=spec.cwd,
            user=spec.user,
            group=spec.group,
            oom_score_adj=svc.oom_score_adj,
            log=spec.log,
            extra_env=extra,
            # If oomguard is killed, the kernel stops the service the way oomguard would have.
            death_signal=spec.stop_signal,
            login_env=not spec.inherit_env,
            home_cwd=True,
        )

    def spawn(self, svc: Service) -> None:
        spec = self.launch_spec(svc)
        # Start from zero: an OOM of the previous incarnation must not be blamed on this one.
        svc.oom_pending = False
        self.placement.before_spawn(svc)
        procs_fd = svc.procs_fd if svc.procs_fd >= 0 else None
        log = self.host.log
        try:
            child = launcher.spawn(spec, procs_fd, cgroup=str(svc.cgroup))
        except LaunchError as err:
            log.error("spawn_failed", service=svc.name, error=err.message, hint=err.hint)
            self.feed(svc, rp.SpawnFailed(str(err)))
            return
        for warning in child.warnings:
            log.warn("spawn", service=svc.name, detail=warning)
        svc.child = child
        svc.started_wall = self.identity.wall()
        svc.pid_start = proc.start_ticks(child.pid)
        self.by_pid[child.pid] = svc
        self.reaper.track(child.pid)
        if child.pidfd >= 0:
            # Any exit reaps every tracked child (one waitid pass), so one handler serves all.
            self.host.add_reader(child.pidfd, select.EPOLLIN, self.on_exits)
        if self.pump is not None and (child.stdout_fd >= 0 or child.stderr_fd >= 0):
            self.pump.attach(child)  # registers the pipes in the loop with its own handlers
        self.feed(svc, rp.Spawned(child.pid))

    def signal(self, svc: Service, signum: int) -> None:
        if svc.child is None:
            return
        sent = svc.child.send_signal(signum)
        name = signal.Signals(signum).name
        self.host.log.info("signal", service=svc.name, signal=name, sent=sent)

    def forward(self, signum: int, name: str) -> None:
        """A signal oomguard passes on to the primary (SIGHUP, SIGUSR1, ...)."""
        primary = self.services[self.primary]
        sent = primary.child is not None and primary.child.send_signal(signum)
        self.host.log.info("forward", signal=name, service=self.primary, sent=sent)

    def kill_all(self, reason: str) -> None:
        """Kill every running service now (a second Ctrl-C: stop waiting for graceful stops)."""
        for svc in self.services.values():
            if svc.child is not None:
                self.placement.kill(svc, reason)

    # -- exits ----------------------------------------------------------------------------------

    def on_exits(self, mask: int = 0) -> None:
        """Reap what exited (a pidfd turned readable, or SIGCHLD) and feed the exits to the
        policy: least critical first, the primary last (the restart order after a
        shared-budget OOM)."""
        del mask
        exits: list[tuple[Service, rp.ExitInfo]] = []
        for reaped in self.reaper.reap():
            svc = self.by_pid.pop(reaped.pid, None)
            if svc is None:
                continue  # an orphan reparented to us (PID 1 / subreaper): reaped, nothing more
            self.placement.exited(svc)
            self.close_child(svc)
            st = reaped.status
            killed = oom.oom_killed(st.signal, svc.oom_pending)
            exits.append((svc, rp.ExitInfo(code=st.code, signal=st.signal, oom_killed=killed)))
        rank = {n: i for i, n in enumerate(self.restart_rank(s.name for s, _ in exits))}
        for svc, info in sorted(exits, key=lambda e: rank[e[0].name]):
            self.placement.cleanup(svc)
            if info.oom_killed:
                line = self.placement.oom_line(svc)
                self.oom_lines.append(line)
                if svc.is_primary:
                    # The primary is the one process oomguard exists to protect: say so loudly.
                    self.host.log.error("primary_oom_killed", service=svc.name, detail=line)
            self.feed(svc, rp.Exited(info))

    def close_child(self, svc: Service) -> None:
        child = svc.child
        if child is None:
            return
        if child.pidfd >= 0:
            self.host.remove_reader(child.pidfd)
        child.close()
        svc.child = None
        self.host.changed()

    # -- shutdown -------------------------------------------------------------------------------

    def begin_shutdown(
        self, reason: str, status: int | None = None, fatal: str | None = None
    ) -> None:
        if self.shutdown is None:
            self.shutdown = Shutdown(reason=reason, status=status, fatal_service=fatal)
            self.host.log.info("shutdown", reason=reason)
            self.host.emit("shutdown", None, reason=reason)
        elif status is not None and self.shutdown.status is None:
            self.shutdown.status = status
            self.shutdown.fatal_service = fatal
        self.advance_shutdown()

    def advance_shutdown(self) -> None:
        """Stop in reverse dependency order: a service is asked to stop once everything that
        depends on it is down (so pgbouncer drains before postgres stops)."""
        for name in self.plan.stop_order():
            svc = self.services[name]
            if svc.rec.state in rp.DOWN_STATES or svc.rec.state is rp.State.STOPPING:
                continue
            dependents = [s for s in self.services.values() if name in s.spec.depends_on]
            if all(d.rec.state in rp.DOWN_STATES and d.child is None for d in dependents):
                self.feed(svc, rp.Stop("shutdown"))

    def finished(self) -> bool:
        if self.shutdown is None:
            return False
        return all(
            s.rec.state in rp.DOWN_STATES and s.child is None for s in self.services.values()
        )

    def close(self) -> None:
        """Only reached with services still up on an internal error: never leave one running
        unsupervised. Then close every fd the services hold."""
        for svc in self.services.values():
            if svc.child is not None:
                self.placement.kill_on_error(svc)
                self.close_child(svc)
            if svc.procs_fd >= 0:
                os.close(svc.procs_fd)
                svc.procs_fd = -1


def _b64(text: str) -> str:
    return base64.b64encode(text.encode() + b"\0").decode()
