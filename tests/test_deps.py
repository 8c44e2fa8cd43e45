"""tools/deps.py, the set-up of `make test` and `make demo`: which requirements it reads and how
it tells an interpreter that has them from one that lacks some (no install happens here; the
fresh-venv run is described in the README's quick start)."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_oomguard_deps", REPO / "tools" / "deps.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


deps = load()


def test_requirements_are_the_runtime_ones_and_the_dev_and_metrics_extras() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = deps.requirements()
    for req in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        assert req.replace(" ", "") in reqs
    assert "prometheus-client>=0.17" in reqs
    assert len(reqs) == len(set(reqs))  # prometheus-client is in two extras: listed once


def test_requirements_drop_markers_and_extras(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\ndependencies = ["a >= 1", "b[x]>=2; python_version < \'4\'"]\n'
        '[project.optional-dependencies]\ndev = ["c"]\nmetrics = ["a >= 1"]\n'
    )
    assert deps.requirements(pyproject) == ["a>=1", "b>=2", "c"]


def test_the_probe_finds_what_is_missing_or_too_old() -> None:
    reqs = ["click>=8.1", "pydantic>=2.5,<3", "click>=999", "pydantic<2", "no-such-dist-xyz"]
    assert deps.missing_in(sys.executable, reqs) == [
        "click>=999",
        "pydantic<2",
        "no-such-dist-xyz",
    ]
    # Distribution names are matched however they are spelt (prometheus-client/_client).
    assert deps.missing_in(sys.executable, ["prometheus_client", "PyYAML>=6"]) == []


def test_an_interpreter_that_cannot_run_is_none() -> None:
    assert deps.missing_in("/nonexistent/python", ["click"]) is None


def test_an_explicit_interpreter_with_everything_is_used_as_it_is() -> None:
    if deps.missing_in(sys.executable, deps.requirements()):
        pytest.skip("this interpreter lacks a requirement: choose_python would pip-install it")
    assert deps.choose_python(sys.executable) == sys.executable
