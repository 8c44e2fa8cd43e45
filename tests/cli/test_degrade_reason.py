"""`degrade_reason`: when the slice tree clearly cannot be built, oomguard degrades (or refuses,
with require_cgroups) before it touches the cgroup filesystem at all."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from oomguard.cli import _supervise
from oomguard.config.compile import compile_plan
from oomguard.config.load import load_config
from oomguard.errors import CgroupError
from tests.cli.test_check import HYBRID, READY

if TYPE_CHECKING:
    from pathlib import Path

    from oomguard.cgroup.discover import Discovery

CONFIG = """
[oomguard]
{extra}

[service.db]
command = ["sleep", "1"]
role = "primary"
"""


def _reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, d: Discovery, extra: str = ""
) -> str | None:
    from oomguard.cgroup import discover as discover_mod

    path = tmp_path / "c.toml"
    path.write_text(CONFIG.format(extra=extra))
    monkeypatch.setattr(discover_mod, "discover", lambda: d)
    return _supervise.degrade_reason(compile_plan(load_config(path, {})))


def test_hybrid_host_degrades_with_the_default_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "cgroup v1" in (_reason(tmp_path, monkeypatch, HYBRID) or "")


def test_hybrid_host_degrades_with_an_explicit_cgroup_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An explicit `cgroup` skipped the controller check: on a hybrid host `run --cgroup X`
    # went on to mkdir X (and X/supervisor) on the cgroup2 mount, which has no memory
    # controller, failed there and left the directories behind.
    assert "cgroup v1" in (_reason(tmp_path, monkeypatch, HYBRID, 'cgroup = "/a"') or "")


def test_explicit_cgroup_is_refused_under_require_cgroups_on_a_hybrid_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = 'cgroup = "/a"\nrequire_cgroups = true'
    with pytest.raises(CgroupError, match="cgroup v1"):
        _reason(tmp_path, monkeypatch, HYBRID, extra)


def test_explicit_cgroup_on_a_ready_host_is_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _reason(tmp_path, monkeypatch, READY, 'cgroup = "/a"') is None
