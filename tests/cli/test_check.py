"""`oomguard check`: the verdict logic on Discoveries of each host shape, and the command."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from oomguard.cgroup.discover import (
    Cgroup2Mount,
    ContainerInfo,
    Discovery,
    HostMode,
    V1Mount,
)
from oomguard.cgroup.verdict import Assessment, CheckLevel, Item, Verdict, assess
from oomguard.cli import check

V2 = Cgroup2Mount("/sys/fs/cgroup", "/", False, True, True)

#: The QEMU guest: pure v2, root, we are in the root cgroup.
READY = Discovery(
    kernel_release="6.1.0-27-cloud-amd64",
    mode=HostMode.UNIFIED,
    cgroup2=(V2,),
    v1=(),
    mount=V2,
    own_cgroup="/",
    own_cgroup_raw="/",
    own_dir="/sys/fs/cgroup",
    own_is_root=True,
    root_controllers=frozenset({"cpu", "io", "memory", "pids"}),
    controllers=frozenset({"cpu", "io", "memory", "pids"}),
    subtree_control=frozenset({"cpu", "io", "memory", "pids"}),
    v1_controllers=frozenset(),
    mount_writable=True,
    own_dir_writable=True,
    other_procs=(),
    own_memory_max=None,
    own_oom_group=None,
    container=ContainerInfo((), False),
    psi_system=True,
    psi_cgroup=True,
    cgroup_kill=True,
    memory_peak=True,
    swap_bytes=0,
    memory_swap_max=None,
    cap_sys_resource=True,
    oom_score_adj=0,
    oom_score_adj_writable=True,
    pid=321,
    euid=0,
)

HYBRID_V2 = Cgroup2Mount("/sys/fs/cgroup/unified", "/", False, False, False)
#: This build host.
HYBRID = READY._replace(
    mode=HostMode.HYBRID,
    cgroup2=(HYBRID_V2,),
    v1=(
        V1Mount("/sys/fs/cgroup/memory", "/", frozenset({"memory"}), None, False),
        V1Mount("/sys/fs/cgroup/pids", "/", frozenset({"pids"}), None, False),
    ),
    mount=HYBRID_V2,
    own_dir="/sys/fs/cgroup/unified",
    root_controllers=frozenset({"hugetlb"}),
    controllers=frozenset({"hugetlb"}),
    subtree_control=frozenset(),
    v1_controllers=frozenset({"memory", "pids"}),
    cap_sys_resource=False,
    container=ContainerInfo(("/.dockerenv exists",), False),
)

RO = Cgroup2Mount("/sys/fs/cgroup", "/", True, True, True)
#: docker run without --privileged on a v2 host.
DOCKER_RO = READY._replace(
    cgroup2=(RO,),
    mount=RO,
    own_is_root=False,
    mount_writable=False,
    own_dir_writable=False,
    pid=1,
    container=ContainerInfo(("/.dockerenv exists", "private cgroup namespace"), True),
)


def item(a: Assessment, key: str) -> Item:
    return next(i for i in a.items if i.key == key)


def test_ready_guest() -> None:
    a = assess(READY)
    assert a.verdict is Verdict.READY
    assert a.exit_code == 0
    assert all(i.level is CheckLevel.OK for i in a.items), [
        i for i in a.items if i.level != CheckLevel.OK
    ]
    assert a.summary.startswith("ready")


def test_hybrid_host_explains_and_degrades() -> None:
    a = assess(HYBRID)
    assert a.verdict is Verdict.DEGRADED
    assert a.exit_code == 1
    v2 = item(a, "cgroup-v2")
    assert v2.level is CheckLevel.FAIL
    assert "hybrid" in v2.detail and "memory is on cgroup v1" in v2.detail
    assert "/sys/fs/cgroup/memory" in v2.detail
    assert v2.fix is not None and "systemd.unified_cgroup_hierarchy=1" in v2.fix
    assert "cgroup_no_v1=all" in v2.fix
    assert item(a, "memory-controller").level is CheckLevel.FAIL
    # Without CAP_SYS_RESOURCE the primary can't get a negative score: a warning, not a fail.
    adj = item(a, "oom_score_adj")
    assert adj.level is CheckLevel.WARN and adj.fix is not None and "SYS_RESOURCE" in adj.fix


def test_read_only_cgroupfs_in_container() -> None:
    a = assess(DOCKER_RO)
    assert a.verdict is Verdict.DEGRADED
    w = item(a, "cgroupfs-writable")
    assert w.level is CheckLevel.FAIL
    assert w.fix is not None
    assert "--privileged" in w.fix and "unmask=/sys/fs/cgroup" in w.fix
    assert "--cgroupns=private" in w.fix
    assert item(a, "pid1").level is CheckLevel.OK
    assert "private cgroup namespace" in item(a, "container").detail


def test_not_delegated_cgroup() -> None:
    d = READY._replace(
        own_cgroup="/user.slice/user-1000.slice/session-2.scope",
        own_is_root=False,
        own_dir="/sys/fs/cgroup/user.slice/user-1000.slice/session-2.scope",
        own_dir_writable=False,
        mount_writable=False,
        euid=1000,
    )
    w = item(assess(d), "cgroupfs-writable")
    assert w.level is CheckLevel.FAIL
    assert w.fix is not None and "systemd-run --scope -p Delegate=yes" in w.fix
    assert "uid 1000" in w.detail


def test_memory_not_enabled_in_parent() -> None:
    d = READY._replace(
        own_cgroup="/app",
        own_is_root=False,
        own_dir="/sys/fs/cgroup/app",
        controllers=frozenset({"pids"}),
    )
    a = assess(d)
    m = item(a, "memory-controller")
    assert m.level is CheckLevel.FAIL
    assert "memory controller not enabled in the parent" in m.detail
    assert m.fix is not None and "echo +memory > /sys/fs/cgroup/cgroup.subtree_control" in m.fix
    assert a.verdict is Verdict.DEGRADED


def test_missing_pids_controller_only_warns() -> None:
    a = assess(READY._replace(controllers=frozenset({"memory"})))
    assert item(a, "pids-controller").level is CheckLevel.WARN
    assert a.verdict is Verdict.READY


@pytest.mark.parametrize(
    ("root_writable", "level"), [(True, CheckLevel.WARN), (False, CheckLevel.FAIL)]
)
def test_other_processes_in_our_cgroup(root_writable: bool, level: CheckLevel) -> None:
    d = READY._replace(
        own_cgroup="/session.scope",
        own_is_root=False,
        own_dir="/sys/fs/cgroup/session.scope",
        other_procs=(100, 101),
        mount_writable=root_writable,
    )
    own = item(assess(d), "own-cgroup")
    assert own.level is level
    assert "2 other processes" in own.detail and "no-internal-process" in own.detail
    assert own.fix is not None and "Delegate=yes" in own.fix


def test_root_cgroup_is_exempt_from_no_internal_process_rule() -> None:
    own = item(assess(READY._replace(other_procs=(1, 2, 3))), "own-cgroup")
    assert own.level is CheckLevel.OK


def test_legacy_and_none() -> None:
    legacy = READY._replace(
        mode=HostMode.LEGACY,
        cgroup2=(),
        mount=None,
        own_cgroup=None,
        v1_controllers=frozenset({"memory"}),
    )
    a = assess(legacy)
    assert a.verdict is Verdict.DEGRADED
    assert "cgroup v1" in item(a, "cgroup-v2").detail
    none = assess(legacy._replace(mode=HostMode.NONE, v1_controllers=frozenset()))
    assert "mount -t cgroup2" in (item(none, "cgroup-v2").fix or "")


def test_cannot_run_when_nothing_works() -> None:
    d = HYBRID._replace(oom_score_adj_writable=False)
    a = assess(d)
    assert a.verdict is Verdict.CANNOT_RUN
    assert a.exit_code == 2
    assert item(a, "oom_score_adj").level is CheckLevel.FAIL


def test_cgroups_fine_but_oom_score_adj_unwritable_is_degraded() -> None:
    a = assess(READY._replace(oom_score_adj_writable=False))
    assert a.verdict is Verdict.DEGRADED


def test_old_kernel_features_warn_only() -> None:
    a = assess(READY._replace(kernel_release="5.10.0", cgroup_kill=False, memory_peak=False))
    assert a.verdict is Verdict.READY
    assert item(a, "cgroup.kill").level is CheckLevel.WARN
    assert item(a, "memory.peak").level is CheckLevel.WARN


def test_no_psi_and_unaccounted_swap_warn() -> None:
    a = assess(READY._replace(psi_system=False, swap_bytes=1 << 30, memory_swap_max=False))
    assert item(a, "psi").level is CheckLevel.WARN
    swap = item(a, "swap")
    assert swap.level is CheckLevel.WARN and "1024 MiB" in swap.detail
    assert swap.fix is not None and "swapaccount=1" in swap.fix
    assert a.verdict is Verdict.READY


def test_render_says_each_fix_once() -> None:
    text = check.render(assess(HYBRID), HYBRID)
    assert "hybrid cgroups" in text.splitlines()[0]
    assert text.count("systemd.unified_cgroup_hierarchy=1") == 1
    assert "fix: as above" in text
    assert text.rstrip().endswith("(exit 1)")


def test_command_human_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    import oomguard.cgroup.discover as dsc

    monkeypatch.setattr(dsc, "discover", lambda: HYBRID)
    runner = CliRunner()
    res = runner.invoke(check.command, [], standalone_mode=False)
    assert res.exception is None
    assert res.return_value == 1
    assert "this host is hybrid" in res.output
    res = runner.invoke(check.command, ["--json"], standalone_mode=False)
    assert res.return_value == 1
    data = json.loads(res.output)
    assert data["verdict"] == "degraded"
    assert data["exit_code"] == 1
    keys = {i["key"]: i for i in data["items"]}
    assert keys["cgroup-v2"]["level"] == "fail"
    assert "systemd.unified_cgroup_hierarchy=1" in keys["cgroup-v2"]["fix"]
    assert data["facts"]["mode"] == "hybrid"
    assert data["facts"]["mount"]["path"] == "/sys/fs/cgroup/unified"  # records keep names
    assert data["facts"]["v1_controllers"] == ["memory", "pids"]


def test_command_ready_exits_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    import oomguard.cgroup.discover as dsc

    monkeypatch.setattr(dsc, "discover", lambda: READY)
    res = CliRunner().invoke(check.command, ["--json"], standalone_mode=False)
    assert res.return_value == 0
    assert json.loads(res.output)["verdict"] == "ready"


def test_live_check_exit_code_matches_its_json() -> None:
    """End to end on whatever host runs the tests (the build host: hybrid, exit 1)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "oomguard", "check", "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    data = json.loads(proc.stdout)
    assert proc.returncode == data["exit_code"]
    assert data["verdict"] in {"ready", "degraded", "cannot-run"}


def test_kubernetes_oom_group_on_our_cgroup_warns() -> None:
    a = assess(DOCKER_RO._replace(own_oom_group=True, own_memory_max=2 << 30))
    group = item(a, "own-oom-group")
    assert group.level is CheckLevel.WARN
    assert "memory.oom.group=1" in group.detail
    assert group.fix is not None and "reserve" in group.fix
    assert "2G" in item(a, "own-limit").detail
