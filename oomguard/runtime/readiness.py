"""Readiness probes: when a starting service counts as up (``[service.X.ready]``).

One probe per service with a ready section, for the whole run. `Readiness.sync` is told the
service's lifecycle state after every change; a probe runs only while its service is STARTING
with a process, and says so through `ProbeHost.ready(name, pid)`, which the host turns into the
restart policy's ``Ready(pid)`` (a result for an earlier process is ignored there too). The
timeout that makes a never-ready service a failed start is the policy's, not the probe's.

* ``command``: a oneshot (`runtime.oneshot`) every ``interval``, in the service's own cgroup, as
  its user, with its environment; exit 0 means ready. An attempt is killed after ``interval`` or
  `plan.ATTEMPT_MIN` seconds, whichever is longer, and counts as "not yet".
* ``tcp``: a non-blocking connect every ``interval``; ``EPOLLOUT`` then ``SO_ERROR`` 0 means a
  listener accepted it. The address is numeric (the config refuses names), so nothing resolves
  a name in the loop.
* ``notify``: the sd_notify protocol on a socket of the service's own, in oomguard's state dir,
  passed as ``$NOTIFY_SOCKET``. ``READY=1`` from a process of the service means ready; every
  datagram's sender pid (the kernel's, via SO_PASSCRED) must belong to the service
  (`ProbeHost.belongs`), else it is dropped. ``STATUS=`` is reported on change. With
  ``watchdog``, once ready the service must send ``WATCHDOG=1`` at least that often (as
  systemd's ``WatchdogSec=``); a missed deadline is `ProbeHost.watchdog_expired` (the host kills
  the service, whose exit then goes through the restart policy as a failure).

Every probe is fd- and deadline-driven: `deadline()` / `tick(now)` from the owner's loop, one
handler per fd, never a blocking call.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
from typing import TYPE_CHECKING, Protocol

from oomguard.events.sdnotify import NotifyServer

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from oomguard.plan import ReadySpec
    from oomguard.runtime.launcher import LaunchSpec
    from oomguard.runtime.oneshot import Oneshot, OneshotResult, OneshotRunner, Reactor

__all__ = ["ProbeHost", "Readiness"]


class ProbeHost(Protocol):
    """What probes need from their owner (the supervisor)."""

    def ready(self, name: str, pid: int | None) -> None:
        """The probe of `name` succeeded for its process `pid` (None: for its current process;
        notify, where the sender is known to be one of the service's processes)."""

    def status(self, name: str, text: str) -> None:
        """`name` sent a new ``STATUS=`` line."""

    def watchdog_expired(self, name: str) -> None:
        """`name` is ready but sent no ``WATCHDOG=1`` within its watchdog interval."""

    def belongs(self, name: str, pid: int) -> bool:
        """`pid` is a process of service `name` (in its cgroup, or its session when degraded)."""

    def probe_launch(self, name: str, argv: tuple[str, ...]) -> tuple[LaunchSpec, int | None]:
        """How to start a probe command of `name`: its launch spec and cgroup.procs fd."""


class _Probe:
    """The common part: which process is being probed, and when the next attempt is due."""

    def __init__(
        self, name: str, spec: ReadySpec, host: ProbeHost, clock: Callable[[], float]
    ) -> None:
        self.name = name
        self.spec = spec
        self.host = host
        self.clock = clock
        #: The process being probed (None: not STARTING, nothing to probe).
        self.pid: int | None = None
        self.next_at: float | None = None
        #: Why the last attempt said "not yet" (for the not_ready log line).
        self.last_failure: str | None = None
        self.attempts = 0

    def start(self, pid: int, now: float) -> None:
        """Probe process `pid`: the first attempt after one `interval` (it was just spawned)."""
        self.cancel()
        self.pid = pid
        self.last_failure = None
        self.attempts = 0
        self.next_at = now + self.spec.interval

    def stop(self) -> None:
        self.cancel()
        self.pid = None
        self.next_at = None

    def deadline(self) -> float | None:
        return self.next_at

    def tick(self, now: float) -> None:
        if self.pid is not None and self.next_at is not None and now >= self.next_at:
            self.next_at = None
            self.attempts += 1
            self.attempt(self.pid, now)

    def result(self, pid: int, ok: bool, why: str | None) -> None:
        """An attempt for `pid` ended: report success, or schedule the next attempt."""
        if pid != self.pid:
            return  # the process it was for is gone (stopped, restarted)
        if ok:
            self.pid = None
            self.next_at = None
            self.host.ready(self.name, pid)
            return
        self.last_failure = why
        self.next_at = self.clock() + self.spec.interval

    def env(self) -> dict[str, str]:
        """Variables the service gets for this probe (notify: $NOTIFY_SOCKET)."""
        return {}

    def arm_watchdog(self, now: float | None) -> None:
        """The service became ready (`now`) or is no longer up (None)."""

    # -- per kind ---------------------------------------------------------------------------

    def attempt(self, pid: int, now: float) -> None:
        """Start one attempt for `pid`; it ends in `result`."""

    def cancel(self) -> None:
        """Abandon an attempt in flight (no result)."""

    def close(self) -> None:
        self.stop()


class CommandProbe(_Probe):
    """Runs the command as a oneshot every interval; exit 0 is ready."""

    def __init__(
        self,
        name: str,
        spec: ReadySpec,
        host: ProbeHost,
        clock: Callable[[], float],
        runner: OneshotRunner,
    ) -> None:
        super().__init__(name, spec, host, clock)
        self._runner = runner
        self._shot: Oneshot | None = None

    def attempt(self, pid: int, now: float) -> None:
        launch, procs_fd = self.host.probe_launch(self.name, self.spec.command)

        def done(res: OneshotResult) -> None:
            self._shot = None
            self.result(pid, res.ok, None if res.ok else res.describe())

        self._shot = self._runner.run(
            launch, procs_fd, timeout=self.spec.attempt_timeout, on_done=done
        )

    def cancel(self) -> None:
        shot, self._shot = self._shot, None
        if shot is not None:
            self._runner.cancel(shot)


class TcpProbe(_Probe):
    """A non-blocking connect every interval; an accepted connection is ready."""

    def __init__(
        self,
        name: str,
        spec: ReadySpec,
        host: ProbeHost,
        clock: Callable[[], float],
        reactor: Reactor,
    ) -> None:
        super().__init__(name, spec, host, clock)
        self._reactor = reactor
        self._sock: socket.socket | None = None
        self._attempt_end: float | None = None

    def deadline(self) -> float | None:
        due = [t for t in (self.next_at, self._attempt_end) if t is not None]
        return min(due, default=None)

    def tick(self, now: float) -> None:
        end = self._attempt_end
        if end is not None and now >= end and self.pid is not None:
            pid = self.pid
            self.cancel()
            self.result(pid, False, f"connect timed out after {self.spec.attempt_timeout:g}s")
        super().tick(now)

    def attempt(self, pid: int, now: float) -> None:
        assert self.spec.address is not None
        host, port = self.spec.address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(
            family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        )
        err = sock.connect_ex((host, port))
        if err != errno.EINPROGRESS:
            # Loopback connects (and refusals) usually complete at once.
            sock.close()
            self.result(pid, err == 0, None if err == 0 else os.strerror(err))
            return
        self._sock = sock
        self._attempt_end = now + self.spec.attempt_timeout
        self._reactor.add(sock.fileno(), select.EPOLLOUT, lambda mask: self._connected(pid))

    def _connected(self, pid: int) -> None:
        sock = self._sock
        if sock is None:
            return
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self.cancel()
        self.result(pid, err == 0, None if err == 0 else os.strerror(err))

    def cancel(self) -> None:
        sock, self._sock = self._sock, None
        self._attempt_end = None
        if sock is not None:
            self._reactor.remove(sock.fileno())
            sock.close()


class NotifyProbe(_Probe):
    """The service's own NOTIFY_SOCKET: READY=1, STATUS=, WATCHDOG=1 (see the module doc)."""

    def __init__(
        self,
        name: str,
        spec: ReadySpec,
        host: ProbeHost,
        clock: Callable[[], float],
        server: NotifyServer,
    ) -> None:
        super().__init__(name, spec, host, clock)
        self.server = server
        self.status: str | None = None
        self.watchdog_at: float | None = None
        #: Datagrams dropped because their sender is not a process of this service.
        self.foreign = 0
        self.last_foreign: int | None = None

    def start(self, pid: int, now: float) -> None:
        super().start(pid, now)
        self.next_at = None  # nothing to poll: the service says when it is ready

    def deadline(self) -> float | None:
        return self.watchdog_at

    def tick(self, now: float) -> None:
        if self.watchdog_at is not None and now >= self.watchdog_at:
            self.watchdog_at = None
            self.host.watchdog_expired(self.name)

    def env(self) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": self.server.path}
        if self.spec.watchdog is not None:
            env["WATCHDOG_USEC"] = str(round(self.spec.watchdog * 1e6))
        return env

    def arm_watchdog(self, now: float | None) -> None:
        if now is None or self.spec.watchdog is None:
            self.watchdog_at = None
        elif self.watchdog_at is None:
            self.watchdog_at = now + self.spec.watchdog

    def on_readable(self, mask: int) -> None:
        for note in self.server.receive():
            if not self.host.belongs(self.name, note.pid):
                self.foreign += 1
                self.last_foreign = note.pid
                continue
            self._apply(note.fields)

    def _apply(self, fields: Mapping[str, str]) -> None:
        status = fields.get("STATUS")
        if status is not None and status != self.status:
            self.status = status
            self.host.status(self.name, status)
        if fields.get("READY") == "1":
            # Whoever sent it is a process of the service (checked above), so it speaks for
            # the current incarnation, even if READY=1 arrives before this probe was told the
            # service is starting (a fast service, in the loop turn of its spawn).
            self.pid = None
            self.host.ready(self.name, None)
        if self.watchdog_at is not None and self.spec.watchdog is not None:
            if fields.get("WATCHDOG") == "1":
                self.watchdog_at = self.clock() + self.spec.watchdog
            elif fields.get("WATCHDOG") == "trigger":
                self.watchdog_at = self.clock()  # sd_notify(3): "trigger" fails it at once

    def close(self) -> None:
        super().close()
        self.server.close()


class Readiness:
    """The probes of every service with a ready section, driven from the owner's loop."""

    def __init__(
        self,
        host: ProbeHost,
        reactor: Reactor,
        runner: OneshotRunner,
        clock: Callable[[], float],
    ) -> None:
        self._host = host
        self._reactor = reactor
        self._runner = runner
        self._clock = clock
        self.probes: dict[str, _Probe] = {}

    def add(
        self,
        name: str,
        spec: ReadySpec,
        socket_path: str | None = None,
        owner: tuple[int, int] | None = None,
    ) -> None:
        """Make `name`'s probe. notify needs `socket_path` (in a directory oomguard owns) and
        the service user's (uid, gid) as `owner` if it does not run as oomguard's user."""
        probe: _Probe
        if spec.kind == "command":
            probe = CommandProbe(name, spec, self._host, self._clock, self._runner)
        elif spec.kind == "tcp":
            probe = TcpProbe(name, spec, self._host, self._clock, self._reactor)
        else:
            assert socket_path is not None
            server = NotifyServer(socket_path, owner)
            notify = NotifyProbe(name, spec, self._host, self._clock, server)
            try:
                self._reactor.add(server.fileno(), select.EPOLLIN, notify.on_readable)
            except BaseException:
                server.close()
                raise
            probe = notify
        self.probes[name] = probe

    def __contains__(self, name: object) -> bool:
        return name in self.probes

    def env(self, name: str) -> dict[str, str]:
        probe = self.probes.get(name)
        return probe.env() if probe is not None else {}

    def sync(self, name: str, probing: int | None, up: bool, now: float) -> None:
        """Tell the probe of `name` its state: `probing` is the pid of a STARTING process
        (None otherwise), `up` is True while it is RUNNING (the watchdog's time)."""
        probe = self.probes.get(name)
        if probe is None:
            return
        if probing is None:
            if probe.pid is not None:
                probe.stop()
        elif probe.pid != probing:
            probe.start(probing, now)
        probe.arm_watchdog(now if up else None)

    def deadline(self) -> float | None:
        due = [d for p in self.probes.values() if (d := p.deadline()) is not None]
        return min(due, default=None)

    def tick(self, now: float) -> None:
        for probe in self.probes.values():
            probe.tick(now)

    def last_failure(self, name: str) -> str | None:
        probe = self.probes.get(name)
        return probe.last_failure if probe is not None else None

    def status(self, name: str) -> str | None:
        probe = self.probes.get(name)
        return probe.status if isinstance(probe, NotifyProbe) else None

    def close(self) -> None:
        for probe in self.probes.values():
            if isinstance(probe, NotifyProbe):
                with contextlib.suppress(OSError, ValueError):
                    self._reactor.remove(probe.server.fileno())
            probe.close()
        self.probes.clear()
