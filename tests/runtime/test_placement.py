"""Where services live (runtime/placement.py): slices of a cgroup tree, or process groups.

The slice placement runs on the fake cgroupfs of tests/cgroup/fakefs.py, whose interface files
are plain files: writing a counter file raises a real inotify IN_MODIFY, as the kernel does.
A `FakeHost` stands in for the supervisor; nothing is spawned.
"""

from __future__ import annotations

import io
import json
import os
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from oomguard.cgroup.path import CgroupPath
from oomguard.config.compile import compile_plan
from oomguard.config.model import Config
from oomguard.observe.log import Logger
from oomguard.policy import oom
from oomguard.runtime.placement import Placement, ProcessGroups, Slices
from oomguard.runtime.service import Service
from tests.cgroup.fakefs import FakeCgroupFS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from pathlib import Path

P = CgroupPath.parse
ROOT = P("/og")
PAIR, LO, HI, DB = P("/og/pair"), P("/og/pair/lo"), P("/og/pair/hi"), P("/og/db")
COUNTERS = ("low", "high", "max", "oom", "oom_kill", "oom_group_kill")
CONFIG = {
    "oomguard": {"cgroup": str(ROOT)},
    "slice": {"pair": {"memory_max": "48M", "oom_group": True}},
    "service": {
        "db": {"role": "primary", "command": ["sleep", "1000"], "memory_max": "64M"},
        "hi": {"command": ["sleep", "1000"], "slice": "pair", "criticality": 90},
        "lo": {"command": ["sleep", "1000"], "slice": "pair", "criticality": 10},
    },
}


@dataclass
class FakeHost:
    out: io.StringIO = field(default_factory=io.StringIO)
    now: float = 1000.0
    stopping: bool = False
    services: dict[str, Service] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    rises: list[tuple[CgroupPath, dict[str, int]]] = field(default_factory=list)
    readers: dict[int, Callable[[int], None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.log = Logger(self.out)

    def emit(self, kind: str, cgroup: CgroupPath | None, **fields: Any) -> None:
        self.events.append({"kind": kind, "slice": str(cgroup) if cgroup else None, **fields})

    def counters_rose(self, path: CgroupPath, delta: Mapping[str, int]) -> None:
        self.rises.append((path, dict(delta)))

    def add_reader(self, fd: int, mask: int, handler: Callable[[int], None]) -> None:
        self.readers[fd] = handler

    def remove_reader(self, fd: int) -> None:
        self.readers.pop(fd, None)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]

    def ready(self) -> None:
        """The loop found the inotify fd readable."""
        for handler in list(self.readers.values()):
            handler(1)


def _services(host: FakeHost, placement: Placement, config: Config) -> None:
    placement.setup(None)
    for spec in compile_plan(config).services:
        svc = Service(spec, placement.cgroup_of(spec.name))
        placement.attach(svc)
        host.services[spec.name] = svc


@pytest.fixture
def fs(tmp_path: Path) -> FakeCgroupFS:
    fake = FakeCgroupFS(tmp_path / "cgroup")
    fake.add_proc(CgroupPath.ROOT, os.getpid())  # the placement moves us into our leaf
    return fake


@pytest.fixture
def host() -> FakeHost:
    return FakeHost()


def _slices(host: FakeHost, fs: FakeCgroupFS, config: Config) -> Slices:
    memory_max = {n: s.memory_max for n, s in config.service.items()}
    placement = Slices(
        host, fs, config.tree_spec(), CgroupPath.ROOT, mode="enforce", memory_max=memory_max
    )
    _services(host, placement, config)
    return placement


@pytest.fixture
def slices(host: FakeHost, fs: FakeCgroupFS) -> Iterator[Slices]:
    placement = _slices(host, fs, Config.from_mapping(CONFIG))
    try:
        yield placement
    finally:
        for svc in host.services.values():
            if svc.procs_fd >= 0:
                os.close(svc.procs_fd)
        placement.close()


def bump(fs: FakeCgroupFS, path: CgroupPath, **rises: int) -> None:
    """What the kernel does to memory.events.local: counters only ever go up."""
    f = fs.dir(path) / "memory.events.local"
    counts = dict(line.split() for line in f.read_text().splitlines())
    values = {k: int(counts.get(k, 0)) + rises.get(k, 0) for k in COUNTERS}
    f.write_text("".join(f"{k} {v}\n" for k, v in values.items()))


# -- the slice tree -------------------------------------------------------------------------


def test_setup_builds_the_tree_and_watches_every_cgroup(slices: Slices, host: FakeHost) -> None:
    assert slices.root == ROOT and slices.degraded is None
    assert slices.built is not None and set(slices.built.paths) == {"pair", "db", "hi", "lo"}
    assert set(slices.watch.local) == {ROOT, PAIR, DB, HI, LO}
    assert list(host.readers) == [slices.watch.fileno()]
    assert [e["slice"] for e in host.of("tree")] == [str(ROOT)]
    assert "tree" in host.out.getvalue() and "services=3 slices=1" in host.out.getvalue()
    assert {s.name: s.cgroup for s in host.services.values()} == {"db": DB, "hi": HI, "lo": LO}
    assert all(s.procs_fd >= 0 for s in host.services.values())


def test_a_budget_rise_read_in_the_same_turn_names_the_budget(
    slices: Slices, fs: FakeCgroupFS, host: FakeHost
) -> None:
    bump(fs, PAIR, oom=1, max=3)
    bump(fs, LO, oom_kill=1)
    host.ready()
    assert [(k["service"], k["limit_at"]) for k in host.of("oom_kill")] == [("lo", str(PAIR))]
    assert host.of("oom") == []  # read once, not logged again as the budget's own `oom`
    assert (PAIR, {"max": 3, "oom": 1}) in host.rises
    assert (LO, {"oom_kill": 1}) in host.rises
    assert host.services["lo"].oom_pending


def test_a_budget_rise_read_a_turn_earlier_still_names_the_budget(
    slices: Slices, fs: FakeCgroupFS, host: FakeHost
) -> None:
    bump(fs, PAIR, oom=1)
    host.ready()
    assert [e["slice"] for e in host.of("oom")] == [str(PAIR)]
    host.now += 0.5
    bump(fs, LO, oom_kill=2)
    host.ready()
    kills = [(k["service"], k["limit_at"], k["count"]) for k in host.of("oom_kill")]
    assert kills == [("lo", str(PAIR), 2)]


def test_an_old_budget_rise_does_not_explain_a_later_kill(
    slices: Slices, fs: FakeCgroupFS, host: FakeHost
) -> None:
    bump(fs, PAIR, oom=1)
    host.ready()
    host.now += oom.OOM_ATTRIBUTION_WINDOW + 1
    bump(fs, LO, oom_kill=1)
    host.ready()
    assert [k["limit_at"] for k in host.of("oom_kill")] == ["outside the tree"]


def test_the_limit_figures_of_the_budget_are_logged(
    slices: Slices, fs: FakeCgroupFS, host: FakeHost
) -> None:
    bump(fs, PAIR, oom=1)
    bump(fs, LO, oom_kill=1)
    host.ready()
    (kill,) = host.of("oom_kill")
    assert kill["limit_max"] == "48M" and "limit_current" in kill
    assert kill["max"] == "max"  # lo's own slice has no limit


def test_a_kill_beside_a_running_main_process_sweeps_the_slice(
    slices: Slices, fs: FakeCgroupFS, host: FakeHost
) -> None:
    class Alive:
        pid = os.getpid()  # alive: the kill took another process of the service
        pidfd = -1

    lo = host.services["lo"]
    lo.child = Alive()  # type: ignore[assignment]
    fs.add_proc(LO, 4001)
    bump(fs, LO, oom=1, oom_kill=1)
    host.ready()
    assert "victim_pid" not in host.of("oom_kill")[0]
    assert [(k["service"], k["reason"]) for k in host.of("kill")] == [("lo", "oom_kill")]
    assert fs.procs(LO) == []


def test_survive_partial_kill_keeps_the_rest(
    host: FakeHost, fs: FakeCgroupFS, tmp_path: Path
) -> None:
    cfg = json.loads(json.dumps(CONFIG))
    cfg["service"]["lo"]["survive_partial_kill"] = True
    placement = _slices(host, fs, Config.from_mapping(cfg))
    try:

        class Alive:
            pid = os.getpid()
            pidfd = -1

        host.services["lo"].child = Alive()  # type: ignore[assignment]
        fs.add_proc(LO, 4001)
        bump(fs, LO, oom_kill=1)
        host.ready()
        assert host.of("oom_kill") and host.of("kill") == []
        assert fs.procs(LO) == [4001]
    finally:
        placement.close()


def test_a_vanished_slice_is_recreated_and_watched_without_touching_the_others(
    slices: Slices, fs: FakeCgroupFS, host: FakeHost
) -> None:
    fs.add_proc(DB, 4001)
    fs.add_proc(HI, 4002)
    fs.rmdir(LO)
    host.ready()  # the removal is noticed through inotify
    assert fs.exists(LO)
    assert fs.value(LO, "memory.oom.group") == "1"
    assert fs.procs(DB) == [4001] and fs.procs(HI) == [4002]
    assert fs.signals == []
    assert [e["service"] for e in host.of("slice_vanished")] == ["lo"]
    assert host.services["lo"].procs_fd >= 0
    assert "slice_recreated service=lo" in host.out.getvalue()
    bump(fs, LO, oom=1, oom_kill=1)
    host.ready()
    assert [(k["service"], k["limit_at"]) for k in host.of("oom_kill")] == [("lo", str(LO))]


def test_nothing_is_recreated_while_stopping(
    slices: Slices, fs: FakeCgroupFS, host: FakeHost
) -> None:
    host.stopping = True
    fs.rmdir(LO)
    host.ready()
    assert [e["service"] for e in host.of("slice_vanished")] == ["lo"]
    assert not fs.exists(LO)


def test_a_vanished_budget_is_recreated_above_its_service(slices: Slices, fs: FakeCgroupFS) -> None:
    fs.rmdir(LO)
    fs.rmdir(HI)
    fs.rmdir(PAIR)
    slices.cleanup(slices.service_at(LO))  # type: ignore[arg-type]  # a read raises Vanished
    assert fs.exists(PAIR) and fs.exists(LO)
    assert fs.value(PAIR, "memory.max") == str(48 << 20)
    assert "memory" in fs.value(PAIR, "cgroup.subtree_control").split()


def test_the_exit_path_reads_the_counters_before_inotify_delivers(
    slices: Slices, fs: FakeCgroupFS, host: FakeHost
) -> None:
    bump(fs, DB, oom=1, oom_kill=1)
    slices.exited(host.services["db"])
    assert host.services["db"].oom_pending
    host.ready()  # the notification that follows finds nothing new
    assert len(host.of("oom_kill")) == 1


def test_a_new_start_does_not_inherit_the_last_oom(
    slices: Slices, fs: FakeCgroupFS, host: FakeHost
) -> None:
    bump(fs, DB, oom_kill=1)
    slices.before_spawn(host.services["db"])
    slices.exited(host.services["db"])
    assert host.of("oom_kill") == [] and not host.services["db"].oom_pending


def test_cleanup_kills_what_the_main_process_left(
    slices: Slices, fs: FakeCgroupFS, host: FakeHost
) -> None:
    fs.add_proc(HI, 4002)
    slices.cleanup(host.services["hi"])
    slices.cleanup(host.services["lo"])  # empty: nothing to kill
    assert [(k["service"], k["reason"], k["pids"]) for k in host.of("kill")] == [
        ("hi", "main_exited", 1)
    ]
    assert fs.procs(HI) == []


def test_the_oom_line_names_the_slice_its_limit_and_peak(slices: Slices, host: FakeHost) -> None:
    line = slices.oom_line(host.services["db"])
    assert line.startswith("db was killed by the OOM killer (slice og/db, memory.max 64M, peak ")


def test_close_tears_the_tree_down_and_stops_watching(host: FakeHost, fs: FakeCgroupFS) -> None:
    placement = _slices(host, fs, Config.from_mapping(CONFIG))
    for svc in host.services.values():
        os.close(svc.procs_fd)
    placement.close()
    assert host.readers == {}
    assert not fs.exists(DB) and not fs.exists(PAIR)
    assert fs.exists(ROOT / "supervisor")  # oomguard is still inside


# -- process groups (degraded) --------------------------------------------------------------


class GroupChild:
    def __init__(self) -> None:
        self.pid = 4242
        self.pidfd = -1
        self.groups: list[int] = []

    def signal_group(self, sig: int) -> bool:
        self.groups.append(sig)
        return True


@pytest.fixture
def groups(host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> ProcessGroups:
    counts = iter([10, 10, 12])
    monkeypatch.setattr("oomguard.proc.vmstat_oom_kill", lambda: next(counts))
    placement = ProcessGroups(host, "the cgroup filesystem is read-only", CgroupPath.ROOT)
    _services(
        host, placement, Config.from_mapping({k: v for k, v in CONFIG.items() if k != "oomguard"})
    )
    return placement


def test_degraded_services_live_in_oomguards_cgroup_with_nothing_opened(
    groups: ProcessGroups, host: FakeHost
) -> None:
    assert (groups.root, groups.built) == (None, None)
    assert groups.degraded == "the cgroup filesystem is read-only"
    assert [s.cgroup for s in host.services.values()] == [CgroupPath.ROOT] * 3
    assert [s.procs_fd for s in host.services.values()] == [-1] * 3
    assert [e["reason"] for e in host.of("degraded")] == ["the cgroup filesystem is read-only"]
    assert host.readers == {}


def test_degraded_kill_is_by_process_group_never_the_cgroup(
    groups: ProcessGroups, host: FakeHost
) -> None:
    svc = host.services["lo"]
    groups.kill(svc, "stop_timeout")  # no process: nothing to do
    child = GroupChild()
    svc.child = child  # type: ignore[assignment]
    groups.kill(svc, "stop_timeout")
    assert child.groups == [signal.SIGKILL]
    assert "kill level=warn service=lo reason=stop_timeout scope=process_group" in (
        host.out.getvalue()
    )
    groups.kill_on_error(svc)
    assert child.groups == [signal.SIGKILL] * 2


def test_degraded_oom_evidence_is_a_vmstat_rise_at_the_exit(
    groups: ProcessGroups, host: FakeHost
) -> None:
    db, lo = host.services["db"], host.services["lo"]
    db.child, lo.child = GroupChild(), GroupChild()  # type: ignore[assignment]
    groups.exited(db)  # 10 -> 10: no OOM kill meanwhile
    assert not db.oom_pending and db.child.groups == [signal.SIGKILL]  # type: ignore[union-attr]
    groups.exited(lo)  # 10 -> 12
    assert lo.oom_pending
    assert [(e["service"], e["source"], e["count"]) for e in host.of("oom_kill")] == [
        ("lo", "vmstat", 2)
    ]
    assert groups.oom_line(lo) == (
        "lo was killed by the OOM killer (degraded mode, no slice: the cgroup filesystem is "
        "read-only)"
    )
