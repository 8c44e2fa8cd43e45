"""One supervised service at run time: its policy record and the OS objects behind it.

Data only. Who changes what: the restart policy's `Record` is the source of truth for the
lifecycle (runtime/lifecycle.py feeds it), the placement (runtime/placement.py) owns
`procs_fd`, and the OOM watch sets `oom_pending`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from oomguard.cgroup.path import CgroupPath
    from oomguard.config.model import ServiceConfig
    from oomguard.policy import restart as rp
    from oomguard.runtime import launcher


@dataclass(eq=False)
class Service:
    """Runtime bookkeeping for one service. The policy record is the source of truth for its
    lifecycle; everything here is about the OS objects that back it."""

    name: str
    cfg: ServiceConfig
    params: rp.RestartParams
    rec: rp.Record
    cgroup: CgroupPath
    oom_score_adj: int
    criticality: int
    is_primary: bool
    procs_fd: int = -1
    child: launcher.Child | None = None
    #: The slice's memory.events.local oom_kill rose while this incarnation ran.
    oom_pending: bool = False
    started_wall: float | None = None
    evictions: int = 0
    #: The main process's start time (see observe/state.py); None until started.
    pid_start: int | None = None
