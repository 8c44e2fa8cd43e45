#!/usr/bin/env python3
"""`make demo`: run examples/demo.toml on a real cgroup v2 kernel and show what oomguard did.

Natively when this host has a writable cgroup2 mount with the memory controller (and we are
root), otherwise inside the throwaway QEMU guest of tools/vmrun.py. The scenario: the leaky
sidecar is OOM-killed and restarted three times while the primary keeps beating; then the status
table, the event log and the primary's heartbeat gaps are printed, and oomguard is stopped.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "examples" / "demo.toml"
STATE = Path("/run/oomguard-demo")
KILLS = 3
DEADLINE = 150.0


def native_ok() -> bool:
    """A cgroup2 mount (of our own cgroup) that offers memory, and root to write it."""
    if os.geteuid() != 0:
        return False
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return False
    for line in mountinfo.splitlines():
        pre, _, post = line.partition(" - ")
        if post.split()[:1] == ["cgroup2"]:
            mnt = pre.split()[4]
            try:
                ctrl = (Path(mnt) / "cgroup.controllers").read_text().split()
            except OSError:
                continue
            if "memory" in ctrl:
                return True
    return False


def events() -> list[dict[str, object]]:
    try:
        lines = (STATE / "events.jsonl").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def heartbeat_gaps() -> tuple[int, float, set[str]]:
    beats: list[float] = []
    pids: set[str] = set()
    try:
        text = (STATE / "heartbeat.log").read_text()
    except OSError:
        return 0, 0.0, pids
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "beat":
            beats.append(float(parts[1]))
            pids.add(parts[2])
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    return len(beats), max(gaps, default=0.0), pids


def _config_in(workdir: Path) -> Path:
    """examples/demo.toml with `cwd` set to `workdir` for every service: its commands name the
    workloads relative to the repository, and a service starts in its user's home otherwise."""
    text = re.sub(
        r"^(\[service\.[a-z0-9_-]+\]\n)",
        lambda m: f"{m.group(1)}cwd = {json.dumps(str(workdir))}\n",
        CONFIG.read_text(),
        flags=re.MULTILINE,
    )
    out = Path(tempfile.gettempdir()) / "oomguard-demo.toml"
    out.write_text(text)
    return out


def inside() -> int:
    py = sys.executable
    shutil.rmtree(STATE, ignore_errors=True)
    env = dict(os.environ)
    # Services say "python3": make that the real interpreter, not a slow pyenv shim.
    env["PATH"] = f"{Path(py).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    print(f"demo: oomguard run {CONFIG.relative_to(REPO)}  (Ctrl-C stops it)", flush=True)
    config = _config_in(REPO)
    proc = subprocess.Popen([py, "-m", "oomguard", "run", str(config)], cwd=REPO, env=env)
    start = time.monotonic()
    kills = 0
    try:
        while time.monotonic() - start < DEADLINE:
            if proc.poll() is not None:
                print(f"demo: oomguard exited early with {proc.returncode}", file=sys.stderr)
                return 1
            evs = events()
            kills = sum(
                1 for e in evs if e.get("kind") == "oom_kill" and e.get("service") == "leaky"
            )
            restarted = [
                e for e in evs if e.get("kind") == "spawned" and e.get("service") == "leaky"
            ]
            if kills >= KILLS and len(restarted) > KILLS:
                break
            time.sleep(0.5)
        print(f"\n=== oomguard status  (after {kills} OOM kills of leaky)", flush=True)
        subprocess.run(
            [py, "-m", "oomguard", "status", "--state-dir", str(STATE), "--root", _root()],
            cwd=REPO,
            check=False,
        )
        print("\n=== oomguard events", flush=True)
        subprocess.run(
            [py, "-m", "oomguard", "events", "--state-dir", str(STATE)], cwd=REPO, check=False
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    n, gap, pids = heartbeat_gaps()
    db_spawns = sum(1 for e in events() if e.get("kind") == "spawned" and e.get("service") == "db")
    print(
        f"\n=== demo summary\n"
        f"leaky OOM-killed and restarted: {kills} times\n"
        f"db heartbeats: {n}, longest gap {gap * 1000:.0f} ms, db pids seen: {len(pids)}, "
        f"db starts: {db_spawns}\n"
        f"oomguard exit status after SIGTERM: {rc} (the primary's)"
    )
    ok = kills >= KILLS and len(pids) == 1 and gap < 1.0
    print("demo: OK" if ok else "demo: FAILED", flush=True)
    return 0 if ok else 1


def _root() -> str:
    try:
        return str(json.loads((STATE / "state.json").read_text())["root"])
    except (OSError, ValueError, KeyError):
        return "/oomguard"


def main() -> int:
    if "--inside" in sys.argv or native_ok():
        return inside()
    print(
        "demo: this host has no cgroup v2 memory controller; running in the QEMU guest", flush=True
    )
    vmrun = REPO / "tools" / "vmrun.py"
    if subprocess.run([sys.executable, str(vmrun), "--check"], check=False).returncode != 0:
        rc = subprocess.run([sys.executable, str(vmrun), "--install"], check=False).returncode
        if rc != 0:
            return rc
    cmd = [
        sys.executable,
        str(vmrun),
        "--timeout",
        "400",
        "--",
        sys.executable,
        __file__,
        "--inside",
    ]
    return subprocess.run(cmd, cwd=REPO, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
