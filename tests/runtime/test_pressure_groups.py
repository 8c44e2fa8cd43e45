"""Where oomguard's automatic sidecar memory.high may sit (runtime/pressure.sidecar_groups):
on the topmost cgroup of each branch without the primary, never on the primary or a cgroup the
primary lives under."""

from __future__ import annotations

from typing import Any

from oomguard.cgroup.path import CgroupPath
from oomguard.config.compile import compile_plan
from oomguard.config.model import Config
from oomguard.runtime.context import ServiceView, build_views
from oomguard.runtime.pressure import sidecar_groups


def config(services: dict[str, dict[str, Any]], slices: dict[str, Any] | None = None) -> Config:
    body: dict[str, Any] = {"service": {n: {"command": ["x"], **s} for n, s in services.items()}}
    if slices:
        body["slice"] = slices
    return Config.from_mapping(body, source="test")


def views(cfg: Config) -> list[ServiceView]:
    """The services as the pressure response sees them (runtime/context.py)."""
    where = {name: CgroupPath.parse(f"/og/{name}") for name in cfg.service}
    return list(build_views(compile_plan(cfg), where, {})[0].values())


def ancestors_of_primary(cfg: Config) -> set[str]:
    return {*cfg.slice_chain(cfg.primary_name), cfg.primary_name}


def test_loose_sidecars_are_each_their_own_group() -> None:
    cfg = config({"db": {"role": "primary"}, "a": {}, "b": {}})
    assert sidecar_groups(views(cfg)) == {"a": (), "b": ()}


def test_a_slice_of_sidecars_is_one_group() -> None:
    cfg = config(
        {"db": {"role": "primary"}, "a": {"slice": "side"}, "b": {"slice": "side"}},
        {"side": {"memory_max": "100M"}},
    )
    assert sidecar_groups(views(cfg)) == {"side": ()}


def test_a_slice_around_the_primary_never_gets_one_its_other_members_do() -> None:
    cfg = config(
        {
            "db": {"role": "primary", "slice": "main"},
            "pooler": {"slice": "main"},
            "backup": {"slice": "batch"},
        },
        {"main": {"memory_max": "1G"}, "batch": {"parent": "main"}},
    )
    groups = sidecar_groups(views(cfg))
    assert groups == {"pooler": ("main",), "batch": ("main",)}
    assert not set(groups) & ancestors_of_primary(cfg)


def test_groups_with_nothing_evictable_get_none() -> None:
    cfg = config({"db": {"role": "primary"}, "keep": {"evictable": False}, "go": {}})
    assert sidecar_groups(views(cfg)) == {"go": ()}
