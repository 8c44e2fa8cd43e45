"""The event log: one JSON object per line in ``<state_dir>/events.jsonl``.

This is the durable "what happened" record that ``oomguard events`` reads, separate from the
diagnostic log (observe/log.py), which is for humans watching the daemon. Each line is::

    {"ts": 1795732262.41, "cgroup": "/oomguard/sidecars/backup",
     "slice": "/oomguard/sidecars/backup", "service": "backup",
     "kind": "oom_kill", "delta": 1, "current": 67108864, "max": 67108864}

``ts`` is unix wall time (the one place oomguard uses the wall clock: a reader correlates these
with other logs). ``cgroup`` is the cgroup the event is about (a service's, a ``[slice.X]``
budget's, the tree root), as a path under the cgroup2 mount. ``slice`` holds the same value: it
is the field's old name, kept for one release for readers written against it, and removed after
that ("slice" is a config budget; this field names any cgroup). ``cgroup``, ``slice`` and
``service`` may be null for tree-wide events. Details are flat
scalars. Byte counts are written as exact integers and durations as float seconds; the key
conventions in `BYTE_KEYS` / `SECONDS_KEYS` tell ``oomguard events`` how to print them for humans.

Writing: the fd is opened with O_APPEND and every line goes out in one write(), so a reader (or a
second writer) never sees two lines interleaved; a crash can at worst leave a torn *last* line.
On open, a torn tail is closed off with a newline so the next event starts a fresh line, and the
reader skips any line that does not parse. At `max_bytes` the file is renamed to
``events.jsonl.1`` (replacing the previous one) and a new file is started: at most twice the cap
on disk, which matters on /run, a tmpfs that is RAM.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oomguard.errors import OomguardError
from oomguard.observe.log import check_name, json_value
from oomguard.observe.statedir import StateDir, state_dir_hint

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import TracebackType

EVENTS_FILE = "events.jsonl"
ROTATED_FILE = EVENTS_FILE + ".1"
DEFAULT_MAX_BYTES = 10 << 20

#: The event kinds the supervisor writes. Not enforced (a newer daemon may add kinds and an older
#: CLI must still print them); this is the vocabulary for readers and docs.
KINDS = (
    "start",  # a service process started: pid
    "exit",  # it exited: code, signal, oom_killed, uptime
    "oom_kill",  # the kernel OOM-killed in this cgroup: delta, current, max
    "restart",  # a restart is scheduled/performed: reason, attempt, delay
    "backoff",  # restart delayed: attempt, delay
    "fatal",  # gave up restarting: reason, attempts
    "stop",  # a service was stopped on purpose: reason, signal
    "evict",  # a sidecar was killed to protect the primary: reason, current, high
    "restore",  # an evicted sidecar came back
    "pressure",  # a PSI trigger or memory.high throttling: avg10, high
    "controlled_restart",  # the primary was stopped and restarted as a last resort
    "supervisor_start",
    "supervisor_stop",
)
#: Detail keys that hold byte counts (printed as 64M by `oomguard events`). Keys ending in
#: ``_bytes`` count too.
BYTE_KEYS = frozenset(
    {"current", "peak", "min", "low", "high", "max", "swap_max", "limit", "headroom", "reserve"}
)
#: Detail keys that hold seconds (printed as 0.4s). Keys ending in ``_s`` or ``_seconds`` count too.
SECONDS_KEYS = frozenset({"delay", "uptime", "downtime", "timeout", "duration", "elapsed"})
_RESERVED = frozenset({"ts", "kind", "cgroup", "slice", "service"})
#: The ``ts`` range a reader accepts: 1970 to the end of year 9999 (what datetime can show).
#: Anything else (negative, 1e300, Infinity) is not an event oomguard wrote, and is skipped.
TS_MAX = 253402300799.0


def events_path(state_dir: Path) -> Path:
    return Path(state_dir) / EVENTS_FILE


def is_byte_key(key: str) -> bool:
    return key in BYTE_KEYS or key.endswith("_bytes")


def is_seconds_key(key: str) -> bool:
    return key in SECONDS_KEYS or key.endswith(("_s", "_seconds"))


class EventLog:
    """Appends events to ``<state_dir>/events.jsonl``. One owner; `close()` sets the fd to -1.

    Construction creates the state dir and opens the file, raising `OomguardError` (with a hint)
    if that is impossible: better to refuse to start than to run blind. After that, `append`
    never raises on I/O: a full disk must not take the supervisor down. It returns False and
    counts the loss in `dropped`, so the caller can log a warning.
    """

    def __init__(
        self,
        state_dir: Path | StateDir,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock_wall: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, not {max_bytes}")
        # A StateDir passed in belongs to the caller; one opened here belongs to this log.
        self._owns_dir = not isinstance(state_dir, StateDir)
        self.dir = state_dir if isinstance(state_dir, StateDir) else StateDir.open(state_dir)
        self.state_dir = self.dir.path
        self.path = self.state_dir / EVENTS_FILE
        self.rotated_path = self.state_dir / ROTATED_FILE
        self.max_bytes = max_bytes
        self.clock_wall = clock_wall
        #: Lines lost to failed writes (ENOSPC, EIO...), and the last error's text.
        self.dropped = 0
        self.last_error: str | None = None
        self._fd = -1
        self._ino = -1
        self._needs_newline = False
        try:
            self._open()
        except OSError as err:
            if self._owns_dir:
                self.dir.close()
            raise OomguardError(
                f"cannot open event log {self.path}: {err.strerror or err}"
                + (
                    " (a symlink or not a regular file; oomguard never writes through one)"
                    if err.errno in (errno.ELOOP, errno.EINVAL)
                    else ""
                ),
                hint=state_dir_hint(),
            ) from err

    # -- public -------------------------------------------------------------------------------

    def append(
        self,
        kind: str,
        /,
        *,
        service: str | None = None,
        cgroup: object = None,
        **details: object,
    ) -> bool:
        """Write one event. `cgroup` is a CgroupPath or str (written as ``str(cgroup)``); it is
        named like the field it fills. Details must be flat: scalars (lists of scalars are allowed).
        Returns False if the line could not be written (see class docstring)."""
        check_name(kind, "event kind")
        for key, value in details.items():
            check_name(key, "event detail")
            if key in _RESERVED:
                reserved = ", ".join(sorted(_RESERVED))
                raise ValueError(f"event detail {key!r} is reserved ({reserved})")
            if isinstance(value, dict):
                raise ValueError(f"event detail {key!r} must be flat, not a dict")
        where = None if cgroup is None else str(cgroup)
        obj: dict[str, object] = {
            "ts": self.clock_wall(),
            "cgroup": where,
            "slice": where,  # the old name of "cgroup", for one release (module docstring)
            "service": service,
            "kind": kind,
        }
        obj.update((k, json_value(v)) for k, v in details.items())
        line = (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        try:
            self._write_line(line)
        except OSError as err:
            self.dropped += 1
            self.last_error = err.strerror or str(err)
            return False
        return True

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        if self._owns_dir:
            self.dir.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _open(self) -> None:
        # O_RDWR, not O_WRONLY: _open reads the last byte back to detect a torn tail.
        # Relative to the checked directory's fd, O_NOFOLLOW, a regular file only: root never
        # appends to whatever a planted symlink names.
        fd = self.dir.open_file(EVENTS_FILE, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            st = os.fstat(fd)
            # A crash mid-write (or a kill -9 between two short writes) can leave the last line
            # without its newline; the next event would be glued onto it and both would be lost.
            self._needs_newline = st.st_size > 0 and os.pread(fd, 1, st.st_size - 1) != b"\n"
        except OSError:
            os.close(fd)
            raise
        self._fd, self._ino = fd, st.st_ino

    def _reopen_if_replaced(self) -> None:
        """Follow an outside rotation or deletion (logrotate, an operator's rm): O_APPEND writes
        to an unlinked file would vanish silently."""
        st = self.dir.lstat(EVENTS_FILE)
        ino = -1 if st is None else st.st_ino
        if ino != self._ino or self._fd < 0:
            fd, self._fd = self._fd, -1
            if fd >= 0:
                os.close(fd)
            self._open()

    def _write_line(self, line: bytes) -> None:
        self._reopen_if_replaced()
        size = os.fstat(self._fd).st_size
        if size > 0 and size + len(line) > self.max_bytes:
            self._rotate()
        if self._needs_newline:
            line = b"\n" + line
        written = os.write(self._fd, line)
        self._needs_newline = False
        if written < len(line):
            # Only a full disk or a quota does this on a regular file. Finish the line so the file
            # stays line-structured (the reader skips it if the remainder fails too).
            try:
                rest = line[written:]
                while rest:
                    n = os.write(self._fd, rest)
                    rest = rest[n:]
            except OSError:
                self._needs_newline = True
                raise

    def _rotate(self) -> None:
        # rename() is atomic: a reader holding the old fd keeps reading the old inode (now .1)
        # to its end, then reopens events.jsonl; `EventFollower` relies on exactly this.
        self.dir.rename(EVENTS_FILE, ROTATED_FILE)
        fd, self._fd = self._fd, -1
        os.close(fd)
        self._open()


def parse_event_line(line: bytes | str) -> dict[str, Any] | None:
    """One line -> the event dict, or None if the line is torn or not an event.

    Recovery: a torn line from a crash can have the next whole event glued onto it (before the
    writer learned to close off a torn tail, or if two writers raced); the last ``{"ts":`` in the
    line then starts a valid event.
    """
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    text = text.strip()
    if not text:
        return None
    candidates = [text]
    last = text.rfind('{"ts":')
    if last > 0:
        candidates.append(text[last:])
    for candidate in candidates:
        try:
            obj = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(obj, dict) and _valid_ts(obj.get("ts")) and "kind" in obj:
            return obj
    return None


def _valid_ts(ts: object) -> bool:
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return False
    return math.isfinite(ts) and 0 <= ts <= TS_MAX


def open_event_file(path: Path) -> int:
    """A read-only fd for an event file, or -1 if there is none to read. The readers run as
    whoever asks (often root): like the writer, they never follow a symlink planted in the
    state directory, and never block on a FIFO or read a device in its place (O_NONBLOCK,
    then a regular-file check); anything else counts as no file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return -1
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return -1
    return fd


def _read_lines(path: Path) -> Iterator[bytes]:
    """Complete lines of `path`; a last line without its newline is still being written (or was
    torn by a crash) and is skipped."""
    fd = open_event_file(path)
    if fd < 0:
        return
    with os.fdopen(fd, "rb") as f:
        for raw in f:
            if raw.endswith(b"\n"):
                yield raw


def read_event_file(path: Path, since: float | None = None) -> Iterator[dict[str, Any]]:
    """The events of one file (``events.jsonl`` or ``.1``) with ``ts >= since`` if given."""
    for raw in _read_lines(Path(path)):
        event = parse_event_line(raw)
        if event is not None and (since is None or event["ts"] >= since):
            yield event


def read_events(state_dir: Path, since: float | None = None) -> Iterator[dict[str, Any]]:
    """Every readable event, oldest first (the rotated file, then the current one), with
    ``ts >= since`` if given. Lines that do not parse are skipped, never raised."""
    state_dir = Path(state_dir)
    yield from read_event_file(state_dir / ROTATED_FILE, since)
    yield from read_event_file(state_dir / EVENTS_FILE, since)


class EventFollower:
    """Reads events appended to ``events.jsonl`` since the last call, across rotation.

    It holds an fd on the file and an offset. When the writer rotates (rename to ``.1``), the
    held fd still reads the old inode, so the follower drains it to the end before opening the
    new file from offset 0: no event is lost or repeated. That holds across up to two rotations
    between reads (the ``.1`` in between is read too); more would need a lag of 20 MiB of events.
    A file that shrank was truncated by someone else; reading restarts at 0. Waiting (inotify)
    is the caller's job; this class only reads, so it can be tested without timing.
    """

    def __init__(self, state_dir: Path, *, from_start: bool = False) -> None:
        self.path = Path(state_dir) / EVENTS_FILE
        self._fd = -1
        self._ino = -1
        self._offset = 0
        self._partial = b""
        self._open(at_end=not from_start)

    def _open(self, *, at_end: bool) -> None:
        fd = open_event_file(self.path)
        if fd < 0:
            return
        st = os.fstat(fd)
        self._fd, self._ino = fd, st.st_ino
        self._partial = b""
        # Start at the last complete line: a torn tail already there is finished by the writer.
        self._offset = st.st_size if at_end else 0
        if at_end and st.st_size > 0:
            tail = os.pread(fd, min(st.st_size, 1 << 16), max(0, st.st_size - (1 << 16)))
            self._offset = st.st_size - (len(tail) - (tail.rfind(b"\n") + 1))

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    def read_new(self) -> list[dict[str, Any]]:
        events = self._drain()
        try:
            ino = os.stat(self.path).st_ino
        except FileNotFoundError:
            ino = -1
        if ino not in (-1, self._ino):
            # Rotated (or created while we waited): the old fd was drained above. If the writer
            # rotated twice since our last read, events.jsonl.1 is a generation we never saw
            # (ours was unlinked by the second rotation but our fd still read it to the end).
            old_ino = self._ino
            self.close()
            rotated = self.path.with_name(ROTATED_FILE)
            try:
                rotated_ino = os.stat(rotated).st_ino
            except FileNotFoundError:
                rotated_ino = -1
            if old_ino != -1 and rotated_ino not in (-1, old_ino):
                events.extend(read_event_file(rotated))
            self._open(at_end=False)
            events.extend(self._drain())
        return events

    def _drain(self) -> list[dict[str, Any]]:
        if self._fd < 0:
            return []
        size = os.fstat(self._fd).st_size
        if size < self._offset:
            self._offset, self._partial = 0, b""
        events: list[dict[str, Any]] = []
        while True:
            chunk = os.pread(self._fd, 1 << 16, self._offset)
            if not chunk:
                break
            self._offset += len(chunk)
            data = self._partial + chunk
            *lines, self._partial = data.split(b"\n")
            for raw in lines:
                event = parse_event_line(raw)
                if event is not None:
                    events.append(event)
        return events

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
