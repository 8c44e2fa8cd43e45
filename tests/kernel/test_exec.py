"""`oomguard exec`, the wrapper, on a real kernel (issue 3, acceptance 6): a command over its
memory.max is really OOM-killed; oomguard says so in one line and exits 137. Otherwise it exits
with the command's own status."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from oomguard.cli.exec_ import _service_name
from tests.kernel.support import (
    PYTHON,
    REPO,
    assert_no_traceback,
    kill_tree,
    read_jsonl,
    rel,
    run_once,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.kernel

#: 200 MB, every page touched (an untouched bytearray is mapped zero pages and is not charged).
ALLOCATE_200M = "held = [bytearray(b'x' * (1 << 20)) for _ in range(200)]; print('survived')"


def _exec(mount: Path, scratch: Path, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    root = scratch / "og"
    try:
        proc = run_once(
            [
                "exec",
                "--cgroup",
                rel(mount, root),
                "--state-dir",
                str(tmp_path / "state"),
                *args,
            ]
        )
    finally:
        kill_tree(scratch)
    return proc.returncode, proc.stdout, proc.stderr


def test_oom_killed_command_gets_one_clear_line_and_137(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    code, out, err = _exec(
        cgroup2_mount,
        scratch_cgroup,
        tmp_path,
        "--memory-max",
        "64M",
        "--",
        PYTHON,
        "-c",
        ALLOCATE_200M,
    )
    assert_no_traceback(out + err)
    assert "survived" not in out
    # The service is named after the command's basename (python3, or python in a venv).
    name = _service_name(PYTHON)
    lines = [ln for ln in err.splitlines() if ln.startswith("oomguard: ")]
    assert lines == [
        f"oomguard: {name} was killed by the OOM killer (slice og/{name}, memory.max 64M, peak 64M)"
    ], err
    assert code == 137, err
    # The event log saw the kernel's counter rise in the command's own slice.
    kills = [e for e in read_jsonl(tmp_path / "state" / "events.jsonl") if e["kind"] == "oom_kill"]
    assert kills, "no oom_kill event in events.jsonl"
    assert {e["slice"] for e in kills} == {rel(cgroup2_mount, scratch_cgroup / "og" / name)}


def test_exit_status_is_the_commands(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    code, out, err = _exec(
        cgroup2_mount,
        scratch_cgroup,
        tmp_path,
        "--memory-max",
        "64M",
        "--",
        "/bin/sh",
        "-c",
        "echo hello from $OOMGUARD_SERVICE in $OOMGUARD_SLICE; exit 5",
    )
    assert_no_traceback(out + err)
    assert code == 5, err
    assert re.search(r"hello from sh in /\S+/og/sh$", out, re.M), out
    assert "OOM killer" not in err


def test_exec_keeps_the_shells_environment_and_directory(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    # `exec` wraps a command typed in a shell: unlike a config's services, it keeps the
    # shell's environment and working directory, and its limit is enforced as usual.
    code, out, err = _exec_env(
        cgroup2_mount,
        scratch_cgroup,
        tmp_path,
        "--memory-max",
        "64M",
        "--",
        "/bin/sh",
        "-c",
        'echo "var=$OOMGUARD_TEST_VAR"; echo "pwd=$(pwd)"; cat /proc/self/cgroup',
    )
    assert_no_traceback(out + err)
    assert code == 0, err
    assert "var=from-the-shell" in out
    assert f"pwd={REPO}" in out
    assert re.search(r"^0::/\S+/og/sh$", out, re.M), out


def _exec_env(mount: Path, scratch: Path, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    root = scratch / "og"
    try:
        proc = run_once(
            ["exec", "--cgroup", rel(mount, root), "--state-dir", str(tmp_path / "state"), *args],
            env={"OOMGUARD_TEST_VAR": "from-the-shell"},
        )
    finally:
        kill_tree(scratch)
    return proc.returncode, proc.stdout, proc.stderr
