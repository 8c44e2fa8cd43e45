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
    with Loop() as loop:
        seen: list[int] = []
        loop.add(watcher.fileno(), EPOLLIN, seen.append)
        assert loop.run_once(0) == 0
        _touch(f, "x")
        assert loop.run_once(5) == 1 and seen == [EPOLLIN]
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


def test_removal_watch_reports_rmdir_of_the_directory(
    watcher: InotifyWatcher[str], tmp_path: Path
) -> None:
    db, backup = tmp_path / "db", tmp_path / "backup"
    db.mkdir()
    backup.mkdir()
    (db / "memory.events").write_text("")
    assert watcher.watch(db / "memory.events", "db") is True
    assert watcher.watch_removal(db, "db") is True
    assert watcher.watch_removal(backup, "backup") is True
    (tmp_path / "unrelated").mkdir()
    (tmp_path / "unrelated").rmdir()
    assert watcher.read() == []
    _touch(db / "memory.events", "x")
    (db / "memory.events").unlink()
    db.rmdir()
    ((key, flags),) = watcher.read()
    assert key == "db" and WatchEvent.VANISHED in flags and WatchEvent.MODIFIED in flags
    assert watcher.keys() == ["backup"]  # the sibling's watch (same parent wd) is untouched
    backup.rename(tmp_path / "elsewhere")  # renamed away counts as gone too
    assert watcher.read() == [("backup", WatchEvent.VANISHED)]
    assert watcher.keys() == []


def test_removal_watch_of_a_missing_directory_is_false(
    watcher: InotifyWatcher[str], tmp_path: Path
) -> None:
    assert watcher.watch_removal(tmp_path / "gone", "x") is False  # parent exists, child not
    assert watcher.watch_removal(tmp_path / "no" / "gone", "y") is False  # parent missing too
    assert watcher.keys() == []


def test_unwatching_one_child_keeps_the_shared_parent_watch(
    watcher: InotifyWatcher[str], tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    watcher.watch_removal(a, "a")
    watcher.watch_removal(b, "b")
    watcher.unwatch("a")
    a.rmdir()
    b.rmdir()
    assert watcher.read() == [("b", WatchEvent.VANISHED)]


def test_parent_directory_removed_vanishes_its_removal_watches(
    watcher: InotifyWatcher[str], tmp_path: Path
) -> None:
    parent = tmp_path / "slice"
    parent.mkdir()
    (parent / "svc").mkdir()
    watcher.watch_removal(parent / "svc", "svc")
    (parent / "svc").rmdir()
    parent.rmdir()
    assert watcher.read() == [("svc", WatchEvent.VANISHED)]
    assert watcher.keys() == []
