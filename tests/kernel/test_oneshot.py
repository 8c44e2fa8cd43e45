"""Short commands (runtime/oneshot.py) on a real cgroup v2 kernel: a oneshot runs in the cgroup
it is given, and one that hangs is killed at its timeout, its whole process group with it."""

from __future__ import annotations

import os
import select
import time
from typing import TYPE_CHECKING

import pytest

from oomguard.runtime.launcher import LaunchSpec
from oomguard.runtime.oneshot import OneshotResult, OneshotRunner
from oomguard.runtime.reaper import ExitStatus, Reaper

from .support import procs

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

pytestmark = pytest.mark.kernel

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}


class HandlerLoop:
    """add(fd, mask, handler) over epoll: the engine's loop interface."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.handlers: dict[int, Callable[[int], None]] = {}

    def add(self, fd: int, mask: int, handler: Callable[[int], None], /) -> None:
        self.ep.register(fd, mask)
        self.handlers[fd] = handler

    def remove(self, fd: int, /) -> None:
        if self.handlers.pop(fd, None) is not None:
            self.ep.unregister(fd)

    def serve(self, runner: OneshotRunner, until: Callable[[], bool], limit: float) -> None:
        end = time.monotonic() + limit
        while not until():
            assert time.monotonic() < end, "timed out waiting"
            deadline = runner.deadline()
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            for fd, mask in self.ep.poll(wait):
                handler = self.handlers.get(fd)
                if handler is not None:
                    handler(mask)
            runner.tick(time.monotonic())


@pytest.fixture
def leaf(scratch_cgroup: Path) -> Path:
    path = scratch_cgroup / "probe"
    path.mkdir()
    return path


def run(
    leaf: Path, argv: tuple[str, ...], timeout: float
) -> tuple[OneshotRunner, HandlerLoop, list[OneshotResult], int]:
    loop = HandlerLoop()
    runner = OneshotRunner(loop, Reaper(subreaper=False))
    results: list[OneshotResult] = []
    fd = os.open(leaf / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
    try:
        shot = runner.run(
            LaunchSpec("probe", argv, ENV), fd, timeout=timeout, on_done=results.append
        )
    finally:
        os.close(fd)
    assert shot is not None
    return runner, loop, results, shot.pid


def test_oneshot_runs_in_its_cgroup_and_reports_its_exit(leaf: Path) -> None:
    runner, loop, results, _ = run(leaf, ("/bin/sh", "-c", "cat /proc/self/cgroup; exit 2"), 60)
    loop.serve(runner, lambda: bool(results), 60)
    (res,) = results
    assert res.outcome == "exited"
    assert res.status == ExitStatus(code=2)
    assert res.output.decode().strip().endswith("/probe")
    loop.serve(runner, lambda: not runner.running, 30)


def test_hanging_oneshot_is_killed_at_its_timeout(leaf: Path) -> None:
    """A probe or hook that hangs (here a shell and its background child, both sleeping) is
    killed with its whole process group at its timeout; its cgroup is empty afterwards."""
    argv = ("/bin/sh", "-c", "sleep 600 & sleep 600")
    start = time.monotonic()
    runner, loop, results, pid = run(leaf, argv, 2.0)
    assert len(procs(leaf)) >= 1
    loop.serve(runner, lambda: bool(results), 60)
    took = time.monotonic() - start
    (res,) = results
    assert res.outcome == "timed_out"
    assert res.status is None
    # At its timeout, not at the sleep's end: generous for a TCG guest, far below 600 s.
    assert 2.0 <= took < 20.0, took
    loop.serve(runner, lambda: not runner.running, 30)
    end = time.monotonic() + 30
    while procs(leaf) and time.monotonic() < end:
        time.sleep(0.1)
    assert procs(leaf) == [], f"left behind in the probe's cgroup: {procs(leaf)} (leader {pid})"
