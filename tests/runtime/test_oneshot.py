"""Short commands with a timeout (runtime/oneshot.py) on the host: no cgroup (procs_fd None),
real processes, a tiny handler-per-fd epoll loop standing in for the supervisor's."""

from __future__ import annotations

import select
import signal
import time
from typing import TYPE_CHECKING

import pytest

from oomguard.errors import LaunchError
from oomguard.runtime import launcher
from oomguard.runtime.oneshot import OUTPUT_TAIL, OneshotResult, OneshotRunner
from oomguard.runtime.reaper import ExitStatus, Reaper, wait_exited

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}


class HandlerLoop:
    """add(fd, mask, handler) over epoll: what the engine's Loop offers."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.handlers: dict[int, Callable[[int], None]] = {}

    def add(self, fd: int, mask: int, handler: Callable[[int], None], /) -> None:
        self.ep.register(fd, mask)
        self.handlers[fd] = handler

    def remove(self, fd: int, /) -> None:
        if self.handlers.pop(fd, None) is not None:
            self.ep.unregister(fd)

    def turn(self, timeout: float) -> None:
        for fd, mask in self.ep.poll(timeout):
            handler = self.handlers.get(fd)
            if handler is not None:
                handler(mask)


@pytest.fixture
def loop() -> Iterator[HandlerLoop]:
    lp = HandlerLoop()
    yield lp
    lp.ep.close()


def spec(*argv: str) -> launcher.LaunchSpec:
    return launcher.LaunchSpec("probe", argv, ENV)


def run_until_done(
    runner: OneshotRunner, loop: HandlerLoop, results: list[OneshotResult], limit: float = 20.0
) -> None:
    end = time.monotonic() + limit
    while not results:
        assert time.monotonic() < end, "no result"
        deadline = runner.deadline()
        wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
        loop.turn(wait)
        runner.tick(time.monotonic())


def test_exit_code_and_output_tail(loop: HandlerLoop) -> None:
    reaper = Reaper(subreaper=False)
    runner = OneshotRunner(loop, reaper)
    results: list[OneshotResult] = []
    shot = runner.run(
        spec("/bin/sh", "-c", "echo hello; echo oops >&2; exit 3"),
        None,
        timeout=10,
        on_done=results.append,
    )
    assert shot is not None
    run_until_done(runner, loop, results)
    (res,) = results
    assert res.outcome == "exited"
    assert res.status == ExitStatus(code=3)
    assert not res.ok
    assert b"hello" in res.output and b"oops" in res.output
    assert res.describe() == "exit code 3"
    assert res.fields()["code"] == 3
    # Everything is closed and forgotten.
    assert runner.running == []
    assert loop.handlers == {}
    assert shot.child.pidfd == -1


def test_exit_zero_is_ok(loop: HandlerLoop) -> None:
    runner = OneshotRunner(loop, Reaper(subreaper=False))
    results: list[OneshotResult] = []
    runner.run(spec("/bin/true"), None, timeout=10, on_done=results.append)
    run_until_done(runner, loop, results)
    assert results[0].ok
    assert results[0].outcome == "exited"


def test_output_keeps_only_the_tail(loop: HandlerLoop) -> None:
    runner = OneshotRunner(loop, Reaper(subreaper=False))
    results: list[OneshotResult] = []
    script = "i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done"
    runner.run(spec("/bin/sh", "-c", script), None, timeout=20, on_done=results.append)
    run_until_done(runner, loop, results)
    out = results[0].output
    assert len(out) <= OUTPUT_TAIL
    assert out.endswith(b"line1999\n")
    assert results[0].fields()["output"] == "line1999"


def gone(pid: int, timeout: float = 10.0) -> bool:
    """True once `pid` no longer runs (gone, or a zombie waiting for whoever adopted it)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_hanging_command_is_killed_at_its_timeout_with_its_group(loop: HandlerLoop) -> None:
    reaper = Reaper(subreaper=False)
    runner = OneshotRunner(loop, reaper)
    results: list[OneshotResult] = []
    # The shell's background child writes its pid: it must die with the group.
    script = "sleep 60 >/dev/null 2>&1 & echo $!; exec sleep 60"
    start = time.monotonic()
    shot = runner.run(spec("/bin/sh", "-c", script), None, timeout=0.5, on_done=results.append)
    assert shot is not None
    run_until_done(runner, loop, results)
    took = time.monotonic() - start
    (res,) = results
    assert res.outcome == "timed_out"
    assert res.status is None
    assert not res.ok
    assert "timed out" in res.describe()
    assert took < 5.0
    # The killed leader is collected quietly afterwards; no second callback.
    end = time.monotonic() + 10
    while runner.running and time.monotonic() < end:
        loop.turn(0.2)
    assert runner.running == []
    assert len(results) == 1
    assert gone(int(res.output.split()[0]))


def test_background_child_is_killed_when_leader_exits(loop: HandlerLoop) -> None:
    runner = OneshotRunner(loop, Reaper(subreaper=False))
    results: list[OneshotResult] = []
    script = "sleep 60 >/dev/null 2>&1 & echo $!; exit 0"
    runner.run(spec("/bin/sh", "-c", script), None, timeout=10, on_done=results.append)
    run_until_done(runner, loop, results)
    assert results[0].ok
    assert gone(int(results[0].output.split()[0]))


def test_failed_to_start_is_reported_before_run_returns(loop: HandlerLoop) -> None:
    runner = OneshotRunner(loop, Reaper(subreaper=False))
    results: list[OneshotResult] = []
    shot = runner.run(spec("/nonexistent/probe"), None, timeout=5, on_done=results.append)
    assert shot is None
    (res,) = results
    assert res.outcome == "failed_to_start"
    assert res.error is not None and "/nonexistent/probe" in res.error
    assert res.describe().startswith("failed to start")
    assert loop.handlers == {}


def test_spawn_gets_pipes_pdeathsig_and_a_bounded_exec_wait(loop: HandlerLoop) -> None:
    seen: dict[str, object] = {}

    def fake_spawn(
        sp: launcher.LaunchSpec, procs_fd: int | None, *, cgroup: str | None, exec_timeout: float
    ) -> launcher.Child:
        seen.update(log=sp.log, death=sp.death_signal, fd=procs_fd, cg=cgroup, wait=exec_timeout)
        raise LaunchError("service.probe: nope")

    runner = OneshotRunner(loop, Reaper(subreaper=False), spawn=fake_spawn)
    results: list[OneshotResult] = []
    runner.run(spec("/bin/true"), 7, timeout=60, on_done=results.append, cgroup="/x")
    assert seen == {"log": "prefix", "death": signal.SIGKILL, "fd": 7, "cg": "/x", "wait": 5.0}
    assert results[0].outcome == "failed_to_start"


def test_sigchld_path_reap_hands_status_to_the_oneshot(loop: HandlerLoop) -> None:
    """The supervisor's reap() (SIGCHLD) may collect a oneshot first: the status still goes to
    the oneshot, and reap() does not return it."""
    reaper = Reaper(subreaper=False)
    runner = OneshotRunner(loop, reaper)
    results: list[OneshotResult] = []
    shot = runner.run(spec("/bin/sh", "-c", "exit 4"), None, timeout=10, on_done=results.append)
    assert shot is not None
    p = select.poll()
    p.register(shot.child.pidfd, select.POLLIN)
    assert p.poll(10_000)
    assert reaper.reap() == []
    assert results[0].status == ExitStatus(code=4)
    assert runner.running == []


def test_deadline_and_close(loop: HandlerLoop) -> None:
    clock = [100.0]
    reaper = Reaper(subreaper=False)
    runner = OneshotRunner(loop, reaper, clock=lambda: clock[0])
    results: list[OneshotResult] = []
    assert runner.deadline() is None
    shot = runner.run(spec("/bin/sleep", "60"), None, timeout=3, on_done=results.append)
    assert shot is not None
    assert runner.deadline() == 103.0
    runner.tick(102.9)
    assert results == []
    runner.close()
    # close() kills without a callback, and leaves nothing registered.
    assert results == []
    assert runner.running == []
    assert loop.handlers == {}
    assert shot.child.pidfd == -1
    # The killed process was untracked (or collected): it is not left running.
    assert wait_exited(shot.pid) in (ExitStatus(signal=signal.SIGKILL), ExitStatus())
