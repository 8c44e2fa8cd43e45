"""The service's environment, working directory and numeric ids, on the host (fork/exec only).

A service from a config file starts clean (systemd's rule): the config's `env` over PATH, HOME,
USER, LOGNAME and SHELL of its user, in its home directory; never oomguard's own environment.
"""

from __future__ import annotations

import os
import pwd
from typing import TYPE_CHECKING

import pytest

from oomguard.errors import LaunchError
from oomguard.runtime.preflight import (
    DEFAULT_PATH,
    Credentials,
    default_cwd,
    login_environment,
    resolve_credentials,
)
from oomguard.runtime.reaper import ExitStatus
from tests.runtime.test_launcher import IS_ROOT, Spawner, _zombie_children

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def spawned() -> Iterator[Spawner]:
    s = Spawner()
    try:
        yield s
    finally:
        s.close()
    assert _zombie_children() == []


def _env_lines(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


# --- numeric ids: ASCII digits only -------------------------------------------------------------


@pytest.mark.parametrize("user", ["²", "١٢"])
def test_non_ascii_digit_user_is_a_name_not_a_uid(user: str) -> None:
    # Before: "²".isdigit() is True and int("²") raised ValueError (a supervisor traceback);
    # "٣" ran the service as uid 3.
    with pytest.raises(LaunchError, match=r"service\.db\.user: no user"):
        resolve_credentials(user, None, service="db")


def test_non_ascii_digit_group_is_a_name_not_a_gid() -> None:
    with pytest.raises(LaunchError, match=r"service\.db\.group: no group"):
        resolve_credentials(None, "٣", service="db")


# --- the login environment ------------------------------------------------------------------


def test_login_environment_of_a_named_user() -> None:
    pw = pwd.getpwnam("nobody")
    creds = resolve_credentials("nobody", None)
    assert login_environment(creds) == {
        "PATH": DEFAULT_PATH,
        "HOME": pw.pw_dir,
        "USER": "nobody",
        "LOGNAME": "nobody",
        "SHELL": pw.pw_shell or "/bin/sh",
    }


def test_login_environment_without_user_is_oomguards_own_identity() -> None:
    pw = pwd.getpwuid(os.getuid())
    env = login_environment(None)
    assert (env["USER"], env["LOGNAME"], env["HOME"]) == (pw.pw_name, pw.pw_name, pw.pw_dir)


def test_login_environment_of_a_uid_without_passwd_entry() -> None:
    creds = Credentials(uid=4000000, gid=4000000, groups=(4000000,), home=None, name=None)
    env = login_environment(creds)
    assert (env["HOME"], env["USER"], env["LOGNAME"], env["SHELL"]) == (
        "/",
        "4000000",
        "4000000",
        "/bin/sh",
    )


def test_default_cwd_is_home_else_root(tmp_path: Path) -> None:
    home = Credentials(uid=1, gid=1, groups=(1,), home=str(tmp_path), name="x", shell="/bin/sh")
    assert default_cwd(home) == str(tmp_path)
    gone = Credentials(uid=1, gid=1, groups=(1,), home=str(tmp_path / "no"), name="x")
    assert default_cwd(gone) == "/"


def test_clean_environment_has_no_oomguard_variables(
    spawned: Spawner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: every service got oomguard's whole environment, secrets included.
    monkeypatch.setenv("OOMGUARD_TEST_SECRET", "hunter2")
    child = spawned(
        "/usr/bin/env",
        env={"A": "1"},
        extra_env={"OOMGUARD_SERVICE": "svc"},
        login_env=True,
        log="prefix",
    )
    out, status = spawned.output(child)
    assert status == ExitStatus(code=0)
    env = _env_lines(out)
    assert "OOMGUARD_TEST_SECRET" not in env
    assert set(env) == {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "A", "OOMGUARD_SERVICE"}
    assert env["PATH"] == DEFAULT_PATH


def test_config_env_overrides_login_variables(spawned: Spawner) -> None:
    child = spawned(
        "/usr/bin/env", env={"PATH": "/bin", "HOME": "/srv"}, login_env=True, log="prefix"
    )
    out, _ = spawned.output(child)
    env = _env_lines(out)
    assert (env["PATH"], env["HOME"]) == ("/bin", "/srv")


def test_home_cwd_runs_in_the_users_home(spawned: Spawner) -> None:
    # Before: the service inherited oomguard's working directory.
    child = spawned("/bin/pwd", env={}, home_cwd=True, log="prefix")
    out, _ = spawned.output(child)
    assert out.strip() == default_cwd(None)


@pytest.mark.skipif(not IS_ROOT, reason="switching users needs root")
def test_user_gets_home_user_logname(spawned: Spawner, tmp_path: Path) -> None:
    # Before: `user = ...` got no HOME, USER or LOGNAME (root's, or none, leaked through).
    pw = pwd.getpwnam("nobody")
    child = spawned(
        "/bin/sh",
        "-c",
        "pwd; echo HOME=$HOME; echo USER=$USER; echo LOGNAME=$LOGNAME",
        env={},
        user="nobody",
        login_env=True,
        home_cwd=True,
        log="prefix",
    )
    out, status = spawned.output(child)
    assert status == ExitStatus(code=0)
    lines = out.splitlines()
    env = _env_lines(out)
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == (pw.pw_dir, "nobody", "nobody")
    # nobody's home (/nonexistent) does not exist: the service runs in /.
    expected = pw.pw_dir if os.path.isdir(pw.pw_dir) else "/"
    assert lines[0] == expected


@pytest.mark.skipif(not IS_ROOT, reason="switching users needs root")
def test_home_the_user_cannot_enter_falls_back_to_root(spawned: Spawner, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)  # root's, 0700: nobody may not enter it
    os.chmod(tmp_path, 0o755)
    pw = pwd.getpwnam("nobody")
    creds_home = str(locked)
    monkey = pytest.MonkeyPatch()
    try:
        real = pwd.getpwnam

        def fake(name: str) -> pwd.struct_passwd:
            entry = real(name)
            if name != "nobody":
                return entry
            fields = list(entry)
            fields[5] = creds_home
            return pwd.struct_passwd(fields)

        monkey.setattr(pwd, "getpwnam", fake)
        child = spawned("/bin/pwd", env={}, user="nobody", home_cwd=True, log="prefix")
        out, status = spawned.output(child)
    finally:
        monkey.undo()
    assert pw.pw_uid != 0
    assert status == ExitStatus(code=0)
    assert out.strip() == "/"
