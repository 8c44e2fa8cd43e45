#!/usr/bin/env python3
"""Set up what `make test` and `make demo` need, only what is missing (a warm run installs
nothing and costs one interpreter start). Stdlib only: it runs before anything is installed.

``python3 tools/deps.py python [--python PY]``
    Prints (on stdout, alone) the path of an interpreter that has the project's Python
    dependencies: the runtime ones and the ``dev`` and ``metrics`` extras of pyproject.toml.

    * ``--python PY`` (what ``make PYTHON=…`` passes): that interpreter; whatever it lacks is
      installed into it with ``pip install -e '.[dev,metrics]'``. An externally managed
      interpreter (PEP 668, e.g. Debian's /usr/bin/python3) is refused with the fix.
    * otherwise ``python3`` if it has them all; else ``.venv/bin/python`` in the work tree,
      created (``python3 -m venv``) and filled with ``pip install -e '.[dev,metrics]'`` where
      anything is missing. The system's interpreter is never installed into implicitly.

    The printed path is the real interpreter (``sys.executable``), never a pyenv shim: a shim
    costs ~4 s per start in the TCG guest.

``python3 tools/deps.py system [--guest]``
    apt-get installs the Debian packages the real-kernel tests use (postgresql, pgbouncer,
    stress-ng, procps, util-linux; with ``--guest`` also the QEMU guest's, which
    tools/ktest.py and tools/demo.py otherwise install when they need the guest), plus
    python3-venv where ``python3 -m venv`` would fail. Only as root (or with passwordless
    sudo) on Debian; otherwise it says what is missing and how to install it, and exits 0: the
    tests then report what they could not run.

Progress goes to stderr as ``deps: …`` lines.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
EXTRAS = ("dev", "metrics")
#: What the real-kernel tests run (tests/kernel/pg.py and test_postgres.py name them).
TEST_PACKAGES = ("postgresql", "pgbouncer", "stress-ng", "procps", "util-linux")
VENV_PACKAGES = ("python3-venv", "python3-pip")

#: Run by the candidate interpreter: which requirements are missing or too old. A requirement
#: is "name" plus optional comma-separated (>=|>|<=|<|==|!=)version clauses, compared on the
#: numeric release part; an unparsable version counts as satisfied (pip is the judge then).
_PROBE = r"""
import importlib.metadata as md, re, sys
def release(v):
    m = re.match(r"\d+(?:\.\d+)*", v)
    return tuple(int(x) for x in m.group(0).split(".")) if m else None
OPS = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
       "<": lambda a, b: a < b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}
missing = []
for req in sys.argv[1:]:
    name, spec = re.match(r"([A-Za-z0-9_.-]+)(.*)", req).group(1, 2)
    try:
        have = release(md.version(name))
    except md.PackageNotFoundError:
        missing.append(req)
        continue
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        op, want = re.match(r"(>=|<=|==|!=|>|<)\s*(.+)", clause).groups()
        need = release(want)
        if have is not None and need is not None and not OPS[op](have, need):
            missing.append(req)
            break
print("\n".join(missing))
"""


class DepsError(Exception):
    pass


def log(msg: str) -> None:
    print(f"deps: {msg}", file=sys.stderr, flush=True)


def requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The runtime dependencies plus the extras `make test` needs, without markers/spaces."""
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project.get("dependencies", []))
    for extra in EXTRAS:
        reqs.extend(project.get("optional-dependencies", {}).get(extra, []))
    out: list[str] = []
    for req in reqs:
        text = req.split(";")[0].replace(" ", "")
        text = re.sub(r"\[.*?\]", "", text)  # "pkg[extra]>=1" -> "pkg>=1"
        if text not in out:
            out.append(text)
    return out


def missing_in(python: str, reqs: Sequence[str]) -> list[str] | None:
    """Requirements `python` lacks, or None if it cannot run at all."""
    try:
        proc = subprocess.run(
            [python, "-c", _PROBE, *reqs], capture_output=True, text=True, check=False, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return [line for line in proc.stdout.splitlines() if line]


def real_executable(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "import sys; print(sys.executable)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def externally_managed(python: str) -> bool:
    """PEP 668: pip refuses to install into this interpreter (outside a venv)."""
    probe = (
        "import os, sys, sysconfig\n"
        "venv = sys.prefix != sys.base_prefix\n"
        "marker = os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')\n"
        "sys.exit(0 if not venv and os.path.exists(marker) else 1)\n"
    )
    return subprocess.run([python, "-c", probe], check=False).returncode == 0


def pip_install(python: str) -> None:
    spec = f".[{','.join(EXTRAS)}]"
    log(f"{python} -m pip install -e '{spec}'")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(
        [python, "-m", "pip", "install", "-q", "-e", spec],
        cwd=REPO,
        stdout=sys.stderr,  # stdout carries only the interpreter's path
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise DepsError(f"pip install -e '{spec}' failed (exit {proc.returncode}) for {python}")


def ensure(python: str, reqs: Sequence[str]) -> str:
    """`python`, with whatever it lacks installed; its real path."""
    missing = missing_in(python, reqs)
    if missing is None:
        raise DepsError(f"cannot run {python}")
    if missing:
        log(f"{python} lacks {', '.join(missing)}")
        if externally_managed(python):
            raise DepsError(
                f"{python} is externally managed (PEP 668): pip will not install into it; "
                "unset PYTHON to let make use a venv in .venv, or install the packages with "
                "your system's package manager"
            )
        pip_install(python)
        still = missing_in(python, reqs) or []
        if still:
            raise DepsError(f"{python} still lacks {', '.join(still)} after pip install")
    return real_executable(python)


def make_venv(base: str) -> None:
    log(f"creating {VENV} with {base}")
    proc = subprocess.run(
        [base, "-m", "venv", str(VENV)],
        stdout=sys.stderr,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode == 0:
        return
    shutil.rmtree(VENV, ignore_errors=True)  # a half-made venv would be picked up next time
    # Debian ships ensurepip (and so `python3 -m venv`) in python3-venv.
    if apt_install(VENV_PACKAGES):
        retry = subprocess.run([base, "-m", "venv", str(VENV)], stdout=sys.stderr, check=False)
        if retry.returncode == 0:
            return
    raise DepsError(
        f"{base} -m venv failed: {proc.stderr.strip().splitlines()[-1:]}; on Debian: "
        f"apt-get install {' '.join(VENV_PACKAGES)}"
    )


def choose_python(explicit: str | None) -> str:
    reqs = requirements()
    if explicit:
        return ensure(explicit, reqs)
    base = shutil.which("python3") or sys.executable
    if missing_in(base, reqs) == []:
        return real_executable(base)
    venv_python = VENV / "bin" / "python"
    if not venv_python.exists():
        make_venv(base)
    return ensure(str(venv_python), reqs)


# -- system packages ---------------------------------------------------------------------------


def is_debian() -> bool:
    return Path("/etc/debian_version").exists() and shutil.which("dpkg-query") is not None


def missing_packages(packages: Sequence[str]) -> list[str]:
    out = []
    for pkg in packages:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False
        )
        if "install ok installed" not in proc.stdout:
            out.append(pkg)
    return out


def _as_root() -> list[str] | None:
    """The prefix that runs a command as root without asking anyone, or None."""
    if os.geteuid() == 0:
        return []
    sudo = shutil.which("sudo")
    if (
        sudo
        and subprocess.run([sudo, "-n", "true"], capture_output=True, check=False).returncode == 0
    ):
        return [sudo, "-n"]
    return None


def apt_install(packages: Sequence[str]) -> bool:
    """Install the missing ones of `packages`; True if none is missing afterwards."""
    if not is_debian():
        log(f"not Debian: install {' '.join(packages)} (or their equivalents) yourself")
        return False
    missing = missing_packages(packages)
    if not missing:
        return True
    root = _as_root()
    if root is None:
        log(f"missing {' '.join(missing)}; as root: apt-get install {' '.join(missing)}")
        return False
    log(f"apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # `apt-get update` alone costs ~10 s: only when something is to be installed.
    subprocess.run([*root, "apt-get", "update", "-q"], stdout=sys.stderr, env=env, check=False)
    cmd = [*root, "apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    done = subprocess.run(cmd, stdout=sys.stderr, stdin=subprocess.DEVNULL, env=env, check=False)
    if done.returncode != 0:
        log("apt-get install failed")
    left = missing_packages(missing)
    if left:
        log(f"still missing: {' '.join(left)}")
    return not left


def guest_packages() -> tuple[str, ...]:
    """tools/vmrun.py's GUEST_PACKAGES, loaded by path (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("_oomguard_vmrun", REPO / "tools" / "vmrun.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    packages: tuple[str, ...] = module.GUEST_PACKAGES
    return packages


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    py = sub.add_parser("python", help="print an interpreter with the Python dependencies")
    py.add_argument("--python", default=None, help="use (and install into) this interpreter")
    system = sub.add_parser("system", help="apt-get install the packages the tests use")
    system.add_argument("--guest", action="store_true", help="the QEMU guest's packages too")
    args = parser.parse_args(argv)
    try:
        if args.what == "python":
            print(choose_python(args.python or None))
        else:
            packages = [*TEST_PACKAGES, *(guest_packages() if args.guest else ())]
            if apt_install(packages):
                log("system packages: all present")
    except DepsError as err:
        log(f"error: {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
