"""Config files that are not config files: too deep, too big, endless, or not files at all.
Each is a ConfigError naming the file (exit 2), never a traceback or a hang."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

import pytest

from oomguard.cli.app import run
from oomguard.config.load import MAX_CONFIG_BYTES, MAX_DEPTH, read_toml
from oomguard.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_5000_deep_arrays_are_an_error(tmp_path: Path) -> None:
    # Before: RecursionError out of tomllib, a traceback.
    path = _write(tmp_path, "a = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nest more than"):
        read_toml(path)


def test_deep_inline_tables_are_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "a = " + "{b = " * 3000 + "1" + "}" * 3000 + "\n")
    with pytest.raises(ConfigError, match="nest more than"):
        read_toml(path)


def test_nesting_just_past_the_limit_is_an_error(tmp_path: Path) -> None:
    depth = MAX_DEPTH + 1
    path = _write(tmp_path, "a = " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(ConfigError, match="nest more than"):
        read_toml(path)


def test_dotted_header_nesting_counts_too(tmp_path: Path) -> None:
    path = _write(tmp_path, "[" + ".".join(["t"] * (MAX_DEPTH + 2)) + "]\nx = 1\n")
    with pytest.raises(ConfigError, match="nest more than"):
        read_toml(path)


def test_dev_zero_is_refused_without_reading_it() -> None:
    # Before: read until MemoryError.
    with pytest.raises(ConfigError, match="not a regular file") as info:
        read_toml("/dev/zero")
    assert info.value.source == "/dev/zero"


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result: list[BaseException] = []

    def target() -> None:
        try:
            read_toml(fifo)
        except BaseException as err:
            result.append(err)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "opening the FIFO blocked"
    assert isinstance(result[0], ConfigError) and "FIFO" in str(result[0])


def test_file_over_the_size_cap_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "# " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        read_toml(path)


def test_integer_of_5000_digits_is_an_error(tmp_path: Path) -> None:
    # Before: int()'s 4300-digit limit escaped tomllib as a bare ValueError.
    path = _write(tmp_path, "a = " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError, match="out of range"):
        read_toml(path)


@pytest.mark.parametrize("target", ["/dev/zero", "deep"])
def test_validate_exits_2_without_traceback(
    tmp_path: Path, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if target == "deep":
        target = str(_write(tmp_path, "a = " + "[" * 5000 + "]" * 5000 + "\n"))
    assert run(["validate", target]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{target}:" in err
