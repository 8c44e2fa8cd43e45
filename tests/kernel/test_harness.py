"""The real-kernel test environment itself: the cgroup2 mount, scratch cgroups, spawning into a
cgroup, a real OOM kill, clean teardown, and the probe/summary plumbing of tools/ktest.py.

If these fail, every other kernel test result is suspect; they run first (file order).
"""

from __future__ import annotations

import errno
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
Spawn = Any  # the run_in_cgroup factory: (cgroup, argv, **popen_kwargs) -> Popen


def _ktest() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_ktest_under_test", REPO / "tools" / "ktest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _flat(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


# -- pure plumbing (runs anywhere) ------------------------------------------------------------


def test_mountinfo_parsing_unescapes_and_finds_cgroup2() -> None:
    text = (
        "22 1 0:21 / /proc rw,relatime shared:5 - proc proc rw\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
        "50 22 0:40 /a\\040b /mnt/my\\040cg rw - cgroup2 none rw,nsdelegate\n"
    )
    entries = _ktest().parse_mountinfo(text)
    cg = [e for e in entries if e.fstype == "cgroup2"]
    assert [str(e.mount_point) for e in cg] == ["/sys/fs/cgroup/unified", "/mnt/my cg"]
    assert cg[1].root == "/a b"
    assert cg[0].dev == os.makedev(0, 38)
    assert "nsdelegate" in cg[1].super_options


def test_own_cgroup_is_the_v2_line() -> None:
    ktest = _ktest()
    assert ktest.parse_own_cgroup("9:name=systemd:/x\n0::/system.slice/a.scope\n") == (
        "/system.slice/a.scope"
    )
    assert ktest.parse_own_cgroup("0::/\n") == "/"
    assert ktest.parse_own_cgroup("4:memory:/\n") is None


def test_summary_line_format() -> None:
    summary = _ktest().Summary(
        passed=23, failed=0, skipped=0, mode="vm", kernel_release="6.1.0-41-cloud-amd64"
    )
    assert (
        summary.line()
        == "kernel tests: 23 passed, 0 failed, 0 skipped (vm, Linux 6.1.0-41-cloud-amd64)"
    )


# -- the real kernel ----------------------------------------------------------------------------


def test_mount_is_cgroup2_with_memory(cgroup2_mount: Path) -> None:
    entries = _ktest().parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    mine = [e for e in entries if e.mount_point == cgroup2_mount]
    assert mine, f"{cgroup2_mount} is not a mount point"
    assert mine[-1].fstype == "cgroup2"
    assert os.stat(cgroup2_mount).st_dev == mine[-1].dev
    assert "memory" in (cgroup2_mount / "cgroup.controllers").read_text().split()
    if os.environ.get("OOMGUARD_IN_VM") == "1":
        # vmrun's init enables these for the whole guest; mount options as documented.
        assert set((cgroup2_mount / "cgroup.subtree_control").read_text().split()) >= {
            "cpu", "io", "memory", "pids",
        }  # fmt: skip
        assert mine[-1].super_options >= {"nsdelegate", "memory_recursiveprot"}


def test_scratch_cgroup_is_empty_and_takes_limits(scratch_cgroup: Path) -> None:
    assert (scratch_cgroup / "cgroup.procs").read_text() == ""
    assert "populated 0" in (scratch_cgroup / "cgroup.events").read_text()
    assert set((scratch_cgroup / "cgroup.subtree_control").read_text().split()) >= {
        "memory",
        "pids",
    }
    assert (scratch_cgroup / "memory.max").read_text().strip() == "max"
    _write(scratch_cgroup / "memory.max", str(64 * MiB))
    assert int((scratch_cgroup / "memory.max").read_text()) == 64 * MiB
    child = scratch_cgroup / "child"
    child.mkdir()
    # memory is enabled for the children too, so a slice under the scratch cgroup takes limits.
    _write(child / "memory.high", str(32 * MiB))
    assert int((child / "memory.high").read_text()) == 32 * MiB
    assert (child / "pids.max").exists()


def test_run_in_cgroup_joins_before_exec(
    cgroup2_mount: Path, scratch_cgroup: Path, run_in_cgroup: Spawn
) -> None:
    leaf = scratch_cgroup / "leaf"
    leaf.mkdir()
    proc = run_in_cgroup(leaf, ["cat", "/proc/self/cgroup"], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert f"0::/{leaf.relative_to(cgroup2_mount)}" in out.splitlines()


def test_run_in_cgroup_explains_the_no_internal_process_rule(
    scratch_cgroup: Path, run_in_cgroup: Spawn
) -> None:
    # The scratch cgroup itself has controllers enabled for its children, so it cannot hold
    # processes: the kernel refuses with EBUSY, and the fixture says why.
    with pytest.raises(OSError, match="no-internal-process rule") as info:
        run_in_cgroup(scratch_cgroup, ["true"])
    assert info.value.errno == errno.EBUSY


def test_real_oom_kill_in_a_64m_cgroup(scratch_cgroup: Path, run_in_cgroup: Spawn) -> None:
    hog = scratch_cgroup / "hog"
    hog.mkdir()
    _write(hog / "memory.max", str(64 * MiB))
    if (hog / "memory.swap.max").exists():
        _write(hog / "memory.swap.max", "0")  # no escape into swap, where a host has some
    before = _flat(hog / "memory.events.local")
    assert before["oom_kill"] == 0
    # -S: no site import, a faster start in the slow guest. bytes * n touches every page.
    proc = run_in_cgroup(hog, [sys.executable, "-S", "-c", "x = b'x' * (200 << 20)"])
    assert proc.wait(timeout=120) == -signal.SIGKILL
    after = _flat(hog / "memory.events.local")
    assert after["oom_kill"] == 1
    assert after["oom"] >= 1
    # The hierarchical file of the parent counts the kill as well (ancestors are charged).
    assert _flat(scratch_cgroup / "memory.events")["oom_kill"] == 1


def test_destroy_kills_nested_processes_and_removes_the_tree(
    scratch_cgroup: Path, run_in_cgroup: Spawn, destroy_cgroup: Callable[[Path], None]
) -> None:
    top = scratch_cgroup / "doomed"
    (top / "inner").mkdir(parents=True)
    a = run_in_cgroup(top / "inner", ["sleep", "600"])
    b = run_in_cgroup(top / "inner", ["sh", "-c", "sleep 600 & wait"])
    destroy_cgroup(top)
    assert not top.exists()
    assert a.wait(timeout=30) == -signal.SIGKILL
    assert b.wait(timeout=30) == -signal.SIGKILL


def test_nobody_can_run_commands(cgroup2_mount: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users")
    out = subprocess.run(
        ["id", "-un"], user="nobody", capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "nobody"
