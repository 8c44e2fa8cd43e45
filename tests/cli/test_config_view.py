"""The daemon's view of a Plan under the Config attribute names the runtime still reads: for every
attribute the runtime reads, the view of the compiled Plan answers what the Config did."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings

from oomguard.cli._config_view import config_view
from oomguard.config.compile import compile_plan
from oomguard.config.model import Config
from oomguard.errors import ConfigError
from oomguard.plan import from_json, to_json
from tests.config.test_compile import FULL
from tests.test_fuzz import configs

#: What runtime/supervisor.py and runtime/context.py read from a service's config.
SERVICE_FIELDS = (
    "command", "env", "inherit_env", "cwd", "user", "group", "log", "pressure_watch", "restart",
    "start_secs", "backoff_initial", "backoff_max", "backoff_reset", "max_restarts",
    "restart_window", "essential", "stop_timeout", "depends_on", "survive_partial_kill",
    "memory_max", "memory_high", "is_primary", "evictable", "watermark", "slice",
)  # fmt: skip
PRESSURE_FIELDS = ("headroom_min", "psi_some_avg10", "hysteresis", "cooldown", "sample_interval")
TOP_FIELDS = (
    "mode", "state_dir", "memory_max", "log_format", "metrics_listen", "cgroup",
    "require_cgroups", "reserve",
)  # fmt: skip


def _same_pressure(view: Any, cfg: Any) -> None:
    for field in PRESSURE_FIELDS:
        assert getattr(view, field) == getattr(cfg, field), field
    trig, want = view.psi_trigger, cfg.psi_trigger
    assert (trig.kind, trig.stall, trig.window) == (want.kind, want.stall, want.window)
    assert trig.kernel_line() == want.kernel_line()


def assert_same(config: Config) -> None:
    # Through the JSON form, as the daemon gets it.
    view: Any = config_view(from_json(to_json(compile_plan(config))))
    assert view.primary_name == config.primary_name
    for field in TOP_FIELDS:
        assert getattr(view.oomguard, field) == getattr(config.oomguard, field), field
    _same_pressure(view.oomguard.pressure, config.oomguard.pressure)
    # runtime/context.py lists a slice's members in iteration order: the same for each slice.
    assert sorted(view.service) == sorted(config.service)
    for name in config.slice:
        members = [s for s in config.service if name in config.slice_chain(s)]
        assert [s for s in view.service if name in view.slice_chain(s)] == members
    assert list(view.slice) == list(config.slice)
    for name, svc in config.service.items():
        for field in SERVICE_FIELDS:
            assert getattr(view.service[name], field) == getattr(svc, field), (name, field)
        assert view.service[name].stop_signal == int(svc.stop_signal)
        if not svc.is_primary:
            assert view.service[name].criticality == svc.criticality
        assert view.oom_score_adj(name) == config.oom_score_adj(name)
        assert view.slice_chain(name) == config.slice_chain(name)
        _same_pressure(view.pressure_for(name), config.pressure_for(name))
    for name, sl in config.slice.items():
        got = view.slice[name]
        assert (got.memory_max, got.memory_high, got.parent) == (
            sl.memory_max,
            sl.memory_high,
            sl.parent,
        )
        assert view.slice_chain(name) == config.slice_chain(name)
        _same_pressure(view.pressure_for(name), config.pressure_for(name))
    assert view.primary.watermark == config.primary.watermark
    assert view.start_order() == config.start_order()
    assert view.stop_order() == config.stop_order()
    assert view.tree_spec() == config.tree_spec()


def test_the_view_answers_as_the_config_did() -> None:
    assert_same(Config.from_mapping(FULL))


def test_file_order_survives_a_start_order_that_differs() -> None:
    # Start order puts the primary's dependency and critical sidecars first; the members of
    # each slice must still come out in file order.
    data: dict[str, Any] = {
        "slice": {"outer": {}, "inner": {"parent": "outer"}},
        "service": {
            "a": {"command": ["a"], "slice": "inner", "criticality": 1},
            "b": {"command": ["b"], "slice": "outer", "criticality": 90},
            "db": {"command": ["db"], "role": "primary", "depends_on": ["c"]},
            "c": {"command": ["c"], "slice": "inner", "criticality": 5},
        },
    }
    config = Config.from_mapping(data)
    assert config.start_order() != list(config.service)
    assert_same(config)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=configs())
def test_every_valid_config(data: dict[str, Any]) -> None:
    try:
        config = Config.from_mapping(data)
    except ConfigError:
        return
    assert_same(config)
