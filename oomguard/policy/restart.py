"""Per-service lifecycle: a pure restart state machine.

``decide(params, record, event, now) -> (record, actions)`` is the whole interface. It does no
I/O and never reads a clock: ``now`` is ``time.monotonic()`` taken by the supervisor's loop, and
``next_deadline(params, record)`` tells that loop when the next ``Tick`` is due (None: no timer,
so an idle service costs no wakeups at all).

States (supervisord's explicit set, plus EVICTED for the memory-pressure response)::

    STOPPED|EXITED|FATAL ─Start─► STARTING ──Spawned + start_secs──► RUNNING ──Stop──► STOPPING
                                            (or Spawned + Ready, with a probe)
                                   ▲    │                              │                  │
                         Tick at   │    │ exit, SpawnFailed            │ exit             │
                   next_start_at   │    ▼                              │                  │
                                   │  restart policy ◄─────────────────┘                  │
                                   │    ├─► EXITED ("never", or a clean exit              │
                                   │    │           under "on-failure")                   │
                                   │    ├─► FATAL (> max_restarts in restart_window)      │
                                   │    ▼                                                 │
                                  BACKOFF ──Stop(shutdown|evict)──► STOPPED|EVICTED       │
                                                                                          │
    EVICTED ─Release─► STARTING          STOPPING, on Exited, by stop reason: ◄───────────┘
                                           shutdown -> STOPPED, evict -> EVICTED,
                                           controlled_restart -> STARTING,
                                           oom_cleanup -> restart policy
                                         STOPPING, Tick at stop_deadline: KillCgroup, re-armed

Transitions, by state (any pair not listed is a documented no-op, see below):

STOPPED, EXITED, FATAL (down, nothing pending)
  * ``Start`` -> STARTING + ``Spawn``. A fresh start: ``attempt`` and the restart window are
    reset, because an operator (or the initial start) asked for it.
STARTING (``pid`` None: the ``Spawn`` is in flight; ``pid`` set: the process exists)
  * ``Spawned(pid)`` -> STARTING with the pid (RUNNING at once if ``start_secs`` is 0 and it
    has no readiness probe).
  * ``Tick`` at ``started_at + start_secs`` -> RUNNING (supervisord's ``startsecs``: a process
    counts as up only once it survived that long). Emits ``running``.
  * With a readiness probe (``ready_timeout`` set; ``start_secs`` is then unused): RUNNING
    means *ready*. ``Ready(pid)`` of the current process -> RUNNING, emitting ``ready`` with
    the seconds since the spawn. ``Tick`` at ``started_at + ready_timeout`` -> STOPPING for
    ``not_ready`` (a failed start, below); ``Ready`` in any other state, or of another pid, is
    a stale or repeated probe result: a no-op.
  * ``Exited`` / ``SpawnFailed`` -> a *failed start*: the restart policy below.
  * ``Stop(reason)`` -> STOPPING (``Signal`` if there is a pid; if the spawn is still in flight
    the signal is sent on ``Spawned``).
RUNNING
  * ``Exited`` -> the restart policy below; downtime starts counting.
  * ``Stop(reason)`` -> STOPPING + ``Signal(stop_signal)``; deadline ``now + stop_timeout``.
  * ``Tick`` at ``running_since + backoff_reset`` (only while ``attempt > 0``) -> attempt = 0.
BACKOFF (``next_start_at`` set)
  * ``Tick`` at ``next_start_at`` -> STARTING + ``Spawn``.
  * ``Stop(shutdown)`` -> STOPPED, ``Stop(evict)`` -> EVICTED: the pending start is cancelled.
    ``Stop(controlled_restart | oom_cleanup)`` is a no-op: the service is already down and
    a restart is already scheduled; skipping its backoff would defeat the backoff.
STOPPING (``stop_reason`` set)
  * ``Exited`` -> by reason: shutdown -> STOPPED; evict -> EVICTED; controlled_restart ->
    STARTING + ``Spawn`` at once (no backoff, not a failure, not counted in the restart
    window: the pressure policy rate-limits those); oom_cleanup -> treated as an OOM-killed
    crash (the kernel already killed part of the service; the supervisor removed the rest), so
    it goes through the restart policy, backoff and window like any failure; not_ready -> the
    restart policy as a failure whatever the status (a start that never became ready failed).
    Otherwise an exit while STOPPING is never judged by its status: we asked for it.
  * ``Tick`` at ``stop_deadline`` -> ``KillCgroup`` (cgroup.kill kills the whole subtree, fork
    races included) and a new deadline ``now + stop_timeout``: if the kill has not produced an
    exit by then (a task stuck in D state), the kill is repeated; it is idempotent.
  * ``Stop(shutdown)`` upgrades any other stop reason to shutdown (nothing restarts during a
    shutdown); any other second ``Stop`` is a no-op.
  * ``Release`` while stopping for ``evict`` turns the stop into a controlled restart, so the
    release is not lost.
EVICTED (stopped by the pressure policy)
  * ``Release`` -> STARTING + ``Spawn``. Only ``Release`` starts it: the pressure policy owns it.
  * ``Stop(shutdown)`` -> STOPPED.

The restart policy (on an unplanned exit, a failed start, an oom_cleanup or not_ready stop):
  * ``never`` -> EXITED. ``on-failure`` -> EXITED on a clean exit (code 0, no signal, not
    OOM-killed). Otherwise (``always``, or a failure) a restart is due:
  * ``attempt += 1`` (first reset to 0 if the process had been RUNNING for ``backoff_reset``);
    an exit with code 0 under ``always`` also counts, so a service that exits at once can
    never restart in a tight loop (circus's pitfall).
  * If this restart would make more than ``max_restarts`` within ``restart_window`` -> FATAL.
  * Else BACKOFF for ``min(backoff_initial * 2**(attempt-1), backoff_max)``: capped
    exponential, 0.1 s, 0.2 s, 0.4 s ... 30 s (supervisord's linear backoff is what we avoid).
  * An essential service that lands in EXITED or FATAL yields ``Fatal(name, exit)``: the
    supervisor shuts everything down and exits with ``exit.status``.

No-ops: ``Tick`` before a deadline, ``Start`` to a service that is already up or starting (or
in BACKOFF, STOPPING, EVICTED), ``Stop`` to a service that is already down, ``Release`` to a
service that is not evicted: each returns the record unchanged and no actions. ``Spawned``,
``SpawnFailed`` and ``Exited`` for a service with no process or spawn in flight mean the
caller's bookkeeping is off: the record is unchanged and an ``Emit("ignored", ...)`` says so.
After every transition the record's invariants are checked (``_verify``): a violation is a bug
here and raises AssertionError rather than silently corrupting the state.

Downtime (so the supervisor can report the primary's): it counts from the moment a RUNNING
service goes down (an exit, or any stop except shutdown) until it is RUNNING again, not merely
spawned: a database that is spawned but still in crash recovery is not serving. With a
readiness probe, RUNNING is *ready*, so downtime (of a crash, an eviction's restore, a
controlled restart) counts to the moment the probe succeeded. The first
start is not downtime. A controlled restart's downtime is measured the same way, from the
``Stop`` to RUNNING.
"""

from __future__ import annotations

import signal as _signal
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Literal, TypeAlias, get_args

from oomguard.errors import ExitCode

RestartPolicy: TypeAlias = Literal["always", "on-failure", "never"]
StopReason: TypeAlias = Literal[
    "shutdown", "evict", "controlled_restart", "oom_cleanup", "not_ready"
]
#: A value in an Emit's fields: plain scalars only, so the event log can write it as-is.
FieldValue: TypeAlias = str | int | float | bool | None

_STOP_REASONS: tuple[str, ...] = get_args(StopReason)
# 2.0**1024 overflows a float; any exponent this large is far past every sane backoff_max.
_MAX_EXPONENT = 1000


class State(Enum):
    STOPPED = "stopped"  # never started, or stopped by a shutdown
    STARTING = "starting"  # spawn requested / up for less than start_secs / not ready yet
    RUNNING = "running"  # up and ready: start_secs passed, or its readiness probe said so
    BACKOFF = "backoff"  # down after an exit; a restart is scheduled at next_start_at
    STOPPING = "stopping"  # signalled (or about to be); waiting for the exit
    EXITED = "exited"  # down for good by its restart policy (e.g. clean exit, "on-failure")
    FATAL = "fatal"  # gave up: too many restarts within the window
    EVICTED = "evicted"  # stopped by the pressure policy; waits for Release


#: States with no process and nothing scheduled; only Start (or Release for EVICTED) leaves them.
DOWN_STATES = frozenset({State.STOPPED, State.EXITED, State.FATAL, State.EVICTED})


@dataclass(frozen=True)
class RestartParams:
    """How one service is restarted and stopped. Durations are seconds.

    Not re-checked here: the only producer is the compiled Plan (``config/compile.py``), whose
    config field types bound every value (durations finite and > 0, ``start_secs`` and
    ``backoff_reset`` >= 0, ``backoff_initial <= backoff_max``, a real signal number).
    """

    restart: RestartPolicy = "on-failure"
    start_secs: float = 1.0
    backoff_initial: float = 0.1
    backoff_max: float = 30.0
    backoff_reset: float = 60.0
    max_restarts: int = 10
    restart_window: float = 300.0
    essential: bool = False
    stop_timeout: float = 10.0
    stop_signal: int = int(_signal.SIGTERM)
    #: With a readiness probe ([service.X.ready]): RUNNING only on ``Ready``, and a process
    #: not ready this many seconds after its spawn is a failed start. None: start_secs rules.
    ready_timeout: float | None = None


@dataclass(frozen=True)
class ExitInfo:
    """How a process ended: exactly one of ``code``/``signal``, or neither if unknown (e.g. it
    was reaped by someone else). ``oom_killed``: the kernel's OOM killer killed it (the service
    cgroup's memory.events.local ``oom_kill`` rose)."""

    code: int | None = None
    signal: int | None = None
    oom_killed: bool = False

    def __post_init__(self) -> None:
        if self.code is not None and self.signal is not None:
            raise ValueError(f"an exit has a code or a signal, not both: {self!r}")

    @property
    def failed(self) -> bool:
        """A non-zero code, any signal, an OOM kill, or an unknown status (assume the worst).

        Whether *we* asked for the exit is not known here; the state machine never judges an
        exit that happens while STOPPING."""
        if self.oom_killed or self.signal is not None:
            return True
        return self.code != 0

    @property
    def status(self) -> int:
        """The shell's convention: the code, or 128 + signal (137 after an OOM kill's SIGKILL)."""
        if self.code is not None:
            return self.code
        if self.signal is not None:
            return 128 + self.signal
        return int(ExitCode.FAILURE)

    def fields(self) -> dict[str, FieldValue]:
        return {
            "code": self.code,
            "signal": self.signal,
            "oom_killed": self.oom_killed,
            "failed": self.failed,
        }


@dataclass(frozen=True)
class Record:
    """Everything the policy knows about one service. Timestamps are monotonic seconds."""

    name: str
    state: State = State.STOPPED
    pid: int | None = None
    #: Consecutive restarts without a backoff_reset of RUNNING in between; drives the delay.
    attempt: int = 0
    #: When each automatic restart within the window was scheduled (pruned lazily).
    restart_times: tuple[float, ...] = ()
    #: When the current process was spawned (None while no process exists).
    started_at: float | None = None
    #: When the current process was declared RUNNING (None if it has not been).
    running_since: float | None = None
    next_start_at: float | None = None
    stop_deadline: float | None = None
    stop_reason: StopReason | None = None
    #: KillCgroup actions sent during the current stop.
    kills_sent: int = 0
    last_exit: ExitInfo | None = None
    #: The last SpawnFailed message (cleared when a process is spawned).
    last_error: str | None = None
    #: Respawns actually performed (after a backoff, a controlled restart).
    restarts_total: int = 0
    down_since: float | None = None
    total_downtime: float = 0.0
    #: The last failed start was a readiness timeout (for the restart's reason).
    not_ready: bool = False

    def downtime(self, now: float) -> float:
        """Total downtime so far, including the current outage if the service is down."""
        current = now - self.down_since if self.down_since is not None else 0.0
        return self.total_downtime + current


# --- Events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Start a down service (the initial start, or an operator's explicit start)."""

    reason: str = "initial"


@dataclass(frozen=True)
class Spawned:
    """The launcher started the process the last ``Spawn`` asked for."""

    pid: int


@dataclass(frozen=True)
class SpawnFailed:
    """The launcher could not start it (missing binary, bad user...): a failed start."""

    message: str


@dataclass(frozen=True)
class Exited:
    """The reaper collected the service's main process."""

    exit: ExitInfo


@dataclass(frozen=True)
class Stop:
    reason: StopReason

    def __post_init__(self) -> None:
        if self.reason not in _STOP_REASONS:
            raise ValueError(f"stop reason {self.reason!r}: use one of {', '.join(_STOP_REASONS)}")


@dataclass(frozen=True)
class Ready:
    """The readiness probe of process `pid` succeeded (a stale result names another pid)."""

    pid: int


@dataclass(frozen=True)
class Release:
    """The pressure that evicted this service has cleared: it may start again."""


@dataclass(frozen=True)
class Tick:
    """A deadline from ``next_deadline`` has passed (spurious ticks are harmless)."""


Event: TypeAlias = Start | Spawned | SpawnFailed | Exited | Stop | Ready | Release | Tick


# --- Actions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spawn:
    name: str


@dataclass(frozen=True)
class Signal:
    name: str
    signum: int


@dataclass(frozen=True)
class KillCgroup:
    """Write 1 to the service cgroup's cgroup.kill (stop_timeout passed without an exit)."""

    name: str


@dataclass(frozen=True)
class Emit:
    """An event-log entry. ``fields`` always has ``service``."""

    kind: str
    fields: dict[str, FieldValue] = field(default_factory=dict)


@dataclass(frozen=True)
class Fatal:
    """An essential service is down for good: shut down and exit with ``exit.status``
    (``ExitCode.FAILURE`` if ``exit`` is None, i.e. it never ran)."""

    name: str
    exit: ExitInfo | None


Action: TypeAlias = Spawn | Signal | KillCgroup | Emit | Fatal
Result: TypeAlias = tuple[Record, list[Action]]


# --- Public functions ---------------------------------------------------------------------------


def backoff_delay(params: RestartParams, attempt: int) -> float:
    """Capped exponential: attempt 1 -> backoff_initial, then doubling, never above backoff_max."""
    if attempt < 1:
        raise ValueError(f"attempt={attempt}: the first restart is attempt 1")
    exponent = attempt - 1
    if exponent > _MAX_EXPONENT:
        return params.backoff_max
    return min(params.backoff_initial * 2.0**exponent, params.backoff_max)


def next_deadline(params: RestartParams, rec: Record) -> float | None:
    """When the supervisor must send this service a ``Tick``; None means no timer is needed."""
    if rec.state is State.STARTING and rec.started_at is not None:
        if params.ready_timeout is not None:
            return rec.started_at + params.ready_timeout
        return rec.started_at + params.start_secs
    if rec.state is State.RUNNING and rec.attempt > 0 and rec.running_since is not None:
        # One wakeup to forget the backoff; the reset is also applied lazily on the next exit,
        # so a late tick changes nothing.
        return rec.running_since + params.backoff_reset
    if rec.state is State.BACKOFF:
        return rec.next_start_at
    if rec.state is State.STOPPING:
        return rec.stop_deadline
    return None


def decide(params: RestartParams, rec: Record, event: Event, now: float) -> Result:
    """Apply one event at monotonic time ``now``; return the new record and what to do."""
    new, actions = _dispatch(params, rec, event, now)
    _verify(new)
    return new, actions


# --- Dispatch: one branch per event type, then per state ----------------------------------------


def _dispatch(params: RestartParams, rec: Record, event: Event, now: float) -> Result:
    match event:
        case Start():
            return _on_start(rec, event.reason)
        case Spawned(pid=pid):
            return _on_spawned(params, rec, pid, now)
        case SpawnFailed() | Exited():
            return _on_gone(params, rec, event, now)
        case Stop(reason=reason):
            return _on_stop(params, rec, reason, now)
        case Ready(pid=pid):
            return _on_ready(params, rec, pid, now)
        case Release():
            return _on_release(rec)
        case Tick():
            return _tick(params, rec, now)
    raise AssertionError(f"unknown event {event!r}")  # pragma: no cover - exhaustive match


def _on_start(rec: Record, reason: str) -> Result:
    if rec.state in (State.STOPPED, State.EXITED, State.FATAL):
        return _fresh_start(rec, reason)
    return rec, []  # already up, starting, scheduled, stopping, or evicted


def _on_ready(params: RestartParams, rec: Record, pid: int, now: float) -> Result:
    if rec.state is State.STARTING and rec.pid == pid and params.ready_timeout is not None:
        return _became_running(rec, now, probed=True)
    return rec, []  # a late or repeated probe result (READY=1 sent twice): no-op


def _on_spawned(params: RestartParams, rec: Record, pid: int, now: float) -> Result:
    if rec.state is State.STARTING and rec.pid is None:
        return _spawned(params, rec, pid, now)
    if rec.state is State.STOPPING and rec.pid is None:
        return _spawned_while_stopping(params, rec, pid, now)
    return _ignored(rec, "Spawned", pid=pid)


def _on_gone(params: RestartParams, rec: Record, event: SpawnFailed | Exited, now: float) -> Result:
    """SpawnFailed (the spawn in flight failed) or Exited (the process was reaped)."""
    if isinstance(event, SpawnFailed):
        info, error, exists = None, event.message, rec.pid is None
        fields: dict[str, FieldValue] = {"message": event.message}
    else:
        info, error, exists = event.exit, None, rec.pid is not None
        fields = dict(event.exit.fields())
    # `exists`: the process (Exited) or the spawn in flight (SpawnFailed) this event is about.
    # RUNNING always has a pid, so a SpawnFailed can only be for STARTING or STOPPING.
    if exists and rec.state in (State.STARTING, State.RUNNING):
        return _restart_policy(params, rec, info, now, error=error)
    if exists and rec.state is State.STOPPING:
        return _stop_finished(params, rec, info, now, error=error)
    return _ignored(rec, type(event).__name__, **fields)


def _on_stop(params: RestartParams, rec: Record, reason: StopReason, now: float) -> Result:
    state = rec.state
    if state in (State.STARTING, State.RUNNING):
        return _begin_stop(params, rec, reason, now)
    if state is State.BACKOFF:
        return _stop_during_backoff(rec, reason)
    if state is State.STOPPING:
        return _stop_while_stopping(rec, reason)
    if state is State.EVICTED and reason == "shutdown":
        return _evicted_shutdown(rec)
    return rec, []  # already down


def _on_release(rec: Record) -> Result:
    if rec.state is State.EVICTED:
        return _request_spawn(rec, "start", reason="release")
    if rec.state is State.STOPPING and rec.stop_reason == "evict":
        return _release_while_evicting(rec)
    return rec, []  # not evicted


def _tick(params: RestartParams, rec: Record, now: float) -> Result:
    deadline = next_deadline(params, rec)
    if deadline is None or now < deadline:
        return rec, []  # early or spurious
    if rec.state is State.STARTING:
        if params.ready_timeout is not None:
            return _not_ready(params, rec, now)
        return _became_running(rec, now)
    if rec.state is State.RUNNING:
        return _backoff_forgotten(params, rec)
    if rec.state is State.BACKOFF:
        return _backoff_elapsed(rec)
    if rec.state is State.STOPPING:
        return _stop_timed_out(params, rec, now)
    raise AssertionError(f"{rec.name}: deadline in state {rec.state}")  # pragma: no cover


# --- Transitions --------------------------------------------------------------------------------


def _emit(rec: Record, kind: str, **fields: FieldValue) -> Emit:
    return Emit(kind, {"service": rec.name, **fields})


def _ignored(rec: Record, event: str, **fields: FieldValue) -> Result:
    """An event that cannot apply (no process, no spawn in flight): keep the record; say so."""
    return rec, [_emit(rec, "ignored", event=event, state=rec.state.value, **fields)]


def _request_spawn(rec: Record, kind: str, *, reason: str, **fields: FieldValue) -> Result:
    """-> STARTING with no pid yet: the launcher runs the Spawn and answers Spawned/SpawnFailed."""
    new = replace(
        rec,
        state=State.STARTING,
        pid=None,
        started_at=None,
        running_since=None,
        next_start_at=None,
        stop_deadline=None,
        stop_reason=None,
        kills_sent=0,
    )
    return new, [_emit(rec, kind, reason=reason, attempt=rec.attempt, **fields), Spawn(rec.name)]


def _fresh_start(rec: Record, reason: str) -> Result:
    """STOPPED/EXITED/FATAL --Start--> STARTING. Someone asked: forget earlier failures."""
    return _request_spawn(replace(rec, attempt=0, restart_times=()), "start", reason=reason)


def _spawned(params: RestartParams, rec: Record, pid: int, now: float) -> Result:
    """STARTING (spawn in flight) --Spawned--> STARTING with a pid (RUNNING if start_secs is 0)."""
    new = replace(rec, pid=pid, started_at=now, last_error=None, not_ready=False)
    actions: list[Action] = [_emit(rec, "spawned", pid=pid, attempt=rec.attempt)]
    if params.start_secs <= 0 and params.ready_timeout is None:
        new, more = _became_running(new, now)
        actions += more
    return new, actions


def _spawned_while_stopping(params: RestartParams, rec: Record, pid: int, now: float) -> Result:
    """STOPPING (stop arrived before the spawn finished) --Spawned--> STOPPING: signal it now."""
    new = replace(rec, pid=pid, started_at=now, stop_deadline=now + params.stop_timeout)
    return new, [
        _emit(rec, "spawned", pid=pid, attempt=rec.attempt),
        Signal(rec.name, params.stop_signal),
    ]


def _became_running(rec: Record, now: float, *, probed: bool = False) -> Result:
    """STARTING --Tick at started_at+start_secs (or Ready)--> RUNNING. Ends an outage, if one
    is open. With a probe the event is ``ready`` (``seconds`` since the spawn), else
    ``running`` (``startup``)."""
    assert rec.started_at is not None
    since = "seconds" if probed else "startup"
    fields: dict[str, FieldValue] = {
        "pid": rec.pid,
        "attempt": rec.attempt,
        since: round(now - rec.started_at, 3),
    }
    total = rec.total_downtime
    if rec.down_since is not None:
        outage = now - rec.down_since
        total += outage
        fields["downtime"] = round(outage, 3)
    new = replace(
        rec, state=State.RUNNING, running_since=now, down_since=None, total_downtime=total
    )
    return new, [_emit(rec, "ready" if probed else "running", **fields)]


def _not_ready(params: RestartParams, rec: Record, now: float) -> Result:
    """STARTING --Tick at started_at+ready_timeout--> STOPPING(not_ready): a failed start. Its
    exit then goes through the restart policy as a failure, whatever its status."""
    assert params.ready_timeout is not None
    new, actions = _begin_stop(params, rec, "not_ready", now)
    event = _emit(rec, "not_ready", pid=rec.pid, timeout=params.ready_timeout)
    return new, [event, *actions]


def _backoff_forgotten(params: RestartParams, rec: Record) -> Result:
    """RUNNING --Tick at running_since+backoff_reset--> RUNNING with attempt 0: it is healthy."""
    new = replace(rec, attempt=0)
    return new, [_emit(rec, "backoff_reset", attempt=rec.attempt, after=params.backoff_reset)]


def _backoff_elapsed(rec: Record) -> Result:
    """BACKOFF --Tick at next_start_at--> STARTING + Spawn."""
    new = replace(rec, restarts_total=rec.restarts_total + 1)
    return _request_spawn(new, "restart", reason=_last_exit_reason(rec))


def _exit_event(rec: Record, info: ExitInfo | None, now: float, error: str | None) -> Action:
    """The event that records an unplanned end: a failed spawn, or an exit."""
    if error is not None:
        return _emit(rec, "spawn_failed", message=error, attempt=rec.attempt)
    assert info is not None
    uptime = now - rec.started_at if rec.started_at is not None else None
    # Always "exit" (with oom_killed=true when it was one): the supervisor logs the kernel's
    # kill itself as "oom_kill" from memory.events, with the figures; one event per kill.
    return _emit(
        rec,
        "exit",
        pid=rec.pid,
        was=rec.state.value,
        requested=rec.stop_reason == "not_ready",
        uptime=None if uptime is None else round(uptime, 3),
        **info.fields(),
    )


def _restart_policy(
    params: RestartParams,
    rec: Record,
    info: ExitInfo | None,
    now: float,
    *,
    error: str | None,
    failed: bool = False,
) -> Result:
    """STARTING/RUNNING (or STOPPING for oom_cleanup) --unplanned exit--> EXITED, FATAL or
    BACKOFF, by the restart policy documented at the top of this module."""
    was_running = rec.running_since is not None
    actions = [_exit_event(rec, info, now, error)]
    down_since = rec.down_since
    if down_since is None and was_running:
        down_since = now  # a serving service just went down: the outage starts now
    gone = replace(
        rec,
        pid=None,
        started_at=None,
        running_since=None,
        stop_deadline=None,
        stop_reason=None,
        kills_sent=0,
        last_exit=info,
        last_error=error,
        down_since=down_since,
        not_ready=rec.stop_reason == "not_ready",
    )
    clean = not failed and info is not None and not info.failed
    if params.restart == "never" or (params.restart == "on-failure" and clean):
        return _give_up(params, gone, State.EXITED, info, actions, why=f"restart={params.restart}")

    attempt = rec.attempt
    if rec.running_since is not None and now - rec.running_since >= params.backoff_reset:
        attempt = 0  # it was healthy long enough; a missed reset Tick changes nothing
    attempt += 1
    # The window holds this restart too: "more than max_restarts within restart_window".
    recent = (t for t in rec.restart_times if now - t < params.restart_window)
    window = (*recent, now)
    gone = replace(gone, attempt=attempt, restart_times=window)
    if len(window) > params.max_restarts:
        why = f"{len(window)} restarts in {params.restart_window:g}s > max {params.max_restarts}"
        return _give_up(params, gone, State.FATAL, info, actions, why=why)
    delay = backoff_delay(params, attempt)
    new = replace(gone, state=State.BACKOFF, next_start_at=now + delay)
    actions.append(
        _emit(
            rec,
            "backoff",
            reason=_last_exit_reason(new),
            attempt=attempt,
            delay=round(delay, 3),
            restarts_in_window=len(window),
        )
    )
    return new, actions


def _give_up(
    params: RestartParams,
    rec: Record,
    state: State,
    info: ExitInfo | None,
    actions: list[Action],
    *,
    why: str,
) -> Result:
    """-> EXITED or FATAL; an essential service takes the supervisor down with it."""
    assert state in (State.EXITED, State.FATAL)
    new = replace(rec, state=state, next_start_at=None)
    if state is State.FATAL:
        actions.append(_emit(rec, "fatal", reason=why, essential=params.essential))
    if params.essential:
        actions.append(Fatal(rec.name, info))
    return new, actions


def _begin_stop(params: RestartParams, rec: Record, reason: StopReason, now: float) -> Result:
    """STARTING/RUNNING --Stop--> STOPPING + Signal(stop_signal), deadline now + stop_timeout.
    With the spawn still in flight there is nothing to signal yet: Spawned will do it."""
    down_since = rec.down_since
    if rec.state is State.RUNNING and reason != "shutdown" and down_since is None:
        down_since = now  # a controlled restart or an eviction is an outage; a shutdown is not
    has_pid = rec.pid is not None
    new = replace(
        rec,
        state=State.STOPPING,
        stop_reason=reason,
        stop_deadline=now + params.stop_timeout if has_pid else None,
        kills_sent=0,
        down_since=down_since,
    )
    actions: list[Action] = [
        _emit(
            rec,
            "stop",
            reason=reason,
            pid=rec.pid,
            signal=params.stop_signal,
            timeout=params.stop_timeout,
        )
    ]
    if has_pid:
        actions.append(Signal(rec.name, params.stop_signal))
    return new, actions


def _stop_during_backoff(rec: Record, reason: StopReason) -> Result:
    """BACKOFF --Stop(shutdown|evict)--> STOPPED|EVICTED: the pending start is cancelled.
    A controlled restart or oom cleanup of a service that is already down is a no-op."""
    if reason == "shutdown":
        target = State.STOPPED
    elif reason == "evict":
        target = State.EVICTED
    else:
        return rec, []
    new = replace(rec, state=target, next_start_at=None)
    return new, [_emit(rec, "stop", reason=reason, cancelled_start=True)]


def _stop_while_stopping(rec: Record, reason: StopReason) -> Result:
    """STOPPING --Stop(shutdown)--> STOPPING for shutdown: nothing may restart during a
    shutdown. The signal already sent and its deadline stand. Other reasons: no-op."""
    if reason != "shutdown" or rec.stop_reason == "shutdown":
        return rec, []
    new = replace(rec, stop_reason="shutdown")
    return new, [_emit(rec, "stop", reason=reason, was=rec.stop_reason)]


def _release_while_evicting(rec: Record) -> Result:
    """STOPPING(evict) --Release--> STOPPING(controlled_restart): start again once it exits."""
    new = replace(rec, stop_reason="controlled_restart")
    return new, [_emit(rec, "stop", reason="controlled_restart", was="evict")]


def _evicted_shutdown(rec: Record) -> Result:
    """EVICTED --Stop(shutdown)--> STOPPED: it will not be released any more."""
    return replace(rec, state=State.STOPPED), [_emit(rec, "stop", reason="shutdown", was="evicted")]


def _stop_timed_out(params: RestartParams, rec: Record, now: float) -> Result:
    """STOPPING --Tick at stop_deadline--> STOPPING + KillCgroup; re-armed in case it hangs."""
    new = replace(rec, kills_sent=rec.kills_sent + 1, stop_deadline=now + params.stop_timeout)
    return new, [
        _emit(rec, "kill", reason=rec.stop_reason, pid=rec.pid, kills=new.kills_sent),
        KillCgroup(rec.name),
    ]


def _stop_finished(
    params: RestartParams, rec: Record, info: ExitInfo | None, now: float, *, error: str | None
) -> Result:
    """STOPPING --Exited (or SpawnFailed of a spawn that was in flight)--> by stop reason."""
    reason = rec.stop_reason
    assert reason is not None
    if reason == "oom_cleanup":
        # The kernel killed part of the service; we removed the rest. That is an OOM failure.
        oom = replace(info, oom_killed=True) if info is not None else None
        return _restart_policy(params, rec, oom, now, error=error)
    if reason == "controlled_restart" and error is not None:
        return _restart_policy(params, rec, None, now, error=error)
    if reason == "not_ready":
        # We stopped it, but for failing to start: a clean exit on our signal is no success.
        return _restart_policy(params, rec, info, now, error=error, failed=True)

    actions: list[Action] = []
    if info is not None:
        actions.append(
            _emit(rec, "exit", pid=rec.pid, was="stopping", requested=True, **info.fields())
        )
    gone = replace(
        rec,
        pid=None,
        started_at=None,
        running_since=None,
        stop_deadline=None,
        stop_reason=None,
        kills_sent=0,
        last_exit=info if info is not None else rec.last_exit,
        last_error=error,
    )
    if reason == "shutdown":
        return replace(gone, state=State.STOPPED), actions
    if reason == "evict":
        actions.append(_emit(rec, "evict"))
        return replace(gone, state=State.EVICTED), actions
    # controlled_restart: straight back up, no backoff, not a failure.
    gone = replace(gone, restarts_total=rec.restarts_total + 1)
    new, more = _request_spawn(gone, "restart", reason="controlled_restart", delay=0.0)
    return new, actions + more


def _last_exit_reason(rec: Record) -> str:
    if rec.not_ready:
        return "not_ready"
    if rec.last_error is not None:
        return "spawn_failed"
    if rec.last_exit is None:
        return "exit"
    return "oom_kill" if rec.last_exit.oom_killed else "exit"


# --- Invariants ---------------------------------------------------------------------------------


def _verify(rec: Record) -> None:
    """Check what every state promises; a failure is a bug in this module."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise AssertionError(f"{rec.name}: {rec.state.name} with {what}: {rec!r}")

    s = rec.state
    need(rec.attempt >= 0, "negative attempt")
    need(s is State.STOPPING or rec.stop_reason is None, "a stop reason")
    need(s is State.STOPPING or rec.stop_deadline is None, "a stop deadline")
    need((s is State.BACKOFF) == (rec.next_start_at is not None), "next_start_at mismatch")
    if s in DOWN_STATES or s is State.BACKOFF:
        need(rec.pid is None and rec.started_at is None, "a process")
        need(rec.running_since is None, "running_since")
    if s is State.STARTING:
        need((rec.pid is None) == (rec.started_at is None), "pid/started_at mismatch")
        need(rec.running_since is None, "running_since")
    if s is State.RUNNING:
        need(rec.pid is not None and rec.running_since is not None, "no process")
        need(rec.down_since is None, "an open outage")
    if s is State.STOPPING:
        need(rec.stop_reason is not None, "no stop reason")
        need((rec.pid is None) == (rec.stop_deadline is None), "pid/deadline mismatch")
