"""`oomguard exec` up to, not including, the daemon: option parsing, the compiled Plan,
and failing closed. `hand_off` and `degrade_reason` are replaced, so no test here spawns a
command or looks at (let alone writes) a cgroup."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from oomguard.cli import exec_
from oomguard.cli.app import run

if TYPE_CHECKING:
    from oomguard.cli.daemon import Job
    from oomguard.plan import Plan


class FakeRun:
    """Stands in for discovery and the daemon: records the Plan it was given."""

    def __init__(self, reason: str | None) -> None:
        self.reason = reason
        self.plans: list[Plan] = []
        self.jobs: list[Job] = []

    def degrade_reason(self, plan: Plan) -> str | None:
        return self.reason

    def hand_off(self, job: Job) -> int:
        self.jobs.append(job)
        self.plans.append(job.plan)
        return 0


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeRun:
    f = FakeRun(reason=None)
    monkeypatch.setattr(exec_, "degrade_reason", f.degrade_reason)
    monkeypatch.setattr(exec_, "hand_off", f.hand_off)
    return f


def _exec(fake: FakeRun, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = run(["exec", *argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def test_unbalanced_quote_in_sidecar_is_a_usage_error(
    fake: FakeRun, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: shlex's ValueError escaped as an internal error (exit 70, traceback).
    rc, err = _exec(fake, capsys, "--sidecar", 'exp=run "x', "--", "db")
    assert rc == 2 and "--sidecar exp=" in err and "quot" in err
    assert fake.plans == []


def test_duplicate_sidecar_is_refused(fake: FakeRun, capsys: pytest.CaptureFixture[str]) -> None:
    # Before: the second silently replaced the first.
    rc, err = _exec(fake, capsys, "--sidecar", "a=x", "--sidecar", "a=y", "--", "db")
    assert rc == 2 and "--sidecar a= is given twice" in err


def test_duplicate_sidecar_memory_max_is_refused(
    fake: FakeRun, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, err = _exec(
        fake,
        capsys,
        *("--sidecar", "a=x", "--sidecar-memory-max", "a=1M", "--sidecar-memory-max", "a=2M"),
        *("--", "db"),
    )
    assert rc == 2 and "given twice" in err


def test_sidecar_named_like_the_primary_is_refused(
    fake: FakeRun, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, err = _exec(fake, capsys, "--sidecar", "db=x", "--", "db")
    assert rc == 2 and "primary's name" in err


def test_oom_score_adj_takes_ascii_digits_only(
    fake: FakeRun, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, err = _exec(fake, capsys, "--oom-score-adj", "٣", "--", "db")
    assert rc == 2 and "--oom-score-adj" in err
    rc, _ = _exec(fake, capsys, "--oom-score-adj", "-500", "--", "db")
    assert rc == 0 and fake.plans[-1].primary_service.oom_score_adj == -500


def test_cgroup_with_newline_is_refused(fake: FakeRun, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _exec(fake, capsys, "--cgroup", "/a\nb", "--", "db")
    assert rc == 2 and "--cgroup" in err and "control character" in err


# --- failing closed -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "limit",
    [
        ["--memory-max", "64M"],
        ["--memory-high", "64M"],
        ["--tree-max", "1G"],
        ["--sidecar", "a=x", "--sidecars-max", "64M"],
        ["--sidecar", "a=x", "--sidecar-memory-max", "a=64M"],
    ],
)
def test_a_limit_that_cannot_be_enforced_exits_2(
    fake: FakeRun, capsys: pytest.CaptureFixture[str], limit: list[str]
) -> None:
    # Before: the command ran unlimited, with one warning line.
    fake.reason = "the memory controller is on cgroup v1 (hybrid host)"
    rc, err = _exec(fake, capsys, *limit, "--", "db")
    assert rc == 2
    assert f"cannot enforce {limit[-2]} {limit[-1]}" in err and "hybrid host" in err
    assert "--allow-degraded" in err
    assert fake.plans == []


def test_allow_degraded_runs_without_the_limit(
    fake: FakeRun, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.reason = "no cgroup v2 mount"
    rc, _ = _exec(fake, capsys, "--allow-degraded", "--memory-max", "64M", "--", "db")
    assert rc == 0 and len(fake.plans) == 1


def test_no_limit_asked_runs_degraded_without_the_flag(
    fake: FakeRun, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.reason = "no cgroup v2 mount"
    rc, _ = _exec(fake, capsys, "--", "db")
    assert rc == 0 and len(fake.plans) == 1


def test_refuse_unenforced_decision() -> None:
    exec_.refuse_unenforced([], "no mount", allow_degraded=False)
    exec_.refuse_unenforced(["--memory-max 1M"], None, allow_degraded=False)
    exec_.refuse_unenforced(["--memory-max 1M"], "no mount", allow_degraded=True)
    with pytest.raises(exec_.UsageError):
        exec_.refuse_unenforced(["--memory-max 1M"], "no mount", allow_degraded=False)


# --- the shell's environment ----------------------------------------------------------------


def test_exec_keeps_the_shells_environment_and_directory(
    fake: FakeRun, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _ = _exec(fake, capsys, "--sidecar", "a=x", "--", "db")
    assert rc == 0
    plan = fake.plans[-1]
    for name in ("db", "a"):
        assert plan.service(name).inherit_env is True
        assert plan.service(name).cwd == os.getcwd()


@pytest.mark.parametrize(
    "argv", [["--name", "\udcff"], ["--sidecar", "\udcff=x"], ["--sidecar-memory-max", "\udcff=1M"]]
)
def test_names_that_are_not_utf8_are_a_usage_error(
    fake: FakeRun, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    # Found by the fuzz: pydantic could not render the error of a non-UTF-8 service name
    # (an internal error, exit 70).
    rc, err = _exec(fake, capsys, *argv, "--", "db")
    assert rc == 2 and "not valid UTF-8" in err
