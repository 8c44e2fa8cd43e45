"""The host verdict: what a `Discovery` means for oomguard. Pure: no I/O, no click.

One function, `assess`, answers both questions asked of a host:

- `oomguard check`: every fact judged (an `Item` with a level and a fix), and a verdict: ready,
  degraded (oom_score_adj and usage watching only) or cannot run;
- `run`/`exec`, before they touch the cgroup filesystem: can the slice tree be built here, or
  must oomguard degrade, and why (`Assessment.degraded`, the reason written to state.json)?

Only unambiguous facts make `run` degrade: no cgroup2 mount, memory bound to cgroup v1 or not
available where the tree would go, a read-only or undelegated cgroupfs, our own cgroup out of
reach. Those are FAIL items that carry the reason (`Item.degrades`). Two FAIL items carry none,
so `check` reports them but `run` still tries and fails with the tree builder's error: other
processes sharing our cgroup (the builder's error names them) and a cgroup.controllers we could
not read.

`tree_root` is the configured `[oomguard] cgroup`, or None for the default (a tree under our
own cgroup). With an explicit root the tree may sit anywhere on the mount, so what counts is
what the mount root offers, and only a read-only mount makes it unwritable.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from oomguard.cgroup.discover import HostMode
from oomguard.errors import ExitCode

if TYPE_CHECKING:
    from oomguard.cgroup.discover import Discovery

#: Shown whenever memory is not available to cgroup v2 because of how the host boots.
FIX_BOOT_V2 = (
    "boot with systemd.unified_cgroup_hierarchy=1 (or cgroup_no_v1=all), "
    "or run oomguard in a VM/container host with cgroup v2"
)
FIX_READ_ONLY = (
    "cgroupfs is read-only: run the container with --privileged, "
    "or podman --security-opt unmask=/sys/fs/cgroup, "
    "or docker --cgroupns=private with a writable mount"
)
FIX_DELEGATE = (
    "run as root, or under systemd-run --scope -p Delegate=yes so the cgroup is delegated to you"
)
FIX_MOUNT = "mount it: mount -t cgroup2 -o nsdelegate,memory_recursiveprot none /sys/fs/cgroup"

#: The reasons `run` degrades with (state.json's "degraded", the "degraded" event and log).
NO_MOUNT = "no cgroup v2 mount"
MEMORY_ON_V1 = "the memory controller is on cgroup v1 (hybrid host)"
MEMORY_NOT_DELEGATED = "the memory controller is not delegated to our cgroup"
READ_ONLY = "the cgroup filesystem is read-only"
OWN_UNREACHABLE = "our cgroup is not reachable through the cgroup2 mount"


class CheckLevel(Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


class Group(Enum):
    """What a failing item takes away: cgroup limits (-> degraded) or oom_score_adj."""

    CGROUP = "cgroup"
    OOM_SCORE = "oom_score_adj"
    INFO = "info"


class Verdict(Enum):
    READY = "ready"
    DEGRADED = "degraded"
    CANNOT_RUN = "cannot-run"

    @property
    def exit_code(self) -> ExitCode:
        return {
            Verdict.READY: ExitCode.OK,
            Verdict.DEGRADED: ExitCode.DEGRADED,
            Verdict.CANNOT_RUN: ExitCode.CANNOT_RUN,
        }[self]


@dataclass(frozen=True)
class Item:
    key: str
    level: CheckLevel
    detail: str
    fix: str | None = None
    group: Group = Group.INFO
    #: For a FAIL that rules the slice tree out for sure: why `run` degrades (see module doc).
    degrades: str | None = None


@dataclass(frozen=True)
class Assessment:
    items: tuple[Item, ...]
    verdict: Verdict
    summary: str

    @property
    def exit_code(self) -> ExitCode:
        return self.verdict.exit_code

    @property
    def _degrading(self) -> Item | None:
        return next((i for i in self.items if i.degrades is not None), None)

    @property
    def degraded(self) -> str | None:
        """Why `run` must do without the slice tree here; None: it builds the tree."""
        item = self._degrading
        return None if item is None else item.degrades

    @property
    def degraded_fix(self) -> str | None:
        """How to fix what `degraded` names."""
        item = self._degrading
        return None if item is None else item.fix


def _names(s: frozenset[str] | None) -> str:
    return ", ".join(sorted(s)) if s else "no controllers"


def _fail(key: str, detail: str, fix: str | None, degrades: str | None = None) -> Item:
    return Item(key, CheckLevel.FAIL, detail, fix, Group.CGROUP, degrades)


def _ok(key: str, detail: str) -> Item:
    return Item(key, CheckLevel.OK, detail, group=Group.CGROUP)


# -- cgroup items ------------------------------------------------------------------------------


def _hybrid_item(d: Discovery) -> Item:
    where = f"cgroup2 at {d.mount.path}" if d.mount else "cgroup2"
    if d.memory_on_v1:
        v1_memory = next((m.path for m in d.v1 if "memory" in m.controllers), None)
        detail = (
            f"this host is hybrid: memory is on cgroup v1 ({v1_memory}); {where} has "
            f"only {_names(d.root_controllers)}"
        )
        return _fail(
            "cgroup-v2", detail, FIX_BOOT_V2, NO_MOUNT if d.mount is None else MEMORY_ON_V1
        )
    detail = f"hybrid host: {_names(d.v1_controllers)} on cgroup v1, memory on {where}"
    return Item("cgroup-v2", CheckLevel.WARN, detail, FIX_BOOT_V2, Group.CGROUP)


def _mode_item(d: Discovery) -> Item:
    """The host mode: the one thing that must be right at boot."""
    if d.mode is HostMode.HYBRID:
        return _hybrid_item(d)
    if d.mode is HostMode.UNIFIED and d.mount is not None:
        return _ok("cgroup-v2", f"unified cgroup v2 at {d.mount.path}")
    if d.mode is HostMode.UNIFIED:
        return _fail("cgroup-v2", "no cgroup2 mount", None, NO_MOUNT)
    if d.mode is HostMode.LEGACY:
        detail = "this host has only cgroup v1 (legacy); oomguard needs cgroup v2 for memory"
        return _fail("cgroup-v2", detail, FIX_BOOT_V2, NO_MOUNT)
    return _fail("cgroup-v2", "no cgroup filesystem is mounted", FIX_MOUNT, NO_MOUNT)


def _parent_dir(d: Discovery) -> str:
    if d.own_dir is None or d.own_is_root:
        return d.own_dir or "/sys/fs/cgroup"
    return d.own_dir.rsplit("/", 1)[0] or "/"


def _controller_item(d: Discovery, name: str, tree_root: str | None) -> Item:
    """`name` must be available where the tree goes: in our cgroup (what its parent hands
    down is what we may hand to our slices), or for an explicit root at the mount root."""
    own = d.own_cgroup
    available = d.controllers if tree_root is None else d.root_controllers
    required = name == "memory"
    if name in (available or frozenset()):
        return _ok(f"{name}-controller", f"available in {tree_root or own}")
    reason: str | None = None
    if name in d.v1_controllers:
        detail = f"{name} controller is bound to cgroup v1, not available in {tree_root or own}"
        fix, reason = FIX_BOOT_V2, MEMORY_ON_V1
    elif d.root_controllers is not None and name not in d.root_controllers:
        detail = f"{name} controller is not available at the cgroup2 root"
        fix = f"the kernel may be booted with cgroup_disable={name}; remove that"
    else:
        detail = f"{name} controller not enabled in the parent of {own}"
        fix = f"echo +{name} > {_parent_dir(d)}/cgroup.subtree_control (as root); {FIX_DELEGATE}"
    if not required:
        return Item(f"{name}-controller", CheckLevel.WARN, detail, fix, Group.CGROUP)
    # An unreadable cgroup.controllers is not proof: the builder gets to try.
    degrades = None if available is None else (reason or MEMORY_NOT_DELEGATED)
    return _fail(f"{name}-controller", detail, fix, degrades)


def _writable_item(d: Discovery, tree_root: str | None) -> Item:
    # Docker/containerd/CRI-O mount cgroupfs ro unless privileged.
    assert d.mount is not None
    if d.mount.read_only:
        detail = f"{d.mount.path} is mounted read-only"
        return _fail("cgroupfs-writable", detail, FIX_READ_ONLY, READ_ONLY)
    if tree_root is not None:
        return _ok("cgroupfs-writable", f"{d.mount.path} is mounted read-write")
    if not d.own_dir_writable:
        detail = (
            f"cannot create cgroups under our cgroup {d.own_cgroup} ({d.own_dir}): not writable "
            f"by uid {d.euid}"
        )
        return _fail("cgroupfs-writable", detail, FIX_DELEGATE, READ_ONLY)
    return _ok("cgroupfs-writable", f"{d.own_dir} is writable")


def _own_cgroup_item(d: Discovery) -> Item:
    """The no-internal-process rule: a non-root cgroup with processes cannot enable controllers
    for its children. oomguard moves itself into a leaf, but it cannot move processes it does
    not own, so other processes in our cgroup block the default tree <own>/oomguard."""
    own = d.own_cgroup
    if d.own_is_root:
        return _ok("own-cgroup", f"{own} is the cgroup root")
    if not d.other_procs:
        return _ok("own-cgroup", f"{own}: no other processes in it")
    n = len(d.other_procs)
    detail = (
        f"{n} other process{'es' if n != 1 else ''} share our cgroup {own}: the kernel's "
        f"no-internal-process rule stops it enabling memory for a child tree"
    )
    fix = (
        "run oomguard in a cgroup of its own: systemd-run --scope -p Delegate=yes oomguard "
        "..., or as the container's entrypoint (PID 1)"
    )
    if not d.mount_writable:
        return _fail("own-cgroup", detail, fix)
    # As root we can still build the tree elsewhere, e.g. [oomguard] cgroup = "/oomguard".
    fix += ', or set [oomguard] cgroup = "/oomguard" in the config (or --cgroup /oomguard)'
    return Item("own-cgroup", CheckLevel.WARN, detail, fix, Group.CGROUP)


def cgroup_items(d: Discovery, tree_root: str | None = None) -> list[Item]:
    """Can the slice tree be built (at `tree_root`, None: under our own cgroup)?"""
    items = [_mode_item(d)]
    if d.mount is None:
        if items[0].degrades is None:
            # cgroup2 is mounted, but nowhere that reaches our cgroup.
            detail = f"no cgroup2 mount reaches our cgroup {d.own_cgroup_raw or '?'}"
            items.append(_fail("cgroup2-mount", detail, FIX_MOUNT, NO_MOUNT))
        return items
    if d.own_cgroup is None and tree_root is None:
        detail = f"our cgroup {d.own_cgroup_raw or '?'} is not reachable under {d.mount.path}"
        fix = "mount cgroup2 inside this namespace (or run with a private cgroup namespace)"
        items.append(_fail("own-cgroup", detail, fix, OWN_UNREACHABLE))
        return items
    items += [_controller_item(d, name, tree_root) for name in ("memory", "pids")]
    items.append(_writable_item(d, tree_root))
    if tree_root is None:
        items.append(_own_cgroup_item(d))
    return items


# -- feature items -----------------------------------------------------------------------------


def _psi_item(d: Discovery) -> Item:
    # PSI: memory.pressure per slice feeds the early-pressure response; needs CONFIG_PSI, psi=1.
    if d.psi_system and d.psi_cgroup is not False:
        return Item("psi", CheckLevel.OK, "pressure stall information available")
    return Item(
        "psi",
        CheckLevel.WARN,
        "no PSI (/proc/pressure/memory missing): pressure triggers are off; oomguard "
        "falls back to memory.high events and headroom",
        "boot with psi=1 (kernel built with CONFIG_PSI)",
    )


def _kernel_items(d: Discovery) -> list[Item]:
    items: list[Item] = []
    if d.cgroup_kill is False:
        detail = (
            f"kernel {d.kernel_release} has no cgroup.kill (5.14+): a slice is killed "
            "pid by pid, which can race with fork"
        )
        items.append(Item("cgroup.kill", CheckLevel.WARN, detail, "use a 5.14 or newer kernel"))
    elif d.cgroup_kill:
        items.append(Item("cgroup.kill", CheckLevel.OK, "kills a whole slice atomically"))
    if d.memory_peak is False:
        detail = "no memory.peak (5.19+): status shows no peak usage"
        items.append(Item("memory.peak", CheckLevel.WARN, detail, "use a 5.19 or newer kernel"))
    elif d.memory_peak:
        items.append(Item("memory.peak", CheckLevel.OK, "peak usage per slice available"))
    return items


def _oom_score_adj_item(d: Discovery) -> Item:
    # oom_score_adj is the degraded mode's only lever; lowering needs CAP_SYS_RESOURCE.
    g = Group.OOM_SCORE
    if not d.oom_score_adj_writable:
        detail = "/proc/self/oom_score_adj is not writable"
        fix = "mount /proc read-write (the container runtime may mask it)"
        return Item("oom_score_adj", CheckLevel.FAIL, detail, fix, g)
    if not d.cap_sys_resource:
        detail = (
            "no CAP_SYS_RESOURCE: sidecars' oom_score_adj can be raised, but the primary "
            "cannot be protected with a negative value"
        )
        fix = "run as root with CAP_SYS_RESOURCE (docker/podman --cap-add=SYS_RESOURCE)"
        return Item("oom_score_adj", CheckLevel.WARN, detail, fix, g)
    return Item(
        "oom_score_adj", CheckLevel.OK, "can be raised and lowered (CAP_SYS_RESOURCE)", group=g
    )


def _swap_item(d: Discovery) -> Item:
    if d.swap_bytes == 0:
        detail = (
            "no swap: PSI memory stalls show late, so oomguard also watches memory.high "
            "events and headroom"
        )
        return Item("swap", CheckLevel.OK, detail)
    if d.memory_swap_max is False:
        detail = (
            f"{d.swap_bytes >> 20} MiB swap but no memory.swap.max: slices can swap without limit"
        )
        return Item(
            "swap",
            CheckLevel.WARN,
            detail,
            "boot with swapaccount=1 (kernel with CONFIG_MEMCG_SWAP)",
        )
    return Item("swap", CheckLevel.OK, f"{d.swap_bytes >> 20} MiB swap, limited per slice")


def _own_limit_items(d: Discovery) -> list[Item]:
    items: list[Item] = []
    if d.own_oom_group:
        detail = (
            f"our cgroup {d.own_cgroup} has memory.oom.group=1 (Kubernetes >= 1.28 sets it): "
            "an OOM at that level kills oomguard along with every service"
        )
        fix = (
            "keep the sum of slice limits below its memory.max minus oomguard's reserve, "
            "so OOMs happen inside a slice"
        )
        items.append(Item("own-oom-group", CheckLevel.WARN, detail, fix))
    if d.own_memory_max is not None:
        from oomguard.units import format_size

        detail = (
            f"our cgroup's memory.max is {format_size(d.own_memory_max)}: the tree's "
            "limits must fit below it"
        )
        items.append(Item("own-limit", CheckLevel.OK, detail))
    return items


def _context_items(d: Discovery) -> list[Item]:
    ctx = "; ".join(d.container.reasons) if d.container.in_container else "not in a container"
    items = [Item("container", CheckLevel.OK, ctx)]
    if d.is_pid1:
        items.append(
            Item("pid1", CheckLevel.OK, "PID 1: oomguard reaps orphans and forwards signals")
        )
    if d.mount is not None:
        options = (
            ("nsdelegate", d.mount.nsdelegate),
            ("memory_recursiveprot", d.mount.memory_recursiveprot),
        )
        opts = [o for o, on in options if on]
        detail = f"{d.mount.path}: {', '.join(opts) or 'no nsdelegate/memory_recursiveprot'}"
        if not d.mount.memory_recursiveprot:
            detail += " (memory.min/low protect only where set on every ancestor)"
        items.append(Item("mount-options", CheckLevel.OK, detail))
    return items


def feature_items(d: Discovery, cgroup_ok: bool) -> list[Item]:
    """What works how well beside the tree: PSI, kernel features, oom_score_adj, swap."""
    items = [_psi_item(d)]
    if cgroup_ok:
        items += _kernel_items(d)
    items.append(_oom_score_adj_item(d))
    items.append(_swap_item(d))
    return items + _own_limit_items(d) + _context_items(d)


def _verdict(cgroup_ok: bool, adj_ok: bool) -> tuple[Verdict, str]:
    if cgroup_ok and adj_ok:
        return Verdict.READY, "ready: oomguard can run services in memory-limited cgroup v2 slices"
    if not cgroup_ok and not adj_ok:
        return (
            Verdict.CANNOT_RUN,
            "cannot run: no cgroup v2 memory control and oom_score_adj is not writable",
        )
    if not cgroup_ok:
        return (
            Verdict.DEGRADED,
            "degraded: no cgroup v2 memory limits here; oomguard can only set oom_score_adj and "
            "watch usage (fix the failed items for full mode)",
        )
    return Verdict.DEGRADED, "degraded: cgroup limits work, but oom_score_adj cannot be set"


def assess(d: Discovery, tree_root: str | None = None) -> Assessment:
    """Judge a discovery. READY: no item fails. CANNOT_RUN: cgroup limits are impossible and
    oom_score_adj cannot be written either. Anything else: DEGRADED. `tree_root`: see the
    module doc."""
    items = [Item("kernel", CheckLevel.OK, d.kernel_release), *cgroup_items(d, tree_root)]
    cgroup_ok = not any(i.level is CheckLevel.FAIL for i in items)
    items += feature_items(d, cgroup_ok)
    verdict, summary = _verdict(cgroup_ok, d.oom_score_adj_writable)
    return Assessment(items=tuple(items), verdict=verdict, summary=summary)
