"""InotifyWatcher on temp files: coalescing, vanishing, overflow."""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

import pytest

from oomguard.events import inotify
from oomguard.events.inotify import InotifyWatcher, WatchEvent
from oomguard.events.loop import EPOLLIN, Loop

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def watcher() -> Iterator[InotifyWatcher[str]]:
    with InotifyWatcher[str]() as w:
        yield w
    assert w.closed


def _touch(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def test_modifications_are_coalesced_per_key(watcher: InotifyWatcher[str], tmp_path: Path) -> None:
    a, b = tmp_path / "memory.events", tmp_path / "cgroup.events"
    a.write_text("oom 0\n")
    b.write_text("populated 1\n")
    assert watcher.watch(a, "db") is True
    assert watcher.watch(b, "backup") is True
    assert watcher.read() == []
    for i in range(5):
        _touch(a, f"oom {i}\n")
    _touch(b, "populated 0\n")
    assert watcher.read() == [("db", WatchEvent.MODIFIED), ("backup", WatchEvent.MODIFIED)]
    assert watcher.read() == []


def test_watcher_wakes_the_loop(watcher: InotifyWatcher[str], tmp_path: Path) -> None:
    f = tmp_path / "memory.events"
    f.write_text("")
    watcher.watch(f, "db")
    with Loop[str]() as loop:
        loop.add(watcher.fileno(), EPOLLIN, "inotify")
        assert loop.poll(0) == []
        _touch(f, "x")
        assert loop.poll(5) == [("inotify", EPOLLIN)]
        assert watcher.read() == [("db", WatchEvent.MODIFIED)]
        loop.remove(watcher.fileno())


def test_deleted_file_is_vanished_and_forgotten(
    watcher: InotifyWatcher[str], tmp_path: Path
) -> None:
    f = tmp_path / "memory.events"
    f.write_text("")
    watcher.watch(f, "db")
    _touch(f, "x")
    f.unlink()
    ((key, flags),) = watcher.read()
    assert key == "db"
    assert WatchEvent.VANISHED in flags and WatchEvent.MODIFIED in flags
    assert watcher.keys() == []
    watcher.unwatch("db")  # already dropped by the kernel: fine


def test_missing_file_returns_false(watcher: InotifyWatcher[str], tmp_path: Path) -> None:
    assert watcher.watch(tmp_path / "nope" / "memory.events", "db") is False
    assert watcher.keys() == []


def test_two_keys_on_one_file_both_fire_and_unwatch_one(
    watcher: InotifyWatcher[str], tmp_path: Path
) -> None:
    f = tmp_path / "memory.events"
    f.write_text("")
    watcher.watch(f, "a")
    watcher.watch(f, "b")
    _touch(f, "x")
    assert watcher.read() == [("a", WatchEvent.MODIFIED), ("b", WatchEvent.MODIFIED)]
    watcher.unwatch("a")
    _touch(f, "y")
    assert watcher.read() == [("b", WatchEvent.MODIFIED)]
    watcher.unwatch("b")
    _touch(f, "z")
    assert watcher.read() == []  # the IN_IGNORED of our own rm_watch is not reported


def test_rewatching_a_key_moves_it(watcher: InotifyWatcher[str], tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_text("")
    new.write_text("")
    watcher.watch(old, "db")
    watcher.watch(new, "db")
    _touch(old, "x")
    assert watcher.read() == []
    _touch(new, "x")
    assert watcher.read() == [("db", WatchEvent.MODIFIED)]


def test_queue_overflow_marks_every_key(watcher: InotifyWatcher[str], tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).write_text("")
        watcher.watch(tmp_path / name, name)
    overflow = struct.pack("iIII", -1, inotify.IN_Q_OVERFLOW, 0, 0)
    both = WatchEvent.OVERFLOW | WatchEvent.MODIFIED
    assert watcher._decode(overflow) == [("a", both), ("b", both)]


def test_unrelated_events_and_unknown_wds_are_ignored(watcher: InotifyWatcher[str]) -> None:
    access = struct.pack("iIII", 1, 0x1, 0, 0)  # IN_ACCESS on an unknown wd
    assert watcher._decode(access) == []


def test_closed_watcher(tmp_path: Path) -> None:
    w = InotifyWatcher[str]()
    fd = w.fileno()
    assert not os.get_inheritable(fd)
    w.close()
    w.close()
    assert w.read() == []
    with pytest.raises(ValueError, match="closed"):
        w.watch(tmp_path, "x")
