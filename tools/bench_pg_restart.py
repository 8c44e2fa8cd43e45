"""Issue 11, acceptance 2: a controlled restart of PostgreSQL (shared_buffers 256MB, under load),
from the stop to ready. Part of tools/bench_pg_runaway.py (`--sections restart`; `python3 -m
tools.bench --only restart`).

Two layouts in the same run, ROUNDS restarts each, with pgbench -c 4 -R 50 inserting ledger
rows all along (so the shutdown checkpoint has dirty buffers to write):

  hand      a bare postgres in a plain cgroup, restarted the way a script would: SIGINT (fast
            shutdown), wait for the postmaster to exit, start it again, wait until it is
            ready. What PostgreSQL itself costs here.
  oomguard  examples/postgres/oomguard.toml with a low watermark and no shed rule: one session
            grows past the watermark, oomguard evicts the backup job, then stops PostgreSQL
            with SIGINT and starts it again. Timed from oomguard's `controlled_restart` event
            (the stop is sent in the same loop turn).

"Ready" is when the new postmaster writes "ready" into postmaster.pid, the moment it accepts
connections (polled every 50 ms, then confirmed by one pg_isready; see poll_ready for why not
pg_isready every 50 ms).

Each restart is split into: stop (stop signal -> the postmaster's exit), respawn (exit -> the new
postmaster spawned), start (spawned -> ready). The postmaster log's shutdown
checkpoint line (log_checkpoints = on here) says what the stop spent writing and syncing.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tests.kernel.pg import PG_PORT, Cluster, PgbenchRun, Runaway, example_config, pg_bin
from tools.bench_postgres import _as_postgres, _spawn_in, cg_write, kill_cgroup

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

GOAL_S = 6.0
SHARED_BUFFERS = "256MB"
#: The session that pushes PostgreSQL over the watermark (MiB aggregated) and the watermark.
HOG_MIB = 900
WATERMARK = "160M"
PROBE_S = 0.05
CHECKPOINT = re.compile(r"checkpoint complete: .*?total=([\d.]+) s", re.S)
LOG_TS = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) UTC \[\d+\] LOG:  "
STARTING = re.compile(LOG_TS + "starting PostgreSQL")
READY = re.compile(LOG_TS + "database system is ready to accept connections")
SHUTDOWN_CHECKPOINT = re.compile(
    r"checkpoint starting: shutdown.*?\n.*?checkpoint complete: wrote (\d+) buffers.*?"
    r"write=([\d.]+) s, sync=([\d.]+) s, total=([\d.]+) s"
)


def log(msg: str) -> None:
    print(f"bench-pg-restart: {msg}", file=sys.stderr, flush=True)


@dataclass
class Restart:
    stop: float
    respawn: float
    start: float
    #: oomguard's own figure (its `restarted` event), if any.
    reported: float | None = None
    #: time.time() of the new postmaster's spawn.
    spawned_at: float = 0.0
    #: `start` split by the postmaster's log: spawn -> its first line ("starting PostgreSQL":
    #: exec, dynamic linking, reading the config), that -> "ready to accept connections" (its
    #: own start-up), that -> the poll that saw it.
    split: tuple[float, float, float] | None = None

    @property
    def total(self) -> float:
        return self.stop + self.respawn + self.start


@dataclass
class Layout:
    name: str
    restarts: list[Restart] = field(default_factory=list)
    #: (buffers written, write s, sync s, total s) of each shutdown checkpoint.
    checkpoints: list[tuple[int, float, float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def poll_ready(cluster: Cluster, not_pid: int | None, timeout: float = 120.0) -> float | None:
    """time.time() when a postmaster other than `not_pid` said "ready" in postmaster.pid (read
    every PROBE_S), confirmed by one pg_isready. Not pg_isready every 50 ms: in the emulated
    guest each one is an exec that takes CPU from the starting postmaster (the figures doubled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = cluster.postmaster_pid()
        if pid is not None and pid != not_pid and cluster.postmaster_status() == "ready":
            at = time.time()
            return at if cluster.ready(PG_PORT, timeout=5) else None
        time.sleep(PROBE_S)
    return None


def prepare() -> Cluster:
    # init-db.sh in a guest on a loaded host took more than the default 300 s.
    cluster = Cluster.create(shared_buffers=SHARED_BUFFERS, timeout=1200)
    with (cluster.pgdata / "postgresql.conf").open("a") as f:
        f.write("log_checkpoints = on    # bench_pg_restart: what the shutdown checkpoint costs\n")
    return cluster


def _load(cluster: Cluster, seconds: int) -> PgbenchRun:
    return cluster.pgbench(seconds, clients=4, port=PG_PORT, rate=50)


def _start(cgroup: Path | None, argv: list[str], logfile: Path) -> subprocess.Popen[bytes]:
    if cgroup is not None:
        return _spawn_in(cgroup, argv, logfile, dict(os.environ))
    with logfile.open("ab") as f:
        return subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd="/")


def hand(mount: Path | None, cluster: Cluster, rounds: int) -> Layout:
    """The hand restart in a plain cgroup under `mount`, or with no cgroup at all (None: e.g.
    natively on a host without a cgroup2 memory controller, for what PostgreSQL costs without
    an emulated CPU)."""
    where = "plain cgroup" if mount is not None else f"no cgroup, native {os.uname().release}"
    out = Layout(f"hand: bare postgres ({where}), SIGINT / wait / start")
    cgroup = None if mount is None else mount / f"bench-pg-restart-hand-{os.getpid()}"
    if cgroup is not None:
        cgroup.mkdir()
    bindir = pg_bin()
    assert bindir is not None
    argv = _as_postgres([str(bindir / "postgres"), "-D", str(cluster.pgdata)])
    logfile = cluster.base / "postgres-hand.log"
    try:
        pg = _start(cgroup, argv, logfile)
        if poll_ready(cluster, None) is None:
            out.notes.append("PostgreSQL did not start")
            return out
        for _ in range(rounds):
            load = _load(cluster, 15)
            time.sleep(10)
            old = cluster.postmaster_pid()
            t0 = time.time()
            pg.send_signal(signal.SIGINT)
            pg.wait(120)
            t1 = time.time()
            pg = _start(cgroup, argv, logfile)
            t2 = time.time()
            ready = poll_ready(cluster, old)
            load.result(timeout=300)
            if ready is None:
                out.notes.append("PostgreSQL did not come back")
                break
            out.restarts.append(Restart(t1 - t0, t2 - t1, ready - t2, spawned_at=t2))
        pg.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            pg.wait(60)
        text = logfile.read_text(errors="replace")
        out.checkpoints = shutdown_checkpoints(text)
        split_starts(out.restarts, text)
    finally:
        if cgroup is not None:
            kill_cgroup(cgroup)
    return out


def restart_config(base: Path) -> dict[str, Any]:
    config = example_config(
        base,
        {
            "oomguard": {"pressure": {"cooldown": "2s"}},
            "service": {"postgres": {"watermark": WATERMARK}},
        },
    )
    # A shed rule would end the growing session and no restart would happen: the ladder's last
    # step is what is measured here.
    config["service"]["postgres"].pop("shed", None)
    return config


def with_oomguard(mount: Path, cluster: Cluster, rounds: int) -> Layout:
    from tests.kernel.support import start_run

    out = Layout(f"oomguard: controlled restart (example config, watermark {WATERMARK})")
    scratch = mount / f"bench-pg-restart-og-{os.getpid()}"
    scratch.mkdir()
    workdir = cluster.base / "oomguard"
    workdir.mkdir(exist_ok=True)
    try:
        cg_write(scratch / "cgroup.subtree_control", "+memory +pids")
        with start_run(workdir, mount, scratch, restart_config(cluster.base)) as og:
            og.wait_running("postgres")
            if poll_ready(cluster, None) is None:
                out.notes.append("PostgreSQL did not start")
                return out
            for i in range(rounds):
                got = _one_restart(og, cluster, i + 1)
                if got is None:
                    out.notes.append(f"restart {i + 1} did not happen or did not come back")
                    break
                out.restarts.append(got)
            og.stop()
            out.checkpoints = shutdown_checkpoints(og.output())
            split_starts(out.restarts, og.output())
    finally:
        kill_cgroup(scratch)
    return out


def _one_restart(og: Any, cluster: Cluster, n: int) -> Restart | None:
    load = _load(cluster, 40)
    time.sleep(10)
    old = cluster.postmaster_pid()
    hog = Runaway.start(cluster, HOG_MIB)
    try:
        [restart] = og.wait_event("controlled_restart", "postgres", count=n, timeout=300)[-1:]
        ready = poll_ready(cluster, old)
        [restarted] = og.wait_event("restarted", "postgres", count=n, timeout=300)[-1:]
    finally:
        hog.kill()
        load.result(timeout=300)
    if ready is None:
        return None
    exits = [e for e in og.events("exit", "postgres") if e["ts"] >= restart["ts"]]
    spawns = [e for e in og.events("spawned", "postgres") if e["ts"] >= restart["ts"]]
    if not exits or not spawns:
        return None
    stop = exits[0]["ts"] - restart["ts"]
    respawn = spawns[0]["ts"] - exits[0]["ts"]
    reported = restarted.get("downtime")
    spawned = spawns[0]["ts"]
    figure = float(reported) if reported else None
    return Restart(stop, respawn, ready - spawned, figure, spawned_at=spawned)


def _log_times(pattern: re.Pattern[str], text: str) -> list[float]:
    return [
        datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
        for m in pattern.finditer(text)
    ]


def split_starts(restarts: list[Restart], text: str) -> None:
    """Fill each restart's `split` from the postmaster log."""
    starting, ready = _log_times(STARTING, text), _log_times(READY, text)
    for r in restarts:
        spawned = r.spawned_at
        first = next((t for t in starting if t >= spawned - 0.5), None)
        up = next((t for t in ready if first is not None and t >= first), None)
        if first is None or up is None:
            continue
        r.split = (first - spawned, up - first, spawned + r.start - up)


def shutdown_checkpoints(text: str) -> list[tuple[int, float, float, float]]:
    return [
        (int(m.group(1)), float(m.group(2)), float(m.group(3)), float(m.group(4)))
        for m in SHUTDOWN_CHECKPOINT.finditer(text)
    ]


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _split(restarts: list[Restart]) -> str:
    parts = [x.split for x in restarts if x.split is not None]
    if not parts:
        return "-"
    return " / ".join(f"{_median([p[i] for p in parts]):.2f}" for i in range(3))


def table(layouts: list[Layout]) -> str:
    rows = [
        "| layout | restarts | stop -> ready, each (s) | median | stop | respawn | start "
        "| start: exec / init / poll | oomguard's downtime "
        "| shutdown checkpoints (buffers/total s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lay in layouts:
        r = lay.restarts
        reported = [x.reported for x in r if x.reported is not None]
        rows.append(
            f"| {lay.name} | {len(r)} | {' '.join(f'{x.total:.2f}' for x in r) or '-'} | "
            f"{_median([x.total for x in r]):.2f} | {_median([x.stop for x in r]):.2f} | "
            f"{_median([x.respawn for x in r]):.2f} | {_median([x.start for x in r]):.2f} | "
            f"{_split(r)} | "
            f"{' '.join(f'{x:.2f}' for x in reported) or '-'} | "
            f"{' '.join(f'{c[0]}/{c[3]:.2f}' for c in lay.checkpoints) or '-'} |"
        )
    return "\n".join(rows)


def inside_restart(args: argparse.Namespace, mount: Path | None) -> int:
    """Both layouts under `mount`; with None, only the hand restart, without a cgroup."""
    layouts: list[Layout] = []
    for kind in ("hand", "oomguard") if mount is not None else ("hand",):
        cluster = prepare()
        try:
            log(f"{kind}: {args.rounds} restarts")
            if kind == "hand":
                layouts.append(hand(mount, cluster, args.rounds))
            else:
                assert mount is not None
                layouts.append(with_oomguard(mount, cluster, args.rounds))
            log(f"  {layouts[-1]}")
        finally:
            cluster.remove()
    print(
        f"\nLinux {os.uname().release}; controlled restart of PostgreSQL, shared_buffers "
        f"{SHARED_BUFFERS}, under pgbench -c 4 -R 50; stop -> ready (median of "
        f"{args.rounds}); goal <= {GOAL_S:.0f} s\n"
    )
    print(table(layouts))
    for lay in layouts:
        med = _median([x.total for x in lay.restarts])
        verdict = "met" if lay.restarts and med <= GOAL_S else "NOT met"
        print(f"{lay.name}: median {med:.2f} s, goal <= {GOAL_S:.0f} s {verdict}")
        for note in lay.notes:
            print(f"note: {lay.name}: {note}")
    return 0
