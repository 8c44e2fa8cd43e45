"""oomguard as PID 1 of a new pid namespace, like a container entrypoint (issue 3, acceptance 5).

`unshare --pid --fork --mount-proc python -m oomguard run CONFIG`: oomguard is PID 1 there, so
every orphan in the namespace is reparented to it and nobody else will ever reap them; PID 1 also
gets no default action for SIGTERM, so without a handler `docker stop` would do nothing.

The primary itself checks the namespace from the inside (its /proc is the namespace's): it makes
100 orphans, watches them get reaped, and reports any zombie left. Then SIGTERM to oomguard must
arrive at the primary as its stop_signal (SIGINT here), and oomguard (so the whole container)
must exit with the primary's status.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from typing import TYPE_CHECKING

import pytest

from tests.kernel.support import (
    PYTHON,
    assert_no_traceback,
    py,
    start_run,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.kernel

ORPHANS = 100

#: The primary. argv[1]: a directory for its reports; argv[2]: how many orphans to make.
PRIMARY = r"""
import json, os, signal, subprocess, sys, time
out = sys.argv[1]

def on_int(signum, frame):
    with open(os.path.join(out, "stopped"), "w") as f:
        f.write(signal.Signals(signum).name + "\n")
    sys.exit(7)

signal.signal(signal.SIGINT, on_int)

def scan():
    # Every process in this pid namespace: how many orphaned `sleep`s PID 1 holds, how many
    # zombies exist anywhere.
    orphans, zombies = [], 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue  # exited meanwhile
        state, ppid = fields["State"].split()[0], int(fields["PPid"])
        zombies += state == "Z"
        if fields["Name"].strip() == "sleep" and ppid == 1:
            orphans.append(int(pid))
    return len(orphans), zombies, orphans

# Each `( ... &)` subshell starts a sleep and exits at once: the sleep is orphaned to PID 1.
subprocess.run(["sh", "-c", "for i in $(seq $1); do (sleep 1000 &) ; done", "sh", sys.argv[2]])
report = {"pid": os.getpid(), "pid1": open("/proc/1/comm").read().strip()}
report["orphans_at_start"], _, pids = scan()
# Now they die at once; only PID 1 can reap them.
for pid in pids:
    os.kill(pid, signal.SIGKILL)
deadline = time.monotonic() + 90
while True:
    orphans, zombies, _ = scan()
    if (orphans == 0 and zombies == 0) or time.monotonic() > deadline:
        break
    time.sleep(0.2)
report.update(orphans_left=orphans, zombies=zombies)
with open(os.path.join(out, "scan.tmp"), "w") as f:
    json.dump(report, f)
os.rename(os.path.join(out, "scan.tmp"), os.path.join(out, "scan.json"))
while True:
    signal.pause()
"""


def _child_of(pid: int) -> int | None:
    """The (only) child of `pid`: unshare --fork's child is oomguard."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            return int(entry)
    return None


@pytest.mark.slow
def test_pid1_reaps_orphans_forwards_sigterm_as_stop_signal_and_exits_with_its_status(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    unshare = shutil.which("unshare")
    assert unshare is not None, "util-linux unshare is needed for this test"
    reports = tmp_path / "reports"
    reports.mkdir()
    config = {
        "service": {
            "app": {
                "role": "primary",
                "command": [*py(PRIMARY), str(reports), str(ORPHANS)],
                "stop_signal": "SIGINT",
                "restart": "never",
            }
        }
    }
    scan_file = reports / "scan.json"
    with start_run(
        tmp_path,
        cgroup2_mount,
        scratch_cgroup,
        config,
        prefix=[unshare, "--pid", "--fork", "--mount-proc"],
    ) as og:
        og.wait_for(scan_file.exists, "the primary's zombie scan", timeout=240)
        report = json.loads(scan_file.read_text())
        oomguard_pid = og.wait_for(lambda: _child_of(og.pid), "oomguard under unshare")
        state = og.state()
        # SIGTERM to oomguard itself (PID 1 inside; from outside the namespace it is only
        # delivered because oomguard installed a handler).
        os.kill(oomguard_pid, signal.SIGTERM)
        code = og.wait_exit()
        output = og.output()

    assert_no_traceback(output)
    # oomguard is the namespace's init (comm: the interpreter's basename, at most 15 chars).
    assert report["pid1"] == os.path.basename(PYTHON)[:15], report
    assert report["orphans_at_start"] == ORPHANS, report
    assert report["orphans_left"] == 0 and report["zombies"] == 0, report
    assert state is not None and state["pid"] == 1, state
    assert (reports / "stopped").read_text() == "SIGINT\n"
    assert code == 7, output  # the primary's status, through oomguard and unshare
    stop = og.events("stop", "app")
    assert stop and stop[0]["signal"] == signal.SIGINT, stop
    exits = og.events("exit", "app")
    assert [e["code"] for e in exits] == [7], exits
