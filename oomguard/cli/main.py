"""The `oomguard` entry point. Deliberately tiny: it imports click only when it must.

`oomguard status` is run from monitoring loops and shells, so it never imports click: it parses
its own arguments (`cli/status.main`, which says why). Every other command goes through the
click application in `cli/app.py`. This is the only module family that exits.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Read-only commands whose output is often piped into `head`: a closed pipe ends them the way
#: it ends `cat` (SIGPIPE), instead of click turning EPIPE into exit status 1. Never the
#: supervisor: `run`/`exec` must outlive whoever reads their stdout.
_PIPE_FRIENDLY = frozenset({"status", "events", "check", "validate"})


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = list(argv) if argv is not None else sys.argv[1:]
    # Only as the real program: a caller that passes argv (a test, an embedding) keeps its own
    # SIGPIPE disposition, which is process-wide and would outlive this call.
    if argv is None and args and args[0] in _PIPE_FRIENDLY:
        import signal

        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if args[:1] == ["status"]:
        from oomguard.cli.status import main as status_main

        sys.exit(status_main(args[1:]))
    from oomguard.cli.app import run

    sys.exit(run(args))
