"""The config model: parsing at the edge, defaults, cross-field checks, derived API, warnings."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from oomguard.cgroup.spec import Limits
from oomguard.config.model import Config, PsiTrigger, dotted
from oomguard.errors import ConfigError, Problem
from oomguard.units import format_size

MiB = 1 << 20
GiB = 1 << 30


def primary(**fields: Any) -> dict[str, Any]:
    return {"command": ["postgres", "-D", "/data"], "role": "primary", **fields}


def sidecar(**fields: Any) -> dict[str, Any]:
    return {"command": ["sidecar"], **fields}


def build(data: dict[str, Any]) -> Config:
    return Config.from_mapping(data, source="test.toml")


def only_db(**fields: Any) -> Config:
    return build({"service": {"db": primary(**fields)}})


def problems(data: dict[str, Any]) -> list[Problem]:
    with pytest.raises(ConfigError) as exc:
        Config.from_mapping(data, source="test.toml")
    assert exc.value.source == "test.toml"
    return exc.value.problems


def paths(data: dict[str, Any]) -> list[str]:
    return [p.path for p in problems(data)]


# -- defaults ---------------------------------------------------------------------------------


def test_oomguard_section_defaults() -> None:
    top = only_db().oomguard
    assert top.reserve == 32 * MiB
    assert top.memory_max is None
    assert top.state_dir == Path("/run/oomguard")
    assert top.cgroup is None
    assert top.mode == "enforce"
    assert top.log_format == "kv"
    assert top.metrics_listen is None
    assert top.metrics_address is None
    p = top.pressure
    assert (p.headroom_min, p.psi_some_avg10) == (0.10, 20.0)
    assert p.psi_trigger == PsiTrigger(kind="some", stall=0.15, window=2.0)
    assert (p.hysteresis, p.cooldown, p.sample_interval) == (30.0, 5.0, 1.0)


def test_sidecar_defaults() -> None:
    s = build({"service": {"db": primary(), "b": sidecar()}}).service["b"]
    assert s.role == "sidecar"
    assert s.criticality == 50
    assert s.restart == "always"
    assert s.stop_signal is signal.SIGTERM
    assert s.stop_timeout == 10.0
    assert s.log == "inherit"
    assert (s.start_secs, s.backoff_initial, s.backoff_max, s.backoff_reset) == (1, 0.1, 30, 60)
    assert (s.max_restarts, s.restart_window) == (10, 300.0)
    assert (s.essential, s.evictable, s.oom_group) == (False, True, True)
    assert (s.survive_partial_kill, s.pressure_watch, s.watermark) == (False, False, None)
    assert s.limits() == Limits(oom_group=True)
    assert s.env == {}
    assert s.depends_on == ()


def test_primary_defaults_differ_by_role() -> None:
    db = only_db(memory_high="300M").service["db"]
    assert db.is_primary
    assert (db.essential, db.evictable, db.oom_group) == (True, False, False)
    assert db.watermark == 300 * MiB  # defaults to memory_high
    assert only_db().service["db"].watermark is None
    assert only_db(memory_high="300M", watermark="250M").service["db"].watermark == 250 * MiB
    # Role defaults are only defaults.
    db = only_db(oom_group=True, essential=False).service["db"]
    assert (db.oom_group, db.essential) == (True, False)


# -- parsing at the edge ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512M", 512 * MiB),
        ("1.5G", int(1.5 * GiB)),
        ("64Ki", 64 * 1024),
        ("max", None),
        (4096, 4096),
        ("0", 0),
        ("2Gi", 2 * GiB),
    ],
)
def test_sizes(text: str | int, expected: int | None) -> None:
    assert only_db(memory_max=text).service["db"].memory_max == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("100ms", 0.1), ("30s", 30.0), ("5m", 300.0), (2, 2.0), (0.5, 0.5), ("1h", 3600.0)],
)
def test_durations(text: str | float, expected: float) -> None:
    assert only_db(stop_timeout=text).service["db"].stop_timeout == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SIGINT", signal.SIGINT),
        ("INT", signal.SIGINT),
        ("sigquit", signal.SIGQUIT),
        (" SIGHUP ", signal.SIGHUP),
        (2, signal.SIGINT),
        ("15", signal.SIGTERM),
    ],
)
def test_stop_signals(text: str | int, expected: signal.Signals) -> None:
    got = only_db(stop_signal=text).service["db"].stop_signal
    assert got is expected
    assert isinstance(got, signal.Signals)


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("python3 backup.py --to 's3://b/x y'", ("python3", "backup.py", "--to", "s3://b/x y")),
        (["postgres", "-D", "/data dir"], ("postgres", "-D", "/data dir")),
        ("sleep", ("sleep",)),
    ],
)
def test_command_list_or_shell_words(command: str | list[str], argv: tuple[str, ...]) -> None:
    assert only_db(command=command).service["db"].command == argv


def test_env_user_depends_on_coercions() -> None:
    cfg = build(
        {
            "service": {
                "db": primary(env={"PGPORT": 5432, "MODE": "x"}, user=999, group="postgres"),
                "b": sidecar(depends_on="db", cwd="/srv"),
            }
        }
    )
    db, b = cfg.service["db"], cfg.service["b"]
    assert db.env == {"PGPORT": "5432", "MODE": "x"}
    assert (db.user, db.group) == ("999", "postgres")
    assert b.depends_on == ("db",)
    assert b.cwd == Path("/srv")


def test_percent_strings() -> None:
    data = {
        "oomguard": {"pressure": {"headroom_min": "15%", "psi_some_avg10": "35%"}},
        "service": {"db": primary()},
    }
    pressure = build(data).oomguard.pressure
    assert pressure.headroom_min == pytest.approx(0.15)
    assert pressure.psi_some_avg10 == 35.0


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("127.0.0.1:9187", ("127.0.0.1", 9187)),
        (":9187", ("", 9187)),
        ("[::1]:9187", ("::1", 9187)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_metrics_listen(listen: str, address: tuple[str, int]) -> None:
    cfg = build({"oomguard": {"metrics_listen": listen}, "service": {"db": primary()}})
    assert cfg.oomguard.metrics_listen == listen
    assert cfg.oomguard.metrics_address == address


@pytest.mark.parametrize("listen", ["::1:9187", "host:0", "host:x", "a b:1", "9187"])
def test_metrics_listen_rejects(listen: str) -> None:
    assert paths({"oomguard": {"metrics_listen": listen}, "service": {"db": primary()}}) == [
        "oomguard.metrics_listen"
    ]


@pytest.mark.parametrize(
    ("given_", "normal"), [("oomguard/x/", "/oomguard/x"), ("/oomguard", "/oomguard")]
)
def test_cgroup_root_is_normalised(given_: str, normal: str) -> None:
    cfg = build({"oomguard": {"cgroup": given_}, "service": {"db": primary()}})
    assert cfg.oomguard.cgroup == normal
    assert cfg.tree_spec().root == normal


def test_psi_trigger_parsed_into_kernel_units() -> None:
    data = {
        "oomguard": {"pressure": {"psi_trigger": "full 500ms 4s"}},
        "service": {"db": primary()},
    }
    trig = build(data).oomguard.pressure.psi_trigger
    assert (trig.kind, trig.stall, trig.window) == ("full", 0.5, 4.0)
    assert trig.kernel_line() == "full 500000 4000000"
    assert str(trig) == "full 500ms 4s"


@pytest.mark.parametrize("name", ["a", "db", "0db", "a-b_c", "x" * 63])
def test_valid_names(name: str) -> None:
    assert name in build({"service": {name: primary()}}).service


@pytest.mark.parametrize("name", ["A", "-a", "_a", "a.b", "a b", "x" * 64, ""])
def test_invalid_names(name: str) -> None:
    found = problems({"service": {"db": primary(), name: sidecar()}})
    assert len(found) == 1
    assert "not a valid name" in found[0].message


def test_config_is_frozen() -> None:
    cfg = only_db()
    with pytest.raises(ValidationError):
        cfg.oomguard.mode = "observe"
    with pytest.raises(ValidationError):
        cfg.service["db"].criticality = 3


# -- validation -------------------------------------------------------------------------------


def test_all_field_problems_are_reported_together() -> None:
    data = {
        "oomguard": {"reserve": "lots", "mode": "dry"},
        "service": {"db": primary(memory_max="12Q", stop_signal="NOPE"), "b": sidecar(user=True)},
    }
    assert paths(data) == [
        "oomguard.reserve",
        "oomguard.mode",
        "service.db.memory_max",
        "service.db.stop_signal",
        "service.b.user",
    ]


def test_cross_field_problems_are_reported_together() -> None:
    data = {
        "slice": {"supervisor": {}},
        "service": {
            "db": primary(memory_high="2G", memory_max="1G", depends_on=["ghost"]),
            "b": sidecar(slice="nope"),
        },
    }
    assert paths(data) == [
        "slice.supervisor",
        "service.db.depends_on",
        "service.b.slice",
        "service.db.memory_high",
    ]


def test_cross_field_checks_wait_for_field_errors() -> None:
    # Pass 2 needs typed values, so a bad field hides the (then meaningless) cross checks.
    data = {"service": {"db": primary(memory_max="12Q"), "b": sidecar(slice="nope")}}
    assert paths(data) == ["service.db.memory_max"]


def test_model_validate_raises_config_error_for_cross_field_problems() -> None:
    with pytest.raises(ConfigError) as exc:
        Config.model_validate({"service": {"a": sidecar()}})
    assert exc.value.source is None
    assert exc.value.problems[0].path == "service"
    with pytest.raises(ValidationError):
        Config.model_validate({"service": {"a": sidecar(memory_max="12Q")}})


def test_config_error_names_the_source() -> None:
    with pytest.raises(ConfigError) as exc:
        Config.from_mapping({"service": {"db": primary(memory_max="12Q")}}, source="/etc/o.toml")
    assert str(exc.value).startswith('/etc/o.toml: service.db.memory_max: "12Q" is not a size')


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    found = problems({"oomguard": {"zzz": 1}, "service": {"db": primary()}})
    assert found[0].path == "oomguard.zzz"
    assert "valid keys: reserve, memory_max, state_dir" in found[0].message


def test_top_level_must_be_tables() -> None:
    found = problems({"oomguard": 3, "service": {"db": primary()}})
    assert found == [Problem("oomguard", "must be a table, got 3")]


def test_dependency_cycle_is_named_once() -> None:
    data = {
        "service": {
            "db": primary(),
            "a": sidecar(depends_on=["b"]),
            "b": sidecar(depends_on=["c"]),
            "c": sidecar(depends_on=["a"]),
        }
    }
    found = problems(data)
    assert [(p.path, p.message.split(";")[0]) for p in found] == [
        ("service.a.depends_on", "dependency cycle: a -> b -> c -> a")
    ]


def test_limit_order_allows_equal_and_unset() -> None:
    cfg = only_db(memory_min="100M", memory_low="100M", memory_high="1G", memory_max="1G")
    assert cfg.service["db"].limits() == Limits(100 * MiB, 100 * MiB, GiB, GiB, None, False)
    assert only_db(memory_min="100M", memory_max="200M").service["db"].memory_low == 0


def test_primary_may_set_watermark_below_max_only() -> None:
    assert paths({"service": {"db": primary(memory_max="1G", watermark="2G")}}) == [
        "service.db.watermark"
    ]


def test_dotted_paths() -> None:
    assert dotted(("service", "db", "command", 0)) == "service.db.command[0]"
    assert dotted(("service", "a b", "[key]")) == 'service."a b"'


# -- derived API ------------------------------------------------------------------------------


@pytest.mark.parametrize(("criticality", "adj"), [(0, 1000), (1, 990), (50, 500), (99, 10)])
def test_sidecar_oom_score_adj_from_criticality(criticality: int, adj: int) -> None:
    cfg = build({"service": {"db": primary(), "b": sidecar(criticality=criticality)}})
    assert cfg.oom_score_adj("b") == adj
    assert cfg.oom_score_adj("db") == -999


def test_explicit_oom_score_adj_wins() -> None:
    cfg = build({"service": {"db": primary(oom_score_adj=-500), "b": sidecar(oom_score_adj=300)}})
    assert (cfg.oom_score_adj("db"), cfg.oom_score_adj("b")) == (-500, 300)


def test_start_order_deps_then_primary_then_by_criticality() -> None:
    cfg = build(
        {
            "service": {
                "pooler": sidecar(criticality=80),
                "backup": sidecar(criticality=10, depends_on=["db"]),
                "exporter": sidecar(),
                "db": primary(depends_on=["vault"]),
                "vault": sidecar(criticality=5),
                "exporter2": sidecar(),
            }
        }
    )
    assert cfg.primary_name == "db"
    # vault first (the primary needs it), then the primary, then the rest by criticality,
    # ties in file order.
    order = ["vault", "db", "pooler", "exporter", "exporter2", "backup"]
    assert cfg.start_order() == order
    assert cfg.stop_order() == order[::-1]


def test_start_order_respects_chains() -> None:
    cfg = build(
        {
            "service": {
                "c": sidecar(criticality=99, depends_on=["b"]),
                "b": sidecar(criticality=1, depends_on=["a"]),
                "a": sidecar(criticality=0),
                "db": primary(),
            }
        }
    )
    assert cfg.start_order() == ["db", "a", "b", "c"]


def test_eviction_order() -> None:
    cfg = build(
        {
            "service": {
                "db": primary(),
                "keep": sidecar(criticality=0, evictable=False),
                "low": sidecar(criticality=10),
                "high": sidecar(criticality=90),
                "adj": sidecar(oom_score_adj=950),
            }
        }
    )
    assert cfg.eviction_order() == ["adj", "low", "high"]
    assert cfg.sidecar_names() == ["keep", "low", "high", "adj"]


NESTED: dict[str, Any] = {
    "oomguard": {"cgroup": "/og", "reserve": "16M", "memory_max": "4G"},
    "slice": {
        "inner": {"parent": "outer", "memory_max": "1G", "oom_group": True},
        "outer": {"memory_max": "2G", "memory_min": "64M"},
        "other": {"memory_high": "500M"},
    },
    "service": {
        "x": sidecar(slice="inner", memory_max="512M", criticality=30),
        "db": primary(memory_high="1G", memory_max="1200M"),
        "y": sidecar(slice="other"),
    },
}


def test_tree_spec_nests_slices_parents_first() -> None:
    cfg = build(NESTED)
    tree = cfg.tree_spec()
    assert (tree.root, tree.reserve, tree.memory_max) == ("/og", 16 * MiB, 4 * GiB)
    assert [(s.name, s.path, s.kind) for s in tree.slices] == [
        ("outer", ("outer",), "slice"),
        ("other", ("other",), "slice"),
        ("inner", ("outer", "inner"), "slice"),
        # services in start order: the primary, then by criticality (y 50 > x 30)
        ("db", ("db",), "service"),
        ("y", ("other", "y"), "service"),
        ("x", ("outer", "inner", "x"), "service"),
    ]
    seen: set[tuple[str, ...]] = set()
    for spec in tree.slices:
        assert spec.path[:-1] in seen or len(spec.path) == 1
        seen.add(spec.path)
    by_name = {s.name: s for s in tree.slices}
    assert by_name["inner"].limits == Limits(max=GiB, oom_group=True)
    assert by_name["outer"].limits == Limits(min=64 * MiB, max=2 * GiB)
    # The primary is protected up to what it may hold: its memory_high (1G) here.
    assert by_name["db"].limits == Limits(low=GiB, high=GiB, max=1200 * MiB)
    assert by_name["x"].limits == Limits(max=512 * MiB, oom_group=True)


# -- the primary's derived memory.low ---------------------------------------------------------


def _primary_low(data: dict[str, Any]) -> tuple[int, dict[str, int]]:
    cfg = build(data)
    lows = {s.name: s.limits.low for s in cfg.tree_spec().slices}
    return cfg.primary_low(), lows


def test_primary_low_is_the_budget_no_sidecar_limit_can_take() -> None:
    low, lows = _primary_low(
        {
            "oomguard": {"memory_max": "1G", "reserve": "32M"},
            "slice": {"sidecars": {"memory_max": "256M"}},
            "service": {
                "db": primary(),
                "a": sidecar(slice="sidecars", memory_max="64M"),
                "b": sidecar(memory_max="100M"),
                "c": sidecar(),  # unlimited: takes nothing from the figure
            },
        }
    )
    assert low == GiB - 32 * MiB - 256 * MiB - 100 * MiB
    assert lows == {"sidecars": 0, "db": low, "a": 0, "b": 0, "c": 0}


def test_primary_low_is_capped_by_its_own_high_and_max() -> None:
    base: dict[str, Any] = {"oomguard": {"memory_max": "1G", "reserve": "32M"}}
    assert build({**base, "service": {"db": primary(memory_max="500M")}}).primary_low() == (
        500 * MiB
    )
    with_high = {"service": {"db": primary(memory_high="300M", memory_max="500M")}}
    assert build({**base, **with_high}).primary_low() == 300 * MiB
    # No tree budget: the primary's own limit alone.
    assert build({"service": {"db": primary(memory_max="2G")}}).primary_low() == 2 * GiB


def test_primary_low_without_any_limit_is_zero() -> None:
    assert build({"service": {"db": primary(), "s": sidecar()}}).primary_low() == 0


def test_primary_low_never_negative_when_sidecars_take_the_budget() -> None:
    data = {
        "oomguard": {"memory_max": "300M", "reserve": "32M"},
        "service": {"db": primary(), "s": sidecar(memory_max="290M")},
    }
    assert build(data).primary_low() == 0


def test_explicit_protection_replaces_the_derived_low() -> None:
    base: dict[str, Any] = {"oomguard": {"memory_max": "1G"}}
    assert build({**base, "service": {"db": primary(memory_low="100M")}}).primary_low() == (
        100 * MiB
    )
    # memory_low = 0 is the way to ask for no protection at all.
    assert build({**base, "service": {"db": primary(memory_low="0")}}).primary_low() == 0
    # memory_min alone is explicit protection too: no memory.low is added beside it.
    cfg = build({**base, "service": {"db": primary(memory_min="64M")}})
    assert cfg.primary_low() == 0
    assert next(s for s in cfg.tree_spec().slices if s.name == "db").limits.min == 64 * MiB


def test_slices_around_the_primary_claim_its_derived_low() -> None:
    """memory.low is hierarchical: a slice without its own passes its children's sum down."""
    low, lows = _primary_low(
        {
            "oomguard": {"memory_max": "1G", "reserve": "32M"},
            "slice": {
                "outer": {},
                "inner": {"parent": "outer"},
                "sidecars": {"memory_max": "200M"},
            },
            "service": {
                "db": primary(slice="inner"),
                "helper": sidecar(slice="inner", memory_low="8M", memory_max="50M"),
                "s": sidecar(slice="sidecars"),
            },
        }
    )
    assert low == GiB - 32 * MiB - 200 * MiB
    assert lows["inner"] == low + 8 * MiB
    assert lows["outer"] == low + 8 * MiB
    assert lows["sidecars"] == 0


def test_a_slice_with_its_own_protection_keeps_it() -> None:
    _, lows = _primary_low(
        {
            "oomguard": {"memory_max": "1G"},
            "slice": {"mine": {"memory_low": "100M"}},
            "service": {"db": primary(slice="mine", memory_low="100M")},
        }
    )
    assert lows == {"mine": 100 * MiB, "db": 100 * MiB}


def test_slice_path_and_chain() -> None:
    cfg = build(NESTED)
    assert cfg.slice_path("inner") == ("outer", "inner")
    assert cfg.slice_path("x") == ("outer", "inner", "x")
    assert cfg.slice_path("db") == ("db",)
    assert cfg.slice_chain("x") == ["outer", "inner"]
    with pytest.raises(KeyError):
        cfg.slice_path("nope")


def test_pressure_for_applies_overrides_outermost_first() -> None:
    data = {
        "oomguard": {"pressure": {"cooldown": "7s"}},
        "slice": {
            "outer": {"pressure": {"headroom_min": 0.2, "cooldown": "3s"}},
            "inner": {"parent": "outer", "pressure": {"cooldown": "1s"}},
        },
        "service": {"db": primary(), "x": sidecar(slice="inner")},
    }
    cfg = build(data)
    x = cfg.pressure_for("x")
    assert (x.headroom_min, x.cooldown, x.hysteresis) == (0.2, 1.0, 30.0)
    assert cfg.pressure_for("outer").cooldown == 3.0
    assert cfg.pressure_for("db") == cfg.oomguard.pressure
    assert cfg.pressure_for("db").cooldown == 7.0


def test_round_trip_through_dump() -> None:
    cfg = build(NESTED)
    again = Config.from_mapping(cfg.model_dump(exclude_unset=True))
    assert again == cfg
    as_json = Config.from_mapping(cfg.model_dump(mode="json", exclude_unset=True))
    assert as_json == cfg
    assert as_json.tree_spec() == cfg.tree_spec()


# -- warnings ---------------------------------------------------------------------------------


def warning_paths(data: dict[str, Any]) -> list[str]:
    return [w.path for w in build(data).warnings()]


def test_clean_config_has_no_warnings() -> None:
    assert build(NESTED).warnings() == []


def test_child_above_parent_is_a_warning() -> None:
    data = {
        "slice": {"s": {"memory_max": "256M"}},
        "service": {"db": primary(), "b": sidecar(slice="s", memory_max="1G")},
    }
    found = build(data).warnings()
    assert [w.path for w in found] == ["service.b.memory_max"]
    assert "above its parent's slice.s.memory_max (256M)" in found[0].message


def test_overcommitted_children_are_a_warning() -> None:
    data = {
        "slice": {"s": {"memory_max": "256M"}},
        "service": {
            "db": primary(),
            "a": sidecar(slice="s", memory_max="200M"),
            "b": sidecar(slice="s", memory_max="100M"),
        },
    }
    found = build(data).warnings()
    assert [w.path for w in found] == ["slice.s.memory_max"]
    assert "add up to 300M (a 200M, b 100M)" in found[0].message


def test_root_overcommit_counts_the_reserve() -> None:
    data = {
        "oomguard": {"memory_max": "1G", "reserve": "64M"},
        "service": {"db": primary(memory_max="1000M")},
    }
    found = build(data).warnings()
    assert [w.path for w in found] == ["oomguard.memory_max"]
    assert "reserve 64M" in found[0].message


def test_protection_the_parent_cancels_is_a_warning() -> None:
    data = {
        "slice": {"s": {"memory_min": "10M"}},
        "service": {"db": primary(), "b": sidecar(slice="s", memory_min="100M")},
    }
    found = build(data).warnings()
    assert [w.path for w in found] == ["slice.s.memory_min"]
    assert "at least 100M" in found[0].message


@pytest.mark.parametrize(("window", "warns"), [("2s", False), ("4s", False), ("3s", True)])
def test_psi_window_needing_privilege_is_a_warning(window: str, warns: bool) -> None:
    data = {
        "slice": {"s": {"pressure": {"psi_trigger": f"some 100ms {window}"}}},
        "service": {"db": primary()},
    }
    assert warning_paths(data) == (["slice.s.pressure.psi_trigger"] if warns else [])


def test_sidecar_ranked_with_primary_is_a_warning() -> None:
    data = {"service": {"db": primary(), "b": sidecar(oom_score_adj=-999)}}
    assert warning_paths(data) == ["service.b.oom_score_adj"]


# -- sizes, property-based ----------------------------------------------------------------------

UNITS = {"": 1, "K": 1 << 10, "M": MiB, "G": GiB, "Ki": 1 << 10, "Mi": MiB, "Gi": GiB}


@settings(database=None)
@given(st.integers(min_value=0, max_value=1 << 20), st.sampled_from(sorted(UNITS)))
def test_size_text_parses_to_bytes(number: int, unit: str) -> None:
    assert only_db(memory_max=f"{number}{unit}").service["db"].memory_max == number * UNITS[unit]


@settings(database=None)
@given(st.integers(min_value=0, max_value=1 << 24), st.sampled_from([1, 1 << 10, MiB, GiB]))
def test_formatted_sizes_round_trip(number: int, unit: int) -> None:
    # What `validate` prints can be pasted back: exact for whole units, else within the one
    # decimal format_size keeps.
    size = number * unit
    text = format_size(size)
    parsed = only_db(memory_max=text).service["db"].memory_max
    assert parsed is not None
    if "." in text:
        assert abs(parsed - size) <= 0.05 * size
    else:
        assert parsed == size
