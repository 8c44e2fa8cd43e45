"""Helpers for the real-kernel pressure-response and metrics tests (issue 4) and for
tools/bench_supervisor.py: scenario configs, decision events, what the kernel says about an
oomguard process (wake-ups, where it sleeps, which files it holds open), and a Prometheus scrape.

Everything here observes from the outside, as an operator would: events.jsonl, the cgroupfs,
/proc and the metrics endpoint. Nothing imports oomguard.
"""

from __future__ import annotations

import os
import re
import socket
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.kernel.support import (
    PYTHON,
    REPO,
    WORKLOADS,
    Oomguard,
    flat_keyed,
    heartbeats,
    rel,
    write_config,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

#: The pressure response's own decisions carry the budget they were taken for; the restart
#: policy's bookkeeping events of the same kind ("evict" once the process is gone) do not.
DECISION_KINDS = frozenset(
    {
        "evict",
        "restore",
        "controlled_restart",
        "would_evict",
        "would_restore",
        "would_restart",
    }
)

#: A sidecar that grows at RATE_MB_S (every page touched, so it is charged) until the *budget*
#: it sits in (BUDGET_FILE: the budget's memory.current) holds BUDGET_CAP_MB, then holds still.
#: Sized against the budget rather than itself, it ends between the pressure threshold and
#: memory.max whatever the other members and the interpreter weigh: pressure without a kernel
#: OOM kill, so a run in observe mode sees no process die at all.
CAPPED_LEAK = """
import os, time
MB, PAGE = 1 << 20, 4096
budget = os.environ["BUDGET_FILE"]
cap = int(os.environ["BUDGET_CAP_MB"]) * MB
rate = float(os.environ.get("RATE_MB_S", "5"))
held, start, full = [], time.monotonic(), False
print(f"capped-leak: pid={os.getpid()} {rate:g} MB/s up to a {cap >> 20} MB budget", flush=True)
while True:
    if not full:
        want = int(rate * (time.monotonic() - start)) + 1
        while len(held) < want:
            if int(open(budget).read()) + MB > cap:
                full = True
                print(f"capped-leak: holding {len(held)} MB", flush=True)
                break
            buf = bytearray(MB)
            buf[::PAGE] = b"x" * (MB // PAGE)
            held.append(buf)
    time.sleep(0.05)
"""


def workload(name: str) -> list[str]:
    """argv of one of examples/workloads/*.py, run with ``python -S``: they need only the
    stdlib, and skipping site-packages' .pth hooks cuts a Python start in the TCG guest from
    ~3 s to ~1 s. Scenarios that start a dozen processes finish that much sooner."""
    return [PYTHON, "-S", str(WORKLOADS / f"{name}.py")]


def capped_leak(budget: Path, rate_mb_s: float, cap_mb: int) -> dict[str, Any]:
    """`command` and `env` of a CAPPED_LEAK sidecar in the budget cgroup `budget`."""
    return {
        "command": [PYTHON, "-S", "-c", CAPPED_LEAK],
        "env": {
            "RATE_MB_S": f"{rate_mb_s:g}",
            "BUDGET_CAP_MB": str(cap_mb),
            "BUDGET_FILE": str(budget / "memory.current"),
        },
    }


#: A leak that ignores SIGTERM: its eviction takes the whole stop_timeout and ends with
#: cgroup.kill, while it keeps growing into the budget's memory.high (throttled: PSI stall).
STUBBORN_LEAK = """
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
MB, PAGE = 1 << 20, 4096
rate = float(os.environ.get("RATE_MB_S", "5"))
held, start = [], time.monotonic()
print(f"stubborn-leak: pid={os.getpid()} {rate:g} MB/s, ignores SIGTERM", flush=True)
while True:
    want = int(rate * (time.monotonic() - start)) + 1
    while len(held) < want:
        buf = bytearray(MB)
        buf[::PAGE] = b"x" * (MB // PAGE)
        held.append(buf)
    time.sleep(0.05)
"""


def stubborn_leak(rate_mb_s: float) -> dict[str, Any]:
    """`command` and `env` of a STUBBORN_LEAK sidecar."""
    return {"command": [PYTHON, "-S", "-c", STUBBORN_LEAK], "env": {"RATE_MB_S": f"{rate_mb_s:g}"}}


def psi_some_avg10(cgroup: Path) -> float:
    """``some avg10`` of the cgroup's memory.pressure, in %."""
    first = (cgroup / "memory.pressure").read_text().split("\n", 1)[0]
    return float(first.split()[1].partition("=")[2])


def fast_pressure(**overrides: str | float) -> dict[str, Any]:
    """[oomguard.pressure] for tests: act and restore within seconds, not the defaults' 5 s and
    30 s, so a whole evict -> clear -> restore cycle fits in a test."""
    return {"hysteresis": "3s", "cooldown": "1s", **overrides}


def primary(heartbeat: Path, **extra: Any) -> dict[str, Any]:
    """The fake database (examples/workloads/fakedb.py), 32 MB, beating every 100 ms."""
    env = {"FAKEDB_MB": "32", "FAKEDB_HEARTBEAT": str(heartbeat)}
    env.update(extra.pop("env", {}))
    return {
        "role": "primary",
        "command": workload("fakedb"),
        "env": env,
        "stop_signal": "SIGINT",
        "start_secs": "0.5s",
        **extra,
    }


def shared_budget(
    heartbeat: Path,
    sidecars: Mapping[str, Mapping[str, Any]],
    *,
    budget: str = "128M",
    pressure: Mapping[str, Any] | None = None,
    mode: str = "enforce",
    metrics_listen: str | None = None,
) -> dict[str, Any]:
    """A primary at the top of the tree and `sidecars` sharing `[slice.sidecars]`."""
    section: dict[str, Any] = {"mode": mode, "pressure": dict(pressure or fast_pressure())}
    if metrics_listen is not None:
        section["metrics_listen"] = metrics_listen
    services: dict[str, Any] = {"db": primary(heartbeat)}
    for name, body in sidecars.items():
        services[name] = {"slice": "sidecars", "start_secs": "0.5s", **body}
    return {
        "oomguard": section,
        "slice": {"sidecars": {"memory_max": budget}},
        "service": services,
    }


def start_named(
    name: str,
    workdir: Path,
    mount: Path,
    scratch: Path,
    config: Mapping[str, Any],
    *,
    extra_args: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
) -> Oomguard:
    """Like support.start_run, but with the tree at `<scratch>/<name>` and everything else in
    `<workdir>/<name>`, so that two oomguards can run side by side in one scratch cgroup."""
    own = workdir / name
    own.mkdir(parents=True, exist_ok=True)
    root = scratch / name
    state_dir = own / "state"
    path = write_config(own, config)
    args = ["run", str(path), "--cgroup", rel(mount, root), "--state-dir", str(state_dir)]
    return Oomguard([*args, *extra_args], own, mount=mount, root=root, state_dir=state_dir, env=env)


# -- events ------------------------------------------------------------------------------------


def decisions(og: Oomguard, kind: str | None = None) -> list[dict[str, Any]]:
    """The pressure response's decisions, in order (they name their budget)."""
    return [
        e
        for e in og.events(kind)
        if e.get("kind") in DECISION_KINDS and e.get("budget") is not None
    ]


def tree_events(og: Oomguard) -> dict[str, int]:
    """memory.events of the tree root: hierarchical, so it counts every slice below it."""
    return flat_keyed(og.root / "memory.events")


def spawned_pids(og: Oomguard, service: str) -> list[int]:
    return [int(e["pid"]) for e in og.events("spawned", service)]


def wait_beating(og: Oomguard, heartbeat: Path, pid: int) -> None:
    """Wait until fakedb `pid` has written a heartbeat: past its start-up, signal handlers set.
    (A TCG guest takes seconds to start Python; a SIGINT before fakedb installed its handler
    kills it with a KeyboardInterrupt traceback instead of a clean shutdown.)"""

    def beating() -> bool:
        try:
            return any(p == pid for _, p in heartbeats(heartbeat))
        except FileNotFoundError:
            return False

    og.wait_for(beating, f"fakedb pid {pid} to beat")


def wait_charged(og: Oomguard, cgroup: Path, at_least: int) -> None:
    """Wait until `cgroup`'s memory.current reaches `at_least` bytes (a workload is set up)."""

    def charged() -> bool:
        return int((cgroup / "memory.current").read_text()) >= at_least

    og.wait_for(charged, f"{cgroup.name} to hold {at_least >> 20} MiB")


# -- the oomguard process, as the kernel sees it -----------------------------------------------


def context_switches(pid: int) -> int:
    """voluntary + nonvoluntary context switches summed over every thread of `pid`: each time a
    thread went to sleep or was preempted. An idle event loop adds none; a poller adds one per
    poll. (/proc/PID/status alone counts the main thread only.)"""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that just exited
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split()[1])
    return total


#: x86-64 syscall numbers of the calls an epoll loop sleeps in.
EPOLL_SYSCALLS = frozenset({232, 281, 441})  # epoll_wait, epoll_pwait, epoll_pwait2


@dataclass(frozen=True)
class Sleep:
    """Where the main thread of a process is: its scheduler state, wait channel and syscall."""

    state: str
    wchan: str
    syscall: int | None

    @property
    def in_epoll_wait(self) -> bool:
        blocked = self.state in ("S", "D")
        return blocked and (self.wchan == "do_epoll_wait" or self.syscall in EPOLL_SYSCALLS)


def main_thread_sleep(pid: int) -> Sleep:
    proc = Path(f"/proc/{pid}")
    stat = (proc / "stat").read_text()
    state = stat.rsplit(")", 1)[1].split()[0]
    try:
        wchan = (proc / "wchan").read_text().strip()
    except OSError:
        wchan = ""
    try:
        first = (proc / "syscall").read_text().split()[0]
        syscall = int(first) if first.lstrip("-").isdigit() else None
    except (OSError, IndexError):
        syscall = None
    return Sleep(state=state, wchan=wchan, syscall=syscall)


def open_files(pid: int) -> list[str]:
    """Targets of the fds `pid` holds (e.g. .../memory.pressure for an armed PSI trigger)."""
    out: list[str] = []
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            out.append(os.readlink(fd))
        except OSError:
            continue
    return out


def vm_rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of `pid`, in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


# -- metrics -----------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now (bound and released: the usual small race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


Sample = tuple[dict[str, str], float]


def scrape(url: str, timeout: float = 30.0) -> dict[str, list[Sample]]:
    """GET a Prometheus text endpoint; sample name -> [(labels, value)]."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode()
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def value(samples: Mapping[str, Sequence[Sample]], name: str, **labels: str) -> float | None:
    """The one sample of `name` whose labels include `labels`, or None."""
    hits = [
        v
        for got, v in samples.get(name, ())
        if all(got.get(k) == want for k, want in labels.items())
    ]
    assert len(hits) <= 1, f"{name}{labels}: {len(hits)} samples"
    return hits[0] if hits else None


def documented_metrics(doc: Path = REPO / "docs" / "metrics.md") -> list[str]:
    """Every metric name in the tables of docs/metrics.md (rows that start with `oomguard_`)."""
    return re.findall(r"^\| `(oomguard_[a-z0-9_]+)`", doc.read_text(), flags=re.MULTILINE)
