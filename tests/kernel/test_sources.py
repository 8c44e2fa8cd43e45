"""Event sources on a real cgroup v2 kernel: inotify on memory.events at an OOM kill, pidfd and
reaper on the OOM SIGKILL, PSI triggers firing and erroring, removal of a slice."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import pytest

from oomguard.events.inotify import InotifyWatcher, WatchEvent
from oomguard.events.loop import EPOLLERR, EPOLLIN, EPOLLPRI, Loop
from oomguard.events.psi import PsiWatch
from oomguard.runtime.launcher import Child, LaunchSpec, spawn
from oomguard.runtime.reaper import ExitStatus, Reaper

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.kernel

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
#: Touches 256 MiB in one buffer (read() from /dev/zero fills it): far over a 32M slice.
HOG = ("dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1")


def counters(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}


@pytest.fixture
def leaf(scratch_cgroup: Path) -> Path:
    path = scratch_cgroup / "svc"
    path.mkdir()
    (path / "memory.swap.max").write_text("0")  # no swap: the hog cannot escape the limit
    return path


class Tagged:
    """A `Loop` whose handlers record ``(name, mask)``: `poll` runs one turn and returns what
    fired, so the tests assert which source woke the loop, with which mask."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.seen: list[tuple[str, int]] = []

    def add(self, fd: int, mask: int, name: str) -> None:
        self.loop.add(fd, mask, lambda ready: self.seen.append((name, ready)))

    def remove(self, fd: int) -> None:
        self.loop.remove(fd)

    def poll(self, timeout: float) -> list[tuple[str, int]]:
        self.loop.run_once(timeout)
        seen, self.seen = self.seen, []
        return seen


@pytest.fixture
def loop() -> Iterator[Tagged]:
    with Loop() as lp:
        yield Tagged(lp)


def start(argv: tuple[str, ...], cgroup: Path) -> Child:
    fd = os.open(cgroup / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
    try:
        return spawn(LaunchSpec("hog", argv, ENV), fd, cgroup=str(cgroup))
    finally:
        os.close(fd)


def test_oom_kill_raises_inotify_and_pidfd_and_reaps_as_sigkill(leaf: Path, loop: Tagged) -> None:
    (leaf / "memory.max").write_text("32M")
    before = counters(leaf / "memory.events.local")
    reaper = Reaper(subreaper=False)
    with InotifyWatcher[str]() as watcher:
        assert watcher.watch(leaf / "memory.events.local", "svc")
        loop.add(watcher.fileno(), EPOLLIN, "inotify")
        child = start(HOG, leaf)
        reaper.track(child.pid)
        loop.add(child.pidfd, EPOLLIN, "pidfd")
        seen: set[str] = set()
        flags = WatchEvent(0)
        status = None
        deadline = time.monotonic() + 60
        while not {"inotify", "pidfd"} <= seen:
            assert time.monotonic() < deadline, f"only saw {seen}"
            for key, _mask in loop.poll(5):
                seen.add(key)
                if key == "inotify":
                    flags |= dict(watcher.read()).get("svc", WatchEvent(0))
                else:
                    loop.remove(child.pidfd)
                    (reaped,) = reaper.reap()
                    status = reaped.status
        child.close()
        loop.remove(watcher.fileno())
    assert status == ExitStatus(signal=9)
    assert WatchEvent.MODIFIED in flags
    # Diff the counters (never count notifications): exactly one kill happened.
    after = counters(leaf / "memory.events.local")
    assert after["oom_kill"] - before["oom_kill"] == 1


def test_psi_trigger_fires_when_the_slice_is_throttled(leaf: Path, loop: Tagged) -> None:
    # memory.high never OOM-kills: it throttles the allocator, and that stall is memory
    # pressure. 100 ms of it in a 1 s window must fire the trigger.
    (leaf / "memory.high").write_text("8M")
    with PsiWatch(leaf / "memory.pressure", "some", 0.1, 1.0) as trig:
        loop.add(trig.fileno(), EPOLLPRI, "psi")
        assert loop.poll(0) == []  # armed, not fired: the always-set POLLIN is not reported
        child = start(("dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"), leaf)
        try:
            events = loop.poll(60)
            assert events == [("psi", EPOLLPRI)]
        finally:
            (leaf / "cgroup.kill").write_text("1")
            reaper = Reaper(subreaper=False)
            reaper.track(child.pid)
            loop.add(child.pidfd, EPOLLIN, "pidfd")
            assert ("pidfd", EPOLLIN) in loop.poll(60)
            assert [r.status for r in reaper.reap()] == [ExitStatus(signal=9)]
            loop.remove(child.pidfd)
            child.close()
        loop.remove(trig.fileno())
    assert counters(leaf / "memory.events")["high"] > 0


def test_removed_slice_reports_epollerr_on_its_psi_trigger(leaf: Path, loop: Tagged) -> None:
    with PsiWatch(leaf / "memory.pressure", "some", 0.5, 2.0) as trig:
        loop.add(trig.fileno(), EPOLLPRI, "psi")
        assert loop.poll(0) == []
        leaf.rmdir()
        ((key, mask),) = loop.poll(10)
        assert key == "psi" and mask & EPOLLERR
        loop.remove(trig.fileno())


def test_removed_slice_is_reported_vanished_by_its_removal_watch(leaf: Path) -> None:
    with InotifyWatcher[str]() as watcher:
        assert watcher.watch(leaf / "memory.events.local", "svc")
        assert watcher.watch_removal(leaf, "svc")
        leaf.rmdir()
        # The file watch alone would never tell (kernfs sends no IN_IGNORED); the parent's
        # IN_DELETE does, synchronously with rmdir.
        assert watcher.read() == [("svc", WatchEvent.VANISHED)]
        assert watcher.keys() == []


def test_cgroup_events_populated_flip_raises_inotify(leaf: Path, loop: Tagged) -> None:
    with InotifyWatcher[str]() as watcher:
        assert watcher.watch(leaf / "cgroup.events", "svc")
        loop.add(watcher.fileno(), EPOLLIN, "inotify")
        child = start(("true",), leaf)
        reaper = Reaper(subreaper=False)
        reaper.track(child.pid)
        loop.add(child.pidfd, EPOLLIN, "pidfd")
        deadline = time.monotonic() + 30
        while child.pid in reaper.tracked:
            assert time.monotonic() < deadline
            if ("pidfd", EPOLLIN) in loop.poll(5):
                assert [r.status for r in reaper.reap()] == [ExitStatus(code=0)]
        loop.remove(child.pidfd)
        child.close()
        # populated went 0 -> 1 -> 0; the notifications may be coalesced into one.
        assert ("inotify", EPOLLIN) in loop.poll(5)
        assert watcher.read() == [("svc", WatchEvent.MODIFIED)]
        assert counters(leaf / "cgroup.events")["populated"] == 0
        loop.remove(watcher.fileno())
