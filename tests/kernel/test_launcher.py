"""The launcher on a real cgroup v2 kernel: the service is in its slice before its first
instruction, with its oom_score_adj and its user, and every page it touches is charged there."""

from __future__ import annotations

import os
import pwd
import select
from typing import TYPE_CHECKING

import pytest

from oomguard.errors import LaunchError
from oomguard.runtime.launcher import Child, LaunchSpec, spawn
from oomguard.runtime.reaper import ExitStatus, Reaper

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.kernel

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
M = 1 << 20


@pytest.fixture
def leaf(scratch_cgroup: Path) -> Path:
    """A leaf under the scratch cgroup: the scratch cgroup itself has controllers enabled for
    its children, so (no-internal-process rule) it cannot hold processes."""
    path = scratch_cgroup / "svc"
    path.mkdir()
    return path


def cgroup_name(mount: Path, path: Path) -> str:
    """What /proc/<pid>/cgroup shows for `path` (we run in the root cgroup namespace)."""
    return "/" + str(path.relative_to(mount))


def run(spec: LaunchSpec, cgroup: Path | None) -> tuple[Child, str, ExitStatus]:
    """Spawn into `cgroup`, collect stdout to EOF, reap."""
    fd = os.open(cgroup / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC) if cgroup else None
    try:
        child = spawn(spec, fd, cgroup=str(cgroup) if cgroup else None)
    finally:
        if fd is not None:
            os.close(fd)
    reaper = Reaper(subreaper=False)
    reaper.track(child.pid)
    out = b""
    p = select.poll()
    p.register(child.stdout_fd, select.POLLIN)
    while True:
        assert p.poll(60_000), "no output within 60s"
        chunk = os.read(child.stdout_fd, 65536)
        if not chunk:
            break
        out += chunk
    p = select.poll()
    p.register(child.pidfd, select.POLLIN)
    assert p.poll(60_000)
    (reaped,) = reaper.reap()
    child.close()
    return child, out.decode(), reaped.status


def test_service_is_in_its_slice_from_its_first_instruction(
    cgroup2_mount: Path, leaf: Path
) -> None:
    # cat reads its own /proc/self/cgroup: had the move happened after exec (or from the
    # parent, racing the child), the first allocations would be charged elsewhere.
    spec = LaunchSpec("db", ("cat", "/proc/self/cgroup"), ENV, log="prefix")
    _, out, status = run(spec, leaf)
    assert status == ExitStatus(code=0)
    assert out == f"0::{cgroup_name(cgroup2_mount, leaf)}\n"


def test_every_page_is_charged_to_the_slice(leaf: Path) -> None:
    # dd's 16 MiB buffer must show up in the slice's peak, not in oomguard's cgroup.
    spec = LaunchSpec(
        "backup", ("dd", "if=/dev/zero", "of=/dev/null", "bs=16M", "count=1"), ENV, log="prefix"
    )
    _, _, status = run(spec, leaf)
    assert status == ExitStatus(code=0)
    assert int((leaf / "memory.peak").read_text()) >= 16 * M


def test_oom_score_adj_lowered_for_primary_and_raised_for_sidecar(leaf: Path) -> None:
    for adj in (-999, 800):
        spec = LaunchSpec(
            "db", ("cat", "/proc/self/oom_score_adj"), ENV, oom_score_adj=adj, log="prefix"
        )
        child, out, _ = run(spec, leaf)
        assert int(out) == adj
        assert child.warnings == ()  # root in the guest has CAP_SYS_RESOURCE


def test_runs_as_nobody_with_its_groups_inside_the_slice(cgroup2_mount: Path, leaf: Path) -> None:
    pw = pwd.getpwnam("nobody")
    spec = LaunchSpec(
        "exporter",
        ("sh", "-c", "id -u; id -G; grep ^Groups: /proc/self/status; cat /proc/self/cgroup"),
        ENV,
        user="nobody",
        log="prefix",
    )
    _, out, status = run(spec, leaf)
    assert status == ExitStatus(code=0)
    uid, groups, status_groups, cgroup = out.splitlines()
    expected = set(os.getgrouplist("nobody", pw.pw_gid))
    assert int(uid) == pw.pw_uid
    assert {int(g) for g in groups.split()} == expected
    # The kernel's view: root's supplementary groups are gone, only nobody's are set.
    assert {int(g) for g in status_groups.split()[1:]} == expected
    assert cgroup == f"0::{cgroup_name(cgroup2_mount, leaf)}"


def test_cgroup_with_child_controllers_refuses_processes(scratch_cgroup: Path) -> None:
    # The scratch cgroup has +memory +pids in its subtree_control: writing a pid into it is
    # EBUSY (no-internal-process rule), and the error must say so.
    fd = os.open(scratch_cgroup / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
    try:
        with pytest.raises(LaunchError) as ei:
            spawn(LaunchSpec("db", ("true",), ENV), fd, cgroup="/scratch")
    finally:
        os.close(fd)
    assert (
        ei.value.message == "service.db: cannot join its cgroup /scratch: Device or resource busy"
    )
    assert ei.value.hint and "no-internal-process" in ei.value.hint
