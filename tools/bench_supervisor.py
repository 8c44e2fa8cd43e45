#!/usr/bin/env python3
"""Figures of the supervisor on a real kernel (issues 3 and 4). Prints numbers; asserts nothing.

    python3 -m tools.bench_supervisor                 # everything (in the QEMU guest if needed)
    python3 -m tools.bench_supervisor --only idle,oom --kills 20

Runs natively where this host has a writable cgroup v2 memory controller, else inside the guest
of tools/vmrun.py (the real `oomguard run` against a real cgroup2 tree either way). Scenarios:

idle   An idle oomguard (primary + one sidecar in a `[slice.sidecars]` budget, so PSI triggers
       are armed on the budget and the tree root): its wake-ups per second over `--idle` seconds,
       counted as the delta of voluntary + nonvoluntary context switches summed over all its
       threads (/proc/PID/task/*/status): every time a thread went to sleep or was preempted.
       A thread blocked in epoll_wait the whole time adds none. Measured once as configured
       and once more with `metrics_listen` set (the HTTP server thread and the refresh timer).
oom    Issue 3: a sidecar over its own memory.max is OOM-killed `--kills` times and restarted.
       The kill time comes from the kernel itself: the "Killed process PID" record in /dev/kmsg
       carries the printk timestamp (local_clock, µs since boot), mapped onto CLOCK_MONOTONIC by
       writing marker records into /dev/kmsg and reading back their stamps (offset = stamp -
       the midpoint of the write; drift checked before and after), then onto the wall clock the
       event log uses. Against it: oomguard's `oom_kill` event (inotify on memory.events.local),
       its `exit` event (pidfd + waitid) and the `spawned` event (fork + exec done: the launcher
       returns once execve succeeded), with the restart backoff shown apart. Beside them: a bare
       `subprocess.Popen` of the same command in the same guest (also returns after exec).
       Then oomguard's VmRSS / VmHWM.
evict  Issue 4: the slow leak of tests/kernel/test_pressure.py (5 MB/s into a 128M budget),
       run in enforce and in observe mode side by side. Enforce: the budget's memory.current in
       the `evict` decision. Observe: the same decision logged as `would_evict`, then the kernel's
       OOM kill, with the budget's memory.peak at that point (the highest charge it ever had).

Medians over all samples; p90 and min/max beside them. The guest runs under TCG (an emulated CPU,
~17x slower than the host for Python), so absolute times are the guest's, not production's.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import re
import secrets
import select
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The scenario helpers of the real-kernel tests: the bench runs the same scenarios.
from tests.kernel.pressure_support import (
    decisions,
    fast_pressure,
    free_port,
    main_thread_sleep,
    open_files,
    primary,
    shared_budget,
    start_named,
    vm_rss_kib,
    wait_beating,
    wait_charged,
    workload,
)
from tests.kernel.support import (
    MiB,
    Oomguard,
    cg_write,
    counter_events,
    flat_keyed,
    kill_tree,
    wait_until,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = ("idle", "oom", "evict")
RSS_GOAL_MB = 25.0
WAKEUP_GOAL = 1.0


# -- where to run ----------------------------------------------------------------------------------


def _ktest() -> Any:
    from tools import ktest

    return ktest


@dataclass
class Place:
    """A scratch cgroup for this bench under a cgroup2 mount that has the memory controller."""

    mount: Path
    scratch: Path
    workdir: Path

    def sub(self, name: str) -> Path:
        return self.scratch / name


@contextlib.contextmanager
def place() -> Iterator[Place]:
    plan, why = _ktest().native_plan()
    if plan is None:
        raise SystemExit(f"bench: no usable cgroup v2 memory controller here: {why}")
    if plan.leaf is not None:
        # A delegated subtree: everyone in it moves to a leaf first (no-internal-process rule).
        plan.leaf.mkdir(exist_ok=True)
        for pid in (plan.base / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError, OSError):
                cg_write(plan.leaf / "cgroup.procs", pid)
    controllers = set((plan.base / "cgroup.subtree_control").read_text().split())
    if not {"memory", "pids"} <= controllers:
        cg_write(plan.base / "cgroup.subtree_control", "+memory +pids")
    scratch = plan.base / f"obench-{secrets.token_hex(4)}"
    scratch.mkdir()
    workdir = Path(tempfile.mkdtemp(prefix="oomguard-bench-"))
    try:
        cg_write(scratch / "cgroup.subtree_control", "+memory +pids")
        yield Place(plan.mount, scratch, workdir)
    finally:
        _destroy(scratch)
        shutil.rmtree(workdir, ignore_errors=True)


def _destroy(cgroup: Path) -> None:
    if not cgroup.is_dir():
        return
    with contextlib.suppress(Exception):
        kill_tree(cgroup)
    for dirpath, _dirs, _files in os.walk(cgroup, topdown=False):
        deadline = time.monotonic() + 10
        while True:
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    print(f"bench: cannot remove {dirpath}: {e}", file=sys.stderr)
                    break
                time.sleep(0.05)


# -- figures ---------------------------------------------------------------------------------------


def stats(values: Sequence[float], unit: str = "ms", scale: float = 1000.0) -> str:
    if not values:
        return "no samples"
    xs = sorted(v * scale for v in values)
    p90 = xs[min(len(xs) - 1, round(0.9 * len(xs) + 0.5) - 1)]
    return (
        f"median {statistics.median(xs):7.1f} {unit}  p90 {p90:7.1f}  "
        f"min {xs[0]:7.1f}  max {xs[-1]:7.1f}  (n={len(xs)})"
    )


def mb(n: float) -> str:
    return f"{n / MiB:.1f}M"


# -- the kernel's clock ----------------------------------------------------------------------------


_KILLED = re.compile(r"Killed process (\d+) ")


class KernelLog:
    """New /dev/kmsg records since construction, with their printk timestamps on our clocks."""

    def __init__(self) -> None:
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.lseek(self.fd, 0, os.SEEK_END)  # only records from now on
        self.records: list[tuple[float, str]] = []  # (printk seconds, message)
        # The wall clock minus the monotonic one: the event log is in wall time.
        self.wall_minus_mono = time.time() - time.monotonic()

    def close(self) -> None:
        os.close(self.fd)

    def drain(self) -> None:
        while True:
            try:
                raw = os.read(self.fd, 8192)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.EPIPE:  # records overwritten before we read them
                    continue
                raise
            head, _, rest = raw.decode(errors="replace").partition(";")
            fields = head.split(",")
            message = rest.split("\n", 1)[0]
            self.records.append((int(fields[2]) / 1e6, message))

    def offset(self, samples: int = 7) -> tuple[float, float]:
        """(printk clock - CLOCK_MONOTONIC, uncertainty) from marker records we write."""
        best: tuple[float, float] | None = None
        wfd = os.open("/dev/kmsg", os.O_WRONLY | os.O_CLOEXEC)
        try:
            for i in range(samples):
                tag = f"oomguard-bench: clock {secrets.token_hex(4)} {i}"
                before = time.monotonic()
                os.write(wfd, f"<6>{tag}\n".encode())
                after = time.monotonic()
                stamp = None
                for _ in range(100):
                    self.drain()
                    stamp = next((t for t, m in reversed(self.records) if m.endswith(tag)), None)
                    if stamp is not None:
                        break
                    time.sleep(0.001)
                if stamp is None:
                    continue
                cand = (stamp - (before + after) / 2, (after - before) / 2)
                if best is None or cand[1] < best[1]:
                    best = cand
        finally:
            os.close(wfd)
        if best is None:
            raise RuntimeError("no marker record came back from /dev/kmsg")
        return best

    def kills(self) -> list[tuple[float, int]]:
        """(printk seconds, pid) of every OOM kill seen so far."""
        self.drain()
        out = []
        for t, m in self.records:
            hit = _KILLED.search(m)
            if hit and "out of memory" in m:
                out.append((t, int(hit.group(1))))
        return out


# -- scenarios -------------------------------------------------------------------------------------


def _stop(*ogs: Oomguard) -> None:
    for og in ogs:
        og.signal(15)
    for og in ogs:
        og.close()


def _settle(og: Oomguard) -> None:
    """Until the main thread is blocked in epoll_wait, then a little longer."""
    wait_until(lambda: main_thread_sleep(og.pid).in_epoll_wait, "oomguard to block", timeout=60)
    time.sleep(2.0)


def _threads(pid: int) -> dict[str, tuple[int, int]]:
    """thread -> (voluntary, nonvoluntary) context switches. A voluntary one is the thread going
    to sleep (so, later, a wake-up); a nonvoluntary one is a preemption while it ran."""
    out: dict[str, tuple[int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            name = (task / "comm").read_text().strip()
            counts = {"voluntary_ctxt_switches": 0, "nonvoluntary_ctxt_switches": 0}
            for line in (task / "status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in counts:
                    counts[key] = int(value)
            vol, invol = counts.values()
            out[f"{name}/{task.name}"] = (vol, invol)
    return out


def bench_idle(where: Place, seconds: float) -> None:
    print(
        f"\n== idle: wake-ups of an idle oomguard over {seconds:g} s (issue 3 d, issue 4.6)\n"
        "   context switches of all its threads (/proc/PID/task/*/status): voluntary = went to"
        " sleep, i.e. wake-ups;\n   nonvoluntary = preempted while running"
    )
    runs: dict[str, Oomguard] = {}
    beats = {}
    try:
        for name, metrics in (("idle", None), ("idle-metrics", f"127.0.0.1:{free_port()}")):
            beats[name] = where.workdir / f"{name}.heartbeat"
            config = shared_budget(
                beats[name],
                {"steady": {"command": workload("steady"), "env": {"STEADY_MB": "8"}}},
                metrics_listen=metrics,
            )
            runs[name] = start_named(name, where.workdir, where.mount, where.scratch, config)
        for name, og in runs.items():
            pids = og.wait_running("db", "steady")
            wait_beating(og, beats[name], pids["db"])
            wait_charged(og, og.cgroup("sidecars", "steady"), 8 * MiB)
        for name, og in runs.items():
            _settle(og)
            psi = [f for f in open_files(og.pid) if f.endswith("/memory.pressure")]
            before = _threads(og.pid)
            t0 = time.monotonic()
            blocked = 0
            checks = 0
            while time.monotonic() - t0 < seconds:
                checks += 1
                blocked += main_thread_sleep(og.pid).in_epoll_wait
                time.sleep(0.5)
            elapsed = time.monotonic() - t0
            after = _threads(og.pid)
            per = {
                k: (v[0] - before.get(k, (0, 0))[0], v[1] - before.get(k, (0, 0))[1])
                for k, v in after.items()
            }
            vol = sum(v for v, _ in per.values())
            invol = sum(n for _, n in per.values())
            label = "with metrics_listen" if name.endswith("metrics") else "PSI triggers armed"
            rate = vol / elapsed
            verdict = "met" if rate <= WAKEUP_GOAL else "NOT met"
            print(
                f"  {label}: {vol} wake-ups in {elapsed:.1f} s = {rate:.2f}/s (goal <= "
                f"{WAKEUP_GOAL:g}/s: {verdict}), {invol} preemptions ({(vol + invol) / elapsed:.2f}"
                f" switches/s in all); {len(psi)} PSI trigger fds; main thread in epoll_wait at "
                f"{blocked}/{checks} looks"
            )
            busy = ", ".join(f"{k} {v}+{n}" for k, (v, n) in sorted(per.items()) if v or n)
            print(f"    per thread (voluntary+nonvoluntary): {busy or 'none woke'}")
    finally:
        _stop(*runs.values())


class DeathWatch(threading.Thread):
    """Records when each process of a cgroup dies, from a pidfd of our own: the victim's death
    as the kernel reports it to any waiter (exit_notify, after its memory was torn down).
    Polls the cgroup's cgroup.procs for new pids every 20 ms: the bench's own cost."""

    def __init__(self, cgroup: Path, wall_minus_mono: float) -> None:
        super().__init__(daemon=True)
        self.cgroup = cgroup
        self.offset = wall_minus_mono
        self.deaths: dict[int, float] = {}  # pid -> wall time
        self.stopping = threading.Event()

    def run(self) -> None:
        fds: dict[int, int] = {}  # fd -> pid
        seen: set[int] = set()
        poller = select.poll()
        try:
            while not self.stopping.is_set():
                for pid in _procs(self.cgroup):
                    if pid in seen:
                        continue
                    seen.add(pid)
                    try:
                        fd = os.pidfd_open(pid)
                    except ProcessLookupError:
                        continue
                    fds[fd] = pid
                    poller.register(fd, select.POLLIN)
                for fd, _ in poller.poll(20):
                    self.deaths[fds[fd]] = time.monotonic() + self.offset
                    poller.unregister(fd)
                    os.close(fd)
                    del fds[fd]
        finally:
            for fd in fds:
                os.close(fd)


def _procs(cgroup: Path) -> list[int]:
    try:
        return [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def bench_oom(where: Place, kills: int) -> None:
    print(f"\n== oom: {kills} OOM kills of a sidecar over its memory.max (issue 3, bench point 8)")
    beat = where.workdir / "oom.heartbeat"
    backoff = 0.05
    leaky = {
        "command": workload("leaky"),
        "memory_max": "48M",
        "env": {"LEAK_MB_S": "100"},
        "backoff_initial": f"{backoff}s",
        "backoff_max": f"{backoff}s",
        "start_secs": "0.2s",
        "max_restarts": 10_000,
    }
    config = {"service": {"db": primary(beat), "leaky": leaky}}
    klog = KernelLog()
    off0, err0 = klog.offset()
    og = start_named("oom", where.workdir, where.mount, where.scratch, config)
    watch: DeathWatch | None = None
    try:
        og.wait_running("db")
        og.wait_for(lambda: og.cgroup("leaky").is_dir(), "the leaky slice")
        watch = DeathWatch(og.cgroup("leaky"), klog.wall_minus_mono)
        watch.start()
        og.wait_for(
            lambda: (
                len(counter_events(og, "leaky")) >= kills
                and len(og.events("spawned", "leaky")) > kills
            ),
            f"{kills} OOM kills of leaky and its restart",
            timeout=120 + 20 * kills,
        )
        rss = vm_rss_kib(og.pid)
        events = og.events()
    finally:
        if watch is not None:
            watch.stopping.set()
            watch.join(5)
        _stop(og)
    off1, _ = klog.offset()
    # With memory.oom.group (the sidecar default) the kernel logs the victim twice: once as the
    # OOM victim and once as a member of the group it kills. The first record is the kill.
    found: dict[int, float] = {}
    for stamp, pid in klog.kills():
        found.setdefault(pid, stamp)
    klog.close()
    offset = (off0 + off1) / 2
    deaths = watch.deaths if watch is not None else {}
    f: dict[str, list[float]] = {
        k: []
        for k in (
            "teardown",
            "kill_event",
            "death_event",
            "death_exit",
            "exit_spawn",
            "kill_spawn",
            "kill_spawn_net",
        )
    }
    counters = [e for e in events if e["kind"] == "oom_kill" and "count" in e]
    leaky_evs = [e for e in events if e.get("service") == "leaky"]
    for pid, stamp in found.items():
        kill = stamp - offset + klog.wall_minus_mono
        death = deaths.get(pid)
        counter = next((e for e in counters if e.get("victim_pid") == pid), None)
        exit_ = next((e for e in leaky_evs if e.get("pid") == pid and "oom_killed" in e), None)
        if death is not None:
            f["teardown"].append(death - kill)
        if counter is not None:
            f["kill_event"].append(counter["ts"] - kill)
            if death is not None:
                f["death_event"].append(counter["ts"] - death)
        if exit_ is None:
            continue
        if death is not None:
            f["death_exit"].append(exit_["ts"] - death)
        after = [e for e in leaky_evs if e["ts"] >= exit_["ts"]]
        spawn = next((e for e in after if e["kind"] == "spawned"), None)
        wait = next((e for e in after if e["kind"] == "backoff"), None)
        if spawn is None:
            continue
        delay = float(wait["delay"]) if wait is not None else 0.0
        f["exit_spawn"].append(spawn["ts"] - exit_["ts"] - delay)
        f["kill_spawn"].append(spawn["ts"] - kill)
        f["kill_spawn_net"].append(spawn["ts"] - kill - delay)
    # The same command, forked and exec'd by a bare subprocess.Popen in the same guest.
    bare = []
    for _ in range(max(10, kills)):
        t0 = time.monotonic()
        proc = subprocess.Popen(
            workload("leaky"),
            env={**os.environ, "LEAK_MB_S": "0"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        bare.append(time.monotonic() - t0)
        proc.kill()
        proc.wait()
    drift = (off1 - off0) * 1000
    unmatched = len(found) - len(f["kill_event"])
    print(
        f"  OOM kills in /dev/kmsg: {len(found)} ({unmatched} without a matching oomguard event);"
        f" printk clock offset {off0 * 1000:+.2f} ms (±{err0 * 1000:.2f}), drift over the run "
        f"{drift:+.2f} ms"
    )
    rows = (
        ("kill (kmsg) -> victim gone (bench's pidfd)", "teardown"),
        ("kill -> oomguard `oom_kill` event", "kill_event"),
        ("victim gone -> `oom_kill` event (inotify)", "death_event"),
        ("victim gone -> `exit` event (pidfd, waitid)", "death_exit"),
        (f"`exit` -> spawned, minus the {backoff * 1000:.0f} ms backoff", "exit_spawn"),
        ("kill -> sidecar spawned again (exec done)", "kill_spawn"),
        ("  the same minus the backoff", "kill_spawn_net"),
    )
    for label, key in rows:
        print(f"  {label:46s}: {stats(f[key])}")
    print(f"  {'bare fork+exec of the same command (Popen)':46s}: {stats(bare)}")
    hwm = rss.get("VmHWM", 0) / 1024
    now = rss.get("VmRSS", 0) / 1024
    verdict = "met" if now <= RSS_GOAL_MB else "NOT met"
    print(
        f"  oomguard RSS after the kills: VmRSS {now:.1f} MB (goal <= {RSS_GOAL_MB:g} MB: "
        f"{verdict}), peak VmHWM {hwm:.1f} MB"
    )
    print(f"    for context, VmRSS of a bare interpreter after importing: {_rss_baselines()}")


def _rss_baselines() -> str:
    """VmRSS of `python -c 'import X'` for what oomguard run loads: where its RSS comes from."""
    probe = (
        "import sys, importlib\n"
        "for m in sys.argv[1:]: importlib.import_module(m)\n"
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS')][0])"
    )
    sets = {
        "nothing": [],
        "click": ["click"],
        "pydantic": ["pydantic"],
        "oomguard run's modules": [
            "oomguard.cli.main",
            "oomguard.config.load",
            "oomguard.runtime.supervisor",
            "oomguard.runtime.pressure",
        ],
    }
    out = []
    for label, mods in sets.items():
        got = subprocess.run(
            [sys.executable, "-c", probe, *mods], capture_output=True, text=True, check=False
        )
        kib = got.stdout.strip()
        out.append(f"{label} {int(kib) / 1024:.1f} MB" if kib.isdigit() else f"{label} ?")
    return ", ".join(out)


def bench_evict(where: Place) -> None:
    print(
        "\n== evict: how much earlier eviction acts than the kernel OOM killer (issue 4.6)\n"
        "   the same slow leak (5 MB/s) into [slice.sidecars] memory_max 128M, beside a steady"
        " 80M sidecar, twice side by side:\n"
        "   enforce, and a kernel-only run: observe mode with the budget's memory_high = its"
        " memory_max\n"
        "   (observe mode alone still sets the automatic memory.high, whose throttling holds a"
        " slow leak\n"
        "   below memory.max for minutes: the kernel never OOM-kills, so it is no baseline)"
    )
    runs: dict[str, Oomguard] = {}
    try:
        for mode in ("enforce", "kernel"):
            config = shared_budget(
                where.workdir / f"{mode}.heartbeat",
                {
                    "steady": {
                        "command": workload("steady"),
                        "criticality": 80,
                        "env": {"STEADY_MB": "80"},
                    },
                    "leaky": {
                        "command": workload("leaky"),
                        "criticality": 20,
                        "env": {"LEAK_MB_S": "5"},
                    },
                },
                mode="enforce" if mode == "enforce" else "observe",
                pressure=fast_pressure(hysteresis="600s"),
            )
            if mode == "kernel":
                config["slice"]["sidecars"]["memory_high"] = "128M"
            runs[mode] = start_named(mode, where.workdir, where.mount, where.scratch, config)
        enforce, kernel_run = runs["enforce"], runs["kernel"]
        evict = enforce.wait_event("evict", "leaky", where=lambda e: "budget" in e)[0]
        kill = kernel_run.wait_for(
            lambda: counter_events(kernel_run, "leaky"), "the kernel to OOM-kill leaky", timeout=240
        )[0]
        budget = kernel_run.cgroup("sidecars")
        peak = int((budget / "memory.peak").read_text())
        limit = int((budget / "memory.max").read_text())
        kernel = flat_keyed(budget / "memory.events")
        enforce_tree = flat_keyed(enforce.root / "memory.events")
        started = {m: og.events("spawned", "leaky")[0]["ts"] for m, og in runs.items()}
        would = decisions(kernel_run)
    finally:
        _stop(*runs.values())
    print(
        f"  enforce: evicted leaky at budget memory.current {mb(evict['current'])} "
        f"(headroom {evict['headroom']:.1%}; leaky held {mb(evict['member_current'])}), "
        f"{evict['ts'] - started['enforce']:.1f} s after it started, reason {evict['reason']}; "
        f"OOM kills in that tree: {enforce_tree['oom_kill']}"
    )
    print(
        f"  kernel : OOM-killed leaky {kill['ts'] - started['kernel']:.1f} s after it started, "
        f"the budget's memory.peak {mb(peak)} (memory.max {mb(limit)}; budget memory.events "
        f"max={kernel['max']} oom={kernel['oom']} oom_kill={kernel['oom_kill']})"
    )
    print(
        f"  eviction acts {mb(peak - evict['current'])} ({(peak - evict['current']) / limit:.1%} "
        f"of the budget) below the point where the kernel kills, "
        f"{(kill['ts'] - started['kernel']) - (evict['ts'] - started['enforce']):.1f} s sooner "
        f"into the same leak"
    )
    first = [(e["kind"], e["service"], e["reason"]) for e in would][:3]
    print(f"  the kernel-only run's own (observe) decisions before the kill: {first or 'none'}")


# -- main ------------------------------------------------------------------------------------------


def _native_ok() -> bool:
    plan, _why = _ktest().native_plan()
    return plan is not None


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bench_supervisor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--only", default=",".join(SCENARIOS), help="comma list of: idle,oom,evict")
    ap.add_argument("--kills", type=int, default=12, help="OOM kills to measure (>= 10)")
    ap.add_argument("--idle", type=float, default=10.0, help="idle window, seconds")
    ap.add_argument("--vm-timeout", type=int, default=1500, help="guest time limit, seconds")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    return ap


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point (tools/bench.py calls this): 0 if every scenario produced its figures."""
    args = _parser().parse_args(argv)
    wanted = [w for w in args.only.split(",") if w]
    unknown = [w for w in wanted if w not in SCENARIOS]
    if unknown:
        print(f"bench_supervisor: unknown scenario(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    given = list(sys.argv[1:] if argv is None else argv)
    own = [sys.executable, "-m", "tools.bench_supervisor", *given]
    own = [a for a in own if a != "--inside"]
    if not args.inside and not _native_ok():
        cmd = [
            sys.executable,
            str(REPO / "tools" / "vmrun.py"),
            "--timeout",
            str(args.vm_timeout),
            "--",
            *own,
            "--inside",
        ]
        print(
            "bench_supervisor: no cgroup v2 memory controller on this host; in the QEMU guest:\n"
            f"  {shlex.join(cmd)}",
            flush=True,
        )
        return subprocess.run(cmd, cwd=REPO, check=False).returncode
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(
        f"bench_supervisor: {'QEMU guest' if args.inside else 'native'}, Linux "
        f"{os.uname().release}, {os.cpu_count()} CPU(s), load {' '.join(load)}\n"
        f"  figures produced by: {shlex.join(own)}",
        flush=True,
    )
    rc = 0
    with place() as where:
        for name in wanted:
            try:
                if name == "idle":
                    bench_idle(where, args.idle)
                elif name == "oom":
                    bench_oom(where, max(10, args.kills))
                else:
                    bench_evict(where)
            except (AssertionError, RuntimeError, OSError) as err:
                print(f"  {name}: FAILED: {str(err)[:4000]}", flush=True)
                rc = 1
            sys.stdout.flush()
    return rc


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
