"""Discovery on sample texts from each host shape, its cgroup facts on a fake cgroup2 mount, plus
one read-only live smoke test."""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

import pytest

from oomguard import proc
from oomguard.cgroup import discover as dsc
from oomguard.cgroup.discover import (
    HostMode,
    cgroup2_mounts,
    cgroup_facts,
    choose_cgroup2_mount,
    classify,
    container_evidence,
    kernel_version,
    relative_cgroup,
    v1_mounts,
)
from oomguard.cgroup.path import CgroupPath
from oomguard.proc import (
    parse_cap_eff,
    parse_mountinfo,
    parse_ns_inode,
    parse_proc_cgroup,
    parse_swaps,
)
from tests.cgroup.fakefs import FakeCgroupFS

if TYPE_CHECKING:
    from pathlib import Path

# This build host: systemd-style hybrid, memory on v1, cgroup2 at /sys/fs/cgroup/unified.
HYBRID_MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = """\
9:name=systemd:/
8:pids:/
4:memory:/process_api/4aa22158ad99935103c4896b236614b6
2:cpuacct:/
1:cpu:/
0::/
"""

# A systemd host booted unified (Debian 12 / Fedora default).
UNIFIED_MOUNTINFO = """\
25 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 \
rw,nsdelegate,memory_recursiveprot
"""
UNIFIED_CGROUP = "0::/user.slice/user-1000.slice/session-2.scope\n"

# docker run on a v2 host (default --cgroupns=private): cgroupfs mounted read-only, we are "/".
DOCKER_MOUNTINFO = """\
600 500 0:50 / / rw,relatime master:1 - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
610 600 0:55 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
611 610 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate,\
memory_recursiveprot
"""
DOCKER_CGROUP = "0::/\n"

# docker --cgroupns=host on a v2 host: the mount's root is the container's own cgroup.
HOSTNS_MOUNTINFO = (
    "611 610 0:26 /system.slice/docker-abc.scope /sys/fs/cgroup rw,nosuid - cgroup2 cgroup rw\n"
)
HOSTNS_CGROUP = "0::/system.slice/docker-abc.scope\n"

# An old v1-only host (CentOS 7 style).
LEGACY_MOUNTINFO = """\
24 18 0:20 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
25 24 0:21 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,release_agent=/x,name=systemd
28 24 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
29 24 0:25 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
"""
LEGACY_CGROUP = """\
11:memory:/user.slice
3:cpu,cpuacct:/user.slice
1:name=systemd:/user.slice/user-0.slice/session-1.scope
"""


def test_parse_mountinfo_fields_and_optional_fields() -> None:
    entries = parse_mountinfo(UNIFIED_MOUNTINFO)
    cg = entries[1]
    assert (cg.mount_id, cg.parent_id) == (30, 24)
    assert cg.fstype == "cgroup2"
    assert cg.mount_point == "/sys/fs/cgroup"
    assert cg.root == "/"
    assert "nsdelegate" in cg.super_options
    assert "noexec" in cg.mount_options
    assert not cg.read_only


def test_parse_mountinfo_unescapes_octal_and_skips_garbage() -> None:
    text = "40 1 0:38 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\nnot a line\n1 2 3\n"
    (entry,) = parse_mountinfo(text)
    assert entry.mount_point == "/mnt/with space"


def test_read_only_is_either_mount_or_superblock() -> None:
    (m,) = cgroup2_mounts(parse_mountinfo(DOCKER_MOUNTINFO))
    assert m.read_only
    assert m.nsdelegate and m.memory_recursiveprot


def test_overmounted_mount_point_keeps_only_the_visible_mount() -> None:
    text = (
        "30 24 0:26 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n"
        "31 30 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    )
    (m,) = cgroup2_mounts(parse_mountinfo(text))
    assert not m.read_only


def test_hybrid_host() -> None:
    entries = parse_mountinfo(HYBRID_MOUNTINFO)
    v2, v1 = cgroup2_mounts(entries), v1_mounts(entries)
    assert [m.path for m in v2] == ["/sys/fs/cgroup/unified"]
    assert classify(v2, v1) is HostMode.HYBRID
    by_path = {m.path: m for m in v1}
    assert by_path["/sys/fs/cgroup/memory"].controllers == {"memory"}
    systemd = by_path["/sys/fs/cgroup/systemd"]
    assert systemd.controllers == frozenset()
    assert systemd.name == "systemd"
    pc = parse_proc_cgroup(HYBRID_CGROUP)
    assert pc.unified == "/"
    assert pc.v1["memory"] == "/process_api/4aa22158ad99935103c4896b236614b6"
    assert pc.v1["name=systemd"] == "/"
    chosen = choose_cgroup2_mount(v2, pc.unified)
    assert chosen is not None and chosen.path == "/sys/fs/cgroup/unified"


def test_unified_host() -> None:
    entries = parse_mountinfo(UNIFIED_MOUNTINFO)
    v2 = cgroup2_mounts(entries)
    assert classify(v2, v1_mounts(entries)) is HostMode.UNIFIED
    pc = parse_proc_cgroup(UNIFIED_CGROUP)
    assert pc.unified == "/user.slice/user-1000.slice/session-2.scope"
    assert pc.v1 == {}
    m = choose_cgroup2_mount(v2, pc.unified)
    assert m is not None
    assert relative_cgroup(pc.unified, m.root) == pc.unified


def test_named_v1_hierarchy_alone_does_not_make_a_host_hybrid() -> None:
    text = UNIFIED_MOUNTINFO + (
        "40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n"
    )
    entries = parse_mountinfo(text)
    assert classify(cgroup2_mounts(entries), v1_mounts(entries)) is HostMode.UNIFIED


def test_legacy_host() -> None:
    entries = parse_mountinfo(LEGACY_MOUNTINFO)
    v2, v1 = cgroup2_mounts(entries), v1_mounts(entries)
    assert v2 == []
    assert classify(v2, v1) is HostMode.LEGACY
    cpu = next(m for m in v1 if m.path.endswith("cpu,cpuacct"))
    assert cpu.controllers == {"cpu", "cpuacct"}
    pc = parse_proc_cgroup(LEGACY_CGROUP)
    assert pc.unified is None
    assert pc.v1["cpu"] == pc.v1["cpuacct"] == "/user.slice"
    assert choose_cgroup2_mount(v2, pc.unified) is None


def test_no_cgroups_at_all() -> None:
    assert classify([], []) is HostMode.NONE


def test_docker_private_cgroupns() -> None:
    entries = parse_mountinfo(DOCKER_MOUNTINFO)
    v2 = cgroup2_mounts(entries)
    assert classify(v2, v1_mounts(entries)) is HostMode.UNIFIED
    pc = parse_proc_cgroup(DOCKER_CGROUP)
    m = choose_cgroup2_mount(v2, pc.unified)
    assert m is not None and m.read_only
    assert relative_cgroup("/", m.root) == "/"
    info = container_evidence(
        dockerenv=True,
        containerenv=False,
        container_env=None,
        pid1_cgroup=parse_proc_cgroup("0::/\n"),
        own_ns=4026532500,
        init_ns=None,
        own_unified=pc.unified,
    )
    assert info.in_container
    assert info.private_cgroupns is True
    assert "/.dockerenv exists" in info.reasons
    assert any("private cgroup namespace" in r and "0::/" in r for r in info.reasons)


def test_docker_host_cgroupns_mount_root_is_our_cgroup() -> None:
    v2 = cgroup2_mounts(parse_mountinfo(HOSTNS_MOUNTINFO))
    pc = parse_proc_cgroup(HOSTNS_CGROUP)
    assert pc.unified is not None
    m = choose_cgroup2_mount(v2, pc.unified)
    assert m is not None
    assert relative_cgroup(pc.unified, m.root) == "/"


def test_relative_cgroup_unreachable() -> None:
    assert relative_cgroup("/a/b", "/c") is None
    # A cgroup outside our namespace root shows as "/../x" and no mount of ours reaches it.
    assert relative_cgroup("/../other", "/") is None
    assert relative_cgroup("/a/b", "/a") == "/b"
    assert relative_cgroup("/ab", "/a") is None


def test_choose_prefers_sys_fs_cgroup_then_highest_root() -> None:
    text = (
        "50 1 0:26 /x /mnt/x rw - cgroup2 cgroup2 rw\n"
        "51 1 0:26 / /mnt/all rw - cgroup2 cgroup2 rw\n"
        "52 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    )
    v2 = cgroup2_mounts(parse_mountinfo(text))
    assert choose_cgroup2_mount(v2, "/x/y") == next(m for m in v2 if m.path == "/sys/fs/cgroup")
    no_sys = [m for m in v2 if m.path != "/sys/fs/cgroup"]
    chosen = choose_cgroup2_mount(no_sys, "/x/y")
    assert chosen is not None and chosen.path == "/mnt/all"
    only_x = choose_cgroup2_mount(no_sys, "/z")
    assert only_x is not None and only_x.path == "/mnt/all"


def test_proc_cgroup_deleted_suffix_and_colons() -> None:
    pc = parse_proc_cgroup("0::/gone (deleted)\n5:memory:/a:b\n")
    assert pc.unified == "/gone"
    assert pc.v1["memory"] == "/a:b"


def test_container_evidence_plain_host() -> None:
    info = container_evidence(
        dockerenv=False,
        containerenv=False,
        container_env=None,
        pid1_cgroup=parse_proc_cgroup("0::/init.scope\n"),
        own_ns=dsc.INIT_CGROUP_NS_INO,
        init_ns=dsc.INIT_CGROUP_NS_INO,
        own_unified="/user.slice",
    )
    assert not info.in_container
    assert info.private_cgroupns is False


def test_container_evidence_podman_and_v1_docker_paths() -> None:
    info = container_evidence(
        dockerenv=False,
        containerenv=True,
        container_env="podman",
        pid1_cgroup=parse_proc_cgroup(
            "4:memory:/docker/0123abcd\n1:name=systemd:/docker/0123abcd\n"
        ),
        own_ns=None,
        init_ns=None,
        own_unified=None,
    )
    assert info.reasons == (
        "/run/.containerenv exists",
        "container=podman in the environment",
        "PID 1's cgroup path mentions docker",
    )
    assert info.private_cgroupns is None


def test_capabilities() -> None:
    # This host: root without CAP_SYS_RESOURCE (bit 24 cleared).
    cap = parse_cap_eff("Name:\tx\nCapInh:\t0\nCapEff:\t000001fffeffffff\n")
    assert cap == 0x1FFFEFFFFFF
    assert not proc.has_capability(cap, proc.CAP_SYS_RESOURCE)
    assert proc.has_capability(0x1FFFFFFFFFF, proc.CAP_SYS_RESOURCE)
    assert not proc.has_capability(None, proc.CAP_SYS_RESOURCE)
    assert parse_cap_eff("CapEff:\tzz\n") is None
    assert parse_cap_eff("") is None


def test_swaps() -> None:
    header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
    assert parse_swaps(header) == 0
    assert parse_swaps(header + "/swapfile file 1048572 0 -2\n/dev/sdb2 partition 4 0 -3\n") == (
        1048576 * 1024
    )


# -- cgroup facts, read through CgroupFS (a fake mount here) ------------------------------------


def test_facts_in_the_root_cgroup_of_a_writable_mount(tmp_path: Path) -> None:
    fs = FakeCgroupFS(tmp_path / "cg")
    fs.add_proc("/", 1)
    fs.add_proc("/", 321)
    fs.mkdir(CgroupPath.parse("/other"))
    facts = cgroup_facts(fs, "/", read_only=False, pid=321)
    assert facts.own_is_root is True
    assert facts.own_dir == str(fs.mount)
    assert facts.root_controllers == facts.controllers == frozenset({"cpu", "io", "memory", "pids"})
    assert facts.subtree_control == frozenset()
    assert facts.mount_writable and facts.own_dir_writable
    assert facts.other_procs == (1,)  # not us
    # The root has no memory.max; cgroup.kill is looked for in a child cgroup.
    assert facts.own_memory_max is None and facts.own_oom_group is None
    assert facts.cgroup_kill is True
    # Memory is not enabled below the root, so memory.peak is judged by the kernel release.
    assert facts.memory_peak == (kernel_version(os.uname().release) >= dsc.MEMORY_PEAK_SINCE)


def test_facts_in_a_container_cgroup_with_a_limit(tmp_path: Path) -> None:
    fs = FakeCgroupFS(tmp_path / "cg", cgroup_kill=False)
    fs.enable_controllers(CgroupPath(), ["memory", "pids"])
    own = CgroupPath.parse("/kubepods/pod1")
    fs.mkdir(own.parent)
    fs.enable_controllers(own.parent, ["memory", "pids"])
    fs.mkdir(own)
    fs.write(own, "memory.max", str(512 << 20))
    fs.write(own, "memory.oom.group", "1")
    facts = cgroup_facts(fs, str(own), read_only=False, pid=321)
    assert facts.own_is_root is False
    assert facts.controllers == frozenset({"memory", "pids"})
    assert facts.own_memory_max == 512 << 20
    assert facts.own_oom_group is True
    assert facts.other_procs == ()
    assert facts.psi_cgroup is True
    assert (facts.cgroup_kill, facts.memory_peak, facts.memory_swap_max) == (False, False, True)


def test_facts_of_a_read_only_mount(tmp_path: Path) -> None:
    fs = FakeCgroupFS(tmp_path / "cg")
    facts = cgroup_facts(fs, "/", read_only=True, pid=321)
    assert not facts.mount_writable and not facts.own_dir_writable
    assert facts.controllers is not None


def test_facts_when_our_cgroup_is_not_reachable_or_unreadable(tmp_path: Path) -> None:
    fs = FakeCgroupFS(tmp_path / "cg")
    facts = cgroup_facts(fs, None, read_only=False, pid=321)
    assert facts == dsc.NO_CGROUP._replace(
        root_controllers=frozenset({"cpu", "io", "memory", "pids"}), mount_writable=True
    )
    # A file we may not read is "could not tell", not an error.
    fs.fail("read", "/", "cgroup.controllers", errno.EACCES, times=2)
    facts = cgroup_facts(fs, "/", read_only=False, pid=321)
    assert facts.root_controllers is None and facts.controllers is None
    # Our cgroup gone between /proc/self/cgroup and here.
    gone = cgroup_facts(fs, "/vanished", read_only=False, pid=321)
    assert gone.own_is_root is None and gone.controllers is None and not gone.own_dir_writable


def test_ns_inode_and_kernel_version() -> None:
    assert parse_ns_inode("cgroup:[4026531835]") == dsc.INIT_CGROUP_NS_INO
    assert parse_ns_inode(None) is None
    assert parse_ns_inode("garbage") is None
    assert kernel_version("6.1.0-27-cloud-amd64") == (6, 1)
    assert kernel_version("5.14.0-362.el9.x86_64") == (5, 14)
    assert kernel_version("6.18.44-fc-v657") == (6, 18)
    assert kernel_version("weird") == (0, 0)


def test_discover_live_is_read_only_and_consistent() -> None:
    """Runs on whatever host runs the tests; it only reads."""
    d = dsc.discover()
    assert d.pid == os.getpid()
    assert d.kernel_release == os.uname().release
    if d.mount is not None:
        assert d.mount in d.cgroup2
        assert dsc.find_cgroup2_mount() is not None
    assert d.mode in HostMode
    assert d.euid == os.geteuid()


@pytest.mark.skipif(dsc.find_cgroup2_mount() is None, reason="no cgroup2 mount on this host")
def test_own_cgroup_live() -> None:
    own = dsc.own_cgroup()
    with open("/proc/self/cgroup") as f:
        unified = parse_proc_cgroup(f.read()).unified
    assert unified is not None
    # Relative to the chosen mount's root, which is a prefix of the namespace-relative path.
    assert unified.endswith(str(own).rstrip("/")) or str(own) == "/"
