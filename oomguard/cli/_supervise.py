"""What `run` and `exec` share: from a compiled Plan to a running supervisor and an outcome.

Imported by the daemon (`cli/daemon.py`), so neither click nor pydantic is imported here, not
even lazily: the click options live in `_options.py`.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from oomguard.plan import Plan
    from oomguard.runtime.supervisor import Outcome


def supervise(plan: Plan, *, init: bool) -> Outcome:
    """Build the tree, run the services until shutdown, tear down. Raises OomguardError."""
    from oomguard.cgroup.fs import CgroupFS
    from oomguard.observe.log import Logger
    from oomguard.observe.sink import OutputSink, SinkStream
    from oomguard.runtime.supervisor import RunIO, Supervisor, default_self_cgroup

    degraded = degrade_reason(plan)
    if degraded is None:
        mount, own = default_self_cgroup()
    else:
        from pathlib import Path

        from oomguard.cgroup.path import CgroupPath

        mount, own = Path("/sys/fs/cgroup"), CgroupPath(())
    # The log never blocks the loop on a stalled stderr reader: lines that do not fit in the
    # sink's bounded buffer are dropped and counted (observe/sink.py).
    sys.stderr.flush()
    err_sink = OutputSink(2, name="stderr")
    log = Logger(
        SinkStream(err_sink),
        plan.log_format,
        # journald adds its own timestamps; don't print them twice.
        timestamps="JOURNAL_STREAM" not in os.environ,
        context={"prog": "oomguard"},
    )
    from oomguard.runtime.pressure import PressureResponse

    try:
        sup = Supervisor(
            plan,
            CgroupFS(mount),
            own,
            log,
            init=init,
            degraded=degraded,
            io=RunIO(sinks={2: err_sink}),
        )
        sup.extensions.append(PressureResponse())
        if plan.metrics_listen:
            # Imported only when asked for: prometheus_client is an optional extra.
            from oomguard.runtime.metrics import MetricsExtension

            sup.extensions.append(MetricsExtension(plan.metrics_listen))
        return sup.run()
    finally:
        err_sink.close()


def degrade_reason(plan: Plan) -> str | None:
    """Why oomguard cannot build its slice tree here, if it clearly cannot; None otherwise.

    The host verdict `oomguard check` prints (cgroup/verdict.py) decides: only unambiguous
    facts degrade (no cgroup2 mount, memory not available where the tree goes, a read-only
    cgroupfs); anything else is tried and fails with the builder's error. With
    `require_cgroups`, a reason is an error instead.
    """
    from oomguard.cgroup.discover import discover
    from oomguard.cgroup.verdict import assess
    from oomguard.errors import CgroupError

    root = plan.tree.root
    verdict = assess(discover(), None if root is None else str(root))
    if verdict.degraded is not None and plan.require_cgroups:
        report = "run `oomguard check` for what this host offers and how to fix it"
        fix = verdict.degraded_fix
        raise CgroupError(
            f"cannot build the slice tree: {verdict.degraded}",
            hint=report if fix is None else f"{fix}; {report}",
        )
    return verdict.degraded


def overrides(
    *,
    state_dir: str | None,
    cgroup_root: str | None,
    log_format: str | None,
    mode: str | None = None,
) -> dict[str, dict[str, str]]:
    """CLI options become overrides of the same model the TOML file fills (one path)."""
    section: dict[str, str] = {}
    if state_dir is not None:
        section["state_dir"] = os.path.abspath(state_dir)
    if cgroup_root is not None:
        section["cgroup"] = cgroup_root
    if log_format is not None:
        section["log_format"] = log_format
    if mode is not None:
        section["mode"] = mode
    return {"oomguard": section} if section else {}
