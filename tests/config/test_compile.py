"""compile_plan: a validated Config becomes a plain Plan, and back from its JSON form."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from oomguard.cgroup.spec import Limits
from oomguard.config.compile import PRIMARY_CRITICALITY, compile_plan
from oomguard.config.load import load_config
from oomguard.config.model import Config
from oomguard.errors import ConfigError
from oomguard.plan import Plan, PlanError, PsiTriggerSpec, from_json, to_json
from oomguard.policy.pressure import Thresholds
from oomguard.policy.restart import RestartParams
from tests.test_fuzz import configs

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").rglob("*.toml"))

FULL: dict[str, Any] = {
    "oomguard": {
        "memory_max": "1G",
        "reserve": "32M",
        "mode": "observe",
        "log_format": "json",
        "state_dir": "/run/og",
        "metrics_listen": "[::1]:9187",
        "pressure": {"headroom_min": "15%", "cooldown": "7s"},
    },
    "slice": {
        "sidecars": {"memory_max": "256M", "pressure": {"psi_trigger": "full 1s 4s"}},
        "batch": {"parent": "sidecars", "memory_high": "100M", "pressure": {"cooldown": "9s"}},
    },
    "service": {
        "db": {
            "command": "postgres -D /data",
            "role": "primary",
            "memory_high": "600M",
            "memory_max": "700M",
            "stop_signal": "INT",
            "stop_timeout": "20s",
            "env": {"PGPORT": 5432},
            "user": "postgres",
            "cwd": "/data",
            "depends_on": ["pooler"],
        },
        "pooler": {"command": ["pgbouncer"], "criticality": 80, "log": "prefix"},
        "backup": {
            "command": ["backup"],
            "slice": "batch",
            "criticality": 10,
            "restart": "on-failure",
            "evictable": True,
            "pressure_watch": True,
            "inherit_env": True,
        },
        "exporter": {"command": ["exporter"], "slice": "sidecars", "oom_score_adj": 900},
    },
}


def full_plan() -> Plan:
    return compile_plan(Config.from_mapping(FULL))


def test_services_are_in_start_order_with_everything_resolved() -> None:
    plan = full_plan()
    config = Config.from_mapping(FULL)
    assert plan.names() == config.start_order() == ["pooler", "db", "exporter", "backup"]
    assert plan.stop_order() == config.stop_order()
    assert plan.primary == "db" and plan.primary_service.is_primary
    db = plan.service("db")
    assert db.argv == ("postgres", "-D", "/data")
    assert db.env == {"PGPORT": "5432"} and not db.inherit_env
    assert (db.user, db.group, db.cwd) == ("postgres", None, "/data")
    assert db.oom_score_adj == -999
    assert db.criticality == PRIMARY_CRITICALITY
    assert not db.evictable
    assert db.watermark == 600 * MiB  # memory_high, the default watermark
    assert db.depends_on == ("pooler",)
    assert db.path == ("db",) and db.slices == ()
    assert db.stop_signal == int(signal.SIGINT) == db.restart.stop_signal
    assert db.restart == RestartParams(
        restart="always", essential=True, stop_timeout=20.0, stop_signal=int(signal.SIGINT)
    )
    # The derived memory.low of the primary reaches the Plan (tree_spec's limits).
    assert db.limits == Limits(low=600 * MiB, high=600 * MiB, max=700 * MiB)


def test_sidecars_keep_their_rank_placement_and_restart_policy() -> None:
    plan = full_plan()
    backup = plan.service("backup")
    assert backup.path == ("sidecars", "batch", "backup")
    assert backup.slices == ("sidecars", "batch")
    assert backup.oom_score_adj == 1000 - 10 * 10
    assert backup.criticality == 10 and backup.evictable
    assert backup.watermark is None
    assert backup.restart.restart == "on-failure" and not backup.restart.essential
    assert backup.pressure_watch and backup.inherit_env
    assert backup.limits.oom_group  # a sidecar's default
    assert plan.service("exporter").oom_score_adj == 900
    assert plan.service("pooler").log == "prefix"


def test_pressure_settings_are_merged_once_per_slice() -> None:
    plan = full_plan()
    top = Thresholds(headroom_min=0.15, cooldown=7.0)
    assert plan.pressure.thresholds == top
    assert plan.pressure.psi_trigger == PsiTriggerSpec("some", 0.15, 2.0)
    sidecars, batch = plan.slices
    assert (sidecars.name, sidecars.path, sidecars.memory_max) == (
        "sidecars",
        ("sidecars",),
        256 * MiB,
    )
    assert sidecars.members == ("backup", "exporter")  # file order
    assert sidecars.pressure.thresholds == top
    assert sidecars.pressure.psi_trigger == PsiTriggerSpec("full", 1.0, 4.0)
    assert batch.path == ("sidecars", "batch") and batch.memory_high == 100 * MiB
    assert batch.members == ("backup",)
    # batch inherits the trigger from sidecars and overrides the cooldown.
    assert batch.pressure == plan.service("backup").pressure
    assert batch.pressure.thresholds == Thresholds(headroom_min=0.15, cooldown=9.0)
    assert batch.pressure.psi_trigger.kernel_line() == "full 1000000 4000000"
    assert plan.service("db").pressure == plan.pressure  # top level: the global settings


def test_top_level_settings() -> None:
    plan = full_plan()
    assert (plan.mode, plan.log_format, plan.state_dir) == ("observe", "json", "/run/og")
    assert plan.metrics_address == ("::1", 9187)
    assert plan.tree == Config.from_mapping(FULL).tree_spec()
    assert not plan.require_cgroups


def test_json_form_round_trips() -> None:
    plan = full_plan()
    text = to_json(plan)
    again = from_json(text)
    assert again == plan
    assert again.service("db").restart == plan.service("db").restart
    assert isinstance(again.services, tuple) and isinstance(again.service("db").argv, tuple)
    assert from_json(text.encode()) == plan


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_example_compiles_and_round_trips(path: Path) -> None:
    plan = compile_plan(load_config(path))
    assert from_json(to_json(plan)) == plan


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(version=2), "not a version 1 plan"),
        (lambda d: d.update(type="Job"), "holds a 'Job', not a Plan"),
        (lambda d: d["data"].pop("primary"), "plan: missing field 'primary'"),
        (lambda d: d["data"].update(extra=1), "plan: unknown field 'extra'"),
        (lambda d: d["data"].update(mode="dry-run"), r"plan\.mode: 'dry-run' is not one of"),
        (lambda d: d["data"]["services"][0].update(argv="x"), r"services\[0\]\.argv: expected a"),
        (
            lambda d: d["data"]["services"][1]["restart"].update(max_restarts=True),
            r"services\[1\]\.restart\.max_restarts: True is not a int",
        ),
        (lambda d: d["data"]["tree"].update(memory_max="1G"), r"plan\.tree\.memory_max: '1G'"),
    ],
)
def test_a_json_form_that_does_not_fit_names_the_field(edit: Any, match: str) -> None:
    import json

    data = json.loads(to_json(full_plan()))
    edit(data)
    with pytest.raises(PlanError, match=match):
        from_json(json.dumps(data))


def test_not_json_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match="not JSON"):
        from_json("{")
    with pytest.raises(PlanError, match="not a version 1 plan"):
        from_json("[]")


def test_the_plan_module_imports_neither_pydantic_nor_the_config() -> None:
    code = (
        "import sys, oomguard.plan; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'click', "
        "'pydantic_core') or m.startswith('oomguard.config')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert out.strip() == "[]"


# -- what the policy and the launcher no longer re-check, the config refuses ------------------
# RestartParams, Thresholds and spawn() used to raise ValueError/LaunchError for these; the Plan
# is their only producer, so the config refusing them is the guarantee.


def _db(**fields: Any) -> dict[str, Any]:
    return {"service": {"db": {"command": ["db"], "role": "primary", **fields}}}


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (_db(restart="sometimes"), "service.db.restart"),
        (_db(backoff_initial=0), "service.db.backoff_initial"),
        (_db(backoff_initial="5s", backoff_max="1s"), "service.db.backoff_initial"),
        (_db(start_secs=-1), "service.db.start_secs"),
        (_db(restart_window=math.inf), "service.db.restart_window"),
        (_db(max_restarts=-1), "service.db.max_restarts"),
        (_db(stop_signal=0), "service.db.stop_signal"),
        (_db(stop_timeout=0), "service.db.stop_timeout"),
        (_db(oom_score_adj=1001), "service.db.oom_score_adj"),
        (_db(command=[]), "service.db.command"),
        ({**_db(), "oomguard": {"pressure": {"headroom_min": 1.5}}}, "headroom_min"),
        ({**_db(), "oomguard": {"pressure": {"psi_some_avg10": -1}}}, "psi_some_avg10"),
        ({**_db(), "oomguard": {"pressure": {"cooldown": -1}}}, "cooldown"),
        ({**_db(), "oomguard": {"pressure": {"hysteresis": math.nan}}}, "hysteresis"),
        ({**_db(), "oomguard": {"pressure": {"sample_interval": 0}}}, "sample_interval"),
    ],
)
def test_values_the_policy_used_to_refuse_never_reach_a_plan(
    data: dict[str, Any], path: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        Config.from_mapping(data)
    assert any(p.path.endswith(path) for p in exc.value.problems), exc.value.problems


def _restart_params_hold(p: RestartParams) -> None:
    """What RestartParams.__post_init__ checked before the Plan guaranteed it."""
    assert p.restart in ("always", "on-failure", "never")
    for value in (p.start_secs, p.backoff_reset):
        assert math.isfinite(value) and value >= 0
    for value in (p.backoff_initial, p.backoff_max, p.restart_window, p.stop_timeout):
        assert math.isfinite(value) and value > 0
    assert p.backoff_initial <= p.backoff_max
    assert p.max_restarts >= 0
    assert 1 <= p.stop_signal < signal.NSIG


def _thresholds_hold(t: Thresholds) -> None:
    """What Thresholds.__post_init__ checked before the Plan guaranteed it."""
    assert 0.0 <= t.headroom_min <= 1.0
    assert 0.0 <= t.psi_some_avg10 <= 100.0
    for value in (t.hysteresis, t.cooldown, t.restart_hold):
        assert math.isfinite(value) and value >= 0
    assert math.isfinite(t.sample_interval) and t.sample_interval > 0


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=configs())
def test_every_plan_of_a_valid_config_keeps_the_policy_invariants(data: dict[str, Any]) -> None:
    try:
        config = Config.from_mapping(data)
    except ConfigError:
        return
    plan = compile_plan(config)
    for spec in plan.services:
        _restart_params_hold(spec.restart)
        _thresholds_hold(spec.pressure.thresholds)
        assert -999 <= spec.oom_score_adj <= 1000
        assert spec.argv and spec.argv[0]
    for budget in plan.slices:
        _thresholds_hold(budget.pressure.thresholds)
    _thresholds_hold(plan.pressure.thresholds)
    assert from_json(to_json(plan)) == plan
