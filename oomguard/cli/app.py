"""The click application: a group whose subcommands are imported only when invoked.

This is the only module family that prints for humans or exits. Every `OomguardError` that
escapes a command becomes one `oomguard: error: ...` line (plus its hint) and the error's exit
code, never a traceback.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from oomguard import __version__
from oomguard.errors import ExitCode, OomguardError

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


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module = importlib.import_module(entry[0])
        command: click.Command = module.command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text comes from the table above, so `oomguard --help` imports no command module.
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="oomguard")
def cli() -> None:
    """oomguard keeps the primary service alive by steering memory pressure onto sidecars."""


def report(err: OomguardError) -> None:
    """Print an error the way every command does: one line naming the thing, then the fix."""
    click.echo(f"oomguard: error: {err.message}", err=True)
    if err.hint:
        click.echo(f"oomguard: hint: {err.hint}", err=True)


def run(args: list[str]) -> int:
    """Run the click CLI on `args`; every expected failure becomes an exit status, not a
    traceback."""
    try:
        rv: Any = cli.main(args=args, standalone_mode=False)
    except OomguardError as err:
        report(err)
        return int(err.exit_code)
    except click.exceptions.Abort:
        click.echo("oomguard: aborted", err=True)
        return 130
    except click.ClickException as err:
        err.show()
        return int(ExitCode.USAGE) if err.exit_code == 2 else err.exit_code
    except click.exceptions.Exit as err:
        return int(err.exit_code)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `oomguard events | head`: the reader left; that is not an error of ours.
        return 0
    except Exception as err:
        # A bug, not a user error: say so in one line, keep the traceback for the report (the
        # supervisor has already stopped its services on the way out).
        import traceback

        click.echo(f"oomguard: internal error: {type(err).__name__}: {err}", err=True)
        click.echo("oomguard: this is a bug; please report it with the traceback below", err=True)
        traceback.print_exc()
        return 70  # EX_SOFTWARE
    return int(rv) if isinstance(rv, int) else 0
