"""A real `python -m oomguard run` on the host, in degraded mode (no slice tree, so no cgroup is
ever written): it survives SIGUSR1/SIGUSR2/SIGALRM, forwards them to the primary, and when it is
killed with SIGKILL its services get their stop signals from the kernel (PR_SET_PDEATHSIG).

Runs only where oomguard would degrade by itself (e.g. a host whose memory controller is on
cgroup v1); elsewhere the real-kernel tests (tests/kernel/test_robust.py) cover the same.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from oomguard.cli._supervise import degrade_reason
from oomguard.config.model import Config

if TYPE_CHECKING:
    from collections.abc import Callable

REPO = Path(__file__).resolve().parents[2]


def recorder(name: str, log: Path) -> list[str]:
    traps = [f"trap 'echo \"{s} {name}\" >> {log}' {s}" for s in ("USR1", "USR2", "ALRM")]
    traps += [f"trap 'echo \"{s} {name}\" >> {log}; exit 0' {s}" for s in ("TERM", "INT")]
    body = "\n".join([*traps, f'echo "ready {name}" >> {log}', "while :; do sleep 0.1; done"])
    return ["/bin/sh", "-c", body]


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def has_line(path: Path, line: str) -> Callable[[], bool]:
    return lambda: line in lines(path)


def running_pids(state: Path) -> list[int]:
    import json

    def ready() -> bool:
        try:
            svcs = json.loads(state.read_text())["services"]
        except (FileNotFoundError, ValueError, KeyError):
            return False
        return all(s.get("pid") for s in svcs.values())

    wait(ready, "state.json with both pids")
    return [int(s["pid"]) for s in json.loads(state.read_text())["services"].values()]


def wait(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False


def toml(config: dict[str, dict[str, object]]) -> str:
    import json

    out = []
    for table, body in config.items():
        out.append(f"[{table}]")
        out += [f"{k} = {json.dumps(v)}" for k, v in body.items()]
    return "\n".join(out) + "\n"


def test_degraded_run_survives_forwards_and_takes_its_services_down_when_killed(
    tmp_path: Path,
) -> None:
    log = tmp_path / "signals.log"
    config: dict[str, dict[str, object]] = {
        "oomguard": {"state_dir": str(tmp_path / "state")},
        "service.db": {"role": "primary", "command": recorder("db", log)},
        "service.pg": {"command": recorder("pg", log), "stop_signal": "SIGINT"},
    }
    path = tmp_path / "og.toml"
    path.write_text(toml(config))
    from oomguard.config.compile import compile_plan
    from oomguard.config.load import load_config

    if degrade_reason(compile_plan(load_config(path, {}))) is None:
        pytest.skip("oomguard would build a slice tree on this host: tests/kernel covers it")
    assert isinstance(load_config(path, {}), Config)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    err = (tmp_path / "stderr").open("wb")
    og = subprocess.Popen(
        [sys.executable, "-m", "oomguard", "run", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=err,
        stderr=err,
        env=env,
        cwd=REPO,
    )
    try:
        wait(lambda: {"ready db", "ready pg"} <= set(lines(log)), "both services up")
        for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM):
            og.send_signal(sig)
            wait(has_line(log, f"{sig.name[3:]} db"), f"{sig.name} forwarded")
        assert og.poll() is None  # before: killed by SIGUSR1's default action (rc 138)
        text = (tmp_path / "stderr").read_text()
        assert "forward prog=oomguard signal=SIGUSR1 service=db sent=true" in text, text
        pids = running_pids(tmp_path / "state" / "state.json")
        assert len(pids) == 2 and all(alive(p) for p in pids)
        og.kill()
        og.wait(timeout=30)
        # PR_SET_PDEATHSIG: each service gets its own stop signal and exits.
        wait(lambda: {"TERM db", "INT pg"} <= set(lines(log)), "both services stopped")
        wait(lambda: not any(alive(p) for p in pids), "both services gone")
    finally:
        if og.poll() is None:
            og.kill()
            og.wait()
        err.close()
        _kill_leftovers(log)


def _kill_leftovers(log: Path) -> None:
    """On failure (e.g. an oomguard that died of SIGUSR1), its services would outlive the test:
    stop every service shell of this test, recognised by `log` (a path of the test's own
    tmp_path) on its command line."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(log).encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def test_stalled_stdout_and_stderr_readers_never_freeze_a_degraded_run(tmp_path: Path) -> None:
    # `oomguard run … 2>&1 | sleep`: nobody reads either stream. Before, the loop blocked in a
    # pipe write of the prefixed output and SIGTERM was never acted on.
    # The `:` names tmp_path, so that a failed run's leftovers can be found and stopped.
    chatty = f": {tmp_path}; head -c 2000000 /dev/zero | tr '\\0' x | fold -w 99; "
    chatty += "while :; do sleep 0.1; done"
    config: dict[str, dict[str, object]] = {
        "oomguard": {"state_dir": str(tmp_path / "state")},
        "service.db": {"role": "primary", "command": recorder("db", tmp_path / "db.log")},
        "service.chatty": {"command": ["/bin/sh", "-c", chatty], "log": "prefix"},
    }
    path = tmp_path / "og.toml"
    path.write_text(toml(config))
    from oomguard.config.compile import compile_plan
    from oomguard.config.load import load_config

    if degrade_reason(compile_plan(load_config(path, {}))) is None:
        pytest.skip("oomguard would build a slice tree on this host: tests/kernel covers it")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r, w = os.pipe()
    og = subprocess.Popen(
        [sys.executable, "-m", "oomguard", "run", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=w,
        stderr=w,
        env=env,
        cwd=REPO,
    )
    os.close(w)
    events = tmp_path / "state" / "events.jsonl"
    try:
        running_pids(tmp_path / "state" / "state.json")
        time.sleep(2)  # chatty's 2 MB are out by now: far more than the pipe takes
        og.send_signal(signal.SIGTERM)
        assert og.wait(timeout=30) == 0
        text = events.read_text()
        assert '"kind":"shutdown"' in text and '"kind":"output_dropped"' in text
    finally:
        if og.poll() is None:
            og.kill()
            og.wait()
        os.close(r)
        _kill_leftovers(tmp_path)
