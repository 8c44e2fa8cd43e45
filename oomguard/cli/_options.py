"""The click options `run` and `exec` share (kept apart from `_supervise.py`, which the
pydantic- and click-free daemon imports)."""

from __future__ import annotations

import click

LOG_FORMAT = click.option(
    "--log-format",
    type=click.Choice(["kv", "json"]),
    default=None,
    help="Diagnostics on stderr: key=value lines (default) or JSON lines.",
)
INIT = click.option(
    "--init",
    is_flag=True,
    default=False,
    help="Act as init: become a child subreaper and reap orphans (implied when running as PID 1).",
)
STATE_DIR = click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=None,
    envvar="OOMGUARD_STATE_DIR",
    help="Where state.json and events.jsonl go (overrides [oomguard] state_dir).",
)
CGROUP = click.option(
    "--cgroup",
    "cgroup_root",
    default=None,
    help="Cgroup path of the tree root under the cgroup2 mount (overrides [oomguard] cgroup).",
)
