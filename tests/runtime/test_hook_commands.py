"""Hooks run through runtime/oneshot.py on the host: a hook that exits is collected with its
status, one that hangs is killed with its whole group at its timeout, one that cannot start
says why; nothing is left running."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from typing import TYPE_CHECKING

from oomguard.runtime.launcher import LaunchSpec
from oomguard.runtime.oneshot import OneshotResult, OneshotRunner
from oomguard.runtime.reaper import Reaper

if TYPE_CHECKING:
    from pathlib import Path

    from oomguard.events.loop import Handler


class Loop:
    """A tiny poll loop standing in for the supervisor's."""

    def __init__(self) -> None:
        self.handlers: dict[int, Handler] = {}

    def add(self, fd: int, mask: int, handler: Handler) -> None:
        assert mask == select.EPOLLIN
        self.handlers[fd] = handler

    def remove(self, fd: int) -> None:
        self.handlers.pop(fd, None)

    def turn(self, timeout: float = 0.05) -> None:
        poller = select.poll()
        for fd in self.handlers:
            poller.register(fd, select.POLLIN)
        for fd, mask in poller.poll(timeout * 1000):
            handler = self.handlers.get(fd)
            if handler is not None:
                handler(mask)


def spec(*argv: str) -> LaunchSpec:
    return LaunchSpec(name="hook:test", argv=argv, env={"PATH": os.environ["PATH"]}, cwd="/")


def until(
    loop: Loop, runner: OneshotRunner, done: list[OneshotResult], seconds: float = 20
) -> None:
    deadline = time.monotonic() + seconds
    while not done and time.monotonic() < deadline:
        loop.turn()
        runner.tick(time.monotonic())
    assert done, "no result"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_an_exiting_hook_is_collected_with_its_status() -> None:
    loop, done = Loop(), []
    runner = OneshotRunner(loop, Reaper(subreaper=False))
    child = runner.run(spec("/bin/sh", "-c", "exit 3"), None, timeout=10, on_done=done.append)
    assert child is not None
    until(loop, runner, done)
    (result,) = done
    assert result.outcome == "exited" and result.status is not None
    assert result.status.code == 3 and not result.ok
    assert result.describe() == str(result.status)
    assert loop.handlers == {} and runner.deadline() is None


def test_a_hanging_hook_is_killed_with_its_group_at_its_timeout(tmp_path: Path) -> None:
    loop, done = Loop(), []
    runner = OneshotRunner(loop, Reaper(subreaper=False))
    marker = tmp_path / "grandchild"
    script = f"trap '' TERM; sleep 600 & echo $! > {marker}; wait"
    started = time.monotonic()
    child = runner.run(spec("/bin/sh", "-c", script), None, timeout=1.0, on_done=done.append)
    assert child is not None
    until(loop, runner, done)
    (result,) = done
    assert result.outcome == "timed_out" and not result.ok
    assert 1.0 <= time.monotonic() - started < 5.0
    assert "timed out" in result.describe()
    grandchild = int(marker.read_text())
    deadline = time.monotonic() + 10
    while (alive(child.pid) or alive(grandchild)) and time.monotonic() < deadline:
        loop.turn()
    assert not alive(child.pid) and not alive(grandchild)
    assert loop.handlers == {}  # collected quietly after its result


def test_a_hook_that_cannot_start_says_why() -> None:
    loop, done = Loop(), []
    runner = OneshotRunner(loop, Reaper(subreaper=False))
    assert runner.run(spec("/nonexistent/hook"), None, timeout=5, on_done=done.append) is None
    (result,) = done
    assert result.outcome == "failed_to_start" and result.error
    assert result.describe().startswith("failed to start: ")


def test_close_kills_what_still_runs_without_a_result() -> None:
    loop, done = Loop(), []
    runner = OneshotRunner(loop, Reaper(subreaper=False))
    child = runner.run(spec(sys.executable, "-c", "import time; time.sleep(600)"), None,
                       timeout=60, on_done=done.append)  # fmt: skip
    assert child is not None
    pid = child.pid
    runner.close()
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid) and done == []
    # close() gives up on a child still dying (its status is nobody's): collect it here, so no
    # zombie is left to the tests after this one.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
