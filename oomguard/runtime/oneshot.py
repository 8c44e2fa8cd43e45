"""Short commands run to completion under a timeout: readiness probes, hooks.

A oneshot is started through `launcher.spawn` (the only code that forks), so it gets the same
treatment as a service: its cgroup joined before exec, its user, a clean environment, its own
session (pgid == pid), and PR_SET_PDEATHSIG so it cannot outlive oomguard. Nothing here blocks
the loop after spawn returns (spawn itself waits only for the exec, bounded by
``exec_timeout``):

* its exit is seen through its pidfd, registered in the loop with ``EPOLLIN`` (readable once it
  is a zombie), and collected through the shared `Reaper` (the only code that waits), which
  hands the status to this module whichever path collects it first;
* its stdout and stderr are pipes drained by loop handlers; the last `OUTPUT_TAIL` bytes are
  kept for the log line that explains a failure, the rest is dropped;
* its timeout is a deadline the owner's loop serves through `deadline()` / `tick(now)`: at the
  deadline its whole process group gets SIGKILL and the result is "timed_out" at once. The
  exit that follows is collected quietly.

SIGKILL goes to the process *group*, not the pid: a probe is often a shell that runs the real
check as a child, and killing only the shell would leave the child running. The group is
signalled only while its leader is unreaped (a zombie still holds its pid), so the pgid cannot
name a group that reused the number. When the leader exits on its own, the rest of its group is
killed too before the leader is reaped: a oneshot leaves nothing behind.

The loop interface is a handler per fd, ``add(fd, mask, handler)`` with ``handler(mask)``
(systemd's sd_event style); `OneshotRunner` needs nothing else from its owner.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import select
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

from oomguard.errors import LaunchError
from oomguard.runtime import launcher

if TYPE_CHECKING:
    from collections.abc import Callable

    from oomguard.runtime.reaper import ExitStatus, Reaped, Reaper

__all__ = [
    "OUTPUT_TAIL",
    "Oneshot",
    "OneshotResult",
    "OneshotRunner",
    "Outcome",
    "Reactor",
]

Outcome: TypeAlias = Literal["exited", "timed_out", "failed_to_start"]
#: How many bytes of a oneshot's output (stdout and stderr, in arrival order) are kept.
OUTPUT_TAIL = 2048
#: The longest spawn waits for the exec of a oneshot (it blocks the loop that long at most).
MAX_EXEC_WAIT = 5.0


@dataclass(frozen=True)
class OneshotResult:
    """How one run ended. `status` is set for "exited" (the exit code or the signal), None
    otherwise; `error` says why it failed to start. `seconds` is from the spawn to the end."""

    name: str
    outcome: Outcome
    seconds: float
    status: ExitStatus | None = None
    error: str | None = None
    output: bytes = b""

    @property
    def ok(self) -> bool:
        """It ran and exited with code 0."""
        return self.outcome == "exited" and self.status is not None and self.status.code == 0

    def describe(self) -> str:
        """One line for a log: "exit code 1", "timed out after 5s", "failed to start: ..."."""
        if self.outcome == "exited":
            return str(self.status)
        if self.outcome == "timed_out":
            return f"timed out after {self.seconds:.3g}s"
        return f"failed to start: {self.error}"

    def fields(self) -> dict[str, str | int | float | bool | None]:
        """Log/event fields: outcome, code, signal, seconds, and the output's last line."""
        status = self.status
        tail = self.output.decode("utf-8", "replace").strip().splitlines()
        return {
            "outcome": self.outcome,
            "code": status.code if status is not None else None,
            "signal": status.signal if status is not None else None,
            "seconds": round(self.seconds, 3),
            "error": self.error,
            "output": tail[-1][:200] if tail else None,
        }


class Reactor(Protocol):
    """The loop, as a oneshot uses it: one handler per fd, called with the ready mask."""

    def add(self, fd: int, mask: int, handler: Callable[[int], None], /) -> None: ...

    def remove(self, fd: int, /) -> None: ...


@dataclass(eq=False)
class Oneshot:
    """One running command. Owned by its `OneshotRunner`; callers only read it."""

    name: str
    child: launcher.Child
    started: float
    deadline: float
    on_done: Callable[[OneshotResult], None]
    #: Output pipes still open (read ends, non-blocking).
    pipes: list[int] = field(default_factory=list)
    output: bytearray = field(default_factory=bytearray)
    #: The result, once delivered (a timed-out run keeps its process until it is reaped).
    result: OneshotResult | None = None
    reaped: bool = False

    @property
    def pid(self) -> int:
        return self.child.pid

    def keep(self, chunk: bytes) -> None:
        self.output += chunk
        del self.output[:-OUTPUT_TAIL]


class OneshotRunner:
    """Starts oneshots and sees each through to a result, from the owner's event loop.

    `reactor` registers fds (a handler per fd), `reaper` is the process's one reaper (shared
    with the supervisor, so that its SIGCHLD path cannot swallow a oneshot's status). The owner
    calls `tick(now)` whenever `deadline()` has passed, and `close()` once at the end.
    """

    def __init__(
        self,
        reactor: Reactor,
        reaper: Reaper,
        *,
        clock: Callable[[], float] = time.monotonic,
        spawn: Callable[..., launcher.Child] = launcher.spawn,
    ) -> None:
        self._reactor = reactor
        self._reaper = reaper
        self._clock = clock
        self._spawn = spawn
        self._running: dict[int, Oneshot] = {}

    @property
    def running(self) -> list[Oneshot]:
        """Runs whose process has not been collected yet (timed-out ones included)."""
        return list(self._running.values())

    def run(
        self,
        spec: launcher.LaunchSpec,
        procs_fd: int | None,
        *,
        timeout: float,
        on_done: Callable[[OneshotResult], None],
        cgroup: str | None = None,
    ) -> Oneshot | None:
        """Start `spec` (in the cgroup behind `procs_fd`, see `launcher.spawn`) and call
        `on_done(result)` exactly once: when it exits, or at `timeout` seconds (then its
        process group is killed). A command that cannot start gets its "failed_to_start"
        result before `run` returns, and `run` returns None."""
        started = self._clock()
        spec = dataclasses.replace(
            spec,
            # Pipes, so the output can be kept for the log instead of flooding oomguard's.
            log="prefix",
            # A probe or hook must not outlive oomguard: nobody would collect it.
            death_signal=int(signal.SIGKILL),
        )
        try:
            child = self._spawn(
                spec, procs_fd, cgroup=cgroup, exec_timeout=min(timeout, MAX_EXEC_WAIT)
            )
        except LaunchError as err:
            seconds = self._clock() - started
            on_done(OneshotResult(spec.name, "failed_to_start", seconds, error=str(err)))
            return None
        shot = Oneshot(spec.name, child, started, started + timeout, on_done)
        self._running[child.pid] = shot
        self._reaper.track(child.pid, self._on_reaped, kill_group=True)
        try:
            self._watch(shot)
        except OSError:
            # The loop refused an fd (out of memory): never leave the command unwatched.
            self._kill_group(shot)
            self._finish_early(shot)
            raise
        return shot

    def _watch(self, shot: Oneshot) -> None:
        child = shot.child
        for attr in ("stdout_fd", "stderr_fd"):
            fd: int = getattr(child, attr)
            if fd >= 0:
                setattr(child, attr, -1)  # the pipe is ours now (closed in _close_pipe)
                shot.pipes.append(fd)
                self._reactor.add(fd, select.EPOLLIN, self._pipe_handler(shot, fd))
        if child.pidfd >= 0:
            self._reactor.add(child.pidfd, select.EPOLLIN, self._exit_handler(shot))
        # Without a pidfd (Linux < 5.3) only the supervisor's SIGCHLD path collects it.

    def _pipe_handler(self, shot: Oneshot, fd: int) -> Callable[[int], None]:
        def handler(mask: int) -> None:
            self._drain(shot, fd)

        return handler

    def _exit_handler(self, shot: Oneshot) -> Callable[[int], None]:
        def handler(mask: int) -> None:
            self._on_exit(shot)

        return handler

    def deadline(self) -> float | None:
        """The earliest timeout of a run that has no result yet (None: nothing pending)."""
        due = [s.deadline for s in self._running.values() if s.result is None]
        return min(due, default=None)

    def tick(self, now: float) -> None:
        """Kill every run whose timeout has passed and deliver its "timed_out" result."""
        for shot in list(self._running.values()):
            if shot.result is None and now >= shot.deadline:
                self._kill_group(shot)
                self._deliver(shot, "timed_out", None, now)

    def cancel(self, shot: Oneshot) -> None:
        """Kill `shot` without a result (its owner is going away): `on_done` is not called."""
        if shot.result is None and not shot.reaped:
            shot.result = OneshotResult(shot.name, "timed_out", self._clock() - shot.started)
            self._kill_group(shot)

    def close(self) -> None:
        """Kill whatever still runs, collect what has exited, close every fd. No callbacks."""
        for shot in list(self._running.values()):
            self.cancel(shot)
            if not shot.reaped and not self._reaper.collect(shot.pid):
                # Still dying: its status is nobody's now (the kernel reparents it, or the
                # supervisor's final reap collects it as an untracked child).
                self._reaper.untrack(shot.pid)
                self._forget(shot)

    # -- internals ---------------------------------------------------------------------------

    def _on_exit(self, shot: Oneshot) -> None:
        """The pidfd turned readable: the leader is a zombie. The reaper kills what it left in
        its group (the zombie still holds the pgid) and hands the status to `_on_reaped`."""
        if not shot.reaped:
            self._reaper.collect(shot.pid)

    def _on_reaped(self, done: Reaped) -> None:
        """The reaper collected a oneshot (from `collect` or from the supervisor's reap)."""
        shot = self._running.get(done.pid)
        if shot is None:  # pragma: no cover - tracked only while running
            return
        shot.reaped = True
        for fd in list(shot.pipes):
            self._drain(shot, fd, final=True)
        if shot.result is None:
            self._deliver(shot, "exited", done.status, self._clock())
        self._forget(shot)

    def _deliver(
        self, shot: Oneshot, outcome: Outcome, status: ExitStatus | None, now: float
    ) -> None:
        shot.result = OneshotResult(
            shot.name,
            outcome,
            max(0.0, now - shot.started),
            status=status,
            output=bytes(shot.output),
        )
        shot.on_done(shot.result)

    def _finish_early(self, shot: Oneshot) -> None:
        """Undo `run` after the loop refused an fd: collect if possible, close everything."""
        if not self._reaper.collect(shot.pid):
            self._reaper.untrack(shot.pid)
        self._forget(shot)

    def _kill_group(self, shot: Oneshot) -> None:
        if not shot.reaped:
            launcher.signal_process_group(shot.pid, signal.SIGKILL)

    def _drain(self, shot: Oneshot, fd: int, *, final: bool = False) -> None:
        """Read what the pipe holds (a bounded amount per call: the loop is level-triggered
        and calls again); keep the tail; close the pipe at EOF, or at the end of the run."""
        for _ in range(16):
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            except OSError as err:  # pragma: no cover - EIO and the like: treat as EOF
                if err.errno == errno.EINTR:
                    continue
                chunk = b""
            if not chunk:
                self._close_pipe(shot, fd)
                return
            shot.keep(chunk)
        if final:
            # A grandchild that escaped the group may hold the pipe open: not our concern.
            self._close_pipe(shot, fd)

    def _close_pipe(self, shot: Oneshot, fd: int) -> None:
        if fd in shot.pipes:
            shot.pipes.remove(fd)
            self._reactor.remove(fd)
            os.close(fd)

    def _forget(self, shot: Oneshot) -> None:
        for fd in list(shot.pipes):
            self._close_pipe(shot, fd)
        if shot.child.pidfd >= 0:
            self._reactor.remove(shot.child.pidfd)
        shot.child.close()
        self._running.pop(shot.pid, None)
