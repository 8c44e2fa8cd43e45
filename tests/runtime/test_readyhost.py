"""Readiness in the supervisor (runtime/readyhost.py) on the host: depends_on gating, the probe's
launch spec, and oomguard's own sd_notify, on the fake cgroupfs; no service is ever spawned
(the supervisor's _spawn is replaced by a recorder)."""

from __future__ import annotations

import io
import os
import signal
import socket
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest

from oomguard.cgroup.path import CgroupPath
from oomguard.config.compile import compile_plan
from oomguard.config.model import Config
from oomguard.observe.log import Logger
from oomguard.policy import restart as rp
from oomguard.runtime.lifecycle import Lifecycle
from oomguard.runtime.readyhost import PROBE_OOM_SCORE_ADJ
from oomguard.runtime.supervisor import RunIO, Supervisor
from tests.cgroup.fakefs import FakeCgroupFS

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from oomguard.runtime.service import Service

ROOT = CgroupPath.parse("/og")


@pytest.fixture
def fs(tmp_path: Path) -> FakeCgroupFS:
    fake = FakeCgroupFS(tmp_path / "cgroup")
    fake.add_proc(CgroupPath.ROOT, os.getpid())
    return fake


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = str(tmp_path / "systemd.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[dict[str, str]]:
    out = []
    while True:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return out
        out.append(dict(line.split("=", 1) for line in data.decode().splitlines()))


def make(
    tmp_path: Path, fs: FakeCgroupFS, monkeypatch: pytest.MonkeyPatch, services: dict[str, Any]
) -> tuple[Supervisor, list[str]]:
    config = Config.from_mapping(
        {
            "oomguard": {"cgroup": str(ROOT), "state_dir": str(tmp_path / "state")},
            "service": services,
        }
    )
    monkeypatch.setattr(Supervisor, "_protect_self", lambda self: None, raising=False)
    spawned: list[str] = []
    monkeypatch.setattr(Lifecycle, "spawn", lambda self, svc: spawned.append(svc.name))
    sup = Supervisor(
        compile_plan(config),
        fs,
        CgroupPath.ROOT,
        Logger(io.StringIO()),
        io=RunIO(clock=lambda: 50.0),
    )
    sup._setup()
    sup.now = 50.0
    return sup, spawned


def up(sup: Supervisor, svc: Service, pid: int = 4321) -> None:
    """Pretend the service was spawned and is RUNNING (ready)."""
    svc.rec = replace(svc.rec, state=rp.State.RUNNING, pid=pid, started_at=1.0, running_since=2.0)


SERVICES = {
    "db": {"role": "primary", "command": ["db"]},
    "pooler": {"command": ["pooler"], "depends_on": ["db"]},
    "agent": {"command": ["agent"], "depends_on": ["pooler"]},
    "free": {"command": ["free"]},
}


def test_dependents_start_only_once_their_dependencies_are_ready(
    tmp_path: Path, fs: FakeCgroupFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    sup, spawned = make(tmp_path, fs, monkeypatch, SERVICES)
    try:
        sup.lifecycle.start_all(hold=sup.ready.hold)
        assert spawned == ["db", "free"]
        assert sup.ready.held == ["pooler", "agent"]
        sup.ready.after_turn()
        assert spawned == ["db", "free"]
        waiting = [e for e in _events(sup) if e["kind"] == "waiting"]
        assert {e["service"]: e["on"] for e in waiting} == {"pooler": ["db"], "agent": ["pooler"]}
        # db STARTING is not enough: ready is RUNNING.
        up(sup, sup.services["db"])
        sup.ready.after_turn()
        assert spawned == ["db", "free", "pooler"]
        up(sup, sup.services["pooler"], pid=99)
        sup.ready.after_turn()
        assert spawned == ["db", "free", "pooler", "agent"]
        assert sup.ready.held == []
        start = [e for e in _events(sup) if e["kind"] == "start" and e["service"] == "agent"]
        assert start[0]["reason"] == "dependencies_ready"
    finally:
        sup._close()


def test_held_services_are_dropped_at_shutdown(
    tmp_path: Path, fs: FakeCgroupFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    sup, spawned = make(tmp_path, fs, monkeypatch, SERVICES)
    try:
        assert sup.ready.hold("pooler")
        sup.begin_shutdown("test")
        up(sup, sup.services["db"])
        sup.ready.after_turn()
        assert "pooler" not in spawned
        assert sup.ready.held == []
    finally:
        sup._close()


def test_probe_runs_as_the_service_in_oomguards_leaf_and_expendable(
    tmp_path: Path, fs: FakeCgroupFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = {
        "db": {
            "role": "primary",
            "command": ["db", "-D", "/data"],
            "env": {"PGPORT": "5433"},
            "stop_signal": "SIGINT",
            "ready": {"command": ["pg_isready", "-q"]},
        }
    }
    sup, _ = make(tmp_path, fs, monkeypatch, services)
    try:
        # The policy waits for the probe (ready.timeout defaults to 90 s), not start_secs.
        assert sup.services["db"].params.ready_timeout == 90.0
        spec, fd = sup.ready.probe_launch("db", ("pg_isready", "-q"))
        assert spec.argv == ("pg_isready", "-q")
        assert spec.env["PGPORT"] == "5433"
        assert spec.extra_env["OOMGUARD_SERVICE"] == "db"
        assert spec.oom_score_adj == PROBE_OOM_SCORE_ADJ
        assert spec.death_signal == signal.SIGKILL
        assert fd is not None and fd >= 0
        assert sup.built is not None
        assert os.readlink(f"/proc/self/fd/{fd}").endswith(str(sup.built.leaf) + "/cgroup.procs")
    finally:
        sup._close()


def test_notify_service_gets_its_own_socket_and_only_members_count(
    tmp_path: Path, fs: FakeCgroupFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = {"db": {"role": "primary", "command": ["db"], "ready": {"notify": True}}}
    sup, _ = make(tmp_path, fs, monkeypatch, services)
    try:
        svc = sup.services["db"]
        env = sup.lifecycle.launch_spec(svc).extra_env
        assert env["NOTIFY_SOCKET"] == str(tmp_path / "state" / "notify-db.sock")
        assert "WATCHDOG_USEC" not in env
        assert os.path.exists(env["NOTIFY_SOCKET"])
        # No process: nobody belongs. A pid in its (fake) cgroup does.
        assert not sup.ready.belongs("db", os.getpid())
        svc.child = _FakeChild(4321)  # type: ignore[assignment]
        fs.add_proc(svc.cgroup, 777)
        assert sup.ready.belongs("db", 777)
        assert not sup.ready.belongs("db", 778)
        svc.child = None
    finally:
        sup._close()
    assert not os.path.exists(tmp_path / "state" / "notify-db.sock")


class _FakeChild:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pidfd = -1


def test_systemd_ready_only_once_essential_services_are_ready(
    tmp_path: Path,
    fs: FakeCgroupFS,
    monkeypatch: pytest.MonkeyPatch,
    systemd: socket.socket,
) -> None:
    services = {
        "db": {"role": "primary", "command": ["db"]},
        "must": {"command": ["must"], "essential": True},
        "extra": {"command": ["extra"]},
    }
    sup, _ = make(tmp_path, fs, monkeypatch, services)
    try:
        assert "NOTIFY_SOCKET" not in os.environ  # unset for the services
        assert sup.ready.essential() == ["db", "must"]
        sup.ready.after_turn()
        first = received(systemd)
        assert first == [{"STATUS": "0/3 services ready; db stopped, must stopped, extra stopped"}]
        up(sup, sup.services["db"])
        up(sup, sup.services["extra"], pid=2)
        sup.ready.after_turn()
        assert [m.get("READY") for m in received(systemd)] == [None]
        up(sup, sup.services["must"], pid=3)
        sup.ready.after_turn()
        assert received(systemd) == [{"READY": "1", "STATUS": "3/3 services ready"}]
        sup.ready.after_turn()
        assert received(systemd) == []  # nothing changed: nothing sent
        # The watchdog pings at half of WATCHDOG_USEC from the loop's timer.
        assert sup.ready.deadline() == 50.0
        sup.ready.tick(50.0)
        assert received(systemd) == [{"WATCHDOG": "1"}]
        assert sup.ready.deadline() == 52.0
        sup.begin_shutdown("test")
        sup.ready.after_turn()
        (stopping,) = received(systemd)
        assert stopping["STOPPING"] == "1"
        assert stopping["STATUS"].startswith("stopping")
    finally:
        sup._close()


def _events(sup: Supervisor) -> list[dict[str, Any]]:
    import json

    assert sup.statedir is not None
    path = sup.statedir.path / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]
