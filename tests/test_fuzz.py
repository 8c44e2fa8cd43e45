"""Property-based fuzz of everything a user types: config files and `exec` command lines.

Every input ends in exit status 0 or 2 and no traceback: a user error is a message naming the
field or option, never an internal error (exit 70). Nothing here spawns a command or touches a
cgroup: `exec`'s discovery and supervisor are replaced by fakes, and the launcher and the real
supervisor entry point raise if anything reaches them.

The unit suite runs a few hundred examples per property. `make fuzz` runs 10,000 each
(OOMGUARD_FUZZ_EXAMPLES) and prints how many inputs were tried.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import string
import tempfile
import tomllib
from typing import TYPE_CHECKING, Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oomguard.cli.app import run
from oomguard.config.model import (
    OomguardSection,
    PressureConfig,
    ServiceConfig,
    SliceConfig,
)
from oomguard.plan import from_json, to_json

if TYPE_CHECKING:
    from collections.abc import Iterator

    from oomguard.cli.daemon import Job
    from oomguard.plan import Plan

#: Examples per property: a few hundred in the unit suite, 10,000 for `make fuzz`.
EXAMPLES = int(os.environ.get("OOMGUARD_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: How many inputs each property tried (printed at the end; `make fuzz` checks it).
TRIED: dict[str, int] = {
    "config": 0,
    "malformed": 0,
    "exec": 0,
    "valid": 0,
    "exec_ran": 0,
    "bad": 0,
}


# --- values a user might write, sensible and not ------------------------------------------

UNITS = ["", "K", "M", "G", "T", "P", "Ki", "Mi", "B", "ms", "s", "m", "h", "d", "us", "%"]
# Other scripts' digits, look-alikes, controls: what str.isdigit(), \d, int() and float()
# disagree about.
ODD = "²³٣١२߁\u212a\uff11\u00a0\t\n\r\x00\x7f\x85\u2028:=[]{}\"'\\/ -_.#"
# TOML cannot hold lone surrogates; everything else is fair game.
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


def _numberish(odd: str = ODD) -> st.SearchStrategy[str]:
    digits = st.text(alphabet=string.digits + odd, min_size=1, max_size=12)
    return st.builds(lambda d, u: d + u, digits, st.sampled_from(UNITS))


SCALAR = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**63 - 1, 2**63, 2**64, -(2**63), 10**30, 4294967295]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    TEXT,
    _numberish(),
    st.sampled_from(
        [
            "max",
            "infinity",
            "512M",
            "1000h",
            "7d",
            "primary",
            "sidecar",
            "SIGINT",
            "some 150ms 2s",
            "full 1s 10s",
            "/oomguard",
            "/a\nb",
            "nobody",
            "²",
            "٣",
            ":9187",
            "always",
            "never",
        ]
    ),
)
VALUE: st.SearchStrategy[Any] = st.recursive(
    SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=4,
)


def _table(fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A table with some of the model's real keys (and a stray one), each a wild value."""
    keys = st.one_of(st.sampled_from(fields), st.sampled_from(fields), TEXT)
    return st.dictionaries(keys, VALUE, max_size=5)


NAMES = st.one_of(st.sampled_from(["db", "backup", "sidecars", "supervisor", "a"]), TEXT)


VALID = """\
[oomguard]
memory_max = "1G"

[slice.sidecars]
memory_max = "256M"

[service.db]
role = "primary"
command = ["postgres", "-D", "/data"]
memory_high = "600M"
stop_signal = "SIGINT"

[service.backup]
command = "python3 backup.py"
slice = "sidecars"
criticality = 10
depends_on = ["db"]
"""


SANE = st.one_of(
    st.integers(0, 2**40),
    st.builds(lambda n, u: f"{n}{u}", st.integers(0, 5000), st.sampled_from(UNITS)),
    st.sampled_from(["max", "0.1", "10%", "some 100ms 1s", "SIGTERM", "db", ["db"], True]),
)
#: (table path, its keys) of the valid file below, for edits that keep the rest valid.
TABLES = [
    (("oomguard",), list(OomguardSection.model_fields)),
    (("oomguard", "pressure"), list(PressureConfig.model_fields)),
    (("slice", "sidecars"), list(SliceConfig.model_fields)),
    (("service", "db"), list(ServiceConfig.model_fields)),
    (("service", "backup"), list(ServiceConfig.model_fields)),
]


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    """Either the valid file with a few keys set to sane or wild values (so the cross-field
    checks, the tree and the summary run too), or the real tables and keys with wild values."""
    if draw(st.booleans()):
        data = tomllib.loads(VALID)
        for _ in range(draw(st.integers(0, 3))):
            path, fields = draw(st.sampled_from(TABLES))
            table = data
            for part in path:
                if not isinstance(table.get(part), dict):
                    table[part] = {}  # an earlier edit put a scalar here
                table = table[part]
            table[draw(st.sampled_from(fields))] = draw(st.one_of(SANE, VALUE))
        return data
    services = draw(st.dictionaries(NAMES, _table(list(ServiceConfig.model_fields)), max_size=3))
    if services and draw(st.booleans()):
        first = next(iter(services))
        services[first].setdefault("role", "primary")
        services[first].setdefault("command", ["/bin/true"])
    top = draw(_table(list(OomguardSection.model_fields)))
    if draw(st.booleans()):
        top["pressure"] = draw(_table(list(PressureConfig.model_fields)))
    data: dict[str, Any] = {"oomguard": top, "service": services}
    if draw(st.booleans()):
        data["slice"] = draw(
            st.dictionaries(NAMES, _table([*SliceConfig.model_fields, "pressure"]), max_size=3)
        )
    if draw(st.booleans()):
        data[draw(TEXT)] = draw(VALUE)
    return data


# --- TOML text ----------------------------------------------------------------------------


def _key(key: str) -> str:
    return json.dumps(key, ensure_ascii=False)


def toml_value(value: Any) -> str:
    """Inline TOML for any value above (TOML basic strings take JSON's escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_text(data: dict[str, Any]) -> str:
    return "".join(f"{_key(k)} = {toml_value(v)}\n" for k, v in data.items())


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid file with random edits: malformed TOML, cut values, stray bytes."""
    text = VALID
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.text(st.characters(blacklist_categories=("Cs",)), max_size=8))
        if action == "insert":
            text = text[:pos] + piece + text[pos:]
        elif action == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 20)) :]
        else:
            text = text[:pos] + piece + text[pos + len(piece) :]
    return text


# --- running the CLI in-process -----------------------------------------------------------


def _run(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run(argv)
    return rc, err.getvalue()


def _assert_clean(rc: int, err: str, what: object) -> None:
    if "Traceback" in err or "internal error" in err or rc not in (0, 2):
        TRIED["bad"] += 1
    assert "Traceback" not in err and "internal error" not in err, f"{what!r}\n{err}"
    assert rc in (0, 2), f"exit {rc} for {what!r}\n{err}"


@pytest.fixture(scope="module")
def workdir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="oomguard-fuzz-") as d:
        yield d


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    print(
        f"\nfuzz: {TRIED['config']} generated configs, {TRIED['malformed']} malformed config "
        f"files ({TRIED['valid']} of all files valid), {TRIED['exec']} exec command lines "
        f"({TRIED['exec_ran']} reached the supervisor stand-in); {TRIED['bad']} with a traceback "
        "or an exit status other than 0 or 2"
    )


def _validate_text(workdir: str, raw: bytes) -> None:
    path = os.path.join(workdir, "c.toml")
    with open(path, "wb") as fh:
        fh.write(raw)
    rc, err = _run(["validate", path])
    _assert_clean(rc, err, raw[:2000])
    TRIED["valid"] += rc == 0


@FUZZ
@given(data=configs())
def test_generated_configs_exit_0_or_2(workdir: str, data: dict[str, Any]) -> None:
    TRIED["config"] += 1
    _validate_text(workdir, toml_text(data).encode("utf-8", "surrogatepass"))


@FUZZ
@given(text=st.one_of(mutated(), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_malformed_config_files_exit_2(workdir: str, text: str) -> None:
    TRIED["malformed"] += 1
    _validate_text(workdir, text.encode("utf-8", "surrogatepass"))


# --- exec command lines -------------------------------------------------------------------

OPTIONS = [
    "--name",
    "--memory-max",
    "--memory-high",
    "--oom-score-adj",
    "--tree-max",
    "--sidecar",
    "--sidecar-memory-max",
    "--sidecars-max",
    "--log-format",
    "--state-dir",
    "--cgroup",
]
FLAGS = ["--allow-degraded", "--init", "--help"]
# argv comes from a C string array (execve cannot pass a NUL); Python maps undecodable bytes to
# lone surrogates, which are fair game.
ARG = st.one_of(
    st.text(st.characters(blacklist_characters="\x00"), max_size=20),
    _numberish(ODD.replace("\x00", "")),
    st.sampled_from(["64M", "max", "a=x", "a=sleep 1", 'a="x', "a=", "=x", "db=x", "-1", "kv"]),
)


@st.composite
def exec_argvs(draw: st.DrawFn) -> list[str]:
    argv: list[str] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["option", "option", "flag", "stray"]))
        if kind == "option":
            argv += [draw(st.sampled_from(OPTIONS)), draw(ARG)]
        elif kind == "flag":
            argv.append(draw(st.sampled_from(FLAGS)))
        else:
            argv.append(draw(ARG))
    if draw(st.booleans()):
        argv.append("--")
    argv += draw(st.lists(ARG, max_size=3))
    return argv


class _Fake:
    def __init__(self, reason: str | None) -> None:
        self.reason = reason
        self.ran = 0

    def degrade_reason(self, plan: Plan) -> str | None:
        return self.reason

    def hand_off(self, job: Job) -> int:
        # What the daemon would be given: a compiled plan that survives its JSON form.
        assert from_json(to_json(job.plan)) == job.plan
        self.ran += 1
        return 0


def _never(*args: object, **kw: object) -> Any:
    raise AssertionError("the fuzz reached the launcher or the real supervisor")


@FUZZ
@given(argv=exec_argvs(), reason=st.sampled_from([None, "no cgroup v2 mount"]))
def test_exec_command_lines_exit_0_or_2(argv: list[str], reason: str | None) -> None:
    TRIED["exec"] += 1
    fake = _Fake(reason)
    with (
        mock.patch("oomguard.cli.exec_.degrade_reason", fake.degrade_reason),
        mock.patch("oomguard.cli.exec_.hand_off", fake.hand_off),
        mock.patch("oomguard.cli.daemon.hand_off", _never),
        mock.patch("oomguard.cli._supervise.supervise", _never),
        mock.patch("oomguard.runtime.launcher.spawn", _never),
    ):
        rc, err = _run(["exec", *argv])
    _assert_clean(rc, err, argv)
    TRIED["exec_ran"] += fake.ran


def test_fuzz_ran_what_was_asked() -> None:
    # Runs after the properties (file order): in `make fuzz` this proves the 10,000 figure.
    if EXAMPLES >= 10_000:
        assert TRIED["config"] >= EXAMPLES, TRIED
        assert TRIED["exec"] >= EXAMPLES, TRIED
    assert TRIED["bad"] == 0, TRIED
