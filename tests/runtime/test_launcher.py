"""The launcher on the host: real fork/exec of small programs, no cgroup memory controller needed.

Every test reaps what it spawns (the `spawned` fixture asserts no zombie is left behind), and
no test sleeps: waiting is always poll() on a pidfd or a pipe with a generous deadline.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pwd
import select
import signal
import threading
import time
from typing import TYPE_CHECKING

import pytest

from oomguard import proc
from oomguard.errors import LaunchError
from oomguard.events.loop import Loop
from oomguard.runtime import launcher
from oomguard.runtime.launcher import (
    Child,
    LaunchSpec,
    signal_process_group,
    spawn,
)
from oomguard.runtime.output import OutputPump
from oomguard.runtime.preflight import resolve_credentials, resolve_executable
from oomguard.runtime.reaper import ExitStatus, Reaper

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
IS_ROOT = os.geteuid() == 0


def _zombie_children() -> list[int]:
    me = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[1]) == me and fields[0] == b"Z":
            out.append(int(name))
    return out


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def wait_readable(fd: int, timeout: float = 20.0) -> None:
    p = select.poll()
    p.register(fd, select.POLLIN)
    assert p.poll(timeout * 1000), f"fd {fd} not readable within {timeout}s"


def read_all(fd: int, timeout: float = 20.0) -> bytes:
    """Read a (non-blocking) pipe until EOF."""
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        wait_readable(fd, max(deadline - time.monotonic(), 0.01))
        chunk = os.read(fd, 65536)
        if not chunk:
            return data
        data += chunk


class Spawner:
    """Spawns, waits and reaps; closes every Child at teardown."""

    def __init__(self) -> None:
        self.reaper = Reaper(subreaper=False)
        self.children: list[Child] = []

    def __call__(self, *argv: str, **kw: object) -> Child:
        kw.setdefault("env", ENV)
        spec = LaunchSpec(name=str(kw.pop("name", "svc")), argv=argv, **kw)  # type: ignore[arg-type]
        child = spawn(spec, None)
        self.children.append(child)
        self.reaper.track(child.pid)
        return child

    def wait(self, child: Child) -> ExitStatus:
        wait_readable(child.pidfd)
        reaped = self.reaper.reap()
        assert [r.pid for r in reaped] == [child.pid]
        return reaped[0].status

    def output(self, child: Child) -> tuple[str, ExitStatus]:
        out = read_all(child.stdout_fd)
        return out.decode(), self.wait(child)

    def close(self) -> None:
        for child in self.children:
            if child.pid in self.reaper.tracked:
                child.send_signal(signal.SIGKILL)
                self.wait(child)
            child.close()


@pytest.fixture
def spawned() -> Iterator[Spawner]:
    s = Spawner()
    try:
        yield s
    finally:
        s.close()
    assert _zombie_children() == []


@pytest.fixture
def no_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> int:
        raise AssertionError("forked although the error was detectable before fork")

    monkeypatch.setattr(os, "fork", boom)


# --- exit statuses ----------------------------------------------------------------------------


def test_true_exits_zero_and_pidfd_turns_readable(spawned: Spawner) -> None:
    child = spawned("true")
    assert child.pid > 0 and child.pidfd >= 0
    assert child.stdout_fd == -1 and child.stderr_fd == -1  # inherit mode: no pipes
    assert spawned.wait(child) == ExitStatus(code=0)


def test_exit_code_is_reported(spawned: Spawner) -> None:
    assert spawned.wait(spawned("sh", "-c", "exit 3")) == ExitStatus(code=3)


def test_send_signal_uses_pidfd_and_reports_false_once_reaped(spawned: Spawner) -> None:
    child = spawned("sleep", "30")
    assert child.send_signal(signal.SIGTERM) is True
    assert spawned.wait(child) == ExitStatus(signal=signal.SIGTERM)
    assert child.send_signal(signal.SIGTERM) is False


def test_child_is_session_and_group_leader(spawned: Spawner) -> None:
    child = spawned("sleep", "30")
    assert os.getsid(child.pid) == child.pid
    assert os.getpgid(child.pid) == child.pid


def test_signal_group_reaches_grandchildren(spawned: Spawner) -> None:
    child = spawned("sh", "-c", "sleep 30 & echo $!; wait", log="prefix")
    line = b""
    while not line.endswith(b"\n"):
        wait_readable(child.stdout_fd)
        line += os.read(child.stdout_fd, 100)
    grandchild = int(line)
    gfd = os.pidfd_open(grandchild)
    try:
        assert child.signal_group(signal.SIGTERM) is True
        wait_readable(gfd)  # the backgrounded sleep got it too
        assert spawned.wait(child) == ExitStatus(signal=signal.SIGTERM)
    finally:
        os.close(gfd)


def test_signal_process_group_of_nobody_is_false() -> None:
    # Session ids are pids; a pid beyond pid_max can never be a group.
    assert signal_process_group(2**22 + 12345, 0) is False


# --- errors detected before fork --------------------------------------------------------------


def test_missing_binary_fails_before_fork(no_fork: None) -> None:
    with pytest.raises(LaunchError) as ei:
        spawn(LaunchSpec("db", ("postgress",), ENV), None)
    assert "service.db: cannot find 'postgress' in PATH (/usr/local/bin:/usr/bin:/bin)" in str(
        ei.value
    )
    assert ei.value.hint and "absolute path" in ei.value.hint


def test_unknown_user_fails_before_fork(no_fork: None) -> None:
    with pytest.raises(LaunchError) as ei:
        spawn(LaunchSpec("db", ("true",), ENV, user="postgress"), None)
    assert ei.value.message == "service.db.user: no user 'postgress' on this system"
    assert ei.value.hint == "create it (useradd) or fix the name"


def test_unknown_group_fails_before_fork(no_fork: None) -> None:
    with pytest.raises(LaunchError, match=r"service\.db\.group: no group 'nogruop'"):
        spawn(LaunchSpec("db", ("true",), ENV, group="nogruop"), None)


def test_missing_cwd_fails_before_fork(no_fork: None, tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match=r"service\.db\.cwd: .*/nope does not exist"):
        spawn(LaunchSpec("db", ("true",), ENV, cwd=str(tmp_path / "nope")), None)


def test_cwd_that_is_a_file_fails_before_fork(no_fork: None, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("")
    with pytest.raises(LaunchError, match="is not a directory"):
        spawn(LaunchSpec("db", ("true",), ENV, cwd=str(f)), None)


def test_empty_argv_fails_before_fork(no_fork: None) -> None:
    # An out-of-range oom_score_adj is the config's to refuse (tests/config/test_compile.py).
    with pytest.raises(LaunchError, match="the command is empty"):
        spawn(LaunchSpec("db", (), ENV), None)


def test_spawn_from_a_thread_is_refused() -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            spawn(LaunchSpec("db", ("true",), ENV), None)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)


def test_fork_failure_is_a_launch_error_and_leaks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", fail)
    before = _open_fds()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    with pytest.raises(LaunchError, match=r"service\.db: cannot fork: Resource temp") as ei:
        spawn(LaunchSpec("db", ("true",), ENV, log="prefix"), None)
    assert ei.value.hint and "pids.max" in ei.value.hint
    assert _open_fds() == before
    assert signal.pthread_sigmask(signal.SIG_BLOCK, ()) == mask


# --- resolve_executable -----------------------------------------------------------------------


def _exe(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_resolve_executable_searches_path_in_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    _exe(b / "tool")
    _exe(a / "tool")
    assert resolve_executable("tool", f"{a}:{b}", None) == str(a / "tool")
    assert resolve_executable("tool", f"{tmp_path}/none:{b}", None) == str(b / "tool")


def test_resolve_executable_relative_to_cwd(tmp_path: Path) -> None:
    _exe(tmp_path / "run.sh")
    assert resolve_executable("./run.sh", "/bin", str(tmp_path)) == str(tmp_path / "run.sh")
    # An empty PATH entry means the current directory, like execvp.
    assert resolve_executable("run.sh", "/nonexistent:", str(tmp_path)) == str(tmp_path / "run.sh")


def test_resolve_executable_uses_defpath_when_path_unset() -> None:
    assert resolve_executable("sh", None, None) in ("/bin/sh", "/usr/bin/sh")


def test_resolve_executable_errors(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    (tmp_path / "dir").mkdir()
    with pytest.raises(LaunchError, match=r"service\.x: cannot run .*/plain: it is not executable"):
        resolve_executable(str(tmp_path / "plain"), None, None, service="x")
    with pytest.raises(LaunchError, match="it is a directory"):
        resolve_executable(str(tmp_path / "dir"), None, None)
    with pytest.raises(LaunchError, match="no such file"):
        resolve_executable(str(tmp_path / "missing"), None, None)
    with pytest.raises(LaunchError, match=r"found .*/plain \(it is not executable\)"):
        resolve_executable("plain", str(tmp_path), None)


# --- resolve_credentials ----------------------------------------------------------------------


def test_no_user_no_group_means_no_change() -> None:
    assert resolve_credentials(None, None) is None


def test_named_user_gets_login_groups() -> None:
    pw = pwd.getpwnam("nobody")
    creds = resolve_credentials("nobody", None, service="db")
    assert creds is not None
    assert (creds.uid, creds.gid, creds.name, creds.home) == (
        pw.pw_uid,
        pw.pw_gid,
        "nobody",
        pw.pw_dir,
    )
    assert set(creds.groups) == set(os.getgrouplist("nobody", pw.pw_gid))


def test_numeric_user_and_group() -> None:
    creds = resolve_credentials("0", "65534")
    assert creds is not None
    assert (creds.uid, creds.gid, creds.name) == (0, 65534, "root")


def test_numeric_uid_without_passwd_entry_needs_a_group() -> None:
    free = next(u for u in range(54321, 60000) if not _has_uid(u))
    with pytest.raises(LaunchError) as ei:
        resolve_credentials(str(free), None, service="db")
    assert "service.db.user: uid" in ei.value.message
    assert ei.value.hint and "service.db.group" in ei.value.hint
    creds = resolve_credentials(str(free), str(free))
    assert creds is not None
    assert (creds.uid, creds.gid, creds.groups, creds.name) == (free, free, (free,), None)


def _has_uid(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def test_group_only_keeps_uid() -> None:
    creds = resolve_credentials(None, "65534")
    assert creds is not None
    assert (creds.uid, creds.gid, creds.groups) == (os.getuid(), 65534, (65534,))


@pytest.mark.skipif(not IS_ROOT, reason="switching users needs root")
def test_runs_as_user_with_supplementary_groups(spawned: Spawner) -> None:
    # Prefer a user with a supplementary group (e.g. postgres in ssl-cert) to prove they are set.
    name = next(
        (
            p.pw_name
            for p in pwd.getpwall()
            if p.pw_uid != 0 and len(set(os.getgrouplist(p.pw_name, p.pw_gid))) > 1
        ),
        "nobody",
    )
    pw = pwd.getpwnam(name)
    child = spawned("sh", "-c", "id -u; id -g; id -G", user=name, log="prefix")
    out, status = spawned.output(child)
    assert status == ExitStatus(code=0)
    uid, gid, groups = out.splitlines()
    assert (int(uid), int(gid)) == (pw.pw_uid, pw.pw_gid)
    assert {int(g) for g in groups.split()} == set(os.getgrouplist(name, pw.pw_gid))


@pytest.mark.skipif(not IS_ROOT, reason="needs root to prove root's groups are dropped")
def test_group_switch_drops_roots_groups(spawned: Spawner) -> None:
    child = spawned("sh", "-c", "id -u; id -G", group="65534", log="prefix")
    out, _ = spawned.output(child)
    assert out.splitlines() == ["0", "65534"]


# --- failures after fork, reported through the error pipe -------------------------------------


def test_exec_format_error_names_service_and_file(tmp_path: Path) -> None:
    bad = _exe(tmp_path / "notabinary", "just text\n")
    with pytest.raises(LaunchError) as ei:
        spawn(LaunchSpec("db", (str(bad),), ENV), None)
    assert ei.value.message == f"service.db: cannot exec {bad}: Exec format error"
    assert ei.value.hint == "it is not a binary and has no #! line"
    assert _zombie_children() == []


def test_missing_interpreter_is_explained(tmp_path: Path) -> None:
    bad = _exe(tmp_path / "script", "#!/nonexistent/interpreter\n")
    with pytest.raises(LaunchError) as ei:
        spawn(LaunchSpec("db", (str(bad),), ENV), None)
    assert ei.value.message.endswith(": No such file or directory")
    assert ei.value.hint and "#! interpreter" in ei.value.hint
    assert _zombie_children() == []


@pytest.mark.skipif(not IS_ROOT, reason="needs root to drop to nobody")
def test_exec_permission_is_checked_as_the_service_user(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    script = _exe(tmp_path / "rootonly")
    script.chmod(0o700)  # root may run it, nobody may not
    with pytest.raises(LaunchError) as ei:
        spawn(LaunchSpec("db", (str(script),), ENV, user="nobody"), None)
    assert ei.value.message == f"service.db: cannot exec {script}: Permission denied"
    assert _zombie_children() == []


@pytest.mark.skipif(not IS_ROOT, reason="needs root to drop to nobody")
def test_unreadable_cwd_for_user_is_a_cwd_error(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    tmp_path.chmod(0o755)
    with pytest.raises(LaunchError) as ei:
        spawn(LaunchSpec("db", ("true",), ENV, user="nobody", cwd=str(private)), None)
    assert (
        ei.value.message == f"service.db.cwd: cannot enter {private} as nobody: Permission denied"
    )


def test_cgroup_join_failure_names_the_slice() -> None:
    # A read-only fd stands in for cgroup.procs: the child's write fails with EBADF.
    fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with pytest.raises(LaunchError) as ei:
            spawn(LaunchSpec("db", ("true",), ENV), fd, cgroup="/oomguard/db")
    finally:
        os.close(fd)
    assert (
        ei.value.message == "service.db: cannot join its cgroup /oomguard/db: Bad file descriptor"
    )
    assert _zombie_children() == []


def test_child_stuck_before_exec_is_killed_after_timeout() -> None:
    # A full pipe stands in for a frozen cgroup: the child blocks writing "0" to it.
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, b"x" * 65536)
    except BlockingIOError:
        pass
    os.set_blocking(w, True)
    try:
        with pytest.raises(LaunchError, match=r"service\.db: did not reach exec within 0\.2s"):
            spawn(LaunchSpec("db", ("true",), ENV), w, exec_timeout=0.2)
    finally:
        os.close(r)
        os.close(w)
    assert _zombie_children() == []


def test_spawn_leaks_no_fds(spawned: Spawner, tmp_path: Path) -> None:
    before = _open_fds()
    child = spawned("true", log="prefix")
    spawned.wait(child)
    child.close()
    with pytest.raises(LaunchError):
        spawn(LaunchSpec("db", (str(_exe(tmp_path / "t", "text")),), ENV, log="prefix"), None)
    assert _open_fds() == before


# --- what the child sees ----------------------------------------------------------------------


def test_child_env_is_exactly_env_plus_extra_env(spawned: Spawner) -> None:
    child = spawned(
        "env", env={**ENV, "A": "1", "B": "2"}, extra_env={"B": "override"}, log="prefix"
    )
    out, _ = spawned.output(child)
    assert sorted(out.splitlines()) == sorted([f"PATH={ENV['PATH']}", "A=1", "B=override"])


def test_child_has_only_stdio_and_devnull_stdin(spawned: Spawner) -> None:
    leaky = os.open(os.devnull, os.O_RDONLY)  # inheritable on purpose
    os.set_inheritable(leaky, True)
    try:
        child = spawned("sh", "-c", "ls /proc/$$/fd; readlink /proc/$$/fd/0", log="prefix")
        out, _ = spawned.output(child)
    finally:
        os.close(leaky)
    *fds, stdin = out.split()
    assert sorted(fds) == ["0", "1", "2"]
    assert stdin == "/dev/null"


def test_signal_dispositions_and_mask_are_reset(spawned: Spawner) -> None:
    # Python itself ignores SIGPIPE and SIGXFSZ; block SIGUSR1 on top, as a PID 1 might.
    assert signal.getsignal(signal.SIGPIPE) is signal.SIG_IGN
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    prev_usr2 = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        child = spawned("grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status", log="prefix")
        out, _ = spawned.output(child)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        signal.signal(signal.SIGUSR2, prev_usr2)
    fields = out.split()
    assert fields[0] == "SigBlk:" and fields[2] == "SigIgn:"
    # glibc reserves signals 32 and 33 (below SIGRTMIN) for itself; Python cannot touch them,
    # and GNU make 4.3 starts its children with them ignored. Everything else must be reset.
    reserved = (1 << 31) | (1 << 32)
    assert int(fields[1], 16) == 0
    assert int(fields[3], 16) & ~reserved == 0


def test_oom_score_adj_can_be_raised(spawned: Spawner) -> None:
    child = spawned("cat", "/proc/self/oom_score_adj", oom_score_adj=500, log="prefix")
    out, _ = spawned.output(child)
    assert out.strip() == "500"
    assert child.warnings == ()


@pytest.mark.skipif(proc.can_lower_oom_score_adj(), reason="this host may lower oom_score_adj")
def test_lowering_without_cap_sys_resource_warns_and_still_starts(spawned: Spawner) -> None:
    with open("/proc/self/oom_score_adj") as f:
        ours = int(f.read())
    child = spawned("cat", "/proc/self/oom_score_adj", oom_score_adj=ours - 1, log="prefix")
    out, status = spawned.output(child)
    assert status == ExitStatus(code=0)
    assert int(out) == ours
    assert child.warnings == (
        f"service.svc: cannot lower oom_score_adj to {ours - 1} without CAP_SYS_RESOURCE; "
        f"it keeps oomguard's {ours}",
    )


@pytest.mark.skipif(proc.can_lower_oom_score_adj(), reason="this host may lower oom_score_adj")
def test_refused_oom_score_adj_write_in_child_is_not_fatal(
    spawned: Spawner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend the parent thought lowering was allowed: the child's write fails with EACCES,
    # which must come back as a warning through the error pipe, not abort the start.
    monkeypatch.setattr(proc, "can_lower_oom_score_adj", lambda: True)
    with open("/proc/self/oom_score_adj") as f:
        ours = int(f.read())
    child = spawned("cat", "/proc/self/oom_score_adj", oom_score_adj=ours - 1, log="prefix")
    out, status = spawned.output(child)
    assert status == ExitStatus(code=0)
    assert int(out) == ours
    assert child.warnings == (
        f"service.svc: could not set oom_score_adj={ours - 1}: Permission denied; "
        "it keeps oomguard's value",
    )


def test_stdio_pipes_created_below_three_are_moved_up() -> None:
    saved = os.dup(0)
    os.close(0)
    owned: list[int] = []
    try:
        r, w = launcher._pipe(owned)
        assert r >= 3 and w >= 3
        assert sorted(owned) == sorted([r, w])
        assert fcntl.fcntl(r, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    finally:
        for fd in owned:
            os.close(fd)
        os.dup2(saved, 0)
        os.close(saved)


# --- prefix mode ------------------------------------------------------------------------------


def _pump_until_done(loop: Loop, pump: OutputPump) -> None:
    deadline = time.monotonic() + 20
    while pump.active:
        assert time.monotonic() < deadline, "output pipes never reached EOF"
        loop.run_once(1.0)  # the pump's own handlers read the pipes


def test_prefix_lines_padded_and_split_by_stream(spawned: Spawner) -> None:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    with Loop() as loop:
        pump = OutputPump(loop, width=len("pgbouncer"), stdout_fd=out_w, stderr_fd=err_w)
        db = spawned(
            "sh",
            "-c",
            "echo 'LOG:  database system is ready'; echo oops >&2; printf 'no newline'",
            name="db",
            log="prefix",
        )
        keys = pump.attach(db)
        assert len(keys) == 2 and db.stdout_fd == -1 and db.stderr_fd == -1
        assert all(key.fd in loop for key in keys)
        _pump_until_done(loop, pump)
        assert len(loop) == 0
        pump.close()  # closes the sinks it opened on out_w/err_w, so the readers see EOF
    spawned.wait(db)
    os.close(out_w)
    os.close(err_w)
    assert read_all(out_r).decode().splitlines() == [
        "db        | LOG:  database system is ready",
        "db        | no newline",
    ]
    assert read_all(err_r) == b"db        | oops\n"
    os.close(out_r)
    os.close(err_r)


def test_prefix_splits_overlong_lines_and_grows_width(spawned: Spawner) -> None:
    out_r, out_w = os.pipe()
    with Loop() as loop:
        pump = OutputPump(loop, stdout_fd=out_w, stderr_fd=out_w, max_line=4)
        child = spawned("printf", "abcdefghij\\nxy\\n", name="backup", log="prefix")
        pump.attach(child)
        assert pump.width == len("backup")
        _pump_until_done(loop, pump)
        pump.close()
    spawned.wait(child)
    os.close(out_w)
    assert read_all(out_r).decode().splitlines() == [
        "backup | abcd",
        "backup | efgh",
        "backup | ij",
        "backup | xy",
    ]
    os.close(out_r)


def test_pump_close_flushes_and_survives_a_closed_stdout(spawned: Spawner) -> None:
    out_r, out_w = os.pipe()
    os.close(out_r)  # whoever reads oomguard's stdout is gone: writes get EPIPE
    with Loop() as loop:
        pump = OutputPump(loop, stdout_fd=out_w, stderr_fd=out_w)
        child = spawned("echo", "lost", name="m", log="prefix")
        pump.attach(child)
        spawned.wait(child)
        pump.close()
        assert pump.active == 0 and len(loop) == 0
    assert pump.dropped_lines == 1
    assert [s.dropped_by for s in pump.sinks] == [{"m": 1}]
    os.close(out_w)


# --- services do not outlive oomguard ---------------------------------------------------------


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except FileNotFoundError:
        return True


def test_a_service_gets_its_death_signal_when_its_launcher_is_killed(tmp_path: Path) -> None:
    # "oomguard" is a child Python process that spawns the service and is then SIGKILLed: the
    # kernel must send the service its death_signal (here its stop signal, SIGINT).
    import subprocess
    import sys

    got = tmp_path / "got"
    svc = f"trap 'echo INT > {got}; exit 0' INT; while :; do sleep 0.05; done"
    code = (
        "import os, signal, sys, time\n"
        "from oomguard.runtime.launcher import LaunchSpec, spawn\n"
        f"spec = LaunchSpec('db', ('/bin/sh', '-c', {svc!r}), {{'PATH': '/usr/bin:/bin'}},\n"
        "                  death_signal=signal.SIGINT)\n"
        "child = spawn(spec, None)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    launcher = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout is not None
        pid = int(launcher.stdout.readline())
        time.sleep(0.3)  # let the shell install its trap
        assert not _gone(pid)
        launcher.kill()
        launcher.wait(timeout=30)
        deadline = time.monotonic() + 20
        while not (_gone(pid) and got.exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got.read_text().strip() == "INT"
        assert _gone(pid)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        launcher.stdout.close()  # type: ignore[union-attr]


def test_a_child_whose_launcher_died_before_the_prctl_starts_nothing(
    spawned: Spawner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race: oomguard dies between fork and prctl, so the child was reparented already and
    # the death signal will never come. The child sees getppid() != oomguard and exits 127
    # instead of exec'ing. Simulated by handing the child a parent pid that is not its parent.
    from oomguard.runtime import launcher as launcher_mod

    real = os.getpid()
    monkeypatch.setattr(launcher_mod.os, "getpid", lambda: real + 1_000_000)
    marker = tmp_path / "started"
    child = spawned("/bin/sh", "-c", f"touch {marker}", death_signal=signal.SIGTERM)
    monkeypatch.undo()
    assert spawned.wait(child).code == 127
    assert not marker.exists()
