"""The deployment examples in examples/ are what users copy, so each is checked against oomguard
itself: every config passes `oomguard validate`, the Dockerfile's entrypoint is the documented
one, the Kubernetes manifest's memory limit holds the config's slice limits (Kubernetes >= 1.28
group-kills a container at its limit), every stop timeout of the platform covers the config's
stop chain, and the systemd unit passes `systemd-analyze verify` where that tool exists.

Fast and host-only: the entrypoint's PID 1 behaviour on a real kernel is in
tests/kernel/test_entrypoint.py.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from oomguard.config.load import load_config

if TYPE_CHECKING:
    from oomguard.config.model import Config

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
DOCKER = EXAMPLES / "docker"
SYSTEMD = EXAMPLES / "systemd"
K8S = EXAMPLES / "kubernetes"
#: Example directories this file is about; each must carry a config of its own.
DEPLOYMENTS = (DOCKER, SYSTEMD, K8S)

ENTRYPOINT = ["oomguard", "run", "/etc/oomguard.toml"]
MiB = 1 << 20
#: oomguard's own resident memory (VmRSS, Python 3.11, measured for the READMEs). Most of it is
#: charged to the container's cgroup, outside the tree: the process moves into its leaf only
#: after the interpreter started and the config was loaded, and cgroup v2 does not move charges.
OOMGUARD_RSS = 38 * MiB

#: Every example config, found by glob so that a new one is covered without editing this file.
CONFIGS = sorted(EXAMPLES.rglob("*.toml"))


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oomguard", "validate", _rel(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


def stop_chain(cfg: Config) -> float:
    """Worst-case seconds from SIGTERM to the last service down: a service is asked to stop only
    once every service depending on it is down (dependents stop in parallel), and each may use
    its whole stop_timeout before oomguard kills its slice."""
    dependents = {
        name: [other for other, svc in cfg.service.items() if name in svc.depends_on]
        for name in cfg.service
    }
    done: dict[str, float] = {}

    def finish(name: str) -> float:
        if name not in done:
            after = max((finish(d) for d in dependents[name]), default=0.0)
            done[name] = after + cfg.service[name].stop_timeout
        return done[name]

    return max(finish(name) for name in cfg.service)


# -- every config -------------------------------------------------------------------------------


def test_the_glob_finds_every_deployment_example() -> None:
    # Guards the parametrization below: a glob that found nothing would pass vacuously.
    for directory in DEPLOYMENTS:
        assert any(p.parent == directory for p in CONFIGS), f"no *.toml in {_rel(directory)}"


@pytest.mark.parametrize("path", CONFIGS, ids=_rel)
def test_example_config_passes_oomguard_validate(path: Path) -> None:
    res = _validate(path)
    output = res.stdout + res.stderr
    assert res.returncode == 0, output
    assert res.stdout.startswith(f"{_rel(path)}: ok:"), output
    assert "Traceback" not in output
    if path.parent in DEPLOYMENTS:
        # Ours are meant to be copied: no overcommitted budget, no limit above its parent's.
        assert "warning" not in output, output


def test_the_stop_chain_of_a_dependency_tree() -> None:
    from oomguard.config.model import Config

    cfg = Config.from_mapping(
        {
            "service": {
                "db": {"command": ["db"], "role": "primary", "stop_timeout": "30s"},
                "pool": {"command": ["p"], "depends_on": ["db"], "stop_timeout": "10s"},
                "agent": {"command": ["a"], "depends_on": ["pool"], "stop_timeout": "5s"},
                "backup": {"command": ["b"], "depends_on": ["db"], "stop_timeout": "12s"},
            }
        }
    )
    # agent, then pool (5 + 10 = 15 s) alongside backup (12 s), then db: 15 + 30.
    assert stop_chain(cfg) == 45.0


# -- Docker -------------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and `\\` continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _docker() -> list[tuple[str, str]]:
    return dockerfile_instructions((DOCKER / "Dockerfile").read_text())


def test_dockerfile_entrypoint_is_exactly_the_documented_one() -> None:
    entrypoints = [args for word, args in _docker() if word == "ENTRYPOINT"]
    assert len(entrypoints) == 1, entrypoints
    # The exec (JSON) form: oomguard itself is PID 1, with no shell in between to eat SIGTERM.
    assert json.loads(entrypoints[0]) == ENTRYPOINT
    assert json.dumps(ENTRYPOINT) in (DOCKER / "README.md").read_text()
    # docker stop sends STOPSIGNAL; oomguard's "stop everything" is SIGTERM.
    assert ("STOPSIGNAL", "SIGTERM") in _docker()


def test_dockerfile_installs_the_validated_config_where_the_entrypoint_reads_it() -> None:
    copies = [args.split() for word, args in _docker() if word == "COPY"]
    assert ["examples/docker/oomguard.toml", ENTRYPOINT[2]] in copies
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    for *sources, _dest in copies:
        for src in sources:
            assert (REPO / src).exists(), f"COPY {src}: no such file in the build context"
            # The context is filtered by Dockerfile.dockerignore ("*", then re-includes).
            assert f"!{src}" in ignore, f"COPY {src} is excluded by Dockerfile.dockerignore"


def test_docker_backup_sidecar_is_the_copied_script() -> None:
    cfg = load_config(DOCKER / "oomguard.toml")
    copies = {args.split()[-1]: args.split()[0] for word, args in _docker() if word == "COPY"}
    command = cfg.service["backup"].command[0]
    assert copies.get(command) == "examples/docker/backup-loop.sh"
    # COPY keeps the file mode: the script must be executable in the work tree.
    assert os.access(DOCKER / "backup-loop.sh", os.X_OK)


def test_docker_stop_timeout_covers_the_stop_chain() -> None:
    chain = stop_chain(load_config(DOCKER / "oomguard.toml"))
    for doc in (DOCKER / "README.md", DOCKER / "Dockerfile"):
        timeouts = [int(t) for t in re.findall(r"--stop-timeout (\d+)", doc.read_text())]
        assert timeouts, f"{_rel(doc)} shows no --stop-timeout"
        assert all(t > chain for t in timeouts), (_rel(doc), timeouts, chain)


# -- systemd ------------------------------------------------------------------------------------

UNIT = SYSTEMD / "oomguard.service"


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value, in order (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    """systemd time spans as used here: "90", "90s", "1min 30s"."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def test_systemd_unit_structure() -> None:
    service = unit_settings(UNIT.read_text())["Service"]
    assert service["Delegate"] == ["yes"]
    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == "oomguard" and argv[0].startswith("/"), argv
    assert argv[1:] == ["run", "/etc/oomguard/oomguard.toml"], argv
    # SIGTERM to oomguard only; it stops its services in order. SIGKILL for stragglers after.
    assert service["KillMode"] == ["mixed"]
    # A sidecar's OOM kill shows in the unit's hierarchical memory.events: not a reason to stop.
    assert service["OOMPolicy"] == ["continue"]
    cfg = load_config(SYSTEMD / "oomguard.toml")
    (timeout,) = service["TimeoutStopSec"]
    assert seconds(timeout) > stop_chain(cfg), (timeout, stop_chain(cfg))
    (runtime_dir,) = service["RuntimeDirectory"]
    assert cfg.oomguard.state_dir == Path("/run") / runtime_dir


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip(
            "systemd-analyze is not installed: examples/systemd/oomguard.service was NOT "
            "verified by systemd (its structure is still checked by test_systemd_unit_structure)"
        )
    # verify fails when ExecStart's binary does not exist, and a test must not install one into
    # /usr/local/bin: the copy under test runs a stub instead. Nothing else is changed.
    stub = tmp_path / "bin" / "oomguard"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    assert text.count("ExecStart=/usr/local/bin/oomguard ") == 1
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace("ExecStart=/usr/local/bin/oomguard ", f"ExecStart={stub} "))
    res = subprocess.run(
        [tool, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    output = res.stdout + res.stderr
    assert res.returncode == 0, output
    # verify exits 0 even for an unknown key or a bad value ("…, ignoring"): those lines name
    # the file, so none may appear. (Lines about other units of the host are not ours.)
    ours = [line for line in output.splitlines() if UNIT.name in line]
    assert ours == [], output


# -- Kubernetes ---------------------------------------------------------------------------------

POD = K8S / "oomguard-pod.yaml"
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_FACTORS = {
    None: 1,
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}


def quantity(value: str | int) -> int:
    """A Kubernetes memory quantity in bytes ("2Gi", "512Mi", "2G", "1073741824")."""
    m = _QUANTITY.match(str(value))
    assert m is not None, f"not a memory quantity this test understands: {value!r}"
    return int(float(m.group(1)) * _FACTORS[m.group(2)])


def test_quantity() -> None:
    assert quantity("2Gi") == 2048 * MiB
    assert quantity("512Mi") == 512 * MiB
    assert quantity("2G") == 2 * 10**9
    assert quantity(1073741824) == 1 << 30


@dataclass(frozen=True)
class PodFacts:
    """What the tests need from the manifest, however it was parsed."""

    config_text: str
    command: list[str]
    memory_limit: str
    memory_request: str
    cpu_limit: str
    cpu_request: str
    grace_seconds: int
    privileged: bool
    config_mount: str
    has_liveness_probe: bool


def _facts_from_yaml(docs: list[dict[str, Any]]) -> PodFacts:
    by_kind = {doc["kind"]: doc for doc in docs}
    assert set(by_kind) == {"ConfigMap", "Pod"}, list(by_kind)
    configmap, pod = by_kind["ConfigMap"], by_kind["Pod"]["spec"]
    (container,) = pod["containers"]
    volume = next(
        v
        for v in pod["volumes"]
        if v.get("configMap", {}).get("name") == configmap["metadata"]["name"]
    )
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    res = container["resources"]
    return PodFacts(
        config_text=configmap["data"]["oomguard.toml"],
        command=container["command"],
        memory_limit=str(res["limits"]["memory"]),
        memory_request=str(res["requests"]["memory"]),
        cpu_limit=str(res["limits"]["cpu"]),
        cpu_request=str(res["requests"]["cpu"]),
        grace_seconds=int(pod["terminationGracePeriodSeconds"]),
        privileged=container["securityContext"]["privileged"] is True,
        config_mount=mount["mountPath"],
        has_liveness_probe="livenessProbe" in container,
    )


def _facts_minimal(text: str) -> PodFacts:
    """Without PyYAML: just enough of this one manifest's layout, read line by line."""
    lines = text.splitlines()
    start = lines.index("  oomguard.toml: |") + 1
    block: list[str] = []
    for line in lines[start:]:
        if line and not line.startswith("    "):
            break
        block.append(line[4:])
    while block and not block[-1]:
        block.pop()

    def value(pattern: str) -> str:
        found = re.findall(pattern, text, re.MULTILINE)
        assert len(found) == 1, (pattern, found)
        return str(found[0]).strip('"')

    limits = text[text.index("        limits:") :]
    requests = text[text.index("        requests:") :]
    return PodFacts(
        config_text="\n".join(block) + "\n",
        command=json.loads(value(r"^\s+command: (\[.*\])$")),
        memory_limit=re.findall(r"memory: (\S+)", limits)[0],
        memory_request=re.findall(r"memory: (\S+)", requests)[0],
        cpu_limit=re.findall(r"cpu: (\S+)", limits)[0].strip('"'),
        cpu_request=re.findall(r"cpu: (\S+)", requests)[0].strip('"'),
        grace_seconds=int(value(r"^\s+terminationGracePeriodSeconds: (\d+)$")),
        privileged=value(r"^\s+privileged: (\S+)$") == "true",
        config_mount=value(r"^\s+mountPath: (/etc/oomguard)$"),
        has_liveness_probe="livenessProbe:" in text,
    )


def _yaml() -> Any | None:
    try:
        return importlib.import_module("yaml")
    except ImportError:
        return None


def pod_facts() -> PodFacts:
    yaml = _yaml()
    text = POD.read_text()
    if yaml is None:
        return _facts_minimal(text)
    return _facts_from_yaml(list(yaml.safe_load_all(text)))


def test_k8s_manifest_parses_as_yaml() -> None:
    yaml = _yaml()
    if yaml is None:
        pytest.skip("PyYAML is not installed: the manifest is only read line by line")
    docs = list(yaml.safe_load_all(POD.read_text()))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Pod"]
    # Both ways of reading it agree, so the fallback is tested wherever PyYAML exists.
    assert _facts_minimal(POD.read_text()) == _facts_from_yaml(docs)


def test_k8s_configmap_is_the_validated_config_file() -> None:
    facts = pod_facts()
    assert facts.config_text == (K8S / "oomguard.toml").read_text()
    assert facts.command == ["oomguard", "run", f"{facts.config_mount}/oomguard.toml"]


def test_k8s_container_limit_holds_the_tree() -> None:
    """Kubernetes >= 1.28 sets memory.oom.group=1 on the container: an OOM at the container's
    limit kills everything in it. The tree's own limit must stay below that limit by more than
    oomguard's memory charged outside the tree, so that every OOM happens inside the tree; the
    sidecars' limits plus oomguard's reserve fit inside the tree, and what they leave is the
    primary's (uncapped, protected by the derived memory.low)."""
    facts = pod_facts()
    cfg = load_config(K8S / "oomguard.toml")
    limit = quantity(facts.memory_limit)
    top = [n for n, s in cfg.service.items() if s.slice is None and not s.is_primary]
    top += [n for n, s in cfg.slice.items() if s.parent is None]
    budgets = {n: (cfg.service[n] if n in cfg.service else cfg.slice[n]).memory_max for n in top}
    unbounded = [n for n, m in budgets.items() if m is None]
    assert not unbounded, f"top-level sidecar budgets without memory_max: {unbounded}"
    sidecars = sum(m for m in budgets.values() if m is not None)
    reserve = cfg.oomguard.reserve
    tree = cfg.oomguard.memory_max
    assert tree is not None, "[oomguard] memory_max must be set under a container limit"
    assert sidecars + reserve < tree, (sidecars, reserve, tree)
    assert limit - tree >= OOMGUARD_RSS, (limit, tree)
    # The primary is protected, not capped: its memory.low is what the sidecars cannot take.
    assert cfg.primary.memory_high is None and cfg.primary.memory_max is None
    assert cfg.primary_low() == tree - reserve - sidecars
    # The README shows this arithmetic; it must be this config's.
    readme = (K8S / "README.md").read_text()
    assert f"**{cfg.primary_low() // MiB}**" in readme
    assert f"| {tree // MiB} | {limit // MiB} \N{MINUS SIGN} {(limit - tree) // MiB}" in readme


def test_k8s_pod_is_guaranteed_privileged_and_waits_for_the_stop_chain() -> None:
    facts = pod_facts()
    cfg = load_config(K8S / "oomguard.toml")
    # Guaranteed QoS: requests == limits (the kubelet gives it oom_score_adj -997).
    assert quantity(facts.memory_request) == quantity(facts.memory_limit)
    assert facts.cpu_request == facts.cpu_limit
    # The cgroupfs is read-only in every unprivileged container.
    assert facts.privileged
    assert facts.grace_seconds > stop_chain(cfg), (facts.grace_seconds, stop_chain(cfg))
    # oomguard restarts PostgreSQL itself; a liveness restart would kill the whole container.
    assert not facts.has_liveness_probe
