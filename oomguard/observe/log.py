"""The supervisor's one diagnostic channel: structured lines, key=value or JSON.

No stdlib ``logging``: the daemon has exactly one sink (stderr, or whatever stream the CLI hands
in), one format chosen at startup, and no third-party handlers to configure. A line is::

    2026-11-25T22:31:02.412Z restart group=backup reason=oom_kill attempt=3 delay=0.4s
    2026-11-25T22:31:02.413Z evict level=warn service=backup current=60M high=56M

``level`` is written only for warn/error (and debug), so the common info line stays short. In json
mode each line is one object with flat keys: ``ts`` (ISO 8601 UTC), ``level``, ``event``, then the
fields. Flat (not nested under "fields") because log shippers (Loki, Vector, journald's JSON
export) index top-level keys; the price is that ``ts``/``level``/``event`` are reserved names.

Units are the caller's choice, made explicit with two wrappers instead of guessing from key names:
``Seconds(0.4)`` renders ``0.4s`` in kv and ``0.4`` in JSON; ``Bytes(67108864)`` renders ``64M`` in
kv and the exact integer in JSON. A plain float is written as is.

Writing never raises: a supervisor must not die because its stderr went away (a closed pipe, a
full disk behind a redirect). Lost lines are counted in ``Logger.dropped``.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Literal, Protocol

from oomguard.units import format_size

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

Format = Literal["kv", "json"]
LogLevel = Literal["debug", "info", "warn", "error"]


class TextSink(Protocol):
    """Where lines go: a text stream (sys.stderr, StringIO) or `observe.sink.SinkStream`, which
    never blocks on a stalled reader."""

    def write(self, s: str, /) -> int: ...

    def flush(self) -> None: ...


_LEVEL_RANK: dict[str, int] = {"debug": 10, "info": 20, "warn": 30, "error": 40}
#: Keys the line itself uses; a field with one of these names would be ambiguous in JSON mode.
RESERVED = frozenset({"ts", "level", "event"})
#: Event names and keys are code-chosen identifiers; anything else is a bug in the caller.
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
#: A kv value needs quotes if a naive ``split()`` / ``key=value`` parser would mis-read it.
_NEEDS_QUOTE_RE = re.compile(r'[\s"=\\]|[\x00-\x1f\x7f]')


class Seconds(float):
    """A float that is a duration in seconds: kv ``delay=0.4s``, JSON ``"delay": 0.4``."""

    __slots__ = ()


class Bytes(int):
    """An int that is a byte count: kv ``current=64M``, JSON ``"current": 67108864``."""

    __slots__ = ()


def format_seconds(value: float) -> str:
    """``0.4`` -> ``0.4s``, ``30`` -> ``30s``, ``0.0004`` -> ``0.0004s``: millisecond precision
    (what any of our delays or timeouts mean), finer only for sub-millisecond values."""
    if not math.isfinite(value):
        return f"{value}s"
    digits = 3 if value == 0 or abs(value) >= 1e-3 else 6
    text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return f"{text}s"


def _quote(text: str) -> str:
    # JSON string syntax is the quoting everyone can read back (\n, \", \\, \u0007 ...), and
    # it keeps one event on one physical line whatever a service name or error message holds.
    return json.dumps(text, ensure_ascii=False)


def format_value(value: object) -> str:
    """Render one field value for a key=value line (also used by `oomguard events`)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Seconds):
        return format_seconds(value)
    if isinstance(value, Bytes):
        return format_size(int(value))
    if isinstance(value, Enum):
        # A StrEnum's value is its wire name; for other enums the member name is what a reader
        # recognises (RUNNING, not 3).
        return format_value(value.value if isinstance(value, str) else value.name)
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        # Quote the joined text once, not each item: ("a b", "c") -> "a b,c".
        return _quote_if_needed(
            ",".join(v if isinstance(v, str) else format_value(v) for v in items)
        )
    return _quote_if_needed(str(value))


def _quote_if_needed(text: str) -> str:
    if text in ("", "-") or _NEEDS_QUOTE_RE.search(text):
        return _quote(text)
    return text


def json_value(value: object) -> object:
    """Map a field value to what json.dumps can write, keeping numbers numbers."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, Enum):
        return value.value if isinstance(value, str) else value.name
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        # JSON has no NaN/Infinity; a reader that chokes on the token would lose the whole line.
        return float(value) if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, set | frozenset):
        return [json_value(v) for v in sorted(value, key=str)]
    return str(value)


def check_name(name: str, what: str) -> None:
    if not _NAME_RE.match(name):
        raise ValueError(f"{what} {name!r} is not an identifier-like name")


def iso_utc(ts: float, *, millis: bool = True) -> str:
    """Unix time -> ``2026-11-25T22:31:02.412Z`` (or without the fraction)."""
    dt = datetime.fromtimestamp(ts, tz=UTC)
    if millis:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


class Logger:
    """Structured diagnostics to one text stream.

    `clock_wall` is injected (``time.time`` by default) so tests get stable timestamps.
    `timestamps=False` drops the kv timestamp for sinks that add their own (journald, where
    the CLI sees ``$JOURNAL_STREAM``); JSON lines always carry ``ts``.
    """

    def __init__(
        self,
        stream: TextSink,
        fmt: Format = "kv",
        clock_wall: Callable[[], float] = time.time,
        *,
        min_level: LogLevel = "info",
        timestamps: bool = True,
        context: Mapping[str, object] | None = None,
    ) -> None:
        if fmt not in ("kv", "json"):
            raise ValueError(f"log format {fmt!r} is not 'kv' or 'json'")
        if min_level not in _LEVEL_RANK:
            raise ValueError(f"log level {min_level!r} is not one of {', '.join(_LEVEL_RANK)}")
        self.stream = stream
        self.fmt: Format = fmt
        self.clock_wall = clock_wall
        self.min_level: LogLevel = min_level
        self.timestamps = timestamps
        self._context: dict[str, object] = dict(context or {})
        for key in self._context:
            self._check_key(key)
        # The PSI watcher is a thread (see DESIGN.md); TextIOWrapper is not safe to write from
        # two threads at once, and one lock keeps each line whole.
        self._lock = threading.Lock()
        self.dropped = 0

    def bind(self, **context: object) -> Logger:
        """A logger that adds `context` fields to every line (e.g. ``service="backup"``)."""
        child = Logger(
            self.stream,
            self.fmt,
            self.clock_wall,
            min_level=self.min_level,
            timestamps=self.timestamps,
            context={**self._context, **context},
        )
        # Share the lock: both loggers write to the same stream.
        child._lock = self._lock
        return child

    def enabled(self, level: LogLevel) -> bool:
        return _LEVEL_RANK[level] >= _LEVEL_RANK[self.min_level]

    def debug(self, event: str, /, **fields: object) -> None:
        self.log("debug", event, **fields)

    def info(self, event: str, /, **fields: object) -> None:
        self.log("info", event, **fields)

    def warn(self, event: str, /, **fields: object) -> None:
        self.log("warn", event, **fields)

    def error(self, event: str, /, **fields: object) -> None:
        self.log("error", event, **fields)

    def log(self, level: LogLevel, event: str, /, **fields: object) -> None:
        # Positional-only, so a field called "event"/"level" reaches the reserved-name check.
        if level not in _LEVEL_RANK:
            raise ValueError(f"log level {level!r} is not one of {', '.join(_LEVEL_RANK)}")
        if not self.enabled(level):
            return
        check_name(event, "log event")
        for key in fields:
            self._check_key(key)
        line = self.format_line(level, event, {**self._context, **fields})
        with self._lock:
            try:
                self.stream.write(line)
                self.stream.flush()
            except (OSError, ValueError):
                # ValueError: "I/O operation on closed file". Losing a diagnostic line is better
                # than losing the supervisor that keeps the database alive.
                self.dropped += 1

    def format_line(self, level: LogLevel, event: str, fields: Mapping[str, object]) -> str:
        now = self.clock_wall()
        if self.fmt == "json":
            obj: dict[str, object] = {"ts": iso_utc(now), "level": level, "event": event}
            obj.update((k, json_value(v)) for k, v in fields.items())
            return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"
        parts: list[str] = []
        if self.timestamps:
            parts.append(iso_utc(now))
        parts.append(event)
        if level != "info":
            parts.append(f"level={level}")
        parts.extend(f"{k}={format_value(v)}" for k, v in fields.items())
        return " ".join(parts) + "\n"

    @staticmethod
    def _check_key(key: str) -> None:
        check_name(key, "log field")
        if key in RESERVED:
            raise ValueError(f"log field {key!r} is reserved ({', '.join(sorted(RESERVED))})")
