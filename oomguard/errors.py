"""The one error tree and the one exit-code enum.

Every error a user can cause is an `OomguardError` carrying a message that names the thing (a
field path, a file, a cgroup) and a `hint` that says how to fix it. Only the CLI turns these into
output and an exit status; nothing else calls sys.exit.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING


class ExitCode(IntEnum):
    OK = 0
    #: `check`: oomguard can only run degraded. Elsewhere: a runtime failure.
    DEGRADED = 1
    FAILURE = 1
    #: Bad config or usage; `check`: oomguard cannot run at all.
    USAGE = 2
    CANNOT_RUN = 2
    #: The shell's "killed by SIGKILL" (128 + 9): what `exec` returns after an OOM kill.
    OOM_KILLED = 137


class OomguardError(Exception):
    """Base of every error oomguard raises on purpose."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}; {self.hint}"
        return self.message


class Problem:
    """One config problem: `path` is dotted (e.g. ``service.backup.memory_max``).

    An immutable value (equality, hash and repr as a frozen dataclass would give them), written
    out by hand because every command imports this module: `dataclasses` pulls in `inspect` and
    generates code at import, which costs `oomguard status` milliseconds of CPU per start.
    """

    __slots__ = ("message", "path")
    __match_args__ = ("path", "message")

    if TYPE_CHECKING:
        # Plain slots at run time (set once in __init__; __setattr__ refuses after that),
        # read-only for the type checker.
        @property
        def path(self) -> str: ...
        @property
        def message(self) -> str: ...

    def __init__(self, path: str, message: str) -> None:
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "message", message)

    if not TYPE_CHECKING:  # hidden from mypy, which then still flags unknown attributes

        def __setattr__(self, name: str, value: object) -> None:
            raise AttributeError(f"Problem is immutable: cannot assign to {name!r}")

        def __delattr__(self, name: str) -> None:
            raise AttributeError(f"Problem is immutable: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        # Like a dataclass: only an instance of the very same class can be equal.
        if isinstance(other, Problem) and other.__class__ is self.__class__:
            return (self.path, self.message) == (other.path, other.message)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.path, self.message))

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}(path={self.path!r}, message={self.message!r})"

    def __reduce__(self) -> tuple[type[Problem], tuple[str, str]]:
        # pickle/copy rebuild through __init__: the default slot-state restore would go through
        # __setattr__, which refuses.
        return (type(self), (self.path, self.message))

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(OomguardError):
    """A config file or override is wrong. Carries every problem found, not just the first."""

    exit_code = ExitCode.USAGE

    def __init__(self, problems: list[Problem], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(str(p) for p in problems))


class UsageError(OomguardError):
    """A command line that cannot work (bad option value, missing file)."""

    exit_code = ExitCode.USAGE


class CgroupError(OomguardError):
    """A cgroupfs operation failed in a way the caller did not expect."""


class ForeignCgroup(CgroupError):
    """A cgroup oomguard was pointed at but cannot prove it made: it refuses to touch it."""

    exit_code = ExitCode.CANNOT_RUN


class StateDirError(OomguardError):
    """The state directory (or a file in it) is unsafe or unusable: oomguard will not start."""

    exit_code = ExitCode.CANNOT_RUN


class Vanished(CgroupError):
    """The cgroup (or process) is gone. Callers treat this as an expected outcome, not a crash:
    a slice can be removed from outside, and a process can exit between two reads."""


class LaunchError(OomguardError):
    """A service could not be started (missing binary, unknown user, bad cwd)."""
