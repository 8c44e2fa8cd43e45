"""`oomguard events`: print (or follow) the supervisor's event log.

Import-light: no pydantic, no config. The state dir comes from ``--state-dir`` or
``$OOMGUARD_STATE_DIR``, defaulting to the supervisor's default (/run/oomguard).

``--follow`` waits with inotify on the state *directory*, not the file: a directory watch sees
appends to events.jsonl (IN_MODIFY with the child's name), its creation, and the writer's
rotation (a rename to events.jsonl.1 plus a new file), none of which a watch on the file's inode
would survive. A 1 s timeout re-checks the directory itself, so a state dir that is removed and
recreated (oomguard restarted with a fresh /run) is picked up again.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from oomguard.errors import OomguardError, UsageError
from oomguard.observe.eventlog import (
    EVENTS_FILE,
    ROTATED_FILE,
    EventFollower,
    is_byte_key,
    is_seconds_key,
    read_event_file,
    read_events,
)
from oomguard.observe.log import format_seconds, format_value, iso_utc
from oomguard.observe.state import read_state, state_writer_alive
from oomguard.paths import STATE_DIR
from oomguard.units import format_size, parse_duration

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from types import FrameType

#: With --follow and no --since, show this many past events first (like ``tail -f``).
FOLLOW_BACKLOG = 10
#: Printed first (or not at all: ``slice`` is ``cgroup``'s old name, see observe/eventlog.py).
_HEAD_KEYS = ("ts", "kind", "service", "cgroup", "slice")


def format_detail(key: str, value: object) -> str:
    """Byte and seconds keys (see observe/eventlog.py) are printed in units; the rest as is."""
    if is_byte_key(key):
        if value is None:
            return format_size(None)  # the kernel's "max"
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return format_size(value)
    if is_seconds_key(key) and isinstance(value, int | float) and not isinstance(value, bool):
        return format_seconds(float(value))
    return format_value(value)


def format_event(event: dict[str, Any]) -> str:
    """``2026-11-25T22:31:02Z  backup   oom_kill  cgroup=/oomguard/sidecars/backup delta=1 ...``"""
    ts = event.get("ts")
    when = iso_utc(float(ts), millis=False) if isinstance(ts, int | float) else "?"
    service = event.get("service") or "-"
    kind = event.get("kind") or "?"
    details: list[str] = []
    # An event log written before the field was renamed has only "slice".
    cgroup = event.get("cgroup") or event.get("slice")
    if cgroup:
        details.append(f"cgroup={format_value(cgroup)}")
    details.extend(
        f"{key}={format_detail(key, value)}"
        for key, value in event.items()
        if key not in _HEAD_KEYS
    )
    return f"{when}  {service!s:<8} {kind!s:<9} {' '.join(details)}".rstrip()


def _render(event: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return format_event(event)


def _no_dir_error(state_dir: Path) -> OomguardError:
    return OomguardError(
        f"state dir {state_dir} does not exist",
        hint="is oomguard running? pass --state-dir (or set $OOMGUARD_STATE_DIR) to the "
        "[oomguard] state_dir of the running supervisor",
    )


def _no_log_error(state_dir: Path) -> OomguardError:
    path = state_dir / EVENTS_FILE
    try:
        state = read_state(state_dir)
    except OomguardError:
        state = None
    if state is not None and state_writer_alive(state):
        hint = (
            f"oomguard (pid {state.get('pid')}) is running but has not logged an event yet; "
            "use --follow to wait for one"
        )
    else:
        hint = (
            "is oomguard running? pass --state-dir (or set $OOMGUARD_STATE_DIR) to the "
            "[oomguard] state_dir of the running supervisor"
        )
    return OomguardError(f"no event log at {path}", hint=hint)


def _check_readable(state_dir: Path) -> None:
    for name in (ROTATED_FILE, EVENTS_FILE):
        path = state_dir / name
        if path.exists() and not os.access(path, os.R_OK):
            raise OomguardError(
                f"cannot read {path}: permission denied",
                hint="run as root or as the user oomguard runs as",
            )


class _Stop(Exception):
    """Raised from the SIGTERM handler to leave the follow loop cleanly."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def _follow(
    state_dir: Path,
    follower: EventFollower,
    backlog: Iterable[dict[str, Any]],
    show: Callable[[dict[str, Any]], None],
) -> None:
    from inotify_simple import INotify, flags

    for event in backlog:
        show(event)
    # Appends (MODIFY), creation, rotation (MOVED_*) and deletion of files in the directory.
    mask = flags.MODIFY | flags.CREATE | flags.MOVED_TO | flags.MOVED_FROM | flags.DELETE
    mask |= flags.ONLYDIR
    with INotify() as ino:
        wd, dir_ino = -1, -1

        def rewatch() -> None:
            nonlocal wd, dir_ino
            try:
                st = os.stat(state_dir)
            except OSError:
                return
            if st.st_ino != dir_ino:
                if wd >= 0:
                    # The watch may have died with the old directory (IN_IGNORED).
                    with contextlib.suppress(OSError):
                        ino.rm_watch(wd)
                try:
                    wd = ino.add_watch(state_dir, mask)
                except OSError:
                    return  # gone again; the next tick retries
                dir_ino = st.st_ino
                # Anything written between the loss of the old watch and this one.
                for event in follower.read_new():
                    show(event)

        rewatch()
        click.echo(f"oomguard: following {state_dir / EVENTS_FILE} (Ctrl-C to stop)", err=True)
        while True:
            notes = ino.read(timeout=1000)
            if not notes:
                # Timeout tick: the directory may have been replaced (a new /run/oomguard).
                rewatch()
            for event in follower.read_new():
                show(event)


def _tail(events: Iterable[dict[str, Any]], n: int) -> Iterator[dict[str, Any]]:
    yield from collections.deque(events, maxlen=n)


@click.command("events")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events as they happen.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON objects, one a line.")
@click.option(
    "--since", metavar="DURATION", help="Only events from the last DURATION (e.g. 30s, 5m, 2h)."
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="OOMGUARD_STATE_DIR",
    default=STATE_DIR,
    show_default=True,
    help="The supervisor's [oomguard] state_dir.",
)
@click.option("--service", metavar="NAME", help="Only events of this service.")
def command(
    follow: bool, as_json: bool, since: str | None, state_dir: Path, service: str | None
) -> int:
    """Show (or follow) the supervisor's event log."""
    cutoff = _cutoff(since)
    if not state_dir.is_dir():
        raise _no_dir_error(state_dir)
    _check_readable(state_dir)

    def wanted(event: dict[str, Any]) -> bool:
        return service is None or event.get("service") == service

    def show(event: dict[str, Any]) -> None:
        if wanted(event):
            click.echo(_render(event, as_json))

    if not follow:
        if not (state_dir / EVENTS_FILE).exists() and not (state_dir / ROTATED_FILE).exists():
            raise _no_log_error(state_dir)
        for event in read_events(state_dir, since=cutoff):
            show(event)
        return 0
    _follow_log(state_dir, cutoff, wanted, show)
    return 0


def _cutoff(since: str | None) -> float | None:
    """The wall-clock time --since stands for, or None without it."""
    if since is None:
        return None
    try:
        return time.time() - parse_duration(since)
    except ValueError as err:
        raise UsageError(f"--since: {err}", hint="use a duration like 30s, 5m or 2h") from err


def _follow_log(
    state_dir: Path,
    cutoff: float | None,
    wanted: Callable[[dict[str, Any]], bool],
    show: Callable[[dict[str, Any]], None],
) -> None:
    # Open the current file before reading history, so nothing appended in between is missed:
    # the follower returns the whole current file first, then only what is new.
    follower = EventFollower(state_dir, from_start=True)
    history = [
        *read_event_file(state_dir / ROTATED_FILE),
        *follower.read_new(),
    ]
    if cutoff is not None:
        backlog: Iterable[dict[str, Any]] = (e for e in history if e["ts"] >= cutoff)
    else:
        backlog = _tail((e for e in history if wanted(e)), FOLLOW_BACKLOG)
    if not follower.is_open:
        click.echo(f"oomguard: waiting for {state_dir / EVENTS_FILE} to appear", err=True)

    # SIGTERM (e.g. `timeout`, a container stop) ends the loop like Ctrl-C does. Only the main
    # thread may install handlers; the previous one is restored on the way out.
    installed = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_stop) if installed else None
    try:
        _follow(state_dir, follower, backlog, show)
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        follower.close()
        if installed:
            signal.signal(signal.SIGTERM, previous)
