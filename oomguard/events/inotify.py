"""inotify on cgroup files (memory.events, memory.events.local, cgroup.events) as loop events.

The kernel calls ``kernfs_notify()`` when a counter in memory.events or a field in cgroup.events
changes, which reaches inotify as ``IN_MODIFY`` on that file. Consequences:

- Notifications are *rate-limited and coalesced* by the kernel (cgroup file notifications are
  throttled to about one per 10 ms per file, i.e. <= 100/s, and inotify merges identical queued
  events). Ten OOM kills can arrive as one event. Consumers must re-read the file and diff the
  counters; never count notifications.
- Removing a cgroup does *not* reach a watch on one of its files: kernfs deactivates the nodes
  without any fsnotify call, and the watch pins the inode, so no ``IN_DELETE_SELF`` and no
  ``IN_IGNORED`` ever arrive (checked on Linux 6.1: none after rmdir, none after drop_caches).
  What does arrive is ``IN_DELETE | IN_ISDIR`` with the cgroup's name on a watch of its *parent*
  directory. `watch_removal()` sets that up, and reports `WatchEvent.VANISHED` for the key, so
  the supervisor treats the slice as gone instead of waiting on a dead file forever.
- On ordinary filesystems (and for unmounts) a deleted file's watch does end with
  ``IN_IGNORED``; that is reported as VANISHED too.

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
IN_MOVED_FROM = 0x00000040
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_MASK_ADD = 0x20000000
IN_CLOEXEC = os.O_CLOEXEC
IN_NONBLOCK = os.O_NONBLOCK

#: struct inotify_event { int wd; uint32_t mask, cookie, len; char name[len]; }
_EVENT = struct.Struct("iIII")
#: Large enough for many events; one event is at most 16 + NAME_MAX + 1 bytes.
_READ_SIZE = 64 * 1024

#: What a cgroup file watch asks for. IN_IGNORED and IN_Q_OVERFLOW are always delivered.
DEFAULT_MASK = IN_MODIFY | IN_DELETE_SELF
#: What a removal watch asks for on the parent directory (rmdir, or a rename away).
_REMOVAL_MASK = IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF | IN_ONLYDIR


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

    Register `fileno()` in the loop with ``EPOLLIN`` and call `read()` when it is ready. A key
    can have one file watch (`watch`) and one removal watch (`watch_removal`) at the same time;
    their events merge under the key. The watcher owns its fd; `close()` closes it and sets it
    to -1.
    """

    def __init__(self) -> None:
        # Non-blocking so read() can drain without a FIONREAD dance; CLOEXEC so services
        # never inherit it.
        self._fd = _check(_lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")
        # The kernel returns one wd per inode (two paths naming one file share it), and one
        # parent directory serves the removal watches of all its children, so wds are shared:
        # a wd is removed only when neither map references it any more.
        self._file_keys: dict[int, list[K]] = {}  # wd -> keys watching that file
        self._child_keys: dict[int, dict[bytes, list[K]]] = {}  # parent wd -> name -> keys
        self._key_file: dict[K, int] = {}
        self._key_child: dict[K, tuple[int, bytes]] = {}

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("the inotify watcher is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def keys(self) -> list[K]:
        """Keys with at least one live watch."""
        return list(dict.fromkeys([*self._key_file, *self._key_child]))

    def _add_watch(self, path: Path, mask: int) -> int | None:
        # IN_MASK_ADD: the wd may already serve another watch of ours (same inode), whose mask
        # must not be replaced.
        wd: int = _lib().inotify_add_watch(self.fileno(), os.fsencode(path), mask | IN_MASK_ADD)
        if wd >= 0:
            return wd
        err = ctypes.get_errno()
        if err in (errno.ENOENT, errno.ENOTDIR):
            return None
        if err == errno.ENOSPC:
            raise OomguardError(
                f"cannot watch {path}: the inotify watch limit is reached",
                hint="raise it, e.g. sysctl fs.inotify.max_user_watches=65536",
            )
        raise OomguardError(
            f"cannot watch {path}: {os.strerror(err)}",
            hint="check that the file is readable by oomguard",
        )

    def watch(self, path: Path, key: K, mask: int = DEFAULT_MASK) -> bool:
        """Watch the file `path` under `key` (replacing the key's earlier file watch). Returns
        False if the file does not exist (the cgroup vanished, or the controller is off).

        Raises OomguardError for a watch the system refuses (limit reached, no permission).
        """
        self._drop_file(key)
        wd = self._add_watch(path, mask)
        if wd is None:
            return False
        self._file_keys.setdefault(wd, []).append(key)
        self._key_file[key] = wd
        return True

    def watch_removal(self, directory: Path, key: K) -> bool:
        """Report `key` as VANISHED when `directory` (a cgroup) is removed or renamed away, by
        watching its parent for the child's deletion (replacing the key's earlier removal
        watch). Returns False if `directory` does not exist (already vanished)."""
        self._drop_child(key)
        wd = self._add_watch(directory.parent, _REMOVAL_MASK)
        if wd is None:
            return False
        name = os.fsencode(directory.name)
        self._child_keys.setdefault(wd, {}).setdefault(name, []).append(key)
        self._key_child[key] = (wd, name)
        # Checked after the watch exists, so a removal cannot fall between check and watch.
        if not os.path.isdir(directory):
            self._drop_child(key)
            return False
        return True

    def unwatch(self, key: K) -> None:
        """Stop watching `key` (both kinds). Unknown keys and watches the kernel already dropped
        are fine."""
        self._drop_file(key)
        self._drop_child(key)

    def _drop_file(self, key: K) -> None:
        wd = self._key_file.pop(key, None)
        if wd is None:
            return
        keys = self._file_keys.get(wd, [])
        if key in keys:
            keys.remove(key)
        if not keys:
            self._file_keys.pop(wd, None)
        self._release(wd)

    def _drop_child(self, key: K) -> None:
        entry = self._key_child.pop(key, None)
        if entry is None:
            return
        wd, name = entry
        names = self._child_keys.get(wd, {})
        keys = names.get(name, [])
        if key in keys:
            keys.remove(key)
        if not keys:
            names.pop(name, None)
        if not names:
            self._child_keys.pop(wd, None)
        self._release(wd)

    def _release(self, wd: int) -> None:
        """rm_watch once no key uses `wd`."""
        if wd in self._file_keys or wd in self._child_keys or self._fd < 0:
            return
        # EINVAL: the kernel already removed the watch (file deleted, IN_IGNORED pending).
        if _lib().inotify_rm_watch(self._fd, wd) < 0:
            err = ctypes.get_errno()
            if err != errno.EINVAL:
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
        """Turn raw inotify records into per-key flags (and forget watches that ended)."""
        merged: dict[K, WatchEvent] = {}
        gone_keys: list[K] = []
        pos = 0
        while pos + _EVENT.size <= len(data):
            wd, mask, _cookie, name_len = _EVENT.unpack_from(data, pos)
            name = bytes(data[pos + _EVENT.size : pos + _EVENT.size + name_len]).rstrip(b"\0")
            pos += _EVENT.size + name_len
            if mask & IN_Q_OVERFLOW:
                # Events were lost, removals included: every key must re-read and re-check.
                hits = [(key, WatchEvent.OVERFLOW | WatchEvent.MODIFIED) for key in self.keys()]
            elif name:
                hits = self._child_hits(wd, mask, name)
            else:
                hits = self._self_hits(wd, mask)
            for key, flags in hits:
                merged[key] = merged.get(key, WatchEvent(0)) | flags
                if flags & WatchEvent.VANISHED:
                    gone_keys.append(key)
        # A vanished key's watches are dead: release them (after the loop, so every event of
        # this batch is still attributed).
        for key in gone_keys:
            self.unwatch(key)
        return list(merged.items())

    def _child_hits(self, wd: int, mask: int, name: bytes) -> list[tuple[K, WatchEvent]]:
        """An event about an entry of a watched directory: only removal watches care."""
        if not mask & (IN_DELETE | IN_MOVED_FROM):
            return []
        return [(key, WatchEvent.VANISHED) for key in self._child_keys.get(wd, {}).get(name, ())]

    def _self_hits(self, wd: int, mask: int) -> list[tuple[K, WatchEvent]]:
        """An event about the watched inode itself (a file, or the parent of removal watches)."""
        flags = WatchEvent(0)
        if mask & (IN_MODIFY | IN_ATTRIB):
            flags |= WatchEvent.MODIFIED
        if mask & (IN_IGNORED | IN_DELETE_SELF | IN_UNMOUNT):
            flags |= WatchEvent.VANISHED
        if not flags:
            return []
        keys = list(self._file_keys.get(wd, ()))
        if flags & WatchEvent.VANISHED:
            # The inode itself is gone: its removal watches are gone with it.
            keys += [k for names in self._child_keys.get(wd, {}).values() for k in names]
        if mask & IN_IGNORED:
            # The kernel has dropped this wd already: forget it without rm_watch.
            self._forget_wd(wd)
        return [(key, flags) for key in keys]

    def _forget_wd(self, wd: int) -> None:
        for key in self._file_keys.pop(wd, []):
            self._key_file.pop(key, None)
        for names in self._child_keys.pop(wd, {}).values():
            for key in names:
                self._key_child.pop(key, None)

    def close(self) -> None:
        """Close the inotify fd (dropping every watch). Idempotent."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
        self._file_keys.clear()
        self._child_keys.clear()
        self._key_file.clear()
        self._key_child.clear()

    def __enter__(self) -> InotifyWatcher[K]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
