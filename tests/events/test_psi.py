"""PSI triggers on the host's /proc/pressure/memory (nothing is written under /sys/fs/cgroup)."""

from __future__ import annotations

import select
from pathlib import Path

import pytest

from oomguard.errors import CgroupError, Vanished
from oomguard.events.loop import EPOLLPRI, Loop
from oomguard.events.psi import PsiWatch, trigger_line
from oomguard.proc import can_lower_oom_score_adj

SYSTEM = Path("/proc/pressure/memory")
needs_psi = pytest.mark.skipif(not SYSTEM.exists(), reason="no /proc/pressure (PSI disabled)")
# CAP_SYS_RESOURCE decides both oom_score_adj lowering and privileged PSI windows.
PRIVILEGED = can_lower_oom_score_adj()


def test_trigger_line_is_microseconds_nul_terminated() -> None:
    assert trigger_line("some", 0.15, 2) == b"some 150000 2000000\0"
    assert trigger_line("full", 1, 1) == b"full 1000000 1000000\0"


@pytest.mark.parametrize(
    ("kind", "stall", "window", "match"),
    [
        ("most", 0.1, 2, "kind 'most' is not valid"),
        ("some", 0.1, 0.1, "window 0.1s is out of range"),
        ("some", 0.1, 11, "window 11s is out of range"),
        ("some", 3, 2, "stall 3s must be > 0 and <= its window 2s"),
        ("some", 0, 2, "stall 0s must be > 0"),
    ],
)
def test_trigger_line_rejects_what_the_kernel_would(
    kind: str, stall: float, window: float, match: str
) -> None:
    with pytest.raises(CgroupError, match=match) as ei:
        trigger_line(kind, stall, window)
    assert ei.value.hint


@needs_psi
def test_armed_trigger_registers_for_epollpri_only() -> None:
    # 1.9 s of stall in a 2 s window: it will not fire on an idle test host.
    with PsiWatch(SYSTEM, "some", 1.9, 2.0) as trig, Loop() as loop:
        fd = trig.fileno()
        # The pressure file is always POLLIN (a seq file): that is not "fired".
        p = select.poll()
        p.register(fd, select.POLLIN)
        assert p.poll(0) == [(fd, select.POLLIN)]
        seen: list[int] = []
        loop.add(fd, EPOLLPRI, seen.append)
        assert loop.run_once(0) == 0 and seen == []
        loop.remove(fd)
    assert trig.closed
    with pytest.raises(ValueError, match="closed"):
        trig.fileno()
    assert "fd=-1" in repr(trig)


@needs_psi
@pytest.mark.skipif(PRIVILEGED, reason="with CAP_SYS_RESOURCE any window is allowed")
def test_unprivileged_window_must_be_a_multiple_of_two_seconds() -> None:
    with pytest.raises(CgroupError) as ei:
        PsiWatch(SYSTEM, "some", 0.1, 1.0)
    assert "refused PSI trigger 'some 100000 1000000'" in ei.value.message
    assert ei.value.hint and "multiple of 2s" in ei.value.hint


def test_missing_cgroup_is_vanished(tmp_path: Path) -> None:
    with pytest.raises(Vanished, match="is gone"):
        PsiWatch(tmp_path / "gone" / "memory.pressure")


def test_missing_pressure_file_explains_psi_is_off(tmp_path: Path) -> None:
    with pytest.raises(CgroupError) as ei:
        PsiWatch(tmp_path / "memory.pressure")
    assert not isinstance(ei.value, Vanished)
    assert ei.value.hint and "psi=1" in ei.value.hint


def test_a_file_that_refuses_triggers_is_an_error(tmp_path: Path) -> None:
    # /dev/full refuses every write with ENOSPC: stands in for an unexpected kernel answer,
    # and proves the fd is closed on failure.
    with pytest.raises(CgroupError, match="cannot arm PSI trigger 'some 100000 2000000'"):
        PsiWatch(Path("/dev/full"))
