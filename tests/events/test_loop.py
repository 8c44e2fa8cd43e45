"""The epoll loop: registration bookkeeping, handlers called with the ready mask, a source
removed or replaced mid-batch skipped, teardown tolerance."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from oomguard.events.loop import (
    EPOLLERR,
    EPOLLHUP,
    EPOLLIN,
    EPOLLOUT,
    MAX_WAIT,
    Handler,
    Loop,
    clamp_timeout,
)

if TYPE_CHECKING:
    from collections.abc import Iterator


class Calls:
    """Handlers that record (name, mask) in call order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def __call__(self, name: str) -> Handler:
        return lambda mask: self.seen.append((name, mask))

    def take(self) -> list[tuple[str, int]]:
        seen, self.seen = self.seen, []
        return seen


class Pipes(list[tuple[int, int]]):
    """Three pipes; `close` one end early, and the fixture closes the rest (never a number
    that a test closed, which something else may have been given since)."""

    def __init__(self) -> None:
        super().__init__(os.pipe() for _ in range(3))
        self.closed: set[int] = set()

    def close(self, fd: int) -> None:
        os.close(fd)
        self.closed.add(fd)


@pytest.fixture
def pipes() -> Iterator[Pipes]:
    made = Pipes()
    yield made
    for r, w in made:
        for fd in {r, w} - made.closed:
            os.close(fd)


def test_run_once_calls_the_handler_of_each_ready_fd_with_its_mask(
    pipes: Pipes,
) -> None:
    (r1, _w1), (r2, w2), _ = pipes
    calls = Calls()
    with Loop() as loop:
        loop.add(r1, EPOLLIN, calls("one"))
        loop.add(r2, EPOLLIN, calls("two"))
        assert len(loop) == 2 and r1 in loop
        assert loop.run_once(0) == 0 and calls.take() == []
        os.write(w2, b"x")
        assert loop.run_once(5) == 1
        assert calls.take() == [("two", EPOLLIN)]
        # Level-triggered: unread data is reported again.
        assert loop.run_once(0) == 1
        assert calls.take() == [("two", EPOLLIN)]


def test_wait_then_dispatch_is_run_once_in_two_steps(pipes: Pipes) -> None:
    (r, w), _, _ = pipes
    calls = Calls()
    with Loop() as loop:
        loop.add(r, EPOLLIN, calls("r"))
        os.write(w, b"x")
        ready = loop.wait(5)
        assert [(src.fd, mask) for src, mask in ready] == [(r, EPOLLIN)]
        assert calls.take() == []  # nothing is called before dispatch
        assert loop.dispatch(ready) == 1
        assert calls.take() == [("r", EPOLLIN)]


def test_modify_changes_mask_and_handler(pipes: Pipes) -> None:
    _, _, (r, w) = pipes
    calls = Calls()
    with Loop() as loop:
        loop.add(w, EPOLLIN, calls("w"))
        loop.run_once(0)
        assert calls.take() == []
        loop.modify(w, EPOLLOUT, calls("writable"))
        loop.run_once(0)
        assert calls.take() == [("writable", EPOLLOUT)]
        loop.modify(w, EPOLLOUT)  # the handler stays
        loop.run_once(0)
        assert calls.take() == [("writable", EPOLLOUT)]
        with pytest.raises(KeyError):
            loop.modify(r, EPOLLIN)  # not registered


def test_a_source_removed_by_an_earlier_handler_of_the_batch_is_skipped(
    pipes: Pipes,
) -> None:
    (r1, w1), (r2, w2), _ = pipes
    calls = Calls()
    with Loop() as loop:

        def first(mask: int) -> None:
            # The owner's teardown of the other source, whose event is already in this batch.
            calls.seen.append(("first", mask))
            loop.remove(r2)

        loop.add(r1, EPOLLIN, first)
        loop.add(r2, EPOLLIN, calls("second"))
        os.write(w1, b"x")
        os.write(w2, b"x")
        ready = loop.wait(5)
        assert len(ready) == 2
        ready.sort(key=lambda item: item[0].fd != r1)  # the remover's event first
        assert loop.dispatch(ready) == 1
        assert calls.take() == [("first", EPOLLIN)]
        assert r2 not in loop


def test_a_new_registration_on_a_reused_fd_number_does_not_get_the_old_event(
    pipes: Pipes,
) -> None:
    (r1, w1), (r2, _w2), _ = pipes
    calls = Calls()
    with Loop() as loop:
        loop.add(r1, EPOLLIN, calls("old"))
        os.write(w1, b"x")
        ready = loop.wait(5)
        # Before dispatch, the owner of r1 goes away and a new file takes the same number.
        loop.remove(r1)
        os.dup2(r2, r1)
        loop.add(r1, EPOLLIN, calls("new"))
        assert loop.dispatch(ready) == 0
        assert calls.take() == []


def test_an_event_the_registration_no_longer_asks_for_is_skipped(
    pipes: Pipes,
) -> None:
    (r, w), _, _ = pipes
    calls = Calls()
    with Loop() as loop:
        loop.add(w, EPOLLOUT, calls("w"))
        ready = loop.wait(0)
        loop.modify(w, EPOLLIN)  # e.g. a sink that no longer has anything to write
        assert loop.dispatch(ready) == 0
        # A hangup is always delivered: epoll reports it whatever the mask.
        pipes.close(r)
        loop.run_once(5)
        ((name, mask),) = calls.take()
        assert name == "w" and mask & EPOLLERR


def test_a_handler_that_raises_propagates(pipes: Pipes) -> None:
    (r, w), _, _ = pipes

    def broken(mask: int) -> None:
        raise RuntimeError(f"bug {mask}")

    with Loop() as loop:
        loop.add(r, EPOLLIN, broken)
        os.write(w, b"x")
        with pytest.raises(RuntimeError, match="bug"):
            loop.run_once(5)
        assert r in loop  # still registered: the caller decides what a bug means


def test_add_twice_is_an_error(pipes: Pipes) -> None:
    (r, _w), _, _ = pipes
    calls = Calls()
    with Loop() as loop:
        loop.add(r, EPOLLIN, calls("a"))
        with pytest.raises(FileExistsError):
            loop.add(r, EPOLLIN, calls("b"))


def test_remove_tolerates_unknown_closed_and_negative_fds() -> None:
    r, w = os.pipe()
    calls = Calls()
    with Loop() as loop:
        loop.add(r, EPOLLIN, calls("r"))
        loop.remove(r)
        loop.remove(r)  # not registered any more
        loop.remove(-1)
        loop.add(r, EPOLLIN, calls("r"))
        os.close(r)
        loop.remove(r)  # closed already: the kernel dropped it
        assert len(loop) == 0
    os.close(w)


def test_close_is_idempotent_and_wait_after_close_fails() -> None:
    loop = Loop()
    assert loop.fileno() >= 0 and not loop.closed
    loop.close()
    loop.close()
    assert loop.closed
    loop.remove(5)  # teardown paths may still call remove
    with pytest.raises(ValueError, match="closed"):
        loop.wait(0)
    with pytest.raises(ValueError, match="closed"):
        loop.run_once(0)


def test_loop_fd_is_not_inherited() -> None:
    with Loop() as loop:
        assert not os.get_inheritable(loop.fileno())


@pytest.mark.parametrize("timeout", [3600.0 * 1000, 1e10, 1e300, float("inf"), float("nan")])
def test_an_absurd_timeout_is_clamped_not_an_overflow(timeout: float) -> None:
    # epoll_wait takes an int of milliseconds: CPython raised OverflowError ("timeout is too
    # large" / "timestamp out of range") for these, which crashed the supervisor (rc 70).
    r, w = os.pipe()
    calls = Calls()
    try:
        with Loop() as loop:
            loop.add(r, EPOLLIN, calls("r"))
            os.write(w, b"x")
            assert loop.run_once(timeout) == 1
            assert calls.take() == [("r", EPOLLIN)]
    finally:
        os.close(r)
        os.close(w)


def test_clamp_timeout() -> None:
    assert clamp_timeout(None) == -1.0
    assert clamp_timeout(-5.0) == 0.0
    assert clamp_timeout(0.25) == 0.25
    assert clamp_timeout(MAX_WAIT * 2) == MAX_WAIT
    assert clamp_timeout(float("inf")) == MAX_WAIT
    assert clamp_timeout(float("nan")) == MAX_WAIT


def test_hup_is_delivered_to_a_reader(pipes: Pipes) -> None:
    _, (r, w), _ = pipes
    calls = Calls()
    with Loop() as loop:
        loop.add(r, EPOLLIN, calls("r"))
        pipes.close(w)
        loop.run_once(5)
        assert calls.take() == [("r", EPOLLHUP)]
