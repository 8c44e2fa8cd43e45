"""SignalQueue: handlers only record; previous handlers and wakeup fd come back, even on error."""

from __future__ import annotations

import os
import select
import signal

import pytest

from oomguard.events.loop import EPOLLIN, Loop
from oomguard.events.signals import DEFAULT_SIGNALS, SignalQueue
from oomguard.runtime.launcher import LaunchSpec, spawn
from oomguard.runtime.reaper import wait_exited


def _handlers(sigs: tuple[signal.Signals, ...]) -> list[object]:
    return [signal.getsignal(s) for s in sigs]


def test_default_signals_include_what_pid1_must_handle() -> None:
    assert {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD} <= set(DEFAULT_SIGNALS)


def test_signals_are_queued_in_order_with_duplicates() -> None:
    with SignalQueue() as q:
        assert q.drain() == []
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGHUP)
        assert q.drain() == [signal.SIGHUP, signal.SIGTERM, signal.SIGHUP]
        assert q.drain() == []


def test_queue_wakes_the_loop() -> None:
    with SignalQueue([signal.SIGUSR1]) as q, Loop[str]() as loop:
        loop.add(q.fileno(), EPOLLIN, "signals")
        assert loop.poll(0) == []
        os.kill(os.getpid(), signal.SIGUSR1)
        assert loop.poll(5) == [("signals", EPOLLIN)]
        assert q.drain() == [signal.SIGUSR1]
        assert loop.poll(0) == []


def test_sigchld_arrives_when_a_child_exits() -> None:
    with SignalQueue([signal.SIGCHLD]) as q:
        child = spawn(LaunchSpec("c", ("true",), {"PATH": "/usr/bin:/bin"}), None)
        p = select.poll()
        p.register(child.pidfd, select.POLLIN)
        assert p.poll(20_000)
        wait_exited(child.pid)
        child.close()
        # exit_notify() queued SIGCHLD before it woke the pidfd; it was handled on our way
        # back from poll(), so it is already in the queue.
        assert signal.SIGCHLD in q.drain()


def test_previous_handlers_and_wakeup_fd_are_restored_after_an_exception() -> None:
    before = _handlers(DEFAULT_SIGNALS)
    with pytest.raises(RuntimeError, match="boom"), SignalQueue() as q:
        assert all(
            signal.getsignal(s) is not h for s, h in zip(DEFAULT_SIGNALS, before, strict=True)
        )
        fd = q.fileno()
        raise RuntimeError("boom")
    assert _handlers(DEFAULT_SIGNALS) == before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # No wakeup fd is left behind (set_wakeup_fd returns the previous one).
    assert signal.set_wakeup_fd(-1) == -1
    assert q.closed and q.drain() == []
    with pytest.raises(ValueError, match="closed"):
        q.fileno()
    with pytest.raises(OSError):
        os.fstat(fd)  # the socket pair is closed


def test_nested_queue_restores_the_outer_wakeup_fd() -> None:
    with SignalQueue([signal.SIGUSR1]) as outer:
        with SignalQueue([signal.SIGUSR2]) as inner:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert inner.drain() == [signal.SIGUSR2]
        os.kill(os.getpid(), signal.SIGUSR1)
        assert outer.drain() == [signal.SIGUSR1]


def test_close_is_idempotent() -> None:
    q = SignalQueue([signal.SIGUSR1])
    q.close()
    q.close()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    assert q.signals == (signal.SIGUSR1,)
