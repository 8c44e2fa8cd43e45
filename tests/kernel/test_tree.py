"""tree.build / adopt / teardown against a real cgroup2 mount (run in the guest)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from oomguard.cgroup.spec import SUPERVISOR_LEAF, Limits, SliceSpec, TreeSpec
from oomguard.cgroup.tree import build, teardown
from oomguard.errors import CgroupError, Vanished

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable

    from oomguard.cgroup.fs import CgroupFS
    from oomguard.cgroup.path import CgroupPath

    Spawn = Callable[[], subprocess.Popen[bytes]]

pytestmark = pytest.mark.kernel

M = 1 << 20


def three_level(root: str | None, *, backup_max: int = 64 * M) -> TreeSpec:
    """root -> sidecars -> batch -> backup, plus db and exporter."""
    return TreeSpec(
        root=root,
        reserve=8 * M,
        memory_max=512 * M,
        slices=(
            SliceSpec("db", ("db",), "service", Limits(min=32 * M, low=64 * M, max=256 * M)),
            SliceSpec("sidecars", ("sidecars",), "slice", Limits(high=160 * M, max=192 * M)),
            SliceSpec("batch", ("sidecars", "batch"), "slice", Limits(max=128 * M)),
            SliceSpec(
                "backup",
                ("sidecars", "batch", "backup"),
                "service",
                Limits(high=48 * M, max=backup_max, oom_group=True),
            ),
            SliceSpec("exporter", ("sidecars", "exporter"), "service", Limits(max=16 * M)),
        ),
    )


def names_under(fs: CgroupFS, p: CgroupPath) -> list[str]:
    return ["/".join(c.relative_to(p)) for c in fs.walk(p) if c != p]


def test_three_level_tree_limits_read_back(
    fs: CgroupFS, scratch: CgroupPath, sleeper: Spawn
) -> None:
    sup = sleeper()
    built = build(fs, three_level(f"{scratch}/oomguard"), sup.pid, scratch)
    root = scratch.child("oomguard")
    assert built.root == root
    assert built.leaf == root.child(SUPERVISOR_LEAF)
    assert built.adopted is False
    backup = root.join("sidecars", "batch", "backup")
    assert built.paths["backup"] == backup
    assert fs.procs(built.leaf) == [sup.pid]

    assert fs.read_limit(root, "memory.max") == 512 * M
    assert fs.read_limit(root, "memory.min") == 8 * M + 32 * M
    assert fs.read_limit(built.leaf, "memory.min") == 8 * M
    assert fs.read_limit(built.leaf, "memory.max") is None
    db = built.paths["db"]
    assert (fs.read_limit(db, "memory.min"), fs.read_limit(db, "memory.low")) == (32 * M, 64 * M)
    assert fs.read_limit(db, "memory.max") == 256 * M
    assert fs.read_limit(db, "memory.high") is None
    assert fs.read_limit(built.paths["sidecars"], "memory.high") == 160 * M
    assert fs.read_limit(built.paths["batch"], "memory.max") == 128 * M
    assert fs.read_limit(backup, "memory.high") == 48 * M
    assert fs.read_limit(backup, "memory.max") == 64 * M
    assert fs.read_int(backup, "memory.oom.group") == 1
    assert fs.read_int(built.paths["exporter"], "memory.oom.group") == 0
    # Controllers reach the deepest slice; leaves (services, supervisor) enable nothing.
    assert {"memory", "pids"} <= fs.controllers(backup)
    for inner in (root, built.paths["sidecars"], built.paths["batch"]):
        assert fs.subtree_control(inner) >= {"memory", "pids"}
    for leaf in (built.leaf, db, backup, built.paths["exporter"]):
        assert fs.subtree_control(leaf) == frozenset()


def test_supervisor_leaves_its_cgroup_before_controllers_are_enabled(
    fs: CgroupFS, scratch: CgroupPath, sleeper: Spawn
) -> None:
    # oomguard started in scratch/home (no [oomguard] cgroup set): the tree goes to
    # scratch/home/oomguard, and home can only enable controllers once oomguard has left it.
    home = scratch.child("home")
    fs.mkdir(home)
    sup = sleeper()
    fs.move_pid(home, sup.pid)
    built = build(fs, three_level(None), sup.pid, home)
    assert built.root == home.child("oomguard")
    assert fs.procs(home) == []
    assert fs.procs(built.leaf) == [sup.pid]
    assert fs.subtree_control(home) >= {"memory", "pids"}
    assert fs.read_limit(built.paths["backup"], "memory.max") == 64 * M


def test_parent_with_another_process_is_refused(
    fs: CgroupFS, scratch: CgroupPath, sleeper: Spawn
) -> None:
    home = scratch.child("home")
    fs.mkdir(home)
    sup, other = sleeper(), sleeper()
    fs.move_pid(home, sup.pid)
    fs.move_pid(home, other.pid)
    with pytest.raises(CgroupError) as info:
        build(fs, three_level(None), sup.pid, home)
    assert str(other.pid) in info.value.message
    assert str(home) in info.value.message
    assert info.value.hint is not None
    assert "Delegate=yes" in info.value.hint
    assert fs.subtree_control(home) == frozenset()
    assert fs.procs(home) == [other.pid]


def test_teardown_keep_leaf_then_everything(
    fs: CgroupFS, scratch: CgroupPath, sleeper: Spawn
) -> None:
    sup = sleeper()
    built = build(fs, three_level(f"{scratch}/oomguard"), sup.pid, scratch)
    services = {name: sleeper() for name in ("db", "backup", "exporter")}
    for name, proc in services.items():
        fs.move_pid(built.paths[name], proc.pid)

    messages = teardown(fs, built, keep_leaf=True)
    assert len(messages) == 2  # db, sidecars (backup and exporter are below sidecars)
    assert [p.wait(timeout=10) for p in services.values()] == [-9, -9, -9]
    assert names_under(fs, built.root) == [SUPERVISOR_LEAF]
    assert fs.procs(built.leaf) == [sup.pid]

    parking = scratch.child("parking")
    fs.mkdir(parking)
    fs.move_pid(parking, sup.pid)  # the caller empties the leaf before a full teardown
    teardown(fs, built.root, keep_leaf=False)
    assert fs.children(scratch) == [parking]
    assert sup.poll() is None  # the supervisor was never killed


def test_adopt_rewrites_limits_and_kills_leftovers(
    fs: CgroupFS, scratch: CgroupPath, sleeper: Spawn
) -> None:
    sup = sleeper()
    first = build(fs, three_level(f"{scratch}/oomguard"), sup.pid, scratch)
    # The earlier run "crashed": its backup and exporter processes are orphans now.
    orphan, orphan2 = sleeper(), sleeper()
    fs.move_pid(first.paths["backup"], orphan.pid)
    fs.move_pid(first.paths["exporter"], orphan2.pid)

    changed = TreeSpec(
        root=f"{scratch}/oomguard",
        reserve=4 * M,
        memory_max=384 * M,
        slices=(
            SliceSpec("db", ("db",), "service", Limits(max=200 * M)),
            SliceSpec("sidecars", ("sidecars",), "slice", Limits(max=96 * M)),
            SliceSpec("exporter", ("sidecars", "exporter"), "service", Limits(max=8 * M)),
        ),
    )
    again = build(fs, changed, sup.pid, scratch)
    assert again.adopted is True
    assert orphan.wait(timeout=10) == -9
    assert orphan2.wait(timeout=10) == -9
    assert sup.poll() is None
    warnings = "\n".join(again.warnings)
    assert str(orphan.pid) in warnings
    assert str(orphan2.pid) in warnings
    assert "batch" in warnings  # removed: no longer in the config
    assert names_under(fs, again.root) == [
        "db",
        "sidecars",
        "sidecars/exporter",
        SUPERVISOR_LEAF,
    ]
    assert fs.read_limit(again.root, "memory.max") == 384 * M
    assert fs.read_limit(again.leaf, "memory.min") == 4 * M
    assert fs.read_limit(again.paths["db"], "memory.max") == 200 * M
    assert fs.read_limit(again.paths["db"], "memory.min") == 0
    assert fs.read_limit(again.paths["db"], "memory.low") == 0
    assert fs.read_limit(again.paths["sidecars"], "memory.high") is None
    assert fs.read_limit(again.paths["exporter"], "memory.max") == 8 * M
    assert fs.procs(again.leaf) == [sup.pid]


def test_adopt_refuses_a_tree_another_supervisor_runs(
    fs: CgroupFS, scratch: CgroupPath, sleeper: Spawn
) -> None:
    running = sleeper()
    built = build(fs, three_level(f"{scratch}/oomguard"), running.pid, scratch)
    service = sleeper()
    fs.move_pid(built.paths["db"], service.pid)
    newcomer = sleeper()
    with pytest.raises(CgroupError, match="in use"):
        build(fs, three_level(f"{scratch}/oomguard"), newcomer.pid, scratch)
    assert service.poll() is None
    assert fs.procs(built.paths["db"]) == [service.pid]


def test_slice_removed_from_outside(fs: CgroupFS, scratch: CgroupPath, sleeper: Spawn) -> None:
    built = build(fs, three_level(f"{scratch}/oomguard"), None, scratch)
    exporter = built.paths["exporter"]
    os.rmdir(fs.dir(exporter))
    with pytest.raises(Vanished):
        fs.read_flat(exporter, "memory.events.local")
    with pytest.raises(Vanished):
        fs.move_pid(exporter, sleeper().pid)
    teardown(fs, built, keep_leaf=False)
    assert fs.children(scratch) == []
