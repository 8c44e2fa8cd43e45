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
    with SignalQueue([signal.SIGUSR1]) as q, Loop() as loop:
        seen: list[int] = []
        loop.add(q.fileno(), EPOLLIN, seen.append)
        assert loop.run_once(0) == 0
        os.kill(os.getpid(), signal.SIGUSR1)
        assert loop.run_once(5) == 1 and seen == [EPOLLIN]
        assert q.drain() == [signal.SIGUSR1]
        assert loop.run_once(0) == 0


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
    # Python's own SIGINT handler, or SIG_IGN when started in the background by a shell
    # (`cmd &` ignores SIGINT): whichever it was, it is what must come back.
    sigint_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(RuntimeError, match="boom"), SignalQueue() as q:
        assert all(
            signal.getsignal(s) is not h for s, h in zip(DEFAULT_SIGNALS, before, strict=True)
        )
        fd = q.fileno()
        raise RuntimeError("boom")
    assert _handlers(DEFAULT_SIGNALS) == before
    assert signal.getsignal(signal.SIGINT) is sigint_before
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


def test_every_signal_has_an_owner() -> None:
    # tini's rule: every catchable signal is handled or forwarded; only crash reports,
    # CPython's own SIG_IGNs and the uncatchable two are left alone.
    from oomguard.events.signals import LEFT_DEFAULT, disposition

    for sig in signal.valid_signals():
        assert (int(sig) in DEFAULT_SIGNALS) != (sig in LEFT_DEFAULT), sig
    assert {disposition(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)} == {"stop"}
    assert disposition(signal.SIGCHLD) == "reap"
    for sig in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
        assert disposition(sig) == "ignore"
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGWINCH):
        assert disposition(sig) == "forward"
    assert disposition(signal.SIGRTMIN + 3) == "forward"
    for sig in (signal.SIGSEGV, signal.SIGABRT, signal.SIGPIPE, signal.SIGKILL):
        assert disposition(sig) == "default"


def test_signal_names() -> None:
    from oomguard.events.signals import signal_name

    assert signal_name(signal.SIGUSR1) == "SIGUSR1"
    assert signal_name(signal.SIGRTMIN + 3) == "SIGRTMIN+3"


def test_a_process_with_the_default_queue_survives_every_forwarded_signal() -> None:
    # Before, SIGUSR1/SIGUSR2/SIGALRM killed a non-PID-1 oomguard by their default action (rc
    # 138) and left its services running unsupervised. Run in a child: on failure it dies, not
    # the test process.
    import subprocess
    import sys

    code = (
        "import os, signal\n"
        "from oomguard.events.signals import SignalQueue\n"
        "sigs = [signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGWINCH, signal.SIGCONT,\n"
        "        signal.SIGVTALRM, signal.SIGPROF, signal.SIGIO, signal.SIGPWR, signal.SIGXCPU,\n"
        "        signal.SIGRTMIN + 3, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU]\n"
        "with SignalQueue() as q:\n"
        "    for s in sigs:\n"
        "        os.kill(os.getpid(), s)\n"
        "    got = q.drain()\n"
        "print(sorted(int(s) for s in got) == sorted(int(s) for s in sigs))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, (res.returncode, res.stderr)
    assert res.stdout.strip() == "True", res.stdout
