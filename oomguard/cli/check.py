"""`oomguard check`: can this host/container run oomguard, fully, degraded, or not at all?

`assess()` is a pure function from a `Discovery` to items and a verdict, so every host shape is
unit-tested without the host. The command only observes (`discover()`), assesses and prints.

Exit status: 0 ready; 1 degraded (oomguard can only set oom_score_adj and watch usage, e.g.
cgroupfs read-only or no memory controller); 2 cannot run at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import click

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


class Level(Enum):
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
    level: Level
    detail: str
    fix: str | None = None
    group: Group = Group.INFO


@dataclass(frozen=True)
class Assessment:
    items: tuple[Item, ...]
    verdict: Verdict
    summary: str

    @property
    def exit_code(self) -> ExitCode:
        return self.verdict.exit_code


def _parent_dir(d: Discovery) -> str:
    if d.own_dir is None or d.own_is_root:
        return d.own_dir or "/sys/fs/cgroup"
    return d.own_dir.rsplit("/", 1)[0] or "/"


def _cgroup_items(d: Discovery) -> list[Item]:
    items: list[Item] = []
    g = Group.CGROUP
    v1_memory = next((m.path for m in d.v1 if "memory" in m.controllers), None)

    # Host mode: the one thing that must be right at boot.
    if d.mode is HostMode.UNIFIED:
        items.append(
            Item("cgroup-v2", Level.OK, f"unified cgroup v2 at {d.mount.path}", group=g)
            if d.mount
            else Item("cgroup-v2", Level.FAIL, "no cgroup2 mount", group=g)
        )
    elif d.mode is HostMode.HYBRID:
        where = f"cgroup2 at {d.mount.path}" if d.mount else "cgroup2"
        if d.memory_on_v1:
            items.append(
                Item(
                    "cgroup-v2",
                    Level.FAIL,
                    f"this host is hybrid: memory is on cgroup v1 ({v1_memory}); {where} has "
                    f"only {_names(d.root_controllers)}",
                    FIX_BOOT_V2,
                    g,
                )
            )
        else:
            items.append(
                Item(
                    "cgroup-v2",
                    Level.WARN,
                    f"hybrid host: {_names(d.v1_controllers)} on cgroup v1, memory on {where}",
                    FIX_BOOT_V2,
                    g,
                )
            )
    elif d.mode is HostMode.LEGACY:
        items.append(
            Item(
                "cgroup-v2",
                Level.FAIL,
                "this host has only cgroup v1 (legacy); oomguard needs cgroup v2 for memory",
                FIX_BOOT_V2,
                g,
            )
        )
    else:
        items.append(
            Item(
                "cgroup-v2",
                Level.FAIL,
                "no cgroup filesystem is mounted",
                "mount it: mount -t cgroup2 -o nsdelegate,memory_recursiveprot none /sys/fs/cgroup",
                g,
            )
        )
    if d.mount is None:
        return items
    if d.own_cgroup is None:
        items.append(
            Item(
                "own-cgroup",
                Level.FAIL,
                f"our cgroup {d.own_cgroup_raw or '?'} is not reachable under {d.mount.path}",
                "mount cgroup2 inside this namespace (or run with a private cgroup namespace)",
                g,
            )
        )
        return items

    # Controllers: what our cgroup's parent hands down is what we may hand to our slices.
    own = d.own_cgroup
    ctl = d.controllers or frozenset()
    for name, required in (("memory", True), ("pids", False)):
        if name in ctl:
            items.append(Item(f"{name}-controller", Level.OK, f"available in {own}", group=g))
            continue
        if name in d.v1_controllers:
            detail = f"{name} controller is bound to cgroup v1, not available in {own}"
            fix = FIX_BOOT_V2
        elif d.root_controllers is not None and name not in d.root_controllers:
            detail = f"{name} controller is not available at the cgroup2 root"
            fix = f"the kernel may be booted with cgroup_disable={name}; remove that"
        else:
            detail = f"{name} controller not enabled in the parent of {own}"
            fix = (
                f"echo +{name} > {_parent_dir(d)}/cgroup.subtree_control (as root); {FIX_DELEGATE}"
            )
        items.append(
            Item(f"{name}-controller", Level.FAIL if required else Level.WARN, detail, fix, g)
        )

    # Writability: Docker/containerd/CRI-O mount cgroupfs ro unless privileged.
    if d.mount.read_only:
        items.append(
            Item(
                "cgroupfs-writable",
                Level.FAIL,
                f"{d.mount.path} is mounted read-only",
                FIX_READ_ONLY,
                g,
            )
        )
    elif not d.own_dir_writable:
        items.append(
            Item(
                "cgroupfs-writable",
                Level.FAIL,
                f"cannot create cgroups under our cgroup {own} ({d.own_dir}): not writable by "
                f"uid {d.euid}",
                FIX_DELEGATE,
                g,
            )
        )
    else:
        items.append(Item("cgroupfs-writable", Level.OK, f"{d.own_dir} is writable", group=g))

    # No-internal-process rule: a non-root cgroup with processes cannot enable controllers for
    # its children. oomguard moves itself into a leaf, but it cannot move processes it doesn't
    # own, so other processes in our cgroup block the default tree <own>/oomguard.
    if d.own_is_root:
        items.append(Item("own-cgroup", Level.OK, f"{own} is the cgroup root", group=g))
    elif d.other_procs:
        n = len(d.other_procs)
        detail = (
            f"{n} other process{'es' if n != 1 else ''} share our cgroup {own}: the kernel's "
            f"no-internal-process rule stops it enabling memory for a child tree"
        )
        fix = (
            "run oomguard in a cgroup of its own: systemd-run --scope -p Delegate=yes oomguard "
            "..., or as the container's entrypoint (PID 1)"
        )
        if d.mount_writable:
            # As root we can still build the tree elsewhere, e.g. [oomguard] cgroup = "/oomguard".
            items.append(
                Item(
                    "own-cgroup",
                    Level.WARN,
                    detail,
                    fix + ', or set [oomguard] cgroup = "/oomguard" in the config (or '
                    "--cgroup /oomguard)",
                    g,
                )
            )
        else:
            items.append(Item("own-cgroup", Level.FAIL, detail, fix, g))
    else:
        items.append(Item("own-cgroup", Level.OK, f"{own}: no other processes in it", group=g))
    return items


def _names(s: frozenset[str] | None) -> str:
    return ", ".join(sorted(s)) if s else "no controllers"


def _feature_items(d: Discovery, cgroup_ok: bool) -> list[Item]:
    items: list[Item] = []
    # PSI: memory.pressure per slice feeds the early-pressure response; needs CONFIG_PSI, psi=1.
    if d.psi_system and d.psi_cgroup is not False:
        items.append(Item("psi", Level.OK, "pressure stall information available"))
    else:
        items.append(
            Item(
                "psi",
                Level.WARN,
                "no PSI (/proc/pressure/memory missing): pressure triggers are off; oomguard "
                "falls back to memory.high events and headroom",
                "boot with psi=1 (kernel built with CONFIG_PSI)",
            )
        )
    if cgroup_ok:
        if d.cgroup_kill is False:
            items.append(
                Item(
                    "cgroup.kill",
                    Level.WARN,
                    f"kernel {d.kernel_release} has no cgroup.kill (5.14+): a slice is killed "
                    "pid by pid, which can race with fork",
                    "use a 5.14 or newer kernel",
                )
            )
        elif d.cgroup_kill:
            items.append(Item("cgroup.kill", Level.OK, "kills a whole slice atomically"))
        if d.memory_peak is False:
            items.append(
                Item(
                    "memory.peak",
                    Level.WARN,
                    "no memory.peak (5.19+): status shows no peak usage",
                    "use a 5.19 or newer kernel",
                )
            )
        elif d.memory_peak:
            items.append(Item("memory.peak", Level.OK, "peak usage per slice available"))

    # oom_score_adj is the degraded mode's only lever; lowering needs CAP_SYS_RESOURCE.
    if not d.oom_score_adj_writable:
        items.append(
            Item(
                "oom_score_adj",
                Level.FAIL,
                "/proc/self/oom_score_adj is not writable",
                "mount /proc read-write (the container runtime may mask it)",
                Group.OOM_SCORE,
            )
        )
    elif not d.cap_sys_resource:
        items.append(
            Item(
                "oom_score_adj",
                Level.WARN,
                "no CAP_SYS_RESOURCE: sidecars' oom_score_adj can be raised, but the primary "
                "cannot be protected with a negative value",
                "run as root with CAP_SYS_RESOURCE (docker/podman --cap-add=SYS_RESOURCE)",
                Group.OOM_SCORE,
            )
        )
    else:
        items.append(
            Item(
                "oom_score_adj",
                Level.OK,
                "can be raised and lowered (CAP_SYS_RESOURCE)",
                group=Group.OOM_SCORE,
            )
        )

    if d.swap_bytes == 0:
        items.append(
            Item(
                "swap",
                Level.OK,
                "no swap: PSI memory stalls show late, so oomguard also watches memory.high "
                "events and headroom",
            )
        )
    elif d.memory_swap_max is False:
        items.append(
            Item(
                "swap",
                Level.WARN,
                f"{d.swap_bytes >> 20} MiB swap but no memory.swap.max: slices can swap without "
                "limit",
                "boot with swapaccount=1 (kernel with CONFIG_MEMCG_SWAP)",
            )
        )
    else:
        items.append(Item("swap", Level.OK, f"{d.swap_bytes >> 20} MiB swap, limited per slice"))

    if d.own_oom_group:
        items.append(
            Item(
                "own-oom-group",
                Level.WARN,
                f"our cgroup {d.own_cgroup} has memory.oom.group=1 (Kubernetes >= 1.28 sets it): "
                "an OOM at that level kills oomguard along with every service",
                "keep the sum of slice limits below its memory.max minus oomguard's reserve, "
                "so OOMs happen inside a slice",
            )
        )
    if d.own_memory_max is not None:
        from oomguard.units import format_size

        items.append(
            Item(
                "own-limit",
                Level.OK,
                f"our cgroup's memory.max is {format_size(d.own_memory_max)}: the tree's "
                "limits must fit below it",
            )
        )
    ctx = "; ".join(d.container.reasons) if d.container.in_container else "not in a container"
    items.append(Item("container", Level.OK, ctx))
    if d.is_pid1:
        items.append(Item("pid1", Level.OK, "PID 1: oomguard reaps orphans and forwards signals"))
    if d.mount is not None:
        opts = [
            o
            for o, on in (
                ("nsdelegate", d.mount.nsdelegate),
                ("memory_recursiveprot", d.mount.memory_recursiveprot),
            )
            if on
        ]
        detail = f"{d.mount.path}: {', '.join(opts) or 'no nsdelegate/memory_recursiveprot'}"
        if not d.mount.memory_recursiveprot:
            detail += " (memory.min/low protect only where set on every ancestor)"
        items.append(Item("mount-options", Level.OK, detail))
    return items


def assess(d: Discovery) -> Assessment:
    """Judge a discovery. READY: no item fails. CANNOT_RUN: cgroup limits are impossible and
    oom_score_adj cannot be written either. Anything else: DEGRADED."""
    items = [Item("kernel", Level.OK, d.kernel_release), *_cgroup_items(d)]
    cgroup_ok = not any(i.level is Level.FAIL for i in items)
    items += _feature_items(d, cgroup_ok)
    adj_ok = d.oom_score_adj_writable
    if cgroup_ok and adj_ok:
        verdict = Verdict.READY
        summary = "ready: oomguard can run services in memory-limited cgroup v2 slices"
    elif not cgroup_ok and not adj_ok:
        verdict = Verdict.CANNOT_RUN
        summary = "cannot run: no cgroup v2 memory control and oom_score_adj is not writable"
    elif not cgroup_ok:
        verdict = Verdict.DEGRADED
        summary = (
            "degraded: no cgroup v2 memory limits here; oomguard can only set oom_score_adj and "
            "watch usage (fix the failed items for full mode)"
        )
    else:
        verdict = Verdict.DEGRADED
        summary = "degraded: cgroup limits work, but oom_score_adj cannot be set"
    return Assessment(items=tuple(items), verdict=verdict, summary=summary)


def render(a: Assessment, d: Discovery) -> str:
    from oomguard.cli._output import render_table

    rows: list[list[str]] = []
    shown: set[str] = set()
    for i in a.items:
        rows.append([i.level.value.upper() if i.level is not Level.OK else "ok", i.key, i.detail])
        if i.fix and i.level is not Level.OK:
            # One root cause (e.g. a hybrid boot) fails several items; say its fix once.
            rows.append(["", "", "fix: as above" if i.fix in shown else f"fix: {i.fix}"])
            shown.add(i.fix)
    head = f"oomguard check: kernel {d.kernel_release}, {d.mode.value} cgroups"
    table = render_table(["STATUS", "CHECK", "DETAIL"], rows)
    return f"{head}\n{table}\nverdict: {a.summary} (exit {int(a.exit_code)})"


def to_dict(a: Assessment, d: Discovery) -> dict[str, object]:
    from oomguard.cli._output import jsonable

    facts = jsonable(d)
    # The full pid list can be long and is not a readiness fact; its size is.
    procs = d.other_procs
    facts["other_procs"] = None if procs is None else len(procs)
    return {
        "verdict": a.verdict.value,
        "exit_code": int(a.exit_code),
        "summary": a.summary,
        "items": [jsonable(i) for i in a.items],
        "facts": facts,
    }


@click.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the report as a JSON object.")
def command(as_json: bool) -> int:
    """Report whether this host/container can run oomguard, and how to fix what is missing.

    Exit 0: ready. 1: degraded (oom_score_adj only + usage watching). 2: cannot run.
    """
    from oomguard.cgroup.discover import discover

    d = discover()
    a = assess(d)
    if as_json:
        from oomguard.cli._output import dumps

        click.echo(dumps(to_dict(a, d)))
    else:
        click.echo(render(a, d))
    return int(a.exit_code)
