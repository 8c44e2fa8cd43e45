"""The running daemon on a real kernel (issue 10, acceptance 2): `run` validates with pydantic and
click, then the same pid becomes the daemon (cli/daemon.py), which has neither loaded.

Proven from outside the process, two ways: while it supervises, /proc/<pid>/maps maps no
pydantic_core extension (pydantic's compiled core: loaded by any pydantic import); and when it
exits, the module list it writes on request (OOMGUARD_DEBUG_MODULES, sys.modules at exit, which
holds every module it ever imported: modules are never unloaded) has no pydantic and no click.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.kernel.support import DEADLINE, assert_no_traceback, start_run

pytestmark = pytest.mark.kernel

CONFIG = {
    "oomguard": {"memory_max": "512M"},
    "slice": {"sidecars": {"memory_max": "128M"}},
    "service": {
        "db": {"command": ["sleep", "600"], "role": "primary", "memory_high": "200M"},
        "side": {"command": ["sleep", "600"], "slice": "sidecars"},
    },
}
FORBIDDEN = ("pydantic", "pydantic_core", "click")


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def test_the_running_daemon_has_neither_pydantic_nor_click(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    modules = tmp_path / "modules"
    env = {"OOMGUARD_DEBUG_MODULES": str(modules)}
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, CONFIG, env=env) as og:
        pids = og.wait_running("db", "side")
        # The same pid that was started as `python -m oomguard run`, now the daemon, and the
        # parent of the services it started.
        cmdline = Path(f"/proc/{og.pid}/cmdline").read_bytes().split(b"\0")
        assert b"--plan-fd" in cmdline and b"run" in cmdline, cmdline
        assert {_ppid(pid) for pid in pids.values()} == {og.pid}
        maps = _maps(og.pid)
        assert "python" in maps  # the interpreter itself is listed: the check can see .so files
        assert "pydantic_core" not in maps and "_pydantic_core" not in maps
        print(f"daemon pid {og.pid} VmRSS {_vm_rss_kib(og.pid)} KiB")
        # `run` exits with the primary's status: sleep dies of the SIGTERM it is stopped with.
        assert og.stop() == 128 + signal.SIGTERM, og.context()
        assert_no_traceback(og.output())
    names = modules.read_text().splitlines()
    assert "oomguard.runtime.supervisor" in names  # the list is the supervising process's
    assert [n for n in names if n.split(".")[0] in FORBIDDEN] == []
    assert [n for n in names if n.startswith("oomguard.config")] == []


def test_an_error_found_by_the_daemon_exits_2_with_one_line(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    # The config and the options are valid; the state dir is group-writable, which only the
    # daemon finds out (it opens the state dir).
    (tmp_path / "state").mkdir()
    (tmp_path / "state").chmod(0o775)
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, CONFIG) as og:
        # A slow start (two interpreter starts under TCG on a loaded host) is not a hang.
        assert og.wait_exit(timeout=2 * DEADLINE) == 2, og.context()
        err = og.stderr()
    assert "oomguard: error:" in err and "state" in err, err
    assert_no_traceback(err)
