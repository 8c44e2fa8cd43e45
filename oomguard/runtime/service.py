"""One supervised service at run time: its compiled spec, its policy record, and the OS objects
behind it.

Who changes what: the restart policy's `Record` is the source of truth for the lifecycle
(runtime/lifecycle.py feeds it), the placement (runtime/placement.py) owns `procs_fd`, and the
OOM watch sets `oom_pending`. The spec (oomguard/plan.py) is read-only: nothing at run time
reads the config models or validates again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from oomguard.policy import restart as rp

if TYPE_CHECKING:
    from oomguard.cgroup.path import CgroupPath
    from oomguard.plan import ServiceSpec
    from oomguard.runtime import launcher


@dataclass(eq=False)
class Service:
    """Runtime bookkeeping for one service. The policy record is the source of truth for its
    lifecycle; everything here is about the OS objects that back it."""

    spec: ServiceSpec
    cgroup: CgroupPath
    rec: rp.Record = field(init=False)
    #: The restart policy's parameters (the spec's, kept here so a test can vary them).
    params: rp.RestartParams = field(init=False)
    procs_fd: int = -1
    child: launcher.Child | None = None
    #: The slice's memory.events.local oom_kill rose while this incarnation ran.
    oom_pending: bool = False
    started_wall: float | None = None
    evictions: int = 0
    #: Processes of its slice the shed rung signalled (runtime/shed.py).
    sheds: int = 0
    #: The main process's start time (see observe/state.py); None until started.
    pid_start: int | None = None

    def __post_init__(self) -> None:
        self.rec = rp.Record(name=self.spec.name)
        self.params = self.spec.restart

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_primary(self) -> bool:
        return self.spec.is_primary

    @property
    def criticality(self) -> int:
        """Rank among services, higher is kept longer (the primary's is above every sidecar's)."""
        return self.spec.criticality

    @property
    def oom_score_adj(self) -> int:
        return self.spec.oom_score_adj
