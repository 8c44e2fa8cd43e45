"""The daemon: `run` and `exec` validate, then become this, a supervisor without pydantic or click.

Validation needs pydantic and the command line needs click; the supervisor needs neither, and
both would stay resident for the daemon's whole life (about 25 MB of a 37 MB RSS). So once
`run`/`exec` have a compiled Plan, `hand_off` writes it as JSON to a memfd and execs a fresh
interpreter on `main` here, with the memfd as an inherited fd:

* execve keeps the pid (PID 1 stays PID 1, `exec`'s per-run state dir keeps its name), the
  environment, stdio and every inherited fd; the services see the same oomguard as before.
* The daemon's exit status is what `run`/`exec` returned before: the primary's status, 137
  after an OOM kill under `exec`, the error's status (2 for a user error) with one
  `oomguard: error:` line and no traceback.
* If the exec itself fails (no interpreter at sys.executable), the job runs in the validating
  process instead, with a warning: a supervisor that runs heavier beats one that does not run.

Everything this module imports at the top, and everything `run_job` imports, must stay free of
pydantic and click (tests/cli/test_daemon.py and the kernel test check sys.modules).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NoReturn

from oomguard.cli._output import guarded
from oomguard.errors import ExitCode, OomguardError, UsageError

# At run time, not under TYPE_CHECKING: the JSON decoder resolves Job's annotations.
from oomguard.plan import Plan, PlanError, load_json, to_json

if TYPE_CHECKING:
    from collections.abc import Sequence

    from oomguard.runtime.supervisor import Outcome

#: The daemon's own argument: the fd its Job is read from.
PLAN_FD = "--plan-fd"
#: Debugging and tests: a path where the daemon writes the names in its sys.modules when it
#: exits, one a line (a new file only; an existing one is left alone). Modules are never
#: unloaded, so this lists every module the daemon had at any point of its run.
MODULES_ENV = "OOMGUARD_DEBUG_MODULES"
#: The largest Job read: a plan is a few KiB per service.
MAX_JOB_BYTES = 16 << 20
#: Run in the new interpreter with `-c`: find the same oomguard the validating process ran
#: (its package root comes first in argv), then start the daemon.
_BOOTSTRAP = (
    "import sys; r = sys.argv.pop(1); r in sys.path or sys.path.insert(0, r); "
    "from oomguard.cli.daemon import main; main(root=r)"
)


@dataclass(frozen=True)
class Job:
    """What the daemon runs: the plan, and what `run`/`exec` were asked beyond the config."""

    kind: Literal["run", "exec"]
    plan: Plan
    init: bool
    #: `exec`'s per-run state dir: removed at exit.
    remove_state_dir: bool = False


# --------------------------------------------------------------------------------------------
# In the validating process
# --------------------------------------------------------------------------------------------


def hand_off(job: Job) -> int:
    """Become the daemon running `job` (same pid); never returns unless the exec failed, and
    then runs the job here and returns its exit status."""
    fd = _job_fd(job)
    argv = daemon_argv(fd)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(argv[0], argv)
    except OSError as err:
        os.close(fd)
        sys.stderr.write(
            f"oomguard: warning: cannot start the daemon {argv[0]} ({err.strerror or err}); "
            "running it in this process\n"
        )
        return run_job(job)


def _job_fd(job: Job) -> int:
    """An inheritable memfd holding the Job's JSON, at offset 0."""
    data = to_json(job).encode()
    fd = os.memfd_create("oomguard-plan", 0)  # no MFD_CLOEXEC: the daemon inherits it
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def daemon_argv(fd: int) -> list[str]:
    """The daemon's command line. The interpreter keeps this one's flags (-E, -s, -X ...) plus
    -P, so the working directory cannot shadow a module; the package root is passed instead.
    The validating command line goes last, after "--", for `ps` to show."""
    import subprocess  # only for the interpreter-flags helper multiprocessing uses too

    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    if "-P" not in flags:
        flags.append("-P")
    root = os.path.dirname(_package_dir())
    return [sys.executable, *flags, "-c", _BOOTSTRAP, root, PLAN_FD, str(fd), "--", *sys.argv]


def _package_dir() -> str:
    import oomguard

    return os.path.dirname(os.path.abspath(oomguard.__file__))


# --------------------------------------------------------------------------------------------
# In the daemon
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, *, root: str | None = None) -> NoReturn:
    """The daemon's entry point (see `daemon_argv`); exits with the job's status, reporting
    errors as every command does (`cli/_output.guarded`: one line, exit 2 for a user's)."""
    args = list(sys.argv[1:] if argv is None else argv)
    _without_openssl()

    def job() -> int:
        if root is not None:
            _check_package(root)
        return run_job(read_job(_plan_fd(args)))

    status = guarded(job)
    _dump_modules()
    sys.exit(status)


def _dump_modules() -> None:
    path = os.environ.get(MODULES_ENV)
    if not path:
        return
    text = "".join(f"{name}\n" for name in sorted(sys.modules))
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
    except OSError as err:
        sys.stderr.write(f"oomguard: warning: {MODULES_ENV}={path}: {err.strerror or err}\n")
        return
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _without_openssl() -> None:
    """Keep OpenSSL's libcrypto out of the daemon: `hashlib` and `hmac` (via `secrets`) load it
    when they can, which costs 3.5 MiB resident (a sixth of the daemon) for one SHA-256 of a
    token per run. With the import of `_hashlib` failing they use CPython's built-in SHA-256,
    exactly as on a Python built without OpenSSL. Only if nothing loaded it yet."""
    sys.modules.setdefault("_hashlib", None)  # type: ignore[arg-type]


def _check_package(root: str) -> None:
    """The daemon runs the oomguard that validated the plan, never another installed one."""
    want = os.path.join(root, "oomguard")
    try:
        same = os.path.samefile(_package_dir(), want)
    except OSError:
        same = False
    if not same:
        raise UsageError(
            f"the daemon found oomguard in {_package_dir()}, not in {want} where `run`/`exec` "
            "came from",
            hint="run oomguard from one installation (check PYTHONPATH and sys.path)",
        )


def _plan_fd(args: list[str]) -> int:
    if len(args) >= 2 and args[0] == PLAN_FD and args[1].isascii() and args[1].isdigit():
        return int(args[1])
    raise UsageError(
        "the daemon needs --plan-fd N",
        hint="start the supervisor with `oomguard run` or `oomguard exec`, which start it",
    )


def read_job(fd: int) -> Job:
    """The Job in `fd` (read to its end, then closed)."""
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_JOB_BYTES:
                raise UsageError(f"the plan in fd {fd} is larger than {MAX_JOB_BYTES >> 20} MiB")
    except OSError as err:
        raise UsageError(f"cannot read the plan from fd {fd}: {err.strerror or err}") from None
    finally:
        os.close(fd)
    try:
        return load_json(Job, b"".join(chunks))
    except PlanError as err:
        raise UsageError(
            f"the plan in fd {fd} is unreadable: {err}",
            hint="start the supervisor with `oomguard run` or `oomguard exec`",
        ) from None


def run_job(job: Job) -> int:
    """Supervise until shutdown; the exit status `run`/`exec` return."""
    from oomguard.cli._supervise import supervise

    try:
        outcome = supervise(job.plan, init=job.init)
    finally:
        if job.remove_state_dir:
            _remove_state_dir(job.plan.state_dir)
    return _finish(job, outcome)


def _finish(job: Job, outcome: Outcome) -> int:
    """What `run` and `exec` say at the end, and their exit status."""
    lines = [ln for ln in outcome.oom_lines if ln.startswith(outcome.primary + " ")]
    if job.kind == "exec":
        exit_ = outcome.primary_exit
        if exit_ is None or not exit_.oom_killed:
            return outcome.status
        _say(lines[:1])
        return int(ExitCode.OOM_KILLED)
    _say(lines)
    if outcome.fatal_service:
        _say(
            [
                f"stopped because {outcome.fatal_service} failed for good "
                f"(exit status {outcome.status})"
            ]
        )
    return outcome.status


def _say(lines: list[str]) -> None:
    for line in lines:
        sys.stderr.write(f"oomguard: {line}\n")
    sys.stderr.flush()


def _remove_state_dir(path: str) -> None:
    """Remove exec's per-run state dir at exit (nothing else may be left in it)."""
    from oomguard.observe.statedir import StateDir

    try:
        sd = StateDir.open(path, create=False)
    except OomguardError:
        return
    sd.remove()
