"""Parsers for cgroup v2 interface files. Pure: text in, values out; no I/O, no clock.

Formats (Documentation/admin-guide/cgroup-v2.rst, "Interface Files" and "Format"):

- flat keyed, one ``key value`` per line: memory.events, memory.events.local, memory.stat,
  memory.swap.events, cgroup.events, cgroup.stat, pids.events. Unknown keys are kept: the
  kernel adds keys over time (``oom_group_kill`` in 5.17, ``sock_throttled`` in 6.x), and a
  reader that dropped them could not diff them.
- single value: memory.current, memory.peak, memory.min ... ``"max"`` means no limit (None).
- newline separated: cgroup.procs, cgroup.threads.
- space separated: cgroup.controllers, cgroup.subtree_control.
- PSI (memory.pressure, cpu.pressure, io.pressure)::

      some avg10=0.00 avg60=0.00 avg300=0.00 total=0
      full avg10=0.00 avg60=0.00 avg300=0.00 total=0

  ``full`` may be absent (cpu.pressure before 5.13 has only ``some``).

Every parser is strict about content and tolerant about layout: blank lines and trailing
whitespace are ignored; a malformed line raises `CgroupParseError` quoting the line (and the
source file when the caller names it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from oomguard.errors import CgroupError

#: What a controller name may contain (the kernel's are lowercase words like ``hugetlb``,
#: ``rdma``, ``net_cls``); it must not start with a digit.
_CONTROLLER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")

# Plain string tests rather than regexes: compiling them cost `oomguard status` part of a
# millisecond per start, and these run for every value of every file it reads.


def _is_digits(s: str) -> bool:
    """``[0-9]+`` exactly. isascii() first: str.isdigit() alone also accepts non-ASCII digits
    (e.g. Arabic-Indic), which int() would then happily convert."""
    return s.isascii() and s.isdigit()


def _is_int(s: str) -> bool:
    """``-?[0-9]+`` exactly: an optional minus, then at least one ASCII digit."""
    return _is_digits(s[1:] if s.startswith("-") else s)


def _is_controller(name: str) -> bool:
    """``[a-z_][a-z0-9_]*`` exactly."""
    return bool(name) and not name[0].isdigit() and _CONTROLLER_CHARS.issuperset(name)


class CgroupParseError(CgroupError, ValueError):
    """A cgroup interface file did not have the format the kernel documents."""


def _err(source: str, what: str) -> CgroupParseError:
    where = f"{source}: " if source else ""
    return CgroupParseError(
        f"{where}{what}",
        "this kernel's cgroup file format is unexpected; please report it with `uname -r`",
    )


def _to_int(token: str, source: str, line: str) -> int:
    # Values in flat-keyed files are unsigned in the kernel, but per-cpu stat drift has been
    # seen to print transiently negative numbers in memory.stat; accept a sign rather than crash
    # the monitor on a counter nobody acts on.
    if not _is_int(token):
        raise _err(source, f"{token!r} is not an integer in line {line!r}")
    return int(token)


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def parse_flat_keyed(text: str, source: str = "") -> dict[str, int]:
    """``"oom 1\\noom_kill 2\\n"`` -> ``{"oom": 1, "oom_kill": 2}``; keeps unknown keys."""
    out: dict[str, int] = {}
    for line in _lines(text):
        fields = line.split()
        if len(fields) != 2:
            raise _err(source, f"expected 'key value', got {line!r}")
        key, value = fields
        if key in out:
            raise _err(source, f"duplicate key {key!r}")
        out[key] = _to_int(value, source, line)
    return out


def parse_meminfo(text: str, source: str = "/proc/meminfo") -> dict[str, int]:
    """/proc/meminfo -> ``{"MemTotal": bytes, ...}``. Values given in ``kB`` (KiB, in fact) are
    converted to bytes; unit-less ones (HugePages_Total) stay counts. Malformed lines raise."""
    out: dict[str, int] = {}
    for line in _lines(text):
        key, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or not key or len(fields) not in (1, 2) or not _is_digits(fields[0]):
            raise _err(source, f"expected 'Key: value [kB]', got {line!r}")
        if len(fields) == 2 and fields[1] != "kB":
            raise _err(source, f"unknown unit in {line!r}")
        out[key] = int(fields[0]) * (1024 if len(fields) == 2 else 1)
    return out


def parse_int(text: str, source: str = "") -> int:
    """A single integer (memory.current, memory.peak, pids.current); surrounding space ignored."""
    value = text.strip()
    if not _is_int(value):
        raise _err(source, f"expected an integer, got {text!r}")
    return int(value)


def parse_limit(text: str, source: str = "") -> int | None:
    """memory.max/high/low/min, memory.swap.max, pids.max: ``"max"`` -> None, else bytes >= 0."""
    value = text.strip()
    if value == "max":
        return None
    result = parse_int(value, source)
    if result < 0:
        raise _err(source, f"negative limit {text!r}")
    return result


def parse_procs(text: str, source: str = "") -> list[int]:
    """cgroup.procs: one pid per line, in the kernel's order (not sorted, may repeat briefly)."""
    pids: list[int] = []
    for line in _lines(text):
        if not _is_digits(line) or int(line) <= 0:
            raise _err(source, f"{line!r} is not a pid")
        pids.append(int(line))
    return pids


def parse_controllers(text: str, source: str = "") -> frozenset[str]:
    """cgroup.controllers / cgroup.subtree_control: ``"cpu io memory pids"``; empty -> empty set."""
    names = text.split()
    for name in names:
        if not _is_controller(name):
            raise _err(source, f"{name!r} is not a controller name")
    return frozenset(names)


# PsiLine and Pressure are immutable values written out by hand (equality, hash and repr as a
# frozen dataclass gives them): `oomguard status` imports this module, and `dataclasses` (it
# imports `inspect` and generates code at import) cost it milliseconds of CPU per start.


class PsiLine:
    """One PSI line. avgN are percentages of wall time stalled over N seconds; total_us is the
    cumulative stall time in microseconds (monotonic; diff it for an exact rate)."""

    __slots__ = ("avg10", "avg60", "avg300", "total_us")
    __match_args__ = ("avg10", "avg60", "avg300", "total_us")

    if TYPE_CHECKING:
        # Plain slots at run time (set once in __init__; __setattr__ refuses after that),
        # read-only for the type checker.
        @property
        def avg10(self) -> float: ...
        @property
        def avg60(self) -> float: ...
        @property
        def avg300(self) -> float: ...
        @property
        def total_us(self) -> int: ...

    def __init__(self, avg10: float, avg60: float, avg300: float, total_us: int) -> None:
        object.__setattr__(self, "avg10", avg10)
        object.__setattr__(self, "avg60", avg60)
        object.__setattr__(self, "avg300", avg300)
        object.__setattr__(self, "total_us", total_us)

    def _key(self) -> tuple[float, float, float, int]:
        return (self.avg10, self.avg60, self.avg300, self.total_us)

    if not TYPE_CHECKING:  # hidden from mypy, which then still flags unknown attributes

        def __setattr__(self, name: str, value: object) -> None:
            raise AttributeError(f"PsiLine is immutable: cannot assign to {name!r}")

        def __delattr__(self, name: str) -> None:
            raise AttributeError(f"PsiLine is immutable: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        # Only an instance of the very same class is equal, never a plain tuple.
        if isinstance(other, PsiLine) and other.__class__ is self.__class__:
            return self._key() == other._key()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"{type(self).__qualname__}(avg10={self.avg10!r}, avg60={self.avg60!r}, "
            f"avg300={self.avg300!r}, total_us={self.total_us!r})"
        )

    def __reduce__(self) -> tuple[type[PsiLine], tuple[float, float, float, int]]:
        # pickle/copy rebuild through __init__; slot-state restore would hit __setattr__.
        return (type(self), self._key())


class Pressure:
    """``some``: at least one task stalled; ``full``: all non-idle tasks stalled at once."""

    __slots__ = ("full", "some")
    __match_args__ = ("some", "full")

    if TYPE_CHECKING:
        # Plain slots at run time, read-only for the type checker (as in PsiLine).
        @property
        def some(self) -> PsiLine: ...
        @property
        def full(self) -> PsiLine | None: ...

    def __init__(self, some: PsiLine, full: PsiLine | None) -> None:
        object.__setattr__(self, "some", some)
        object.__setattr__(self, "full", full)

    if not TYPE_CHECKING:  # hidden from mypy, which then still flags unknown attributes

        def __setattr__(self, name: str, value: object) -> None:
            raise AttributeError(f"Pressure is immutable: cannot assign to {name!r}")

        def __delattr__(self, name: str) -> None:
            raise AttributeError(f"Pressure is immutable: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Pressure) and other.__class__ is self.__class__:
            return (self.some, self.full) == (other.some, other.full)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.some, self.full))

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}(some={self.some!r}, full={self.full!r})"

    def __reduce__(self) -> tuple[type[Pressure], tuple[PsiLine, PsiLine | None]]:
        return (type(self), (self.some, self.full))


_PSI_KEYS = ("avg10", "avg60", "avg300", "total")


def _parse_psi_line(fields: list[str], source: str, line: str) -> PsiLine:
    values: dict[str, str] = {}
    for field in fields:
        key, sep, value = field.partition("=")
        if not sep or not key or key in values:
            raise _err(source, f"bad PSI field {field!r} in line {line!r}")
        values[key] = value
    missing = [k for k in _PSI_KEYS if k not in values]
    if missing:
        raise _err(source, f"PSI line {line!r} lacks {', '.join(missing)}")
    avgs: list[float] = []
    for key in _PSI_KEYS[:3]:
        try:
            avg = float(values[key])
        except ValueError:
            raise _err(source, f"{key}={values[key]!r} is not a number in {line!r}") from None
        # The kernel clamps samples to the period, so avgs stay within 0..100; only reject what
        # cannot be a percentage at all (negative, nan, inf) and let rounding noise through.
        if not 0.0 <= avg < float("inf"):
            raise _err(source, f"{key}={values[key]} is not a percentage in {line!r}")
        avgs.append(avg)
    total = _to_int(values["total"], source, line)
    if total < 0:
        raise _err(source, f"negative total in {line!r}")
    return PsiLine(avg10=avgs[0], avg60=avgs[1], avg300=avgs[2], total_us=total)


def parse_pressure(text: str, source: str = "") -> Pressure:
    """memory.pressure / cpu.pressure / io.pressure (and /proc/pressure/*). Extra ``key=value``
    fields are tolerated (future kernels); a missing or repeated ``some``/``full`` is not."""
    lines: dict[str, PsiLine] = {}
    for line in _lines(text):
        kind, *fields = line.split()
        if kind not in ("some", "full"):
            raise _err(source, f"expected a 'some' or 'full' PSI line, got {line!r}")
        if kind in lines:
            raise _err(source, f"duplicate {kind!r} PSI line")
        lines[kind] = _parse_psi_line(fields, source, line)
    if "some" not in lines:
        raise _err(source, f"no 'some' line in PSI text {text!r}")
    return Pressure(some=lines["some"], full=lines.get("full"))
