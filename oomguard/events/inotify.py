"""inotify on cgroup files (memory.events, memory.events.local, cgroup.events) as loop events.

The kernel calls ``kernfs_notify()`` when a counter in memory.events or a field in cgroup.events
changes, which reaches inotify as ``IN_MODIFY`` on that file. Two consequences:

- Notifications are *rate-limited and coalesced* by the kernel (cgroup file notifications are
  throttled to about one per 10 ms per file, i.e. <= 100/s, and inotify merges identical queued
  events). Ten OOM kills can arrive as one event. Consumers must re-read the file and diff the
  counters; never count notifications.
- A cgroup that is removed takes its files with it: the watch is dropped by the kernel, which
  queues ``IN_IGNORED`` (possibly after ``IN_DELETE_SELF``). That is surfaced as
  `WatchEvent.VANISHED` so the supervisor treats the slice as gone instead of waiting forever.

Implemented with ctypes on libc's inotify_* calls rather than inotify_simple: this module owns a
raw fd that the loop registers, and inotify_simple wraps it in a FileIO whose finalizer would
close it behind the owner's back; parsing the event records is a few lines of `struct`.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import functools
import os
import struct
from typing import TYPE_CHECKING, Generic, TypeVar

from oomguard.errors import OomguardError

if TYPE_CHECKING:
    from pathlib import Path

K = TypeVar("K")

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_CLOEXEC = os.O_CLOEXEC
IN_NONBLOCK = os.O_NONBLOCK

#: struct inotify_event { int wd; uint32_t mask, cookie, len; char name[len]; }
_EVENT = struct.Struct("iIII")
#: Large enough for many events; one event is at most 16 + NAME_MAX + 1 bytes.
_READ_SIZE = 64 * 1024

#: What a cgroup file watch asks for. IN_IGNORED and IN_Q_OVERFLOW are always delivered.
DEFAULT_MASK = IN_MODIFY | IN_DELETE_SELF


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(None, use_errno=True)
    lib.inotify_init1.argtypes = [ctypes.c_int]
    lib.inotify_init1.restype = ctypes.c_int
    lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    lib.inotify_add_watch.restype = ctypes.c_int
    lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.inotify_rm_watch.restype = ctypes.c_int
    return lib


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


class WatchEvent(enum.IntFlag):
    """What happened to a watched file since the last `InotifyWatcher.read()`."""

    #: The file's content changed (re-read it and diff).
    MODIFIED = enum.auto()
    #: The file is gone (cgroup removed, or the watch was dropped); the watch is dead.
    VANISHED = enum.auto()
    #: The kernel's event queue overflowed and events were lost: re-read every watched file.
    #: Reported for every live key, together with MODIFIED.
    OVERFLOW = enum.auto()


class InotifyWatcher(Generic[K]):
    """One inotify fd, many watches, each under a caller-chosen key.

    Register `fileno()` in the loop with ``EPOLLIN`` and call `read()` when it is ready. The
    watcher owns its fd; `close()` closes it and sets it to -1.
    """

    def __init__(self) -> None:
        # Non-blocking so read() can drain without a FIONREAD dance; CLOEXEC so services
        # never inherit it.
        self._fd = _check(_lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")
        # The kernel returns the same wd for two paths naming one inode, so one wd may carry
        # several keys.
        self._wd_keys: dict[int, list[K]] = {}
        self._key_wd: dict[K, int] = {}

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("the inotify watcher is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def keys(self) -> list[K]:
        """Keys with a live watch."""
        return list(self._key_wd)

    def watch(self, path: Path, key: K, mask: int = DEFAULT_MASK) -> bool:
        """Watch `path` under `key` (replacing an earlier watch of that key). Returns False if
        the file does not exist (the cgroup vanished, or the controller is not enabled).

        Raises OomguardError for a watch the system refuses (limit reached, no permission).
        """
        fd = self.fileno()
        if key in self._key_wd:
            self.unwatch(key)
        wd = _lib().inotify_add_watch(fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOENT, errno.ENOTDIR):
                return False
            if err == errno.ENOSPC:
                raise OomguardError(
                    f"cannot watch {path}: the inotify watch limit is reached",
                    hint="raise it, e.g. sysctl fs.inotify.max_user_watches=65536",
                )
            raise OomguardError(
                f"cannot watch {path}: {os.strerror(err)}",
                hint="check that the file is readable by oomguard",
            )
        self._wd_keys.setdefault(wd, []).append(key)
        self._key_wd[key] = wd
        return True

    def unwatch(self, key: K) -> None:
        """Stop watching `key`. Unknown keys and watches the kernel already dropped are fine."""
        wd = self._key_wd.pop(key, None)
        if wd is None:
            return
        keys = self._wd_keys.get(wd, [])
        if key in keys:
            keys.remove(key)
        if keys or self._fd < 0:
            return
        del self._wd_keys[wd]
        # EINVAL: the kernel already removed the watch (file deleted, IN_IGNORED pending).
        if _lib().inotify_rm_watch(self._fd, wd) < 0 and ctypes.get_errno() != errno.EINVAL:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_rm_watch: {os.strerror(err)}")

    def read(self) -> list[tuple[K, WatchEvent]]:
        """Drain the queue without blocking. One entry per key, flags OR-ed together, in order
        of first appearance. [] if nothing is pending."""
        if self._fd < 0:
            return []
        data = bytearray()
        while True:
            try:
                chunk = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                break
            if not chunk:  # pragma: no cover - inotify never returns EOF
                break
            data += chunk
        return self._decode(bytes(data))

    def _decode(self, data: bytes) -> list[tuple[K, WatchEvent]]:
        """Turn raw inotify records into per-key flags (and forget watches the kernel dropped)."""
        merged: dict[K, WatchEvent] = {}
        vanished_wds: list[int] = []
        pos = 0
        while pos + _EVENT.size <= len(data):
            wd, mask, _cookie, name_len = _EVENT.unpack_from(data, pos)
            pos += _EVENT.size + name_len
            if mask & IN_Q_OVERFLOW:
                for key in self._key_wd:
                    merged[key] = merged.get(key, WatchEvent(0)) | (
                        WatchEvent.OVERFLOW | WatchEvent.MODIFIED
                    )
                continue
            flags = WatchEvent(0)
            if mask & (IN_MODIFY | IN_ATTRIB):
                flags |= WatchEvent.MODIFIED
            if mask & (IN_IGNORED | IN_DELETE_SELF | IN_UNMOUNT):
                flags |= WatchEvent.VANISHED
            if mask & IN_IGNORED:
                # The kernel has already dropped this watch; forget it (after the loop, so
                # every event of this batch is still attributed).
                vanished_wds.append(wd)
            if not flags:
                continue
            for key in self._wd_keys.get(wd, ()):
                merged[key] = merged.get(key, WatchEvent(0)) | flags
        for wd in vanished_wds:
            for key in self._wd_keys.pop(wd, []):
                self._key_wd.pop(key, None)
        return list(merged.items())

    def close(self) -> None:
        """Close the inotify fd (dropping every watch). Idempotent."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
        self._wd_keys.clear()
        self._key_wd.clear()

    def __enter__(self) -> InotifyWatcher[K]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
