"""The reaper on the host: tracked statuses, never stealing, orphan draining as a subreaper."""

from __future__ import annotations

import os
import select
import signal
import time
from typing import TYPE_CHECKING

import pytest

from oomguard.runtime.launcher import LaunchSpec, spawn
from oomguard.runtime.reaper import (
    ExitStatus,
    Reaped,
    Reaper,
    become_subreaper,
    is_subreaper,
    should_drain_orphans,
    wait_exited,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from oomguard.runtime.launcher import Child

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}


def wait_readable(fd: int, timeout: float = 20.0) -> None:
    p = select.poll()
    p.register(fd, select.POLLIN)
    assert p.poll(timeout * 1000), f"fd {fd} not readable within {timeout}s"


def start(*argv: str, log: str = "inherit", env: dict[str, str] | None = None) -> Child:
    return spawn(LaunchSpec("t", argv, env or ENV, log=log), None)  # type: ignore[arg-type]


@pytest.fixture
def subreaper() -> Iterator[None]:
    assert not is_subreaper()
    assert become_subreaper() is True
    try:
        yield
    finally:
        assert become_subreaper(False) is True
    assert not is_subreaper()


def _waitid_result(code: int, status: int) -> os.waitid_result:
    # (si_pid, si_uid, si_signo, si_status, si_code)
    return os.waitid_result((123, 0, signal.SIGCHLD, status, code))


def test_exit_status_from_waitid() -> None:
    assert ExitStatus.from_waitid(_waitid_result(os.CLD_EXITED, 3)) == ExitStatus(code=3)
    assert ExitStatus.from_waitid(_waitid_result(os.CLD_KILLED, 9)) == ExitStatus(signal=9)
    assert ExitStatus.from_waitid(_waitid_result(os.CLD_DUMPED, 6)) == ExitStatus(
        signal=6, core=True
    )


def test_exit_status_text_and_shell_code() -> None:
    assert (str(ExitStatus(code=0)), ExitStatus(code=0).shell_code) == ("exit code 0", 0)
    assert (str(ExitStatus(signal=9)), ExitStatus(signal=9).shell_code) == (
        "killed by SIGKILL",
        137,
    )
    assert str(ExitStatus(signal=6, core=True)) == "killed by SIGABRT (core dumped)"
    assert str(ExitStatus(signal=99)) == "killed by signal 99"
    lost = ExitStatus()
    assert (lost.lost, str(lost), lost.shell_code) == (True, "status lost", 255)
    assert not ExitStatus(code=1).lost


def test_reap_collects_tracked_exit_and_is_non_blocking() -> None:
    reaper = Reaper(subreaper=False)
    sleeper = start("sleep", "30")
    quick = start("sh", "-c", "exit 7")
    reaper.track(sleeper.pid)
    reaper.track(quick.pid)
    try:
        wait_readable(quick.pidfd)
        assert reaper.reap() == [Reaped(quick.pid, ExitStatus(code=7), tracked=True)]
        assert reaper.tracked == {sleeper.pid}
        assert reaper.reap() == []  # the sleeper is still running: nothing, no blocking
        sleeper.send_signal(signal.SIGKILL)
        wait_readable(sleeper.pidfd)
        assert reaper.reap() == [Reaped(sleeper.pid, ExitStatus(signal=9), tracked=True)]
        assert reaper.tracked == frozenset()
    finally:
        sleeper.close()
        quick.close()


def test_without_subreaper_untracked_children_are_left_alone() -> None:
    reaper = Reaper(subreaper=False)
    child = start("sh", "-c", "exit 4")
    try:
        wait_readable(child.pidfd)
        assert reaper.reap() == []
        # The status is still there for whoever owns it.
        peek = os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        assert peek is not None and peek.si_status == 4
        assert wait_exited(child.pid) == ExitStatus(code=4)
    finally:
        child.close()


def test_tracked_pid_that_is_not_our_child_reports_a_lost_status() -> None:
    reaper = Reaper(subreaper=False)
    reaper.track(1)  # init is never our child: waitid says ECHILD
    assert reaper.reap() == [Reaped(1, ExitStatus(), tracked=True)]
    assert reaper.tracked == frozenset()


def test_untrack_keeps_the_status_for_someone_else() -> None:
    reaper = Reaper(subreaper=False)
    child = start("true")
    reaper.track(child.pid)
    reaper.untrack(child.pid)
    try:
        wait_readable(child.pidfd)
        assert reaper.reap() == []
    finally:
        assert wait_exited(child.pid) == ExitStatus(code=0)
        child.close()


def test_wait_exited_on_a_non_child_is_lost() -> None:
    assert wait_exited(1) == ExitStatus()


def test_subreaper_flag_round_trip(subreaper: None) -> None:
    assert is_subreaper()
    assert should_drain_orphans()


def test_subreaper_reaps_orphans_of_a_double_forking_shell(subreaper: None, tmp_path: Path) -> None:
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    # The shell backgrounds a grandchild that waits on the fifo, prints its pid, and exits:
    # the grandchild is orphaned and, because we are a subreaper, reparented to us.
    outer = start(
        "sh",
        "-c",
        "sh -c 'read x < \"$FIFO\"; exit 5' & echo $!",
        log="prefix",
        env={**ENV, "FIFO": str(fifo)},
    )
    reaper = Reaper(subreaper=True)
    reaper.track(outer.pid)
    line = b""
    while not line.endswith(b"\n"):
        wait_readable(outer.stdout_fd)
        line += os.read(outer.stdout_fd, 100)
    orphan = int(line)
    orphan_fd = os.pidfd_open(orphan)
    try:
        wait_readable(outer.pidfd)
        assert reaper.reap() == [Reaped(outer.pid, ExitStatus(code=0), tracked=True)]
        assert reaper.orphans_reaped == 0
        with open(os.open(fifo, os.O_WRONLY), "w") as w:  # blocks until the orphan reads
            w.write("go\n")
        wait_readable(orphan_fd)
        assert reaper.reap() == [Reaped(orphan, ExitStatus(code=5), tracked=False)]
        assert reaper.orphans_reaped == 1
        assert reaper.reap() == []
    finally:
        os.close(orphan_fd)
        outer.close()


def test_subreaper_drain_reports_tracked_children_as_tracked(subreaper: None) -> None:
    reaper = Reaper(subreaper=True)
    child = start("sh", "-c", "exit 2")
    other = start("true")
    reaper.track(child.pid)
    try:
        wait_readable(child.pidfd)
        wait_readable(other.pidfd)
        # Straight to the P_ALL drain (reap() would collect the tracked pid first): a tracked
        # pid that turns up there must still be reported as tracked, with its status.
        got = sorted(reaper._drain_orphans(), key=lambda r: r.tracked)
        assert got == [
            Reaped(other.pid, ExitStatus(code=0), tracked=False),
            Reaped(child.pid, ExitStatus(code=2), tracked=True),
        ]
        assert reaper.orphans_reaped == 1
        assert reaper.tracked == frozenset()
    finally:
        child.close()
        other.close()


def test_owned_status_goes_to_its_callback_not_to_reap() -> None:
    reaper = Reaper(subreaper=False)
    owned = start("/bin/sh", "-c", "exit 5")
    plain = start("/bin/sh", "-c", "exit 6")
    got: list[Reaped] = []
    reaper.track(owned.pid, got.append)
    reaper.track(plain.pid)
    for child in (owned, plain):
        wait_readable(child.pidfd)
    out = reaper.reap()
    assert [(r.pid, r.status) for r in out] == [(plain.pid, ExitStatus(code=6))]
    assert [(r.pid, r.status) for r in got] == [(owned.pid, ExitStatus(code=5))]
    assert reaper.tracked == frozenset()
    for child in (owned, plain):
        child.close()


def test_collect_reaps_one_pid_and_kills_its_group_first() -> None:
    reaper = Reaper(subreaper=False)
    other = start("/bin/sleep", "60")
    reaper.track(other.pid)
    # The leader exits at once and leaves a background sleep in its process group.
    child = start("/bin/sh", "-c", "sleep 60 & echo $!", log="prefix")
    got: list[Reaped] = []
    reaper.track(child.pid, got.append, kill_group=True)
    wait_readable(child.pidfd)
    orphan = int(os.read(child.stdout_fd, 100).split()[0])
    assert reaper.collect(other.pid) is False  # still running
    assert reaper.collect(child.pid) is True
    assert got[0].status == ExitStatus(code=0)
    assert reaper.collect(child.pid) is False  # already collected
    # The background sleep got SIGKILL while the leader was still a zombie.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{orphan}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the leader's group was not killed")
    other.send_signal(signal.SIGKILL)
    wait_readable(other.pidfd)
    assert [r.status for r in reaper.reap()] == [ExitStatus(signal=signal.SIGKILL)]
    child.close()
    other.close()
