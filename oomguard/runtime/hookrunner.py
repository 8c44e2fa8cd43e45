"""The runner of hooks: a short command started through the launcher, watched by its pidfd from
the loop, its process group SIGKILLed at its timeout. Never blocks the loop after the spawn
(which waits only for the exec, at most `MAX_EXEC_WAIT`).

Interim: `runtime/oneshot.py` (lane ``ready``) is the shared runner of short commands; hooks
move onto it once it is in this tree. This one keeps to the same interface (`run`,
`deadline`, `tick`, `close`) and the same rules:

* the group is signalled only while its leader is unreaped (a zombie still holds its pid, so
  the pgid cannot name a group that reused the number); when the leader exits on its own, the
  rest of its group is killed too before it is reaped: a hook leaves nothing behind;
* statuses are collected by a `Reaper` of its own that tracks only the hooks' pids (waitid on
  those pids, never P_ALL). As PID 1 or a subreaper, the supervisor's orphan drain may collect
  a hook first; the result then says the status was lost.
"""

from __future__ import annotations

import dataclasses
import select
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from oomguard.errors import LaunchError
from oomguard.runtime import launcher
from oomguard.runtime.reaper import ExitStatus, Reaper

if TYPE_CHECKING:
    from collections.abc import Callable

    from oomguard.events.loop import Handler

#: The longest a spawn waits for the exec of a hook (it blocks the loop that long at most).
MAX_EXEC_WAIT = 5.0


@dataclass(frozen=True)
class HookResult:
    """How one run ended: "exited" (with `status`), "timed_out" or "failed_to_start"."""

    outcome: str
    seconds: float
    status: ExitStatus | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "exited" and self.status is not None and self.status.code == 0

    def describe(self) -> str:
        if self.outcome == "exited":
            return "status lost" if self.status is None or self.status.lost else str(self.status)
        if self.outcome == "timed_out":
            return f"timed out after {self.seconds:.3g}s"
        return f"failed to start: {self.error}"

    def fields(self) -> dict[str, str | int | float | bool | None]:
        status = self.status
        return {
            "outcome": self.outcome,
            "code": status.code if status is not None else None,
            "signal": status.signal if status is not None else None,
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }


@dataclass(eq=False)
class _Run:
    child: launcher.Child
    started: float
    deadline: float
    on_done: Callable[[HookResult], None]
    delivered: bool = False


class HookRunner:
    """Starts hooks and sees each through to a result, from the owner's loop."""

    def __init__(
        self,
        add: Callable[[int, int, Handler], None],
        remove: Callable[[int], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._add, self._remove, self._clock = add, remove, clock
        self._reaper = Reaper(subreaper=False)
        self._runs: dict[int, _Run] = {}

    def run(
        self,
        spec: launcher.LaunchSpec,
        procs_fd: int | None,
        *,
        timeout: float,
        on_done: Callable[[HookResult], None],
        cgroup: str | None = None,
    ) -> launcher.Child | None:
        """Start `spec`; `on_done(result)` is called exactly once (at once if it cannot start,
        and then `run` returns None)."""
        started = self._clock()
        # A hook must not outlive oomguard: nobody would collect it.
        spec = dataclasses.replace(spec, death_signal=int(signal.SIGKILL))
        try:
            child = launcher.spawn(
                spec, procs_fd, cgroup=cgroup, exec_timeout=min(timeout, MAX_EXEC_WAIT)
            )
        except LaunchError as err:
            on_done(HookResult("failed_to_start", self._clock() - started, error=str(err)))
            return None
        run = _Run(child, started, started + timeout, on_done)
        self._runs[child.pid] = run
        self._reaper.track(child.pid)
        if child.pidfd >= 0:
            self._add(child.pidfd, select.EPOLLIN, lambda _mask: self._exited(run))
        return child

    def deadline(self) -> float | None:
        due = [r.deadline for r in self._runs.values() if not r.delivered]
        return min(due, default=None)

    def tick(self, now: float) -> None:
        """Kill every run past its timeout (its whole group) and deliver "timed_out"; without
        pidfds (< 5.3) also collect what has exited."""
        for run in list(self._runs.values()):
            if not run.delivered and now >= run.deadline:
                launcher.signal_process_group(run.child.pid, signal.SIGKILL)
                self._deliver(run, HookResult("timed_out", now - run.started))
            if run.child.pidfd < 0:
                self._collect()

    def close(self) -> None:
        """Kill whatever still runs and collect what has exited; no more results."""
        for run in list(self._runs.values()):
            run.delivered = True
            launcher.signal_process_group(run.child.pid, signal.SIGKILL)
            self._collect()
            if run.child.pid in self._runs:
                self._forget(run)

    def _exited(self, run: _Run) -> None:
        """The leader is a zombie (its pidfd is readable): kill what it left in its group,
        then collect it."""
        launcher.signal_process_group(run.child.pid, signal.SIGKILL)
        self._collect()

    def _collect(self) -> None:
        """Collect every hook that has exited (non-blocking) and deliver its result."""
        for done in self._reaper.reap():
            mine = self._runs.get(done.pid)
            if mine is None:
                continue
            self._deliver(mine, HookResult("exited", self._clock() - mine.started, done.status))
            self._forget(mine)

    def _deliver(self, run: _Run, result: HookResult) -> None:
        if not run.delivered:
            run.delivered = True
            run.on_done(result)

    def _forget(self, run: _Run) -> None:
        self._runs.pop(run.child.pid, None)
        self._reaper.untrack(run.child.pid)
        if run.child.pidfd >= 0:
            self._remove(run.child.pidfd)
        run.child.close()
