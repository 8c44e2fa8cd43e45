"""State publishing (runtime/publish.py): a service's state.json entry, the write-when-dirty
rule, a failed write warned about once per burst, and the run's outcome."""

from __future__ import annotations

import errno
import io
import json
import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest

from oomguard.cgroup.path import CgroupPath
from oomguard.config.compile import compile_plan
from oomguard.config.model import Config
from oomguard.observe.log import Logger
from oomguard.observe.statedir import StateDir
from oomguard.policy import restart as rp
from oomguard.runtime.publish import Publisher, Shutdown, outcome, service_state, state_services
from oomguard.runtime.service import Service

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


class FakeChild:
    pid = 4242


PLAN = compile_plan(
    Config.from_mapping(
        {
            "service": {
                "db": {"role": "primary", "command": ["sleep", "1000"]},
                "backup": {"command": ["sleep", "1000"], "criticality": 10},
            }
        }
    )
)


def _service(name: str = "backup") -> Service:
    return Service(PLAN.service(name), CgroupPath.parse(f"/og/{name}"))


def test_a_stopped_sidecar() -> None:
    assert service_state(_service(), 1000.0, in_slice=True) == {
        "state": "STOPPED",
        "pid": None,
        "pid_start": None,
        "pgid": None,
        "restarts": 0,
        "evictions": 0,
        "sheds": 0,
        "slice": "/og/backup",
        "role": "sidecar",
        "criticality": 10,
        "oom_score_adj": 900,
        "last_exit": None,
        "started_at": None,
        "downtime_total": 0.0,
        "ready_seconds": None,
    }


def test_a_running_primary_after_an_oom_kill() -> None:
    db = _service("db")
    db.child = FakeChild()  # type: ignore[assignment]
    db.pid_start, db.started_wall, db.evictions = 912399, 1795732200.0, 2
    db.rec = replace(
        db.rec,
        state=rp.State.RUNNING,
        restarts_total=3,
        last_exit=rp.ExitInfo(signal=9, oom_killed=True),
        total_downtime=1.23456,
    )
    entry = service_state(db, 1000.0, in_slice=True)
    assert entry["pid"] == entry["pgid"] == 4242
    assert entry["pid_start"] == 912399
    assert (entry["role"], entry["criticality"], entry["oom_score_adj"]) == ("primary", None, -999)
    assert entry["last_exit"] == {"code": None, "signal": 9, "oom_killed": True}
    assert (entry["restarts"], entry["evictions"]) == (3, 2)
    assert entry["downtime_total"] == 1.235
    assert entry["started_at"] == 1795732200.0


def test_ready_seconds_from_the_spawn_to_ready() -> None:
    db = _service("db")
    db.child = FakeChild()  # type: ignore[assignment]
    db.rec = replace(
        db.rec, state=rp.State.RUNNING, pid=4242, started_at=10.0, running_since=12.3456
    )
    assert service_state(db, 1000.0, in_slice=True)["ready_seconds"] == 2.346


def test_a_stale_start_time_is_not_published_without_a_process() -> None:
    svc = _service()
    svc.pid_start = 77  # of the last incarnation, which has exited
    assert service_state(svc, 0.0, in_slice=True)["pid_start"] is None


def test_downtime_counts_the_current_outage() -> None:
    svc = _service()
    svc.rec = replace(svc.rec, down_since=990.0, total_downtime=1.0)
    assert service_state(svc, 1000.0, in_slice=True)["downtime_total"] == 11.0


def test_degraded_services_have_no_slice() -> None:
    services = [_service("db"), _service("backup")]
    entries = state_services(services, 0.0, in_slice=False)
    assert list(entries) == ["db", "backup"]  # the order given: the start order
    assert [e["slice"] for e in entries.values()] == [None, None]


# -- the publisher --------------------------------------------------------------------------


@pytest.fixture
def statedir(tmp_path: Path) -> Iterator[StateDir]:
    sd = StateDir.open(tmp_path / "state")
    try:
        yield sd
    finally:
        sd.close()


@pytest.fixture
def out() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def pub(statedir: StateDir, out: io.StringIO) -> Iterator[Publisher]:
    p = Publisher(
        statedir,
        Logger(out),
        mode="enforce",
        instance="token",
        degraded=None,
        wall=lambda: 1795732262.5,
    )
    try:
        yield p
    finally:
        p.close()


def _state(statedir: StateDir) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((statedir.path / "state.json").read_text())
    return doc


def test_state_json_is_written_when_dirty_and_only_then(pub: Publisher, statedir: StateDir) -> None:
    calls: list[int] = []

    def services() -> dict[str, Any]:
        calls.append(1)
        return {"db": service_state(_service("db"), 0.0, in_slice=True)}

    pub.flush("/og", services)
    doc = _state(statedir)
    assert (doc["root"], doc["mode"], doc["degraded"]) == ("/og", "enforce", None)
    assert doc["pid"] == os.getpid() and doc["updated_at"] == 1795732262.5
    assert set(doc["services"]) == {"db"}
    # The token's hash, never the token (a service proves its descent with it).
    assert "token" not in json.dumps(doc)
    assert len(doc["instance_sha256"]) == 64
    pub.flush("/og", services)
    assert calls == [1]  # nothing changed: no rewrite, not even the services' view
    pub.emit("spawned", None, service="db")
    pub.flush("/og", services)
    assert calls == [1, 1]


def test_a_failed_state_write_is_warned_once_per_burst_and_recovers(
    pub: Publisher, out: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object, **kw: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("oomguard.runtime.publish.write_state", full)
    for _ in range(3):
        pub.dirty = True
        pub.flush("/og", dict)
    warned = [ln for ln in out.getvalue().splitlines() if "state_write_failed" in ln]
    assert len(warned) == 1 and "No space left on device" in warned[0]
    monkeypatch.undo()
    pub.dirty = True
    pub.flush("/og", dict)
    assert "state_write_recovered" in out.getvalue()


def test_a_failed_event_write_is_counted_warned_once_and_published(
    pub: Publisher, statedir: StateDir, out: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_fd = pub.events._fd
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        if fd == log_fd:
            raise OSError(errno.EIO, "Input/output error")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    for _ in range(4):
        pub.emit("pressure", CgroupPath.parse("/og"), avg10=1.0)
    pub.flush("/og", dict)
    monkeypatch.undo()
    warned = [ln for ln in out.getvalue().splitlines() if "event_log_write_failed" in ln]
    assert len(warned) == 1 and "Input/output error" in warned[0]
    assert _state(statedir)["event_log_dropped"] == 4
    pub.emit("pressure", None, avg10=1.0)
    assert "event_log_recovered" in out.getvalue()


# -- the outcome ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shutdown", "last", "status"),
    [
        (None, None, 0),
        (Shutdown("received SIGTERM"), None, 0),
        (Shutdown("received SIGTERM"), rp.ExitInfo(code=3), 3),
        (None, rp.ExitInfo(signal=9, oom_killed=True), 137),
        (Shutdown("backup is fatal", status=1, fatal_service="backup"), rp.ExitInfo(code=0), 1),
        (Shutdown("db exited", status=0), rp.ExitInfo(code=0), 0),
    ],
)
def test_the_outcome_status(
    shutdown: Shutdown | None, last: rp.ExitInfo | None, status: int
) -> None:
    got = outcome("db", last, shutdown, iter(["a line"]))
    assert got.status == status
    assert (got.primary, got.primary_exit, got.oom_lines) == ("db", last, ["a line"])
    assert got.reason == (shutdown.reason if shutdown else "")
    assert got.fatal_service == (shutdown.fatal_service if shutdown else None)
