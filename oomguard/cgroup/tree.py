"""Build, adopt and tear down the slice tree described by a `TreeSpec`.

All cgroupfs access goes through `CgroupFS`; this module decides only the order, and the order is
what the kernel's rules dictate:

1. Create the root and the supervisor leaf (`root/supervisor`).
2. Move the supervisor's pid into the leaf FIRST. The no-internal-process rule: a non-root cgroup
   that has processes cannot enable controllers for its children. oomguard usually starts inside
   the cgroup that becomes the root's parent, so it must leave it before anything is enabled.
3. Check the root's parent is now empty (unless it is the real root, which is exempt).
4. Enable ``+memory +pids`` top-down: the root's parent, the root, then every inner slice. A
   controller shows up in a child's cgroup.controllers (and its memory.* files appear) only once
   the parent enables it in cgroup.subtree_control.
5. When adopting a tree left by an earlier run: kill the orphaned processes in its slices, and
   remove slice cgroups that are no longer in the spec (bottom-up).
6. Create the slices parents first, and write every limit (the full desired state, so a stale
   limit from an earlier config cannot survive).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from oomguard.cgroup.path import CgroupPath, CgroupPathError
from oomguard.cgroup.spec import SUPERVISOR_LEAF, Limits, SliceSpec, TreeSpec
from oomguard.errors import CgroupError, Vanished

if TYPE_CHECKING:
    from oomguard.cgroup.fs import CgroupFS

#: The root's name when TreeSpec.root is None: "<oomguard's own cgroup>/oomguard".
DEFAULT_ROOT_NAME = "oomguard"

#: How long teardown/adopt wait for a killed slice to become unpopulated before removing it
#: (rmdir then retries EBUSY on its own for CgroupFS.rmdir_timeout more).
KILL_WAIT = 5.0

_NOT_EMPTY_HINT = (
    "run oomguard in its own cgroup: systemd-run --scope -p Delegate=yes ..., or set "
    "[oomguard] cgroup to an empty delegated cgroup"
)


@dataclass(frozen=True)
class BuiltTree:
    """What build() made. `paths` maps each slice/service name to its cgroup; the supervisor's
    leaf is `leaf`, not in `paths`. `warnings` are for the event log (e.g. orphans killed)."""

    root: CgroupPath
    leaf: CgroupPath
    paths: dict[str, CgroupPath]
    warnings: tuple[str, ...] = ()
    adopted: bool = False
    #: Slices that hold processes (kind "service"), by name; the rest are budgets only.
    services: frozenset[str] = field(default_factory=frozenset)


def resolve_root(spec: TreeSpec, self_cgroup: CgroupPath) -> CgroupPath:
    """spec.root, or `<self_cgroup>/oomguard`.

    A restarted oomguard may already sit in its own leaf (`.../oomguard/supervisor`, e.g. after an
    exec-in-place restart); nesting a new tree inside the old leaf would be wrong, so that case
    resolves to the existing root.
    """
    if spec.root is not None:
        return CgroupPath.parse(spec.root)
    parent = self_cgroup.parent
    if (
        self_cgroup.name == SUPERVISOR_LEAF
        and parent is not None
        and parent.name == DEFAULT_ROOT_NAME
    ):
        return parent
    return self_cgroup.child(DEFAULT_ROOT_NAME)


def _validate(spec: TreeSpec) -> None:
    """The config model validates this already; re-check what would corrupt the tree."""
    seen_paths: set[tuple[str, ...]] = set()
    seen_names: set[str] = set()
    for s in spec.slices:
        where = f"slice {s.name!r} (path {'/'.join(s.path) or '<empty>'})"
        try:
            CgroupPath(s.path)
        except CgroupPathError as err:
            raise CgroupError(f"{where}: {err.message}", err.hint) from None
        if not s.path:
            raise CgroupError(f"{where}: empty path", "a slice path names at least one level")
        if s.path[0] == SUPERVISOR_LEAF:
            raise CgroupError(
                f"{where}: {SUPERVISOR_LEAF!r} is reserved for oomguard's own cgroup",
                "rename the slice",
            )
        if s.path in seen_paths or s.name in seen_names:
            raise CgroupError(f"{where}: defined twice", "slice and service names must be unique")
        if len(s.path) > 1 and s.path[:-1] not in seen_paths:
            raise CgroupError(
                f"{where}: its parent slice {'/'.join(s.path[:-1])} is not defined before it",
                "define the parent slice (slices are listed parents first)",
            )
        seen_paths.add(s.path)
        seen_names.add(s.name)
    for c in spec.controllers:
        if not c or not c.isidentifier():
            raise CgroupError(f"{c!r} is not a controller name", "use e.g. memory, pids")


def _limit(value: int | None) -> str:
    return "max" if value is None else str(value)


def write_limits(fs: CgroupFS, p: CgroupPath, limits: Limits, warnings: list[str]) -> None:
    """Write every memory file of `p`. Order: protections (min, low), then high before max.

    The kernel accepts any combination (high > max, min > max), so the order only decides what a
    concurrent allocation sees in between: writing high first throttles before max can OOM-kill.
    Lowering memory.max below current usage makes the kernel reclaim, and OOM-kill in the slice if
    reclaim fails; that is what the configured limit asks for.
    """
    fs.write(p, "memory.min", str(limits.min))
    fs.write(p, "memory.low", str(limits.low))
    fs.write(p, "memory.high", _limit(limits.high))
    fs.write(p, "memory.max", _limit(limits.max))
    # memory.swap.max exists only with swap accounting (CONFIG_MEMCG_SWAP and not
    # swapaccount=0); without it there is nothing to limit, so only a wanted limit is a warning.
    if fs.has_file(p, "memory.swap.max"):
        fs.write(p, "memory.swap.max", _limit(limits.swap_max))
    elif limits.swap_max is not None:
        warnings.append(
            f"memory.swap.max is absent in cgroup {p} (no swap accounting): "
            f"swap limit {limits.swap_max} not applied"
        )
    # oom.group=1: the OOM killer takes the whole slice at once, so a service is never left
    # half-killed (e.g. a postmaster without its backends).
    fs.write(p, "memory.oom.group", "1" if limits.oom_group else "0")


def _kill_and_wait(fs: CgroupFS, p: CgroupPath, timeout: float) -> list[int]:
    """SIGKILL the subtree of `p`; return the pids that were in it. Vanished counts as done."""
    try:
        pids = fs.procs_recursive(p)
        if pids:
            fs.kill(p)
            fs.wait_unpopulated(p, timeout)
    except Vanished:
        return []
    return pids


def _remove_subtree(fs: CgroupFS, p: CgroupPath) -> None:
    """rmdir `p` and its descendants, deepest first."""
    try:
        cgroups = fs.walk(p)
    except Vanished:
        return
    for cg in sorted(cgroups, key=lambda c: c.depth, reverse=True):
        fs.rmdir(cg)


def build(
    fs: CgroupFS,
    spec: TreeSpec,
    move_pid: int | None,
    self_cgroup: CgroupPath,
    *,
    kill_wait: float = KILL_WAIT,
) -> BuiltTree:
    """Create (or adopt) the tree for `spec` and return where everything is. See module doc."""
    _validate(spec)
    root = resolve_root(spec, self_cgroup)
    parent = root.parent
    if parent is None:
        raise CgroupError(
            "the tree root cannot be the cgroup mount root itself",
            "set [oomguard] cgroup to a cgroup below the mount, e.g. /oomguard",
        )
    if not fs.exists(parent):
        raise CgroupError(
            f"cannot build the tree at {root}: its parent cgroup {parent} does not exist",
            "create it (and delegate it to oomguard), or set [oomguard] cgroup elsewhere",
        )
    leaf = root.child(SUPERVISOR_LEAF)
    warnings: list[str] = []
    adopted = fs.exists(root)

    fs.mkdir(root)
    fs.mkdir(leaf)
    if adopted:
        _guard_leaf(fs, leaf, move_pid)
        # The leaf must stay a leaf: processes cannot be moved into a cgroup that enables
        # controllers for children (EBUSY), so clear anything an older run left below it.
        for kid in fs.children(leaf):
            _remove_subtree(fs, kid)
        fs.disable_controllers(leaf)

    # (2) Leave the parent before enabling anything.
    if move_pid is not None:
        fs.move_pid(leaf, move_pid)

    # (3) The real root is exempt from the no-internal-process rule; any other parent
    # (including a container's namespace root) must be empty to enable controllers.
    if not fs.is_real_root(parent):
        others = fs.procs(parent)
        if others:
            raise CgroupError(
                f"cgroup {parent} (the parent of the oomguard tree {root}) still has processes "
                f"{' '.join(str(p) for p in sorted(others))}, so it cannot enable controllers "
                f"for the tree (cgroup v2's no-internal-process rule)",
                _NOT_EMPTY_HINT,
            )

    # (4) Top-down: what the parent enables is what the root gets.
    fs.enable_controllers(parent, spec.controllers)
    fs.enable_controllers(root, spec.controllers)

    by_path = {s.path: s for s in spec.slices}
    has_children = {s.path[:-1] for s in spec.slices if len(s.path) > 1}

    # (5) Adopt: kill orphans, then remove what the spec no longer has.
    if adopted:
        for top in fs.children(root):
            if top == leaf:
                continue
            pids = _kill_and_wait(fs, top, kill_wait)
            if pids:
                warnings.append(
                    f"killed {len(pids)} leftover process(es) in {top} from an earlier run: "
                    f"{' '.join(str(p) for p in sorted(pids))}"
                )
        stale = [
            cg
            for cg in fs.walk(root)
            if not cg.is_relative_to(leaf) and cg != root and cg.relative_to(root) not in by_path
        ]
        # A stale cgroup's descendants are stale too; remove deepest first.
        for cg in sorted(stale, key=lambda c: c.depth, reverse=True):
            fs.rmdir(cg)
        if stale:
            top_stale = [cg for cg in stale if cg.parent is None or cg.parent not in stale]
            warnings.append(
                "removed cgroups no longer in the config: " + " ".join(str(c) for c in top_stale)
            )

    # (6) Limits: the root caps the whole tree. Protection (min/low) is hierarchical: a child's
    # effective memory.min is bounded by its parent's, so the root claims the sum its direct
    # children ask for; otherwise the reserve and the slices' min would protect nothing from
    # reclaim outside the tree.
    tops = [s for s in spec.slices if len(s.path) == 1]
    root_limits = Limits(
        min=spec.reserve + sum(s.limits.min for s in tops),
        low=sum(s.limits.low for s in tops),
        max=spec.memory_max,
    )
    write_limits(fs, root, root_limits, warnings)
    write_limits(fs, leaf, Limits(min=spec.reserve), warnings)

    paths: dict[str, CgroupPath] = {}
    for s in spec.slices:
        p = root.join(*s.path)
        fs.mkdir(p)
        _set_subtree(fs, p, s, s.path in has_children, spec.controllers)
        write_limits(fs, p, s.limits, warnings)
        paths[s.name] = p

    return BuiltTree(
        root=root,
        leaf=leaf,
        paths=paths,
        warnings=tuple(warnings),
        adopted=adopted,
        services=frozenset(s.name for s in spec.slices if s.kind == "service"),
    )


def _set_subtree(
    fs: CgroupFS, p: CgroupPath, s: SliceSpec, inner: bool, controllers: tuple[str, ...]
) -> None:
    if inner:
        fs.enable_controllers(p, controllers)
    elif fs.subtree_control(p):
        # Adopted from a config where this was an inner slice: a service cgroup that enables
        # controllers for children cannot take processes (EBUSY on cgroup.procs).
        fs.disable_controllers(p)


def _guard_leaf(fs: CgroupFS, leaf: CgroupPath, move_pid: int | None) -> None:
    """Refuse to adopt a tree whose leaf holds someone else: another oomguard is running it, and
    killing "orphans" would kill its services."""
    ours = {os.getpid()} if move_pid is None else {move_pid, os.getpid()}
    others = [p for p in fs.procs_recursive(leaf) if p not in ours]
    if others:
        raise CgroupError(
            f"the oomguard tree {leaf.parent} is in use: its supervisor cgroup {leaf} holds "
            f"process(es) {' '.join(str(p) for p in sorted(others))}",
            "another oomguard is probably running it; stop that one first, or set [oomguard] "
            "cgroup to a different path",
        )


def teardown(
    fs: CgroupFS,
    built_or_root: BuiltTree | CgroupPath,
    keep_leaf: bool,
    *,
    kill_wait: float = KILL_WAIT,
) -> list[str]:
    """Kill everything in the service slices and remove them bottom-up.

    keep_leaf=True keeps the root and the supervisor leaf (oomguard itself is still inside);
    keep_leaf=False removes those too (the caller has emptied the leaf). A tree that is already
    (partly) gone is fine. Every cgroup is attempted; the first failure is raised at the end.
    Returns messages about the processes that had to be killed.
    """
    root = built_or_root.root if isinstance(built_or_root, BuiltTree) else built_or_root
    leaf = root.child(SUPERVISOR_LEAF)
    messages: list[str] = []
    try:
        tops = [c for c in fs.children(root) if c != leaf]
    except Vanished:
        return messages
    errors: list[CgroupError] = []
    # Kill all slices first, then wait: the exits of all slices overlap instead of queueing.
    killed: list[tuple[CgroupPath, list[int]]] = []
    for top in tops:
        try:
            pids = fs.procs_recursive(top)
            if pids:
                fs.kill(top)
                killed.append((top, pids))
        except Vanished:
            continue
        except CgroupError as err:
            errors.append(err)
    for top, pids in killed:
        fs.wait_unpopulated(top, kill_wait)
        messages.append(f"killed {len(pids)} process(es) in {top}")

    remaining = [*tops] if keep_leaf else [*tops, leaf]
    for top in remaining:
        try:
            _remove_subtree(fs, top)
        except CgroupError as err:
            errors.append(err)
    if not keep_leaf and not errors:
        try:
            fs.rmdir(root)
        except CgroupError as err:
            errors.append(err)
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise CgroupError(f"teardown of {root} incomplete: {first.message}{more}", first.hint)
    return messages
