"""Read a TOML config file, merge CLI overrides over it, validate it into a `Config`.

This is the one path from the outside world to a `Config`: the TOML file and command-line
options both end up as one nested mapping, validated once by the model. Every failure (missing
file, TOML syntax, bad field) is a `ConfigError` naming the file and, where it applies, the line
and column or the dotted field path. Never a traceback.
"""

from __future__ import annotations

import os
import re
import stat
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


#: The largest config file read. A real one is a few KiB; the cap keeps `validate /dev/zero`-like
#: mistakes (or a huge generated file) from reading until MemoryError.
MAX_CONFIG_BYTES = 1 << 20
#: How deeply tables and arrays may nest. The model's deepest key is 4 levels (a slice's
#: pressure thresholds) plus a command list; far deeper input is a mistake, and validating or
#: reporting it would recurse (pydantic, json.dumps) until RecursionError.
MAX_DEPTH = 32


def _read_capped(path: str | os.PathLike[str], source: str) -> bytes:
    """The file's bytes. Only a regular file, at most MAX_CONFIG_BYTES: a device (/dev/zero)
    would read forever and a FIFO would block until someone writes to it."""
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise _fail(source, "is a directory", "pass the config file itself")
        if not stat.S_ISREG(st.st_mode):
            raise _fail(
                source,
                f"is not a regular file (it is a {_kind(st.st_mode)})",
                "pass a TOML file; write the config to a file first",
            )
        with os.fdopen(fd, "rb", closefd=True) as fh:
            fd = -1
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    finally:
        if fd >= 0:
            os.close(fd)
    if len(raw) > MAX_CONFIG_BYTES:
        raise _fail(
            source,
            f"is larger than {MAX_CONFIG_BYTES >> 20} MiB, which no oomguard config needs",
            "check that this is the right file",
        )
    return raw


def _kind(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The file's TOML as plain data. Raises ConfigError naming the file (and line/column)."""
    source = os.fspath(path)
    try:
        raw = _read_capped(path, source)
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
    except ValueError:  # an embedded NUL in the path
        raise _fail(source, "is not a valid path (it has a NUL byte)", "fix the path") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise _fail(
            source, f"line {line}: not UTF-8 text", "TOML files must be UTF-8; re-save it"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise _fail(source, _toml_message(str(err)), "fix the TOML syntax there") from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively.
        raise _fail(source, *_too_deep()) from None
    except ValueError as err:
        # tomllib lets int() refuse integers of more than 4300 digits (CVE-2020-10735).
        raise _fail(
            source, f"TOML value out of range: {str(err)[:80]}", "no oomguard value is that long"
        ) from None
    if _data_depth(data) > MAX_DEPTH:
        raise _fail(source, *_too_deep())
    return data


def _too_deep() -> tuple[str, str]:
    return (
        f"tables or arrays nest more than {MAX_DEPTH} levels deep",
        "no oomguard key is nested that deeply; check for a generated or corrupted file",
    )


def _data_depth(data: object) -> int:
    """How deeply parsed data nests (dotted keys and [a.b.c] headers nest without brackets)."""
    deepest = 0
    todo: list[tuple[object, int]] = [(data, 0)]
    while todo:
        value, depth = todo.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        if isinstance(value, dict):
            todo.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            todo.extend((v, depth + 1) for v in value)
    return deepest


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
