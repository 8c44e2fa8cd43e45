"""The seed's case (issue 8): no memory limit anywhere, the machine runs out of RAM, PostgreSQL
under pgbench is the largest process (a backend holding the prewarmed buffer pool), and a sidecar
storms, then leaks. Run under three anchors in the same guest on the same workload:

* ``kernel``: nothing but the kernel (every process at oom_score_adj 0, no limits);
* ``earlyoom``: the same, with Debian's earlyoom daemon (its defaults) watching;
* ``oomguard``: ``oomguard run`` with PostgreSQL as the primary and the job as a sidecar, and no
  ``memory_max`` anywhere.

Used by tests/kernel/test_seed.py (the oomguard half, with assertions) and tools/bench_matrix.py
(`--only seed`: all three side by side, as a table). Stdlib only (plus the repo).

The job (a sidecar, restarted when it ends: by oomguard, or by a shell loop standing in for a
container runtime's restart policy in the other two layouts) waits for a trigger file. Its first
run after the trigger is the **storm**: as many forked processes as the trigger file says
allocate as many MiB each as it says, as fast as they can, and hold it for STORM_HOLD seconds.
Together they want more than the memory available; each one is smaller than the warm backend,
so PostgreSQL stays the largest process.
Every later run is the **leak**: one process prefills quickly until MemAvailable is down to
LEAK_PREFILL_TO bytes, then grows LEAK_MB_S MiB/s until something stops it. All pages are copies
of one random MiB: written (charged), and incompressible.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.kernel.pg import PG_PORT, Cluster, PgbenchResult, pg_bin

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tests.kernel.support import Oomguard

MiB = 1 << 20
PYTHON = sys.executable
LAYOUTS = ("kernel", "earlyoom", "oomguard")
EARLYOOM = "/usr/bin/earlyoom"
#: pgbench -i scale: pgbench_accounts ~13 MiB per unit of scale.
SCALE = 4
SHARED_BUFFERS = "96MB"
#: Load: pgbench -c 4 -R RATE straight to PostgreSQL (no pooler: the pooler is not the point).
RATE = 40
CHUNK_S = 10
STORM_HOLD_S = 15
LEAK_MB_S = 5
#: The leak prefills until MemAvailable is this far above 10 % of MemTotal (then leaks slowly).
LEAK_MARGIN = 40 * MiB
KILLED = re.compile(r"Killed process (\d+) \(([^)]*)\)")
EARLYOOM_KILL = re.compile(r"sending (SIG\w+) to process (\d+) uid \d+ \"([^\"]*)\"")

JOB = r"""
import os, sys, time
MB = 1 << 20
trigger, stormed, leaking = (os.environ[k] for k in ("TRIGGER", "STORMED", "LEAKING"))
while not os.path.exists(trigger) or not open(trigger).read().strip():
    time.sleep(0.2)
block = os.urandom(MB)
if not os.path.exists(stormed):
    open(stormed, "w").write(f"{os.getpid()}\n")
    workers, size = (int(x) for x in open(trigger).read().split())
    print(f"job: storm: {workers} x {size} MiB", flush=True)
    kids = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            held = [bytearray(block) for _ in range(size)]
            time.sleep(float(os.environ["STORM_HOLD"]))
            os._exit(0)
        kids.append(pid)
    for pid in kids:
        os.waitpid(pid, 0)
    print("job: storm over", flush=True)
    sys.exit(0)

def avail():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024

target, rate = int(os.environ["LEAK_PREFILL_TO"]), float(os.environ["LEAK_MB_S"])
held = []
while avail() > target:
    held.append(bytearray(block))
with open(leaking + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {len(held)}\n")
os.rename(leaking + ".tmp", leaking)
print(f"job: leak: prefilled {len(held)} MiB, now {rate:g} MiB/s", flush=True)
start, base = time.monotonic(), len(held)
while True:
    while len(held) < base + int(rate * (time.monotonic() - start)) + 1:
        held.append(bytearray(block))
    time.sleep(0.05)
"""


def meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def vmstat_oom_kills() -> int:
    for line in Path("/proc/vmstat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


def _tool(name: str) -> str:
    bindir = pg_bin()
    assert bindir is not None, "no PostgreSQL binaries"
    return str(bindir / name)


def as_postgres(argv: Sequence[str]) -> list[str]:
    """exec argv as user postgres (setpriv execs: no parent left behind)."""
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *argv]


def cg_write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def spawn_in(
    cgroup: Path, argv: Sequence[str], out: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """Start argv inside `cgroup` (the shell joins it, then execs)."""
    script = f"echo $$ > {shlex.quote(str(cgroup / 'cgroup.procs'))} && exec " + shlex.join(argv)
    with out.open("ab") as f:
        return subprocess.Popen(
            ["/bin/sh", "-c", script], stdout=f, stderr=subprocess.STDOUT, env=env, cwd="/"
        )


# -- the cluster ------------------------------------------------------------------------------


def prepare_cluster() -> Cluster:
    """A cluster with a pgbench database of SCALE, prepared with PostgreSQL outside any layout."""
    cluster = Cluster.create(shared_buffers=SHARED_BUFFERS)
    log = (cluster.base / "prepare.log").open("ab")
    pg = subprocess.Popen(
        as_postgres([_tool("postgres"), "-D", str(cluster.pgdata)]),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd="/",
    )
    try:
        wait(lambda: cluster.ready(PG_PORT), 180, "PostgreSQL to start for pgbench -i")
        subprocess.run(
            [_tool("pgbench"), "-i", "-q", "-s", str(SCALE), "-h", str(cluster.sockets),
             "-p", str(PG_PORT), "-U", "postgres", "bench"],
            stdout=log, stderr=subprocess.STDOUT, check=True, timeout=1200,
        )  # fmt: skip
        cluster.psql("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
    finally:
        pg.send_signal(signal.SIGINT)
        pg.wait(120)
        log.close()
    return cluster


def progress(msg: str) -> None:
    print(f"seed {time.strftime('%H:%M:%S')}: {msg}", file=sys.stderr, flush=True)


def wait(probe: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.25)


class WarmBackend:
    """One session that reads all of pgbench_accounts, then idles with its connection open: a
    long-lived backend that touched the whole buffer pool, so its RSS (shared pages it touched
    count) makes it the largest process on the machine."""

    SQL = (
        "SELECT pg_prewarm('pgbench_accounts'); "
        "SELECT sum(abalance) FROM pgbench_accounts; "
        "SELECT pg_sleep(3600);"
    )

    def __init__(self, cluster: Cluster) -> None:
        self.proc = subprocess.Popen(
            [*cluster.psql_argv(port=PG_PORT), "-c", self.SQL],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


def largest_processes(n: int = 3) -> list[tuple[int, int, str]]:
    """(VmRSS bytes, pid, name) of the `n` largest processes on the machine."""
    rows: list[tuple[int, int, str]] = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            status = (d / "status").read_text()
        except OSError:
            continue
        m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        name = re.search(r"^Name:\s+(.*)$", status, re.M)
        if m and name:
            rows.append((int(m.group(1)) * 1024, int(d.name), name.group(1)))
    return sorted(rows, reverse=True)[:n]


class Sampler(threading.Thread):
    """Every 0.2 s: MemAvailable, and the kernel's OOM-kill count (/proc/vmstat)."""

    def __init__(self, earlyoom_log: Path | None = None) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int, int]] = []  # (wall time, MemAvailable, oom_kill)
        self.stop_flag = threading.Event()
        self.earlyoom_log = earlyoom_log
        #: (wall time first seen, MemAvailable then) of each earlyoom kill line, in order.
        self.earlyoom_kills: list[tuple[float, int]] = []

    def run(self) -> None:
        while not self.stop_flag.is_set():
            avail = meminfo("MemAvailable")
            self.samples.append((time.time(), avail, vmstat_oom_kills()))
            if self.earlyoom_log is not None:
                # earlyoom prints no time stamps: note when each kill line first appears.
                with contextlib.suppress(OSError):
                    seen = len(EARLYOOM_KILL.findall(self.earlyoom_log.read_text(errors="replace")))
                    prev = self.samples[-2][1] if len(self.samples) > 1 else avail
                    while len(self.earlyoom_kills) < seen:
                        self.earlyoom_kills.append((time.time(), prev))
            self.stop_flag.wait(0.2)

    def stop(self) -> None:
        self.stop_flag.set()
        self.join(10)

    def avail_at(self, ts: float) -> int | None:
        """MemAvailable of the last sample at or before `ts`."""
        before = [a for t, a, _ in self.samples if t <= ts]
        return before[-1] if before else None

    def first_kernel_kill(self, after: float = 0.0) -> tuple[float, int] | None:
        """(time, MemAvailable just before) of the first OOM-kill count rise after `after`."""
        prev: tuple[float, int, int] | None = None
        for t, a, k in self.samples:
            if prev is not None and k > prev[2] and t > after:
                return t, prev[1]
            prev = (t, a, k)
        return None


class Load(threading.Thread):
    """pgbench chunks of CHUNK_S seconds, back to back, straight to PostgreSQL, until stopped."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.results: list[PgbenchResult] = []
        self.stop_flag = threading.Event()
        self.started = time.monotonic()
        self.wall = 0.0

    def run(self) -> None:
        while not self.stop_flag.is_set():
            run = self.cluster.pgbench(CHUNK_S, port=PG_PORT, rate=RATE)
            self.results.append(run.result(timeout=CHUNK_S * 30))
        self.wall = time.monotonic() - self.started

    def stop(self) -> list[PgbenchResult]:
        self.stop_flag.set()
        self.join(CHUNK_S * 40)
        return self.results


# -- one layout -------------------------------------------------------------------------------


@dataclass
class Outcome:
    layout: str
    postmaster_before: int | None = None
    postmaster_after: int | None = None
    pg_killed: list[str] = field(default_factory=list)  # "kernel postgres 123", "earlyoom ..."
    pg_crash_recoveries: int = 0
    committed: int = 0
    failed_tx: int = 0
    aborted_clients: int = 0
    rows: int = 0
    kernel_kills: int = 0
    kernel_victims: list[str] = field(default_factory=list)
    earlyoom_victims: list[str] = field(default_factory=list)
    evictions: list[dict[str, Any]] = field(default_factory=list)
    first_actor: str = "nobody"
    first_avail_mib: float | None = None
    storm_by: str = "nobody"
    leak_by: str = "nobody"
    leak_kernel_kills: int = 0
    tps: float = 0.0
    largest_before: str = ""
    storm: str = ""
    wall: float = 0.0
    min_avail_mib: float | None = None
    job_log: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Job:
    """The storm-then-leak sidecar's files and environment."""

    base: Path
    workers: int = 8
    size_mb: int = 64

    @property
    def trigger(self) -> Path:
        return self.base / "job-trigger"

    @property
    def stormed(self) -> Path:
        return self.base / "job-stormed"

    @property
    def leaking(self) -> Path:
        return self.base / "job-leaking"

    def env(self) -> dict[str, str]:
        floor = int(meminfo("MemTotal") * 0.10)
        return {
            "TRIGGER": str(self.trigger),
            "STORMED": str(self.stormed),
            "LEAKING": str(self.leaking),
            "STORM_HOLD": str(STORM_HOLD_S),
            "LEAK_PREFILL_TO": str(floor + LEAK_MARGIN),
            "LEAK_MB_S": str(LEAK_MB_S),
        }

    def argv(self) -> list[str]:
        return [PYTHON, "-S", "-c", JOB]

    def reset(self) -> None:
        for p in (self.trigger, self.stormed, self.leaking):
            p.unlink(missing_ok=True)


def size_storm(job: Job, warm_rss: int) -> None:
    """Storm workers each 80 % of the warm backend's RSS, enough of them to want 1.15 x the
    memory available now: the machine runs out, PostgreSQL stays the largest process."""
    job.size_mb = max(16, int(warm_rss * 0.8) // MiB)
    job.workers = max(2, -(-int(meminfo("MemAvailable") * 1.15) // (job.size_mb * MiB)))


def oomguard_config(cluster: Cluster, job: Job) -> dict[str, Any]:
    """The seed's oomguard config: PostgreSQL the primary, the job a sidecar, no limit at all."""
    return {
        "oomguard": {"pressure": {"hysteresis": "5s", "cooldown": "2s"}},
        "service": {
            "postgres": {
                "role": "primary",
                "command": [_tool("postgres"), "-D", str(cluster.pgdata)],
                "user": "postgres",
                "stop_signal": "SIGINT",
                "stop_timeout": "30s",
                "start_secs": "3s",
                "survive_partial_kill": True,
                "log": "prefix",
                "env": {
                    "PG_OOM_ADJUST_FILE": "/proc/self/oom_score_adj",
                    "PG_OOM_ADJUST_VALUE": "0",
                },
            },
            "job": {
                "command": job.argv(),
                "criticality": 10,
                "depends_on": ["postgres"],
                "stop_timeout": "2s",
                "backoff_initial": "1s",
                "max_restarts": 100,
                "log": "prefix",
                "env": job.env(),
            },
        },
    }


class Plain:
    """PostgreSQL and the job in plain cgroups without limits (for `kernel` and `earlyoom`); a
    shell loop restarts the job when it ends, as a container runtime's restart policy would."""

    def __init__(self, scratch: Path, cluster: Cluster, job: Job, earlyoom: bool) -> None:
        self.scratch = scratch
        self.cluster = cluster
        self.job = job
        self.logs = cluster.base / ("logs-earlyoom" if earlyoom else "logs-kernel")
        self.logs.mkdir(exist_ok=True)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.earlyoom = earlyoom

    def start(self) -> None:
        env = {**os.environ, **self.job.env()}
        for name in ("pg", "job", "earlyoom"):
            (self.scratch / name).mkdir(exist_ok=True)
        pg = as_postgres([_tool("postgres"), "-D", str(self.cluster.pgdata)])
        self.procs.append(spawn_in(self.scratch / "pg", pg, self.logs / "postgres.log", env))
        loop = f"while :; do {shlex.join(self.job.argv())}; sleep 1; done"
        self.procs.append(
            spawn_in(self.scratch / "job", ["/bin/sh", "-c", loop], self.logs / "job.log", env)
        )
        if self.earlyoom:
            self.procs.append(
                spawn_in(
                    self.scratch / "earlyoom",
                    [EARLYOOM, "-r", "0"],
                    self.logs / "earlyoom.log",
                    env,
                )
            )

    def pg_log(self) -> str:
        return (self.logs / "postgres.log").read_text(errors="replace")

    def earlyoom_log(self) -> str:
        try:
            return (self.logs / "earlyoom.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def job_log(self) -> str:
        return (self.logs / "job.log").read_text(errors="replace")

    def stop(self) -> None:
        pg = self.procs[0] if self.procs else None
        for name in ("job", "earlyoom"):
            kill_cgroup(self.scratch / name)
        postmaster = self.cluster.postmaster_pid()
        if postmaster is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGINT)
            with contextlib.suppress(AssertionError):
                wait(lambda: self.cluster.postmaster_pid() is None, 60, "PostgreSQL to stop")
        kill_cgroup(self.scratch / "pg")
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
        del pg


def kill_cgroup(cgroup: Path) -> None:
    if not cgroup.is_dir():
        return
    with contextlib.suppress(OSError):
        cg_write(cgroup / "cgroup.kill", "1")
    with contextlib.suppress(AssertionError):
        wait(lambda: "populated 0" in (cgroup / "cgroup.events").read_text(), 30, "empty")


def kernel_log() -> list[str]:
    return subprocess.run(
        ["dmesg"], capture_output=True, text=True, check=False
    ).stdout.splitlines()


def run_layout(
    layout: str,
    cluster: Cluster,
    *,
    scratch: Path,
    start_oomguard: Any = None,
    storm_timeout: float = 420.0,
    leak_timeout: float = 240.0,
) -> tuple[Outcome, Oomguard | None]:
    """Run the seed's case once under `layout`. `start_oomguard(config) -> Oomguard` starts
    oomguard for the `oomguard` layout (the caller owns its tree and its closing)."""
    out = Outcome(layout)
    t0 = time.monotonic()
    job = Job(cluster.base)
    job.reset()
    kills0 = vmstat_oom_kills()
    dmesg0 = len(kernel_log())
    plain: Plain | None = None
    og: Oomguard | None = None
    warm: WarmBackend | None = None
    load: Load | None = None
    sampler = Sampler()
    try:
        if layout == "oomguard":
            og = start_oomguard(oomguard_config(cluster, job))
            og.wait_running("postgres", timeout=180)
        else:
            plain = Plain(scratch, cluster, job, earlyoom=layout == "earlyoom")
            plain.start()
            if plain.earlyoom:
                sampler.earlyoom_log = plain.logs / "earlyoom.log"
        wait(lambda: cluster.ready(PG_PORT), 180, "PostgreSQL to accept connections")
        cluster.psql("TRUNCATE ledger RESTART IDENTITY")
        out.postmaster_before = cluster.postmaster_pid()
        warm = WarmBackend(cluster)
        wait(lambda: _warm_rss() > 0, 300, "a backend holding the buffer pool")
        size_storm(job, _warm_rss())
        top = largest_processes()
        out.largest_before = ", ".join(f"{n} {r // MiB}M" for r, _, n in top)
        sampler.start()
        load = Load(cluster)
        load.start()
        time.sleep(CHUNK_S / 2)
        out.storm = f"{job.workers} x {job.size_mb} MiB"
        job.trigger.write_text(f"{job.workers} {job.size_mb}\n")
        progress(f"{layout}: storm of {out.storm} (largest before: {out.largest_before})")
        try:
            wait(job.leaking.exists, storm_timeout, "the storm to end and the leak to start")
        except AssertionError:
            out.notes.append(f"the storm phase did not end within {storm_timeout:g}s")
        if job.leaking.exists():
            leak_t = job.leaking.stat().st_mtime
            leak_pid = int(job.leaking.read_text().split()[0])
            progress(f"{layout}: leak of {LEAK_MB_S} MiB/s started")
            with contextlib.suppress(AssertionError):
                wait(lambda: not Path(f"/proc/{leak_pid}").exists(), leak_timeout, "leak end")
            if Path(f"/proc/{leak_pid}").exists():
                out.notes.append(f"the leak still ran after {leak_timeout:g}s")
        else:
            leak_t = time.time()
        progress(f"{layout}: leak over; stopping the load")
        time.sleep(2)
        results = load.stop()
        out.tps = sum(r.processed for r in results) / max(load.wall, 1e-9)
        out.committed = sum(r.processed for r in results)
        out.failed_tx = sum(r.failed for r in results)
        out.aborted_clients = sum(r.aborted_clients for r in results)
        wait(lambda: cluster.ready(PG_PORT), 180, "PostgreSQL after the load")
        out.rows = int(cluster.psql("SELECT count(*) FROM ledger"))
        out.postmaster_after = cluster.postmaster_pid()
        sampler.stop()
        _attribute(out, layout, sampler, kills0, dmesg0, leak_t, og, plain)
        out.min_avail_mib = min(a for _t, a, _k in sampler.samples) / MiB
    finally:
        job_text = og.output() if og is not None else plain.job_log() if plain else ""
        out.job_log = [ln for ln in job_text.splitlines() if "job" in ln][-8:]
        if load is not None and load.is_alive():
            load.stop()
        sampler.stop_flag.set()
        if warm is not None:
            warm.stop()
        if plain is not None:
            plain.stop()
        job.reset()
        out.wall = time.monotonic() - t0
    return out, og


def _warm_rss() -> int:
    """RSS of the largest postgres process once it holds most of the table, else 0."""
    for rss, _pid, name in largest_processes(5):
        if name == "postgres" and rss > 40 * MiB:
            return rss
    return 0


def _attribute(
    out: Outcome,
    layout: str,
    sampler: Sampler,
    kills0: int,
    dmesg0: int,
    leak_t: float,
    og: Oomguard | None,
    plain: Plain | None,
) -> None:
    out.kernel_kills = vmstat_oom_kills() - kills0
    new = kernel_log()[dmesg0:]
    victims = [(int(m.group(1)), m.group(2)) for ln in new if (m := KILLED.search(ln))]
    out.kernel_victims = [f"{name} {pid}" for pid, name in victims]
    pg_text = og.output() if og is not None else plain.pg_log() if plain is not None else ""
    out.pg_crash_recoveries = pg_text.count("terminating any other active server processes")
    out.pg_killed = [f"kernel: {v}" for v in out.kernel_victims if v.startswith("postgres")]
    if plain is not None:
        hits = EARLYOOM_KILL.findall(plain.earlyoom_log())
        out.earlyoom_victims = [f"{name} {pid} ({sig})" for sig, pid, name in hits]
        out.pg_killed += [
            f"earlyoom: {v}" for v in out.earlyoom_victims if v.startswith("postgres")
        ]
    acts: list[tuple[float, str]] = []
    first_kernel = sampler.first_kernel_kill()
    if first_kernel is not None:
        acts.append((first_kernel[0], "kernel"))
    if og is not None:
        out.evictions = [e for e in og.events("evict", "job") if "budget" in e]
        acts += [(float(e["ts"]), "oomguard") for e in out.evictions]
    acts += [(t, "earlyoom") for t, _avail in sampler.earlyoom_kills]
    acts.sort()
    if acts:
        ts, who = acts[0]
        out.first_actor = who
        if who == "kernel" and first_kernel is not None:
            avail: int | None = first_kernel[1]
        elif who == "earlyoom":
            avail = sampler.earlyoom_kills[0][1]
        else:
            avail = sampler.avail_at(ts)
        out.first_avail_mib = None if avail is None else avail / MiB
    storm = [who for ts, who in acts if ts < leak_t]
    leak = [who for ts, who in acts if ts >= leak_t]
    out.storm_by = storm[0] if storm else "nobody (the storm ended by itself)"
    out.leak_by = leak[0] if leak else "nobody"
    leak_kernel = sampler.first_kernel_kill(after=leak_t)
    out.leak_kernel_kills = 0 if leak_kernel is None else 1
    if leak_kernel is not None:
        out.leak_kernel_kills = vmstat_oom_kills() - next(
            k for t, _a, k in sampler.samples if t >= leak_t
        )


def earlyoom_available() -> bool:
    return os.access(EARLYOOM, os.X_OK) or shutil.which("earlyoom") is not None
