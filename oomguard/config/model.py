"""The config model: frozen pydantic models, validated once, compiled into plain values.

Everything a user can write is parsed here and nowhere else: sizes become ``int`` bytes (``None``
for the kernel's "max"), durations ``float`` seconds, stop signals ``signal.Signals``, commands
``tuple[str, ...]``. Downstream code (tree builder, launcher, policy) never converts a type or
re-validates.

Validation runs in two passes, both inside ``Config.model_validate``:

1. Field by field (pydantic): types, formats, ranges, unknown keys. Every bad field is reported.
2. Across fields (``_Checker``): one primary, the shared slice/service namespace, references and
   cycles, limit ordering. This pass only runs once pass 1 found nothing, because it needs typed
   values; it raises ``ConfigError`` (not a pydantic error) so each problem keeps its own dotted
   field path.

Use ``Config.from_mapping`` (or ``oomguard.config.load.load_config``): it turns both passes into a
single ``ConfigError`` listing every ``Problem``.

This module is pure: no I/O, no clock. pydantic is imported only by this module and ``load.py``,
so ``oomguard status`` never pays for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import heapq
import json
import math
import re
import shlex
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from oomguard.cgroup.spec import SUPERVISOR_LEAF, Limits, SliceSpec, TreeSpec
from oomguard.errors import ConfigError, Problem
from oomguard.units import format_duration, format_size, parse_duration, parse_size

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from pydantic_core import ErrorDetails

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


def _custom(kind: str, message: str) -> PydanticCustomError:
    # The message travels as context, not as the template, so braces in user input are not
    # interpreted as format fields.
    return PydanticCustomError(kind, "{message}", {"message": message})


def _requote(message: str, value: object) -> str:
    """units.py quotes with repr ('12Q'); config messages quote the TOML way ("12Q")."""
    prefix = repr(value)
    return show(value) + message[len(prefix) :] if message.startswith(prefix) else message


def _suggest(word: str, choices: Iterable[str]) -> str:
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
        raise _custom(
            "size", f"{show(value)} is not a size; use e.g. 512M, 1.5G, 64Ki or plain bytes"
        )
    try:
        size = parse_size(value)
    except ValueError as err:
        raise _custom("size", _requote(str(err), value)) from None
    if size is None and not allow_max:
        raise _custom("size", f'{show(value)} is not allowed here; give a size, e.g. 32M or "0"')
    return size


def _limit(value: object) -> int | None:
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
        raise _custom("duration", f"{show(value)} is not a duration; use e.g. 100ms, 30s or 5m")
    try:
        seconds = parse_duration(value)
    except ValueError as err:
        raise _custom("duration", _requote(str(err), value)) from None
    if seconds < minimum or (positive and seconds <= 0):
        floor = "more than 0" if positive else f"at least {format_duration(minimum)}"
        raise _custom("duration", f"{show(value)} is too short; it must be {floor}")
    if seconds > maximum:
        raise _custom(
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


def _int_in(value: object, lo: int, hi: int, rule: str) -> int:
    """An integer in lo..hi; ``rule`` ends the message, e.g. "criticality is 0..99"."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _custom("int", f"{show(value)} is not a whole number; {rule}")
    if not lo <= value <= hi:
        raise _custom("range", f"{value} is out of range; {rule}")
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
        raise _custom(
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
        raise _custom("range", f"{show(value)} is out of range; give a fraction 0..1, e.g. 0.1")
    return number


def _percent(value: object) -> float:
    """20 or "20%" -> 20.0 (PSI avg10 is a percentage of wall time)."""
    number = _number_or_percent(value, scale=1.0, what='a percentage like 20 or "20%"')
    if not 0.0 < number <= 100.0:
        raise _custom("range", f"{show(value)} is out of range; give a percentage in (0, 100]")
    return number


def _number_or_percent(value: object, scale: float, what: str) -> float:
    if isinstance(value, bool):
        raise _custom("number", f"{show(value)} is not {what}")
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
            raise _custom("number", f"{show(value)} is not {what}") from None
    else:
        raise _custom("number", f"{show(value)} is not {what}")
    if not math.isfinite(number):
        raise _custom("number", f"{show(value)} is not {what}")
    return number


def _signal(value: object) -> signal.Signals:
    bad = _custom(
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
            raise _custom(
                "command",
                f"{show(value)} cannot be split like a shell would ({err}); fix the quoting or "
                "give a list",
            ) from None
    elif isinstance(value, list | tuple):
        if not all(isinstance(part, str) for part in value):
            raise _custom("command", f"{show(value)}: every element must be a string; {example}")
        parts = list(value)
    else:
        raise _custom("command", f"{show(value)} is not a command; {example}")
    if not parts:
        raise _custom("command", f"is empty; give the program and its arguments, {example}")
    if not parts[0]:
        raise _custom("command", "the program name (first element) is empty")
    if any("\0" in part for part in parts):
        raise _custom("command", "contains a NUL byte, which no argv can hold")
    return tuple(parts)


def _names(value: object) -> tuple[str, ...]:
    """depends_on: a list of service names, or one name as a string."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise _custom("names", f'{show(value)} is not a list of service names; e.g. ["db"]')


def _name(value: object) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise _custom(
            "name",
            f"{show(value)} is not a valid name; use 1-63 characters of a-z, 0-9, _ and -, "
            "starting with a letter or digit (it becomes a cgroup directory name)",
        )
    return value


def _env(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _custom("env", f'{show(value)} is not a table; e.g. env = {{ PGPORT = "5432" }}')
    env: dict[str, str] = {}
    for key, raw in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise _custom(
                "env", f"{show(key)} is not a valid variable name (empty, or has = or NUL)"
            )
        # TOML gives numbers for PORT = 5432; the environment only holds strings. Booleans are
        # refused: "true", "1" and "yes" all exist in the wild and we cannot guess which is meant.
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise _custom("env", f"{key} = {show(raw)}: a value must be a string or number")
        text = raw if isinstance(raw, str) else str(raw)
        if "\0" in text:
            raise _custom("env", f"{key}: the value contains a NUL byte")
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
            raise _custom("ident", f"{show(value)} is out of range; {rule}")
        return str(value)
    if not isinstance(value, str) or not value:
        raise _custom("ident", f"{show(value)} is not a user/group name or numeric id")
    if _is_ascii_number(value):
        if int(value) > MAX_ID:
            raise _custom("ident", f"{show(value)} is out of range; {rule}")
        return value
    if any(c.isdigit() for c in value) and not value.isascii():
        raise _custom(
            "ident", f"{show(value)} has non-ASCII digits; {rule}, or give the user's name"
        )
    if any(c in value for c in ":/") or any(not c.isprintable() or c.isspace() for c in value):
        raise _custom(
            "ident",
            f"{show(value)} is not a user/group name (it has a ':', '/', a space or a control "
            "character)",
        )
    return value


def _abs_path(value: object) -> Path | None:
    if value is None or isinstance(value, Path):
        return value
    if not isinstance(value, str) or not value or "\0" in value:
        raise _custom("path", f"{show(value)} is not a path")
    path = Path(value)
    if not path.is_absolute():
        raise _custom("path", f"{show(value)} is relative; give an absolute path")
    return path


def _cgroup_root(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _custom("cgroup", f'{show(value)} is not a cgroup path; e.g. "/oomguard"')
    parts = value.strip().split("/")
    if parts and parts[0] == "":
        parts = parts[1:]
    if parts and parts[-1] == "":
        parts = parts[:-1]
    if not parts:
        raise _custom(
            "cgroup",
            f"{show(value)} is the cgroup2 root, which has no memory.max; use a child such as "
            '"/oomguard"',
        )
    for part in parts:
        if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in part):
            raise _custom(
                "cgroup",
                f"{show(value)} has a control character (a newline, tab or NUL) in "
                f'{show(part)}; use a plain name such as "/oomguard"',
            )
        if part in ("", ".", "..") or len(part.encode("utf-8", "surrogatepass")) > 255:
            raise _custom(
                "cgroup",
                f'{show(value)} has an invalid component {show(part)}; use e.g. "/oomguard"',
            )
    return "/" + "/".join(parts)


def _listen(value: object) -> str | None:
    if value is None:
        return None
    bad = f'{show(value)} is not "host:port"; use e.g. "127.0.0.1:9187", ":9187" or "[::1]:9187"'
    if not isinstance(value, str):
        raise _custom("listen", bad)
    host, sep, port = value.rpartition(":")
    if not sep or not _is_ascii_number(port) or len(port) > 5 or not 1 <= int(port) <= 65535:
        raise _custom("listen", bad)
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if any(c.isspace() for c in host) or ("[" in bare or "]" in bare):
        raise _custom("listen", bad)
    if ":" in bare and bare == host:
        raise _custom("listen", f"{bad} (an IPv6 host needs brackets)")
    return value


Size = Annotated[int, BeforeValidator(_amount), WithJsonSchema(_SIZE_SCHEMA)]
"""Bytes; "max" refused (memory.min/low, reserve)."""
LimitSize = Annotated[int | None, BeforeValidator(_limit), WithJsonSchema(_SIZE_SCHEMA)]
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
Signal = Annotated[
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


class _Model(BaseModel):
    # frozen: a Config is a value, shared by every component; extra="forbid": a typo must not
    # silently become "use the default".
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------------------------
# Pressure
# --------------------------------------------------------------------------------------------


class PsiTrigger(_Model):
    """A PSI trigger, written to a memory.pressure fd as ``"some <stall_us> <window_us>"``:
    fire when tasks stalled for ``stall`` seconds in total within any ``window``."""

    kind: Literal["some", "full"]
    stall: float
    window: float

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        words = data.split()
        hint = 'use e.g. "some 150ms 2s" (some|full, stall time, window)'
        if len(words) != 3 or words[0] not in ("some", "full"):
            raise _custom("psi_trigger", f"{show(data)} is not a PSI trigger; {hint}")
        try:
            stall, window = parse_duration(words[1]), parse_duration(words[2])
        except ValueError:
            raise _custom("psi_trigger", f"{show(data)} has a bad duration; {hint}") from None
        return {"kind": words[0], "stall": stall, "window": window}

    @model_validator(mode="after")
    def _bounds(self) -> PsiTrigger:
        if not PSI_WINDOW_MIN <= self.window <= PSI_WINDOW_MAX:
            raise _custom(
                "psi_trigger",
                f"window {format_duration(self.window)} is outside the kernel's 500ms..10s",
            )
        if not 0 < self.stall <= self.window:
            raise _custom(
                "psi_trigger",
                f"stall {format_duration(self.stall)} must be more than 0 and at most the "
                f"window {format_duration(self.window)}",
            )
        return self

    def kernel_line(self) -> str:
        """What to write to the memory.pressure fd (microseconds)."""
        return f"{self.kind} {round(self.stall * 1e6)} {round(self.window * 1e6)}"

    def __str__(self) -> str:
        return f"{self.kind} {format_duration(self.stall)} {format_duration(self.window)}"


_PSI_SCHEMA = WithJsonSchema({"type": "string", "examples": ["some 150ms 2s"]})
PsiTriggerSpec = Annotated[PsiTrigger, _PSI_SCHEMA]
OptPsiTriggerSpec = Annotated[PsiTrigger | None, _PSI_SCHEMA]


class PressureConfig(_Model):
    """Thresholds of the pressure response, for one budget (a slice, or the whole tree).

    A budget is "under pressure" when its headroom ``1 - memory.current / memory.max`` falls
    below ``headroom_min``, or its PSI ``some avg10`` rises above ``psi_some_avg10``, or the PSI
    trigger fires. oomguard then evicts the least critical evictable sidecar, waits ``cooldown``
    before the next eviction, and restores evicted sidecars once the budget has been calm for
    ``hysteresis``.
    """

    headroom_min: Fraction = 0.10
    psi_some_avg10: Percent = 20.0
    psi_trigger: PsiTriggerSpec = Field(
        default=PsiTrigger(kind="some", stall=0.15, window=2.0),
        json_schema_extra={"default": "some 150ms 2s"},  # as a user writes it
    )
    hysteresis: PositiveDuration = 30.0
    cooldown: PositiveDuration = 5.0
    sample_interval: SampleInterval = 1.0

    def merged(self, override: PressureOverride) -> PressureConfig:
        """These thresholds with every field the override sets replaced."""
        update = {k: v for k, v in override if v is not None}
        return self.model_copy(update=update) if update else self


class PressureOverride(_Model):
    """``[slice.X.pressure]``: the same keys as ``[oomguard.pressure]``; unset ones inherit."""

    headroom_min: Fraction | None = None
    psi_some_avg10: Percent | None = None
    psi_trigger: OptPsiTriggerSpec = None
    hysteresis: PositiveDuration | None = None
    cooldown: PositiveDuration | None = None
    sample_interval: SampleInterval | None = None


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


class OomguardSection(_Model):
    """``[oomguard]``: the supervisor itself and the tree root."""

    reserve: Size = Field(
        default=32 * MiB, description="memory.min of oomguard's own leaf, so it survives reclaim."
    )
    memory_max: LimitSize = Field(
        default=None, description="memory.max of the whole tree (None = max)."
    )
    state_dir: AbsPath = Path("/run/oomguard")
    cgroup: CgroupRoot = Field(
        default=None,
        description='Tree root under the cgroup2 mount, e.g. "/oomguard"; '
        'default "<own cgroup>/oomguard".',
    )
    mode: Literal["enforce", "observe"] = "enforce"
    log_format: Literal["kv", "json"] = "kv"
    metrics_listen: Listen = None
    require_cgroups: StrictBool = Field(
        default=False,
        description="Refuse to start without a writable cgroup v2 memory controller, instead of "
        "running degraded (oom_score_adj only, OOM kills detected from /proc/vmstat).",
    )
    pressure: PressureConfig = Field(default_factory=PressureConfig)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """``metrics_listen`` split for a socket: ``("::1", 9187)``; "" host means all."""
        if self.metrics_listen is None:
            return None
        host, _, port = self.metrics_listen.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return host, int(port)


class _Budget(_Model):
    """The memory files every slice and service cgroup gets."""

    memory_min: Size = Field(default=0, description="memory.min: hard protection from reclaim.")
    memory_low: Size = Field(
        default=0, description="memory.low: best-effort protection from reclaim."
    )
    memory_high: LimitSize = Field(default=None, description="memory.high: throttle above this.")
    memory_max: LimitSize = Field(default=None, description="memory.max: OOM-kill above this.")
    swap_max: LimitSize = Field(default=None, description="memory.swap.max.")
    oom_group: StrictBool = Field(
        default=False, description="memory.oom.group: an OOM kill takes the whole cgroup."
    )

    def limits(self) -> Limits:
        return Limits(
            min=self.memory_min,
            low=self.memory_low,
            high=self.memory_high,
            max=self.memory_max,
            swap_max=self.swap_max,
            oom_group=self.oom_group,
        )


class SliceConfig(_Budget):
    """``[slice.X]``: an intermediate budget that services (and slices) go into."""

    parent: str | None = Field(default=None, description="Nest this slice inside another slice.")
    pressure: PressureOverride = Field(default_factory=PressureOverride)


Role = Literal["primary", "sidecar"]
Restart = Literal["always", "on-failure", "never"]


class ServiceConfig(_Budget):
    """``[service.X]``: one supervised command in its own cgroup."""

    command: Command
    role: Role = "sidecar"
    slice: str | None = Field(default=None, description="Put this service inside [slice.<name>].")
    criticality: Criticality = Field(
        default=50, description="Sidecars only, 0..99: higher is evicted/OOM-killed later."
    )
    oom_score_adj: OomScoreAdj = Field(
        default=None,
        description="Default: -999 for the primary, 1000 - 10 * criticality for sidecars.",
    )
    restart: Restart = "always"
    depends_on: Names = ()
    stop_signal: Signal = Field(default=signal.SIGTERM, json_schema_extra={"default": "SIGTERM"})
    stop_timeout: PositiveDuration = 10.0
    user: Ident = None
    group: Ident = None
    env: Env = Field(default_factory=dict)
    inherit_env: StrictBool = Field(
        default=False,
        description="Pass oomguard's whole environment to the service (then `env` over it). "
        "Default: a clean environment (PATH, HOME, USER, LOGNAME, SHELL, then `env`).",
    )
    cwd: OptAbsPath = Field(
        default=None, description="Working directory. Default: the user's home, else /."
    )
    log: Literal["inherit", "prefix"] = "inherit"
    start_secs: StartSecs = 1.0
    backoff_initial: PositiveDuration = 0.1
    backoff_max: PositiveDuration = 30.0
    backoff_reset: LongDuration = 60.0
    max_restarts: MaxRestarts = 10
    restart_window: LongDuration = 300.0
    essential: StrictBool = Field(
        default=False,
        description="If it fails for good, stop oomguard. Default: true for the primary.",
    )
    survive_partial_kill: StrictBool = False
    pressure_watch: StrictBool = False
    watermark: LimitSize = Field(
        default=None,
        description="Primary only: controlled restart above this. Default: memory_high.",
    )
    evictable: StrictBool = Field(
        default=True, description="Sidecars only: may be stopped to relieve pressure."
    )
    oom_group: StrictBool = Field(
        default=True,
        description="memory.oom.group: an OOM kill takes the whole service. Default: true for "
        "sidecars, false for the primary.",
    )

    @model_validator(mode="before")
    @classmethod
    def _role_defaults(cls, data: Any) -> Any:
        """Fill the defaults that depend on the role, before the fields are validated, so the
        fields stay plain ``bool``/``int`` downstream instead of "None = depends"."""
        if not isinstance(data, dict):
            return data
        if data.get("role", "sidecar") == "primary":
            defaults: dict[str, Any] = {"essential": True, "evictable": False, "oom_group": False}
            # The watermark defaults to memory_high. Copy it only when it parses: a bad
            # memory_high is reported once, at its own path, not again as a bad watermark.
            with contextlib.suppress(PydanticCustomError):
                defaults["watermark"] = _limit(data.get("memory_high"))
        else:
            defaults = {"essential": False, "evictable": True, "oom_group": True}
        return {**defaults, **data}

    @property
    def is_primary(self) -> bool:
        return self.role == "primary"


# --------------------------------------------------------------------------------------------
# The config
# --------------------------------------------------------------------------------------------


class Config(_Model):
    """A whole oomguard config. Build it with ``from_mapping`` or ``load_config``."""

    oomguard: OomguardSection = OomguardSection()
    # additionalProperties: keys not matching the name pattern are refused by the schema too.
    slice: dict[Name, SliceConfig] = Field(
        default_factory=dict, json_schema_extra={"additionalProperties": False}
    )
    service: dict[Name, ServiceConfig] = Field(
        default_factory=dict, json_schema_extra={"additionalProperties": False}
    )

    @model_validator(mode="after")
    def _cross_check(self) -> Config:
        problems = _Checker(self).problems()
        if problems:
            raise ConfigError(problems)
        return self

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str | None = None) -> Config:
        """Validate plain data (parsed TOML, or what ``oomguard exec`` builds from options).
        Raises ``ConfigError(problems, source)`` listing every problem found."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(problems_from(err), source=source) from None
        except ConfigError as err:
            raise ConfigError(err.problems, source=source) from None

    # -- derived API (pure) ---------------------------------------------------------------

    @property
    def primary_name(self) -> str:
        return next(name for name, svc in self.service.items() if svc.is_primary)

    @property
    def primary(self) -> ServiceConfig:
        return self.service[self.primary_name]

    def sidecar_names(self) -> list[str]:
        return [name for name, svc in self.service.items() if not svc.is_primary]

    def oom_score_adj(self, name: str) -> int:
        """The explicit value if given; else -999 for the primary and ``1000 - 10 *
        criticality`` for a sidecar (criticality 0 -> 1000 ... 99 -> 10).

        The kernel's badness (mm/oom_kill.c) is the task's memory plus ``oom_score_adj / 1000``
        of the OOMing cgroup's limit: in thousandths of the limit, usage + adj. A 10-point
        criticality gap (100 adj) therefore outweighs a 10% size difference. The primary at -999
        scores at most 1 (it cannot use more than the whole limit) while every sidecar scores at
        least 10, so the kernel picks the primary only when no sidecar is left in the OOMing
        cgroup. -999 rather than -1000 keeps it killable by its own slice's OOM: a runaway
        primary dies (and is restarted) instead of wedging its cgroup.
        """
        svc = self.service[name]
        if svc.oom_score_adj is not None:
            return svc.oom_score_adj
        if svc.is_primary:
            return PRIMARY_OOM_SCORE_ADJ
        return 1000 - 10 * svc.criticality

    def start_order(self) -> list[str]:
        """Dependencies first, always. Among services that are ready to start: the primary and
        what it (transitively) depends on, then sidecars by descending criticality, then file
        order. The primary is up as early as its dependencies allow: it is what is waited on."""
        index = {name: i for i, name in enumerate(self.service)}
        first = self._dependency_closure(self.primary_name)

        def key(name: str) -> tuple[int, int, int]:
            return (0 if name in first else 1, -self.service[name].criticality, index[name])

        waiting = {name: set(svc.depends_on) for name, svc in self.service.items()}
        ready = [key(name) for name, deps in waiting.items() if not deps]
        heapq.heapify(ready)
        names = list(self.service)
        order: list[str] = []
        while ready:
            name = names[heapq.heappop(ready)[2]]
            order.append(name)
            for other, deps in waiting.items():
                if name in deps:
                    deps.discard(name)
                    if not deps:
                        heapq.heappush(ready, key(other))
        # The cross-check refused dependency cycles, so every service was reached.
        assert len(order) == len(self.service), "dependency cycle slipped through validation"
        return order

    def _dependency_closure(self, name: str) -> set[str]:
        """``name`` and everything it depends on, directly or not."""
        seen = {name}
        todo = [name]
        while todo:
            for dep in self.service[todo.pop()].depends_on:
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return seen

    def stop_order(self) -> list[str]:
        """The reverse of start_order: dependents stop before what they depend on."""
        return self.start_order()[::-1]

    def eviction_order(self) -> list[str]:
        """Evictable sidecars, the first to evict first: highest oom_score_adj (least
        critical), then later in the file."""
        names = [n for n in self.sidecar_names() if self.service[n].evictable]
        index = {name: i for i, name in enumerate(self.service)}
        return sorted(names, key=lambda n: (-self.oom_score_adj(n), -index[n]))

    def slice_chain(self, name: str) -> list[str]:
        """The slices enclosing a slice or service, outermost first (a slice includes itself)."""
        chain: list[str] = []
        current = name if name in self.slice else self.service[name].slice
        while current is not None:
            chain.append(current)
            current = self.slice[current].parent
        return chain[::-1]

    def slice_path(self, name: str) -> tuple[str, ...]:
        """Where a slice or service lives, relative to the tree root: ("sidecars", "backup")."""
        if name in self.slice:
            return tuple(self.slice_chain(name))
        if name in self.service:
            return (*self.slice_chain(name), name)
        raise KeyError(f"no slice or service named {name!r}")

    def pressure_for(self, name: str) -> PressureConfig:
        """The effective thresholds of a slice (or of the slice a service is in): the global
        ``[oomguard.pressure]`` with each enclosing slice's overrides applied, outermost first."""
        result = self.oomguard.pressure
        for slice_name in self.slice_chain(name):
            result = result.merged(self.slice[slice_name].pressure)
        return result

    def primary_low(self) -> int:
        """The primary's memory.low: its own ``memory_low`` when it sets ``memory_min`` or
        ``memory_low``; otherwise derived, as the most the primary can hold without a limit
        being hit:

        * the part of the tree's budget that no sidecar limit can take, i.e. ``[oomguard]
          memory_max - reserve - memory_max`` of every other top-level slice or service (one
          without a memory_max takes nothing from this figure: it is the least critical and its
          unprotected usage is what reclaim takes first);
        * capped by the primary's own ``memory_high`` and ``memory_max`` where set.

        With none of these figures (no limit anywhere) nothing is derived: 0. Why a number and not
        "max", and what it protects against: docs/config.md, "Protecting the primary".
        """
        svc = self.primary
        if {"memory_min", "memory_low"} & svc.model_fields_set:
            return svc.memory_low
        candidates = [v for v in (svc.memory_high, svc.memory_max) if v is not None]
        tree = self.oomguard.memory_max
        if tree is not None:
            own_top = self.slice_path(self.primary_name)[0]
            others = [n for n in self._top_level() if n != own_top]
            taken = sum(self._budget(n).memory_max or 0 for n in others)
            candidates.append(max(0, tree - self.oomguard.reserve - taken))
        return min(candidates, default=0)

    def _top_level(self) -> list[str]:
        names = [n for n, s in self.slice.items() if s.parent is None]
        return names + [n for n, s in self.service.items() if s.slice is None]

    def _budget(self, name: str) -> _Budget:
        return self.slice[name] if name in self.slice else self.service[name]

    def _slice_limits(self, name: str, lows: Mapping[str, int]) -> Limits:
        limits = self._budget(name).limits()
        if name in lows:
            limits = dataclasses.replace(limits, low=lows[name])
        return limits

    def _derived_lows(self) -> dict[str, int]:
        """memory.low of the primary and of each enclosing slice that does not set its own:
        protection is hierarchical (a child's effective memory.low is capped by its parent's), so
        every slice on the way down claims what its children claim."""
        lows = {self.primary_name: self.primary_low()}
        for name in reversed(self.slice_chain(self.primary_name)):
            if {"memory_min", "memory_low"} & self.slice[name].model_fields_set:
                break
            kids = [n for n, s in self.slice.items() if s.parent == name]
            kids += [n for n, s in self.service.items() if s.slice == name]
            lows[name] = sum(lows.get(k, self._budget(k).memory_low) for k in kids)
        return lows

    def tree_spec(self) -> TreeSpec:
        """The slice tree to build: slices parents first (then file order), then services in
        start order. A service goes under its slice; top-level ones under the root. The primary
        (and the slices around it) get the derived memory.low of `primary_low`."""
        slice_index = {name: i for i, name in enumerate(self.slice)}
        slices = sorted(self.slice, key=lambda n: (len(self.slice_chain(n)), slice_index[n]))
        lows = self._derived_lows()
        specs = [
            SliceSpec(name, self.slice_path(name), "slice", self._slice_limits(name, lows))
            for name in slices
        ]
        specs += [
            SliceSpec(name, self.slice_path(name), "service", self._slice_limits(name, lows))
            for name in self.start_order()
        ]
        return TreeSpec(
            root=self.oomguard.cgroup,
            reserve=self.oomguard.reserve,
            memory_max=self.oomguard.memory_max,
            slices=tuple(specs),
        )

    def warnings(self) -> list[Problem]:
        """Things that are allowed but probably not meant (overcommitted budgets, limits above
        a parent's, protection a parent cancels, PSI windows that need privileges)."""
        return _warnings(self)


def json_schema() -> dict[str, Any]:
    """The JSON schema of the TOML file (``oomguard validate --schema``)."""
    return Config.model_json_schema()


# --------------------------------------------------------------------------------------------
# pydantic errors -> Problems
# --------------------------------------------------------------------------------------------

_TABLES: dict[tuple[str, ...], type[BaseModel]] = {
    (): Config,
    ("oomguard",): OomguardSection,
    ("oomguard", "pressure"): PressureConfig,
    ("slice", "*"): SliceConfig,
    ("slice", "*", "pressure"): PressureOverride,
    ("service", "*"): ServiceConfig,
}
_IDENT_RE = re.compile(r"[A-Za-z0-9_-]+")


def dotted(loc: Iterable[int | str]) -> str:
    """("service", "db", "command", 0) -> "service.db.command[0]"."""
    out = ""
    for part in loc:
        if part == "[key]":
            continue  # a bad dict key: the path up to it already names the key
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if _IDENT_RE.fullmatch(part) else json.dumps(part)
            out += f".{text}" if out else text
    return out


def _table_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    key = tuple(
        "*" if i == 1 and loc[0] in ("slice", "service") else str(p) for i, p in enumerate(loc)
    )
    return _TABLES.get(key)


def _unknown_key(loc: tuple[int | str, ...]) -> str:
    key = str(loc[-1])
    table = _table_at(loc[:-1])
    if table is None:
        return "unknown key"
    fields = list(table.model_fields)
    if table is SliceConfig and key in ServiceConfig.model_fields:
        return f'"{key}" is a service key, not a slice key; did you mean [service.{loc[1]}]?'
    hint = _suggest(key, fields)
    if not hint:
        hint = "; valid keys: " + ", ".join(fields)
    return f"unknown key{hint}"


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        return _unknown_key(tuple(error["loc"]))
    if kind == "missing":
        return "is required"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a table, got {show(value)}"
    ctx = error.get("ctx") or {}
    if "message" in ctx and isinstance(ctx["message"], str):
        return ctx["message"]  # one of ours (_custom): it already shows the value
    if kind == "literal_error":
        expected = str(ctx.get("expected", "one of the documented values")).replace("'", '"')
        return f"{show(value)} is not allowed; use {expected}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{show(value)} is not a boolean; use true or false"
    if kind == "string_type":
        return f"{show(value)} is not a string"
    msg = error["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"{msg}, got {show(value)}"


def problems_from(err: ValidationError) -> list[Problem]:
    """Each pydantic error as a Problem with a dotted field path and a message for humans."""
    return [Problem(dotted(e["loc"]), _message(e)) for e in err.errors()]


# --------------------------------------------------------------------------------------------
# Cross-field checks (pass 2) and warnings
# --------------------------------------------------------------------------------------------

_ORDERED_LIMITS = ("memory_min", "memory_low", "memory_high", "memory_max")


def _fmt(value: int | None) -> str:
    return format_size(value)


class _Checker:
    """Every check that needs more than one field. Appends Problems; never stops early."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.out: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.out.append(Problem(path, message))

    def problems(self) -> list[Problem]:
        self._names()
        self._primary()
        self._slice_refs()
        self._service_refs()
        self._depends_cycles()
        self._limits()
        self._services()
        return self.out

    def _names(self) -> None:
        cfg = self.cfg
        for table, names in (("slice", cfg.slice), ("service", cfg.service)):
            for name in names:
                if name == SUPERVISOR_LEAF:
                    self.add(
                        f"{table}.{name}",
                        f'"{SUPERVISOR_LEAF}" is reserved for oomguard\'s own cgroup; '
                        "pick another name",
                    )
        for name in cfg.service:
            if name in cfg.slice:
                self.add(
                    f"service.{name}",
                    f'"{name}" is also a slice; slices and services share one namespace '
                    "because both become cgroup directories; rename one",
                )

    def _primary(self) -> None:
        cfg = self.cfg
        if not cfg.service:
            self.add(
                "service",
                "no services defined; add at least the primary, e.g. [service.db] with "
                'command = [...] and role = "primary"',
            )
            return
        primaries = [n for n, s in cfg.service.items() if s.is_primary]
        if not primaries:
            self.add(
                "service",
                f'no service has role = "primary" (services: {", ".join(cfg.service)}); '
                "mark exactly one as the primary",
            )
        elif len(primaries) > 1:
            for name in primaries:
                self.add(
                    f"service.{name}.role",
                    f"{len(primaries)} services are primary ({', '.join(primaries)}); exactly "
                    'one may be; make the others role = "sidecar"',
                )

    def _ref(self, path: str, name: str, kind: str, known: dict[str, Any]) -> bool:
        if name in known:
            return True
        other = "service" if kind == "slice" else "slice"
        other_known = self.cfg.service if kind == "slice" else self.cfg.slice
        if name in other_known:
            self.add(path, f'"{name}" is a {other}, not a {kind}')
            return False
        hint = _suggest(name, known)
        if not hint:
            hint = f"; defined: {', '.join(known)}" if known else f"; define [{kind}.{name}]"
        self.add(path, f'no {kind} named "{name}"{hint}')
        return False

    def _slice_refs(self) -> None:
        cfg = self.cfg
        seen_cycles: set[frozenset[str]] = set()
        for name, sl in cfg.slice.items():
            if sl.parent is None:
                continue
            if not self._ref(f"slice.{name}.parent", sl.parent, "slice", cfg.slice):
                continue
            chain = [name]
            current: str | None = sl.parent
            while current is not None and current in cfg.slice and current not in chain:
                chain.append(current)
                current = cfg.slice[current].parent
            if current is not None and current in chain:
                cycle = chain[chain.index(current) :]
                if frozenset(cycle) not in seen_cycles:
                    seen_cycles.add(frozenset(cycle))
                    text = " -> ".join([*cycle, current])
                    self.add(
                        f"slice.{cycle[0]}.parent",
                        f"slices nest in a cycle: {text}; a slice cannot contain itself",
                    )

    def _service_refs(self) -> None:
        cfg = self.cfg
        for name, svc in cfg.service.items():
            if svc.slice is not None:
                self._ref(f"service.{name}.slice", svc.slice, "slice", cfg.slice)
            seen: set[str] = set()
            for dep in svc.depends_on:
                path = f"service.{name}.depends_on"
                if dep == name:
                    self.add(path, f'"{name}" depends on itself')
                elif dep in seen:
                    self.add(path, f'"{dep}" is listed twice')
                else:
                    self._ref(path, dep, "service", cfg.service)
                seen.add(dep)

    def _depends_cycles(self) -> None:
        cfg = self.cfg
        graph = {
            n: [d for d in s.depends_on if d in cfg.service and d != n]
            for n, s in cfg.service.items()
        }
        state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = done
        stack: list[str] = []
        seen_cycles: set[frozenset[str]] = set()

        def visit(node: str) -> None:
            state[node] = 1
            stack.append(node)
            for dep in graph[node]:
                if state.get(dep) == 1:
                    cycle = stack[stack.index(dep) :]
                    if frozenset(cycle) not in seen_cycles:
                        seen_cycles.add(frozenset(cycle))
                        text = " -> ".join([*cycle, dep])
                        self.add(
                            f"service.{cycle[0]}.depends_on",
                            f"dependency cycle: {text}; none of them could start first",
                        )
                elif dep not in state:
                    visit(dep)
            stack.pop()
            state[node] = 2

        for node in graph:
            if node not in state:
                visit(node)

    def _limit_order(self, prefix: str, budget: _Budget) -> None:
        # memory_min <= memory_low <= memory_high <= memory_max, for the ones that are set
        # (0 for min/low and "max" for high/max mean unset). Protection above a limit can never
        # be used, and memory.high above memory.max means the kernel OOM-kills before it ever
        # throttles, which throws away the earliest warning sign.
        values = {
            "memory_min": budget.memory_min or None,
            "memory_low": budget.memory_low or None,
            "memory_high": budget.memory_high,
            "memory_max": budget.memory_max,
        }
        for i, lower in enumerate(_ORDERED_LIMITS):
            low_value = values[lower]
            if low_value is None:
                continue
            for upper in _ORDERED_LIMITS[i + 1 :]:
                up_value = values[upper]
                if up_value is not None and low_value > up_value:
                    self.add(
                        f"{prefix}.{lower}",
                        f"{lower} ({_fmt(low_value)}) is above {upper} ({_fmt(up_value)}); "
                        "keep memory_min <= memory_low <= memory_high <= memory_max",
                    )
                    break

    def _limits(self) -> None:
        cfg = self.cfg
        top = cfg.oomguard
        if top.memory_max is not None and top.reserve >= top.memory_max:
            self.add(
                "oomguard.reserve",
                f"reserve ({_fmt(top.reserve)}) is not below oomguard.memory_max "
                f"({_fmt(top.memory_max)}); nothing would be left for the services",
            )
        for name, sl in cfg.slice.items():
            self._limit_order(f"slice.{name}", sl)
        for name, svc in cfg.service.items():
            self._limit_order(f"service.{name}", svc)

    def _services(self) -> None:
        for name, svc in self.cfg.service.items():
            path = f"service.{name}"
            set_fields = svc.model_fields_set
            if svc.is_primary:
                if "criticality" in set_fields:
                    self.add(
                        f"{path}.criticality",
                        "the primary has no criticality: it ranks above every sidecar; remove "
                        "it (or set oom_score_adj to tune its OOM rank)",
                    )
                if svc.evictable:
                    self.add(
                        f"{path}.evictable",
                        "the primary is never evictable: evicting it is the outage oomguard "
                        "exists to prevent; remove it",
                    )
            elif "watermark" in set_fields and svc.watermark is not None:
                self.add(
                    f"{path}.watermark",
                    "watermark only applies to the primary (a controlled restart before the "
                    "OOM killer acts); for a sidecar use memory_high/memory_max",
                )
            # A watermark inherited from memory_high is covered by the limit-order check.
            if (
                svc.watermark is not None
                and svc.memory_max is not None
                and svc.watermark > svc.memory_max
                and svc.watermark != svc.memory_high
            ):
                self.add(
                    f"{path}.watermark",
                    f"watermark ({_fmt(svc.watermark)}) is above memory_max "
                    f"({_fmt(svc.memory_max)}); the OOM killer would act first",
                )
            if svc.backoff_initial > svc.backoff_max:
                self.add(
                    f"{path}.backoff_initial",
                    f"backoff_initial ({format_duration(svc.backoff_initial)}) is above "
                    f"backoff_max ({format_duration(svc.backoff_max)})",
                )


def _warnings(cfg: Config) -> list[Problem]:
    out: list[Problem] = []
    top = cfg.oomguard

    def parent_of(name: str) -> str | None:
        if name in cfg.slice:
            return cfg.slice[name].parent
        return cfg.service[name].slice

    def path_of(name: str) -> str:
        return f"slice.{name}" if name in cfg.slice else f"service.{name}"

    children: dict[str | None, list[str]] = {}
    for name in [*cfg.slice, *cfg.service]:
        children.setdefault(parent_of(name), []).append(name)

    def budget(name: str) -> _Budget:
        return cfg.slice[name] if name in cfg.slice else cfg.service[name]

    # A child's memory.max above its parent's is legal but meaningless: the parent's limit is
    # hit first. Children whose maxes add up to more than the parent's overcommit the budget:
    # also legal (that is what a shared budget is for) but worth saying.
    for parent, kids in children.items():
        parent_max = top.memory_max if parent is None else budget(parent).memory_max
        parent_path = "oomguard" if parent is None else path_of(parent)
        if parent_max is None:
            continue
        for kid in kids:
            kid_max = budget(kid).memory_max
            if kid_max is not None and kid_max > parent_max:
                out.append(
                    Problem(
                        f"{path_of(kid)}.memory_max",
                        f"{_fmt(kid_max)} is above its parent's {parent_path}.memory_max "
                        f"({_fmt(parent_max)}), which is the limit that will apply",
                    )
                )
        # The tree root also holds oomguard's own leaf, whose memory.min is the reserve.
        parts = [(kid, m) for kid in kids if (m := budget(kid).memory_max) is not None]
        if parent is None and top.reserve:
            parts.append(("reserve", top.reserve))
        total = sum(m for _, m in parts)
        # One part alone above the parent is already reported above.
        if total > parent_max and len(parts) > 1:
            out.append(
                Problem(
                    f"{parent_path}.memory_max",
                    f"children's memory_max add up to {_fmt(total)} "
                    f"({', '.join(f'{k} {_fmt(m)}' for k, m in parts)}), more than this "
                    f"{_fmt(parent_max)}; they can "
                    "starve each other and the OOM may hit the parent instead of one child",
                )
            )

    # memory.min/low protection is hierarchical: a child's effective protection is capped by its
    # parent's, so a service's memory_min inside a slice without one protects nothing.
    for parent, kids in children.items():
        if parent is None:
            continue
        for field in ("memory_min", "memory_low"):
            have = getattr(budget(parent), field)
            want = sum(getattr(budget(k), field) for k in kids)
            if want > have:
                out.append(
                    Problem(
                        f"{path_of(parent)}.{field}",
                        f"is {_fmt(have)} but its children ask for {_fmt(want)}; the kernel "
                        f"caps a child's protection at its parent's, so set {field} "
                        f"to at least {_fmt(want)}",
                    )
                )

    # PSI windows that are not a multiple of 2 s need CAP_SYS_RESOURCE.
    triggers: list[tuple[str, PsiTrigger]] = [("oomguard.pressure", top.pressure.psi_trigger)]
    triggers += [
        (f"slice.{n}.pressure", s.pressure.psi_trigger)
        for n, s in cfg.slice.items()
        if s.pressure.psi_trigger is not None
    ]
    for path, trig in triggers:
        ratio = trig.window / PSI_UNPRIVILEGED_WINDOW
        if abs(ratio - round(ratio)) > 1e-9:
            out.append(
                Problem(
                    f"{path}.psi_trigger",
                    f"window {format_duration(trig.window)} is not a multiple of 2s; without "
                    "CAP_SYS_RESOURCE the kernel refuses it (oomguard then falls back to "
                    "polling avg10)",
                )
            )

    # An explicit sidecar oom_score_adj at or below the primary's undoes the point of oomguard.
    primary_adj = cfg.oom_score_adj(cfg.primary_name)
    for name in cfg.sidecar_names():
        svc = cfg.service[name]
        if svc.oom_score_adj is not None and svc.oom_score_adj <= primary_adj:
            out.append(
                Problem(
                    f"service.{name}.oom_score_adj",
                    f"{svc.oom_score_adj} is not above the primary's ({primary_adj}); the "
                    "OOM killer may pick the primary before this sidecar",
                )
            )
    return out
