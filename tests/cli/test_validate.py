"""`oomguard validate`: malformed configs exit 2 with one line per problem naming the field path;
valid ones exit 0 with the tree; --schema and --json; no traceback, ever."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from oomguard.cli.main import main

if TYPE_CHECKING:
    from pathlib import Path

PRIMARY = """
[service.db]
command = ["postgres", "-D", "/data"]
role = "primary"
"""

GOOD = """
[oomguard]
reserve = "32M"
memory_max = "2G"
cgroup = "/oomguard"

[slice.sidecars]
memory_max = "512M"

[service.db]
command = ["postgres", "-D", "/data"]
role = "primary"
memory_high = "300M"
memory_max = "400M"
stop_signal = "SIGINT"
stop_timeout = "30s"

[service.backup]
command = "python3 backup.py"
slice = "sidecars"
criticality = 10
depends_on = ["db"]
memory_max = "256M"
"""

# (id, TOML text, the dotted field path the error must name, a fragment of the message)
MALFORMED: list[tuple[str, str, str, str]] = [
    (
        "size-garbage",
        PRIMARY + 'memory_max = "12Q"',
        "service.db.memory_max",
        '"12Q" is not a size',
    ),
    ("size-negative", PRIMARY + "memory_max = -5", "service.db.memory_max", "negative"),
    ("size-float", PRIMARY + "memory_high = 1.5", "service.db.memory_high", "not a size"),
    ("size-bool", PRIMARY + "swap_max = true", "service.db.swap_max", "not a size"),
    ("size-too-large", PRIMARY + 'memory_max = "9000P"', "service.db.memory_max", "too large"),
    ("reserve-max", '[oomguard]\nreserve = "max"\n' + PRIMARY, "oomguard.reserve", "not allowed"),
    ("min-max", PRIMARY + 'memory_min = "max"', "service.db.memory_min", "not allowed"),
    ("duration-garbage", PRIMARY + 'stop_timeout = "soon"', "service.db.stop_timeout", "duration"),
    ("duration-zero", PRIMARY + 'stop_timeout = "0s"', "service.db.stop_timeout", "more than 0"),
    (
        "sample-fast",
        '[oomguard.pressure]\nsample_interval = "500ms"\n' + PRIMARY,
        "oomguard.pressure.sample_interval",
        "at least 1s",
    ),
    (
        "typo-key",
        PRIMARY + 'memroy_max = "1G"',
        "service.db.memroy_max",
        'did you mean "memory_max"',
    ),
    ("typo-table", PRIMARY + '[services.x]\ncommand = "x"', "services", 'did you mean "service"'),
    ("typo-oomguard", '[oomguard]\nreserv = "1M"\n' + PRIMARY, "oomguard.reserv", '"reserve"'),
    (
        "typo-pressure",
        "[oomguard.pressure]\nheadroom = 0.2\n" + PRIMARY,
        "oomguard.pressure.headroom",
        '"headroom_min"',
    ),
    (
        "service-key-in-slice",
        PRIMARY + '[slice.side]\ncommand = "x"',
        "slice.side.command",
        "[service.side]",
    ),
    ("no-primary", '[service.a]\ncommand = "a"', "service", 'no service has role = "primary"'),
    (
        "two-primaries",
        PRIMARY + '[service.b]\ncommand = "b"\nrole = "primary"',
        "service.b.role",
        "2 services are primary (db, b)",
    ),
    ("no-services", '[oomguard]\nreserve = "1M"', "service", "no services defined"),
    (
        "name-uppercase",
        PRIMARY + '[service.Backup]\ncommand = "b"',
        "service.Backup",
        "not a valid name",
    ),
    (
        "name-reserved",
        PRIMARY + '[service.supervisor]\ncommand = "b"',
        "service.supervisor",
        "reserved",
    ),
    (
        "name-shared",
        PRIMARY + '[slice.x]\n[service.x]\ncommand = "x"',
        "service.x",
        "share one namespace",
    ),
    (
        "unknown-slice",
        PRIMARY + '[slice.sidecars]\n[service.b]\ncommand = "b"\nslice = "sidecar"',
        "service.b.slice",
        'did you mean "sidecars"',
    ),
    (
        "unknown-parent",
        PRIMARY + '[slice.a]\nparent = "nope"',
        "slice.a.parent",
        'no slice named "nope"',
    ),
    (
        "parent-is-service",
        PRIMARY + '[slice.a]\nparent = "db"',
        "slice.a.parent",
        '"db" is a service',
    ),
    (
        "slice-cycle",
        PRIMARY + '[slice.a]\nparent = "b"\n[slice.b]\nparent = "a"',
        "slice.a.parent",
        "a -> b -> a",
    ),
    (
        "depends-unknown",
        PRIMARY + 'depends_on = ["cache"]',
        "service.db.depends_on",
        'no service named "cache"',
    ),
    (
        "depends-cycle",
        PRIMARY + 'depends_on = ["b"]\n[service.b]\ncommand = "b"\ndepends_on = ["db"]',
        "service.db.depends_on",
        "db -> b -> db",
    ),
    ("depends-self", PRIMARY + 'depends_on = ["db"]', "service.db.depends_on", "depends on itself"),
    (
        "depends-twice",
        PRIMARY + '[service.b]\ncommand = "b"\ndepends_on = ["db", "db"]',
        "service.b.depends_on",
        "listed twice",
    ),
    ("depends-type", PRIMARY + "depends_on = 5", "service.db.depends_on", "not a list"),
    (
        "high-above-max",
        PRIMARY + 'memory_high = "500M"\nmemory_max = "400M"',
        "service.db.memory_high",
        "memory_high (500M) is above memory_max (400M)",
    ),
    (
        "min-above-low",
        PRIMARY + 'memory_min = "200M"\nmemory_low = "100M"',
        "service.db.memory_min",
        "is above memory_low",
    ),
    (
        "slice-high-above-max",
        PRIMARY + '[slice.s]\nmemory_high = "2G"\nmemory_max = "1G"',
        "slice.s.memory_high",
        "is above memory_max",
    ),
    ("adj-minus-1000", PRIMARY + "oom_score_adj = -1000", "service.db.oom_score_adj", "unkillable"),
    ("adj-too-high", PRIMARY + "oom_score_adj = 1001", "service.db.oom_score_adj", "-999..1000"),
    (
        "criticality-range",
        PRIMARY + '[service.b]\ncommand = "b"\ncriticality = 100',
        "service.b.criticality",
        "0..99",
    ),
    (
        "criticality-primary",
        PRIMARY + "criticality = 10",
        "service.db.criticality",
        "the primary has no criticality",
    ),
    ("signal-name", PRIMARY + 'stop_signal = "SIGFOO"', "service.db.stop_signal", "not a signal"),
    ("signal-number", PRIMARY + "stop_signal = 999", "service.db.stop_signal", "not a signal"),
    (
        "command-empty-list",
        '[service.db]\nrole = "primary"\ncommand = []',
        "service.db.command",
        "is empty",
    ),
    (
        "command-empty-string",
        '[service.db]\nrole = "primary"\ncommand = "  "',
        "service.db.command",
        "is empty",
    ),
    (
        "command-quote",
        '[service.db]\nrole = "primary"\ncommand = "python3 \'x"',
        "service.db.command",
        "split like a shell",
    ),
    (
        "command-ints",
        '[service.db]\nrole = "primary"\ncommand = [1, 2]',
        "service.db.command",
        "must be a string",
    ),
    ("command-missing", '[service.db]\nrole = "primary"', "service.db.command", "is required"),
    (
        "role-invalid",
        '[service.db]\ncommand = "x"\nrole = "boss"',
        "service.db.role",
        '"boss" is not allowed',
    ),
    ("restart-invalid", PRIMARY + 'restart = "sometimes"', "service.db.restart", "not allowed"),
    (
        "psi-syntax",
        '[oomguard.pressure]\npsi_trigger = "sometimes 1s 2s"\n' + PRIMARY,
        "oomguard.pressure.psi_trigger",
        "not a PSI trigger",
    ),
    (
        "psi-window",
        '[oomguard.pressure]\npsi_trigger = "some 1s 20s"\n' + PRIMARY,
        "oomguard.pressure.psi_trigger",
        "500ms..10s",
    ),
    (
        "psi-stall",
        '[oomguard.pressure]\npsi_trigger = "some 3s 2s"\n' + PRIMARY,
        "oomguard.pressure.psi_trigger",
        "at most the window",
    ),
    (
        "headroom-range",
        "[oomguard.pressure]\nheadroom_min = 1.5\n" + PRIMARY,
        "oomguard.pressure.headroom_min",
        "fraction",
    ),
    (
        "avg10-zero",
        "[oomguard.pressure]\npsi_some_avg10 = 0\n" + PRIMARY,
        "oomguard.pressure.psi_some_avg10",
        "percentage",
    ),
    (
        "listen-no-port",
        '[oomguard]\nmetrics_listen = "localhost"\n' + PRIMARY,
        "oomguard.metrics_listen",
        "host:port",
    ),
    (
        "listen-port-range",
        '[oomguard]\nmetrics_listen = "0.0.0.0:70000"\n' + PRIMARY,
        "oomguard.metrics_listen",
        "host:port",
    ),
    ("cgroup-root", '[oomguard]\ncgroup = "/"\n' + PRIMARY, "oomguard.cgroup", "cgroup2 root"),
    (
        "cgroup-dotdot",
        '[oomguard]\ncgroup = "/a/../b"\n' + PRIMARY,
        "oomguard.cgroup",
        'invalid component ".."',
    ),
    (
        "state-dir-relative",
        '[oomguard]\nstate_dir = "run"\n' + PRIMARY,
        "oomguard.state_dir",
        "relative",
    ),
    ("cwd-relative", PRIMARY + 'cwd = "data"', "service.db.cwd", "relative"),
    ("env-bool", PRIMARY + "env = { DEBUG = true }", "service.db.env", "DEBUG = true"),
    ("evictable-primary", PRIMARY + "evictable = true", "service.db.evictable", "never evictable"),
    (
        "watermark-sidecar",
        PRIMARY + '[service.b]\ncommand = "b"\nwatermark = "1G"',
        "service.b.watermark",
        "only applies to the primary",
    ),
    (
        "backoff-order",
        PRIMARY + 'backoff_initial = "1m"\nbackoff_max = "10s"',
        "service.db.backoff_initial",
        "above backoff_max",
    ),
    (
        "reserve-vs-max",
        '[oomguard]\nreserve = "1G"\nmemory_max = "512M"\n' + PRIMARY,
        "oomguard.reserve",
        "nothing would be left",
    ),
    ("mode-invalid", '[oomguard]\nmode = "dry-run"\n' + PRIMARY, "oomguard.mode", "not allowed"),
    (
        "log-format",
        '[oomguard]\nlog_format = "xml"\n' + PRIMARY,
        "oomguard.log_format",
        "not allowed",
    ),
    ("log-mode", PRIMARY + 'log = "file"', "service.db.log", "not allowed"),
    ("max-restarts-zero", PRIMARY + "max_restarts = 0", "service.db.max_restarts", "out of range"),
    ("oom-group-string", PRIMARY + 'oom_group = "yes"', "service.db.oom_group", "boolean"),
    ("essential-string", PRIMARY + 'essential = "true"', "service.db.essential", "boolean"),
    ("service-not-table", '[service]\ndb = "postgres"', "service.db", "must be a table"),
    ("user-bool", PRIMARY + "user = true", "service.db.user", "not a user/group"),
    (
        "slice-pressure-bad",
        PRIMARY + '[slice.s.pressure]\ncooldown = "later"',
        "slice.s.pressure.cooldown",
        "not a duration",
    ),
    (
        "slice-pressure-typo",
        PRIMARY + '[slice.s.pressure]\ncooldwn = "1s"',
        "slice.s.pressure.cooldwn",
        '"cooldown"',
    ),
    ("toml-syntax", "[service.db\ncommand = 1", "line 1, column", "TOML syntax error"),
]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    code = exc.value.code
    assert isinstance(code, int)
    return code, out.out, out.err


def write(tmp_path: Path, text: str, name: str = "oomguard.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_enough_distinct_malformed_configs() -> None:
    assert len({case[0] for case in MALFORMED}) == len(MALFORMED) >= 35
    assert len({case[1] for case in MALFORMED}) == len(MALFORMED)


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [pytest.param(text, path, frag, id=case) for case, text, path, frag in MALFORMED],
)
def test_malformed_config_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, path: str, fragment: str
) -> None:
    source = write(tmp_path, text)
    code, out, err = run(["validate", source], capsys)
    assert code == 2
    assert "Traceback" not in out + err
    assert out == ""
    lines = [line for line in err.splitlines() if line.startswith("oomguard: error: ")]
    assert lines, err
    # Every problem line names the file, then the field path.
    assert all(line.startswith(f"oomguard: error: {source}: ") for line in lines)
    matching = [line for line in lines if path in line and fragment in line]
    assert matching, f"no line names {path!r} with {fragment!r}:\n{err}"


def test_every_problem_gets_its_own_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = PRIMARY + 'memory_max = "12Q"\nstop_signal = "NOPE"\nrestart = "sometimes"\n'
    code, _, err = run(["validate", write(tmp_path, text)], capsys)
    assert code == 2
    paths = [line.split(": ")[3] for line in err.splitlines()]
    assert paths == ["service.db.memory_max", "service.db.restart", "service.db.stop_signal"]


def test_missing_file_names_the_path_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "nope.toml")
    code, _, err = run(["validate", missing], capsys)
    assert code == 2
    assert f"oomguard: error: {missing}: no such file" in err
    assert "oomguard: hint: check the path" in err


def test_valid_config_prints_the_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write(tmp_path, GOOD)
    code, out, err = run(["validate", source], capsys)
    assert code == 0
    assert err == ""
    assert out.startswith(f"{source}: ok: 2 services (primary db), 1 slice, mode enforce\n")
    assert "tree root /oomguard  max=2G" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "min=32M" in rows["supervisor/"]
    assert "max=512M" in rows["sidecars/"]
    assert "high=300M max=400M" in rows["db/"]
    assert "oom_score_adj=-999" in rows["db/"]
    assert "oom_score_adj=900 criticality=10" in rows["sidecars/backup/"]
    assert "oom.group" in rows["sidecars/backup/"]
    assert "start order: db, backup" in out


def test_warnings_are_printed_and_do_not_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD.replace('memory_max = "256M"', 'memory_max = "1G"')
    code, out, err = run(["validate", write(tmp_path, text)], capsys)
    assert code == 0
    assert "ok:" in out
    assert (
        "warning: service.backup.memory_max: 1G is above its parent's slice.sidecars.memory_max"
        in err
    )


def test_json_success(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["validate", "--json", write(tmp_path, GOOD)], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["ok"] is True
    assert data["primary"] == "db"
    assert data["root"] == "/oomguard"
    assert data["reserve"] == 32 << 20
    by_name = {c["name"]: c for c in data["cgroups"]}
    assert by_name["backup"]["path"] == "sidecars/backup"
    assert by_name["backup"]["oom_score_adj"] == 900
    assert by_name["db"]["memory_high"] == 300 << 20
    assert by_name["db"]["criticality"] is None
    assert data["start_order"] == ["db", "backup"]
    assert data["warnings"] == []


def test_json_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        ["validate", "--json", write(tmp_path, PRIMARY + "oom_score_adj = -1000")], capsys
    )
    assert code == 2
    data = json.loads(out)
    assert data["ok"] is False
    assert [p["path"] for p in data["problems"]] == ["service.db.oom_score_adj"]
    assert "service.db.oom_score_adj" in err


def test_schema_needs_no_config(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["validate", "--schema"], capsys)
    assert code == 0
    schema = json.loads(out)
    assert set(schema["properties"]) == {"oomguard", "slice", "service", "hooks"}
    assert schema["additionalProperties"] is False
    service = schema["$defs"]["ServiceConfig"]
    assert "command" in service["required"]
    assert {"type": "string"} in service["properties"]["memory_max"]["anyOf"]


def test_no_config_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["validate"], capsys)
    assert code == 2
    assert "validate needs a CONFIG file" in err
    assert "--schema" in err


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_subprocess_bad_config_has_no_traceback(tmp_path: Path) -> None:
    proc = _python("-m", "oomguard", "validate", write(tmp_path, PRIMARY + 'memory_max = "12Q"'))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert 'service.db.memory_max: "12Q" is not a size; use e.g. 512M' in proc.stderr


def test_subprocess_good_config(tmp_path: Path) -> None:
    proc = _python("-m", "oomguard", "validate", write(tmp_path, GOOD))
    assert proc.returncode == 0, proc.stderr
    assert "ok: 2 services" in proc.stdout


@pytest.mark.parametrize(
    "modules",
    [
        "oomguard.cli.main",
        "oomguard.units",
        "oomguard.errors",
        "oomguard.cgroup.spec",
        "oomguard.config",
        "oomguard.cli.validate",
    ],
)
def test_light_modules_do_not_import_pydantic(modules: str) -> None:
    code = (
        f"import sys, {modules}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'pydantic_core'))\n"
        "print(','.join(bad))\n"
    )
    proc = _python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_help_does_not_import_pydantic() -> None:
    code = (
        "import sys\n"
        "from oomguard.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "print('pydantic' in sys.modules)\n"
    )
    proc = _python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("False")


def test_schema_accepts_a_good_config_and_refuses_a_typo(
    capsys: pytest.CaptureFixture[str],
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import tomllib

    code, out, _ = run(["validate", "--schema"], capsys)
    assert code == 0
    schema = json.loads(out)
    jsonschema.validate(tomllib.loads(GOOD), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(tomllib.loads(GOOD + 'memroy_max = "1G"\n'), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(tomllib.loads(GOOD + "[service.Bad]\ncommand = 'x'\n"), schema)
