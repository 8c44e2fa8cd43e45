"""Helpers for the PostgreSQL scenarios (tests/kernel/test_postgres.py) and the postgres benchmark
(tools/bench_postgres.py): a throwaway cluster made by examples/postgres/init-db.sh, the example
config with its paths pointed at that cluster, and clients that report what committed.

Stdlib only (plus the repo): tools/bench_postgres.py imports this module outside pytest (as
`tests.kernel.pg`: the benches run as `python3 -m tools.NAME` from the repository root).

Every client talks over the unix socket in ``<base>/run`` as user ``postgres`` (the cluster
trusts local connections): port 5432 is PostgreSQL itself, 6432 is pgbouncer.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DIR = REPO / "examples" / "postgres"
EXAMPLE_CONFIG = EXAMPLE_DIR / "oomguard.toml"
INIT_SCRIPT = EXAMPLE_DIR / "init-db.sh"
#: The base directory written into the example's files; replaced by the cluster's own base.
DEFAULT_BASE = "/var/lib/oomguard-example"
PG_PORT = 5432
BOUNCER_PORT = 6432

#: One committed transaction = one row: what the load inserts (pgbench's :client_id is 0..c-1).
LEDGER_SCRIPT = "INSERT INTO ledger (client) VALUES (:client_id);\n"


def pg_bin() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin (Debian's layout), or $PG_BIN."""
    env = os.environ.get("PG_BIN")
    if env:
        return Path(env)
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found else None


def missing_tools() -> list[str]:
    """What the PostgreSQL scenarios need and this host lacks (empty: all there)."""
    missing: list[str] = []
    bindir = pg_bin()
    for tool in ("postgres", "initdb", "pgbench", "psql", "pg_isready"):
        if bindir is None or not os.access(bindir / tool, os.X_OK):
            missing.append(f"{tool} (postgresql)")
    for tool, pkg in (("pgbouncer", "pgbouncer"), ("stress-ng", "stress-ng"), ("runuser", "")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} ({pkg})" if pkg else tool)
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        missing.append("user postgres")
    return missing


def _tool(name: str) -> str:
    bindir = pg_bin()
    assert bindir is not None, "no PostgreSQL binaries"
    return str(bindir / name)


# -- the config -----------------------------------------------------------------------------


def _rebase(value: Any, base: str) -> Any:
    if isinstance(value, str):
        return value.replace(DEFAULT_BASE, base)
    if isinstance(value, list):
        return [_rebase(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _rebase(v, base) for k, v in value.items()}
    return value


def deep_merge(into: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` merged into a copy of `into`, table by table (scalars and lists replace)."""
    out = copy.deepcopy(into)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def example_config(base: Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """examples/postgres/oomguard.toml as a dict, with every path under the cluster at `base`,
    the PostgreSQL binary of this host, then `overrides`."""
    data = tomllib.loads(EXAMPLE_CONFIG.read_text())
    data = _rebase(data, str(base))
    pg = data["service"]["postgres"]
    pg["command"][0] = _tool("postgres")
    return deep_merge(data, overrides or {})


# -- the cluster ----------------------------------------------------------------------------


@dataclass
class Cluster:
    """A cluster made by init-db.sh under `base` (a fresh directory that `remove()` deletes)."""

    base: Path

    @property
    def pgdata(self) -> Path:
        return self.base / "pgdata"

    @property
    def sockets(self) -> Path:
        return self.base / "run"

    @property
    def storm_trigger(self) -> Path:
        return self.base / "storm"

    @classmethod
    def create(
        cls, *, shared_buffers: str = "64MB", parent: str | None = None, timeout: float = 300.0
    ) -> Cluster:
        # /tmp: tmpfs in the guest. The base must be reachable by the postgres user.
        base = Path(tempfile.mkdtemp(prefix="oomguard-pg-", dir=parent))
        base.chmod(0o755)
        env = {**os.environ, "SHARED_BUFFERS": shared_buffers}
        bindir = pg_bin()
        if bindir is not None:
            env["PG_BIN"] = str(bindir)
        proc = subprocess.run(
            ["/bin/sh", str(INIT_SCRIPT), str(base)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            shutil.rmtree(base, ignore_errors=True)
            raise AssertionError(f"init-db.sh failed ({proc.returncode}):\n{proc.stderr}")
        return cls(base)

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    # -- observation ----------------------------------------------------------------------

    def postmaster_pid(self) -> int | None:
        """Line 1 of postmaster.pid (None while no postmaster holds the data directory)."""
        try:
            first = (self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
        except FileNotFoundError:
            return None
        return int(first) if first.strip().isdigit() else None

    def postmaster_status(self) -> str | None:
        """Line 8 of postmaster.pid: "starting", "stopping", "ready" or "standby" (None without
        one). The postmaster writes "ready" when it starts accepting connections, the moment
        pg_isready would first succeed; pg_ctl waits on this line too. Reading it costs no
        process, where each pg_isready is an exec (~0.5 s of CPU in the emulated test guest)."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().split("\n")
        except FileNotFoundError:
            return None
        return lines[7].strip() if len(lines) > 7 else None

    def ready(self, port: int = PG_PORT, timeout: float = 2.0) -> bool:
        """pg_isready: the server accepts connections."""
        try:
            proc = subprocess.run(
                [
                    _tool("pg_isready"),
                    "-q",
                    "-h",
                    str(self.sockets),
                    "-p",
                    str(port),
                    "-U",
                    "postgres",
                ],
                timeout=timeout + 5,
                check=False,
                env={**os.environ, "PGCONNECT_TIMEOUT": str(max(1, int(timeout)))},
            )
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0

    def psql(
        self, sql: str, *, port: int = PG_PORT, db: str = "bench", timeout: float = 120.0
    ) -> str:
        proc = subprocess.run(
            [*self.psql_argv(port=port, db=db), "-c", sql],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(f"psql {sql!r} failed ({proc.returncode}): {proc.stderr}")
        return proc.stdout.strip()

    def psql_argv(self, *, port: int = PG_PORT, db: str = "bench") -> list[str]:
        return [
            _tool("psql"),
            "-X",  # no ~/.psqlrc
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.sockets),
            "-p",
            str(port),
            "-U",
            "postgres",
            "-d",
            db,
        ]

    def ledger(self) -> tuple[int, set[int]]:
        """(count(*), every id) of the ledger table."""
        ids = {int(x) for x in self.psql("SELECT id FROM ledger").split()}
        return len(ids), ids

    def pgbench(
        self,
        seconds: int,
        *,
        clients: int = 4,
        port: int = BOUNCER_PORT,
        script: str = LEDGER_SCRIPT,
        rate: int | None = None,
        extra: Sequence[str] = (),
    ) -> PgbenchRun:
        """Start `pgbench -T seconds -c clients` with `script`; `.result()` waits for it.
        `rate`: pgbench -R, transactions per second over all clients (None: flat out)."""
        path = self.base / "ledger.sql"
        if not path.exists():
            path.write_text(script)
        argv = [
            _tool("pgbench"),
            "-n",  # no vacuum: the script touches only the ledger
            "-h",
            str(self.sockets),
            "-p",
            str(port),
            "-U",
            "postgres",
            "-c",
            str(clients),
            "-T",
            str(seconds),
            "-f",
            str(path),
            *(["-R", str(rate)] if rate is not None else []),
            *extra,
            "bench",
        ]
        # Owned by the PgbenchRun, which closes it in result(): a file, not a pipe, so that a
        # long run never blocks on output nobody reads yet.
        out = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True)
        return PgbenchRun(proc, out, time.monotonic())


@dataclass
class PgbenchResult:
    """What one pgbench run says. `processed` counts committed transactions only."""

    returncode: int
    processed: int
    failed: int
    aborted_clients: int
    wall: float
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.failed == 0 and self.aborted_clients == 0


def parse_pgbench(output: str, returncode: int, wall: float) -> PgbenchResult:
    def number(pattern: str) -> int:
        m = re.search(pattern, output, re.M)
        return int(m.group(1)) if m else 0

    return PgbenchResult(
        returncode=returncode,
        processed=number(r"^number of transactions actually processed: (\d+)"),
        failed=number(r"^number of failed transactions: (\d+)"),
        aborted_clients=len(re.findall(r"client \d+ (?:script \d+ )?aborted", output)),
        wall=wall,
        output=output,
    )


@dataclass
class PgbenchRun:
    proc: subprocess.Popen[str]
    out: Any
    started: float

    def done(self) -> bool:
        return self.proc.poll() is not None

    def result(self, timeout: float = 600.0) -> PgbenchResult:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        wall = time.monotonic() - self.started
        self.out.seek(0)
        text = self.out.read()
        self.out.close()
        return parse_pgbench(text, rc, wall)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class AckWriter:
    """Inserts ledger rows one at a time through one psql session and records the id of every
    row whose INSERT ... RETURNING came back, i.e. every commit the client was told about. If the
    session ends (the server shut down), it reconnects until `stop()`.

    A row may also commit without its acknowledgement reaching us (the connection dropped after
    the commit): so the rows present must be a superset of `acked`, never the other way round.
    """

    cluster: Cluster
    port: int = PG_PORT
    client: int = -1
    pause: float = 0.05
    acked: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sessions: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _proc: subprocess.Popen[str] | None = None

    def start(self) -> AckWriter:
        self._thread = threading.Thread(target=self._run, name="ack-writer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        stmt = f"INSERT INTO ledger (client) VALUES ({self.client}) RETURNING id;\n"
        while not self._stop.is_set():
            proc = subprocess.Popen(
                self.cluster.psql_argv(port=self.port),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
            self._proc = proc
            self.sessions += 1
            assert proc.stdin is not None and proc.stdout is not None
            try:
                while not self._stop.is_set():
                    proc.stdin.write(stmt)
                    proc.stdin.flush()
                    line = proc.stdout.readline()
                    if not line:
                        break  # the session ended: the server went away
                    self.acked.append(int(line))
                    time.sleep(self.pause)
            except (BrokenPipeError, ValueError, OSError) as err:
                self.errors.append(repr(err))
            with contextlib.suppress(OSError):
                proc.kill()
            _, stderr = proc.communicate()
            if stderr.strip():
                self.errors.append(stderr.strip()[-500:])
            # Between sessions: the server is restarting; do not spin.
            self._stop.wait(0.2)


# -- the runaway session (issue 11) ----------------------------------------------------------

#: Width of one row of the runaway query. Its sort holds every row in memory (work_mem is set
#: far above the total), so the backend grows by about the bytes sorted, steadily, one row per
#: executor tuple with a CHECK_FOR_INTERRUPTS between two (SIGTERM ends it at once), and keeps
#: all of it until the count is done; no final copy doubles it (string_agg's result is copied
#: once more by its final function: 2x the aggregated size at the end).
RUNAWAY_WIDTH = 8192


def runaway_sql(mib: int, width: int = RUNAWAY_WIDTH) -> str:
    """One query whose backend holds about `mib` MiB of private memory at its peak: a count
    over an in-memory sort of `mib` MiB of rows."""
    rows = (mib << 20) // width
    return (
        "SET work_mem = '2GB';\n"
        # The outer query reads `pad`: the planner replaces a subquery's unused output columns
        # by NULLs, and would sort bare integers.
        f"SELECT count(*), sum(length(pad)) FROM (SELECT g, repeat('x', {width}) AS pad "
        f"FROM generate_series(1, {rows}) g ORDER BY g DESC) s;"
    )


@dataclass(frozen=True)
class RunawayScenario:
    """Issue 11's runaway session, sized: the session needs `mib` MiB of private memory; the
    primary's slice has memory_high `high` below that and memory_max `max` above it, and
    oomguard's `watermark` (where the shed rung starts) a little below `high`. PostgreSQL
    also holds a resident database (pgbench -i -s `scale`, written on tmpfs by PostgreSQL
    itself, so charged to its cgroup and unreclaimable without swap), and the session plus
    that database exceed `max`: in a plain cgroup with that memory.max the kernel must kill."""

    mib: int
    watermark: str
    high: str
    max: str
    scale: int

    def primary(self) -> dict[str, str]:
        """The primary's overrides of the example config."""
        return {"watermark": self.watermark, "memory_high": self.high, "memory_max": self.max}


def prefill(cluster: Cluster, scale: int, *, timeout: float = 900.0) -> None:
    """pgbench -i -s `scale` into the bench database (the resident data of RunawayScenario)."""
    proc = subprocess.run(
        [
            _tool("pgbench"), "-i", "-q", "-s", str(scale), "-h", str(cluster.sockets),
            "-p", str(PG_PORT), "-U", "postgres", "bench",
        ],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"pgbench -i failed ({proc.returncode}): {proc.stderr[-2000:]}")


def rss_anon(pid: int) -> int:
    """RssAnon of a process in bytes (0 once it is gone): the backend's private memory, which
    is what the runaway query grows (shared_buffers is RssShmem, not counted here)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(r"^RssAnon:\s+(\d+) kB", status, re.M)
    return int(m.group(1)) << 10 if m else 0


@dataclass
class RunawayResult:
    returncode: int
    output: str
    backend_pid: int
    #: The largest RssAnon of the backend seen while the query ran (sampled every 0.1 s).
    peak_anon: int
    wall: float

    @property
    def completed(self) -> bool:
        return self.returncode == 0


@dataclass
class Runaway:
    """One psql session: it prints its backend's pid, then runs `runaway_sql(mib)`. A thread
    samples the backend's RssAnon until the session ends."""

    proc: subprocess.Popen[str]
    backend_pid: int
    started: float
    peak_anon: int = 0
    _thread: threading.Thread | None = None

    @classmethod
    def start(cls, cluster: Cluster, mib: int, *, port: int = PG_PORT) -> Runaway:
        proc = subprocess.Popen(
            cluster.psql_argv(port=port),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("SELECT pg_backend_pid();\n" + runaway_sql(mib) + "\n")
        proc.stdin.close()
        first = proc.stdout.readline().strip()
        if not first.isdigit():
            proc.kill()
            rest = proc.communicate()[0]
            raise AssertionError(f"runaway session did not start: {first!r} {rest!r}")
        run = cls(proc, int(first), time.monotonic())
        run._thread = threading.Thread(target=run._sample, name="runaway-rss", daemon=True)
        run._thread.start()
        return run

    def _sample(self) -> None:
        while self.proc.poll() is None:
            self.peak_anon = max(self.peak_anon, rss_anon(self.backend_pid))
            time.sleep(0.1)

    def current_anon(self) -> int:
        return rss_anon(self.backend_pid)

    def wait(self, timeout: float = 600.0) -> RunawayResult:
        assert self.proc.stdout is not None
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        out = self.proc.stdout.read()
        self.proc.stdout.close()
        if self._thread is not None:
            self._thread.join(5)
        wall = time.monotonic() - self.started
        return RunawayResult(rc, out, self.backend_pid, self.peak_anon, wall)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def service_key_supported(key: str) -> bool:
    """Whether this oomguard's config knows `[service.X.<key>]` (e.g. "shed", "ready")."""
    try:
        from oomguard.config.model import ServiceConfig
    except ImportError:
        return False
    return key in ServiceConfig.model_fields


def pg_isready_argv(cluster_base: str, port: int = PG_PORT) -> list[str]:
    """pg_isready for PostgreSQL's own socket under `cluster_base` (as in the example)."""
    return [
        _tool("pg_isready"),
        "-q",
        "-h",
        f"{cluster_base}/run",
        "-p",
        str(port),
        "-U",
        "postgres",
    ]


@dataclass
class ChunkedLoad:
    """pgbench runs of `chunk` seconds back to back on `port`, from `start()` until `stop()`
    (which lets the run under way finish): a load that covers an event whose moment is not
    known in advance, such as the end of a runaway session. Each run opens `clients` new
    sessions: a run that starts while PostgreSQL recovers reports its failed connections."""

    cluster: Cluster
    chunk: int = 10
    clients: int = 4
    rate: int = 50
    port: int = PG_PORT
    results: list[PgbenchResult] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ChunkedLoad:
        self._thread = threading.Thread(target=self._run, name="pgbench-load", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            run = self.cluster.pgbench(
                self.chunk, clients=self.clients, port=self.port, rate=self.rate
            )
            result = run.result(timeout=self.chunk * 30)
            self.results.append(result)
            if result.processed == 0 and result.returncode != 0:
                self._stop.wait(1.0)  # could not connect: do not spin

    def stop(self) -> PgbenchResult:
        """Stop after the run under way; every run's figures summed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.chunk * 40)
        return PgbenchResult(
            returncode=max((r.returncode for r in self.results), default=0),
            processed=sum(r.processed for r in self.results),
            failed=sum(r.failed for r in self.results),
            aborted_clients=sum(r.aborted_clients for r in self.results),
            wall=sum(r.wall for r in self.results),
            output="\n".join(r.output for r in self.results if not r.ok)[-6000:],
        )
