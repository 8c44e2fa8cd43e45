from __future__ import annotations

import math
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from oomguard import __version__
from oomguard.cgroup.parse import Pressure, PsiLine
from oomguard.cgroup.path import CgroupPath
from oomguard.errors import OomguardError
from oomguard.observe.metrics import SERVICE_STATES, Metrics, parse_listen, start_metrics

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "metrics.md"
#: close() waits up to one poll interval; keep the suite fast.
FAST = 0.02


@dataclass(frozen=True)
class FakeSlice:
    """The SliceSnapshot attributes the exporter reads (observe/snapshot.py has the real one)."""

    path: CgroupPath
    memory: bool = True
    current: int | None = None
    peak: int | None = None
    high: int | None = None
    max: int | None = None
    events: dict[str, int] | None = None
    events_local: dict[str, int] | None = None
    pressure: Pressure | None = None


@dataclass(frozen=True)
class FakeTree:
    slices: list[FakeSlice] = field(default_factory=list)


def psi(some: float, full: float | None) -> Pressure:
    return Pressure(
        some=PsiLine(some, 0.0, 0.0, 1),
        full=None if full is None else PsiLine(full, 0.0, 0.0, 1),
    )


TREE = FakeTree(
    [
        FakeSlice(
            CgroupPath.parse("/oomguard"),
            current=300 << 20,
            peak=400 << 20,
            high=None,
            max=1 << 30,
            events={"high": 0, "max": 2, "oom": 1, "oom_kill": 1},
            events_local={"high": 0, "max": 0, "oom": 0, "oom_kill": 0},
            pressure=psi(1.5, 0.25),
        ),
        FakeSlice(
            CgroupPath.parse("/oomguard/sidecars/backup"),
            current=64 << 20,
            peak=None,  # kernel < 5.19: no memory.peak
            high=56 << 20,
            max=64 << 20,
            events={"oom_kill": 1},
            events_local={"oom_kill": 1},
            pressure=psi(12.0, None),  # a kernel/slice without a "full" line
        ),
        FakeSlice(CgroupPath.parse("/oomguard/nomem"), memory=False, pressure=None),
    ]
)
SERVICES: dict[str, dict[str, Any]] = {
    "db": {
        "state": "RUNNING",
        "pid": 123,
        "restarts": 1,
        "evictions": 0,
        "sheds": 3,
        "slice": "/oomguard/db",
        "role": "primary",
        "last_exit": None,
        "started_at": 1.0,
        "downtime_total": 2.5,
        "ready_seconds": 1.5,
    },
    "backup": {
        "state": "BACKOFF",
        "pid": None,
        "restarts": 4,
        "evictions": 2,
        "slice": "/oomguard/sidecars/backup",
        "role": "sidecar",
        "downtime_total": 9.0,  # a sidecar's downtime does not count
    },
    "pooler": {"state": "WARMING", "role": "sidecar"},  # a state we do not know; no counters
}


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = start_metrics("127.0.0.1:0", mode="enforce", poll_interval=FAST)
    try:
        yield m
    finally:
        m.close()


def scrape(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(m.url, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def at(path: str) -> dict[str, str]:
    """The labels of a per-cgroup series: cgroup, and slice, its old name (kept one release)."""
    return {"cgroup": path, "slice": path}


def get(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def names(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> set[str]:
    return {name for name, _ in samples}


def test_binds_an_ephemeral_port_and_serves_info_before_any_publish(metrics: Metrics) -> None:
    assert metrics.port > 0
    assert metrics.url == f"http://127.0.0.1:{metrics.port}/metrics"
    samples = scrape(metrics)
    assert get(samples, "oomguard_info", version=__version__, mode="enforce") == 1.0
    assert "oomguard_memory_current_bytes" not in names(samples)
    assert get(samples, "oomguard_primary_downtime_seconds_total") == 0.0


def test_slice_metrics(metrics: Metrics) -> None:
    metrics.publish(TREE, SERVICES)
    s = scrape(metrics)
    root, backup = "/oomguard", "/oomguard/sidecars/backup"
    assert get(s, "oomguard_memory_current_bytes", cgroup=root, slice=root) == 300 << 20
    assert get(s, "oomguard_memory_current_bytes", **at(root)) == 300 << 20
    assert get(s, "oomguard_memory_current_bytes", **at(backup)) == 64 << 20
    assert get(s, "oomguard_memory_peak_bytes", **at(root)) == 400 << 20
    assert ("oomguard_memory_peak_bytes", (("cgroup", backup), ("slice", backup))) not in s
    assert get(s, "oomguard_memory_high_bytes", **at(root)) == math.inf  # "max"
    assert get(s, "oomguard_memory_high_bytes", **at(backup)) == 56 << 20
    assert get(s, "oomguard_memory_max_bytes", **at(root)) == 1 << 30
    assert get(s, "oomguard_memory_max_bytes", **at(backup)) == 64 << 20
    assert get(s, "oomguard_memory_events_total", **at(root), event="oom_kill") == 1
    assert get(s, "oomguard_memory_events_total", **at(root), event="max") == 2
    assert get(s, "oomguard_memory_events_local_total", **at(root), event="oom_kill") == 0
    assert get(s, "oomguard_memory_events_local_total", **at(backup), event="oom_kill") == 1
    assert get(s, "oomguard_pressure_some_avg10", **at(root)) == 1.5
    assert get(s, "oomguard_pressure_full_avg10", **at(root)) == 0.25
    assert get(s, "oomguard_pressure_some_avg10", **at(backup)) == 12.0
    assert ("oomguard_pressure_full_avg10", (("cgroup", backup), ("slice", backup))) not in s


def test_a_slice_without_the_memory_controller_exports_no_memory_figures(
    metrics: Metrics,
) -> None:
    metrics.publish(TREE, {})
    s = scrape(metrics)
    assert not [key for key in s if ("cgroup", "/oomguard/nomem") in key[1]]
    assert not [key for key in s if ("slice", "/oomguard/nomem") in key[1]]


def test_service_metrics(metrics: Metrics) -> None:
    metrics.publish(TREE, SERVICES)
    s = scrape(metrics)
    assert get(s, "oomguard_service_restarts_total", service="db") == 1
    assert get(s, "oomguard_service_restarts_total", service="backup") == 4
    assert get(s, "oomguard_service_restarts_total", service="pooler") == 0
    assert get(s, "oomguard_service_evictions_total", service="backup") == 2
    assert get(s, "oomguard_service_sheds_total", service="db") == 3
    assert get(s, "oomguard_service_sheds_total", service="backup") == 0  # no field: 0
    assert get(s, "oomguard_service_up", service="db") == 1
    assert get(s, "oomguard_service_up", service="backup") == 0
    for state in SERVICE_STATES:
        assert get(s, "oomguard_service_state", service="db", state=state) == (
            1.0 if state == "RUNNING" else 0.0
        )
    assert get(s, "oomguard_service_state", service="backup", state="BACKOFF") == 1
    assert get(s, "oomguard_service_state", service="pooler", state="WARMING") == 1
    assert get(s, "oomguard_service_state", service="pooler", state="RUNNING") == 0
    assert get(s, "oomguard_primary_downtime_seconds_total") == 2.5


def test_lowercase_enum_values_are_accepted_as_state_names(metrics: Metrics) -> None:
    metrics.publish(None, {"db": {"state": "running", "role": "primary"}})
    s = scrape(metrics)
    assert get(s, "oomguard_service_state", service="db", state="RUNNING") == 1
    assert get(s, "oomguard_service_up", service="db") == 1


def test_publish_replaces_everything_and_can_change_the_mode(metrics: Metrics) -> None:
    metrics.publish(TREE, SERVICES)
    metrics.publish(None, {"db": {"state": "STOPPED"}}, mode="observe")
    s = scrape(metrics)
    assert "oomguard_memory_current_bytes" not in names(s)
    assert ("oomguard_service_up", (("service", "backup"),)) not in s
    assert get(s, "oomguard_info", version=__version__, mode="observe") == 1
    assert ("oomguard_info", (("mode", "enforce"), ("version", __version__))) not in s


def test_publish_copies_its_input(metrics: Metrics) -> None:
    events = {"oom_kill": 1}
    tree = FakeTree([FakeSlice(CgroupPath.parse("/a"), current=1, events=events)])
    services: dict[str, dict[str, Any]] = {"db": {"state": "RUNNING", "restarts": 1}}
    metrics.publish(tree, services)
    events["oom_kill"] = 99
    services["db"]["restarts"] = 99
    s = scrape(metrics)
    assert get(s, "oomguard_memory_events_total", cgroup="/a", slice="/a", event="oom_kill") == 1
    assert get(s, "oomguard_service_restarts_total", service="db") == 1


def test_each_scrape_sees_one_whole_publication(metrics: Metrics) -> None:
    # Every publication has all slices at the same value k; a scrape mixing two publications
    # would show two different values.
    paths = [CgroupPath.parse(f"/s{i}") for i in range(20)]
    stop = threading.Event()

    def publisher() -> None:
        k = 0
        while not stop.is_set():
            k += 1
            metrics.publish(FakeTree([FakeSlice(p, current=k) for p in paths]), {})

    thread = threading.Thread(target=publisher)
    thread.start()
    try:
        for _ in range(20):
            s = scrape(metrics)
            values = {v for (name, _), v in s.items() if name == "oomguard_memory_current_bytes"}
            assert len(values) <= 1
    finally:
        stop.set()
        thread.join()


def test_the_real_snapshot_types_are_accepted(metrics: Metrics) -> None:
    snapshot = pytest.importorskip("oomguard.observe.snapshot")
    sl = snapshot.SliceSnapshot(
        path=CgroupPath.parse("/oomguard/db"), name="db", depth=1, memory=True, swap=False,
        current=10, peak=20, min=0, low=0, high=None, max=100, swap_max=None, oom_group=False,
        events={"oom_kill": 3}, events_local={"oom_kill": 3}, pressure=psi(1.0, 0.5), procs=[],
        populated=True,
    )  # fmt: skip
    metrics.publish(snapshot.TreeSnapshot(root=CgroupPath.parse("/oomguard"), slices=[sl]), {})
    s = scrape(metrics)
    db = {"cgroup": "/oomguard/db", "slice": "/oomguard/db"}  # slice: the old name, one release
    assert get(s, "oomguard_memory_max_bytes", **db) == 100
    assert get(s, "oomguard_memory_events_local_total", **db, event="oom_kill") == 3


def test_every_exported_name_is_documented(metrics: Metrics) -> None:
    metrics.publish(TREE, SERVICES, output_dropped={("db", "stdout"): 1})
    exported = names(scrape(metrics))
    documented = set(re.findall(r"`(oomguard_[a-z0-9_]+)", DOC.read_text()))
    # Both ways: no undocumented metric, and no documented metric that does not exist.
    assert exported == documented, exported ^ documented
    assert len(exported) == 18


def test_output_dropped_lines(metrics: Metrics) -> None:
    metrics.publish(None, {}, output_dropped={("db", "stdout"): 7, ("oomguard", "stderr"): 2})
    s = scrape(metrics)
    assert get(s, "oomguard_output_dropped_lines_total", source="db", stream="stdout") == 7
    assert get(s, "oomguard_output_dropped_lines_total", source="oomguard", stream="stderr") == 2


def test_service_states_match_the_policy_state_enum() -> None:
    restart = pytest.importorskip("oomguard.policy.restart")
    assert set(SERVICE_STATES) == {s.name for s in restart.State}


def test_close_stops_serving() -> None:
    m = start_metrics("127.0.0.1:0", poll_interval=FAST)
    url = m.url
    m.close()
    m.close()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        m = start_metrics("[::1]:0", poll_interval=FAST)
    except OomguardError as err:
        pytest.skip(f"no IPv6 loopback here: {err}")
    try:
        assert m.url == f"http://[::1]:{m.port}/metrics"
        assert get(scrape(m), "oomguard_info", version=__version__, mode="enforce") == 1
    finally:
        m.close()


def test_address_in_use_is_a_clear_error(metrics: Metrics) -> None:
    with pytest.raises(OomguardError) as info:
        start_metrics(f"127.0.0.1:{metrics.port}")
    assert f"127.0.0.1:{metrics.port}" in info.value.message
    assert info.value.hint is not None and "metrics_listen" in info.value.hint


def test_a_malformed_address_is_a_clear_error() -> None:
    with pytest.raises(OomguardError) as info:
        start_metrics("localhost")
    assert "'localhost'" in info.value.message
    assert info.value.hint is not None and "host:port" in info.value.hint


def test_missing_prometheus_client_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # makes the import fail
    with pytest.raises(OomguardError) as info:
        start_metrics("127.0.0.1:0")
    assert info.value.hint is not None and "pip install 'oomguard[metrics]'" in info.value.hint


def test_importing_the_module_does_not_import_prometheus_client() -> None:
    code = (
        "import sys, oomguard.observe.metrics as m\n"
        "assert 'prometheus_client' not in sys.modules, 'imported too early'\n"
        "x = m.start_metrics('127.0.0.1:0', poll_interval=0.02); x.close()\n"
        "assert 'prometheus_client' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9150", ("127.0.0.1", 9150)),
        ("[::1]:9150", ("::1", 9150)),
        ("[::]:0", ("::", 0)),
        ("localhost:80", ("localhost", 80)),
        (":9150", ("", 9150)),
        (" 0.0.0.0:65535 ", ("0.0.0.0", 65535)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize(
    ("listen", "match"),
    [
        ("9150", "no port"),
        ("host", "no port"),
        ("::1:9150", "brackets"),
        ("[::1]9150", "ipv6"),
        ("[::1", "ipv6"),
        ("[]:80", "empty"),
        ("host:http", "port"),
        ("host:70000", "port"),
        ("host:-1", "port"),
        ("host:", "port"),
    ],
)
def test_parse_listen_rejects(listen: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_listen(listen)


def test_degraded_serves_the_service_series_and_says_so(metrics: Metrics) -> None:
    s = scrape(metrics)
    assert get(s, "oomguard_degraded") == 0
    metrics.publish(None, SERVICES, degraded=True)
    s = scrape(metrics)
    assert get(s, "oomguard_degraded") == 1
    assert get(s, "oomguard_service_up", service="db") == 1
    assert get(s, "oomguard_service_state", service="backup", state="BACKOFF") == 1
    assert not [key for key in s if key[0].startswith("oomguard_memory_")]


def test_idle_connections_cost_no_thread_and_a_scrape_still_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before, every connection got a thread for as long as the client kept it open: 200 idle
    # connections gave 202 threads.
    from oomguard.observe import metrics as metrics_mod

    monkeypatch.setattr(metrics_mod._Server, "idle_timeout", 1.0, raising=False)
    m = start_metrics("127.0.0.1:0", poll_interval=FAST)
    idle: list[socket.socket] = []
    try:
        before = threading.active_count()
        for _ in range(200):
            idle.append(socket.create_connection(("127.0.0.1", m.port), timeout=10))
        assert threading.active_count() <= before + getattr(metrics_mod, "MAX_WORKERS", 4)
        # A normal scrape gets in among them (the oldest silent connections make room).
        assert get(scrape(m), "oomguard_info", version=__version__, mode="enforce") == 1
        assert threading.active_count() <= before + getattr(metrics_mod, "MAX_WORKERS", 4)
        # Every idle connection is closed by the server: at once (beyond MAX_WAITING) or after
        # the idle timeout. The client sees EOF.
        for sock in idle:
            sock.settimeout(10)
            assert sock.recv(1) == b""
        assert m._server is not None and m._server.refused >= 200
    finally:
        for sock in idle:
            sock.close()
        m.close()


def test_a_stalled_request_is_cut_off_after_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # A client that sends half a request and stops holds one worker, for a bounded time only.
    from oomguard.observe import metrics as metrics_mod

    monkeypatch.setattr(metrics_mod._Server, "idle_timeout", 0.5, raising=False)
    monkeypatch.setattr(metrics_mod._QuietHandler, "timeout", 0.5)
    m = start_metrics("127.0.0.1:0", poll_interval=FAST)
    try:
        with socket.create_connection(("127.0.0.1", m.port), timeout=10) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line: never done
            assert sock.recv(1) == b""  # closed by the server, no traceback printed
        assert get(scrape(m), "oomguard_info", version=__version__, mode="enforce") == 1
    finally:
        m.close()


def test_ready_seconds_only_for_ready_services(metrics: Metrics) -> None:
    metrics.publish(
        None,
        {
            "db": {"state": "RUNNING", "role": "primary", "ready_seconds": 2.75},
            "pooler": {"state": "STARTING", "ready_seconds": None},
        },
    )
    s = scrape(metrics)
    assert get(s, "oomguard_service_ready_seconds", service="db") == 2.75
    assert ("oomguard_service_ready_seconds", (("service", "pooler"),)) not in s
