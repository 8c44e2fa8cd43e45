"""sd_notify, both sides (events/sdnotify.py): the client against a socket playing systemd, the
server against real senders (credentials are the kernel's), on the host."""

from __future__ import annotations

import array
import os
import socket
import stat
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from oomguard.events.sdnotify import MAX_MESSAGE, NotifyClient, NotifyServer, parse

if TYPE_CHECKING:
    from pathlib import Path


def receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_parse() -> None:
    assert parse(b"READY=1\nSTATUS=up: 3 of 3\n") == {"READY": "1", "STATUS": "up: 3 of 3"}
    assert parse(b"garbage\nA=1\nA=2\n=x\n") == {"A": "2"}
    assert parse(b"STATUS=\xff") == {"STATUS": "\ufffd"}


def test_client_from_environ_unsets_and_reads_the_watchdog(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "n"), "WATCHDOG_USEC": "4000000", "X": "1"}
    client = NotifyClient.from_environ(env)
    assert client is not None
    assert env == {"X": "1"}
    assert client.address == str(tmp_path / "n")
    assert client.watchdog == 4.0
    client.close()


@pytest.mark.parametrize(
    ("env", "address", "watchdog"),
    [
        ({"NOTIFY_SOCKET": "@abstract-name"}, b"\0abstract-name", None),
        ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}, "/x", None),
        ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "self"}, "/x", 1e-3),
        ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "0"}, "/x", None),
        ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "lots"}, "/x", None),
    ],
)
def test_client_addresses_and_watchdog_owner(
    env: dict[str, str], address: str | bytes, watchdog: float | None
) -> None:
    if env.get("WATCHDOG_PID") == "self":
        env["WATCHDOG_PID"] = str(os.getpid())
    client = NotifyClient.from_environ(env)
    assert client is not None
    assert client.address == address
    assert client.watchdog == watchdog
    client.close()


@pytest.mark.parametrize("value", ["", "relative/path", "@"])
def test_no_client_without_a_usable_socket(value: str) -> None:
    assert NotifyClient.from_environ({"NOTIFY_SOCKET": value}) is None


def test_client_sends_to_a_path_and_to_an_abstract_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    name = f"oomguard-test-{os.getpid()}-{time.monotonic_ns()}"
    for env_value, bind_to in ((path, path), (f"@{name}", b"\0" + name.encode())):
        sock = receiver(bind_to)
        client = NotifyClient.from_environ({"NOTIFY_SOCKET": env_value})
        assert client is not None
        assert client.send(READY="1", STATUS="all\nready")
        assert sock.recv(MAX_MESSAGE) == b"READY=1\nSTATUS=all ready\n"
        assert client.sent == 1
        client.close()
        sock.close()


def test_client_never_blocks_and_counts_drops(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    sock = receiver(path)  # never read: its queue fills
    client = NotifyClient(path)
    start = time.monotonic()
    for _ in range(2000):
        client.send(STATUS="x" * 1000)
    assert time.monotonic() - start < 5
    assert client.dropped > 0 and client.sent > 0
    assert client.last_error is not None
    client.close()
    sock.close()
    # No receiver at all: dropped, no exception.
    gone = NotifyClient(str(tmp_path / "nobody"))
    assert gone.send(READY="1") is False
    gone.close()


def test_client_watchdog_pings_at_half_the_interval(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    sock = receiver(path)
    client = NotifyClient(path, watchdog_usec=10_000_000)
    assert client.ping_deadline() is None
    client.start_watchdog(100.0)
    assert client.ping_deadline() == 100.0
    client.tick(100.0)
    assert sock.recv(MAX_MESSAGE) == b"WATCHDOG=1\n"
    assert client.ping_deadline() == 105.0
    client.tick(104.9)
    assert client.sent == 1
    client.tick(105.0)
    assert client.sent == 2
    client.close()
    sock.close()


def test_client_without_watchdog_never_pings(tmp_path: Path) -> None:
    client = NotifyClient(str(tmp_path / "n"))
    client.start_watchdog(0.0)
    assert client.ping_deadline() is None
    client.close()


# -- server --------------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> NotifyServer:
    return NotifyServer(str(tmp_path / "svc.notify"))


def test_server_socket_is_private_and_removed_on_close(server: NotifyServer) -> None:
    st = os.lstat(server.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    server.close()
    assert not os.path.exists(server.path)
    server.close()  # idempotent


def test_server_replaces_a_stale_socket_but_not_a_file(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    first = NotifyServer(path)
    first._sock.close()  # type: ignore[union-attr]  # a crashed run: the file stays
    first._sock = None
    second = NotifyServer(path)
    assert second.fileno() >= 0
    second.close()
    other = tmp_path / "f"
    other.write_text("mine")
    with pytest.raises(OSError):
        NotifyServer(str(other))
    assert other.read_text() == "mine"


def test_server_gets_the_kernels_credentials(server: NotifyServer) -> None:
    client = NotifyClient(server.path)
    assert client.send(READY="1", STATUS="up")
    (note,) = server.receive()
    assert note.pid == os.getpid()
    assert note.uid == os.getuid()
    assert note.fields == {"READY": "1", "STATUS": "up"}
    assert server.receive() == []
    client.close()
    server.close()


def test_server_sees_another_processes_pid(server: NotifyServer) -> None:
    code = (
        "import os, socket; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
        f"s.sendto(b'READY=1', {server.path!r}); print(os.getpid())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True)
    (note,) = server.receive()
    assert note.pid == int(out.stdout)
    server.close()


def test_server_drops_oversized_and_empty_and_closes_passed_fds(server: NotifyServer) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.sendto(b"STATUS=" + b"x" * MAX_MESSAGE, server.path)
    sock.sendto(b"", server.path)
    r, w = os.pipe()
    fds = array.array("i", [r])
    sock.sendmsg([b"FDSTORE=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)], 0, server.path)
    os.close(r)
    notes = server.receive()
    assert [n.fields for n in notes] == [{"FDSTORE": "1"}]
    assert server.rejected == 2
    # The passed read end was closed by the server: the pipe has no reader left.
    with pytest.raises(BrokenPipeError):
        os.write(w, b"x")
    os.close(w)
    sock.close()
    server.close()


def test_server_chowns_for_the_service_user(tmp_path: Path) -> None:
    srv = NotifyServer(str(tmp_path / "s"), owner=(os.getuid(), os.getgid()))
    st = os.lstat(srv.path)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    srv.close()
