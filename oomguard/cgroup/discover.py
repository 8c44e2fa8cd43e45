"""Where are we, and what may we do? Read-only discovery of the host's cgroup setup.

This is an adapter: it reads /proc only through `oomguard.proc` and the cgroup2 mount only
through `CgroupFS`, and never writes or creates anything (on a hybrid host, a mkdir in the wrong
place silently makes a plain tmpfs directory). Everything that can be judged from the parsed
files lives in a pure function, so each host shape (unified, hybrid, legacy, container) is
unit-tested from samples; what the facts mean for oomguard is cgroup/verdict.py's.

`oomguard status` imports this module for its default root, so it stays import-light: no
pydantic, no config, nothing beyond the standard library and `oomguard.cgroup.path`.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from oomguard import proc
from oomguard.errors import CgroupError, OomguardError
from oomguard.proc import MountEntry, ProcCgroup

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from oomguard.cgroup.fs import CgroupFS
    from oomguard.cgroup.path import CgroupPath

_T = TypeVar("_T")

#: The inode number of the initial cgroup namespace (PROC_CGROUP_INIT_INO in the kernel). A
#: process whose /proc/self/ns/cgroup names another inode was put in a private cgroup namespace,
#: which is what docker/podman do by default on a cgroup v2 host.
INIT_CGROUP_NS_INO = 0xEFFFFFFB

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
# Pure judgement of parsed /proc files (oomguard/proc.py parses them). The small records are
# NamedTuples, not frozen dataclasses: `oomguard status` imports this module for its default
# root, and dataclass code generation at import costs milliseconds per class.


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
    pid1_cgroup: ProcCgroup | None,
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
    if pid1_cgroup is not None:
        pc = pid1_cgroup
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
# The I/O side: /proc through `oomguard.proc`, the mount through `CgroupFS`; never a write.


def _own_mount() -> tuple[ProcCgroup, Cgroup2Mount | None]:
    pc = proc.proc_cgroup() or ProcCgroup(None, {})
    return pc, choose_cgroup2_mount(cgroup2_mounts(proc.mountinfo()), pc.unified)


def find_cgroup2_mount() -> Path | None:
    """The cgroup2 mount that reaches our own cgroup (usually /sys/fs/cgroup), or None.

    Note: the mount may lack the memory controller (hybrid host); `discover()` says so."""
    m = _own_mount()[1]
    return Path(m.path) if m else None


def own_cgroup() -> CgroupPath:
    """Our own cgroup v2 path, relative to the root of the mount `find_cgroup2_mount()` returns."""
    from oomguard.cgroup.path import CgroupPath

    pc, m = _own_mount()
    if pc.unified is None:
        raise CgroupError(
            "/proc/self/cgroup has no cgroup v2 (0::) line",
            hint="this host has no cgroup v2; run `oomguard check` for how to enable it",
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


class CgroupFacts(NamedTuple):
    """What `discover` learns from the cgroup2 mount (the `Discovery` fields of the same names).
    `NO_CGROUP` when there is no mount or our cgroup is not reachable through it."""

    own_dir: str | None
    own_is_root: bool | None
    root_controllers: frozenset[str] | None
    controllers: frozenset[str] | None
    subtree_control: frozenset[str] | None
    mount_writable: bool
    own_dir_writable: bool
    other_procs: tuple[int, ...] | None
    own_memory_max: int | None
    own_oom_group: bool | None
    psi_cgroup: bool | None
    cgroup_kill: bool | None
    memory_peak: bool | None
    memory_swap_max: bool | None


NO_CGROUP = CgroupFacts(
    None, None, None, None, None, False, False, None, None, None, None, None, None, None
)


def _quiet(read: Callable[[], _T]) -> _T | None:
    # Discovery reports what it could not tell as None; a file it may not read, a cgroup that
    # vanished or a value in an unexpected format is that, not an error.
    try:
        return read()
    except OomguardError:
        return None


def _has(fs: CgroupFS, p: CgroupPath, name: str) -> bool:
    return _quiet(lambda: fs.has_file(p, name)) is True


def _probe(fs: CgroupFS, own: CgroupPath, own_is_root: bool | None) -> CgroupPath | None:
    """A non-root cgroup to look for non-root-only files (cgroup.kill, memory.peak,
    memory.swap.max): our own if it isn't the root, else its first child."""
    if own_is_root is False:
        return own
    children = _quiet(lambda: fs.children(own)) or []
    return children[0] if children else None


def _kernel_features(
    fs: CgroupFS, own: CgroupPath, own_is_root: bool | None, memory: bool
) -> tuple[bool | None, bool | None, bool | None]:
    """(cgroup.kill, memory.peak, memory.swap.max): seen in a probe cgroup, else guessed from
    the kernel release."""
    kill = peak = swap_max = None
    probe = _probe(fs, own, own_is_root)
    if probe is not None:
        kill = _has(fs, probe, "cgroup.kill")
        # memory.* files appear only where the parent enabled memory for children.
        if _has(fs, probe, "memory.current"):
            peak = _has(fs, probe, "memory.peak")
            swap_max = _has(fs, probe, "memory.swap.max")
    kver = kernel_version(os.uname().release)
    if kill is None:
        kill = kver >= CGROUP_KILL_SINCE
    if peak is None and memory:
        peak = kver >= MEMORY_PEAK_SINCE
    return kill, peak, swap_max


def cgroup_facts(fs: CgroupFS, own_text: str | None, *, read_only: bool, pid: int) -> CgroupFacts:
    """Read what `Discovery` needs from the mount `fs`; `own_text` is our cgroup relative to it
    (None: not reachable), `read_only` the mount's flag, `pid` ours (not counted as "other")."""
    from oomguard.cgroup.path import CgroupPath

    root = CgroupPath()
    root_controllers = _quiet(lambda: fs.controllers(root))
    mount_writable = not read_only and fs.writable(root)
    own = _quiet(lambda: CgroupPath.parse(own_text)) if own_text is not None else None
    if own is None:
        return NO_CGROUP._replace(root_controllers=root_controllers, mount_writable=mount_writable)
    controllers = _quiet(lambda: fs.controllers(own))
    procs = _quiet(lambda: fs.procs(own))
    group = _quiet(lambda: fs.read_optional(own, "memory.oom.group"))
    # The no-internal-process rule spares only the real root, which has no cgroup.type.
    own_is_root = not _has(fs, own, "cgroup.type") if fs.exists(own) else None
    kill, peak, swap_max = _kernel_features(
        fs, own, own_is_root, controllers is not None and "memory" in controllers
    )
    return CgroupFacts(
        own_dir=str(fs.dir(own)),
        own_is_root=own_is_root,
        root_controllers=root_controllers,
        controllers=controllers,
        subtree_control=_quiet(lambda: fs.subtree_control(own)),
        mount_writable=mount_writable,
        # To build a tree under our cgroup we must mkdir in it and write its subtree_control;
        # access() also reports EROFS for a read-only mount.
        own_dir_writable=not read_only
        and fs.writable(own)
        and fs.writable(own, "cgroup.subtree_control"),
        other_procs=None if procs is None else tuple(p for p in procs if p != pid),
        own_memory_max=_quiet(lambda: fs.read_limit(own, "memory.max")),
        own_oom_group=None if group is None else group.strip() == "1",
        psi_cgroup=_has(fs, own, "memory.pressure"),
        cgroup_kill=kill,
        memory_peak=peak,
        memory_swap_max=swap_max,
    )


def _container(own_unified: str | None) -> ContainerInfo:
    return container_evidence(
        dockerenv=os.path.exists("/.dockerenv"),
        containerenv=os.path.exists("/run/.containerenv"),
        # systemd and podman spell it lowercase: container=podman / docker / lxc.
        container_env=os.environ.get("container"),  # noqa: SIM112
        pid1_cgroup=proc.proc_cgroup(1),
        own_ns=proc.cgroup_ns_inode(),
        init_ns=proc.cgroup_ns_inode(1),
        own_unified=own_unified,
    )


def discover() -> Discovery:
    """Observe the host. Reads only; safe anywhere, including hybrid hosts."""
    from oomguard.cgroup.fs import CgroupFS

    entries = proc.mountinfo()
    v2, v1 = cgroup2_mounts(entries), v1_mounts(entries)
    pc = proc.proc_cgroup() or ProcCgroup(None, {})
    mount = choose_cgroup2_mount(v2, pc.unified)
    own = relative_cgroup(pc.unified, mount.root) if (mount and pc.unified is not None) else None
    pid = os.getpid()
    facts = (
        NO_CGROUP
        if mount is None
        else cgroup_facts(CgroupFS(mount.path), own, read_only=mount.read_only, pid=pid)
    )
    return Discovery(
        kernel_release=os.uname().release,
        mode=classify(v2, v1),
        cgroup2=tuple(v2),
        v1=tuple(v1),
        mount=mount,
        own_cgroup=own,
        own_cgroup_raw=pc.unified,
        v1_controllers=frozenset(c for m in v1 for c in m.controllers),
        container=_container(pc.unified),
        psi_system=proc.psi_available(),
        swap_bytes=proc.swap_total(),
        cap_sys_resource=proc.cap_sys_resource() is True,
        oom_score_adj=proc.oom_score_adj(),
        oom_score_adj_writable=proc.oom_score_adj_writable(),
        pid=pid,
        euid=os.geteuid(),
        **facts._asdict(),
    )
