"""runtime/hooks.py: which event starts which hook, its environment, and that a failing, slow or
broken hook is logged and never raised."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from oomguard.cgroup.path import CgroupPath
from oomguard.observe.log import Logger
from oomguard.plan import HooksSpec
from oomguard.runtime.hooks import ENV_MAX, VALUE_MAX, Hooks, hook_env

if TYPE_CHECKING:
    from oomguard.runtime.launcher import LaunchSpec

DB = CgroupPath.parse("/oomguard/db")
BACKUP = CgroupPath.parse("/oomguard/sidecars/backup")


@dataclass
class Result:
    ok: bool
    text: str = "exit code 0"

    def describe(self) -> str:
        return self.text

    def fields(self) -> dict[str, str | int | float | bool | None]:
        return {"outcome": "exited" if self.ok else "timed_out", "seconds": 0.1}


@dataclass
class Run:
    spec: LaunchSpec
    timeout: float
    on_done: Any
    pid: int = 4242


@dataclass
class FakeRunner:
    runs: list[Run] = field(default_factory=list)
    fail_start: bool = False
    crash: bool = False

    deadline_at: float | None = None
    ticks: list[float] = field(default_factory=list)
    closed: bool = False

    def deadline(self) -> float | None:
        return self.deadline_at

    def tick(self, now: float) -> None:
        self.ticks.append(now)

    def close(self) -> None:
        self.closed = True

    def run(
        self,
        spec: LaunchSpec,
        procs_fd: int | None,
        *,
        timeout: float,
        on_done: Any,
        cgroup: str | None = None,
    ) -> Run | None:
        assert procs_fd is None and cgroup is None  # oomguard's own cgroup
        if self.crash:
            raise OSError("EMFILE")
        if self.fail_start:
            on_done(Result(False, "failed to start: no such file"))
            return None
        run = Run(spec, timeout, on_done)
        self.runs.append(run)
        return run


ALL = {
    "before_evict": ("/hooks/evict", "--now"),
    "before_shed": ("/hooks/shed",),
    "before_restart": ("/hooks/restart",),
    "after_oom_kill": ("/hooks/oom",),
}


def hooks(
    runner: FakeRunner, commands: dict[str, tuple[str, ...]] | None = None
) -> tuple[Hooks, io.StringIO]:
    out = io.StringIO()
    log = Logger(out, clock_wall=lambda: 0.0, timestamps=False)
    spec = HooksSpec(**(commands if commands is not None else ALL), timeout=3.0)
    return Hooks(spec, runner, log), out


def test_each_event_starts_its_hook_with_the_timeout() -> None:
    runner = FakeRunner()
    h, _ = hooks(runner)
    h.on_event("evict", BACKUP, {"service": "backup", "reason": "headroom+high"})
    h.on_event("shed", DB, {"service": "db", "pid": 77})
    h.on_event("controlled_restart", DB, {"service": "db"})
    h.on_event("oom_kill", BACKUP, {"service": "backup"})
    assert [r.spec.argv for r in runner.runs] == [
        ("/hooks/evict", "--now"),
        ("/hooks/shed",),
        ("/hooks/restart",),
        ("/hooks/oom",),
    ]
    assert {r.timeout for r in runner.runs} == {3.0}
    assert all(r.spec.login_env and r.spec.cwd == "/" for r in runner.runs)
    assert {r.spec.oom_score_adj for r in runner.runs} == {1000}  # expendable


def test_other_events_and_unconfigured_hooks_start_nothing() -> None:
    runner = FakeRunner()
    h, _ = hooks(runner, {"before_shed": ("/x",)})
    for kind in ("evict", "would_evict", "restore", "spawned", "oom_kill", "controlled_restart"):
        h.on_event(kind, DB, {"service": "db"})
    assert runner.runs == []


def test_the_environment_describes_the_event() -> None:
    runner = FakeRunner()
    h, _ = hooks(runner)
    figures = {
        "service": "backup",
        "budget": "sidecars",
        "current": 120 << 20,
        "limit": 128 << 20,
        "headroom": 0.0625,
        "reason": "headroom+high",
        "psi_fired": False,
        "psi_some_avg10": None,
    }
    h.on_event("evict", BACKUP, figures)
    env = runner.runs[0].spec.env
    assert env["OOMGUARD_EVENT"] == "before_evict"
    assert env["OOMGUARD_KIND"] == "evict"
    assert env["OOMGUARD_SERVICE"] == "backup"
    assert env["OOMGUARD_CGROUP"] == "/oomguard/sidecars/backup"
    assert env["OOMGUARD_USAGE"] == str(120 << 20)
    assert env["OOMGUARD_LIMIT"] == str(128 << 20)
    assert env["OOMGUARD_HEADROOM"] == "0.0625"
    assert env["OOMGUARD_BUDGET"] == "sidecars"
    assert env["OOMGUARD_REASON"] == "headroom+high"
    assert env["OOMGUARD_PSI_FIRED"] == "0"
    assert "OOMGUARD_PSI_SOME_AVG10" not in env  # None: left out
    assert "PATH" not in env  # login_env adds PATH and the user's variables under these


def test_hook_env_is_bounded_and_clean() -> None:
    many = {f"k{i}": i for i in range(200)}
    assert len(hook_env("before_evict", "evict", None, many)) == ENV_MAX
    env = hook_env("x", "evict", None, {"reason": "a\0b" + "z" * 5000, "odd key!": 1, "l": [1]})
    assert env["OOMGUARD_REASON"].startswith("ab") and len(env["OOMGUARD_REASON"]) == VALUE_MAX
    assert env["OOMGUARD_ODD_KEY_"] == "1"
    assert "OOMGUARD_L" not in env  # not a scalar
    assert "OOMGUARD_CGROUP" not in env
    # An event's own fields cannot overwrite what oomguard says about it.
    assert hook_env("before_shed", "shed", "/a", {"event": "x", "kind": "y"})["OOMGUARD_EVENT"] == (
        "before_shed"
    )


def test_one_instance_per_hook_the_next_event_is_skipped_while_it_runs() -> None:
    runner = FakeRunner()
    h, out = hooks(runner)
    h.on_event("evict", BACKUP, {"service": "backup"})
    h.on_event("evict", BACKUP, {"service": "pooler"})
    assert len(runner.runs) == 1
    assert "hook_skipped level=warn hook=before_evict service=pooler" in out.getvalue()
    # Another hook is not held up by it.
    h.on_event("oom_kill", BACKUP, {"service": "backup"})
    assert len(runner.runs) == 2
    runner.runs[0].on_done(Result(True))
    h.on_event("evict", BACKUP, {"service": "pooler"})
    assert len(runner.runs) == 3


def test_a_hook_that_times_out_or_fails_is_logged() -> None:
    runner = FakeRunner()
    h, out = hooks(runner)
    h.on_event("evict", BACKUP, {"service": "backup"})
    runner.runs[0].on_done(Result(False, "timed out after 3s"))
    text = out.getvalue()
    assert "hook hook=before_evict service=backup pid=4242" in text
    assert (
        'hook_failed level=warn hook=before_evict service=backup why="timed out after 3s"' in text
    )
    assert "outcome=timed_out" in text
    assert h.running == set()


def test_a_hook_that_cannot_start_or_a_runner_that_raises_never_raises() -> None:
    runner = FakeRunner(fail_start=True)
    h, out = hooks(runner)
    h.on_event("shed", DB, {"service": "db"})
    assert "failed to start" in out.getvalue() and h.running == set()
    crashing, out2 = hooks(FakeRunner(crash=True))
    crashing.on_event("shed", DB, {"service": "db"})
    assert "hook_failed level=warn hook=before_shed service=db error=EMFILE" in out2.getvalue()
    assert crashing.running == set()


def test_the_extension_serves_the_runners_timeouts_and_closes_it() -> None:
    runner = FakeRunner(deadline_at=12.5)
    h, _ = hooks(runner)
    h.setup(object())
    assert h.deadline() == 12.5
    h.tick(13.0)
    h.on_counters(DB, {"high": 1})
    h.after_turn()
    assert runner.ticks == [13.0]
    h.on_event("evict", BACKUP, {"service": "backup"})
    h.close()
    assert runner.closed and h.running == set()
