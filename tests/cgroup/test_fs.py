from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

import pytest

from oomguard.cgroup.fs import NO_INTERNAL_PROCESS_HINT, READONLY_HINT, CgroupFS
from oomguard.cgroup.path import CgroupPath, CgroupPathError
from oomguard.errors import CgroupError, Vanished
from tests.cgroup.fakefs import FakeCgroupFS

if TYPE_CHECKING:
    from pathlib import Path

P = CgroupPath.parse
ROOT = CgroupPath.ROOT


@pytest.fixture
def fake(tmp_path: Path) -> FakeCgroupFS:
    return FakeCgroupFS(tmp_path / "cg")


def _tree(fake: FakeCgroupFS) -> None:
    """/a (memory, pids enabled) -> /a/b, /a/c."""
    fake.write(ROOT, "cgroup.subtree_control", "+memory +pids")
    fake.mkdir(P("/a"))
    fake.write(P("/a"), "cgroup.subtree_control", "+memory +pids")
    fake.mkdir(P("/a/b"))
    fake.mkdir(P("/a/c"))


# ------------------------------------------------------------------------------ paths


def test_dir_is_under_mount(fake: FakeCgroupFS) -> None:
    assert fake.dir(ROOT) == fake.mount
    assert fake.dir(P("/a/b")) == fake.mount / "a" / "b"
    assert fake.file_path(P("/a"), "memory.events") == fake.mount / "a" / "memory.events"


def test_dir_defence_in_depth_catches_a_forged_path(fake: FakeCgroupFS) -> None:
    forged = CgroupPath(("a",))
    object.__setattr__(forged, "parts", ("..", "etc"))  # bypass validation on purpose
    with pytest.raises(CgroupPathError, match="outside the cgroup mount"):
        fake.dir(forged)


def test_dir_rejects_strings(fake: FakeCgroupFS) -> None:
    with pytest.raises(TypeError):
        fake.dir("/a")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", ".", "..", "../cgroup.procs", "a/b", "x\0"])
def test_file_names_cannot_escape(fake: FakeCgroupFS, name: str) -> None:
    with pytest.raises(CgroupPathError):
        fake.read(ROOT, name)
    with pytest.raises(CgroupPathError):
        fake.write(ROOT, name, "1")


def test_mount_is_resolved(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert CgroupFS(tmp_path / "link").mount == tmp_path / "real"


# ------------------------------------------------------------------------ read / write


def test_read_and_typed_readers(fake: FakeCgroupFS) -> None:
    _tree(fake)
    a = P("/a")
    assert fake.read(a, "memory.max") == "max\n"
    assert fake.read_limit(a, "memory.max") is None
    assert fake.read_int(a, "memory.current") == 0
    assert fake.read_flat(a, "memory.events")["oom_kill"] == 0
    assert fake.read_pressure(a).full is not None
    assert fake.controllers(a) == {"memory", "pids"}
    assert fake.subtree_control(a) == {"memory", "pids"}
    assert fake.subtree_control(P("/a/b")) == frozenset()


def test_typed_reader_names_file_on_parse_error(fake: FakeCgroupFS) -> None:
    _tree(fake)
    (fake.dir(P("/a")) / "memory.current").write_text("garbage\n")
    with pytest.raises(CgroupError, match=r"a/memory.current \(cgroup /a\)"):
        fake.read_int(P("/a"), "memory.current")


def test_write_roundtrip(fake: FakeCgroupFS) -> None:
    _tree(fake)
    fake.write(P("/a/b"), "memory.max", "33554432")
    assert fake.read_limit(P("/a/b"), "memory.max") == 33554432
    assert fake.writes("memory.max") == [("write", "/a/b", "memory.max", "33554432")]


def test_write_is_one_syscall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel parses each write() separately: the whole value must go in one call.
    (tmp_path / "cgroup.subtree_control").write_text("")
    calls: list[bytes] = []
    real_write = os.write

    def spy(fd: int, data: bytes) -> int:
        calls.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spy)
    CgroupFS(tmp_path).write(ROOT, "cgroup.subtree_control", "+memory +pids")
    assert calls == [b"+memory +pids"]
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +pids"


def test_short_write_is_an_error(fake: FakeCgroupFS, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(fake)
    monkeypatch.setattr(fake, "_sys_write", lambda path, data: 1)
    with pytest.raises(CgroupError, match="short write"):
        fake.write(P("/a"), "memory.max", "1000")


def test_read_optional(fake: FakeCgroupFS) -> None:
    fake.mkdir(P("/x"))  # no controllers enabled: memory.* absent
    assert fake.read_optional(P("/x"), "memory.max") is None
    assert fake.read_optional(P("/x"), "cgroup.procs") == ""
    with pytest.raises(Vanished):
        fake.read_optional(P("/gone"), "memory.max")


def test_read_of_removed_cgroup_is_vanished(fake: FakeCgroupFS) -> None:
    _tree(fake)
    fake.rmdir(P("/a/b"))
    with pytest.raises(Vanished, match="/a/b"):
        fake.read(P("/a/b"), "memory.events")
    with pytest.raises(Vanished):
        fake.write(P("/a/b"), "memory.max", "1")
    with pytest.raises(Vanished):
        fake.procs(P("/a/b"))
    with pytest.raises(Vanished):
        fake.children(P("/a/b"))


def test_enodev_is_vanished(fake: FakeCgroupFS) -> None:
    # An fd into a cgroup removed meanwhile returns ENODEV although the path may be reused.
    _tree(fake)
    fake.fail("read", "/a", "memory.events", errno.ENODEV)
    with pytest.raises(Vanished):
        fake.read(P("/a"), "memory.events")


def test_missing_file_write_names_controller(fake: FakeCgroupFS) -> None:
    fake.mkdir(P("/x"))
    with pytest.raises(CgroupError) as info:
        fake.write(P("/x"), "memory.max", "1")
    assert not isinstance(info.value, Vanished)
    assert "x/memory.max" in info.value.message
    assert info.value.hint is not None
    assert "'memory' controller" in info.value.hint
    assert "subtree_control" in info.value.hint


def test_read_missing_file_is_not_vanished(fake: FakeCgroupFS) -> None:
    fake.mkdir(P("/x"))
    with pytest.raises(CgroupError) as info:
        fake.read(P("/x"), "memory.events")
    assert not isinstance(info.value, Vanished)


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.EROFS])
def test_permission_errors_hint_at_delegation(fake: FakeCgroupFS, code: int) -> None:
    _tree(fake)
    fake.fail("write", "/a", "memory.max", code)
    with pytest.raises(CgroupError) as info:
        fake.write(P("/a"), "memory.max", "1")
    assert info.value.hint == READONLY_HINT
    assert "--privileged" in str(info.value)
    assert "unmask=/sys/fs/cgroup" in str(info.value)
    assert "Delegate=yes" in str(info.value)


def test_permission_error_on_mkdir(fake: FakeCgroupFS) -> None:
    fake.fail("mkdir", "/x", None, errno.EROFS)
    with pytest.raises(CgroupError) as info:
        fake.mkdir(P("/x"))
    assert info.value.hint == READONLY_HINT


def test_einval_names_file_and_value(fake: FakeCgroupFS) -> None:
    _tree(fake)
    with pytest.raises(CgroupError) as info:
        fake.write(P("/a/b"), "memory.max", "lots")
    assert "'lots'" in info.value.message
    assert "a/b/memory.max" in info.value.message


def test_ebusy_subtree_control_explains_no_internal_process(fake: FakeCgroupFS) -> None:
    fake.write(ROOT, "cgroup.subtree_control", "+memory")
    fake.mkdir(P("/a"))
    fake.add_proc("/a", 4242)
    with pytest.raises(CgroupError) as info:
        fake.write(P("/a"), "cgroup.subtree_control", "+memory")
    assert info.value.hint == NO_INTERNAL_PROCESS_HINT
    assert "4242" in info.value.message


def test_ebusy_disable_explains_children(fake: FakeCgroupFS) -> None:
    _tree(fake)
    fake.write(P("/a/b"), "cgroup.subtree_control", "+memory")
    with pytest.raises(CgroupError, match="a child cgroup still enables"):
        fake.write(P("/a"), "cgroup.subtree_control", "-memory")


def test_enoent_from_kernel_on_subtree_control(fake: FakeCgroupFS) -> None:
    fake.mkdir(P("/a"))
    with pytest.raises(CgroupError) as info:
        fake.write(P("/a"), "cgroup.subtree_control", "+memory")
    assert not isinstance(info.value, Vanished)
    assert "refused" in info.value.message
    assert info.value.hint is not None
    assert "cgroup.controllers" in info.value.hint


def test_ebusy_moving_into_inner_cgroup(fake: FakeCgroupFS) -> None:
    _tree(fake)
    fake.add_proc(ROOT, 77)
    with pytest.raises(CgroupError) as info:
        fake.move_pid(P("/a"), 77)
    assert info.value.hint == NO_INTERNAL_PROCESS_HINT


def test_move_pid(fake: FakeCgroupFS) -> None:
    _tree(fake)
    fake.add_proc(ROOT, 77)
    fake.move_pid(P("/a/b"), 77)
    assert fake.procs(P("/a/b")) == [77]
    assert fake.procs(ROOT) == []


def test_move_gone_pid_is_vanished(fake: FakeCgroupFS) -> None:
    _tree(fake)
    with pytest.raises(Vanished, match="process '999' is gone"):
        fake.move_pid(P("/a/b"), 999)


def test_move_pid_refuses_nonpositive(fake: FakeCgroupFS) -> None:
    with pytest.raises(CgroupError):
        fake.move_pid(ROOT, 0)


def test_other_errno_is_generic(fake: FakeCgroupFS) -> None:
    _tree(fake)
    fake.fail("read", "/a", "memory.stat", errno.EIO)
    with pytest.raises(CgroupError, match=r"read a/memory\.stat .* failed"):
        fake.read(P("/a"), "memory.stat")


def test_open_fd(fake: FakeCgroupFS) -> None:
    _tree(fake)
    fd = fake.open_fd(P("/a/b"), "cgroup.procs", os.O_WRONLY)
    try:
        assert os.get_inheritable(fd) is False  # O_CLOEXEC added
    finally:
        os.close(fd)
    with pytest.raises(CgroupError):
        fake.open_fd(P("/a/b"), "nope.file", os.O_RDONLY)
    fake.fail("open", "/a", "memory.pressure", errno.EACCES)
    with pytest.raises(CgroupError) as info:
        fake.open_fd(P("/a"), "memory.pressure", os.O_RDWR)
    assert info.value.hint == READONLY_HINT


# ----------------------------------------------------------------------------- layout


def test_mkdir_exist_ok_and_children_sorted(fake: FakeCgroupFS) -> None:
    for name in ("c", "a", "b"):
        fake.mkdir(P("/" + name))
    fake.mkdir(P("/a"))
    fake.mkdir(ROOT)
    assert fake.children(ROOT) == [P("/a"), P("/b"), P("/c")]
    assert [op for op in fake.ops if op[0] == "mkdir"] == [("mkdir", f"/{n}") for n in "cab"]


def test_mkdir_parent_gone_is_vanished(fake: FakeCgroupFS) -> None:
    with pytest.raises(Vanished, match="parent /nope is gone"):
        fake.mkdir(P("/nope/x"))


def test_mkdir_enospc(fake: FakeCgroupFS) -> None:
    fake.fail("mkdir", "/x", None, errno.ENOSPC)
    with pytest.raises(CgroupError, match=r"max\.descendants"):
        fake.mkdir(P("/x"))


def test_mkdir_refuses_a_plain_directory_tree(tmp_path: Path) -> None:
    # The host's /sys/fs/cgroup tmpfs: mkdir works but makes no cgroup. Must not go unnoticed.
    fs = CgroupFS(tmp_path)
    with pytest.raises(CgroupError, match="not a cgroup"):
        fs.mkdir(P("/oomguard"))


def test_mkdir_over_a_file_is_an_error(fake: FakeCgroupFS) -> None:
    with pytest.raises(CgroupError, match="not a cgroup"):
        fake.mkdir(P("/cgroup.procs"))


def test_walk_and_procs_recursive(fake: FakeCgroupFS) -> None:
    _tree(fake)
    fake.mkdir(P("/a/b/d"))
    fake.add_proc("/a/b/d", 5)
    fake.add_proc("/a/c", 6)
    assert [str(p) for p in fake.walk(P("/a"))] == ["/a", "/a/b", "/a/b/d", "/a/c"]
    assert sorted(fake.procs_recursive(P("/a"))) == [5, 6]
    assert fake.procs_recursive(P("/a/b")) == [5]


def test_walk_of_gone_cgroup_is_vanished(fake: FakeCgroupFS) -> None:
    with pytest.raises(Vanished):
        fake.walk(P("/gone"))


def test_walk_skips_children_vanishing_midway(fake: FakeCgroupFS) -> None:
    _tree(fake)
    fake.fail("list", "/a/b", None, errno.ENOENT)
    fake.rmdir(P("/a/b"))
    assert [str(p) for p in fake.walk(P("/a"))] == ["/a", "/a/c"]


def test_rmdir_gone_is_fine_and_root_refused(fake: FakeCgroupFS) -> None:
    fake.rmdir(P("/never"))
    with pytest.raises(CgroupError, match="root"):
        fake.rmdir(ROOT)


def test_rmdir_retries_ebusy_with_doubling_backoff(tmp_path: Path) -> None:
    fake = FakeCgroupFS(tmp_path / "cg", linger=4)
    _tree(fake)
    fake.add_proc("/a/b", 31)
    fake.kill(P("/a/b"))
    fake.rmdir(P("/a/b"))  # 31 is still exiting for 4 sleeps
    assert not fake.exists(P("/a/b"))
    assert fake.sleeps == pytest.approx([0.01, 0.02, 0.04, 0.08])


def test_rmdir_ebusy_gives_up_naming_pids(fake: FakeCgroupFS) -> None:
    _tree(fake)
    fake.add_proc("/a/b", 31)
    fake.add_proc("/a/b", 32)
    with pytest.raises(CgroupError) as info:
        fake.rmdir(P("/a/b"))
    assert "31 32" in info.value.message
    assert "/a/b" in info.value.message
    assert info.value.hint is not None
    assert "cgroup.kill" in info.value.hint
    # ~2 s in all, each pause at most the cap.
    assert sum(fake.sleeps) == pytest.approx(fake.rmdir_timeout)
    assert max(fake.sleeps) <= fake.backoff_cap
    assert fake.sleeps[:3] == pytest.approx([0.01, 0.02, 0.04])


def test_rmdir_with_children_fails_at_once(fake: FakeCgroupFS) -> None:
    _tree(fake)
    with pytest.raises(CgroupError, match="child cgroups b, c"):
        fake.rmdir(P("/a"))
    assert fake.sleeps == []


def test_rmdir_other_errno(fake: FakeCgroupFS) -> None:
    _tree(fake)
    fake.fail("rmdir", "/a/b", None, errno.EPERM)
    with pytest.raises(CgroupError) as info:
        fake.rmdir(P("/a/b"))
    assert info.value.hint == READONLY_HINT


# -------------------------------------------------------------------------- controllers


def test_enable_controllers_skips_when_all_enabled(fake: FakeCgroupFS) -> None:
    fake.write(ROOT, "cgroup.subtree_control", "+memory +pids")
    before = len(fake.writes())
    assert fake.enable_controllers(ROOT, ["memory", "pids"]) == []
    assert fake.writes()[before:] == []


def test_enable_controllers_single_write_for_all(fake: FakeCgroupFS) -> None:
    assert fake.enable_controllers(ROOT, ["memory", "pids"]) == ["memory", "pids"]
    assert fake.writes() == [("write", "/", "cgroup.subtree_control", "+memory +pids")]


def test_enable_controllers_writes_missing_once(fake: FakeCgroupFS) -> None:
    fake.write(ROOT, "cgroup.subtree_control", "+memory +pids")
    fake.mkdir(P("/a"))
    fake.write(P("/a"), "cgroup.subtree_control", "+pids")
    assert fake.enable_controllers(P("/a"), ("memory", "pids", "memory")) == ["memory"]
    assert fake.writes("cgroup.subtree_control")[-1] == (
        "write",
        "/a",
        "cgroup.subtree_control",
        "+memory",
    )
    assert fake.enable_controllers(P("/a"), ("memory", "pids")) == []


def test_enable_unavailable_controller_hints(tmp_path: Path) -> None:
    fake = FakeCgroupFS(tmp_path / "cg", controllers=("cpu", "pids"))
    fake.mkdir(P("/a"))
    with pytest.raises(CgroupError) as info:
        fake.enable_controllers(ROOT, ["memory", "pids"])
    assert "memory not available in cgroup /" in info.value.message
    assert "pids" not in info.value.message.split("available")[0]
    assert info.value.hint is not None
    assert "Delegate=yes" in info.value.hint


def test_disable_controllers(fake: FakeCgroupFS) -> None:
    _tree(fake)
    assert fake.disable_controllers(P("/a"), ["pids"]) == ["pids"]
    assert fake.subtree_control(P("/a")) == {"memory"}
    assert fake.disable_controllers(P("/a")) == ["memory"]
    assert fake.disable_controllers(P("/a")) == []
    assert not fake.has_file(P("/a/b"), "memory.max")


def test_is_real_root(tmp_path: Path) -> None:
    real = FakeCgroupFS(tmp_path / "r")
    ns = FakeCgroupFS(tmp_path / "n", real_root=False)
    real.mkdir(P("/a"))
    assert real.is_real_root(ROOT)
    assert not real.is_real_root(P("/a"))
    assert not ns.is_real_root(ROOT)


# ---------------------------------------------------------------------------- processes


def test_populated_and_wait(fake: FakeCgroupFS) -> None:
    _tree(fake)
    assert not fake.populated(P("/a"))
    fake.add_proc("/a/b", 9)
    assert fake.populated(P("/a"))
    assert fake.populated(ROOT)  # the root has no cgroup.events; it always holds init
    assert not fake.wait_unpopulated(P("/a"), 0.5)
    assert sum(fake.sleeps) == pytest.approx(0.5)
    assert fake.wait_unpopulated(P("/gone"), 1.0)


def test_kill_uses_cgroup_kill(fake: FakeCgroupFS) -> None:
    _tree(fake)
    fake.add_proc("/a/b", 10)
    fake.add_proc("/a/c", 11)
    fake.kill(P("/a"))
    assert fake.writes("cgroup.kill") == [("write", "/a", "cgroup.kill", "1")]
    assert fake.procs_recursive(P("/a")) == []


def test_kill_fallback_signals_every_pid_recursively(tmp_path: Path) -> None:
    fake = FakeCgroupFS(tmp_path / "cg", cgroup_kill=False, linger=1)
    _tree(fake)
    fake.add_proc("/a/b", 10)
    fake.add_proc("/a/c", 11)
    fake.kill(P("/a"))
    assert fake.writes("cgroup.kill") == []
    assert {pid for pid, sig in fake.signals if sig == 9} == {10, 11}
    assert fake.procs_recursive(P("/a")) == []


def test_kill_fallback_is_bounded(tmp_path: Path) -> None:
    fake = FakeCgroupFS(tmp_path / "cg", cgroup_kill=False, linger=10**9)
    _tree(fake)
    fake.add_proc("/a/b", 10)
    with pytest.raises(CgroupError, match="still there after 5s: 10"):
        fake.kill(P("/a"))
    assert sum(fake.sleeps) == pytest.approx(fake.kill_timeout)


def test_kill_fallback_skips_a_pid_that_left_before_pinning(tmp_path: Path) -> None:
    # The pid exits and its number is reused outside the cgroup between reading cgroup.procs
    # and pinning it: the re-read membership check must keep us from killing the stranger.
    class Racy(FakeCgroupFS):
        def _sys_pidfd_open(self, pid: int) -> int | None:
            if pid == 10:
                self.add_proc(ROOT, 10)  # "reused" by a process outside /a
            return super()._sys_pidfd_open(pid)

    fake = Racy(tmp_path / "cg", cgroup_kill=False)
    _tree(fake)
    fake.add_proc("/a/b", 10)
    fake.add_proc("/a/b", 12)
    fake.kill(P("/a"))
    assert fake.signals == [(12, 9)]
    assert fake.procs(ROOT) == [10]


def test_kill_of_gone_cgroup_is_vanished(fake: FakeCgroupFS) -> None:
    with pytest.raises(Vanished):
        fake.kill(P("/gone"))


def test_freeze(fake: FakeCgroupFS) -> None:
    _tree(fake)
    fake.freeze(P("/a/b"), True)
    assert fake.read_flat(P("/a/b"), "cgroup.events")["frozen"] == 1
    fake.freeze(P("/a/b"), False)
    assert fake.writes("cgroup.freeze") == [
        ("write", "/a/b", "cgroup.freeze", "1"),
        ("write", "/a/b", "cgroup.freeze", "0"),
    ]


def test_has_file(fake: FakeCgroupFS) -> None:
    _tree(fake)
    assert fake.has_file(P("/a"), "memory.max")
    assert not fake.has_file(P("/a"), "memory.nope")
    with pytest.raises(Vanished):
        fake.has_file(P("/gone"), "memory.max")
