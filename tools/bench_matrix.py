#!/usr/bin/env python3
"""The scenario matrix of issue 8 on a real kernel: does oomguard act before the kernel OOM
killer, whatever shape the memory budget has, without ever throttling or killing the primary?

    python3 -m tools.bench_matrix                       # the whole matrix (in the QEMU guest)
    python3 -m tools.bench_matrix --shapes tree,nolimit --rates 5,20 --leaks one --swap off

Dimensions (by default a plan of 32 cells, see DEFAULT_PLAN; `--full` for all 64 combinations
of the ones selected); the cells themselves, and what each
figure means, are described in tests/kernel/matrix.py:

shape   tree, slice, watermark, nolimit (the guest's RAM, ~1.2 GiB, is the budget);
rate    MiB/s of the leak once prefilled: 1, 5, 20, 100;
leak    one (one process) or 8w (8 forked workers capped at 50..130 MiB each);
swap    off, or on: a 512 MiB zram device (the guest's root is an overlay on tmpfs, where a swap
        file cannot live: swapon refuses tmpfs). The leak writes incompressible pages, so zram
        really costs RAM.

`seed` (python3 -m tools.bench_matrix seed) runs the seed's case instead: PostgreSQL with no limit
configured, a sidecar that storms then leaks, under the plain kernel, earlyoom and oomguard in one
guest boot (tests/kernel/seed.py). systemd-oomd is not among them: it needs systemd as init, and
the guest's init is busybox.

Runs natively where this host has a writable cgroup v2 memory controller, else inside the guest
of tools/vmrun.py with 1200 MiB of RAM (the `nolimit` shape depends on that size). Results are
appended to `--out` (JSON lines) as each cell ends, then printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The real-kernel tests' helpers and the supervisor bench's scratch-cgroup placement.
from tests.kernel.matrix import LEAKS, RATES, SHAPES, SWAPS, Cell, meminfo, run_cell
from tests.kernel.pressure_support import start_named
from tests.kernel.support import MiB, Oomguard
from tools import bench_supervisor
from tools.bench_supervisor import place

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

REPO = Path(__file__).resolve().parent.parent
GUEST_MEM = "1200M"
ZRAM_SIZE = "512M"
#: The default plan, so that `make bench` stays well under an hour under TCG (~70 s a cell):
#: every shape at every rate with one leaker and no swap; the 8 workers and swap at 5 and
#: 20 MiB/s (the rates acceptance 1 is about) in every shape. `--full` runs all 64 combinations.
DEFAULT_PLAN = frozenset(
    [Cell(s, r, "one", "off") for s in SHAPES for r in RATES]
    + [Cell(s, r, "8w", "off") for s in SHAPES for r in (5, 20)]
    + [Cell(s, r, "one", "on") for s in SHAPES for r in (5, 20)]
)


@contextlib.contextmanager
def zram_swap(on: bool) -> Iterator[None]:
    """A zram swap device for the cell, or none (and no other swap active either)."""
    if not on:
        yield
        return
    subprocess.run(["modprobe", "zram", "num_devices=1"], check=True)
    # zram's default compressor is a module of its own, and the kernel's on-demand module load
    # does not find it in the guest (disksize then fails with EINVAL): load it ourselves.
    subprocess.run(["modprobe", "lzo-rle"], check=False, capture_output=True)
    dev = Path("/sys/block/zram0")
    subprocess.run(["swapoff", "/dev/zram0"], check=False, capture_output=True)
    (dev / "reset").write_text("1")
    (dev / "disksize").write_text(ZRAM_SIZE)
    subprocess.run(["mkswap", "/dev/zram0"], check=True, capture_output=True)
    subprocess.run(["swapon", "/dev/zram0"], check=True)
    try:
        yield
    finally:
        subprocess.run(["swapoff", "/dev/zram0"], check=False)
        with contextlib.suppress(OSError):
            (dev / "reset").write_text("1")


# -- table --


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: Sequence[dict[str, Any]]) -> str:
    head = (
        "| shape | MiB/s | leak | swap | acted first | usage at act (MiB) | headroom | "
        "s into leak | kernel OOM kills | primary killed | primary restarts | primary high | "
        "primary stall s | memory.high over primary | cell s |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        c = r["cell"]
        acted = r["acted"] + (f" ({r['error']})" if r["error"] else "")
        lines.append(
            f"| {c['shape']} | {c['rate']} | {c['leak']} | {c['swap']} | {acted} | "
            f"{_fmt(r['act_usage_mib'], '.0f')} | {_fmt(r['act_headroom'], '.1%')} | "
            f"{_fmt(r['act_after_s'], '.1f')} | {r['kernel_kills']} | {r['primary_killed']} | "
            f"{r['primary_restarts']} | {r['primary_high']} | {r['primary_stall_s']:.2f} | "
            f"{r['auto_high']} | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


# -- main --


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bench_matrix", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--rates", default=",".join(map(str, RATES)))
    ap.add_argument("--leaks", default=",".join(LEAKS))
    ap.add_argument("--swap", default=",".join(SWAPS), help="off,on")
    ap.add_argument(
        "--full",
        action="store_true",
        help="every combination of the dimensions (64 cells, ~1.5 h under TCG) instead of the "
        "default plan (32 cells)",
    )
    ap.add_argument("--out", type=Path, default=REPO / ".bench" / "matrix.jsonl")
    ap.add_argument("--vm-timeout", type=int, default=3000, help="guest time limit, seconds")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    return ap


def cells(args: argparse.Namespace) -> list[Cell]:
    picked = [
        [s for s in args.shapes.split(",") if s],
        [int(r) for r in args.rates.split(",") if r],
        [x for x in args.leaks.split(",") if x],
        [x for x in args.swap.split(",") if x],
    ]
    for got, allowed, what in zip(
        picked, (SHAPES, RATES, LEAKS, SWAPS), ("shape", "rate", "leak", "swap"), strict=True
    ):
        bad = [g for g in got if g not in allowed]
        if bad:
            raise SystemExit(f"bench_matrix: unknown {what} {bad}; have {list(allowed)}")
    # Swap on/off outermost: one zram set-up per half.
    every = [
        Cell(shape, rate, leak, swap)
        for swap, shape, leak, rate in itertools.product(picked[3], picked[0], picked[2], picked[1])
    ]
    if args.full:
        return every
    return [c for c in every if c in DEFAULT_PLAN]


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point (tools/bench.py calls this): 0 if every cell produced its figures."""
    args = _parser().parse_args(argv)
    todo = cells(args)
    given = list(sys.argv[1:] if argv is None else argv)
    own = [sys.executable, "-m", "tools.bench_matrix", *[a for a in given if a != "--inside"]]
    if not args.inside and not bench_supervisor._native_ok():
        cmd = [
            sys.executable,
            str(REPO / "tools" / "vmrun.py"),
            "--mem",
            GUEST_MEM,
            "--timeout",
            str(args.vm_timeout),
            "--",
            *own,
            "--inside",
        ]
        print(f"bench_matrix: in the QEMU guest:\n  {shlex.join(cmd)}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.run(cmd, cwd=REPO, check=False).returncode
        print(f"bench_matrix: {len(todo)} cells in {time.monotonic() - t0:.0f} s wall (host)")
        return rc
    args.out.parent.mkdir(parents=True, exist_ok=True)
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(
        f"bench_matrix: {'QEMU guest' if args.inside else 'native'}, Linux {os.uname().release},"
        f" MemTotal {meminfo('MemTotal') // MiB} MiB, load {' '.join(load)}; {len(todo)} cells\n"
        f"  figures produced by: {shlex.join(own)}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    rc = 0
    with place() as where:
        for swap, group in itertools.groupby(todo, key=lambda c: c.swap):
            with zram_swap(swap == "on"):
                for cell in group:
                    res = run_cell(where.mount, where.scratch, where.workdir, cell)
                    row = asdict(res)
                    rows.append(row)
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(table([row]).splitlines()[-1], flush=True)
                    rc = rc or int(bool(res.error))
    print(f"\n== matrix ({len(rows)} cells, {time.monotonic() - t0:.0f} s in the guest)\n")
    print(table(rows), flush=True)
    return rc


# -- the seed's case, side by side with the anchors --


def seed_table(outcomes: Sequence[Any]) -> str:
    head = (
        "| layout | PostgreSQL processes killed | postmaster | failed tx / aborted clients | "
        "rows = commits | kernel OOM kills | acted first (MemAvailable then) | storm stopped by | "
        "leak stopped by | throughput |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for o in outcomes:
        killed = f"{len(o.pg_killed)}" + (f" ({', '.join(o.pg_killed)})" if o.pg_killed else "")
        if o.pg_crash_recoveries:
            killed += f"; {o.pg_crash_recoveries} crash recoveries"
        same = "same" if o.postmaster_before == o.postmaster_after else "CHANGED"
        avail = "" if o.first_avail_mib is None else f" ({o.first_avail_mib:.0f} MiB)"
        lines.append(
            f"| {o.layout} | {killed} | {same} | {o.failed_tx} / {o.aborted_clients} | "
            f"{o.rows} = {o.committed}: {'yes' if o.rows == o.committed else 'NO'} | "
            f"{o.kernel_kills} | {o.first_actor}{avail} | {o.storm_by} | {o.leak_by} | "
            f"{o.tps:.1f} tps |"
        )
    return "\n".join(lines)


def _seed_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench_matrix seed", description="the seed's case")
    ap.add_argument("--layouts", default="kernel,earlyoom,oomguard")
    ap.add_argument("--vm-timeout", type=int, default=2400, help="guest time limit, seconds")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    return ap


def run_seed(argv: Sequence[str] | None = None) -> int:
    """The seed's case under the plain kernel, earlyoom and oomguard, in one guest boot."""
    from tests.kernel import seed
    from tests.kernel.pg import missing_tools

    args = _seed_parser().parse_args(argv)
    layouts = [x for x in args.layouts.split(",") if x]
    if any(x not in seed.LAYOUTS for x in layouts):
        raise SystemExit(f"bench_matrix seed: layouts are {', '.join(seed.LAYOUTS)}")
    given = list(sys.argv[1:] if argv is None else argv)
    own = [sys.executable, "-m", "tools.bench_matrix", "seed", *given]
    own = [a for a in own if a != "--inside"]
    if not args.inside and not bench_supervisor._native_ok():
        cmd = [sys.executable, str(REPO / "tools" / "vmrun.py"), "--mem", GUEST_MEM,
               "--timeout", str(args.vm_timeout), "--", *own, "--inside"]  # fmt: skip
        print(f"bench_matrix seed: in the QEMU guest:\n  {shlex.join(cmd)}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.run(cmd, cwd=REPO, check=False).returncode
        print(f"bench_matrix seed: {time.monotonic() - t0:.0f} s wall (host)")
        return rc
    missing = [m for m in missing_tools() if not m.startswith(("pgbouncer", "stress-ng"))]
    if missing:
        print(f"bench_matrix seed: SKIPPED: missing {', '.join(missing)}", flush=True)
        return 1
    if "earlyoom" in layouts and not seed.earlyoom_available():
        print(
            "bench_matrix seed: earlyoom is NOT INSTALLED: its row is SKIPPED "
            "(apt-get install earlyoom)",
            flush=True,
        )
        layouts.remove("earlyoom")
    print(
        f"bench_matrix seed: Linux {os.uname().release}, MemTotal "
        f"{seed.meminfo('MemTotal') // MiB} MiB, no swap, no memory limit anywhere; layouts "
        f"{', '.join(layouts)}\n  figures produced by: {shlex.join(own)}",
        flush=True,
    )
    t0 = time.monotonic()
    cluster = seed.prepare_cluster()
    print(f"  cluster prepared (pgbench scale {seed.SCALE}) in {time.monotonic() - t0:.0f} s")
    outcomes = []
    try:
        with place() as where:
            for layout in layouts:
                scratch = where.scratch / f"seed-{layout}"
                scratch.mkdir()
                started: list[Oomguard] = []

                def start(
                    cfg: dict[str, Any],
                    name: str = f"seed-{layout}-og",
                    into: list[Oomguard] = started,
                ) -> Oomguard:
                    og = start_named(name, where.workdir, where.mount, where.scratch, cfg)
                    into.append(og)
                    return og

                try:
                    outcome, _og = seed.run_layout(layout, cluster, scratch=scratch,
                                                   start_oomguard=start)  # fmt: skip
                except AssertionError as err:
                    outcome = seed.Outcome(layout, notes=[f"FAILED: {str(err)[:300]}"])
                finally:
                    for og in started:
                        og.signal(15)
                        og.close()
                outcomes.append(outcome)
                print(f"  {layout}: {outcome}", flush=True)
    finally:
        cluster.remove()
    print(f"\n== the seed's case ({time.monotonic() - t0:.0f} s in the guest)\n")
    print(seed_table(outcomes), flush=True)
    for o in outcomes:
        print(
            f"\n{o.layout}: storm {o.storm}; largest before: {o.largest_before}; kernel victims "
            f"{o.kernel_victims or '-'}; earlyoom victims {o.earlyoom_victims or '-'}; "
            f"evictions {[(e.get('reason'), e.get('current')) for e in o.evictions] or '-'}; "
            f"lowest MemAvailable {o.min_avail_mib} MiB; {o.wall:.0f} s; notes {o.notes or '-'}"
        )
        for line in o.job_log:
            print(f"    {line}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["seed"]:
        sys.exit(run_seed(sys.argv[2:]))
    sys.exit(run(sys.argv[1:]))
