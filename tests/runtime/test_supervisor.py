"""Supervisor bookkeeping that the real-kernel tests found wrong, pinned down on the host.

A Supervisor is set up (tree built, memory.events.local watched) on the fake cgroupfs of
tests/cgroup/fakefs.py, whose interface files are plain files: writing a counter file from the
test raises a real inotify IN_MODIFY, just like the kernel does. No service is ever spawned.
"""

from __future__ import annotations

import io
import json
import os
import signal
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest

from oomguard.cgroup.path import CgroupPath
from oomguard.config.compile import compile_plan
from oomguard.config.model import Config
from oomguard.observe.log import Logger
from oomguard.policy import oom
from oomguard.policy import restart as rp
from oomguard.runtime.context import SupervisorContext
from oomguard.runtime.placement import Slices
from oomguard.runtime.supervisor import RunIO, Supervisor
from tests.cgroup.fakefs import FakeCgroupFS

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

P = CgroupPath.parse
ROOT = P("/og")
PAIR, LO, HI, DB = P("/og/pair"), P("/og/pair/lo"), P("/og/pair/hi"), P("/og/db")
COUNTERS = ("low", "high", "max", "oom", "oom_kill", "oom_group_kill")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fs(tmp_path: Path) -> FakeCgroupFS:
    fake = FakeCgroupFS(tmp_path / "cgroup")
    # The supervisor moves itself into its leaf: the fake needs to know our pid.
    fake.add_proc(CgroupPath.ROOT, os.getpid())
    return fake


@pytest.fixture
def sup(
    tmp_path: Path, fs: FakeCgroupFS, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Supervisor]:
    config = Config.from_mapping(
        {
            "oomguard": {"cgroup": str(ROOT), "state_dir": str(tmp_path / "state")},
            "slice": {"pair": {"memory_max": "48M", "oom_group": True}},
            "service": {
                "db": {"role": "primary", "command": ["sleep", "1000"]},
                "hi": {"command": ["sleep", "1000"], "slice": "pair", "criticality": 90},
                "lo": {"command": ["sleep", "1000"], "slice": "pair", "criticality": 10},
            },
        }
    )
    # Lowering this test process's own oom_score_adj is not what is under test.
    monkeypatch.setattr(Supervisor, "_protect_self", lambda self: None, raising=False)
    s = Supervisor(
        compile_plan(config), fs, CgroupPath.ROOT, Logger(io.StringIO()), io=RunIO(clock=clock)
    )
    s._setup()
    s.now = clock()
    try:
        yield s
    finally:
        s._close()


def slices(sup: Supervisor) -> Slices:
    """The supervisor's placement: services in slices (the tree was built)."""
    assert isinstance(sup.placement, Slices)
    return sup.placement


def bump(fs: FakeCgroupFS, path: CgroupPath, **rises: int) -> None:
    """What the kernel does to memory.events.local: counters only ever go up."""
    f = fs.dir(path) / "memory.events.local"
    counts = dict(line.split() for line in f.read_text().splitlines())
    values = {k: int(counts.get(k, 0)) + rises.get(k, 0) for k in COUNTERS}
    f.write_text("".join(f"{k} {v}\n" for k, v in values.items()))


def events(tmp_path: Path, kind: str) -> list[dict[str, Any]]:
    lines = (tmp_path / "state" / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["kind"] == kind]


def test_budget_rise_read_in_the_same_turn_names_the_budget(
    sup: Supervisor, fs: FakeCgroupFS, tmp_path: Path
) -> None:
    # The kernel's order: `oom` where the limit was hit, then `oom_kill` in the victim's slice.
    bump(fs, PAIR, oom=1, max=3)
    bump(fs, LO, oom_kill=1)
    seen: list[tuple[CgroupPath, dict[str, int]]] = []

    class Spy:
        def on_counters(self, path: CgroupPath, delta: dict[str, int]) -> None:
            seen.append((path, delta))

    sup.extensions.append(Spy())  # type: ignore[arg-type]
    slices(sup).watch.on_ready()
    kills = events(tmp_path, "oom_kill")
    assert [(k["service"], k["limit_at"]) for k in kills] == [("lo", str(PAIR))]
    # Read once, not logged again as a separate "oom" of the budget...
    assert events(tmp_path, "oom") == []
    # ...and the budget's rises still reached the extensions (the pressure response).
    assert (PAIR, {"max": 3, "oom": 1}) in seen
    assert (LO, {"oom_kill": 1}) in seen


def test_budget_rise_read_a_turn_earlier_still_names_the_budget(
    sup: Supervisor, fs: FakeCgroupFS, clock: Clock, tmp_path: Path
) -> None:
    bump(fs, PAIR, oom=1)
    slices(sup).watch.on_ready()
    assert [e["slice"] for e in events(tmp_path, "oom")] == [str(PAIR)]
    clock.t += 0.5
    sup.now = clock()
    bump(fs, LO, oom_kill=2)
    slices(sup).watch.on_ready()
    kills = events(tmp_path, "oom_kill")
    assert [(k["service"], k["limit_at"], k["count"]) for k in kills] == [("lo", str(PAIR), 2)]


def test_every_victim_of_a_group_kill_names_the_budget(
    sup: Supervisor, fs: FakeCgroupFS, clock: Clock, tmp_path: Path
) -> None:
    bump(fs, PAIR, oom=1, oom_group_kill=1)
    bump(fs, HI, oom_kill=2)
    slices(sup).watch.on_ready()
    clock.t += 0.1
    sup.now = clock()
    bump(fs, LO, oom_kill=2)  # charged a moment later: another loop turn
    slices(sup).watch.on_ready()
    kills = events(tmp_path, "oom_kill")
    assert sorted((k["service"], k["limit_at"]) for k in kills) == [
        ("hi", str(PAIR)),
        ("lo", str(PAIR)),
    ]


def test_an_old_budget_rise_does_not_explain_a_later_kill(
    sup: Supervisor, fs: FakeCgroupFS, clock: Clock, tmp_path: Path
) -> None:
    bump(fs, PAIR, oom=1)
    slices(sup).watch.on_ready()
    clock.t += oom.OOM_ATTRIBUTION_WINDOW + 1
    sup.now = clock()
    bump(fs, LO, oom_kill=1)
    slices(sup).watch.on_ready()
    assert [k["limit_at"] for k in events(tmp_path, "oom_kill")] == ["outside the tree"]


def test_a_slice_of_its_own_limit(sup: Supervisor, fs: FakeCgroupFS, tmp_path: Path) -> None:
    bump(fs, DB, oom=1, oom_kill=1)
    slices(sup).watch.on_ready()
    assert [(k["service"], k["limit_at"]) for k in events(tmp_path, "oom_kill")] == [
        ("db", str(DB))
    ]


def test_a_vanished_slice_is_recreated_without_touching_the_others(
    sup: Supervisor, fs: FakeCgroupFS, tmp_path: Path
) -> None:
    # Stand-ins for running services: fake pids in db's and hi's slices.
    fs.add_proc(DB, 4001)
    fs.add_proc(HI, 4002)
    fs.rmdir(LO)
    slices(sup).watch.on_ready()  # the removal is noticed through inotify
    assert fs.exists(LO)
    assert fs.value(LO, "memory.oom.group") == "1"  # the service's limits are written again
    # Nobody was killed: the other slices' processes are where they were.
    assert fs.procs(DB) == [4001]
    assert fs.procs(HI) == [4002]
    assert fs.signals == []
    assert not [op for op in fs.ops if op[0] == "write" and op[2] == "cgroup.kill"]
    assert [e["service"] for e in events(tmp_path, "slice_vanished")] == ["lo"]
    # The new cgroup is watched: a kill there is noticed and attributed.
    bump(fs, LO, oom=1, oom_kill=1)
    slices(sup).watch.on_ready()
    assert [(k["service"], k["limit_at"]) for k in events(tmp_path, "oom_kill")] == [
        ("lo", str(LO))
    ]


def test_a_stale_removal_report_after_the_slice_came_back_is_not_a_second_removal(
    sup: Supervisor, fs: FakeCgroupFS, tmp_path: Path
) -> None:
    fs.rmdir(LO)
    # Noticed first on the exit path (a read raised Vanished), before inotify was read.
    slices(sup).slice_vanished(sup.services["lo"])
    bump(fs, LO, oom=1, oom_kill=1)  # lands in the same inotify read as the stale removal
    slices(sup).watch.on_ready()
    assert [e["service"] for e in events(tmp_path, "slice_vanished")] == ["lo"]
    assert [(k["service"], k["limit_at"]) for k in events(tmp_path, "oom_kill")] == [
        ("lo", str(LO))
    ]


def test_a_vanished_budget_is_recreated_above_its_service(
    sup: Supervisor, fs: FakeCgroupFS
) -> None:
    fs.rmdir(LO)
    fs.rmdir(HI)
    fs.rmdir(PAIR)
    slices(sup).slice_vanished(sup.services["lo"])
    assert fs.exists(PAIR) and fs.exists(LO)
    assert fs.value(PAIR, "memory.max") == str(48 << 20)
    # The budget enables the controllers its children need, before they are made.
    assert "memory" in fs.value(PAIR, "cgroup.subtree_control").split()
    assert fs.value(LO, "memory.max") == "max"


# -- the state dir -------------------------------------------------------------------------


def test_a_second_supervisor_on_the_same_state_dir_is_refused(
    sup: Supervisor, fs: FakeCgroupFS, tmp_path: Path, clock: Clock
) -> None:
    from oomguard.errors import StateDirError

    config = Config.from_mapping(
        {
            "oomguard": {"cgroup": "/other", "state_dir": str(tmp_path / "state")},
            "service": {"db": {"role": "primary", "command": ["sleep", "1000"]}},
        }
    )
    second = Supervisor(
        compile_plan(config), fs, CgroupPath.ROOT, Logger(io.StringIO()), io=RunIO(clock=clock)
    )
    with pytest.raises(StateDirError, match=f"pid {os.getpid()}") as info:
        second._setup()
    second._close()
    assert info.value.exit_code == 2
    assert not fs.exists(P("/other"))  # refused before touching any cgroup


def test_event_log_write_failures_are_counted_and_warned_once_per_burst(
    sup: Supervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    out = io.StringIO()
    assert sup.publisher is not None
    sup.log = sup.publisher.log = Logger(out)
    log_fd = sup.publisher.events._fd
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        if fd == log_fd:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    for _ in range(5):
        sup.emit("pressure", None, avg10=1.0)
    sup._flush_state()
    monkeypatch.undo()
    warned = [ln for ln in out.getvalue().splitlines() if "event_log_write_failed" in ln]
    assert len(warned) == 1, out.getvalue()
    assert "No space left on device" in warned[0]
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["event_log_dropped"] == 5
    sup.emit("pressure", None, avg10=1.0)
    assert "event_log_recovered" in out.getvalue()


def test_the_loop_calls_each_source_s_own_handler(
    sup: Supervisor, fs: FakeCgroupFS, tmp_path: Path
) -> None:
    # Registered with handlers (no tag to dispatch on): the signal queue's wake-up fd and the
    # inotify fd of memory.events.local.
    assert sup.signals is not None
    assert sup.signals.fileno() in sup.loop and slices(sup).watch.fileno() in sup.loop
    bump(fs, PAIR, oom=1)
    assert sup.loop.run_once(5) == 1
    assert [e["slice"] for e in events(tmp_path, "oom")] == [str(PAIR)]
    os.kill(os.getpid(), signal.SIGTERM)
    assert sup.loop.run_once(5) == 1
    assert sup.shutdown is not None and sup.shutdown.reason == "received SIGTERM"


def test_extensions_see_the_supervisor_through_the_narrow_context(sup: Supervisor) -> None:
    ctx = SupervisorContext(sup, sup.plan)
    assert ctx.root == ROOT and ctx.primary == "db" and ctx.mode == "enforce"
    assert ctx.names() == tuple(sup.services)
    lo = ctx.service("lo")
    assert (lo.cgroup, lo.criticality, lo.slices, lo.evictable) == (LO, 10, ("pair",), True)
    assert ctx.service("db").is_primary and ctx.service("db").criticality == 100
    pair = ctx.slices()["pair"]
    assert (pair.cgroup, pair.memory_max, pair.members) == (PAIR, 48 << 20, ("hi", "lo"))
    # The view is read as of the call: a state change shows in the next one.
    svc = sup.services["lo"]
    svc.rec = replace(svc.rec, state=rp.State.RUNNING, pid=4242, started_at=sup.now)
    assert lo.state is rp.State.STOPPED and ctx.service("lo").state is rp.State.RUNNING
    ctx.evict("lo")
    assert svc.evictions == 1
    assert (svc.rec.state, svc.rec.stop_reason) == (rp.State.STOPPING, "evict")
    r, w = os.pipe()
    try:
        seen: list[int] = []
        ctx.add_reader(r, 1, seen.append)
        os.write(w, b"x")
        assert sup.loop.run_once(5) == 1 and seen == [1]
        ctx.remove_reader(r)
        assert r not in sup.loop
    finally:
        os.close(r)
        os.close(w)
