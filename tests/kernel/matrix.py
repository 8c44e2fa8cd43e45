"""One cell of the issue-8 scenario matrix on a real kernel (tools/bench_matrix.py runs them all;
tests/kernel/test_matrix.py a few): an oomguard with one budget shape, a leak of one rate and
shape, and what happened: who acted first, at what usage, and what it cost the primary.

Shapes:

tree       the only limit is `[oomguard] memory_max = 256M` (primary and sidecar at the top of
           the tree);
slice      `[slice.sidecars] memory_max = 192M` holds the sidecar, nothing else is capped;
watermark  the primary itself grows: `watermark = 192M`, `memory_max = 256M` on it;
nolimit    no limit anywhere: the machine's RAM is the budget (a 250 MiB primary beside it).

The primary is examples/workloads/fakedb.py holding 64 MiB (in `watermark`, the leaker itself).
The sizes are small so that a cell's prefill is quick under TCG; what matters is the shape.

Leaks: `one` process, or `8w`, 8 forked workers capped at 50..130 MiB each, leaking rate/8 each.
Every cell is short: the leaker first prefills quickly until the budget's headroom is 10 % (the
default `headroom_min`) plus a margin of max(12 MiB, 8 s of the rate), at most a quarter of the
budget, and only then leaks at the cell's rate. A cell ends 3 s after oomguard acted or the
kernel killed, or once the rest of the budget would have been used at the rate, plus 30 s.

Figures: who acted first (oomguard's `evict`/`controlled_restart`, or the kernel); the budget's
usage and headroom oomguard reported when it acted; seconds from the start of the leak; distinct
processes the kernel OOM-killed (from the kernel log: the whole machine); primary processes the
kernel killed (the primary cgroup's memory.events oom_kill, hierarchical); the primary's own
memory.events `high` count and its PSI `some` stall seconds (memory.pressure total, which counts
a stall from any ancestor's memory.high too); and any memory.high on the primary or the tree root.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.kernel.pressure_support import primary, start_named
from tests.kernel.support import PYTHON, MiB, flat_keyed

if TYPE_CHECKING:
    from tests.kernel.support import Oomguard

#: With swap on, how much more a cell may leak before it is given up (the swap device's size).
SWAP_ALLOWANCE = 512 * MiB

SHAPES = ("tree", "slice", "watermark", "nolimit")
RATES = (1, 5, 20, 100)
LEAKS = ("one", "8w")
SWAPS = ("off", "on")
HEADROOM_MIN = 0.10
#: Sizes of the 8 forked workers (MiB): 50..130.
WORKER_MB = tuple(50 + round(i * 80 / 7) for i in range(8))

#: A leaker that prefills fast to a headroom target, then leaks at RATE_MB_S, alone or as
#: WORKERS forked workers each capped at its own size. Pages are copies of one random MiB:
#: every page is written (charged) and none compresses, so a zram swap costs real RAM.
LEAK = r"""
import os, sys, time
MB = 1 << 20
rate = float(os.environ["RATE_MB_S"])
caps = [int(s) for s in os.environ["CAPS_MB"].split(",")]
target = int(os.environ["PREFILL_TO"])
probe = os.environ["PROBE"]
mark = os.environ["MARK"]
block = os.urandom(MB)

def headroom():
    if probe == "meminfo":
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    path, limit = probe.rsplit(":", 1)
    return int(limit) - int(open(path).read())

def leak(cap, share, index):
    held = []
    while headroom() > target and (cap == 0 or len(held) < cap):
        held.append(bytearray(block))
    with open(f"{mark}.{index}.tmp", "w") as f:
        f.write(f"{len(held)}\n")
    os.rename(f"{mark}.{index}.tmp", f"{mark}.{index}")
    start, base = time.monotonic(), len(held)
    while True:
        want = base + int(rate * share * (time.monotonic() - start)) + 1
        while len(held) < want and (cap == 0 or len(held) < cap):
            held.append(bytearray(block))
        time.sleep(0.02)

if len(caps) == 1:
    leak(caps[0], 1.0, 0)
for i, cap in enumerate(caps):
    if os.fork() == 0:
        leak(cap, 1.0 / len(caps), i)
while True:
    os.wait()
"""


@dataclass(frozen=True)
class Cell:
    shape: str
    rate: int
    leak: str
    swap: str

    @property
    def name(self) -> str:
        return f"{self.shape}-{self.rate}-{self.leak}-swap{self.swap}"


@dataclass
class Result:
    cell: Cell
    acted: str = "nobody"  # "oomguard <kind>", "kernel" or "nobody"
    act_usage_mib: float | None = None
    act_headroom: float | None = None
    act_after_s: float | None = None
    kernel_kills: int = 0
    primary_killed: int = 0
    primary_restarts: int = 0
    primary_high: int = 0
    primary_stall_s: float = 0.0
    auto_high: str = ""
    prefilled_mib: int = 0
    wall_s: float = 0.0
    #: Where the cell's time went: oomguard start to services running, prefill, leak, stop.
    phases: dict[str, float] = field(default_factory=dict)
    error: str = ""
    notes: list[str] = field(default_factory=list)


# -- the guest's own figures --


def vmstat_oom_kills() -> int:
    for line in Path("/proc/vmstat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


def meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


KILLED = re.compile(r"Killed process (\d+) ")


def kernel_log() -> list[str]:
    return subprocess.run(
        ["dmesg"], capture_output=True, text=True, check=False
    ).stdout.splitlines()


def psi_some_total_s(cgroup: Path) -> float:
    """Seconds some task of `cgroup` stalled on memory (memory.pressure `some total`, µs)."""
    try:
        first = (cgroup / "memory.pressure").read_text().split("\n", 1)[0]
    except OSError:
        return 0.0
    return int(first.rsplit("total=", 1)[1]) / 1e6


# -- one cell --


def _leaker(cell: Cell, probe: str, limit: int, mark: Path) -> dict[str, Any]:
    caps = WORKER_MB if cell.leak == "8w" else (0,)
    margin = min(max(12 * MiB, cell.rate * 8 * MiB), limit // 4)
    return {
        "command": [PYTHON, "-S", "-c", LEAK],
        "env": {
            "RATE_MB_S": str(cell.rate),
            "CAPS_MB": ",".join(str(c) for c in caps),
            "PREFILL_TO": str(int(limit * HEADROOM_MIN) + margin),
            "PROBE": probe,
            "MARK": str(mark),
        },
    }


def cell_config(cell: Cell, og_root: Path, beat: Path, mark: Path) -> tuple[dict[str, Any], int]:
    """(oomguard config, the budget's limit in bytes) of one cell."""
    db = primary(beat, env={"FAKEDB_MB": "64"})
    cfg: dict[str, Any] = {"oomguard": {}, "service": {"db": db}}
    side = {"criticality": 20, "start_secs": "0.5s"}
    if cell.shape == "tree":
        limit = 256 * MiB
        cfg["oomguard"]["memory_max"] = "256M"
        leak = _leaker(cell, f"{og_root}/memory.current:{limit}", limit, mark)
        cfg["service"]["leaky"] = {**side, **leak}
    elif cell.shape == "slice":
        limit = 192 * MiB
        cfg["slice"] = {"sidecars": {"memory_max": "192M"}}
        leak = _leaker(cell, f"{og_root}/sidecars/memory.current:{limit}", limit, mark)
        cfg["service"]["leaky"] = {**side, "slice": "sidecars", **leak}
    elif cell.shape == "watermark":
        limit = 192 * MiB  # the watermark: the primary's own budget
        leak = _leaker(cell, f"{og_root}/db/memory.current:{limit}", limit, mark)
        cfg["service"]["db"] = {
            "role": "primary",
            "start_secs": "0.5s",
            "watermark": "192M",
            "memory_max": "256M",
            **leak,
        }
    else:
        limit = meminfo("MemTotal")
        db["env"]["FAKEDB_MB"] = "250"
        cfg["service"]["leaky"] = {**side, **_leaker(cell, "meminfo", limit, mark)}
    return cfg, limit


def bytecode_cache(workdir: Path) -> dict[str, str]:
    """Environment for an oomguard that keeps its compiled modules in `workdir`: one cell after
    another, the guest's emulated CPU compiles oomguard's 31k lines once instead of every start
    (the tests' default is PYTHONDONTWRITEBYTECODE=1; an empty value unsets it)."""
    return {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(workdir / "pycache")}


def run_cell(mount: Path, scratch: Path, workdir: Path, cell: Cell) -> Result:
    """Run one cell: an oomguard of its own under `scratch`, its files under `workdir`."""
    res = Result(cell)
    t0 = time.monotonic()
    work = workdir / cell.name
    work.mkdir(parents=True, exist_ok=True)
    mark = work / "leaking"
    og_root = scratch / cell.name
    cfg, limit = cell_config(cell, og_root, work / "db.heartbeat", mark)
    kills0 = vmstat_oom_kills()
    dmesg0 = len(kernel_log())
    og = start_named(cell.name, workdir, mount, scratch, cfg, env=bytecode_cache(workdir))
    db_cg = og.cgroup("db")
    try:
        names = ["db", "leaky"] if "leaky" in cfg["service"] else ["db"]
        og.wait_running(*names, timeout=300)
        res.phases["start"] = time.monotonic() - t0
        stall0 = psi_some_total_s(db_cg)
        workers = 8 if cell.leak == "8w" else 1
        marks = [Path(f"{mark}.{i}") for i in range(workers)]
        # Prefill is quick; the leak starts once every worker has written its mark.
        og.wait_for(lambda: all(m.exists() for m in marks), "the prefill", timeout=240)
        leak_t0 = time.time()
        res.phases["prefill"] = time.monotonic() - t0 - res.phases["start"]
        res.prefilled_mib = sum(int(m.read_text() or 0) for m in marks)
        free = limit * HEADROOM_MIN + min(max(12 * MiB, cell.rate * 8 * MiB), limit // 4)
        budget_s = min(
            150.0, (free + (SWAP_ALLOWANCE if cell.swap == "on" else 0)) / MiB / cell.rate
        )
        deadline = time.monotonic() + budget_s + 30
        ended: float | None = None
        while time.monotonic() < deadline:
            acts = [e for e in og.events() if e["kind"] in ("evict", "controlled_restart")]
            kernel = vmstat_oom_kills() - kills0
            if res.acted == "nobody":
                if acts:
                    e = acts[0]
                    res.acted = f"oomguard {e['kind']}"
                    if kernel:
                        res.acted = "kernel, then oomguard"
                    if "current" in e:
                        res.act_usage_mib = float(e["current"]) / MiB
                    if "headroom" in e:
                        res.act_headroom = float(e["headroom"])
                    res.act_after_s = float(e["ts"]) - leak_t0
                elif kernel:
                    res.acted = "kernel"
                    res.act_after_s = time.time() - leak_t0
            if res.acted != "nobody" and ended is None:
                ended = time.monotonic()
            if ended is not None and time.monotonic() - ended > 3.0:
                break
            if og.proc.poll() is not None:
                res.error = f"oomguard exited {og.proc.returncode}"
                break
            time.sleep(0.2)
        # Distinct victims: with memory.oom.group the kernel counts its victim twice in
        # /proc/vmstat (once chosen, once as a member of the group it then kills).
        res.kernel_kills = len(
            {m.group(1) for ln in kernel_log()[dmesg0:] if (m := KILLED.search(ln))}
        )
        with contextlib.suppress(OSError):
            res.primary_killed = flat_keyed(db_cg / "memory.events").get("oom_kill", 0)
            res.primary_high = flat_keyed(db_cg / "memory.events").get("high", 0)
        res.primary_stall_s = psi_some_total_s(db_cg) - stall0
        res.primary_restarts = len(og.events("controlled_restart", "db"))
        res.auto_high = _highs_over_primary(og)
    except (AssertionError, OSError, ValueError) as err:
        res.error = str(err).splitlines()[0][:200]
    finally:
        t_stop = time.monotonic()
        res.phases["leak"] = t_stop - t0 - sum(res.phases.values())
        og.signal(15)
        og.close()
        res.phases["stop"] = time.monotonic() - t_stop
    res.wall_s = time.monotonic() - t0
    return res


def _highs_over_primary(og: Oomguard) -> str:
    """memory.high values other than max on the primary's cgroup and its ancestors in the tree
    (an automatic one there would throttle the primary)."""
    out = []
    for cg in (og.cgroup("db"), og.root):
        with contextlib.suppress(OSError):
            value = (cg / "memory.high").read_text().strip()
            if value != "max":
                out.append(f"{cg.name}={int(value) // MiB}M")
    return ",".join(out) or "none"
