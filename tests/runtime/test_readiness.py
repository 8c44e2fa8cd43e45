"""Readiness probes (runtime/readiness.py) on the host: command (real oneshots), tcp (a real
listener on loopback), notify (a real socket, credentials from the kernel), through a
handler-per-fd epoll loop and a recording host."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from oomguard.config.compile import ready_spec
from oomguard.config.model import Config
from oomguard.events.sdnotify import NotifyClient
from oomguard.plan import ATTEMPT_MIN, ReadySpec
from oomguard.runtime.launcher import LaunchSpec
from oomguard.runtime.oneshot import OneshotRunner
from oomguard.runtime.readiness import Readiness
from oomguard.runtime.reaper import Reaper

from .test_oneshot import ENV, HandlerLoop

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@dataclass
class Host:
    ready_calls: list[tuple[str, int]] = field(default_factory=list)
    statuses: list[tuple[str, str]] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    members: set[int] = field(default_factory=set)
    launched: list[tuple[str, ...]] = field(default_factory=list)

    def ready(self, name: str, pid: int | None) -> None:
        self.ready_calls.append((name, pid))

    def status(self, name: str, text: str) -> None:
        self.statuses.append((name, text))

    def watchdog_expired(self, name: str) -> None:
        self.expired.append(name)

    def belongs(self, name: str, pid: int) -> bool:
        return pid in self.members

    def probe_launch(self, name: str, argv: tuple[str, ...]) -> tuple[LaunchSpec, int | None]:
        self.launched.append(argv)
        return LaunchSpec(name, argv, ENV), None


@pytest.fixture
def loop() -> Iterator[HandlerLoop]:
    lp = HandlerLoop()
    yield lp
    lp.ep.close()


@pytest.fixture
def host() -> Host:
    return Host()


@pytest.fixture
def readiness(loop: HandlerLoop, host: Host) -> Iterator[Readiness]:
    runner = OneshotRunner(loop, Reaper(subreaper=False))
    rd = Readiness(host, loop, runner, time.monotonic)
    rd.runner = runner  # type: ignore[attr-defined]
    yield rd
    rd.close()
    runner.close()


def serve(rd: Readiness, loop: HandlerLoop, until: object, limit: float = 20.0) -> None:
    runner: OneshotRunner = rd.runner  # type: ignore[attr-defined]
    end = time.monotonic() + limit
    while not until():  # type: ignore[operator]
        assert time.monotonic() < end, "condition not reached"
        dues = [d for d in (rd.deadline(), runner.deadline()) if d is not None]
        wait = min([0.2, *(max(0.0, d - time.monotonic()) for d in dues)])
        loop.turn(wait)
        now = time.monotonic()
        runner.tick(now)
        rd.tick(now)


def test_spec_from_config() -> None:
    cfg = Config.from_mapping(
        {
            "service": {
                "a": {"role": "primary", "command": ["a"], "ready": {"tcp": "localhost:5432"}},
                "b": {"command": ["b"], "ready": {"command": "pg_isready -q", "interval": "2s"}},
                "c": {"command": ["c"], "ready": {"notify": True, "watchdog": "3s"}},
            }
        }
    )
    specs = {n: ready_spec(s.ready) for n, s in cfg.service.items() if s.ready}
    assert all(spec is not None for spec in specs.values())
    assert specs["a"].address == ("127.0.0.1", 5432)  # type: ignore[union-attr]
    assert specs["a"].attempt_timeout == ATTEMPT_MIN  # type: ignore[union-attr]
    assert specs["b"].command == ("pg_isready", "-q")  # type: ignore[union-attr]
    assert specs["b"].interval == 2.0  # type: ignore[union-attr]
    assert (specs["c"].kind, specs["c"].watchdog) == ("notify", 3.0)  # type: ignore[union-attr]


def test_command_probe_retries_until_exit_zero(
    readiness: Readiness, loop: HandlerLoop, host: Host, tmp_path: Path
) -> None:
    flag = tmp_path / "up"
    spec = ReadySpec("command", interval=0.05, timeout=60, command=("test", "-e", str(flag)))
    readiness.add("db", spec)
    readiness.sync("db", 4242, up=False, now=time.monotonic())
    probe = readiness.probes["db"]
    serve(readiness, loop, lambda: probe.attempts >= 2)
    assert host.ready_calls == []
    assert readiness.last_failure("db") == "exit code 1"
    flag.touch()
    serve(readiness, loop, lambda: host.ready_calls)
    assert host.ready_calls == [("db", 4242)]
    assert host.launched[0] == ("test", "-e", str(flag))
    # Ready: nothing more is scheduled.
    assert readiness.deadline() is None


def test_probe_stops_when_the_service_leaves_starting(
    readiness: Readiness, loop: HandlerLoop, host: Host
) -> None:
    spec = ReadySpec("command", interval=0.05, timeout=60, command=("sleep", "30"))
    readiness.add("db", spec)
    readiness.sync("db", 1, up=False, now=time.monotonic())
    runner: OneshotRunner = readiness.runner  # type: ignore[attr-defined]
    serve(readiness, loop, lambda: runner.running)
    readiness.sync("db", None, up=False, now=time.monotonic())
    assert readiness.deadline() is None
    serve(readiness, loop, lambda: not runner.running)
    assert host.ready_calls == []


def test_a_result_for_an_earlier_process_is_dropped(
    readiness: Readiness, loop: HandlerLoop, host: Host
) -> None:
    spec = ReadySpec("command", interval=0.05, timeout=60, command=("true",))
    readiness.add("db", spec)
    now = time.monotonic()
    readiness.sync("db", 1, up=False, now=now)
    probe = readiness.probes["db"]
    probe.tick(now + 1)  # attempt for pid 1 in flight
    readiness.sync("db", 2, up=False, now=now)  # restarted: pid 2
    serve(readiness, loop, lambda: host.ready_calls)
    assert host.ready_calls == [("db", 2)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tcp_probe_refused_then_ready(readiness: Readiness, loop: HandlerLoop, host: Host) -> None:
    port = free_port()
    readiness.add("db", ReadySpec("tcp", interval=0.05, timeout=60, address=("127.0.0.1", port)))
    readiness.sync("db", 7, up=False, now=time.monotonic())
    probe = readiness.probes["db"]
    serve(readiness, loop, lambda: probe.attempts >= 2)
    assert readiness.last_failure("db") == os.strerror(111)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    serve(readiness, loop, lambda: host.ready_calls)
    assert host.ready_calls == [("db", 7)]
    assert loop.handlers == {}
    listener.close()


def test_tcp_attempt_that_hangs_is_abandoned(host: Host, loop: HandlerLoop) -> None:
    """A connect that neither completes nor fails (a blackholed address) is cut off."""
    clock = [0.0]
    rd = Readiness(host, loop, OneshotRunner(loop, Reaper(subreaper=False)), lambda: clock[0])
    # 192.0.2.0/24 is TEST-NET-1: normally unroutable, so the SYN goes nowhere.
    rd.add("db", ReadySpec("tcp", interval=0.1, timeout=60, address=("192.0.2.1", 9)))
    rd.sync("db", 7, up=False, now=0.0)
    rd.tick(0.1)
    probe = rd.probes["db"]
    if probe.deadline() == 0.1 + ATTEMPT_MIN:  # in flight (else: refused/unreachable at once)
        clock[0] = 0.1 + ATTEMPT_MIN
        rd.tick(clock[0])
        assert rd.last_failure("db") == f"connect timed out after {ATTEMPT_MIN:g}s"
        assert loop.handlers == {}
    else:
        assert rd.last_failure("db") is not None
    assert host.ready_calls == []
    rd.close()


def test_notify_ready_status_and_foreign_senders(
    readiness: Readiness, loop: HandlerLoop, host: Host, tmp_path: Path
) -> None:
    path = str(tmp_path / "db.notify")
    readiness.add("db", ReadySpec("notify", interval=0.5, timeout=60), socket_path=path)
    assert readiness.env("db") == {"NOTIFY_SOCKET": path}
    readiness.sync("db", 99, up=False, now=time.monotonic())
    assert readiness.deadline() is None  # nothing polled
    client = NotifyClient(path)
    # Not (yet) a member of the service: dropped.
    client.send(READY="1")
    serve(readiness, loop, lambda: readiness.probes["db"].foreign == 1)  # type: ignore[attr-defined]
    assert host.ready_calls == []
    host.members.add(os.getpid())
    client.send(STATUS="recovering")
    client.send(STATUS="recovering")
    client.send(STATUS="accepting connections", READY="1")
    serve(readiness, loop, lambda: host.ready_calls)
    # For the service's current process (the host knows its pid): the sender is a member.
    assert host.ready_calls == [("db", None)]
    assert host.statuses == [("db", "recovering"), ("db", "accepting connections")]
    assert readiness.status("db") == "accepting connections"
    client.close()


def test_notify_ready_before_the_probe_is_synced_still_counts(
    readiness: Readiness, loop: HandlerLoop, host: Host, tmp_path: Path
) -> None:
    """A fast service can send READY=1 in the very loop turn of its spawn, before the probe was
    told it is starting (sync runs after the turn's events): it must not be lost. The host
    feeds Ready for the current process; the policy ignores it unless the service is STARTING
    (found by the kernel tests: the service never became ready)."""
    path = str(tmp_path / "db.notify")
    readiness.add("db", ReadySpec("notify", interval=0.5, timeout=60), socket_path=path)
    host.members.add(os.getpid())
    client = NotifyClient(path)
    client.send(READY="1")
    serve(readiness, loop, lambda: host.ready_calls)
    assert host.ready_calls == [("db", None)]
    client.close()


def test_notify_watchdog(host: Host, loop: HandlerLoop, tmp_path: Path) -> None:
    clock = [100.0]
    rd = Readiness(host, loop, OneshotRunner(loop, Reaper(subreaper=False)), lambda: clock[0])
    path = str(tmp_path / "db.notify")
    rd.add("db", ReadySpec("notify", interval=0.5, timeout=60, watchdog=10.0), socket_path=path)
    assert rd.env("db") == {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"}
    host.members.add(os.getpid())
    rd.sync("db", 5, up=False, now=100.0)
    assert rd.deadline() is None  # not armed before it is ready
    rd.sync("db", None, up=True, now=101.0)
    assert rd.deadline() == 111.0
    client = NotifyClient(path)
    clock[0] = 108.0
    client.send(WATCHDOG="1")
    loop.turn(1.0)
    assert rd.deadline() == 118.0
    rd.tick(117.9)
    assert host.expired == []
    rd.tick(118.0)
    assert host.expired == ["db"]
    assert rd.deadline() is None
    # Down: disarmed; up again: re-armed from then.
    rd.sync("db", None, up=False, now=119.0)
    rd.sync("db", None, up=True, now=130.0)
    assert rd.deadline() == 140.0
    client.send(WATCHDOG="trigger")
    loop.turn(1.0)
    rd.tick(clock[0])
    assert host.expired == ["db", "db"]
    client.close()
    rd.close()
    assert not os.path.exists(path)
