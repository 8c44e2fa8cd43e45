"""runtime.release: which pidfds are held for process_mrelease, and that each is closed."""

from __future__ import annotations

import os
import subprocess
from typing import TYPE_CHECKING, Any

import pytest

from oomguard.cgroup.path import CgroupPath
from oomguard.errors import Vanished
from oomguard.events.pidfd import is_alive
from oomguard.runtime import release

if TYPE_CHECKING:
    from collections.abc import Iterator

SLICE = CgroupPath.parse("/og/backup")


class Procs:
    """A CgroupFS stand-in whose procs_recursive answers one list per call."""

    def __init__(self, *answers: list[int] | Exception) -> None:
        self.answers = list(answers)

    def procs_recursive(self, p: CgroupPath) -> list[int]:
        assert p == SLICE
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _pid_of(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return int(next(ln for ln in f if ln.startswith("Pid:")).split()[1])


def test_members_listed_twice_and_alive_are_held(
    sleepers: list[subprocess.Popen[bytes]],
) -> None:
    a, b, c = (p.pid for p in sleepers)
    held = release.hold_members(Procs([a, b, c], [a, b, c]), SLICE, skip=c)  # type: ignore[arg-type]
    try:
        assert sorted(_pid_of(fd) for fd in held) == sorted([a, b])
        assert all(is_alive(fd) for fd in held)
    finally:
        release.release(held)


def test_a_pid_gone_from_the_slice_or_dead_before_the_check_is_not_held(
    sleepers: list[subprocess.Popen[bytes]],
) -> None:
    a, b, c = sleepers
    before = _open_fds()
    fs = Procs([a.pid, b.pid, c.pid], [a.pid, c.pid])  # b moved out of the slice meanwhile
    held = release.hold_members(fs, SLICE)  # type: ignore[arg-type]
    assert sorted(_pid_of(fd) for fd in held) == sorted([a.pid, c.pid])
    release.release(held)
    # A pid still listed whose pidfd's process has exited: its pid may be anyone's by now.
    c.kill()
    c.wait()
    held = release.hold_members(Procs([a.pid, c.pid], [a.pid, c.pid]), SLICE)  # type: ignore[arg-type]
    assert [_pid_of(fd) for fd in held] == [a.pid]
    release.release(held)
    assert _open_fds() == before, "every pidfd not held is closed at once, the rest by release"


def test_a_vanished_slice_leaves_no_pidfd_open(sleepers: list[subprocess.Popen[bytes]]) -> None:
    before = _open_fds()
    fs = Procs([p.pid for p in sleepers], Vanished("gone"))
    with pytest.raises(Vanished):
        release.hold_members(fs, SLICE)  # type: ignore[arg-type]
    assert _open_fds() == before


def test_at_most_max_pidfds_are_held(
    sleepers: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(release, "MAX_PIDFDS", 2)
    pids = [p.pid for p in sleepers]
    held = release.hold_members(Procs(pids, pids), SLICE)  # type: ignore[arg-type]
    assert len(held) == 2
    release.release(held)


def _fake_mrelease(monkeypatch: pytest.MonkeyPatch, outcome: str) -> list[int]:
    calls: list[int] = []

    def fake(fd: int) -> Any:
        calls.append(fd)
        return outcome

    monkeypatch.setattr(release, "process_mrelease", fake)
    return calls


def test_release_closes_the_owned_pidfds_and_keeps_the_borrowed(
    sleepers: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fake_mrelease(monkeypatch, "released")
    main, other = os.pidfd_open(sleepers[0].pid), os.pidfd_open(sleepers[1].pid)
    try:
        done = release.release([other], [main, -1])
        assert (done.released, done.tried, done.unsupported) == (2, 2, False)
        assert calls == [main, other], "the main process first, a closed pidfd (-1) skipped"
        with pytest.raises(OSError):
            os.fstat(other)  # closed by release
        os.fstat(main)  # still its owner's
    finally:
        os.close(main)


def test_release_stops_trying_where_the_kernel_lacks_it(
    sleepers: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fake_mrelease(monkeypatch, "unsupported")
    fds = [os.pidfd_open(p.pid) for p in sleepers]
    done = release.release(fds)
    assert (done.released, done.tried, done.unsupported) == (0, 1, True)
    assert len(calls) == 1
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_release_counts_only_the_released(
    sleepers: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_mrelease(monkeypatch, "gone")
    done = release.release([os.pidfd_open(p.pid) for p in sleepers])
    assert (done.released, done.tried, done.unsupported) == (0, 3, False)
