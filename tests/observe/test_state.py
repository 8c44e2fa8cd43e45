from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from oomguard.errors import OomguardError
from oomguard.observe.state import (
    STATE_FILE,
    ensure_state_dir,
    make_state,
    pid_alive,
    read_state,
    remove_state,
    state_writer_alive,
    write_state,
    writer_alive,
)
from oomguard.observe.statefile import StateFileError, StateVersionError

if TYPE_CHECKING:
    from oomguard.observe.state import ServiceState

DB: ServiceState = {
    "state": "RUNNING",
    "pid": 123,
    "restarts": 0,
    "evictions": 0,
    "slice": "/oomguard/db",
    "role": "primary",
    "last_exit": {"code": None, "signal": 9, "oom_killed": True},
    "started_at": 1795645000.0,
    "downtime_total": 0.0,
}


def doc(**services: ServiceState) -> dict[str, object]:
    return dict(
        make_state(root="/oomguard", mode="enforce", services=services, updated_at=1795645862.5)
    )


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    data = doc(db=DB)
    write_state(tmp_path, data)
    assert read_state(tmp_path) == data
    assert data["version"] == 1
    assert data["pid"] == os.getpid()
    assert isinstance(data["pid_start"], int)


def test_written_file_is_world_readable_and_no_temp_file_remains(tmp_path: Path) -> None:
    write_state(tmp_path, doc(db=DB))
    write_state(tmp_path, doc())
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]
    assert (tmp_path / STATE_FILE).stat().st_mode & 0o777 == 0o644


def test_make_state_copies_services(tmp_path: Path) -> None:
    services: dict[str, ServiceState] = {"db": {"state": "RUNNING"}}
    data = make_state(root="/r", mode="observe", services=services, updated_at=1.0, pid=77)
    services["db"]["state"] = "FATAL"
    assert data["services"]["db"]["state"] == "RUNNING"
    assert data["pid"] == 77 and data["mode"] == "observe"


def test_a_crash_before_the_rename_leaves_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = doc(db=DB)
    write_state(tmp_path, old)

    class Crash(BaseException):
        pass

    def crash(src: str, dst: str, **_: object) -> None:
        raise Crash

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(Crash):
        write_state(tmp_path, doc(db={**DB, "state": "FATAL"}))
    monkeypatch.undo()
    assert read_state(tmp_path) == old
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]


def test_unserialisable_data_does_not_touch_the_file(tmp_path: Path) -> None:
    old = doc(db=DB)
    write_state(tmp_path, old)
    with pytest.raises(ValueError):
        write_state(tmp_path, {"version": 1, "updated_at": float("nan")})
    assert read_state(tmp_path) == old


def test_a_reader_never_sees_a_partial_file_while_a_writer_is_killed(tmp_path: Path) -> None:
    # A separate process rewrites state.json as fast as it can; we read concurrently, then
    # SIGKILL it mid-loop (a crash at an arbitrary point). Every read must be a whole document.
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                from pathlib import Path
                from oomguard.observe.state import write_state
                d = Path({str(tmp_path)!r})
                i = 0
                while True:
                    write_state(d, {{"version": 1, "i": i, "pad": "x" * (i % 5000)}})
                    i += 1
                """
            ),
        ],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        reads: list[int] = []
        deadline = time.monotonic() + 30
        # At least 300 reads and two documents: on a slow disk 300 reads can all fall between
        # two of the writer's renames.
        while (len(reads) < 300 or len(set(reads)) < 2) and time.monotonic() < deadline:
            data = read_state(tmp_path)
            if data is not None:
                assert data["pad"] == "x" * (data["i"] % 5000)
                reads.append(data["i"])
        assert len(reads) >= 300
        assert len(set(reads)) > 1  # the writer really was rewriting while we read
    finally:
        writer.kill()
        writer.wait()
    data = read_state(tmp_path)
    assert data is not None and data["pad"] == "x" * (data["i"] % 5000)
    # The killed writer may leave its temp file; it is a dot-file that readers never open.
    assert all(p.name == STATE_FILE or p.name.startswith(".") for p in tmp_path.iterdir())


def test_missing_state_is_none(tmp_path: Path) -> None:
    assert read_state(tmp_path) is None
    assert read_state(tmp_path / "no" / "dir") is None


def test_invalid_json_is_an_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("")  # what a power loss can leave on ext4
    with pytest.raises(OomguardError) as info:
        read_state(tmp_path)
    assert str(tmp_path / STATE_FILE) in info.value.message
    assert info.value.hint is not None and "delete" in info.value.hint


def test_wrong_version_or_shape_is_an_error(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text(json.dumps({"version": 2}))
    with pytest.raises(StateVersionError, match="version 2, written by a newer oomguard") as new:
        read_state(tmp_path)
    assert new.value.exit_code == 2
    (tmp_path / STATE_FILE).write_text(json.dumps({"version": 0}))
    with pytest.raises(StateFileError, match="version 0; this oomguard reads version 1") as old:
        read_state(tmp_path)
    assert old.value.exit_code == 1
    (tmp_path / STATE_FILE).write_text(json.dumps({"version": 1, "services": []}))
    with pytest.raises(StateFileError, match="'services' is not an object"):
        read_state(tmp_path)
    (tmp_path / STATE_FILE).write_text("[1]")
    with pytest.raises(OomguardError, match="JSON object"):
        read_state(tmp_path)


def test_ensure_state_dir_creates_parents(tmp_path: Path) -> None:
    target = tmp_path / "run" / "oomguard"
    assert ensure_state_dir(target) == target
    assert target.is_dir()
    assert ensure_state_dir(target) == target  # exists: fine


def test_ensure_state_dir_errors_name_the_dir_and_the_knob(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    for bad in (blocker, blocker / "sub"):
        with pytest.raises(OomguardError) as info:
            ensure_state_dir(bad)
        assert str(bad) in info.value.message
        assert info.value.hint is not None and "state_dir" in info.value.hint
        assert "/tmp" not in info.value.hint


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make an unwritable-for-root dir")
def test_ensure_state_dir_on_a_read_only_place_is_an_error() -> None:
    # /proc refuses mkdir even for root: the closest thing to EACCES/EROFS we can get as root.
    with pytest.raises(OomguardError, match="state_dir /proc/oomguard-test is a system directory"):
        ensure_state_dir(Path("/proc/oomguard-test"))


def test_remove_state(tmp_path: Path) -> None:
    write_state(tmp_path, doc())
    remove_state(tmp_path)
    remove_state(tmp_path)  # already gone: fine
    assert read_state(tmp_path) is None


# -- liveness ----------------------------------------------------------------------------------


def fake_proc(root: Path, pid: int, comm: str, starttime: int) -> None:
    rest = ["S", "1", "1", "1", "0", "-1", "4194560"] + ["0"] * 12 + [str(starttime), "0"]
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "stat").write_text(f"{pid} ({comm}) {' '.join(rest)}\n")


def test_pid_alive_checks_reuse_when_start_is_known(tmp_path: Path) -> None:
    fake_proc(tmp_path, 42, "oomguard", 1000)
    assert pid_alive(42, None, tmp_path)
    assert pid_alive(42, 1000, tmp_path)
    assert not pid_alive(42, 999, tmp_path)  # same pid, another process: reused
    assert not pid_alive(43, None, tmp_path)
    assert not pid_alive(0, None, tmp_path)


def test_writer_alive_for_this_process_and_not_for_a_dead_one(tmp_path: Path) -> None:
    assert not writer_alive(tmp_path)  # no state at all
    write_state(tmp_path, doc())
    assert writer_alive(tmp_path)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    data = doc()
    data["pid"] = int(dead.stdout)
    data["pid_start"] = None
    write_state(tmp_path, data)
    assert not writer_alive(tmp_path)


def test_state_writer_alive_rejects_malformed_pids() -> None:
    assert not state_writer_alive({})
    assert not state_writer_alive({"pid": "123"})
    assert not state_writer_alive({"pid": True})
    assert not state_writer_alive({"pid": os.getpid(), "pid_start": -5})


def test_writer_alive_is_false_for_an_unusable_state_file(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("{")
    assert not writer_alive(tmp_path)
