"""The sd_notify protocol, both sides: a client (oomguard telling systemd it is ready) and a
server (a service telling oomguard it is ready, on a socket oomguard owns).

The protocol (sd_notify(3)): one AF_UNIX SOCK_DGRAM datagram per notification, newline-separated
``KEY=VALUE`` assignments (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``...). The
socket's address is in ``$NOTIFY_SOCKET``: a path, or ``@name`` for Linux's abstract namespace
(the ``@`` stands for the leading NUL byte). ``$WATCHDOG_USEC`` asks for ``WATCHDOG=1`` at least
that often; systemd's own advice is to ping at half of it.

Client: every send is non-blocking (``SOCK_NONBLOCK``): a receiver that does not drain its queue
costs a dropped notification (counted), never a blocked loop.

Server: the receiver checks who sent each datagram. ``SO_PASSCRED`` makes the kernel attach the
sender's credentials (``SCM_CREDENTIALS``: pid, uid, gid) to every datagram, filled in by the
kernel, not claimed by the sender (a sender may claim another pid only with CAP_SYS_ADMIN); a
datagram whose pid does not belong to the service is dropped. File descriptors a sender attaches
(``FDSTORE=1`` with ``SCM_RIGHTS``) are closed at once: oomguard stores none, and an fd left open
would leak with every message.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "MAX_MESSAGE",
    "Notification",
    "NotifyClient",
    "NotifyServer",
    "parse",
]

#: systemd's own limit for a notification (NOTIFY_BUFFER_MAX = PIPE_BUF); longer ones are dropped.
MAX_MESSAGE = 4096
#: How many datagrams one readiness of the server socket drains (the loop calls again for more).
_BATCH = 32
#: struct ucred: pid, uid, gid (<sys/socket.h>).
_UCRED = struct.Struct("iII")
#: Room for the credentials and for a few fds a sender might attach (they are closed).
_ANCILLARY = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(16 * 4)


def _address(value: str) -> str | bytes:
    """``$NOTIFY_SOCKET`` as a socket address: a path, or ``@name`` -> ``b"\\0name"``."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def parse(data: bytes) -> dict[str, str]:
    """``KEY=VALUE`` lines of one datagram. Lines without ``=`` are ignored, as systemd does; a
    later assignment of a key wins."""
    out: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            out[key] = value
    return out


class NotifyClient:
    """Sends notifications to ``$NOTIFY_SOCKET`` (oomguard's own, under systemd).

    `from_environ` returns None when no socket is set (not under a Type=notify unit). It also
    removes ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from `environ` (sd_notify's
    ``unset_environment``): a service started with ``inherit_env`` must not talk to systemd in
    oomguard's name.
    """

    def __init__(self, address: str | bytes, watchdog_usec: int | None = None) -> None:
        self.address = address
        #: How often systemd wants WATCHDOG=1 (seconds), or None.
        self.watchdog = watchdog_usec / 1e6 if watchdog_usec else None
        self.sent = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._sock: socket.socket | None = socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        )
        self._next_ping: float | None = None

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> NotifyClient | None:
        env = os.environ if environ is None else environ
        value = env.pop("NOTIFY_SOCKET", "")
        usec = env.pop("WATCHDOG_USEC", "")
        pid = env.pop("WATCHDOG_PID", "")
        if not value or not (value.startswith(("/", "@")) and len(value) > 1):
            return None
        # WATCHDOG_PID names the process the watchdog is for; another pid's is not ours.
        ours = not pid or (pid.isascii() and pid.isdigit() and int(pid) == os.getpid())
        wanted = usec.isascii() and usec.isdigit() and int(usec) > 0
        return cls(_address(value), int(usec) if ours and wanted else None)

    def send(self, **fields: str) -> bool:
        """Send one datagram ``KEY=VALUE\\n...``; False (and counted) if it could not go."""
        if self._sock is None:
            return False
        text = "".join(f"{k}={v.replace(chr(10), ' ')}\n" for k, v in fields.items())
        try:
            self._sock.sendto(text.encode()[:MAX_MESSAGE], self.address)
        except OSError as err:
            self.dropped += 1
            self.last_error = err.strerror or str(err)
            return False
        self.sent += 1
        return True

    def ping_deadline(self) -> float | None:
        """When the next WATCHDOG=1 is due (None: systemd asked for none, or not started)."""
        return self._next_ping

    def start_watchdog(self, now: float) -> None:
        if self.watchdog is not None:
            self._next_ping = now

    def tick(self, now: float) -> None:
        """Ping if due: at half of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3) advises."""
        if self._next_ping is not None and self.watchdog is not None and now >= self._next_ping:
            self.send(WATCHDOG="1")
            self._next_ping = now + self.watchdog / 2

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@dataclass(frozen=True)
class Notification:
    """One accepted datagram: who sent it (as the kernel says) and what it says."""

    pid: int
    uid: int
    fields: Mapping[str, str] = field(default_factory=dict)


class NotifyServer:
    """A per-service ``NOTIFY_SOCKET``: a SOCK_DGRAM socket bound at `path`, mode 0600 unless
    `owner` (uid, gid) is given, then chowned so that a service running as that user may send.

    `path`'s directory must be one oomguard made and checked (the state dir): an existing socket
    file there is a leftover of an earlier run and is replaced; anything else at `path` is left
    alone and the bind fails.
    """

    def __init__(self, path: str, owner: tuple[int, int] | None = None) -> None:
        self.path = path
        self.rejected = 0
        self._sock: socket.socket | None = None
        _remove_stale_socket(path)
        sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        )
        bound = False
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.bind(path)
            bound = True
            # Through the path, right after bind: AF_UNIX sockets cannot be fchmod'ed, and
            # connect() checks the write permission of the socket file.
            os.chmod(path, 0o600 if owner is None else 0o660, follow_symlinks=False)
            if owner is not None:
                os.chown(path, owner[0], owner[1], follow_symlinks=False)
        except BaseException:
            sock.close()
            if bound:  # only the socket file we made; a failed bind made none
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise
        self._sock = sock

    def fileno(self) -> int:
        return self._sock.fileno() if self._sock is not None else -1

    def receive(self) -> list[Notification]:
        """Drain up to a batch of datagrams (non-blocking). Each comes with the kernel's
        credentials of its sender; one without them, too long, or empty is dropped."""
        out: list[Notification] = []
        if self._sock is None:
            return out
        for _ in range(_BATCH):
            try:
                data, ancdata, flags, _addr = self._sock.recvmsg(MAX_MESSAGE, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as err:  # pragma: no cover - ENOMEM and the like: try next turn
                if err.errno == errno.EAGAIN:
                    break
                self.rejected += 1
                break
            creds = _credentials(ancdata)
            if creds is None or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or not data:
                self.rejected += 1
                continue
            pid, uid, _gid = creds
            out.append(Notification(pid, uid, parse(data)))
        return out

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def _credentials(ancdata: list[tuple[int, int, bytes]]) -> tuple[int, int, int] | None:
    """The SCM_CREDENTIALS of a datagram; closes every fd that came with it (SCM_RIGHTS)."""
    creds: tuple[int, int, int] | None = None
    for level, kind, data in ancdata:
        if level != socket.SOL_SOCKET:
            continue
        if kind == socket.SCM_CREDENTIALS and len(data) >= _UCRED.size:
            creds = _UCRED.unpack_from(data)
        elif kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            for (fd,) in struct.iter_unpack("i", data[:usable]):
                with contextlib.suppress(OSError):
                    os.close(fd)
    return creds


def _remove_stale_socket(path: str) -> None:
    """Unlink a socket file left at `path` by an earlier run; never anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(st.st_mode):
        os.unlink(path)
