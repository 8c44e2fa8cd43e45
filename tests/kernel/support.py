"""Helpers for the real-kernel supervisor tests: run `python -m oomguard` as a real subprocess
against a real cgroup2 tree, and observe it only from the outside (events.jsonl, state.json, the
cgroupfs, its exit status and output), as an operator would.

Everything that waits has a deadline. The guest runs Python about 17x slower than the host and the
host is shared, so deadlines are generous (an oomguard start alone can take 10-20 s: pydantic's
import) but finite: a hang fails the test with what was seen so far instead of hanging the VM.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

T = TypeVar("T")

#: The interpreter running the tests; in the guest a pyenv shim costs ~4 s per start.
PYTHON = sys.executable
REPO = Path(__file__).resolve().parents[2]
WORKLOADS = REPO / "examples" / "workloads"
MiB = 1 << 20

#: Default deadline for one wait. Long enough for an oomguard start in a loaded TCG guest.
DEADLINE = 120.0
#: How long a stopped oomguard gets to exit before the test SIGKILLs it (and fails).
STOP_DEADLINE = 90.0
#: Set to a directory to keep each scenario's files (see `keep_artifacts`).
KEEP_ENV = "OOMGUARD_KTEST_KEEP"


def workload(name: str) -> list[str]:
    """argv of one of examples/workloads/*.py."""
    return [PYTHON, str(WORKLOADS / f"{name}.py")]


def py(code: str) -> list[str]:
    """argv running `code` in the test interpreter (e.g. a bounded allocator)."""
    return [PYTHON, "-c", code]


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


# -- TOML ---------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        # JSON string escapes are a subset of TOML basic-string escapes.
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }"
    raise TypeError(f"no TOML for {value!r}")


def toml_dumps(data: Mapping[str, Any]) -> str:
    """Just enough TOML for oomguard configs: `[oomguard]`, `[slice.X]`, `[service.X]` with
    scalar, list and inline-table (env) values."""
    lines: list[str] = []

    def table(name: str, body: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not _is_table(k, v)}
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in scalars.items())
        lines.append("")
        for k, v in body.items():
            if _is_table(k, v):
                table(f"{name}.{k}", v)

    for key, body in data.items():
        if key in ("slice", "service"):
            for name, sub in body.items():
                table(f"{key}.{name}", sub)
        else:
            table(key, body)
    return "\n".join(lines)


def _is_table(key: str, value: Any) -> bool:
    # `env` is an inline table; nested sections (e.g. [oomguard.pressure]) are real tables.
    return isinstance(value, dict) and key != "env"


def write_config(directory: Path, data: Mapping[str, Any], name: str = "oomguard.toml") -> Path:
    path = directory / name
    path.write_text(toml_dumps(data))
    return path


# -- cgroupfs -----------------------------------------------------------------------------------


def cg_write(path: Path, value: str) -> None:
    # One write() per value: the kernel parses each write on its own.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def flat_keyed(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        out[key] = int(value)
    return out


def procs(cgroup: Path) -> list[int]:
    try:
        return [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def rel(mount: Path, cgroup: Path) -> str:
    """`/sys/fs/cgroup/okt-1/og` -> `/okt-1/og` (what --cgroup takes)."""
    return "/" + str(cgroup.relative_to(mount))


# -- waiting ------------------------------------------------------------------------------------


class Timeout(AssertionError):
    pass


def wait_until(
    probe: Callable[[], T | None],
    what: str,
    *,
    timeout: float = DEADLINE,
    interval: float = 0.05,
    context: Callable[[], str] | None = None,
) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` (and `context()`, e.g.
    oomguard's output) at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() >= deadline:
            extra = f"\n--- context ---\n{context()}" if context is not None else ""
            raise Timeout(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(interval)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a JSON-lines file (a line being written may be torn: skipped)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def heartbeats(path: Path) -> list[tuple[float, int]]:
    """(monotonic time, pid) of each `beat` line fakedb wrote."""
    out: list[tuple[float, int]] = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "beat" and parts[2].startswith("pid="):
            out.append((float(parts[1]), int(parts[2][4:])))
    return out


def max_gap(times: Sequence[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def assert_no_traceback(text: str) -> None:
    assert "Traceback" not in text, f"a Python traceback in the output:\n{text}"


# -- oomguard as a subprocess -------------------------------------------------------------------


class Oomguard:
    """One `python -m oomguard ...` subprocess with its own state dir and cgroup tree root.

    Output goes to files (not pipes: nobody reads a pipe while the test waits, and a full pipe
    would block oomguard's logging). Always use it as a context manager or call `close()`: a test
    must never leave an oomguard (or its services) running.
    """

    def __init__(
        self,
        args: Sequence[str],
        workdir: Path,
        *,
        mount: Path,
        root: Path,
        state_dir: Path,
        prefix: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        stdout: int | None = None,
    ) -> None:
        """`stdout`: an fd for oomguard's stdout instead of the file (e.g. a pipe nobody reads)."""
        self.args = list(args)
        self.workdir = workdir
        self.mount = mount
        self.root = root
        self.state_dir = state_dir
        self.stdout_path = workdir / "oomguard.stdout"
        self.stderr_path = workdir / "oomguard.stderr"
        argv = [*prefix, PYTHON, "-m", "oomguard", *self.args]
        full_env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
        # Run from the repo so `-m oomguard` imports the working tree under test.
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out if stdout is None else stdout,
                stderr=err,
                cwd=REPO,
                env=full_env,
            )
        self.started = time.monotonic()
        self.returncode: int | None = None

    # -- observation ------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        def text(p: Path) -> str:
            try:
                return p.read_text(errors="replace")
            except FileNotFoundError:
                return ""

        return text(self.stdout_path) + text(self.stderr_path)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def events(self, kind: str | None = None, service: str | None = None) -> list[dict[str, Any]]:
        evs = read_jsonl(self.state_dir / "events.jsonl")
        return [
            e
            for e in evs
            if (kind is None or e.get("kind") == kind)
            and (service is None or e.get("service") == service)
        ]

    def state(self) -> dict[str, Any] | None:
        try:
            doc: dict[str, Any] = json.loads((self.state_dir / "state.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return doc

    def service_state(self, name: str) -> dict[str, Any] | None:
        doc = self.state()
        if doc is None:
            return None
        svc: dict[str, Any] | None = doc.get("services", {}).get(name)
        return svc

    def cgroup(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def context(self) -> str:
        evs = self.events()
        tail = "\n".join(json.dumps(e) for e in evs[-40:])
        status = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        return f"oomguard {status}\n-- output --\n{self.output()[-6000:]}\n-- events --\n{tail}"

    # -- waiting ------------------------------------------------------------------------------

    def wait_for(
        self,
        probe: Callable[[], T | None],
        what: str,
        *,
        timeout: float = DEADLINE,
        allow_exit: bool = False,
    ) -> T:
        """`wait_until` that also fails at once if oomguard exits (unless `allow_exit`)."""

        def guarded() -> T | None:
            got = probe()
            if got:
                return got
            if not allow_exit and self.proc.poll() is not None:
                raise AssertionError(
                    f"oomguard exited ({self.proc.returncode}) while waiting for {what}\n"
                    + self.context()
                )
            return None

        return wait_until(guarded, what, timeout=timeout, context=self.context)

    def wait_event(
        self,
        kind: str,
        service: str | None = None,
        *,
        count: int = 1,
        where: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = DEADLINE,
    ) -> list[dict[str, Any]]:
        """Wait until at least `count` events of `kind` (for `service`, matching `where`)."""

        def probe() -> list[dict[str, Any]] | None:
            evs = [e for e in self.events(kind, service) if where is None or where(e)]
            return evs if len(evs) >= count else None

        label = f"{count} x {kind!r}" + (f" of {service}" if service else "")
        return self.wait_for(probe, label, timeout=timeout)

    def wait_running(self, *names: str, timeout: float = DEADLINE) -> dict[str, int]:
        """Wait until every named service is RUNNING; return their pids."""

        def probe() -> dict[str, int] | None:
            doc = self.state()
            if doc is None:
                return None
            svcs = doc.get("services", {})
            if all(svcs.get(n, {}).get("state") == "RUNNING" for n in names):
                return {n: int(svcs[n]["pid"]) for n in names}
            return None

        return self.wait_for(probe, f"{', '.join(names)} RUNNING", timeout=timeout)

    def wait_exit(self, timeout: float = STOP_DEADLINE) -> int:
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            raise Timeout(f"oomguard did not exit within {timeout:g}s\n{self.context()}") from None
        return self.returncode

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = STOP_DEADLINE) -> int:
        """SIGTERM and wait: the way an operator (or `docker stop`) ends it."""
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def close(self) -> None:
        """Make sure nothing is left: oomguard stopped (killed if it hangs), the tree killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if self.root.exists():
            kill_tree(self.root)
        keep_artifacts(self.workdir)

    def __enter__(self) -> Oomguard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def keep_artifacts(workdir: Path) -> None:
    """With OOMGUARD_KTEST_KEEP=DIR (a directory shared with the host, e.g. `vmrun --rw DIR`),
    copy a scenario's config, output and state there for a post-mortem."""
    keep = os.environ.get(KEEP_ENV)
    if not keep:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "oomguard").split(" ")[0]
    dest = Path(keep) / "".join(c if c.isalnum() or c in "-_." else "_" for c in test)
    shutil.copytree(workdir, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sock"))


def kill_tree(cgroup: Path, timeout: float = 30.0) -> None:
    """cgroup.kill the subtree and wait until it is empty (the fixture removes the dirs)."""
    try:
        cg_write(cgroup / "cgroup.kill", "1")
    except FileNotFoundError:
        return
    wait_until(
        lambda: "populated 0" in (cgroup / "cgroup.events").read_text(),
        f"{cgroup} to empty after cgroup.kill",
        timeout=timeout,
    )


def start_run(
    workdir: Path,
    mount: Path,
    scratch: Path,
    config: Mapping[str, Any],
    *,
    extra_args: Iterable[str] = (),
    prefix: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    stdout: int | None = None,
) -> Oomguard:
    """`oomguard run CONFIG` with its tree at `<scratch>/og` and its state in `workdir/state`."""
    root = scratch / "og"
    state_dir = workdir / "state"
    path = write_config(workdir, config)
    args = [
        "run",
        str(path),
        "--cgroup",
        rel(mount, root),
        "--state-dir",
        str(state_dir),
        *extra_args,
    ]
    return Oomguard(
        args,
        workdir,
        mount=mount,
        root=root,
        state_dir=state_dir,
        prefix=prefix,
        env=env,
        stdout=stdout,
    )


def run_once(
    args: Sequence[str], *, timeout: float = DEADLINE, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A short-lived oomguard command (exec, validate) with a deadline."""
    return subprocess.run(
        [PYTHON, "-m", "oomguard", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
    )


def backoff_gaps(events: Sequence[dict[str, Any]]) -> list[tuple[float, float]]:
    """For each `backoff` of one service: (its delay, the time from the previous `spawned` event
    to the `restart` that followed the backoff).

    Why measured from `spawned`: the delay runs from the loop turn that saw the exit, and that
    turn began after the turn that wrote `spawned` had finished; the events of the exit turn
    itself are written a little later than the turn began (slow guest), so timing from them
    would under-measure the delay. So gap >= delay must hold exactly.
    """
    out: list[tuple[float, float]] = []
    last_spawned: float | None = None
    pending: float | None = None
    for e in events:
        if e["kind"] == "spawned":
            last_spawned = e["ts"]
        elif e["kind"] == "backoff":
            pending = e["delay"]
        elif e["kind"] == "restart" and pending is not None and last_spawned is not None:
            out.append((pending, e["ts"] - last_spawned))
            pending = None
    return out


def counter_events(og: Oomguard, service: str | None = None) -> list[dict[str, Any]]:
    """The supervisor's oom_kill events: a rise of a slice's memory.events.local oom_kill (they
    carry the delta as `count`; with memory.oom.group=1 the kernel counts one killed process
    twice, as the victim and as a member of the group)."""
    return [e for e in og.events("oom_kill", service) if "count" in e]


def exit_events(og: Oomguard, service: str | None = None) -> list[dict[str, Any]]:
    """Exit records of the restart policy (kind `exit`: code, signal, oom_killed)."""
    return og.events("exit", service)
