"""Config field types: each parses the user's spelling into the one type downstream code sees.

Sizes become ``int`` bytes (``None`` for the kernel's "max"), durations ``float`` seconds, stop
signals ``signal.Signals``, commands ``tuple[str, ...]``. Every value gets its bound here, where
it is parsed; a bad value raises a pydantic error whose message names the value and the fix.
The models (``model.py``) only combine these types.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
import shlex
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from oomguard.units import format_duration, parse_duration, parse_size

if TYPE_CHECKING:
    from collections.abc import Iterable

MiB = 1 << 20

#: Slice and service names become cgroup directory names, side by side under one tree root, so
#: they share one namespace. Lower-case only so two names never differ by case alone.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

#: The kernel's PSI trigger window bounds (kernel/sched/psi.c: WINDOW_MIN_US, WINDOW_MAX_US).
PSI_WINDOW_MIN = 0.5
PSI_WINDOW_MAX = 10.0
#: Without CAP_SYS_RESOURCE the kernel (6.x) only accepts windows that are a multiple of 2 s, so an
#: unprivileged oomguard (rootless container) cannot create a finer trigger.
PSI_UNPRIVILEGED_WINDOW = 2.0

#: oom_score_adj of the primary when not given. Not -1000: that value makes a task unkillable
#: even by the OOM killer of its own cgroup, so a runaway primary would wedge its slice.
PRIMARY_OOM_SCORE_ADJ = -999


# --------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------


def show(value: object) -> str:
    """A value as the user wrote it, for messages: TOML spelling, double quotes, truncated."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, list | tuple | dict):
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except ValueError:  # pragma: no cover - circular structures cannot come from TOML
            text = repr(value)
    elif isinstance(value, signal.Signals):
        text = value.name
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def custom_error(kind: str, message: str) -> PydanticCustomError:
    """A field error whose message is shown as-is (see `model.problems_from`)."""
    # The message travels as context, not as the template, so braces in user input are not
    # interpreted as format fields.
    return PydanticCustomError(kind, "{message}", {"message": message})


def _requote(message: str, value: object) -> str:
    """units.py quotes with repr ('12Q'); config messages quote the TOML way ("12Q")."""
    prefix = repr(value)
    return show(value) + message[len(prefix) :] if message.startswith(prefix) else message


def suggest(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f'; did you mean "{match[0]}"?' if match else ""


# --------------------------------------------------------------------------------------------
# Field types: each parses the user's spelling into the one type downstream code sees.
# --------------------------------------------------------------------------------------------

_SIZE_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "string"}, {"type": "integer", "minimum": 0}],
    "description": 'Bytes, or a size with a 1024-based unit: "512M", "1.5G", "64Ki", "max".',
}
_DURATION_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "string"}, {"type": "number", "minimum": 0}],
    "description": 'Seconds, or a duration with a unit: "100ms", "30s", "5m".',
}


def _size(value: object, *, allow_max: bool) -> int | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise custom_error(
            "size", f"{show(value)} is not a size; use e.g. 512M, 1.5G, 64Ki or plain bytes"
        )
    try:
        size = parse_size(value)
    except ValueError as err:
        raise custom_error("size", _requote(str(err), value)) from None
    if size is None and not allow_max:
        raise custom_error(
            "size", f'{show(value)} is not allowed here; give a size, e.g. 32M or "0"'
        )
    return size


def parse_limit(value: object) -> int | None:
    return None if value is None else _size(value, allow_max=True)


def _amount(value: object) -> int:
    size = _size(value, allow_max=False)
    assert size is not None  # allow_max=False never returns None
    return size


#: Upper bounds of durations, in seconds. Every duration has one: a deadline of ``now + 1e300``
#: overflows, and an epoll timeout in milliseconds is a C int (at most ~24.8 days).
HOUR = 3600.0
DAY = 24 * HOUR
WEEK = 7 * DAY


def _duration(
    value: object, minimum: float = 0.0, positive: bool = False, maximum: float = DAY
) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise custom_error(
            "duration", f"{show(value)} is not a duration; use e.g. 100ms, 30s or 5m"
        )
    try:
        seconds = parse_duration(value)
    except ValueError as err:
        raise custom_error("duration", _requote(str(err), value)) from None
    if seconds < minimum or (positive and seconds <= 0):
        floor = "more than 0" if positive else f"at least {format_duration(minimum)}"
        raise custom_error("duration", f"{show(value)} is too short; it must be {floor}")
    if seconds > maximum:
        raise custom_error(
            "duration",
            f"{show(value)} is too long; it must be at most {format_duration(maximum)}",
        )
    return seconds


def _start_secs(value: object) -> float:
    return _duration(value)


def _positive_duration(value: object) -> float:
    return _duration(value, positive=True)


def _long_duration(value: object) -> float:
    """backoff_reset and restart_window: windows over a service's history, so up to a week."""
    return _duration(value, positive=True, maximum=WEEK)


def _sample_interval(value: object) -> float:
    # Headroom sampling reads memory.current/memory.max of every slice; PSI triggers and
    # memory.events inotify already cover the fast path, so faster than 1 s only burns CPU.
    # Slower than an hour would leave a pressured budget unjudged for longer than any cooldown.
    return _duration(value, minimum=1.0, maximum=HOUR)


def _probe_interval(value: object) -> float:
    # Below 50 ms a command probe would fork faster than a slow guest can run it; above an
    # hour a service would be judged "not ready" for longer than any ready timeout allows.
    return _duration(value, minimum=0.05, maximum=HOUR)


def _watchdog(value: object) -> float:
    # The loop wakes for every watchdog deadline: under 1 s is a busy loop, not a watchdog.
    return _duration(value, minimum=1.0, maximum=HOUR)


def _int_in(value: object, lo: int, hi: int, rule: str) -> int:
    """An integer in lo..hi; ``rule`` ends the message, e.g. "criticality is 0..99"."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise custom_error("int", f"{show(value)} is not a whole number; {rule}")
    if not lo <= value <= hi:
        raise custom_error("range", f"{value} is out of range; {rule}")
    return value


def _criticality(value: object) -> int:
    return _int_in(value, 0, 99, "criticality is 0..99, higher = more important")


def _max_restarts(value: object) -> int:
    return _int_in(
        value, 1, 1_000_000, 'max_restarts is at least 1 (restart = "never" for no restarts)'
    )


def _oom_score_adj(value: object) -> int | None:
    if value is None:
        return None
    if value == -1000 and not isinstance(value, bool):
        raise custom_error(
            "oom_score_adj",
            "-1000 makes the process unkillable, even by its own cgroup's OOM killer, so a "
            "runaway service would hang its slice instead of dying; use -999 (the lowest "
            "oomguard allows)",
        )
    return _int_in(value, -999, 1000, "oom_score_adj is -999..1000")


def _fraction(value: object) -> float:
    """0.1 or "10%" -> 0.1."""
    number = _number_or_percent(value, scale=100.0, what='a fraction like 0.1 or "10%"')
    if not 0.0 <= number < 1.0:
        raise custom_error(
            "range", f"{show(value)} is out of range; give a fraction 0..1, e.g. 0.1"
        )
    return number


def _percent(value: object) -> float:
    """20 or "20%" -> 20.0 (PSI avg10 is a percentage of wall time)."""
    number = _number_or_percent(value, scale=1.0, what='a percentage like 20 or "20%"')
    if not 0.0 < number <= 100.0:
        raise custom_error("range", f"{show(value)} is out of range; give a percentage in (0, 100]")
    return number


def _number_or_percent(value: object, scale: float, what: str) -> float:
    if isinstance(value, bool):
        raise custom_error("number", f"{show(value)} is not {what}")
    if isinstance(value, int):
        # A huge TOML integer does not fit a float (OverflowError); it is out of range anyway.
        number = float(value) if abs(value) < 2**53 else math.inf
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str) and value.isascii() and value.strip().endswith("%"):
        # isascii: float() also reads other scripts' digits ("٣%").
        try:
            number = float(value.strip()[:-1]) / scale
        except ValueError:
            raise custom_error("number", f"{show(value)} is not {what}") from None
    else:
        raise custom_error("number", f"{show(value)} is not {what}")
    if not math.isfinite(number):
        raise custom_error("number", f"{show(value)} is not {what}")
    return number


def _signal(value: object) -> signal.Signals:
    bad = custom_error(
        "signal", f'{show(value)} is not a signal; use a name like "SIGTERM" or "INT", or a number'
    )
    if isinstance(value, signal.Signals):
        return value
    if isinstance(value, bool):
        raise bad
    if isinstance(value, str):
        text = value.strip().upper()
        if _is_ascii_number(text):
            value = int(text)
        else:
            try:
                return signal.Signals[text if text.startswith("SIG") else "SIG" + text]
            except KeyError:
                raise bad from None
    if isinstance(value, int):
        try:
            return signal.Signals(value)
        except ValueError:
            raise bad from None
    raise bad


def _command(value: object) -> tuple[str, ...]:
    example = 'e.g. ["postgres", "-D", "/data"] or "python3 backup.py"'
    if isinstance(value, str):
        try:
            parts = shlex.split(value)
        except ValueError as err:
            raise custom_error(
                "command",
                f"{show(value)} cannot be split like a shell would ({err}); fix the quoting or "
                "give a list",
            ) from None
    elif isinstance(value, list | tuple):
        if not all(isinstance(part, str) for part in value):
            raise custom_error(
                "command", f"{show(value)}: every element must be a string; {example}"
            )
        parts = list(value)
    else:
        raise custom_error("command", f"{show(value)} is not a command; {example}")
    if not parts:
        raise custom_error("command", f"is empty; give the program and its arguments, {example}")
    if not parts[0]:
        raise custom_error("command", "the program name (first element) is empty")
    if any("\0" in part for part in parts):
        raise custom_error("command", "contains a NUL byte, which no argv can hold")
    return tuple(parts)


def _opt_command(value: object) -> tuple[str, ...] | None:
    return None if value is None else _command(value)


#: The kernel's TASK_COMM_LEN is 16: a comm is at most 15 bytes.
COMM_MAX = 15
#: At most this many names in ``exclude_comm``: a list, not a database.
EXCLUDE_COMM_MAX = 64


def _comm_names(value: object) -> tuple[str, ...]:
    """exclude_comm: process names as /proc/<pid>/comm shows them."""
    example = 'e.g. ["autovacuum", "walwriter"]'
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise custom_error("comm", f"{show(value)} is not a list of process names; {example}")
    if len(value) > EXCLUDE_COMM_MAX:
        raise custom_error("comm", f"has {len(value)} names; at most {EXCLUDE_COMM_MAX}")
    for name in value:
        size = len(name.encode())
        if not 0 < size <= COMM_MAX or any(c in name for c in "\0\n"):
            raise custom_error(
                "comm",
                f"{show(name)} is not a process name: the kernel's comm is 1..{COMM_MAX} bytes "
                "without NUL or newline; use what `ps -o comm` or /proc/<pid>/comm shows",
            )
    return tuple(value)


#: Hooks run beside protection, never before it: a bound keeps a stuck hook from piling up.
HOOK_TIMEOUT_MAX = 60.0


def _hook_timeout(value: object) -> float:
    return _duration(value, positive=True, maximum=HOOK_TIMEOUT_MAX)


def _names(value: object) -> tuple[str, ...]:
    """depends_on: a list of service names, or one name as a string."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise custom_error("names", f'{show(value)} is not a list of service names; e.g. ["db"]')


def _name(value: object) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise custom_error(
            "name",
            f"{show(value)} is not a valid name; use 1-63 characters of a-z, 0-9, _ and -, "
            "starting with a letter or digit (it becomes a cgroup directory name)",
        )
    return value


def _env(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise custom_error("env", f'{show(value)} is not a table; e.g. env = {{ PGPORT = "5432" }}')
    env: dict[str, str] = {}
    for key, raw in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise custom_error(
                "env", f"{show(key)} is not a valid variable name (empty, or has = or NUL)"
            )
        # TOML gives numbers for PORT = 5432; the environment only holds strings. Booleans are
        # refused: "true", "1" and "yes" all exist in the wild and we cannot guess which is meant.
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise custom_error("env", f"{key} = {show(raw)}: a value must be a string or number")
        text = raw if isinstance(raw, str) else str(raw)
        if "\0" in text:
            raise custom_error("env", f"{key}: the value contains a NUL byte")
        env[key] = text
    return env


#: The largest uid/gid: uid_t is 32 bits and (uid_t)-1 means "unchanged" to setresuid(2).
MAX_ID = 2**32 - 2


def _is_ascii_number(text: str) -> bool:
    """``[0-9]+`` exactly: str.isdigit() alone also accepts "²" (which int() refuses) and "٣"
    (which int() reads as 3)."""
    return text.isascii() and text.isdigit()


def _ident(value: object) -> str | None:
    """user/group: a name or a numeric id. Resolved by the runtime, not here: /etc/passwd may
    differ between the host that validates and the one that runs."""
    if value is None:
        return None
    rule = f"a numeric id is 0..{MAX_ID} in ASCII digits"
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= MAX_ID:
            raise custom_error("ident", f"{show(value)} is out of range; {rule}")
        return str(value)
    if not isinstance(value, str) or not value:
        raise custom_error("ident", f"{show(value)} is not a user/group name or numeric id")
    if _is_ascii_number(value):
        if int(value) > MAX_ID:
            raise custom_error("ident", f"{show(value)} is out of range; {rule}")
        return value
    if any(c.isdigit() for c in value) and not value.isascii():
        raise custom_error(
            "ident", f"{show(value)} has non-ASCII digits; {rule}, or give the user's name"
        )
    if any(c in value for c in ":/") or any(not c.isprintable() or c.isspace() for c in value):
        raise custom_error(
            "ident",
            f"{show(value)} is not a user/group name (it has a ':', '/', a space or a control "
            "character)",
        )
    return value


def _abs_path(value: object) -> Path | None:
    if value is None or isinstance(value, Path):
        return value
    if not isinstance(value, str) or not value or "\0" in value:
        raise custom_error("path", f"{show(value)} is not a path")
    path = Path(value)
    if not path.is_absolute():
        raise custom_error("path", f"{show(value)} is relative; give an absolute path")
    return path


def _cgroup_root(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise custom_error("cgroup", f'{show(value)} is not a cgroup path; e.g. "/oomguard"')
    parts = value.strip().split("/")
    if parts and parts[0] == "":
        parts = parts[1:]
    if parts and parts[-1] == "":
        parts = parts[:-1]
    if not parts:
        raise custom_error(
            "cgroup",
            f"{show(value)} is the cgroup2 root, which has no memory.max; use a child such as "
            '"/oomguard"',
        )
    for part in parts:
        if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in part):
            raise custom_error(
                "cgroup",
                f"{show(value)} has a control character (a newline, tab or NUL) in "
                f'{show(part)}; use a plain name such as "/oomguard"',
            )
        if part in ("", ".", "..") or len(part.encode("utf-8", "surrogatepass")) > 255:
            raise custom_error(
                "cgroup",
                f'{show(value)} has an invalid component {show(part)}; use e.g. "/oomguard"',
            )
    return "/" + "/".join(parts)


def _listen(value: object) -> str | None:
    if value is None:
        return None
    bad = f'{show(value)} is not "host:port"; use e.g. "127.0.0.1:9187", ":9187" or "[::1]:9187"'
    if not isinstance(value, str):
        raise custom_error("listen", bad)
    host, sep, port = value.rpartition(":")
    if not sep or not _is_ascii_number(port) or len(port) > 5 or not 1 <= int(port) <= 65535:
        raise custom_error("listen", bad)
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if any(c.isspace() for c in host) or ("[" in bare or "]" in bare):
        raise custom_error("listen", bad)
    if ":" in bare and bare == host:
        raise custom_error("listen", f"{bad} (an IPv6 host needs brackets)")
    return value


Size = Annotated[int, BeforeValidator(_amount), WithJsonSchema(_SIZE_SCHEMA)]
"""Bytes; "max" refused (memory.min/low, reserve)."""
LimitSize = Annotated[int | None, BeforeValidator(parse_limit), WithJsonSchema(_SIZE_SCHEMA)]
"""Bytes, or None for the kernel's "max" (memory.high/max, swap.max)."""
StartSecs = Annotated[float, BeforeValidator(_start_secs), WithJsonSchema(_DURATION_SCHEMA)]
"""0 .. 1 day."""
PositiveDuration = Annotated[
    float, BeforeValidator(_positive_duration), WithJsonSchema(_DURATION_SCHEMA)
]
"""More than 0, at most 1 day."""
LongDuration = Annotated[float, BeforeValidator(_long_duration), WithJsonSchema(_DURATION_SCHEMA)]
"""More than 0, at most 7 days."""
SampleInterval = Annotated[
    float, BeforeValidator(_sample_interval), WithJsonSchema(_DURATION_SCHEMA)
]
Criticality = Annotated[int, BeforeValidator(_criticality)]
OomScoreAdj = Annotated[int | None, BeforeValidator(_oom_score_adj)]
MaxRestarts = Annotated[int, BeforeValidator(_max_restarts)]
Fraction = Annotated[
    float,
    BeforeValidator(_fraction),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string", "pattern": "%$"}]}),
]
Percent = Annotated[
    float,
    BeforeValidator(_percent),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string", "pattern": "%$"}]}),
]
#: A signal by name ("SIGINT", "INT") or number, as ``signal.Signals``. Not the policy's
#: ``Signal``: that is the action of sending one.
SignalName = Annotated[
    signal.Signals,
    BeforeValidator(_signal),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer"}]}),
]
Command = Annotated[
    tuple[str, ...],
    BeforeValidator(_command),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]
Names = Annotated[tuple[str, ...], BeforeValidator(_names)]
OptCommand = Annotated[
    tuple[str, ...] | None,
    BeforeValidator(_opt_command),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]
CommNames = Annotated[
    tuple[str, ...],
    BeforeValidator(_comm_names),
    WithJsonSchema({"type": "array", "items": {"type": "string", "maxLength": COMM_MAX}}),
]
HookTimeout = Annotated[float, BeforeValidator(_hook_timeout), WithJsonSchema(_DURATION_SCHEMA)]
"""More than 0, at most 60 s."""
Name = Annotated[
    str,
    BeforeValidator(_name),
    # JSON Schema patterns are unanchored.
    WithJsonSchema({"type": "string", "pattern": f"^{NAME_RE.pattern}$"}),
]
Env = Annotated[
    dict[str, str],
    BeforeValidator(_env),
    WithJsonSchema(
        {"type": "object", "additionalProperties": {"type": ["string", "integer", "number"]}}
    ),
]
Ident = Annotated[
    str | None,
    BeforeValidator(_ident),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer"}]}),
]
AbsPath = Annotated[Path, BeforeValidator(_abs_path), WithJsonSchema({"type": "string"})]
OptAbsPath = Annotated[Path | None, BeforeValidator(_abs_path), WithJsonSchema({"type": "string"})]
CgroupRoot = Annotated[
    str | None, BeforeValidator(_cgroup_root), WithJsonSchema({"type": "string"})
]
Listen = Annotated[str | None, BeforeValidator(_listen), WithJsonSchema({"type": "string"})]


def _tcp_target(value: object) -> str:
    checked = _listen(value)
    host = "" if checked is None else checked.rpartition(":")[0].strip("[]")
    if checked is None or not host:
        raise custom_error("tcp", f'{show(value)} needs a host; use e.g. "127.0.0.1:5432"')
    if host != "localhost":
        # An address, never a name: resolving one could block the loop on DNS at every probe.
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise custom_error(
                "tcp",
                f"{show(value)}: the host must be an IP address or localhost (a name would need "
                'DNS); use e.g. "127.0.0.1:5432" or "[::1]:5432"',
            ) from None
    return checked


ProbeInterval = Annotated[float, BeforeValidator(_probe_interval), WithJsonSchema(_DURATION_SCHEMA)]
"""50 ms .. 1 hour."""
Watchdog = Annotated[float | None, BeforeValidator(_watchdog), WithJsonSchema(_DURATION_SCHEMA)]
"""1 s .. 1 hour."""
TcpTarget = Annotated[str | None, BeforeValidator(_tcp_target), WithJsonSchema({"type": "string"})]
"""A numeric "host:port" (or localhost:port) to connect to."""

#: A service's role. Exactly one service is the primary (the cross-field checks see to it).
Role = Literal["primary", "sidecar"]
