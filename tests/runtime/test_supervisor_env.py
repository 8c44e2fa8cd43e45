"""What the supervisor asks the launcher for: a clean environment unless `inherit_env`.

The launcher is replaced by a recorder that refuses to start anything, so nothing is spawned.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any

import pytest

from oomguard.cgroup.path import CgroupPath
from oomguard.config.compile import compile_plan
from oomguard.config.model import Config
from oomguard.observe.log import Logger
from oomguard.runtime import launcher
from oomguard.runtime.supervisor import Supervisor
from tests.cgroup.fakefs import FakeCgroupFS

if TYPE_CHECKING:
    from pathlib import Path


class _Recorded(Exception):
    """The spec was seen; nothing is started."""


def _spec_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **service: Any
) -> launcher.LaunchSpec:
    fs = FakeCgroupFS(tmp_path / "cgroup")
    fs.add_proc(CgroupPath.ROOT, os.getpid())
    config = Config.from_mapping(
        {
            "oomguard": {"cgroup": "/og", "state_dir": str(tmp_path / "state")},
            "service": {"db": {"role": "primary", "command": ["sleep", "1000"], **service}},
        }
    )
    monkeypatch.setattr(Supervisor, "_protect_self", lambda self: None, raising=False)
    seen: list[launcher.LaunchSpec] = []

    def record(spec: launcher.LaunchSpec, *args: object, **kw: object) -> launcher.Child:
        seen.append(spec)
        raise _Recorded

    monkeypatch.setattr(launcher, "spawn", record)
    monkeypatch.setenv("OOMGUARD_TEST_SECRET", "hunter2")
    sup = Supervisor(compile_plan(config), fs, CgroupPath.ROOT, Logger(io.StringIO()))
    sup._setup()
    try:
        with pytest.raises(_Recorded):
            sup.lifecycle.spawn(sup.services["db"])
    finally:
        sup._close()
    (spec,) = seen
    return spec


def test_a_service_starts_with_a_clean_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: env = {**os.environ, **env}: every service got oomguard's secrets.
    spec = _spec_of(tmp_path, monkeypatch, env={"PGPORT": 5432})
    assert dict(spec.env) == {"PGPORT": "5432"}
    assert spec.login_env and spec.home_cwd
    assert spec.extra_env["OOMGUARD_SERVICE"] == "db"


def test_inherit_env_passes_oomguards_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec_of(tmp_path, monkeypatch, env={"A": "1"}, inherit_env=True)
    assert spec.env["OOMGUARD_TEST_SECRET"] == "hunter2"
    assert spec.env["A"] == "1"
    assert not spec.login_env


def test_pressure_watch_variables_still_reach_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec_of(tmp_path, monkeypatch, pressure_watch=True)
    assert spec.extra_env["MEMORY_PRESSURE_WATCH"].endswith("/og/db/memory.pressure")
    assert "MEMORY_PRESSURE_WRITE" in spec.extra_env
