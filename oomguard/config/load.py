"""Read a TOML config file, merge CLI overrides over it, validate it into a `Config`.

This is the one path from the outside world to a `Config`: the TOML file and command-line
options both end up as one nested mapping, validated once by the model. Every failure (missing
file, TOML syntax, bad field) is a `ConfigError` naming the file and, where it applies, the line
and column or the dotted field path. Never a traceback.
"""

from __future__ import annotations

import os
import re
import tomllib
from typing import TYPE_CHECKING, Any

from oomguard.config.model import Config
from oomguard.errors import ConfigError, Problem

if TYPE_CHECKING:
    from collections.abc import Mapping

# tomllib (3.11) puts the position only in the message: "Invalid value (at line 3, column 10)".
_TOML_POS = re.compile(
    r"^(?P<msg>.*?) \(at (?:line (?P<line>\d+), column (?P<col>\d+)|end of document)\)$"
)


def _fail(source: str, message: str, hint: str) -> ConfigError:
    err = ConfigError([Problem("", message)], source=source)
    err.hint = hint
    return err


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The file's TOML as plain data. Raises ConfigError naming the file (and line/column)."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise _fail(
            source, "no such file", "check the path; examples/demo.toml is a starting point"
        ) from None
    except IsADirectoryError:
        raise _fail(source, "is a directory", "pass the config file itself") from None
    except PermissionError:
        raise _fail(
            source, "permission denied", "run as a user that can read it, or fix its mode"
        ) from None
    except OSError as err:
        raise _fail(source, f"cannot read: {err.strerror or err}", "check the path") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise _fail(
            source, f"line {line}: not UTF-8 text", "TOML files must be UTF-8; re-save it"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise _fail(source, _toml_message(str(err)), "fix the TOML syntax there") from None


def _toml_message(text: str) -> str:
    match = _TOML_POS.match(text)
    if match is None:
        return f"TOML syntax error: {text}"
    if match["line"] is None:
        return f"TOML syntax error at the end of the file: {match['msg']}"
    return f"TOML syntax error at line {match['line']}, column {match['col']}: {match['msg']}"


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` over ``base``, recursively for tables; anything else is replaced whole
    (a list from the command line replaces the file's list). Neither input is modified."""
    out: dict[str, Any] = dict(base)
    for key, value in overrides.items():
        current = out.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            out[key] = merge(current, value)
        else:
            out[key] = value
    return out


def load_config(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> Config:
    """Read ``path``, merge ``overrides`` (a nested dict, e.g. ``{"oomguard": {"mode":
    "observe"}}``) over it, and validate. Raises ConfigError listing every problem."""
    data = read_toml(path)
    if overrides:
        data = merge(data, overrides)
    return Config.from_mapping(data, source=os.fspath(path))
