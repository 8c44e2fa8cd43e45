"""`oomguard exec`'s own state dir per run: never shared between parallel runs, never /tmp."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from oomguard.cli import daemon, exec_
from oomguard.errors import StateDirError
from oomguard.observe.statedir import StateDir


def test_root_gets_a_per_run_dir_under_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert exec_.per_run_state_dir() == Path(f"/run/oomguard/exec-{os.getpid()}")


def test_a_user_gets_one_under_xdg_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert exec_.per_run_state_dir() == Path(f"/run/user/1000/oomguard/exec-{os.getpid()}")


def test_a_user_without_xdg_runtime_dir_is_told_what_to_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    with pytest.raises(StateDirError) as info:
        exec_.per_run_state_dir()
    assert info.value.exit_code == 2
    assert info.value.hint is not None and "--state-dir" in info.value.hint
    assert "/tmp" not in str(info.value)


def test_the_per_run_dir_is_removed_but_never_a_stranger_file(tmp_path: Path) -> None:
    d = tmp_path / "exec-1"
    sd = StateDir.open(d)
    sd.lock()
    sd.write_atomic("state.json", b"{}")
    sd.close()
    daemon._remove_state_dir(str(d))
    assert not d.exists()
    sd = StateDir.open(d)
    sd.close()
    (d / "keep.me").write_text("x")
    daemon._remove_state_dir(str(d))
    assert (d / "keep.me").exists()
