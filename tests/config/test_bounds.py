"""Every duration and size is bounded at validation; numbers are ASCII; names carry no control
characters. Each case here was accepted (or crashed) before, and must now be one Problem that
names the field."""

from __future__ import annotations

from typing import Any

import pytest

from oomguard.config.model import Config
from oomguard.errors import ConfigError

PRIMARY = {"role": "primary", "command": ["db"]}


def _problems(service: dict[str, Any] | None = None, **top: Any) -> dict[str, str]:
    data: dict[str, Any] = {"service": {"db": {**PRIMARY, **(service or {})}}, **top}
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(data)
    return {p.path: p.message for p in info.value.problems}


def _ok(service: dict[str, Any] | None = None, **top: Any) -> Config:
    return Config.from_mapping({"service": {"db": {**PRIMARY, **(service or {})}}, **top})


# --- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "most"),
    [
        # Before: passed validate, then an epoll timeout overflow crashed the supervisor.
        ("backoff_reset", "1000h", "7d"),
        ("restart_window", "8d", "7d"),
        # Before: "timestamp out of range" in the supervisor.
        ("start_secs", 1e300, None),
        ("stop_timeout", 1e300, None),
        ("stop_timeout", "25h", "24h"),
        ("backoff_max", "2d", "24h"),
        ("backoff_initial", 10**400, None),
        ("start_secs", "9" * 400 + "s", None),
        ("stop_timeout", float("inf"), None),
        ("stop_timeout", float("nan"), None),
    ],
)
def test_durations_have_a_maximum(field: str, value: object, most: str | None) -> None:
    problems = _problems({field: value})
    message = problems[f"service.db.{field}"]
    assert "too long" in message or "not a duration" in message
    if most is not None:
        assert f"at most {most}" in message


def test_largest_durations_are_accepted() -> None:
    cfg = _ok({"backoff_reset": "7d", "restart_window": "168h", "stop_timeout": "1d"})
    assert cfg.primary.backoff_reset == 7 * 86400.0
    assert cfg.primary.stop_timeout == 86400.0


@pytest.mark.parametrize(("field", "value"), [("hysteresis", "2d"), ("sample_interval", "2h")])
def test_pressure_durations_have_a_maximum(field: str, value: str) -> None:
    problems = _problems(oomguard={"pressure": {field: value}})
    assert "too long" in problems[f"oomguard.pressure.{field}"]


# --- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["memory_max", "memory_high", "swap_max", "memory_min"])
@pytest.mark.parametrize("value", [2**64, 2**63, 10**30])
def test_integer_sizes_of_2_to_the_63_or_more_are_refused(field: str, value: int) -> None:
    # Before: silently accepted (the kernel clamps, or the write fails at run time).
    message = _problems({field: value})[f"service.db.{field}"]
    assert "too large" in message and "max" in message


def test_largest_size_is_accepted() -> None:
    assert _ok({"memory_max": 2**63 - 1}).primary.memory_max == 2**63 - 1


def test_tree_size_and_reserve_are_bounded() -> None:
    problems = _problems(oomguard={"memory_max": 2**64, "reserve": 2**64})
    assert set(problems) == {"oomguard.memory_max", "oomguard.reserve"}


@pytest.mark.parametrize("value", ["٣M", "1\u212a", "²G"])
def test_sizes_take_ascii_digits_and_units_only(value: str) -> None:
    # Before: \d and IGNORECASE read "٣M" as 3M; the Kelvin sign "K" crashed with KeyError.
    assert "is not a size" in _problems({"memory_max": value})["service.db.memory_max"]


@pytest.mark.parametrize("value", [10**400, "٣%", float("nan")])
def test_fractions_refuse_huge_and_non_ascii(value: object) -> None:
    # Before: float(10**400) raised OverflowError (a traceback).
    problems = _problems(oomguard={"pressure": {"headroom_min": value}})
    assert "oomguard.pressure.headroom_min" in problems


# --- ids and numbers ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["²", "٣", "\uff11\uff12"])
def test_user_with_non_ascii_digits_is_refused(value: str) -> None:
    # Before: "²" crashed the supervisor; "٣" ran the service as uid 3.
    message = _problems({"user": value})["service.db.user"]
    assert "ASCII" in message


@pytest.mark.parametrize("value", [2**32 - 1, "4294967295", -1, "99999999999999999999"])
def test_numeric_ids_are_bounded(value: object) -> None:
    assert "service.db.group" in _problems({"group": value})


@pytest.mark.parametrize("value", ["postgres", "1000", 0, "_apt", "user.name"])
def test_plain_ids_are_accepted(value: object) -> None:
    assert _ok({"user": value}).primary.user == str(value)


@pytest.mark.parametrize("value", ["a b", "a\nb", "a:b"])
def test_user_names_with_separators_are_refused(value: str) -> None:
    assert "service.db.user" in _problems({"user": value})


def test_signal_number_must_be_ascii() -> None:
    # Before: "٣" was read as signal 3 (SIGQUIT); "²" crashed in int().
    assert "service.db.stop_signal" in _problems({"stop_signal": "٣"})
    assert "service.db.stop_signal" in _problems({"stop_signal": "²"})


@pytest.mark.parametrize("value", [":٣", ":²", ":99999999999999999999"])
def test_listen_port_must_be_ascii(value: str) -> None:
    assert "oomguard.metrics_listen" in _problems(oomguard={"metrics_listen": value})


# --- cgroup -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["/oom\nguard", "/a\tb", "/a\x7fb", "/a\x85b"])
def test_cgroup_with_control_characters_is_refused(value: str) -> None:
    # Before: a newline was silently accepted.
    message = _problems(oomguard={"cgroup": value})["oomguard.cgroup"]
    assert "control character" in message
