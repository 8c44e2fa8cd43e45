"""Bad situations give clear errors, not crashes or hot loops (issue 3, acceptance 7).

One oomguard run holds every bad service at once, next to a healthy primary that must not be
disturbed by any of them:

* ghost:     its binary does not exist;
* nobody:    its user does not exist;
* vanish:    its slice is removed from outside while oomguard runs (procs killed, rmdir);
* stubborn:  ignores SIGTERM, so the stop has to end in cgroup.kill;
* leaver:    exits on SIGTERM but leaves a SIGTERM-ignoring child in its slice, which would make
             the slice's rmdir fail with EBUSY at teardown unless oomguard kills it first.

A service that exits at once (backoff grows, then FATAL) is in test_supervisor.py.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.kernel.support import (
    assert_no_traceback,
    cg_write,
    procs,
    sh,
    start_run,
    wait_until,
)

if TYPE_CHECKING:
    from pathlib import Path

    from tests.kernel.support import Oomguard

pytestmark = pytest.mark.kernel

GHOST = "/nonexistent/bin/ghost-daemon"
NO_USER = "okt-no-such-user"

FAILING: dict[str, Any] = {
    "backoff_initial": "0.2s",
    "backoff_max": "0.4s",
    "max_restarts": 3,
}

#: A primary that stops cleanly on SIGTERM (exit 0), so oomguard's own status is 0.
PRIMARY = sh("trap 'exit 0' TERM; while :; do sleep 0.1; done")


def config() -> dict[str, Any]:
    return {
        "service": {
            "db": {"role": "primary", "command": PRIMARY},
            "ghost": {"command": [GHOST, "--serve"], **FAILING},
            "nobody": {"command": ["sleep", "100000"], "user": NO_USER, **FAILING},
            # A long backoff: the test removes the slice while the service is down.
            "vanish": {"command": ["sleep", "100000"], "backoff_initial": "5s"},
            "stubborn": {
                "command": sh("trap '' TERM; while :; do sleep 0.1; done"),
                "stop_timeout": "1s",
            },
            "leaver": {
                "command": sh(
                    "(trap '' TERM; exec sleep 100000) & trap 'exit 0' TERM; "
                    "while :; do sleep 0.1; done"
                ),
                "stop_timeout": "5s",
            },
        }
    }


def _remove_slice_from_outside(og: Oomguard) -> None:
    """What an operator's stray `cgroup.kill` + `rmdir` does: the service dies, its cgroup goes."""
    slice_dir = og.cgroup("vanish")
    cg_write(slice_dir / "cgroup.kill", "1")
    wait_until(
        lambda: "populated 0" in (slice_dir / "cgroup.events").read_text(),
        "the vanish slice to empty",
    )
    os.rmdir(slice_dir)


@pytest.mark.slow
def test_bad_services_give_clear_errors_no_hot_loops_and_a_clean_teardown(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config()) as og:
        pids = og.wait_running("db", "vanish", "stubborn", "leaver")
        # Both failing services give up (FATAL) after max_restarts, without a tight loop.
        og.wait_event("fatal", "ghost")
        og.wait_event("fatal", "nobody")
        # The slice removed from outside: oomguard notices, recreates it, restarts into it.
        _remove_slice_from_outside(og)
        og.wait_event("slice_vanished", "vanish")
        new_pid = og.wait_event("spawned", "vanish", count=2)[-1]["pid"]
        og.wait_running("vanish")
        in_slice = procs(og.cgroup("vanish"))
        # Still no further attempts of the FATAL ones a while later: no hot loop.
        time.sleep(1.0)
        attempts = {n: len(og.events("spawn_failed", n)) for n in ("ghost", "nobody")}
        db_state = og.service_state("db")
        code = og.stop()
        output = og.output()
        left = sorted(p.name for p in og.root.iterdir() if p.is_dir())

    assert_no_traceback(output)
    assert code == 0, output
    # The primary never noticed.
    assert db_state is not None and db_state["pid"] == pids["db"], db_state
    assert db_state["restarts"] == 0

    # Missing binary: one clear line naming the service and the path, with a hint.
    ghost_errors = [ln for ln in output.splitlines() if "spawn_failed" in ln and "ghost" in ln]
    assert ghost_errors, output
    assert "service=ghost" in ghost_errors[0] and GHOST in ghost_errors[0], ghost_errors[0]
    assert "hint=" in ghost_errors[0], ghost_errors[0]
    # No user: named in the error.
    user_errors = [ln for ln in output.splitlines() if "spawn_failed" in ln and NO_USER in ln]
    assert user_errors and "service=nobody" in user_errors[0], output

    # Capped attempts, spaced by the backoff: 1 start + max_restarts=3 restarts, then FATAL.
    for name in ("ghost", "nobody"):
        assert attempts[name] == 4, (name, attempts)
        evs = og.events(service=name)
        failed = [e for e in evs if e["kind"] == "spawn_failed"]
        assert failed[-1]["ts"] - failed[0]["ts"] >= 0.2 + 0.4 + 0.4 - 0.3, failed
        assert [e["delay"] for e in evs if e["kind"] == "backoff"] == [0.2, 0.4, 0.4]
        assert [e["kind"] for e in evs][-1] == "fatal"

    # The vanished slice was recreated and the service restarted inside it.
    assert new_pid != pids["vanish"]
    assert in_slice == [new_pid], (in_slice, new_pid)
    assert og.events("slice_vanished", "vanish")

    # Stop: the SIGTERM-ignoring one was killed by cgroup.kill after its stop_timeout; the
    # leaver's left-behind child was killed when its main process exited.
    kills = {(e["service"], e["reason"]) for e in og.events("kill")}
    assert ("stubborn", "stop_timeout") in kills, kills
    assert ("leaver", "main_exited") in kills, kills
    # Teardown removed every slice (no EBUSY left over); only oomguard's own leaf remains.
    assert left == ["supervisor"], left
    assert "teardown_failed" not in output
