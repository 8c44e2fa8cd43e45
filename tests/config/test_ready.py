"""[service.X.ready]: exactly one probe kind, bounded interval/timeout/watchdog, named errors."""

from __future__ import annotations

from typing import Any

import pytest

from oomguard.config.model import Config
from oomguard.errors import ConfigError


def config(ready: dict[str, Any]) -> Config:
    return Config.from_mapping(
        {"service": {"db": {"role": "primary", "command": ["db"], "ready": ready}}}
    )


def problems(ready: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        config(ready)
    return [str(p) for p in err.value.problems]


def test_no_ready_section_by_default() -> None:
    cfg = Config.from_mapping({"service": {"db": {"role": "primary", "command": ["db"]}}})
    assert cfg.primary.ready is None


@pytest.mark.parametrize(
    ("ready", "kind"),
    [
        ({"command": ["pg_isready", "-q"]}, "command"),
        ({"command": "pg_isready -q"}, "command"),
        ({"tcp": "127.0.0.1:5432"}, "tcp"),
        ({"tcp": "[::1]:5432"}, "tcp"),
        ({"tcp": "localhost:5432"}, "tcp"),
        ({"notify": True}, "notify"),
    ],
)
def test_each_kind(ready: dict[str, Any], kind: str) -> None:
    got = config(ready).primary.ready
    assert got is not None and got.kind == kind
    assert (got.interval, got.timeout, got.watchdog) == (0.5, 90.0, None)


def test_durations_parse() -> None:
    got = config({"notify": True, "interval": "100ms", "timeout": "2m", "watchdog": "30s"})
    ready = got.primary.ready
    assert ready is not None
    assert (ready.interval, ready.timeout, ready.watchdog) == (0.1, 120.0, 30.0)


@pytest.mark.parametrize(
    ("ready", "message"),
    [
        ({}, "service.db.ready: set exactly one of command, tcp or notify = true (found: none)"),
        ({"notify": False}, "found: none"),
        ({"command": ["x"], "tcp": "10.0.0.1:1"}, "found: command, tcp"),
        ({"command": ["x"], "watchdog": "10s"}, "watchdog needs notify = true"),
        ({"tcp": ":5432"}, 'service.db.ready.tcp: ":5432" needs a host'),
        ({"tcp": "localhost"}, "service.db.ready.tcp"),
        ({"tcp": "db.example:5432"}, "must be an IP address or localhost"),
        ({"notify": True, "interval": "10ms"}, "service.db.ready.interval"),
        ({"notify": True, "interval": "2h"}, "service.db.ready.interval"),
        ({"notify": True, "timeout": "0s"}, "service.db.ready.timeout"),
        ({"notify": True, "timeout": "2d"}, "service.db.ready.timeout"),
        ({"notify": True, "watchdog": "100ms"}, "service.db.ready.watchdog"),
        ({"notify": "yes"}, "service.db.ready.notify"),
        ({"notify": True, "tpc": "10.0.0.1:1"}, "service.db.ready.tpc"),
    ],
)
def test_errors_name_the_field(ready: dict[str, Any], message: str) -> None:
    found = problems(ready)
    assert any(message in p for p in found), found
