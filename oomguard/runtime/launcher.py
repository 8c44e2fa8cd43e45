"""The only code that forks and execs. Starts one service inside its slice, as its user.

Everything that can be checked is checked in the parent *before* forking (unknown user, missing
or non-executable binary, missing working directory), so those errors are plain `LaunchError`s
naming the config field. The forked child then runs a fixed, short list of raw syscalls:

1. join the slice: write ``0`` ("myself") to the slice's cgroup.procs through an fd the parent
   opened. Python cannot use clone3(CLONE_INTO_CGROUP), so this is the earliest point the
   process can move; doing it before exec means every page the service ever allocates,
   including the dynamic loader's, is charged to its slice, and its OOM kills land there.
2. write oom_score_adj (while still privileged; it is inherited across exec).
3. reset signal dispositions and the mask, so a service started by PID 1 does not inherit
   Python's SIG_IGN for SIGPIPE/SIGXFSZ or a blocked mask (both survive exec).
4. setsid() (its own process group, for group signals), stdio, close every other fd.
5. setgroups, setgid, setuid, in that order: once the uid is dropped, changing groups is no
   longer allowed.
6. prctl(PR_SET_PDEATHSIG, death_signal), then getppid() against oomguard's pid (see below).
7. chdir (as the service user, so permissions are checked as that user), execve.

Services must not outlive oomguard: killed with SIGKILL (or by the OOM killer), it can stop
nothing, and a service left running unsupervised would be started a second time by the next
oomguard. PR_SET_PDEATHSIG makes the kernel send the service `death_signal` when oomguard dies.
The kernel clears that setting when the process changes credentials (setuid/setgid) and when it
execs a set-id or file-capability binary, so it is set *after* the user is dropped (a set-id
service binary loses it; nothing can be done about that from here). It is armed only from the
moment of the prctl: if oomguard died just before, the child has already been reparented, which
getppid() shows, and it exits instead of starting a service nobody supervises. The signal is
sent when the *thread* that forked exits: spawn() runs only on the main thread, which lives as
long as oomguard does.

No logging, locks or imports happen in the child: another thread of the parent may have held a
lock at fork time, and only this thread exists in the child. Any failure is written as a fixed
6-byte record ``(stage, fatal, errno)`` to a CLOEXEC pipe, then ``_exit(127)``. The parent reads
that pipe to EOF: EOF with no fatal record means execve succeeded (the kernel closed the pipe's
CLOEXEC end). Non-fatal records (a refused oom_score_adj) become `Child.warnings`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import grp
import os
import pwd
import select
import signal
import stat
import threading
import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, NoReturn, Protocol, cast

from oomguard import proc
from oomguard.errors import LaunchError
from oomguard.events.pidfd import close_pidfd, send_signal
from oomguard.observe.sink import OutputSink
from oomguard.runtime.reaper import wait_exited

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from oomguard.plan import LogMode

__all__ = [
    "Child",
    "Credentials",
    "LaunchSpec",
    "OutputPump",
    "PumpKey",
    "Stage",
    "resolve_credentials",
    "resolve_executable",
    "send_signal",
    "signal_process_group",
    "spawn",
]


#: One child report: stage (u8), fatal (u8), errno (u32 little-endian).
_RECORD_SIZE = 6


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one service. Frozen; built by the supervisor from the config.

    `env` is the child's base environment (nothing is inherited implicitly); `extra_env`
    is laid over it (e.g. variables oomguard adds per service). With `login_env`, PATH (a fixed
    default), HOME, USER, LOGNAME and SHELL of whom the service runs as go *under* `env`, as
    login(1) would set them. `user`/`group` are names or numeric strings; None keeps oomguard's.
    `cwd` None means the user's home directory (else /) with `home_cwd`, oomguard's own working
    directory without. `oom_score_adj` None keeps oomguard's value.
    """

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str | None = None
    user: str | None = None
    group: str | None = None
    oom_score_adj: int | None = None
    log: LogMode = "inherit"
    extra_env: Mapping[str, str] = field(default_factory=dict)
    #: Sent to the service by the kernel if oomguard dies (PR_SET_PDEATHSIG); None: nothing.
    #: The supervisor passes the service's stop_signal: the same graceful stop it would have
    #: asked for itself (PostgreSQL's SIGINT is a clean fast shutdown, where a SIGKILL of the
    #: postmaster leaves its backends running and forces crash recovery).
    death_signal: int | None = None
    login_env: bool = False
    home_cwd: bool = False

    def child_env(self, login: Mapping[str, str] | None = None) -> dict[str, str]:
        """`login` (identity variables, see `login_environment`) under `env` under
        `extra_env`: the config may override PATH or HOME, never oomguard's own variables."""
        return {**(login or {}), **self.env, **self.extra_env}


@dataclass(frozen=True)
class Credentials:
    """Who the service runs as. `groups` are the supplementary groups (including `gid`)."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str | None
    name: str | None
    shell: str | None = None


class Stage(IntEnum):
    """Steps of the child between fork and exec, as reported through the error pipe."""

    CGROUP = 1
    OOM_SCORE_ADJ = 2
    SIGNALS = 3
    SETSID = 4
    STDIO = 5
    CLOSE_FDS = 6
    SETGROUPS = 7
    SETGID = 8
    SETUID = 9
    CHDIR = 10
    EXEC = 11
    PDEATHSIG = 12


_STAGE_TEXT = {
    Stage.CGROUP: "join its cgroup",
    Stage.OOM_SCORE_ADJ: "set oom_score_adj",
    Stage.SIGNALS: "reset signal handlers",
    Stage.SETSID: "start a new session",
    Stage.STDIO: "set up stdin/stdout/stderr",
    Stage.CLOSE_FDS: "close inherited file descriptors",
    Stage.SETGROUPS: "set supplementary groups",
    Stage.SETGID: "set the group id",
    Stage.SETUID: "set the user id",
    Stage.CHDIR: "enter its working directory",
    Stage.EXEC: "exec",
    Stage.PDEATHSIG: "arrange to be stopped when oomguard dies (prctl PR_SET_PDEATHSIG)",
}


@dataclass(eq=False)
class Child:
    """A started service process. Owns `pidfd` (and, until handed to an `OutputPump`, the read
    ends of its stdout/stderr pipes); `close()` closes what it still owns and sets it to -1.

    Register `pidfd` in the loop with ``EPOLLIN``: it turns readable when the process exits;
    then `Reaper.reap()` collects the status. `pidfd` is -1 only on kernels without pidfd_open
    (< 5.3), where SIGCHLD is the only exit signal.
    """

    name: str
    pid: int
    pidfd: int
    stdout_fd: int = -1
    stderr_fd: int = -1
    #: Non-fatal problems (e.g. oom_score_adj could not be lowered); already logged.
    warnings: tuple[str, ...] = ()

    def send_signal(self, sig: int) -> bool:
        """Signal the process (not its group) without pid-reuse races. False if it is gone."""
        if self.pidfd >= 0:
            return send_signal(self.pidfd, sig)
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def signal_group(self, sig: int) -> bool:
        """Signal the service's whole process group (it is a session leader, pgid == pid)."""
        return signal_process_group(self.pid, sig)

    def close(self) -> None:
        self.pidfd = close_pidfd(self.pidfd)
        for attr in ("stdout_fd", "stderr_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                setattr(self, attr, -1)
                os.close(fd)


def signal_process_group(pgid: int, sig: int) -> bool:
    """``killpg(pgid, sig)``; False if no process is left in the group.

    Call it only while the group leader is unreaped (the supervisor reaps after signalling):
    the kernel does not hand out a pid that is still in use as a pgid, so until then `pgid`
    cannot name someone else's group.
    """
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


# --- checks done in the parent, before forking ------------------------------------------------


def resolve_credentials(
    user: str | None, group: str | None, *, service: str = "?"
) -> Credentials | None:
    """Look up `user`/`group` (names or numeric strings). None if both are None (keep ours).

    Supplementary groups come from the group database for a named user (os.getgrouplist), so a
    service sees the same groups as after a login. A numeric uid without a passwd entry needs an
    explicit group: guessing gid 0 would run the service with root's group.
    """
    if user is None and group is None:
        return None
    where = f"service.{service}"
    pw: pwd.struct_passwd | None = None
    uid = os.getuid()
    if user is not None:
        # ASCII digits only: str.isdigit() is also true for "²" (which int() refuses) and "٣"
        # (which int() reads as 3, so the service would run as uid 3).
        if user.isascii() and user.isdigit():
            uid = int(user)
            try:
                pw = pwd.getpwuid(uid)
            except KeyError:
                pw = None
        else:
            try:
                pw = pwd.getpwnam(user)
            except KeyError:
                raise LaunchError(
                    f"{where}.user: no user {user!r} on this system",
                    hint="create it (useradd) or fix the name",
                ) from None
            uid = pw.pw_uid
    if group is not None:
        if group.isascii() and group.isdigit():
            gid = int(group)
        else:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise LaunchError(
                    f"{where}.group: no group {group!r} on this system",
                    hint="create it (groupadd) or fix the name",
                ) from None
    elif pw is not None:
        gid = pw.pw_gid
    elif user is not None:
        raise LaunchError(
            f"{where}.user: uid {uid} has no passwd entry, so its group is unknown",
            hint=f'set {where}.group too (e.g. group = "{uid}")',
        )
    else:  # pragma: no cover - unreachable: user and group cannot both be None here
        gid = os.getgid()
    # Without a login name to look up: the primary group only, so root's groups do not leak.
    groups = tuple(os.getgrouplist(pw.pw_name, gid)) if pw is not None else (gid,)
    return Credentials(
        uid=uid,
        gid=gid,
        groups=groups,
        home=pw.pw_dir if pw is not None else None,
        name=pw.pw_name if pw is not None else None,
        shell=pw.pw_shell if pw is not None else None,
    )


#: PATH of a service with a clean environment: systemd's default for system services. Not
#: oomguard's own PATH, so a service finds the same programs whoever started oomguard.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def login_identity(creds: Credentials | None) -> tuple[int, str | None, str | None, str | None]:
    """(uid, name, home, shell) of whom the service runs as: the passwd entry of its user, or
    oomguard's own when no user is set. Name, home and shell are None without a passwd entry."""
    if creds is not None and creds.name is not None:
        return creds.uid, creds.name, creds.home, creds.shell
    uid = creds.uid if creds is not None else os.getuid()
    try:
        pw = pwd.getpwuid(uid)
    except (KeyError, OverflowError):
        return uid, None, None, None
    return uid, pw.pw_name, pw.pw_dir, pw.pw_shell


def login_environment(creds: Credentials | None) -> dict[str, str]:
    """PATH, HOME, USER, LOGNAME and SHELL for the service's user, as login(1) sets them. A uid
    without a passwd entry gets HOME=/, its number as USER and LOGNAME, and /bin/sh."""
    uid, name, home, shell = login_identity(creds)
    who = name or str(uid)
    return {
        "PATH": DEFAULT_PATH,
        "HOME": home or "/",
        "USER": who,
        "LOGNAME": who,
        # passwd(5): an empty shell field means /bin/sh.
        "SHELL": shell or "/bin/sh",
    }


def default_cwd(creds: Credentials | None) -> str:
    """The user's home directory if it is one, else /: like login(1), never oomguard's own
    working directory, which says nothing about the service."""
    home = login_identity(creds)[2]
    return home if home and os.path.isabs(home) and os.path.isdir(home) else "/"


def _exec_problem(path: str) -> str | None:
    """Why `path` cannot be exec'd (as far as the parent can tell), or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no such file"
    except OSError as e:
        return e.strerror or str(e)
    if stat.S_ISDIR(st.st_mode):
        return "it is a directory"
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if not os.access(path, os.X_OK):
        return "it is not executable"
    return None


def resolve_executable(argv0: str, path: str | None, cwd: str | None, *, service: str = "?") -> str:
    """The absolute path execve will run for `argv0`, searched like execvp: `argv0` with a
    slash is taken as is (relative to `cwd`, the directory the child will be in), otherwise each
    entry of the *child's* `path` (its PATH; os.defpath if unset) is tried in order.

    Raises LaunchError before any fork. The final say is execve's, as the service user: a file
    that root may exec but the user may not still fails there, with a precise message.
    """
    where = f"service.{service}"
    base = cwd or os.getcwd()
    if not argv0:
        raise LaunchError(f"{where}: the command is empty", hint="set the program to run")
    if "/" in argv0:
        candidate = os.path.normpath(os.path.join(base, argv0))
        problem = _exec_problem(candidate)
        if problem is not None:
            hint = (
                "fix the path or install the program"
                if problem == "no such file"
                else f"make it an executable file (chmod +x {candidate})"
            )
            raise LaunchError(f"{where}: cannot run {candidate}: {problem}", hint=hint)
        return candidate
    search = os.defpath if path is None else path
    not_executable: str | None = None
    for entry in search.split(os.pathsep):
        # An empty PATH entry means the current directory, as in execvp.
        candidate = os.path.normpath(os.path.join(base, entry or ".", argv0))
        problem = _exec_problem(candidate)
        if problem is None:
            return candidate
        if problem != "no such file" and not_executable is None:
            not_executable = f"{candidate} ({problem})"
    if not_executable is not None:
        raise LaunchError(
            f"{where}: cannot run {argv0!r}: found {not_executable} but nothing executable "
            f"in PATH ({search})",
            hint="make the program executable, or fix PATH in the service's environment",
        )
    raise LaunchError(
        f"{where}: cannot find {argv0!r} in PATH ({search})",
        hint="install it, set PATH in the service's environment, or use an absolute path",
    )


def _resolve_cwd(spec: LaunchSpec, creds: Credentials | None) -> str | None:
    if spec.cwd is None:
        return default_cwd(creds) if spec.home_cwd else None
    cwd = os.path.abspath(spec.cwd)
    if not os.path.exists(cwd):
        raise LaunchError(
            f"service.{spec.name}.cwd: {cwd} does not exist",
            hint="create the directory or fix the path",
        )
    if not os.path.isdir(cwd):
        raise LaunchError(
            f"service.{spec.name}.cwd: {cwd} is not a directory", hint="point it at a directory"
        )
    return cwd


# --- fork/exec --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Everything the child needs, precomputed in the parent as bytes and ints, so the child
    only makes syscalls."""

    exe: bytes
    argv: tuple[bytes, ...]
    env: dict[bytes, bytes]
    cwd: bytes | None
    #: Where to go if `cwd` (a default, not a configured one) cannot be entered as the user.
    cwd_fallback: bytes | None
    cgroup_fd: int
    oom_score_adj: bytes | None
    reset_signals: tuple[int, ...]
    stdin_fd: int
    stdout_w: int
    stderr_w: int
    err_w: int
    max_fd: int
    setgroups: tuple[int, ...] | None
    setgid: int | None
    setuid: int | None
    #: (prctl, signal, oomguard's pid), or None.
    pdeathsig: tuple[_Prctl, int, int] | None


class _Prctl(Protocol):
    def __call__(self, option: int, arg2: int, arg3: int, arg4: int, arg5: int, /) -> int: ...


#: <linux/prctl.h>
_PR_SET_PDEATHSIG = 1


@functools.cache
def _libc_prctl() -> _Prctl | None:
    """libc's prctl through ctypes, resolved in the parent: the child may not import or load
    anything (another thread may have held the import lock at fork time)."""
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - no libc with prctl
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
    fn.restype = ctypes.c_int
    return cast("_Prctl", fn)


def _report(fd: int, stage: Stage, err: int, fatal: bool) -> None:
    # If even this fails the parent sees EOF without a record; there is nothing else to do.
    with contextlib.suppress(BaseException):
        os.write(fd, bytes((int(stage), 1 if fatal else 0)) + err.to_bytes(4, "little"))


def _child_main(p: _Plan) -> NoReturn:  # pragma: no cover - runs in the forked child only
    # Coverage cannot see this (the child _exits); the tests exercise every stage through
    # the parent's view of the error pipe.
    stage = Stage.CGROUP
    try:
        if p.cgroup_fd >= 0:
            os.write(p.cgroup_fd, b"0")
        stage = Stage.OOM_SCORE_ADJ
        if p.oom_score_adj is not None:
            try:
                proc.write_oom_score_adj(p.oom_score_adj)
            except OSError as e:
                # Not fatal: the service still runs, with the inherited value.
                _report(p.err_w, Stage.OOM_SCORE_ADJ, e.errno or 0, fatal=False)
        stage = Stage.SIGNALS
        # All signals are still blocked (the parent blocked them around fork). Reset the
        # dispositions first, then stop CPython's C handler from writing to the parent's
        # SignalQueue socket, so nothing that arrives before exec is misdelivered.
        signal.set_wakeup_fd(-1)
        for sig in p.reset_signals:
            with contextlib.suppress(OSError, ValueError):  # e.g. glibc's reserved RT signals
                signal.signal(sig, signal.SIG_DFL)
        stage = Stage.SETSID
        os.setsid()
        stage = Stage.STDIO
        os.dup2(p.stdin_fd, 0)
        if p.stdout_w >= 0:
            os.dup2(p.stdout_w, 1)
        if p.stderr_w >= 0:
            os.dup2(p.stderr_w, 2)
        stage = Stage.CLOSE_FDS
        # Keep 0-2 and the error pipe (CLOEXEC: exec closes it, which is the success signal).
        os.closerange(3, p.err_w)
        os.closerange(p.err_w + 1, p.max_fd)
        if p.setgroups is not None:
            stage = Stage.SETGROUPS
            os.setgroups(p.setgroups)
        if p.setgid is not None:
            stage = Stage.SETGID
            os.setgid(p.setgid)
        if p.setuid is not None:
            stage = Stage.SETUID
            os.setuid(p.setuid)
        if p.pdeathsig is not None:
            # After the credential change, which clears it (see the module docstring).
            stage = Stage.PDEATHSIG
            prctl, sig, parent = p.pdeathsig
            if prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
                raise OSError(errno.EINVAL, "prctl")
            if os.getppid() != parent:
                os._exit(127)  # oomguard died before the prctl: start nothing
        if p.cwd is not None:
            stage = Stage.CHDIR
            try:
                os.chdir(p.cwd)
            except OSError:
                if p.cwd_fallback is None:
                    raise
                os.chdir(p.cwd_fallback)
        stage = Stage.EXEC
        # Last: an empty mask, not the parent's (the mask survives exec).
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        os.execve(p.exe, p.argv, p.env)
    except OSError as e:
        _report(p.err_w, stage, e.errno or 0, fatal=True)
    except BaseException:
        _report(p.err_w, stage, 0, fatal=True)
    finally:
        os._exit(127)


def _signals_to_reset() -> tuple[int, ...]:
    """Signals whose disposition is not SIG_DFL in this process (ignored, or handled)."""
    out: list[int] = []
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            handler = signal.getsignal(sig)
        except ValueError:  # pragma: no cover - valid_signals() only yields valid numbers
            continue
        if handler is not signal.SIG_DFL:
            out.append(int(sig))
    return tuple(out)


def _above_stdio(fd: int) -> int:
    """Move `fd` to a number >= 3 (CLOEXEC), so dup2 onto 0-2 in the child cannot clobber it.
    Only matters when oomguard itself was started with stdin/stdout/stderr closed."""
    if fd >= 3:
        return fd
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return new


def _pipe(owned: list[int]) -> tuple[int, int]:
    """A CLOEXEC pipe with both ends >= 3, appended to `owned` (closed by the caller)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    owned += [r, w]
    for i, fd in enumerate((r, w)):
        if fd < 3:
            new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
            owned[owned.index(fd)] = new
            os.close(fd)
            if i == 0:
                r = new
            else:
                w = new
    return r, w


def _highest_fd() -> int:
    highest = proc.highest_fd()
    return max(os.sysconf("SC_OPEN_MAX"), 1024) - 1 if highest is None else highest


def _read_reports(fd: int, timeout: float) -> tuple[list[tuple[Stage, int, bool]], bool]:
    """Read child reports until EOF. Returns (records, timed_out)."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    timed_out = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        if not poller.poll(left * 1000):
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    records = []
    for i in range(0, len(data) - _RECORD_SIZE + 1, _RECORD_SIZE):
        stage_b, fatal_b = data[i], data[i + 1]
        err = int.from_bytes(data[i + 2 : i + 6], "little")
        try:
            stage = Stage(stage_b)
        except ValueError:  # pragma: no cover - only our child writes here
            continue
        records.append((stage, err, bool(fatal_b)))
    return records, timed_out


def _strerror(err: int) -> str:
    return os.strerror(err) if err else "unexpected error"


def _fatal_error(
    spec: LaunchSpec,
    *,
    exe: str,
    cwd: str | None,
    stage: Stage,
    err: int,
    cgroup: str | None,
) -> LaunchError:
    where = f"service.{spec.name}"
    why = _strerror(err)
    if stage == Stage.EXEC:
        hints = {
            errno.ENOENT: "its #! interpreter (or ELF loader) does not exist",
            errno.EACCES: "make it executable by the service user (chmod +x) and check the "
            "filesystem is not mounted noexec",
            errno.ENOEXEC: "it is not a binary and has no #! line",
            errno.ETXTBSY: "the file is open for writing (still being installed?)",
            errno.E2BIG: "the command line plus environment is too large",
            errno.ENOMEM: "its slice's memory.max may be too small to even start it",
        }
        return LaunchError(f"{where}: cannot exec {exe}: {why}", hint=hints.get(err))
    if stage == Stage.CGROUP:
        target = f" {cgroup}" if cgroup else ""
        hints = {
            errno.EBUSY: "the slice has controllers enabled for child cgroups (the "
            "no-internal-process rule); services must go into leaf cgroups",
            errno.EACCES: "oomguard may not move processes there; run it as the owner of the "
            "delegated cgroup subtree",
            errno.EPERM: "oomguard may not move processes there; run it as the owner of the "
            "delegated cgroup subtree",
            errno.ENODEV: "the slice was removed while starting",
            errno.ENOENT: "the slice was removed while starting",
            errno.EOPNOTSUPP: "the target is a threaded cgroup or in an invalid domain state",
        }
        return LaunchError(f"{where}: cannot join its cgroup{target}: {why}", hint=hints.get(err))
    if stage in (Stage.SETGROUPS, Stage.SETGID, Stage.SETUID):
        who = spec.user or spec.group or "?"
        return LaunchError(
            f"{where}: cannot switch to {who} ({_STAGE_TEXT[stage]}): {why}",
            hint=f"run oomguard as root (or with CAP_SETUID/CAP_SETGID), or remove {where}.user",
        )
    if stage == Stage.CHDIR:
        who = f" as {spec.user}" if spec.user else ""
        return LaunchError(
            f"{where}.cwd: cannot enter {cwd}{who}: {why}",
            hint="make the directory accessible to the service user",
        )
    return LaunchError(f"{where}: cannot start: failed to {_STAGE_TEXT[stage]}: {why}")


def spawn(
    spec: LaunchSpec,
    cgroup_procs_fd: int | None,
    *,
    cgroup: str | None = None,
    exec_timeout: float = 30.0,
) -> Child:
    """Fork and exec `spec`; return once execve has succeeded (or raise LaunchError).

    `cgroup_procs_fd` is an fd open for writing on the target slice's cgroup.procs (the
    caller owns and closes it; `CgroupFS.open_fd`), or None to start the service in oomguard's
    own cgroup (degraded mode). `cgroup` only names the slice in error messages.

    Must be called from the main thread (the child resets signal handlers, which CPython only
    allows there). Blocks until the child has exec'd, at most `exec_timeout` seconds (a child
    stuck before exec, e.g. in a frozen cgroup, is killed and reported).
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("spawn() must be called from the main thread")
    where = f"service.{spec.name}"
    # Kept although the config refuses an empty command: LaunchSpec is also built outside the
    # Plan (runtime/oneshot.py, tests), and argv[0] is read just below.
    if not spec.argv:
        raise LaunchError(f"{where}: the command is empty", hint="set the program to run")
    creds = resolve_credentials(spec.user, spec.group, service=spec.name)
    cwd = _resolve_cwd(spec, creds)
    env = spec.child_env(login_environment(creds) if spec.login_env else None)
    exe = resolve_executable(spec.argv[0], env.get("PATH"), cwd, service=spec.name)

    warnings: list[str] = []
    oom_bytes: bytes | None = None
    if spec.oom_score_adj is not None:
        # In range by construction: the Plan's oom_score_adj is bounded by the config's field
        # type (-999..1000), and oomguard's own adj is what the kernel gave it.
        adj = spec.oom_score_adj
        current = proc.oom_score_adj() or 0
        if adj < current and not proc.can_lower_oom_score_adj():
            # Decided here, not in the child: the child cannot log, and a refused write is a
            # degraded start, not a failed one.
            msg = (
                f"{where}: cannot lower oom_score_adj to {adj} without CAP_SYS_RESOURCE; "
                f"it keeps oomguard's {current}"
            )
            warnings.append(msg)
        elif adj != current:
            oom_bytes = str(adj).encode()

    setgroups: tuple[int, ...] | None = None
    setgid: int | None = None
    setuid: int | None = None
    if creds is not None:
        # Only change what differs, so an unprivileged oomguard can name its own user.
        if sorted(set(creds.groups)) != sorted(set(os.getgroups())):
            setgroups = creds.groups
        if (creds.gid, creds.gid) != (os.getgid(), os.getegid()):
            setgid = creds.gid
        if (creds.uid, creds.uid) != (os.getuid(), os.geteuid()):
            setuid = creds.uid

    pdeathsig: tuple[_Prctl, int, int] | None = None
    if spec.death_signal is not None:
        prctl = _libc_prctl()
        if prctl is None:  # pragma: no cover - no libc with prctl
            warnings.append(f"{where}: no prctl(); it would outlive a killed oomguard")
        else:
            pdeathsig = (prctl, int(spec.death_signal), os.getpid())

    owned: list[int] = []  # fds to close in the parent whatever happens
    try:
        err_r, err_w = _pipe(owned)
        stdin_fd = _above_stdio(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        owned.append(stdin_fd)
        out_r = out_w = errp_r = errp_w = -1
        if spec.log == "prefix":
            out_r, out_w = _pipe(owned)
            errp_r, errp_w = _pipe(owned)
        else:
            # The child's 0-2 are dup2'd or inherited; stdio must survive exec.
            for fd in (1, 2):
                with contextlib.suppress(OSError):  # closed stdio: the service has none
                    os.set_inheritable(fd, True)
        cgroup_fd = -1 if cgroup_procs_fd is None else cgroup_procs_fd
        plan = _Plan(
            exe=os.fsencode(exe),
            argv=tuple(os.fsencode(a) for a in spec.argv),
            env={os.fsencode(k): os.fsencode(v) for k, v in env.items()},
            cwd=os.fsencode(cwd) if cwd is not None else None,
            # A home directory the user may not enter (0700 of another owner, a network mount
            # that is down) falls back to / as login(1) does; a configured cwd never does.
            cwd_fallback=b"/" if spec.cwd is None and cwd not in (None, "/") else None,
            cgroup_fd=cgroup_fd,
            oom_score_adj=oom_bytes,
            reset_signals=_signals_to_reset(),
            stdin_fd=stdin_fd,
            stdout_w=out_w,
            stderr_w=errp_w,
            err_w=err_w,
            max_fd=_highest_fd() + 1,
            setgroups=setgroups,
            setgid=setgid,
            setuid=setuid,
            pdeathsig=pdeathsig,
        )

        # Block every signal across fork: the child must not run a Python handler (or write
        # to the parent's SignalQueue socket) before it has reset them. The parent restores
        # its mask right after; anything that arrived meanwhile is delivered then.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                _child_main(plan)
        except OSError as e:
            raise LaunchError(
                f"{where}: cannot fork: {e.strerror}",
                hint="the system (or oomguard's own cgroup: pids.max, memory) is out of "
                "processes or memory",
            ) from e
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

        # Close our copies of the child's ends now: EOF on err_r must mean "exec'd or died",
        # and EOF on the output pipes must mean "the service closed them".
        for fd in (err_w, stdin_fd, out_w, errp_w):
            if fd >= 0:
                owned.remove(fd)
                os.close(fd)

        pidfd = -1
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as e:
            if e.errno != errno.ENOSYS:  # pragma: no cover - our own unreaped child exists
                raise
        records, timed_out = _read_reports(err_r, exec_timeout)
        owned.remove(err_r)
        os.close(err_r)

        fatal = next(((s, e) for s, e, f in records if f), None)
        if timed_out or fatal is not None:
            if timed_out:
                if pidfd >= 0:
                    send_signal(pidfd, signal.SIGKILL)
                else:  # pragma: no cover - kernels without pidfd
                    os.kill(pid, signal.SIGKILL)
            wait_exited(pid)
            close_pidfd(pidfd)
            if fatal is not None:
                raise _fatal_error(
                    spec, exe=exe, cwd=cwd, stage=fatal[0], err=fatal[1], cgroup=cgroup
                )
            raise LaunchError(
                f"{where}: did not reach exec within {exec_timeout:g}s and was killed",
                hint="is its slice frozen (cgroup.freeze) or out of memory?",
            )
        for stage, err, _ in records:
            if stage == Stage.OOM_SCORE_ADJ and spec.oom_score_adj is not None:
                msg = (
                    f"{where}: could not set oom_score_adj={spec.oom_score_adj}: "
                    f"{_strerror(err)}; it keeps oomguard's value"
                )
                warnings.append(msg)

        for fd in (out_r, errp_r):
            if fd >= 0:
                os.set_blocking(fd, False)
                owned.remove(fd)
        return Child(
            name=spec.name,
            pid=pid,
            pidfd=pidfd,
            stdout_fd=out_r,
            stderr_fd=errp_r,
            warnings=tuple(warnings),
        )
    finally:
        for fd in owned:
            os.close(fd)


# --- prefix-mode output -----------------------------------------------------------------------


@dataclass(frozen=True)
class PumpKey:
    """One of `OutputPump`'s output pipes: what its loop handler hands to `on_ready`."""

    fd: int


class _Registry(Protocol):
    """What the pump needs from the loop (`oomguard.events.loop.Loop` satisfies it)."""

    def add(self, fd: int, events: int, handler: Callable[[int], None], /) -> None: ...

    def remove(self, fd: int, /) -> None: ...


@dataclass(eq=False)
class _Stream:
    name: str
    fd: int
    dst: OutputSink
    buf: bytearray = field(default_factory=bytearray)


class OutputPump:
    """Copies services' stdout/stderr to oomguard's, one prefixed line at a time::

        db      | LOG:  database system is ready to accept connections
        pgbouncer | ...

    Names are padded to `width` (pass the longest service name; it grows if a longer name is
    attached). A service's stdout goes to `stdout_fd`, its stderr to `stderr_fd`. Lines longer
    than `max_line` are split; a last line without a newline is flushed at EOF.

    The pump owns the pipes it is given (`attach` takes them from the Child) and registers them
    in the loop with ``EPOLLIN``, each with a handler that calls `on_ready(key)`. Lines go out
    through one `OutputSink` per destination (pass `sinks` to share them, e.g. stderr's with
    the log): never a blocking write. When whoever reads oomguard's output
    stalls, lines beyond the sink's bound are dropped and counted (`OutputSink.dropped_by`,
    per service), and the pipes keep being drained, so neither the loop nor the services block.
    """

    def __init__(
        self,
        loop: _Registry,
        width: int = 0,
        *,
        stdout_fd: int = 1,
        stderr_fd: int = 2,
        max_line: int = 64 * 1024,
        sinks: Mapping[int, OutputSink] | None = None,
    ) -> None:
        self._loop = loop
        self.width = width
        self._max_line = max_line
        self._streams: dict[int, _Stream] = {}
        self._sinks: dict[int, OutputSink] = dict(sinks or {})
        #: The sinks this pump made (and closes); the caller closes the ones it passed in.
        self._own: list[OutputSink] = []
        for fd, name in ((stdout_fd, "stdout"), (stderr_fd, "stderr")):
            if fd not in self._sinks:
                sink = OutputSink(fd, name=name)
                self._sinks[fd] = sink
                self._own.append(sink)
        self._stdout = self._sinks[stdout_fd]
        self._stderr = self._sinks[stderr_fd]

    @property
    def sinks(self) -> list[OutputSink]:
        """Where the lines go, one per distinct destination fd."""
        return list({id(s): s for s in (self._stdout, self._stderr)}.values())

    @property
    def dropped_lines(self) -> int:
        return sum(s.dropped_lines for s in self.sinks)

    @property
    def active(self) -> int:
        """How many pipes are still open."""
        return len(self._streams)

    def attach(self, child: Child) -> list[PumpKey]:
        """Take over `child`'s output pipes (its fields become -1) and register them."""
        self.width = max(self.width, len(child.name))
        keys: list[PumpKey] = []
        for attr, dst in (("stdout_fd", self._stdout), ("stderr_fd", self._stderr)):
            fd: int = getattr(child, attr)
            if fd < 0:
                continue
            setattr(child, attr, -1)
            self._streams[fd] = _Stream(child.name, fd, dst)
            key = PumpKey(fd)
            try:
                self._loop.add(fd, select.EPOLLIN, self._handler(key))
            except BaseException:
                del self._streams[fd]
                os.close(fd)
                raise
            keys.append(key)
        return keys

    def _handler(self, key: PumpKey) -> Callable[[int], None]:
        return lambda _mask: self.on_ready(key)

    def on_ready(self, key: PumpKey, budget: int = 1 << 20) -> None:
        """Read what is available (up to `budget` bytes, for fairness between services; the
        level-triggered loop calls again for the rest) and write out complete lines."""
        stream = self._streams.get(key.fd)
        if stream is None:
            return  # already closed earlier in this batch
        got = 0
        while got < budget:
            try:
                chunk = os.read(stream.fd, 65536)
            except BlockingIOError:
                break
            except OSError:  # pragma: no cover - EIO etc.: treat as EOF
                chunk = b""
            if not chunk:
                self._finish(stream)
                return
            got += len(chunk)
            stream.buf += chunk
            self._emit(stream, final=False)

    def _prefix(self, name: str) -> bytes:
        return f"{name:<{self.width}} | ".encode()

    def _emit(self, stream: _Stream, final: bool) -> None:
        buf = stream.buf
        prefix = self._prefix(stream.name)
        lines: list[bytes] = []
        start = 0
        while True:
            nl = buf.find(b"\n", start, start + self._max_line)
            if nl >= 0:
                lines.append(prefix + buf[start : nl + 1])
                start = nl + 1
            elif len(buf) - start >= self._max_line:
                lines.append(prefix + buf[start : start + self._max_line] + b"\n")
                start += self._max_line
            else:
                break
        if final and start < len(buf):
            lines.append(prefix + buf[start:] + b"\n")
            start = len(buf)
        del buf[:start]
        if lines:
            stream.dst.write_lines(lines, stream.name)

    def _finish(self, stream: _Stream) -> None:
        self._emit(stream, final=True)
        self._loop.remove(stream.fd)
        del self._streams[stream.fd]
        os.close(stream.fd)

    def close(self, flush_timeout: float = 1.0) -> None:
        """Drain whatever is buffered in the pipes right now, flush partial lines, close all.
        The sinks the pump made get up to `flush_timeout` seconds to drain."""
        for stream in list(self._streams.values()):
            self.on_ready(PumpKey(stream.fd))
            if stream.fd in self._streams:
                self._finish(stream)
        for sink in self._own:
            sink.close(flush_timeout)
