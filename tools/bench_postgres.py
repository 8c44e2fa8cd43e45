#!/usr/bin/env python3
"""PostgreSQL benchmark (`python3 -m tools.bench --only postgres`, or `python3 -m
tools.bench_postgres`): the same database, load and sidecar storms in two layouts, N storms
each, on a real cgroup v2 kernel.

  A  a plain "container": PostgreSQL, pgbouncer and the backup job in ONE cgroup with
     memory.max 1G, every process at oom_score_adj 0 (nothing adjusted);
  B  oomguard with examples/postgres/oomguard.toml ([oomguard] memory_max 1G: the same total).

The workload, identical in A and B:

* PostgreSQL 15 with shared_buffers 256MB (a quarter of the 1G, the usual advice) and a pgbench
  database of scale 15 (pgbench_accounts ~192MB, fits in shared_buffers), warmed up before
  every storm: pgbench_accounts is prewarmed, then four pooled server connections each read all
  of it, as the long-lived backends behind a pooler of a running database do over time. The
  kernel counts the shared buffers a process touched in its RSS, so each of these backends
  shows ~200MB, although killing one frees almost none of it.
* Load: pgbench -c 4 through pgbouncer, one ledger row per committed transaction (-R 50), in
  10 s runs back to back from before the first storm until after the last.
* A storm: the backup job (examples/postgres/backup-job.sh, STORM_TOOL=python) allocates 800M
  in all and holds it up to 20 s. Not with stress-ng here: its vm workers set their own
  oom_score_adj to 1000, which would decide the plain container's outcome in their disfavour;
  a real job keeps the value it inherits. Two shapes of the same 800M: 8 processes of 100M (a
  parallel job, each process smaller than a warmed-up backend) and 1 process of 800M (one big
  job). Both exhaust the 1G of A together with PostgreSQL; in B they meet the 256M sidecar
  budget.

Columns: primary killed = storms during which the kernel OOM-killed any PostgreSQL process (a
backend kill makes the postmaster end every session and run crash recovery) or PostgreSQL
restarted; failed tx = pgbench's failed transactions plus clients it aborted (each lost its
transaction in flight); rows lost = committed transactions minus ledger rows at the end;
downtime = time pg_isready failed on PostgreSQL's own socket (probed every 0.5 s); sidecar
recoveries = storms after which the backup job ran again within 60 s; storms stopped by = who
ended them: oomguard's evictions, and the OOM killer's victims by process name (from the kernel
log; "postgres" is any PostgreSQL process, "python3" a storm process).

The throughput section (`--throughput`, `python3 -m tools.bench --only throughput`) has no
storm: the same database (pgbench_accounts prewarmed in shared_buffers), pgbench -c 4 flat out for
`--seconds`, in rounds that run every `--variants` layout once each, alternating the order:
the plain container, the shipped example, and the example with limits on the primary (to price
each limit). It prints tps per round, the mean, the ratio to the plain container, the `high`
events of the primary's cgroup (throttling) and its memory.peak.

Runs natively where this host has a writable cgroup2 memory controller (as root), else in the
QEMU guest of tools/vmrun.py (3G of guest RAM: the 1G layout plus the database on tmpfs).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.kernel.pg import (
    BOUNCER_PORT,
    PG_PORT,
    Cluster,
    PgbenchResult,
    example_config,
    missing_tools,
    pg_bin,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tests.kernel.support import Oomguard

REPO = Path(__file__).resolve().parent.parent

TOTAL = "1G"
TOTAL_BYTES = 1 << 30
SHARED_BUFFERS = "256MB"
SCALE = 15
RATE = 50
CHUNK_S = 10
STORM_SECONDS = 20
SETTLE_S = 120.0
#: A backend that touched this much of shared_buffers counts as warm (the table is ~192MB, of
#: which a backend that read all of it shows 90-160MB in the guest).
WARM_BYTES = 80 << 20
#: Storm shapes: (processes, total bytes). The same 800M either way; only the shape differs.
SHAPES = {"8x100M": (8, "800M"), "1x800M": (1, "800M")}
KILLED = re.compile(r"Killed process (\d+) \(([^)]*)\)")


def log(msg: str) -> None:
    print(f"bench-postgres: {msg}", file=sys.stderr, flush=True)


# -- where to run -------------------------------------------------------------------------------


def native_mount() -> Path | None:
    """The cgroup2 mount if we may create cgroups with memory limits at its root (as root)."""
    if os.geteuid() != 0:
        return None
    from tools import ktest

    plan, _ = ktest.native_plan()
    if plan is None or plan.leaf is not None:
        return None
    mount: Path = plan.mount
    return mount


def cg_write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def kill_cgroup(cgroup: Path, *, remove: bool = True) -> None:
    """cgroup.kill the subtree, wait until it is empty, and (if `remove`) rmdir it bottom-up."""
    if not cgroup.is_dir():
        return
    with contextlib.suppress(OSError):
        cg_write(cgroup / "cgroup.kill", "1")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if "populated 0" in (cgroup / "cgroup.events").read_text():
                break
        time.sleep(0.1)
    if not remove:
        return
    for dirpath, _dirs, _files in sorted(os.walk(cgroup), key=lambda w: -len(w[0])):
        while time.monotonic() < deadline + 30:
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)


# -- observation --------------------------------------------------------------------------------


class KernelLog:
    """New OOM-kill lines of the kernel log since the last call."""

    def __init__(self) -> None:
        self.seen = len(self._lines())

    @staticmethod
    def _lines() -> list[str]:
        proc = subprocess.run(["dmesg"], capture_output=True, text=True, check=False)
        return proc.stdout.splitlines()

    def kills(self) -> list[tuple[int, str]]:
        lines = self._lines()
        new, self.seen = lines[self.seen :], len(lines)
        return [(int(m.group(1)), m.group(2)) for ln in new if (m := KILLED.search(ln))]


class Prober(threading.Thread):
    """pg_isready on PostgreSQL's own socket every `period`; sums the time it failed."""

    def __init__(self, cluster: Cluster, period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.period = period
        self.down = 0.0
        self.stop_flag = threading.Event()

    def run(self) -> None:
        last = time.monotonic()
        while not self.stop_flag.is_set():
            ok = self.cluster.ready(PG_PORT, timeout=1)
            now = time.monotonic()
            if not ok:
                self.down += now - last
            last = now
            self.stop_flag.wait(self.period)

    def stop(self) -> float:
        self.stop_flag.set()
        self.join(30)
        return self.down


class Load(threading.Thread):
    """pgbench runs of CHUNK_S seconds back to back until stopped."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.results: list[PgbenchResult] = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            result = self.cluster.pgbench(CHUNK_S, rate=RATE).result(timeout=CHUNK_S * 30)
            self.results.append(result)
            if result.processed == 0 and result.returncode != 0:
                self.stop_flag.wait(1.0)  # could not connect: do not spin

    def stop(self) -> list[PgbenchResult]:
        self.stop_flag.set()
        self.join(CHUNK_S * 40)
        return self.results


def top_rss(cgroup: Path, n: int = 4) -> str:
    """The `n` largest processes of a cgroup subtree by RSS (what the OOM killer ranks by),
    as "comm rss/shmem" in MiB."""
    rows: list[tuple[int, int, str]] = []
    for dirpath, _dirs, _files in os.walk(cgroup):
        try:
            pids = (Path(dirpath) / "cgroup.procs").read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            fields = dict(ln.split(":", 1) for ln in status.splitlines() if ":" in ln)
            rss = int(fields.get("VmRSS", "0 kB").split()[0]) >> 10
            shm = int(fields.get("RssShmem", "0 kB").split()[0]) >> 10
            rows.append((rss, shm, fields.get("Name", "?").strip()))
    rows.sort(reverse=True)
    return ", ".join(f"{name} {rss}/{shm}M" for rss, shm, name in rows[:n])


def max_shmem(cgroup: Path) -> int:
    """The largest RssShmem (bytes) of a process in the cgroup subtree."""
    best = 0
    for dirpath, _dirs, _files in os.walk(cgroup):
        try:
            pids = (Path(dirpath) / "cgroup.procs").read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            m = re.search(r"^RssShmem:\s+(\d+) kB", status, re.M)
            if m:
                best = max(best, int(m.group(1)) << 10)
    return best


# -- the two layouts ----------------------------------------------------------------------------


def _as_postgres(argv: Sequence[str]) -> list[str]:
    """exec argv as user postgres without a parent left behind (setpriv execs; runuser forks)."""
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *argv]


def _spawn_in(
    cgroup: Path, argv: Sequence[str], out: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    script = f"echo $$ > {shlex.quote(str(cgroup / 'cgroup.procs'))} && exec " + shlex.join(argv)
    with out.open("ab") as f:
        return subprocess.Popen(
            ["/bin/sh", "-c", script], stdout=f, stderr=subprocess.STDOUT, env=env, cwd="/"
        )


class PlainContainer:
    """Layout A. A plain container: no supervisor, nothing adjusted."""

    name = "A: one cgroup, memory.max 1G"

    def __init__(self, mount: Path, cluster: Cluster, workers: int, size: str) -> None:
        self.cgroup = mount / f"bench-pg-a-{os.getpid()}"
        self.cluster = cluster
        self.logs = cluster.base / "logs"
        self.logs.mkdir(exist_ok=True)
        bindir = pg_bin()
        assert bindir is not None
        self.pg_argv = _as_postgres([str(bindir / "postgres"), "-D", str(cluster.pgdata)])
        self.env = {
            **os.environ,
            "STORM_TRIGGER": str(cluster.storm_trigger),
            "STORM_WORKERS": str(workers),
            "STORM_BYTES": size,
            "STORM_SECONDS": str(STORM_SECONDS),
            "STORM_TOOL": "python",
            "BACKUP_INTERVAL": "2",
            "PGHOST": str(cluster.sockets),
        }
        self.postgres: subprocess.Popen[bytes] | None = None
        self.others: list[subprocess.Popen[bytes]] = []
        self.job: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        self.cgroup.mkdir()
        cg_write(self.cgroup / "memory.max", str(TOTAL_BYTES))
        self._start_all()

    def _start_all(self) -> None:
        self._start_postgres()
        self.others.append(
            _spawn_in(
                self.cgroup,
                _as_postgres(["pgbouncer", str(self.cluster.base / "pgbouncer.ini")]),
                self.logs / "pgbouncer.log",
                self.env,
            )
        )
        self.job = _spawn_in(
            self.cgroup,
            _as_postgres(["/bin/sh", str(REPO / "examples/postgres/backup-job.sh")]),
            self.logs / "backup.log",
            self.env,
        )

    def _start_postgres(self) -> None:
        self.postgres = _spawn_in(self.cgroup, self.pg_argv, self.logs / "postgres.log", self.env)

    def tick(self) -> None:
        """The postmaster itself died: a container whose main process exits is restarted by its
        runtime, everything in it killed first. Count it and do the same."""
        if self.postgres is None or self.postgres.poll() is None:
            return
        self.restarts += 1
        log("A: the postmaster died: restarting the container")
        kill_cgroup(self.cgroup, remove=False)
        for p in [self.job, *self.others]:
            if p is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
        self.others.clear()
        self._start_all()

    def job_log(self) -> str:
        return (self.logs / "backup.log").read_text(errors="replace")

    def postgres_log(self) -> str:
        return (self.logs / "postgres.log").read_text(errors="replace")

    def job_running(self) -> bool:
        return self.job is not None and self.job.poll() is None

    def job_exits(self) -> int:
        return 0  # no supervisor: the job's shell loop survives its storms, or nothing restarts it

    def postgres_restarts(self) -> int:
        return self.restarts

    def stop(self) -> None:
        if self.postgres is not None and self.postgres.poll() is None:
            self.postgres.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.postgres.wait(60)
        kill_cgroup(self.cgroup)
        for p in [self.postgres, self.job, *self.others]:
            if p is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)


class WithOomguard:
    """Layout B: `oomguard run` with the example config."""

    name = "B: oomguard, examples/postgres/oomguard.toml"

    def __init__(
        self,
        mount: Path,
        cluster: Cluster,
        workers: int,
        size: str,
        primary: dict[str, Any] | None = None,
    ) -> None:
        self.mount = mount
        self.scratch = mount / f"bench-pg-b-{os.getpid()}"
        self.cluster = cluster
        self.workdir = cluster.base / "oomguard"
        self.workdir.mkdir(exist_ok=True)
        self.config = example_config(
            cluster.base,
            {
                "service": {
                    "postgres": primary or {},
                    "backup": {
                        "env": {
                            "STORM_WORKERS": str(workers),
                            "STORM_BYTES": size,
                            "STORM_SECONDS": str(STORM_SECONDS),
                            "STORM_TOOL": "python",
                            "BACKUP_INTERVAL": "2",
                        },
                        "max_restarts": 100,
                    },
                }
            },
        )
        self.og: Oomguard | None = None

    def start(self) -> None:
        from tests.kernel.support import start_run

        self.scratch.mkdir()
        cg_write(self.scratch / "cgroup.subtree_control", "+memory +pids")
        self.og = start_run(self.workdir, self.mount, self.scratch, self.config)
        self.og.wait_running("postgres", "pgbouncer", "backup")

    def job_log(self) -> str:
        assert self.og is not None
        return "\n".join(ln for ln in self.og.output().splitlines() if ln.startswith("backup "))

    def job_running(self) -> bool:
        assert self.og is not None
        svc = self.og.service_state("backup")
        return svc is not None and svc.get("state") == "RUNNING"

    def postgres_restarts(self) -> int:
        assert self.og is not None
        return len(self.og.events("spawned", "postgres")) - 1

    @property
    def cgroup(self) -> Path:
        return self.scratch / "og"

    def job_exits(self) -> int:
        assert self.og is not None
        return sum(
            1
            for e in self.og.events(None, "backup")
            if e.get("kind") == "exit" or (e.get("kind") == "oom_kill" and "oom_killed" in e)
        )

    def tick(self) -> None:
        """oomguard does the restarting in this layout."""

    def evictions(self) -> int:
        assert self.og is not None
        return sum(1 for e in self.og.events("evict", "backup") if "budget" in e)

    def stop(self) -> None:
        if self.og is not None:
            self.og.close()
        kill_cgroup(self.scratch)


# -- one run ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    layout: str
    shape: str
    storms: int
    primary_killed: int = 0
    failed_tx: int = 0
    aborted_runs: int = 0
    committed: int = 0
    rows: int = 0
    downtime: float = 0.0
    recoveries: int = 0
    victims: dict[str, int] = field(default_factory=dict)
    evictions: int = 0
    wall: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def rows_lost(self) -> int:
        return max(0, self.committed - self.rows)


def _wait(probe: Any, timeout: float, tick: Any = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tick is not None:
            tick()
        if probe():
            return True
        time.sleep(0.25)
    return False


def prepare_cluster() -> Cluster:
    """init-db.sh, then pgbench -i at SCALE and pg_prewarm, with PostgreSQL running outside
    any layout (so the database files on tmpfs are charged to neither)."""
    cluster = Cluster.create(shared_buffers=SHARED_BUFFERS)
    bindir = pg_bin()
    assert bindir is not None
    out = (cluster.base / "prepare.log").open("ab")
    pg = subprocess.Popen(
        _as_postgres([str(bindir / "postgres"), "-D", str(cluster.pgdata)]),
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd="/",
    )
    try:
        if not _wait(lambda: cluster.ready(PG_PORT), 120):
            raise SystemExit("bench-postgres: PostgreSQL did not start for pgbench -i")
        t0 = time.monotonic()
        subprocess.run(
            [str(bindir / "pgbench"), "-i", "-q", "-s", str(SCALE), "-h", str(cluster.sockets),
             "-p", str(PG_PORT), "-U", "postgres", "bench"],
            stdout=out, stderr=subprocess.STDOUT, check=True, timeout=1800,
        )  # fmt: skip
        cluster.psql("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        log(f"pgbench -i -s {SCALE}: {time.monotonic() - t0:.0f}s")
    finally:
        pg.send_signal(signal.SIGINT)
        pg.wait(120)
        out.close()
    return cluster


def clone(template: Cluster) -> Cluster:
    """A copy of the prepared cluster for one run (cp -a keeps owners and modes)."""
    base = Path(str(template.base) + f"-run{time.monotonic_ns()}")
    subprocess.run(["cp", "-a", str(template.base), str(base)], check=True)
    # The copy's pgbouncer.ini, config paths and sockets must point at the copy.
    ini = base / "pgbouncer.ini"
    ini.write_text(ini.read_text().replace(str(template.base), str(base)))
    conf = base / "pgdata" / "postgresql.conf"
    conf.write_text(conf.read_text().replace(str(template.base), str(base)))
    (base / "ledger.sql").unlink(missing_ok=True)
    return Cluster(base)


def prewarm(cluster: Cluster) -> None:
    """Four sessions through pgbouncer at once, each holding its server connection while it
    reads every row of pgbench_accounts: four long-lived pooled backends that have touched the
    whole table in shared_buffers (pg_prewarm alone is not enough: a buffer another backend
    already loaded is pinned, not read, so its page is not touched)."""
    cluster.psql("SELECT pg_prewarm('pgbench_accounts')", timeout=600)
    sql = "BEGIN; SELECT sum(abalance) FROM pgbench_accounts; SELECT pg_sleep(2); COMMIT;"
    procs = [
        subprocess.Popen(
            [*cluster.psql_argv(port=BOUNCER_PORT), "-c", sql],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(4)
    ]
    for p in procs:
        p.wait(600)


def storm_count(text: str) -> tuple[int, int]:
    return (
        len(re.findall(r"backup-job: job \d+: storm:", text)),
        len(re.findall(r"backup-job: job \d+: storm ended", text)),
    )


def run_layout(kind: str, mount: Path, template: Cluster, shape: str, storms: int) -> Outcome:
    workers, size = SHAPES[shape]
    cluster = clone(template)
    layout: PlainContainer | WithOomguard
    if kind == "A":
        layout = PlainContainer(mount, cluster, workers, size)
    else:
        layout = WithOomguard(mount, cluster, workers, size)
    out = Outcome(layout=layout.name, shape=shape.replace("x", " x "), storms=storms)
    t0 = time.monotonic()
    klog = KernelLog()
    try:
        layout.start()
        if not _wait(lambda: cluster.ready(BOUNCER_PORT), SETTLE_S, layout.tick):
            raise SystemExit(f"bench-postgres: {kind}: pgbouncer never accepted connections")
        prober = Prober(cluster)
        prober.start()
        load = Load(cluster)
        load.start()
        time.sleep(CHUNK_S / 2)
        for i in range(storms):
            # Before every storm (the same rule in A and B): if the pooled backends have not
            # read the big table (first storm, or fresh backends after a crash recovery), they
            # do now, as they would have on a database that has been running for a while.
            if max_shmem(layout.cgroup) < WARM_BYTES:
                prewarm(cluster)
            klog.kills()
            before = top_rss(layout.cgroup)
            started, ended_before = storm_count(layout.job_log())
            exits_before = layout.job_exits()
            restarts_before = layout.postgres_restarts()
            crashes_before = _crash_restarts(layout)
            cluster.storm_trigger.touch()
            if not _wait(lambda s=started: storm_count(layout.job_log())[0] > s, 120, layout.tick):
                out.notes.append(f"storm {i + 1} never started")
                break
            cluster.storm_trigger.unlink()

            def ended(before: int = ended_before, exits: int = exits_before) -> bool:
                # The job says so (stress-ng finished or lost its workers), or oomguard saw it
                # exit (evicted or OOM-killed as a whole).
                return storm_count(layout.job_log())[1] > before or layout.job_exits() > exits

            peak = ""
            deadline = time.monotonic() + STORM_SECONDS + 60
            while not ended() and time.monotonic() < deadline:
                layout.tick()
                peak = top_rss(layout.cgroup) or peak
                time.sleep(0.5)
            if not ended():
                out.notes.append(f"storm {i + 1} did not end within {STORM_SECONDS + 60}s")
            back = _wait(
                lambda: cluster.ready(PG_PORT) and cluster.ready(BOUNCER_PORT),
                SETTLE_S,
                layout.tick,
            )
            recovered = _wait(layout.job_running, 60, layout.tick)
            out.recoveries += int(recovered)
            kills = klog.kills()
            for _pid, comm in kills:
                out.victims[comm] = out.victims.get(comm, 0) + 1
            pg_killed = any(comm.startswith("postgres") for _, comm in kills)
            restarted = layout.postgres_restarts() > restarts_before
            crashed = _crash_restarts(layout) > crashes_before
            if pg_killed or restarted or crashed:
                out.primary_killed += 1
            if not back:
                out.notes.append(f"storm {i + 1}: PostgreSQL not back within {SETTLE_S:g}s")
            log(
                f"{kind} {shape} storm {i + 1}/{storms}: OOM-killed {[c for _, c in kills]}, "
                f"crash recovery {crashed}, restarted {restarted}, job back {recovered}; "
                f"largest before: {before}; during: {peak}; "
                f"memory.events {_events(layout.cgroup)}"
            )
            for line in layout.job_log().splitlines()[-12:]:
                log(f"    {line}")
        if isinstance(layout, WithOomguard):
            out.evictions = layout.evictions()
        results = load.stop()
        out.downtime = prober.stop()
        out.committed = sum(r.processed for r in results)
        out.failed_tx = sum(r.failed + r.aborted_clients for r in results)
        out.aborted_runs = sum(1 for r in results if not r.ok)
        _wait(lambda: cluster.ready(PG_PORT), SETTLE_S, layout.tick)
        out.rows, _ = cluster.ledger()
    finally:
        layout.stop()
        out.wall = time.monotonic() - t0
        cluster.remove()
    return out


def _events(cgroup: Path) -> str:
    try:
        text = (cgroup / "memory.events").read_text()
    except OSError:
        return "?"
    return " ".join(ln for ln in text.splitlines() if ln.split()[-1] != "0")


def _crash_restarts(layout: PlainContainer | WithOomguard) -> int:
    """PostgreSQL's own crash recoveries so far (a backend killed: all sessions end)."""
    if isinstance(layout, PlainContainer):
        text = layout.postgres_log()
    else:
        assert isinstance(layout, WithOomguard) and layout.og is not None
        text = layout.og.output()
    return text.count("terminating any other active server processes")


# -- throughput (no storm) ----------------------------------------------------------------------

WARMUP_S = 5
#: Throughput layouts: the plain container, the shipped example, and the example with limits on
#: the primary, to price each: the cap of the previous example (high 384M, max 512M; above this
#: workload's working set) and a memory_high at about the working set. The watermark is off in
#: those ("max"), so that only the limit is priced, not a controlled restart.
VARIANTS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "plain": ("plain container: one cgroup, memory.max 1G", None),
    "example": ("oomguard, examples/postgres/oomguard.toml (primary: memory.low 736M)", {}),
    "nolow": ("oomguard, example with memory_low 0 (no protection)", {"memory_low": "0"}),
    "cap": (
        "oomguard, example + primary memory_high 384M, memory_max 512M (the previous example)",
        {"memory_high": "384M", "memory_max": "512M", "watermark": "max"},
    ),
    "high256": (
        "oomguard, example + primary memory_high 256M (about its working set)",
        {"memory_high": "256M", "watermark": "max"},
    ),
    "high224": (
        "oomguard, example + primary memory_high 224M (just below its working set)",
        {"memory_high": "224M", "watermark": "max"},
    ),
}
DEFAULT_VARIANTS = "plain,example,nolow,cap,high256"


@dataclass
class Throughput:
    variant: str
    #: tps by round number.
    rounds: dict[int, float] = field(default_factory=dict)
    #: memory.events "high" of the primary's cgroup during the measured runs (throttling).
    high: list[int] = field(default_factory=list)
    peak: list[int] = field(default_factory=list)
    failed: int = 0
    #: Rounds in which this layout did not come up (no figure).
    lost: int = 0


def _primary_cgroup(layout: PlainContainer | WithOomguard) -> Path:
    return layout.cgroup if isinstance(layout, PlainContainer) else layout.cgroup / "postgres"


def _events_high(cgroup: Path) -> int:
    try:
        text = (cgroup / "memory.events").read_text()
    except OSError:
        return 0
    m = re.search(r"^high (\d+)", text, re.M)
    return int(m.group(1)) if m else 0


def _peak(cgroup: Path) -> int:
    try:
        return int((cgroup / "memory.peak").read_text())
    except (OSError, ValueError):
        return 0


def throughput_run(
    variant: str, mount: Path, template: Cluster, seconds: int
) -> tuple[float, int, int, int]:
    """One measured pgbench run in a fresh copy of the database: (tps, high events of the
    primary's cgroup, its memory.peak, failed transactions)."""
    cluster = clone(template)
    _, primary = VARIANTS[variant]
    layout: PlainContainer | WithOomguard
    if primary is None:
        layout = PlainContainer(mount, cluster, 1, "1M")
    else:
        layout = WithOomguard(mount, cluster, 1, "1M", primary)
    try:
        layout.start()
        if not _wait(lambda: cluster.ready(BOUNCER_PORT), SETTLE_S, layout.tick):
            raise SystemExit(f"bench-postgres: {variant}: pgbouncer never accepted connections")
        cluster.psql("SELECT pg_prewarm('pgbench_accounts')", timeout=600)
        cluster.pgbench(WARMUP_S).result(timeout=WARMUP_S * 40)
        high_before = _events_high(_primary_cgroup(layout))
        result = cluster.pgbench(seconds).result(timeout=seconds * 40)
        high = _events_high(_primary_cgroup(layout)) - high_before
        peak = _peak(_primary_cgroup(layout))
    finally:
        layout.stop()
        cluster.remove()
    return result.processed / seconds, high, peak, result.failed + result.aborted_clients


def throughput(args: argparse.Namespace, mount: Path, template: Cluster) -> list[Throughput]:
    """`args.pairs` rounds; each runs every variant once, the order reversed every other round
    (plain, example, ..., then ..., example, plain), so a drift of the shared host's speed
    weighs on every variant alike."""
    variants = args.variants.split(",")
    out = {v: Throughput(v) for v in variants}
    for i in range(args.pairs):
        order = variants if i % 2 == 0 else variants[::-1]
        for v in order:
            try:
                tps, high, peak, failed = throughput_run(v, mount, template, args.seconds)
            except (AssertionError, OSError, subprocess.SubprocessError) as err:
                # One layout that does not come up (a slow guest) costs its round, not the run.
                log(f"round {i + 1}/{args.pairs} {v}: FAILED: {str(err)[:2000]}")
                out[v].lost += 1
                continue
            rec = out[v]
            rec.rounds[i] = tps
            rec.high.append(high)
            rec.peak.append(peak)
            rec.failed += failed
            log(f"round {i + 1}/{args.pairs} {v}: {tps:.1f} tps, high events {high}, "
                f"peak {peak >> 20}M, failed {failed}")  # fmt: skip
    return [out[v] for v in variants]


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def throughput_table(results: Sequence[Throughput]) -> str:
    base = next((r for r in results if r.variant == "plain"), None)
    head = "| layout | tps per round | mean tps | vs plain | primary high events | peak |"
    rows = [head, "|---|---|---|---|---|---|"]
    for r in results:
        tps = list(r.rounds.values())
        ratio = ""
        if base is not None and base is not r:
            # Over the rounds both ran, and per round: each round's runs are neighbours in time.
            both = [k for k in r.rounds if base.rounds.get(k)]
            mine, theirs = [r.rounds[k] for k in both], [base.rounds[k] for k in both]
            if both and _mean(theirs):
                ratio = f"{100 * _mean(mine) / _mean(theirs):.1f} %"
                per = [100 * r.rounds[k] / base.rounds[k] for k in both]
                ratio += f" (rounds {min(per):.0f}-{max(per):.0f} %)"
        elif base is r:
            ratio = "100 %"
        rows.append(
            f"| {VARIANTS[r.variant][0]} | {' '.join(f'{t:.0f}' for t in tps) or '-'} | "
            f"{_mean(tps):.1f} | {ratio} | {sum(r.high)} | "
            f"{max(r.peak, default=0) >> 20} MiB |"
        )
    return "\n".join(rows)


def inside_throughput(args: argparse.Namespace, mount: Path) -> int:
    t0 = time.monotonic()
    template = prepare_cluster()
    try:
        results = throughput(args, mount, template)
    finally:
        template.remove()
    print(f"\nLinux {os.uname().release}; throughput, no storm: {args.pairs} rounds of "
          f"pgbench -c 4 -T {args.seconds} flat out (one ledger INSERT per transaction, through "
          f"pgbouncer, pgbench_accounts prewarmed in shared_buffers, after "
          f"{WARMUP_S} s of warm-up), {time.monotonic() - t0:.0f} s in all.\n")  # fmt: skip
    print(throughput_table(results))
    for r in results:
        if r.lost:
            print(f"note: {VARIANTS[r.variant][0]}: {r.lost} rounds lost (did not come up)")
    failed = sum(r.failed for r in results)
    if failed:
        print(f"note: {failed} failed transactions or aborted clients in all")
    return 0


# -- the table ----------------------------------------------------------------------------------


def table(outcomes: Sequence[Outcome]) -> str:
    head = (
        "| layout | storm (processes x size) | primary killed | failed tx | rows lost | "
        "primary downtime | sidecar recoveries | storms stopped by |"
    )
    rows = [head, "|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        stopped = []
        if o.evictions:
            stopped.append(f"oomguard: {o.evictions} evictions")
        if o.victims:
            kills = ", ".join(f"{n} {c}" for c, n in sorted(o.victims.items()))
            stopped.append(f"OOM killer: {kills}")
        rows.append(
            f"| {o.layout} | {o.shape} | {o.primary_killed}/{o.storms} | {o.failed_tx} | "
            f"{o.rows_lost} of {o.committed} | {o.downtime:.1f} s | "
            f"{o.recoveries}/{o.storms} | {'; '.join(stopped) or '-'} |"
        )
    return "\n".join(rows)


def inside(args: argparse.Namespace) -> int:
    missing = missing_tools()
    if missing:
        print(f"bench-postgres: missing {', '.join(missing)}", file=sys.stderr)
        return 1
    mount = native_mount()
    if mount is None:
        print("bench-postgres: no writable cgroup2 memory controller here", file=sys.stderr)
        return 1
    if args.throughput:
        return inside_throughput(args, mount)
    t0 = time.monotonic()
    template = prepare_cluster()
    outcomes: list[Outcome] = []
    try:
        for shape in args.shapes.split(","):
            for kind in args.layouts.split(","):
                log(f"layout {kind}, storm {shape}, {args.storms} storms")
                outcome = run_layout(kind, mount, template, shape, args.storms)
                log(f"  done in {outcome.wall:.0f}s: {outcome}")
                outcomes.append(outcome)
    finally:
        template.remove()
    print(f"\nLinux {os.uname().release}; {time.monotonic() - t0:.0f} s in all.\n")
    print(table(outcomes))
    print()
    for o in outcomes:
        print(f"{o.layout}, {o.shape}: {o.wall:.0f} s, {o.aborted_runs} pgbench runs cut short")
    for o in outcomes:
        for note in o.notes:
            print(f"note: {o.layout}, {o.shape}: {note}")
    return 0


def run(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench_postgres.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--storms", type=int, default=5, help="storms per layout and shape (5)")
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--layouts", default="A,B", help="A (plain container), B (oomguard)")
    ap.add_argument(
        "--throughput",
        action="store_true",
        help="the throughput section instead: no storm, pgbench flat out",
    )
    ap.add_argument("--pairs", type=int, default=5, help="throughput: rounds (5)")
    ap.add_argument("--seconds", type=int, default=20, help="throughput: pgbench -T (20)")
    ap.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help=f"throughput: comma list of {', '.join(VARIANTS)} ({DEFAULT_VARIANTS})",
    )
    ap.add_argument("--vm-timeout", type=int, default=3600, help="guest time limit, seconds")
    ap.add_argument("--mem", default="3G", help="guest RAM (3G)")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(list(argv))
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            ap.error(f"unknown variant {variant!r}; have {', '.join(VARIANTS)}")
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            ap.error(f"unknown shape {shape!r}; have {', '.join(SHAPES)}")
    command = ("python3 -m tools.bench_postgres " + shlex.join(list(argv))).strip()
    if args.inside:
        return inside(args)
    if native_mount() is not None:
        rc = inside(args)
        print(f"\nCommand: `{command}` (native, {os.uname().release})")
        return rc
    print("== postgres: in the QEMU guest (TCG, 1 vCPU)", flush=True)
    cmd = [
        sys.executable,
        str(REPO / "tools" / "vmrun.py"),
        "--timeout",
        str(args.vm_timeout),
        "--mem",
        args.mem,
        "--",
        sys.executable,
        "-m",
        "tools.bench_postgres",
        "--inside",
        *argv,
    ]
    rc = subprocess.run(cmd, cwd=REPO, check=False).returncode
    print(f"\nCommand: `{command}` (in the QEMU guest of tools/vmrun.py: TCG, 1 vCPU, {args.mem})")
    return rc


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
