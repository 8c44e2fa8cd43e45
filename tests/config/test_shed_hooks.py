"""`[service.X.shed]` and `[hooks]`: defaults, bounds, and the errors naming the field."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from oomguard.config.model import Config
from oomguard.errors import ConfigError

MiB = 1 << 20
PRIMARY: dict[str, Any] = {"command": ["postgres"], "role": "primary", "memory_high": "256M"}


def config(db: dict[str, Any] | None = None, **extra: Any) -> Config:
    return Config.from_mapping({"service": {"db": {**PRIMARY, **(db or {})}}, **extra})


def problems(db: dict[str, Any] | None = None, **extra: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config(db, **extra)
    return [f"{p.path}: {p.message}" for p in info.value.problems]


def test_shed_defaults() -> None:
    shed = config({"shed": {}}).primary.shed
    assert shed is not None
    assert shed.signal is signal.SIGTERM
    assert shed.exclude_comm == ()
    assert shed.cooldown == 30.0
    assert shed.min_size == 32 * MiB
    assert config().primary.shed is None


def test_shed_values() -> None:
    shed = config(
        {"shed": {"signal": "INT", "exclude_comm": ["autovacuum"], "cooldown": "1m"}}
    ).primary.shed
    assert shed is not None
    assert (shed.signal, shed.exclude_comm, shed.cooldown) == (
        signal.SIGINT,
        ("autovacuum",),
        60.0,
    )


@pytest.mark.parametrize(
    ("shed", "path", "words"),
    [
        ({"exclude_comm": ["a" * 16]}, "service.db.shed.exclude_comm", "1..15 bytes"),
        ({"exclude_comm": ["x\n"]}, "service.db.shed.exclude_comm", "newline"),
        ({"exclude_comm": "postgres"}, "service.db.shed.exclude_comm", "not a list"),
        ({"exclude_comm": ["p"] * 65}, "service.db.shed.exclude_comm", "at most 64"),
        ({"cooldown": "0s"}, "service.db.shed.cooldown", "more than 0"),
        ({"cooldown": "2d"}, "service.db.shed.cooldown", "at most"),
        ({"min_size": "max"}, "service.db.shed.min_size", "not allowed"),
        ({"signal": "SIGNOPE"}, "service.db.shed.signal", "not a signal"),
        ({"sginal": "INT"}, "service.db.shed.sginal", "unknown key"),
    ],
)
def test_shed_field_errors(shed: dict[str, Any], path: str, words: str) -> None:
    [problem] = problems({"shed": shed})
    assert problem.startswith(f"{path}: ") and words in problem


def test_shed_is_refused_on_a_sidecar() -> None:
    [problem] = _sidecar_problems()
    assert problem.startswith("service.pooler.shed: only the primary sheds")


def _sidecar_problems() -> list[str]:
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(
            {
                "service": {
                    "db": PRIMARY,
                    "pooler": {"command": "pgbouncer", "shed": {}},
                }
            }
        )
    return [f"{p.path}: {p.message}" for p in info.value.problems]


def test_shed_needs_a_watermark_on_the_primary() -> None:
    [problem] = problems({"memory_high": None, "shed": {}})
    assert problem.startswith("service.db.shed: ") and "memory_high" in problem
    # An explicit watermark without memory_high is enough.
    assert config({"memory_high": None, "watermark": "300M", "shed": {}}).primary.shed is not None


def test_hooks_defaults_and_values() -> None:
    assert config().hooks.timeout == 5.0
    assert config().hooks.before_evict is None
    hooks = config(
        hooks={"before_evict": "notify evict", "after_oom_kill": ["/bin/true"], "timeout": "500ms"}
    ).hooks
    assert hooks.before_evict == ("notify", "evict")
    assert hooks.after_oom_kill == ("/bin/true",)
    assert hooks.timeout == 0.5


@pytest.mark.parametrize(
    ("hooks", "path", "words"),
    [
        ({"timeout": "2m"}, "hooks.timeout", "at most 60s"),
        ({"timeout": 0}, "hooks.timeout", "more than 0"),
        ({"before_shed": []}, "hooks.before_shed", "is empty"),
        ({"before_restart": 3}, "hooks.before_restart", "not a command"),
        ({"after_oom": "x"}, "hooks.after_oom", "unknown key"),
    ],
)
def test_hooks_field_errors(hooks: dict[str, Any], path: str, words: str) -> None:
    [problem] = problems(hooks=hooks)
    assert problem.startswith(f"{path}: ") and words in problem


def test_the_plan_carries_the_shed_rung_and_the_hooks_through_its_json_form() -> None:
    from oomguard.config.compile import compile_plan
    from oomguard.plan import HooksSpec, ShedSpec, from_json, to_json

    cfg = Config.from_mapping(
        {
            "service": {
                "db": {
                    **PRIMARY,
                    "stop_timeout": "30s",
                    "shed": {"signal": "INT", "exclude_comm": ["walwriter"], "min_size": "1M"},
                },
                "pool": {"command": "pgbouncer"},
            },
            "hooks": {"before_shed": "/bin/true x", "timeout": "2s"},
        }
    )
    plan = compile_plan(cfg)
    assert plan.primary_service.shed == ShedSpec(
        signal=int(signal.SIGINT),
        exclude_comm=("walwriter",),
        min_size=1 * MiB,
        cooldown=30.0,
        wait=30.0,  # the primary's stop_timeout
    )
    assert plan.service("pool").shed is None
    assert plan.hooks == HooksSpec(before_shed=("/bin/true", "x"), timeout=2.0)
    assert plan.hooks.commands == {"before_shed": ("/bin/true", "x")}
    assert from_json(to_json(plan)) == plan
    assert compile_plan(config()).hooks.commands == {}
