from __future__ import annotations

import errno
import json
import os
from enum import Enum
from typing import TYPE_CHECKING

import pytest

from oomguard.errors import OomguardError
from oomguard.observe.eventlog import (
    EVENTS_FILE,
    ROTATED_FILE,
    EventFollower,
    EventLog,
    parse_event_line,
    read_event_file,
    read_events,
)

if TYPE_CHECKING:
    from pathlib import Path


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakePath:
    """Stands in for CgroupPath: the event log only needs str()."""

    def __str__(self) -> str:
        return "/oomguard/sidecars/backup"


class Reason(Enum):
    OOM = "oom_kill"


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_append_writes_one_json_object_per_line(tmp_path: Path) -> None:
    clock = Clock(1795645862.5)
    with EventLog(tmp_path, clock_wall=clock) as log:
        assert log.append(
            "oom_kill", service="backup", cgroup=FakePath(), delta=1, current=64 << 20, max=None
        )
        assert log.append("restart", service="backup", reason=Reason.OOM, attempt=3, delay=0.4)
    raw = lines(tmp_path / EVENTS_FILE)
    assert len(raw) == 2
    first = json.loads(raw[0])
    assert list(first)[:5] == ["ts", "cgroup", "slice", "service", "kind"]
    assert first == {
        "ts": 1795645862.5,
        "cgroup": "/oomguard/sidecars/backup",
        "slice": "/oomguard/sidecars/backup",  # the old name, kept one release
        "service": "backup",
        "kind": "oom_kill",
        "delta": 1,
        "current": 67108864,
        "max": None,
    }
    assert json.loads(raw[1])["reason"] == "OOM"  # Enum -> member name
    assert json.loads(raw[1])["cgroup"] is None
    assert json.loads(raw[1])["slice"] is None


def test_slice_is_written_by_the_log_not_by_a_caller(tmp_path: Path) -> None:
    # "slice" is the cgroup field's old name, kept in every line for one release: a caller
    # cannot set it apart from "cgroup".
    with EventLog(tmp_path) as log:
        with pytest.raises(ValueError, match="reserved"):
            log.append("exit", service="db", cgroup="/og/db", slice="/og/other")
        assert log.append("exit", service="db", cgroup="/og/db", code=0)
    (event,) = [json.loads(line) for line in lines(tmp_path / EVENTS_FILE)]
    assert event["cgroup"] == event["slice"] == "/og/db"


def test_a_detail_with_a_newline_stays_on_one_line(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        log.append("fatal", service="db", error="line one\nline two")
    raw = lines(tmp_path / EVENTS_FILE)
    assert len(raw) == 1
    assert json.loads(raw[0])["error"] == "line one\nline two"


def test_each_event_is_a_single_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = EventLog(tmp_path)
    writes: list[bytes] = []
    real_write = os.write

    def spy(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spy)
    log.append("start", service="db", pid=1)
    log.append("start", service="pooler", pid=2)
    monkeypatch.undo()
    log.close()
    assert len(writes) == 2
    assert all(w.endswith(b"\n") and w.count(b"\n") == 1 for w in writes)


def test_two_writers_append_without_clobbering(tmp_path: Path) -> None:
    # O_APPEND: each write lands at the current end, whoever wrote last.
    a, b = EventLog(tmp_path), EventLog(tmp_path)
    for i in range(5):
        a.append("tick", service="a", i=i)
        b.append("tick", service="b", i=i)
    a.close()
    b.close()
    events = list(read_events(tmp_path))
    assert [(e["service"], e["i"]) for e in events] == [
        (s, i) for i in range(5) for s in ("a", "b")
    ]


def test_file_is_created_0644_and_the_state_dir_on_demand(tmp_path: Path) -> None:
    state_dir = tmp_path / "run" / "oomguard"
    EventLog(state_dir).close()
    assert (state_dir / EVENTS_FILE).stat().st_mode & 0o777 == 0o644


def test_reserved_detail_keys_are_refused(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        with pytest.raises(ValueError, match="reserved"):
            log.append("x", ts=1)
        with pytest.raises(ValueError, match="reserved"):
            log.append("x", kind="y")
    assert (tmp_path / EVENTS_FILE).read_bytes() == b""


def test_nested_details_are_refused(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log, pytest.raises(ValueError, match="flat"):
        log.append("x", last_exit={"code": 1})


def test_rotation_keeps_one_previous_file_and_the_cap(tmp_path: Path) -> None:
    cap = 400
    with EventLog(tmp_path, max_bytes=cap) as log:
        for i in range(40):
            log.append("pressure", service="db", i=i, avg10=12.5)
    current = tmp_path / EVENTS_FILE
    rotated = tmp_path / ROTATED_FILE
    assert rotated.exists()
    assert current.stat().st_size <= cap
    assert rotated.stat().st_size <= cap
    assert sorted(p.name for p in tmp_path.iterdir()) == [EVENTS_FILE, ROTATED_FILE]
    seq = [e["i"] for e in read_events(tmp_path)]
    # Oldest generations are gone; what is left is contiguous and ends with the last event.
    assert seq == list(range(seq[0], 40))
    assert seq[0] > 0


def test_a_single_event_larger_than_the_cap_is_still_written(tmp_path: Path) -> None:
    with EventLog(tmp_path, max_bytes=10) as log:
        assert log.append("fatal", service="db", error="x" * 100)
        assert log.append("fatal", service="db", error="y" * 100)
    assert [e["error"][0] for e in read_events(tmp_path)] == ["x", "y"]


def test_torn_last_line_is_skipped_by_the_reader(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        log.append("start", service="db", pid=1)
    with (tmp_path / EVENTS_FILE).open("ab") as f:
        f.write(b'{"ts": 1001.0, "slice": null, "service": "db", "ki')
    assert [e["kind"] for e in read_events(tmp_path)] == ["start"]


def test_a_new_writer_closes_off_a_torn_tail(tmp_path: Path) -> None:
    (tmp_path / EVENTS_FILE).write_bytes(b'{"ts": 1.0, "kind": "start"}\n{"ts": 2.0, "ki')
    with EventLog(tmp_path, clock_wall=Clock(3.0)) as log:
        log.append("exit", service="db", code=1)
    assert [e["ts"] for e in read_events(tmp_path)] == [1.0, 3.0]
    # The fragment is on its own line, not glued to the new event.
    assert lines(tmp_path / EVENTS_FILE)[1] == '{"ts": 2.0, "ki'


def test_a_glued_line_yields_its_last_whole_event() -> None:
    glued = b'{"ts": 2.0, "ki{"ts":3.0,"slice":null,"service":"db","kind":"exit"}\n'
    assert parse_event_line(glued) == {"ts": 3.0, "slice": None, "service": "db", "kind": "exit"}


@pytest.mark.parametrize(
    "line", [b"", b"\n", b"garbage", b"[1,2]", b'{"kind":"x"}', b'{"ts":"1","kind":"x"}', b"\xff"]
)
def test_lines_that_are_not_events_are_none(line: bytes) -> None:
    assert parse_event_line(line) is None


def test_since_filters_by_wall_time(tmp_path: Path) -> None:
    clock = Clock(100.0)
    with EventLog(tmp_path, clock_wall=clock) as log:
        for t in (100.0, 200.0, 300.0):
            clock.t = t
            log.append("tick", t=t)
    assert [e["ts"] for e in read_events(tmp_path, since=200.0)] == [200.0, 300.0]
    assert [e["ts"] for e in read_events(tmp_path, since=301.0)] == []
    assert len(list(read_events(tmp_path))) == 3


def test_reading_a_missing_log_yields_nothing(tmp_path: Path) -> None:
    assert list(read_events(tmp_path / "nope")) == []
    assert list(read_event_file(tmp_path / EVENTS_FILE)) == []


def test_a_deleted_log_is_recreated_on_the_next_append(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        log.append("start", service="db")
        (tmp_path / EVENTS_FILE).unlink()  # an operator's rm, or logrotate without copytruncate
        log.append("exit", service="db")
    assert [e["kind"] for e in read_events(tmp_path)] == ["exit"]


def test_a_write_error_is_counted_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = EventLog(tmp_path)

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    assert log.append("start", service="db") is False
    assert log.dropped == 1
    monkeypatch.undo()
    assert log.append("start", service="db") is True
    log.close()
    assert len(list(read_events(tmp_path))) == 1


def test_close_is_idempotent(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    log.close()
    log.close()
    assert log._fd == -1


def test_an_unusable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OomguardError) as info:
        EventLog(blocker)
    assert str(blocker) in info.value.message
    assert info.value.hint is not None and "state_dir" in info.value.hint
    with pytest.raises(OomguardError, match="state_dir"):
        EventLog(blocker / "sub")


# -- EventFollower -----------------------------------------------------------------------------


def test_follower_from_start_reads_everything_then_only_new(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    log.append("a")
    follower = EventFollower(tmp_path, from_start=True)
    assert [e["kind"] for e in follower.read_new()] == ["a"]
    assert follower.read_new() == []
    log.append("b")
    log.append("c")
    assert [e["kind"] for e in follower.read_new()] == ["b", "c"]
    follower.close()
    log.close()


def test_follower_at_end_skips_history(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        log.append("old")
        follower = EventFollower(tmp_path)
        log.append("new")
    assert [e["kind"] for e in follower.read_new()] == ["new"]


def test_follower_waits_for_the_rest_of_a_partial_line(tmp_path: Path) -> None:
    path = tmp_path / EVENTS_FILE
    path.write_bytes(b"")
    follower = EventFollower(tmp_path)
    line = b'{"ts":5.0,"slice":null,"service":"db","kind":"start"}\n'
    with path.open("ab") as f:
        f.write(line[:20])
        f.flush()
        assert follower.read_new() == []
        f.write(line[20:])
    assert [e["ts"] for e in follower.read_new()] == [5.0]


def test_follower_survives_rotation_without_loss_or_repeat(tmp_path: Path) -> None:
    # ~85-byte lines: four or so to a file, so a read every 7 events crosses a rotation.
    log = EventLog(tmp_path, max_bytes=360)
    follower = EventFollower(tmp_path, from_start=True)
    seen: list[int] = []
    for i in range(30):
        log.append("tick", i=i)
        if i % 7 == 0:  # read at irregular points, sometimes across a rotation
            seen.extend(e["i"] for e in follower.read_new())
    seen.extend(e["i"] for e in follower.read_new())
    log.close()
    assert (tmp_path / ROTATED_FILE).exists()
    assert seen == list(range(30))


def test_follower_lagging_two_rotations_reads_the_generation_in_between(tmp_path: Path) -> None:
    # Fixed clock: every line is the same 73 bytes, so each file holds exactly two events.
    log = EventLog(tmp_path, max_bytes=160, clock_wall=Clock(1000.0))
    follower = EventFollower(tmp_path, from_start=True)
    log.append("t", i=0)
    assert [e["i"] for e in follower.read_new()] == [0]
    for i in range(1, 5):  # A gets 1; rotate, B gets 2 and 3; rotate (A unlinked), C gets 4
        log.append("t", i=i)
    log.close()
    assert [e["i"] for e in read_events(tmp_path)] == [2, 3, 4]  # A is gone from disk
    assert [e["i"] for e in follower.read_new()] == [1, 2, 3, 4]


def test_follower_picks_up_a_file_created_later(tmp_path: Path) -> None:
    follower = EventFollower(tmp_path)
    assert not follower.is_open
    assert follower.read_new() == []
    with EventLog(tmp_path) as log:
        log.append("start")
    assert [e["kind"] for e in follower.read_new()] == ["start"]
    assert follower.is_open


def test_follower_restarts_after_truncation(tmp_path: Path) -> None:
    path = tmp_path / EVENTS_FILE
    with EventLog(tmp_path) as log:
        log.append("a")
        log.append("b")
        follower = EventFollower(tmp_path, from_start=True)
        assert len(follower.read_new()) == 2
        os.truncate(path, 0)
        log.append("c")
    assert [e["kind"] for e in follower.read_new()] == ["c"]


def test_readers_never_follow_a_symlink_or_block_on_a_fifo(tmp_path: Path) -> None:
    # The readers (`oomguard events`, often run as root) opened events.jsonl by path: a link
    # planted there was followed (its target's JSON-looking lines were shown), and a FIFO in
    # its place blocked `oomguard events` for good.
    from oomguard.observe.eventlog import EventFollower, events_path, read_events

    target = tmp_path / "secret.jsonl"
    target.write_text('{"ts": 1.0, "kind": "secret", "prog": "x"}\n')
    state = tmp_path / "state"
    state.mkdir()
    events_path(state).symlink_to(target)
    assert list(read_events(state)) == []
    follower = EventFollower(state, from_start=True)
    assert not follower.is_open
    follower.close()
    events_path(state).unlink()
    os.mkfifo(events_path(state))
    assert list(read_events(state)) == []
    follower = EventFollower(state, from_start=True)
    assert not follower.is_open
    follower.close()
