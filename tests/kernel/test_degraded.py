"""Degraded mode as a default container has it, on a real kernel (issue 8, acceptance 4).

Docker, containerd and CRI-O mount the cgroupfs read-only into an unprivileged container. Here
oomguard runs in a private mount namespace whose /sys/fs/cgroup is bind-remounted read-only
(`unshare -m`; a bind remount changes this mount only, not the cgroup2 superblock that the rest
of the guest shares). It must run degraded and stay inspectable:

* `oomguard status --json --state-dir …`, run in the same read-only namespace (as
  `docker exec` would), exits 0, names the reason and lists every service with its state, pid,
  restarts and last exit; the human form too;
* `/metrics` serves `oomguard_service_up{service="…"} 1` for every running service, and
  `oomguard_degraded 1`;
* a sidecar killed from outside is restarted, and both views show its restart and last exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import TYPE_CHECKING, Any

import pytest

from tests.kernel.pressure_support import free_port, scrape, value
from tests.kernel.support import (
    DEADLINE,
    PYTHON,
    REPO,
    Oomguard,
    assert_no_traceback,
    write_config,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.kernel

#: What a default container's runtime does to the cgroupfs, in a mount namespace of our own.
READ_ONLY_CGROUPFS = [
    "unshare",
    "--mount",
    "sh",
    "-c",
    'mount -o bind,remount,ro /sys/fs/cgroup && exec "$@"',
    "sh",
]
SERVICES = ("db", "pooler", "exporter")
REASON = "the cgroup filesystem is read-only"


def status_in_namespace(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*READ_ONLY_CGROUPFS, PYTHON, "-m", "oomguard", "status", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=DEADLINE,
        cwd=REPO,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


def test_degraded_status_and_metrics_with_a_read_only_cgroupfs(
    cgroup2_mount: Path, tmp_path: Path
) -> None:
    port = free_port()
    state_dir = tmp_path / "state"
    config = write_config(
        tmp_path,
        {
            "oomguard": {"state_dir": str(state_dir), "metrics_listen": f"127.0.0.1:{port}"},
            "service": {
                "db": {"role": "primary", "command": ["sleep", "100000"]},
                "pooler": {"command": ["sleep", "100000"], "criticality": 60},
                "exporter": {
                    "command": ["sleep", "100000"],
                    "criticality": 10,
                    "backoff_initial": "0.1s",
                },
            },
        },
    )
    url = f"http://127.0.0.1:{port}/metrics"
    with Oomguard(
        ["run", str(config)],
        tmp_path,
        mount=cgroup2_mount,
        # Degraded, oomguard makes no tree: nothing for close() to kill there.
        root=tmp_path / "no-tree",
        state_dir=state_dir,
        prefix=READ_ONLY_CGROUPFS,
    ) as og:
        # Twice the usual deadline: the first start (pydantic's import) is the slow part under
        # TCG on a loaded host, and once it ran past 120 s here with no output yet.
        pids = og.wait_running(*SERVICES, timeout=2 * DEADLINE)
        (degraded,) = og.wait_event("degraded")
        assert degraded["reason"] == REASON, og.context()

        proc = status_in_namespace("--json", "--state-dir", str(state_dir))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        data = json.loads(proc.stdout)
        assert data["degraded"] == REASON
        assert data["slices"] == [] and data["root"] is None
        assert data["state"]["supervisor_running"] is True
        services = {s["name"]: s for s in data["services"]}
        assert set(services) == set(SERVICES)
        for name in SERVICES:
            svc = services[name]
            assert svc["state"] == "RUNNING", svc
            assert svc["pid"] == pids[name], svc
            assert svc["restarts"] == 0 and svc["last_exit"] is None, svc
            assert svc["slice"] is None, svc
            assert svc["rss_bytes"] > 0, svc  # same pid namespace: live figures
        assert services["db"]["oom_score_adj"] == -999
        assert services["exporter"]["oom_score_adj"] == 900

        def all_up() -> dict[str, Any] | None:
            got = scrape(url)
            ups = [value(got, "oomguard_service_up", service=n) for n in SERVICES]
            return got if ups == [1.0, 1.0, 1.0] else None

        samples = og.wait_for(all_up, "oomguard_service_up 1 for every service")
        assert value(samples, "oomguard_degraded") == 1.0
        assert value(samples, "oomguard_service_state", service="db", state="RUNNING") == 1.0
        assert "oomguard_memory_current_bytes" not in samples  # no slices, no slice series

        # A sidecar killed from outside: restarted, and both views say so.
        os.kill(pids["exporter"], signal.SIGKILL)

        def restarted() -> dict[str, Any] | None:
            svc = og.service_state("exporter")
            ok = svc and svc["restarts"] >= 1 and svc["state"] == "RUNNING"
            return svc if ok else None

        og.wait_for(restarted, "exporter restarted after its SIGKILL")
        proc = status_in_namespace("--json", "--state-dir", str(state_dir))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        exporter = next(s for s in json.loads(proc.stdout)["services"] if s["name"] == "exporter")
        assert exporter["restarts"] >= 1
        assert exporter["last_exit"]["signal"] == signal.SIGKILL
        assert exporter["pid"] != pids["exporter"]
        human = status_in_namespace("--state-dir", str(state_dir))
        assert human.returncode == 0, human.stdout + human.stderr
        assert human.stdout.startswith(f"no slice tree: oomguard runs degraded ({REASON})")
        rows = {line.split()[0]: line for line in human.stdout.splitlines()}
        assert "SIGKILL" in rows["exporter"], human.stdout
        assert set(SERVICES) <= set(rows), human.stdout

        def exporter_counted() -> bool:
            got = value(scrape(url), "oomguard_service_restarts_total", service="exporter")
            return got is not None and got >= 1

        og.wait_for(exporter_counted, "the restart in the metrics")
        code = og.stop()
        output = og.output()

    assert_no_traceback(output)
    assert code == 143, output  # `sleep` has no SIGTERM handler: 128 + 15, passed on
