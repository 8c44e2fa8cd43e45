"""Fixtures for the real-kernel tests: a real cgroup2 mount with the memory controller, and fresh
scratch cgroups in it that are killed and removed after each test.

Where the kernel is missing (a hybrid-cgroup host, a read-only cgroupfs, no delegation), tests are
SKIPPED with a loud reason, or FAIL if OOMGUARD_REQUIRE_KERNEL=1 (what `make kernel` sets: there a
skip would hide untested code). Nothing is ever created outside a verified cgroup2 mount: on a
hybrid host /sys/fs/cgroup is a tmpfs, where "creating a cgroup" would make a plain directory.

Every test in tests/kernel gets `pytest.mark.kernel`. If OOMGUARD_KTEST_SUMMARY names a file, a
JSON summary (counts, kernel release, mode) is written there at the end (tools/ktest.py reads it).
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from oomguard.cgroup.fs import CgroupFS
from oomguard.cgroup.path import CgroupPath

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from types import ModuleType

KERNEL_DIR = Path(__file__).resolve().parent
REPO = KERNEL_DIR.parents[1]
REQUIRE_ENV = "OOMGUARD_REQUIRE_KERNEL"
SUMMARY_ENV = "OOMGUARD_KTEST_SUMMARY"
SCRATCH_PREFIX = "okt-"
#: Teardown deadline: a TCG guest is slow, and a memory-hogging victim takes a while to die.
TEARDOWN_S = 30.0


def _load_ktest() -> ModuleType:
    # Loaded by path: the probe must not depend on how tools/ is (or is not) importable.
    spec = importlib.util.spec_from_file_location("_oomguard_ktest", REPO / "tools" / "ktest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class body is built.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def _unavailable(reason: str) -> NoReturn:
    msg = f"REAL-KERNEL TEST NOT RUN: {reason}"
    if _required():
        pytest.fail(f"{msg} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(f"{msg}; `make kernel` runs these in a QEMU guest")


def _write(path: Path, value: str) -> None:
    # One write() per value: cgroupfs parses each write on its own.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _procs(cgroup: Path) -> list[int]:
    try:
        return [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def _populated(cgroup: Path) -> bool:
    try:
        text = (cgroup / "cgroup.events").read_text()
    except FileNotFoundError:
        return False
    return "populated 1" in text.split("\n")


# ------------------------------------------------------------------------------------------------
# Session setup: decide where scratch cgroups go, enabling controllers there once.


class _KernelEnv:
    def __init__(self, mount: Path, base: Path) -> None:
        self.mount = mount
        self.base = base


def _enable(cgroup: Path, controllers: Sequence[str]) -> None:
    have = set((cgroup / "cgroup.subtree_control").read_text().split())
    want = [c for c in controllers if c not in have]
    if want:
        _write(cgroup / "cgroup.subtree_control", " ".join(f"+{c}" for c in want))


@pytest.fixture(scope="session")
def _kernel_env() -> _KernelEnv:
    plan, why_not = _load_ktest().native_plan()
    if plan is None:
        _unavailable(why_not)
    if plan.leaf is not None:
        # Delegated subtree: the no-internal-process rule forbids enabling controllers in a
        # non-root cgroup that has processes, so everyone in it (us, our parent make/shell) moves
        # into a leaf first. They stay there: moving back would need the controllers disabled
        # again, and the delegated cgroup is ours to shape.
        plan.leaf.mkdir(exist_ok=True)
        for pid in _procs(plan.base):
            with contextlib.suppress(ProcessLookupError):
                _write(plan.leaf / "cgroup.procs", str(pid))
    try:
        _enable(plan.base, ("memory", "pids"))
    except OSError as e:
        _unavailable(f"cannot enable memory+pids in {plan.base}/cgroup.subtree_control: {e}")
    return _KernelEnv(plan.mount, plan.base)


@pytest.fixture(scope="session")
def cgroup2_mount(_kernel_env: _KernelEnv) -> Path:
    """A cgroup2 mount whose cgroup.controllers lists memory (skips/fails loudly otherwise)."""
    return _kernel_env.mount


@pytest.fixture
def scratch_cgroup(_kernel_env: _KernelEnv) -> Iterator[Path]:
    """A fresh, empty cgroup directory with memory+pids available to it and enabled for its
    children. Everything in it is killed and it is removed (recursively) after the test."""
    path = _kernel_env.base / f"{SCRATCH_PREFIX}{secrets.token_hex(4)}"
    path.mkdir()
    try:
        _write(path / "cgroup.subtree_control", "+memory +pids")
    except BaseException:
        _destroy(path)
        raise
    yield path
    _destroy(path)


@pytest.fixture
def run_in_cgroup() -> Iterator[Callable[..., subprocess.Popen[Any]]]:
    """`run_in_cgroup(cgroup_dir, argv, **popen_kwargs) -> Popen`: the child joins the cgroup
    before exec, so it is charged there from its first instruction. Killed and reaped at
    teardown if still running."""
    started: list[subprocess.Popen[Any]] = []

    def spawn(cgroup: Path, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        # Opened in the parent: the child only does one write() between fork and exec. Writing
        # "0" to cgroup.procs moves the writing process itself.
        fd = os.open(Path(cgroup) / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        # subprocess reports any preexec_fn failure as a bare "Exception occurred in preexec_fn";
        # the child sends its errno through this pipe so the test sees the real cause.
        err_r, err_w = os.pipe2(os.O_CLOEXEC)

        def join() -> None:
            try:
                os.write(fd, b"0")
            except OSError as e:
                os.write(err_w, str(e.errno).encode())
                raise

        try:
            proc = subprocess.Popen(list(argv), preexec_fn=join, **kwargs)  # noqa: PLW1509
        except subprocess.SubprocessError:
            os.close(err_w)
            err_w = -1
            code = os.read(err_r, 16).decode()
            if not code:
                raise
            errno_num = int(code)
            hint = (
                "; a cgroup with controllers in cgroup.subtree_control cannot hold processes "
                "(no-internal-process rule): spawn into a child cgroup"
                if errno_num == errno.EBUSY
                else ""
            )
            raise OSError(
                errno_num, f"cannot join {cgroup}: {os.strerror(errno_num)}{hint}"
            ) from None
        finally:
            os.close(fd)
            os.close(err_r)
            if err_w >= 0:
                os.close(err_w)
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def destroy_cgroup() -> Callable[[Path], None]:
    """`destroy_cgroup(path)`: what scratch_cgroup's teardown does (cgroup.kill the subtree, wait
    until it is empty, rmdir bottom-up), for tests that must see a removal happen."""
    return _destroy


def _destroy(cgroup: Path, timeout: float = TEARDOWN_S) -> None:
    """Kill everything in the subtree, wait until it is empty, rmdir bottom-up."""
    if not cgroup.is_dir():
        return
    deadline = time.monotonic() + timeout
    if (cgroup / "cgroup.kill").exists():
        # cgroup.kill (5.14+) takes the whole subtree, including processes forked meanwhile.
        with contextlib.suppress(FileNotFoundError):
            _write(cgroup / "cgroup.kill", "1")
    while _populated(cgroup):
        if not (cgroup / "cgroup.kill").exists():
            for dirpath, _dirs, _files in os.walk(cgroup):
                for pid in _procs(Path(dirpath)):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            left = {d: _procs(Path(d)) for d, _, _ in os.walk(cgroup) if _procs(Path(d))}
            raise RuntimeError(f"{cgroup} still populated {timeout:g}s after kill: {left}")
        time.sleep(0.02)
    # A frozen cgroup can be removed too; only the emptiness matters. Deepest first.
    for dirpath, _dirs, _files in os.walk(cgroup, topdown=False):
        while True:
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                # EBUSY briefly after the last task exits while the css is still going away.
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise RuntimeError(f"cannot remove {dirpath}: {e}") from e
                time.sleep(0.02)


# ------------------------------------------------------------------------------------------------
# Marking and the summary


def _is_kernel_path(path: Path) -> bool:
    return path == KERNEL_DIR or KERNEL_DIR in path.parents


_kernel_ids: set[str] = set()
_outcomes: dict[str, str] = {}
_skip_reasons: dict[str, str] = {}
_started = time.monotonic()
#: Worse outcomes win when a test reports several phases (e.g. passed call, failed teardown).
_RANK = {"passed": 0, "xfailed": 1, "skipped": 2, "failed": 3}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees every collected item of the session, not only ours: filter by path.
    for item in items:
        if _is_kernel_path(Path(item.path).resolve()):
            item.add_marker(pytest.mark.kernel)
            _kernel_ids.add(item.nodeid)


def _record(nodeid: str, outcome: str) -> None:
    previous = _outcomes.get(nodeid)
    if previous is None or _RANK[outcome] >= _RANK[previous]:
        _outcomes[nodeid] = outcome


def pytest_collectreport(report: pytest.CollectReport) -> None:
    # An import error in a kernel test module collects nothing: count it, or "0 failed" would lie.
    if report.failed and _is_kernel_path(Path(str(report.fspath)).resolve()):
        _record(report.nodeid or str(report.fspath), "failed")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid not in _kernel_ids:
        return
    if hasattr(report, "wasxfail"):
        _record(report.nodeid, "xfailed" if report.skipped else "passed")
    elif report.failed:  # in the test, or an error in setup/teardown
        _record(report.nodeid, "failed")
    elif report.skipped:  # by a marker, a fixture or pytest.skip() in the test
        _record(report.nodeid, "skipped")
        longrepr = report.longrepr
        if isinstance(longrepr, tuple) and len(longrepr) == 3:
            _skip_reasons[report.nodeid] = str(longrepr[2])
    elif report.when == "call":
        _record(report.nodeid, "passed")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get(SUMMARY_ENV)
    if not target:
        return
    counts = {k: 0 for k in _RANK}
    for outcome in _outcomes.values():
        counts[outcome] += 1
    doc = {
        **counts,
        "total": len(_outcomes),
        "exitstatus": int(exitstatus),
        "mode": "vm" if os.environ.get("OOMGUARD_IN_VM") == "1" else "native",
        "kernel_release": os.uname().release,
        "required": _required(),
        "duration_s": round(time.monotonic() - _started, 2),
        "failed_tests": sorted(n for n, o in _outcomes.items() if o == "failed"),
        "skipped_tests": sorted(
            f"{n}: {_skip_reasons.get(n, '')}".rstrip(": ")
            for n, o in _outcomes.items()
            if o == "skipped"
        ),
    }
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)


# -- shared fixtures of the cgroup-layer kernel tests ----------------------------------------


@pytest.fixture
def fs(cgroup2_mount: Path) -> CgroupFS:
    """A CgroupFS on the real cgroup2 mount."""
    return CgroupFS(cgroup2_mount)


@pytest.fixture
def scratch(cgroup2_mount: Path, scratch_cgroup: Path) -> CgroupPath:
    """`scratch_cgroup` as a CgroupPath relative to the mount."""
    return CgroupPath.parse("/" + str(scratch_cgroup.relative_to(cgroup2_mount)))


@pytest.fixture
def sleeper() -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Start `sleep` processes (stand-ins for oomguard and its services, never the pytest
    process itself) and reap them all at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["sleep", "1000"])
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
