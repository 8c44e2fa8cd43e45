"""``[hooks]``: commands run beside oomguard's actions, like oomd's prekill hooks and
earlyoom's ``-N``. They never block or delay protection.

A hook is started from the event oomguard records for the action (`Hooks.on_event`, called by
the supervisor's ``emit``), in the same loop turn and just before the action is carried out:

=================  ======================  ==============================================
event              hook                    the action, right after
=================  ======================  ==============================================
``evict``          ``before_evict``        the sidecar's stop signal
``shed``           ``before_shed``         the shed signal to the process
``controlled_restart``  ``before_restart`` the primary's stop signal
``oom_kill``       ``after_oom_kill``      (the kernel has killed; the cleanup follows)
=================  ======================  ==============================================

"Before" is an order, not a wait: the action does not wait for the hook, which runs alongside
(through `runtime/oneshot.py`: its exit watched by its pidfd from the loop, its whole
process group SIGKILLed at ``timeout``). A hook that fails, hangs or cannot start is logged, never
raised. At most one instance of each hook runs at a time: an event while the previous one still
runs is logged (``hook_skipped``) and has no hook, so a storm of events cannot pile up processes.

The hook runs as oomguard's user, in oomguard's own cgroup (its leaf), with ``oom_score_adj``
1000 (the kernel's first choice there, never oomguard), and a clean environment (PATH, HOME,
USER, LOGNAME, SHELL of that user) plus variables describing the event (`hook_env`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Protocol

from oomguard.runtime.launcher import LaunchSpec

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from oomguard.cgroup.path import CgroupPath
    from oomguard.observe.log import Logger
    from oomguard.plan import HooksSpec

#: The event kind oomguard records -> the hook it starts.
HOOK_OF = {
    "evict": "before_evict",
    "shed": "before_shed",
    "controlled_restart": "before_restart",
    "oom_kill": "after_oom_kill",
}
#: Figures with a name of their own in the environment (the rest: OOMGUARD_<NAME>).
RENAMED = {"current": "OOMGUARD_USAGE", "limit": "OOMGUARD_LIMIT", "headroom": "OOMGUARD_HEADROOM"}
#: A hook is expendable: if memory runs out where it runs (oomguard's own leaf), it goes first,
#: not oomguard (whose own value it would inherit otherwise).
HOOK_OOM_SCORE_ADJ = 1000
#: Bounds on what an event puts in a hook's environment.
ENV_MAX = 64
VALUE_MAX = 1024
_KEY = re.compile(r"[^A-Z0-9_]")


class HookResult(Protocol):
    """How a hook run ended (`runtime.oneshot.OneshotResult`)."""

    @property
    def ok(self) -> bool: ...

    def describe(self) -> str: ...

    def fields(self) -> dict[str, str | int | float | bool | None]: ...


class HookRunner(Protocol):
    """Runs a short command under a timeout (`runtime.oneshot.OneshotRunner`): its owner calls
    `tick` once `deadline` has passed (the timeouts), and `close` at the end."""

    def deadline(self) -> float | None: ...

    def tick(self, now: float) -> None: ...

    def close(self) -> None: ...

    def run(
        self,
        spec: LaunchSpec,
        procs_fd: int | None,
        *,
        timeout: float,
        on_done: Callable[[Any], None],
        cgroup: str | None = None,
    ) -> object | None: ...


def hook_env(hook: str, kind: str, cgroup: str | None, fields: Mapping[str, Any]) -> dict[str, str]:
    """The variables that describe the event: OOMGUARD_EVENT (the hook's name), OOMGUARD_KIND
    (the event's), OOMGUARD_SERVICE, OOMGUARD_CGROUP (the cgroup's path under the cgroup2
    mount), OOMGUARD_USAGE/LIMIT/HEADROOM, and every other scalar figure as OOMGUARD_<NAME>
    (e.g. OOMGUARD_REASON, OOMGUARD_BUDGET, OOMGUARD_PID). None is left out; a bool is 1 or 0."""
    env = {"OOMGUARD_EVENT": hook, "OOMGUARD_KIND": kind}
    if cgroup is not None:
        env["OOMGUARD_CGROUP"] = cgroup
    for key, value in fields.items():
        if len(env) >= ENV_MAX:
            break
        if value is None or not isinstance(value, str | int | float | bool):
            continue
        name = RENAMED.get(key) or "OOMGUARD_" + _KEY.sub("_", key.upper())
        if name in env:
            continue
        text = ("1" if value else "0") if isinstance(value, bool) else str(value)
        env[name] = text.replace("\0", "")[:VALUE_MAX]
    return env


class Hooks:
    """Starts the configured hooks from oomguard's events (see the module doc). Also an
    `Extension` of the loop, for the runner's timeouts (`deadline`/`tick`) and its `close`."""

    def __init__(self, settings: HooksSpec, runner: HookRunner, log: Logger) -> None:
        self.settings = settings
        self.commands = settings.commands
        self.runner = runner
        self.log = log
        #: Hooks running now, by name.
        self.running: set[str] = set()

    def on_event(self, kind: str, cgroup: CgroupPath | None, fields: Mapping[str, Any]) -> None:
        """Start the hook for event `kind`, if one is configured and not already running.
        Never raises: protection must not depend on a hook."""
        hook = HOOK_OF.get(kind)
        argv = self.commands.get(hook) if hook is not None else None
        if hook is None or argv is None:
            return
        service = fields.get("service")
        if hook in self.running:
            self.log.warn("hook_skipped", hook=hook, service=service, why="still running")
            return
        where = str(cgroup) if cgroup is not None else None
        spec = LaunchSpec(
            name=f"hook:{hook}",
            argv=argv,
            env=hook_env(hook, kind, where, fields),
            cwd="/",
            login_env=True,
            oom_score_adj=HOOK_OOM_SCORE_ADJ,
        )
        self.running.add(hook)
        try:
            started = self.runner.run(
                spec,
                None,
                timeout=self.settings.timeout,
                on_done=lambda result: self._done(hook, service, result),
            )
        except Exception as err:  # a hook must never take protection down
            self.running.discard(hook)
            self.log.warn("hook_failed", hook=hook, service=service, error=str(err))
            return
        if started is not None:
            self.log.info("hook", hook=hook, service=service, pid=getattr(started, "pid", None))

    def _done(self, hook: str, service: object, result: HookResult) -> None:
        self.running.discard(hook)
        fields = {k: v for k, v in result.fields().items() if v is not None}
        if result.ok:
            self.log.info("hook_done", hook=hook, service=service, **fields)
        else:
            self.log.warn(
                "hook_failed", hook=hook, service=service, why=result.describe(), **fields
            )

    # -- Extension: the runner's timeouts ---------------------------------------------------

    def setup(self, ctx: object) -> None:
        """Nothing to set up: the hooks are started from `on_event`."""

    def deadline(self) -> float | None:
        return self.runner.deadline()

    def on_counters(self, path: CgroupPath, delta: dict[str, int]) -> None:
        """Not a signal for hooks."""

    def tick(self, now: float) -> None:
        self.runner.tick(now)

    def after_turn(self) -> None:
        """Nothing per turn."""

    def close(self) -> None:
        """Kill what still runs (no results are delivered after this)."""
        self.runner.close()
        self.running.clear()
