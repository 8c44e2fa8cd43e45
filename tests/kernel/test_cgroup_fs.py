"""CgroupFS and CgroupPath against a real cgroup2 mount (run in the guest: see tools/vmrun.py)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from oomguard.cgroup.fs import NO_INTERNAL_PROCESS_HINT, CgroupFS
from oomguard.cgroup.path import CgroupPath, CgroupPathError
from oomguard.errors import CgroupError, Vanished

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    Spawn = Callable[[], subprocess.Popen[bytes]]

pytestmark = pytest.mark.kernel

M = 1 << 20
#: Touch 96 MiB, say so, then wait for stdin: a process whose exit takes measurable time.
HOLD_96M = "import sys; x = b'x' * (96 << 20); print('r', flush=True); sys.stdin.read()"


def test_mkdir_gives_a_cgroup_with_memory_files(fs: CgroupFS, scratch: CgroupPath) -> None:
    a = scratch.child("a")
    fs.mkdir(a)
    fs.mkdir(a)  # exist ok
    assert fs.exists(a)
    assert {"memory", "pids"} <= fs.controllers(a)
    assert fs.read_limit(a, "memory.max") is None
    fs.write(a, "memory.max", str(32 * M))
    fs.write(a, "memory.high", str(24 * M))
    assert fs.read_limit(a, "memory.max") == 32 * M
    assert fs.read_limit(a, "memory.high") == 24 * M
    assert fs.children(scratch) == [a]


def test_parsers_on_real_files(fs: CgroupFS, scratch: CgroupPath, sleeper: Spawn) -> None:
    a = scratch.child("a")
    fs.mkdir(a)
    proc = sleeper()
    fs.move_pid(a, proc.pid)
    assert fs.procs(a) == [proc.pid]
    assert fs.populated(a)
    events = fs.read_flat(a, "memory.events")
    assert {"low", "high", "max", "oom", "oom_kill"} <= events.keys()
    assert fs.read_flat(a, "memory.events.local").keys() == events.keys()
    stat = fs.read_flat(a, "memory.stat")
    assert {"anon", "file", "pgfault"} <= stat.keys()
    assert fs.read_flat(a, "cgroup.events")["populated"] == 1
    assert fs.read_int(a, "memory.current") > 0
    peak = fs.read_optional(a, "memory.peak")  # 5.19+
    if peak is not None:
        assert int(peak) >= 0
    pressure = fs.read_pressure(a, "memory")
    assert pressure.full is not None
    assert pressure.some.total_us >= 0
    root_cpu = fs.read_pressure(CgroupPath.ROOT, "cpu")
    assert root_cpu.some.avg10 >= 0.0
    assert fs.read_limit(a, "pids.max") is None


def test_invalid_limit_is_einval_naming_file_and_value(fs: CgroupFS, scratch: CgroupPath) -> None:
    a = scratch.child("a")
    fs.mkdir(a)
    with pytest.raises(CgroupError) as info:
        fs.write(a, "memory.max", "lots")
    assert not isinstance(info.value, Vanished)
    assert "'lots'" in info.value.message
    assert "memory.max" in info.value.message


def test_controller_not_delegated(fs: CgroupFS, scratch: CgroupPath) -> None:
    a = scratch.child("a")
    fs.mkdir(a)
    # scratch enables only memory and pids, so "cpu" is not in a's cgroup.controllers.
    assert "cpu" not in fs.controllers(a)
    with pytest.raises(CgroupError, match="cpu not available"):
        fs.enable_controllers(a, ["cpu"])
    # The raw write: the kernel answers ENOENT although the file exists.
    with pytest.raises(CgroupError) as info:
        fs.write(a, "cgroup.subtree_control", "+cpu")
    assert "ENOENT" in info.value.message
    assert not isinstance(info.value, Vanished)


def test_no_internal_process_rule(fs: CgroupFS, scratch: CgroupPath, sleeper: Spawn) -> None:
    a = scratch.child("a")
    fs.mkdir(a)
    proc = sleeper()
    fs.move_pid(a, proc.pid)
    # A cgroup with a process cannot enable controllers for children ...
    with pytest.raises(CgroupError) as info:
        fs.enable_controllers(a, ["memory"])
    assert info.value.hint == NO_INTERNAL_PROCESS_HINT
    assert str(proc.pid) in info.value.message
    # ... and one that enables controllers for children cannot take a process.
    with pytest.raises(CgroupError) as info2:
        fs.move_pid(scratch, proc.pid)
    assert info2.value.hint == NO_INTERNAL_PROCESS_HINT
    # Once the process is in a leaf, enabling works.
    leaf = a.child("leaf")
    fs.mkdir(leaf)
    fs.move_pid(leaf, proc.pid)
    assert fs.enable_controllers(a, ["memory", "pids"]) == ["memory", "pids"]
    assert fs.subtree_control(a) == {"memory", "pids"}


def test_moving_an_exited_process_is_vanished(
    fs: CgroupFS, scratch: CgroupPath, sleeper: Spawn
) -> None:
    a = scratch.child("a")
    fs.mkdir(a)
    proc = sleeper()
    proc.kill()
    proc.wait()
    with pytest.raises(Vanished):
        fs.move_pid(a, proc.pid)


def test_path_escapes_refused_against_the_real_mount(fs: CgroupFS, scratch: CgroupPath) -> None:
    before = sorted(os.listdir(fs.mount.parent))
    for bad in ("/..", "/../..", f"{scratch}/../..", "/a//b", "/.", f"{scratch}/x\n"):
        with pytest.raises(CgroupPathError):
            CgroupPath.parse(bad)
    for name in ("..", ".", "../../etc", "/tmp"):
        with pytest.raises(CgroupPathError):
            scratch.child(name)
    for fname in ("../cgroup.procs", "..", "x/y"):
        with pytest.raises(CgroupPathError):
            fs.read(scratch, fname)
        with pytest.raises(CgroupPathError):
            fs.write(scratch, fname, "1")
    forged = CgroupPath(("x",))
    object.__setattr__(forged, "parts", ("..", "..", "tmp"))
    with pytest.raises(CgroupPathError, match="outside the cgroup mount"):
        fs.mkdir(forged)
    assert sorted(os.listdir(fs.mount.parent)) == before
    assert fs.children(scratch) == []


def test_vanished_when_removed_from_outside(fs: CgroupFS, scratch: CgroupPath) -> None:
    a = scratch.child("a")
    fs.mkdir(a)
    fd = fs.open_fd(a, "memory.events", os.O_RDONLY)
    try:
        os.rmdir(fs.dir(a))  # someone else removes it
        with pytest.raises(Vanished):
            fs.read(a, "memory.events")
        with pytest.raises(Vanished):
            fs.read_optional(a, "memory.max")
        with pytest.raises(Vanished):
            fs.write(a, "memory.max", "max")
        with pytest.raises(Vanished):
            fs.children(a)
        with pytest.raises(Vanished):
            fs.kill(a)
        assert fs.wait_unpopulated(a, 0.1)
        fs.rmdir(a)  # already gone is fine
        # An fd opened before the removal now reads ENODEV: the reason fs maps ENODEV too.
        with pytest.raises(OSError) as info:
            os.pread(fd, 4096, 0)
        assert info.value.errno == errno.ENODEV
    finally:
        os.close(fd)


class _CountingFS(CgroupFS):
    def __init__(self, mount: Path) -> None:
        self.ebusy = 0
        super().__init__(mount)

    def _sys_rmdir(self, path: str) -> None:
        try:
            super()._sys_rmdir(path)
        except OSError as err:
            if err.errno == errno.EBUSY:
                self.ebusy += 1
            raise


def test_rmdir_retries_ebusy_while_a_process_exits(
    cgroup2_mount: Path, scratch: CgroupPath
) -> None:
    fs = _CountingFS(cgroup2_mount)
    a = scratch.child("a")
    fs.mkdir(a)
    # A process with a large address space takes a while to exit after SIGKILL; the cgroup
    # stays populated (rmdir -> EBUSY) until the exit is complete.
    hog = subprocess.Popen(
        [sys.executable, "-S", "-c", HOLD_96M],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        fs.move_pid(a, hog.pid)
        assert hog.stdout is not None
        assert hog.stdout.readline() == b"r\n"
        fs.kill(a)
        fs.rmdir(a)
        assert not fs.exists(a)
        assert fs.ebusy >= 1, "the first rmdir should have met a still-exiting process"
    finally:
        hog.kill()
        hog.wait(timeout=30)


def test_rmdir_gives_up_naming_the_pid(fs: CgroupFS, scratch: CgroupPath, sleeper: Spawn) -> None:
    fs.rmdir_timeout = 0.3
    a = scratch.child("a")
    fs.mkdir(a)
    proc = sleeper()
    fs.move_pid(a, proc.pid)
    started = time.monotonic()
    with pytest.raises(CgroupError, match=f"pids still inside: {proc.pid}"):
        fs.rmdir(a)
    assert 0.3 <= time.monotonic() - started < 5


def test_kill_takes_the_whole_subtree(fs: CgroupFS, scratch: CgroupPath, sleeper: Spawn) -> None:
    a = scratch.child("a")
    b = a.child("b")
    fs.mkdir(a)
    fs.mkdir(b)
    procs = [sleeper(), sleeper()]
    fs.move_pid(a, procs[0].pid)
    fs.move_pid(b, procs[1].pid)
    fs.kill(a)
    assert fs.wait_unpopulated(a, 10)
    assert [p.wait(timeout=10) for p in procs] == [-9, -9]
    assert fs.procs_recursive(a) == []


class _NoCgroupKillFS(CgroupFS):
    """As on kernels before 5.14: no cgroup.kill, so kill() falls back to pidfd SIGKILLs."""

    def has_file(self, p: CgroupPath, name: str) -> bool:
        return name != "cgroup.kill" and super().has_file(p, name)


def test_kill_fallback_without_cgroup_kill(
    cgroup2_mount: Path, scratch: CgroupPath, sleeper: Spawn
) -> None:
    fs = _NoCgroupKillFS(cgroup2_mount)
    a = scratch.child("a")
    b = a.child("b")
    fs.mkdir(a)
    fs.mkdir(b)
    procs = [sleeper(), sleeper(), sleeper()]
    for p, cg in zip(procs, (a, b, b), strict=True):
        fs.move_pid(cg, p.pid)
    fs.kill(a)
    assert [p.wait(timeout=10) for p in procs] == [-9, -9, -9]
    assert fs.wait_unpopulated(a, 10)


def test_freeze_and_thaw(fs: CgroupFS, scratch: CgroupPath, sleeper: Spawn) -> None:
    a = scratch.child("a")
    fs.mkdir(a)
    fs.move_pid(a, sleeper().pid)
    fs.freeze(a, True)
    deadline = time.monotonic() + 10
    while fs.read_flat(a, "cgroup.events")["frozen"] != 1:
        assert time.monotonic() < deadline, "cgroup never reported frozen"
        time.sleep(0.01)
    fs.freeze(a, False)
    deadline = time.monotonic() + 10
    while fs.read_flat(a, "cgroup.events")["frozen"] != 0:
        assert time.monotonic() < deadline, "cgroup never thawed"
        time.sleep(0.01)


def test_real_root_detection(fs: CgroupFS, scratch: CgroupPath) -> None:
    # The guest mounts the real root (no cgroup namespace): it lacks cgroup.type.
    assert fs.is_real_root(CgroupPath.ROOT)
    assert not fs.is_real_root(scratch)
    assert fs.populated(CgroupPath.ROOT)
