"""What a valid config allows but probably does not mean (``oomguard validate`` prints them).

Overcommitted budgets, limits above a parent's, protection a parent cancels, PSI windows that
need privileges, and a sidecar ranked at or below the primary for the OOM killer. None of these
stops oomguard: each is a Problem with the field's dotted path, reported as a warning.

Pure: no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from oomguard.config.fields import PSI_UNPRIVILEGED_WINDOW
from oomguard.errors import Problem
from oomguard.units import format_duration, format_size

if TYPE_CHECKING:
    from oomguard.config.model import BudgetConfig, Config, PsiTrigger


def config_warnings(cfg: Config) -> list[Problem]:
    """Every warning about ``cfg``, in a stable order."""
    tree = _Tree(cfg)
    return [
        *_limits_above_parent(tree),
        *_protection_capped(tree),
        *_unprivileged_psi_windows(cfg),
        *_sidecars_below_primary(cfg),
    ]


class _Tree:
    """Slices and services as one tree: None is the tree root (``[oomguard]``)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.children: dict[str | None, list[str]] = {}
        for name in [*cfg.slice, *cfg.service]:
            self.children.setdefault(self.parent_of(name), []).append(name)

    def parent_of(self, name: str) -> str | None:
        if name in self.cfg.slice:
            return self.cfg.slice[name].parent
        return self.cfg.service[name].slice

    def path_of(self, name: str | None) -> str:
        if name is None:
            return "oomguard"
        return f"slice.{name}" if name in self.cfg.slice else f"service.{name}"

    def budget(self, name: str) -> BudgetConfig:
        return self.cfg.slice[name] if name in self.cfg.slice else self.cfg.service[name]

    def memory_max(self, name: str | None) -> int | None:
        return self.cfg.oomguard.memory_max if name is None else self.budget(name).memory_max


def _limits_above_parent(tree: _Tree) -> list[Problem]:
    """A child's memory.max above its parent's is legal but meaningless: the parent's limit is
    hit first. Children whose maxes add up to more than the parent's overcommit the budget: also
    legal (that is what a shared budget is for) but worth saying."""
    out: list[Problem] = []
    for parent, kids in tree.children.items():
        parent_max = tree.memory_max(parent)
        if parent_max is None:
            continue
        parent_path = tree.path_of(parent)
        for kid in kids:
            kid_max = tree.budget(kid).memory_max
            if kid_max is not None and kid_max > parent_max:
                out.append(
                    Problem(
                        f"{tree.path_of(kid)}.memory_max",
                        f"{format_size(kid_max)} is above its parent's {parent_path}.memory_max "
                        f"({format_size(parent_max)}), which is the limit that will apply",
                    )
                )
        out += _overcommitted(tree, parent, kids, parent_max)
    return out


def _overcommitted(
    tree: _Tree, parent: str | None, kids: list[str], parent_max: int
) -> list[Problem]:
    parts = [(kid, m) for kid in kids if (m := tree.budget(kid).memory_max) is not None]
    # The tree root also holds oomguard's own leaf, whose memory.min is the reserve.
    reserve = tree.cfg.oomguard.reserve
    if parent is None and reserve:
        parts.append(("reserve", reserve))
    total = sum(m for _, m in parts)
    # One part alone above the parent is already reported by the caller.
    if total <= parent_max or len(parts) <= 1:
        return []
    listed = ", ".join(f"{k} {format_size(m)}" for k, m in parts)
    return [
        Problem(
            f"{tree.path_of(parent)}.memory_max",
            f"children's memory_max add up to {format_size(total)} ({listed}), more than this "
            f"{format_size(parent_max)}; they can starve each other and the OOM may hit the "
            "parent instead of one child",
        )
    ]


def _protection_capped(tree: _Tree) -> list[Problem]:
    """memory.min/low protection is hierarchical: a child's effective protection is capped by
    its parent's, so a service's memory_min inside a slice without one protects nothing."""
    out: list[Problem] = []
    for parent, kids in tree.children.items():
        if parent is None:
            continue
        for field in ("memory_min", "memory_low"):
            have = getattr(tree.budget(parent), field)
            want = sum(getattr(tree.budget(k), field) for k in kids)
            if want > have:
                out.append(
                    Problem(
                        f"{tree.path_of(parent)}.{field}",
                        f"is {format_size(have)} but its children ask for {format_size(want)}; "
                        "the kernel caps a child's protection at its parent's, so set "
                        f"{field} to at least {format_size(want)}",
                    )
                )
    return out


def _unprivileged_psi_windows(cfg: Config) -> list[Problem]:
    """PSI windows that are not a multiple of 2 s need CAP_SYS_RESOURCE."""
    triggers: list[tuple[str, PsiTrigger]] = [
        ("oomguard.pressure", cfg.oomguard.pressure.psi_trigger)
    ]
    triggers += [
        (f"slice.{n}.pressure", s.pressure.psi_trigger)
        for n, s in cfg.slice.items()
        if s.pressure.psi_trigger is not None
    ]
    out: list[Problem] = []
    for path, trig in triggers:
        ratio = trig.window / PSI_UNPRIVILEGED_WINDOW
        if abs(ratio - round(ratio)) > 1e-9:
            out.append(
                Problem(
                    f"{path}.psi_trigger",
                    f"window {format_duration(trig.window)} is not a multiple of 2s; without "
                    "CAP_SYS_RESOURCE the kernel refuses it (oomguard then falls back to "
                    "polling avg10)",
                )
            )
    return out


def _sidecars_below_primary(cfg: Config) -> list[Problem]:
    """An explicit sidecar oom_score_adj at or below the primary's undoes the point of
    oomguard."""
    primary_adj = cfg.oom_score_adj(cfg.primary_name)
    out: list[Problem] = []
    for name in cfg.sidecar_names():
        adj = cfg.service[name].oom_score_adj
        if adj is not None and adj <= primary_adj:
            out.append(
                Problem(
                    f"service.{name}.oom_score_adj",
                    f"{adj} is not above the primary's ({primary_adj}); the OOM killer may "
                    "pick the primary before this sidecar",
                )
            )
    return out
