"""Degraded mode (no slice tree: a read-only cgroupfs, as in a default container) stays
inspectable: state.json says so, `oomguard status` lists every service without any cgroup2
mount, and the metrics publish the per-service series. No service is spawned here; the real
run, in a private mount namespace with a read-only cgroupfs, is tests/kernel/test_degraded.py.
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

import pytest

from oomguard.cgroup.fs import CgroupFS
from oomguard.cgroup.path import CgroupPath
from oomguard.cli import status
from oomguard.config.compile import compile_plan
from oomguard.config.model import Config
from oomguard.observe.log import Logger
from oomguard.runtime.context import SupervisorContext
from oomguard.runtime.metrics import MetricsExtension
from oomguard.runtime.supervisor import Supervisor

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from pathlib import Path

REASON = "the cgroup filesystem is read-only"


@pytest.fixture
def sup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Supervisor]:
    config = Config.from_mapping(
        {
            "oomguard": {"state_dir": str(tmp_path / "state")},
            "service": {
                "db": {"role": "primary", "command": ["sleep", "1000"]},
                "backup": {"command": ["sleep", "1000"], "criticality": 10},
            },
        }
    )
    monkeypatch.setattr(Supervisor, "_protect_self", lambda self: None, raising=False)
    # As cli/_supervise.py builds it degraded: a mount that is never written, the root path.
    s = Supervisor(
        compile_plan(config),
        CgroupFS(tmp_path / "no-cgroupfs"),
        CgroupPath.ROOT,
        Logger(io.StringIO()),
        degraded=REASON,
    )
    s._setup()
    try:
        yield s
    finally:
        s._close()


def test_state_json_says_degraded_and_names_no_slice(sup: Supervisor, tmp_path: Path) -> None:
    sup._flush_state()
    doc = json.loads((tmp_path / "state" / "state.json").read_text())
    assert doc["degraded"] == REASON
    assert doc["root"] == ""
    assert set(doc["services"]) == {"db", "backup"}
    # Not "/": the services run in oomguard's own cgroup, which is no slice of theirs.
    assert [svc["slice"] for svc in doc["services"].values()] == [None, None]


def test_status_lists_every_service_without_a_cgroup_mount(sup: Supervisor, tmp_path: Path) -> None:
    sup._flush_state()
    out: list[str] = []
    # mount=None and no --root: before, status looked for a mount and then failed on the
    # empty root ("empty cgroup path").
    rc = status.run(
        as_json=True, root_opt=None, state_dir=str(tmp_path / "state"), mount=None, echo=out.append
    )
    assert rc == 0
    data = json.loads(out[0])
    assert data["degraded"] == REASON
    assert data["root"] is None and data["slices"] == []
    assert data["state"]["supervisor_running"] is True  # this test process wrote it
    by_name = {svc["name"]: svc for svc in data["services"]}
    assert set(by_name) == {"db", "backup"}
    assert by_name["db"]["role"] == "primary" and by_name["db"]["state"] == "STOPPED"
    assert by_name["backup"]["oom_score_adj"] == 900
    for key in ("pid", "restarts", "last_exit"):
        assert key in by_name["db"]


class _Published:
    """Stands in for observe/metrics.Metrics: records what the extension publishes."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any], bool]] = []

    def publish(
        self,
        snapshot: Any,
        services: Mapping[str, Any],
        *,
        degraded: bool = False,
        output_dropped: Mapping[tuple[str, str], int] | None = None,
    ) -> None:
        self.calls.append((snapshot, dict(services), degraded))

    def close(self) -> None:
        pass


def test_metrics_publish_the_services_without_a_tree(sup: Supervisor) -> None:
    ext = MetricsExtension("127.0.0.1:0")
    published = _Published()
    # setup() would start the HTTP server; the publication is what is under test.
    ctx = SupervisorContext(sup, sup.plan)
    ext.ctx, ext.metrics = ctx, published  # type: ignore[assignment]
    ext.after_turn()
    # Before, the extension returned early without a tree: no service series ever.
    assert len(published.calls) == 1
    snapshot, services, degraded = published.calls[0]
    assert snapshot is None and degraded is True
    assert set(services) == {"db", "backup"}
    assert services["db"]["state"] == "STOPPED"
