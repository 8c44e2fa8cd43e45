"""The supervisor: wires event sources -> pure policy -> actions; startup and shutdown order.

One thread, one flat epoll loop (`events.loop.Loop`), no asyncio:

* pidfds of the services' main processes (readable on exit) and SIGCHLD -> `Reaper.reap()`
  (runtime/lifecycle.py);
* one inotify fd watching every slice's ``memory.events.local`` (runtime/oomwatch.py, through the
  placement): the kernel coalesces and rate-limits these notifications, so every wake-up
  re-reads and *diffs* the counters; we never count notifications;
* PSI trigger fds (EPOLLPRI only: the fd is always readable, see `events.psi`), one per budget;
* the signal queue's wake-up fd: handlers only enqueue, the loop dispatches (uvicorn's rule).

Each fd is registered with its own handler (`Loop.add(fd, mask, handler)`, sd_event style); an
extension registers its fds the same way and is called back directly.

Who does what:

* `Placement` (runtime/placement.py): where services live. `Slices` (the cgroup tree) or, when
  no tree can be built, `ProcessGroups` (degraded mode): one interface, no `if degraded`.
* `Lifecycle` (runtime/lifecycle.py): the services, fed to the restart policy; spawn, signal,
  kill, exits, the stop order.
* `Publisher` (runtime/publish.py): events.jsonl, state.json, the outcome.
* `Sinks` (runtime/sinks.py): oomguard's own output and the lines it drops.
* the extensions (the pressure response, metrics) see only a narrow `Context`.

The loop sleeps until the earliest policy deadline (a backoff, start_secs, a stop timeout, a
pressure sample), or forever when nothing is pending: an idle supervisor makes no wake-ups.

`now` is `time.monotonic()` read once per loop turn and handed to the policy; wall time is used
only for what humans read (event log, state.json).
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import select
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from oomguard import proc
from oomguard.cgroup.spec import SUPERVISOR_LEAF
from oomguard.errors import CgroupError, OomguardError
from oomguard.events.loop import Loop
from oomguard.events.signals import SignalQueue, disposition, signal_name
from oomguard.observe.state import TreeLedger, read_state, state_writer_alive
from oomguard.observe.statedir import StateDir
from oomguard.runtime import release
from oomguard.runtime.context import Extension, SupervisorContext
from oomguard.runtime.lifecycle import Identity, Lifecycle
from oomguard.runtime.placement import Placement, ProcessGroups, Slices
from oomguard.runtime.publish import Outcome, Publisher, Shutdown, outcome, state_services
from oomguard.runtime.readyhost import ReadyExtension
from oomguard.runtime.reaper import Reaper, become_subreaper
from oomguard.runtime.service import Service
from oomguard.runtime.sinks import Sinks

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from oomguard.cgroup.fs import CgroupFS
    from oomguard.cgroup.path import CgroupPath
    from oomguard.cgroup.tree import BuiltTree
    from oomguard.events.loop import Handler
    from oomguard.observe.log import Logger
    from oomguard.observe.sink import OutputSink
    from oomguard.observe.state import ServiceState
    from oomguard.plan import HooksSpec, Plan
    from oomguard.policy import restart as rp
    from oomguard.runtime.hooks import Hooks


@dataclass(frozen=True)
class RunIO:
    """The supervisor's clocks and output fds: the process's own unless a test (or the CLI,
    for the log's sink) says otherwise."""

    #: Monotonic: every deadline and `now` (read once per loop turn).
    clock: Callable[[], float] = time.monotonic
    #: Wall time: only what humans read (the event log, state.json).
    wall: Callable[[], float] = time.time
    stdout_fd: int = 1
    stderr_fd: int = 2
    #: Non-blocking writers the caller already made for some of these fds (the log's stderr).
    sinks: Mapping[int, OutputSink] = field(default_factory=dict)


class Supervisor:
    """Runs one plan. `run()` returns an `Outcome`; it never calls sys.exit."""

    def __init__(
        self,
        plan: Plan,
        fs: CgroupFS,
        self_cgroup: CgroupPath,
        log: Logger,
        *,
        init: bool = False,
        degraded: str | None = None,
        io: RunIO | None = None,
    ) -> None:
        io = io or RunIO()
        self.plan = plan
        self.fs = fs
        self.self_cgroup = self_cgroup
        self.log = log
        self.init = init or os.getpid() == 1
        self.clock = clock = io.clock
        self.wall = wall = io.wall
        self.primary = plan.primary
        self.loop = Loop()
        self.signals: SignalQueue | None = None
        self.reaper = Reaper(subreaper=False)
        self.statedir: StateDir | None = None
        self.publisher: Publisher | None = None
        #: This run's token in every service's $OOMGUARD_INSTANCE (runtime/survivors.py).
        self.instance = secrets.token_hex(16)
        self.output = Sinks(
            self.loop,
            log,
            self.emit,
            stdout_fd=io.stdout_fd,
            stderr_fd=io.stderr_fd,
            sinks=io.sinks,
        )
        #: Why there is no slice tree (read-only cgroupfs, no memory controller), or None:
        #: then services run in process groups in oomguard's own cgroup (runtime/placement.py).
        self.placement: Placement = (
            ProcessGroups(self, degraded, self_cgroup)
            if degraded is not None
            else Slices(
                self,
                fs,
                plan.tree,
                self_cgroup,
                mode=plan.mode,
                memory_max={spec.name: spec.limits.max for spec in plan.services},
            )
        )
        self.lifecycle = Lifecycle(
            plan, self.placement, self, self.reaper, Identity(self.instance, wall)
        )
        self._placed = False
        self.now = clock()
        #: Readiness probes, depends_on gating, oomguard's own sd_notify (runtime/readyhost.py).
        self.ready = ReadyExtension(self)
        self.lifecycle.extra_env = self.ready.env
        self.extensions: list[Extension] = [self.ready]
        #: ``[hooks]``, started from `emit` (runtime/hooks.py); None: no hooks.
        self.hooks: Hooks | None = None

    # -- what the parts and the context read ---------------------------------------------------

    @property
    def degraded(self) -> str | None:
        return self.placement.degraded

    @property
    def built(self) -> BuiltTree | None:
        return self.placement.built

    @property
    def services(self) -> dict[str, Service]:
        return self.lifecycle.services

    @property
    def shutdown(self) -> Shutdown | None:
        return self.lifecycle.shutdown

    @property
    def stopping(self) -> bool:
        return self.lifecycle.shutdown is not None

    @property
    def dirty(self) -> bool:
        """Some state changed since state.json was last written."""
        return self.publisher.dirty if self.publisher is not None else True

    def changed(self) -> None:
        if self.publisher is not None:
            self.publisher.dirty = True

    def emit(self, kind: str, cgroup: CgroupPath | None, **fields: Any) -> None:
        """Append an event to events.jsonl (the audit trail); never fails the loop. The event's
        hook, if any, starts here: just before the action it records (runtime/hooks.py)."""
        if self.hooks is not None:
            self.hooks.on_event(kind, cgroup, fields)
        if self.publisher is not None:
            self.publisher.emit(kind, cgroup, **fields)

    def feed(self, svc: Service, event: rp.Event) -> None:
        self.lifecycle.feed(svc, event)

    def begin_shutdown(
        self, reason: str, status: int | None = None, fatal: str | None = None
    ) -> None:
        self.lifecycle.begin_shutdown(reason, status, fatal)

    def counters_rose(self, path: CgroupPath, delta: Mapping[str, int]) -> None:
        for ext in self.extensions:
            ext.on_counters(path, dict(delta))

    def add_reader(self, fd: int, mask: int, handler: Handler) -> None:
        self.loop.add(fd, mask, handler)

    def remove_reader(self, fd: int) -> None:
        self.loop.remove(fd)

    def state_services(self) -> dict[str, ServiceState]:
        """Per-service state in state.json's "services" shape (also what metrics export)."""
        in_slice = self.placement.degraded is None
        return state_services(self.services.values(), self.now, in_slice=in_slice)

    def output_dropped(self) -> dict[tuple[str, str], int]:
        """Lines of oomguard's output dropped, by (source, stream) (runtime/sinks.py)."""
        return self.output.dropped()

    # -- setup ----------------------------------------------------------------------------------

    def _setup(self) -> None:
        # Queue signals before anything can fork: a SIGTERM during startup must not be lost,
        # and as PID 1 the kernel drops SIGTERM unless a handler is installed.
        self.signals = SignalQueue()
        self.loop.add(self.signals.fileno(), select.EPOLLIN, self._on_signals)
        if self.init:
            # PID 1 reaps orphans implicitly; elsewhere --init asks to become their reaper.
            ok = os.getpid() == 1 or become_subreaper()
            self.reaper = self.lifecycle.reaper = Reaper(subreaper=ok)
            if not ok:
                self.log.warn("subreaper", error="prctl(PR_SET_CHILD_SUBREAPER) failed")
        # The state dir first, checked and locked: a second supervisor on it is refused here,
        # before it can touch the tree or the first one's services.
        self.statedir = StateDir.open(self.plan.state_dir)
        self.statedir.lock()
        self.publisher = Publisher(
            self.statedir,
            self.log,
            mode=self.plan.mode,
            instance=self.instance,
            degraded=self.placement.degraded,
            wall=self.wall,
        )
        # Before any new service starts (and before the tree is adopted, whose leftovers
        # tree.build kills with SIGKILL): the last run's survivors get their stop signal.
        _stop_survivors(self.statedir, self.plan, self.log, self.emit)
        self._protect_self()
        # Now, not after the first cgroup.kill: see release.py (and never in a forked child).
        release.prepare()
        self.placement.setup(TreeLedger(self.statedir))
        self._placed = True
        prefixed = [spec.name for spec in self.plan.services if spec.log == "prefix"]
        width = max(len(spec.name) for spec in self.plan.services)
        self.lifecycle.pump = self.output.make_pump(prefixed, width)
        self.lifecycle.make_services()
        # Extensions see the supervisor only through the narrow context (runtime/context).
        self._setup_hooks(self.plan.hooks)
        ctx = SupervisorContext(self, self.plan)
        for ext in self.extensions:
            ext.setup(ctx)

    def _setup_hooks(self, spec: HooksSpec) -> None:
        """``[hooks]``: started from `emit` (runtime/hooks.py) through a `OneshotRunner`
        (pidfd-watched, killed at the timeout, its status collected by the one reaper whichever
        path sees the exit); the runner's timeouts are served like an extension's."""
        if not spec.commands:
            return
        from oomguard.runtime.hooks import Hooks
        from oomguard.runtime.oneshot import OneshotRunner

        runner = OneshotRunner(self.loop, self.reaper, clock=self.clock)
        self.hooks = Hooks(spec, runner, self.log)
        self.extensions.append(self.hooks)
        self.log.info("hooks", hooks=",".join(spec.commands), timeout=f"{spec.timeout:g}s")

    def _protect_self(self) -> None:
        _protect_self(self.log)

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> Outcome:
        try:
            self._setup()
            self.now = self.clock()
            # depends_on: a service starts once what it depends on is ready (readyhost).
            self.lifecycle.start_all(hold=self.ready.hold)
            # The first wait must know the probes' deadlines: tell them the services started.
            self.ready.after_turn()
            while not self.lifecycle.finished():
                self._flush_state()
                self.output.watch()
                ready = self.loop.wait(self._timeout())
                self.now = self.clock()
                self.loop.dispatch(ready)
                self._tick()
            self._flush_state()
            return self._outcome()
        finally:
            self._close()

    def _timeout(self) -> float | None:
        deadlines = self.lifecycle.deadlines()
        deadlines += [ext.deadline() for ext in self.extensions]
        if self.output.unreported():
            deadlines.append(self.output.next_report)
        # A NaN deadline is never due (every comparison is false), so it needs no wake-up; an
        # enormous one (start_secs = 1e300) is fine here: the loop clamps the wait it is given.
        due = [d for d in deadlines if d is not None and not math.isnan(d)]
        if not due:
            return None
        return max(0.0, min(due) - self.clock())

    def _tick(self) -> None:
        self.lifecycle.tick()
        for ext in self.extensions:
            ext.tick(self.now)
        self.output.report(self.now, self.services)
        if self.lifecycle.shutdown is not None:
            self.lifecycle.advance_shutdown()
        for ext in self.extensions:
            ext.after_turn()

    def _on_signals(self, mask: int = 0) -> None:
        """Dispatch by `events.signals.disposition` (the table is in README.md)."""
        del mask
        assert self.signals is not None
        for sig in self.signals.drain():
            what = disposition(sig)
            name = signal_name(sig)
            if what == "reap":
                # Pidfds cover tracked services; orphans (PID 1) announce themselves only so.
                self.lifecycle.on_exits()
            elif what == "forward":
                self.lifecycle.forward(sig, name)
            elif what == "stop" and self.stopping and sig == signal.SIGINT:
                # A second Ctrl-C: stop waiting for graceful stops.
                self.lifecycle.kill_all("second_interrupt")
            elif what == "stop":
                self.log.info("signal_received", signal=name)
                self.begin_shutdown(f"received {name}")
            else:
                # Job control (^Z, a background tty access): a stopped supervisor would react
                # to no OOM, so it keeps running. Its services are not stopped either.
                self.log.info("signal_ignored", signal=name)

    # -- state and teardown ---------------------------------------------------------------------

    def _flush_state(self) -> None:
        if self.publisher is None or not self._placed:
            return
        root = self.placement.root
        self.publisher.flush(str(root) if root is not None else "", self.state_services)

    def _outcome(self) -> Outcome:
        primary = self.services[self.primary]
        lc = self.lifecycle
        return outcome(self.primary, primary.rec.last_exit, lc.shutdown, lc.oom_lines)

    def _close(self) -> None:
        self.lifecycle.close()
        for ext in self.extensions:
            with contextlib.suppress(Exception):
                ext.close()
        self.output.close()
        with contextlib.suppress(Exception):
            self.now = self.clock()
            self.output.report(self.now, self.services, final=True)
        self.placement.close()
        self.loop.close()
        if self.signals is not None:
            self.signals.close()
        if self.publisher is not None:
            self.publisher.close()
        if self.statedir is not None:
            # Closing releases the lock: only now may another supervisor take this state dir.
            self.statedir.close()


def _stop_survivors(statedir: StateDir, plan: Plan, log: Logger, emit: Callable[..., None]) -> None:
    """Stop what a killed supervisor on this state dir left running (runtime/survivors.py).
    We hold the lock, so its writer is dead, unless it was an oomguard without the lock."""
    from oomguard.errors import StateDirError
    from oomguard.runtime import survivors

    try:
        old = read_state(statedir.path)
    except OomguardError as err:
        log.warn("old_state_unreadable", error=str(err))
        return
    if old is None:
        return
    if old.get("pid") != os.getpid() and state_writer_alive(old):
        raise StateDirError(
            f"state_dir {statedir.path} is in use by oomguard pid {old.get('pid')} "
            "(an older version without the lock file)",
            "stop that oomguard first, or give this one its own [oomguard] state_dir",
        )
    found = survivors.find(old)
    if not found:
        return
    specs = {spec.name: spec for spec in plan.services}

    def stop_signal(name: str) -> int:
        return specs[name].stop_signal if name in specs else int(signal.SIGTERM)

    def timeout(name: str) -> float:
        return specs[name].restart.stop_timeout if name in specs else survivors.MAX_WAIT

    def warn(event: str, **fields: Any) -> None:
        log.warn(event, **fields)
        emit(event, None, **fields)

    survivors.stop(found, stop_signal, timeout, warn)


def _protect_self(log: Logger) -> None:
    """Take the primary's oom_score_adj (-999) for oomguard itself.

    At the default 0, a tree-level or container-level OOM with no sidecar left would kill
    oomguard before the primary, and as PID 1 that ends the whole container. At -999, a tie
    with the primary, the kernel kills the larger of the two (the primary), and oomguard
    survives to restart it. Not -1000: a child whose own adj write failed would inherit it
    and be unkillable. Children get their own value written before exec (launcher).
    """
    target = -999
    current = proc.oom_score_adj()
    if current is None or current <= target:
        return
    if not proc.can_lower_oom_score_adj():
        log.warn(
            "self_oom_score_adj",
            keeps=current,
            wanted=target,
            reason="no CAP_SYS_RESOURCE; a large OOM could pick oomguard before the primary",
        )
        return
    try:
        proc.write_oom_score_adj(b"%d" % target)
    except OSError as err:
        log.warn("self_oom_score_adj", keeps=current, error=err.strerror or str(err))


def default_self_cgroup() -> tuple[Path, CgroupPath]:
    """The cgroup2 mount and our own cgroup in it, or a clear error for `run`/`exec`."""
    from oomguard.cgroup.discover import find_cgroup2_mount, own_cgroup

    mount = find_cgroup2_mount()
    if mount is None:
        raise CgroupError(
            "no cgroup2 mount found",
            hint="oomguard needs cgroup v2; run `oomguard check` to see what this host offers",
        )
    return mount, own_cgroup()


__all__ = [
    "SUPERVISOR_LEAF",
    "Outcome",
    "RunIO",
    "Service",
    "Supervisor",
    "default_self_cgroup",
]
