"""Where services live: one interface, two implementations (trio's `_subprocess_platform`).

* `Slices`: the cgroup v2 slice tree. Each service joins its own slice between fork and exec
  (through a pre-opened cgroup.procs fd), is killed whole with cgroup.kill, and OOM kills are
  read from memory.events.local (`SliceOomWatch`). The tree is built (or adopted) at setup and
  torn down at close; a slice removed from outside is made again.
* `ProcessGroups`: degraded mode, when no slice tree can be built (a read-only cgroupfs, no
  memory controller). Services run in oomguard's own cgroup with their oom_score_adj only;
  each is a session leader, so its process group is the closest thing to a slice: it is what
  gets killed (never oomguard's own cgroup). OOM kills are recognised from /proc/vmstat's
  global counter at a SIGKILL exit (`VmstatOomWatch`), as likely, not certain.

The supervisor and the lifecycle call only `Placement`; nothing else asks which one it is.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from typing import TYPE_CHECKING, Any, Protocol

from oomguard.cgroup import tree as treemod
from oomguard.errors import CgroupError, OomguardError, Vanished
from oomguard.policy import oom
from oomguard.runtime import release
from oomguard.runtime.oomwatch import SliceOomWatch, VmstatOomWatch
from oomguard.units import format_size

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from oomguard.cgroup.fs import CgroupFS
    from oomguard.cgroup.path import CgroupPath
    from oomguard.cgroup.spec import TreeSpec
    from oomguard.observe.log import Logger
    from oomguard.runtime.service import Service


class Host(Protocol):
    """What a placement needs from the runtime around it."""

    @property
    def now(self) -> float:
        """The loop turn's monotonic time."""

    @property
    def log(self) -> Logger: ...

    @property
    def services(self) -> Mapping[str, Service]:
        """Every service by name (made after `Placement.setup`)."""

    @property
    def stopping(self) -> bool:
        """The run is shutting down: nothing is to be rebuilt."""

    def emit(self, kind: str, cgroup: CgroupPath | None, **fields: Any) -> None:
        """Append to the event log."""

    def counters_rose(self, path: CgroupPath, delta: Mapping[str, int]) -> None:
        """memory.events.local of `path` rose by `delta`."""

    def add_reader(self, fd: int, mask: int, handler: Callable[[int], None]) -> None:
        """Call `handler(mask)` from the loop when `fd` is ready for `mask`."""

    def remove_reader(self, fd: int) -> None: ...


class Placement(Protocol):
    """Where services live, how they are killed whole, and how their OOM kills are seen."""

    #: Why services do not live in slices (degraded mode), or None.
    degraded: str | None

    @property
    def root(self) -> CgroupPath | None:
        """The tree root, or None without a tree."""

    @property
    def built(self) -> treemod.BuiltTree | None:
        """The tree, for the extensions that read its cgroups (None without one)."""

    def setup(self, ledger: treemod.TreeLedger | None) -> None:
        """Before the first service is made: build the tree (recording it in `ledger`, the
        state dir's proof that the tree is oomguard's), or say why there is none."""

    def cgroup_of(self, name: str) -> CgroupPath:
        """Where service `name` runs."""

    def attach(self, svc: Service) -> None:
        """`svc` was made: open what its start needs (once, before any fork)."""

    def before_spawn(self, svc: Service) -> None:
        """`svc` is about to start: an OOM of its last incarnation is not this one's."""

    def kill(self, svc: Service, reason: str) -> None:
        """SIGKILL everything `svc` runs, now (logged with `reason`)."""

    def exited(self, svc: Service) -> None:
        """`svc`'s main process was reaped: look for OOM evidence (sets `svc.oom_pending`)."""

    def cleanup(self, svc: Service) -> None:
        """After the exit is handled: what the main process left behind goes too, so the next
        start is clean (systemd's KillMode=control-group)."""

    def oom_line(self, svc: Service) -> str:
        """The line for humans when the OOM killer took `svc`."""

    def kill_on_error(self, svc: Service) -> None:
        """Internal-error path: never leave `svc` running unsupervised. Never raises."""

    def close(self) -> None:
        """Release fds and tear the tree down (the services are gone by now)."""


def _released(done: release.Released) -> dict[str, Any]:
    """A kill's log/event fields for process_mrelease: none where the kernel lacks it."""
    if done.unsupported and not done.released:
        return {}
    # `tried` beside `released`: a process that already ran its own exit_mm by the time of the
    # call (it was scheduled first, as on an idle CPU) is "gone", its memory on its way back.
    return {
        "mreleased": done.released,
        "mrelease_tried": done.tried,
        "mrelease_ms": round(done.seconds * 1000, 1),
    }


class Slices:
    """Services in the slices of a cgroup v2 tree (see module doc)."""

    def __init__(
        self,
        host: Host,
        fs: CgroupFS,
        spec: TreeSpec,
        self_cgroup: CgroupPath,
        *,
        mode: str,
        memory_max: Mapping[str, int | None],
    ) -> None:
        self.host = host
        self.fs = fs
        self.spec = spec
        self.self_cgroup = self_cgroup
        self.mode = mode
        #: Each service's configured memory.max, for the OOM line.
        self.memory_max = dict(memory_max)
        self.degraded: str | None = None
        self._built: treemod.BuiltTree | None = None
        self.watch = SliceOomWatch(fs, self)

    # -- OomHost, for the watch ------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.host.now

    @property
    def log(self) -> Logger:
        return self.host.log

    def emit(self, kind: str, cgroup: CgroupPath | None, **fields: Any) -> None:
        self.host.emit(kind, cgroup, **fields)

    def counters_rose(self, path: CgroupPath, delta: Mapping[str, int]) -> None:
        self.host.counters_rose(path, delta)

    def service_at(self, path: CgroupPath) -> Service | None:
        return next((s for s in self.host.services.values() if s.cgroup == path), None)

    def vanished(self, path: CgroupPath) -> None:
        svc = self.service_at(path)
        if svc is not None:
            self.slice_vanished(svc)

    # -- Placement -------------------------------------------------------------------------------

    @property
    def root(self) -> CgroupPath | None:
        return self._built.root if self._built is not None else None

    @property
    def built(self) -> treemod.BuiltTree | None:
        return self._built

    def setup(self, ledger: treemod.TreeLedger | None) -> None:
        # The no-internal-process rule: oomguard moves itself into its own leaf first, then
        # controllers can be enabled for the slices (see cgroup/tree.py).
        built = treemod.build(self.fs, self.spec, os.getpid(), self.self_cgroup, ledger=ledger)
        self._built = built
        host = self.host
        for warning in built.warnings:
            host.log.warn("tree", detail=warning)
            host.emit("tree_warning", None, detail=warning)
        memory_max = format_size(self.spec.memory_max)
        host.emit("tree", built.root, adopted=built.adopted, mode=self.mode, memory_max=memory_max)
        host.log.info(
            "tree",
            root=str(built.root),
            adopted=built.adopted,
            services=sum(s.kind == "service" for s in self.spec.slices),
            slices=sum(s.kind == "slice" for s in self.spec.slices),
            mode=self.mode,
        )
        for path in [built.root, *built.paths.values()]:
            self.watch.watch(path)
        host.add_reader(self.watch.fileno(), select.EPOLLIN, self.watch.on_ready)

    def cgroup_of(self, name: str) -> CgroupPath:
        assert self._built is not None
        return self._built.paths[name]

    def attach(self, svc: Service) -> None:
        # Opened once, before any fork: the child joins its slice by writing "0" to this fd
        # between fork and exec, so even its first allocation is charged there.
        svc.procs_fd = self.fs.open_fd(svc.cgroup, "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)

    def before_spawn(self, svc: Service) -> None:
        self.watch.rebase(svc.cgroup)

    def kill(self, svc: Service, reason: str) -> None:
        # After a kernel OOM kill the kernel's oom_reaper is already reaping its victim, and
        # there process_mrelease did harm: racing it, the tree's next OOM picked the primary
        # (oom_score_adj -999) in 2 of 8 runs of test_primary_is_never_the_victim_10_of_10 on
        # 6.1 (0 of 8 with the release skipped). Until that is understood, fast release is for
        # the kills oomguard decides itself (evictions, stop timeouts), not for OOM cleanup.
        fast = reason != "oom_kill"
        main = svc.child.pidfd if svc.child is not None and fast else -1
        held: list[int] = []
        try:
            pids = self.fs.procs(svc.cgroup)
            if fast:
                pid = svc.child.pid if svc.child is not None else None
                held = release.hold_members(self.fs, svc.cgroup, pid)
            self.fs.kill(svc.cgroup)
        except Vanished:
            release.release(held)  # nothing to release: only closes them
            self.slice_vanished(svc)
            return
        # The SIGKILLs are pending now (cgroup.kill delivers them before its write returns), so
        # the kernel accepts process_mrelease: the memory comes back before the next allocation.
        freed = _released(release.release(held, [main]))
        self.host.log.warn("kill", service=svc.name, reason=reason, pids=len(pids), **freed)
        self.host.emit("kill", svc.cgroup, service=svc.name, reason=reason, pids=len(pids), **freed)

    def exited(self, svc: Service) -> None:
        # An OOM kill is a SIGKILL whose slice's memory.events.local oom_kill rose. Re-read
        # now: the pidfd can turn readable before inotify delivers the change.
        self.watch.check(svc.cgroup)

    def cleanup(self, svc: Service) -> None:
        try:
            if self.fs.populated(svc.cgroup):
                self.kill(svc, "main_exited")
        except Vanished:
            self.slice_vanished(svc)

    def oom_line(self, svc: Service) -> str:
        peak = None
        with contextlib.suppress(OomguardError, ValueError):
            raw = self.fs.read_optional(svc.cgroup, "memory.peak")
            peak = int(raw) if raw is not None else None
        assert self._built is not None
        rel = "/".join(svc.cgroup.parts[len(self._built.root.parts) - 1 :])
        return oom.oom_line(svc.name, rel, self.memory_max.get(svc.name), peak)

    def kill_on_error(self, svc: Service) -> None:
        with contextlib.suppress(OomguardError):
            self.fs.kill(svc.cgroup)

    def close(self) -> None:
        if self._built is not None:
            try:
                for msg in treemod.teardown(self.fs, self._built, keep_leaf=True):
                    self.host.log.info("teardown", detail=msg)
            except CgroupError as err:
                self.host.log.warn("teardown_failed", error=str(err))
        if not self.watch.inotify.closed:
            self.host.remove_reader(self.watch.fileno())
        self.watch.close()

    # -- a slice removed from outside ------------------------------------------------------------

    def slice_vanished(self, svc: Service) -> None:
        """Recreate it on the next start rather than crash: the tree is ours and its absence is
        an operator accident or a race with teardown."""
        host = self.host
        host.log.warn("slice_vanished", service=svc.name, slice=str(svc.cgroup))
        host.emit("slice_vanished", svc.cgroup, service=svc.name)
        if host.stopping or self._built is None:
            return
        try:
            self._recreate(svc.cgroup)
            if svc.procs_fd >= 0:
                os.close(svc.procs_fd)
                svc.procs_fd = -1
            self.attach(svc)
            host.log.info("slice_recreated", service=svc.name, slice=str(svc.cgroup))
        except OomguardError as err:
            host.log.error("slice_recreate_failed", service=svc.name, error=str(err))

    def _recreate(self, path: CgroupPath) -> None:
        """Make `path` (and any budget above it that went too) again, and watch them again."""
        assert self._built is not None
        made, warnings = treemod.recreate(self.fs, self.spec, self._built.root, path)
        for p in made:
            self.watch.watch(p)
        for warning in warnings:
            self.host.log.warn("tree", detail=warning)


class ProcessGroups:
    """Degraded mode: services in oomguard's own cgroup, one process group each (module doc)."""

    def __init__(self, host: Host, reason: str, self_cgroup: CgroupPath) -> None:
        self.host = host
        self.degraded: str | None = reason
        self.self_cgroup = self_cgroup
        self.watch = VmstatOomWatch(host.log, host.emit)

    @property
    def root(self) -> CgroupPath | None:
        return None

    @property
    def built(self) -> treemod.BuiltTree | None:
        return None

    def setup(self, ledger: treemod.TreeLedger | None) -> None:
        del ledger  # no tree to record
        self.host.log.warn(
            "degraded",
            reason=self.degraded,
            effect="no slices or limits; oom_score_adj only; OOM kills seen via /proc/vmstat",
        )
        self.host.emit("degraded", self.self_cgroup, reason=self.degraded)

    def cgroup_of(self, name: str) -> CgroupPath:
        del name
        return self.self_cgroup

    def attach(self, svc: Service) -> None:
        """Nothing to open: a service starts in oomguard's own cgroup."""

    def before_spawn(self, svc: Service) -> None:
        """The vmstat baseline is the last exit's read."""

    def kill(self, svc: Service, reason: str) -> None:
        # No slice of its own: the service's process group is the closest thing (each service
        # is a session leader, so pgid == its pid). Never oomguard's own cgroup.
        if svc.child is None:
            return
        svc.child.signal_group(signal.SIGKILL)
        freed = _released(release.release((), [svc.child.pidfd]))
        self.host.log.warn("kill", service=svc.name, reason=reason, scope="process_group", **freed)

    def exited(self, svc: Service) -> None:
        self.watch.check(svc)
        # Whatever the process group left behind goes too (as a slice would).
        if svc.child is not None:
            svc.child.signal_group(signal.SIGKILL)

    def cleanup(self, svc: Service) -> None:
        """Done on exit, by process group (`exited`)."""

    def oom_line(self, svc: Service) -> str:
        assert self.degraded is not None
        return oom.degraded_oom_line(svc.name, self.degraded)

    def kill_on_error(self, svc: Service) -> None:
        if svc.child is not None:
            svc.child.signal_group(signal.SIGKILL)

    def close(self) -> None:
        """No tree, no fd."""
