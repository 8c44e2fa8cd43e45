from __future__ import annotations

import errno
import os
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from oomguard.cgroup.path import CgroupPath
from oomguard.cgroup.spec import Limits, SliceSpec, TreeSpec
from oomguard.cgroup.tree import (
    MARK_PREFIX,
    MARK_TRUSTED,
    MARK_USER,
    BuiltTree,
    build,
    recreate,
    resolve_root,
    teardown,
)
from oomguard.errors import CgroupError, ForeignCgroup
from tests.cgroup.fakefs import FakeCgroupFS

if TYPE_CHECKING:
    from pathlib import Path

P = CgroupPath.parse
ROOT = CgroupPath.ROOT
M = 1 << 20
SUPERVISOR_PID = 100


def spec(root: str | None = "/oomguard", *, swap_max: int | None = None) -> TreeSpec:
    return TreeSpec(
        root=root,
        reserve=16 * M,
        memory_max=1024 * M,
        slices=(
            SliceSpec("db", ("db",), "service", Limits(min=256 * M, low=512 * M, max=768 * M)),
            SliceSpec("sidecars", ("sidecars",), "slice", Limits(high=200 * M, max=256 * M)),
            SliceSpec(
                "backup",
                ("sidecars", "backup"),
                "service",
                Limits(max=128 * M, swap_max=swap_max, oom_group=True),
            ),
            SliceSpec("exporter", ("sidecars", "exporter"), "service", Limits(max=32 * M)),
        ),
    )


@pytest.fixture
def fake(tmp_path: Path) -> FakeCgroupFS:
    fs = FakeCgroupFS(tmp_path / "cg")
    fs.add_proc(ROOT, 1)  # init: the real root may hold processes
    fs.add_proc(ROOT, SUPERVISOR_PID)
    return fs


def index(ops: list[tuple[str, ...]], *op: str) -> int:
    return ops.index(tuple(op))


# ---------------------------------------------------------------------------- build


def test_build_creates_tree_with_limits(fake: FakeCgroupFS) -> None:
    built = build(fake, spec(), SUPERVISOR_PID, ROOT)
    assert built.root == P("/oomguard")
    assert built.leaf == P("/oomguard/supervisor")
    assert built.paths == {
        "db": P("/oomguard/db"),
        "sidecars": P("/oomguard/sidecars"),
        "backup": P("/oomguard/sidecars/backup"),
        "exporter": P("/oomguard/sidecars/exporter"),
    }
    assert built.services == {"db", "backup", "exporter"}
    assert built.adopted is False
    assert built.warnings == ()
    assert fake.tree() == [
        "/oomguard",
        "/oomguard/db",
        "/oomguard/sidecars",
        "/oomguard/sidecars/backup",
        "/oomguard/sidecars/exporter",
        "/oomguard/supervisor",
    ]
    assert fake.procs(built.leaf) == [SUPERVISOR_PID]
    # The whole tree's cap, and protection the root claims for its children (reserve + db).
    assert fake.value("/oomguard", "memory.max") == str(1024 * M)
    assert fake.value("/oomguard", "memory.min") == str(16 * M + 256 * M)
    assert fake.value("/oomguard", "memory.low") == str(512 * M)
    assert fake.value("/oomguard/supervisor", "memory.min") == str(16 * M)
    assert fake.value("/oomguard/supervisor", "memory.max") == "max"
    assert fake.value("/oomguard/db", "memory.min") == str(256 * M)
    assert fake.value("/oomguard/db", "memory.low") == str(512 * M)
    assert fake.value("/oomguard/db", "memory.max") == str(768 * M)
    assert fake.value("/oomguard/db", "memory.high") == "max"
    assert fake.value("/oomguard/sidecars", "memory.high") == str(200 * M)
    assert fake.value("/oomguard/sidecars/backup", "memory.max") == str(128 * M)
    assert fake.value("/oomguard/sidecars/backup", "memory.oom.group") == "1"
    assert fake.value("/oomguard/sidecars/exporter", "memory.oom.group") == "0"
    assert fake.value("/oomguard/sidecars/backup", "memory.swap.max") == "max"


def test_controllers_enabled_top_down_only_where_needed(fake: FakeCgroupFS) -> None:
    build(fake, spec(), SUPERVISOR_PID, ROOT)
    enabled = [op[1] for op in fake.writes("cgroup.subtree_control")]
    assert enabled == ["/", "/oomguard", "/oomguard/sidecars"]
    assert fake.subtree_control(P("/oomguard/sidecars")) == {"memory", "pids"}
    # Service slices and the leaf stay leaves: they must be able to take processes.
    for leafish in ("/oomguard/db", "/oomguard/supervisor", "/oomguard/sidecars/backup"):
        assert fake.subtree_control(P(leafish)) == frozenset()


def test_supervisor_moves_into_leaf_before_any_controller_is_enabled(fake: FakeCgroupFS) -> None:
    build(fake, spec(), SUPERVISOR_PID, ROOT)
    ops = fake.ops
    move = index(ops, "write", "/oomguard/supervisor", "cgroup.procs", str(SUPERVISOR_PID))
    first_enable = min(i for i, op in enumerate(ops) if op[2:3] == ("cgroup.subtree_control",))
    assert index(ops, "mkdir", "/oomguard") < index(ops, "mkdir", "/oomguard/supervisor") < move
    assert move < first_enable


def test_slices_created_parents_first_and_limits_in_order(fake: FakeCgroupFS) -> None:
    build(fake, spec(), SUPERVISOR_PID, ROOT)
    mkdirs = [op[1] for op in fake.ops if op[0] == "mkdir"]
    assert mkdirs == [
        "/oomguard",
        "/oomguard/supervisor",
        "/oomguard/db",
        "/oomguard/sidecars",
        "/oomguard/sidecars/backup",
        "/oomguard/sidecars/exporter",
    ]
    files = [op[2] for op in fake.writes() if op[1] == "/oomguard/sidecars/backup"]
    assert files == [
        "memory.min",
        "memory.low",
        "memory.high",
        "memory.max",
        "memory.swap.max",
        "memory.oom.group",
    ]
    # The sidecars budget enables controllers before its children are created.
    ops = fake.ops
    assert index(ops, "write", "/oomguard/sidecars", "cgroup.subtree_control", "+memory +pids") < (
        index(ops, "mkdir", "/oomguard/sidecars/backup")
    )


def test_build_without_move_pid(fake: FakeCgroupFS) -> None:
    built = build(fake, spec(), None, ROOT)
    assert fake.procs(built.leaf) == []
    assert fake.writes("cgroup.procs") == []


def test_default_root_under_own_cgroup(fake: FakeCgroupFS) -> None:
    fake.write(ROOT, "cgroup.subtree_control", "+memory +pids")
    fake.mkdir(P("/svc"))
    fake.add_proc("/svc", SUPERVISOR_PID)
    built = build(fake, spec(root=None), SUPERVISOR_PID, P("/svc"))
    assert built.root == P("/svc/oomguard")
    assert fake.procs(P("/svc")) == []
    assert fake.subtree_control(P("/svc")) == {"memory", "pids"}
    assert fake.procs(P("/svc/oomguard/supervisor")) == [SUPERVISOR_PID]


def test_parent_with_other_processes_is_refused(fake: FakeCgroupFS) -> None:
    fake.write(ROOT, "cgroup.subtree_control", "+memory +pids")
    fake.mkdir(P("/svc"))
    fake.add_proc("/svc", SUPERVISOR_PID)
    fake.add_proc("/svc", 200)
    fake.add_proc("/svc", 201)
    with pytest.raises(CgroupError) as info:
        build(fake, spec(root=None), SUPERVISOR_PID, P("/svc"))
    assert "/svc" in info.value.message
    assert "200 201" in info.value.message
    assert info.value.hint is not None
    assert "systemd-run --scope -p Delegate=yes" in info.value.hint
    assert "[oomguard] cgroup" in info.value.hint
    assert fake.writes("cgroup.subtree_control")[-1][1] == "/"  # nothing enabled in /svc


def test_namespace_root_parent_is_not_exempt(tmp_path: Path) -> None:
    # In a container the mount root is an ordinary cgroup: the rule applies to it.
    fake = FakeCgroupFS(tmp_path / "cg", real_root=False)
    fake.add_proc(ROOT, 1)
    fake.add_proc(ROOT, SUPERVISOR_PID)
    with pytest.raises(CgroupError, match="still has processes 1"):
        build(fake, spec(), SUPERVISOR_PID, ROOT)


def test_unavailable_controller(tmp_path: Path) -> None:
    fake = FakeCgroupFS(tmp_path / "cg", controllers=("cpu", "io", "pids"))
    with pytest.raises(CgroupError) as info:
        build(fake, spec(), None, ROOT)
    assert "memory" in info.value.message
    assert info.value.hint is not None
    assert "delegated" in info.value.hint


def test_missing_swap_accounting_is_a_warning_only_if_wanted(tmp_path: Path) -> None:
    fake = FakeCgroupFS(tmp_path / "a", swap=False)
    built = build(fake, spec(), None, ROOT)
    assert built.warnings == ()
    assert fake.writes("memory.swap.max") == []
    fake2 = FakeCgroupFS(tmp_path / "b", swap=False)
    built2 = build(fake2, spec(swap_max=64 * M), None, ROOT)
    assert len(built2.warnings) == 1
    assert "memory.swap.max" in built2.warnings[0]
    assert "/oomguard/sidecars/backup" in built2.warnings[0]


def test_swap_max_written_when_present(fake: FakeCgroupFS) -> None:
    build(fake, spec(swap_max=64 * M), None, ROOT)
    assert fake.value("/oomguard/sidecars/backup", "memory.swap.max") == str(64 * M)


@pytest.mark.parametrize(
    ("slices", "match"),
    [
        ((SliceSpec("supervisor", ("supervisor",), "service"),), "reserved"),
        ((SliceSpec("x", ("a", "x"), "service"),), "parent slice a is not defined"),
        (
            (SliceSpec("x", ("x",), "service"), SliceSpec("x", ("y",), "service")),
            "defined twice",
        ),
        ((SliceSpec("x", ("..",), "service"),), "escape"),
        ((SliceSpec("x", (), "service"),), "empty path"),
    ],
)
def test_bad_specs_refused_before_touching_anything(
    fake: FakeCgroupFS, slices: tuple[SliceSpec, ...], match: str
) -> None:
    bad = TreeSpec(root="/oomguard", reserve=0, memory_max=None, slices=slices)
    with pytest.raises(CgroupError, match=match):
        build(fake, bad, None, ROOT)
    assert fake.ops == []


def test_root_cannot_be_the_mount_root(fake: FakeCgroupFS) -> None:
    with pytest.raises(CgroupError, match="mount root"):
        build(fake, spec(root="/"), None, ROOT)


def test_root_parent_must_exist(fake: FakeCgroupFS) -> None:
    with pytest.raises(CgroupError, match="parent cgroup /missing does not exist"):
        build(fake, spec(root="/missing/oomguard"), None, ROOT)
    assert fake.ops == []


def test_resolve_root() -> None:
    assert resolve_root(spec("/x/y"), P("/a")) == P("/x/y")
    assert resolve_root(spec(None), P("/a")) == P("/a/oomguard")
    assert resolve_root(spec(None), ROOT) == P("/oomguard")
    # Restarted from inside its own leaf: reuse that tree rather than nest a new one in it.
    assert resolve_root(spec(None), P("/a/oomguard/supervisor")) == P("/a/oomguard")
    assert resolve_root(spec(None), P("/a/other/supervisor")) == P("/a/other/supervisor/oomguard")


def test_build_is_idempotent(fake: FakeCgroupFS) -> None:
    build(fake, spec(), SUPERVISOR_PID, ROOT)
    before = {(p, f): fake.value(p, f) for p in fake.tree() for f in ("memory.max", "memory.min")}
    again = build(fake, spec(), SUPERVISOR_PID, ROOT)
    assert again.adopted is True
    assert again.warnings == ()
    after = {(p, f): fake.value(p, f) for p in fake.tree() for f in ("memory.max", "memory.min")}
    assert before == after


# ---------------------------------------------------------------------------- adopt


def test_adopt_rewrites_limits_kills_orphans_removes_stale(fake: FakeCgroupFS) -> None:
    build(fake, spec(), SUPERVISOR_PID, ROOT)
    # The earlier run crashed: its services live on as orphans; someone left a subtree.
    fake.add_proc("/oomguard/sidecars/backup", 300)
    fake.add_proc("/oomguard/db", 301)
    fake.mkdir(P("/oomguard/old"))
    fake.mkdir(P("/oomguard/old/deeper"))
    fake.write(P("/oomguard/db"), "memory.max", "12345")
    fake.ops.clear()

    new = TreeSpec(
        root="/oomguard",
        reserve=32 * M,
        memory_max=2048 * M,
        slices=(
            SliceSpec("db", ("db",), "service", Limits(max=900 * M)),
            SliceSpec("sidecars", ("sidecars",), "slice"),
            SliceSpec("backup", ("sidecars", "backup"), "service", Limits(max=64 * M)),
        ),
    )
    built = build(fake, new, SUPERVISOR_PID, ROOT)
    assert built.adopted is True
    assert fake.all_pids() == {1, SUPERVISOR_PID}
    assert sorted(fake.signals) == [(300, 9), (301, 9)]
    joined = "\n".join(built.warnings)
    assert "300" in joined
    assert "301" in joined
    assert "/oomguard/old" in joined
    assert "/oomguard/sidecars/exporter" in joined
    assert fake.tree() == [
        "/oomguard",
        "/oomguard/db",
        "/oomguard/sidecars",
        "/oomguard/sidecars/backup",
        "/oomguard/supervisor",
    ]
    rmdirs = [op[1] for op in fake.ops if op[0] == "rmdir"]
    assert rmdirs.index("/oomguard/old/deeper") < rmdirs.index("/oomguard/old")
    # Every limit rewritten, including ones the new spec leaves at the default.
    assert fake.value("/oomguard/db", "memory.max") == str(900 * M)
    assert fake.value("/oomguard/db", "memory.min") == "0"
    assert fake.value("/oomguard/db", "memory.low") == "0"
    assert fake.value("/oomguard/sidecars", "memory.max") == "max"
    assert fake.value("/oomguard/sidecars/backup", "memory.oom.group") == "0"
    assert fake.value("/oomguard", "memory.max") == str(2048 * M)
    assert fake.value("/oomguard/supervisor", "memory.min") == str(32 * M)
    # Orphans die before stale cgroups are removed and before limits are rewritten.
    kill = index(fake.ops, "write", "/oomguard/db", "cgroup.kill", "1")
    assert kill < index(fake.ops, "rmdir", "/oomguard/old/deeper")
    assert kill < index(fake.ops, "write", "/oomguard/db", "memory.max", str(900 * M))


def test_adopt_waits_for_slow_exits(tmp_path: Path) -> None:
    fake = FakeCgroupFS(tmp_path / "cg", linger=3)
    build(fake, spec(), None, ROOT)
    fake.add_proc("/oomguard/sidecars/exporter", 400)
    small = TreeSpec(root="/oomguard", reserve=0, memory_max=None, slices=())
    build(fake, small, None, ROOT)
    assert fake.tree() == ["/oomguard", "/oomguard/supervisor"]
    assert len(fake.sleeps) >= 3


def test_adopt_refuses_a_tree_in_use(fake: FakeCgroupFS) -> None:
    build(fake, spec(), SUPERVISOR_PID, ROOT)
    fake.add_proc(ROOT, 555)  # a new oomguard, while the old one (100) still runs the tree
    fake.add_proc("/oomguard/db", 301)
    with pytest.raises(CgroupError) as info:
        build(fake, spec(), 555, ROOT)
    assert "in use" in info.value.message
    assert str(SUPERVISOR_PID) in info.value.message
    assert fake.procs(P("/oomguard/db")) == [301]  # the other instance's service survived


def test_adopt_turns_former_inner_slice_into_service(fake: FakeCgroupFS) -> None:
    build(fake, spec(), SUPERVISOR_PID, ROOT)
    flat = TreeSpec(
        root="/oomguard",
        reserve=0,
        memory_max=None,
        slices=(SliceSpec("sidecars", ("sidecars",), "service"),),
    )
    build(fake, flat, SUPERVISOR_PID, ROOT)
    assert fake.subtree_control(P("/oomguard/sidecars")) == frozenset()
    fake.add_proc(ROOT, 600)
    fake.move_pid(P("/oomguard/sidecars"), 600)  # it can take processes again
    assert fake.procs(P("/oomguard/sidecars")) == [600]


def test_adopt_clears_a_leaf_that_became_inner(fake: FakeCgroupFS) -> None:
    build(fake, spec(), None, ROOT)
    fake.write(P("/oomguard/supervisor"), "cgroup.subtree_control", "+memory")
    fake.mkdir(P("/oomguard/supervisor/junk"))
    build(fake, spec(), SUPERVISOR_PID, ROOT)
    assert fake.children(P("/oomguard/supervisor")) == []
    assert fake.procs(P("/oomguard/supervisor")) == [SUPERVISOR_PID]


# ------------------------------------------------------------------------- teardown


def _running(fake: FakeCgroupFS) -> BuiltTree:
    built = build(fake, spec(), SUPERVISOR_PID, ROOT)
    fake.add_proc("/oomguard/db", 700)
    fake.add_proc("/oomguard/sidecars/backup", 701)
    fake.ops.clear()
    return built


def test_teardown_keep_leaf(fake: FakeCgroupFS) -> None:
    built = _running(fake)
    messages = teardown(fake, built, keep_leaf=True)
    assert fake.tree() == ["/oomguard", "/oomguard/supervisor"]
    assert fake.all_pids() == {1, SUPERVISOR_PID}
    assert len(messages) == 2
    rmdirs = [op[1] for op in fake.ops if op[0] == "rmdir"]
    assert rmdirs.index("/oomguard/sidecars/backup") < rmdirs.index("/oomguard/sidecars")
    assert "/oomguard/supervisor" not in rmdirs
    # Kills come before any removal.
    last_kill = max(i for i, op in enumerate(fake.ops) if op[2:3] == ("cgroup.kill",))
    first_rmdir = min(i for i, op in enumerate(fake.ops) if op[0] == "rmdir")
    assert last_kill < first_rmdir


def test_teardown_everything(fake: FakeCgroupFS) -> None:
    _running(fake)
    fake.move_pid(ROOT, SUPERVISOR_PID)  # the caller empties the leaf first
    teardown(fake, P("/oomguard"), keep_leaf=False)
    assert fake.tree() == []
    rmdirs = [op[1] for op in fake.ops if op[0] == "rmdir"]
    assert rmdirs[-1] == "/oomguard"


def test_teardown_of_missing_tree_is_fine(fake: FakeCgroupFS) -> None:
    assert teardown(fake, P("/oomguard"), keep_leaf=False) == []


def test_teardown_waits_for_slow_exits(tmp_path: Path) -> None:
    fake = FakeCgroupFS(tmp_path / "cg", linger=5)
    build(fake, spec(), None, ROOT)
    fake.add_proc("/oomguard/db", 800)
    teardown(fake, P("/oomguard"), keep_leaf=True)
    assert fake.tree() == ["/oomguard", "/oomguard/supervisor"]
    assert 0 < sum(fake.sleeps) < 1.0


def test_teardown_continues_past_a_failure_and_reports_it(fake: FakeCgroupFS) -> None:
    built = _running(fake)
    fake.fail("rmdir", "/oomguard/db", None, errno.EACCES)
    with pytest.raises(CgroupError) as info:
        teardown(fake, built, keep_leaf=True)
    assert "/oomguard" in info.value.message
    assert info.value.hint is not None
    assert "Delegate=yes" in info.value.hint
    assert fake.tree() == ["/oomguard", "/oomguard/db", "/oomguard/supervisor"]


def test_teardown_with_nonempty_leaf_fails_loudly(fake: FakeCgroupFS) -> None:
    built = _running(fake)
    with pytest.raises(CgroupError, match=str(SUPERVISOR_PID)):
        teardown(fake, built, keep_leaf=False)
    assert fake.procs(built.leaf) == [SUPERVISOR_PID]  # teardown never kills the leaf


# ------------------------------------------------------------------------------- ownership


def _foreign_tree(fake: FakeCgroupFS) -> None:
    """/system.slice with two services, made by someone else (no oomguard marker)."""
    for p in ("/system.slice", "/system.slice/postgresql.service", "/system.slice/sshd.service"):
        fake.mkdir(P(p))
    fake.add_proc("/system.slice/postgresql.service", 300)
    fake.add_proc("/system.slice/sshd.service", 301)


def test_foreign_cgroup_is_refused_untouched(fake: FakeCgroupFS) -> None:
    _foreign_tree(fake)
    before = (fake.tree(), fake.all_pids())
    fake.ops.clear()
    with pytest.raises(ForeignCgroup) as info:
        build(fake, spec("/system.slice"), SUPERVISOR_PID, ROOT)
    err = info.value
    assert err.exit_code == 2
    assert "/system.slice" in err.message
    assert "300" in err.message and "301" in err.message
    assert "/system.slice/sshd.service" in err.message
    assert err.hint is not None and "[oomguard] cgroup" in err.hint
    assert fake.signals == []
    assert fake.ops == []  # not a write, mkdir, rmdir or xattr
    assert (fake.tree(), fake.all_pids()) == before


def test_foreign_cgroup_with_children_but_no_processes_is_refused(fake: FakeCgroupFS) -> None:
    fake.mkdir(P("/theirs"))
    fake.mkdir(P("/theirs/config"))
    with pytest.raises(ForeignCgroup, match="child cgroup"):
        build(fake, spec("/theirs"), SUPERVISOR_PID, ROOT)
    assert fake.tree() == ["/theirs", "/theirs/config"]


def test_foreign_teardown_by_path_is_refused(fake: FakeCgroupFS) -> None:
    _foreign_tree(fake)
    with pytest.raises(ForeignCgroup):
        teardown(fake, P("/system.slice"), keep_leaf=False)
    assert fake.signals == []
    assert fake.all_pids() >= {300, 301}


def test_empty_unmarked_cgroup_is_claimed_and_marked(fake: FakeCgroupFS) -> None:
    fake.mkdir(P("/delegated"))
    built = build(fake, spec("/delegated"), SUPERVISOR_PID, ROOT)
    assert built.ownership == "claimed-empty"
    assert built.adopted is False
    assert fake.get_xattr(P("/delegated"), MARK_TRUSTED) is not None
    # A claimed root is emptied at teardown but left where it was found.
    fake.add_proc(ROOT, SUPERVISOR_PID)
    teardown(fake, built, keep_leaf=False)
    assert fake.tree() == ["/delegated"]


def test_created_root_is_marked_with_trusted_xattr(fake: FakeCgroupFS) -> None:
    built = build(fake, spec(), SUPERVISOR_PID, ROOT)
    assert built.ownership == "created"
    value = fake.get_xattr(built.root, MARK_TRUSTED)
    assert value is not None and value.startswith(MARK_PREFIX)
    assert fake.get_xattr(built.root, MARK_USER) is None
    again = build(fake, spec(), SUPERVISOR_PID, ROOT)
    assert again.adopted is True and again.ownership == "xattr-trusted"


def test_user_xattr_when_trusted_is_not_allowed(tmp_path: Path) -> None:
    fs = FakeCgroupFS(tmp_path / "cg", xattr_trusted=False)
    fs.add_proc(ROOT, SUPERVISOR_PID)
    built = build(fs, spec(), SUPERVISOR_PID, ROOT)
    assert fs.get_xattr(built.root, MARK_USER) is not None
    assert build(fs, spec(), SUPERVISOR_PID, ROOT).ownership == "xattr-user"


def test_user_xattr_counts_only_on_a_directory_we_own(
    fake: FakeCgroupFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    _foreign_tree(fake)
    # Forged by the directory's owner, who is not us.
    fake.set_xattr(P("/system.slice"), MARK_USER, MARK_PREFIX + b"forged")
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
    with pytest.raises(ForeignCgroup):
        build(fake, spec("/system.slice"), SUPERVISOR_PID, ROOT)
    assert fake.signals == []


class _Ledger:
    def __init__(self) -> None:
        self.ids: dict[CgroupPath, int] = {}

    def recorded(self, root: CgroupPath) -> int | None:
        return self.ids.get(root)

    def record(self, root: CgroupPath, cgroup_id: int) -> None:
        self.ids[root] = cgroup_id


def test_ledger_fallback_without_xattrs(tmp_path: Path) -> None:
    fs = FakeCgroupFS(tmp_path / "cg", xattr_trusted=False, xattr_user=False)
    fs.add_proc(ROOT, SUPERVISOR_PID)
    ledger = _Ledger()
    built = build(fs, spec(), SUPERVISOR_PID, ROOT, ledger=ledger)
    assert ledger.ids == {built.root: fs.identity(built.root)[0]}
    fs.add_proc(built.paths["db"], 400)
    again = build(fs, spec(), SUPERVISOR_PID, ROOT, ledger=ledger)
    assert again.ownership == "ledger"
    assert (400, 9) in fs.signals
    # Without the record (another state dir) the same tree is not provably ours.
    fs.add_proc(built.paths["db"], 401)
    with pytest.raises(ForeignCgroup):
        build(fs, spec(), SUPERVISOR_PID, ROOT, ledger=_Ledger())


def test_ledger_record_of_a_removed_and_recreated_cgroup_does_not_count(tmp_path: Path) -> None:
    fs = FakeCgroupFS(tmp_path / "cg", xattr_trusted=False, xattr_user=False)
    fs.add_proc(ROOT, SUPERVISOR_PID)
    ledger = _Ledger()
    build(fs, spec(), SUPERVISOR_PID, ROOT, ledger=ledger)
    ledger.ids[P("/oomguard")] = -5  # a stale id: the cgroup was made again by someone else
    fs.add_proc("/oomguard/db", 402)
    with pytest.raises(ForeignCgroup):
        build(fs, spec(), SUPERVISOR_PID, ROOT, ledger=ledger)
    assert fs.all_pids() >= {402}


def test_no_marker_possible_is_a_warning(tmp_path: Path) -> None:
    fs = FakeCgroupFS(tmp_path / "cg", xattr_trusted=False, xattr_user=False)
    fs.add_proc(ROOT, SUPERVISOR_PID)
    built = build(fs, spec(), SUPERVISOR_PID, ROOT)
    assert any("cannot mark" in w for w in built.warnings)


# ---------------------------------------------------------------------------- recreate


def test_recreate_makes_a_removed_service_slice_again_with_its_limits(
    fake: FakeCgroupFS,
) -> None:
    built = build(fake, spec(), SUPERVISOR_PID, ROOT)
    fake.add_proc(P("/oomguard/db"), 4001)
    fake.add_proc(P("/oomguard/sidecars/exporter"), 4002)
    backup = P("/oomguard/sidecars/backup")
    fake.rmdir(backup)
    fake.ops.clear()
    made, warnings = recreate(fake, spec(), built.root, backup)
    assert (made, warnings) == ([backup], [])
    assert fake.value(backup, "memory.max") == str(128 * M)
    assert fake.value(backup, "memory.oom.group") == "1"
    # Only the missing cgroup: nothing adopted, killed or removed (build would kill the
    # services it took for orphans).
    assert [op[:2] for op in fake.ops if op[0] != "write"] == [("mkdir", str(backup))]
    assert fake.signals == []
    assert fake.procs(P("/oomguard/db")) == [4001]
    assert fake.procs(P("/oomguard/sidecars/exporter")) == [4002]


def test_recreate_makes_a_removed_budget_first_and_enables_its_controllers(
    fake: FakeCgroupFS,
) -> None:
    built = build(fake, spec(), SUPERVISOR_PID, ROOT)
    sidecars, backup = P("/oomguard/sidecars"), P("/oomguard/sidecars/backup")
    for gone in (backup, P("/oomguard/sidecars/exporter"), sidecars):
        fake.rmdir(gone)
    fake.ops.clear()
    made, _ = recreate(fake, spec(), built.root, backup)
    assert made == [sidecars, backup]  # the sibling exporter only when its own turn comes
    assert not fake.exists(P("/oomguard/sidecars/exporter"))
    assert fake.value(sidecars, "memory.max") == str(256 * M)
    ops = fake.ops
    assert index(ops, "write", "/oomguard/sidecars", "cgroup.subtree_control", "+memory +pids") < (
        index(ops, "mkdir", "/oomguard/sidecars/backup")
    )
    # The children get their memory files: the budget enabled the controller first.
    assert fake.value(backup, "memory.max") == str(128 * M)


def test_recreate_with_nothing_missing_or_outside_the_spec_does_nothing(
    fake: FakeCgroupFS,
) -> None:
    built = build(fake, spec(), SUPERVISOR_PID, ROOT)
    fake.ops.clear()
    assert recreate(fake, spec(), built.root, P("/oomguard/db")) == ([], [])
    assert recreate(fake, spec(), built.root, P("/oomguard/elsewhere")) == ([], [])
    assert recreate(fake, spec(), built.root, P("/other/db")) == ([], [])
    assert fake.ops == []


def test_recreate_warns_like_build_about_a_swap_limit_it_cannot_write(tmp_path: Path) -> None:
    fake = FakeCgroupFS(tmp_path / "cg", swap=False)
    fake.add_proc(ROOT, SUPERVISOR_PID)
    built = build(fake, spec(swap_max=64 * M), SUPERVISOR_PID, ROOT)
    backup = P("/oomguard/sidecars/backup")
    fake.rmdir(backup)
    made, warnings = recreate(fake, spec(swap_max=64 * M), built.root, backup)
    assert made == [backup]
    assert len(warnings) == 1 and "memory.swap.max is absent" in warnings[0]


# ---------------------------------------------------------------- hints for other OOM killers


def _hinted() -> TreeSpec:
    base = spec()
    hints = {"db": "avoid", "sidecars": "prefer", "backup": "prefer", "exporter": "prefer"}
    return TreeSpec(
        root=base.root,
        reserve=base.reserve,
        memory_max=base.memory_max,
        slices=tuple(replace(s, oomd=hints[s.name]) for s in base.slices),  # type: ignore[arg-type]
    )


def test_oomd_xattrs_on_the_primary_the_leaf_and_the_sidecars(fake: FakeCgroupFS) -> None:
    built = build(fake, _hinted(), SUPERVISOR_PID, ROOT)
    avoid = {str(p) for p in fake.walk(built.root) if fake.get_xattr(p, "user.oomd_avoid")}
    prefer = {str(p) for p in fake.walk(built.root) if fake.get_xattr(p, "user.oomd_prefer")}
    assert avoid == {"/oomguard/db", "/oomguard/supervisor"}
    assert prefer == {
        "/oomguard/sidecars",
        "/oomguard/sidecars/backup",
        "/oomguard/sidecars/exporter",
    }
    assert fake.get_xattr(built.paths["db"], "user.oomd_avoid") == b"1"
    assert built.warnings == ()


def test_oomd_xattr_refused_is_a_warning_not_an_error(tmp_path: Path) -> None:
    fs = FakeCgroupFS(tmp_path / "cg", xattr_user=False)
    fs.add_proc(ROOT, SUPERVISOR_PID)
    built = build(fs, _hinted(), SUPERVISOR_PID, ROOT)
    assert built.paths["db"] == P("/oomguard/db")
    said = [w for w in built.warnings if "user.oomd_" in w]
    assert len(said) == 5  # the leaf, db and the three sidecar cgroups
    assert any("user.oomd_avoid on /oomguard/db" in w for w in said)


def test_config_hints_avoid_the_primary_and_prefer_what_holds_no_primary() -> None:
    from oomguard.config.model import Config

    cfg = Config.from_mapping(
        {
            "slice": {"outer": {}, "sidecars": {}},
            "service": {
                "db": {"command": "postgres", "role": "primary", "slice": "outer"},
                "near": {"command": "x", "slice": "outer"},
                "backup": {"command": "x", "slice": "sidecars"},
                "loose": {"command": "x"},
            },
        }
    )
    hints = {s.name: s.oomd for s in cfg.tree_spec().slices}
    assert hints == {
        "outer": None,  # holds the primary and a sidecar: no hint either way
        "sidecars": "prefer",
        "db": "avoid",
        "near": "prefer",
        "backup": "prefer",
        "loose": "prefer",
    }
