"""Never freeze, never die of a signal, never leave services behind (issue 9), on a real kernel.

* A stalled stdout reader (``oomguard run … | sleep``) with ``log = "prefix"``: the loop keeps
  running, an OOM-killed sidecar is still restarted, and SIGTERM still stops everything.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from tests.kernel.support import (
    assert_no_traceback,
    procs,
    sh,
    start_run,
    workload,
)

if TYPE_CHECKING:
    from pathlib import Path

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
