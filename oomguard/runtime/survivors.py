"""Stop the services a killed oomguard left running, before new copies start.

After ``kill -9`` of oomguard its services keep running (in cgroup mode in their slices, in
degraded mode in oomguard's own cgroup). The next start must stop them, or each service runs
twice. Only processes that are provably ours are touched:

* a service's main process, recorded in state.json as pid + start time (clock ticks since
  boot): a pid is reused only by a process with another start time. It is pinned with a pidfd
  before the start time is checked again, so the signal cannot reach a reused pid;
* in degraded mode its process group (the service is a session leader, pgid == pid): while the
  verified leader is alive its pgid cannot be anyone else's;
* any process whose environment holds ``OOMGUARD_INSTANCE`` with the run's token, whose
  SHA-256 state.json records (only the hash: state.json is world-readable, and whoever read a
  token could otherwise plant it in a process of someone else, e.g. a setuid program). This
  finds a service's children whose main process is already gone (PR_SET_PDEATHSIG kills the
  main process, not its children). Only root or the same user can read another process's
  environment.

Each gets its service's stop signal, then SIGKILL after the stop timeout (capped at
`MAX_WAIT`), the same order as a normal stop. In cgroup mode the adopted tree's leftovers are
killed by `tree.build` as well; this runs first either way, so nothing old is left when the
first new service starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from oomguard import proc

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

#: The environment variable every service gets: this supervisor run's random token.
INSTANCE_ENV = "OOMGUARD_INSTANCE"
#: Upper bound on the wait for survivors to stop before SIGKILL.
MAX_WAIT = 10.0
_POLL = 0.05


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Survivor:
    service: str
    pid: int
    pidfd: int
    #: Signal the process group too (degraded mode: the service's own group).
    group: bool
    how: str


def find(state: Mapping[str, Any], proc_root: str | os.PathLike[str] = proc.PROC) -> list[Survivor]:
    """The provably-ours processes a dead supervisor's `state` left, each pinned by a pidfd."""
    found: dict[int, Survivor] = {}
    services = state.get("services")
    if isinstance(services, dict):
        for name, svc in services.items():
            if not isinstance(svc, dict):
                continue
            pid, start = svc.get("pid"), svc.get("pid_start")
            if not isinstance(pid, int) or not isinstance(start, int) or isinstance(pid, bool):
                continue
            if pid <= 1 or pid == os.getpid():
                continue
            fd = _pin(pid, start, proc_root)
            if fd is not None:
                # The service is a session leader: while it lives, its group is its own.
                found[pid] = Survivor(str(name), pid, fd, True, "pid+start")
    digest = state.get("instance_sha256")
    writer_start = state.get("pid_start")
    if isinstance(digest, str) and len(digest) == 64:
        for pid, service in _token_holders(digest, writer_start, proc_root):
            if pid in found or pid == os.getpid():
                continue
            start = proc.start_ticks(pid, proc_root)
            fd = _pin(pid, start, proc_root) if start is not None else None
            if fd is not None:
                found[pid] = Survivor(service, pid, fd, False, "instance token")
    return sorted(found.values(), key=lambda s: s.pid)


def stop(
    survivors: list[Survivor],
    stop_signal: Callable[[str], int],
    timeout: Callable[[str], float],
    log: Callable[..., None],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Stop signal, wait (bounded), SIGKILL what is left; close every pidfd."""
    try:
        for s in survivors:
            sig = stop_signal(s.service)
            log("survivor", service=s.service, pid=s.pid, proof=s.how, signal=sig)
            _send(s, sig)
        deadline = clock() + min(
            MAX_WAIT, max((timeout(s.service) for s in survivors), default=0.0)
        )
        while any(_alive(s) for s in survivors) and clock() < deadline:
            sleep(_POLL)
        for s in survivors:
            if _alive(s):
                log("survivor_kill", service=s.service, pid=s.pid)
                _send(s, signal.SIGKILL)
    finally:
        for s in survivors:
            fd, s.pidfd = s.pidfd, -1
            if fd >= 0:
                os.close(fd)


def _pin(pid: int, start: int, root: str | os.PathLike[str]) -> int | None:
    """A pidfd for `pid` if it is still the process that started at `start`."""
    if proc.start_ticks(pid, root) != start:
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    # Checked again after pinning: the pid may have been reused in between.
    if proc.start_ticks(pid, root) != start:
        os.close(fd)
        return None
    return fd


def _token_holders(
    digest: str, writer_start: object, root: str | os.PathLike[str]
) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for pid in proc.pids(root):
        if isinstance(writer_start, int):
            # A service started after its supervisor; anything older cannot be one.
            start = proc.start_ticks(pid, root)
            if start is None or start < writer_start:
                continue
        env = proc.environ(pid, root)
        token = None if env is None else env.get(INSTANCE_ENV.encode())
        if token is not None and token_hash(token.decode("ascii", "replace")) == digest:
            service = env.get(b"OOMGUARD_SERVICE") if env is not None else None
            out.append((pid, "?" if service is None else service.decode("utf-8", "replace")))
    return out


def _send(s: Survivor, sig: int) -> None:
    with contextlib.suppress(OSError):
        # Only while the verified leader is alive (pinned) is its pgid its own group.
        if s.group and _alive(s):
            os.killpg(s.pid, sig)
            return
        signal.pidfd_send_signal(s.pidfd, sig)


def _alive(s: Survivor) -> bool:
    try:
        signal.pidfd_send_signal(s.pidfd, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    # A zombie (not reaped: its parent is gone or init) counts as stopped.
    return proc.is_zombie(s.pid) is False
