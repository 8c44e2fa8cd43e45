"""`oomguard run CONFIG`: the supervisor in the foreground (also the container entrypoint).

Validates and compiles the config here, then hands the Plan to the daemon (`cli/daemon.py`),
which replaces this process and runs without pydantic or click.
"""

from __future__ import annotations

import click

from oomguard.cli._options import CGROUP, INIT, LOG_FORMAT, STATE_DIR
from oomguard.cli._supervise import overrides
from oomguard.cli.daemon import Job, hand_off


@click.command("run")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@INIT
@LOG_FORMAT
@STATE_DIR
@CGROUP
@click.option(
    "--observe",
    is_flag=True,
    default=False,
    help="Dry run of the pressure response: log every decision, change nothing (mode=observe).",
)
def command(
    config_path: str,
    init: bool,
    log_format: str | None,
    state_dir: str | None,
    cgroup_root: str | None,
    observe: bool,
) -> int:
    """Run the services of CONFIG in their slices until SIGTERM/SIGINT.

    Exits with the primary's status (128+N if a signal killed it).
    """
    from oomguard.config.compile import compile_plan
    from oomguard.config.load import load_config

    config = load_config(
        config_path,
        overrides(
            state_dir=state_dir,
            cgroup_root=cgroup_root,
            log_format=log_format,
            mode="observe" if observe else None,
        ),
    )
    return hand_off(Job(kind="run", plan=compile_plan(config), init=init))
