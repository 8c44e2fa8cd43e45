"""The compiled plan: what the runtime runs, as frozen plain dataclasses.

``oomguard.config.compile.compile_plan(config)`` builds a ``Plan`` once from a validated
``Config`` (oomd's parse -> intermediate form -> compile). Everything in it is already resolved
and bounded: defaults that depend on the role, the primary's derived memory.low, each service's
oom_score_adj, the pressure thresholds that apply to each slice after the overrides, the start
order. The runtime reads only the Plan and validates nothing again.

This module imports neither pydantic nor anything in ``oomguard.config``: the running daemon
gets its Plan as JSON (``to_json``/``from_json``) and never loads the config library. The
codec is generic over the dataclasses below (and the plain dataclasses they hold from
``cgroup/spec.py`` and ``policy/``), so a field added to a spec needs no codec change.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, TypeVar

# At run time, not under TYPE_CHECKING: the JSON decoder resolves the annotations
# (typing.get_type_hints) to rebuild each field.
from oomguard.cgroup.spec import Limits, SliceSpec, TreeSpec
from oomguard.policy.pressure import Mode, Thresholds  # noqa: TC001
from oomguard.policy.restart import RestartParams  # noqa: TC001

__all__ = [
    "BudgetSpec",
    "HooksSpec",
    "Limits",
    "LogFormat",
    "LogMode",
    "Plan",
    "PlanError",
    "PressureSpec",
    "PsiTriggerSpec",
    "ServiceSpec",
    "ShedSpec",
    "SliceSpec",
    "TreeSpec",
    "from_json",
    "load_json",
    "to_json",
]

#: oomguard's own diagnostics on stderr: key=value lines or JSON lines.
LogFormat: TypeAlias = Literal["kv", "json"]
#: A service's output: straight to oomguard's stdout/stderr, or line by line with its name.
LogMode: TypeAlias = Literal["inherit", "prefix"]
#: The version of the JSON form; ``from_json`` refuses any other.
FORMAT_VERSION = 1

_T = TypeVar("_T")


@dataclass(frozen=True)
class PsiTriggerSpec:
    """A PSI trigger for a memory.pressure fd: fire when tasks stalled (``some``: at least one
    task, ``full``: all of them) for ``stall`` seconds within any ``window`` seconds."""

    kind: Literal["some", "full"]
    stall: float
    window: float

    def kernel_line(self) -> str:
        """What to write to the memory.pressure fd (microseconds)."""
        return f"{self.kind} {round(self.stall * 1e6)} {round(self.window * 1e6)}"


@dataclass(frozen=True)
class PressureSpec:
    """The pressure settings of one budget: the policy's thresholds and the PSI trigger."""

    thresholds: Thresholds
    psi_trigger: PsiTriggerSpec


@dataclass(frozen=True)
class BudgetSpec:
    """A ``[slice.X]`` budget: a cgroup that holds services (and maybe other slices)."""

    name: str
    #: The cgroup path relative to the tree root, outermost slice first, ending with this one.
    path: tuple[str, ...]
    #: The services inside it, directly or through nested slices, in config file order.
    members: tuple[str, ...]
    memory_max: int | None
    memory_high: int | None
    #: ``[oomguard.pressure]`` with the overrides of this slice and those around it applied.
    pressure: PressureSpec


#: What tells that a service is ready ([service.X.ready]).
ProbeKind: TypeAlias = Literal["command", "tcp", "notify"]
#: The shortest time one probe attempt (a command run, a connect) gets before it is abandoned.
ATTEMPT_MIN = 5.0


@dataclass(frozen=True)
class ReadySpec:
    """A service's readiness probe (``[service.X.ready]``), see runtime/readiness.py."""

    kind: ProbeKind
    #: Seconds between two probes (command, tcp).
    interval: float
    #: Seconds from the spawn; not ready by then is a failed start (RestartParams.ready_timeout).
    timeout: float
    command: tuple[str, ...] = ()
    #: (host, port) for tcp; the host is an address literal (never a name to resolve).
    address: tuple[str, int] | None = None
    #: notify only: WATCHDOG=1 at least this often once ready (seconds), or None.
    watchdog: float | None = None

    @property
    def attempt_timeout(self) -> float:
        """How long one attempt may take: `interval`, at least `ATTEMPT_MIN`."""
        return max(self.interval, ATTEMPT_MIN)


@dataclass(frozen=True)
class ShedSpec:
    """``[service.X.shed]`` of the primary: the shed rung of its ladder (runtime/shed.py)."""

    #: Sent to the chosen process.
    signal: int
    #: Process names (/proc/<pid>/comm) never shed.
    exclude_comm: tuple[str, ...]
    #: A process with less private memory (RssAnon + VmSwap, bytes) than this is never shed.
    min_size: int
    #: The minimum seconds between two sheds.
    cooldown: float
    #: How long the ladder waits for a shed process to exit: the primary's stop_timeout.
    wait: float


#: The hooks, by name, in the order of `HooksSpec`'s fields.
HOOK_NAMES = ("before_evict", "before_shed", "before_restart", "after_oom_kill")


@dataclass(frozen=True)
class HooksSpec:
    """``[hooks]``: a command per hook (None: none), and the timeout of each run."""

    before_evict: tuple[str, ...] | None = None
    before_shed: tuple[str, ...] | None = None
    before_restart: tuple[str, ...] | None = None
    after_oom_kill: tuple[str, ...] | None = None
    timeout: float = 5.0

    @property
    def commands(self) -> dict[str, tuple[str, ...]]:
        """The configured hooks only, by name."""
        out = {name: getattr(self, name) for name in HOOK_NAMES}
        return {name: argv for name, argv in out.items() if argv is not None}


@dataclass(frozen=True)
class ServiceSpec:
    """One service, resolved: how to launch it, where it lives, how it ranks and restarts."""

    name: str
    is_primary: bool
    # -- launch (runtime/launcher.LaunchSpec is built from these) ----------------------------
    argv: tuple[str, ...]
    #: Variables from the config. The child's base environment is these alone, under the
    #: login variables of ``user``; with ``inherit_env``, these over oomguard's environment.
    env: Mapping[str, str]
    inherit_env: bool
    #: Absolute; None: the user's home directory, else /.
    cwd: str | None
    #: Names or numeric strings, resolved when spawning; None keeps oomguard's.
    user: str | None
    group: str | None
    log: LogMode
    #: Set MEMORY_PRESSURE_WATCH/WRITE for the service (systemd's convention).
    pressure_watch: bool
    # -- restart and stop (stop_signal, stop_timeout, essential are in here) ----------------
    restart: RestartParams
    depends_on: tuple[str, ...]
    # -- placement and limits ---------------------------------------------------------------
    #: The cgroup path relative to the tree root: enclosing slices, then the service's name.
    path: tuple[str, ...]
    #: Its cgroup's memory files, with the derived memory.low for the primary.
    limits: Limits
    # -- ranking and the pressure response --------------------------------------------------
    #: Written before exec: -999 for the primary, else explicit or 1000 - 10 * criticality.
    oom_score_adj: int
    #: Ranking among services, higher is kept longer: the sidecar's 0..99; the primary 100,
    #: above every sidecar.
    criticality: int
    #: May be stopped to relieve pressure (never the primary).
    evictable: bool
    #: Keep running when an OOM kill took only some of its processes.
    survive_partial_kill: bool
    #: The primary's controlled-restart threshold in bytes; None for sidecars or if unset.
    watermark: int | None
    #: The pressure settings of the slice it is in (the global ones at the top level).
    pressure: PressureSpec
    #: Its readiness probe; None: ready once up for start_secs.
    ready: ReadySpec | None = None
    #: The primary's shed rung; None: none (always None for a sidecar).
    shed: ShedSpec | None = None

    @property
    def slices(self) -> tuple[str, ...]:
        """The slices around it, outermost first."""
        return self.path[:-1]

    @property
    def stop_signal(self) -> int:
        return self.restart.stop_signal


@dataclass(frozen=True)
class Plan:
    """Everything one oomguard run needs, compiled from a validated config."""

    tree: TreeSpec
    #: In start order: dependencies first, then the primary, then sidecars by criticality.
    services: tuple[ServiceSpec, ...]
    #: The primary's name.
    primary: str
    #: The ``[slice.X]`` budgets, in config file order.
    slices: tuple[BudgetSpec, ...]
    #: ``[oomguard.pressure]``: the whole tree's budget.
    pressure: PressureSpec
    mode: Mode
    log_format: LogFormat
    #: Absolute path.
    state_dir: str
    #: "host:port" of the metrics endpoint, or None for no endpoint.
    metrics_listen: str | None
    #: Refuse to start degraded (no writable cgroup v2 memory controller).
    require_cgroups: bool
    #: ``[hooks]``.
    hooks: HooksSpec = HooksSpec()

    @functools.cached_property
    def _by_name(self) -> dict[str, ServiceSpec]:
        return {spec.name: spec for spec in self.services}

    def service(self, name: str) -> ServiceSpec:
        """The service called ``name``; KeyError if there is none."""
        return self._by_name[name]

    @property
    def primary_service(self) -> ServiceSpec:
        return self._by_name[self.primary]

    def names(self) -> list[str]:
        """Service names in start order."""
        return [spec.name for spec in self.services]

    def stop_order(self) -> list[str]:
        """The reverse of the start order: dependents stop before what they depend on."""
        return [spec.name for spec in reversed(self.services)]

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """``metrics_listen`` split for a socket: ``("::1", 9187)``; "" host means all."""
        if self.metrics_listen is None:
            return None
        host, _, port = self.metrics_listen.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return host, int(port)


# --------------------------------------------------------------------------------------------
# JSON form
# --------------------------------------------------------------------------------------------


class PlanError(ValueError):
    """A plan's JSON form does not match this version of the dataclasses (names the field)."""


def to_json(value: object) -> str:
    """A plan (or any dataclass made of the types below) as JSON text: ``from_json(to_json(
    plan)) == plan``, ``load_json(type(value), to_json(value)) == value``."""
    data = {"version": FORMAT_VERSION, "type": type(value).__name__, "data": _encode(value)}
    return json.dumps(data, allow_nan=False)


def from_json(text: str | bytes) -> Plan:
    """The plan ``to_json`` wrote. Raises PlanError naming the first field that does not fit."""
    return load_json(Plan, text)


def load_json(cls: type[_T], text: str | bytes) -> _T:
    """The ``cls`` that ``to_json`` wrote. Raises PlanError naming the first field that does not
    fit."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise PlanError(f"not JSON: {err}") from None
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise PlanError(f"not a version {FORMAT_VERSION} plan")
    if data.get("type") != cls.__name__:
        raise PlanError(f"holds a {data.get('type')!r}, not a {cls.__name__}")
    value = _decode(cls, data.get("data"), cls.__name__.lower())
    assert isinstance(value, cls)
    return value


def _encode(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"cannot put a {type(value).__name__} in a plan")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(tp: Any, value: object, where: str) -> object:
    """``value`` (parsed JSON) as type ``tp``: dataclasses, tuples, mappings, unions,
    Literals and scalars; anything else in a type is a bug here (TypeError)."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _decode_dataclass(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return _decode_union(typing.get_args(tp), value, where)
    if origin is Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool):
            raise PlanError(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin is tuple:
        return _decode_tuple(typing.get_args(tp), value, where)
    if origin in (dict, Mapping):
        _key, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise PlanError(f"{where}: expected an object")
        return {str(k): _decode(item, v, f"{where}.{k}") for k, v in value.items()}
    return _decode_scalar(tp, value, where)


def _decode_dataclass(cls: type, value: object, where: str) -> object:
    if not isinstance(value, dict):
        raise PlanError(f"{where}: expected an object")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise PlanError(f"{where}: unknown field {unknown[0]!r}")
    missing = [n for n in names if n not in value]
    if missing:
        raise PlanError(f"{where}: missing field {missing[0]!r}")
    return cls(**{n: _decode(hints[n], value[n], f"{where}.{n}") for n in names})


def _decode_union(options: tuple[Any, ...], value: object, where: str) -> object:
    if value is None and type(None) in options:
        return None
    errors: list[str] = []
    for option in options:
        if option is type(None):
            continue
        try:
            return _decode(option, value, where)
        except PlanError as err:
            errors.append(str(err))
    raise PlanError(errors[0] if errors else f"{where}: {value!r} does not fit")


def _decode_tuple(args: tuple[Any, ...], value: object, where: str) -> tuple[object, ...]:
    if not isinstance(value, list):
        raise PlanError(f"{where}: expected a list")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if len(args) != len(value):
        raise PlanError(f"{where}: expected {len(args)} items")
    return tuple(
        _decode(t, v, f"{where}[{i}]") for i, (t, v) in enumerate(zip(args, value, strict=True))
    )


def _decode_scalar(tp: Any, value: object, where: str) -> object:
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp in (float, int, bool, str):
        raise PlanError(f"{where}: {value!r} is not a {tp.__name__}")
    raise TypeError(f"{where}: a plan cannot hold a {tp!r}")
