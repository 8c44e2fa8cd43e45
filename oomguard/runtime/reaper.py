"""The only code that waits for processes (waitid). Collects exit statuses without blocking.

Two jobs, kept apart on purpose:

1. Tracked services. ``waitid(P_PID, pid, WEXITED|WNOHANG)`` for each pid the supervisor
   spawned. This never touches any other child, so it is safe in every mode.
2. Orphans, only when oomguard is PID 1 or a child subreaper. Then the kernel reparents every
   orphaned descendant (a service's double-forked daemon, a worker left behind by a killed
   postmaster) to us, and nobody else will ever reap them: unreaped, they stay zombies and fill
   the pid table. We peek with ``waitid(P_ALL, WEXITED|WNOHANG|WNOWAIT)``: WNOWAIT leaves the
   status in place, so we learn *which* pid exited before consuming it, and a tracked service
   that happens to be first in line is reported as tracked, with its status, not lost as an
   orphan. Without PID 1/subreaper we never wait on P_ALL: that would steal statuses that
   other code in this process (e.g. a `subprocess.run`) is waiting for.

Statuses are this module's own `ExitStatus`; the supervisor maps them onto the policy's types.

A pid tracked with an ``on_exit`` callback (a short command of `runtime.oneshot`) belongs to
another owner than the supervisor: whichever path collects it (the owner's `collect` when its
pidfd turns readable, `reap` after a SIGCHLD, the orphan drain) hands the status to that
callback instead of returning it, so no path can swallow a status someone waits for. With
``kill_group`` every path first SIGKILLs what the process left in its process group, between
seeing the exit (WNOWAIT) and consuming it: the zombie still holds its pid, so the pgid cannot
name a group that reused the number.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

#: <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended: exactly one of `code` (normal exit) and `signal` (killed) is set.
    Both None only when the status was lost (someone else reaped the process)."""

    code: int | None = None
    signal: int | None = None
    core: bool = False

    @classmethod
    def from_waitid(cls, res: os.waitid_result) -> ExitStatus:
        if res.si_code == os.CLD_EXITED:
            return cls(code=res.si_status)
        # CLD_KILLED or CLD_DUMPED (WEXITED never reports stopped/continued children).
        return cls(signal=res.si_status, core=res.si_code == os.CLD_DUMPED)

    @property
    def lost(self) -> bool:
        return self.code is None and self.signal is None

    @property
    def shell_code(self) -> int:
        """The status a shell would report: the code, or 128 + signal (137 for SIGKILL)."""
        if self.code is not None:
            return self.code
        if self.signal is not None:
            return 128 + self.signal
        return 255

    def __str__(self) -> str:
        if self.code is not None:
            return f"exit code {self.code}"
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}" + (" (core dumped)" if self.core else "")
        return "status lost"


@dataclass(frozen=True)
class Reaped:
    """One collected process. `tracked` is False for orphans (reparented descendants)."""

    pid: int
    status: ExitStatus
    tracked: bool


class Reaper:
    """Collects exits of tracked pids, and of orphans when `subreaper` is True.

    Pass ``subreaper=True`` only if oomguard is PID 1 (of its pid namespace) or
    `become_subreaper()` succeeded; otherwise orphans are not ours and are never waited for.
    Call `reap()` whenever a pidfd turns readable or SIGCHLD arrives; it never blocks.
    """

    def __init__(self, subreaper: bool) -> None:
        self.subreaper = subreaper
        self._tracked: set[int] = set()
        #: Tracked pids whose status goes to a callback rather than to `reap`'s caller.
        self._owners: dict[int, Callable[[Reaped], None]] = {}
        #: Pids whose process group is killed when they exit, before they are reaped.
        self._group_kill: set[int] = set()
        #: How many untracked processes `reap()` collected (orphans reparented to us).
        self.orphans_reaped = 0

    def track(
        self,
        pid: int,
        on_exit: Callable[[Reaped], None] | None = None,
        *,
        kill_group: bool = False,
    ) -> None:
        """Collect `pid`'s status. With `on_exit`, the status is handed to it (once) and `reap`
        does not return it. With `kill_group`, the rest of its process group (pgid == pid: a
        session leader) gets SIGKILL when it exits, before it is reaped."""
        self._tracked.add(pid)
        if on_exit is not None:
            self._owners[pid] = on_exit
        if kill_group:
            self._group_kill.add(pid)

    def untrack(self, pid: int) -> None:
        """Stop tracking `pid` without reaping it (its status is then someone else's)."""
        self._tracked.discard(pid)
        self._owners.pop(pid, None)
        self._group_kill.discard(pid)

    def collect(self, pid: int) -> bool:
        """Reap tracked `pid` alone if it has exited (its pidfd turned readable). Non-blocking.
        The status goes to its `on_exit` callback, if it has one. True if it was collected."""
        if pid not in self._tracked:
            return False
        done = self._collect(pid)
        if done is None:
            return False
        self._deliver([done])
        return True

    def _collect(self, pid: int) -> Reaped | None:
        try:
            if pid in self._group_kill:
                peek = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                if peek is None or peek.si_pid == 0:
                    return None  # still running
                self._kill_group(pid)
            res = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            # ECHILD: not our child any more (reaped elsewhere, or SIGCHLD was SIG_IGN).
            # Report it so nobody waits forever, with the status lost.
            self._tracked.discard(pid)
            return Reaped(pid, ExitStatus(), tracked=True)
        if res is None or res.si_pid == 0:
            return None  # still running
        self._tracked.discard(pid)
        return Reaped(pid, ExitStatus.from_waitid(res), tracked=True)

    def _kill_group(self, pid: int) -> None:
        """SIGKILL the process group of exited, unreaped `pid` (it was a session leader)."""
        self._group_kill.discard(pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    def _deliver(self, reaped: list[Reaped]) -> list[Reaped]:
        """Hand owned statuses to their callbacks; return the rest."""
        rest: list[Reaped] = []
        for done in reaped:
            owner = self._owners.pop(done.pid, None)
            if owner is None:
                rest.append(done)
            else:
                owner(done)
        return rest

    @property
    def tracked(self) -> frozenset[int]:
        return frozenset(self._tracked)

    def reap(self) -> list[Reaped]:
        """Collect every process that has exited and is ours to collect. Non-blocking."""
        out: list[Reaped] = []
        for pid in sorted(self._tracked):
            done = self._collect(pid)
            if done is not None:
                out.append(done)
        if self.subreaper:
            out.extend(self._drain_orphans())
        return self._deliver(out)

    def _drain_orphans(self) -> list[Reaped]:
        out: list[Reaped] = []
        while True:
            try:
                peek = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                break  # no children at all
            if peek is None or peek.si_pid == 0:
                break  # children exist, none has exited
            pid = peek.si_pid
            if pid in self._group_kill:
                self._kill_group(pid)  # peeked with WNOWAIT: still a zombie holding its pgid
            try:
                res = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG)
            except ChildProcessError:  # pragma: no cover - single-threaded: cannot race
                continue
            if res is None or res.si_pid == 0:  # pragma: no cover - peeked as exited
                break
            tracked = pid in self._tracked
            self._tracked.discard(pid)
            if not tracked:
                self.orphans_reaped += 1
            out.append(Reaped(pid, ExitStatus.from_waitid(res), tracked=tracked))
        return out


def wait_exited(pid: int) -> ExitStatus:
    """Block until child `pid` exits and reap it. Only for a child known to be exiting right
    now (the launcher's failed-exec path); the supervisor's loop uses `Reaper.reap()`."""
    try:
        res = os.waitid(os.P_PID, pid, os.WEXITED)
    except ChildProcessError:
        return ExitStatus()
    if res is None:  # pragma: no cover - without WNOHANG waitid blocks until a result
        return ExitStatus()
    return ExitStatus.from_waitid(res)


def _prctl(option: int, arg2: object) -> int:
    """prctl(2) through libc; `arg2` is a ctypes value (an integer or a pointer)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.restype = ctypes.c_int
    rc: int = libc.prctl(
        ctypes.c_int(option), arg2, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)
    )
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def become_subreaper(enable: bool = True) -> bool:
    """Make this process a child subreaper (PR_SET_CHILD_SUBREAPER, Linux 3.4+), so orphaned
    descendants of the services are reparented to oomguard instead of to init, and show up in
    `Reaper.reap()` with ``subreaper=True``. Returns False if the kernel refused."""
    try:
        _prctl(PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1 if enable else 0))
    except OSError:
        return False
    return True


def is_subreaper() -> bool:
    """PR_GET_CHILD_SUBREAPER for this process."""
    flag = ctypes.c_int(0)
    _prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag))
    return flag.value != 0


def should_drain_orphans() -> bool:
    """True when orphans are ours to reap: PID 1 of a pid namespace, or a subreaper."""
    return os.getpid() == 1 or is_subreaper()
