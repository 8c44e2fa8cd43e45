"""The state directory, opened once and used only through its directory fd.

oomguard runs as root; the state directory is where it writes files by name. Anyone who could
put a symlink there could make root append to, truncate or chmod any file on the host. The
rules, in the style of systemd's RuntimeDirectory= and runc's securejoin:

* The directory is created 0755 (state.json and events.jsonl are for `oomguard status` and
  `oomguard events`, which other users may run; nothing secret is written there) and opened with
  O_DIRECTORY|O_NOFOLLOW. Its fstat must show a directory owned by our euid that neither group
  nor others can write: then no one else can create, replace or link names in it. Missing
  parents are created too; symlinks in the parents (/var/run -> /run) are followed, because
  whoever controls a parent already controls what the final name points at.
* Every file is opened relative to that fd with O_NOFOLLOW, and must be a regular file.
* Temp files are created O_EXCL, fchmod-ed through their fd, then renamed into place: a path
  is never chmod-ed, and rename(2) replaces a symlink itself, never its target.
* A system directory ("/", "/run", "/tmp", "/etc", ...) is refused as a state_dir: oomguard
  would create and rotate its files among the system's, and a shared directory like /tmp is
  writable by everyone.
* The supervisor holds an flock on ``lock`` for its lifetime (s6-supervise's rule): a second
  supervisor on the same directory is refused with the first one's pid.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
from pathlib import Path

from oomguard.errors import StateDirError
from oomguard.paths import STATE_DIR

LOCK_FILE = "lock"
#: Root's state directories live here ([oomguard] state_dir's default; exec's per-run ones
#: below it): oomguard.paths.STATE_DIR as a Path.
DEFAULT_ROOT_BASE = Path(STATE_DIR)
#: The mode a new state directory gets (see module doc for why not 0700).
DIR_MODE = 0o755
#: Directories that are never a state_dir: the system's own, and shared world-writable ones.
SYSTEM_DIRS = frozenset(
    {
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/dev/shm",
        "/etc",
        "/home",
        "/lib",
        "/lib64",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/run/user",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/var",
        "/var/lib",
        "/var/log",
        "/var/run",
        "/var/tmp",
    }
)


def state_dir_hint() -> str:
    """What to set instead; never a shared directory such as /tmp."""
    if os.geteuid() != 0:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        where = f"{runtime}/oomguard" if runtime else "$XDG_RUNTIME_DIR/oomguard"
        return f"set [oomguard] state_dir (or --state-dir) to a directory of your own, e.g. {where}"
    return f"set [oomguard] state_dir (or --state-dir) to a directory of its own, e.g. {STATE_DIR}"


def _refuse(message: str) -> StateDirError:
    return StateDirError(message, hint=state_dir_hint())


def check_path(path: Path) -> Path:
    """`path` made absolute and normal; refuses a system directory."""
    text = os.path.normpath(os.path.abspath(path))
    if text in SYSTEM_DIRS or text.startswith("/proc/") or text.startswith("/sys/"):
        raise _refuse(
            f"state_dir {text} is a system directory: oomguard needs a directory of its own"
        )
    return Path(text)


class StateDir:
    """An open, verified state directory. One owner; `close()` sets the fds to -1."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.lock_fd = -1

    @classmethod
    def open(cls, path: Path | str, *, create: bool = True) -> StateDir:
        """Create (if `create`) and open the directory, and check it (see module doc).
        Raises `StateDirError` (exit 2) naming the directory and what is wrong."""
        p = check_path(Path(path))
        if create:
            _make(p)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                kind = "a symlink" if os.path.islink(p) else "not a directory"
                raise _refuse(f"state_dir {p} is {kind}; oomguard refuses it") from None
            raise _refuse(f"cannot open state_dir {p}: {err.strerror or err}") from None
        try:
            _check_dir(p, os.fstat(fd))
            sd = cls(p, fd)
            sd.check_files()
        except BaseException:
            os.close(fd)
            raise
        return sd

    # -- checks -------------------------------------------------------------------------

    def check_files(self, names: tuple[str, ...] | None = None) -> None:
        """Refuse a symlink or non-regular file under any name oomguard writes."""
        from oomguard.observe.eventlog import EVENTS_FILE, ROTATED_FILE
        from oomguard.observe.state import STATE_FILE, TREE_FILE

        for name in names or (STATE_FILE, EVENTS_FILE, ROTATED_FILE, LOCK_FILE, TREE_FILE):
            st = self.lstat(name)
            if st is not None and not stat.S_ISREG(st.st_mode):
                kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                raise _refuse(
                    f"{self.path / name} is {kind}; oomguard never writes through one (remove "
                    f"it, and check who could create it)"
                )

    def lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    # -- files --------------------------------------------------------------------------

    def open_file(self, name: str, flags: int, mode: int = 0o644) -> int:
        """os.open `name` in this directory with O_NOFOLLOW|O_CLOEXEC; refuses (ELOOP as an
        OSError) a symlink and (EINVAL) anything but a regular file. The caller owns the fd."""
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(self.path / name))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def read_file(self, name: str, limit: int = 16 << 20) -> bytes | None:
        """The content of `name` (at most `limit` bytes), or None if it does not exist."""
        try:
            fd = self.open_file(name, os.O_RDONLY)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read(limit)

    def write_atomic(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """Replace `name` with `data` atomically: an O_EXCL temp file, fchmod, rename.
        Raises OSError; the temp file is then removed and `name` untouched."""
        # A dot-name so a glob for *.json never picks up a half-written file.
        tmp = f".{name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=self.fd,
        )
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            raise

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        """Remove `name`; already gone is fine."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    # -- the supervisor's lock ------------------------------------------------------------

    def lock(self) -> None:
        """Take the supervisor lock for this process's lifetime (released by close() or by
        the kernel when the process dies, kill -9 included). Raises `StateDirError` naming
        the holder's pid if another supervisor has it."""
        fd = self.open_file(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StateDirError(
                    f"state_dir {self.path} is in use by another oomguard (pid {holder})",
                    "stop that oomguard first, or give this one its own [oomguard] state_dir "
                    "(and cgroup)",
                ) from None
            raise _refuse(f"cannot lock {self.path / LOCK_FILE}: {err.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.lock_fd = fd

    def close(self) -> None:
        for attr in ("lock_fd", "fd"):
            fd = getattr(self, attr)
            setattr(self, attr, -1)
            if fd >= 0:
                os.close(fd)

    def remove(self) -> None:
        """Delete the files oomguard puts here and the directory (exec's per-run directory).
        Anything else found there is left, and so is the directory then."""
        from oomguard.observe.eventlog import EVENTS_FILE, ROTATED_FILE
        from oomguard.observe.state import STATE_FILE, TREE_FILE

        ours = {STATE_FILE, EVENTS_FILE, ROTATED_FILE, LOCK_FILE, TREE_FILE}
        for entry in os.listdir(self.fd):
            if entry in ours or (entry.startswith(".") and entry.endswith(".tmp")):
                with contextlib.suppress(OSError):
                    os.unlink(entry, dir_fd=self.fd)
        path = self.path
        self.close()
        with contextlib.suppress(OSError):
            os.rmdir(path)


def _make(p: Path) -> None:
    parent = p.parent
    try:
        if not parent.exists():
            os.makedirs(parent, mode=DIR_MODE, exist_ok=True)
        os.mkdir(p, DIR_MODE)
    except FileExistsError:
        pass
    except OSError as err:
        raise _refuse(f"cannot create state_dir {p}: {err.strerror or err}") from None


def _check_dir(p: Path, st: os.stat_result) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(f"state_dir {p} is not a directory")
    euid = os.geteuid()
    if st.st_uid != euid:
        raise _refuse(
            f"state_dir {p} is owned by uid {st.st_uid}, not by oomguard's user (uid {euid}); "
            "oomguard only writes into a directory it owns"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise _refuse(
            f"state_dir {p} is writable by its group or by others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): anyone who can write it could plant symlinks; "
            f"chmod go-w it or choose another directory"
        )
    if not os.access(p, os.W_OK | os.X_OK):
        raise _refuse(f"state_dir {p} is not writable")
