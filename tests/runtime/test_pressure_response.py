"""The pressure response (runtime/pressure.py) on the host, driven through a fake narrow context
with a fake clock.

The tree is built by the real tree builder on the fake cgroupfs of tests/cgroup/fakefs.py (plain
files in a temp dir, never the host's /sys/fs/cgroup); a test sets memory.current and friends by
writing those files, calls the extension's hooks the way the supervisor's loop does
(`on_counters`, `tick`, a PSI fd's handler), and reads what it asked the context to do.
"""

from __future__ import annotations

import dataclasses
import io
import os
import select
from typing import TYPE_CHECKING, Any

import pytest

from oomguard.cgroup import tree as treemod
from oomguard.cgroup.path import CgroupPath
from oomguard.config.compile import compile_plan
from oomguard.config.model import Config
from oomguard.observe.log import Logger
from oomguard.policy import restart as rp
from oomguard.runtime import pressure as pressure_mod
from oomguard.runtime.context import ServiceView, SliceView, build_views
from oomguard.runtime.pressure import PRIMARY_BUDGET, TREE_BUDGET, PressureResponse
from tests.cgroup.fakefs import FakeCgroupFS

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from pathlib import Path

    from oomguard.events.loop import Handler
    from oomguard.plan import PressureSpec
    from oomguard.policy.pressure import Mode

M = 1 << 20
P = CgroupPath.parse
ROOT, SIDE, LO, HI, DB = P("/og"), P("/og/side"), P("/og/side/lo"), P("/og/side/hi"), P("/og/db")

BASE: dict[str, Any] = {
    "oomguard": {"cgroup": "/og"},
    "slice": {"side": {"memory_max": "100M"}},
    "service": {
        "db": {"role": "primary", "command": ["x"], "memory_high": "200M"},
        "lo": {"command": ["x"], "slice": "side", "criticality": 10},
        "hi": {"command": ["x"], "slice": "side", "criticality": 90},
    },
}


class FakeContext:
    """The `runtime.context.Context` of a supervisor that is not there: services' states are
    set by the test, actions are recorded (and move the service's state the way the restart
    policy would), fds are handed to `readers` instead of an epoll loop."""

    def __init__(self, cfg: Config, fs: FakeCgroupFS, built: treemod.BuiltTree) -> None:
        plan = compile_plan(cfg)
        self.fs = fs
        self.out = io.StringIO()
        self.log = Logger(self.out)
        self.now = 1000.0
        self.mode: Mode = plan.mode
        self.primary = plan.primary
        self.root: CgroupPath | None = built.root
        self.stopping = False
        self.changed = False
        self.tree_pressure: PressureSpec = plan.pressure
        cgroups = {name: built.paths[name] for name in plan.names()}
        views, self._slices = build_views(plan, cgroups, built.paths)
        # Every service up and running, each with a made-up pid.
        self.views = {
            n: dataclasses.replace(v, state=rp.State.RUNNING, pid=4000 + i)
            for i, (n, v) in enumerate(views.items())
        }
        self.mem: dict[str, int] = {}
        self.actions: list[tuple[str, str]] = []
        self.events: list[tuple[str, CgroupPath | None, dict[str, Any]]] = []
        self.readers: dict[int, tuple[int, Handler]] = {}

    # -- the Context ------------------------------------------------------------------------

    def names(self) -> tuple[str, ...]:
        return tuple(self.views)

    def service(self, name: str) -> ServiceView:
        return self.views[name]

    def slices(self) -> Mapping[str, SliceView]:
        return self._slices

    def meminfo(self) -> dict[str, int]:
        return dict(self.mem)

    def emit(self, kind: str, cgroup: CgroupPath | None, **fields: Any) -> None:
        self.events.append((kind, cgroup, fields))

    def evict(self, name: str) -> None:
        self.actions.append(("evict", name))
        self.set(name, state=rp.State.STOPPING, stop_reason="evict")

    def release(self, name: str) -> None:
        self.actions.append(("release", name))
        self.set(name, state=rp.State.STARTING, stop_reason=None, pid=5000)

    def restart_primary(self) -> None:
        self.actions.append(("restart", self.primary))
        self.set(self.primary, state=rp.State.STOPPING, stop_reason="controlled_restart")

    def count_shed(self, name: str) -> None:
        self.actions.append(("shed", name))

    def state_services(self) -> dict[str, Any]:
        return {}

    def output_dropped(self) -> dict[tuple[str, str], int]:
        return {}

    def add_reader(self, fd: int, mask: int, handler: Handler) -> None:
        assert fd not in self.readers
        self.readers[fd] = (mask, handler)

    def remove_reader(self, fd: int) -> None:
        self.readers.pop(fd, None)

    # -- test helpers -----------------------------------------------------------------------

    def set(self, name: str, **fields: Any) -> None:
        self.views[name] = dataclasses.replace(self.views[name], **fields)

    def exited(self, name: str) -> None:
        """The stopped service's processes are gone (the policy's EVICTED / restarted)."""
        view = self.views[name]
        if view.stop_reason == "controlled_restart":
            self.set(name, state=rp.State.STARTING, stop_reason=None, pid=6000)
        else:
            self.set(name, state=rp.State.EVICTED, stop_reason=None, pid=None)

    def kinds(self) -> list[str]:
        return [kind for kind, _cg, _f in self.events]


class FakeWatch:
    """Stands in for `events.psi.PsiWatch`: the fake cgroupfs' memory.pressure is a plain file,
    and writing a trigger to it would only overwrite what `read_pressure` reads. A pipe gives
    the response a real fd to register."""

    def __init__(self, path: Path, kind: str, stall_s: float, window_s: float) -> None:
        self.path, self.kind, self.stall_s, self.window_s = path, kind, stall_s, window_s
        self._r, self._w = os.pipe()

    def fileno(self) -> int:
        return self._r

    @property
    def closed(self) -> bool:
        return self._r < 0

    def close(self) -> None:
        if self._r >= 0:
            os.close(self._r)
            os.close(self._w)
            self._r = self._w = -1


@pytest.fixture(autouse=True)
def fake_psi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pressure_mod, "PsiWatch", FakeWatch)


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.responses: list[PressureResponse] = []

    def __call__(self, **overrides: Any) -> tuple[FakeContext, PressureResponse]:
        body = _merge(BASE, overrides)
        cfg = Config.from_mapping(body, source="test")
        fs = FakeCgroupFS(self.tmp_path / f"cgroup{len(self.responses)}")
        fs.add_proc(CgroupPath.ROOT, os.getpid())
        built = treemod.build(fs, cfg.tree_spec(), os.getpid(), CgroupPath.ROOT)
        ctx = FakeContext(cfg, fs, built)
        resp = PressureResponse()
        resp.setup(ctx)
        self.responses.append(resp)
        return ctx, resp


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    made = Setup(tmp_path)
    yield made
    for resp in made.responses:
        resp.close()


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over` merged in, recursively; a None value removes the key."""
    out = dict(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def put(ctx: FakeContext, cgroup: CgroupPath, **files: int | str) -> None:
    """Set interface files of `cgroup` the way the kernel would show them (memory_swap_max=...
    writes memory.swap.max)."""
    for name, value in files.items():
        (ctx.fs.dir(cgroup) / name.replace("_", ".")).write_text(f"{value}\n")


def at(ctx: FakeContext, resp: PressureResponse, t: float) -> None:
    """The loop's turn at time `t`: tick, then after_turn."""
    ctx.now = t
    resp.tick(t)
    resp.after_turn()


def pressured_side(ctx: FakeContext) -> None:
    """95M of the side slice's 100M (5% headroom, threshold 10%): lo 50M, hi 45M."""
    put(ctx, SIDE, memory_current=95 * M)
    put(ctx, LO, memory_current=50 * M)
    put(ctx, HI, memory_current=45 * M)


# -- the tests ------------------------------------------------------------------------------------


def test_setup_arms_one_psi_trigger_per_budget_and_registers_each_with_a_handler(
    setup: Setup,
) -> None:
    ctx, resp = setup()
    assert list(resp.budgets) == ["side", TREE_BUDGET, PRIMARY_BUDGET]
    fds = {b.trigger.fileno() for b in resp.budgets.values() if b.trigger is not None}
    assert set(ctx.readers) == fds and len(fds) == 3
    assert {mask for mask, _h in ctx.readers.values()} == {select.EPOLLPRI}
    resp.close()
    assert ctx.readers == {}


def test_a_high_event_with_low_headroom_evicts_the_least_critical_sidecar(setup: Setup) -> None:
    ctx, resp = setup()
    pressured_side(ctx)
    resp.on_counters(SIDE, {"high": 3})
    assert ctx.actions == [("evict", "lo")]
    ((_kind, cgroup, fields),) = [e for e in ctx.events if e[0] == "evict"]
    assert cgroup == LO and fields["service"] == "lo" and fields["budget"] == "side"
    assert fields["reason"] == "headroom+high" and fields["trigger"] == "memory.events"
    assert fields["headroom"] == pytest.approx(0.05)


def test_a_high_event_with_enough_headroom_does_nothing(setup: Setup) -> None:
    ctx, resp = setup()
    put(ctx, SIDE, memory_current=80 * M)  # 20% headroom: page cache at memory.high, say
    resp.on_counters(SIDE, {"high": 40})
    assert ctx.actions == [] and "evict" not in ctx.kinds()


def test_page_cache_is_not_pressure(setup: Setup) -> None:
    ctx, resp = setup()
    pressured_side(ctx)
    # 95M charged, 30M of it file cache on the LRU lists: 65M unreclaimable, 35% headroom.
    put(ctx, SIDE, memory_stat="anon 65000000\nactive_file 10485760\ninactive_file 20971520")
    resp.on_counters(SIDE, {"high": 3})
    assert ctx.actions == []


def test_a_psi_trigger_firing_with_low_headroom_evicts(setup: Setup) -> None:
    ctx, resp = setup()
    pressured_side(ctx)
    side = resp.budgets["side"]
    assert side.trigger is not None
    _mask, handler = ctx.readers[side.trigger.fileno()]
    handler(select.EPOLLPRI)
    assert ctx.actions == [("evict", "lo")]
    evict = next(f for k, _c, f in ctx.events if k == "evict")
    assert evict["reason"] == "headroom+psi_trigger" and evict["trigger"] == "psi_trigger"


def test_epollerr_on_a_psi_trigger_drops_it_and_its_reader(setup: Setup) -> None:
    ctx, resp = setup()
    side = resp.budgets["side"]
    assert side.trigger is not None
    fd = side.trigger.fileno()
    _mask, handler = ctx.readers[fd]
    handler(select.EPOLLERR | select.EPOLLPRI)  # kernfs: the cgroup was removed
    assert side.trigger is None and fd not in ctx.readers
    assert ctx.actions == []


def test_the_next_sidecar_waits_for_the_first_eviction_to_finish(setup: Setup) -> None:
    ctx, resp = setup()
    pressured_side(ctx)
    resp.on_counters(SIDE, {"high": 1})
    assert ctx.actions == [("evict", "lo")]
    # lo is still stopping: its memory is not uncharged yet, the budget still reads pressured.
    at(ctx, resp, 1010.0)
    resp.on_counters(SIDE, {"high": 1})
    assert ctx.actions == [("evict", "lo")]
    # Gone, and the pressure persists past the cool-down: the more critical one goes too.
    ctx.exited("lo")
    put(ctx, SIDE, memory_current=96 * M)
    at(ctx, resp, 1011.0)
    at(ctx, resp, 1012.0)
    resp.on_counters(SIDE, {"high": 1})
    assert ctx.actions == [("evict", "lo"), ("evict", "hi")]


def test_hysteresis_restores_only_after_the_budget_stayed_clear(setup: Setup) -> None:
    ctx, resp = setup(oomguard={"pressure": {"hysteresis": "10s", "cooldown": "2s"}})
    pressured_side(ctx)
    resp.on_counters(SIDE, {"high": 1})
    assert ctx.actions == [("evict", "lo")]
    ctx.exited("lo")
    put(ctx, SIDE, memory_current=45 * M, memory_stat="anon 0\nfile 0")
    released_at = None
    t = 1000.0
    while released_at is None and t < 1100.0:
        t += 1.0
        at(ctx, resp, t)
        if ("release", "lo") in ctx.actions:
            released_at = t
    # Clear from the first sample (t=1001), restored 10 s later: not a moment sooner.
    assert released_at == 1011.0
    assert ctx.actions == [("evict", "lo"), ("release", "lo")]
    restore = next(f for k, _c, f in ctx.events if k == "restore")
    assert restore["clear_for"] == pytest.approx(10.0)
    # Nothing left to restore: the budget stops sampling (no wake-ups when idle).
    at(ctx, resp, t + 1.0)
    assert resp.budgets["side"].next_at is None


def test_controlled_restart_of_the_primary_only_when_no_sidecar_is_left(setup: Setup) -> None:
    ctx, resp = setup(oomguard={"pressure": {"cooldown": "2s"}})
    put(ctx, DB, memory_current=210 * M)  # over its 200M watermark
    put(ctx, LO, memory_current=5 * M)
    put(ctx, HI, memory_current=5 * M)
    resp.on_counters(DB, {"high": 1})
    assert ctx.actions == [("evict", "lo")]
    t = 1000.0
    for name in ("lo", "hi"):
        ctx.exited(name)
        t += 3.0  # past the cool-down
        at(ctx, resp, t)
    assert ctx.actions == [("evict", "lo"), ("evict", "hi"), ("restart", "db")]
    assert [f["budget"] for k, _c, f in ctx.events if k in ("evict", "controlled_restart")] == [
        PRIMARY_BUDGET
    ] * 3
    # The primary comes back: "restarted" with its downtime, once.
    restarted_at = t
    ctx.exited("db")
    at(ctx, resp, t + 0.5)
    assert "restarted" not in ctx.kinds()  # starting, not yet running
    ctx.set("db", state=rp.State.RUNNING)
    put(ctx, DB, memory_current=50 * M)
    at(ctx, resp, t + 4.0)
    (back,) = [f for k, _c, f in ctx.events if k == "restarted"]
    assert back["service"] == "db" and back["downtime"] == pytest.approx(t + 4.0 - restarted_at)


def test_a_primary_below_its_watermark_is_never_restarted(setup: Setup) -> None:
    ctx, resp = setup(oomguard={"pressure": {"cooldown": "2s"}})
    # The tree is short of memory, but not because of the primary.
    put(ctx, DB, memory_current=100 * M)
    pressured_side(ctx)
    resp.on_counters(SIDE, {"high": 1})
    for t in (1003.0, 1006.0):
        ctx.exited(ctx.actions[-1][1])
        at(ctx, resp, t)
        resp.on_counters(SIDE, {"high": 1})
    assert ctx.actions == [("evict", "lo"), ("evict", "hi")]
    assert "controlled_restart" not in ctx.kinds()


def test_observe_mode_emits_what_it_would_do_and_never_acts(setup: Setup) -> None:
    ctx, resp = setup(oomguard={"mode": "observe"})
    pressured_side(ctx)
    put(ctx, DB, memory_current=210 * M)
    resp.on_counters(SIDE, {"high": 3})
    resp.on_counters(DB, {"high": 3})
    for t in (1010.0, 1020.0, 1030.0):
        at(ctx, resp, t)
    assert ctx.actions == []
    assert "would_evict" in ctx.kinds()
    assert "evict" not in ctx.kinds() and "controlled_restart" not in ctx.kinds()
    would = next(f for k, _c, f in ctx.events if k == "would_evict")
    assert would["service"] == "lo"
    # No automatic highs that follow the room: they would pin a leak in place.
    assert resp.auto is not None and resp.auto.groups == {}


def test_automatic_memory_high_is_never_written_on_the_primary_or_its_ancestors(
    setup: Setup,
) -> None:
    ctx, resp = setup(
        slice={"main": {"memory_max": "1G"}, "batch": {"parent": "main"}, "side": None},
        service={
            "db": {"role": "primary", "command": ["x"], "slice": "main", "memory_high": None},
            "pooler": {"command": ["x"], "slice": "main", "criticality": 50},
            "lo": {"command": ["x"], "slice": "batch", "criticality": 10},
            "hi": None,
        },
    )
    main, db = P("/og/main"), P("/og/main/db")
    pooler, batch = P("/og/main/pooler"), P("/og/main/batch")
    # The primary grew: main (1G) is 95% used, the sidecars hold a little each.
    put(ctx, main, memory_current=970 * M)
    put(ctx, db, memory_current=900 * M)
    put(ctx, pooler, memory_current=30 * M)
    put(ctx, batch, memory_current=40 * M)
    ctx.fs.ops.clear()
    for t in (1000.0, 1001.0, 1002.0):
        at(ctx, resp, t)
    written = {op[1] for op in ctx.fs.writes("memory.high")}
    assert written  # the sidecar groups got highs that follow the room...
    assert written <= {str(pooler), str(batch)}
    # ...and never the primary, nor a cgroup it lives under.
    assert not written & {str(db), str(main), str(ROOT)}


def test_a_vanished_budget_cgroup_mid_tick_is_a_normal_outcome(setup: Setup) -> None:
    ctx, resp = setup()
    pressured_side(ctx)
    resp.on_counters(SIDE, {"high": 1})
    ctx.exited("lo")
    # Removed from outside (an operator, a race with teardown): every read now says so.
    for path in (LO, HI, SIDE):
        _rmtree(ctx.fs.dir(path))
    for t in (1001.0, 1002.0, 1030.0, 1100.0):
        at(ctx, resp, t)
    resp.on_counters(SIDE, {"high": 1})
    assert ctx.actions == [("evict", "lo")]  # nothing more, and no exception


def test_a_vanished_member_holds_nothing_and_the_decision_goes_on(setup: Setup) -> None:
    ctx, resp = setup()
    pressured_side(ctx)
    _rmtree(ctx.fs.dir(HI))
    resp.on_counters(SIDE, {"high": 1})
    assert ctx.actions == [("evict", "lo")]
    evict = next(f for k, _c, f in ctx.events if k == "evict")
    assert evict["member_current"] == 50 * M


def test_swap_counts_in_the_headroom_and_in_the_eviction_order(setup: Setup) -> None:
    # 88M of 100M in RAM (12% headroom: not low). With a 30M swap allowance full: 118M of
    # 130M, 9.2%: low. What has been swapped out did not go away.
    def swapped(swap_total: int) -> FakeContext:
        ctx, resp = setup(
            service={
                "lo": {"criticality": 50},
                "hi": {"criticality": 50},
            }
        )
        ctx.mem = {"SwapTotal": swap_total, "SwapFree": swap_total}
        put(ctx, SIDE, memory_current=88 * M, memory_swap_max=30 * M, memory_swap_current=30 * M)
        put(ctx, LO, memory_current=50 * M, memory_swap_current=5 * M)
        put(ctx, HI, memory_current=38 * M, memory_swap_current=25 * M)
        resp.on_counters(SIDE, {"high": 1})
        return ctx

    without = swapped(0)
    assert without.actions == []
    with_swap = swapped(1024 * M)
    # Equally critical: the bigger swap user goes first, though it holds less RAM.
    assert with_swap.actions == [("evict", "hi")]
    evict = next(f for k, _c, f in with_swap.events if k == "evict")
    assert evict["limit"] == 130 * M and evict["current"] == 118 * M
    assert evict["member_swap"] == 25 * M


def test_nothing_is_decided_once_the_supervisor_is_stopping(setup: Setup) -> None:
    ctx, resp = setup()
    pressured_side(ctx)
    ctx.stopping = True
    resp.on_counters(SIDE, {"high": 3})
    at(ctx, resp, 1001.0)
    assert ctx.actions == []
    assert resp.auto is not None and resp.auto.follow_at is None  # no more wake-ups


def test_degraded_the_response_is_off(setup: Setup) -> None:
    ctx, _on = setup()
    off = PressureResponse()
    ctx.root = None
    off.setup(ctx)
    assert off.budgets == {} and off.deadline() is None
    assert "pressure level=warn response=off" in ctx.out.getvalue()
    off.close()


def _rmtree(path: Path) -> None:
    for dirpath, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(dirpath, name))
        for name in dirs:
            os.rmdir(os.path.join(dirpath, name))
    os.rmdir(path)
