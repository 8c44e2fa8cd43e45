"""`oomguard validate CONFIG [--json]` and `oomguard validate --schema`.

Builds the whole config without running anything (oomd's --check-config): exit 0 with a summary
of the tree as it will be built, or exit 2 with one line per problem on stderr, each naming the
file and the dotted field path.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from oomguard.errors import ConfigError, ExitCode, UsageError
from oomguard.units import format_duration, format_size

if TYPE_CHECKING:
    from oomguard.cgroup.spec import Limits, SliceSpec
    from oomguard.config.model import Config
    from oomguard.errors import Problem

#: How the tree root reads when `[oomguard] cgroup` is unset: it is resolved at run time from
#: /proc/self/cgroup, which may differ from where `validate` runs.
DEFAULT_ROOT = "<own cgroup>/oomguard"


def limits_text(limits: Limits) -> str:
    """The limits that differ from the kernel defaults, as ``min=32M high=300M oom.group``."""
    parts = []
    if limits.min:
        parts.append(f"min={format_size(limits.min)}")
    if limits.low:
        parts.append(f"low={format_size(limits.low)}")
    if limits.high is not None:
        parts.append(f"high={format_size(limits.high)}")
    if limits.max is not None:
        parts.append(f"max={format_size(limits.max)}")
    if limits.swap_max is not None:
        parts.append(f"swap.max={format_size(limits.swap_max)}")
    if limits.oom_group:
        parts.append("oom.group")
    return " ".join(parts) or "-"


def _tree_order(slices: tuple[SliceSpec, ...]) -> list[SliceSpec]:
    """Depth first, each parent followed by its children, otherwise in spec order."""
    by_parent: dict[tuple[str, ...], list[SliceSpec]] = {}
    for spec in slices:
        by_parent.setdefault(spec.path[:-1], []).append(spec)
    out: list[SliceSpec] = []

    def walk(prefix: tuple[str, ...]) -> None:
        for spec in by_parent.get(prefix, []):
            out.append(spec)
            walk(spec.path)

    walk(())
    return out


def summary_lines(cfg: Config, source: str) -> list[str]:
    """The human summary: counts, then the tree with limits and oom_score_adj, then orders."""
    tree = cfg.tree_spec()
    slices = len(cfg.slice)
    lines = [
        f"{source}: ok: {len(cfg.service)} service{'s' * (len(cfg.service) != 1)} "
        f"(primary {cfg.primary_name}), {slices} slice{'s' * (slices != 1)}, "
        f"mode {cfg.oomguard.mode}",
        f"tree root {tree.root or DEFAULT_ROOT}  max={format_size(tree.memory_max)}",
    ]
    rows: list[tuple[str, str, str, str]] = [
        ("supervisor/", "oomguard", f"min={format_size(tree.reserve)}", "")
    ]
    for spec in _tree_order(tree.slices):
        path = "/".join(spec.path) + "/"
        extra = ""
        if spec.kind == "service":
            svc = cfg.service[spec.name]
            kind = f"service {svc.role}"
            extra = f"oom_score_adj={cfg.oom_score_adj(spec.name)}"
            if not svc.is_primary:
                extra += f" criticality={svc.criticality}"
        else:
            kind = "slice"
        rows.append(("  " * (len(spec.path) - 1) + path, kind, limits_text(spec.limits), extra))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [row[i].ljust(widths[i]) for i in range(3)] + [row[3]]
        lines.append(("  " + "  ".join(cells)).rstrip())
    pressure = cfg.oomguard.pressure
    lines += [
        f"start order: {', '.join(cfg.start_order())}",
        f"eviction order: {', '.join(cfg.eviction_order()) or '-'}",
        f"pressure: headroom_min={pressure.headroom_min:g} "
        f"psi_some_avg10={pressure.psi_some_avg10:g} psi_trigger={pressure.psi_trigger!s} "
        f"cooldown={format_duration(pressure.cooldown)} "
        f"hysteresis={format_duration(pressure.hysteresis)}",
    ]
    return lines


def _limits_json(limits: Limits) -> dict[str, Any]:
    return {
        "memory_min": limits.min,
        "memory_low": limits.low,
        "memory_high": limits.high,
        "memory_max": limits.max,
        "swap_max": limits.swap_max,
        "oom_group": limits.oom_group,
    }


def _problems_json(problems: list[Problem]) -> list[dict[str, str]]:
    return [{"path": p.path, "message": p.message} for p in problems]


def summary_json(cfg: Config, source: str) -> dict[str, Any]:
    """The machine summary (``--json``): sizes in bytes, None for "max"."""
    tree = cfg.tree_spec()
    cgroups: list[dict[str, Any]] = []
    for spec in tree.slices:
        entry: dict[str, Any] = {
            "name": spec.name,
            "path": "/".join(spec.path),
            "kind": spec.kind,
            **_limits_json(spec.limits),
        }
        if spec.kind == "service":
            svc = cfg.service[spec.name]
            entry["role"] = svc.role
            entry["oom_score_adj"] = cfg.oom_score_adj(spec.name)
            entry["criticality"] = None if svc.is_primary else svc.criticality
        cgroups.append(entry)
    return {
        "ok": True,
        "source": source,
        "primary": cfg.primary_name,
        "mode": cfg.oomguard.mode,
        "root": tree.root,
        "reserve": tree.reserve,
        "memory_max": tree.memory_max,
        "cgroups": cgroups,
        "start_order": cfg.start_order(),
        "eviction_order": cfg.eviction_order(),
        "warnings": _problems_json(cfg.warnings()),
    }


@click.command(name="validate")
@click.argument("config", required=False, metavar="CONFIG")
@click.option("--schema", is_flag=True, help="Print the config's JSON schema and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def command(config: str | None, schema: bool, as_json: bool) -> int:
    """Check CONFIG without running anything; print the tree it would build."""
    # Imported here, not at the top: `oomguard --help` must not pay for pydantic.
    from oomguard.config.load import load_config
    from oomguard.config.model import json_schema

    if schema:
        click.echo(json.dumps(json_schema(), indent=2, sort_keys=False))
        return ExitCode.OK
    if config is None:
        raise UsageError(
            "validate needs a CONFIG file",
            hint="oomguard validate /etc/oomguard.toml, or --schema for the JSON schema",
        )
    try:
        cfg = load_config(config)
    except ConfigError as err:
        # One line per problem (not main's single joined line), so each is greppable.
        source = err.source or config
        for problem in err.problems:
            click.echo(f"oomguard: error: {source}: {problem}", err=True)
        if err.hint:
            click.echo(f"oomguard: hint: {err.hint}", err=True)
        if as_json:
            result = {"ok": False, "source": source, "problems": _problems_json(err.problems)}
            click.echo(json.dumps(result, indent=2))
        return ExitCode.USAGE
    warnings = cfg.warnings()
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(summary_json(cfg, config), indent=2))
    else:
        for line in summary_lines(cfg, config):
            click.echo(line)
    return ExitCode.OK
