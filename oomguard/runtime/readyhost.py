"""Readiness in the supervisor: probes, ``depends_on`` gating, and oomguard's own sd_notify.

`ReadyExtension` plugs into the supervisor's loop and owns:

* the `OneshotRunner` (short commands: readiness probes; hooks use it too) and the `Readiness`
  probes of every service with a ``[service.X.ready]`` section. After every loop turn each
  probe is told its service's state (`Readiness.sync`); a probe's success is fed to the restart
  policy as ``Ready(pid)``. A probe command runs in oomguard's own leaf (never in the service's
  slice: an OOM kill of the probe there would count as a partial kill of the service), as the
  service's user and with its environment, at oom_score_adj 1000 (the first thing to go).
* the initial start order: a service with ``depends_on`` is started only once each service it
  depends on is *ready* (RUNNING: its probe succeeded, or it was up for ``start_secs`` when it
  has no probe). A dependency that gives up (FATAL, EXITED) leaves its dependents unstarted.
  Restarts (after a crash, an eviction) do not wait: the dependents are already up.
* oomguard's own sd_notify, when ``$NOTIFY_SOCKET`` is set (a ``Type=notify`` unit):
  ``READY=1`` once every *essential* service (the primary, and every service with
  ``essential = true``) is ready, ``STATUS=`` whenever the one-line summary changes,
  ``STOPPING=1`` when the shutdown begins, and ``WATCHDOG=1`` at half of ``$WATCHDOG_USEC``
  from the loop's own timer (a wedged loop stops pinging, which is the point).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from typing import TYPE_CHECKING

from oomguard.errors import OomguardError, StateDirError
from oomguard.events.sdnotify import NotifyClient
from oomguard.policy import restart as rp
from oomguard.runtime import launcher, preflight
from oomguard.runtime.oneshot import OneshotRunner
from oomguard.runtime.readiness import Readiness

if TYPE_CHECKING:
    from oomguard.cgroup.path import CgroupPath
    from oomguard.plan import ServiceSpec
    from oomguard.runtime.context import Context
    from oomguard.runtime.supervisor import Supervisor

__all__ = ["PROBE_OOM_SCORE_ADJ", "ReadyExtension"]

#: A probe is expendable: if memory runs out in oomguard's leaf, it goes first.
PROBE_OOM_SCORE_ADJ = 1000
#: sun_path is 108 bytes with its NUL.
_MAX_SOCKET_PATH = 107


class ReadyExtension:
    """See the module doc. Always installed: without ready sections it only gates
    ``depends_on`` on RUNNING and, under systemd, reports readiness.

    Not a plug-in on the narrow context: readiness is part of the services' lifecycle (it feeds
    the restart policy, builds the services' launch specs, starts held services), so the
    supervisor builds it with itself and calls it like an extension."""

    def __init__(self, sup: Supervisor) -> None:
        self._owner = sup
        self.sup: Supervisor | None = None
        self.runner: OneshotRunner | None = None
        self.readiness: Readiness | None = None
        self.systemd: NotifyClient | None = None
        #: Services whose initial start waits for their dependencies, in start order.
        self.held: list[str] = []
        self._leaf_fd = -1
        self._status: str | None = None
        self._ready_sent = False
        self._stopping_sent = False
        self._waiting_logged: set[str] = set()
        #: Each service's depends_on (from the Plan).
        self._deps: dict[str, tuple[str, ...]] = {}

    # -- Extension ----------------------------------------------------------------------------

    def setup(self, ctx: Context) -> None:
        """The services' compiled specs come from `ctx` (the Plan); the rest is the owner's."""
        sup = self.sup = self._owner
        specs = {name: ctx.service(name).spec for name in ctx.names()}
        self._deps = {name: spec.depends_on for name, spec in specs.items()}
        reactor = sup.loop
        self.runner = OneshotRunner(reactor, sup.reaper, clock=sup.clock)
        self.readiness = Readiness(self, reactor, self.runner, sup.clock)
        if sup.built is not None:
            self._leaf_fd = sup.fs.open_fd(sup.built.leaf, "cgroup.procs", os.O_WRONLY)
        for spec in specs.values():
            if spec.ready is not None:
                self._add_probe(spec)
        self.systemd = NotifyClient.from_environ()
        if self.systemd is not None:
            self.systemd.start_watchdog(sup.clock())
            sup.log.info(
                "systemd_notify",
                socket=str(self.systemd.address),
                watchdog=self.systemd.watchdog,
            )

    def _add_probe(self, svc: ServiceSpec) -> None:
        sup = self.sup
        spec = svc.ready
        assert sup is not None and self.readiness is not None and spec is not None
        path: str | None = None
        owner: tuple[int, int] | None = None
        if spec.kind == "notify":
            assert sup.statedir is not None
            path = str(sup.statedir.path / f"notify-{svc.name}.sock")
            if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
                raise StateDirError(
                    f"service.{svc.name}.ready: the notify socket path {path} is longer than "
                    f"the kernel's {_MAX_SOCKET_PATH} bytes",
                    "give [oomguard] state_dir a shorter path",
                )
            creds = preflight.resolve_credentials(svc.user, svc.group, service=svc.name)
            if creds is not None and creds.uid != os.geteuid():
                owner = (creds.uid, creds.gid)
        self.readiness.add(svc.name, spec, socket_path=path, owner=owner)

    def deadline(self) -> float | None:
        dues = [
            self.runner.deadline() if self.runner else None,
            self.readiness.deadline() if self.readiness else None,
            self.systemd.ping_deadline() if self.systemd else None,
        ]
        return min((d for d in dues if d is not None), default=None)

    def on_counters(self, path: CgroupPath, delta: dict[str, int]) -> None:
        """Memory counters do not concern readiness."""

    def tick(self, now: float) -> None:
        if self.runner is not None:
            self.runner.tick(now)
        if self.readiness is not None:
            self.readiness.tick(now)
        if self.systemd is not None:
            self.systemd.tick(now)

    def after_turn(self) -> None:
        sup = self.sup
        if sup is None:
            return
        self._sync_probes()
        self._start_held()
        self._notify_systemd()

    def close(self) -> None:
        if self.readiness is not None:
            self.readiness.close()
        if self.runner is not None:
            self.runner.close()
        if self.systemd is not None:
            self.systemd.close()
        if self._leaf_fd >= 0:
            os.close(self._leaf_fd)
            self._leaf_fd = -1

    def env(self, name: str) -> dict[str, str]:
        """What service `name` gets in its environment for its probe ($NOTIFY_SOCKET...)."""
        return self.readiness.env(name) if self.readiness is not None else {}

    # -- depends_on ---------------------------------------------------------------------------

    def hold(self, name: str) -> bool:
        """At the initial start: True (and remembered) if `name` must wait for a dependency."""
        sup = self.sup
        assert sup is not None
        deps = self._deps.get(name, ())
        if deps and not self._deps_ready(name):
            self.held.append(name)
            return True
        return False

    def _deps_ready(self, name: str) -> bool:
        sup = self.sup
        assert sup is not None
        deps = self._deps.get(name, ())
        return all(sup.services[d].rec.state is rp.State.RUNNING for d in deps)

    def _start_held(self) -> None:
        sup = self.sup
        assert sup is not None
        if sup.shutdown is not None:
            self.held.clear()
            return
        for name in list(self.held):
            if self._deps_ready(name):
                self.held.remove(name)
                sup.feed(sup.services[name], rp.Start("dependencies_ready"))
            elif name not in self._waiting_logged:
                self._waiting_logged.add(name)
                deps = self._deps.get(name, ())
                pending = [d for d in deps if sup.services[d].rec.state is not rp.State.RUNNING]
                sup.log.info("waiting", service=name, on=",".join(pending))
                sup.emit("waiting", sup.services[name].cgroup, service=name, on=pending)

    # -- probes -------------------------------------------------------------------------------

    def _sync_probes(self) -> None:
        sup = self.sup
        rd = self.readiness
        assert sup is not None and rd is not None
        for name in rd.probes:
            rec = sup.services[name].rec
            probing = rec.pid if rec.state is rp.State.STARTING else None
            if probing is None and rd.probes[name].pid is not None:
                self._report_failure(name, rec)
            rd.sync(name, probing, rec.state is rp.State.RUNNING, sup.now)

    def _report_failure(self, name: str, rec: rp.Record) -> None:
        """A probe stopped because its service did not become ready: say what it last saw."""
        sup = self.sup
        assert sup is not None and self.readiness is not None
        last = self.readiness.last_failure(name)
        if rec.stop_reason == "not_ready":
            sup.log.warn("not_ready_probe", service=name, last=last or "no answer")

    # -- ProbeHost ----------------------------------------------------------------------------

    def ready(self, name: str, pid: int | None) -> None:
        sup = self.sup
        assert sup is not None
        svc = sup.services[name]
        pid = svc.rec.pid if pid is None else pid
        if pid is not None:
            sup.feed(svc, rp.Ready(pid))

    def status(self, name: str, text: str) -> None:
        sup = self.sup
        assert sup is not None
        sup.log.info("service_status", service=name, status=text)
        sup.emit("status", sup.services[name].cgroup, service=name, status=text)

    def watchdog_expired(self, name: str) -> None:
        sup = self.sup
        assert sup is not None and self.readiness is not None
        svc = sup.services[name]
        spec = self.readiness.probes[name].spec
        sup.log.error("watchdog", service=name, after=spec.watchdog)
        sup.emit("watchdog", svc.cgroup, service=name, after=spec.watchdog)
        if svc.child is not None:
            # Killed, not stopped: a hung service may ignore its stop signal. Its exit goes
            # through the restart policy as a failure (a SIGKILL).
            sup.lifecycle.placement.kill(svc, "watchdog")

    def belongs(self, name: str, pid: int) -> bool:
        sup = self.sup
        assert sup is not None
        svc = sup.services[name]
        if svc.child is None:
            return False
        if sup.degraded is not None:
            # No slice: the service is a session leader, and its processes are in its session.
            with contextlib.suppress(OSError):
                return os.getsid(pid) == svc.child.pid
            return False
        try:
            return pid in sup.fs.procs(svc.cgroup)
        except OomguardError:
            return False

    def probe_launch(
        self, name: str, argv: tuple[str, ...]
    ) -> tuple[launcher.LaunchSpec, int | None]:
        sup = self.sup
        assert sup is not None
        spec = dataclasses.replace(
            sup.lifecycle.launch_spec(sup.services[name]),
            argv=argv,
            oom_score_adj=PROBE_OOM_SCORE_ADJ,
            death_signal=int(signal.SIGKILL),
        )
        return spec, self._leaf_fd if self._leaf_fd >= 0 else None

    # -- oomguard under systemd ---------------------------------------------------------------

    def essential(self) -> list[str]:
        """The services whose readiness makes oomguard ready: the primary and the essential."""
        sup = self.sup
        assert sup is not None
        return [n for n, s in sup.services.items() if s.is_primary or s.params.essential]

    def summary(self) -> str:
        """The one-line STATUS=: how many services are ready, and what is not."""
        sup = self.sup
        assert sup is not None
        if sup.shutdown is not None:
            return f"stopping: {sup.shutdown.reason}"
        states = {n: s.rec.state for n, s in sup.services.items()}
        up = [n for n, st in states.items() if st is rp.State.RUNNING]
        rest = [f"{n} {st.value}" for n, st in states.items() if st is not rp.State.RUNNING]
        text = f"{len(up)}/{len(states)} services ready"
        return f"{text}; {', '.join(rest)}" if rest else text

    def _notify_systemd(self) -> None:
        sup = self.sup
        client = self.systemd
        if sup is None or client is None:
            return
        fields: dict[str, str] = {}
        if sup.shutdown is not None and not self._stopping_sent:
            self._stopping_sent = True
            fields["STOPPING"] = "1"
        ready = all(sup.services[n].rec.state is rp.State.RUNNING for n in self.essential())
        if ready and not self._ready_sent and sup.shutdown is None:
            self._ready_sent = True
            fields["READY"] = "1"
            sup.log.info("systemd_ready", services=",".join(self.essential()))
        status = self.summary()
        if status != self._status:
            self._status = status
            fields["STATUS"] = status
        if fields:
            client.send(**fields)
