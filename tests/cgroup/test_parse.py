from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oomguard.cgroup.parse import (
    CgroupParseError,
    Pressure,
    PsiLine,
    parse_controllers,
    parse_flat_keyed,
    parse_int,
    parse_limit,
    parse_meminfo,
    parse_pressure,
    parse_procs,
)
from oomguard.errors import CgroupError

# Formats as Documentation/admin-guide/cgroup-v2.rst shows them and a 6.1 kernel prints them.
MEMORY_EVENTS = "low 0\nhigh 12\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n"
MEMORY_STAT = """anon 1052672
file 4096
kernel 262144
kernel_stack 32768
pagetables 53248
sec_pagetables 0
percpu 0
sock 0
vmalloc 0
shmem 0
zswap 0
zswapped 0
file_mapped 0
file_dirty 0
file_writeback 0
swapcached 0
anon_thp 0
file_thp 0
shmem_thp 0
inactive_anon 1040384
active_anon 12288
inactive_file 4096
active_file 0
unevictable 0
slab_reclaimable 9496
slab_unreclaimable 84536
slab 94032
workingset_refault_anon 0
workingset_refault_file 0
workingset_activate_anon 0
workingset_activate_file 0
workingset_restore_anon 0
workingset_restore_file 0
workingset_nodereclaim 0
pgscan 0
pgsteal 0
pgscan_kswapd 0
pgscan_direct 0
pgsteal_kswapd 0
pgsteal_direct 0
pgfault 1331
pgmajfault 0
pgrefill 0
pgactivate 3
pgdeactivate 0
pglazyfree 0
pglazyfreed 0
thp_fault_alloc 0
thp_collapse_alloc 0
"""
PSI_BOTH = (
    "some avg10=0.00 avg60=1.25 avg300=0.33 total=123456\n"
    "full avg10=0.00 avg60=0.50 avg300=0.11 total=45678\n"
)


def test_memory_events() -> None:
    ev = parse_flat_keyed(MEMORY_EVENTS)
    assert ev == {"low": 0, "high": 12, "max": 3, "oom": 1, "oom_kill": 1, "oom_group_kill": 0}


def test_memory_stat_keeps_every_key() -> None:
    st = parse_flat_keyed(MEMORY_STAT)
    assert len(st) == MEMORY_STAT.count("\n")
    assert st["anon"] == 1052672
    assert st["slab"] == 94032
    assert st["thp_collapse_alloc"] == 0


def test_unknown_keys_kept() -> None:
    # A newer kernel's key must survive so callers can diff it.
    assert parse_flat_keyed("oom 1\nsock_throttled 7\n")["sock_throttled"] == 7


def test_cgroup_events() -> None:
    assert parse_flat_keyed("populated 1\nfrozen 0\n") == {"populated": 1, "frozen": 0}


@pytest.mark.parametrize(
    "text", ["", "\n", "   \n\n", "oom 1", "oom 1\n\n", "  oom   1  \n", "oom\t1\r\n"]
)
def test_flat_keyed_tolerates_layout(text: str) -> None:
    assert parse_flat_keyed(text) == ({} if "oom" not in text else {"oom": 1})


@pytest.mark.parametrize(
    "text",
    [
        "oom",
        "oom 1 2",
        "oom one",
        "oom 1\noom 2",
        "oom 1.5",
        "oom 0x10",
        "oom \u0661",  # an Arabic-Indic digit: a regex \d would accept it
    ],
)
def test_flat_keyed_rejects_malformed(text: str) -> None:
    with pytest.raises(CgroupParseError) as info:
        parse_flat_keyed(text, source="/a/memory.events")
    assert "/a/memory.events" in str(info.value)


def test_parse_error_is_value_error_and_cgroup_error() -> None:
    with pytest.raises(ValueError):
        parse_int("x")
    with pytest.raises(CgroupError):
        parse_int("x")


def test_bad_line_is_quoted() -> None:
    with pytest.raises(CgroupParseError, match="'garbage here now'"):
        parse_flat_keyed("oom 1\ngarbage here now\n")


@pytest.mark.parametrize(("text", "value"), [("0\n", 0), ("536870912\n", 536870912), (" 7 ", 7)])
def test_parse_int(text: str, value: int) -> None:
    assert parse_int(text) == value


@pytest.mark.parametrize("text", ["", "max", "1.0", "1 2", "abc", "12k"])
def test_parse_int_rejects(text: str) -> None:
    with pytest.raises(CgroupParseError):
        parse_int(text)


@pytest.mark.parametrize(
    ("text", "value"), [("max\n", None), ("max", None), ("0\n", 0), ("33554432\n", 33554432)]
)
def test_parse_limit(text: str, value: int | None) -> None:
    assert parse_limit(text) == value


@pytest.mark.parametrize("text", ["", "MAX", "-1", "infinity", "1G"])
def test_parse_limit_rejects(text: str) -> None:
    with pytest.raises(CgroupParseError):
        parse_limit(text)


def test_parse_procs() -> None:
    assert parse_procs("1\n42\n4194304\n") == [1, 42, 4194304]
    assert parse_procs("") == []
    assert parse_procs("\n") == []


@pytest.mark.parametrize("text", ["0\n", "-1\n", "12a\n", "1 2\n", "x"])
def test_parse_procs_rejects(text: str) -> None:
    with pytest.raises(CgroupParseError):
        parse_procs(text)


def test_parse_controllers() -> None:
    assert parse_controllers("cpuset cpu io memory hugetlb pids rdma misc\n") == frozenset(
        {"cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc"}
    )
    assert parse_controllers("\n") == frozenset()
    assert parse_controllers("") == frozenset()


@pytest.mark.parametrize("text", ["+memory", "memory,pids", "Memory"])
def test_parse_controllers_rejects(text: str) -> None:
    with pytest.raises(CgroupParseError):
        parse_controllers(text)


def test_pressure_both_lines() -> None:
    assert parse_pressure(PSI_BOTH) == Pressure(
        some=PsiLine(avg10=0.0, avg60=1.25, avg300=0.33, total_us=123456),
        full=PsiLine(avg10=0.0, avg60=0.5, avg300=0.11, total_us=45678),
    )


def test_pressure_without_full() -> None:
    # cpu.pressure before 5.13 (and at some roots) has only the "some" line.
    p = parse_pressure("some avg10=5.00 avg60=2.00 avg300=1.00 total=99\n")
    assert p.full is None
    assert p.some.avg10 == 5.0
    assert p.some.total_us == 99


def test_pressure_tolerates_extra_fields_and_order() -> None:
    p = parse_pressure(
        "full avg10=1 avg60=2 avg300=3 total=4 new=9\nsome total=8 avg300=7 avg60=6 avg10=5\n"
    )
    assert p.some == PsiLine(5.0, 6.0, 7.0, 8)
    assert p.full == PsiLine(1.0, 2.0, 3.0, 4)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",  # no "some"
        "some avg10=0.00 avg60=0.00 avg300=0.00\n",  # no total
        "some avg10=0.00 avg60=0.00 total=0\n",  # no avg300
        "some avg10=x avg60=0.00 avg300=0.00 total=0\n",
        "some avg10=-1.00 avg60=0.00 avg300=0.00 total=0\n",
        "some avg10=nan avg60=0.00 avg300=0.00 total=0\n",
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=1.5\n",
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=-3\n",
        "some avg10 avg60=0.00 avg300=0.00 total=0\n",
        "some avg10=0.00 avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        "some avg10=0 avg60=0 avg300=0 total=0\nsome avg10=0 avg60=0 avg300=0 total=0\n",
        "partial avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    ],
)
def test_pressure_rejects(text: str) -> None:
    with pytest.raises(CgroupParseError):
        parse_pressure(text, source="memory.pressure")


@given(
    st.dictionaries(
        st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=20),
        st.integers(0, 2**63 - 1),
        max_size=30,
    )
)
def test_flat_keyed_roundtrip(values: dict[str, int]) -> None:
    text = "".join(f"{k} {v}\n" for k, v in values.items())
    assert parse_flat_keyed(text) == values


@given(st.lists(st.integers(1, 4194304), max_size=50))
def test_procs_roundtrip(pids: list[int]) -> None:
    assert parse_procs("".join(f"{p}\n" for p in pids)) == pids


# The token checks are plain string tests (no regex compile at import); they must accept exactly
# what the documented patterns accept, including refusing non-ASCII digits and a trailing "\n".
_TOKEN_ALPHABET = st.sampled_from([*"-0123456789az_AZ \n+.", "\u0661", "\u00b2", "\u212a"])


@given(st.text(_TOKEN_ALPHABET, max_size=6))
def test_token_checks_match_their_patterns(token: str) -> None:
    import re

    from oomguard.cgroup import parse

    assert parse._is_int(token) == bool(re.match(r"-?[0-9]+\Z", token))
    assert parse._is_digits(token) == bool(re.match(r"[0-9]+\Z", token))
    assert parse._is_controller(token) == bool(re.match(r"[a-z_][a-z0-9_]*\Z", token))


@pytest.mark.parametrize("text", ["\u0661", "1\u00b2", "-", "--1", "+1"])
def test_parse_int_rejects_non_ascii_digits_and_bare_signs(text: str) -> None:
    with pytest.raises(CgroupParseError):
        parse_int(text)


def test_psi_records_are_immutable_values() -> None:
    import copy
    import pickle

    line = PsiLine(0.12, 0.05, 0.01, 12345)
    same = PsiLine(avg10=0.12, avg60=0.05, avg300=0.01, total_us=12345)
    pressure = Pressure(line, None)
    assert line == same and hash(line) == hash(same)
    assert line != PsiLine(0.12, 0.05, 0.01, 12346)
    assert line != (0.12, 0.05, 0.01, 12345)  # a value, not a tuple
    assert pressure == Pressure(some=same, full=None) and pressure != Pressure(line, line)
    assert {pressure: 1}[Pressure(same, None)] == 1
    assert repr(line) == "PsiLine(avg10=0.12, avg60=0.05, avg300=0.01, total_us=12345)"
    assert repr(pressure) == f"Pressure(some={line!r}, full=None)"
    for value in (line, pressure):
        assert copy.deepcopy(value) == value
        assert pickle.loads(pickle.dumps(value)) == value
    with pytest.raises(AttributeError):
        line.avg10 = 1.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del pressure.full
    with pytest.raises(AttributeError):
        line.extra = 1  # type: ignore[attr-defined]
    match pressure:
        case Pressure(PsiLine(avg10), None):
            assert avg10 == 0.12
        case _:
            pytest.fail("positional match on Pressure/PsiLine failed")


def test_parse_meminfo_converts_kb_to_bytes_and_keeps_counts() -> None:
    text = "MemTotal:        1000 kB\nMemAvailable:     250 kB\nHugePages_Total:       0\n"
    assert parse_meminfo(text) == {
        "MemTotal": 1024000,
        "MemAvailable": 256000,
        "HugePages_Total": 0,
    }


@pytest.mark.parametrize("line", ["MemTotal 1000 kB", "MemTotal: x kB", "MemTotal: 1 MB", ":1"])
def test_parse_meminfo_rejects_malformed_lines(line: str) -> None:
    with pytest.raises(CgroupParseError):
        parse_meminfo(line)
