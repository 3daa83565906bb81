"""Fast tests of the e2e harness itself (no cluster): `make e2e-local KEEP=1` hands the suites
their own variable name, the suite only ever uses the release it was told to use, and the
installer reports memwatch available only once the new pods alone run.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .support import Memwatch

ROOT = Path(__file__).resolve().parents[2]

#: Environment names a suite may read besides its own MEMWATCH_*: standard ones with one meaning.
STANDARD_NAMES = {"KUBECONFIG", "HOME", "XDG_CACHE_HOME", "HYPOTHESIS_PROFILE", "PATH"}


def _environment_reads(path: Path) -> list[tuple[int, str]]:
    """(line, name) of each os.environ.get("X"), os.environ["X"] and os.getenv("X") in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        name: ast.expr | None = None
        if isinstance(node, ast.Call) and node.args:
            func = ast.unparse(node.func)
            if func in ("os.environ.get", "os.getenv", "environ.get", "getenv"):
                name = node.args[0]
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("os.environ", "environ"):
            name = node.slice
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            found.append((name.lineno, name.value))
    return found


def test_suites_read_no_generic_environment_names() -> None:
    """A generic name (KEEP, DEBUG, ...) is set for other reasons, e.g. exported by make: one
    suite reading it once left a release installed that the next suite then picked up."""
    offenders = [f"{path.relative_to(ROOT)}:{line}: {name}"
                 for path in sorted((ROOT / "tests").rglob("*.py"))
                 for line, name in _environment_reads(path)
                 if not name.startswith("MEMWATCH_") and name not in STANDARD_NAMES]
    assert not offenders, offenders


def _make_e2e_local(tmp_path: Path, *make_args: str, suites_fail: bool = False,
                    env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`make e2e-local` with stand-ins: a pytest that writes the environment the suites would see
    to tmp_path/env (or fails, with ``suites_fail``), and a cluster script that appends each call
    (its verb and the MEMWATCH_CLUSTER_ROOT it was given) to tmp_path/cluster-calls."""
    if shutil.which("make") is None:
        pytest.skip("no make on PATH")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    pytest_stub = venv / "bin" / "pytest"
    pytest_stub.write_text("#!/bin/sh\nexit 1\n" if suites_fail else f'#!/bin/sh\nenv > "{tmp_path}/env"\n')
    pytest_stub.chmod(0o755)
    cluster_stub = tmp_path / "cluster.sh"
    cluster_stub.write_text(f'echo "$1 $MEMWATCH_CLUSTER_ROOT" >> "{tmp_path}/cluster-calls"\n')
    (venv / ".installed").touch()
    os.utime(venv / ".installed", (2**31, 2**31))  # newer than pyproject.toml: no pip install
    base = {k: v for k, v in os.environ.items() if k not in ("KEEP", "MAKEFLAGS", "MFLAGS", "MEMWATCH_CLUSTER_ROOT")}
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "e2e-local", f"VENV={venv}", f"CLUSTER={cluster_stub}",
         *make_args],
        env={**base, **(env or {})}, capture_output=True, text=True, timeout=60,
    )


def _suites_saw(tmp_path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines() if "=" in line)


def _cluster_calls(tmp_path: Path) -> list[tuple[str, str]]:
    calls = []
    for line in (tmp_path / "cluster-calls").read_text().splitlines():
        verb, _, root = line.partition(" ")
        calls.append((verb, root))
    return calls


def test_make_e2e_local_passes_keep_to_the_tests_only_as_memwatch_test_keep(tmp_path: Path) -> None:
    result = _make_e2e_local(tmp_path, "KEEP=1")
    assert result.returncode == 0, result.stdout + result.stderr
    seen = _suites_saw(tmp_path)
    assert seen.get("MEMWATCH_TEST_KEEP") == "1"
    assert "KEEP" not in seen
    # KEEP=1 keeps the cluster: `up` and `images`, no `down`.
    assert [verb for verb, _ in _cluster_calls(tmp_path)] == ["up", "images"]


@pytest.mark.parametrize("how", ["environment", "make variable"])
def test_make_e2e_local_gives_the_script_and_the_suites_one_cluster_root(tmp_path: Path, how: str) -> None:
    """hack/local-cluster.sh reads its run dir from MEMWATCH_CLUSTER_ROOT; the suites must look for
    the kubeconfig and the audit log in the same place, whether it was set in the environment or
    as CLUSTER_ROOT=... (they looked in the default one, and found no cluster or someone else's)."""
    root = tmp_path / "elsewhere"
    if how == "environment":
        result = _make_e2e_local(tmp_path, env={"MEMWATCH_CLUSTER_ROOT": str(root)})
    else:
        result = _make_e2e_local(tmp_path, f"CLUSTER_ROOT={root}")
    assert result.returncode == 0, result.stdout + result.stderr
    seen = _suites_saw(tmp_path)
    assert seen.get("KUBECONFIG") == f"{root}/kubeconfig"
    assert seen.get("MEMWATCH_CLUSTER_ROOT") == str(root)
    assert _cluster_calls(tmp_path) == [(verb, str(root)) for verb in ("up", "images", "down")]


def test_make_e2e_local_keeps_the_cluster_logs_when_the_suites_fail(tmp_path: Path) -> None:
    """A failure on the real cluster must be diagnosable after `down` removed the cluster: the
    recipe copies its logs to a directory it names, then takes the cluster down, and fails."""
    root = tmp_path / "cluster-root"
    (root / "logs").mkdir(parents=True)
    (root / "logs" / "kubelet.log").write_text("the kubelet's last words\n")
    result = _make_e2e_local(tmp_path, f"CLUSTER_ROOT={root}", suites_fail=True, env={"TMPDIR": str(tmp_path)})
    assert result.returncode != 0, "the suites failed: so must the target"
    kept = sorted(tmp_path.glob("memwatch-cluster-logs.*"))
    assert len(kept) == 1 and f"kept in {kept[0]}" in result.stderr, result.stderr
    assert (kept[0] / "kubelet.log").read_text() == "the kubelet's last words\n"
    assert [verb for verb, _ in _cluster_calls(tmp_path)] == ["up", "images", "down"]


# --- Memwatch.find ---------------------------------------------------------------------------


def _matches(labels: dict[str, str], selector: str) -> bool:
    return all(labels.get(k) == v for k, _, v in (term.partition("=") for term in selector.split(",") if term))


class FakeCluster:
    """Serves GETs of namespaced or cluster-wide lists from a fixed set of objects."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.objects = objects

    def get(self, path: str, **query: Any) -> Any:
        parts = path.strip("/").split("/")
        namespace = parts[parts.index("namespaces") + 1] if "namespaces" in parts else None
        kind = parts[-1]
        items = [o for o in self.objects
                 if o["kind"] == kind and (namespace is None or o["metadata"]["namespace"] == namespace)
                 and _matches(o["metadata"].get("labels") or {}, query.get("labelSelector", ""))]
        return {"items": items}


def _controller(namespace: str, release: str, args: list[str] | None = None) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "memwatch", "app.kubernetes.io/component": "controller",
              "app.kubernetes.io/instance": release}
    return {"kind": "deployments",
            "metadata": {"name": f"{release}-memwatch", "namespace": namespace, "labels": labels},
            "spec": {"template": {"spec": {"containers": [{"args": args or []}]}}}}


def test_find_never_borrows_another_release() -> None:
    # The chart-install test's release, configured to stream only its own pods, kept installed.
    chart_test = _controller("memwatch-chart-test", "mwchart", ["--label-selector=memwatch-chart-test=true"])
    assert Memwatch.find(FakeCluster([chart_test]), "memwatch", "memwatch") is None  # type: ignore[arg-type]
    # Another release in the suite's own namespace is not the suite's either.
    other = _controller("memwatch", "other")
    assert Memwatch.find(FakeCluster([chart_test, other]), "memwatch", "memwatch") is None  # type: ignore[arg-type]


def test_find_returns_the_release_it_was_told() -> None:
    ours = _controller("memwatch", "memwatch", ["--interval=2s"])
    cluster = FakeCluster([_controller("memwatch-chart-test", "mwchart"), _controller("memwatch", "other"), ours])
    found = Memwatch.find(cluster, "memwatch", "memwatch")  # type: ignore[arg-type]
    assert found is not None
    assert (found.namespace, found.deployment, found.release, found.interval) == (
        "memwatch", "memwatch-memwatch", "memwatch", 2.0)
    assert found.selector() == "app.kubernetes.io/name=memwatch,app.kubernetes.io/instance=memwatch"


# --- hack/e2e-install.py: available only once the new pods alone run --------------------------


def _installer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("e2e_install", ROOT / "hack" / "e2e-install.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


READY = [{"type": "Ready", "status": "True"}]


def _agent_pod(name: str, generation: str, *, ready: bool = True, terminating: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name, "namespace": "memwatch",
        "labels": {"app.kubernetes.io/instance": "memwatch", "app.kubernetes.io/component": "agent",
                   "pod-template-generation": generation}}
    if terminating:
        metadata["deletionTimestamp"] = "2026-12-01T08:00:00Z"
    return {"kind": "pods", "metadata": metadata, "spec": {"nodeName": "node1"},
            "status": {"conditions": READY if ready else [], "containerStatuses": []}}


def _release(*agent_pods: dict[str, Any]) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/instance": "memwatch"}
    deployment = {"kind": "deployments",
                  "metadata": {"name": "memwatch", "namespace": "memwatch", "generation": 2,
                               "labels": {**labels, "app.kubernetes.io/component": "controller"}},
                  "spec": {"replicas": 1},
                  "status": {"observedGeneration": 2, "updatedReplicas": 1,
                             "conditions": [{"type": "Available", "status": "True"}]}}
    daemonset = {"kind": "daemonsets",
                 "metadata": {"name": "memwatch-agent", "namespace": "memwatch", "generation": 2,
                              "annotations": {"deprecated.daemonset.template.generation": "2"},
                              "labels": {**labels, "app.kubernetes.io/component": "agent"}},
                 "status": {"observedGeneration": 2}}
    node = {"kind": "nodes", "metadata": {"name": "node1", "namespace": None, "labels": {}},
            "spec": {}, "status": {"conditions": READY}}
    return [deployment, daemonset, node, *agent_pods]


def _not_ready(objects: list[dict[str, Any]]) -> list[str]:
    kube = object.__new__(_installer().Kubectl)
    kube.get = FakeCluster(objects).get
    problems: list[str] = kube.not_ready("memwatch", "app.kubernetes.io/instance=memwatch", True)
    return problems


def test_installer_waits_while_the_previous_agent_pod_terminates() -> None:
    # The upgrade's new agent pod is not ready yet; the old one still is, but is going away.
    old, new = _agent_pod("agent-old", "1", terminating=True), _agent_pod("agent-new", "2", ready=False)
    problems = _not_ready(_release(old, new))
    assert any("agent-old" in p and "terminating" in p for p in problems), problems
    assert any("no ready agent pod" in p for p in problems), problems
    # The old one gone, the new one ready: available.
    assert _not_ready(_release(_agent_pod("agent-new", "2"))) == []


def test_installer_counts_only_agent_pods_of_the_current_template() -> None:
    problems = _not_ready(_release(_agent_pod("agent-old", "1")))
    assert problems == ["no ready agent pod of the current revision on node node1"], problems
