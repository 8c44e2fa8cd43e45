"""The click application: a group whose subcommands are imported only when invoked.

This is the only module family that prints for humans or exits. Every `OomguardError` that
escapes a command becomes one `oomguard: error: ...` line (plus its hint) and the error's exit
code, never a traceback (`cli/_output.guarded`, shared with `oomguard status`, which runs
without click).
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from oomguard import __version__
from oomguard.cli._output import EX_INTERRUPTED, guarded
from oomguard.errors import ExitCode

#: name -> "module:attribute". Importing a command's module is deferred until it runs, so
#: `oomguard status` never pays for pydantic (config) or the runtime.
COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("oomguard.cli.check", "Report whether this host/container can run oomguard."),
    "validate": ("oomguard.cli.validate", "Validate a config file (or print its JSON schema)."),
    "status": ("oomguard.cli.status", "Show the slice tree and every service's state."),
    "events": ("oomguard.cli.events", "Show (or follow) the supervisor's event log."),
    "run": ("oomguard.cli.run", "Run the supervisor in the foreground from a config file."),
    "exec": ("oomguard.cli.exec_", "Wrap one command (plus sidecars) with no config file."),
}


#: Commands that parse their own arguments (`status`: click alone costs it more start-up than
#: it may take; cli/status.py). Their module has `main(argv) -> int` and an `OPTIONS` table;
#: through this group they are a pass-through, so each command still has one parser.
SELF_PARSING = frozenset({"status"})


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        if cmd_name in SELF_PARSING:
            return _pass_through(cmd_name, entry[0], entry[1])
        module = importlib.import_module(entry[0])
        command: click.Command = module.command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text comes from the table above, so `oomguard --help` imports no command module.
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in COMMANDS.items()])


def _pass_through(name: str, module_name: str, help_: str) -> click.Command:
    """A click command that hands every argument, --help included, to `module.main`."""

    def callback(argv: tuple[str, ...]) -> int:
        module = importlib.import_module(module_name)
        rc: int = module.main(list(argv))
        return rc

    return click.Command(
        name,
        callback=callback,
        params=[click.Argument(["argv"], nargs=-1, type=click.UNPROCESSED)],
        context_settings={"ignore_unknown_options": True, "help_option_names": []},
        add_help_option=False,
        help=help_,
    )


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="oomguard")
def cli() -> None:
    """oomguard keeps the primary service alive by steering memory pressure onto sidecars."""


def run(args: list[str]) -> int:
    """Run the click CLI on `args`; every expected failure becomes an exit status, not a
    traceback (`guarded` reports oomguard's own errors, as `oomguard status` does too)."""
    return guarded(lambda: _run_click(args))


def _run_click(args: list[str]) -> int:
    try:
        rv: Any = cli.main(args=args, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("oomguard: aborted", err=True)
        return EX_INTERRUPTED
    except click.ClickException as err:
        err.show()
        return int(ExitCode.USAGE) if err.exit_code == 2 else err.exit_code
    except click.exceptions.Exit as err:
        return int(err.exit_code)
    return int(rv) if isinstance(rv, int) else 0
