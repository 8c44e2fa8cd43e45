"""The seed's case under oomguard (issue 8, acceptance 2): no memory limit configured anywhere,
the machine runs out of RAM, PostgreSQL under pgbench is the largest process (a backend holding
the prewarmed buffer pool), and a sidecar storms, then leaks slowly (tests/kernel/seed.py).

PostgreSQL must not notice: the same postmaster, no PostgreSQL process killed (by anyone), no
failed or aborted transaction, as many ledger rows as pgbench committed. And the slow leak after
the storm is evicted by oomguard before the kernel kills anything for it. The same workload under
the plain kernel and under earlyoom is in `make bench` (tools/bench_matrix.py seed).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pytest

from tests.kernel import seed
from tests.kernel.pg import missing_tools
from tests.kernel.support import Oomguard, assert_no_traceback, start_run

if TYPE_CHECKING:
    from pathlib import Path

MISSING = [m for m in missing_tools() if not m.startswith(("pgbouncer", "stress-ng"))]
REQUIRED = os.environ.get("OOMGUARD_REQUIRE_KERNEL", "") not in ("", "0")

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(MISSING) and not REQUIRED,
        reason="SEED CASE NOT RUN: missing " + ", ".join(MISSING) + " (apt-get install postgresql)",
    ),
]


def test_seed_case_postgres_survives_a_storm_and_the_leak_is_evicted_before_any_kernel_kill(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    if MISSING:
        pytest.fail("SEED CASE CANNOT RUN: missing " + ", ".join(MISSING))
    cluster = seed.prepare_cluster()
    og: Oomguard | None = None

    def start(cfg: dict[str, Any]) -> Oomguard:
        return start_run(tmp_path, cgroup2_mount, scratch_cgroup, cfg)

    try:
        out, og = seed.run_layout("oomguard", cluster, scratch=scratch_cgroup, start_oomguard=start)
        assert og is not None
        output = og.output()
        events = og.events()
    finally:
        if og is not None:
            og.close()
        cluster.remove()
    print(f"\n{out}\n--- oomguard output (tail) ---\n{output[-6000:]}")
    assert_no_traceback(output)
    # PostgreSQL did not notice.
    assert out.postmaster_before is not None
    assert out.postmaster_after == out.postmaster_before, out
    assert [
        e["pid"] for e in events if e["kind"] == "spawned" and e.get("service") == "postgres"
    ] == [out.postmaster_before]
    assert out.pg_killed == [], out
    assert out.pg_crash_recoveries == 0, out
    assert out.failed_tx == 0 and out.aborted_clients == 0, out
    assert out.committed > 0
    assert out.rows == out.committed, out
    # The slow leak after the storm: evicted by oomguard, before any kernel kill for it.
    assert out.leak_by == "oomguard", out
    assert out.leak_kernel_kills == 0, out
