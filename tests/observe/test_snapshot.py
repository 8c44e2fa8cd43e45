"""take_snapshot on a fake cgroup tree in a temp dir (plain files read by the real CgroupFS)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from typing import TYPE_CHECKING

from oomguard.cgroup.fs import CgroupFS
from oomguard.cgroup.path import CgroupPath
from oomguard.observe.snapshot import proc_info, snapshot_to_dict, take_snapshot

if TYPE_CHECKING:
    from pathlib import Path

#: A pid that cannot exist (above the kernel's PID_MAX_LIMIT of 4194304).
DEAD_PID = 4194999

PSI = (
    "some avg10=1.50 avg60=0.20 avg300=0.05 total=123456\n"
    "full avg10=0.75 avg60=0.10 avg300=0.00 total=6000\n"
)


def events_text(**counts: int) -> str:
    keys = ("low", "high", "max", "oom", "oom_kill", "oom_group_kill")
    return "".join(f"{k} {counts.get(k, 0)}\n" for k in keys)


def write_cgroup(
    mount: Path,
    path: str,
    *,
    memory: bool = True,
    pids: tuple[int, ...] = (),
    current: int = 0,
    peak: int | None = 0,
    high: str = "max",
    max_: str = "max",
    min_: str = "0",
    low: str = "0",
    swap_max: str | None = "max",
    oom_group: int = 0,
    events: dict[str, int] | None = None,
    events_local: dict[str, int] | None = None,
    pressure: str | None = PSI,
    populated: bool = True,
) -> Path:
    """Create the interface files a cgroup2 dir would have (memory.* only if `memory`)."""
    d = mount.joinpath(*[p for p in path.split("/") if p])
    d.mkdir(parents=True, exist_ok=True)
    files = {
        "cgroup.procs": "".join(f"{p}\n" for p in pids),
        "cgroup.controllers": "memory pids\n" if memory else "pids\n",
        "cgroup.subtree_control": "",
        "cgroup.type": "domain\n",
        "cgroup.events": f"populated {int(populated)}\nfrozen 0\n",
    }
    if pressure is not None:
        files["memory.pressure"] = pressure
    if memory:
        files |= {
            "memory.current": f"{current}\n",
            "memory.min": f"{min_}\n",
            "memory.low": f"{low}\n",
            "memory.high": f"{high}\n",
            "memory.max": f"{max_}\n",
            "memory.oom.group": f"{oom_group}\n",
            "memory.events": events_text(**(events or {})),
            "memory.events.local": events_text(**(events_local or {})),
        }
        if peak is not None:
            files["memory.peak"] = f"{peak}\n"
        if swap_max is not None:
            files["memory.swap.max"] = f"{swap_max}\n"
    for name, text in files.items():
        (d / name).write_text(text)
    return d


def build_tree(mount: Path) -> None:
    """/oomguard with supervisor, db, and sidecars/backup (which saw an OOM kill)."""
    write_cgroup(mount, "/", memory=False, pressure=PSI, populated=True)
    (mount / "cgroup.type").unlink()
    (mount / "cgroup.events").unlink()  # the real root has neither
    write_cgroup(
        mount,
        "/oomguard",
        current=300 << 20,
        peak=400 << 20,
        max_=str(1 << 30),
        events={"oom": 1, "oom_kill": 1},
    )
    write_cgroup(
        mount, "/oomguard/supervisor", pids=(os.getpid(),), current=20 << 20, min_=str(16 << 20)
    )
    write_cgroup(
        mount,
        "/oomguard/db",
        pids=(os.getpid(), DEAD_PID),
        current=200 << 20,
        high=str(600 << 20),
        max_=str(700 << 20),
        low=str(256 << 20),
        swap_max="0",
    )
    write_cgroup(
        mount,
        "/oomguard/sidecars",
        current=80 << 20,
        max_=str(128 << 20),
        events={"oom": 1, "oom_kill": 1, "max": 3},
    )
    write_cgroup(
        mount,
        "/oomguard/sidecars/backup",
        current=80 << 20,
        oom_group=1,
        events={"oom": 1, "oom_kill": 1, "high": 4},
        events_local={"oom": 1, "oom_kill": 1},
        peak=None,
        swap_max=None,
        populated=False,
    )


def test_snapshot_preorder_with_all_figures(tmp_path: Path) -> None:
    build_tree(tmp_path)
    snap = take_snapshot(CgroupFS(tmp_path), CgroupPath.parse("/oomguard"))
    assert [str(s.path) for s in snap.slices] == [
        "/oomguard",
        "/oomguard/db",
        "/oomguard/sidecars",
        "/oomguard/sidecars/backup",
        "/oomguard/supervisor",
    ]
    assert [s.depth for s in snap.slices] == [0, 1, 1, 2, 1]
    root = snap.slices[0]
    assert root.name == "oomguard"
    assert root.max == 1 << 30
    assert root.high is None and root.memory  # "max": unlimited, not unknown
    assert root.current == 300 << 20 and root.peak == 400 << 20
    assert root.events is not None and root.events["oom_kill"] == 1
    assert root.pressure is not None
    assert root.pressure.some.avg10 == 1.5
    assert root.pressure.full is not None and root.pressure.full.avg10 == 0.75
    assert root.populated is True

    db = snap.find("/oomguard/db")
    assert db is not None
    assert (db.high, db.max, db.low, db.min, db.swap_max) == (600 << 20, 700 << 20, 256 << 20, 0, 0)
    # The dead pid is skipped; ours is read from the real /proc.
    assert [p.pid for p in db.procs] == [os.getpid()]
    me = db.procs[0]
    with open("/proc/self/oom_score_adj") as f:
        assert me.oom_score_adj == int(f.read())
    assert me.rss_bytes > 0 and me.comm

    sup = snap.find("/oomguard/supervisor")
    assert sup is not None and sup.min == 16 << 20 and sup.oom_group is False

    backup = snap.find("/oomguard/sidecars/backup")
    assert backup is not None
    assert backup.oom_group is True
    assert backup.peak is None  # no memory.peak (kernel < 5.19)
    assert backup.swap_max is None and not backup.swap
    assert backup.events_local == {
        "low": 0,
        "high": 0,
        "max": 0,
        "oom": 1,
        "oom_kill": 1,
        "oom_group_kill": 0,
    }
    assert backup.populated is False


def test_controller_off_gives_none(tmp_path: Path) -> None:
    write_cgroup(tmp_path, "/t", memory=False, pressure=None, pids=(DEAD_PID,))
    (s,) = take_snapshot(CgroupFS(tmp_path), CgroupPath.parse("/t")).slices
    assert not s.memory
    assert (s.current, s.peak, s.max, s.high, s.oom_group) == (None, None, None, None, None)
    assert s.events is None and s.events_local is None and s.pressure is None
    assert s.procs == []
    d = snapshot_to_dict(take_snapshot(CgroupFS(tmp_path), CgroupPath.parse("/t")))
    assert d["slices"][0]["max"] is None  # null = n/a, distinct from "max"


def test_mount_root_snapshot(tmp_path: Path) -> None:
    build_tree(tmp_path)
    snap = take_snapshot(CgroupFS(tmp_path), CgroupPath.parse("/"))
    root = snap.slices[0]
    assert root.name == "/" and root.depth == 0
    assert root.populated is None  # the real root has no cgroup.events
    assert not root.memory
    assert len(snap.slices) == 6


def test_missing_root_is_empty(tmp_path: Path) -> None:
    snap = take_snapshot(CgroupFS(tmp_path), CgroupPath.parse("/nope"))
    assert snap.slices == []


class VanishingFS(CgroupFS):
    """Removes a cgroup dir just before its cgroup.procs is read, as `rmdir` from outside would."""

    def __init__(self, mount: Path, victim: str) -> None:
        super().__init__(mount)
        self.victim = str(mount) + victim

    def _sys_read(self, path: str) -> bytes:
        if path == self.victim + "/cgroup.procs":
            shutil.rmtree(self.victim)
        return super()._sys_read(path)


def test_cgroup_vanishing_mid_walk_is_skipped(tmp_path: Path) -> None:
    build_tree(tmp_path)
    fs = VanishingFS(tmp_path, "/oomguard/sidecars")
    snap = take_snapshot(fs, CgroupPath.parse("/oomguard"))
    # sidecars is gone, and with it backup (listed by the walk, gone by the time it is read).
    assert [str(s.path) for s in snap.slices] == [
        "/oomguard",
        "/oomguard/db",
        "/oomguard/supervisor",
    ]


class LateVanishFS(CgroupFS):
    """The cgroup disappears after cgroup.procs was read, in the middle of its memory files."""

    def _sys_read(self, path: str) -> bytes:
        if path.endswith("/db/memory.high"):
            shutil.rmtree(path.rsplit("/", 1)[0])
        return super()._sys_read(path)


def test_cgroup_vanishing_between_its_files_is_skipped(tmp_path: Path) -> None:
    build_tree(tmp_path)
    snap = take_snapshot(LateVanishFS(tmp_path), CgroupPath.parse("/oomguard"))
    assert snap.find("/oomguard/db") is None
    assert snap.find("/oomguard/supervisor") is not None


class NoPsiFS(CgroupFS):
    def _sys_read(self, path: str) -> bytes:
        if path.endswith("/memory.pressure"):
            raise OSError(errno.EOPNOTSUPP, "Operation not supported", path)
        return super()._sys_read(path)


def test_psi_switched_off_per_cgroup_gives_none(tmp_path: Path) -> None:
    build_tree(tmp_path)
    snap = take_snapshot(NoPsiFS(tmp_path), CgroupPath.parse("/oomguard"))
    assert len(snap.slices) == 5
    assert all(s.pressure is None for s in snap.slices)


def test_proc_info_from_a_fake_proc(tmp_path: Path) -> None:
    d = tmp_path / "42"
    d.mkdir()
    (d / "comm").write_text("postgres\n")
    (d / "oom_score_adj").write_text("-999\n")
    (d / "statm").write_text("1000 250 30 1 0 100 0\n")
    info = proc_info(42, str(tmp_path))
    assert info is not None
    assert (info.pid, info.comm, info.oom_score_adj) == (42, "postgres", -999)
    assert info.rss_bytes == 250 * os.sysconf("SC_PAGE_SIZE")
    assert proc_info(43, str(tmp_path)) is None
    (d / "oom_score_adj").write_text("")  # torn read of an exiting process
    assert proc_info(42, str(tmp_path)) is None


def test_snapshot_to_dict_is_json_with_max_strings(tmp_path: Path) -> None:
    build_tree(tmp_path)
    d = snapshot_to_dict(take_snapshot(CgroupFS(tmp_path), CgroupPath.parse("/oomguard")))
    again = json.loads(json.dumps(d))
    assert again["root"] == "/oomguard"
    root, db = again["slices"][0], again["slices"][1]
    assert root["high"] == "max" and root["max"] == 1 << 30
    assert db["swap_max"] == 0
    assert root["pressure"]["some"]["avg10"] == 1.5
    assert root["pressure"]["full"]["total_us"] == 6000
    assert db["procs"][0]["pid"] == os.getpid()
    backup = again["slices"][3]
    assert backup["swap_max"] is None and backup["peak"] is None and backup["oom_group"] is True
