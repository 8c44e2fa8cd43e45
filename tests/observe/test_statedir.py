"""The state directory never lets a planted symlink or a foreign directory redirect root's
writes (observe/statedir.py). Plain files in a tmp dir: safe on the host."""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING

import pytest

from oomguard.errors import ExitCode, OomguardError, StateDirError
from oomguard.observe import statedir as sdmod
from oomguard.observe.eventlog import EVENTS_FILE, EventLog
from oomguard.observe.state import STATE_FILE, read_state, write_state
from oomguard.observe.statedir import LOCK_FILE, StateDir

if TYPE_CHECKING:
    from pathlib import Path

DOC = {"version": 1, "pid": 1, "services": {}}


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file root must never write, append to or chmod."""
    path = tmp_path / "victim"
    path.write_bytes(b"secret\n")
    os.chmod(path, 0o600)
    return path


def untouched(path: Path) -> bool:
    st = path.stat()
    return path.read_bytes() == b"secret\n" and stat.S_IMODE(st.st_mode) == 0o600


def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir(mode=0o755)
    return d


def test_symlinked_events_jsonl_is_refused(tmp_path: Path, victim: Path) -> None:
    d = state_dir(tmp_path)
    (d / EVENTS_FILE).symlink_to(victim)
    with pytest.raises(StateDirError, match=r"events\.jsonl is a symlink") as info:
        EventLog(d)
    assert info.value.exit_code == ExitCode.USAGE
    assert untouched(victim)


def test_a_symlink_planted_after_open_is_never_written_through(
    tmp_path: Path, victim: Path
) -> None:
    d = state_dir(tmp_path)
    log = EventLog(d)
    try:
        os.unlink(d / EVENTS_FILE)
        (d / EVENTS_FILE).symlink_to(victim)
        assert log.append("start", service="db") is False
        assert log.dropped == 1
    finally:
        log.close()
    assert untouched(victim)


def test_symlinked_state_json_is_refused(tmp_path: Path, victim: Path) -> None:
    d = state_dir(tmp_path)
    (d / STATE_FILE).symlink_to(victim)
    with pytest.raises(StateDirError, match=r"state\.json is a symlink"):
        write_state(d, DOC)
    with pytest.raises(OomguardError, match="symlink"):
        read_state(d)
    assert untouched(victim)


def test_state_json_replaced_by_a_link_mid_run_is_replaced_not_followed(
    tmp_path: Path, victim: Path
) -> None:
    d = state_dir(tmp_path)
    sd = StateDir.open(d)
    try:
        write_state(sd, DOC)
        os.unlink(d / STATE_FILE)
        (d / STATE_FILE).symlink_to(victim)
        write_state(sd, DOC)  # rename(2) replaces the link itself
    finally:
        sd.close()
    assert not (d / STATE_FILE).is_symlink()
    assert untouched(victim)


def test_write_state_never_chmods_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = state_dir(tmp_path)

    def no_chmod(*args: object, **kwargs: object) -> None:
        raise AssertionError("chmod by path")

    monkeypatch.setattr(os, "chmod", no_chmod)
    write_state(d, DOC)
    assert stat.S_IMODE((d / STATE_FILE).stat().st_mode) == 0o644


def test_world_writable_state_dir_is_refused(tmp_path: Path) -> None:
    d = state_dir(tmp_path)
    os.chmod(d, 0o777)
    with pytest.raises(StateDirError, match="writable by its group or by others"):
        EventLog(d)
    with pytest.raises(StateDirError, match="writable by its group or by others"):
        write_state(d, DOC)
    assert list(d.iterdir()) == []


def test_state_dir_owned_by_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = state_dir(tmp_path)
    if os.geteuid() == 0:
        os.chown(d, 65534, 65534)
    else:
        monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
    with pytest.raises(StateDirError, match="owned by uid"):
        EventLog(d)
    assert list(d.iterdir()) == []


def test_symlinked_state_dir_is_refused(tmp_path: Path) -> None:
    real = state_dir(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(StateDirError, match="is a symlink"):
        StateDir.open(link)


@pytest.mark.parametrize("path", ["/", "/tmp", "/run", "/etc", "/var/tmp", "/proc/x"])
def test_system_directories_are_refused(path: str) -> None:
    with pytest.raises(StateDirError, match="system directory") as info:
        StateDir.open(path)
    assert info.value.hint is not None and "/tmp" not in info.value.hint


def test_new_state_dir_is_0755(tmp_path: Path) -> None:
    StateDir.open(tmp_path / "a" / "state").close()
    assert stat.S_IMODE((tmp_path / "a" / "state").stat().st_mode) & 0o022 == 0


def test_a_second_lock_holder_is_refused_with_the_first_pid(tmp_path: Path) -> None:
    first = StateDir.open(tmp_path / "s")
    first.lock()
    second = StateDir.open(tmp_path / "s")
    try:
        with pytest.raises(
            StateDirError, match=f"in use by another oomguard \\(pid {os.getpid()}\\)"
        ):
            second.lock()
    finally:
        second.close()
    first.close()
    # Released with the fd: the next supervisor gets it.
    third = StateDir.open(tmp_path / "s")
    third.lock()
    assert (tmp_path / "s" / LOCK_FILE).read_text().strip() == str(os.getpid())
    third.close()


def test_no_hint_suggests_tmp(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "/tmp" not in sdmod.state_dir_hint()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert "/run/user/1000/oomguard" in sdmod.state_dir_hint()


def test_event_log_write_failures_are_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = EventLog(tmp_path / "s")
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        if fd == log._fd:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    assert log.append("start") is False
    assert log.append("start") is False
    assert log.dropped == 2 and log.last_error == "No space left on device"
    monkeypatch.undo()
    assert log.append("start") is True
    log.close()
