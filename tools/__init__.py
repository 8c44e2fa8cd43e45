"""oomguard's developer tools, a package so that they import each other and the real-kernel
tests' helpers (``tests.kernel``) as packages, with no ``sys.path`` edits.

The benches run from the repository root as modules: ``python3 -m tools.bench`` (what ``make
bench`` runs), ``python3 -m tools.bench_matrix seed``. ``tools/ktest.py``, ``tools/vmrun.py``,
``tools/deps.py`` and ``tools/demo.py`` are stdlib-only scripts, run by path before anything is
installed; they import nothing from the repository.
"""
