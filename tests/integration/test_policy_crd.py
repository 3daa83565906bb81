"""The policy CRDs (charts/memwatch/crds/) on a real kube-apiserver (the local 1.20 cluster, or kind).

``kubectl apply -f charts/memwatch/crds/`` (idempotent: they may be installed already, and stay
installed afterwards), wait until both are Established and their schema is the one in the files,
then show that the API server itself, not kubectl, enforces it: bad enums, patterns, ranges and
types are refused with 422 naming the field; an unknown field is pruned; a valid policy of each
kind is stored with its default priority; `kubectl get` prints the printer columns, status included.
Requests go through the tests' own client (raw JSON, no client-side validation) unless the test is
about kubectl. Each test's MemwatchPolicies live in its own namespace (deleted after it) and are
deleted explicitly; the ClusterMemwatchPolicies carry the session id and are deleted after it.
tests/chart/test_crds.py checks the same schema offline, on the same cases.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from memwatch.kube import ApiError

from .clusterkit import SESSION, Admin, wait_for
from .conftest import Cluster

pytestmark = [pytest.mark.cluster]

REPO_DIR = Path(__file__).resolve().parents[2]
CRD_DIR = REPO_DIR / "charts" / "memwatch" / "crds"
CRDS = ("memwatchpolicies.memwatch.io", "clustermemwatchpolicies.memwatch.io")
API = "/apis/memwatch.io/v1alpha1"
CRD_API = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
COLUMNS = ["NAME", "LIMIT", "ACTION", "MATCHED", "READY", "AGE"]

#: Every spec field at once (the cluster kind adds namespaceSelector): stored as sent, nothing pruned.
FULL_SPEC: dict[str, Any] = {
    "podSelector": {"matchLabels": {"app": "solver"},
                    "matchExpressions": [{"key": "tier", "operator": "In", "values": ["batch"]}]},
    "priority": 10, "limit": "90%", "limitOf": "requests", "containers": {"solver": "1536Mi", "sidecar": "12.5%"},
    "action": "dry-run", "for": "1m30s", "gracePeriod": 30, "escalate": True, "predict": False,
    "nodePressure": "never", "restartBudget": "3/1h", "minPodAge": "500ms",
}

#: (field, bad value): what the API server must refuse, each with a 422 naming spec.<field>.
REFUSED = [
    ("action", "explode"),  # enum
    ("limit", "lots"),  # pattern
    ("for", "soon"),  # pattern
    ("restartBudget", "3 per hour"),  # pattern
    ("priority", 5000),  # maximum
    ("gracePeriod", "ten"),  # type
]


def kubectl_binary() -> str:
    """$MEMWATCH_TEST_KUBECTL, else the local cluster's own kubectl (its build cache, as hack/demo.sh
    finds it), else kubectl on $PATH."""
    explicit = os.environ.get("MEMWATCH_TEST_KUBECTL")
    if explicit:
        return explicit
    cache = os.environ.get("MEMWATCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "memwatch")
    built = sorted(glob.glob(os.path.join(cache, "kubernetes-*", "bin", "kubectl")))
    if built:
        return built[-1]
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("no kubectl: set MEMWATCH_TEST_KUBECTL or put kubectl on PATH")
    return found


def kubectl(cluster: Cluster, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """kubectl ARGV against the test cluster, with its kubeconfig and nothing else of the environment's,
    and a discovery cache of its own (a cache from before the CRDs existed would not know their short
    names and category; and the user's ~/.kube/cache is left alone)."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    with tempfile.TemporaryDirectory(prefix="memwatch-kubectl-cache-") as cache:
        return subprocess.run([kubectl_binary(), "--kubeconfig", cluster.kubeconfig, "--cache-dir", cache, *argv],
                              input=stdin, capture_output=True, text=True, timeout=60, env=env, cwd=REPO_DIR)


def policy(kind: str, name: str, spec: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "memwatch.io/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec}


def collection(namespace: str | None) -> str:
    """The REST path of MemwatchPolicies in namespace, or of ClusterMemwatchPolicies (None)."""
    return f"{API}/namespaces/{namespace}/memwatchpolicies" if namespace else f"{API}/clustermemwatchpolicies"


def create(admin: Admin, obj: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
    created: dict[str, Any] = admin.request("POST", collection(obj["metadata"].get("namespace")), obj,
                                            query={"dryRun": "All"} if dry_run else None)
    return created


def delete(admin: Admin, namespace: str | None, name: str) -> None:
    with contextlib.suppress(ApiError):  # gone already
        admin.request("DELETE", f"{collection(namespace)}/{name}")


def established(admin: Admin, name: str) -> bool:
    crd = admin.get(f"{CRD_API}/{name}") or {}
    conditions = {c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or ()}
    return conditions.get("Established") == "True" and conditions.get("NamesAccepted") == "True"


def schema_in_force(admin: Admin, namespace: str) -> bool:
    """The served schema is the files' (an older one, left by an earlier version, is replaced by apply but
    takes a moment): a server-side dry run of FULL_SPEC keeps every field, and priority 5000 is refused."""
    for kind, ns, spec in (("MemwatchPolicy", namespace, FULL_SPEC),
                           ("ClusterMemwatchPolicy", None, {**FULL_SPEC, "namespaceSelector": {}})):
        stored = create(admin, policy(kind, f"probe-{SESSION}", spec, ns), dry_run=True)
        if stored["spec"] != spec:
            return False
        try:
            create(admin, policy(kind, f"probe-{SESSION}", {"priority": 5000}, ns), dry_run=True)
            return False
        except ApiError as error:
            if error.status != 422:
                raise
    return True


@pytest.fixture(scope="module")
def crds(cluster: Cluster, namespaces: Any) -> Iterator[None]:
    """The chart's CRDs applied as a user applies them, Established, their schema in force. Left installed."""
    proc = kubectl(cluster, "apply", "-f", str(CRD_DIR))
    assert proc.returncode == 0, proc.stderr
    for name in CRDS:
        assert name in proc.stdout, proc.stdout  # "... created", "configured" or "unchanged"
        wait_for(f"CRD {name} to be Established", functools.partial(established, cluster.admin, name), 60)
    with namespaces.scoped("crd-probe") as probe_namespace:
        wait_for("the API server to serve the CRDs' schema", lambda: schema_in_force(cluster.admin, probe_namespace),
                 60, interval=1)
    yield


@pytest.fixture
def cluster_policies(cluster: Cluster) -> Iterator[list[str]]:
    """Names of ClusterMemwatchPolicies a test creates: deleted after it."""
    names: list[str] = []
    yield names
    for name in names:
        delete(cluster.admin, None, name)


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("field", "value"), REFUSED, ids=[f for f, _ in REFUSED])
def test_api_server_refuses_invalid_policies(cluster: Cluster, crds: None, namespace: str,
                                             cluster_policies: list[str], field: str, value: Any) -> None:
    admin = cluster.admin
    for kind, ns in (("MemwatchPolicy", namespace), ("ClusterMemwatchPolicy", None)):
        name = f"bad-{field.lower()}-{SESSION}"
        if ns is None:
            cluster_policies.append(name)  # deleted afterwards should the API server wrongly accept it
        with pytest.raises(ApiError) as refused:
            create(admin, policy(kind, name, {"limit": "1Gi", field: value}, ns))
        assert refused.value.status == 422, refused.value
        assert f"spec.{field}" in str(refused.value), refused.value
        assert admin.get(f"{collection(ns)}/{name}") is None


@pytest.mark.timeout(120)
def test_refusal_is_the_api_servers_not_kubectls(cluster: Cluster, crds: None, namespace: str) -> None:
    """kubectl with its own schema check off: the API server still refuses, with the field and the values."""
    bad = f"""apiVersion: memwatch.io/v1alpha1
kind: MemwatchPolicy
metadata: {{name: explode, namespace: {namespace}}}
spec: {{limit: 1Gi, action: explode}}
"""
    proc = kubectl(cluster, "create", "--validate=false", "-f", "-", stdin=bad)
    assert proc.returncode != 0, proc.stdout
    assert "spec.action" in proc.stderr and '"explode"' in proc.stderr and "dry-run" in proc.stderr, proc.stderr
    assert cluster.admin.get(f"{collection(namespace)}/explode") is None


@pytest.mark.timeout(120)
def test_unknown_fields_are_pruned(cluster: Cluster, crds: None, namespace: str,
                                   cluster_policies: list[str]) -> None:
    admin = cluster.admin
    for kind, ns in (("MemwatchPolicy", namespace), ("ClusterMemwatchPolicy", None)):
        name = f"typo-{SESSION}"
        if ns is None:
            cluster_policies.append(name)
        obj = policy(kind, name, {"limit": "1Gi", "limitt": "1Gi", "podSelector": {"matchLabelz": {"a": "b"}}}, ns)
        obj["status"] = {"matchedPods": 7}  # the status subresource is on: ignored on create
        created = create(admin, obj)
        assert "matchedPods" not in (created.get("status") or {})
        stored = admin.get(f"{collection(ns)}/{name}")
        for got in (created, stored):
            assert got["spec"] == {"limit": "1Gi", "podSelector": {}, "priority": 0}, got["spec"]
        delete(admin, ns, name)


@pytest.mark.timeout(120)
def test_valid_policies_are_stored(cluster: Cluster, crds: None, namespace: str,
                                   cluster_policies: list[str]) -> None:
    admin = cluster.admin
    stored = create(admin, policy("MemwatchPolicy", "full", FULL_SPEC, namespace))
    assert stored["spec"] == FULL_SPEC
    minimal = create(admin, policy("MemwatchPolicy", "minimal", {"limit": "512Mi"}, namespace))
    assert minimal["spec"] == {"limit": "512Mi", "priority": 0}  # priority's default; nothing else defaulted

    name = f"cluster-{SESSION}"
    cluster_policies.append(name)
    spec = {**FULL_SPEC, "namespaceSelector": {"matchExpressions": [{"key": "memwatch-it", "operator": "Exists"}]}}
    stored = create(admin, policy("ClusterMemwatchPolicy", name, spec))
    assert stored["spec"] == spec and "namespace" not in stored["metadata"]
    # namespaceSelector is the cluster kind's only: pruned from a MemwatchPolicy.
    pruned = create(admin, policy("MemwatchPolicy", "no-ns-selector",
                                  {"limit": "1Gi", "namespaceSelector": {"matchLabels": {"a": "b"}}}, namespace))
    assert pruned["spec"] == {"limit": "1Gi", "priority": 0}
    for policy_name in ("full", "minimal", "no-ns-selector"):
        delete(admin, namespace, policy_name)


def table(text: str) -> list[dict[str, str]]:
    """kubectl's table by its header's column positions (cells are left-aligned)."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[0]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    names = header.split()
    return [{name: line[start:starts[i + 1] if i + 1 < len(starts) else None].strip()
             for i, (name, start) in enumerate(zip(names, starts, strict=True))} for line in lines[1:]]


@pytest.mark.timeout(120)
def test_kubectl_get_prints_the_columns(cluster: Cluster, crds: None, namespace: str,
                                        cluster_policies: list[str]) -> None:
    admin = cluster.admin
    create(admin, policy("MemwatchPolicy", "solvers", {"limit": "1536Mi", "action": "evict"}, namespace))
    # The controller's part, done by hand: its status, through the status subresource.
    status = {"observedGeneration": 1, "matchedPods": 3, "lastActionTime": "2024-01-02T03:04:05Z",
              "conditions": [{"type": "Ready", "status": "True", "reason": "Accepted", "message": "ok",
                              "lastTransitionTime": "2024-01-02T03:04:05Z", "observedGeneration": 1}],
              "kopf": {"progress": {"handler": {"retries": 1}}}}
    patched = admin.request("PATCH", f"{collection(namespace)}/solvers/status",
                            {"status": status, "spec": {"limit": "1Gi"}}, content_type="application/merge-patch+json")
    for key in ("observedGeneration", "matchedPods", "lastActionTime", "conditions"):
        assert patched["status"][key] == status[key], key
    assert patched["status"]["kopf"]["progress"]["handler"] == {"retries": 1}  # kopf's free-form part is kept
    assert patched["spec"]["limit"] == "1536Mi"  # the status subresource cannot change the spec

    def shown() -> dict[str, str] | None:
        """The row, once it shows the status as stored (a memwatch controller running in the cluster
        may rewrite MATCHED and READY at any time: compare with a read right after)."""
        proc = kubectl(cluster, "get", "memwatchpolicies", "-n", namespace)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[0].split() == COLUMNS, proc.stdout
        (row,) = table(proc.stdout)
        current = admin.get(f"{collection(namespace)}/solvers")["status"]
        ready = next(c["status"] for c in current["conditions"] if c["type"] == "Ready")
        return row if (row["MATCHED"], row["READY"]) == (str(current["matchedPods"]), ready) else None

    row = wait_for("kubectl get to show the stored status", shown, 30, interval=1)
    assert row["NAME"] == "solvers" and row["LIMIT"] == "1536Mi" and row["ACTION"] == "evict", row
    assert row["MATCHED"].isdigit() and row["READY"] in {"True", "False"} and row["AGE"], row

    # Short names and the memwatch category.
    proc = kubectl(cluster, "get", "mwp", "-n", namespace, "-o", "name")
    assert proc.returncode == 0 and proc.stdout.split() == ["memwatchpolicy.memwatch.io/solvers"], proc.stderr
    name = f"columns-{SESSION}"
    cluster_policies.append(name)
    create(admin, policy("ClusterMemwatchPolicy", name, {"limit": "90%", "action": "dry-run"}))
    proc = kubectl(cluster, "get", "cmwp", name)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == COLUMNS, proc.stdout
    (row,) = table(proc.stdout)
    assert row["LIMIT"] == "90%" and row["ACTION"] == "dry-run", row
    proc = kubectl(cluster, "get", "memwatch", "-n", namespace, "-o", "name")
    assert proc.returncode == 0, proc.stderr
    assert {"memwatchpolicy.memwatch.io/solvers", f"clustermemwatchpolicy.memwatch.io/{name}"} <= set(
        proc.stdout.split()), proc.stdout
    delete(admin, namespace, "solvers")


def test_full_spec_covers_every_field() -> None:
    """FULL_SPEC really is every field of the files' schema (kept in step with the CRDs)."""
    crd = yaml.safe_load((CRD_DIR / "memwatch.io_memwatchpolicies.yaml").read_text())
    fields = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert set(fields) == set(FULL_SPEC)
