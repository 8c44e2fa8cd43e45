#!/usr/bin/env python3
"""oomguard benchmarks (`make bench`). Each section measures one thing and prints its figures.

    python3 -m tools.bench                    # every section (from the repository root)
    python3 -m tools.bench --only status      # one (or a comma list)
    python3 -m tools.bench --only status --vm # the same, inside the QEMU guest on a real tree

Sections register with `@section("name")`; a section is a function taking the parsed args and
returning an exit status (0 = figures printed and the goal met or merely reported). Add new ones
at the end of the file.

Timing notes: wall times come from time.perf_counter() around subprocess.run(); a median of
>= 20 runs and the p90 are printed, with `python -c pass` and `python -c "import click"` as
baselines measured the same way and interleaved with the measured command, so machine load hits
all of them alike. The load average is printed first because on a shared 2-core builder it
matters more than anything we do.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

REPO = Path(__file__).resolve().parent.parent
#: Cold-start goal for `oomguard status` on the host (ms, median).
STATUS_GOAL_MS = 80.0


SectionFn = Callable[[argparse.Namespace], int]
SECTIONS: dict[str, SectionFn] = {}


def section(name: str) -> Callable[[SectionFn], SectionFn]:
    """Register a benchmark section under `name` (for --only)."""

    def register(fn: SectionFn) -> SectionFn:
        SECTIONS[name] = fn
        return fn

    return register


# ----------------------------------------------------------------------------- helpers


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Sample:
    """Per-run figures of one command: wall seconds, and CPU (user+sys) seconds of the child.
    CPU time is the steadier figure on a loaded machine: waiting for a core is not counted."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def run_once(cmd: Sequence[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, cpu) seconds of one run; exits if the command fails (a failing run is no data)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # wait4 reaps the child and returns its own rusage (no grandchildren, no other children).
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        raise SystemExit(f"bench: {' '.join(cmd)} exited {proc.returncode}: {rerun.stderr[-800:]}")
    return elapsed, usage.ru_utime + usage.ru_stime


def measure(cmds: dict[str, list[str]], env: dict[str, str], runs: int) -> dict[str, Sample]:
    """Run each command `runs` times, interleaved (a b c a b c ...), after one warm-up each."""
    for cmd in cmds.values():
        run_once(cmd, env)  # warm the page cache and the bytecode cache
    samples = {name: Sample() for name in cmds}
    for _ in range(runs):
        for name, cmd in cmds.items():
            wall, cpu = run_once(cmd, env)
            samples[name].wall.append(wall)
            samples[name].cpu.append(cpu)
    return samples


def report(samples: dict[str, Sample]) -> None:
    width = max(len(n) for n in samples)
    for name, s in samples.items():
        ms = [t * 1000 for t in s.wall]
        cpu = [t * 1000 for t in s.cpu]
        print(
            f"  {name:<{width}}  wall median {statistics.median(ms):6.1f} ms  "
            f"p90 {percentile(ms, 90):6.1f}  min {min(ms):6.1f}   "
            f"cpu median {statistics.median(cpu):6.1f} ms   (n={len(ms)})"
        )


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def oomguard_cmd() -> list[str]:
    """The console script next to this interpreter (what users run), else `python -m`."""
    script = Path(sys.executable).with_name("oomguard")
    if script.is_file():
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "oomguard"]


def import_profile(cmd: list[str], env: dict[str, str]) -> list[tuple[str, int, int]]:
    """(module, self_us, cumulative_us) for every import of one run of `cmd` (python argv)."""
    proc = subprocess.run(
        [cmd[0], "-X", "importtime", *cmd[1:]],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    rows: list[tuple[str, int, int]] = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        head, cum_us, name = line.split("|", 2)
        rows.append((name.strip(), int(head.split(":")[1]), int(cum_us)))
    return rows


# ----------------------------------------------------------------------- status: trees


def _write_fake_cgroup(d: Path, *, memory: bool, pids: Sequence[int], max_: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    events = "low 0\nhigh 3\nmax 0\noom 1\noom_kill 1\noom_group_kill 0\n"
    psi = (
        "some avg10=0.12 avg60=0.05 avg300=0.01 total=12345\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=99\n"
    )
    files = {
        "cgroup.procs": "".join(f"{p}\n" for p in pids),
        "cgroup.controllers": "cpu io memory pids\n",
        "cgroup.subtree_control": "memory pids\n",
        "cgroup.type": "domain\n",
        "cgroup.events": "populated 1\nfrozen 0\n",
        "memory.pressure": psi,
    }
    if memory:
        files |= {
            "memory.current": "104857600\n",
            "memory.peak": "209715200\n",
            "memory.min": "0\n",
            "memory.low": "0\n",
            "memory.high": "max\n",
            "memory.max": f"{max_}\n",
            "memory.swap.max": "max\n",
            "memory.oom.group": "0\n",
            "memory.events": events,
            "memory.events.local": events,
        }
    for name, text in files.items():
        (d / name).write_text(text)


#: The benchmark tree: what a PostgreSQL + three sidecars config builds.
TREE = (
    "supervisor",
    "db",
    "sidecars",
    "sidecars/pgbouncer",
    "sidecars/backup",
    "sidecars/exporter",
)


#: What `oomguard status` may cost over a bare interpreter start before it gives up its own
#: argument parser for click's (issue 10): the click import alone is measured against it.
CLICK_BUDGET_MS = 15.0


@contextlib.contextmanager
def fake_tree(pid: int) -> Iterator[tuple[str, str]]:
    """(mount, root) of a fake cgroup2 tree of plain files in a temp dir."""
    with tempfile.TemporaryDirectory(prefix="oomguard-bench-") as tmp:
        mount = Path(tmp)
        _write_fake_cgroup(mount / "oomguard", memory=True, pids=(), max_="1073741824")
        for rel in TREE:
            _write_fake_cgroup(mount / "oomguard" / rel, memory=True, pids=(pid,), max_="max")
        yield str(mount), "/oomguard"


def _cg_write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


@contextlib.contextmanager
def real_tree() -> Iterator[tuple[str, str]]:
    """(mount, root) of a real slice tree under the cgroup2 mount, with a sleeping process in
    every leaf; killed and removed afterwards. Needs root and the memory controller."""
    from oomguard.cgroup.discover import find_cgroup2_mount

    found = find_cgroup2_mount()
    if found is None or "memory" not in (found / "cgroup.controllers").read_text().split():
        raise SystemExit("bench: --real-tree needs a cgroup2 mount with the memory controller")
    root = found / f"oomguard-bench-{os.getpid()}"
    made: list[Path] = []
    sleepers: list[subprocess.Popen[bytes]] = []
    try:
        root.mkdir()
        made.append(root)
        _cg_write(root / "cgroup.subtree_control", "+memory +pids")
        _cg_write(root / "memory.max", str(1 << 30))
        for rel in TREE:
            d = root / rel
            d.mkdir()
            made.append(d)
            if rel == "sidecars":
                _cg_write(d / "cgroup.subtree_control", "+memory +pids")
                continue
            script = f'echo $$ > "{d}/cgroup.procs" && exec sleep 600'
            sleepers.append(subprocess.Popen(["sh", "-c", script]))
        yield str(found), "/" + root.name
    finally:
        for p in sleepers:
            p.send_signal(signal.SIGKILL)
            p.wait()
        for d in reversed(made):
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.02)


# ----------------------------------------------------------------------- status: section


@section("status")
def bench_status(args: argparse.Namespace) -> int:
    """Cold start of `oomguard status --root <tree>` vs. interpreter baselines."""
    if args.vm:
        return _in_vm(args, "status")
    print(f"== status cold start (load average {load_average()}, {os.cpu_count()} CPUs)")
    # Installed packages carry bytecode; give every run a warm cache of its own so the numbers
    # are what an installed oomguard costs (this checkout sets PYTHONDONTWRITEBYTECODE=1).
    pycache = tempfile.mkdtemp(prefix="oomguard-bench-pycache-")
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = pycache
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    tree = real_tree() if args.real_tree else fake_tree(os.getpid())
    try:
        with tree as (mount, root):
            status = [*oomguard_cmd(), "status", "--mount", mount, "--root", root]
            status += ["--state-dir", pycache]
            check = subprocess.run(status, env=env, capture_output=True, text=True, check=False)
            if check.returncode != 0 or root not in check.stdout:
                print(check.stdout + check.stderr)
                return 1
            kind = "real cgroup2 tree" if args.real_tree else "fake tree in a temp dir"
            print(f"  tree: {root} under {mount} ({kind}, {len(TREE) + 1} slices)")
            print(f"  command: {' '.join(status[1:])}")
            times = measure(
                {
                    "python -c pass": [sys.executable, "-c", "pass"],
                    "python -c 'import click'": [sys.executable, "-c", "import click"],
                    "oomguard status": status,
                },
                env,
                args.runs,
            )
            report(times)
            if not args.real_tree:
                # The same, the way this checkout runs by default: no bytecode for oomguard.
                # (Skipped in the guest, where five runs of it take a minute.)
                raw_env = {k: v for k, v in env.items() if k != "PYTHONPYCACHEPREFIX"}
                raw_env["PYTHONDONTWRITEBYTECODE"] = "1"
                raw = measure(
                    {"status, no .pyc (compiled each start)": status},
                    raw_env,
                    max(5, args.runs // 4),
                )
                report(raw)
            profile = import_profile(status, env)
    finally:
        shutil.rmtree(pycache, ignore_errors=True)

    bad = _print_imports(profile)
    _print_goal(times, args.real_tree)
    _print_click_budget(times)
    return 1 if bad else 0


def _print_imports(profile: list[tuple[str, int, int]]) -> bool:
    """What status imported; True if it imported what it must not (pydantic, config, runtime)."""
    names = {name for name, _, _ in profile}
    pyd = sorted(n for n in names if n.split(".")[0] == "pydantic")
    heavy = sorted(n for n in names if n.startswith(("oomguard.config", "oomguard.runtime")))
    print(f"  pydantic imported: {'YES: ' + ', '.join(pyd[:5]) if pyd else 'no'}")
    print(f"  oomguard.config/runtime imported: {', '.join(heavy) if heavy else 'no'}")
    total = sum(s for _, s, _ in profile) / 1000
    ours = sum(s for n, s, _ in profile if n.startswith("oomguard")) / 1000
    click_ms = next((c for n, _, c in profile if n == "click"), 0) / 1000
    print(
        f"  imports (one -X importtime run): {total:.1f} ms in all, oomguard.* {ours:.1f} ms "
        f"self, click {click_ms:.1f} ms"
    )
    top = sorted(profile, key=lambda r: -r[1])[:8]
    print("  top self times: " + ", ".join(f"{n} {s / 1000:.1f}" for n, s, _ in top))
    print(f"  status imports click: {'yes' if 'click' in names else 'no'}")
    return bool(pyd or heavy)


def _print_goal(times: dict[str, Sample], real_tree: bool) -> None:
    median_ms = statistics.median(times["oomguard status"].wall) * 1000
    base_ms = statistics.median(times["python -c pass"].wall) * 1000
    cpu_ms = statistics.median(times["oomguard status"].cpu) * 1000
    base_cpu = statistics.median(times["python -c pass"].cpu) * 1000
    verdict = "met" if median_ms <= STATUS_GOAL_MS else "NOT met"
    if real_tree:
        verdict = "not applicable in an emulated guest"
    print(
        f"  goal <= {STATUS_GOAL_MS:.0f} ms wall median (host): {verdict}; status costs "
        f"{median_ms - base_ms:.1f} ms wall / {cpu_ms - base_cpu:.1f} ms cpu over a bare "
        f"interpreter start"
    )


def _print_click_budget(times: dict[str, Sample]) -> None:
    """Would status stay within CLICK_BUDGET_MS of a bare start through click? The click import
    alone, over a bare start, answers it (a lower bound: a click command also builds its
    parser). Both wall and CPU medians: CPU is the steadier one on a loaded machine."""
    bare, click = times["python -c pass"], times["python -c 'import click'"]
    wall = (statistics.median(click.wall) - statistics.median(bare.wall)) * 1000
    cpu = (statistics.median(click.cpu) - statistics.median(bare.cpu)) * 1000
    within = max(wall, cpu) <= CLICK_BUDGET_MS
    print(
        f"  importing click costs {wall:.1f} ms wall / {cpu:.1f} ms cpu over a bare start "
        f"(budget {CLICK_BUDGET_MS:.0f} ms): "
        + ("within: status could use click" if within else "over: status keeps its own parser")
    )


def _in_vm(args: argparse.Namespace, name: str) -> int:
    """Re-run one section inside the QEMU guest (pure cgroup v2) on a real tree."""
    cmd = [
        sys.executable,
        str(REPO / "tools" / "vmrun.py"),
        "--timeout",
        str(args.vm_timeout),
        "--",
        sys.executable,
        "-m",
        "tools.bench",
        "--only",
        name,
        "--runs",
        str(args.runs),
        "--real-tree",
    ]
    print(f"== {name}: in the QEMU guest (TCG: expect ~17x the host's times)", flush=True)
    return subprocess.run(cmd, cwd=REPO, check=False).returncode


# ----------------------------------------------------------------- supervisor, postgres


@section("supervisor")
def bench_supervisor(args: argparse.Namespace) -> int:
    """Issues 3/4 on a real kernel: OOM reaction, RSS, idle wake-ups, eviction vs OOM."""
    from tools import bench_supervisor

    return int(bench_supervisor.run([]))


@section("postgres")
def bench_postgres(args: argparse.Namespace) -> int:
    """Issue 5: PostgreSQL under storms, plain container vs oomguard (N storms each)."""
    if not (REPO / "tools" / "bench_postgres.py").exists():
        print("== postgres: tools/bench_postgres.py is missing; section skipped", flush=True)
        return 1
    from tools import bench_postgres

    return int(bench_postgres.run([]))


@section("matrix")
def bench_matrix(args: argparse.Namespace) -> int:
    """Issue 8: the scenario matrix (budget shape x leak rate x leak shape x swap)."""
    from tools import bench_matrix

    return int(bench_matrix.run([]))


@section("seed")
def bench_seed(args: argparse.Namespace) -> int:
    """Issue 8: the seed's case, PostgreSQL with no limit: plain kernel, earlyoom, oomguard."""
    from tools import bench_matrix

    return int(bench_matrix.run_seed([]))


@section("throughput")
def bench_throughput(args: argparse.Namespace) -> int:
    """Issue 8: PostgreSQL throughput without a storm, plain container vs the shipped example
    (and the example with limits on the primary), alternating rounds."""
    from tools import bench_postgres

    return int(bench_postgres.run(["--throughput"]))


# ----------------------------------------------------------------------- daemon: RSS

#: Issue 10's goal for the running daemon's resident size in the guest, MiB.
DAEMON_RSS_GOAL_MIB = 20.0
#: A primary and a sidecar in a budget: PSI triggers, the pressure response and the auto
#: memory.high are all set up, as in a real deployment.
DAEMON_CONFIG = """\
[oomguard]
memory_max = "512M"
[slice.sidecars]
memory_max = "128M"
[service.db]
role = "primary"
command = ["sleep", "600"]
memory_high = "200M"
[service.side]
command = ["sleep", "600"]
slice = "sidecars"
"""
#: What stayed resident before the hand-off: the daemon's modules plus pydantic, click and the
#: config package (an interpreter that imports them, not a supervisor: an approximation).
_BEFORE_IMPORTS = (
    "import click, pydantic, oomguard.config.load, oomguard.config.compile, "
    "oomguard.cli.daemon, oomguard.cli._supervise, oomguard.runtime.supervisor, "
    "oomguard.runtime.pressure"
)


def _status_kib(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


def _idle_python_kib(code: str, env: dict[str, str]) -> dict[str, int]:
    """VmRSS/VmHWM of an interpreter that ran `code`, then sleeps."""
    script = f"{code}\nimport sys, time\nsys.stdout.write('ready\\n'); sys.stdout.flush()\n"
    script += "time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(1.0)
        return _status_kib(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def _daemon_kib(workdir: Path, mount: Path, env: dict[str, str]) -> dict[str, int]:
    """VmRSS/VmHWM of `oomguard run` once both services are RUNNING (and a 2 s settle)."""
    import json

    workdir.mkdir()
    config = workdir / "oomguard.toml"
    config.write_text(DAEMON_CONFIG)
    state = workdir / "state"
    root = f"/oomguard-bench-daemon-{os.getpid()}"
    cmd = [*oomguard_cmd(), "run", str(config), "--cgroup", root, "--state-dir", str(state)]
    err = (workdir / "stderr").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        # Generous: two interpreter starts under TCG, on a host other jobs may be loading.
        deadline = time.monotonic() + 900
        while True:
            with contextlib.suppress(FileNotFoundError, ValueError):
                doc = json.loads((state / "state.json").read_text())
                if {s["state"] for s in doc["services"].values()} == {"RUNNING"}:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (workdir / "stderr").read_text(errors="replace")[-2000:]
                raise SystemExit(f"bench: oomguard run did not get its services up ({cmd})\n{tail}")
            time.sleep(0.2)
        time.sleep(2.0)
        return _status_kib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
        err.close()
        with contextlib.suppress(OSError):
            (mount / root.lstrip("/")).rmdir()


@section("daemon")
def bench_daemon(args: argparse.Namespace) -> int:
    """Issue 10: the running daemon's RSS in the guest, beside a bare interpreter's."""
    if not args.real_tree:
        return _in_vm(args, "daemon")
    from oomguard.cgroup.discover import find_cgroup2_mount

    mount = find_cgroup2_mount()
    if mount is None:
        raise SystemExit("bench: the daemon section needs a cgroup2 mount")
    print(f"== daemon RSS (load average {load_average()})", flush=True)
    # As installed: bytecode cached (a private cache, warmed by the first round).
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="oomguard-bench-pycache-")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    rows: dict[str, list[dict[str, int]]] = {"bare": [], "before": [], "daemon": []}
    with tempfile.TemporaryDirectory(prefix="oomguard-bench-daemon-") as tmp:
        for i in range(3):
            got = {
                "bare": _idle_python_kib("pass", env),
                "before": _idle_python_kib(_BEFORE_IMPORTS, env),
                "daemon": _daemon_kib(Path(tmp) / str(i), mount, env),
            }
            if i:  # round 0 only warms the bytecode cache
                for name, figures in got.items():
                    rows[name].append(figures)
    labels = {
        "bare": "python3 -c 'import time; time.sleep(600)'",
        "before": "interpreter + pydantic, click, config (what the daemon no longer loads)",
        "daemon": "oomguard run: the daemon (primary + sidecar in a budget)",
    }
    for name, label in labels.items():
        rss = statistics.median(r["VmRSS"] for r in rows[name]) / 1024
        hwm = statistics.median(r["VmHWM"] for r in rows[name]) / 1024
        n = len(rows[name])
        print(f"  {label:<72} VmRSS {rss:5.1f} MiB  VmHWM {hwm:5.1f} MiB  (median of {n})")
    daemon = statistics.median(r["VmRSS"] for r in rows["daemon"]) / 1024
    bare = statistics.median(r["VmRSS"] for r in rows["bare"]) / 1024
    verdict = "met" if daemon <= DAEMON_RSS_GOAL_MIB else "NOT met"
    print(
        f"  goal daemon VmRSS <= {DAEMON_RSS_GOAL_MIB:.0f} MiB: {verdict} "
        f"({daemon - bare:+.1f} MiB over a bare interpreter)"
    )
    return 0


@section("runaway")
def bench_runaway(args: argparse.Namespace) -> int:
    """Issue 11: a runaway PostgreSQL session in a plain cgroup (the kernel kills it, every
    session is reset) beside oomguard's shed rule (SIGTERM to that backend only)."""
    from tools import bench_pg_runaway

    return int(bench_pg_runaway.run(["--sections", "runaway"]))


@section("restart")
def bench_restart(args: argparse.Namespace) -> int:
    """Issue 11: PostgreSQL's controlled restart (shared_buffers 256MB), stop -> pg_isready,
    beside the same restart done by hand on a bare postgres."""
    from tools import bench_pg_runaway

    return int(bench_pg_runaway.run(["--sections", "restart"]))


# ----------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", help=f"comma-separated sections ({', '.join(SECTIONS)})")
    ap.add_argument("--runs", type=int, default=21, help="timed runs per command (>= 20)")
    ap.add_argument("--vm", action="store_true", help="run the section(s) in the QEMU guest")
    ap.add_argument("--vm-timeout", type=int, default=900, help="guest time limit, seconds")
    ap.add_argument("--real-tree", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    wanted = args.only.split(",") if args.only else list(SECTIONS)
    unknown = [w for w in wanted if w not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; have {', '.join(SECTIONS)}")
    rc = 0
    for name in wanted:
        rc = max(rc, SECTIONS[name](args))
    return rc


if __name__ == "__main__":
    if not __package__:
        # The sections import `tools` and `tests` as packages (no sys.path edits): run as a
        # module, from the repository root.
        sys.exit("bench: run it from the repository root as: python3 -m tools.bench [--only ...]")
    sys.exit(main())
