#!/usr/bin/env python3
"""Issue 11's PostgreSQL acceptance, measured (`python3 -m tools.bench --only runaway,restart`,
or `python3 -m tools.bench_pg_runaway`): on a real cgroup v2 kernel with real PostgreSQL 15.

runaway  One psql session aggregates RUNAWAY_MIB MiB in one query (pg.runaway_sql: one
         string_agg, the backend grows by exactly that) while pgbench -c 4 inserts one
         numbered ledger row per transaction straight into PostgreSQL. Two layouts, the same
         memory.max for PostgreSQL:
           A  a plain cgroup: PostgreSQL alone in it, memory.max PRIMARY_MAX, nothing else;
           B  oomguard with examples/postgres/oomguard.toml, its primary at memory_high
              PRIMARY_HIGH, memory_max PRIMARY_MAX, and its `[service.postgres.shed]` rule.
         Printed side by side: kernel OOM kills, postmaster pid before/after, whether the
         postmaster logged "terminating any other active server processes" (it reset every
         session), the runaway's end, pgbench's failed transactions and aborted clients, rows
         against commits.
restart  A controlled restart of PostgreSQL (shared_buffers 256MB, under pgbench load) from
         the stop to the first successful pg_isready, split into its parts, beside the same
         restart done by hand on a bare postgres in a plain cgroup (SIGINT, wait, start, poll
         pg_isready) in the same run.

Runs natively where this host has a writable cgroup2 memory controller (as root), else in the
QEMU guest of tools/vmrun.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.kernel.pg import (
    PG_PORT,
    ChunkedLoad,
    Cluster,
    Runaway,
    RunawayResult,
    RunawayScenario,
    example_config,
    missing_tools,
    pg_bin,
    prefill,
    service_key_supported,
)
from tools.bench_postgres import (
    KernelLog,
    _as_postgres,
    _spawn_in,
    cg_write,
    kill_cgroup,
    native_mount,
)

REPO = Path(__file__).resolve().parent.parent

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from tests.kernel.pg import PgbenchResult
    from tests.kernel.support import Oomguard

#: The session needs 700 MiB; memory_high is below it, memory_max above it; the session plus
#: the resident database (scale 6: ~100 MiB on tmpfs, charged to PostgreSQL) exceed memory_max.
SCENARIO = RunawayScenario(mib=700, watermark="448M", high="512M", max="768M", scale=6)
#: pgbench: 4 clients at a fixed rate (a served database, not one pinned at 100 % CPU of the
#: guest's single vCPU), for long enough to see the runaway start and end.
CLIENTS = 4
RATE = 50
CHUNK_S = 10
RUNAWAY_TIMEOUT_S = 1800
RUNAWAY_AFTER_S = 3.0
RESET_LINE = "terminating any other active server processes"
SHUTDOWN_SHARED_BUFFERS = "256MB"


def log(msg: str) -> None:
    print(f"bench-pg-runaway: {msg}", file=sys.stderr, flush=True)


def wait_for(probe: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(interval)
    return None


# -- the runaway session under load -------------------------------------------------------------


@dataclass
class Load:
    """What one runaway-under-load run saw, whatever the layout."""

    pgbench: PgbenchResult
    runaway: RunawayResult
    rows: int
    postmaster_before: int | None
    postmaster_after: int | None
    #: memory.current of PostgreSQL's cgroup just before the runaway session started (bytes).
    resident: int
    #: pgbench runs, and those that exited non-zero (cut short, or could not connect: a run
    #: that starts while PostgreSQL recovers fails to connect and counts no transaction).
    runs: int = 0
    bad_runs: int = 0


def runaway_under_load(cluster: Cluster, cgroup: Path, mib: int) -> Load:
    """pgbench -c 4 -R 50 in 10 s runs on PostgreSQL's own socket; RUNAWAY_AFTER_S into it, the
    runaway session; the load goes on until a full run after the session ended. Then waits for
    PostgreSQL to answer, and counts the rows."""
    before = cluster.postmaster_pid()
    load = ChunkedLoad(cluster, chunk=CHUNK_S, clients=CLIENTS, rate=RATE).start()
    time.sleep(RUNAWAY_AFTER_S)
    resident = _current(cgroup)
    runaway = Runaway.start(cluster, mib).wait(timeout=RUNAWAY_TIMEOUT_S)
    wait_for(lambda: cluster.ready(PG_PORT), 120, interval=0.5)
    time.sleep(CHUNK_S)
    result = load.stop()
    rows, _ = cluster.ledger()
    bad = sum(1 for r in load.results if r.returncode != 0)
    after = cluster.postmaster_pid()
    return Load(result, runaway, rows, before, after, resident, len(load.results), bad)


@dataclass
class Outcome:
    layout: str
    load: Load | None = None
    oom_kills: int = 0
    victims: list[str] = field(default_factory=list)
    reset: bool = False
    shed: list[dict[str, Any]] = field(default_factory=list)
    #: memory.peak of PostgreSQL's cgroup (bytes).
    peak: int = 0
    notes: list[str] = field(default_factory=list)


def plain_runaway(
    mount: Path, cluster: Cluster, sc: RunawayScenario, *, limit: bool = True
) -> Outcome:
    """Layout A: PostgreSQL alone in one cgroup with memory.max `limit` (U: no limit, to
    measure what the session needs)."""
    if not limit:
        out = Outcome("U: plain cgroup, no limit (what the session needs)")
    else:
        out = Outcome(f"A: plain cgroup, memory.max {sc.max}")
    cgroup = mount / f"bench-pg-runaway-a-{os.getpid()}"
    cgroup.mkdir()
    logfile = cluster.base / "postgres-a.log"
    bindir = pg_bin()
    assert bindir is not None
    try:
        if limit:
            cg_write(cgroup / "memory.max", str(_bytes(sc.max)))
        pg = _spawn_in(
            cgroup,
            _as_postgres([str(bindir / "postgres"), "-D", str(cluster.pgdata)]),
            logfile,
            dict(os.environ),
        )
        if not wait_for(lambda: cluster.ready(PG_PORT), 120, interval=0.5):
            out.notes.append("PostgreSQL did not start")
            return out
        prefill(cluster, sc.scale)
        klog = KernelLog()
        out.load = runaway_under_load(cluster, cgroup, sc.mib)
        out.victims = [comm for _, comm in klog.kills()]
        out.oom_kills = _events(cgroup).get("oom_kill", 0)
        out.reset = RESET_LINE in logfile.read_text(errors="replace")
        out.peak = _peak(cgroup)
        pg.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            pg.wait(60)
    finally:
        kill_cgroup(cgroup)
    return out


def shed_config(base: Path, sc: RunawayScenario, **primary: Any) -> dict[str, Any]:
    """The example config for the runaway scenario: the primary's memory_high and memory_max
    from `sc` (the example's own shed rule applies; `primary` overrides)."""
    pg = {**sc.primary(), **primary}
    config = example_config(base, {"oomguard": {"pressure": {"cooldown": "2s"}}})
    config["service"]["postgres"].update(pg)
    config["service"]["postgres"].setdefault("shed", {"signal": "SIGTERM"})
    return config


def oomguard_runaway(mount: Path, cluster: Cluster, sc: RunawayScenario) -> Outcome:
    """Layout B: `oomguard run` with shed_config()."""
    from tests.kernel.support import start_run

    out = Outcome(
        f"B: oomguard, example + watermark {sc.watermark}, memory_high {sc.high}, max {sc.max}"
    )
    if not service_key_supported("shed"):
        out.notes.append("this oomguard has no [service.X.shed] (lane shed not merged)")
        return out
    scratch = mount / f"bench-pg-runaway-b-{os.getpid()}"
    scratch.mkdir()
    workdir = cluster.base / "oomguard"
    workdir.mkdir(exist_ok=True)
    try:
        cg_write(scratch / "cgroup.subtree_control", "+memory +pids")
        with start_run(workdir, mount, scratch, shed_config(cluster.base, sc)) as og:
            og.wait_running("postgres")
            if not wait_for(lambda: cluster.ready(PG_PORT), 120, interval=0.5):
                out.notes.append("PostgreSQL did not start")
                return out
            prefill(cluster, sc.scale)
            klog = KernelLog()
            out.load = runaway_under_load(cluster, og.cgroup("postgres"), sc.mib)
            out.victims = [comm for _, comm in klog.kills()]
            out.oom_kills = _events(og.cgroup("postgres"), local=True).get("oom_kill", 0)
            out.reset = RESET_LINE in og.output()
            out.shed = og.events("shed", "postgres")
            out.peak = _peak(og.cgroup("postgres"))
            _note_oomguard(out, og)
    finally:
        kill_cgroup(scratch)
    return out


def _note_oomguard(out: Outcome, og: Oomguard) -> None:
    restarts = og.events("controlled_restart", "postgres")
    if restarts:
        out.notes.append(f"{len(restarts)} controlled restart(s) of PostgreSQL")
    evicts = [e["service"] for e in og.events("evict") if "budget" in e]
    if evicts:
        out.notes.append(f"evicted: {', '.join(evicts)}")


def _bytes(size: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)


def _current(cgroup: Path) -> int:
    try:
        return int((cgroup / "memory.current").read_text())
    except (OSError, ValueError):
        return 0


def _peak(cgroup: Path) -> int:
    try:
        return int((cgroup / "memory.peak").read_text())
    except (OSError, ValueError):
        return 0


def _events(cgroup: Path, *, local: bool = False) -> dict[str, int]:
    name = "memory.events.local" if local else "memory.events"
    try:
        text = (cgroup / name).read_text()
    except OSError:
        return {}
    return {k: int(v) for k, v in (ln.split() for ln in text.splitlines() if ln.strip())}


def runaway_end(r: RunawayResult) -> str:
    if r.completed:
        return f"completed ({r.output.strip().splitlines()[-1:]})"
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    return f"psql exit {r.returncode}: {lines[-1] if lines else '(no output)'}"


def runaway_table(outcomes: Sequence[Outcome]) -> str:
    rows = [
        "| layout | kernel OOM kills | postmaster pid before -> after | all sessions reset "
        "| PostgreSQL before the runaway "
        "| shed events | runaway session | runaway peak RssAnon | PostgreSQL memory.peak "
        "| pgbench failed tx / aborted clients | pgbench runs failed | commits | rows |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        if o.load is None:
            rows.append(f"| {o.layout} | - | - | - | - | not run: {'; '.join(o.notes)} ||||||")
            continue
        ld = o.load
        victims = f" ({', '.join(o.victims)})" if o.victims else ""
        rows.append(
            f"| {o.layout} | {o.oom_kills}{victims} | {ld.postmaster_before} -> "
            f"{ld.postmaster_after} | {'yes' if o.reset else 'no'} | {ld.resident >> 20} MiB | "
            f"{len(o.shed)} | "
            f"{runaway_end(ld.runaway)} in {ld.runaway.wall:.1f} s | "
            f"{ld.runaway.peak_anon >> 20} MiB | {o.peak >> 20} MiB | {ld.pgbench.failed} / "
            f"{ld.pgbench.aborted_clients} | {ld.bad_runs}/{ld.runs} | {ld.pgbench.processed} | "
            f"{ld.rows} |"
        )
    return "\n".join(rows)


def inside_runaway(args: argparse.Namespace, mount: Path) -> int:
    sc = RunawayScenario(args.mib, args.watermark, args.high, args.max, args.scale)
    outcomes: list[Outcome] = []
    for kind in args.layouts.split(","):
        cluster = Cluster.create(timeout=1200)  # init-db.sh: > 300 s in a loaded guest
        try:
            log(f"runaway, layout {kind}: {sc} under pgbench -c {CLIENTS} -R {RATE}")
            if kind == "B":
                outcome = oomguard_runaway(mount, cluster, sc)
            else:
                outcome = plain_runaway(mount, cluster, sc, limit=kind == "A")
            log(f"  {outcome}")
            outcomes.append(outcome)
        finally:
            cluster.remove()
    print(
        f"\nLinux {os.uname().release}; runaway session: a {sc.mib} MiB in-memory sort in one "
        f"query while pgbench -c {CLIENTS} -R {RATE} (runs of {CHUNK_S} s from before the session "
        f"until {CHUNK_S} s after it ended) inserts numbered ledger rows (straight to "
        f"PostgreSQL's socket); resident database: pgbench -i -s {sc.scale}\n"
    )
    print(runaway_table(outcomes))
    for o in outcomes:
        for shed in o.shed:
            print(f"{o.layout}: shed event {shed}")
        for note in o.notes:
            print(f"note: {o.layout}: {note}")
    return 0


# -- the controlled restart -------------------------------------------------------------------


def inside(args: argparse.Namespace) -> int:
    missing = missing_tools()
    if missing:
        print(f"bench-pg-runaway: missing {', '.join(missing)}", file=sys.stderr)
        return 1
    mount = native_mount()
    if mount is None:
        print("bench-pg-runaway: no writable cgroup2 memory controller here", file=sys.stderr)
        return 1
    rc = 0
    if "runaway" in args.sections:
        rc = max(rc, inside_runaway(args, mount))
    if "restart" in args.sections:
        from tools.bench_pg_restart import inside_restart

        rc = max(rc, inside_restart(args, mount))
    return rc


def run(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench_pg_runaway.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument(
        "--sections",
        default="runaway,restart",
        help="runaway,restart (both); restart-native: the hand restart alone, here, no cgroup",
    )
    ap.add_argument(
        "--layouts", default="U,A,B", help="runaway: U (no limit), A (plain), B (oomguard)"
    )
    ap.add_argument("--mib", type=int, default=SCENARIO.mib, help="runaway: the session's MiB")
    ap.add_argument("--watermark", default=SCENARIO.watermark, help="runaway: primary watermark")
    ap.add_argument("--high", default=SCENARIO.high, help="runaway: primary memory_high")
    ap.add_argument("--max", default=SCENARIO.max, help="runaway: primary memory.max")
    ap.add_argument("--scale", type=int, default=SCENARIO.scale, help="runaway: pgbench -i -s")
    ap.add_argument("--rounds", type=int, default=3, help="restart: restarts per layout")
    ap.add_argument("--vm-timeout", type=int, default=3600, help="guest time limit, seconds")
    ap.add_argument("--mem", default="3G", help="guest RAM (3G)")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(list(argv))
    command = ("python3 -m tools.bench_pg_runaway " + shlex.join(list(argv))).strip()
    if args.inside:
        return inside(args)
    if args.sections == "restart-native":
        # The hand restart only, here, with no cgroup: PostgreSQL's own figures on this
        # machine's CPU, without the guest's emulation (needs root and PostgreSQL, no cgroup2).
        from tools.bench_pg_restart import inside_restart

        rc = inside_restart(args, None)
        print(f"\nCommand: `{command}` (native, {os.uname().release}, no cgroup)")
        return rc
    if native_mount() is not None:
        rc = inside(args)
        print(f"\nCommand: `{command}` (native, {os.uname().release})")
        return rc
    print("== pg runaway/restart: in the QEMU guest (TCG, 1 vCPU)", flush=True)
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
        "tools.bench_pg_runaway",
        "--inside",
        *argv,
    ]
    rc = subprocess.run(cmd, cwd=REPO, check=False).returncode
    print(f"\nCommand: `{command}` (in the QEMU guest of tools/vmrun.py: TCG, 1 vCPU, {args.mem})")
    return rc


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
