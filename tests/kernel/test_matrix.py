"""A representative subset of the issue-8 scenario matrix (the whole matrix is `make bench`:
tools/bench_matrix.py; the cells are described in tests/kernel/matrix.py).

Each cell runs oomguard with one budget shape while a sidecar leaks into it, prefilled to just
above the pressure threshold first so that a slow leak needs seconds, not minutes. In each,
oomguard must act before the kernel does, kill nothing of the primary, and never throttle it:
its own memory.events `high` stays 0 and no memory.high sits on the primary or the tree root
(the primary lives under the root: an automatic memory.high there would throttle it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.kernel.matrix import Cell, run_cell

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.kernel

CELLS = [
    Cell("tree", 5, "one", "off"),  # the first report: one container limit, 5 MiB/s
    Cell("nolimit", 20, "one", "off"),  # the seed's VM: no limit anywhere
    Cell("slice", 20, "8w", "off"),  # 8 forked workers in a [slice]
]


@pytest.mark.parametrize("cell", CELLS, ids=[c.name for c in CELLS])
def test_matrix_cell_acts_before_the_kernel_and_spares_the_primary(
    cell: Cell, cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    res = run_cell(cgroup2_mount, scratch_cgroup, tmp_path, cell)
    print(f"\n{cell.name}: {res}")
    assert not res.error, res
    assert res.acted.startswith("oomguard"), f"oomguard did not act first: {res}"
    assert res.kernel_kills == 0, res
    assert res.primary_killed == 0, res
    assert res.primary_high == 0, res
    assert res.auto_high == "none", res
