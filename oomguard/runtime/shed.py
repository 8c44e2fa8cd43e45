"""The shed rung in the runtime: find the process to shed in the primary's slice, signal it
safely, and tell the ladder while it is still on its way out.

Which process is the pure `policy.shed` ranking; here are the reads and the signal:

* the candidates are the processes of the primary's cgroup and below (``cgroup.procs`` through
  `CgroupFS`), never anything outside it, and never the primary's main process;
* each one's figures come from /proc/<pid>/status (`oomguard.proc.status_text`, capped; a
  process that exits meanwhile is skipped);
* the signal goes through `CgroupFS.signal_member`: a pidfd pins the process, its membership is
  read again, then the signal goes to the pidfd, so a pid reused by another process is never
  hit;
* the pidfd is kept until the process has exited (``busy``): its memory is uncharged only then,
  so the budget reads as pressured as before; judging it sooner would climb to the next rung
  (evicting a sidecar) for pressure the shed is about to relieve. ``wait`` bounds that.
"""

from __future__ import annotations

import contextlib
import os
import select
from dataclasses import dataclass
from typing import TYPE_CHECKING

from oomguard import proc
from oomguard.errors import OomguardError
from oomguard.plan import ShedSpec
from oomguard.policy import pressure as pp
from oomguard.policy.shed import ProcMemory, choose, parse_status
from oomguard.units import format_size

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from oomguard.cgroup.fs import CgroupFS
    from oomguard.cgroup.path import CgroupPath
    from oomguard.runtime.context import Context


def read_status(pid: int) -> str | None:
    """/proc/<pid>/status of `pid`, or None if it is gone (through `oomguard.proc`)."""
    return proc.status_text(pid)


#: ``[service.X.shed]`` as the runtime needs it: the Plan's plain values.
ShedSettings = ShedSpec


@dataclass
class _InFlight:
    pid: int
    pidfd: int
    until: float


class Shedder:
    """Sheds processes of one cgroup (the primary's). Owns the pidfd of the process shed last,
    until it has exited or `ShedSettings.wait` has passed."""

    def __init__(
        self,
        fs: CgroupFS,
        cgroup: CgroupPath,
        settings: ShedSettings,
        *,
        status: Callable[[int], str | None] = read_status,
    ) -> None:
        self.fs = fs
        self.cgroup = cgroup
        self.settings = settings
        self._status = status
        self._inflight: _InFlight | None = None

    def processes(self) -> list[ProcMemory]:
        """The figures of every process in the cgroup and below (gone ones skipped)."""
        try:
            pids = self.fs.procs_recursive(self.cgroup)
        except OomguardError:
            return []
        out: list[ProcMemory] = []
        for pid in pids:
            text = self._status(pid)
            figures = parse_status(pid, text) if text is not None else None
            if figures is not None:
                out.append(figures)
        return out

    def candidate(self, main_pid: int | None) -> ProcMemory | None:
        """The process the ladder would shed now (`policy.shed.choose`), or None."""
        s = self.settings
        return choose(
            self.processes(),
            main_pid=main_pid,
            exclude_comm=s.exclude_comm,
            min_size=s.min_size,
        )

    def shed(self, pid: int, main_pid: int | None, now: float) -> str:
        """Signal `pid`. Returns "sent", or why not: "main" (never the main process), "gone"
        (exited, or no longer in the cgroup). A failure to signal raises `CgroupError`."""
        if main_pid is not None and pid == main_pid:
            return "main"
        self._forget()
        fd = self.fs.signal_member(self.cgroup, pid, self.settings.signal)
        if fd is None:
            return "gone"
        self._inflight = _InFlight(pid, fd, now + self.settings.wait)
        return "sent"

    def busy(self, now: float) -> int | None:
        """The pid of the process shed last while it is still exiting (within ``wait``)."""
        flight = self._inflight
        if flight is None:
            return None
        if now >= flight.until or _exited(flight.pidfd):
            self._forget()
            return None
        return flight.pid

    def close(self) -> None:
        self._forget()

    def _forget(self) -> None:
        flight, self._inflight = self._inflight, None
        if flight is not None and flight.pidfd >= 0:
            with contextlib.suppress(OSError):
                os.close(flight.pidfd)


def _exited(pidfd: int) -> bool:
    """A pidfd polls readable once its process has exited. Without one (-1), count it gone."""
    if pidfd < 0:
        return True
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


class ShedRung:
    """The shed rung of the primary's ladder, on the narrow `Context`: holds the ladder while
    the shed process exits, finds the candidate when the rung is due, and carries out a `Shed`
    (log line, ``shed`` event, signal, count)."""

    def __init__(self, ctx: Context, settings: ShedSettings) -> None:
        self.ctx = ctx
        primary = ctx.service(ctx.primary)
        self.shedder = Shedder(ctx.fs, primary.cgroup, settings, status=_proc_status)

    @classmethod
    def create(cls, ctx: Context) -> ShedRung | None:
        """The rung, if the primary has ``[service.X.shed]``."""
        settings = ctx.service(ctx.primary).shed
        return None if settings is None else cls(ctx, settings)

    @property
    def settings(self) -> ShedSettings:
        return self.shedder.settings

    def holding(self, members: tuple[str, ...]) -> str | None:
        """What the ladder waits for in a budget holding the primary: the process shed last,
        while it is still exiting (its memory is uncharged only when it is gone)."""
        if self.ctx.primary not in members:
            return None
        pid = self.shedder.busy(self.ctx.now)
        return None if pid is None else f"shed pid {pid}"

    def candidate(
        self, state: pp.PressureState, sample: pp.BudgetSample, thresholds: pp.Thresholds
    ) -> ProcMemory | None:
        """The process to shed, read only when the rung could act on this sample (the figures
        of every process in the primary's slice are not read on every `high` event)."""
        if not pp.shed_due(state, sample, thresholds, self.ctx.now):
            return None
        primary = self.ctx.service(self.ctx.primary)
        if primary.pid is None:
            return None
        return self.shedder.candidate(primary.pid)

    def apply(self, action: pp.Shed, figures: Mapping[str, Any], why: str) -> None:
        """Say which process, why and how big; then signal it. The ``shed`` event goes first
        (it starts the ``before_shed`` hook); a process gone by the time the signal would go is
        a ``shed_skipped`` event, and is not counted."""
        ctx = self.ctx
        svc = ctx.service(action.primary)
        signame = _signame(self.settings.signal)
        ctx.log.warn(
            "shed",
            service=svc.name,
            pid=action.pid,
            comm=action.comm,
            size=format_size(action.size),
            signal=signame,
            reason=action.reason,
            **{k: v for k, v in figures.items() if k not in ("pid", "comm", "size")},
        )
        ctx.emit(
            "shed",
            svc.cgroup,
            service=svc.name,
            signal=signame,
            reason=action.reason,
            trigger=why,
            **dict(figures),
        )
        try:
            outcome = self.shedder.shed(action.pid, svc.pid, ctx.now)
        except OomguardError as err:
            outcome = f"error: {err}"
        if outcome == "sent":
            ctx.count_shed(svc.name)
            return
        ctx.log.warn("shed_skipped", service=svc.name, pid=action.pid, why=outcome)
        ctx.emit("shed_skipped", svc.cgroup, service=svc.name, pid=action.pid, why=outcome)

    def close(self) -> None:
        self.shedder.close()


def _proc_status(pid: int) -> str | None:
    # `read_status` looked up at call time, so that tests can stand in for /proc.
    return read_status(pid)


def _signame(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)
