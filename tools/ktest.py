#!/usr/bin/env python3
"""Run the real-kernel tests (tests/kernel): natively if this host qualifies, else in a QEMU guest.

This is what `make kernel` runs. Native means a writable cgroup2 mount whose `cgroup.controllers`
lists `memory`, where we may create cgroups and enable controllers: as root at the real root
cgroup, or inside a delegated subtree (e.g. `systemd-run --scope -p Delegate=yes make kernel`).
Everything else (notably hybrid-cgroup hosts, where memory is bound to v1) runs in the guest of
tools/vmrun.py, which boots a pure cgroup v2 kernel.

Exactly one summary line ends the output:

    kernel tests: 23 passed, 0 failed, 0 skipped (vm, Linux 6.1.0-41-cloud-amd64)

Exit status is non-zero if pytest failed, if no kernel test ran, or if any was skipped (the tests
run with OOMGUARD_REQUIRE_KERNEL=1, under which a skip means something was not tested).

The probe half of this file (`native_plan`) is imported by tests/kernel/conftest.py so that the
fixtures and the mode decision agree; it is stdlib only and never writes anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT_S = 40 * 60.0
SUMMARY_REL = Path(".ktest") / "summary.json"
REQUIRED_CONTROLLERS = frozenset({"memory", "pids"})


# --------------------------------------------------------------------------------------------
# Probe: may the real-kernel tests run on this kernel, here, now? (read-only)


@dataclasses.dataclass(frozen=True)
class MountEntry:
    """One /proc/self/mountinfo line, the fields we need."""

    mount_point: Path
    root: str  # the part of the file system that is mounted (for cgroup2: a cgroup path)
    dev: int
    fstype: str
    super_options: frozenset[str] = frozenset()  # e.g. nsdelegate for cgroup2


def _unescape(field: str) -> str:
    # mountinfo octal-escapes space, tab, newline and backslash.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    entries: list[MountEntry] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        major, _, minor = fields[2].partition(":")
        entries.append(
            MountEntry(
                mount_point=Path(_unescape(fields[4])),
                root=_unescape(fields[3]),
                dev=os.makedev(int(major), int(minor)),
                fstype=tail[0],
                super_options=frozenset(tail[2].split(",")) if len(tail) > 2 else frozenset(),
            )
        )
    return entries


def parse_own_cgroup(text: str) -> str | None:
    """The v2 line of /proc/self/cgroup: `0::/some/path` -> `/some/path`."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].removesuffix(" (deleted)") or "/"
    return None


def _controllers(cgroup_dir: Path) -> frozenset[str]:
    try:
        return frozenset((cgroup_dir / "cgroup.controllers").read_text().split())
    except OSError:
        return frozenset()


@dataclasses.dataclass(frozen=True)
class NativePlan:
    """Where the kernel tests may create their scratch cgroups on this host.

    `base` is the cgroup directory under which `okt-*` scratch cgroups are made. If `leaf` is set,
    `base` is the (delegated) cgroup we live in: every process in it must first move into `leaf`,
    because of the no-internal-process rule (a non-root cgroup with processes in it cannot enable
    controllers for its children).
    """

    mount: Path
    base: Path
    leaf: Path | None


def native_plan() -> tuple[NativePlan | None, str]:
    """(plan, "") if the real-kernel tests can run here natively, else (None, why not)."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        own = parse_own_cgroup(Path("/proc/self/cgroup").read_text())
    except OSError as e:
        return None, f"cannot read /proc: {e}"
    if own is None:
        return None, "this process is in no cgroup v2 hierarchy (/proc/self/cgroup has no 0:: line)"
    seen: list[str] = []
    for entry in parse_mountinfo(mountinfo):
        if entry.fstype != "cgroup2":
            continue
        mp = entry.mount_point
        try:
            # A cgroup2 mount shadowed by a later mount on the same point is not what we'd touch.
            if os.stat(mp).st_dev != entry.dev:
                continue
        except OSError:
            continue
        ctrl = _controllers(mp)
        seen.append(f"{mp} [{' '.join(sorted(ctrl)) or 'no controllers'}]")
        if "memory" not in ctrl:
            continue
        if os.access(mp / "cgroup.subtree_control", os.W_OK) and not (mp / "cgroup.type").exists():
            # The real root cgroup (only it has no cgroup.type) is exempt from the
            # no-internal-process rule: scratch cgroups go right under it, nobody moves.
            return NativePlan(mount=mp, base=mp, leaf=None), ""
        own_dir = mp / own.lstrip("/")
        if not (own_dir / "cgroup.procs").is_file():
            return None, f"our cgroup {own} is not visible under the cgroup2 mount {mp}"
        missing = REQUIRED_CONTROLLERS - _controllers(own_dir)
        if missing:
            return None, (
                f"controllers {' '.join(sorted(missing))} are not delegated to our cgroup {own}"
            )
        writable = all(
            os.access(p, os.W_OK)
            for p in (own_dir, own_dir / "cgroup.procs", own_dir / "cgroup.subtree_control")
        )
        if not writable:
            return None, (
                f"our cgroup {own} on {mp} is not delegated to us (not writable); run as root or "
                "under `systemd-run --user --scope -p Delegate=yes`"
            )
        return NativePlan(mount=mp, base=own_dir, leaf=own_dir / "ktest-runner"), ""
    if not seen:
        return None, "no cgroup2 mount"
    return None, "no cgroup2 mount lists the memory controller (" + "; ".join(seen) + ")"


# --------------------------------------------------------------------------------------------
# Runner


def _log(msg: str) -> None:
    sys.stderr.write(f"ktest: {msg}\n")
    sys.stderr.flush()


@dataclasses.dataclass(frozen=True)
class Summary:
    passed: int
    failed: int
    skipped: int
    mode: str
    kernel_release: str
    failed_tests: tuple[str, ...] = ()
    skipped_tests: tuple[str, ...] = ()

    @classmethod
    def load(cls, path: Path) -> Summary:
        doc = json.loads(path.read_text())
        return cls(
            passed=int(doc["passed"]),
            failed=int(doc["failed"]),
            skipped=int(doc["skipped"]),
            mode=str(doc["mode"]),
            kernel_release=str(doc["kernel_release"]),
            failed_tests=tuple(doc.get("failed_tests", ())),
            skipped_tests=tuple(doc.get("skipped_tests", ())),
        )

    def line(self) -> str:
        return (
            f"kernel tests: {self.passed} passed, {self.failed} failed, {self.skipped} skipped "
            f"({self.mode}, Linux {self.kernel_release})"
        )


def _import_vmrun() -> ModuleType:
    # By path, like the conftest loads this file: tools/ need not be importable as a package.
    path = Path(__file__).resolve().parent / "vmrun.py"
    spec = importlib.util.spec_from_file_location("_oomguard_vmrun", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class body is built.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ktest.py",
        description="Run tests/kernel natively or in the QEMU guest; extra args go to pytest.",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--native", dest="mode", action="store_const", const="native")
    mode.add_argument("--vm", dest="mode", action="store_const", const="vm")
    p.add_argument(
        "--timeout",
        type=float,
        default=float(os.environ.get("OOMGUARD_KTEST_TIMEOUT", DEFAULT_TIMEOUT_S)),
        help="seconds for the whole run (default 2400, env OOMGUARD_KTEST_TIMEOUT)",
    )
    p.add_argument("--mem", default=None, help="guest RAM for the VM (vmrun's default: 2G)")
    p.add_argument("--summary", type=Path, default=REPO / SUMMARY_REL, help="JSON summary path")
    p.add_argument("--verbose-vm", action="store_true", help="pass --verbose to vmrun")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args, pytest_args = build_parser().parse_known_args(argv)
    if pytest_args[:1] == ["--"]:
        pytest_args = pytest_args[1:]
    started = time.monotonic()

    mode: str | None = args.mode
    if mode is None:
        plan, why_not = native_plan()
        mode = "native" if plan is not None else "vm"
        _log(f"mode {mode}" + (f": {why_not}" if why_not else ""))
    summary_path: Path = args.summary.resolve()
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.unlink(missing_ok=True)

    # The real interpreter, never a pyenv shim: in the guest a shim costs ~4 s per start.
    python = sys.executable
    pytest_cmd = [
        python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/kernel", *pytest_args,
    ]  # fmt: skip
    env = {
        # Plugin autoload costs seconds under TCG (hypothesis alone 7.7 s); kernel tests need none.
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        "OOMGUARD_REQUIRE_KERNEL": "1",
        "OOMGUARD_KTEST_SUMMARY": str(summary_path),
        "PYTHONDONTWRITEBYTECODE": "1",
    }

    if mode == "native":
        try:
            rc = subprocess.run(
                pytest_cmd, cwd=REPO, env={**os.environ, **env}, timeout=args.timeout, check=False
            ).returncode
        except subprocess.TimeoutExpired:
            _log(f"timeout after {args.timeout:g}s")
            rc = 124
    else:
        vmrun = _import_vmrun()
        problems = vmrun.check_prerequisites()
        if problems and vmrun._is_debian() and os.geteuid() == 0 and vmrun.missing_packages():
            if vmrun.install_packages() != 0:
                _log("could not install the guest packages")
            problems = vmrun.check_prerequisites()
        for prob in problems:
            _log(f"cannot run the VM: {prob}")
        if problems:
            print(f"kernel tests: not run (vm: {problems[0]})")
            return int(vmrun.EXIT_LAUNCH_FAILED)
        vm_args = ["--timeout", str(args.timeout)]
        if args.mem:
            vm_args += ["--mem", args.mem]
        if args.verbose_vm:
            vm_args.append("--verbose")
        for key, value in env.items():
            vm_args += ["--env", f"{key}={value}"]
        os.chdir(REPO)  # vmrun binds the cwd read-write: the summary lands there
        rc = int(vmrun.main([*vm_args, "--timing", "--", *pytest_cmd]))

    elapsed = time.monotonic() - started
    if not summary_path.is_file():
        _log(f"no summary at {summary_path}: pytest did not get to the end (exit {rc})")
        print(f"kernel tests: no result ({mode}, exit {rc}, {elapsed:.0f}s)")
        return rc or 1
    summary = Summary.load(summary_path)
    _log(f"{mode} run took {elapsed:.1f}s; summary in {summary_path}")
    for name in summary.skipped_tests:
        _log(f"skipped: {name}")
    print(summary.line(), flush=True)
    if rc != 0:
        return rc
    if summary.passed + summary.failed == 0:
        _log("no kernel test ran")
        return 1
    if summary.skipped:
        _log("tests were skipped although the real kernel was required")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
