from __future__ import annotations

import io
import json
from enum import Enum

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oomguard.observe.log import (
    Bytes,
    Logger,
    Seconds,
    format_seconds,
    format_value,
    iso_utc,
)

# 2026-11-25T22:31:02.412Z
T0 = 1795645862.412


def make(fmt: str = "kv", **kw: object) -> tuple[Logger, io.StringIO]:
    buf = io.StringIO()
    return Logger(buf, fmt, lambda: T0, **kw), buf  # type: ignore[arg-type]


class Color(Enum):
    RED = 1


def test_kv_line_is_the_design_example() -> None:
    log, buf = make(timestamps=False)
    log.info("restart", group="backup", reason="oom_kill", attempt=3, delay=Seconds(0.4))
    assert buf.getvalue() == "restart group=backup reason=oom_kill attempt=3 delay=0.4s\n"


def test_kv_line_starts_with_utc_timestamp() -> None:
    log, buf = make()
    log.info("start", service="db")
    assert buf.getvalue() == "2026-11-25T22:31:02.412Z start service=db\n"


@pytest.mark.parametrize("level", ["warn", "error"])
def test_warn_and_error_carry_a_level_field(level: str) -> None:
    log, buf = make(timestamps=False)
    getattr(log, level)("evict", service="backup")
    assert buf.getvalue() == f"evict level={level} service=backup\n"


def test_min_level_filters_debug_by_default_and_can_enable_it() -> None:
    log, buf = make(timestamps=False)
    log.debug("tick", n=1)
    assert buf.getvalue() == ""
    log, buf = make(timestamps=False, min_level="debug")
    log.debug("tick", n=1)
    assert buf.getvalue() == "tick level=debug n=1\n"
    log, buf = make(timestamps=False, min_level="error")
    log.warn("x")
    log.error("y")
    assert buf.getvalue() == "y level=error\n"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain", "plain"),
        ("two words", '"two words"'),
        ("line\nbreak", '"line\\nbreak"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a=b", '"a=b"'),
        ("back\\slash", '"back\\\\slash"'),
        ("", '""'),
        ("-", '"-"'),
        ("tab\there", '"tab\\there"'),
        ("bell\x07", '"bell\\u0007"'),
        ("héllo", "héllo"),
        (None, "-"),
        (True, "true"),
        (False, "false"),
        (3, "3"),
        (0.25, "0.25"),
        (Seconds(0.4), "0.4s"),
        (Seconds(30), "30s"),
        (Bytes(64 << 20), "64M"),
        (Bytes(1000), "1000"),
        ([1, 2, 3], "1,2,3"),
        (("a b", "c"), '"a b,c"'),
        (frozenset({"b", "a"}), "a,b"),
        (Color.RED, "RED"),
    ],
)
def test_kv_value_formatting(value: object, text: str) -> None:
    assert format_value(value) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.4, "0.4s"),
        (0, "0s"),
        (30.0, "30s"),
        (12.3456, "12.346s"),
        (0.001, "0.001s"),
        (0.0004, "0.0004s"),
        (90, "90s"),
    ],
)
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


@given(st.text())
def test_any_string_value_stays_on_one_line_and_round_trips(value: str) -> None:
    log, buf = make(timestamps=False)
    log.info("e", v=value)
    line = buf.getvalue()
    assert line.count("\n") == 1 and line.endswith("\n")
    rendered = line[len("e v=") : -1]
    decoded = json.loads(rendered) if rendered.startswith('"') else rendered
    assert decoded == value


def test_json_mode_one_object_per_line_with_ts_level_event_first() -> None:
    log, buf = make("json")
    log.warn(
        "evict",
        service="backup",
        current=Bytes(64 << 20),
        delay=Seconds(0.4),
        msg="two\nlines",
        code=None,
        pids=[1, 2],
        color=Color.RED,
    )
    text = buf.getvalue()
    assert text.count("\n") == 1
    obj = json.loads(text)
    assert list(obj)[:3] == ["ts", "level", "event"]
    assert obj == {
        "ts": "2026-11-25T22:31:02.412Z",
        "level": "warn",
        "event": "evict",
        "service": "backup",
        "current": 67108864,
        "delay": 0.4,
        "msg": "two\nlines",
        "code": None,
        "pids": [1, 2],
        "color": "RED",
    }


def test_json_mode_writes_non_finite_floats_as_strings() -> None:
    log, buf = make("json")
    log.info("psi", avg10=float("nan"), max=float("inf"))
    obj = json.loads(buf.getvalue())  # strict JSON parsers would reject NaN tokens
    assert obj["avg10"] == "nan" and obj["max"] == "inf"


def test_json_mode_has_level_for_info_too() -> None:
    log, buf = make("json")
    log.info("start")
    assert json.loads(buf.getvalue())["level"] == "info"


@pytest.mark.parametrize("key", ["ts", "level", "event"])
def test_reserved_field_names_are_refused(key: str) -> None:
    log, buf = make()
    with pytest.raises(ValueError, match="reserved"):
        log.info("x", **{key: 1})
    assert buf.getvalue() == ""


@pytest.mark.parametrize("event", ["", "two words", "a=b", "1abc"])
def test_bad_event_names_are_refused(event: str) -> None:
    log, _ = make()
    with pytest.raises(ValueError, match="log event"):
        log.info(event)


def test_bad_format_and_level_are_refused() -> None:
    with pytest.raises(ValueError, match="format"):
        Logger(io.StringIO(), "xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="level"):
        Logger(io.StringIO(), min_level="trace")  # type: ignore[arg-type]


def test_bind_adds_context_fields_and_shares_the_stream() -> None:
    log, buf = make(timestamps=False)
    svc = log.bind(service="backup")
    svc.info("restart", attempt=2)
    log.info("tick")
    assert buf.getvalue() == "restart service=backup attempt=2\ntick\n"


def test_a_closed_stream_does_not_raise_and_counts_the_loss() -> None:
    log, buf = make()
    buf.close()
    log.error("fatal", service="db")
    assert log.dropped == 1


def test_a_stream_raising_oserror_does_not_raise() -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    log = Logger(Broken(), "kv", lambda: T0)
    log.info("x")
    log.info("y")
    assert log.dropped == 2


def test_iso_utc_without_millis() -> None:
    assert iso_utc(T0, millis=False) == "2026-11-25T22:31:02Z"
    assert iso_utc(0.0) == "1970-01-01T00:00:00.000Z"
