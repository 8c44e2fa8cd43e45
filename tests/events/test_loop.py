"""The epoll loop: registration bookkeeping, readiness, teardown tolerance."""

from __future__ import annotations

import os

import pytest

from oomguard.events.loop import EPOLLIN, EPOLLOUT, MAX_WAIT, Loop, clamp_timeout


def test_poll_reports_ready_fds_under_their_keys() -> None:
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        with Loop[str]() as loop:
            loop.add(r1, EPOLLIN, "one")
            loop.add(r2, EPOLLIN, "two")
            assert len(loop) == 2 and r1 in loop
            assert loop.poll(0) == []
            os.write(w2, b"x")
            assert loop.poll(5) == [("two", EPOLLIN)]
            # Level-triggered: unread data is reported again.
            assert loop.poll(0) == [("two", EPOLLIN)]
    finally:
        for fd in (r1, w1, r2, w2):
            os.close(fd)


def test_modify_changes_mask_and_key() -> None:
    r, w = os.pipe()
    try:
        with Loop[str]() as loop:
            loop.add(w, EPOLLIN, "w")
            assert loop.poll(0) == []
            loop.modify(w, EPOLLOUT, "writable")
            assert loop.poll(0) == [("writable", EPOLLOUT)]
            loop.modify(w, EPOLLOUT)
            assert loop.poll(0) == [("writable", EPOLLOUT)]
    finally:
        os.close(r)
        os.close(w)


def test_add_twice_is_an_error() -> None:
    r, w = os.pipe()
    try:
        with Loop[str]() as loop:
            loop.add(r, EPOLLIN, "a")
            with pytest.raises(FileExistsError):
                loop.add(r, EPOLLIN, "b")
    finally:
        os.close(r)
        os.close(w)


def test_remove_tolerates_unknown_closed_and_negative_fds() -> None:
    r, w = os.pipe()
    with Loop[str]() as loop:
        loop.add(r, EPOLLIN, "r")
        loop.remove(r)
        loop.remove(r)  # not registered any more
        loop.remove(-1)
        loop.add(r, EPOLLIN, "r")
        os.close(r)
        loop.remove(r)  # closed already: the kernel dropped it
        assert len(loop) == 0
    os.close(w)


def test_close_is_idempotent_and_poll_after_close_fails() -> None:
    loop = Loop[str]()
    assert loop.fileno() >= 0 and not loop.closed
    loop.close()
    loop.close()
    assert loop.closed
    loop.remove(5)  # teardown paths may still call remove
    with pytest.raises(ValueError, match="closed"):
        loop.poll(0)


def test_loop_fd_is_not_inherited() -> None:
    with Loop[str]() as loop:
        assert not os.get_inheritable(loop.fileno())


@pytest.mark.parametrize("timeout", [3600.0 * 1000, 1e10, 1e300, float("inf"), float("nan")])
def test_an_absurd_timeout_is_clamped_not_an_overflow(timeout: float) -> None:
    # epoll_wait takes an int of milliseconds: CPython raised OverflowError ("timeout is too
    # large" / "timestamp out of range") for these, which crashed the supervisor (rc 70).
    r, w = os.pipe()
    try:
        with Loop[str]() as loop:
            loop.add(r, EPOLLIN, "r")
            os.write(w, b"x")
            assert loop.poll(timeout) == [("r", EPOLLIN)]
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
