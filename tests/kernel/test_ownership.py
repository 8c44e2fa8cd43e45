"""Never harm what is not ours (issue 9), on the real kernel: a foreign cgroup named as the tree
root is refused untouched; the marker is a real xattr; survivors of a `kill -9`-ed oomguard are
stopped on the next start, so each service runs exactly once (cgroup and degraded mode); a full
disk under the state dir costs events (counted), never the loop."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from oomguard.cgroup.tree import MARK_PREFIX, MARK_TRUSTED, build
from tests.kernel.support import (
    DEADLINE,
    PYTHON,
    REPO,
    Oomguard,
    assert_no_traceback,
    cg_write,
    procs,
    py,
    rel,
    wait_until,
    write_config,
)
from tests.kernel.test_tree import three_level

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from oomguard.cgroup.fs import CgroupFS
    from oomguard.cgroup.path import CgroupPath

pytestmark = pytest.mark.kernel

#: Degraded mode, as in a container with a read-only cgroupfs: a private mount namespace in
#: which /sys/fs/cgroup is remounted read-only. "bind,ro" changes only this namespace's mount;
#: a plain "remount,ro" would make the shared superblock read-only for the whole guest.
DEGRADED_PREFIX = [
    "unshare",
    "-m",
    "--propagation",
    "private",
    "sh",
    "-c",
    'mount -o remount,bind,ro /sys/fs/cgroup && exec "$@"',
    "sh",
]


def marked(tag: str, script: str) -> list[str]:
    """A service whose processes all carry `tag` in their command line (found in /proc)."""
    return [*py(f"import sys; {script}"), tag]


def with_tag(tag: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if tag.encode() in args and state != b"Z":
            pids.append(int(entry))
    return sorted(pids)


def kill_tagged(tags: Sequence[str]) -> None:
    for tag in tags:
        for pid in with_tag(tag):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- ownership -----------------------------------------------------------------------------------


def test_a_foreign_cgroup_with_a_live_process_is_refused_untouched(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    foreign = scratch_cgroup / "foreign"
    service = foreign / "postgresql.service"
    foreign.mkdir()
    cg_write(foreign / "cgroup.subtree_control", "+memory +pids")
    service.mkdir()
    cg_write(service / "memory.max", str(256 << 20))
    victim = subprocess.Popen(["sleep", "1000"])
    try:
        cg_write(service / "cgroup.procs", str(victim.pid))
        config = write_config(
            tmp_path, {"service": {"db": {"role": "primary", "command": ["sleep", "1000"]}}}
        )
        og = Oomguard(
            ["run", str(config), "--cgroup", rel(cgroup2_mount, foreign),
             "--state-dir", str(tmp_path / "state")],
            tmp_path, mount=cgroup2_mount, root=foreign, state_dir=tmp_path / "state",
        )  # fmt: skip
        try:
            code = og.wait_exit(timeout=120)
            output = og.output()
        finally:
            # Not og.close(): that would kill the foreign tree the test must find intact.
            if og.proc.poll() is None:
                og.proc.kill()
                og.proc.wait(timeout=30)
        assert_no_traceback(output)
        assert code == 2, output
        assert rel(cgroup2_mount, foreign) in output, output
        assert str(victim.pid) in output and "sleep" in output, output
        assert "[oomguard] cgroup" in output, output
        assert victim.poll() is None
        assert procs(service) == [victim.pid]
        assert sorted(p.name for p in foreign.iterdir() if p.is_dir()) == ["postgresql.service"]
        assert (service / "memory.max").read_text().strip() == str(256 << 20)
        assert not os.listxattr(foreign)  # not even marked
    finally:
        victim.kill()
        victim.wait(timeout=30)


def test_the_tree_marker_is_a_trusted_xattr_on_cgroupfs(
    fs: CgroupFS, scratch: CgroupPath, sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    sup = sleeper()
    built = build(fs, three_level(f"{scratch}/oomguard"), sup.pid, scratch)
    value = os.getxattr(fs.dir(built.root), MARK_TRUSTED)
    assert value.startswith(MARK_PREFIX), value
    assert built.ownership == "created"
    again = build(fs, three_level(f"{scratch}/oomguard"), sup.pid, scratch)
    assert again.adopted and again.ownership == "xattr-trusted"
    assert fs.identity(built.root)[0] == os.stat(fs.dir(built.root)).st_ino


# -- survivors of kill -9 ------------------------------------------------------------------------


def _survivor_config(tags: dict[str, str]) -> dict[str, Any]:
    # "pool" forks a child and waits for it: the child is a survivor of the service's own.
    return {
        "service": {
            "db": {
                "role": "primary",
                # Exits 0 on SIGTERM, so oomguard's own status is 0 after a clean stop.
                "command": marked(
                    tags["db"],
                    "import signal, time; "
                    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); time.sleep(100000)",
                ),
            },
            "pool": {
                "command": marked(
                    tags["pool"],
                    "import os, time; os.fork(); time.sleep(100000)",
                ),
                "stop_timeout": "5s",
            },
        }
    }


def _kill9_and_restart(
    cgroup2_mount: Path,
    scratch_cgroup: Path,
    tmp_path: Path,
    prefix: Sequence[str],
) -> None:
    tags = {name: f"okt-{name}-{secrets.token_hex(4)}" for name in ("db", "pool")}
    root = scratch_cgroup / "og"
    state = tmp_path / "state"
    config = write_config(tmp_path, _survivor_config(tags))
    args = ["run", str(config), "--cgroup", rel(cgroup2_mount, root), "--state-dir", str(state)]
    try:
        first_dir = tmp_path / "first"
        first_dir.mkdir()
        first = Oomguard(
            args, first_dir, mount=cgroup2_mount, root=root, state_dir=state, prefix=prefix
        )
        first.wait_running("db", "pool")
        wait_until(lambda: len(with_tag(tags["pool"])) == 2, "pool and its child", timeout=60)
        before = {n: with_tag(t) for n, t in tags.items()}
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait_exit(timeout=60) == -signal.SIGKILL
        # The scenario: something outlived the supervisor. PR_SET_PDEATHSIG may take the
        # services' main processes with it, but never their children (it is not inherited
        # across fork): pool's child is left either way.
        time.sleep(1.0)
        left = {n: with_tag(t) for n, t in tags.items()}
        assert left["pool"], (left, before)

        second_dir = tmp_path / "second"
        second_dir.mkdir()
        with Oomguard(
            args, second_dir, mount=cgroup2_mount, root=root, state_dir=state, prefix=prefix
        ) as second:
            # state.json is the killed run's until the new one rewrites it.
            second.wait_for(
                lambda: (s := second.state()) is not None and s.get("pid") == second.pid,
                "the new supervisor's state.json",
            )
            pids = second.wait_running("db", "pool")
            wait_until(lambda: len(with_tag(tags["pool"])) == 2, "new pool's child", timeout=60)
            time.sleep(1.0)
            now = {n: with_tag(t) for n, t in tags.items()}
            output = second.output()
            code = second.stop()
        assert_no_traceback(output)
        assert code == 0, output
        # Exactly once: the new db alone, the new pool and its own child alone.
        assert now["db"] == [pids["db"]], (now, before, output)
        assert len(now["pool"]) == 2 and pids["pool"] in now["pool"], (now, before, output)
        assert not set(now["pool"]) & set(before["pool"]), (now, before)
        assert not set(now["db"]) & set(before["db"]), (now, before)
        wait_until(lambda: not any(with_tag(t) for t in tags.values()), "all stopped", timeout=60)
    finally:
        kill_tagged(list(tags.values()))


def test_after_kill9_and_a_restart_each_service_runs_once(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    _kill9_and_restart(cgroup2_mount, scratch_cgroup, tmp_path, ())


def test_after_kill9_and_a_restart_each_service_runs_once_degraded(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    _kill9_and_restart(cgroup2_mount, scratch_cgroup, tmp_path, DEGRADED_PREFIX)


# -- a full disk under the state dir ---------------------------------------------------------------


def test_a_full_state_dir_costs_events_not_the_loop(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    # A small tmpfs in the guest: the way to get a real ENOSPC.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(state)], check=True)
    try:
        os.chmod(state, 0o755)
        # A sidecar that dies every ~0.5 s: each exit and restart is an event to write.
        config = write_config(
            tmp_path,
            {
                "service": {
                    "db": {"role": "primary", "command": PRIMARY},
                    "flaky": {
                        "command": ["sh", "-c", "sleep 0.3; exit 3"],
                        "backoff_initial": "0.2s",
                        "backoff_max": "0.2s",
                        "max_restarts": 1000,
                    },
                }
            },
        )
        root = scratch_cgroup / "og"
        with Oomguard(
            ["run", str(config), "--cgroup", rel(cgroup2_mount, root), "--state-dir", str(state)],
            tmp_path, mount=cgroup2_mount, root=root, state_dir=state,
        ) as og:  # fmt: skip
            og.wait_running("db")
            _fill(state / "filler")
            og.wait_for(
                lambda: "event_log_write_failed" in og.output(), "the write failure warning"
            )
            spawned = og.output().count("spawned prog=oomguard service=flaky")
            # The loop keeps running on a full disk: the sidecar is still restarted.
            og.wait_for(
                lambda: og.output().count("spawned prog=oomguard service=flaky") >= spawned + 3,
                "restarts while the disk is full",
            )
            os.unlink(state / "filler")
            after = og.wait_for(
                lambda: (s := og.state()) is not None and s.get("event_log_dropped", 0) > 0 and s,
                "state.json with the drop count once there is space again",
            )
            output = og.output()
            code = og.stop()
        assert_no_traceback(output)
        assert code == 0, output
        assert after["event_log_dropped"] > 0
        # Once per burst, not once per lost line.
        assert output.count("event_log_write_failed") <= output.count("event_log_recovered") + 1
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


PRIMARY = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"]


def _fill(path: Path) -> None:
    """Write until the filesystem is full (ENOSPC), keeping what was written."""
    try:
        with open(path, "wb") as f:
            while True:
                f.write(b"x" * 4096)
                f.flush()
    except OSError:
        pass


# -- exec's own state dir ------------------------------------------------------------------------


def test_parallel_execs_get_their_own_state_dirs_and_remove_them(
    cgroup2_mount: Path, scratch_cgroup: Path
) -> None:
    base = Path("/run/oomguard")
    before = set(base.glob("exec-*")) if base.exists() else set()
    runs = [
        subprocess.Popen(
            [
                PYTHON,
                "-m",
                "oomguard",
                "exec",
                "--cgroup",
                rel(cgroup2_mount, scratch_cgroup / n),
                "--memory-max",
                "64M",
                "--",
                "sh",
                "-c",
                "sleep 2; exit 7",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        for n in ("a", "b")
    ]
    # Two Python start-ups side by side on a 1-vCPU TCG guest take ~90 s each.
    outputs = [r.communicate(timeout=3 * DEADLINE)[0].decode(errors="replace") for r in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert_no_traceback(output)
        assert run.returncode == 7, output
        assert "in use" not in output, output
    assert set(base.glob("exec-*")) == before
