"""Every config key and command-line flag that a hint, an error or the docs tell a user to set
exists.

A hint naming a key the config refuses (`set [oomguard] root = ...`, when the key is `cgroup`)
sends the user from one error to the next. So this reads:

* every ``[section] key`` and ``section.NAME.key`` in oomguard's source (hints, errors, help
  texts, comments) and in the README, docs/ and examples/, and checks the key against the
  config model's table for that section;
* every ``--flag`` in a string of oomguard's source (not docstrings): it must be an option of
  some oomguard command, or a known flag of another tool (docker, podman, systemd-run);
* every ``oomguard COMMAND ... --flag`` in the docs: the flag must be an option of COMMAND.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

import click
import pytest

from oomguard.cli.app import COMMANDS, SELF_PARSING, cli
from oomguard.config.model import (
    Config,
    HooksConfig,
    OomguardSection,
    PressureConfig,
    PressureOverride,
    ServiceConfig,
    ShedConfig,
    SliceConfig,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted((REPO / "oomguard").rglob("*.py"))
DOCS = sorted(
    [
        REPO / "README.md",
        *(REPO / "docs").glob("*.md"),
        *(REPO / "examples").rglob("*.md"),
        *(REPO / "examples").rglob("*.toml"),
        *(REPO / "examples").rglob("*.service"),
        *(REPO / "examples").rglob("*.yaml"),
        *(REPO / "examples").rglob("Dockerfile"),
    ]
)

_NAME = r"[A-Za-z0-9_<>*-]+"
#: ``[oomguard] state_dir``, ``[slice.sidecars]` `memory_max``, ``[service.X] memory_high``.
SECTION_KEY = re.compile(
    rf"\[(oomguard(?:\.pressure)?|hooks|slice\.{_NAME}(?:\.pressure)?|service\.{_NAME}(?:\.shed)?)\]"
    r"`? `?([a-z_]+)"
)
#: ``service.backup.memory_max``, ``slice.X.pressure.cooldown`` (validate's error paths).
DOTTED_KEY = re.compile(rf"\b(service|slice)\.({_NAME})\.([a-z_]+)(?:\.([a-z_]+))?")
#: Prose that follows a table name ("a [slice.X] budget"), not a key.
PROSE = frozenset({"budget", "for", "overrides", "with", "and", "or", "in", "is", "table"})
#: Flags of other tools that oomguard's hints quote (docker, podman, systemd-run).
FOREIGN_FLAGS = frozenset(
    {"--privileged", "--security-opt", "--cgroupns", "--scope", "--cap-add", "--memory"}
    | {"--avoid", "--prefer"}  # earlyoom's, in `check`'s advice (cli/killers.py)
)


def model_for(section: str) -> type[BaseModel]:
    parts = section.split(".")
    if parts == ["oomguard"]:
        return OomguardSection
    if parts == ["oomguard", "pressure"]:
        return PressureConfig
    if parts == ["hooks"]:
        return HooksConfig
    if parts[0] == "slice":
        return PressureOverride if parts[2:] == ["pressure"] else SliceConfig
    return ShedConfig if parts[2:] == ["shed"] else ServiceConfig


def key_refs(path: Path) -> list[tuple[int, str, str]]:
    """(line, section, key) for every key reference in `path`."""
    refs: list[tuple[int, str, str]] = []
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if "unknown key" in line:
            continue  # an example of the error a misspelt key gets
        for m in SECTION_KEY.finditer(line):
            if m.group(2) not in PROSE:
                refs.append((lineno, m.group(1), m.group(2)))
        for m in DOTTED_KEY.finditer(line):
            kind, name, key, sub = m.groups()
            if kind == "slice" and key == "pressure":
                if sub is not None:
                    refs.append((lineno, f"slice.{name}.pressure", sub))
            elif not (path.suffix == ".py" and key == "py"):
                refs.append((lineno, f"{kind}.{name}", key))
    return refs


def test_the_patterns_find_what_they_should() -> None:
    line = 'set [oomguard] root = "/x", or [slice.sidecars]` `memory_max, service.db.memory_hgh'
    assert SECTION_KEY.findall(line) == [("oomguard", "root"), ("slice.sidecars", "memory_max")]
    assert DOTTED_KEY.findall(line)[0][:3] == ("service", "db", "memory_hgh")
    assert "root" not in model_for("oomguard").model_fields
    assert model_for("slice.X.pressure") is PressureOverride


@pytest.mark.parametrize("path", [*SOURCES, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_every_config_key_named_exists(path: Path) -> None:
    wrong = [
        f"{path.relative_to(REPO)}:{line}: [{section}] has no key {key!r} "
        f"(keys: {', '.join(model_for(section).model_fields)})"
        for line, section, key in key_refs(path)
        if key not in model_for(section).model_fields
    ]
    assert wrong == []


def test_the_config_has_the_sections_this_test_knows() -> None:
    # A new section would need a line in model_for.
    assert set(Config.model_fields) == {"oomguard", "slice", "service", "hooks"}


def _options(command: click.Command) -> set[str]:
    return {o for p in command.params if isinstance(p, click.Option) for o in p.opts}


@pytest.fixture(scope="module")
def flags_by_command() -> dict[str, set[str]]:
    ctx = click.Context(cli)
    out: dict[str, set[str]] = {}
    for name in COMMANDS:
        if name in SELF_PARSING:  # parses its own arguments: the module's OPTIONS table
            module = importlib.import_module(COMMANDS[name][0])
            out[name] = {o.flag for o in module.OPTIONS} | {"--help"}
            continue
        command = cli.get_command(ctx, name)
        assert command is not None
        out[name] = _options(command) | {"--help"}
    return out


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every string constant that is not a docstring."""
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")


def test_every_flag_in_a_message_exists(flags_by_command: dict[str, set[str]]) -> None:
    from oomguard.cli.daemon import PLAN_FD

    # The daemon's one flag: `run`/`exec` pass it, no user types it.
    ours = set().union(*flags_by_command.values(), {PLAN_FD})
    wrong = []
    for path in SOURCES:
        for line, text in _strings(ast.parse(path.read_text())):
            for flag in FLAG.findall(text):
                if flag not in ours and flag not in FOREIGN_FLAGS:
                    wrong.append(f"{path.relative_to(REPO)}:{line}: {flag} in {text!r}")
    assert wrong == [], "an oomguard flag that does not exist, or add it to FOREIGN_FLAGS"


#: `oomguard exec --memory-max 64M -- cmd`, `oomguard status [--json] [--root PATH]`: up to the
#: end of the code span or table cell, and for exec up to its `--` (the command's own flags).
COMMAND_LINE = re.compile(r"\boomguard (" + "|".join(COMMANDS) + r")\b([^`|\n]*)")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_flag_of_a_documented_command_exists(
    path: Path, flags_by_command: dict[str, set[str]]
) -> None:
    wrong = []
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        for m in COMMAND_LINE.finditer(line):
            command, rest = m.group(1), m.group(2).split(" -- ")[0]
            for flag in FLAG.findall(rest):
                if flag not in flags_by_command[command]:
                    wrong.append(f"{path.relative_to(REPO)}:{lineno}: oomguard {command} {flag}")
    assert wrong == []
