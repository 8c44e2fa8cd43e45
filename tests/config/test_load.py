"""Loading: TOML file + overrides -> Config; every failure a ConfigError naming the file."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from oomguard.config.load import load_config, merge, read_toml
from oomguard.errors import ConfigError, Problem

if TYPE_CHECKING:
    from pathlib import Path

GOOD = """
[oomguard]
memory_max = "2G"

[slice.sidecars]
memory_max = "512M"

[service.db]
command = ["postgres", "-D", "/data"]
role = "primary"
memory_max = "1G"

[service.backup]
command = "python3 backup.py"
slice = "sidecars"
"""


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "oomguard.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def load_error(path: Path | str, overrides: dict[str, object] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        load_config(path, overrides)
    assert exc.value.source == str(path)
    return exc.value


def test_loads_a_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.primary_name == "db"
    assert cfg.slice_path("backup") == ("sidecars", "backup")
    assert cfg.oomguard.memory_max == 2 << 30
    # str paths work the same
    assert load_config(str(tmp_path / "oomguard.toml")) == cfg


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    err = load_error(missing)
    assert err.problems == [Problem("", "no such file")]
    assert err.hint is not None
    assert "check the path" in err.hint
    assert str(err).startswith(f"{missing}: no such file")


def test_directory(tmp_path: Path) -> None:
    err = load_error(tmp_path)
    assert err.problems[0].message == "is a directory"
    assert err.hint == "pass the config file itself"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable(tmp_path: Path) -> None:  # pragma: no cover - CI runs as root
    path = write(tmp_path, GOOD)
    path.chmod(0)
    assert load_error(path).problems[0].message == "permission denied"


def test_not_utf8(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, b'[oomguard]\nstate_dir = "/r\xff"\n'))
    assert err.problems[0].message == "line 2: not UTF-8 text"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[service.db]\ncommand = [1,\nrole = 'primary'\n",
            "TOML syntax error at line 3, column 1:",
        ),
        ("[oomguard]\nreserve 32M\n", "TOML syntax error at line 2, column 9:"),
        ('x = "unterminated', "TOML syntax error at the end of the file: Unterminated string"),
    ],
)
def test_toml_syntax_errors_name_line_and_column(tmp_path: Path, text: str, message: str) -> None:
    err = load_error(write(tmp_path, text))
    assert len(err.problems) == 1
    assert err.problems[0].path == ""
    assert err.problems[0].message.startswith(message)
    assert err.hint == "fix the TOML syntax there"


def test_read_toml_returns_plain_data(tmp_path: Path) -> None:
    data = read_toml(write(tmp_path, GOOD))
    assert data["service"]["db"]["memory_max"] == "1G"


def test_field_problems_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('memory_max = "1G"', 'memory_max = "1Q"'))
    err = load_error(path)
    assert [p.path for p in err.problems] == ["service.db.memory_max"]
    assert str(err).startswith(f'{path}: service.db.memory_max: "1Q" is not a size')


# -- overrides ----------------------------------------------------------------------------------


def test_merge_is_deep_and_pure() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    over = {"a": {"c": [3], "e": {"f": 1}}, "d": {"x": 1}}
    merged = merge(base, over)
    assert merged == {"a": {"b": 1, "c": [3], "e": {"f": 1}}, "d": {"x": 1}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert over == {"a": {"c": [3], "e": {"f": 1}}, "d": {"x": 1}}


def test_overrides_replace_file_values(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    cfg = load_config(
        path,
        {
            "oomguard": {"mode": "observe"},
            "service": {"db": {"command": ["postgres", "-D", "/other"]}},
        },
    )
    assert cfg.oomguard.mode == "observe"
    assert cfg.oomguard.memory_max == 2 << 30  # untouched siblings survive
    assert cfg.service["db"].command == ("postgres", "-D", "/other")
    assert cfg.service["db"].memory_max == 1 << 30


def test_overrides_can_add_a_service(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), {"service": {"exporter": {"command": "exp"}}})
    assert cfg.start_order() == ["db", "backup", "exporter"]  # equal criticality: file order


def test_overrides_can_fix_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('memory_max = "1G"', 'memory_max = "1Q"'))
    cfg = load_config(path, {"service": {"db": {"memory_max": "900M"}}})
    assert cfg.service["db"].memory_max == 900 << 20


def test_bad_override_names_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    err = load_error(path, {"service": {"db": {"stop_signal": "SIGNOPE"}}})
    assert [p.path for p in err.problems] == ["service.db.stop_signal"]
