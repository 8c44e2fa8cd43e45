"""The Prometheus endpoint on a real kernel (issue 4, acceptance 5): scrape `metrics_listen` over
HTTP and find every metric name that docs/metrics.md documents, with values that match what
happened: the primary's slice holds its memory, the sidecars' budget carries the automatic
memory.high, a leaking sidecar was evicted once and is held EVICTED, nobody was OOM-killed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pytest

from tests.kernel.pressure_support import (
    documented_metrics,
    fast_pressure,
    free_port,
    scrape,
    shared_budget,
    value,
    wait_beating,
    wait_charged,
    workload,
)
from tests.kernel.support import MiB, assert_no_traceback, rel, start_run

if TYPE_CHECKING:
    from pathlib import Path

    from tests.kernel.pressure_support import Sample

pytestmark = pytest.mark.kernel


def test_metrics_endpoint_serves_every_documented_metric_with_plausible_values(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    beat = tmp_path / "heartbeat"
    port = free_port()
    config = shared_budget(
        beat,
        {
            "steady": {
                "command": workload("steady"),
                "criticality": 80,
                "env": {"STEADY_MB": "16"},
            },
            "leaky": {"command": workload("leaky"), "criticality": 20, "env": {"LEAK_MB_S": "20"}},
        },
        # Held EVICTED for the rest of the test: the state is stable while we scrape.
        pressure=fast_pressure(hysteresis="600s"),
        metrics_listen=f"127.0.0.1:{port}",
    )
    url = f"http://127.0.0.1:{port}/metrics"
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        pids = og.wait_running("db", "steady")
        wait_beating(og, beat, pids["db"])
        wait_charged(og, og.cgroup("db"), 32 * MiB)
        # The policy's own "evict" event (no budget) marks the process gone: EVICTED.
        og.wait_event("evict", "leaky", where=lambda e: "budget" not in e)

        def evicted_in_metrics() -> dict[str, list[Sample]] | None:
            got = scrape(url)
            state = value(got, "oomguard_service_state", service="leaky", state="EVICTED")
            return got if state == 1 else None

        # Published after the turn that changed the state; a scrape may come just before it.
        samples = og.wait_for(evicted_in_metrics, "leaky EVICTED in the metrics")
        code = og.stop()
        output = og.output()

    assert_no_traceback(output)
    assert code == 0, output
    assert f"127.0.0.1:{port}" in output  # the `metrics` log line names the URL

    documented = documented_metrics()
    assert len(documented) >= 14, documented
    missing = [name for name in documented if name not in samples]
    assert missing == [], f"documented but not served: {missing}"

    root = rel(cgroup2_mount, og.root)
    db, sidecars = f"{root}/db", f"{root}/sidecars"
    leaky = f"{sidecars}/leaky"

    def v(name: str, **labels: str) -> float:
        got = value(samples, name, **labels)
        assert got is not None, f"{name}{labels} not served"
        return got

    info: Any = samples["oomguard_info"]
    assert [(labels["mode"], val) for labels, val in info] == [("enforce", 1.0)], info
    # Memory, per slice: the primary holds fakedb's 32 MB; the budget has its memory.max and
    # the memory.high oomguard put under it; unset limits are +Inf, not absent.
    assert v("oomguard_memory_current_bytes", slice=db) >= 32 * MiB
    # Every per-cgroup series has `cgroup`, and `slice` (its old name, kept one release) equal.
    per_cgroup = [labels for labels, _ in samples["oomguard_memory_current_bytes"]]
    assert {labels["cgroup"] for labels in per_cgroup} >= {root, db, sidecars, leaky}, per_cgroup
    assert all(labels["cgroup"] == labels["slice"] for labels in per_cgroup), per_cgroup
    assert v("oomguard_memory_current_bytes", slice=sidecars) >= 16 * MiB
    assert v("oomguard_memory_max_bytes", slice=sidecars) == 128 * MiB
    auto_high = v("oomguard_memory_high_bytes", slice=sidecars)
    assert 0.85 * 128 * MiB <= auto_high < 128 * MiB, auto_high
    assert v("oomguard_memory_max_bytes", slice=db) == math.inf
    assert v("oomguard_memory_high_bytes", slice=db) == math.inf
    # The leak got past the threshold: the budget's peak shows it, and `high` was counted there.
    assert v("oomguard_memory_peak_bytes", slice=sidecars) > auto_high
    assert v("oomguard_memory_events_local_total", slice=sidecars, event="high") >= 1
    assert v("oomguard_memory_events_total", slice=root, event="high") >= 1
    # ... and evicted before the kernel had to act: no OOM kill anywhere in the tree.
    assert v("oomguard_memory_events_total", slice=root, event="oom_kill") == 0
    assert v("oomguard_memory_events_local_total", slice=leaky, event="oom_kill") == 0
    for name in ("oomguard_pressure_some_avg10", "oomguard_pressure_full_avg10"):
        assert 0.0 <= v(name, slice=sidecars) <= 100.0
    # Services.
    assert v("oomguard_service_up", service="db") == 1
    assert v("oomguard_service_up", service="steady") == 1
    assert v("oomguard_service_up", service="leaky") == 0
    assert v("oomguard_service_state", service="db", state="RUNNING") == 1
    assert v("oomguard_service_state", service="db", state="STOPPED") == 0
    states = [val for labels, val in samples["oomguard_service_state"] if labels["service"] == "db"]
    assert sum(states) == 1, states  # exactly one current state
    assert v("oomguard_service_evictions_total", service="leaky") == 1
    assert v("oomguard_service_evictions_total", service="steady") == 0
    assert v("oomguard_service_restarts_total", service="db") == 0
    assert v("oomguard_primary_downtime_seconds_total") == 0
