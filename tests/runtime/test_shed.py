"""runtime/shed.py: candidates only from the primary's cgroup, never its main process, pid reuse
guarded, and the shed process tracked until it has exited."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from oomguard.cgroup.path import CgroupPath
from oomguard.runtime.shed import Shedder, ShedSettings, read_status
from tests.cgroup.fakefs import FakeCgroupFS

if TYPE_CHECKING:
    from pathlib import Path

MiB = 1 << 20
DB = CgroupPath.parse("/oomguard/db")
OTHER = CgroupPath.parse("/oomguard/sidecars/backup")
SETTINGS = ShedSettings(
    signal=int(signal.SIGTERM),
    exclude_comm=frozenset({"walwriter"}),
    min_size=16 * MiB,
    cooldown=30.0,
    wait=5.0,
)


def status(comm: str, anon_mib: int, swap_mib: int = 0, shmem_mib: int = 0) -> str:
    return (
        f"Name:\t{comm}\nRssAnon:\t{anon_mib * 1024} kB\nRssShmem:\t{shmem_mib * 1024} kB\n"
        f"VmSwap:\t{swap_mib * 1024} kB\n"
    )


#: What /proc would say: the postmaster (main), backends, a sidecar's big process elsewhere.
PROC = {
    100: status("postgres", 900),  # the main process: the largest, never shed
    201: status("postgres", 40, shmem_mib=500),
    202: status("postgres", 700),  # the runaway backend
    203: status("walwriter", 800),  # excluded by name
    204: status("postgres", 8),  # below min_size
    900: status("backup", 2000),  # outside the primary's slice
}


@pytest.fixture
def fake(tmp_path: Path) -> FakeCgroupFS:
    fs = FakeCgroupFS(tmp_path / "cg")
    for cg in ("/oomguard", "/oomguard/db", "/oomguard/sidecars", "/oomguard/sidecars/backup"):
        fs.mkdir(CgroupPath.parse(cg))
    for pid in (100, 201, 202, 203, 204):
        fs.add_proc(DB, pid)
    fs.add_proc(OTHER, 900)
    return fs


def shedder(fs: FakeCgroupFS) -> Shedder:
    return Shedder(fs, DB, SETTINGS, status=PROC.get)


def test_the_candidate_is_the_largest_private_process_of_the_slice_only(
    fake: FakeCgroupFS,
) -> None:
    sh = shedder(fake)
    assert {p.pid for p in sh.processes()} == {100, 201, 202, 203, 204}
    pick = sh.candidate(main_pid=100)
    assert pick is not None and pick.pid == 202 and pick.private == 700 * MiB


def test_a_process_gone_between_listing_and_reading_is_skipped(fake: FakeCgroupFS) -> None:
    sh = Shedder(fake, DB, SETTINGS, status=lambda pid: None if pid == 202 else PROC.get(pid))
    pick = sh.candidate(main_pid=100)
    assert pick is not None and pick.pid == 201


def test_a_vanished_slice_has_no_candidate(fake: FakeCgroupFS) -> None:
    sh = Shedder(fake, CgroupPath.parse("/oomguard/gone"), SETTINGS, status=PROC.get)
    assert sh.candidate(main_pid=100) is None


def test_shed_signals_a_member(fake: FakeCgroupFS) -> None:
    sh = shedder(fake)
    assert sh.shed(202, main_pid=100, now=0.0) == "sent"
    assert fake.signals == [(202, signal.SIGTERM)]


def test_never_the_main_process_nor_a_process_outside_the_slice(fake: FakeCgroupFS) -> None:
    sh = shedder(fake)
    assert sh.shed(100, main_pid=100, now=0.0) == "main"
    # A pid read from this slice that has since been reused outside it (or moved away).
    assert sh.shed(900, main_pid=100, now=0.0) == "gone"
    assert sh.shed(4242, main_pid=100, now=0.0) == "gone"  # no such process
    assert fake.signals == []


def test_signal_member_rechecks_membership_after_pinning(fake: FakeCgroupFS) -> None:
    # The pid is pinned, then found to belong elsewhere: nothing is sent.
    pinned: list[int] = []
    real_open = fake._sys_pidfd_open

    def pin_then_move(pid: int) -> int | None:
        pinned.append(pid)
        fd = real_open(pid)
        fake.add_proc(OTHER, pid)  # the number now names a process outside the slice
        return fd

    fake._sys_pidfd_open = pin_then_move  # type: ignore[method-assign]
    assert fake.signal_member(DB, 202, int(signal.SIGTERM)) is None
    assert pinned == [202] and fake.signals == []


class _RealSignals(FakeCgroupFS):
    """A fake tree whose pidfds and signals are real (for one real child process)."""

    def _sys_pidfd_open(self, pid: int) -> int | None:
        return os.pidfd_open(pid)

    def _sys_signal(self, pid: int, pidfd: int, sig: int) -> None:
        signal.pidfd_send_signal(pidfd, sig)


def test_busy_until_the_shed_process_has_exited(tmp_path: Path) -> None:
    fs = _RealSignals(tmp_path / "cg")
    fs.mkdir(CgroupPath.parse("/oomguard"))
    fs.mkdir(DB)
    child = subprocess.Popen(["sleep", "30"])
    try:
        fs.add_proc(DB, child.pid)
        sh = Shedder(fs, DB, SETTINGS, status=lambda pid: status("sleep", 64))
        # SIGSTOP first: the process cannot act on SIGTERM until continued, so "busy" is seen.
        os.kill(child.pid, signal.SIGSTOP)
        assert sh.shed(child.pid, main_pid=1, now=0.0) == "sent"
        assert sh.busy(1.0) == child.pid
        os.kill(child.pid, signal.SIGCONT)
        child.wait(timeout=10)
        deadline = time.monotonic() + 5
        while sh.busy(1.0) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sh.busy(1.0) is None
        assert child.returncode == -signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        sh.close()


def test_busy_ends_at_the_wait_bound(tmp_path: Path) -> None:
    fs = _RealSignals(tmp_path / "cg")
    fs.mkdir(CgroupPath.parse("/oomguard"))
    fs.mkdir(DB)
    child = subprocess.Popen(["sleep", "30"])
    try:
        fs.add_proc(DB, child.pid)
        ignore = ShedSettings(int(signal.SIGCONT), frozenset(), 0, 30.0, wait=5.0)
        sh = Shedder(fs, DB, ignore, status=lambda pid: status("sleep", 64))
        assert sh.shed(child.pid, main_pid=1, now=100.0) == "sent"
        assert sh.busy(104.9) == child.pid  # SIGCONT does not end it
        assert sh.busy(105.0) is None  # the ladder moves on without it
    finally:
        child.kill()
        child.wait()


def test_read_status_of_this_process_and_of_none() -> None:
    text = read_status(os.getpid())
    assert text is not None and "RssAnon:" in text
    assert read_status(2**22 + 7) is None
