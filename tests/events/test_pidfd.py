"""pidfd helpers: readiness at exit, ESRCH as None/False."""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
from typing import TYPE_CHECKING

import pytest

from oomguard.events import pidfd
from oomguard.events.loop import EPOLLIN, Loop
from oomguard.events.pidfd import close_pidfd, is_alive, open_pidfd, send_signal
from oomguard.runtime.launcher import LaunchSpec, spawn
from oomguard.runtime.reaper import ExitStatus, Reaper, wait_exited

if TYPE_CHECKING:
    from collections.abc import Callable

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}


def test_pidfd_becomes_readable_in_the_loop_when_the_process_exits() -> None:
    child = spawn(LaunchSpec("s", ("sleep", "30"), ENV), None)
    reaper = Reaper(subreaper=False)
    reaper.track(child.pid)
    try:
        with Loop() as loop:
            seen: list[int] = []
            loop.add(child.pidfd, EPOLLIN, seen.append)
            assert loop.run_once(0) == 0
            assert is_alive(child.pidfd)
            assert send_signal(child.pidfd, signal.SIGKILL) is True
            assert loop.run_once(20) == 1 and seen == [EPOLLIN]
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


# -- process_mrelease -------------------------------------------------------------------------


def _fake(*errnos: int) -> tuple[pidfd.MreleaseSyscall, list[int]]:
    """A MreleaseSyscall whose kernel answers `errnos` in turn; also the pidfds it was given."""
    seen: list[int] = []
    answers = list(errnos)

    def call(fd: int) -> int:
        seen.append(fd)
        return answers.pop(0)

    return pidfd.MreleaseSyscall(lambda: call), seen


@pytest.mark.parametrize(
    ("err", "want"),
    [
        (0, "released"),
        (errno.ESRCH, "gone"),
        (errno.EINVAL, "not_dying"),
        (errno.EAGAIN, "busy"),
        (errno.EINTR, "busy"),
        (errno.EBADF, "failed"),
    ],
)
def test_mrelease_maps_each_errno(err: int, want: str) -> None:
    mrelease, seen = _fake(err)
    assert mrelease(7) == want
    assert seen == [7]


def test_mrelease_enosys_is_unsupported_and_never_called_again() -> None:
    mrelease, seen = _fake(errno.ENOSYS)
    assert mrelease(7) == "unsupported"
    assert mrelease(8) == "unsupported"
    assert seen == [7], "after ENOSYS the syscall is not tried again"


def test_mrelease_without_the_syscall_is_unsupported() -> None:
    resolved: list[bool] = []

    def resolve() -> None:
        resolved.append(True)

    mrelease = pidfd.MreleaseSyscall(resolve)
    assert mrelease(7) == "unsupported"
    assert mrelease(8) == "unsupported"
    assert resolved == [True], "resolved once, on first use"


def test_mrelease_of_a_closed_pidfd_is_not_called() -> None:
    mrelease, seen = _fake()
    assert mrelease(-1) == "unsupported"
    assert seen == []


def test_mrelease_resolves_lazily() -> None:
    """Constructing one (at import) resolves nothing: no ctypes work before the first use."""
    resolved: list[bool] = []
    pidfd.MreleaseSyscall(lambda: resolved.append(True) or None)
    assert resolved == []


def test_mrelease_of_a_live_process_is_refused_harmlessly() -> None:
    """On this host: a process that is not dying is never touched (EINVAL), or the kernel has
    no such syscall (ENOSYS); either way the process keeps running."""
    proc = subprocess.Popen(["sleep", "30"])
    fd = os.pidfd_open(proc.pid)
    try:
        assert pidfd.MreleaseSyscall()(fd) in ("not_dying", "unsupported")
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
        os.close(fd)


def test_mrelease_of_an_exited_process_is_gone() -> None:
    proc = subprocess.Popen(["true"])
    fd = os.pidfd_open(proc.pid)
    try:
        proc.wait()
        assert pidfd.MreleaseSyscall()(fd) in ("gone", "unsupported")
    finally:
        os.close(fd)


def test_mrelease_prepare_resolves_once_ahead_of_the_first_call() -> None:
    resolved: list[bool] = []

    def resolve() -> Callable[[int], int]:
        resolved.append(True)
        return lambda fd: 0

    mrelease = pidfd.MreleaseSyscall(resolve)
    assert mrelease.prepare() is True
    assert mrelease.prepare() is True
    assert mrelease(7) == "released"
    assert resolved == [True]
    assert pidfd.MreleaseSyscall(lambda: None).prepare() is False
