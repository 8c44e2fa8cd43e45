"""/proc: THE ONLY code that reads or writes procfs.

Two halves, as in cgroup/parse.py and cgroup/fs.py:

- pure parsers that take the text (or bytes) of one /proc file and return plain values, so each
  format is unit-tested from samples (a hostile comm, a kernel thread without memory fields, a
  v1-only host's /proc/self/cgroup);
- readers that open the file and hand its content to the parser. A process that is gone (ENOENT,
  ESRCH) or a file we may not read is an expected outcome: they return None (or a neutral
  value, said per function), never raise. The per-process readers take `root` (default /proc)
  so tests can point them at a fake tree in a temp dir.

Everything here is standard library only and import-light: `oomguard status` reaches this module
(through cgroup/discover.py) on every start.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Mapping

PROC = "/proc"

#: Capability number of CAP_SYS_RESOURCE (<linux/capability.h>): needed to *lower*
#: oom_score_adj (raising it is free).
CAP_SYS_RESOURCE = 24

#: The file the launcher's child writes its service's value to, before exec. Bytes: the child
#: runs only raw syscalls (see runtime/launcher.py).
SELF_OOM_SCORE_ADJ = b"/proc/self/oom_score_adj"

#: A process's environment is read up to this size (ARG_MAX is 2 MiB by default; a service's
#: own variables come first, oomguard's last, so a huge environment loses nothing of ours that
#: a service's children could not have dropped anyway).
ENVIRON_LIMIT = 1 << 20

# ---------------------------------------------------------------------------------------------
# Pure parsing. Records are NamedTuples, not dataclasses: `oomguard status` imports this module,
# and dataclass code generation at import costs milliseconds per class.


class Stat(NamedTuple):
    """The fields of /proc/<pid>/stat that oomguard uses (proc(5) numbers them from 1)."""

    #: Field 2, without its parentheses.
    comm: str
    #: Field 3: R, S, D, Z (zombie: exited, not reaped yet), T, ...
    state: str
    ppid: int
    #: Field 5: the process group.
    pgrp: int
    session: int
    #: Field 22: when the process started, in clock ticks since boot. With the pid, it names a
    #: process for good: a reused pid belongs to a process with another start time.
    start_ticks: int


def parse_stat(data: bytes) -> Stat | None:
    """/proc/<pid>/stat -> `Stat`; None if it is not in that format.

    comm (field 2) is in parentheses and may itself contain spaces and ")": fields after the
    *last* ")" are fixed, so everything is counted from there."""
    open_paren, close_paren = data.find(b"("), data.rfind(b")")
    if open_paren < 0 or close_paren < open_paren:
        return None
    fields = data[close_paren + 2 :].split()
    try:
        return Stat(
            comm=data[open_paren + 1 : close_paren].decode("utf-8", "replace"),
            state=fields[0].decode("ascii", "replace"),
            ppid=int(fields[1]),
            pgrp=int(fields[2]),
            session=int(fields[3]),
            # starttime is field 22, index 19 counting from field 3.
            start_ticks=int(fields[19]),
        )
    except (IndexError, ValueError):
        return None


def parse_status(text: str) -> dict[str, str]:
    """/proc/<pid>/status ("Key:<tab>value" per line) -> {key: value}, values stripped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.strip()
    return out


def parse_cap_eff(status_text: str) -> int | None:
    """The effective capability mask from /proc/<pid>/status (hex "CapEff:" line)."""
    value = parse_status(status_text).get("CapEff")
    if value is None:
        return None
    try:
        return int(value, 16)
    except ValueError:
        return None


def has_capability(cap_eff: int | None, cap: int) -> bool:
    return cap_eff is not None and bool(cap_eff >> cap & 1)


class Memory(NamedTuple):
    """One process's memory from /proc/<pid>/status, in bytes.

    What killing it gives back for sure is `unreclaimable`: its anonymous pages, its shared
    memory (tmpfs/shm pages it maps: counted to it, freed once the last user is gone) and what
    it has in swap. File pages (`rss_file`) the kernel can drop without killing anyone."""

    rss_anon: int
    rss_file: int
    rss_shmem: int
    swap: int

    @property
    def rss(self) -> int:
        return self.rss_anon + self.rss_file + self.rss_shmem

    @property
    def unreclaimable(self) -> int:
        return self.rss_anon + self.rss_shmem + self.swap


_MEMORY_FIELDS = ("RssAnon", "RssFile", "RssShmem", "VmSwap")


def _kib(value: str) -> int | None:
    # "1234 kB": the kernel's "kB" is KiB.
    fields = value.split()
    if len(fields) != 2 or fields[1] != "kB" or not fields[0].isdigit():
        return None
    return int(fields[0]) * 1024


def parse_status_memory(status_text: str) -> Memory | None:
    """`Memory` from /proc/<pid>/status; None when a field is missing or malformed: kernel
    threads and zombies have no memory lines (and nothing to give back)."""
    fields = parse_status(status_text)
    values = [_kib(fields.get(name, "")) for name in _MEMORY_FIELDS]
    if any(v is None for v in values):
        return None
    anon, file_, shmem, swap = (v or 0 for v in values)
    return Memory(rss_anon=anon, rss_file=file_, rss_shmem=shmem, swap=swap)


def parse_vmstat(text: str, key: str) -> int | None:
    """The counter `key` of /proc/vmstat ("name value" per line), or None if absent."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def parse_environ(data: bytes) -> dict[bytes, bytes]:
    """/proc/<pid>/environ (NUL-separated NAME=value) -> {name: value}. A name given twice
    keeps its last value."""
    out: dict[bytes, bytes] = {}
    for item in data.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep and name:
            out[name] = value
    return out


def parse_cmdline(data: bytes) -> tuple[str, ...]:
    """/proc/<pid>/cmdline (NUL-terminated arguments) -> argv; () for a kernel thread or a
    zombie."""
    if not data:
        return ()
    return tuple(a.decode("utf-8", "replace") for a in data.rstrip(b"\0").split(b"\0"))


def parse_swaps(text: str) -> int:
    """Total swap in bytes from /proc/swaps (sizes there are KiB; first line is a header)."""
    total = 0
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[2].isdigit():
            total += int(fields[2]) * 1024
    return total


def parse_ns_inode(link: str | None) -> int | None:
    """ "cgroup:[4026531835]" (readlink of /proc/<pid>/ns/cgroup) -> 4026531835."""
    if not link or "[" not in link or not link.endswith("]"):
        return None
    try:
        return int(link[link.index("[") + 1 : -1])
    except ValueError:
        return None


class MountEntry(NamedTuple):
    """One line of /proc/<pid>/mountinfo (see proc(5)). `root` is the mount's root *inside* its
    filesystem: for a cgroup2 mount, the cgroup that appears as the mount point."""

    mount_id: int
    parent_id: int
    root: str
    mount_point: str
    mount_options: frozenset[str]
    fstype: str
    source: str
    super_options: frozenset[str]

    @property
    def read_only(self) -> bool:
        # Either the mount (per-bind, e.g. docker's ro cgroupfs) or the superblock can be ro.
        return "ro" in self.mount_options or "ro" in self.super_options


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    if "\\" not in field:
        return field
    out: list[str] = []
    i = 0
    while i < len(field):
        c = field[i]
        if c == "\\" and len(field[i + 1 : i + 4]) == 3 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _mount_entry(line: str) -> MountEntry | None:
    fields = line.split()
    try:
        sep = fields.index("-", 6)
    except ValueError:
        return None
    if len(fields) < sep + 3:
        return None
    try:
        mount_id, parent_id = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return MountEntry(
        mount_id=mount_id,
        parent_id=parent_id,
        root=_unescape(fields[3]),
        mount_point=_unescape(fields[4]),
        mount_options=frozenset(fields[5].split(",")),
        fstype=fields[sep + 1],
        source=_unescape(fields[sep + 2]),
        super_options=frozenset(fields[sep + 3].split(","))
        if len(fields) > sep + 3
        else frozenset(),
    )


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse /proc/self/mountinfo. Malformed lines are skipped (they can't be ours to use)."""
    return [e for line in text.splitlines() if (e := _mount_entry(line)) is not None]


class ProcCgroup(NamedTuple):
    """/proc/<pid>/cgroup: `unified` is the "0::" path (None on a v1-only host); `v1` maps each
    v1 controller (or "name=x") to its path."""

    unified: str | None
    v1: Mapping[str, str]


def parse_proc_cgroup(text: str) -> ProcCgroup:
    """Parse /proc/<pid>/cgroup ("hierarchy-id:controllers:path" per line)."""
    unified: str | None = None
    v1: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        # A cgroup removed while we are still in it (only possible for zombies/odd races) shows
        # as "/x (deleted)".
        path = path.removesuffix(" (deleted)")
        if hier == "0" and controllers == "":
            unified = path
        else:
            for c in controllers.split(","):
                if c:
                    v1[c] = path
    return ProcCgroup(unified=unified, v1=v1)


# ---------------------------------------------------------------------------------------------
# Reading. `pid` may also be "self".


def _path(root: str | os.PathLike[str], pid: int | str, name: str) -> str:
    return os.path.join(os.fspath(root), str(pid), name)


def _read_bytes(path: str, limit: int = -1) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return None


def _read_text(path: str) -> str | None:
    data = _read_bytes(path)
    return None if data is None else data.decode("utf-8", "replace")


def stat(pid: int | str, root: str | os.PathLike[str] = PROC) -> Stat | None:
    """/proc/<pid>/stat, or None if there is no such process."""
    data = _read_bytes(_path(root, pid, "stat"))
    return None if data is None else parse_stat(data)


def start_ticks(pid: int | str, root: str | os.PathLike[str] = PROC) -> int | None:
    """When `pid` started (clock ticks since boot), or None if there is no such process."""
    st = stat(pid, root)
    return None if st is None else st.start_ticks


def is_zombie(pid: int, root: str | os.PathLike[str] = PROC) -> bool | None:
    """True if `pid` has exited but is not reaped yet (state Z), False if it runs, None if
    /proc has no such process. A zombie still answers kill(pid, 0) and pidfd_send_signal."""
    data = _read_bytes(_path(root, pid, "stat"))
    if data is None:
        return None
    # Only the state is needed: the field right after comm's last ")".
    end = data.rfind(b")")
    fields = data[end + 1 :].split() if end >= 0 else []
    return fields[0] == b"Z" if fields else None


def exists(pid: int, root: str | os.PathLike[str] = PROC) -> bool:
    """True if /proc has `pid` (a zombie included). Errors other than "no such process" raise:
    they say nothing about the process."""
    try:
        os.stat(os.path.join(os.fspath(root), str(pid)))
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ESRCH):
            return False
        raise
    return True


def pids(root: str | os.PathLike[str] = PROC) -> list[int]:
    """Every process /proc shows (this pid namespace's), unordered; [] if it is unreadable."""
    try:
        entries = os.listdir(root)
    except OSError:
        return []
    return [int(e) for e in entries if e.isdigit()]


def comm(pid: int | str, root: str | os.PathLike[str] = PROC) -> str | None:
    """The process's name (/proc/<pid>/comm: at most 15 bytes, settable by the process)."""
    text = _read_text(_path(root, pid, "comm"))
    return None if text is None else text.rstrip("\n")


def cmdline(pid: int | str, root: str | os.PathLike[str] = PROC) -> tuple[str, ...] | None:
    """The process's argv (it may have rewritten it), () for a kernel thread, None if gone."""
    data = _read_bytes(_path(root, pid, "cmdline"))
    return None if data is None else parse_cmdline(data)


def environ(
    pid: int | str, root: str | os.PathLike[str] = PROC, limit: int = ENVIRON_LIMIT
) -> dict[bytes, bytes] | None:
    """The process's environment as it was at exec (later setenv() calls do not show). Only
    root or the process's own user may read it: None then, as for a process that is gone."""
    data = _read_bytes(_path(root, pid, "environ"), limit)
    return None if data is None else parse_environ(data)


#: /proc/<pid>/status is ~1.5 KiB; a cap keeps a read bounded whatever the kernel prints.
STATUS_LIMIT = 16384


def status_text(pid: int | str, root: str | os.PathLike[str] = PROC) -> str | None:
    """/proc/<pid>/status as text (at most `STATUS_LIMIT` bytes), or None if it is gone: one
    read for both the name and the memory figures of a process (runtime/shed.py)."""
    data = _read_bytes(_path(root, pid, "status"), STATUS_LIMIT)
    return None if data is None else data.decode("utf-8", "replace")


def memory(pid: int | str, root: str | os.PathLike[str] = PROC) -> Memory | None:
    """The process's memory by kind (see `Memory`), or None (gone, kernel thread, zombie)."""
    text = _read_text(_path(root, pid, "status"))
    return None if text is None else parse_status_memory(text)


def rss_pages(pid: int | str, root: str | os.PathLike[str] = PROC) -> int | None:
    """Resident pages from /proc/<pid>/statm (field 2): the cheapest per-process figure. None if
    the process is gone; 0 if the file is malformed."""
    text = _read_text(_path(root, pid, "statm"))
    if text is None:
        return None
    fields = text.split()
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0


def oom_score_adj(pid: int | str = "self", root: str | os.PathLike[str] = PROC) -> int | None:
    """The process's oom_score_adj (-1000..1000), or None if unreadable."""
    text = _read_text(_path(root, pid, "oom_score_adj"))
    try:
        return None if text is None else int(text.strip())
    except ValueError:
        return None


def write_oom_score_adj(value: bytes) -> None:
    """Set this process's oom_score_adj to `value` (ASCII digits); raises OSError (EACCES when
    lowering it without CAP_SYS_RESOURCE). One write() on a raw fd and nothing else: the
    launcher's forked child calls this between fork and exec, where only syscalls may run."""
    fd = os.open(SELF_OOM_SCORE_ADJ, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value)
    finally:
        os.close(fd)


def oom_score_adj_writable() -> bool:
    """False where the container runtime masks /proc or mounts it read-only."""
    return os.access(SELF_OOM_SCORE_ADJ, os.W_OK)


def cap_sys_resource() -> bool | None:
    """Whether this process has CAP_SYS_RESOURCE (CapEff of /proc/self/status); None if that
    cannot be read."""
    text = _read_text(_path(PROC, "self", "status"))
    cap = None if text is None else parse_cap_eff(text)
    return None if cap is None else has_capability(cap, CAP_SYS_RESOURCE)


def can_lower_oom_score_adj() -> bool:
    """True if this process may lower its oom_score_adj (CAP_SYS_RESOURCE); raising it never
    needs a capability, and children inherit the value. Without /proc to tell, root is assumed
    to have the capability."""
    cap = cap_sys_resource()
    return os.geteuid() == 0 if cap is None else cap


def proc_cgroup(pid: int | str = "self", root: str | os.PathLike[str] = PROC) -> ProcCgroup | None:
    """/proc/<pid>/cgroup parsed, or None if unreadable."""
    text = _read_text(_path(root, pid, "cgroup"))
    return None if text is None else parse_proc_cgroup(text)


def cgroup_ns_inode(pid: int | str = "self") -> int | None:
    """The inode number of the process's cgroup namespace (readlink of ns/cgroup)."""
    try:
        return parse_ns_inode(os.readlink(_path(PROC, pid, "ns/cgroup")))
    except OSError:
        return None


def mountinfo(root: str | os.PathLike[str] = PROC) -> list[MountEntry]:
    """Our mount namespace's mounts; [] if /proc is not mounted."""
    return parse_mountinfo(_read_text(_path(root, "self", "mountinfo")) or "")


def swap_total(root: str | os.PathLike[str] = PROC) -> int:
    """Bytes of swap configured on the machine (0 if /proc/swaps is unreadable)."""
    return parse_swaps(_read_text(os.path.join(root, "swaps")) or "")


def psi_available(root: str | os.PathLike[str] = PROC) -> bool:
    """True if the kernel has pressure stall information (CONFIG_PSI, not booted psi=0)."""
    return os.path.exists(os.path.join(root, "pressure", "memory"))


def vmstat_oom_kill(root: str | os.PathLike[str] = PROC) -> int | None:
    """The kernel's global count of OOM kills (/proc/vmstat, Linux 4.13+), or None."""
    text = _read_text(os.path.join(root, "vmstat"))
    return None if text is None else parse_vmstat(text, "oom_kill")


def meminfo(root: str | os.PathLike[str] = PROC) -> dict[str, int]:
    """/proc/meminfo in bytes (see cgroup/parse.py); {} if it is unreadable or malformed (then
    no machine budget and no swap)."""
    from oomguard.cgroup.parse import parse_meminfo
    from oomguard.errors import OomguardError

    data = _read_bytes(os.path.join(root, "meminfo"), 65536)
    try:
        return {} if data is None else parse_meminfo(data.decode("ascii", "replace"))
    except OomguardError:
        return {}


def highest_fd() -> int | None:
    """The highest fd open in this process, or None without /proc."""
    try:
        return max(int(n) for n in os.listdir(_path(PROC, "self", "fd")))
    except (OSError, ValueError):
        return None


def reopen_fd(fd: int, flags: int) -> int:
    """Open what `fd` refers to again (a pipe, FIFO or terminal) through /proc/self/fd: a *new*
    open file description, whose flags (O_NONBLOCK) are ours alone. Raises OSError (no /proc,
    EACCES, ENXIO for a FIFO without a reader)."""
    return os.open(_path(PROC, "self", f"fd/{fd}"), flags)
