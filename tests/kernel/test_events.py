"""memory.events / memory.events.local / cgroup.events on a real kernel, with inotify.

These pin the kernel facts the event sources and the policy rely on:
- an OOM kill in a leaf is counted in the leaf's memory.events.local (attribution) and in every
  ancestor's hierarchical memory.events, but not in an ancestor's .local;
- a counter change raises IN_MODIFY on the file (so a watcher can wake and diff);
- memory.oom.group=1 kills the whole slice, counted as oom_group_kill;
- cgroup.events "populated" flips, with IN_MODIFY, when the last process exits.
"""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from inotify_simple import INotify, flags

from oomguard.cgroup.path import CgroupPath
from oomguard.cgroup.spec import Limits, SliceSpec, TreeSpec
from oomguard.cgroup.tree import BuiltTree, build

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from oomguard.cgroup.fs import CgroupFS

    Hog = Callable[[CgroupPath], subprocess.Popen[bytes]]

pytestmark = pytest.mark.kernel

M = 1 << 20
#: Waits for a line on stdin, then touches 200 MB: far over the 32M slice limit.
HOG = "import sys; sys.stdin.readline(); x = b'x' * (200 << 20); print('survived')"
#: Just waits for stdin (a small, well-behaved process).
IDLE = "import sys; sys.stdin.read()"


@pytest.fixture
def tree(fs: CgroupFS, cgroup2_mount: Path, scratch_cgroup: Path) -> BuiltTree:
    scratch = CgroupPath.parse("/" + str(scratch_cgroup.relative_to(cgroup2_mount)))
    spec = TreeSpec(
        root=f"{scratch}/oomguard",
        reserve=0,
        memory_max=None,
        slices=(
            SliceSpec("sidecars", ("sidecars",), "slice"),
            SliceSpec("backup", ("sidecars", "backup"), "service", Limits(max=32 * M)),
            SliceSpec(
                "batch", ("sidecars", "batch"), "service", Limits(max=32 * M, oom_group=True)
            ),
        ),
    )
    return build(fs, spec, None, scratch)


@pytest.fixture
def spawn(fs: CgroupFS) -> Iterator[Callable[[CgroupPath, str], subprocess.Popen[bytes]]]:
    """Start a python process parked on stdin, moved into the given slice before it works."""
    started: list[subprocess.Popen[bytes]] = []

    def start(cg: CgroupPath, code: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-S", "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        started.append(proc)
        fs.move_pid(cg, proc.pid)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()


def go(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.flush()


def test_leaf_oom_counted_locally_and_hierarchically(
    fs: CgroupFS, tree: BuiltTree, spawn: Callable[[CgroupPath, str], subprocess.Popen[bytes]]
) -> None:
    backup, sidecars = tree.paths["backup"], tree.paths["sidecars"]
    assert fs.read_flat(backup, "memory.events.local")["oom_kill"] == 0
    hog = spawn(backup, HOG)
    go(hog)
    out, _ = hog.communicate(timeout=120)
    assert hog.returncode == -9
    assert b"survived" not in out

    local = fs.read_flat(backup, "memory.events.local")
    assert local["oom_kill"] == 1
    assert local["oom"] >= 1  # the limit was hit here ...
    assert local["max"] >= 1  # ... after memory.max was reached
    # Hierarchical: every ancestor counts the kill; their .local files do not.
    assert fs.read_flat(sidecars, "memory.events")["oom_kill"] == 1
    assert fs.read_flat(sidecars, "memory.events.local")["oom_kill"] == 0
    assert fs.read_flat(tree.root, "memory.events")["oom_kill"] == 1
    assert fs.read_flat(tree.paths["batch"], "memory.events")["oom_kill"] == 0
    # The slice survives its OOM, empty, and can be reused.
    assert fs.wait_unpopulated(backup, 10)
    assert fs.read_limit(backup, "memory.max") == 32 * M


def test_inotify_in_modify_on_memory_events(
    fs: CgroupFS, tree: BuiltTree, spawn: Callable[[CgroupPath, str], subprocess.Popen[bytes]]
) -> None:
    backup = tree.paths["backup"]
    with INotify() as ino:
        wd = ino.add_watch(str(fs.file_path(backup, "memory.events")), flags.MODIFY)
        assert ino.read(timeout=0) == []
        hog = spawn(backup, HOG)
        go(hog)
        hog.communicate(timeout=120)
        assert hog.returncode == -9
        events = ino.read(timeout=10_000)
    assert events, "no inotify event on memory.events after an OOM kill"
    assert all(e.wd == wd for e in events)
    assert any(e.mask & flags.MODIFY for e in events)
    # Notifications coalesce and are rate-limited: the counters, not the events, are the truth.
    assert fs.read_flat(backup, "memory.events")["oom_kill"] == 1


def test_oom_group_kills_the_whole_slice(
    fs: CgroupFS, tree: BuiltTree, spawn: Callable[[CgroupPath, str], subprocess.Popen[bytes]]
) -> None:
    batch = tree.paths["batch"]
    bystander = spawn(batch, IDLE)
    hog = spawn(batch, HOG)
    go(hog)
    hog.communicate(timeout=120)
    bystander.communicate(timeout=60)
    assert (hog.returncode, bystander.returncode) == (-9, -9)
    local = fs.read_flat(batch, "memory.events.local")
    # Kernel fact (6.1): oom_kill counts each killed task, and the OOM victim twice (once as the
    # victim, once again as a member of the group), so 2 processes give 3. Count processes
    # from exits, never from oom_kill; use oom_group_kill to know the group went at once.
    assert local["oom_kill"] >= 2
    assert local.get("oom_group_kill", 1) == 1  # the key exists from 5.17
    assert fs.wait_unpopulated(batch, 10)


def test_populated_flips_with_in_modify(
    fs: CgroupFS, tree: BuiltTree, spawn: Callable[[CgroupPath, str], subprocess.Popen[bytes]]
) -> None:
    backup = tree.paths["backup"]
    proc = spawn(backup, IDLE)
    assert fs.read_flat(backup, "cgroup.events")["populated"] == 1
    with INotify() as ino:
        ino.add_watch(str(fs.file_path(backup, "cgroup.events")), flags.MODIFY)
        assert proc.stdin is not None
        proc.stdin.close()  # the process reads EOF and exits normally
        proc.wait(timeout=60)
        events = ino.read(timeout=10_000)
    assert any(e.mask & flags.MODIFY for e in events)
    assert fs.read_flat(backup, "cgroup.events")["populated"] == 0
