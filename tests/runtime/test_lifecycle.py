"""The services' lifecycle (runtime/lifecycle.py) with a recording placement: the stop order,
exits fed least critical first with the OOM verdict the placement found, a fatal or clean end
of an essential service, and a failed spawn. Nothing is spawned (the launcher refuses)."""

from __future__ import annotations

import io
import signal
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import pytest

from oomguard.cgroup.path import CgroupPath
from oomguard.config.compile import compile_plan
from oomguard.config.model import Config
from oomguard.errors import LaunchError
from oomguard.observe.log import Logger
from oomguard.policy import restart as rp
from oomguard.runtime import launcher
from oomguard.runtime.lifecycle import Identity, Lifecycle
from oomguard.runtime.reaper import ExitStatus, Reaped
from tests.cgroup.fakefs import FakeCgroupFS

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from oomguard.runtime.service import Service

CONFIG = {
    "service": {
        "db": {"role": "primary", "command": ["sleep", "1000"]},
        "pooler": {"command": ["sleep", "1000"], "criticality": 80, "depends_on": ["db"]},
        "app": {"command": ["sleep", "1000"], "criticality": 50, "depends_on": ["pooler"]},
        "backup": {"command": ["sleep", "1000"], "criticality": 10},
    }
}


@dataclass
class Recorder:
    """The placement and the host at once: records what the lifecycle asks of them."""

    fs: FakeCgroupFS
    now: float = 1000.0
    out: io.StringIO = field(default_factory=io.StringIO)
    calls: list[tuple[str, str]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    oom: set[str] = field(default_factory=set)
    changes: int = 0
    degraded: str | None = None

    def __post_init__(self) -> None:
        self.log = Logger(self.out)

    # -- Placement
    def cgroup_of(self, name: str) -> CgroupPath:
        return CgroupPath.parse(f"/og/{name}")

    def attach(self, svc: Service) -> None:
        self.calls.append(("attach", svc.name))

    def before_spawn(self, svc: Service) -> None:
        self.calls.append(("before_spawn", svc.name))

    def kill(self, svc: Service, reason: str) -> None:
        self.calls.append(("kill", f"{svc.name}:{reason}"))

    def exited(self, svc: Service) -> None:
        self.calls.append(("exited", svc.name))
        svc.oom_pending = svc.name in self.oom

    def cleanup(self, svc: Service) -> None:
        self.calls.append(("cleanup", svc.name))

    def oom_line(self, svc: Service) -> str:
        return f"{svc.name} was killed by the OOM killer"

    def kill_on_error(self, svc: Service) -> None:
        self.calls.append(("kill_on_error", svc.name))

    # -- Host
    def emit(self, kind: str, cgroup: CgroupPath | None, **fields: Any) -> None:
        self.events.append({"kind": kind, **fields})

    def changed(self) -> None:
        self.changes += 1

    def add_reader(self, fd: int, mask: int, handler: Callable[[int], None]) -> None:
        pass

    def remove_reader(self, fd: int) -> None:
        pass


class FakeReaper:
    def __init__(self) -> None:
        self.exits: list[Reaped] = []
        self.tracked: list[int] = []

    def track(self, pid: int) -> None:
        self.tracked.append(pid)

    def reap(self) -> list[Reaped]:
        out, self.exits = self.exits, []
        return out


class FakeChild:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pidfd = -1
        self.sent: list[int] = []

    def send_signal(self, sig: int) -> bool:
        self.sent.append(sig)
        return True

    def close(self) -> None:
        pass


@pytest.fixture
def rec(tmp_path: Path) -> Recorder:
    return Recorder(FakeCgroupFS(tmp_path / "cg"))


@pytest.fixture
def reaper() -> FakeReaper:
    return FakeReaper()


@pytest.fixture
def lc(rec: Recorder, reaper: FakeReaper) -> Lifecycle:
    plan = compile_plan(Config.from_mapping(CONFIG))
    life = Lifecycle(plan, rec, rec, reaper, Identity("token", lambda: 1.0))  # type: ignore[arg-type]
    life.make_services()
    return life


def _running(lc: Lifecycle, rec: Recorder, name: str, pid: int) -> Service:
    svc = lc.services[name]
    svc.child = FakeChild(pid)  # type: ignore[assignment]
    svc.rec = replace(svc.rec, state=rp.State.RUNNING, pid=pid, started_at=rec.now)
    lc.by_pid[pid] = svc
    return svc


def test_services_are_made_in_start_order_where_the_placement_says(
    lc: Lifecycle, rec: Recorder
) -> None:
    assert list(lc.services) == ["db", "pooler", "app", "backup"]
    assert [c for c in rec.calls if c[0] == "attach"] == [
        ("attach", n) for n in ["db", "pooler", "app", "backup"]
    ]
    assert lc.services["app"].cgroup == CgroupPath.parse("/og/app")
    assert lc.services["db"].criticality == 100 and lc.services["db"].oom_score_adj == -999


def test_shutdown_stops_dependents_before_what_they_depend_on(lc: Lifecycle, rec: Recorder) -> None:
    for i, name in enumerate(lc.services):
        _running(lc, rec, name, 100 + i)
    lc.begin_shutdown("received SIGTERM")
    stopping = {n for n, s in lc.services.items() if s.rec.state is rp.State.STOPPING}
    # app and backup have no dependents; pooler waits for app, db for pooler.
    assert stopping == {"app", "backup"}
    sent = {n: s.child.sent for n, s in lc.services.items() if s.child}  # type: ignore[attr-defined]
    assert sent["app"] == [signal.SIGTERM] and sent["db"] == []
    for name in ("app", "backup"):
        svc = lc.services[name]
        lc.close_child(svc)
        lc.feed(svc, rp.Exited(rp.ExitInfo(code=0)))
    lc.advance_shutdown()
    assert lc.services["pooler"].rec.state is rp.State.STOPPING
    assert lc.services["db"].rec.state is rp.State.RUNNING
    assert not lc.finished()
    assert [e["reason"] for e in rec.events if e["kind"] == "shutdown"] == ["received SIGTERM"]


def test_exits_are_fed_least_critical_first_with_the_placements_oom_verdict(
    lc: Lifecycle, rec: Recorder, reaper: FakeReaper
) -> None:
    for i, name in enumerate(lc.services):
        _running(lc, rec, name, 100 + i)
    rec.oom = {"db", "backup"}
    reaper.exits = [
        Reaped(100, ExitStatus(signal=signal.SIGKILL), tracked=True),  # db
        Reaped(102, ExitStatus(signal=signal.SIGKILL), tracked=True),  # app: no OOM seen
        Reaped(103, ExitStatus(signal=signal.SIGKILL), tracked=True),  # backup
        Reaped(999, ExitStatus(code=0), tracked=False),  # an orphan: reaped, nothing more
    ]
    lc.on_exits()
    cleanups = [name for kind, name in rec.calls if kind == "cleanup"]
    assert cleanups == ["backup", "app", "db"]  # least critical first, the primary last
    assert [name for kind, name in rec.calls if kind == "exited"] == ["db", "app", "backup"]
    last = {n: s.rec.last_exit for n, s in lc.services.items()}
    assert last["db"] == rp.ExitInfo(signal=9, oom_killed=True)
    assert last["app"] == rp.ExitInfo(signal=9, oom_killed=False)
    assert lc.oom_lines == [
        "backup was killed by the OOM killer",
        "db was killed by the OOM killer",
    ]
    assert "primary_oom_killed level=error service=db" in rec.out.getvalue()
    assert all(lc.services[n].child is None for n in ("db", "app", "backup"))
    assert lc.by_pid.keys() == {101}


def test_an_oom_pending_without_a_sigkill_is_no_oom_kill(
    lc: Lifecycle, rec: Recorder, reaper: FakeReaper
) -> None:
    _running(lc, rec, "backup", 103)
    rec.oom = {"backup"}
    reaper.exits = [Reaped(103, ExitStatus(code=1), tracked=True)]
    lc.on_exits()
    assert lc.services["backup"].rec.last_exit == rp.ExitInfo(code=1)
    assert lc.oom_lines == []


def test_a_failed_essential_service_ends_the_run_with_its_status(
    lc: Lifecycle, rec: Recorder
) -> None:
    db = _running(lc, rec, "db", 100)
    db.params = replace(db.params, restart="never")
    lc.close_child(db)
    lc.feed(db, rp.Exited(rp.ExitInfo(code=3)))
    assert lc.shutdown is not None
    assert (lc.shutdown.status, lc.shutdown.fatal_service) == (3, "db")
    assert "fatal level=error service=db status=3" in rec.out.getvalue()


def test_a_stop_timeout_kills_through_the_placement(lc: Lifecycle, rec: Recorder) -> None:
    svc = _running(lc, rec, "backup", 103)
    lc.feed(svc, rp.Stop("evict"))
    rec.now += svc.params.stop_timeout + 1
    lc.tick()
    assert ("kill", "backup:stop_timeout") in rec.calls


def test_a_failed_spawn_is_fed_back_and_nothing_is_tracked(
    lc: Lifecycle, rec: Recorder, reaper: FakeReaper, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kw: object) -> launcher.Child:
        raise LaunchError("cannot execute sleep: no such file", hint="check the command")

    monkeypatch.setattr(launcher, "spawn", refuse)
    lc.feed(lc.services["backup"], rp.Start())
    svc = lc.services["backup"]
    assert ("before_spawn", "backup") in rec.calls
    assert svc.child is None and reaper.tracked == []
    assert svc.rec.last_error is not None and "cannot execute sleep" in svc.rec.last_error
    assert "spawn_failed level=error service=backup" in rec.out.getvalue()


def test_close_kills_what_still_runs_after_an_internal_error(lc: Lifecycle, rec: Recorder) -> None:
    _running(lc, rec, "pooler", 101)
    lc.close()
    assert [c for c in rec.calls if c[0] == "kill_on_error"] == [("kill_on_error", "pooler")]
    assert lc.services["pooler"].child is None
