"""`oomguard check` and the other OOM killers: detection from /proc, and the advice."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from click.testing import CliRunner

from oomguard.cgroup.verdict import CheckLevel, Verdict, assess
from oomguard.cli import check, killers
from oomguard.cli.check import with_others
from oomguard.cli.killers import Killer, comm_of, earlyoom_flags, identify, items, scan
from tests.cli.test_check import READY

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def _proc(root: Path, pid: int, comm: str, argv: list[str]) -> None:
    d = root / str(pid)
    d.mkdir()
    (d / "comm").write_text(comm + "\n")
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def test_identify_by_comm() -> None:
    assert identify("systemd-oomd\n") == "systemd-oomd"
    assert identify("earlyoom") == "earlyoom"
    assert identify("oomd") == "oomd"
    assert identify("oomd_bin") == "oomd"
    assert identify("oomguard") is None
    assert identify("postgres") is None


def test_scan_reads_comm_then_cmdline_of_matches_only(tmp_path: Path) -> None:
    _proc(tmp_path, 1, "init", ["/sbin/init"])
    _proc(tmp_path, 310, "earlyoom", ["/usr/bin/earlyoom", "-m", "5", "--avoid", "^postgres$"])
    _proc(tmp_path, 77, "systemd-oomd", ["/lib/systemd/systemd-oomd"])
    (tmp_path / "self").mkdir()  # not a pid
    (tmp_path / "999").mkdir()  # gone mid-scan: no comm
    found = scan(str(tmp_path))
    assert found == [
        Killer("systemd-oomd", 77, ("/lib/systemd/systemd-oomd",)),
        Killer("earlyoom", 310, ("/usr/bin/earlyoom", "-m", "5", "--avoid", "^postgres$")),
    ]
    assert scan(str(tmp_path / "nope")) == []


def test_no_killer_is_one_ok_item() -> None:
    [item] = items([])
    assert item.level is CheckLevel.OK and "none running" in item.detail


def test_each_killer_says_what_it_means() -> None:
    found = [
        Killer("earlyoom", 310, ("earlyoom",)),
        Killer("oomd", 40, ("oomd", "--config", "/etc/oomd.json")),
        Killer("systemd-oomd", 77),
    ]
    by_key = {i.key: i for i in items(found)}
    assert set(by_key) == {"earlyoom", "oomd", "systemd-oomd"}
    assert all(i.level is CheckLevel.WARN and i.fix for i in by_key.values())
    assert "user.oomd_avoid" in by_key["systemd-oomd"].detail
    assert "ManagedOOMPreference=avoid" in (by_key["systemd-oomd"].fix or "")
    assert "user.oomd_prefer" in by_key["oomd"].detail
    assert "(defaults)" in by_key["earlyoom"].detail
    assert "--avoid '^(oomguard|PRIMARY)$'" in (by_key["earlyoom"].fix or "")


def test_earlyoom_advice_is_exact_with_the_config_names() -> None:
    [item] = items(
        [Killer("earlyoom", 310, ("earlyoom", "-m", "10"))],
        primary_comm="postgres",
        sidecar_comms=["pgbouncer", "backup.sh", "postgres"],
    )
    assert "args: -m 10" in item.detail
    assert item.fix is not None
    assert "--avoid '^(oomguard|postgres)$' --prefer '^(backup\\.sh|pgbouncer)$'" in item.fix
    assert earlyoom_flags(["a"], []) == "--avoid '^(a)$'"


def test_comm_of_is_the_base_name_cut_to_15_bytes() -> None:
    assert comm_of(["/usr/lib/postgresql/15/bin/postgres", "-D", "/x"]) == "postgres"
    assert comm_of(["a-very-long-program-name"]) == "a-very-long-pro"


def test_killers_warn_but_do_not_change_the_verdict() -> None:
    a = with_others(assess(READY), items([Killer("systemd-oomd", 77)]))
    assert a.verdict is Verdict.READY
    assert any(i.key == "systemd-oomd" and i.level is CheckLevel.WARN for i in a.items)


def test_command_lists_the_killers_and_uses_the_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import oomguard.cgroup.discover as dsc

    monkeypatch.setattr(dsc, "discover", lambda: READY)
    monkeypatch.setattr(killers, "scan", lambda: [Killer("earlyoom", 310, ("earlyoom",))])
    cfg = tmp_path / "oomguard.toml"
    cfg.write_text(
        '[service.db]\ncommand = ["/usr/bin/postgres"]\nrole = "primary"\n'
        '[service.pool]\ncommand = "pgbouncer /etc/pgb.ini"\n'
    )
    res = CliRunner().invoke(check.command, ["--json", "--config", str(cfg)], standalone_mode=False)
    assert res.exception is None and res.return_value == 0
    keys = {i["key"]: i for i in json.loads(res.output)["items"]}
    assert keys["earlyoom"]["level"] == "warn"
    assert "--avoid '^(oomguard|postgres)$' --prefer '^(pgbouncer)$'" in keys["earlyoom"]["fix"]
