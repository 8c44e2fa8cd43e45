"""Small output helpers shared by CLI commands: the one error reporter, an aligned text table,
and JSON with the value types discovery and snapshots use (frozensets, enums, paths,
dataclasses).

Import-light on purpose: `oomguard status` must start fast, so even json is imported only by
`dumps` (the human table needs none of it), and nothing here imports click.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from oomguard.errors import OomguardError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

#: sysexits.h's EX_SOFTWARE: oomguard itself failed (a bug), not the user.
EX_SOFTWARE = 70
#: The shell's status for a command ended by Ctrl-C (128 + SIGINT).
EX_INTERRUPTED = 130


def report(err: OomguardError) -> None:
    """Print an error the way every command does: one line naming the thing, then the fix."""
    # sys.stderr looked up at each call: a test runner may have replaced it.
    sys.stderr.write(f"oomguard: error: {err.message}\n")
    if err.hint:
        sys.stderr.write(f"oomguard: hint: {err.hint}\n")
    sys.stderr.flush()


def guarded(command: Callable[[], int]) -> int:
    """Run one command and turn every way it can end into an exit status, never a traceback
    for a user's error: `OomguardError` is reported (`report`), Ctrl-C is 130, a reader that
    left (`oomguard events | head`) is not an error of ours, and anything else is a bug, said
    in one line with the traceback kept for the report."""
    try:
        return command()
    except OomguardError as err:
        report(err)
        return int(err.exit_code)
    except KeyboardInterrupt:
        return EX_INTERRUPTED
    except BrokenPipeError:
        return 0
    except Exception as err:
        # The supervisor has already stopped its services on the way out.
        import traceback

        sys.stderr.write(f"oomguard: internal error: {type(err).__name__}: {err}\n")
        sys.stderr.write("oomguard: this is a bug; please report it with the traceback below\n")
        traceback.print_exc()
        return EX_SOFTWARE


def jsonable(value: Any) -> Any:
    """Turn a value tree into plain JSON types. Sets become sorted lists so output is stable."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Enum):
        return jsonable(value.value)
    if isinstance(value, PurePath):
        return str(value)
    return _jsonable_container(value)


def _jsonable_container(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):  # a NamedTuple record
        return {k: jsonable(v) for k, v in value._asdict().items()}
    if isinstance(value, frozenset | set):
        return sorted(jsonable(v) for v in value)
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    fields = getattr(value, "__dataclass_fields__", None)
    if fields is not None:
        return {name: jsonable(getattr(value, name)) for name in fields}
    return str(value)


def dumps(value: Any) -> str:
    import json

    return json.dumps(jsonable(value), indent=2, sort_keys=False)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *[list(r) for r in rows]]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append((indent + "  ".join(cells)).rstrip())
    return "\n".join(lines)
