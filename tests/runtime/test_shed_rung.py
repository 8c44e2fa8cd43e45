"""The shed rung in the pressure response, on the host through the fake narrow context and a
fake clock: shed -> evict -> controlled restart, held while the shed process exits, observe
mode, a process gone before the signal, and no /proc reads unless the rung is due."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

import pytest

from oomguard.runtime import shed as shed_mod
from oomguard.runtime.pressure import PRIMARY_BUDGET
from tests.runtime.test_pressure_response import (
    DB,
    HI,
    LO,
    FakeContext,
    M,
    Setup,
    at,
    fake_psi,  # noqa: F401 - the autouse fixture, for this module too
    put,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SHED: dict[str, Any] = {"service": {"db": {"shed": {"min_size": "16M", "cooldown": "30s"}}}}


def status(comm: str, anon_mib: int) -> str:
    return f"Name:\t{comm}\nRssAnon:\t{anon_mib * 1024} kB\nRssShmem:\t0 kB\nVmSwap:\t0 kB\n"


class Proc:
    """Stands in for /proc/<pid>/status; counts the reads."""

    def __init__(self) -> None:
        self.table: dict[int, str] = {}
        self.reads = 0

    def __call__(self, pid: int) -> str | None:
        self.reads += 1
        return self.table.get(pid)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    made = Setup(tmp_path)
    yield made
    for resp in made.responses:
        resp.close()


@pytest.fixture
def proc(monkeypatch: pytest.MonkeyPatch) -> Proc:
    fake = Proc()
    monkeypatch.setattr(shed_mod, "read_status", fake)
    return fake


def runaway(ctx: FakeContext, proc: Proc) -> int:
    """The primary (main pid from the fake context) with two workers, one of them 150M."""
    main = ctx.service("db").pid
    assert main is not None
    for pid, comm, mib in (
        (main, "postgres", 300),
        (4101, "postgres", 150),
        (4102, "postgres", 20),
    ):
        ctx.fs.add_proc(DB, pid)
        proc.table[pid] = status(comm, mib)
    put(ctx, DB, memory_current=210 * M)  # over its 200M watermark
    put(ctx, LO, memory_current=5 * M)
    put(ctx, HI, memory_current=5 * M)
    return main


def of(ctx: FakeContext, kind: str) -> list[dict[str, Any]]:
    return [f for k, _c, f in ctx.events if k == kind]


def test_the_ladder_sheds_first_then_evicts_then_restarts(setup: Setup, proc: Proc) -> None:
    ctx, resp = setup(oomguard={"pressure": {"cooldown": "2s"}}, **SHED)
    main = runaway(ctx, proc)
    resp.on_counters(DB, {"high": 1})
    (shed,) = of(ctx, "shed")
    assert shed["pid"] == 4101 and shed["comm"] == "postgres" and shed["size"] == 150 * M
    assert shed["budget"] == PRIMARY_BUDGET and shed["signal"] == "SIGTERM"
    assert shed["reason"] == "headroom+high" and shed["trigger"] == "memory.events"
    assert ctx.fs.signals == [(4101, signal.SIGTERM)]  # never the main process
    assert ctx.actions == [("shed", "db")]
    # The pressure persists (the fake fs has no pidfd: nothing to wait for): the next rungs.
    t = 1000.0
    for _ in range(3):
        t += 3.0
        at(ctx, resp, t)
        if ctx.actions[-1][0] == "evict":
            ctx.exited(ctx.actions[-1][1])
    assert ctx.actions == [("shed", "db"), ("evict", "lo"), ("evict", "hi"), ("restart", "db")]
    assert main not in [pid for pid, _sig in ctx.fs.signals]


def test_the_ladder_waits_while_the_shed_process_exits(
    setup: Setup, proc: Proc, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, resp = setup(oomguard={"pressure": {"cooldown": "1s"}}, **SHED)
    runaway(ctx, proc)
    assert resp.shed is not None
    resp.on_counters(DB, {"high": 1})
    assert ctx.actions == [("shed", "db")]
    # The fake fs has no pidfd to watch: say the runaway is still exiting.
    exiting: dict[str, int | None] = {"pid": 4101}
    monkeypatch.setattr(resp.shed.shedder, "busy", lambda now: exiting["pid"])
    for t in (1002.0, 1004.0, 1006.0):
        at(ctx, resp, t)
        resp.on_counters(DB, {"high": 1})
    assert ctx.actions == [("shed", "db")]  # no eviction while the runaway is on its way out
    exiting["pid"] = None
    put(ctx, DB, memory_current=60 * M)  # its memory is back
    for t in (1008.0, 1010.0):
        at(ctx, resp, t)
    assert ctx.actions == [("shed", "db")]


def test_candidates_are_read_only_when_the_rung_is_due(setup: Setup, proc: Proc) -> None:
    ctx, resp = setup(**SHED)
    runaway(ctx, proc)
    put(ctx, DB, memory_current=100 * M)  # well below the watermark
    resp.on_counters(DB, {"high": 5})
    assert proc.reads == 0 and of(ctx, "shed") == []
    put(ctx, DB, memory_current=210 * M)
    resp.on_counters(DB, {"high": 1})
    assert proc.reads == 3 and len(of(ctx, "shed")) == 1


def test_a_process_gone_before_the_signal_is_skipped_not_counted(setup: Setup, proc: Proc) -> None:
    ctx, resp = setup(**SHED)
    runaway(ctx, proc)
    assert resp.shed is not None
    real = resp.shed.shedder.fs.signal_member

    def gone(p: Any, pid: int, sig: int) -> int | None:
        ctx.fs.add_proc(LO, pid)  # it left the slice (its pid now names something else)
        return real(p, pid, sig)

    resp.shed.shedder.fs.signal_member = gone  # type: ignore[method-assign]
    resp.on_counters(DB, {"high": 1})
    assert len(of(ctx, "shed")) == 1
    (skipped,) = of(ctx, "shed_skipped")
    assert skipped["pid"] == 4101 and skipped["why"] == "gone"
    assert ctx.fs.signals == [] and ("shed", "db") not in ctx.actions


def test_observe_mode_would_shed_and_signals_nothing(setup: Setup, proc: Proc) -> None:
    ctx, resp = setup(oomguard={"mode": "observe"}, **SHED)
    runaway(ctx, proc)
    resp.on_counters(DB, {"high": 1})
    (would,) = of(ctx, "would_shed")
    assert would["service"] == "db" and would["pid"] == 4101
    assert ctx.fs.signals == [] and ctx.actions == []


def test_no_shed_rung_without_the_table(setup: Setup, proc: Proc) -> None:
    ctx, resp = setup(oomguard={"pressure": {"cooldown": "2s"}})
    runaway(ctx, proc)
    resp.on_counters(DB, {"high": 1})
    assert resp.shed is None and proc.reads == 0
    assert ctx.actions == [("evict", "lo")]
