"""Real PostgreSQL under oomguard, with examples/postgres/oomguard.toml (issue 5, scenario tests).

1. Sidecar storms under load: pgbench (-c 4, >= 30 s) inserts one ledger row per committed
   transaction through pgbouncer while the backup sidecar storms the shared sidecar budget at
   least five times. PostgreSQL must not notice: no failed transaction, the same postmaster,
   every committed row present; the storm sidecar is evicted or OOM-killed and restarted each
   time.
2. Controlled primary restart: one session pushes PostgreSQL past its watermark. oomguard evicts
   the sidecar that can go, then stops PostgreSQL with SIGINT (a fast shutdown, not a kill) and
   starts it again; pg_isready succeeds within the downtime oomguard reports, and every row whose
   commit a client saw before the stop is still there.

Both run the example config with only its paths rebased onto a throwaway cluster, and knobs made
shorter for the slow TCG guest (hysteresis, cooldown, the job interval; a lower watermark in 2).
Marked slow: `make test` runs them in the guest; together they take a few minutes there.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.kernel.pg import BOUNCER_PORT, PG_PORT, AckWriter, Cluster, example_config, missing_tools
from tests.kernel.support import (
    Oomguard,
    assert_no_traceback,
    exit_events,
    flat_keyed,
    start_run,
    wait_until,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

MISSING = missing_tools()
REQUIRED = os.environ.get("OOMGUARD_REQUIRE_KERNEL", "") not in ("", "0")

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.slow,
    # CI installs postgresql, pgbouncer and stress-ng: there (OOMGUARD_REQUIRE_KERNEL=1) a missing
    # tool must fail the run, so the skip applies only where the kernel is not required.
    pytest.mark.skipif(
        bool(MISSING) and not REQUIRED,
        reason="POSTGRES SCENARIOS NOT RUN: missing " + ", ".join(MISSING) + " "
        "(apt-get install -y --no-install-recommends postgresql pgbouncer stress-ng)",
    ),
]

#: Storms wanted, and the least pgbench wall time, in scenario 1.
STORMS = 5
LOAD_MIN_S = 30.0
#: pgbench runs in chunks until both are reached (each chunk reconnects: 4 new sessions).
CHUNK_S = 10
#: Transactions per second of the load (pgbench -R). A database serving clients, not one pinned
#: at 100% CPU: flat out, pgbench would starve everything else on the guest's single vCPU.
RATE = 50
LOAD_MAX_S = 240.0


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    if MISSING:
        pytest.fail(
            "POSTGRES SCENARIOS CANNOT RUN: missing " + ", ".join(MISSING) + " "
            "(OOMGUARD_REQUIRE_KERNEL=1; apt-get install postgresql pgbouncer stress-ng)"
        )
    made = Cluster.create(shared_buffers="64MB")
    try:
        yield made
    finally:
        made.remove()


def _wait_db(og: Oomguard, cluster: Cluster, port: int) -> None:
    og.wait_for(lambda: cluster.ready(port), f"pg_isready on port {port}", timeout=120)


def _storm_ends(og: Oomguard, before_ts: float) -> list[dict[str, Any]]:
    """Exits of the storm sidecar not asked for by the final shutdown."""
    return [e for e in exit_events(og, "backup") if e["ts"] < before_ts]


# -- 1. sidecar storms under load -------------------------------------------------------------


def test_sidecar_storms_under_load_leave_postgres_untouched(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path, cluster: Cluster
) -> None:
    config = example_config(
        cluster.base,
        {
            # Shorter than the example (10 s hysteresis, 5 s cooldown, 5 s job interval, 3 s
            # stop timeout) and half its sizes (a 128M budget, 160M storms): the guest's
            # emulated CPU allocates ~20-50 MB/s under load, and five storm cycles must fit in
            # a few minutes.
            "oomguard": {"pressure": {"hysteresis": "3s", "cooldown": "2s"}},
            "slice": {"sidecars": {"memory_max": "128M"}},
            "service": {
                "backup": {
                    "env": {
                        "BACKUP_INTERVAL": "1",
                        "STORM_BYTES": "160M",
                        "STORM_SECONDS": "120",
                    },
                    "stop_timeout": "1s",
                    "backoff_initial": "0.5s",
                    "max_restarts": 100,
                },
            },
        },
    )
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        pids = og.wait_running("postgres", "pgbouncer", "backup")
        _wait_db(og, cluster, BOUNCER_PORT)
        postmaster = cluster.postmaster_pid()
        assert postmaster == pids["postgres"], "the postmaster is oomguard's direct child"
        cluster.storm_trigger.touch()

        runs = []
        load_start = time.monotonic()
        while True:
            runs.append(cluster.pgbench(CHUNK_S, rate=RATE).result(timeout=CHUNK_S * 20))
            elapsed = time.monotonic() - load_start
            storms = len(_storm_ends(og, time.time()))
            if (elapsed >= LOAD_MIN_S and storms >= STORMS) or elapsed > LOAD_MAX_S:
                break
            if og.proc.poll() is not None:
                break
        load_wall = time.monotonic() - load_start
        cluster.storm_trigger.unlink()
        cutoff = time.time()
        ends = _storm_ends(og, cutoff)
        # The sidecar comes back after its last storm too (restored, or restarted after an OOM).
        og.wait_event("spawned", "backup", count=len(ends) + 1, timeout=120)
        count, ids = cluster.ledger()
        postmaster_after = cluster.postmaster_pid()
        pg_kernel = flat_keyed(og.cgroup("postgres") / "memory.events.local")
        sidecar_kernel = flat_keyed(og.cgroup("sidecars") / "memory.events")
        code = og.stop()
        output = og.output()

    print("--- oomguard output ---\n" + output + "\n--- end of oomguard output ---")
    assert_no_traceback(output)
    committed = sum(r.processed for r in runs)
    detail = "\n".join(r.output for r in runs if not r.ok)
    print(
        f"\nload: {len(runs)} pgbench runs, {load_wall:.1f}s, {committed} committed, "
        f"{len(ends)} storms ended ({[e['kind'] for e in ends]}), rows {count}, "
        f"sidecars memory.events {sidecar_kernel}"
    )
    # The load: long enough, and not one transaction failed or was cut off.
    assert load_wall >= LOAD_MIN_S
    assert all(r.returncode == 0 for r in runs), detail
    assert sum(r.failed for r in runs) == 0, detail
    assert sum(r.aborted_clients for r in runs) == 0, detail
    assert committed > 0
    # Every committed transaction's row is there, and nothing else (no lost, no phantom rows).
    assert count == committed, (count, committed)
    assert len(ids) == count and max(ids) == count, "ids are dense: no insert was rolled back"
    # The postmaster never changed, never exited, was never OOM-killed.
    assert postmaster_after == postmaster
    assert [e["pid"] for e in og.events("spawned", "postgres")] == [postmaster]
    assert [e["requested"] for e in exit_events(og, "postgres")] == [True]  # the final stop
    assert og.events("controlled_restart") == []
    assert pg_kernel["oom_kill"] == 0, pg_kernel
    assert "terminated by signal" not in output, "a PostgreSQL process died"
    # pgbouncer, in the same budget as the storms, was never touched.
    assert len(og.events("spawned", "pgbouncer")) == 1
    assert exit_events(og, "pgbouncer")[0]["requested"] is True
    # The storms: each one ended by oomguard (evict) or by the kernel inside the budget (OOM
    # kill of the sidecar), and each time the sidecar was started again.
    storm_lines = re.findall(r"backup-job: job \d+: storm:", output)
    assert len(storm_lines) >= STORMS, output[-4000:]
    assert "storm ended" not in output, "a storm ended by itself: " + output[-4000:]
    assert len(ends) >= STORMS, (ends, output[-4000:])
    for end in ends:
        evicted = end.get("requested") is True
        assert evicted or end.get("oom_killed") is True, end
        assert any(s["ts"] > end["ts"] for s in og.events("spawned", "backup")), (
            f"not restarted after {end}"
        )
    evicts = [e for e in og.events("evict", "backup") if "budget" in e]
    assert all(e["budget"] in ("sidecars", "tree") for e in evicts), evicts
    assert code == 0, output[-4000:]  # postgres' own status after a fast shutdown


# -- 2. controlled primary restart ------------------------------------------------------------

#: One session that grows without bound: an in-memory sort of wide rows (work_mem big enough to
#: never spill). Tuples arrive one by one, so the backend grows steadily and checks for
#: interrupts between them: a fast shutdown ends it at once.
HOG_SQL = (
    "SET work_mem = '4GB'; "
    "SELECT count(*) FROM (SELECT g, repeat('x', 200) AS pad "
    "FROM generate_series(1, 100000000) g ORDER BY g DESC) s;"
)


def test_postgres_over_its_watermark_is_restarted_with_sigint(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path, cluster: Cluster
) -> None:
    config = example_config(
        cluster.base,
        {
            # A watermark that one big sort crosses within seconds in the guest (the example's
            # 640M is far above; here it is memory_high too, as the test was written for).
            # start_secs: oomguard ends the downtime it reports once PostgreSQL has been up this
            # long. The example's 3 s covers a clean start on real hardware (~1 s); under the
            # guest's emulated CPU, loading postgres and its 42 shared libraries alone can take
            # 10 s and more, and the reported downtime must not end before PostgreSQL is ready.
            "oomguard": {"pressure": {"cooldown": "2s"}},
            "service": {
                "postgres": {
                    "memory_high": "192M",
                    "memory_max": "320M",
                    "watermark": "192M",
                    "start_secs": "25s",
                }
            },
        },
    )
    # The ladder's last rung is under test: without the shed rule the growing session is not
    # ended on its own (tests/kernel/test_postgres_shed.py covers the shed).
    config["service"]["postgres"].pop("shed", None)
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        pids = og.wait_running("postgres", "pgbouncer", "backup")
        _wait_db(og, cluster, PG_PORT)
        first = cluster.postmaster_pid()
        assert first == pids["postgres"]
        writer = AckWriter(cluster, port=PG_PORT).start()
        try:
            wait_until(lambda: len(writer.acked) >= 20, "20 acknowledged inserts", timeout=120)
            hog = subprocess.Popen(
                [*cluster.psql_argv(), "-c", HOG_SQL],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            [restart] = og.wait_event("controlled_restart", "postgres", timeout=300)
            acked_before = len(writer.acked)

            def back() -> float | None:
                pid = cluster.postmaster_pid()
                if pid is not None and pid != first and cluster.ready(PG_PORT, timeout=1):
                    return time.time()
                return None

            ready_at = wait_until(back, "PostgreSQL to accept connections again", interval=0.1)
            [restarted] = og.wait_event("restarted", "postgres", timeout=120)
            # The client reconnects and commits again after the restart.
            wait_until(lambda: len(writer.acked) >= acked_before + 10, "inserts after the restart")
        finally:
            writer.stop()
        hog_out, _ = hog.communicate(timeout=60)
        second = cluster.postmaster_pid()
        count, ids = cluster.ledger()
        pg_kernel = flat_keyed(og.cgroup("postgres") / "memory.events.local")
        code = og.stop()
        output = og.output()

    print("--- oomguard output ---\n" + output + "\n--- end of oomguard output ---")
    assert_no_traceback(output)
    downtime = float(restarted["downtime"])
    print(
        f"\ncontrolled restart: {restart}\nrestarted: {restarted}\n"
        f"pg_isready ok {ready_at - restart['ts']:.2f}s after the stop; downtime {downtime}s; "
        f"{len(writer.acked)} acked inserts in {writer.sessions} sessions; rows {count}"
    )
    # Why it restarted: the primary's own watermark, with the figures that showed it.
    assert restart["budget"] == "primary-watermark", restart
    assert restart["primary_current"] > restart["watermark"], restart
    # The sidecar that could go went first; pgbouncer (evictable = false) stayed.
    evicts = [e for e in og.events("evict", "backup") if "budget" in e]
    assert evicts and evicts[0]["ts"] < restart["ts"], evicts
    assert og.events("evict", "pgbouncer") == []
    assert len(og.events("spawned", "pgbouncer")) == 1
    # Stopped with SIGINT, and PostgreSQL shut down by itself: a fast shutdown, not a kill.
    assert re.search(r"signal .*service=postgres .*signal=SIGINT", output), output[-4000:]
    assert "received fast shutdown request" in output
    assert "database system is shut down" in output
    assert "terminated by signal 9" not in output
    assert [k for k in og.events("kill", "postgres")] == []
    stopped = [e for e in exit_events(og, "postgres") if e["ts"] < restarted["ts"]]
    assert len(stopped) == 1 and stopped[0]["requested"] is True, stopped
    assert stopped[0]["code"] == 0 and not stopped[0]["oom_killed"], stopped
    assert pg_kernel["oom_kill"] == 0, pg_kernel
    # The session that grew was ended by the shutdown, not by the OOM killer.
    assert "terminating connection due to administrator command" in hog_out, hog_out
    # It came back: a new postmaster, ready within the downtime oomguard reported (with 1 s for
    # the probe's own start-up and polling in the guest).
    assert second is not None and second != first
    spawned = [e["pid"] for e in og.events("spawned", "postgres")]
    assert spawned == [first, second], spawned
    assert ready_at - restart["ts"] <= downtime + 1.0, (ready_at - restart["ts"], downtime)
    # Every commit a client was told about survived the stop (rows whose acknowledgement was
    # lost in the shutdown may be there too).
    missing = set(writer.acked) - ids
    assert not missing, f"{len(missing)} acknowledged rows lost: {sorted(missing)[:10]}"
    assert count >= len(writer.acked)
    assert code == 0, output[-4000:]
