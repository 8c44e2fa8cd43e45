"""Readiness on a real cgroup v2 kernel (`oomguard run`): a command probe gates depends_on, a
service that never becomes ready is a failed start, a notify service's READY=1 counts only from
its own processes, and oomguard plays its part of systemd's NOTIFY_SOCKET protocol."""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

import pytest

from .support import PYTHON, assert_no_traceback, sh, start_run

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.kernel


#: A primary that stops cleanly on SIGTERM (so oomguard's exit status is 0), in a shell.
TRAP = "trap 'exit 0' TERM"
FOREVER = "while :; do sleep 0.2; done"


def index(events: list[dict[str, Any]], kind: str, service: str) -> int:
    for i, e in enumerate(events):
        if e.get("kind") == kind and e.get("service") == service:
            return i
    raise AssertionError(f"no {kind!r} event of {service}: {[e.get('kind') for e in events]}")


def test_command_probe_gates_the_dependent(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    """db becomes ready only once its probe's file exists (2 s after its start, while its
    process has long been up); pooler (depends_on db) is spawned only after db's ready event."""
    flag = tmp_path / "db-ready"
    config = {
        "service": {
            "db": {
                "role": "primary",
                "command": sh(f"{TRAP}; sleep 2; touch {flag}; {FOREVER}"),
                "start_secs": "0s",
                "ready": {"command": ["test", "-e", str(flag)], "interval": "200ms"},
            },
            "pooler": {"command": ["sleep", "600"], "depends_on": ["db"], "start_secs": "0s"},
        }
    }
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        og.wait_running("db", "pooler")
        events = og.events()
        code = og.stop()
        output = og.output()
    assert_no_traceback(output)
    assert code == 0, output
    ready = events[index(events, "ready", "db")]
    assert index(events, "spawned", "db") < index(events, "ready", "db")
    assert index(events, "ready", "db") < index(events, "spawned", "pooler")
    assert index(events, "waiting", "pooler") < index(events, "ready", "db")
    # Ready when the probe said so, not at start_secs = 0.
    assert ready["seconds"] >= 2.0, ready
    assert not [e for e in events if e.get("kind") == "running" and e.get("service") == "db"]


def test_never_ready_is_a_failed_start(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    """A primary whose probe never succeeds is stopped at its ready timeout, restarted with a
    backoff like any failed start, and given up on after max_restarts: oomguard exits non-zero."""
    config = {
        "service": {
            "db": {
                "role": "primary",
                "command": ["sleep", "600"],
                "restart": "always",
                "max_restarts": 1,
                "ready": {"command": ["false"], "interval": "100ms", "timeout": "5s"},
            }
        }
    }
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        code = og.wait_exit()
        output = og.output()
        events = og.events()
    assert_no_traceback(output)
    assert code != 0, output
    kinds = [e["kind"] for e in events if e.get("service") == "db"]
    assert kinds.count("not_ready") == 2, kinds
    assert "ready" not in kinds and "running" not in kinds
    backoff = next(e for e in events if e["kind"] == "backoff")
    assert backoff["reason"] == "not_ready"
    assert [e for e in events if e["kind"] == "fatal" and e.get("service") == "db"]
    # The probe's last answer is logged at each not_ready (the first one too: the probes are
    # told about the initial starts before the loop's first wait).
    assert (
        output.count('not_ready_probe level=warn prog=oomguard service=db last="exit code 1"') == 2
    )


NOTIFYING = (
    "import os, signal, socket, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: os._exit(0))\n"
    "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
    "addr = os.environ['NOTIFY_SOCKET']\n"
    "s.sendto(b'STATUS=warming up', addr)\n"
    "time.sleep(1)\n"
    "s.sendto(b'READY=1\\nSTATUS=serving', addr)\n"
    "time.sleep(600)\n"
)


def test_notify_service_is_ready_on_ready_1(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    """notify = true: the service gets $NOTIFY_SOCKET; a stranger's READY=1 on that socket is
    dropped (its pid is not in the service's cgroup); the service's own READY=1 makes it ready."""
    config = {
        "service": {
            "db": {
                "role": "primary",
                "command": [PYTHON, "-c", NOTIFYING],
                "ready": {"notify": True, "timeout": "60s"},
            }
        }
    }
    sock_path = tmp_path / "state" / "notify-db.sock"
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        og.wait_for(sock_path.exists, "the notify socket")
        stranger = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        stranger.sendto(b"READY=1", str(sock_path))
        stranger.close()
        og.wait_running("db")
        statuses = [e["status"] for e in og.events("status", "db")]
        ready = og.events("ready", "db")
        code = og.stop()
        output = og.output()
    assert_no_traceback(output)
    assert code == 0, output
    assert statuses[:2] == ["warming up", "serving"], statuses
    # Ready only on its own READY=1, a second after it started, not on the stranger's.
    assert ready and ready[0]["seconds"] >= 1.0, ready
    assert not sock_path.exists()  # removed at the end


def recv_creds(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str]] | None:
    sock.settimeout(timeout)
    try:
        data, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    except TimeoutError:
        return None
    pid = next(struct.unpack("iII", d[:12])[0] for lvl, kind, d in anc if kind == 2)
    fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
    return pid, fields


def test_plays_systemd_notify_socket(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    """systemd's side of Type=notify on an abstract socket: oomguard (its main pid, as
    NotifyAccess=main requires) sends STATUS lines while the primary starts, READY=1 only after
    the primary's ready event, and WATCHDOG=1 pings at half of WATCHDOG_USEC."""
    flag = tmp_path / "db-ready"
    name = f"oomguard-ktest-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(b"\0" + name.encode())
    config = {
        "service": {
            "db": {
                "role": "primary",
                "command": sh(f"{TRAP}; sleep 3; touch {flag}; {FOREVER}"),
                "ready": {"command": ["test", "-e", str(flag)], "interval": "200ms"},
            },
            "side": {"command": ["sleep", "600"], "start_secs": "0s"},
        }
    }
    env = {"NOTIFY_SOCKET": f"@{name}", "WATCHDOG_USEC": "2000000"}
    got: list[tuple[float, int, dict[str, str]]] = []
    ready_seen_first: bool | None = None
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config, env=env) as og:
        end = time.monotonic() + 120
        while time.monotonic() < end:
            msg = recv_creds(sock, 1.0)
            if msg is None:
                continue
            got.append((time.monotonic(), *msg))
            if msg[1].get("READY") == "1":
                # At the moment READY=1 arrived, the primary's ready event must be written.
                ready_seen_first = bool(og.events("ready", "db"))
                break
        # Keep listening a little for watchdog pings after READY.
        for _ in range(3):
            msg = recv_creds(sock, 3.0)
            if msg is not None:
                got.append((time.monotonic(), *msg))
        code = og.stop()
        after: list[dict[str, str]] = []
        while (msg := recv_creds(sock, 2.0)) is not None:
            after.append(msg[1])
        output = og.output()
        oomguard_pid = og.pid
    sock.close()
    assert_no_traceback(output)
    assert code == 0, output
    assert ready_seen_first is True, got
    assert {pid for _, pid, _ in got} == {oomguard_pid}
    before_ready = [f for _, _, f in got[: next(i for i, m in enumerate(got) if "READY" in m[2])]]
    assert any("STATUS" in f for f in before_ready), got
    assert not any(f.get("READY") for f in before_ready)
    pings = [t for t, _, f in got if f.get("WATCHDOG") == "1"]
    assert len(pings) >= 2, got
    assert any(f.get("STOPPING") == "1" for f in after), after


HANGING = (
    "import os, signal, socket, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: os._exit(0))\n"
    "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
    "addr = os.environ['NOTIFY_SOCKET']\n"
    "assert os.environ['WATCHDOG_USEC'] == '2000000'\n"
    "s.sendto(b'READY=1', addr)\n"
    "for _ in range(3):\n"
    "    time.sleep(0.5)\n"
    "    s.sendto(b'WATCHDOG=1', addr)\n"
    "time.sleep(600)  # hangs: no more pings\n"
)


def test_watchdog_kills_a_service_that_stops_pinging(
    cgroup2_mount: Path, scratch_cgroup: Path, tmp_path: Path
) -> None:
    """ready.watchdog: a notify service that stops sending WATCHDOG=1 is killed (SIGKILL, not
    its stop signal: a hung service may ignore it) once the interval passes, and restarted."""
    config = {
        "service": {
            "db": {"role": "primary", "command": ["sleep", "600"], "stop_signal": "SIGKILL"},
            "side": {
                "command": [PYTHON, "-c", HANGING],
                "ready": {"notify": True, "watchdog": "2s", "timeout": "60s"},
            },
        }
    }
    with start_run(tmp_path, cgroup2_mount, scratch_cgroup, config) as og:
        og.wait_event("ready", "side", count=2)
        events = og.events()
        og.stop()
        output = og.output()
    assert_no_traceback(output)
    kinds = [e["kind"] for e in events if e.get("service") == "side"]
    first_watchdog = kinds.index("watchdog")
    assert kinds.index("ready") < first_watchdog, kinds
    exits = [e for e in events if e["kind"] == "exit" and e.get("service") == "side"]
    assert exits and exits[0]["signal"] == 9, exits
    assert "backoff" in kinds[first_watchdog:], kinds
