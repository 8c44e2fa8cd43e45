"""`oomguard status` on a fake cgroup tree: table, JSON, state.json merge, root resolution,
and the import budget (no pydantic, no config, no runtime)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from oomguard import proc
from oomguard.cgroup.path import CgroupPath
from oomguard.cli import status
from oomguard.observe import statefile
from tests.observe.test_snapshot import build_tree

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    mount = tmp_path / "cg"
    build_tree(mount)
    return mount


def write_state(state_dir: Path, doc: dict[str, Any] | str) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    text = doc if isinstance(doc, str) else json.dumps(doc)
    (state_dir / "state.json").write_text(text)


STATE = {
    "version": 1,
    "services": {
        "db": {
            "state": "RUNNING",
            "pid": 123,
            "restarts": 0,
            "slice": "/oomguard/db",
            "last_exit": None,
            "started_at": 1700000000.0,
        },
        "backup": {"state": "BACKOFF", "restarts": 3, "slice": "/oomguard/sidecars/backup"},
        # Tolerated: no slice at all, and a slice outside the tree.
        "nameless": {"state": "FATAL"},
        "elsewhere": {"state": "STOPPED", "slice": "/other/x"},
    },
    "updated_at": 1700000100.0,
}


def run(args: list[str]) -> tuple[int, str]:
    out: list[str] = []
    rc = status.execute(args, echo=out.append)
    return rc, "".join(line + "\n" for line in out)


def test_table_shows_every_slice_and_figure(tree: Path, tmp_path: Path) -> None:
    write_state(tmp_path / "state", STATE)
    rc, out = run(
        ["--mount", str(tree), "--root", "/oomguard", "--state-dir", str(tmp_path / "state")]
    )
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == f"tree /oomguard (from --root) under {tree}"
    assert "updated" in lines[1]
    header = lines[2]
    for col in ("SLICE", "CURRENT", "PEAK", "HIGH", "MAX", "PSI10", "EVENTS local", "PIDS"):
        assert col in header
    rows = {line.split()[0]: line for line in lines[3:8]}
    assert set(rows) == {"/oomguard", "db", "sidecars", "backup", "supervisor"}
    db = rows["db"].split()
    assert db[:7] == ["db", "db:RUNNING", "0", "200M", "0", "600M", "700M"]
    assert "1.50/0.75" in rows["db"]
    assert f"{os.getpid()} " in rows["db"]  # our pid, with comm and (adj)
    backup = rows["backup"]
    assert backup.startswith("    backup")  # indented by depth
    assert "backup:BACKOFF  3" in backup
    assert "0/0/0/1/1/0" in backup and "0/4/0/1/1/0" in backup  # local, tree
    assert rows["/oomguard"].split()[5:7] == ["max", "1G"]
    assert "elsewhere:STOPPED (/other/x)" in out


def test_json_carries_full_data_and_merged_state(tree: Path, tmp_path: Path) -> None:
    write_state(tmp_path / "s", STATE)
    rc, out = run(
        ["--json", "--mount", str(tree), "--root", "/oomguard", "--state-dir", str(tmp_path / "s")]
    )
    assert rc == 0
    data = json.loads(out)
    assert data["root"] == "/oomguard" and data["mount"] == str(tree)
    by_path = {s["path"]: s for s in data["slices"]}
    db = by_path["/oomguard/db"]
    assert db["service"]["name"] == "db" and db["service"]["state"] == "RUNNING"
    assert db["service"]["pid"] == 123
    assert db["high"] == 600 << 20 and db["max"] == 700 << 20 and db["current"] == 200 << 20
    assert db["events_local"]["oom_kill"] == 0
    assert db["pressure"]["some"]["avg10"] == 1.5
    assert [p["pid"] for p in db["procs"]] == [os.getpid()]
    assert by_path["/oomguard/supervisor"]["service"] is None
    assert by_path["/oomguard/sidecars/backup"]["events"]["high"] == 4
    assert data["services_not_in_tree"] == [
        {"name": "elsewhere", "state": "STOPPED", "slice": "/other/x"}
    ]
    assert data["state"]["present"] is True and data["state"]["problem"] is None
    # No "pid" at top level: whether the writer runs is unknown, not false.
    assert data["state"]["supervisor_running"] is None


def test_root_defaults_to_the_one_in_state_json(tree: Path, tmp_path: Path) -> None:
    write_state(tmp_path / "s", {"version": 1, "root": "/oomguard/sidecars", "services": {}})
    rc, out = run(["--json", "--mount", str(tree), "--state-dir", str(tmp_path / "s")])
    assert rc == 0
    data = json.loads(out)
    assert data["root_from"] == "state.json"
    assert [s["path"] for s in data["slices"]] == [
        "/oomguard/sidecars",
        "/oomguard/sidecars/backup",
    ]
    assert data["slices"][1]["depth"] == 1


def test_root_defaults_to_own_cgroup_tree(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import oomguard.cgroup.discover as dsc

    monkeypatch.setattr(dsc, "own_cgroup", lambda: CgroupPath.parse("/"))
    rc, out = run(["--mount", str(tree), "--state-dir", str(tmp_path / "none")])
    assert rc == 0
    assert out.startswith(f"tree /oomguard (from default) under {tree}")
    monkeypatch.setattr(dsc, "own_cgroup", lambda: CgroupPath.parse("/oomguard/db"))
    with pytest.raises(status.StatusError) as exc:
        run(["--mount", str(tree), "--state-dir", str(tmp_path / "none")])
    assert "no oomguard tree at /oomguard/db/oomguard" in exc.value.message
    assert exc.value.hint is not None and "--root" in exc.value.hint


def test_missing_root_names_it(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(status.StatusError) as exc:
        run(["--mount", str(tree), "--root", "/nope", "--state-dir", str(tmp_path)])
    assert "cgroup /nope does not exist under" in exc.value.message


def test_bad_root_path_is_refused(tree: Path, tmp_path: Path) -> None:
    from oomguard.errors import OomguardError

    with pytest.raises(OomguardError):
        run(["--mount", str(tree), "--root", "/../etc", "--state-dir", str(tmp_path)])


@pytest.mark.parametrize(
    ("text", "problem"),
    [("{not json", "is not valid JSON"), ("[1, 2]", "does not hold a JSON object")],
)
def test_broken_state_json_still_shows_the_tree(
    tree: Path, tmp_path: Path, text: str, problem: str
) -> None:
    write_state(tmp_path / "s", text)
    rc, out = run(["--mount", str(tree), "--root", "/oomguard", "--state-dir", str(tmp_path / "s")])
    assert rc == 0
    assert problem in out.splitlines()[1]
    assert "db" in out


def test_a_newer_state_format_is_refused_with_exit_2(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: status read any version and showed figures it may misread.
    write_state(tmp_path / "s", {**STATE, "version": 2})
    args = ["--mount", str(tree), "--root", "/oomguard", "--state-dir", str(tmp_path / "s")]
    assert status.main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        f"oomguard: error: {tmp_path / 's' / 'state.json'} has format version 2, written by a "
        "newer oomguard; this oomguard reads version 1"
    )
    assert err[1].startswith("oomguard: hint: run the oomguard binary of the running supervisor")


@pytest.mark.parametrize(
    ("version", "shown"), [(None, "None"), (0, "0"), ("1", "'1'"), (True, "True")]
)
def test_a_state_file_without_this_version_is_a_problem_not_a_crash(
    tree: Path, tmp_path: Path, version: object, shown: str
) -> None:
    doc = {k: v for k, v in STATE.items() if k != "version"}
    if version is not None:
        doc["version"] = version
    write_state(tmp_path / "s", doc)
    rc, out = run(["--mount", str(tree), "--root", "/oomguard", "--state-dir", str(tmp_path / "s")])
    assert rc == 0
    assert f"has format version {shown}; this oomguard reads version 1" in out.splitlines()[1]
    assert "db:RUNNING" not in out  # the services of a document it cannot read are not shown


def test_writer_running_uses_pid_start_against_reuse() -> None:
    me = os.getpid()
    ticks = proc.start_ticks(me)
    assert ticks is not None
    assert statefile.writer_running({"pid": me, "pid_start": ticks}) is True
    assert statefile.writer_running({"pid": me, "pid_start": ticks + 1}) is False  # pid reused
    assert statefile.writer_running({"pid": me}) is True
    assert statefile.writer_running({"pid": 4194999}) is False
    assert statefile.writer_running({"pid": "x"}) is None


def test_stale_state_is_flagged(tree: Path, tmp_path: Path) -> None:
    write_state(tmp_path / "s", {**STATE, "pid": 4194999})
    _, out = run(["--mount", str(tree), "--root", "/oomguard", "--state-dir", str(tmp_path / "s")])
    assert "supervisor pid 4194999 NOT running (stale)" in out


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_status_imports_no_pydantic_config_or_runtime(tree: Path, tmp_path: Path) -> None:
    """Runs the real entry point in a fresh interpreter and lists what it imported."""
    probe = (
        "import atexit, sys\n"
        "def dump():\n"
        "    bad = sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic'\n"
        "                 or m.startswith(('oomguard.config', 'oomguard.runtime')))\n"
        "    sys.stderr.write('BAD=' + ','.join(bad) + '\\n')\n"
        "atexit.register(dump)\n"
        "from oomguard.cli.main import main\n"
        "main(sys.argv[1:])\n"
    )
    args = ["status", "--mount", str(tree), "--root", "/oomguard", "--state-dir", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-c", probe, *args],
        capture_output=True,
        text=True,
        env=_python_env(),
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "/oomguard" in proc.stdout
    assert "BAD=\n" in proc.stderr, proc.stderr


@pytest.mark.parametrize("root_args", [["--root", "/oomguard"], []])
def test_status_imports_no_dataclasses(tree: Path, tmp_path: Path, root_args: list[str]) -> None:
    """`dataclasses` (and the `inspect` it imports) cost status ~15 ms of CPU per start; the
    records on its path are NamedTuples or hand-written value classes. Without --root the
    default-root lookup imports cgroup.discover, so both paths are checked (the second may
    fail to find a tree here; only the imports matter)."""
    probe = (
        "import atexit, sys\n"
        "before = set(sys.modules)  # whatever site/.pth files loaded is not ours\n"
        "def dump():\n"
        "    heavy = [m for m in ('dataclasses', 'inspect') if m in set(sys.modules) - before]\n"
        "    sys.stderr.write('HEAVY=' + ','.join(heavy) + '\\n')\n"
        "    sys.stderr.write(f'DISCOVER={\"oomguard.cgroup.discover\" in sys.modules}\\n')\n"
        "atexit.register(dump)\n"
        "from oomguard.cli.main import main\n"
        "main(sys.argv[1:])\n"
    )
    args = ["status", "--mount", str(tree), "--state-dir", str(tmp_path), *root_args]
    proc = subprocess.run(
        [sys.executable, "-c", probe, *args],
        capture_output=True,
        text=True,
        env=_python_env(),
        check=False,
        timeout=60,
    )
    assert "HEAVY=\n" in proc.stderr, proc.stderr
    assert f"DISCOVER={not root_args}\n" in proc.stderr, proc.stderr


# ------------------------------------------------------------------- the command line (no click)


def test_parse_args_plain_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OOMGUARD_STATE_DIR", raising=False)
    monkeypatch.setenv("OOMGUARD_CGROUP_MOUNT", "/m")
    assert status.parse_args(["--json", "--root", "/a", "--state-dir=/s"]) == {
        "as_json": True,
        "root_opt": "/a",
        "state_dir": "/s",
        "mount": "/m",
    }
    monkeypatch.setenv("OOMGUARD_STATE_DIR", "")  # empty counts as unset, as in click
    monkeypatch.delenv("OOMGUARD_CGROUP_MOUNT")
    assert status.parse_args([]) == {
        "as_json": False,
        "root_opt": None,
        "state_dir": "/run/oomguard",
        "mount": None,
    }


@pytest.mark.parametrize(
    ("argv", "message", "hint"),
    [
        (["--json=1"], "--json takes no value", "write --json alone"),
        (["--root"], "--root needs a value", "write --root PATH"),
        (["--bogus"], "has no option --bogus", "`oomguard status --help`"),
        (["extra"], "takes no argument 'extra'", "`oomguard status --help`"),
        (["--roo", "/x"], "has no option --roo", "did you mean --root?"),
    ],
)
def test_a_wrong_argument_is_a_usage_error_naming_it(
    argv: list[str], message: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from oomguard.errors import UsageError

    with pytest.raises(UsageError) as exc:
        status.parse_args(argv)
    assert message in exc.value.message
    assert exc.value.hint is not None and hint in exc.value.hint
    assert status.main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"oomguard: error: {exc.value.message}", f"oomguard: hint: {exc.value.hint}"]


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_option(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert status.parse_args(["--json", flag]) is None
    assert status.main([flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: oomguard status [OPTIONS]")
    for opt in status.OPTIONS:
        assert (opt.flag in out) is not opt.hidden
    assert "OOMGUARD_STATE_DIR" in out and "/run/oomguard" in out


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_every_entry_prints_what_the_command_renders(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    """main() (the program), the click group's pass-through and execute() print the same."""
    from oomguard.cli.app import run as run_click

    args = ["--mount", str(tree), "--root", "/oomguard", "--state-dir", str(tmp_path), *extra]
    assert status.main(args) == 0
    direct = capsys.readouterr().out
    assert run_click(["status", *args]) == 0
    via_group = capsys.readouterr().out
    rc, rendered = run(args)
    assert rc == 0
    # This test process is in the fake tree: its RSS may change between the runs.
    rss = re.compile(r'"rss_bytes": \d+')
    assert rss.sub("", direct) == rss.sub("", rendered) == rss.sub("", via_group)


def test_main_reports_errors_like_every_command(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from oomguard.cli.app import run as run_click

    args = ["--mount", str(tree), "--root", "/nope", "--state-dir", str(tmp_path)]
    assert status.main(args) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("oomguard: error: cgroup /nope does not exist under")
    assert err[1].startswith("oomguard: hint: ")
    assert run_click(["status", *args]) == 1
    assert capsys.readouterr().err.splitlines() == err


def test_status_does_not_import_click(tree: Path, tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from oomguard.cli.status import main\n"
        "rc = main(sys.argv[1:])\n"
        "sys.stderr.write(f'rc={rc} click={\"click\" in sys.modules}\\n')\n"
    )
    args = ["--mount", str(tree), "--root", "/oomguard", "--state-dir", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-c", probe, *args],
        capture_output=True,
        text=True,
        env=_python_env(),
        check=False,
        timeout=60,
    )
    assert "rc=0 click=False" in proc.stderr, proc.stderr
    assert "supervisor" in proc.stdout


# ------------------------------------------------------------------------- degraded: no tree

DEGRADED: dict[str, Any] = {
    "version": 1,
    "pid": 4194999,
    "root": "",
    "mode": "enforce",
    "degraded": "the cgroup filesystem is read-only",
    "services": {
        "db": {
            "state": "RUNNING",
            "pid": 77,
            "restarts": 0,
            "evictions": 0,
            "slice": None,
            "role": "primary",
            "oom_score_adj": -999,
            "last_exit": None,
        },
        "backup": {
            "state": "BACKOFF",
            "pid": None,
            "restarts": 3,
            "evictions": 0,
            "slice": None,
            "role": "sidecar",
            "oom_score_adj": 900,
            "last_exit": {"code": None, "signal": 9, "oom_killed": True},
        },
        "job": {"state": "EXITED", "restarts": 1, "last_exit": {"code": 2, "signal": None}},
    },
}


def test_degraded_table_lists_every_service_without_a_mount(tmp_path: Path) -> None:
    write_state(tmp_path / "s", DEGRADED)
    # No --mount and none discoverable is fine: a degraded supervisor has no tree to show.
    rc, out = run(["--mount", str(tmp_path / "absent"), "--state-dir", str(tmp_path / "s")])
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == "no slice tree: oomguard runs degraded (the cgroup filesystem is read-only)"
    assert "NOT running (stale)" in out
    header = next(i for i, line in enumerate(lines) if line.startswith("SERVICE "))
    rows = {line.split()[0]: line.split() for line in lines[header + 1 :]}
    assert rows["db"][:6] == ["db", "primary", "RUNNING", "77", "0", "0"]
    assert rows["backup"][2:5] == ["BACKOFF", "-", "3"]
    assert "SIGKILL (oom)" in " ".join(rows["backup"])
    assert "exit 2" in " ".join(rows["job"])
    # A stale writer's pids may belong to anyone by now: no live RSS column.
    assert "RSS" not in lines[header]


def test_degraded_json_lists_every_service(tmp_path: Path) -> None:
    write_state(tmp_path / "s", DEGRADED)
    rc, out = run(["--json", "--state-dir", str(tmp_path / "s")])
    assert rc == 0
    data = json.loads(out)
    assert data["degraded"] == "the cgroup filesystem is read-only"
    assert data["root"] is None and data["mount"] is None and data["slices"] == []
    assert [s["name"] for s in data["services"]] == ["db", "backup", "job"]
    assert data["services"][1]["last_exit"] == {"code": None, "signal": 9, "oom_killed": True}
    assert "rss_bytes" not in data["services"][0]


def test_degraded_with_a_running_writer_shows_live_rss(tmp_path: Path) -> None:
    me = os.getpid()
    doc = {**DEGRADED, "pid": me, "pid_start": proc.start_ticks(me)}
    doc["services"] = {"db": {**DEGRADED["services"]["db"], "pid": me}}
    write_state(tmp_path / "s", doc)
    rc, out = run(["--json", "--state-dir", str(tmp_path / "s")])
    assert rc == 0
    (db,) = json.loads(out)["services"]
    assert db["rss_bytes"] > 0


def test_an_empty_root_from_an_older_writer_means_no_tree(tmp_path: Path) -> None:
    write_state(tmp_path / "s", {k: v for k, v in DEGRADED.items() if k != "degraded"})
    rc, out = run(["--state-dir", str(tmp_path / "s")])
    assert rc == 0
    assert out.startswith("no slice tree: oomguard runs degraded (no slice tree)")


def test_tree_view_also_lists_the_services(tree: Path, tmp_path: Path) -> None:
    write_state(tmp_path / "s", STATE)
    rc, out = run(["--json", "--mount", str(tree), "--state-dir", str(tmp_path / "s")])
    assert rc == 0
    data = json.loads(out)
    assert data["degraded"] is None
    assert [s["name"] for s in data["services"]] == ["db", "backup", "nameless", "elsewhere"]
    _, text = run(["--mount", str(tree), "--root", "/oomguard", "--state-dir", str(tmp_path / "s")])
    assert "SERVICE    ROLE" in text


def test_degraded_status_imports_no_pydantic_or_click(tmp_path: Path) -> None:
    write_state(tmp_path / "s", DEGRADED)
    probe = (
        "import sys\n"
        "from oomguard.cli.status import main\n"
        "rc = main(sys.argv[1:])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'click'))\n"
        "sys.stderr.write(f'rc={rc} bad={bad}\\n')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, "--state-dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        env=_python_env(),
        check=False,
        timeout=60,
    )
    assert "rc=0 bad=[]" in proc.stderr, proc.stderr
    assert "backup" in proc.stdout


def test_no_cgroup2_mount_and_no_state_points_at_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import oomguard.cgroup.discover as dsc
    from oomguard.errors import UsageError

    monkeypatch.setattr(dsc, "find_cgroup2_mount", lambda: None)
    with pytest.raises(UsageError) as exc:
        status.run(as_json=False, root_opt=None, state_dir=str(tmp_path), mount=None, echo=print)
    assert "no cgroup2 mount" in exc.value.message
    assert exc.value.hint is not None and "--state-dir" in exc.value.hint
    # With the degraded supervisor's state dir, the same host shows its services.
    write_state(tmp_path / "s", DEGRADED)
    out: list[str] = []
    rc = status.run(
        as_json=False, root_opt=None, state_dir=str(tmp_path / "s"), mount=None, echo=out.append
    )
    assert rc == 0 and "backup" in out[0]


def test_a_symlinked_state_json_is_not_read(tmp_path: Path) -> None:
    target = tmp_path / "target.json"
    target.write_text('{"version": 1, "services": {}, "secret": "x"}')
    (tmp_path / "state.json").symlink_to(target)
    doc, problem = status.read_state_problem(str(tmp_path))
    assert doc is None
    assert problem is not None and "symlink" in problem


def test_root_escaping_the_mount_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: exit 1 (a runtime failure) for what is a bad option value.
    assert status.main(["--root", "../..", "--mount", str(tmp_path)]) == 2
    assert "--root" in capsys.readouterr().err
