"""Optional Prometheus exporter (``pip install 'oomguard[metrics]'``).

``prometheus_client`` is imported only inside `start_metrics`, so a supervisor without metrics
(and every CLI command) never pays for it. Metric names and meanings are in docs/metrics.md.

Data flow: the supervisor calls ``metrics.publish(snapshot, services)`` after each change. That
converts everything into one frozen `_Published` value (tuples of plain numbers) and stores it
with a single attribute assignment. The HTTP thread's collector reads that attribute once per
scrape. Under the GIL an attribute store is atomic, so a scrape sees the previous publication or
the new one, never a half-updated mix; no lock is needed, and a slow scraper can never block the
supervisor. Conversion happens in `publish` (the supervisor's thread), so a malformed snapshot
fails there, where it can be logged, and not inside a scrape.

We run our own small HTTP server around prometheus_client's public WSGI app instead of
``start_http_server``: we need the bound port (``:0`` in tests), an IPv6-aware bind, a quiet
request handler (per-scrape stderr lines would bypass observe/log.py), no reverse-DNS lookup at
bind time (``HTTPServer.server_bind`` calls getfqdn, which can hang for seconds in a container
without DNS), a clean ``close()``, and limits (node_exporter's request caps): a thread per
connection would let anyone who can connect make oomguard start threads without bound.

- A connection that has sent nothing yet costs no thread: the server thread holds at most
  `MAX_WAITING` of them in one selector and closes the oldest when a new one arrives (so a fresh
  scrape always gets in), and closes any that stay silent for `IDLE_TIMEOUT` seconds.
- A connection with a request gets one of `MAX_WORKERS` worker threads; when all are busy it is
  closed at once. Every socket operation in a worker times out after `IDLE_TIMEOUT` seconds.
So the exporter never runs more than 1 + `MAX_WORKERS` threads, whatever clients do.
"""

from __future__ import annotations

import contextlib
import math
import selectors
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from oomguard import __version__
from oomguard.errors import OomguardError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

#: The supervisor's service states (the names of policy/restart.py's ``State``; a test keeps the
#: two in step), in the order they are exported. Every service gets a sample for each of these
#: (value 0 or 1), so ``oomguard_service_state{state="FATAL"} == 1`` alerts work without "absent"
#: tricks; a state not in this list is exported too when it is current.
SERVICE_STATES = (
    "STOPPED",
    "STARTING",
    "RUNNING",
    "BACKOFF",
    "STOPPING",
    "EXITED",
    "FATAL",
    "EVICTED",
)
#: States for which oomguard_service_up is 1: the process runs and has passed its start period.
UP_STATES = frozenset({"RUNNING"})
LISTEN_HINT = (
    "set [oomguard] metrics_listen to host:port, e.g. 127.0.0.1:9150, [::1]:9150 or :9150 "
    "(all IPv4 interfaces)"
)
#: Connections accepted but silent (no request yet) that the server keeps; beyond, the oldest
#: is closed.
MAX_WAITING = 64
#: Requests served at once, one thread each; a request beyond this is refused (closed).
MAX_WORKERS = 4
#: Seconds a connection may stay silent before its request, and per socket operation after.
IDLE_TIMEOUT = 5.0


# -- what we read from a snapshot (observe/snapshot.py); structural so this module does not
# -- depend on that one's import graph, and so tests can pass plain objects.


class PsiLineLike(Protocol):
    @property
    def avg10(self) -> float: ...


class PressureLike(Protocol):
    @property
    def some(self) -> PsiLineLike: ...
    @property
    def full(self) -> PsiLineLike | None: ...


class SliceLike(Protocol):
    @property
    def path(self) -> object: ...
    @property
    def memory(self) -> bool: ...
    @property
    def current(self) -> int | None: ...
    @property
    def peak(self) -> int | None: ...
    @property
    def high(self) -> int | None: ...
    @property
    def max(self) -> int | None: ...
    @property
    def events(self) -> Mapping[str, int] | None: ...
    @property
    def events_local(self) -> Mapping[str, int] | None: ...
    @property
    def pressure(self) -> PressureLike | None: ...


class SnapshotLike(Protocol):
    @property
    def slices(self) -> Sequence[SliceLike]: ...


# -- the immutable published form --------------------------------------------------------------


@dataclass(frozen=True)
class _SliceRow:
    #: The cgroup's path under the mount (any cgroup of the tree, not only a [slice.X] budget).
    cgroup: str
    #: False when the memory controller is off for this cgroup: then no memory figure is known
    #: (a None limit would otherwise read as "max") and none is exported.
    memory: bool
    current: float | None
    peak: float | None
    high: float
    max: float
    events: tuple[tuple[str, int], ...]
    events_local: tuple[tuple[str, int], ...]
    some_avg10: float | None
    full_avg10: float | None


@dataclass(frozen=True)
class _ServiceRow:
    service: str
    state: str
    restarts: int
    evictions: int
    primary: bool
    downtime_total: float
    #: Seconds from the spawn to ready of the current process (None: not ready).
    ready_seconds: float | None = None
    sheds: int = 0


@dataclass(frozen=True)
class _Published:
    mode: str
    slices: tuple[_SliceRow, ...] = ()
    services: tuple[_ServiceRow, ...] = ()
    #: No slice tree (read-only cgroupfs, no memory controller): services only, no slices.
    degraded: bool = False
    #: (source, stream, lines): output lines dropped because oomguard's stdout/stderr stalled.
    output_dropped: tuple[tuple[str, str, int], ...] = ()


def _limit(value: int | None) -> float:
    # The kernel's "max" (None after parsing) is exported as +Inf rather than dropped: the series
    # stays continuous when a limit is set or lifted, and current/max is 0, not "no data".
    return math.inf if value is None else float(value)


def _counters(values: Mapping[str, int] | None) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((str(k), int(v)) for k, v in (values or {}).items()))


def _slice_row(s: SliceLike) -> _SliceRow:
    pressure = s.pressure
    full = pressure.full if pressure is not None else None
    return _SliceRow(
        cgroup=str(s.path),
        memory=bool(s.memory),
        current=None if s.current is None else float(s.current),
        peak=None if s.peak is None else float(s.peak),
        high=_limit(s.high),
        max=_limit(s.max),
        events=_counters(s.events),
        events_local=_counters(s.events_local),
        some_avg10=None if pressure is None else float(pressure.some.avg10),
        full_avg10=None if full is None else float(full.avg10),
    )


def _service_row(name: str, svc: Mapping[str, Any]) -> _ServiceRow:
    return _ServiceRow(
        service=name,
        # state.json writes State names (RUNNING); accept the enum's lowercase values too.
        state=str(svc.get("state") or "UNKNOWN").upper(),
        restarts=int(svc.get("restarts") or 0),
        evictions=int(svc.get("evictions") or 0),
        primary=svc.get("role") == "primary",
        downtime_total=float(svc.get("downtime_total") or 0.0),
        ready_seconds=(None if svc.get("ready_seconds") is None else float(svc["ready_seconds"])),
        sheds=int(svc.get("sheds") or 0),
    )


def publication(
    snapshot: SnapshotLike | None,
    services: Mapping[str, Mapping[str, Any]],
    mode: str,
    *,
    degraded: bool = False,
    output_dropped: Mapping[tuple[str, str], int] | None = None,
) -> _Published:
    """Snapshot + services (state.json's "services" shape) -> the frozen published value.
    Without a snapshot (degraded, or a failed read) only the per-service series are served."""
    return _Published(
        mode=mode,
        slices=tuple(_slice_row(s) for s in snapshot.slices) if snapshot is not None else (),
        services=tuple(_service_row(name, svc) for name, svc in services.items()),
        degraded=degraded,
        output_dropped=tuple(
            (str(src), str(stream), int(n)) for (src, stream), n in (output_dropped or {}).items()
        ),
    )


# -- the collector -----------------------------------------------------------------------------


class _Collector:
    """Duck-typed prometheus_client collector: ``collect()`` builds fresh families per scrape."""

    def __init__(self, published: _Published, states: Sequence[str]) -> None:
        self.published = published
        self.states = tuple(states)

    def collect(self) -> Iterator[Any]:
        pub = self.published  # read the reference once: one consistent publication per scrape
        yield from _run_families(pub)
        yield from _slice_families(pub)
        yield from _service_families(pub, self.states)


def _gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(name, doc, labels=list(labels))


def _counter(name: str, doc: str, labels: Sequence[str]) -> Any:
    from prometheus_client.core import CounterMetricFamily

    return CounterMetricFamily(name, doc, labels=list(labels))


def _run_families(pub: _Published) -> Iterator[Any]:
    info = _gauge("oomguard_info", "oomguard build and run mode; always 1.", ["version", "mode"])
    info.add_metric([__version__, pub.mode], 1.0)
    yield info
    degraded = _gauge(
        "oomguard_degraded",
        "1 if oomguard runs without a slice tree (no limits, no pressure response)",
    )
    degraded.add_metric([], 1.0 if pub.degraded else 0.0)
    yield degraded


#: The labels of a per-cgroup series. "cgroup" is the cgroup's path under the mount; "slice" is
#: that label's old name (the same value), kept for one release so that dashboards and alerts
#: written against it keep working, then removed: "slice" is a config budget, and these series
#: cover every cgroup of the tree (docs/metrics.md).
_CGROUP_LABELS = ("cgroup", "slice")


def _slice_families(pub: _Published) -> Iterator[Any]:
    per_cgroup = list(_CGROUP_LABELS)
    current = _gauge("oomguard_memory_current_bytes", "memory.current", per_cgroup)
    peak = _gauge("oomguard_memory_peak_bytes", "memory.peak (kernel 5.19+)", per_cgroup)
    high = _gauge("oomguard_memory_high_bytes", "memory.high; +Inf = max", per_cgroup)
    limit = _gauge("oomguard_memory_max_bytes", "memory.max; +Inf = max", per_cgroup)
    events = _counter(
        "oomguard_memory_events",
        "memory.events (hierarchical: includes descendants)",
        [*per_cgroup, "event"],
    )
    events_local = _counter(
        "oomguard_memory_events_local",
        "memory.events.local (this cgroup only)",
        [*per_cgroup, "event"],
    )
    some = _gauge("oomguard_pressure_some_avg10", "memory.pressure some avg10, %", per_cgroup)
    full = _gauge("oomguard_pressure_full_avg10", "memory.pressure full avg10, %", per_cgroup)
    for row in pub.slices:
        lv = [row.cgroup, row.cgroup]
        if row.some_avg10 is not None:
            some.add_metric(lv, row.some_avg10)
        if row.full_avg10 is not None:
            full.add_metric(lv, row.full_avg10)
        if not row.memory:
            continue
        if row.current is not None:
            current.add_metric(lv, row.current)
        if row.peak is not None:
            peak.add_metric(lv, row.peak)
        high.add_metric(lv, row.high)
        limit.add_metric(lv, row.max)
        for event, count in row.events:
            events.add_metric([*lv, event], float(count))
        for event, count in row.events_local:
            events_local.add_metric([*lv, event], float(count))
    yield from (current, peak, high, limit, events, events_local, some, full)


def _service_families(pub: _Published, states: tuple[str, ...]) -> Iterator[Any]:
    restarts = _counter("oomguard_service_restarts", "Restarts by oomguard", ["service"])
    evictions = _counter("oomguard_service_evictions", "Evictions by oomguard", ["service"])
    sheds = _counter(
        "oomguard_service_sheds",
        "Processes of the service's slice signalled by the shed rung",
        ["service"],
    )
    state = _gauge("oomguard_service_state", "1 for the current state", ["service", "state"])
    up = _gauge("oomguard_service_up", "1 if the service is RUNNING", ["service"])
    ready = _gauge(
        "oomguard_service_ready_seconds",
        "Seconds from the spawn to ready of the running process",
        ["service"],
    )
    downtime = 0.0
    for svc in pub.services:
        restarts.add_metric([svc.service], float(svc.restarts))
        evictions.add_metric([svc.service], float(svc.evictions))
        sheds.add_metric([svc.service], float(svc.sheds))
        known = states if svc.state in states else (*states, svc.state)
        for name in known:
            state.add_metric([svc.service, name], 1.0 if name == svc.state else 0.0)
        up.add_metric([svc.service], 1.0 if svc.state in UP_STATES else 0.0)
        if svc.ready_seconds is not None:
            ready.add_metric([svc.service], svc.ready_seconds)
        if svc.primary:
            downtime += svc.downtime_total
    yield from (restarts, evictions, sheds, state, up, ready)
    from prometheus_client.core import CounterMetricFamily

    yield CounterMetricFamily(
        "oomguard_primary_downtime_seconds",
        "Seconds the primary was not running since oomguard started",
        value=downtime,
    )
    dropped = _counter(
        "oomguard_output_dropped_lines",
        "Output lines dropped because oomguard's stdout/stderr reader stalled",
        ["source", "stream"],
    )
    for source, stream, lines in pub.output_dropped:
        dropped.add_metric([source, stream], float(lines))
    yield dropped


# -- the HTTP server ---------------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    #: StreamRequestHandler.setup() applies it to the connection: every read and write of a
    #: request times out, so a stalled client holds a worker for a bounded time.
    timeout = IDLE_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(WSGIServer):
    """One selector thread for accepting and idle connections, a few workers for requests
    (see the module docstring). Replaces socketserver's serve_forever/shutdown."""

    max_waiting = MAX_WAITING
    max_workers = MAX_WORKERS
    idle_timeout = IDLE_TIMEOUT
    #: listen() backlog: socketserver's 5 makes a burst of clients wait for SYN retries.
    request_queue_size = 128

    def server_bind(self) -> None:
        # Skip HTTPServer.server_bind's socket.getfqdn() (see module docstring).
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()
        # accept() after a readiness report must not block if the client is already gone.
        self.socket.setblocking(False)
        self._stop = threading.Event()
        self._workers = threading.BoundedSemaphore(self.max_workers)
        #: Connections closed by a limit (idle too long, evicted, or no free worker).
        self.refused = 0

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        waiting: dict[socket.socket, tuple[Any, float]] = {}
        with selectors.DefaultSelector() as sel:
            sel.register(self.socket, selectors.EVENT_READ)
            try:
                while not self._stop.is_set():
                    for key, _ in sel.select(self._wait(waiting, poll_interval)):
                        if key.fileobj is self.socket:
                            self._accept(sel, waiting)
                        else:
                            conn = key.fileobj
                            assert isinstance(conn, socket.socket)
                            sel.unregister(conn)
                            addr, _ = waiting.pop(conn)
                            self._dispatch(conn, addr)
                    self._expire(sel, waiting)
            finally:
                for conn in waiting:
                    self._drop(conn)

    def _wait(self, waiting: dict[socket.socket, tuple[Any, float]], poll: float) -> float:
        if not waiting:
            return poll
        oldest = next(iter(waiting.values()))[1]
        return max(0.0, min(poll, oldest + self.idle_timeout - time.monotonic()))

    def _accept(
        self, sel: selectors.BaseSelector, waiting: dict[socket.socket, tuple[Any, float]]
    ) -> None:
        try:
            conn, addr = self.socket.accept()
        except OSError:  # gone before we got to it (ECONNABORTED), EMFILE, EAGAIN
            return
        if len(waiting) >= self.max_waiting:
            oldest = next(iter(waiting))  # dicts keep insertion order: the longest silent
            sel.unregister(oldest)
            del waiting[oldest]
            self._drop(oldest)
        sel.register(conn, selectors.EVENT_READ)
        waiting[conn] = (addr, time.monotonic())

    def _expire(
        self, sel: selectors.BaseSelector, waiting: dict[socket.socket, tuple[Any, float]]
    ) -> None:
        cutoff = time.monotonic() - self.idle_timeout
        for conn, (_, since) in list(waiting.items()):
            if since > cutoff:
                break  # in accept order: the rest are younger
            sel.unregister(conn)
            del waiting[conn]
            self._drop(conn)

    def _dispatch(self, conn: socket.socket, addr: Any) -> None:
        if not self._workers.acquire(blocking=False):
            self._drop(conn)
            return
        try:
            threading.Thread(
                target=self._work, args=(conn, addr), name="oomguard-metrics-req", daemon=True
            ).start()
        except RuntimeError:  # pragma: no cover - no thread could be started
            self._workers.release()
            self._drop(conn)

    def _work(self, conn: socket.socket, addr: Any) -> None:
        try:
            conn.settimeout(self.idle_timeout)
            self.finish_request(conn, addr)
        except Exception:
            pass  # a client that timed out or went away: nothing to say, nothing to fix
        finally:
            self.shutdown_request(conn)
            self._workers.release()

    def _drop(self, conn: socket.socket) -> None:
        self.refused += 1
        with contextlib.suppress(OSError):
            conn.close()

    def shutdown(self) -> None:
        """Ask serve_forever to return (within one poll interval); join its thread before
        `server_close`. Requests in flight finish on their own, bounded by their timeout."""
        self._stop.set()


class _Server6(_Server):
    address_family = socket.AF_INET6


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9150"``, ``"[::1]:9150"``, ``"localhost:9150"``, ``":9150"`` -> (host, port).
    An empty host means all IPv4 interfaces (use ``[::]:9150`` for IPv6 too). Pure; raises
    ValueError (the config model can call this to validate early)."""
    text = listen.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise ValueError(f"metrics listen address {listen!r} is not [ipv6]:port")
        host, port_text = text[1:end], text[end + 2 :]
        if not host:
            raise ValueError(f"metrics listen address {listen!r} has an empty IPv6 host")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"metrics listen address {listen!r} has no port")
        if ":" in host:
            raise ValueError(
                f"metrics listen address {listen!r}: put an IPv6 host in brackets, e.g. [::1]:9150"
            )
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"metrics listen address {listen!r}: port must be 0..65535")
    return host, int(port_text)


class Metrics:
    """A running exporter. `port` is the bound port (useful with ``:0``)."""

    def __init__(
        self, server: _Server, collector: _Collector, registry: Any, poll_interval: float = 0.5
    ) -> None:
        self._server: _Server | None = server
        self._collector = collector
        #: The prometheus_client CollectorRegistry (custom, not the global REGISTRY).
        self.registry = registry
        self.host = str(server.server_address[0])
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever,
            args=(poll_interval,),
            name="oomguard-metrics",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def publish(
        self,
        snapshot: SnapshotLike | None,
        services: Mapping[str, Mapping[str, Any]],
        *,
        mode: str | None = None,
        degraded: bool = False,
        output_dropped: Mapping[tuple[str, str], int] | None = None,
    ) -> None:
        """Replace what scrapes see. `services` has state.json's "services" shape;
        `output_dropped` maps (source, stream) to lines dropped (see runtime/supervisor.py)."""
        published = publication(
            snapshot,
            services,
            mode or self._collector.published.mode,
            degraded=degraded,
            output_dropped=output_dropped,
        )
        # The one shared write: an atomic reference swap (see module docstring).
        self._collector.published = published

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # serve_forever returns within one poll interval
        self._thread.join()
        server.server_close()


def start_metrics(
    listen: str,
    *,
    mode: str = "enforce",
    states: Sequence[str] = SERVICE_STATES,
    poll_interval: float = 0.5,
) -> Metrics:
    """Serve /metrics on `listen` ("host:port") from a background thread.

    `poll_interval` is how often the idle server thread wakes to notice `close()`: it bounds how
    long `close()` takes. Twice a second costs nothing; tests pass a shorter one.

    Raises `OomguardError` if prometheus_client is missing, the address is malformed, or the
    bind fails (address in use, no such local address, privileged port).
    """
    try:
        from prometheus_client import CollectorRegistry, make_wsgi_app
    except ImportError as err:
        raise OomguardError(
            "metrics are enabled but prometheus_client is not installed",
            hint="pip install 'oomguard[metrics]', or turn metrics off",
        ) from err
    try:
        host, port = parse_listen(listen)
    except ValueError as err:
        raise OomguardError(str(err), hint=LISTEN_HINT) from err
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(
            host or "0.0.0.0", port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as err:
        raise OomguardError(
            f"metrics listen address {listen!r}: cannot resolve {host!r} ({err.strerror})",
            hint=LISTEN_HINT,
        ) from err

    collector = _Collector(_Published(mode=mode), states)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # prometheus_client's Collector is a Protocol: collect()
    server_cls = _Server6 if family == socket.AF_INET6 else _Server
    try:
        server = server_cls((str(sockaddr[0]), port), _QuietHandler)
    except OSError as err:
        raise OomguardError(
            f"cannot listen on {listen} for metrics: {err.strerror or err}",
            hint="set [oomguard] metrics_listen to a free local address and port",
        ) from err
    server.set_app(make_wsgi_app(registry))
    return Metrics(server, collector, registry, poll_interval)
