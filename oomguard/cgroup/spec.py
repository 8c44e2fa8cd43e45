"""The desired shape of a slice tree: plain frozen values, no pydantic, no I/O.

The config model compiles itself into a `TreeSpec` (oomd's "parse, then compile" split); the tree
builder consumes only this. That keeps `cgroup/tree.py` free of the config library and lets tests
and `oomguard exec` build specs directly.

A `Limits` is the *full* desired state of a slice's memory files, not a patch: adopting a tree
left by an earlier run rewrites every file, so a stale limit cannot survive a config change.

Layout on disk (names are unique across slices and services, so the tree is unambiguous)::

    <root>/                 memory.max = TreeSpec.memory_max (the whole tree's cap)
      supervisor/           oomguard's own leaf, memory.min = TreeSpec.reserve
      db/                   a service slice (the primary)
      sidecars/             a `[slice.sidecars]` budget
        backup/             a service slice inside it
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: oomguard's own leaf under the tree root. Reserved: no slice or service may use this name.
SUPERVISOR_LEAF = "supervisor"


@dataclass(frozen=True)
class Limits:
    """Values for memory.{min,low,high,max,swap.max,oom.group}. None means the kernel's "max"."""

    min: int = 0
    low: int = 0
    high: int | None = None
    max: int | None = None
    swap_max: int | None = None
    oom_group: bool = False


#: What a cgroup asks of other userspace OOM killers (systemd-oomd, Meta's oomd), through the
#: xattrs ``user.oomd_avoid`` / ``user.oomd_prefer`` (see cgroup/tree.py, `mark_oomd`).
OomdHint = Literal["avoid", "prefer"]


@dataclass(frozen=True)
class SliceSpec:
    """One cgroup in the tree. `path` is relative to the tree root, e.g. ("sidecars", "backup").
    `oomd`: the hint for other OOM killers (None: no xattr)."""

    name: str
    path: tuple[str, ...]
    kind: Literal["slice", "service"]
    limits: Limits = field(default_factory=Limits)
    oomd: OomdHint | None = None


@dataclass(frozen=True)
class TreeSpec:
    """`root` is a cgroup path under the cgroup2 mount ("/oomguard"); None means
    "<the cgroup oomguard was started in>/oomguard". `slices` are ordered parents first."""

    root: str | None
    reserve: int
    memory_max: int | None
    slices: tuple[SliceSpec, ...]
    controllers: tuple[str, ...] = ("memory", "pids")
