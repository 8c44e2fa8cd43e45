"""Fast release on a real kernel: process_mrelease after a SIGKILL gives the memory back.

process_mrelease can only help while the killed process has not started its own exit: once it
runs, it drops its memory map first (then the call answers ESRCH, "gone") and frees the memory
itself, at its own pace. On an idle CPU a SIGKILLed process at the killer's priority preempts the
killer at once (its sleep earned it the credit), so the call comes too late; a process with less
CPU than the killer (a lower priority, a busy machine) waits, and the call frees its memory in the
killer's context before it returns.

1. The syscall: a process holding ~200 MiB in a cgroup is killed with cgroup.kill, at nice 0 and
   at nice 19, with process_mrelease right after the kill and without; the killer runs the kill
   and the call at SCHED_FIFO, so the killed process cannot run in between (the case the call is
   for; at the same priority on an idle CPU it would preempt the killer). Printed side by side
   (``python3 tools/ktest.py -k mrelease -s``): the time until the cgroup's memory.current is
   near 0. Figures only, no timed assertion.
2. Through oomguard: a sidecar one of whose workers the kernel OOM-kills is killed whole by
   oomguard (cgroup.kill); its kill event records the processes it tried and released, and the
   slice's memory.current is near 0 right after.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import TYPE_CHECKING, Any

from oomguard.events.pidfd import MreleaseSyscall
from tests.kernel.support import py, start_run, wait_until

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

MiB = 1 << 20
HOLD_MB = 200
#: "Near 0": what a cgroup keeps charged once its processes are gone (kernel objects, a few
#: page-table pages) stays well below this.
NEAR_ZERO = 8 * MiB

HOG = py(
    f"""
import sys, time
b = bytearray({HOLD_MB} * 1024 * 1024)
for i in range(0, len(b), 4096):
    b[i] = 1
print("ready", flush=True)
time.sleep(100000)
"""
)


def _current(cgroup: Path) -> int:
    return int((cgroup / "memory.current").read_text())


def _kill_and_time(cgroup: Path, pid: int, mrelease: bool) -> tuple[float, str, int]:
    """cgroup.kill, then (optionally) process_mrelease: seconds until memory.current is near 0,
    the call's outcome, and memory.current right after the call."""
    fd = os.pidfd_open(pid)
    syscall = MreleaseSyscall()
    assert syscall.prepare(), "6.1 has process_mrelease"
    kill = os.open(cgroup / "cgroup.kill", os.O_WRONLY)
    try:
        # The kill and the call as one step that the killed process cannot preempt (a CFS task
        # never preempts a SCHED_FIFO one): "dying, not yet run", which a busy machine makes
        # likely and a timer tick in between (this guest's host is loaded) would make a race.
        # The arm without the call runs the kill the same way.
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        try:
            t0 = time.monotonic()
            os.write(kill, b"1")
            outcome = syscall(fd) if mrelease else "-"
            after = _current(cgroup)
        finally:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        while _current(cgroup) > NEAR_ZERO:
            if time.monotonic() - t0 > 60:
                break
            time.sleep(0.0005)
        return time.monotonic() - t0, outcome, after
    finally:
        os.close(kill)
        os.close(fd)


def _one(
    cgroup: Path,
    run_in_cgroup: Callable[..., subprocess.Popen[Any]],
    mrelease: bool,
    nice: int,
) -> tuple[float, str, int, int]:
    """(seconds until near 0, the call's outcome, bytes held before, bytes right after)."""
    hog = run_in_cgroup(cgroup, ["nice", "-n", str(nice), *HOG], stdout=subprocess.PIPE)
    assert hog.stdout is not None
    assert hog.stdout.readline().strip() == b"ready"
    held = _current(cgroup)
    seconds, outcome, after = _kill_and_time(cgroup, hog.pid, mrelease)
    hog.wait(60)
    wait_until(lambda: _current(cgroup) <= NEAR_ZERO, "memory.current near 0", timeout=60)
    return seconds, outcome, held, after


def test_mrelease_after_cgroup_kill_gives_the_memory_back(
    scratch_cgroup: Path, run_in_cgroup: Callable[..., subprocess.Popen[Any]]
) -> None:
    cgroup = scratch_cgroup / "hog"
    cgroup.mkdir()
    rows = []
    for nice in (0, 19):
        for mrelease in (False, True, False, True):
            seconds, outcome, held, after = _one(cgroup, run_in_cgroup, mrelease, nice)
            if mrelease:
                # Dying but not yet run: the kernel released its memory within the call.
                assert outcome == "released", outcome
                assert after <= NEAR_ZERO, after
            rows.append((nice, mrelease, seconds, held, after, outcome))
    held_mb = max(r[3] for r in rows) // MiB
    print(
        f"\nmemory back after cgroup.kill of a process holding {held_mb} MiB (Linux "
        f"{os.uname().release}): time until memory.current <= {NEAR_ZERO // MiB} MiB, 2 runs "
        "each; [MiB still charged when the call returned, the call's outcome]"
    )
    for nice in (0, 19):
        for mrelease in (False, True):
            runs = [r for r in rows if r[0] == nice and r[1] == mrelease]
            print(
                f"  killed process at nice {nice:2}, "
                f"{'with process_mrelease' if mrelease else 'without':22} "
                + "  ".join(f"{r[2] * 1000:7.1f} ms [{r[4] // MiB} MiB, {r[5]}]" for r in runs)
            )


# -- through oomguard -----------------------------------------------------------------------

#: A sidecar of three processes: the main one holds 20 MiB, one worker 40 MiB, and a second
#: worker grows until its slice's memory.max OOM-kills it (the largest process). The main process
#: and the 40 MiB worker then drop to nice 19, below oomguard's priority (a storm of a busy
#: machine): SIGKILLed, they do not preempt oomguard, so the release is oomguard's to do.
OOM_JOB = py(
    """
import os, time
def hold(mb):
    b = bytearray(mb * 1024 * 1024)
    for i in range(0, len(b), 4096):
        b[i] = 1
    return b
for grow in (False, True):
    if os.fork() == 0:
        kept = [hold(40)]
        if grow:
            time.sleep(2)
            while True:
                kept.append(hold(8))
        os.nice(19)
        time.sleep(100000)
        os._exit(0)
kept = hold(20)
os.nice(19)
time.sleep(100000)
"""
)


def test_an_oom_killed_sidecars_slice_is_emptied_without_mrelease(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    config = {
        "service": {
            "db": {"role": "primary", "command": ["sleep", "100000"]},
            "job": {
                "command": OOM_JOB,
                "memory_max": "160M",
                # The kernel kills one process, not the slice: oomguard kills the rest.
                "oom_group": False,
                "restart": "never",
            },
        },
    }
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        og.wait_running("db", "job")
        kill = og.wait_event("kill", "job", timeout=180)[0]
        assert kill["reason"] == "oom_kill", kill
        # No process_mrelease on the OOM path: the kernel's oom_reaper reaps the victim, and
        # racing it let a later OOM take the primary (runtime/placement.py `Slices.kill`).
        assert kill.get("mrelease_tried", 0) == 0, kill
        slice_ = og.cgroup("job")
        wait_until(
            lambda: _current(slice_) <= NEAR_ZERO, "the job's memory.current near 0", timeout=30
        )
        print(f"\nkill event: {kill}; memory.current now {_current(slice_)} bytes")
