"""Cross-field checks of a config (validation pass 2): what no single field can say alone.

One primary, the shared slice/service namespace, references and cycles, limit ordering, and the
settings that apply only to one role. Runs inside ``Config.model_validate`` once every field
parsed (it needs typed values); collects every problem, never stops at the first.

Pure: no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from oomguard.cgroup.spec import SUPERVISOR_LEAF
from oomguard.config.fields import suggest
from oomguard.errors import Problem
from oomguard.units import format_duration, format_size

if TYPE_CHECKING:
    from oomguard.config.model import BudgetConfig, Config

_ORDERED_LIMITS = ("memory_min", "memory_low", "memory_high", "memory_max")


def _fmt(value: int | None) -> str:
    return format_size(value)


class _Checker:
    """Every check that needs more than one field. Appends Problems; never stops early."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.out: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.out.append(Problem(path, message))

    def problems(self) -> list[Problem]:
        self._names()
        self._primary()
        self._slice_refs()
        self._service_refs()
        self._depends_cycles()
        self._limits()
        self._services()
        self._shed()
        return self.out

    def _shed(self) -> None:
        """The shed rule belongs to the primary, which must give it an early enough signal."""
        for name, svc in self.cfg.service.items():
            if svc.shed is None:
                continue
            if not svc.is_primary:
                self.add(
                    f"service.{name}.shed",
                    "only the primary sheds processes (a sidecar under pressure is evicted "
                    f"whole); remove [service.{name}.shed]",
                )
            elif svc.watermark is None:
                self.add(
                    f"service.{name}.shed",
                    "shedding acts when the primary's usage reaches its watermark, and it has "
                    "none; set memory_high (below memory_max: the kernel then throttles the "
                    "runaway instead of killing it, which buys the time to shed) or watermark",
                )

    def _names(self) -> None:
        cfg = self.cfg
        for table, names in (("slice", cfg.slice), ("service", cfg.service)):
            for name in names:
                if name == SUPERVISOR_LEAF:
                    self.add(
                        f"{table}.{name}",
                        f'"{SUPERVISOR_LEAF}" is reserved for oomguard\'s own cgroup; '
                        "pick another name",
                    )
        for name in cfg.service:
            if name in cfg.slice:
                self.add(
                    f"service.{name}",
                    f'"{name}" is also a slice; slices and services share one namespace '
                    "because both become cgroup directories; rename one",
                )

    def _primary(self) -> None:
        cfg = self.cfg
        if not cfg.service:
            self.add(
                "service",
                "no services defined; add at least the primary, e.g. [service.db] with "
                'command = [...] and role = "primary"',
            )
            return
        primaries = [n for n, s in cfg.service.items() if s.is_primary]
        if not primaries:
            self.add(
                "service",
                f'no service has role = "primary" (services: {", ".join(cfg.service)}); '
                "mark exactly one as the primary",
            )
        elif len(primaries) > 1:
            for name in primaries:
                self.add(
                    f"service.{name}.role",
                    f"{len(primaries)} services are primary ({', '.join(primaries)}); exactly "
                    'one may be; make the others role = "sidecar"',
                )

    def _ref(self, path: str, name: str, kind: str, known: dict[str, Any]) -> bool:
        if name in known:
            return True
        other = "service" if kind == "slice" else "slice"
        other_known = self.cfg.service if kind == "slice" else self.cfg.slice
        if name in other_known:
            self.add(path, f'"{name}" is a {other}, not a {kind}')
            return False
        hint = suggest(name, known)
        if not hint:
            hint = f"; defined: {', '.join(known)}" if known else f"; define [{kind}.{name}]"
        self.add(path, f'no {kind} named "{name}"{hint}')
        return False

    def _slice_refs(self) -> None:
        cfg = self.cfg
        seen_cycles: set[frozenset[str]] = set()
        for name, sl in cfg.slice.items():
            if sl.parent is None:
                continue
            if not self._ref(f"slice.{name}.parent", sl.parent, "slice", cfg.slice):
                continue
            chain = [name]
            current: str | None = sl.parent
            while current is not None and current in cfg.slice and current not in chain:
                chain.append(current)
                current = cfg.slice[current].parent
            if current is not None and current in chain:
                cycle = chain[chain.index(current) :]
                if frozenset(cycle) not in seen_cycles:
                    seen_cycles.add(frozenset(cycle))
                    text = " -> ".join([*cycle, current])
                    self.add(
                        f"slice.{cycle[0]}.parent",
                        f"slices nest in a cycle: {text}; a slice cannot contain itself",
                    )

    def _service_refs(self) -> None:
        cfg = self.cfg
        for name, svc in cfg.service.items():
            if svc.slice is not None:
                self._ref(f"service.{name}.slice", svc.slice, "slice", cfg.slice)
            seen: set[str] = set()
            for dep in svc.depends_on:
                path = f"service.{name}.depends_on"
                if dep == name:
                    self.add(path, f'"{name}" depends on itself')
                elif dep in seen:
                    self.add(path, f'"{dep}" is listed twice')
                else:
                    self._ref(path, dep, "service", cfg.service)
                seen.add(dep)

    def _depends_cycles(self) -> None:
        cfg = self.cfg
        graph = {
            n: [d for d in s.depends_on if d in cfg.service and d != n]
            for n, s in cfg.service.items()
        }
        state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = done
        stack: list[str] = []
        seen_cycles: set[frozenset[str]] = set()

        def visit(node: str) -> None:
            state[node] = 1
            stack.append(node)
            for dep in graph[node]:
                if state.get(dep) == 1:
                    cycle = stack[stack.index(dep) :]
                    if frozenset(cycle) not in seen_cycles:
                        seen_cycles.add(frozenset(cycle))
                        text = " -> ".join([*cycle, dep])
                        self.add(
                            f"service.{cycle[0]}.depends_on",
                            f"dependency cycle: {text}; none of them could start first",
                        )
                elif dep not in state:
                    visit(dep)
            stack.pop()
            state[node] = 2

        for node in graph:
            if node not in state:
                visit(node)

    def _limit_order(self, prefix: str, budget: BudgetConfig) -> None:
        # memory_min <= memory_low <= memory_high <= memory_max, for the ones that are set
        # (0 for min/low and "max" for high/max mean unset). Protection above a limit can never
        # be used, and memory.high above memory.max means the kernel OOM-kills before it ever
        # throttles, which throws away the earliest warning sign.
        values = {
            "memory_min": budget.memory_min or None,
            "memory_low": budget.memory_low or None,
            "memory_high": budget.memory_high,
            "memory_max": budget.memory_max,
        }
        for i, lower in enumerate(_ORDERED_LIMITS):
            low_value = values[lower]
            if low_value is None:
                continue
            for upper in _ORDERED_LIMITS[i + 1 :]:
                up_value = values[upper]
                if up_value is not None and low_value > up_value:
                    self.add(
                        f"{prefix}.{lower}",
                        f"{lower} ({_fmt(low_value)}) is above {upper} ({_fmt(up_value)}); "
                        "keep memory_min <= memory_low <= memory_high <= memory_max",
                    )
                    break

    def _limits(self) -> None:
        cfg = self.cfg
        top = cfg.oomguard
        if top.memory_max is not None and top.reserve >= top.memory_max:
            self.add(
                "oomguard.reserve",
                f"reserve ({_fmt(top.reserve)}) is not below oomguard.memory_max "
                f"({_fmt(top.memory_max)}); nothing would be left for the services",
            )
        for name, sl in cfg.slice.items():
            self._limit_order(f"slice.{name}", sl)
        for name, svc in cfg.service.items():
            self._limit_order(f"service.{name}", svc)

    def _services(self) -> None:
        for name, svc in self.cfg.service.items():
            path = f"service.{name}"
            set_fields = svc.model_fields_set
            if svc.is_primary:
                if "criticality" in set_fields:
                    self.add(
                        f"{path}.criticality",
                        "the primary has no criticality: it ranks above every sidecar; remove "
                        "it (or set oom_score_adj to tune its OOM rank)",
                    )
                if svc.evictable:
                    self.add(
                        f"{path}.evictable",
                        "the primary is never evictable: evicting it is the outage oomguard "
                        "exists to prevent; remove it",
                    )
            elif "watermark" in set_fields and svc.watermark is not None:
                self.add(
                    f"{path}.watermark",
                    "watermark only applies to the primary (a controlled restart before the "
                    "OOM killer acts); for a sidecar use memory_high/memory_max",
                )
            # A watermark inherited from memory_high is covered by the limit-order check.
            if (
                svc.watermark is not None
                and svc.memory_max is not None
                and svc.watermark > svc.memory_max
                and svc.watermark != svc.memory_high
            ):
                self.add(
                    f"{path}.watermark",
                    f"watermark ({_fmt(svc.watermark)}) is above memory_max "
                    f"({_fmt(svc.memory_max)}); the OOM killer would act first",
                )
            if svc.backoff_initial > svc.backoff_max:
                self.add(
                    f"{path}.backoff_initial",
                    f"backoff_initial ({format_duration(svc.backoff_initial)}) is above "
                    f"backoff_max ({format_duration(svc.backoff_max)})",
                )


def cross_field_problems(cfg: Config) -> list[Problem]:
    """Every cross-field problem of ``cfg`` (empty: it is consistent)."""
    return _Checker(cfg).problems()
