"""`CgroupPath`: a cgroup's location relative to the cgroup2 mount root. Pure, no I/O.

A path is a tuple of validated names, never a string that gets joined later: every way of building
one (`parse`, `child`, `join`, the constructor) runs the same name check, so a `CgroupPath` cannot
point outside the tree it is joined to. `CgroupFS.dir()` checks again after joining (defence in
depth), but the first line of defence is here.

A name is refused when it could escape the tree or that the kernel would refuse anyway:

- ``""``, ``"."`` and ``".."``: path arithmetic, not cgroup names.
- anything containing ``"/"``: a name is one directory level; ``"/etc"`` as a *name* would be an
  absolute path inside a join.
- NUL: it truncates the path at the syscall boundary.
- newline: the kernel's cgroup_mkdir() rejects it (EINVAL) so that /proc/<pid>/cgroup, one
  cgroup per line, stays parseable.
- more than 255 bytes (NAME_MAX) once encoded: mkdir would fail with ENAMETOOLONG.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, ClassVar

from oomguard.errors import OomguardError

#: NAME_MAX on Linux: the longest single directory name, in bytes.
NAME_MAX = 255


class CgroupPathError(OomguardError, ValueError):
    """A cgroup path or name that is malformed or would escape the cgroup tree."""


def _encoded_len(name: str) -> int:
    # surrogateescape: a name read from /proc/self/cgroup may hold bytes that are not UTF-8; they
    # come back as lone surrogates and must count as the single bytes they were.
    return len(name.encode("utf-8", "surrogateescape"))


def check_name(name: str) -> str:
    """Return `name` if it is a valid single cgroup directory name, else raise CgroupPathError."""
    hint = "a cgroup name is one path level: letters, digits, '-', '_', '.', at most 255 bytes"
    if not isinstance(name, str):
        raise CgroupPathError(f"cgroup name {name!r} is not a string", hint)
    if name == "":
        raise CgroupPathError("empty cgroup name (a '//' in a path, or a blank name)", hint)
    if name in (".", ".."):
        raise CgroupPathError(f"cgroup name {name!r} would escape the cgroup tree", hint)
    if "/" in name:
        raise CgroupPathError(f"cgroup name {name!r} contains '/'", hint)
    if "\0" in name:
        raise CgroupPathError(f"cgroup name {name!r} contains a NUL byte", hint)
    if "\n" in name:
        raise CgroupPathError(
            f"cgroup name {name!r} contains a newline",
            "the kernel refuses it: /proc/<pid>/cgroup is one cgroup per line",
        )
    if _encoded_len(name) > NAME_MAX:
        raise CgroupPathError(
            f"cgroup name {name[:40]!r}... is {_encoded_len(name)} bytes, over NAME_MAX={NAME_MAX}",
            hint,
        )
    return name


class CgroupPath:
    """A cgroup path relative to the cgroup2 mount root; ``CgroupPath(())`` is the root itself.

    ``str()`` gives the form /proc/<pid>/cgroup uses: ``"/"`` or ``"/a/b"``.

    An immutable value: equal (and hashing alike) only to a CgroupPath with the same parts, never
    to a plain tuple, so a path cannot be mixed up with a tuple of names in a set or dict key.
    Written by hand rather than as a frozen dataclass: `oomguard status` imports this module,
    and `dataclasses` (which imports `inspect` and generates code at import) cost it several
    milliseconds of CPU per start.
    """

    __slots__ = ("parts",)
    __match_args__ = ("parts",)

    if TYPE_CHECKING:
        # A plain slot at run time (set once in __init__; __setattr__ refuses after that),
        # read-only for the type checker.
        @property
        def parts(self) -> tuple[str, ...]: ...

    ROOT: ClassVar[CgroupPath]

    def __init__(self, parts: tuple[str, ...] = ()) -> None:
        if not isinstance(parts, tuple):
            raise CgroupPathError(
                f"CgroupPath parts must be a tuple of names, got {type(parts).__name__}",
                "use CgroupPath.parse('/a/b') to build one from a string",
            )
        for part in parts:
            check_name(part)
        object.__setattr__(self, "parts", parts)

    if not TYPE_CHECKING:  # hidden from mypy, which then still flags unknown attributes

        def __setattr__(self, name: str, value: object) -> None:
            raise AttributeError(f"CgroupPath is immutable: cannot assign to {name!r}")

        def __delattr__(self, name: str) -> None:
            raise AttributeError(f"CgroupPath is immutable: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        # Only an instance of the very same class is equal (as a dataclass's __eq__ would do);
        # anything else, a tuple included, gets NotImplemented and so compares unequal.
        if isinstance(other, CgroupPath) and other.__class__ is self.__class__:
            return self.parts == other.parts
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.parts,))

    def __reduce__(self) -> tuple[type[CgroupPath], tuple[tuple[str, ...]]]:
        # pickle/copy rebuild through __init__ (which validates again): the default slot-state
        # restore would go through __setattr__, which refuses.
        return (type(self), (self.parts,))

    @classmethod
    def parse(cls, s: str) -> CgroupPath:
        """``"/a/b"`` or ``"a/b"`` -> ("a", "b"); ``"/"`` -> the root. One trailing "/" is ok."""
        if not isinstance(s, str):
            raise CgroupPathError(f"cgroup path {s!r} is not a string", None)
        if s == "":
            raise CgroupPathError(
                "empty cgroup path", "use '/' for the mount root, or e.g. '/oomguard'"
            )
        body = s.removeprefix("/")
        if body == "":
            return cls.ROOT
        body = body.removesuffix("/")
        try:
            return cls(tuple(body.split("/")))
        except CgroupPathError as err:
            raise CgroupPathError(f"cgroup path {s!r}: {err.message}", err.hint) from None

    @property
    def is_root(self) -> bool:
        return not self.parts

    @property
    def name(self) -> str:
        """The last name; ``""`` for the root."""
        return self.parts[-1] if self.parts else ""

    @property
    def parent(self) -> CgroupPath | None:
        """The parent path, or None for the root (the root has no parent inside the mount)."""
        if not self.parts:
            return None
        return CgroupPath(self.parts[:-1])

    @property
    def depth(self) -> int:
        return len(self.parts)

    def child(self, name: str) -> CgroupPath:
        return CgroupPath((*self.parts, check_name(name)))

    def join(self, *parts: str) -> CgroupPath:
        """Append names one level each; ``join("a", "b")`` == ``child("a").child("b")``."""
        return CgroupPath((*self.parts, *(check_name(p) for p in parts)))

    def __truediv__(self, name: str) -> CgroupPath:
        return self.child(name)

    def is_relative_to(self, other: CgroupPath) -> bool:
        """True if self is `other` or lies below it."""
        return self.parts[: len(other.parts)] == other.parts

    def relative_to(self, other: CgroupPath) -> tuple[str, ...]:
        """The names leading from `other` down to self; raises CgroupPathError if not below it."""
        if not self.is_relative_to(other):
            raise CgroupPathError(f"cgroup {self} is not inside {other}", None)
        return self.parts[len(other.parts) :]

    def ancestors(self) -> list[CgroupPath]:
        """Every proper ancestor, root first: ``/a/b/c`` -> [``/``, ``/a``, ``/a/b``]."""
        return [CgroupPath(self.parts[:i]) for i in range(len(self.parts))]

    def fs_path(self) -> str:
        """The path relative to the mount as an OS path (``"a/b"``; ``""`` for the root)."""
        return os.path.join(*self.parts) if self.parts else ""

    def __str__(self) -> str:
        return "/" + "/".join(self.parts)

    def __repr__(self) -> str:
        return f"CgroupPath({str(self)!r})"

    def __lt__(self, other: CgroupPath) -> bool:
        # Tuple order sorts a parent before its children, which is the order to create them in.
        if isinstance(other, CgroupPath):
            return self.parts < other.parts
        return NotImplemented


CgroupPath.ROOT = CgroupPath(())
