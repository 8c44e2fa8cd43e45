"""`CgroupFS`: THE ONLY code that reads or writes the cgroup2 mount.

Everything else asks this class, so the kernel's errno conventions are translated in one place:

- ENOENT/ENODEV on a cgroup that is gone -> `Vanished` (an expected outcome: a slice can be
  removed from outside, and ENODEV is what an fd into a removed cgroup returns).
- EBUSY on rmdir -> retried with a capped doubling backoff: a killed process stays in
  cgroup.procs until its exit finishes (freeing a large address space takes a while), and the
  cgroup is "populated" until then.
- EBUSY writing cgroup.subtree_control or cgroup.procs -> the no-internal-process rule.
- EACCES/EPERM/EROFS -> a CgroupError whose hint says how to get a writable, delegated cgroupfs.
- EINVAL writing a file -> a CgroupError naming the file and the value.

Every write is ONE write() syscall of the whole value: the kernel parses each write() to a cgroup
file separately, so a buffered writer that split "+memory +pids" or a PSI trigger in two would
change its meaning (or fail).

The `_sys_*` methods at the bottom are the syscall seam: they are all that touch the kernel, and
tests/cgroup/fakefs.py overrides them to emulate a cgroupfs in a temp dir and inject errors.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from oomguard.cgroup.parse import (
    parse_controllers,
    parse_flat_keyed,
    parse_int,
    parse_limit,
    parse_pressure,
    parse_procs,
)
from oomguard.cgroup.path import CgroupPath, CgroupPathError
from oomguard.errors import CgroupError, Vanished

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from oomguard.cgroup.parse import Pressure

#: Said whenever the kernel refuses a write for lack of permission. Container runtimes mount the
#: cgroupfs read-only unless told otherwise; systemd only lets a unit write to its own subtree
#: when the unit has Delegate=yes.
READONLY_HINT = (
    "the cgroupfs is read-only or not delegated to this user: run the container with "
    "--privileged, or podman --security-opt unmask=/sys/fs/cgroup, or start oomguard with "
    "systemd-run -p Delegate=yes (see `oomguard check`)"
)

NO_INTERNAL_PROCESS_HINT = (
    "cgroup v2's no-internal-process rule: a non-root cgroup that has processes cannot enable "
    "controllers for its children, and one that has controllers enabled for its children cannot "
    "take processes; move the processes into a leaf cgroup first"
)

_GONE = (errno.ENOENT, errno.ENODEV)


def _pids_text(pids: Iterable[int]) -> str:
    listed = sorted(pids)
    text = " ".join(str(p) for p in listed[:20])
    return text + (f" ... ({len(listed)} in all)" if len(listed) > 20 else "")


class CgroupSyscalls:
    """The syscall seam: all that touches the kernel. tests/cgroup/fakefs.py overrides these
    methods to emulate a cgroupfs in a temp dir and inject errors."""

    def _sys_read(self, path: str) -> bytes:
        with open(path, "rb", buffering=0) as f:
            return f.readall()

    def _sys_write(self, path: str, data: bytes) -> int:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            return os.write(fd, data)
        finally:
            os.close(fd)

    def _sys_open(self, path: str, flags: int) -> int:
        return os.open(path, flags)

    def _sys_mkdir(self, path: str) -> None:
        os.mkdir(path)

    def _sys_rmdir(self, path: str) -> None:
        os.rmdir(path)

    def _sys_access(self, path: str, mode: int) -> bool:
        return os.access(path, mode)

    def _sys_lstat(self, path: str) -> os.stat_result:
        return os.lstat(path)

    def _sys_getxattr(self, path: str, name: str) -> bytes:
        return os.getxattr(path, name, follow_symlinks=False)

    def _sys_setxattr(self, path: str, name: str, value: bytes) -> None:
        os.setxattr(path, name, value, follow_symlinks=False)

    def _sys_listdirs(self, path: str) -> list[str]:
        with os.scandir(path) as it:
            return [e.name for e in it if e.is_dir(follow_symlinks=False)]

    def _sys_pidfd_open(self, pid: int) -> int | None:
        """A pidfd for `pid`; -1 if the kernel has no pidfd_open (< 5.3); None if it is gone."""
        try:
            return os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        except OSError as err:
            if err.errno == errno.ENOSYS:
                return -1
            raise

    def _sys_signal(self, pid: int, pidfd: int, sig: int) -> None:
        import signal

        try:
            if pidfd >= 0:
                signal.pidfd_send_signal(pidfd, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as err:
            raise CgroupError(
                f"not allowed to signal process {pid}: {err.strerror}",
                "oomguard must run as the same user as its services, or as root",
            ) from err


class CgroupFS(CgroupSyscalls):
    """Reads and writes one cgroup2 mount. `mount` is the mount point, e.g. /sys/fs/cgroup.

    `sleep` and `clock` are injectable so tests of the retry loops never sleep.
    """

    #: Total time rmdir() keeps retrying EBUSY, and the first and largest pause between tries.
    rmdir_timeout = 2.0
    backoff_first = 0.01
    backoff_cap = 0.25
    #: Bound on the SIGKILL-each-pid fallback of kill() (kernels before 5.14).
    kill_timeout = 5.0

    def __init__(
        self,
        mount: Path | str,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Resolved once, so the containment check in dir() compares like with like.
        self.mount = Path(os.path.realpath(mount))
        self._mount_str = str(self.mount)
        self._sleep = sleep
        self._clock = clock

    def __repr__(self) -> str:
        return f"CgroupFS({self._mount_str!r})"

    # ----------------------------------------------------------------------------------- paths

    def dir(self, p: CgroupPath) -> Path:
        """The directory of cgroup `p`. Guaranteed to lie under the mount."""
        if not isinstance(p, CgroupPath):
            raise TypeError(f"expected a CgroupPath, got {type(p).__name__}")
        joined = os.path.join(self._mount_str, *p.parts)
        # Defence in depth: CgroupPath already refuses "..", "/" and NUL in names, but the
        # containment check here is what makes "nothing outside the mount" a local guarantee.
        # A lexical check suffices: cgroupfs (kernfs) supports no symlinks, so nothing below the
        # mount can redirect a path elsewhere.
        norm = os.path.normpath(joined)
        inside = norm == self._mount_str or norm.startswith(self._mount_str.rstrip("/") + "/")
        if norm != joined or not inside:
            raise CgroupPathError(
                f"cgroup path {p} resolves to {norm}, outside the cgroup mount {self._mount_str}",
                "cgroup paths are relative to the cgroup2 mount and cannot contain '..'",
            )
        return Path(joined)

    def file_path(self, p: CgroupPath, name: str) -> Path:
        """The path of interface file `name` of cgroup `p` (for inotify watches)."""
        return Path(self._file(p, name))

    def _file(self, p: CgroupPath, name: str) -> str:
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise CgroupPathError(
                f"{name!r} is not a cgroup interface file name",
                "use a plain file name such as 'memory.events'",
            )
        return os.path.join(str(self.dir(p)), name)

    def _procs_quiet(self, p: CgroupPath) -> list[int]:
        """The pids of `p` for an error message; never raises."""
        try:
            return self.procs(p)
        except CgroupError:
            return []

    # ------------------------------------------------------------------------- plain access

    def exists(self, p: CgroupPath) -> bool:
        return os.path.isdir(self.dir(p))

    def identity(self, p: CgroupPath) -> tuple[int, int]:
        """(inode number, owner uid) of the directory of `p`. On cgroupfs the inode number is
        the cgroup id, which the kernel never reuses while it runs: a cgroup removed and made
        again under the same name has another one."""
        try:
            st = self._sys_lstat(str(self.dir(p)))
        except OSError as err:
            raise _map(self, err, p, None, "stat") from err
        return st.st_ino, st.st_uid

    def get_xattr(self, p: CgroupPath, name: str) -> bytes | None:
        """Extended attribute `name` of the directory of `p`; None if it is not set, not
        supported by this filesystem, or not readable by us (trusted.* needs CAP_SYS_ADMIN)."""
        try:
            return self._sys_getxattr(str(self.dir(p)), name)
        except OSError as err:
            if err.errno in (errno.ENODATA, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES):
                return None
            raise _map(self, err, p, None, f"getxattr {name}") from err

    def set_xattr(self, p: CgroupPath, name: str, value: bytes) -> bool:
        """Set extended attribute `name` on the directory of `p`. False if this filesystem or
        our privileges do not allow it (kernfs has trusted.* for CAP_SYS_ADMIN only, and user.*
        on cgroup2 since 5.7); other errors raise."""
        try:
            self._sys_setxattr(str(self.dir(p)), name, value)
        except OSError as err:
            if err.errno in (errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.ENOSPC):
                return False
            raise _map(self, err, p, None, f"setxattr {name}") from err
        return True

    def has_file(self, p: CgroupPath, name: str) -> bool:
        """True if interface file `name` exists; raises Vanished if the cgroup itself is gone."""
        if os.path.exists(self._file(p, name)):
            return True
        if not self.exists(p):
            raise Vanished(f"cgroup {p} is gone (looking for {name})")
        return False

    def writable(self, p: CgroupPath, name: str | None = None) -> bool:
        """True if we may write the directory of `p` (mkdir in it) or its file `name`: the
        mount is rw (access() reports EROFS) and the owner or mode lets us (a delegated
        subtree belongs to its user)."""
        return self._sys_access(str(self.dir(p)) if name is None else self._file(p, name), os.W_OK)

    def read(self, p: CgroupPath, name: str) -> str:
        try:
            data = self._sys_read(self._file(p, name))
        except OSError as err:
            raise _map(self, err, p, name, "read") from err
        return data.decode("utf-8", "replace")

    def read_optional(self, p: CgroupPath, name: str) -> str | None:
        """Like read(), but None if the file does not exist (controller not enabled, old kernel).
        A cgroup that is gone still raises Vanished: "no such file" must not hide "no cgroup"."""
        try:
            data = self._sys_read(self._file(p, name))
        except OSError as err:
            if err.errno == errno.ENOENT and self.exists(p):
                return None
            raise _map(self, err, p, name, "read") from err
        return data.decode("utf-8", "replace")

    def write(self, p: CgroupPath, name: str, value: str) -> None:
        """Write `value` with a single write() (see the module doc)."""
        data = value.encode()
        try:
            written = self._sys_write(self._file(p, name), data)
        except OSError as err:
            raise _map(self, err, p, name, "write", value) from err
        if written != len(data):
            raise CgroupError(
                f"short write to {_where(p, name)}: {written} of {len(data)} bytes",
                "the kernel accepts a cgroup file value in one write(); this should not happen",
            )

    def open_fd(self, p: CgroupPath, name: str, flags: int) -> int:
        """A raw fd on interface file `name` (O_CLOEXEC added); the caller owns and closes it.
        Used for cgroup.procs in the launcher's child and for PSI triggers."""
        try:
            return self._sys_open(self._file(p, name), flags | os.O_CLOEXEC)
        except OSError as err:
            raise _map(self, err, p, name, "open") from err

    # ------------------------------------------------------------------------ typed readers

    def read_int(self, p: CgroupPath, name: str) -> int:
        return parse_int(self.read(p, name), _where(p, name))

    def read_limit(self, p: CgroupPath, name: str) -> int | None:
        return parse_limit(self.read(p, name), _where(p, name))

    def read_flat(self, p: CgroupPath, name: str) -> dict[str, int]:
        return parse_flat_keyed(self.read(p, name), _where(p, name))

    def read_pressure(self, p: CgroupPath, resource: str = "memory") -> Pressure:
        name = f"{resource}.pressure"
        return parse_pressure(self.read(p, name), _where(p, name))

    def controllers(self, p: CgroupPath) -> frozenset[str]:
        """cgroup.controllers: what the parent made available to `p`."""
        name = "cgroup.controllers"
        return parse_controllers(self.read(p, name), _where(p, name))

    def subtree_control(self, p: CgroupPath) -> frozenset[str]:
        """cgroup.subtree_control: what `p` enables for its children."""
        name = "cgroup.subtree_control"
        return parse_controllers(self.read(p, name), _where(p, name))

    def procs(self, p: CgroupPath) -> list[int]:
        """Processes directly in `p` (not its descendants)."""
        return parse_procs(self.read(p, "cgroup.procs"), _where(p, "cgroup.procs"))

    def populated(self, p: CgroupPath) -> bool:
        """cgroup.events "populated": any live process in `p` or below. The root cgroup has no
        cgroup.events (it always holds init), so it counts as populated."""
        text = self.read_optional(p, "cgroup.events")
        if text is None:
            return True
        return parse_flat_keyed(text, _where(p, "cgroup.events")).get("populated", 0) != 0

    def is_real_root(self, p: CgroupPath) -> bool:
        """True if `p` is the real root of the hierarchy, which is exempt from the
        no-internal-process rule. Inside a cgroup namespace the mount root is NOT the real root;
        the kernel creates cgroup.type on every cgroup except the real root."""
        return p.is_root and not self.has_file(p, "cgroup.type")

    # ------------------------------------------------------------------------------- layout

    def children(self, p: CgroupPath) -> list[CgroupPath]:
        """Child cgroups of `p`, sorted by name."""
        try:
            names = self._sys_listdirs(str(self.dir(p)))
        except OSError as err:
            raise _map(self, err, p, None, "list") from err
        return [p.child(n) for n in sorted(names)]

    def walk(self, p: CgroupPath) -> list[CgroupPath]:
        """`p` and every descendant, parents before children. Children that vanish mid-walk
        are skipped; `p` itself vanishing raises Vanished."""
        out = [p]
        stack = [p]
        while stack:
            cur = stack.pop()
            try:
                kids = self.children(cur)
            except Vanished:
                if cur == p:
                    raise
                continue
            out.extend(kids)
            stack.extend(reversed(kids))
        return sorted(out)

    def procs_recursive(self, p: CgroupPath) -> list[int]:
        """Processes in `p` and all its descendants (cgroups vanishing meanwhile are skipped)."""
        pids: list[int] = []
        for cg in self.walk(p):
            try:
                pids.extend(self.procs(cg))
            except Vanished:
                if cg == p:
                    raise
        return pids

    def mkdir(self, p: CgroupPath) -> bool:
        """Create cgroup `p` (its parent must exist). Existing is fine. True if this call made
        it: mkdir(2) is the one atomic "it did not exist" test, so ownership starts here."""
        if p.is_root:
            return False
        path = str(self.dir(p))
        created = False
        try:
            self._sys_mkdir(path)
            created = True
        except FileExistsError:
            pass
        except OSError as err:
            parent = p.parent
            if err.errno == errno.ENOENT and parent is not None and not self.exists(parent):
                raise Vanished(f"cannot create cgroup {p}: its parent {parent} is gone") from err
            raise _map(self, err, p, None, "mkdir") from err
        # mkdir on a cgroupfs populates the directory with interface files. If cgroup.procs is
        # missing, this is not a cgroupfs (e.g. the tmpfs at /sys/fs/cgroup on a hybrid host):
        # refuse rather than keep making plain directories that limit nothing.
        if not os.path.exists(os.path.join(path, "cgroup.procs")):
            raise CgroupError(
                f"{path} is not a cgroup: it has no cgroup.procs (is {self._mount_str} a cgroup2 "
                f"mount?)",
                "point oomguard at the cgroup2 mount (see `oomguard check`)",
            )
        return created

    def rmdir(self, p: CgroupPath) -> None:
        """Remove the (childless) cgroup `p`. Already gone is fine. EBUSY is retried with a
        doubling backoff capped at `backoff_cap`, for `rmdir_timeout` seconds in all: processes
        being killed keep the cgroup populated until their exit completes."""
        if p.is_root:
            raise CgroupError(
                "refusing to remove the cgroup mount root", "remove a cgroup below the root"
            )
        path = str(self.dir(p))
        deadline = self._clock() + self.rmdir_timeout
        delay = self.backoff_first
        while True:
            try:
                self._sys_rmdir(path)
                return
            except OSError as err:
                if err.errno in _GONE:
                    return
                if err.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    raise _map(self, err, p, None, "rmdir") from err
            try:
                kids = self.children(p)
            except Vanished:
                return
            if kids:
                # Waiting cannot help: nothing removes child cgroups on its own.
                raise CgroupError(
                    f"cannot remove cgroup {p}: it has child cgroups "
                    f"{', '.join(k.name for k in kids)}",
                    "remove the children first (bottom-up)",
                )
            now = self._clock()
            if now >= deadline:
                try:
                    pids = self.procs(p)
                except Vanished:
                    return
                raise CgroupError(
                    f"cannot remove cgroup {p}: still busy after {self.rmdir_timeout:g}s, "
                    f"pids still inside: {_pids_text(pids) or 'none (exiting)'}",
                    f"kill them (echo 1 > {self.dir(p)}/cgroup.kill) or wait for them to exit; "
                    "a process in uninterruptible sleep (D state) can hold a cgroup for a while",
                )
            self._sleep(min(delay, deadline - now))
            delay = min(delay * 2, self.backoff_cap)

    # ---------------------------------------------------------------------------- processes

    def move_pid(self, p: CgroupPath, pid: int) -> None:
        """Move process `pid` (all its threads) into `p`. Vanished if the process is gone."""
        if pid <= 0:
            raise CgroupError(f"refusing to move pid {pid} into cgroup {p}", None)
        self.write(p, "cgroup.procs", str(pid))

    def freeze(self, p: CgroupPath, frozen: bool) -> None:
        """cgroup.freeze (5.2+). Asynchronous: cgroup.events shows "frozen 1" once it took."""
        self.write(p, "cgroup.freeze", "1" if frozen else "0")

    def enable_controllers(self, p: CgroupPath, names: Iterable[str]) -> list[str]:
        """Enable controllers `names` for the children of `p` with one write; returns the ones
        that were not already enabled. A controller missing from `p`'s cgroup.controllers is a
        CgroupError naming it (the parent has not delegated it)."""
        wanted = list(dict.fromkeys(names))
        missing = [n for n in wanted if n not in self.subtree_control(p)]
        if not missing:
            return []
        available = self.controllers(p)
        unavailable = [n for n in missing if n not in available]
        if unavailable:
            parent = p.parent
            where = f"{parent}'s cgroup.subtree_control" if parent else "the kernel"
            raise CgroupError(
                f"controller(s) {', '.join(unavailable)} not available in cgroup {p} "
                f"(cgroup.controllers: {' '.join(sorted(available)) or 'none'})",
                f"enable them in {where} or run oomguard in a cgroup they are delegated to "
                f"(systemd-run -p Delegate=yes); on a hybrid cgroup v1/v2 host the memory "
                f"controller is bound to v1 (see `oomguard check`)",
            )
        self.write(p, "cgroup.subtree_control", " ".join(f"+{n}" for n in missing))
        return missing

    def disable_controllers(self, p: CgroupPath, names: Iterable[str] | None = None) -> list[str]:
        """Disable `names` (default: all) for the children of `p`; returns those disabled."""
        current = self.subtree_control(p)
        drop = sorted(current if names is None else current & set(names))
        if drop:
            self.write(p, "cgroup.subtree_control", " ".join(f"-{n}" for n in drop))
        return drop

    def wait_unpopulated(self, p: CgroupPath, timeout: float) -> bool:
        """Poll cgroup.events until `p` has no live process (True) or `timeout` passes (False).
        A cgroup that is gone counts as unpopulated."""
        deadline = self._clock() + timeout
        delay = self.backoff_first
        while True:
            try:
                if not self.populated(p):
                    return True
            except Vanished:
                return True
            now = self._clock()
            if now >= deadline:
                return False
            self._sleep(min(delay, deadline - now))
            delay = min(delay * 2, self.backoff_cap)

    def kill(self, p: CgroupPath) -> None:
        """SIGKILL every process in `p` and its descendants.

        cgroup.kill (5.14+) does it in the kernel, atomically with respect to fork: a child forked
        while the kill runs is killed too. Older kernels get a bounded loop that SIGKILLs each pid
        until the subtree is empty, re-reading the pids each round to catch forks.
        Returns once the signals are sent; processes may still be exiting (see wait_unpopulated).
        """
        if self.has_file(p, "cgroup.kill"):
            self.write(p, "cgroup.kill", "1")
            return
        _kill_each(self, p)

    # ------------------------------------------------------ kill without cgroup.kill (< 5.14)

    def signal_member(self, p: CgroupPath, pid: int, sig: int) -> int | None:
        """Send `sig` to process `pid` only if it is in `p` or below, pid reuse guarded: a pidfd
        pins the process first, then the membership is read again, so the number cannot have
        gone to another process in between. Returns the pidfd, open, for the caller to watch the
        exit and close (-1 on a kernel without pidfd_open, < 5.3: then signalled by pid right
        after the membership check); None if it is gone or not a member (nothing sent)."""
        import signal  # see _signal_members

        if pid <= 1:
            return None
        fd = self._sys_pidfd_open(pid)
        if fd is None:
            return None
        try:
            if pid not in self.procs_recursive(p):
                raise LookupError(pid)
            self._sys_signal(pid, fd, signal.Signals(sig))
        except (LookupError, Vanished):
            if fd >= 0:
                os.close(fd)
            return None
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        return fd


def _kill_each(fs: CgroupFS, p: CgroupPath) -> None:
    """SIGKILL each process of `p`'s subtree until it is empty, re-reading the pids each round
    to catch forks; CgroupError after `kill_timeout`."""
    deadline = fs._clock() + fs.kill_timeout
    delay = fs.backoff_first
    while True:
        pids = fs.procs_recursive(p)
        if not pids:
            return
        now = fs._clock()
        if now >= deadline:
            raise CgroupError(
                f"cannot kill the processes of cgroup {p}: still there after "
                f"{fs.kill_timeout:g}s: {_pids_text(pids)}",
                "a process in uninterruptible sleep (D state) cannot die until its I/O ends",
            )
        _signal_members(fs, p, pids)
        fs._sleep(min(delay, deadline - now))
        delay = min(delay * 2, fs.backoff_cap)


def _signal_members(fs: CgroupFS, p: CgroupPath, pids: list[int]) -> None:
    # A pid read from cgroup.procs can exit and be reused by an unrelated process before we
    # signal it. Pin each one with a pidfd first, then re-read the membership: a pidfd that
    # still refers to a member can be signalled safely, whatever happens to the number.
    import signal  # here, not at the top: `oomguard status` never kills (~1 ms of enum setup)

    pinned: dict[int, int] = {}
    try:
        for pid in pids:
            fd = fs._sys_pidfd_open(pid)
            if fd is not None:
                pinned[pid] = fd
        members = set(fs.procs_recursive(p))
        for pid, fd in pinned.items():
            if pid in members:
                fs._sys_signal(pid, fd, signal.SIGKILL)
    finally:
        for fd in pinned.values():
            if fd >= 0:
                os.close(fd)


# ------------------------------------------------------------------------------ error mapping


def _where(p: CgroupPath, name: str | None) -> str:
    return f"cgroup {p}" if name is None else f"{p.fs_path() or '.'}/{name} (cgroup {p})"


def _map(
    fs: CgroupFS,
    err: OSError,
    p: CgroupPath,
    name: str | None,
    action: str,
    value: str | None = None,
) -> CgroupError:
    """Translate one OSError from an operation on cgroup `p` (file `name`) to our errors."""
    code = err.errno
    where = _where(p, name)
    shown = "" if value is None else f" {value!r}"
    if code == errno.ENODEV or (code == errno.ENOENT and not fs.exists(p)):
        return Vanished(f"cgroup {p} is gone ({action} {name or 'dir'})")
    if code == errno.ENOENT and name is not None:
        return _missing(fs, p, name, where, shown)
    if code == errno.ESRCH and name == "cgroup.procs":
        return Vanished(f"process{shown} is gone (moving it into cgroup {p})")
    if code == errno.EBUSY and name in ("cgroup.subtree_control", "cgroup.procs"):
        return _busy(fs, p, name, where, value)
    return _refused(err, p, where, action, value)


def _missing(fs: CgroupFS, p: CgroupPath, name: str, where: str, shown: str) -> CgroupError:
    """ENOENT on an existing cgroup: a file that is not there, or a value the kernel parsed as
    naming something that is not there."""
    if not fs.file_path(p, name).exists():
        prefix = name.split(".", 1)[0]
        return CgroupError(
            f"{where} does not exist",
            f"the '{prefix}' controller is probably not enabled for this cgroup: it must "
            f"be listed in the parent's cgroup.subtree_control (or the kernel is too old "
            f"for this file)",
        )
    # The file exists, so ENOENT came from the kernel parsing the value: for
    # cgroup.subtree_control it means "that controller is not in cgroup.controllers".
    return CgroupError(
        f"the kernel refused writing{shown} to {where} (ENOENT)",
        "a controller can only be enabled if it is listed in this cgroup's "
        "cgroup.controllers, i.e. enabled in the parent's cgroup.subtree_control",
    )


def _busy(fs: CgroupFS, p: CgroupPath, name: str, where: str, value: str | None) -> CgroupError:
    """EBUSY from cgroup.subtree_control or cgroup.procs: the no-internal-process rule."""
    shown = "" if value is None else f" {value!r}"
    if name == "cgroup.procs":
        return CgroupError(
            f"cannot move process{shown} into cgroup {p}: it has controllers enabled for "
            f"its children",
            NO_INTERNAL_PROCESS_HINT,
        )
    if value is not None and value.split() and all(t[0] == "-" for t in value.split()):
        # Disabling is refused while a child still enables the controller below it.
        return CgroupError(
            f"cannot disable controllers{shown} in {where}: a child cgroup still "
            f"enables them in its own cgroup.subtree_control",
            "disable them in the children first (bottom-up), or remove the children",
        )
    return CgroupError(
        f"cannot enable controllers{shown} in {where}: cgroup {p} has processes "
        f"({_pids_text(fs._procs_quiet(p)) or 'none listed'})",
        NO_INTERNAL_PROCESS_HINT,
    )


def _refused(
    err: OSError, p: CgroupPath, where: str, action: str, value: str | None
) -> CgroupError:
    """The errors that do not depend on which interface file was used."""
    code = err.errno
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CgroupError(f"permission denied: {action} {where} ({err.strerror})", READONLY_HINT)
    if code == errno.EINVAL and value is not None:
        return CgroupError(
            f"the kernel rejected {value!r} for {where} (EINVAL)",
            "memory files take bytes or 'max'; check the configured value",
        )
    if code == errno.ENOSPC and action == "mkdir":
        return CgroupError(
            f"cannot create cgroup {p}: a cgroup.max.descendants or cgroup.max.depth limit "
            f"of an ancestor is reached",
            "raise that limit in the ancestor, or use a shallower tree",
        )
    if code == errno.EOPNOTSUPP:
        return CgroupError(
            f"{action} {where}: not supported here ({err.strerror})",
            "threaded cgroups and the root cgroup do not support every interface file",
        )
    return CgroupError(f"{action} {where} failed: {err.strerror or err}", None)
