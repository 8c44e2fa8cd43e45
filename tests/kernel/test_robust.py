"""Never freeze, never die of a signal, never leave services behind (issue 9), on a real kernel.

* A stalled stdout reader (``oomguard run … | sleep``) with ``log = "prefix"``: the loop keeps
  running, an OOM-killed sidecar is still restarted, and SIGTERM still stops everything.
* SIGUSR1, SIGUSR2 and SIGALRM to a running (non-PID-1) oomguard: it survives, forwards them to
  the primary, and still supervises (an OOM-killed sidecar is restarted afterwards).
* ``kill -9`` of oomguard: each service's main process gets its stop signal from the kernel
  (PR_SET_PDEATHSIG) and exits.
* 200 idle connections to the metrics endpoint of a running supervisor: its thread count stays
  bounded and a scrape still answers.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.kernel.pressure_support import free_port, scrape, shared_budget, value, wait_beating
from tests.kernel.pressure_support import workload as fast_workload
from tests.kernel.support import (
    assert_no_traceback,
    procs,
    sh,
    start_run,
    wait_until,
    workload,
)

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.kernel

#: A primary that stops cleanly on SIGTERM (exit 0), so oomguard's own status is 0.
PRIMARY = sh("trap 'exit 0' TERM; while :; do sleep 0.1; done")
#: 2 MB of 100-byte lines at once (30x a pipe plus oomguard's 256 KiB buffer), then quiet.
CHATTY = sh("head -c 2000000 /dev/zero | tr '\\0' x | fold -w 99; exec sleep 100000")


def test_a_stalled_stdout_reader_freezes_nothing(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    config = {
        "service": {
            "db": {"role": "primary", "command": PRIMARY},
            "chatty": {"command": CHATTY, "log": "prefix"},
            "leaky": {
                "command": workload("leaky"),
                "log": "prefix",
                "memory_max": "32M",
                "env": {"LEAK_MB_S": "80", "LEAK_START_MB": "16"},
                "backoff_initial": "0.5s",
                "backoff_max": "1s",
                "start_secs": "0.5s",
            },
        }
    }
    # oomguard's stdout is a pipe that nobody reads: the test holds the read end and never
    # reads it, like `oomguard run … | sleep 1000`.
    stalled_r, stalled_w = os.pipe()
    try:
        with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config, stdout=stalled_w) as og:
            os.close(stalled_w)
            stalled_w = -1
            og.wait_running("db")
            # chatty's 2 MB cannot all have gone out: lines were dropped and reported.
            dropped = og.wait_event("output_dropped", "chatty")
            # The loop still reacts: leaky is OOM-killed and restarted, twice.
            og.wait_event("restart", "leaky", count=2, where=lambda e: e["reason"] == "oom_kill")
            og.wait_event("spawned", "leaky", count=3)
            code = og.stop()
            left = procs(og.root) if og.root.exists() else []
            output = og.output()
    finally:
        os.close(stalled_r)
        if stalled_w >= 0:
            os.close(stalled_w)
    assert_no_traceback(output)
    assert code == 0, output
    assert left == [], left
    assert dropped[0]["stream"] == "stdout" and dropped[0]["lines"] > 0, dropped
    assert og.events("shutdown"), og.context()


def recorder(name: str, log: Path, *sigs: str) -> list[str]:
    """A shell service that appends "<SIG> <name>" to `log` for each of `sigs` and keeps running,
    except on TERM and INT, after which it exits 0."""
    traps = [f"trap 'echo \"{sig} {name}\" >> {log}' {sig}" for sig in sigs]
    for sig in ("TERM", "INT"):
        traps.append(f"trap 'echo \"{sig} {name}\" >> {log}; exit 0' {sig}")
    return sh("\n".join([*traps, f'echo "ready {name}" >> {log}', "while :; do sleep 0.1; done"]))


def has_line(path: Path, line: str) -> Callable[[], bool]:
    return lambda: line in lines(path)


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def test_usr1_usr2_alrm_are_forwarded_and_oomguard_keeps_supervising(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    log = tmp_path / "signals.log"
    config = {
        "service": {
            "db": {"role": "primary", "command": recorder("db", log, "USR1", "USR2", "ALRM")},
            "leaky": {
                "command": workload("leaky"),
                "memory_max": "32M",
                "env": {"LEAK_MB_S": "80", "LEAK_START_MB": "16"},
                "backoff_initial": "0.5s",
                "backoff_max": "1s",
                "start_secs": "0.5s",
            },
        }
    }
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        db_pid = og.wait_running("db")["db"]
        wait_until(lambda: "ready db" in lines(log), "db's traps installed")
        for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM):
            og.signal(sig)
            wait_until(has_line(log, f"{sig.name[3:]} db"), f"{sig.name} forwarded to db")
        assert og.proc.poll() is None, og.context()  # it survived all three
        # ...and still supervises: leaky is OOM-killed and restarted after the signals.
        og.wait_event("restart", "leaky", count=1, where=lambda e: e["reason"] == "oom_kill")
        state = og.service_state("db")
        code = og.stop()
        output = og.output()
    assert_no_traceback(output)
    assert code == 0, output
    assert state is not None and state["pid"] == db_pid and state["restarts"] == 0, state
    assert lines(log)[:4] == ["ready db", "USR1 db", "USR2 db", "ALRM db"], lines(log)
    for name in ("SIGUSR1", "SIGUSR2", "SIGALRM"):
        assert f"forward prog=oomguard signal={name} service=db sent=true" in output, output


def test_a_killed_oomguard_takes_its_services_with_it(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    log = tmp_path / "signals.log"
    config = {
        "service": {
            "db": {"role": "primary", "command": recorder("db", log)},
            # PostgreSQL's fast shutdown: its stop signal is SIGINT, and so is its death signal.
            "pg": {"command": recorder("pg", log), "stop_signal": "SIGINT"},
        }
    }
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        pids = og.wait_running("db", "pg")
        wait_until(
            lambda: {"ready db", "ready pg"} <= set(lines(log)), "both services' traps installed"
        )
        og.signal(signal.SIGKILL)
        og.wait_exit()

        def gone() -> bool:
            return all(not os.path.exists(f"/proc/{pid}") for pid in pids.values())

        wait_until(gone, "both services to exit after oomguard was killed")
        # What is left in the slices is at most a `sleep 0.1` the shells had started.
        wait_until(
            lambda: not procs(og.root / "db") and not procs(og.root / "pg"), "the slices to empty"
        )
        seen = set(lines(log))
    assert {"TERM db", "INT pg"} <= seen, seen


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads: line for pid {pid}")


def test_200_idle_metrics_connections_cost_no_threads_and_a_scrape_still_answers(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    """A running supervisor's exporter, not a bare server: 200 clients that connect and say
    nothing. Before, each held a thread for as long as it stayed (200 connections, 202
    threads); now silent connections wait in one selector thread, so oomguard keeps at most
    1 (main) + 1 (selector) + MAX_WORKERS threads, and a scrape among them still answers."""
    from oomguard.observe.metrics import MAX_WORKERS

    beat = tmp_path / "heartbeat"
    port = free_port()
    config = shared_budget(
        beat,
        {
            "steady": {
                "command": fast_workload("steady"),
                "criticality": 80,
                "env": {"STEADY_MB": "8"},
            }
        },
        metrics_listen=f"127.0.0.1:{port}",
    )
    url = f"http://127.0.0.1:{port}/metrics"
    idle: list[socket.socket] = []
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        pids = og.wait_running("db", "steady")
        wait_beating(og, beat, pids["db"])
        assert "oomguard" in Path(f"/proc/{og.pid}/cmdline").read_text()
        try:
            for _ in range(200):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=30))
            time.sleep(1.0)  # let the server take them all in
            held = _threads(og.pid)
            samples = scrape(url)
            after_scrape = _threads(og.pid)
        finally:
            for s in idle:
                s.close()
        assert og.service_state("db") is not None
        code = og.stop()
        output = og.output()

    assert_no_traceback(output)
    assert code == 0, output
    assert held <= 2 + MAX_WORKERS, held
    assert after_scrape <= 2 + MAX_WORKERS, after_scrape
    assert value(samples, "oomguard_service_up", service="db") == 1
    assert value(samples, "oomguard_service_up", service="steady") == 1
