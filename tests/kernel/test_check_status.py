"""Real-kernel tests for `oomguard check` and `oomguard status` (run in the QEMU guest).

The tree is built with plain mkdir/writes so these tests depend on nothing but the CLI under
test; a real OOM kill inside one slice checks that the counters land where the kernel puts them
(memory.events.local of the victim's slice, memory.events of it and every ancestor).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest

from oomguard.cgroup.discover import find_cgroup2_mount

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.kernel

EVENT_KEYS = ("low", "high", "max", "oom", "oom_kill", "oom_group_kill")


def oomguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oomguard", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_check_reports_ready(cgroup2_mount: Path) -> None:
    proc = oomguard("check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verdict: ready" in proc.stdout
    proc = oomguard("check", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["verdict"] == "ready"
    failed = [i for i in data["items"] if i["level"] == "fail"]
    assert failed == []
    assert data["facts"]["mode"] == "unified"
    assert "memory" in data["facts"]["controllers"]


def _write(path: Path, value: str) -> None:
    # One write() per value, as the kernel parses each write separately.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _spawn_in(cg: Path, adj: int, *cmd: str) -> subprocess.Popen[bytes]:
    # The shell joins the cgroup and sets its score, then execs: both survive exec.
    script = f'echo $$ > "{cg}/cgroup.procs" && echo {adj} > /proc/self/oom_score_adj && exec "$@"'
    return subprocess.Popen(["sh", "-c", script, "sh", *cmd])


def _wait_in(cg: Path, pid: int) -> None:
    deadline = time.monotonic() + 30
    while str(pid) not in (cg / "cgroup.procs").read_text().split():
        assert time.monotonic() < deadline, f"pid {pid} never joined {cg}"
        time.sleep(0.05)


def test_status_json_carries_every_figure(cgroup2_mount: Path, scratch_cgroup: Path) -> None:
    tree = scratch_cgroup / "tree"
    tree.mkdir()
    _write(tree / "cgroup.subtree_control", "+memory +pids")
    _write(tree / "memory.max", str(512 << 20))
    db, sidecars = tree / "db", tree / "sidecars"
    db.mkdir()
    sidecars.mkdir()
    _write(sidecars / "cgroup.subtree_control", "+memory +pids")
    _write(db / "memory.high", str(200 << 20))
    _write(db / "memory.low", str(16 << 20))
    _write(sidecars / "memory.max", str(64 << 20))
    backup = sidecars / "backup"
    backup.mkdir()
    _write(backup / "memory.max", str(16 << 20))
    _write(backup / "memory.oom.group", "1")

    sleeper = _spawn_in(db, -500, "sleep", "600")
    try:
        _wait_in(db, sleeper.pid)
        # A real OOM kill in backup: `tail /dev/zero` allocates until memory.max stops it.
        hog = _spawn_in(backup, 800, "tail", "/dev/zero")
        assert hog.wait(timeout=60) == -9

        root = "/" + str(tree.relative_to(cgroup2_mount))
        args = ["status", "--json", "--root", root, "--state-dir", str(scratch_cgroup / "nostate")]
        found = find_cgroup2_mount()
        if found is None or found.resolve() != cgroup2_mount.resolve():
            args += ["--mount", str(cgroup2_mount)]
        proc = oomguard(*args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        data = json.loads(proc.stdout)
    finally:
        sleeper.kill()
        sleeper.wait()

    by_path: dict[str, dict[str, Any]] = {s["path"]: s for s in data["slices"]}
    assert list(by_path) == [root, f"{root}/db", f"{root}/sidecars", f"{root}/sidecars/backup"]
    for path, s in by_path.items():
        assert s["memory"] is True, path
        assert isinstance(s["current"], int), path
        assert isinstance(s["peak"], int), path  # 6.1 guest: memory.peak exists (5.19+)
        for key in ("high", "max"):
            assert s[key] == "max" or isinstance(s[key], int), (path, key)
        for key in EVENT_KEYS:
            assert isinstance(s["events"][key], int), (path, key)
            assert isinstance(s["events_local"][key], int), (path, key)
        assert isinstance(s["pressure"]["some"]["avg10"], float), path
        assert isinstance(s["pressure"]["full"]["avg10"], float), path
        assert s["populated"] in (True, False), path
    assert by_path[root]["max"] == 512 << 20
    dbs = by_path[f"{root}/db"]
    assert dbs["high"] == 200 << 20 and dbs["low"] == 16 << 20 and dbs["max"] == "max"
    assert [(p["pid"], p["comm"], p["oom_score_adj"]) for p in dbs["procs"]] == [
        (sleeper.pid, "sleep", -500)
    ]
    assert dbs["procs"][0]["rss_bytes"] > 0

    # The kill is charged locally to the victim's slice and hierarchically up the tree.
    b = by_path[f"{root}/sidecars/backup"]
    assert b["oom_group"] is True
    assert b["events_local"]["oom_kill"] >= 1
    assert b["events"]["oom_kill"] >= 1
    assert b["events"]["oom_group_kill"] >= 1
    assert b["peak"] >= 8 << 20
    assert b["procs"] == []
    sc = by_path[f"{root}/sidecars"]
    assert sc["events"]["oom_kill"] >= 1 and sc["events_local"]["oom_kill"] == 0
    assert by_path[root]["events"]["oom_kill"] >= 1


def test_status_table_on_real_tree(cgroup2_mount: Path, scratch_cgroup: Path) -> None:
    (scratch_cgroup / "t").mkdir()
    root = "/" + str((scratch_cgroup / "t").relative_to(cgroup2_mount))
    proc = oomguard("status", "--mount", str(cgroup2_mount), "--root", root, "--state-dir", "/x")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith(f"tree {root} (from --root)")
    row = proc.stdout.splitlines()[3].split()
    assert row[0] == root and row[6] == "max"  # MAX column
