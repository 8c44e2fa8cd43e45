"""The primary is protected, not capped, on a real kernel: the derived memory.low lands on the
primary's cgroup and on every cgroup above it up to the tree root (protection is hierarchical:
the kernel caps a child's effective memory.low at its parent's), and nothing limits it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.kernel.support import start_run

if TYPE_CHECKING:
    from pathlib import Path

MiB = 1 << 20


def _read(cgroup: Path, name: str) -> str:
    return (cgroup / name).read_text().strip()


def test_the_primary_gets_the_derived_memory_low_and_no_cap(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    config = {
        "oomguard": {"memory_max": "256M", "reserve": "16M"},
        "slice": {"sidecars": {"memory_max": "96M"}, "inner": {}},
        "service": {
            "db": {"role": "primary", "command": ["sleep", "100000"], "slice": "inner"},
            "side": {"command": ["sleep", "100000"], "slice": "sidecars"},
        },
    }
    low = (256 - 16 - 96) * MiB
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        og.wait_running("db", "side")
        db, inner, root = og.cgroup("inner", "db"), og.cgroup("inner"), og.cgroup()
        assert int(_read(db, "memory.low")) == low
        assert _read(db, "memory.high") == "max"
        assert _read(db, "memory.max") == "max"
        # The slice around it and the tree root claim it too, or the kernel would cap the
        # primary's effective protection at theirs (0).
        assert int(_read(inner, "memory.low")) == low
        assert int(_read(root, "memory.low")) == low
        assert _read(og.cgroup("sidecars"), "memory.low") == "0"
