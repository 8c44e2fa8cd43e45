"""`oomguard.proc`: the parsers on sample texts, the readers on a fake /proc in a temp dir. Only
facts about this very process are read from the real /proc."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from oomguard import proc

if TYPE_CHECKING:
    from pathlib import Path


def fake_stat(root: Path, pid: int, comm: str, starttime: int, state: str = "S") -> None:
    rest = [state, "1", "7", "7", "0", "-1", "4194560"] + ["0"] * 12 + [str(starttime), "0"]
    (root / str(pid)).mkdir(parents=True, exist_ok=True)
    (root / str(pid) / "stat").write_text(f"{pid} ({comm}) {' '.join(rest)}\n")


# -- stat --------------------------------------------------------------------------------------


def test_parse_stat_counts_fields_after_the_last_paren() -> None:
    # A process may name itself anything (prctl PR_SET_NAME), ")" and spaces included.
    rest = ["Z", "1", "42", "43"] + ["0"] * 15 + ["987654", "0"]
    st = proc.parse_stat(b"42 (evil) S 1 2 3 (x) " + " ".join(rest).encode())
    assert st == proc.Stat(
        comm="evil) S 1 2 3 (x", state="Z", ppid=1, pgrp=42, session=43, start_ticks=987654
    )


def test_parse_stat_refuses_what_is_not_a_stat_line() -> None:
    assert proc.parse_stat(b"") is None
    assert proc.parse_stat(b"42 no parens 1 2 3") is None
    assert proc.parse_stat(b"42 (short) S 1 2") is None
    assert proc.parse_stat(b"42 (bad) S x 1 1" + b" 0" * 20) is None


def test_start_ticks_survives_a_hostile_comm(tmp_path: Path) -> None:
    fake_stat(tmp_path, 42, "evil) S 1 2 3 (x", 987654)
    assert proc.start_ticks(42, tmp_path) == 987654
    assert proc.start_ticks(43, tmp_path) is None
    st = proc.stat(42, tmp_path)
    assert st is not None and (st.pgrp, st.state) == (7, "S")


def test_start_ticks_of_this_process() -> None:
    ticks = proc.start_ticks(os.getpid())
    assert isinstance(ticks, int) and ticks > 0
    assert proc.start_ticks("self") == ticks
    st = proc.stat("self")
    assert st is not None
    assert (st.ppid, st.pgrp, st.session) == (os.getppid(), os.getpgrp(), os.getsid(0))


def test_is_zombie_tells_running_exited_and_absent_apart(tmp_path: Path) -> None:
    root = tmp_path / "proc"
    for pid, state in ((10, "S"), (11, "Z")):
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "stat").write_text(f"{pid} (a) b) {state} 1 2 3\n")
    (root / "13").mkdir()
    (root / "13" / "stat").write_text("garbage")
    assert proc.is_zombie(10, root) is False
    assert proc.is_zombie(11, root) is True  # the comm may hold ")": split on the last one
    assert proc.is_zombie(12, root) is None
    assert proc.is_zombie(13, root) is None


def test_exists_and_pids(tmp_path: Path) -> None:
    fake_stat(tmp_path, 42, "a", 1)
    (tmp_path / "self").mkdir()
    (tmp_path / "sys").mkdir()
    assert proc.exists(42, tmp_path)
    assert not proc.exists(43, tmp_path)
    assert proc.pids(tmp_path) == [42]
    assert proc.pids(tmp_path / "nothing") == []


# -- status: capabilities and memory -------------------------------------------------------------

STATUS = """\
Name:\tpostgres
Umask:\t0077
State:\tS (sleeping)
Pid:\t4242
VmRSS:\t  524288 kB
RssAnon:\t  262144 kB
RssFile:\t  131072 kB
RssShmem:\t  131072 kB
VmSwap:\t    1024 kB
CapInh:\t0000000000000000
CapEff:\t000001fffeffffff
"""


def test_capabilities() -> None:
    # Root without CAP_SYS_RESOURCE (bit 24 cleared), as in an unprivileged container.
    cap = proc.parse_cap_eff(STATUS)
    assert cap == 0x1FFFEFFFFFF
    assert not proc.has_capability(cap, proc.CAP_SYS_RESOURCE)
    assert proc.has_capability(0x1FFFFFFFFFF, proc.CAP_SYS_RESOURCE)
    assert not proc.has_capability(None, proc.CAP_SYS_RESOURCE)
    assert proc.parse_cap_eff("CapEff:\tzz\n") is None
    assert proc.parse_cap_eff("") is None


def test_memory_by_kind_from_status(tmp_path: Path) -> None:
    mem = proc.parse_status_memory(STATUS)
    assert mem == proc.Memory(
        rss_anon=256 << 20, rss_file=128 << 20, rss_shmem=128 << 20, swap=1 << 20
    )
    # Killing it frees its anonymous and shared pages and its swap, not its page cache.
    assert mem.unreclaimable == (256 + 128 + 1) << 20
    assert mem.rss == 512 << 20
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "status").write_text(STATUS)
    assert proc.memory(42, tmp_path) == mem
    assert proc.memory(43, tmp_path) is None


def test_kernel_threads_and_zombies_have_no_memory() -> None:
    assert proc.parse_status_memory("Name:\tkthreadd\nState:\tS (sleeping)\n") is None
    assert proc.parse_status_memory(STATUS.replace("VmSwap:\t    1024 kB", "VmSwap:\t1 MB")) is None


def test_this_process_has_memory() -> None:
    mem = proc.memory("self")
    assert mem is not None and mem.rss_anon > 0


# -- oom_score_adj, comm, cmdline, environ, statm ------------------------------------------------


def test_per_process_files_from_a_fake_proc(tmp_path: Path) -> None:
    d = tmp_path / "42"
    d.mkdir()
    (d / "comm").write_text("postgres\n")
    (d / "oom_score_adj").write_text("-999\n")
    (d / "cmdline").write_bytes(b"postgres\0-D\0/var/lib/pg data\0")
    (d / "environ").write_bytes(b"A=1\0OOMGUARD_INSTANCE=x=y\0A=2\0junk\0=v\0")
    (d / "statm").write_text("1000 250 30 1 0 100 0\n")
    assert proc.comm(42, tmp_path) == "postgres"
    assert proc.oom_score_adj(42, tmp_path) == -999
    assert proc.cmdline(42, tmp_path) == ("postgres", "-D", "/var/lib/pg data")
    assert proc.environ(42, tmp_path) == {b"A": b"2", b"OOMGUARD_INSTANCE": b"x=y"}
    assert proc.rss_pages(42, tmp_path) == 250
    for reader in (proc.comm, proc.oom_score_adj, proc.cmdline, proc.environ, proc.rss_pages):
        assert reader(43, tmp_path) is None
    (d / "oom_score_adj").write_text("")  # torn read of an exiting process
    assert proc.oom_score_adj(42, tmp_path) is None
    (d / "statm").write_text("garbage")
    assert proc.rss_pages(42, tmp_path) == 0


def test_environ_is_read_up_to_its_limit(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "environ").write_bytes(b"A=1\0B=" + b"x" * 100)
    assert proc.environ(42, tmp_path, limit=10) == {b"A": b"1", b"B": b"xxxx"}


def test_cmdline_of_a_kernel_thread_is_empty() -> None:
    assert proc.parse_cmdline(b"") == ()


def test_own_oom_score_adj_and_capability_agree_with_the_kernel() -> None:
    adj = proc.oom_score_adj()
    assert adj is not None and -1000 <= adj <= 1000
    assert proc.cap_sys_resource() in (True, False)
    assert proc.can_lower_oom_score_adj() == proc.cap_sys_resource()


def test_raising_own_oom_score_adj_needs_no_capability() -> None:
    # In a child: the value is inherited and cannot be lowered back without the capability.
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            proc.write_oom_score_adj(b"%d" % min((proc.oom_score_adj() or 0) + 1, 1000))
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# -- host-wide files ---------------------------------------------------------------------------


def test_vmstat_counter() -> None:
    text = "nr_free_pages 123\noom_kill 7\noom_kill_x 9\n"
    assert proc.parse_vmstat(text, "oom_kill") == 7
    assert proc.parse_vmstat("nr_free_pages 1\n", "oom_kill") is None
    assert proc.parse_vmstat("oom_kill x\n", "oom_kill") is None


def test_swaps() -> None:
    header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
    assert proc.parse_swaps(header) == 0
    assert proc.parse_swaps(
        header + "/swapfile file 1048572 0 -2\n/dev/sdb2 partition 4 0 -3\n"
    ) == (1048576 * 1024)


def test_ns_inode() -> None:
    assert proc.parse_ns_inode("cgroup:[4026531835]") == 4026531835
    assert proc.parse_ns_inode(None) is None
    assert proc.parse_ns_inode("garbage") is None
    assert proc.parse_ns_inode("cgroup:[x]") is None


def test_mountinfo_fields_and_escapes() -> None:
    text = (
        "30 24 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
        "40 1 0:38 / /mnt/with\\040space ro - cgroup2 cgroup2 rw\n"
        "not a line\n1 2 3\nx 1 0:1 / /a rw - tmpfs tmpfs rw\n"
    )
    first, second = proc.parse_mountinfo(text)
    assert (first.mount_id, first.parent_id, first.fstype) == (30, 24, "cgroup2")
    assert "nsdelegate" in first.super_options and not first.read_only
    assert second.mount_point == "/mnt/with space" and second.read_only


def test_proc_cgroup_deleted_suffix_and_colons() -> None:
    pc = proc.parse_proc_cgroup("0::/gone (deleted)\n5:memory:/a:b\n1:name=systemd:/\nbad\n")
    assert pc.unified == "/gone"
    assert dict(pc.v1) == {"memory": "/a:b", "name=systemd": "/"}


def test_own_cgroup_and_mounts_are_readable() -> None:
    pc = proc.proc_cgroup()
    assert pc is not None and (pc.unified is not None or pc.v1)
    assert any(m.mount_point == "/" for m in proc.mountinfo())


def test_highest_fd_sees_a_new_fd() -> None:
    r, w = os.pipe()
    try:
        highest = proc.highest_fd()
        assert highest is not None and highest >= max(r, w)
    finally:
        os.close(r)
        os.close(w)


def test_reopen_fd_gives_a_description_of_its_own() -> None:
    r, w = os.pipe()
    try:
        own = proc.reopen_fd(w, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            assert os.get_blocking(w) and not os.get_blocking(own)
            os.write(own, b"x")
            assert os.read(r, 1) == b"x"
        finally:
            os.close(own)
    finally:
        os.close(r)
        os.close(w)


def test_host_files_from_a_fake_proc(tmp_path: Path) -> None:
    (tmp_path / "vmstat").write_text("nr_free_pages 1\noom_kill 3\n")
    (tmp_path / "meminfo").write_text("MemTotal:       1024 kB\nHugePages_Total:   2\n")
    (tmp_path / "swaps").write_text("Filename Type Size Used Priority\n/s file 4 0 -2\n")
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "mountinfo").write_text("30 24 0:26 / /c rw - cgroup2 cgroup2 rw\n")
    assert proc.vmstat_oom_kill(tmp_path) == 3
    assert proc.meminfo(tmp_path) == {"MemTotal": 1 << 20, "HugePages_Total": 2}
    assert proc.swap_total(tmp_path) == 4096
    assert [m.mount_point for m in proc.mountinfo(tmp_path)] == ["/c"]
    assert not proc.psi_available(tmp_path)
    (tmp_path / "pressure").mkdir()
    (tmp_path / "pressure" / "memory").write_text(
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )
    assert proc.psi_available(tmp_path)


def test_host_files_missing_or_malformed(tmp_path: Path) -> None:
    assert proc.vmstat_oom_kill(tmp_path) is None
    assert proc.meminfo(tmp_path) == {}
    assert proc.swap_total(tmp_path) == 0
    assert proc.mountinfo(tmp_path) == []
    (tmp_path / "meminfo").write_text("MemTotal: lots\n")
    assert proc.meminfo(tmp_path) == {}
