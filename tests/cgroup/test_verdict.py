"""The host verdict over tables of discovered facts: what `check` reports and what `run`/`exec`
do (degrade and why) come from the same `assess`, so they cannot disagree."""

from __future__ import annotations

import pytest

from oomguard.cgroup import verdict as v
from oomguard.cgroup.discover import Cgroup2Mount, Discovery, HostMode, V1Mount
from oomguard.cgroup.verdict import CheckLevel, Verdict, assess
from tests.cli.test_check import DOCKER_RO, HYBRID, READY

RO = Cgroup2Mount("/sys/fs/cgroup", "/", True, True, True)
#: A session scope of a user, not delegated: the mount is rw, but not for us.
SESSION = READY._replace(
    own_cgroup="/user.slice/user-1000.slice/session-2.scope",
    own_cgroup_raw="/user.slice/user-1000.slice/session-2.scope",
    own_is_root=False,
    own_dir="/sys/fs/cgroup/user.slice/user-1000.slice/session-2.scope",
    own_dir_writable=False,
    mount_writable=False,
    controllers=frozenset({"memory", "pids"}),
    euid=1000,
)
#: A child cgroup whose parent hands down no memory.
NO_MEMORY = READY._replace(
    own_cgroup="/app", own_is_root=False, own_dir="/sys/fs/cgroup/app", controllers=frozenset()
)
LEGACY = READY._replace(
    mode=HostMode.LEGACY,
    cgroup2=(),
    v1=(V1Mount("/sys/fs/cgroup/memory", "/", frozenset({"memory"}), None, False),),
    mount=None,
    own_cgroup=None,
    v1_controllers=frozenset({"memory"}),
)
#: cgroup2 is mounted, only not where it reaches our cgroup; cpu on v1, memory nowhere.
HYBRID_ELSEWHERE = READY._replace(
    mode=HostMode.HYBRID,
    v1=(V1Mount("/sys/fs/cgroup/cpu", "/", frozenset({"cpu"}), None, False),),
    mount=None,
    own_cgroup=None,
    v1_controllers=frozenset({"cpu"}),
)
UNREACHABLE = READY._replace(own_cgroup=None, own_cgroup_raw="/../elsewhere", own_dir=None)
OTHERS = SESSION._replace(own_dir_writable=True, other_procs=(100, 101), euid=0)

CASES: list[tuple[str, Discovery, str | None, Verdict, str | None]] = [
    ("writable v2", READY, None, Verdict.READY, None),
    ("writable v2, explicit root", READY, "/a", Verdict.READY, None),
    ("read-only cgroupfs", DOCKER_RO, None, Verdict.DEGRADED, v.READ_ONLY),
    ("read-only cgroupfs, explicit root", DOCKER_RO, "/a", Verdict.DEGRADED, v.READ_ONLY),
    ("memory on v1", HYBRID, None, Verdict.DEGRADED, v.MEMORY_ON_V1),
    ("memory on v1, explicit root", HYBRID, "/a", Verdict.DEGRADED, v.MEMORY_ON_V1),
    ("legacy", LEGACY, None, Verdict.DEGRADED, v.NO_MOUNT),
    ("no delegation", SESSION, None, Verdict.DEGRADED, v.READ_ONLY),
    ("no memory in our cgroup", NO_MEMORY, None, Verdict.DEGRADED, v.MEMORY_NOT_DELEGATED),
    # The tree may go elsewhere on the mount: what the mount root offers counts.
    ("no memory in our cgroup, explicit root", NO_MEMORY, "/a", Verdict.READY, None),
    (
        "explicit root, memory not at the mount root",
        NO_MEMORY._replace(root_controllers=frozenset({"pids"})),
        "/a",
        Verdict.DEGRADED,
        v.MEMORY_NOT_DELEGATED,
    ),
    # Only a read-only mount rules out an explicit root; the builder says the rest.
    ("no delegation, explicit root", SESSION, "/user.slice/x", Verdict.READY, None),
    ("cgroup2 mounted out of our reach", HYBRID_ELSEWHERE, None, Verdict.DEGRADED, v.NO_MOUNT),
    ("our cgroup unreachable", UNREACHABLE, None, Verdict.DEGRADED, v.OWN_UNREACHABLE),
    # check reports these; run tries and the builder's error names the cause.
    ("other processes share our cgroup", OTHERS, None, Verdict.DEGRADED, None),
    (
        "unreadable cgroup.controllers",
        READY._replace(controllers=None),
        None,
        Verdict.DEGRADED,
        None,
    ),
]


@pytest.mark.parametrize(
    ("facts", "tree_root", "verdict", "degraded"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_verdict_over_facts(
    facts: Discovery, tree_root: str | None, verdict: Verdict, degraded: str | None
) -> None:
    a = assess(facts, tree_root)
    assert (a.verdict, a.degraded) == (verdict, degraded)
    if degraded is not None:
        # What run degrades for, check shows as a failed cgroup item with its fix.
        item = next(i for i in a.items if i.degrades == degraded)
        assert item.level is CheckLevel.FAIL and item.group is v.Group.CGROUP
        assert a.degraded_fix == item.fix


@pytest.mark.parametrize("facts", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_run_never_degrades_where_check_says_ready(facts: Discovery) -> None:
    for root in (None, "/a"):
        a = assess(facts, root)
        assert (a.degraded is None) or a.verdict is not Verdict.READY


def test_a_mount_out_of_reach_is_not_ready_for_check_either() -> None:
    # `check` said "ready" here while `run` degraded ("no cgroup v2 mount").
    a = assess(HYBRID_ELSEWHERE)
    item = next(i for i in a.items if i.key == "cgroup2-mount")
    assert item.level is CheckLevel.FAIL and "mount -t cgroup2" in (item.fix or "")


def test_the_read_only_fix_is_given_for_a_read_only_mount_and_delegation_otherwise() -> None:
    assert "--privileged" in (assess(DOCKER_RO).degraded_fix or "")
    assert "Delegate=yes" in (assess(SESSION).degraded_fix or "")
    assert "unified_cgroup_hierarchy" in (assess(HYBRID).degraded_fix or "")


def test_ready_host_items_are_all_ok_with_an_explicit_root() -> None:
    a = assess(READY, "/oomguard")
    assert all(i.level is CheckLevel.OK for i in a.items)
    # The tree is not under our cgroup, so who else is in it does not matter.
    assert not any(i.key == "own-cgroup" for i in a.items)


def test_read_only_mount_wins_over_no_delegation() -> None:
    a = assess(SESSION._replace(mount=RO, cgroup2=(RO,)))
    item = next(i for i in a.items if i.key == "cgroupfs-writable")
    assert "read-only" in item.detail and a.degraded == v.READ_ONLY
