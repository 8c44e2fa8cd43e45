"""`oomguard run CONFIG`: the supervisor in the foreground (also the container entrypoint)."""

from __future__ import annotations

import click

from oomguard.cli._supervise import CGROUP, INIT, LOG_FORMAT, STATE_DIR, overrides, supervise


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
    outcome = supervise(config, init=init)
    for line in outcome.oom_lines:
        if line.startswith(outcome.primary + " "):
            click.echo(f"oomguard: {line}", err=True)
    if outcome.fatal_service:
        click.echo(
            f"oomguard: stopped because {outcome.fatal_service} failed for good "
            f"(exit status {outcome.status})",
            err=True,
        )
    return outcome.status
