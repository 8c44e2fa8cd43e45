"""Watching for OOM kills: memory.events.local of the tree's cgroups, or /proc/vmstat.

`SliceOomWatch` (services in slices) holds one inotify fd watching ``memory.events.local`` of
every cgroup oomguard made. `.local` attributes an event to the cgroup where it happened (`oom`
where the limit was hit, `oom_kill` in the victim's cgroup), whereas memory.events also counts
every descendant's. The kernel coalesces and rate-limits the notifications (100/s per file), so
every wake-up re-reads and *diffs* the counters: notifications are never counted. What a rise
means is decided in policy/oom.py; this module does the reading, remembering and reporting.

A removed cgroup sends no IN_IGNORED to watches on its files (6.1), so each cgroup's parent
directory is watched for IN_DELETE too (`InotifyWatcher.watch_removal`), reported as VANISHED.

`VmstatOomWatch` (degraded: services in process groups, no slices) has only the global
``oom_kill`` counter of /proc/vmstat: a rise during a service's SIGKILL exit is strong but not
certain evidence, and is reported as such.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, Protocol

from oomguard import proc
from oomguard.errors import OomguardError, Vanished
from oomguard.events.inotify import InotifyWatcher, WatchEvent
from oomguard.policy import oom
from oomguard.units import format_size

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from oomguard.cgroup.fs import CgroupFS
    from oomguard.cgroup.path import CgroupPath
    from oomguard.observe.log import Logger
    from oomguard.runtime.service import Service


class OomHost(Protocol):
    """What the OOM watch needs from the runtime around it (the slice placement)."""

    @property
    def now(self) -> float:
        """The loop turn's monotonic time."""

    @property
    def log(self) -> Logger: ...

    def emit(self, kind: str, cgroup: CgroupPath | None, **fields: Any) -> None:
        """Append to the event log."""

    def service_at(self, path: CgroupPath) -> Service | None:
        """The service whose cgroup is `path`, if any."""

    def vanished(self, path: CgroupPath) -> None:
        """A watched cgroup was removed from outside."""

    def counters_rose(self, path: CgroupPath, delta: Mapping[str, int]) -> None:
        """memory.events.local of `path` rose by `delta` (the pressure response's signal)."""

    def kill(self, svc: Service, reason: str) -> None:
        """Kill what is left of `svc` (a half-killed service)."""


class SliceOomWatch:
    """memory.events.local of every watched cgroup: one inotify fd, diffed counters."""

    def __init__(self, fs: CgroupFS, host: OomHost) -> None:
        self.fs = fs
        self.host = host
        self.inotify: InotifyWatcher[CgroupPath] = InotifyWatcher()
        #: Last seen memory.events.local counters per watched cgroup (root, slices, services).
        self.local: dict[CgroupPath, dict[str, int]] = {}
        self.sightings = oom.Sightings()

    def fileno(self) -> int:
        return self.inotify.fileno()

    def watch(self, path: CgroupPath) -> None:
        """Start watching `path` (again: a recreated cgroup is a new inode): its counters as
        they are now are the baseline. A new cgroup's counters start at zero; diffing against
        the old ones would hide its first events."""
        self.inotify.unwatch(path)
        self.local[path] = self._read(path)
        self.inotify.watch(self.fs.file_path(path, "memory.events.local"), path)
        self.inotify.watch_removal(self.fs.dir(path), path)

    def rebase(self, path: CgroupPath) -> None:
        """Take the counters of `path` as they are now as the baseline (before a service
        starts, so that an OOM of its previous incarnation is not blamed on the new one)."""
        with contextlib.suppress(Vanished):
            self.local[path] = self._read(path)

    def on_ready(self, mask: int = 0) -> None:
        """The inotify fd is readable: diff every cgroup it reports, deepest first."""
        del mask
        changed: list[CgroupPath] = []
        for path, flags in self.inotify.read():
            if flags & WatchEvent.OVERFLOW:
                # Events were lost; counters are cumulative, so re-reading every cgroup (done
                # for all keys, which OVERFLOW is reported on) loses nothing but the timing.
                changed.append(path)
            elif not flags & WatchEvent.VANISHED or self.fs.exists(path):
                # (An existing cgroup reported VANISHED was already recreated: the removal was
                # noticed first another way, and its counters may have changed since.)
                changed.append(path)
            else:
                self.host.vanished(path)
        for path in oom.deepest_first(changed):
            self.check(path)

    def check(self, path: CgroupPath) -> dict[str, int]:
        """Diff memory.events.local of `path` against what we saw last; act on the rises."""
        delta = self._consume(path)
        if not delta:
            return {}
        rise = oom.classify(delta)
        if rise is oom.Rise.KILL:
            self._on_kill(path, delta)
        elif rise is oom.Rise.LIMIT:
            # Limit hit here; the kill (if any) is charged to a descendant's .local and handled
            # there. Logged so that an OOM that reclaim resolved is still visible. Remembered:
            # the kernel bumps `oom` before it kills, and when the two notifications land in
            # different loop turns the victim's handler must still find where the limit was.
            self.sightings = self.sightings.seen([path], self.host.now)
            self.host.emit("oom", path, count=delta["oom"], **self.figures(path))
        return delta

    def close(self) -> None:
        self.inotify.close()

    # -- inside ---------------------------------------------------------------------------------

    def _read(self, path: CgroupPath) -> dict[str, int]:
        return self.fs.read_flat(path, "memory.events.local")

    def _consume(self, path: CgroupPath) -> dict[str, int] | None:
        """Read memory.events.local of `path`, record it, and return what rose since the last
        read (None if the cgroup is gone). Every read goes through here so that no rise is
        consumed without the pressure response seeing it."""
        try:
            new = self._read(path)
        except Vanished:
            self.host.vanished(path)
            return None
        old = self.local.get(path, {})
        self.local[path] = new
        delta = {k: v - old.get(k, 0) for k, v in new.items() if v > old.get(k, 0)}
        if delta:
            self.host.counters_rose(path, delta)
        return delta

    def figures(self, path: CgroupPath) -> dict[str, Any]:
        """memory.current, .max and .peak of `path`, as far as they can be read."""
        out: dict[str, Any] = {}
        with contextlib.suppress(OomguardError):
            out["current"] = self.fs.read_int(path, "memory.current")
        with contextlib.suppress(OomguardError):
            out["max"] = format_size(self.fs.read_limit(path, "memory.max"))
        with contextlib.suppress(OomguardError):
            peak = self.fs.read_optional(path, "memory.peak")
            if peak is not None:
                out["peak"] = int(peak)
        return out

    def _on_kill(self, path: CgroupPath, delta: dict[str, int]) -> None:
        host = self.host
        # Reading the watched ancestors now also consumes their rises, so their own
        # notifications (which may arrive later) do not log them twice.
        rises = [(anc, self._consume(anc) or {}) for anc in self._watched_above(path)]
        svc = host.service_at(path)
        services = {path: svc.name} if svc is not None else {}
        kill, self.sightings = oom.attribute(path, delta, rises, self.sightings, host.now, services)
        limit_at = kill.limit_at if kill.limit_elsewhere else None
        limit_figures = self.figures(limit_at) if limit_at is not None else {}
        main_alive = svc is not None and svc.child is not None and _alive(svc.child.pid)
        victim = svc.child.pid if svc is not None and svc.child and not main_alive else None
        fields = oom.kill_fields(kill, self.figures(path), limit_figures, victim)
        host.log.warn("oom_kill", service=kill.service, slice=str(path), **fields)
        host.emit("oom_kill", path, service=kill.service, **fields)
        if svc is None:
            return
        svc.oom_pending = True
        if oom.sweep_rest(main_alive, svc.spec.survive_partial_kill):
            host.kill(svc, "oom_kill")

    def _watched_above(self, path: CgroupPath) -> list[CgroupPath]:
        """The watched ancestors of `path`, nearest first."""
        return [anc for anc in reversed(path.ancestors()) if anc in self.local]


class VmstatOomWatch:
    """Degraded mode's OOM evidence: the global oom_kill counter of /proc/vmstat."""

    def __init__(
        self,
        log: Logger,
        emit: Callable[..., None],
        read: Callable[[], int | None] | None = None,
    ) -> None:
        self.log = log
        self.emit = emit
        self._read = read or proc.vmstat_oom_kill
        #: The count at the last check: the baseline for the next exit.
        self.count = self._read()

    def check(self, svc: Service) -> None:
        """`svc`'s main process exited: did the OOM killer kill something meanwhile?"""
        now = self._read()
        rose = oom.vmstat_rise(self.count, now)
        if rose:
            svc.oom_pending = True
            self.log.warn("oom_kill", service=svc.name, source="/proc/vmstat", count=rose)
            self.emit("oom_kill", None, service=svc.name, source="vmstat", count=rose)
        self.count = now


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still "exists" for kill(0); /proc state tells it apart.
    return proc.is_zombie(pid) is False
