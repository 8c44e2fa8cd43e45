"""Where are we, and what may we do? Read-only discovery of the host's cgroup setup.

This is an adapter: it reads /proc and the cgroup2 mount and never writes or creates anything
(on a hybrid host, a mkdir in the wrong place silently makes a plain tmpfs directory). Everything
that can be parsed from text lives in a pure function that takes the text, so each host shape
(unified, hybrid, legacy, container) is unit-tested from samples.

`oomguard status` imports this module for its default root, so it stays import-light: no
pydantic, no config, nothing beyond the standard library and `oomguard.cgroup.path`.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from oomguard.errors import CgroupError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from oomguard.cgroup.path import CgroupPath

#: The inode number of the initial cgroup namespace (PROC_CGROUP_INIT_INO in the kernel). A
#: process whose /proc/self/ns/cgroup names another inode was put in a private cgroup namespace,
#: which is what docker/podman do by default on a cgroup v2 host.
INIT_CGROUP_NS_INO = 0xEFFFFFFB

#: Capability number of CAP_SYS_RESOURCE: needed to *lower* oom_score_adj (raising is free).
CAP_SYS_RESOURCE = 24

#: Controllers a v1 `cgroup` mount can carry; other super options (rw, xattr, clone_children,
#: release_agent=..., name=...) are not controllers.
V1_CONTROLLERS = frozenset(
    {
        "cpuset",
        "cpu",
        "cpuacct",
        "blkio",
        "io",
        "memory",
        "devices",
        "freezer",
        "net_cls",
        "perf_event",
        "net_prio",
        "hugetlb",
        "pids",
        "rdma",
        "misc",
    }
)

#: Substrings of PID 1's cgroup path that container runtimes leave behind (v1 hosts, or v2 hosts
#: with a host cgroup namespace).
_CONTAINER_MARKERS = ("docker", "kubepods", "containerd", "libpod", "crio", "lxc", "garden")

#: Kernel releases that introduced files oomguard uses; the fallback when no cgroup to look at.
CGROUP_KILL_SINCE = (5, 14)
MEMORY_PEAK_SINCE = (5, 19)


class HostMode(Enum):
    """How the host mounts cgroups. Only UNIFIED (or a v2 mount that holds `memory`) gives
    oomguard memory limits; the others leave it oom_score_adj only."""

    #: Only cgroup2 (named v1 hierarchies without controllers are ignored).
    UNIFIED = "unified"
    #: cgroup2 is mounted, but controllers are bound to v1 hierarchies (systemd's "hybrid").
    HYBRID = "hybrid"
    #: Only v1 `cgroup` mounts.
    LEGACY = "legacy"
    #: No cgroup filesystem at all.
    NONE = "none"


# --------------------------------------------------------------------------------------------
# Pure parsing. The small records are NamedTuples, not frozen dataclasses: `oomguard status`
# imports this module for its default root, and dataclass code generation at import costs
# milliseconds per class.


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


class Cgroup2Mount(NamedTuple):
    path: str
    #: The cgroup shown at `path`, e.g. "/" or "/docker/abc" for a bind of a sub-tree.
    root: str
    read_only: bool
    #: nsdelegate: cgroup namespaces are delegation boundaries (processes can't migrate out).
    nsdelegate: bool
    #: memory_recursiveprot: memory.min/low of a parent protect its whole subtree.
    memory_recursiveprot: bool


class V1Mount(NamedTuple):
    path: str
    root: str
    controllers: frozenset[str]
    #: "name=systemd" style named hierarchy (no controller), or None.
    name: str | None
    read_only: bool


class ProcCgroup(NamedTuple):
    """/proc/<pid>/cgroup: `unified` is the "0::" path (None on a v1-only host); `v1` maps each
    v1 controller (or "name=x") to its path."""

    unified: str | None
    v1: Mapping[str, str]


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


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse /proc/self/mountinfo. Malformed lines are skipped (they can't be ours to use)."""
    entries: list[MountEntry] = []
    for line in text.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 3:
            continue
        try:
            mount_id, parent_id = int(fields[0]), int(fields[1])
        except ValueError:
            continue
        entries.append(
            MountEntry(
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
        )
    return entries


def _visible(entries: Iterable[MountEntry]) -> list[MountEntry]:
    # A later mount on the same mount point hides the earlier one; keep only what path lookup
    # would actually reach.
    by_point: dict[str, MountEntry] = {}
    for e in entries:
        by_point.pop(e.mount_point, None)
        by_point[e.mount_point] = e
    return list(by_point.values())


def cgroup2_mounts(entries: Iterable[MountEntry]) -> list[Cgroup2Mount]:
    return [
        Cgroup2Mount(
            path=e.mount_point,
            root=e.root,
            read_only=e.read_only,
            nsdelegate="nsdelegate" in e.super_options,
            memory_recursiveprot="memory_recursiveprot" in e.super_options,
        )
        for e in _visible(entries)
        if e.fstype == "cgroup2"
    ]


def v1_mounts(entries: Iterable[MountEntry]) -> list[V1Mount]:
    mounts: list[V1Mount] = []
    for e in _visible(entries):
        if e.fstype != "cgroup":
            continue
        name = next((o[5:] for o in e.super_options if o.startswith("name=")), None)
        mounts.append(
            V1Mount(
                path=e.mount_point,
                root=e.root,
                controllers=e.super_options & V1_CONTROLLERS,
                name=name,
                read_only=e.read_only,
            )
        )
    return mounts


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


def classify(v2: Iterable[Cgroup2Mount], v1: Iterable[V1Mount]) -> HostMode:
    has_v2 = any(True for _ in v2)
    # A named v1 hierarchy (name=systemd) binds no controller, so it doesn't stop a host from
    # being unified in practice; only a controller on v1 does.
    v1_list = list(v1)
    v1_controllers = any(m.controllers for m in v1_list)
    if has_v2:
        return HostMode.HYBRID if v1_controllers else HostMode.UNIFIED
    if v1_list:
        return HostMode.LEGACY
    return HostMode.NONE


def relative_cgroup(path: str, mount_root: str) -> str | None:
    """The cgroup `path` (as /proc/self/cgroup shows it) relative to a mount whose root is
    `mount_root` (mountinfo field 4), as "/a/b"; None when the mount doesn't reach it.

    Both are shown relative to the reader's cgroup namespace; a path starting with "/.." means
    the cgroup is outside our namespace root and no mount we made can reach it.
    """
    parts = [p for p in path.split("/") if p]
    root_parts = [p for p in mount_root.split("/") if p]
    if ".." in parts or ".." in root_parts:
        return None
    if parts[: len(root_parts)] != root_parts:
        return None
    return "/" + "/".join(parts[len(root_parts) :])


def choose_cgroup2_mount(mounts: Iterable[Cgroup2Mount], own: str | None) -> Cgroup2Mount | None:
    """Pick the cgroup2 mount to use: one that reaches our own cgroup, preferring the
    conventional /sys/fs/cgroup, then the one whose root is highest in the hierarchy."""
    candidates = [m for m in mounts if own is None or relative_cgroup(own, m.root) is not None]
    if not candidates:
        return None

    def key(m: Cgroup2Mount) -> tuple[bool, int, str]:
        depth = len([p for p in m.root.split("/") if p])
        return (m.path != "/sys/fs/cgroup", depth, m.path)

    return min(candidates, key=key)


def parse_cap_eff(status_text: str) -> int | None:
    """The effective capability mask from /proc/<pid>/status (hex "CapEff:" line)."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            try:
                return int(line.split(":", 1)[1].strip(), 16)
            except ValueError:
                return None
    return None


def has_capability(cap_eff: int | None, cap: int) -> bool:
    return cap_eff is not None and bool(cap_eff >> cap & 1)


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


def kernel_version(release: str) -> tuple[int, int]:
    """ "6.1.0-27-cloud-amd64" -> (6, 1); unparseable -> (0, 0)."""
    nums: list[int] = []
    for piece in release.split(".")[:2]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        nums.append(int(digits))
    if len(nums) < 2:
        return (0, 0)
    return (nums[0], nums[1])


def parse_controllers_text(text: str | None) -> frozenset[str] | None:
    # cgroup.controllers / cgroup.subtree_control: space-separated names. Kept local (and not
    # parse.py's) so discovery works even where the cgroup package is partly unavailable.
    return None if text is None else frozenset(text.split())


def parse_limit_text(text: str | None) -> int | None:
    """A memory.max-style value in bytes; None for "max", a missing file or garbage."""
    if text is None:
        return None
    value = text.strip()
    return int(value) if value.isdigit() else None


class ContainerInfo(NamedTuple):
    """Why we think we run in a container. `reasons` empty means "looks like a plain host"."""

    reasons: tuple[str, ...]
    #: True: our cgroup namespace is not the initial one (docker --cgroupns=private, the v2
    #: default); False: it is; None: unknown.
    private_cgroupns: bool | None

    @property
    def in_container(self) -> bool:
        return bool(self.reasons)


def container_evidence(
    *,
    dockerenv: bool,
    containerenv: bool,
    container_env: str | None,
    pid1_cgroup: str | None,
    own_ns: int | None,
    init_ns: int | None,
    own_unified: str | None,
) -> ContainerInfo:
    """Collect container hints. `init_ns` is PID 1's cgroup ns inode if readable; either way
    the initial namespace's fixed inode number is a second reference."""
    reasons: list[str] = []
    if dockerenv:
        reasons.append("/.dockerenv exists")
    if containerenv:
        reasons.append("/run/.containerenv exists")
    if container_env:
        reasons.append(f"container={container_env} in the environment")
    if pid1_cgroup:
        pc = parse_proc_cgroup(pid1_cgroup)
        paths = [*pc.v1.values(), *([pc.unified] if pc.unified else [])]
        hit = next((m for p in paths for m in _CONTAINER_MARKERS if m in p), None)
        if hit:
            reasons.append(f"PID 1's cgroup path mentions {hit}")
    private: bool | None = None
    if own_ns is not None:
        private = own_ns != INIT_CGROUP_NS_INO or (init_ns is not None and own_ns != init_ns)
        if private:
            where = " (we appear at its root, 0::/)" if own_unified == "/" else ""
            reasons.append(f"private cgroup namespace{where}")
    return ContainerInfo(reasons=tuple(reasons), private_cgroupns=private)


# --------------------------------------------------------------------------------------------
# The I/O side: read /proc and the mount, never write.


def _read(path: str | Path) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def find_cgroup2_mount() -> Path | None:
    """The cgroup2 mount that reaches our own cgroup (usually /sys/fs/cgroup), or None.

    Note: the mount may lack the memory controller (hybrid host); `discover()` says so."""
    pc = parse_proc_cgroup(_read("/proc/self/cgroup") or "")
    m = choose_cgroup2_mount(
        cgroup2_mounts(parse_mountinfo(_read("/proc/self/mountinfo") or "")), pc.unified
    )
    return Path(m.path) if m else None


def own_cgroup() -> CgroupPath:
    """Our own cgroup v2 path, relative to the root of the mount `find_cgroup2_mount()` returns."""
    from oomguard.cgroup.path import CgroupPath

    pc = parse_proc_cgroup(_read("/proc/self/cgroup") or "")
    if pc.unified is None:
        raise CgroupError(
            "/proc/self/cgroup has no cgroup v2 (0::) line",
            hint="this host has no cgroup v2; run `oomguard check` for how to enable it",
        )
    m = choose_cgroup2_mount(
        cgroup2_mounts(parse_mountinfo(_read("/proc/self/mountinfo") or "")), pc.unified
    )
    rel = relative_cgroup(pc.unified, m.root) if m else None
    if rel is None:
        raise CgroupError(
            f"our cgroup {pc.unified} is not reachable through any cgroup2 mount",
            hint="mount cgroup2 (mount -t cgroup2 none /sys/fs/cgroup) inside this namespace",
        )
    return CgroupPath.parse(rel)


class Discovery(NamedTuple):
    """Everything `oomguard check` judges, as observed. None means "could not tell".

    A NamedTuple like the records above (derive variants with ``_replace``): `oomguard status`
    imports this module for its default root, and a frozen dataclass of this size would pull in
    `dataclasses` and `inspect` and generate its methods at every start."""

    kernel_release: str
    mode: HostMode
    cgroup2: tuple[Cgroup2Mount, ...]
    v1: tuple[V1Mount, ...]
    #: The chosen cgroup2 mount (see choose_cgroup2_mount) and our cgroup relative to it.
    mount: Cgroup2Mount | None
    own_cgroup: str | None
    own_cgroup_raw: str | None
    own_dir: str | None
    #: True if our cgroup is the real hierarchy root (which has no cgroup.type file). The
    #: no-internal-process rule spares only the real root; a container's "/" is not it.
    own_is_root: bool | None
    #: cgroup.controllers at the mount root and in our own cgroup; subtree_control of ours.
    root_controllers: frozenset[str] | None
    controllers: frozenset[str] | None
    subtree_control: frozenset[str] | None
    #: v1 controllers that are bound to a v1 hierarchy (unavailable to cgroup2).
    v1_controllers: frozenset[str]
    #: The mount is rw and its ROOT directory is writable by us (root, or an explicit tree
    #: root such as "/oomguard" is possible). A delegated non-root user has False here but
    #: True in `own_dir_writable`; a read-only mount has both False (see `mount.read_only`).
    mount_writable: bool
    #: We may mkdir in our own cgroup and write its cgroup.subtree_control (the default tree
    #: <own>/oomguard is possible).
    own_dir_writable: bool
    #: Other processes in our own cgroup (not us): with them there, our cgroup can't hand the
    #: memory controller to children (no-internal-process rule).
    other_procs: tuple[int, ...] | None
    #: Our own cgroup's memory.max in bytes (None: "max" or no memory controller there) and
    #: memory.oom.group. In a container these are the container's limit and, on Kubernetes
    #: >= 1.28, oom.group=1: an OOM at that level kills oomguard together with everything.
    own_memory_max: int | None
    own_oom_group: bool | None
    container: ContainerInfo
    psi_system: bool
    psi_cgroup: bool | None
    cgroup_kill: bool | None
    memory_peak: bool | None
    swap_bytes: int
    memory_swap_max: bool | None
    cap_sys_resource: bool
    oom_score_adj: int | None
    oom_score_adj_writable: bool
    pid: int
    euid: int

    @property
    def is_pid1(self) -> bool:
        return self.pid == 1

    @property
    def memory_on_v1(self) -> bool:
        return "memory" in self.v1_controllers

    @property
    def can_lower_oom_score_adj(self) -> bool:
        # Lowering below the current minimum needs CAP_SYS_RESOURCE; raising never does.
        return self.cap_sys_resource and self.oom_score_adj_writable


def _probe_dir(own_dir: Path, own_is_root: bool | None) -> Path | None:
    """A non-root cgroup dir to look for non-root-only files (cgroup.kill, memory.peak,
    memory.swap.max): our own if it isn't the root, else the first child cgroup."""
    if own_is_root is False:
        return own_dir
    try:
        with os.scandir(own_dir) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    return Path(e.path)
    except OSError:
        return None
    return None


def discover() -> Discovery:
    """Observe the host. Reads only; safe anywhere, including hybrid hosts."""
    entries = parse_mountinfo(_read("/proc/self/mountinfo") or "")
    v2 = cgroup2_mounts(entries)
    v1 = v1_mounts(entries)
    pc = parse_proc_cgroup(_read("/proc/self/cgroup") or "")
    mount = choose_cgroup2_mount(v2, pc.unified)
    own = relative_cgroup(pc.unified, mount.root) if (mount and pc.unified is not None) else None
    release = os.uname().release
    kver = kernel_version(release)

    own_dir: Path | None = None
    root_controllers = controllers = subtree = None
    own_is_root: bool | None = None
    other: tuple[int, ...] | None = None
    own_max: int | None = None
    own_group: bool | None = None
    psi_cgroup = cgroup_kill = memory_peak = swap_max = None
    mount_writable = own_writable = False
    pid = os.getpid()
    if mount is not None:
        root_dir = Path(mount.path)
        root_controllers = parse_controllers_text(_read(root_dir / "cgroup.controllers"))
        mount_writable = not mount.read_only and os.access(root_dir, os.W_OK)
        if own is not None:
            own_dir = root_dir.joinpath(*[p for p in own.split("/") if p])
            controllers = parse_controllers_text(_read(own_dir / "cgroup.controllers"))
            subtree = parse_controllers_text(_read(own_dir / "cgroup.subtree_control"))
            if own_dir.is_dir():
                own_is_root = not (own_dir / "cgroup.type").exists()
            # To build a tree under our cgroup we must mkdir in it and write its
            # subtree_control; access() also reports EROFS for a read-only mount.
            own_writable = (
                not mount.read_only
                and os.access(own_dir, os.W_OK)
                and os.access(own_dir / "cgroup.subtree_control", os.W_OK)
            )
            procs_text = _read(own_dir / "cgroup.procs")
            if procs_text is not None:
                other = tuple(int(p) for p in procs_text.split() if p.isdigit() and int(p) != pid)
            psi_cgroup = (own_dir / "memory.pressure").exists()
            own_max = parse_limit_text(_read(own_dir / "memory.max"))
            group_text = _read(own_dir / "memory.oom.group")
            own_group = None if group_text is None else group_text.strip() == "1"
            probe = _probe_dir(own_dir, own_is_root)
            if probe is not None:
                cgroup_kill = (probe / "cgroup.kill").exists()
                # memory.* files appear only where the parent enabled memory for children.
                if (probe / "memory.current").exists():
                    memory_peak = (probe / "memory.peak").exists()
                    swap_max = (probe / "memory.swap.max").exists()
            if cgroup_kill is None:
                cgroup_kill = kver >= CGROUP_KILL_SINCE
            if memory_peak is None and controllers is not None and "memory" in controllers:
                memory_peak = kver >= MEMORY_PEAK_SINCE

    container = container_evidence(
        dockerenv=os.path.exists("/.dockerenv"),
        containerenv=os.path.exists("/run/.containerenv"),
        # systemd and podman spell it lowercase: container=podman / docker / lxc.
        container_env=os.environ.get("container"),  # noqa: SIM112
        pid1_cgroup=_read("/proc/1/cgroup"),
        own_ns=parse_ns_inode(_readlink("/proc/self/ns/cgroup")),
        init_ns=parse_ns_inode(_readlink("/proc/1/ns/cgroup")),
        own_unified=pc.unified,
    )
    adj_text = _read("/proc/self/oom_score_adj")
    try:
        adj: int | None = int(adj_text.strip()) if adj_text else None
    except ValueError:
        adj = None
    return Discovery(
        kernel_release=release,
        mode=classify(v2, v1),
        cgroup2=tuple(v2),
        v1=tuple(v1),
        mount=mount,
        own_cgroup=own,
        own_cgroup_raw=pc.unified,
        own_dir=str(own_dir) if own_dir else None,
        own_is_root=own_is_root,
        root_controllers=root_controllers,
        controllers=controllers,
        subtree_control=subtree,
        v1_controllers=frozenset(c for m in v1 for c in m.controllers),
        mount_writable=mount_writable,
        own_dir_writable=own_writable,
        other_procs=other,
        own_memory_max=own_max,
        own_oom_group=own_group,
        container=container,
        psi_system=os.path.exists("/proc/pressure/memory"),
        psi_cgroup=psi_cgroup,
        cgroup_kill=cgroup_kill,
        memory_peak=memory_peak,
        swap_bytes=parse_swaps(_read("/proc/swaps") or ""),
        memory_swap_max=swap_max,
        cap_sys_resource=has_capability(
            parse_cap_eff(_read("/proc/self/status") or ""), CAP_SYS_RESOURCE
        ),
        oom_score_adj=adj,
        oom_score_adj_writable=os.access("/proc/self/oom_score_adj", os.W_OK),
        pid=pid,
        euid=os.geteuid(),
    )
