"""A fake cgroup2 mount in a temp dir, for unit tests of CgroupFS and the tree builder.

`FakeCgroupFS` is the real `CgroupFS` with its `_sys_*` syscall seam overridden, so every line of
CgroupFS above the seam (path checks, errno mapping, retries, parsing) runs unchanged. The fake
emulates the kernel rules the tree builder depends on:

- mkdir populates interface files; memory.* / pids.* appear only if the parent enables the
  controller in cgroup.subtree_control (and appear/disappear in existing children when it does).
- cgroup.subtree_control: "+x" needs x in cgroup.controllers (else ENOENT) and no processes in a
  non-root cgroup (else EBUSY); "-x" is EBUSY while a child still enables x.
- cgroup.procs: moving a pid into a cgroup with controllers enabled for children is EBUSY; an
  unknown pid is ESRCH.
- rmdir: EBUSY while the cgroup has child cgroups or (possibly still exiting) processes.
- memory limit files take "max" or bytes, else EINVAL.
- cgroup.kill / SIGKILL: processes leave immediately, or after `linger` fake sleeps (a process
  whose exit takes a while).

Time is fake: sleep() advances `now` and is recorded, so retry loops run instantly. Every mutating
syscall is logged in `ops`, and `fail()` injects an errno into the next matching syscall(s).
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from oomguard.cgroup.fs import CgroupFS
from oomguard.cgroup.path import CgroupPath

ALL_CONTROLLERS = ("cpu", "io", "memory", "pids")
_LIMIT_FILES = {
    "memory.min",
    "memory.low",
    "memory.high",
    "memory.max",
    "memory.swap.max",
    "pids.max",
}
_MEMORY_EVENTS = "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n"
_PSI = (
    "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
)


@dataclass
class Fault:
    op: str  # "read", "write", "open", "mkdir", "rmdir", "list"
    cgroup: CgroupPath | None
    name: str | None
    err: int
    times: int


def _oserror(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


class FakeCgroupFS(CgroupFS):
    def __init__(
        self,
        mount: Path,
        *,
        controllers: tuple[str, ...] = ALL_CONTROLLERS,
        swap: bool = True,
        cgroup_kill: bool = True,
        real_root: bool = True,
        linger: int = 0,
        xattr_trusted: bool = True,
        xattr_user: bool = True,
    ) -> None:
        self.now = 0.0
        #: Extended attributes per directory path. trusted.* needs CAP_SYS_ADMIN (EPERM
        #: without it, and reads as absent); user.* on cgroup2 needs 5.7 (EOPNOTSUPP before).
        self.xattrs: dict[str, dict[str, bytes]] = {}
        self.xattr_trusted = xattr_trusted
        self.xattr_user = xattr_user
        self.sleeps: list[float] = []
        self.ops: list[tuple[str, ...]] = []
        self.signals: list[tuple[int, int]] = []
        self.faults: list[Fault] = []
        self.swap = swap
        self.cgroup_kill = cgroup_kill
        self.real_root = real_root
        #: Sleeps a killed process takes to disappear from cgroup.procs.
        self.linger = linger
        self._dying: dict[int, int] = {}
        mount.mkdir(parents=True, exist_ok=True)
        super().__init__(mount, sleep=self._fake_sleep, clock=lambda: self.now)
        root = self.mount
        (root / "cgroup.controllers").write_text(" ".join(controllers) + "\n")
        (root / "cgroup.subtree_control").write_text("\n")
        (root / "cgroup.procs").write_text("")
        (root / "memory.stat").write_text("anon 0\nfile 0\n")
        (root / "memory.pressure").write_text(_PSI)
        if not real_root:
            # A cgroup-namespace root is an ordinary cgroup: it has the NOT_ON_ROOT files.
            self._populate_core(root)

    # ------------------------------------------------------------------- test helpers

    def fail(
        self,
        op: str,
        cgroup: CgroupPath | str | None = None,
        name: str | None = None,
        err: int = errno.EIO,
        times: int = 1,
    ) -> None:
        """Make the next `times` matching syscalls fail with `err`."""
        cg = CgroupPath.parse(cgroup) if isinstance(cgroup, str) else cgroup
        self.faults.append(Fault(op, cg, name, err, times))

    def add_proc(self, cgroup: CgroupPath | str, pid: int) -> None:
        cg = CgroupPath.parse(cgroup) if isinstance(cgroup, str) else cgroup
        self._remove_pid(pid)
        self._set_procs(cg, [*self._get_procs(cg), pid])

    def all_pids(self) -> set[int]:
        pids: set[int] = set()
        for dirpath, _dirs, files in os.walk(self.mount):
            if "cgroup.procs" in files:
                pids.update(self._read_pids(Path(dirpath) / "cgroup.procs"))
        return pids

    def tree(self) -> list[str]:
        """Every cgroup under the mount as a "/a/b" string, sorted (the root excluded)."""
        return sorted(str(p) for p in self._raw_walk(CgroupPath.ROOT) if not p.is_root)

    def value(self, cgroup: CgroupPath | str, name: str) -> str:
        cg = CgroupPath.parse(cgroup) if isinstance(cgroup, str) else cgroup
        return (self.dir(cg) / name).read_text().strip()

    def writes(self, name: str | None = None) -> list[tuple[str, ...]]:
        return [op for op in self.ops if op[0] == "write" and (name is None or op[2] == name)]

    # ----------------------------------------------------------------------- internals

    def _cg(self, path: str) -> CgroupPath:
        rel = os.path.relpath(path, self.mount)
        return CgroupPath.ROOT if rel == "." else CgroupPath.parse(rel)

    def _split(self, path: str) -> tuple[CgroupPath, str]:
        return self._cg(os.path.dirname(path)), os.path.basename(path)

    def _check_fault(self, op: str, cg: CgroupPath, name: str | None, path: str) -> None:
        for f in self.faults:
            if f.op == op and f.times > 0 and f.cgroup in (None, cg) and f.name in (None, name):
                f.times -= 1
                raise _oserror(f.err, path)

    @staticmethod
    def _read_pids(path: Path) -> list[int]:
        return [int(x) for x in path.read_text().split()]

    def _get_procs(self, cg: CgroupPath) -> list[int]:
        return self._read_pids(self.dir(cg) / "cgroup.procs")

    def _set_procs(self, cg: CgroupPath, pids: list[int]) -> None:
        (self.dir(cg) / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))

    def _raw_children(self, cg: CgroupPath) -> list[CgroupPath]:
        # Internal bookkeeping bypasses the seam, so injected faults hit only the code under test.
        return [cg.child(e.name) for e in os.scandir(self.dir(cg)) if e.is_dir()]

    def _raw_walk(self, cg: CgroupPath) -> list[CgroupPath]:
        out = [cg]
        for k in self._raw_children(cg):
            out.extend(self._raw_walk(k))
        return out

    def _remove_pid(self, pid: int) -> bool:
        for cg in self._raw_walk(CgroupPath.ROOT):
            pids = self._get_procs(cg)
            if pid in pids:
                self._set_procs(cg, [p for p in pids if p != pid])
                return True
        return False

    def _die(self, pid: int) -> None:
        if self.linger > 0:
            self._dying.setdefault(pid, self.linger)
        else:
            self._remove_pid(pid)

    def _fake_sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds
        for pid in list(self._dying):
            self._dying[pid] -= 1
            if self._dying[pid] <= 0:
                del self._dying[pid]
                self._remove_pid(pid)

    def _populate_core(self, d: Path) -> None:
        (d / "cgroup.procs").write_text("")
        (d / "cgroup.subtree_control").write_text("\n")
        (d / "cgroup.events").write_text("populated 0\nfrozen 0\n")
        (d / "cgroup.type").write_text("domain\n")
        (d / "cgroup.freeze").write_text("0\n")
        if self.cgroup_kill:
            (d / "cgroup.kill").write_text("")

    def _add_controller_files(self, d: Path, controller: str) -> None:
        if controller == "memory":
            files = {
                "memory.current": "0",
                "memory.min": "0",
                "memory.low": "0",
                "memory.high": "max",
                "memory.max": "max",
                "memory.oom.group": "0",
                "memory.events": _MEMORY_EVENTS,
                "memory.events.local": _MEMORY_EVENTS,
                "memory.stat": "anon 0\nfile 0\n",
                "memory.pressure": _PSI,
            }
            if self.swap:
                files["memory.swap.max"] = "max"
        elif controller == "pids":
            files = {"pids.max": "max", "pids.current": "0"}
        else:
            files = {f"{controller}.stat": ""}
        for name, text in files.items():
            (d / name).write_text(text if text.endswith("\n") else text + "\n")

    def _remove_controller_files(self, d: Path, controller: str) -> None:
        for f in d.iterdir():
            # memory.pressure exists regardless of the controller in real kernels (PSI is
            # per cgroup), but the fake keeps it simple and ties it to memory.
            if f.is_file() and f.name.startswith(controller + "."):
                f.unlink()

    def _subtree(self, cg: CgroupPath) -> set[str]:
        return set((self.dir(cg) / "cgroup.subtree_control").read_text().split())

    def _in_subtree(self, cg: CgroupPath) -> list[int]:
        pids: list[int] = []
        for c in self._raw_walk(cg):
            pids.extend(self._get_procs(c))
        return pids

    # ---------------------------------------------------------------- the syscall seam

    def _sys_read(self, path: str) -> bytes:
        cg, name = self._split(path)
        self._check_fault("read", cg, name, path)
        if name == "cgroup.events" and os.path.exists(path):
            populated = 1 if self._in_subtree(cg) else 0
            frozen = (self.dir(cg) / "cgroup.freeze").read_text().strip()
            return f"populated {populated}\nfrozen {frozen}\n".encode()
        return super()._sys_read(path)

    def _sys_open(self, path: str, flags: int) -> int:
        cg, name = self._split(path)
        self._check_fault("open", cg, name, path)
        return super()._sys_open(path, flags)

    def _sys_write(self, path: str, data: bytes) -> int:
        cg, name = self._split(path)
        self._check_fault("write", cg, name, path)
        if not os.path.isfile(path):
            raise _oserror(errno.ENOENT, path)
        value = data.decode()
        self.ops.append(("write", str(cg), name, value))
        d = self.dir(cg)
        is_real_root = cg.is_root and self.real_root
        if name == "cgroup.subtree_control":
            current = self._subtree(cg)
            available = set((d / "cgroup.controllers").read_text().split())
            tokens = value.split()
            if not tokens or any(t[0] not in "+-" for t in tokens):
                raise _oserror(errno.EINVAL, path)
            for t in tokens:
                ctl = t[1:]
                if t[0] == "+":
                    if ctl not in available:
                        raise _oserror(errno.ENOENT, path)
                    if not is_real_root and self._get_procs(cg) and ctl not in current:
                        raise _oserror(errno.EBUSY, path)
                elif any(ctl in self._subtree(k) for k in self._raw_children(cg)):
                    raise _oserror(errno.EBUSY, path)
            for t in tokens:
                ctl = t[1:]
                if t[0] == "+" and ctl not in current:
                    current.add(ctl)
                    for k in self._raw_children(cg):
                        self._add_controller_files(self.dir(k), ctl)
                        (self.dir(k) / "cgroup.controllers").write_text(" ".join(sorted(current)))
                elif t[0] == "-" and ctl in current:
                    current.discard(ctl)
                    for k in self._raw_children(cg):
                        self._remove_controller_files(self.dir(k), ctl)
                        (self.dir(k) / "cgroup.controllers").write_text(" ".join(sorted(current)))
            (d / name).write_text(" ".join(sorted(current)) + "\n")
        elif name == "cgroup.procs":
            pid = int(value)
            if pid not in self.all_pids():
                raise _oserror(errno.ESRCH, path)
            if not is_real_root and self._subtree(cg):
                raise _oserror(errno.EBUSY, path)
            self.add_proc(cg, pid)
        elif name == "cgroup.kill":
            if value.strip() != "1":
                raise _oserror(errno.EINVAL, path)
            for pid in self._in_subtree(cg):
                self.signals.append((pid, 9))
                self._die(pid)
        elif name in _LIMIT_FILES:
            v = value.strip()
            if v != "max" and not v.isdigit():
                raise _oserror(errno.EINVAL, path)
            (d / name).write_text(v + "\n")
        elif name in ("memory.oom.group", "cgroup.freeze"):
            if value.strip() not in ("0", "1"):
                raise _oserror(errno.EINVAL, path)
            (d / name).write_text(value.strip() + "\n")
        else:
            (d / name).write_text(value)
        return len(data)

    def _sys_mkdir(self, path: str) -> None:
        cg = self._cg(path)
        self._check_fault("mkdir", cg, None, path)
        os.mkdir(path)  # FileExistsError / FileNotFoundError as the kernel would
        self.ops.append(("mkdir", str(cg)))
        parent = cg.parent
        assert parent is not None
        enabled = self._subtree(parent)
        d = Path(path)
        self._populate_core(d)
        (d / "cgroup.controllers").write_text(" ".join(sorted(enabled)) + "\n")
        for ctl in enabled:
            self._add_controller_files(d, ctl)

    def _sys_rmdir(self, path: str) -> None:
        cg = self._cg(path)
        self._check_fault("rmdir", cg, None, path)
        if not os.path.isdir(path):
            raise _oserror(errno.ENOENT, path)
        if any(e.is_dir() for e in os.scandir(path)) or self._get_procs(cg):
            raise _oserror(errno.EBUSY, path)
        self.ops.append(("rmdir", str(cg)))
        self.xattrs.pop(os.path.normpath(path), None)
        shutil.rmtree(path)

    def _xattr_allowed(self, name: str, path: str) -> None:
        if name.startswith("trusted.") and not self.xattr_trusted:
            raise _oserror(errno.EPERM, path)
        if name.startswith("user.") and not self.xattr_user:
            raise _oserror(errno.EOPNOTSUPP, path)

    def _sys_getxattr(self, path: str, name: str) -> bytes:
        self._xattr_allowed(name, path)
        if not os.path.isdir(path):
            raise _oserror(errno.ENOENT, path)
        value = self.xattrs.get(os.path.normpath(path), {}).get(name)
        if value is None:
            raise _oserror(errno.ENODATA, path)
        return value

    def _sys_setxattr(self, path: str, name: str, value: bytes) -> None:
        self._xattr_allowed(name, path)
        if not os.path.isdir(path):
            raise _oserror(errno.ENOENT, path)
        self.ops.append(("setxattr", str(self._cg(path)), name))
        self.xattrs.setdefault(os.path.normpath(path), {})[name] = value

    def _sys_listdirs(self, path: str) -> list[str]:
        self._check_fault("list", self._cg(path), None, path)
        return super()._sys_listdirs(path)

    def _sys_pidfd_open(self, pid: int) -> int | None:
        return -1 if pid in self.all_pids() else None

    def _sys_signal(self, pid: int, pidfd: int, sig: int) -> None:
        self.signals.append((pid, sig))
        self._die(pid)
