"""The hand-off from `run`/`exec` to the daemon: the Job in a memfd, the daemon's command line,
its errors (exit 2, one line, no traceback), and that nothing it imports pulls in pydantic or
click. Nothing here execs or supervises: tests/kernel/test_daemon.py runs the real thing."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from oomguard.cli import daemon
from oomguard.cli.daemon import Job
from oomguard.config.compile import compile_plan
from oomguard.config.model import Config
from oomguard.errors import UsageError
from oomguard.plan import to_json
from oomguard.policy.restart import ExitInfo
from oomguard.runtime.supervisor import Outcome

REPO = Path(__file__).resolve().parents[2]

CONFIG: dict[str, Any] = {
    "oomguard": {"metrics_listen": "127.0.0.1:9187", "memory_max": "1G"},
    "slice": {"sidecars": {"memory_max": "256M"}},
    "service": {
        "db": {"command": ["postgres"], "role": "primary", "memory_high": "600M"},
        "pooler": {"command": ["pgbouncer"], "slice": "sidecars", "log": "prefix"},
    },
}


def job(kind: str = "run", **kw: Any) -> Job:
    plan = compile_plan(Config.from_mapping(CONFIG))
    return Job(kind=kind, plan=plan, init=True, **kw)  # type: ignore[arg-type]


def test_the_job_crosses_an_inheritable_memfd_unchanged() -> None:
    sent = job("exec", remove_state_dir=True)
    fd = daemon._job_fd(sent)
    assert os.get_inheritable(fd)  # it must survive execve
    assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:oomguard-plan")
    assert daemon.read_job(fd) == sent
    with pytest.raises(OSError):
        os.fstat(fd)  # read_job closed it


def test_the_daemon_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/usr/bin/oomguard", "run", "/etc/og.toml"])
    argv = daemon.daemon_argv(7)
    assert argv[0] == sys.executable
    # -P: a directory named oomguard in the working directory must not shadow the package.
    assert "-P" in argv[1 : argv.index("-c")]
    root = argv[argv.index("-c") + 2]
    assert Path(root, "oomguard").samefile(REPO / "oomguard")
    tail = argv[argv.index("-c") + 3 :]
    # `ps` shows what was run, after the daemon's own arguments.
    assert tail == ["--plan-fd", "7", "--", "/usr/bin/oomguard", "run", "/etc/og.toml"]


def test_the_bootstrap_finds_the_package_from_its_root(tmp_path: Path) -> None:
    # No PYTHONPATH and a working directory without oomguard: only the root argument finds it.
    code = daemon._BOOTSTRAP.replace(
        "from oomguard.cli.daemon import main; main(root=r)",
        "import oomguard, os; print(os.path.dirname(oomguard.__file__))",
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-P", "-c", code, str(REPO)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env=env,
    ).stdout
    assert Path(out.strip()).samefile(REPO / "oomguard")


def test_a_daemon_from_another_installation_refuses(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"not in .* where `run`/`exec` came from"):
        daemon._check_package(str(tmp_path))
    daemon._check_package(str(REPO))  # the same one: fine


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "unreadable: not JSON"),
        (b"{}", "not a version 1 plan"),
        (to_json(job().plan).encode(), "holds a 'Plan', not a Job"),
    ],
)
def test_an_unreadable_job_is_a_usage_error(data: bytes, match: str) -> None:
    fd = os.memfd_create("test", 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    with pytest.raises(UsageError, match=match) as info:
        daemon.read_job(fd)
    assert info.value.exit_code == 2


def test_main_reports_errors_in_one_line_and_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(daemon.MODULES_ENV, raising=False)
    monkeypatch.setattr(daemon, "_without_openssl", lambda: None)  # not in the test process
    with pytest.raises(SystemExit) as info:
        daemon.main([])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("oomguard: error: the daemon needs --plan-fd N\n")
    assert "oomguard: hint: start the supervisor with `oomguard run`" in err
    assert "Traceback" not in err


def test_main_runs_the_job_and_dumps_its_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[Job] = []
    monkeypatch.setattr(daemon, "run_job", lambda j: ran.append(j) or 3)
    monkeypatch.setattr(daemon, "_without_openssl", lambda: None)  # not in the test process
    dump = tmp_path / "modules"
    monkeypatch.setenv(daemon.MODULES_ENV, str(dump))
    sent = job()
    with pytest.raises(SystemExit) as info:
        daemon.main(["--plan-fd", str(daemon._job_fd(sent))])
    assert info.value.code == 3 and ran == [sent]
    names = dump.read_text().splitlines()
    assert "oomguard.cli.daemon" in names and names == sorted(names)


def _outcome(status: int, *, oom: bool = False, fatal: str | None = None) -> Outcome:
    exit_ = ExitInfo(signal=9, oom_killed=True) if oom else ExitInfo(code=status)
    lines = ["pooler was killed by the OOM killer (x)", "db was killed by the OOM killer (y)"]
    return Outcome(status, "db", exit_, "test", fatal_service=fatal, oom_lines=lines)


def test_run_and_exec_end_as_they_did(capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon._finish(job("run"), _outcome(1, fatal="db")) == 1
    assert capsys.readouterr().err == (
        "oomguard: db was killed by the OOM killer (y)\n"
        "oomguard: stopped because db failed for good (exit status 1)\n"
    )
    assert daemon._finish(job("exec"), _outcome(137, oom=True)) == 137
    assert capsys.readouterr().err == "oomguard: db was killed by the OOM killer (y)\n"
    assert daemon._finish(job("exec"), _outcome(3)) == 3
    assert capsys.readouterr().err == ""


def test_a_failed_exec_runs_the_job_here(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_exec(path: str, argv: list[str]) -> None:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(os, "execv", no_exec)
    monkeypatch.setattr(daemon, "run_job", lambda j: 5)
    assert daemon.hand_off(job()) == 5
    assert "oomguard: warning: cannot start the daemon" in capsys.readouterr().err


def test_nothing_the_daemon_imports_pulls_in_pydantic_or_click() -> None:
    # Every module run_job reaches, metrics included (prometheus_client if installed).
    code = (
        "import sys\n"
        "import oomguard.cli.daemon, oomguard.cli._supervise\n"
        "import oomguard.runtime.supervisor, oomguard.runtime.pressure\n"
        "import oomguard.cgroup.fs, oomguard.cgroup.discover, oomguard.observe.statedir\n"
        "try:\n"
        "    import oomguard.runtime.metrics\n"
        "except ImportError:\n"
        "    pass\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('pydantic', 'pydantic_core', "
        "'click') or m.startswith('oomguard.config')]\n"
        "print(sorted(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert out.strip() == "[]"


def test_the_daemon_hashes_without_openssl() -> None:
    code = (
        "import sys\n"
        "from oomguard.cli.daemon import _without_openssl\n"
        "_without_openssl()\n"
        "import hashlib, secrets\n"
        "print(hashlib.sha256(b'oomguard').hexdigest(), len(secrets.token_hex(16)))\n"
        "print(sorted(m for m in sys.modules if 'ssl' in m or m == '_hashlib' and "
        "sys.modules[m] is not None))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.splitlines()
    assert out == [f"{hashlib.sha256(b'oomguard').hexdigest()} 32", "[]"]


def test_as_pid1_too_the_job_is_handed_to_the_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    # A container's init is where the memory matters most: PID 1 re-execs like any other pid
    # (execve keeps the pid, so it stays the namespace's init).
    seen: list[list[str]] = []

    def fake_exec(path: str, argv: list[str]) -> None:
        seen.append(argv)
        raise OSError(errno.ENOEXEC, "stop here")

    monkeypatch.setattr(os, "getpid", lambda: 1)
    monkeypatch.setattr(os, "execv", fake_exec)
    monkeypatch.setattr(daemon, "run_job", lambda j: 6)
    assert daemon.hand_off(job()) == 6
    assert len(seen) == 1 and "--plan-fd" in seen[0]
