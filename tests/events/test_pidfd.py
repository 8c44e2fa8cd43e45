"""pidfd helpers: readiness at exit, ESRCH as None/False."""

from __future__ import annotations

import os
import select
import signal

from oomguard.events.loop import EPOLLIN, Loop
from oomguard.events.pidfd import close_pidfd, is_alive, open_pidfd, send_signal
from oomguard.runtime.launcher import LaunchSpec, spawn
from oomguard.runtime.reaper import ExitStatus, Reaper, wait_exited

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}


def test_pidfd_becomes_readable_in_the_loop_when_the_process_exits() -> None:
    child = spawn(LaunchSpec("s", ("sleep", "30"), ENV), None)
    reaper = Reaper(subreaper=False)
    reaper.track(child.pid)
    try:
        with Loop[str]() as loop:
            loop.add(child.pidfd, EPOLLIN, "s")
            assert loop.poll(0) == []
            assert is_alive(child.pidfd)
            assert send_signal(child.pidfd, signal.SIGKILL) is True
            assert loop.poll(20) == [("s", EPOLLIN)]
            assert not is_alive(child.pidfd)  # a zombie counts as exited
            (reaped,) = reaper.reap()
            assert reaped.status == ExitStatus(signal=9)
            assert send_signal(child.pidfd, signal.SIGKILL) is False  # reaped: ESRCH
            loop.remove(child.pidfd)
    finally:
        child.close()


def test_open_pidfd_of_a_zombie_works_and_of_a_reaped_pid_is_none() -> None:
    child = spawn(LaunchSpec("s", ("true",), ENV), None)
    p = select.poll()
    p.register(child.pidfd, select.POLLIN)
    assert p.poll(20_000)
    zombie_fd = open_pidfd(child.pid)
    assert zombie_fd is not None and not is_alive(zombie_fd)
    assert close_pidfd(zombie_fd) == -1
    wait_exited(child.pid)
    assert open_pidfd(child.pid) is None
    child.close()
    assert child.pidfd == -1


def test_open_pidfd_of_self_is_alive() -> None:
    fd = open_pidfd(os.getpid())
    assert fd is not None
    try:
        assert is_alive(fd)
    finally:
        close_pidfd(fd)
    assert close_pidfd(-1) == -1
