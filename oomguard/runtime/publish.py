"""What the supervisor tells the outside: events.jsonl, state.json, and how a run ended.

* `Publisher.emit` appends to the event log (the audit trail). A failed write (ENOSPC, EIO)
  never stops the loop: `EventLog` counts it, and the warning goes out once per burst.
* `Publisher.flush` rewrites state.json when something changed since the last flush (`dirty`),
  once per loop turn at most; a failed write is warned about once per burst too.
* `service_state` is one service in state.json's shape (also what the metrics export).
* `outcome` is how `run()` ended, for the CLI to turn into output and an exit status.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from oomguard.observe.eventlog import EventLog
from oomguard.observe.state import ServiceState, make_state, write_state

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from oomguard.cgroup.path import CgroupPath
    from oomguard.observe.log import Logger
    from oomguard.observe.statedir import StateDir
    from oomguard.policy import restart as rp
    from oomguard.runtime.service import Service


def service_state(svc: Service, now: float, *, in_slice: bool) -> ServiceState:
    """`svc` in state.json's "services" shape. `in_slice` is False in degraded mode: every
    service then runs in oomguard's own cgroup, which is no slice of its own."""
    last = svc.rec.last_exit
    pid = svc.child.pid if svc.child else None
    return {
        "state": svc.rec.state.name,
        "pid": pid,
        "pid_start": svc.pid_start if pid is not None else None,
        # Each service is a session leader (launcher: setsid), so pgid == pid.
        "pgid": pid,
        "restarts": svc.rec.restarts_total,
        "evictions": svc.evictions,
        "sheds": svc.sheds,
        "slice": str(svc.cgroup) if in_slice else None,
        "role": "primary" if svc.is_primary else "sidecar",
        "criticality": None if svc.is_primary else svc.criticality,
        "oom_score_adj": svc.oom_score_adj,
        "last_exit": (
            {"code": last.code, "signal": last.signal, "oom_killed": last.oom_killed}
            if last
            else None
        ),
        "started_at": svc.started_wall,
        "downtime_total": round(svc.rec.downtime(now), 3),
        "ready_seconds": _ready_seconds(svc.rec),
    }


def _ready_seconds(rec: rp.Record) -> float | None:
    """From the spawn to ready (RUNNING) of the current process."""
    if rec.running_since is None or rec.started_at is None:
        return None
    return round(rec.running_since - rec.started_at, 3)


def state_services(
    services: Iterable[Service], now: float, *, in_slice: bool
) -> dict[str, ServiceState]:
    """Every service in state.json's shape, in the order given (the start order)."""
    return {svc.name: service_state(svc, now, in_slice=in_slice) for svc in services}


class Publisher:
    """The event log and state.json of one run, on the run's (locked) state directory."""

    def __init__(
        self,
        statedir: StateDir,
        log: Logger,
        *,
        mode: str,
        instance: str,
        degraded: str | None,
        wall: Callable[[], float],
    ) -> None:
        self.statedir = statedir
        self.log = log
        self.mode = mode
        self.degraded = degraded
        self.wall = wall
        #: state.json holds only the token's hash: the token itself is what a service proves
        #: its descent with (runtime/survivors.py), so it is not published.
        self.instance_sha256 = hashlib.sha256(instance.encode()).hexdigest()
        self.events = EventLog(statedir, clock_wall=wall)
        #: Something changed since state.json was last written.
        self.dirty = True
        #: A run of failed writes is being reported (one warning per burst).
        self.event_log_failing = False
        self.state_write_failing = False

    def emit(self, kind: str, cgroup: CgroupPath | None, **fields: Any) -> None:
        """Append an event to events.jsonl. Never raises on I/O; marks the state dirty."""
        ok = self.events.append(kind, cgroup=cgroup, **fields)
        if not ok and not self.event_log_failing:
            self.event_log_failing = True
            self.log.warn(
                "event_log_write_failed",
                path=str(self.events.path),
                error=self.events.last_error,
                dropped=self.events.dropped,
            )
        elif ok and self.event_log_failing:
            self.event_log_failing = False
            self.log.info("event_log_recovered", dropped=self.events.dropped)
        self.dirty = True

    def flush(self, root: str, services: Callable[[], Mapping[str, ServiceState]]) -> None:
        """Rewrite state.json if anything changed. `services` is called only then."""
        if not self.dirty:
            return
        self.dirty = False
        doc = make_state(
            root=root,
            mode=self.mode,
            services=services(),
            updated_at=self.wall(),
            degraded=self.degraded,
            instance_sha256=self.instance_sha256,
            event_log_dropped=self.events.dropped,
        )
        try:
            write_state(self.statedir, doc)
        except OSError as err:
            # Once per burst, like the event log: a full disk must not flood the log.
            if not self.state_write_failing:
                self.state_write_failing = True
                self.log.warn("state_write_failed", error=err.strerror or str(err))
            return
        if self.state_write_failing:
            self.state_write_failing = False
            self.log.info("state_write_recovered")

    def close(self) -> None:
        self.events.close()


@dataclass
class Shutdown:
    """Why the run is ending, and the exit status it asked for (None: the primary's)."""

    reason: str
    status: int | None = None
    fatal_service: str | None = None


@dataclass
class Outcome:
    """How `run()` ended, for the CLI to turn into output and an exit status."""

    status: int
    primary: str
    primary_exit: rp.ExitInfo | None
    reason: str
    fatal_service: str | None = None
    oom_lines: list[str] = field(default_factory=list)


def outcome(
    primary: str,
    primary_exit: rp.ExitInfo | None,
    shutdown: Shutdown | None,
    oom_lines: Iterable[str],
) -> Outcome:
    """The run's status: what the shutdown asked for (a fatal service's, an essential one's
    clean exit), else the primary's last exit, else 0."""
    if shutdown is not None and shutdown.status is not None:
        status = shutdown.status
    elif primary_exit is not None:
        status = primary_exit.status
    else:
        status = 0
    return Outcome(
        status=status,
        primary=primary,
        primary_exit=primary_exit,
        reason=shutdown.reason if shutdown else "",
        fatal_service=shutdown.fatal_service if shutdown else None,
        oom_lines=list(oom_lines),
    )
