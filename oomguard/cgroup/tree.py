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
   remove slice cgroups that are no longer in the spec (bottom-up). Only a tree oomguard can
   prove it made is adopted (see "Ownership" below); anything else is refused untouched.
6. Create the slices parents first, and write every limit (the full desired state, so a stale
   limit from an earlier config cannot survive).

Ownership
---------
An existing cgroup is not ours because it exists: pointed at "/system.slice", treating it as an
old tree would SIGKILL every service on the host. oomguard adopts a root only when it proves it
made it, by one of:

- the xattr ``trusted.oomguard.tree``, written right after oomguard's own mkdir made the root.
  Only CAP_SYS_ADMIN (in the initial user namespace) can set or read trusted.* xattrs, so no
  unprivileged user can forge it; kernfs (cgroupfs) supports trusted.* on every kernel we run on;
- else ``user.oomguard.tree`` (cgroup2 supports user.* xattrs since 5.7), for an oomguard
  without CAP_SYS_ADMIN (a delegated cgroup, a user namespace). Anyone who can write the
  directory can set it, so it counts only on a directory owned by our own euid: whoever could
  forge it could already do everything oomguard would do there;
- else a `TreeLedger` record (the state directory's ``tree.json``) of the root's path and its
  cgroup id (the directory's inode number, never reused while the kernel runs).

A cgroup with none of these is refused (`ForeignCgroup`, exit 2), naming the processes inside,
unless it is completely empty: no process and no child cgroup. Such a cgroup is claimed (marked)
rather than refused: it is what an administrator makes and delegates for oomguard, adopting it
kills nothing and removes nothing, and teardown then removes only the slices oomguard creates
below it.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from oomguard import proc
from oomguard.cgroup.path import CgroupPath, CgroupPathError
from oomguard.cgroup.spec import SUPERVISOR_LEAF, Limits, OomdHint, SliceSpec, TreeSpec
from oomguard.errors import CgroupError, ForeignCgroup, Vanished

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


#: The ownership marker xattrs, strongest first (see "Ownership" in the module doc).
MARK_TRUSTED = "trusted.oomguard.tree"
MARK_USER = "user.oomguard.tree"
#: A marker's value starts with this; the rest is a random tree id (for humans and logs).
MARK_PREFIX = b"oomguard-tree v1 id="
#: How many processes a refusal lists before "... (N in all)".
_LIST_MAX = 20


class TreeLedger(Protocol):
    """The fallback ownership record, kept where xattrs cannot be set (the state directory)."""

    def recorded(self, root: CgroupPath) -> int | None:
        """The cgroup id recorded for `root`, or None."""

    def record(self, root: CgroupPath, cgroup_id: int) -> None:
        """Remember that oomguard made `root`, whose cgroup id is `cgroup_id`."""


@dataclass(frozen=True)
class BuiltTree:
    """What build() made. `paths` maps each slice/service name to its cgroup; the supervisor's
    leaf is `leaf`, not in `paths`. `warnings` are for the event log (e.g. orphans killed)."""

    root: CgroupPath
    leaf: CgroupPath
    paths: dict[str, CgroupPath]
    warnings: tuple[str, ...] = ()
    adopted: bool = False
    #: How the root was proven ours: "created", "claimed-empty", "xattr-trusted", "xattr-user",
    #: "ledger".
    ownership: str = "created"
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


#: The xattrs systemd-oomd (ManagedOOMPreference, v248+) and Meta's oomd read on a candidate
#: cgroup: "avoid" skips it while any other candidate is left, "prefer" kills it first.
#: systemd-oomd honours them only on cgroups owned by root (or by the monitored unit's owner).
OOMD_XATTRS: dict[OomdHint, str] = {"avoid": "user.oomd_avoid", "prefer": "user.oomd_prefer"}


def mark_oomd(fs: CgroupFS, p: CgroupPath, hint: OomdHint | None, warnings: list[str]) -> None:
    """Set `hint`'s xattr to "1" on `p` (nothing for None). A cgroupfs without user.* xattrs
    (before 5.7) or a refusal is a warning: the other killers then simply get no hint."""
    if hint is None:
        return
    name = OOMD_XATTRS[hint]
    try:
        done = fs.set_xattr(p, name, b"1")
    except Vanished:
        return
    except CgroupError as err:
        warnings.append(f"cannot set {name} on {p}: {err.message}")
        return
    if not done:
        warnings.append(
            f"cannot set {name} on {p} (no user.* xattrs on this cgroupfs, or not allowed): "
            "systemd-oomd and oomd get no hint to spare the primary"
        )


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
    ledger: TreeLedger | None = None,
) -> BuiltTree:
    """Create (or adopt) the tree for `spec` and return where everything is. See module doc.

    Raises `ForeignCgroup` (before touching anything) if the root exists and is not provably
    oomguard's."""
    _validate(spec)
    root = resolve_root(spec, self_cgroup)
    parent = _parent_of(fs, root)
    leaf = root.child(SUPERVISOR_LEAF)
    warnings: list[str] = []
    ownership = _own_root(fs, root, ledger, warnings)
    adopted = ownership not in ("created", "claimed-empty")

    fs.mkdir(leaf)
    if adopted:
        _clear_leaf(fs, leaf, move_pid)

    # (2) Leave the parent before enabling anything.
    if move_pid is not None:
        fs.move_pid(leaf, move_pid)

    # (3) The real root is exempt from the no-internal-process rule; any other parent
    # (including a container's namespace root) must be empty to enable controllers.
    _check_parent_empty(fs, parent, root)

    # (4) Top-down: what the parent enables is what the root gets.
    fs.enable_controllers(parent, spec.controllers)
    fs.enable_controllers(root, spec.controllers)

    # (5) Adopt: kill orphans, then remove what the spec no longer has.
    if adopted:
        _kill_orphans(fs, root, leaf, kill_wait, warnings)
        _remove_stale(fs, root, leaf, {s.path for s in spec.slices}, warnings)

    # (6) Limits, then the slices, parents first.
    _write_root_limits(fs, spec, root, leaf, warnings)
    paths = _make_slices(fs, spec, root, warnings)

    return BuiltTree(
        root=root,
        leaf=leaf,
        paths=paths,
        warnings=tuple(warnings),
        adopted=adopted,
        ownership=ownership,
        services=frozenset(s.name for s in spec.slices if s.kind == "service"),
    )


def _write_root_limits(
    fs: CgroupFS, spec: TreeSpec, root: CgroupPath, leaf: CgroupPath, warnings: list[str]
) -> None:
    """The root caps the whole tree. Protection (min/low) is hierarchical: a child's effective
    memory.min is bounded by its parent's, so the root claims the sum its direct children ask
    for; otherwise the reserve and the slices' min would protect nothing from reclaim outside
    the tree."""
    tops = [s for s in spec.slices if len(s.path) == 1]
    root_limits = Limits(
        min=spec.reserve + sum(s.limits.min for s in tops),
        low=sum(s.limits.low for s in tops),
        max=spec.memory_max,
    )
    write_limits(fs, root, root_limits, warnings)
    write_limits(fs, leaf, Limits(min=spec.reserve), warnings)
    mark_oomd(fs, leaf, "avoid", warnings)


def _make_slices(
    fs: CgroupFS, spec: TreeSpec, root: CgroupPath, warnings: list[str]
) -> dict[str, CgroupPath]:
    """mkdir every slice (parents first: the spec's order), enable controllers in the inner
    ones, write every limit. Returns each slice's cgroup by name."""
    has_children = {s.path[:-1] for s in spec.slices if len(s.path) > 1}
    paths: dict[str, CgroupPath] = {}
    for s in spec.slices:
        p = root.join(*s.path)
        fs.mkdir(p)
        _set_subtree(fs, p, s, s.path in has_children, spec.controllers)
        write_limits(fs, p, s.limits, warnings)
        mark_oomd(fs, p, s.oomd, warnings)
        paths[s.name] = p
    return paths


def _parent_of(fs: CgroupFS, root: CgroupPath) -> CgroupPath:
    """The root's parent, which must exist (oomguard creates the root, not what is above)."""
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
    return parent


def _own_root(
    fs: CgroupFS, root: CgroupPath, ledger: TreeLedger | None, warnings: list[str]
) -> str:
    """Create the root, or prove an existing one ours (see "Ownership"); return how it is
    ours. Raises `ForeignCgroup`, having touched nothing, for anyone else's cgroup."""
    ownership = "created"
    if not fs.mkdir(root):
        proof = ownership_proof(fs, root, ledger)
        if proof is not None:
            ownership = proof
        elif _is_empty(fs, root):
            ownership = "claimed-empty"
        else:
            raise _foreign(fs, root)
    if ownership in ("created", "claimed-empty"):
        mark_tree(fs, root, ledger, warnings)
    return ownership


def _clear_leaf(fs: CgroupFS, leaf: CgroupPath, move_pid: int | None) -> None:
    """An adopted tree's leaf: refused if another oomguard is in it; else it must stay a leaf:
    processes cannot be moved into a cgroup that enables controllers for children (EBUSY),
    so clear anything an older run left below it."""
    _guard_leaf(fs, leaf, move_pid)
    for kid in fs.children(leaf):
        _remove_subtree(fs, kid)
    fs.disable_controllers(leaf)


def _check_parent_empty(fs: CgroupFS, parent: CgroupPath, root: CgroupPath) -> None:
    if fs.is_real_root(parent):
        return
    others = fs.procs(parent)
    if others:
        raise CgroupError(
            f"cgroup {parent} (the parent of the oomguard tree {root}) still has processes "
            f"{' '.join(str(p) for p in sorted(others))}, so it cannot enable controllers "
            f"for the tree (cgroup v2's no-internal-process rule)",
            _NOT_EMPTY_HINT,
        )


def _kill_orphans(
    fs: CgroupFS, root: CgroupPath, leaf: CgroupPath, kill_wait: float, warnings: list[str]
) -> None:
    """Kill what an earlier run left in an adopted tree (everything but our own leaf)."""
    for top in fs.children(root):
        if top == leaf:
            continue
        pids = _kill_and_wait(fs, top, kill_wait)
        if pids:
            warnings.append(
                f"killed {len(pids)} leftover process(es) in {top} from an earlier run: "
                f"{' '.join(str(p) for p in sorted(pids))}"
            )


def _remove_stale(
    fs: CgroupFS,
    root: CgroupPath,
    leaf: CgroupPath,
    wanted: set[tuple[str, ...]],
    warnings: list[str],
) -> None:
    """Remove the cgroups of an adopted tree that the spec no longer has."""
    stale = [
        cg
        for cg in fs.walk(root)
        if not cg.is_relative_to(leaf) and cg != root and cg.relative_to(root) not in wanted
    ]
    # A stale cgroup's descendants are stale too; remove deepest first.
    for cg in sorted(stale, key=lambda c: c.depth, reverse=True):
        fs.rmdir(cg)
    if stale:
        top_stale = [cg for cg in stale if cg.parent is None or cg.parent not in stale]
        warnings.append(
            "removed cgroups no longer in the config: " + " ".join(str(c) for c in top_stale)
        )


def recreate(
    fs: CgroupFS, spec: TreeSpec, root: CgroupPath, path: CgroupPath
) -> tuple[list[CgroupPath], list[str]]:
    """mkdir `path` again, and every slice above it that went too, parents first, with their
    configured limits. Returns the cgroups made (parents first; the caller watches them again)
    and warnings for the log.

    Only what is missing: `build` would adopt the existing tree, and adopting kills every
    process in it as an orphan of an earlier run, i.e. every running service. The root is never
    made here: oomguard's own leaf in it is never empty, so it cannot be removed from outside.
    A path that is not a slice of `spec` is left alone.
    """
    by_path = {root.join(*s.path): s for s in spec.slices}
    inner = {root.join(*s.path[:-1]) for s in spec.slices if len(s.path) > 1}
    made: list[CgroupPath] = []
    warnings: list[str] = []
    for p in [*path.ancestors(), path]:
        slice_spec = by_path.get(p)
        if slice_spec is None or fs.exists(p):
            continue
        fs.mkdir(p)
        if p in inner:
            # Controllers first: a parent must enable them before the children exist, or the
            # children get no memory.* files (cgroup.subtree_control is top-down).
            fs.enable_controllers(p, spec.controllers)
        write_limits(fs, p, slice_spec.limits, warnings)
        mark_oomd(fs, p, slice_spec.oomd, warnings)
        made.append(p)
    return made, warnings


def ownership_proof(fs: CgroupFS, root: CgroupPath, ledger: TreeLedger | None) -> str | None:
    """How `root` is proven oomguard's (see "Ownership" in the module doc), or None."""
    trusted = fs.get_xattr(root, MARK_TRUSTED)
    if trusted is not None and trusted.startswith(MARK_PREFIX):
        return "xattr-trusted"
    ino, uid = fs.identity(root)
    user = fs.get_xattr(root, MARK_USER)
    if user is not None and user.startswith(MARK_PREFIX) and uid == os.geteuid():
        return "xattr-user"
    if ledger is not None and ledger.recorded(root) == ino:
        return "ledger"
    return None


def mark_tree(
    fs: CgroupFS, root: CgroupPath, ledger: TreeLedger | None, warnings: list[str]
) -> None:
    """Mark `root` as made by oomguard: the trusted xattr, else the user one; always the ledger
    too when there is one (it costs a small file and survives a filesystem without xattrs)."""
    value = MARK_PREFIX + secrets.token_hex(8).encode()
    marked = fs.set_xattr(root, MARK_TRUSTED, value) or fs.set_xattr(root, MARK_USER, value)
    if ledger is not None:
        ledger.record(root, fs.identity(root)[0])
    elif not marked:
        warnings.append(
            f"cannot mark {root} as oomguard's (no trusted.* or user.* xattr support here): "
            "a later run will refuse to adopt it unless it is empty"
        )


def _is_empty(fs: CgroupFS, p: CgroupPath) -> bool:
    return not fs.children(p) and not fs.procs(p)


def _comm(pid: int) -> str:
    return (proc.comm(pid) or "").strip() or "?"


def _foreign(fs: CgroupFS, root: CgroupPath) -> ForeignCgroup:
    """The refusal for an existing cgroup oomguard cannot prove it made."""
    members: list[tuple[int, CgroupPath]] = []
    try:
        for cg in fs.walk(root):
            try:
                members.extend((pid, cg) for pid in fs.procs(cg))
            except Vanished:
                continue
    except Vanished:
        pass
    listed = ", ".join(f"{pid} ({_comm(pid)}) in {cg}" for pid, cg in sorted(members)[:_LIST_MAX])
    if len(members) > _LIST_MAX:
        listed += f", ... ({len(members)} in all)"
    try:
        kids = len(fs.children(root))
    except Vanished:
        kids = 0
    inside = f"processes: {listed}" if members else f"no processes but {kids} child cgroup(s)"
    return ForeignCgroup(
        f"cgroup {root} already exists and oomguard did not create it (no oomguard marker); "
        f"it holds {inside}. oomguard would kill and remove everything in it, so it refuses",
        "set [oomguard] cgroup (or --cgroup) to a cgroup that does not exist yet or is empty; "
        "if it is a tree left by an oomguard version without markers, stop what runs in it "
        f"and remove it (rmdir its cgroups under {fs.dir(root)}, deepest first)",
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
    A bare root path is torn down only if it carries oomguard's marker (`ForeignCgroup` else),
    and a claimed root (see "Ownership") is emptied but never removed.
    Returns messages about the processes that had to be killed.
    """
    if isinstance(built_or_root, BuiltTree):
        root, claimed = built_or_root.root, built_or_root.ownership == "claimed-empty"
    else:
        root, claimed = built_or_root, False
        # A bare path proves nothing: tear down only a tree that carries oomguard's marker.
        try:
            if ownership_proof(fs, root, None) is None:
                raise _foreign(fs, root)
        except Vanished:
            return []
    leaf = root.child(SUPERVISOR_LEAF)
    try:
        tops = [c for c in fs.children(root) if c != leaf]
    except Vanished:
        return []
    errors: list[CgroupError] = []
    messages = _kill_all(fs, tops, kill_wait, errors)
    remaining = [*tops] if keep_leaf else [*tops, leaf]
    for top in remaining:
        try:
            _remove_subtree(fs, top)
        except CgroupError as err:
            errors.append(err)
    # A claimed root was made by someone else (empty, for oomguard): leave it as found.
    if not keep_leaf and not errors and not claimed:
        try:
            fs.rmdir(root)
        except CgroupError as err:
            errors.append(err)
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise CgroupError(f"teardown of {root} incomplete: {first.message}{more}", first.hint)
    return messages


def _kill_all(
    fs: CgroupFS, tops: list[CgroupPath], kill_wait: float, errors: list[CgroupError]
) -> list[str]:
    """Kill all slices first, then wait: the exits of all slices overlap instead of queueing.
    Returns a message per slice that held processes; failures go to `errors`."""
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
    messages: list[str] = []
    for top, pids in killed:
        fs.wait_unpopulated(top, kill_wait)
        messages.append(f"killed {len(pids)} process(es) in {top}")
    return messages
