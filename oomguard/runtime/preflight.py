"""Everything the launcher settles in the parent, before it forks: who the service runs as, which
executable, in which directory, with which environment and oom_score_adj.

Whatever can be checked is checked here, so those errors are plain `LaunchError`s naming the
config field, raised before any process exists. What is left to the child (see launcher.py) is a
fixed list of syscalls on the values `prepare` returns; the final say is still theirs (execve as
the service user may refuse what root could run), and the launcher reports that precisely.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from oomguard import proc
from oomguard.errors import LaunchError

if TYPE_CHECKING:
    from oomguard.runtime.launcher import LaunchSpec


@dataclass(frozen=True)
class Credentials:
    """Who the service runs as. `groups` are the supplementary groups (including `gid`)."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str | None
    name: str | None
    shell: str | None = None


def _user(user: str, where: str) -> tuple[int, pwd.struct_passwd | None]:
    """(uid, passwd entry or None) of a user name or numeric string."""
    # ASCII digits only: str.isdigit() is also true for "²" (which int() refuses) and "٣"
    # (which int() reads as 3, so the service would run as uid 3).
    if user.isascii() and user.isdigit():
        uid = int(user)
        try:
            return uid, pwd.getpwuid(uid)
        except KeyError:
            return uid, None
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise LaunchError(
            f"{where}.user: no user {user!r} on this system",
            hint="create it (useradd) or fix the name",
        ) from None
    return pw.pw_uid, pw


def _group(group: str, where: str) -> int:
    if group.isascii() and group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise LaunchError(
            f"{where}.group: no group {group!r} on this system",
            hint="create it (groupadd) or fix the name",
        ) from None


def resolve_credentials(
    user: str | None, group: str | None, *, service: str = "?"
) -> Credentials | None:
    """Look up `user`/`group` (names or numeric strings). None if both are None (keep ours).

    Supplementary groups come from the group database for a named user (os.getgrouplist), so a
    service sees the same groups as after a login. A numeric uid without a passwd entry needs an
    explicit group: guessing gid 0 would run the service with root's group.
    """
    if user is None and group is None:
        return None
    where = f"service.{service}"
    uid, pw = _user(user, where) if user is not None else (os.getuid(), None)
    if group is not None:
        gid = _group(group, where)
    elif pw is not None:
        gid = pw.pw_gid
    else:
        # user is set (both None returned above) but has no passwd entry.
        raise LaunchError(
            f"{where}.user: uid {uid} has no passwd entry, so its group is unknown",
            hint=f'set {where}.group too (e.g. group = "{uid}")',
        )
    # Without a login name to look up: the primary group only, so root's groups do not leak.
    groups = tuple(os.getgrouplist(pw.pw_name, gid)) if pw is not None else (gid,)
    return Credentials(
        uid=uid,
        gid=gid,
        groups=groups,
        home=pw.pw_dir if pw is not None else None,
        name=pw.pw_name if pw is not None else None,
        shell=pw.pw_shell if pw is not None else None,
    )


#: PATH of a service with a clean environment: systemd's default for system services. Not
#: oomguard's own PATH, so a service finds the same programs whoever started oomguard.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def login_identity(creds: Credentials | None) -> tuple[int, str | None, str | None, str | None]:
    """(uid, name, home, shell) of whom the service runs as: the passwd entry of its user, or
    oomguard's own when no user is set. Name, home and shell are None without a passwd entry."""
    if creds is not None and creds.name is not None:
        return creds.uid, creds.name, creds.home, creds.shell
    uid = creds.uid if creds is not None else os.getuid()
    try:
        pw = pwd.getpwuid(uid)
    except (KeyError, OverflowError):
        return uid, None, None, None
    return uid, pw.pw_name, pw.pw_dir, pw.pw_shell


def login_environment(creds: Credentials | None) -> dict[str, str]:
    """PATH, HOME, USER, LOGNAME and SHELL for the service's user, as login(1) sets them. A uid
    without a passwd entry gets HOME=/, its number as USER and LOGNAME, and /bin/sh."""
    uid, name, home, shell = login_identity(creds)
    who = name or str(uid)
    return {
        "PATH": DEFAULT_PATH,
        "HOME": home or "/",
        "USER": who,
        "LOGNAME": who,
        # passwd(5): an empty shell field means /bin/sh.
        "SHELL": shell or "/bin/sh",
    }


def default_cwd(creds: Credentials | None) -> str:
    """The user's home directory if it is one, else /: like login(1), never oomguard's own
    working directory, which says nothing about the service."""
    home = login_identity(creds)[2]
    return home if home and os.path.isabs(home) and os.path.isdir(home) else "/"


def _exec_problem(path: str) -> str | None:
    """Why `path` cannot be exec'd (as far as the parent can tell), or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no such file"
    except OSError as e:
        return e.strerror or str(e)
    if stat.S_ISDIR(st.st_mode):
        return "it is a directory"
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if not os.access(path, os.X_OK):
        return "it is not executable"
    return None


def resolve_executable(argv0: str, path: str | None, cwd: str | None, *, service: str = "?") -> str:
    """The absolute path execve will run for `argv0`, searched like execvp: `argv0` with a
    slash is taken as is (relative to `cwd`, the directory the child will be in), otherwise each
    entry of the *child's* `path` (its PATH; os.defpath if unset) is tried in order.

    Raises LaunchError before any fork. The final say is execve's, as the service user: a file
    that root may exec but the user may not still fails there, with a precise message.
    """
    where = f"service.{service}"
    base = cwd or os.getcwd()
    if not argv0:
        raise LaunchError(f"{where}: the command is empty", hint="set the program to run")
    if "/" in argv0:
        candidate = os.path.normpath(os.path.join(base, argv0))
        problem = _exec_problem(candidate)
        if problem is not None:
            hint = (
                "fix the path or install the program"
                if problem == "no such file"
                else f"make it an executable file (chmod +x {candidate})"
            )
            raise LaunchError(f"{where}: cannot run {candidate}: {problem}", hint=hint)
        return candidate
    search = os.defpath if path is None else path
    not_executable: str | None = None
    for entry in search.split(os.pathsep):
        # An empty PATH entry means the current directory, as in execvp.
        candidate = os.path.normpath(os.path.join(base, entry or ".", argv0))
        problem = _exec_problem(candidate)
        if problem is None:
            return candidate
        if problem != "no such file" and not_executable is None:
            not_executable = f"{candidate} ({problem})"
    if not_executable is not None:
        raise LaunchError(
            f"{where}: cannot run {argv0!r}: found {not_executable} but nothing executable "
            f"in PATH ({search})",
            hint="make the program executable, or fix PATH in the service's environment",
        )
    raise LaunchError(
        f"{where}: cannot find {argv0!r} in PATH ({search})",
        hint="install it, set PATH in the service's environment, or use an absolute path",
    )


def resolve_cwd(spec: LaunchSpec, creds: Credentials | None) -> str | None:
    """The directory the child will enter: the configured one (which must exist), else with
    `home_cwd` the user's home or /, else None (oomguard's own)."""
    if spec.cwd is None:
        return default_cwd(creds) if spec.home_cwd else None
    cwd = os.path.abspath(spec.cwd)
    if not os.path.exists(cwd):
        raise LaunchError(
            f"service.{spec.name}.cwd: {cwd} does not exist",
            hint="create the directory or fix the path",
        )
    if not os.path.isdir(cwd):
        raise LaunchError(
            f"service.{spec.name}.cwd: {cwd} is not a directory", hint="point it at a directory"
        )
    return cwd


@dataclass(frozen=True)
class IdChanges:
    """The credential syscalls the child must make; None: keep oomguard's. Only what differs is
    changed, so an unprivileged oomguard can name its own user."""

    setgroups: tuple[int, ...] | None = None
    setgid: int | None = None
    setuid: int | None = None


def id_changes(creds: Credentials | None) -> IdChanges:
    if creds is None:
        return IdChanges()
    return IdChanges(
        setgroups=creds.groups
        if sorted(set(creds.groups)) != sorted(set(os.getgroups()))
        else None,
        setgid=creds.gid if (creds.gid, creds.gid) != (os.getgid(), os.getegid()) else None,
        setuid=creds.uid if (creds.uid, creds.uid) != (os.getuid(), os.geteuid()) else None,
    )


def oom_score_adj_write(spec: LaunchSpec) -> tuple[bytes | None, str | None]:
    """(the value the child writes, or None: it keeps oomguard's; a warning, or None).

    Decided here, not in the child: the child cannot log, and a refused write is a degraded
    start, not a failed one. Lowering needs CAP_SYS_RESOURCE; raising never does."""
    if spec.oom_score_adj is None:
        return None, None
    where = f"service.{spec.name}"
    # In range by construction: the Plan's oom_score_adj is bounded by the config's field type
    # (-999..1000), and oomguard's own adj is what the kernel gave it.
    adj = spec.oom_score_adj
    current = proc.oom_score_adj() or 0
    if adj < current and not proc.can_lower_oom_score_adj():
        return None, (
            f"{where}: cannot lower oom_score_adj to {adj} without CAP_SYS_RESOURCE; "
            f"it keeps oomguard's {current}"
        )
    return (str(adj).encode() if adj != current else None), None


@dataclass(frozen=True)
class Prepared:
    """`spec` resolved in the parent: everything the child needs, already checked."""

    exe: str
    env: dict[str, str]
    #: None: oomguard's own working directory.
    cwd: str | None
    #: Where to go if `cwd` (a default, not a configured one) cannot be entered as the user.
    cwd_fallback: str | None
    ids: IdChanges
    #: The value to write to the child's oom_score_adj, or None.
    oom_score_adj: bytes | None
    #: Non-fatal problems, for `Child.warnings`.
    warnings: tuple[str, ...]


def prepare(spec: LaunchSpec) -> Prepared:
    """Resolve `spec` (raises LaunchError naming the field)."""
    # Kept although the config refuses an empty command: LaunchSpec is also built outside the
    # Plan (runtime/oneshot.py, tests), and argv[0] is read just below.
    if not spec.argv:
        raise LaunchError(
            f"service.{spec.name}: the command is empty", hint="set the program to run"
        )
    creds = resolve_credentials(spec.user, spec.group, service=spec.name)
    cwd = resolve_cwd(spec, creds)
    env = spec.child_env(login_environment(creds) if spec.login_env else None)
    exe = resolve_executable(spec.argv[0], env.get("PATH"), cwd, service=spec.name)
    adj, warning = oom_score_adj_write(spec)
    return Prepared(
        exe=exe,
        env=env,
        cwd=cwd,
        # A home directory the user may not enter (0700 of another owner, a network mount that
        # is down) falls back to / as login(1) does; a configured cwd never does.
        cwd_fallback="/" if spec.cwd is None and cwd not in (None, "/") else None,
        ids=id_changes(creds),
        oom_score_adj=adj,
        warnings=() if warning is None else (warning,),
    )
