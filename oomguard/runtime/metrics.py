"""Metrics as a supervisor `Extension`: publishes a tree snapshot plus service state to the
Prometheus exporter (observe/metrics.py) after every loop turn that changed something, and every
`refresh` seconds otherwise so gauges such as memory.current stay fresh (0.2 wake-ups/s by
default, and only when metrics are on). Degraded (no slice tree), the per-service series are
published all the same, without the per-slice ones: an alert on oomguard_service_up must work
wherever oomguard runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from oomguard.errors import OomguardError

if TYPE_CHECKING:
    from oomguard.cgroup.path import CgroupPath
    from oomguard.observe.metrics import Metrics
    from oomguard.observe.snapshot import TreeSnapshot
    from oomguard.runtime.context import Context


class MetricsExtension:
    """An `Extension`: it sees the supervisor only through its `Context`."""

    def __init__(self, listen: str, refresh: float = 5.0) -> None:
        self.listen = listen
        self.refresh = refresh
        self.ctx: Context | None = None
        self.metrics: Metrics | None = None
        self.next_at: float | None = None
        self.changed = True

    def setup(self, ctx: Context) -> None:
        from oomguard.observe.metrics import start_metrics

        self.ctx = ctx
        # The HTTP thread wakes every poll_interval to notice close(): 2 s keeps an idle
        # oomguard with metrics on at ~0.7 wake-ups/s (with the 5 s refresh) and bounds the
        # extra shutdown time to 2 s.
        self.metrics = start_metrics(self.listen, mode=ctx.mode, poll_interval=2.0)
        if self.metrics.host in ("0.0.0.0", "::"):
            # ":port" (or 0.0.0.0 / [::]) means every interface, as with other exporters; say
            # so, since the figures (service names, memory) then reach whoever reaches the host.
            ctx.log.info("metrics", url=self.metrics.url, interfaces="all")
        else:
            ctx.log.info("metrics", url=self.metrics.url)

    def deadline(self) -> float | None:
        return self.next_at

    def on_counters(self, path: CgroupPath, delta: dict[str, int]) -> None:
        self.changed = True

    def tick(self, now: float) -> None:
        if self.next_at is not None and now >= self.next_at:
            self.changed = True

    def after_turn(self) -> None:
        ctx = self.ctx
        if ctx is None or self.metrics is None:
            return
        if not (self.changed or ctx.changed):
            return
        self.changed = False
        self.metrics.publish(
            self._snapshot(ctx),
            ctx.state_services(),
            degraded=ctx.root is None,
            output_dropped=ctx.output_dropped(),
        )
        self.next_at = ctx.now + self.refresh

    @staticmethod
    def _snapshot(ctx: Context) -> TreeSnapshot | None:
        if ctx.root is None:
            return None  # degraded: no tree of ours to read
        from oomguard.observe.snapshot import take_snapshot

        try:
            return take_snapshot(ctx.fs, ctx.root)
        except OomguardError as err:
            ctx.log.warn("metrics_snapshot_failed", error=str(err))
            return None

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
