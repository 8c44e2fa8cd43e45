"""Other OOM killers on the host, for `oomguard check`: which run, and what each means here.

`identify` and `items` are pure (unit-tested without a host); `scan` reads /proc through
`oomguard.proc` (each process's comm, then the cmdline of a match only).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from oomguard import proc
from oomguard.cgroup.verdict import CheckLevel, Item

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

#: comm -> the killer's name. Meta's oomd has been installed as `oomd` and `oomd_bin`.
KNOWN = {
    "systemd-oomd": "systemd-oomd",
    "earlyoom": "earlyoom",
    "oomd": "oomd",
    "oomd_bin": "oomd",
}
#: earlyoom's own default thresholds (-m and -s), in percent.
EARLYOOM_DEFAULT = 10


@dataclass(frozen=True)
class Killer:
    """One running process of another OOM killer."""

    name: str
    pid: int
    argv: tuple[str, ...] = ()


def identify(comm: str) -> str | None:
    """The killer a process named `comm` is, or None."""
    return KNOWN.get(comm.strip())


def scan(root: str = proc.PROC) -> list[Killer]:
    """Every running process of a known killer (processes gone meanwhile are skipped)."""
    found: list[Killer] = []
    for pid in sorted(proc.pids(root)):
        name = identify(proc.comm(pid, root) or "")
        if name is None:
            continue
        found.append(Killer(name, pid, proc.cmdline(pid, root) or ()))
    return found


def comm_of(command: Sequence[str]) -> str:
    """The comm the kernel gives a process started with `command`: the program's base name,
    cut to 15 bytes (TASK_COMM_LEN)."""
    return os.path.basename(command[0]).encode()[:15].decode("utf-8", "ignore")


def earlyoom_flags(avoid: Iterable[str], prefer: Iterable[str]) -> str:
    """earlyoom's --avoid/--prefer for these process names (regexes on comm, anchored)."""
    avoid_set = sorted(set(avoid))
    prefer_set = sorted(set(prefer) - set(avoid_set))
    out = f"--avoid '^({'|'.join(re.escape(n) for n in avoid_set)})$'"
    if prefer_set:
        out += f" --prefer '^({'|'.join(re.escape(n) for n in prefer_set)})$'"
    return out


def items(
    killers: Sequence[Killer],
    *,
    primary_comm: str | None = None,
    sidecar_comms: Sequence[str] = (),
) -> list[Item]:
    """One item per kind of killer found (or one "none" item), saying what it means for
    oomguard and what to do. `primary_comm`/`sidecar_comms` (from a config, when given) make
    earlyoom's suggested flags exact."""
    if not killers:
        none = "none running (systemd-oomd, earlyoom, oomd)"
        return [Item("other-oom-killers", CheckLevel.OK, none)]
    out: list[Item] = []
    for name in sorted({k.name for k in killers}):
        mine = [k for k in killers if k.name == name]
        pids = ", ".join(str(k.pid) for k in mine)
        if name == "systemd-oomd":
            out.append(_systemd_oomd(pids))
        elif name == "earlyoom":
            out.append(_earlyoom(mine[0], pids, primary_comm, sidecar_comms))
        else:
            out.append(_oomd(pids))
    return out


def _systemd_oomd(pids: str) -> Item:
    return Item(
        "systemd-oomd",
        CheckLevel.WARN,
        f"systemd-oomd runs (pid {pids}): it SIGKILLs a whole cgroup below a unit with "
        "ManagedOOMMemoryPressure=kill or ManagedOOMSwap=kill when its PSI or the swap use "
        "passes a limit (only leaf cgroups or ones with memory.oom.group=1 are candidates). "
        "oomguard marks the primary's cgroup and its own leaf with user.oomd_avoid, so it takes "
        "them only when no other candidate is left (systemd >= 248, root-owned cgroups)",
        "leave ManagedOOM*=kill off the unit that runs oomguard (oomguard already acts on "
        "pressure), or set ManagedOOMPreference=avoid on it",
    )


def _earlyoom(
    killer: Killer, pids: str, primary_comm: str | None, sidecar_comms: Sequence[str]
) -> Item:
    args = " ".join(killer.argv[1:]) or "(defaults)"
    if primary_comm is not None:
        flags = earlyoom_flags(["oomguard", primary_comm], sidecar_comms)
    else:
        flags = (
            "--avoid '^(oomguard|PRIMARY)$' (PRIMARY: the primary's process name, e.g. "
            "postgres; `oomguard check --config CONFIG` fills it in)"
        )
    return Item(
        "earlyoom",
        CheckLevel.WARN,
        f"earlyoom runs (pid {pids}, args: {args}): when the machine's available memory and "
        f"free swap both fall below its -m/-s percentages (default {EARLYOOM_DEFAULT} %) it "
        "kills the process with the highest oom_score anywhere, whatever cgroup it is in. "
        "oomguard's oom_score_adj (-999 for the primary) already puts the primary last, but "
        f"earlyoom at its default acts at the same {EARLYOOM_DEFAULT} % oomguard's machine "
        "budget evicts at (headroom_min)",
        f"start earlyoom with {flags} and a lower threshold (e.g. -m 5), so oomguard evicts "
        "first and earlyoom stays the last resort",
    )


def _oomd(pids: str) -> Item:
    return Item(
        "oomd",
        CheckLevel.WARN,
        f"oomd runs (pid {pids}): its rulesets kill cgroups matched by its JSON config; its "
        "kill plugins honour user.oomd_prefer and user.oomd_avoid, which oomguard sets "
        "(sidecars preferred, the primary and oomguard avoided)",
        "keep oomd's rulesets off oomguard's tree, or let them act only as the last resort "
        "(thresholds above oomguard's headroom_min)",
    )
