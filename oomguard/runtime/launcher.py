"""The only code that forks and execs. Starts one service inside its slice, as its user.

Everything that can be checked is checked in the parent *before* forking (unknown user, missing
or non-executable binary, missing working directory: runtime/preflight.py), so those errors are
plain `LaunchError`s naming the config field. The forked child then runs a fixed, short list of
raw syscalls:

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
import os
import select
import signal
import threading
import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, NamedTuple, NoReturn, Protocol, cast

from oomguard import proc
from oomguard.errors import LaunchError
from oomguard.events.pidfd import close_pidfd, send_signal
from oomguard.runtime.preflight import prepare
from oomguard.runtime.reaper import wait_exited

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from oomguard.plan import LogMode
    from oomguard.runtime.preflight import Prepared

__all__ = [
    "Child",
    "LaunchSpec",
    "Stage",
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


def _join_cgroup(p: _Plan) -> None:
    if p.cgroup_fd >= 0:
        os.write(p.cgroup_fd, b"0")


def _set_oom_score_adj(p: _Plan) -> None:
    if p.oom_score_adj is not None:
        try:
            proc.write_oom_score_adj(p.oom_score_adj)
        except OSError as e:
            # Not fatal: the service still runs, with the inherited value.
            _report(p.err_w, Stage.OOM_SCORE_ADJ, e.errno or 0, fatal=False)


def _reset_signals(p: _Plan) -> None:
    # All signals are still blocked (the parent blocked them around fork). Reset the
    # dispositions first, then stop CPython's C handler from writing to the parent's
    # SignalQueue socket, so nothing that arrives before exec is misdelivered.
    signal.set_wakeup_fd(-1)
    for sig in p.reset_signals:
        with contextlib.suppress(OSError, ValueError):  # e.g. glibc's reserved RT signals
            signal.signal(sig, signal.SIG_DFL)


def _setsid(p: _Plan) -> None:
    os.setsid()


def _stdio(p: _Plan) -> None:
    os.dup2(p.stdin_fd, 0)
    if p.stdout_w >= 0:
        os.dup2(p.stdout_w, 1)
    if p.stderr_w >= 0:
        os.dup2(p.stderr_w, 2)


def _close_fds(p: _Plan) -> None:
    # Keep 0-2 and the error pipe (CLOEXEC: exec closes it, which is the success signal).
    os.closerange(3, p.err_w)
    os.closerange(p.err_w + 1, p.max_fd)


def _setgroups(p: _Plan) -> None:
    if p.setgroups is not None:
        os.setgroups(p.setgroups)


def _setgid(p: _Plan) -> None:
    if p.setgid is not None:
        os.setgid(p.setgid)


def _setuid(p: _Plan) -> None:
    if p.setuid is not None:
        os.setuid(p.setuid)


def _pdeathsig(p: _Plan) -> None:
    # After the credential change, which clears it (see the module docstring).
    if p.pdeathsig is not None:
        prctl, sig, parent = p.pdeathsig
        if prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            raise OSError(errno.EINVAL, "prctl")
        if os.getppid() != parent:
            os._exit(127)  # oomguard died before the prctl: start nothing


def _chdir(p: _Plan) -> None:
    if p.cwd is not None:
        try:
            os.chdir(p.cwd)
        except OSError:
            if p.cwd_fallback is None:
                raise
            os.chdir(p.cwd_fallback)


def _exec(p: _Plan) -> None:
    # Last: an empty mask, not the parent's (the mask survives exec).
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    os.execve(p.exe, p.argv, p.env)


#: The child's steps in order (see the module docstring), each under the stage it reports.
_CHILD_STEPS: tuple[tuple[Stage, Callable[[_Plan], None]], ...] = (
    (Stage.CGROUP, _join_cgroup),
    (Stage.OOM_SCORE_ADJ, _set_oom_score_adj),
    (Stage.SIGNALS, _reset_signals),
    (Stage.SETSID, _setsid),
    (Stage.STDIO, _stdio),
    (Stage.CLOSE_FDS, _close_fds),
    (Stage.SETGROUPS, _setgroups),
    (Stage.SETGID, _setgid),
    (Stage.SETUID, _setuid),
    (Stage.PDEATHSIG, _pdeathsig),
    (Stage.CHDIR, _chdir),
    (Stage.EXEC, _exec),
)


def _child_main(p: _Plan) -> NoReturn:  # pragma: no cover - runs in the forked child only
    # Coverage cannot see this (the child _exits); the tests exercise every stage through
    # the parent's view of the error pipe.
    stage = Stage.CGROUP
    try:
        for stage, step in _CHILD_STEPS:  # noqa: B007 - `stage` names the step that failed
            step(p)
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


class _Pipes(NamedTuple):
    """The pipes of one start: the error pipe, the child's stdin (/dev/null) and, in prefix
    mode, its stdout and stderr (-1 otherwise)."""

    err_r: int
    err_w: int
    stdin: int
    out_r: int = -1
    out_w: int = -1
    errp_r: int = -1
    errp_w: int = -1


def _open_pipes(owned: list[int], *, prefix: bool) -> _Pipes:
    err_r, err_w = _pipe(owned)
    stdin_fd = _above_stdio(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    owned.append(stdin_fd)
    if not prefix:
        # The child's 0-2 are dup2'd or inherited; stdio must survive exec.
        for fd in (1, 2):
            with contextlib.suppress(OSError):  # closed stdio: the service has none
                os.set_inheritable(fd, True)
        return _Pipes(err_r, err_w, stdin_fd)
    out_r, out_w = _pipe(owned)
    errp_r, errp_w = _pipe(owned)
    return _Pipes(err_r, err_w, stdin_fd, out_r, out_w, errp_r, errp_w)


def _close(owned: list[int], *fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            owned.remove(fd)
            os.close(fd)


def _death_signal(spec: LaunchSpec, warnings: list[str]) -> tuple[_Prctl, int, int] | None:
    if spec.death_signal is None:
        return None
    prctl = _libc_prctl()
    if prctl is None:  # pragma: no cover - no libc with prctl
        warnings.append(f"service.{spec.name}: no prctl(); it would outlive a killed oomguard")
        return None
    return prctl, int(spec.death_signal), os.getpid()


def _make_plan(
    spec: LaunchSpec,
    pre: Prepared,
    pipes: _Pipes,
    cgroup_procs_fd: int | None,
    pdeathsig: tuple[_Prctl, int, int] | None,
) -> _Plan:
    return _Plan(
        exe=os.fsencode(pre.exe),
        argv=tuple(os.fsencode(a) for a in spec.argv),
        env={os.fsencode(k): os.fsencode(v) for k, v in pre.env.items()},
        cwd=None if pre.cwd is None else os.fsencode(pre.cwd),
        cwd_fallback=None if pre.cwd_fallback is None else os.fsencode(pre.cwd_fallback),
        cgroup_fd=-1 if cgroup_procs_fd is None else cgroup_procs_fd,
        oom_score_adj=pre.oom_score_adj,
        reset_signals=_signals_to_reset(),
        stdin_fd=pipes.stdin,
        stdout_w=pipes.out_w,
        stderr_w=pipes.errp_w,
        err_w=pipes.err_w,
        max_fd=_highest_fd() + 1,
        setgroups=pre.ids.setgroups,
        setgid=pre.ids.setgid,
        setuid=pre.ids.setuid,
        pdeathsig=pdeathsig,
    )


def _fork(plan: _Plan, where: str) -> int:
    # Block every signal across fork: the child must not run a Python handler (or write to the
    # parent's SignalQueue socket) before it has reset them. The parent restores its mask right
    # after; anything that arrived meanwhile is delivered then.
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
    return pid


def _open_pidfd(pid: int) -> int:
    try:
        return os.pidfd_open(pid)
    except OSError as e:
        if e.errno != errno.ENOSYS:  # pragma: no cover - our own unreaped child exists
            raise
    return -1


def _abandon(pid: int, pidfd: int, *, kill: bool) -> None:
    """Reap a child that will not exec (killed first if it is stuck before exec)."""
    if kill:
        if pidfd >= 0:
            send_signal(pidfd, signal.SIGKILL)
        else:  # pragma: no cover - kernels without pidfd
            os.kill(pid, signal.SIGKILL)
    wait_exited(pid)
    close_pidfd(pidfd)


def _start_error(
    spec: LaunchSpec,
    pre: Prepared,
    fatal: tuple[Stage, int] | None,
    cgroup: str | None,
    exec_timeout: float,
) -> LaunchError:
    if fatal is not None:
        return _fatal_error(
            spec, exe=pre.exe, cwd=pre.cwd, stage=fatal[0], err=fatal[1], cgroup=cgroup
        )
    return LaunchError(
        f"service.{spec.name}: did not reach exec within {exec_timeout:g}s and was killed",
        hint="is its slice frozen (cgroup.freeze) or out of memory?",
    )


def _child_warnings(spec: LaunchSpec, records: list[tuple[Stage, int, bool]]) -> list[str]:
    return [
        f"service.{spec.name}: could not set oom_score_adj={spec.oom_score_adj}: "
        f"{_strerror(err)}; it keeps oomguard's value"
        for stage, err, _ in records
        if stage == Stage.OOM_SCORE_ADJ and spec.oom_score_adj is not None
    ]


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
    pre = prepare(spec)
    warnings = list(pre.warnings)
    pdeathsig = _death_signal(spec, warnings)
    owned: list[int] = []  # fds to close in the parent whatever happens
    try:
        pipes = _open_pipes(owned, prefix=spec.log == "prefix")
        pid = _fork(
            _make_plan(spec, pre, pipes, cgroup_procs_fd, pdeathsig), f"service.{spec.name}"
        )
        # Close our copies of the child's ends now: EOF on err_r must mean "exec'd or died",
        # and EOF on the output pipes must mean "the service closed them".
        _close(owned, pipes.err_w, pipes.stdin, pipes.out_w, pipes.errp_w)
        pidfd = _open_pidfd(pid)
        records, timed_out = _read_reports(pipes.err_r, exec_timeout)
        _close(owned, pipes.err_r)
        fatal = next(((s, e) for s, e, f in records if f), None)
        if timed_out or fatal is not None:
            _abandon(pid, pidfd, kill=timed_out)
            raise _start_error(spec, pre, fatal, cgroup, exec_timeout)
        warnings += _child_warnings(spec, records)
        for fd in (pipes.out_r, pipes.errp_r):
            if fd >= 0:
                os.set_blocking(fd, False)
                owned.remove(fd)
        return Child(
            name=spec.name,
            pid=pid,
            pidfd=pidfd,
            stdout_fd=pipes.out_r,
            stderr_fd=pipes.errp_r,
            warnings=tuple(warnings),
        )
    finally:
        for fd in owned:
            os.close(fd)
