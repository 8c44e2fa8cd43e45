"""The config models: frozen pydantic models, validated once, then compiled into a plain Plan.

Everything a user can write is parsed by a field type (``fields.py``) and combined here; nothing
downstream converts a type or re-validates: ``compile.py`` turns a ``Config`` into the plain
``oomguard.plan.Plan`` the runtime reads.

Validation runs in two passes, both inside ``Config.model_validate``:

1. Field by field (pydantic): types, formats, ranges, unknown keys. Every bad field is reported.
2. Across fields (``checks.py``): one primary, the shared slice/service namespace, references
   and cycles, limit ordering. This pass only runs once pass 1 found nothing, because it needs
   typed values; it raises ``ConfigError`` (not a pydantic error) so each problem keeps its own
   dotted field path.

Use ``Config.from_mapping`` (or ``oomguard.config.load.load_config``): it turns both passes into a
single ``ConfigError`` listing every ``Problem``. ``warnings.py`` lists what is allowed but
probably not meant.

This module is pure: no I/O, no clock. pydantic is imported only by the config package, so
``oomguard status`` and the running daemon never pay for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import json
import re
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from oomguard.cgroup.spec import Limits, OomdHint, SliceSpec, TreeSpec
from oomguard.config.checks import cross_field_problems
from oomguard.config.fields import (
    PRIMARY_OOM_SCORE_ADJ,
    PSI_WINDOW_MAX,
    PSI_WINDOW_MIN,
    AbsPath,
    CgroupRoot,
    Command,
    CommNames,
    Criticality,
    Env,
    Fraction,
    HookTimeout,
    Ident,
    LimitSize,
    Listen,
    LongDuration,
    MaxRestarts,
    MiB,
    Name,
    Names,
    OomScoreAdj,
    OptAbsPath,
    OptCommand,
    Percent,
    PositiveDuration,
    ProbeInterval,
    Role,
    SampleInterval,
    SignalName,
    Size,
    StartSecs,
    TcpTarget,
    Watchdog,
    custom_error,
    parse_limit,
    show,
    suggest,
)
from oomguard.config.warnings import config_warnings
from oomguard.errors import ConfigError, Problem
from oomguard.paths import STATE_DIR
from oomguard.plan import LogFormat, LogMode, PsiTriggerSpec

# At run time, not under TYPE_CHECKING: pydantic resolves field annotations when a model class
# is created.
from oomguard.policy.pressure import Mode  # noqa: TC001
from oomguard.policy.restart import RestartPolicy  # noqa: TC001
from oomguard.units import format_duration, parse_duration

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from pydantic_core import ErrorDetails


class _Model(BaseModel):
    # frozen: a Config is a value, shared by every component; extra="forbid": a typo must not
    # silently become "use the default".
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------------------------
# Pressure
# --------------------------------------------------------------------------------------------


class PsiTrigger(_Model):
    """A PSI trigger, written to a memory.pressure fd as ``"some <stall_us> <window_us>"``:
    fire when tasks stalled for ``stall`` seconds in total within any ``window``."""

    kind: Literal["some", "full"]
    stall: float
    window: float

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        words = data.split()
        hint = 'use e.g. "some 150ms 2s" (some|full, stall time, window)'
        if len(words) != 3 or words[0] not in ("some", "full"):
            raise custom_error("psi_trigger", f"{show(data)} is not a PSI trigger; {hint}")
        try:
            stall, window = parse_duration(words[1]), parse_duration(words[2])
        except ValueError:
            raise custom_error("psi_trigger", f"{show(data)} has a bad duration; {hint}") from None
        return {"kind": words[0], "stall": stall, "window": window}

    @model_validator(mode="after")
    def _bounds(self) -> PsiTrigger:
        if not PSI_WINDOW_MIN <= self.window <= PSI_WINDOW_MAX:
            raise custom_error(
                "psi_trigger",
                f"window {format_duration(self.window)} is outside the kernel's 500ms..10s",
            )
        if not 0 < self.stall <= self.window:
            raise custom_error(
                "psi_trigger",
                f"stall {format_duration(self.stall)} must be more than 0 and at most the "
                f"window {format_duration(self.window)}",
            )
        return self

    def kernel_line(self) -> str:
        """What to write to the memory.pressure fd (microseconds)."""
        return PsiTriggerSpec(self.kind, self.stall, self.window).kernel_line()

    def __str__(self) -> str:
        return f"{self.kind} {format_duration(self.stall)} {format_duration(self.window)}"


_PSI_SCHEMA = WithJsonSchema({"type": "string", "examples": ["some 150ms 2s"]})
PsiTriggerField = Annotated[PsiTrigger, _PSI_SCHEMA]
OptPsiTriggerField = Annotated[PsiTrigger | None, _PSI_SCHEMA]


class PressureConfig(_Model):
    """Thresholds of the pressure response, for one budget (a slice, or the whole tree).

    A budget is "under pressure" when its headroom ``1 - memory.current / memory.max`` falls
    below ``headroom_min``, or its PSI ``some avg10`` rises above ``psi_some_avg10``, or the PSI
    trigger fires. oomguard then evicts the least critical evictable sidecar, waits ``cooldown``
    before the next eviction, and restores evicted sidecars once the budget has been calm for
    ``hysteresis``.
    """

    headroom_min: Fraction = 0.10
    psi_some_avg10: Percent = 20.0
    psi_trigger: PsiTriggerField = Field(
        default=PsiTrigger(kind="some", stall=0.15, window=2.0),
        json_schema_extra={"default": "some 150ms 2s"},  # as a user writes it
    )
    hysteresis: PositiveDuration = 30.0
    cooldown: PositiveDuration = 5.0
    sample_interval: SampleInterval = 1.0

    def merged(self, override: PressureOverride) -> PressureConfig:
        """These thresholds with every field the override sets replaced."""
        update = {k: v for k, v in override if v is not None}
        return self.model_copy(update=update) if update else self


class PressureOverride(_Model):
    """``[slice.X.pressure]``: the same keys as ``[oomguard.pressure]``; unset ones inherit."""

    headroom_min: Fraction | None = None
    psi_some_avg10: Percent | None = None
    psi_trigger: OptPsiTriggerField = None
    hysteresis: PositiveDuration | None = None
    cooldown: PositiveDuration | None = None
    sample_interval: SampleInterval | None = None


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


class OomguardSection(_Model):
    """``[oomguard]``: the supervisor itself and the tree root."""

    reserve: Size = Field(
        default=32 * MiB, description="memory.min of oomguard's own leaf, so it survives reclaim."
    )
    memory_max: LimitSize = Field(
        default=None, description="memory.max of the whole tree (None = max)."
    )
    state_dir: AbsPath = Path(STATE_DIR)
    cgroup: CgroupRoot = Field(
        default=None,
        description='Tree root under the cgroup2 mount, e.g. "/oomguard"; '
        'default "<own cgroup>/oomguard".',
    )
    mode: Mode = "enforce"
    log_format: LogFormat = "kv"
    metrics_listen: Listen = None
    require_cgroups: StrictBool = Field(
        default=False,
        description="Refuse to start without a writable cgroup v2 memory controller, instead of "
        "running degraded (oom_score_adj only, OOM kills detected from /proc/vmstat).",
    )
    pressure: PressureConfig = Field(default_factory=PressureConfig)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """``metrics_listen`` split for a socket: ``("::1", 9187)``; "" host means all."""
        if self.metrics_listen is None:
            return None
        host, _, port = self.metrics_listen.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return host, int(port)


class BudgetConfig(_Model):
    """The memory files every slice and service cgroup gets."""

    memory_min: Size = Field(default=0, description="memory.min: hard protection from reclaim.")
    memory_low: Size = Field(
        default=0, description="memory.low: best-effort protection from reclaim."
    )
    memory_high: LimitSize = Field(default=None, description="memory.high: throttle above this.")
    memory_max: LimitSize = Field(default=None, description="memory.max: OOM-kill above this.")
    swap_max: LimitSize = Field(default=None, description="memory.swap.max.")
    oom_group: StrictBool = Field(
        default=False, description="memory.oom.group: an OOM kill takes the whole cgroup."
    )

    def limits(self) -> Limits:
        return Limits(
            min=self.memory_min,
            low=self.memory_low,
            high=self.memory_high,
            max=self.memory_max,
            swap_max=self.swap_max,
            oom_group=self.oom_group,
        )


class SliceConfig(BudgetConfig):
    """``[slice.X]``: an intermediate budget that services (and slices) go into."""

    parent: str | None = Field(default=None, description="Nest this slice inside another slice.")
    pressure: PressureOverride = Field(default_factory=PressureOverride)


class ReadyConfig(_Model):
    """``[service.X.ready]``: when the service counts as up. Exactly one of ``command`` (exit 0
    means ready), ``tcp`` (a connection is accepted) or ``notify`` (it sends ``READY=1`` on
    ``$NOTIFY_SOCKET``, the sd_notify protocol)."""

    command: Command | None = None
    tcp: TcpTarget = None
    notify: StrictBool = False
    interval: ProbeInterval = Field(
        default=0.5, description="Between two probes (command, tcp). 50ms..1h."
    )
    timeout: PositiveDuration = Field(
        default=90.0,
        description="From the spawn; not ready by then is a failed start. More than 0, <= 1d.",
    )
    watchdog: Watchdog = Field(
        default=None,
        description="notify only: once ready, WATCHDOG=1 at least this often, or it is killed "
        "and restarted. 1s..1h.",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ReadyConfig:
        kinds = [k for k in ("command", "tcp") if getattr(self, k) is not None]
        kinds += ["notify"] if self.notify else []
        if len(kinds) != 1:
            found = ", ".join(kinds) if kinds else "none"
            raise custom_error(
                "ready",
                f"set exactly one of command, tcp or notify = true (found: {found})",
            )
        if self.watchdog is not None and not self.notify:
            raise custom_error(
                "ready",
                "watchdog needs notify = true (the service sends WATCHDOG=1); remove it",
            )
        return self

    @property
    def kind(self) -> Literal["command", "tcp", "notify"]:
        if self.command is not None:
            return "command"
        return "tcp" if self.tcp is not None else "notify"


class ShedConfig(_Model):
    """``[service.X.shed]`` (the primary only): when the primary's own budget is pressured,
    send ``signal`` to the largest process of its slice other than its main process, ranked by
    unreclaimable private memory (policy/shed.py), before any sidecar is evicted."""

    signal: SignalName = Field(default=signal.SIGTERM, json_schema_extra={"default": "SIGTERM"})
    exclude_comm: CommNames = Field(
        default=(), description="Process names (/proc/<pid>/comm) never shed."
    )
    cooldown: PositiveDuration = Field(
        default=30.0, description="The minimum time between two sheds."
    )
    min_size: Size = Field(
        default=32 * MiB,
        description="A process holding less private memory than this is never shed.",
    )


class HooksConfig(_Model):
    """``[hooks]``: commands run beside oomguard's actions (never before them: see
    docs/config.md). Each is killed after ``timeout``."""

    before_evict: OptCommand = None
    before_shed: OptCommand = None
    before_restart: OptCommand = None
    after_oom_kill: OptCommand = None
    timeout: HookTimeout = 5.0


class ServiceConfig(BudgetConfig):
    """``[service.X]``: one supervised command in its own cgroup."""

    command: Command
    role: Role = "sidecar"
    slice: str | None = Field(default=None, description="Put this service inside [slice.<name>].")
    criticality: Criticality = Field(
        default=50, description="Sidecars only, 0..99: higher is evicted/OOM-killed later."
    )
    oom_score_adj: OomScoreAdj = Field(
        default=None,
        description="Default: -999 for the primary, 1000 - 10 * criticality for sidecars.",
    )
    restart: RestartPolicy = "always"
    depends_on: Names = ()
    stop_signal: SignalName = Field(
        default=signal.SIGTERM, json_schema_extra={"default": "SIGTERM"}
    )
    stop_timeout: PositiveDuration = 10.0
    user: Ident = None
    group: Ident = None
    env: Env = Field(default_factory=dict)
    inherit_env: StrictBool = Field(
        default=False,
        description="Pass oomguard's whole environment to the service (then `env` over it). "
        "Default: a clean environment (PATH, HOME, USER, LOGNAME, SHELL, then `env`).",
    )
    cwd: OptAbsPath = Field(
        default=None, description="Working directory. Default: the user's home, else /."
    )
    log: LogMode = "inherit"
    start_secs: StartSecs = 1.0
    ready: ReadyConfig | None = Field(
        default=None,
        description="Readiness probe. Without it, a service is ready once up for start_secs.",
    )
    backoff_initial: PositiveDuration = 0.1
    backoff_max: PositiveDuration = 30.0
    backoff_reset: LongDuration = 60.0
    max_restarts: MaxRestarts = 10
    restart_window: LongDuration = 300.0
    essential: StrictBool = Field(
        default=False,
        description="If it fails for good, stop oomguard. Default: true for the primary.",
    )
    survive_partial_kill: StrictBool = False
    pressure_watch: StrictBool = False
    shed: ShedConfig | None = Field(
        default=None, description="Primary only: shed its largest process under pressure."
    )
    watermark: LimitSize = Field(
        default=None,
        description="Primary only: controlled restart above this. Default: memory_high.",
    )
    evictable: StrictBool = Field(
        default=True, description="Sidecars only: may be stopped to relieve pressure."
    )
    oom_group: StrictBool = Field(
        default=True,
        description="memory.oom.group: an OOM kill takes the whole service. Default: true for "
        "sidecars, false for the primary.",
    )

    @model_validator(mode="before")
    @classmethod
    def _role_defaults(cls, data: Any) -> Any:
        """Fill the defaults that depend on the role, before the fields are validated, so the
        fields stay plain ``bool``/``int`` downstream instead of "None = depends"."""
        if not isinstance(data, dict):
            return data
        if data.get("role", "sidecar") == "primary":
            defaults: dict[str, Any] = {"essential": True, "evictable": False, "oom_group": False}
            # The watermark defaults to memory_high. Copy it only when it parses: a bad
            # memory_high is reported once, at its own path, not again as a bad watermark.
            with contextlib.suppress(PydanticCustomError):
                defaults["watermark"] = parse_limit(data.get("memory_high"))
        else:
            defaults = {"essential": False, "evictable": True, "oom_group": True}
        return {**defaults, **data}

    @property
    def is_primary(self) -> bool:
        return self.role == "primary"


# --------------------------------------------------------------------------------------------
# The config
# --------------------------------------------------------------------------------------------


class Config(_Model):
    """A whole oomguard config. Build it with ``from_mapping`` or ``load_config``."""

    oomguard: OomguardSection = OomguardSection()
    # additionalProperties: keys not matching the name pattern are refused by the schema too.
    slice: dict[Name, SliceConfig] = Field(
        default_factory=dict, json_schema_extra={"additionalProperties": False}
    )
    service: dict[Name, ServiceConfig] = Field(
        default_factory=dict, json_schema_extra={"additionalProperties": False}
    )
    hooks: HooksConfig = Field(default_factory=HooksConfig)

    @model_validator(mode="after")
    def _cross_check(self) -> Config:
        problems = cross_field_problems(self)
        if problems:
            raise ConfigError(problems)
        return self

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str | None = None) -> Config:
        """Validate plain data (parsed TOML, or what ``oomguard exec`` builds from options).
        Raises ``ConfigError(problems, source)`` listing every problem found."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(problems_from(err), source=source) from None
        except ConfigError as err:
            raise ConfigError(err.problems, source=source) from None

    # -- derived API (pure) ---------------------------------------------------------------

    @property
    def primary_name(self) -> str:
        return next(name for name, svc in self.service.items() if svc.is_primary)

    @property
    def primary(self) -> ServiceConfig:
        return self.service[self.primary_name]

    def sidecar_names(self) -> list[str]:
        return [name for name, svc in self.service.items() if not svc.is_primary]

    def oom_score_adj(self, name: str) -> int:
        """The explicit value if given; else -999 for the primary and ``1000 - 10 *
        criticality`` for a sidecar (criticality 0 -> 1000 ... 99 -> 10).

        The kernel's badness (mm/oom_kill.c) is the task's memory plus ``oom_score_adj / 1000``
        of the OOMing cgroup's limit: in thousandths of the limit, usage + adj. A 10-point
        criticality gap (100 adj) therefore outweighs a 10% size difference. The primary at -999
        scores at most 1 (it cannot use more than the whole limit) while every sidecar scores at
        least 10, so the kernel picks the primary only when no sidecar is left in the OOMing
        cgroup. -999 rather than -1000 keeps it killable by its own slice's OOM: a runaway
        primary dies (and is restarted) instead of wedging its cgroup.
        """
        svc = self.service[name]
        if svc.oom_score_adj is not None:
            return svc.oom_score_adj
        if svc.is_primary:
            return PRIMARY_OOM_SCORE_ADJ
        return 1000 - 10 * svc.criticality

    def start_order(self) -> list[str]:
        """Dependencies first, always. Among services that are ready to start: the primary and
        what it (transitively) depends on, then sidecars by descending criticality, then file
        order. The primary is up as early as its dependencies allow: it is what is waited on."""
        index = {name: i for i, name in enumerate(self.service)}
        first = self._dependency_closure(self.primary_name)

        def key(name: str) -> tuple[int, int, int]:
            return (0 if name in first else 1, -self.service[name].criticality, index[name])

        waiting = {name: set(svc.depends_on) for name, svc in self.service.items()}
        ready = [key(name) for name, deps in waiting.items() if not deps]
        heapq.heapify(ready)
        names = list(self.service)
        order: list[str] = []
        while ready:
            name = names[heapq.heappop(ready)[2]]
            order.append(name)
            for other, deps in waiting.items():
                if name in deps:
                    deps.discard(name)
                    if not deps:
                        heapq.heappush(ready, key(other))
        # The cross-check refused dependency cycles, so every service was reached.
        assert len(order) == len(self.service), "dependency cycle slipped through validation"
        return order

    def _dependency_closure(self, name: str) -> set[str]:
        """``name`` and everything it depends on, directly or not."""
        seen = {name}
        todo = [name]
        while todo:
            for dep in self.service[todo.pop()].depends_on:
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return seen

    def stop_order(self) -> list[str]:
        """The reverse of start_order: dependents stop before what they depend on."""
        return self.start_order()[::-1]

    def eviction_order(self) -> list[str]:
        """Evictable sidecars, the first to evict first: highest oom_score_adj (least
        critical), then later in the file."""
        names = [n for n in self.sidecar_names() if self.service[n].evictable]
        index = {name: i for i, name in enumerate(self.service)}
        return sorted(names, key=lambda n: (-self.oom_score_adj(n), -index[n]))

    def slice_chain(self, name: str) -> list[str]:
        """The slices enclosing a slice or service, outermost first (a slice includes itself)."""
        chain: list[str] = []
        current = name if name in self.slice else self.service[name].slice
        while current is not None:
            chain.append(current)
            current = self.slice[current].parent
        return chain[::-1]

    def slice_path(self, name: str) -> tuple[str, ...]:
        """Where a slice or service lives, relative to the tree root: ("sidecars", "backup")."""
        if name in self.slice:
            return tuple(self.slice_chain(name))
        if name in self.service:
            return (*self.slice_chain(name), name)
        raise KeyError(f"no slice or service named {name!r}")

    def pressure_for(self, name: str) -> PressureConfig:
        """The effective thresholds of a slice (or of the slice a service is in): the global
        ``[oomguard.pressure]`` with each enclosing slice's overrides applied, outermost first."""
        result = self.oomguard.pressure
        for slice_name in self.slice_chain(name):
            result = result.merged(self.slice[slice_name].pressure)
        return result

    def primary_low(self) -> int:
        """The primary's memory.low: its own ``memory_low`` when it sets ``memory_min`` or
        ``memory_low``; otherwise derived, as the most the primary can hold without a limit
        being hit:

        * the part of the tree's budget that no sidecar limit can take, i.e. ``[oomguard]
          memory_max - reserve - memory_max`` of every other top-level slice or service (one
          without a memory_max takes nothing from this figure: it is the least critical and its
          unprotected usage is what reclaim takes first);
        * capped by the primary's own ``memory_high`` and ``memory_max`` where set.

        With none of these figures (no limit anywhere) nothing is derived: 0. Why a number and not
        "max", and what it protects against: docs/config.md, "Protecting the primary".
        """
        svc = self.primary
        if {"memory_min", "memory_low"} & svc.model_fields_set:
            return svc.memory_low
        candidates = [v for v in (svc.memory_high, svc.memory_max) if v is not None]
        tree = self.oomguard.memory_max
        if tree is not None:
            own_top = self.slice_path(self.primary_name)[0]
            others = [n for n in self._top_level() if n != own_top]
            taken = sum(self._budget(n).memory_max or 0 for n in others)
            candidates.append(max(0, tree - self.oomguard.reserve - taken))
        return min(candidates, default=0)

    def _top_level(self) -> list[str]:
        names = [n for n, s in self.slice.items() if s.parent is None]
        return names + [n for n, s in self.service.items() if s.slice is None]

    def _budget(self, name: str) -> BudgetConfig:
        return self.slice[name] if name in self.slice else self.service[name]

    def _slice_limits(self, name: str, lows: Mapping[str, int]) -> Limits:
        limits = self._budget(name).limits()
        if name in lows:
            limits = dataclasses.replace(limits, low=lows[name])
        return limits

    def _derived_lows(self) -> dict[str, int]:
        """memory.low of the primary and of each enclosing slice that does not set its own:
        protection is hierarchical (a child's effective memory.low is capped by its parent's), so
        every slice on the way down claims what its children claim."""
        lows = {self.primary_name: self.primary_low()}
        for name in reversed(self.slice_chain(self.primary_name)):
            if {"memory_min", "memory_low"} & self.slice[name].model_fields_set:
                break
            kids = [n for n, s in self.slice.items() if s.parent == name]
            kids += [n for n, s in self.service.items() if s.slice == name]
            lows[name] = sum(lows.get(k, self._budget(k).memory_low) for k in kids)
        return lows

    def _oomd(self, name: str) -> OomdHint | None:
        """The hint for systemd-oomd and oomd: avoid the primary's cgroup, prefer every sidecar
        and every slice that holds no primary; the slices around the primary hold both, so none."""
        if name == self.primary_name:
            return "avoid"
        if name in self.slice_chain(self.primary_name):
            return None
        return "prefer"

    def tree_spec(self) -> TreeSpec:
        """The slice tree to build: slices parents first (then file order), then services in
        start order. A service goes under its slice; top-level ones under the root. The primary
        (and the slices around it) get the derived memory.low of `primary_low`."""
        slice_index = {name: i for i, name in enumerate(self.slice)}
        slices = sorted(self.slice, key=lambda n: (len(self.slice_chain(n)), slice_index[n]))
        lows = self._derived_lows()
        specs = [
            SliceSpec(
                name,
                self.slice_path(name),
                "slice",
                self._slice_limits(name, lows),
                self._oomd(name),
            )
            for name in slices
        ]
        specs += [
            SliceSpec(
                name,
                self.slice_path(name),
                "service",
                self._slice_limits(name, lows),
                self._oomd(name),
            )
            for name in self.start_order()
        ]
        return TreeSpec(
            root=self.oomguard.cgroup,
            reserve=self.oomguard.reserve,
            memory_max=self.oomguard.memory_max,
            slices=tuple(specs),
        )

    def warnings(self) -> list[Problem]:
        """Things that are allowed but probably not meant (overcommitted budgets, limits above
        a parent's, protection a parent cancels, PSI windows that need privileges)."""
        return config_warnings(self)


def json_schema() -> dict[str, Any]:
    """The JSON schema of the TOML file (``oomguard validate --schema``)."""
    return Config.model_json_schema()


# --------------------------------------------------------------------------------------------
# pydantic errors -> Problems
# --------------------------------------------------------------------------------------------

_TABLES: dict[tuple[str, ...], type[BaseModel]] = {
    (): Config,
    ("oomguard",): OomguardSection,
    ("oomguard", "pressure"): PressureConfig,
    ("slice", "*"): SliceConfig,
    ("slice", "*", "pressure"): PressureOverride,
    ("service", "*"): ServiceConfig,
}
_IDENT_RE = re.compile(r"[A-Za-z0-9_-]+")


def dotted(loc: Iterable[int | str]) -> str:
    """("service", "db", "command", 0) -> "service.db.command[0]"."""
    out = ""
    for part in loc:
        if part == "[key]":
            continue  # a bad dict key: the path up to it already names the key
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if _IDENT_RE.fullmatch(part) else json.dumps(part)
            out += f".{text}" if out else text
    return out


def _table_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    key = tuple(
        "*" if i == 1 and loc[0] in ("slice", "service") else str(p) for i, p in enumerate(loc)
    )
    return _TABLES.get(key)


def _unknown_key(loc: tuple[int | str, ...]) -> str:
    key = str(loc[-1])
    table = _table_at(loc[:-1])
    if table is None:
        return "unknown key"
    fields = list(table.model_fields)
    if table is SliceConfig and key in ServiceConfig.model_fields:
        return f'"{key}" is a service key, not a slice key; did you mean [service.{loc[1]}]?'
    hint = suggest(key, fields)
    if not hint:
        hint = "; valid keys: " + ", ".join(fields)
    return f"unknown key{hint}"


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        return _unknown_key(tuple(error["loc"]))
    if kind == "missing":
        return "is required"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a table, got {show(value)}"
    ctx = error.get("ctx") or {}
    if "message" in ctx and isinstance(ctx["message"], str):
        return ctx["message"]  # one of ours (_custom): it already shows the value
    if kind == "literal_error":
        expected = str(ctx.get("expected", "one of the documented values")).replace("'", '"')
        return f"{show(value)} is not allowed; use {expected}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{show(value)} is not a boolean; use true or false"
    if kind == "string_type":
        return f"{show(value)} is not a string"
    msg = error["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"{msg}, got {show(value)}"


def problems_from(err: ValidationError) -> list[Problem]:
    """Each pydantic error as a Problem with a dotted field path and a message for humans."""
    return [Problem(dotted(e["loc"]), _message(e)) for e in err.errors()]
