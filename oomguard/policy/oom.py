"""Who an OOM kill took and which limit was hit. Pure: counter rises in, verdicts out.

The kernel facts behind it (memory.events.local, one file per cgroup; checked on 6.1):

* ``oom`` rises in the cgroup whose limit was hit (its own memory.max, or a shared budget
  above it, or the tree root), ``oom_kill`` in the victim's own cgroup. One OOM raises both,
  ``oom`` first.
* Each file raises its own inotify IN_MODIFY, coalesced and rate-limited, so the two rises of
  one OOM may be read in the same loop turn or a few turns apart. Hence:
  - a wake-up handles the changed cgroups deepest first (`deepest_first`), so the victim's
    handler finds the budget's rise still unread, reads it (consuming it, so the budget's own
    notification does not report it a second time) and names it;
  - an ``oom`` rise read on its own (a limit hit that reclaim resolved, or the first half of
    an OOM whose kill is read later) is remembered in `Sightings` for
    `OOM_ATTRIBUTION_WINDOW` seconds, and explains a kill read later.
* A group kill (memory.oom.group=1) charges ``oom_kill`` to every member's cgroup but the
  budget's ``oom`` rises once: the sighting recorded for the first victim names the budget for
  the others.

In degraded mode (no slices) only /proc/vmstat's global ``oom_kill`` counter is available: a
rise during a service's SIGKILL exit is strong evidence, not proof (`vmstat_rise`).

Nothing here reads a file or a clock: `now` is passed in.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from oomguard.units import format_size

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from oomguard.cgroup.path import CgroupPath

#: How long an `oom` rise read on its own stays the explanation for a kill read later: the
#: kernel bumps both within one OOM, but inotify may deliver them a few loop turns apart.
OOM_ATTRIBUTION_WINDOW = 2.0

#: What `Kill.limit_text` says when no cgroup of the tree had its limit hit: the OOM came from
#: above the tree (a container's limit, the machine running out).
OUTSIDE = "outside the tree"


class Rise(Enum):
    """What a rise of one cgroup's memory.events.local counters means for OOM handling."""

    #: `oom_kill` rose: a process of this cgroup was killed (`attribute` says why).
    KILL = "kill"
    #: Only `oom` rose: this cgroup's limit was hit and the kill, if any, was charged to a
    #: descendant (or reclaim resolved it). Remember it (`Sightings.seen`) and report it.
    LIMIT = "limit"
    #: Neither (low, high, max): throttling and reclaim, the pressure response's business.
    OTHER = "other"


def classify(delta: Mapping[str, int]) -> Rise:
    """What the rise `delta` (counter -> how much it rose) is."""
    if delta.get("oom_kill", 0) > 0:
        return Rise.KILL
    if delta.get("oom", 0) > 0:
        return Rise.LIMIT
    return Rise.OTHER


def deepest_first(paths: Iterable[CgroupPath]) -> list[CgroupPath]:
    """The cgroups of one wake-up in handling order: each once, the deepest first (a victim's
    own cgroup before the budgets above it; see the module doc). Equal depths keep path order
    so the order is deterministic."""
    return sorted(set(paths), key=lambda p: (-p.depth, p.parts))


@dataclass(frozen=True)
class Sightings:
    """When an `oom` rise was last read, per cgroup (monotonic seconds)."""

    at: Mapping[CgroupPath, float] = field(default_factory=dict)

    def seen(self, paths: Iterable[CgroupPath], now: float) -> Sightings:
        """These cgroups' `oom` rose at `now`."""
        new = dict(self.at)
        new.update((p, now) for p in paths)
        return Sightings(new)

    def recent(self, path: CgroupPath, now: float) -> bool:
        """An `oom` rise of `path` read within the window before `now` (inclusive)."""
        at = self.at.get(path)
        return at is not None and now - at <= OOM_ATTRIBUTION_WINDOW


@dataclass(frozen=True)
class Kill:
    """One `oom_kill` rise, attributed."""

    #: The victim's cgroup (where `oom_kill` rose).
    cgroup: CgroupPath
    #: The service that lives there, or None (a budget, or the tree root itself).
    service: str | None
    #: How many kills the rise counts.
    count: int
    #: Where the limit was hit: the victim's own cgroup, a budget above it, the tree root, or
    #: None when no watched cgroup's `oom` rose (the OOM came from outside the tree).
    limit_at: CgroupPath | None

    @property
    def limit_text(self) -> str:
        return str(self.limit_at) if self.limit_at is not None else OUTSIDE

    @property
    def limit_elsewhere(self) -> bool:
        """The limit hit is not the victim's own (a budget's or the root's figures matter)."""
        return self.limit_at is not None and self.limit_at != self.cgroup


def attribute(
    path: CgroupPath,
    delta: Mapping[str, int],
    rises: Sequence[tuple[CgroupPath, Mapping[str, int]]],
    sightings: Sightings,
    now: float,
    services: Mapping[CgroupPath, str],
) -> tuple[Kill, Sightings]:
    """Attribute the `oom_kill` rise `delta` of `path`.

    `rises` are what the watched ancestors' counters rose by when read just now, nearest
    first. Where the limit was hit, in order:

    1. `path` itself, when its own `oom` rose in the same read;
    2. the nearest ancestor whose `oom` rose in this read (a fresh rise wins over a memory);
    3. the nearest of `path` and its ancestors with a recent sighting;
    4. else outside the tree.

    Every ancestor whose `oom` rose now is remembered, for the other victims of the same OOM.
    """
    rose = [anc for anc, rise in rises if rise.get("oom", 0) > 0]
    sightings = sightings.seen(rose, now)
    limit_at: CgroupPath | None
    if delta.get("oom", 0) > 0:
        limit_at = path
    elif rose:
        limit_at = rose[0]
    else:
        nearest = [path, *reversed(path.ancestors())]
        limit_at = next((c for c in nearest if sightings.recent(c, now)), None)
    kill = Kill(path, services.get(path), delta.get("oom_kill", 0), limit_at)
    return kill, sightings


def kill_fields(
    kill: Kill,
    figures: Mapping[str, Any],
    limit_figures: Mapping[str, Any],
    victim_pid: int | None,
) -> dict[str, Any]:
    """The `oom_kill` log line's and event's fields (besides service and slice).

    `figures` are the victim cgroup's (current, max, peak), `limit_figures` those of the
    cgroup whose limit was hit when that is another one; `victim_pid` is the service's main
    process when the kill took it.
    """
    fields: dict[str, Any] = {"count": kill.count, **figures, "limit_at": kill.limit_text}
    if kill.limit_elsewhere and limit_figures:
        fields["limit_current"] = limit_figures.get("current")
        fields["limit_max"] = limit_figures.get("max")
    if victim_pid is not None:
        fields["victim_pid"] = victim_pid
    return fields


def sweep_rest(main_alive: bool, survive_partial_kill: bool) -> bool:
    """After an OOM kill in a running service's cgroup: kill the rest of it?

    When the kill took another process than the main one (a worker, a backend), a half-killed
    service is worse than a restarted one, unless it says it copes (`survive_partial_kill`).
    When the main process died, its exit path cleans the cgroup up anyway.
    """
    return main_alive and not survive_partial_kill


def vmstat_rise(before: int | None, after: int | None) -> int:
    """How many OOM kills /proc/vmstat counted between two reads (0 when either is unknown).
    The counter is global: in degraded mode a rise during a service's SIGKILL exit is strong
    but not certain evidence that the OOM killer took it."""
    if before is None or after is None or after <= before:
        return 0
    return after - before


def oom_killed(exit_signal: int | None, pending: bool) -> bool:
    """A main process's exit was an OOM kill: a SIGKILL while an OOM kill was seen in its
    cgroup (or, degraded, in /proc/vmstat) during this incarnation."""
    return exit_signal == signal.SIGKILL and pending


def oom_line(service: str, where: str, memory_max: int | None, peak: int | None) -> str:
    """The human line for a service the OOM killer took: `where` is its slice relative to the
    tree's parent (``oomguard/db``), `memory_max` its configured limit, `peak` memory.peak."""
    shown = format_size(peak) if peak is not None else "?"
    return (
        f"{service} was killed by the OOM killer (slice {where}, memory.max "
        f"{format_size(memory_max)}, peak {shown})"
    )


def degraded_oom_line(service: str, reason: str) -> str:
    """The same line when there is no slice (degraded mode, `reason` says why)."""
    return f"{service} was killed by the OOM killer (degraded mode, no slice: {reason})"


__all__ = [
    "OOM_ATTRIBUTION_WINDOW",
    "OUTSIDE",
    "Kill",
    "Rise",
    "Sightings",
    "attribute",
    "classify",
    "deepest_first",
    "degraded_oom_line",
    "kill_fields",
    "oom_killed",
    "oom_line",
    "sweep_rest",
    "vmstat_rise",
]
