"""A service's environment and working directory on a real kernel: a config's service starts
clean (the config's env over its user's login variables, in its home or /), never with
oomguard's own environment."""

from __future__ import annotations

import os
import pwd
from typing import TYPE_CHECKING

import pytest

from tests.kernel.support import assert_no_traceback, kill_tree, rel, run_once, write_config

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.kernel

#: The service reports on oomguard's stdout (log = "inherit"): no file the user must reach.
REPORT = 'env | sed "s/^/env:/"; echo "env:(pwd)=$(pwd)"'


def _run(mount: Path, scratch: Path, tmp_path: Path, **service: object) -> dict[str, str]:
    config = {
        "service": {
            "db": {
                "role": "primary",
                "restart": "never",
                "command": ["/bin/sh", "-c", REPORT],
                **service,
            }
        }
    }
    path = write_config(tmp_path, config)
    try:
        proc = run_once(
            [
                "run",
                str(path),
                "--cgroup",
                rel(mount, scratch / "og"),
                "--state-dir",
                str(tmp_path / "state"),
            ],
            env={"OOMGUARD_TEST_SECRET": "hunter2"},
        )
    finally:
        kill_tree(scratch)
    assert_no_traceback(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stderr
    return dict(
        line.removeprefix("env:").split("=", 1)
        for line in proc.stdout.splitlines()
        if line.startswith("env:") and "=" in line
    )


def test_a_service_as_a_user_gets_its_login_variables_and_no_secrets(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    pw = pwd.getpwnam("nobody")
    env = _run(cgroup2_mount, scratch_cgroup, tmp_path, user="nobody")
    assert "OOMGUARD_TEST_SECRET" not in env
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == (pw.pw_dir, "nobody", "nobody")
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert env["OOMGUARD_SERVICE"] == "db"
    assert env["(pwd)"] == (pw.pw_dir if os.path.isdir(pw.pw_dir) else "/")


def test_inherit_env_passes_oomguards_environment(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    env = _run(cgroup2_mount, scratch_cgroup, tmp_path, inherit_env=True)
    assert env["OOMGUARD_TEST_SECRET"] == "hunter2"
    home = pwd.getpwuid(os.getuid()).pw_dir
    assert env["(pwd)"] == (home if os.path.isdir(home) else "/")
