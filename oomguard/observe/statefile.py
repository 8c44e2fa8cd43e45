"""Reading ``<state_dir>/state.json``: the one reader, for ``oomguard status``, ``oomguard
events`` and the supervisor's look for survivors of a killed run (observe/state.read_state
delegates here, beside the writer).

Import-light on purpose (``os``, ``errno`` and oomguard/proc.py, the /proc owner; ``json`` only
once there is a file to parse): ``oomguard status`` starts with this module, and is what people
run in a loop while a database is in trouble.

``version`` is the format's major number. A change that an older reader would misread bumps it;
a new key does not (readers use ``.get``: an older writer may lack newer keys). So a document of
a newer major is refused with `StateVersionError` (exit 2: the fix is to run the oomguard that
matches the running supervisor), while any document of this major is read, whatever keys it
has. A missing or older version is a file this oomguard cannot use (`StateFileError`).
"""

from __future__ import annotations

import errno
import os
from typing import Any

from oomguard import proc
from oomguard.errors import ExitCode, OomguardError

STATE_FILE = "state.json"
#: The major format version this oomguard writes and reads.
STATE_VERSION = 1
#: A state.json is a few KiB; reading more is a sign it is not ours.
READ_LIMIT = 16 << 20


class StateFileError(OomguardError):
    """state.json exists but cannot be used: unreadable, not JSON, not a state document."""


class StateVersionError(OomguardError):
    """state.json was written by an oomguard with a newer format: reading it could misreport."""

    exit_code = ExitCode.USAGE


def state_file(state_dir: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(state_dir), STATE_FILE)


def read_state(state_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The state document of `state_dir`, or None if there is none (no directory, no file).

    Raises `StateVersionError` for a newer major version, `StateFileError` for a file that
    cannot be used. Never follows a symlink: ``oomguard status`` may run as root, and a planted
    link must not make it read (and quote) whatever the link names.
    """
    path = state_file(state_dir)
    text = _read_text(path)
    if text is None:
        return None
    import json  # only when there is a file: `status` without a supervisor never pays for it

    try:
        doc = json.loads(text)
    except ValueError as err:
        raise StateFileError(
            f"{path} is not valid JSON ({err})",
            "a running oomguard rewrites it on every change; if none is running, delete it",
        ) from err
    _check_document(path, doc)
    return dict(doc)


def _read_text(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            return f.read(READ_LIMIT).decode("utf-8", "replace")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError as err:
        raise StateFileError(
            f"cannot read {path}: permission denied",
            "run as root or as the user oomguard runs as",
        ) from err
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise StateFileError(
                f"{path} is a symlink; oomguard never reads or writes state through one",
                "remove it, and check who could create it in the state_dir",
            ) from err
        raise StateFileError(f"cannot read {path}: {err.strerror or err}") from err


def _check_document(path: str, doc: object) -> None:
    if not isinstance(doc, dict):
        raise StateFileError(f"{path} does not hold a JSON object", "delete it")
    version = doc.get("version")
    # bool is refused apart: JSON true is 1 to Python.
    is_int = isinstance(version, int) and not isinstance(version, bool)
    version_int: int | None = version if is_int else None
    if version_int is not None and version_int > STATE_VERSION:
        raise StateVersionError(
            f"{path} has format version {version}, written by a newer oomguard; this oomguard "
            f"reads version {STATE_VERSION}",
            "run the oomguard binary of the running supervisor (e.g. inside its container), or "
            "upgrade this one",
        )
    if version_int != STATE_VERSION:
        raise StateFileError(
            f"{path} has format version {version!r}; this oomguard reads version {STATE_VERSION}",
            "use the oomguard binary that matches the running supervisor",
        )
    if not isinstance(doc.get("services", {}), dict):
        raise StateFileError(f"{path}: 'services' is not an object", "delete it")


def writer_running(doc: dict[str, Any]) -> bool | None:
    """Is the supervisor that wrote `doc` alive? None if the document has no usable pid.
    pid_start (when present) guards against pid reuse after a crash.

    /proc shows this PID namespace: ``kubectl exec``/``docker exec`` join the container's, so
    the answer holds there; from the host it would not.
    """
    pid = doc.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    ticks = proc.start_ticks(pid)
    start = doc.get("pid_start")
    if isinstance(start, int) and not isinstance(start, bool):
        return ticks == start
    return ticks is not None
