"""`memwatch explain` against a real kube-apiserver, run as a person runs it: a separate process with the
cluster's kubeconfig, reading a real pod, a real MemwatchPolicy (the chart's CRDs, charts/memwatch/crds/,
applied first) and the namespace's real Events.

A fresh namespace holds a MemwatchPolicy that gives the pods labelled ``app: explained`` a watch limit,
an action and a restart budget, and a pod so labelled whose own ``memwatch.io/action`` annotation
overrides the policy's action. The pod does not need to run: explain reads its object only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from memwatch.kube import ApiError
from memwatch.quantity import parse_bytes

from .clusterkit import Admin, hog_pod, sleeping, wait_for
from .conftest import Cluster

pytestmark = [pytest.mark.cluster]

CRD_DIR = Path(__file__).resolve().parents[2] / "charts" / "memwatch" / "crds"
CRD_API = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
API = "/apis/memwatch.io/v1alpha1"
POLICY_LIMIT, POLICY_ACTION, OWN_ACTION = "300Mi", "delete", "dry-run"


def memwatch_explain(cluster: Cluster, *argv: str) -> subprocess.CompletedProcess[str]:
    """`memwatch explain ARGV` in its own process, with the cluster's kubeconfig and nothing else of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMWATCH_") and k not in ("KUBECONFIG", "NO_COLOR")}
    return subprocess.run([sys.executable, "-m", "memwatch", "explain", "--kubeconfig", cluster.kubeconfig, *argv],
                          capture_output=True, text=True, timeout=90, env=env)


def _established(admin: Admin, name: str) -> bool:
    crd = admin.get(f"{CRD_API}/{name}") or {}
    conditions = {c.get("type"): c.get("status") for c in (crd.get("status") or {}).get("conditions") or ()}
    return conditions.get("Established") == "True"


def apply_crds(admin: Admin) -> None:
    """The chart's CRDs, as `kubectl apply -f charts/memwatch/crds/` leaves them: created when absent,
    replaced by the files' spec when present (other tests may have applied them already). Left installed."""
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd: dict[str, Any] = yaml.safe_load(path.read_text())
        name = crd["metadata"]["name"]
        current = admin.get(f"{CRD_API}/{name}")
        if current is None:
            admin.request("POST", CRD_API, crd)
        elif current.get("spec") != crd["spec"]:
            crd["metadata"] = {**current["metadata"], "labels": crd["metadata"].get("labels") or {}}
            admin.request("PUT", f"{CRD_API}/{name}", crd)
        wait_for(f"CRD {name} to be Established", lambda name=name: _established(admin, name), 60)


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> Iterator[None]:
    apply_crds(cluster.admin)
    yield


def create_policy(admin: Admin, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = {"apiVersion": "memwatch.io/v1alpha1", "kind": "MemwatchPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}

    def created() -> dict[str, Any] | None:  # a just-Established CRD may take a moment to be served
        try:
            obj: dict[str, Any] = admin.request("POST", f"{API}/namespaces/{namespace}/memwatchpolicies", body)
            return obj
        except ApiError as exc:
            if exc.status == 409:
                existing: dict[str, Any] | None = admin.get(f"{API}/namespaces/{namespace}/memwatchpolicies/{name}")
                return existing
            if exc.status in (404, 503):
                return None
            raise

    return wait_for(f"MemwatchPolicy {namespace}/{name} to be created", created, 60, interval=1)


@pytest.mark.timeout(240)
def test_explain_names_the_policy_and_the_annotation(cluster: Cluster, crds: None, namespace: str) -> None:
    admin = cluster.admin
    create_policy(admin, namespace, "limits", {
        "podSelector": {"matchLabels": {"app": "explained"}}, "limit": POLICY_LIMIT, "action": POLICY_ACTION,
        "restartBudget": "2/1h"})
    create_policy(admin, namespace, "broken", {"limit": "512m"})  # the schema lets it through; memwatch does not
    admin.create_pod(namespace, hog_pod("web", sleeping(8), {"memwatch.io/action": OWN_ACTION},
                                        labels={"app": "explained"}))
    admin.create_pod(namespace, hog_pod("plain", sleeping(8)))

    proc = memwatch_explain(cluster, f"{namespace}/web", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["mode"] == "live"
    (pod,) = doc["pods"]
    assert (pod["namespace"], pod["name"]) == (namespace, "web")
    assert pod["watched"] is True and pod["protected"] is None
    fields = {f["field"]: f for f in pod["fields"]}
    assert fields["limit"]["source"] == f"MemwatchPolicy {namespace}/limits"
    assert fields["limit"]["value"] == POLICY_LIMIT and fields["limit"]["bytes"] == parse_bytes(POLICY_LIMIT)
    assert fields["action"]["source"] == "annotation" and fields["action"]["value"] == OWN_ACTION
    assert fields["restart-budget"]["source"] == f"MemwatchPolicy {namespace}/limits"
    assert fields["escalate"]["source"] == "default"
    assert pod["action"] == OWN_ACTION
    assert pod["policies"] == [f"MemwatchPolicy {namespace}/limits"]
    invalid = {p["policy"]: p for p in pod["invalid_policies"]}
    assert invalid[f"MemwatchPolicy {namespace}/broken"]["selects"] is True
    assert invalid[f"MemwatchPolicy {namespace}/broken"]["problems"][0].startswith("spec.limit: '512m'")
    # A bare pod: no workload, so no budget to count.
    assert pod["workload"] is None and "bare pod" in pod["restart_budget"]["text"]

    # The text, with -n: the policy named as the limit's source, the annotation as the action's.
    proc = memwatch_explain(cluster, "-n", namespace, "web")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("  ") and line.split()}
    assert rows["limit"].rstrip().endswith(f"MemwatchPolicy {namespace}/limits"), proc.stdout
    assert rows["limit"].split()[1] == POLICY_LIMIT, proc.stdout
    assert rows["action"].split()[1:] == [OWN_ACTION, "annotation"], proc.stdout

    # A pod no policy gives a limit.
    proc = memwatch_explain(cluster, f"{namespace}/plain", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    plain = json.loads(proc.stdout)["pods"][0]
    assert plain["watched"] is False and "no valid policy gives it a watch limit" in plain["why"]


@pytest.mark.timeout(120)
def test_explain_refuses_a_missing_pod(cluster: Cluster, crds: None, namespace: str) -> None:
    proc = memwatch_explain(cluster, f"{namespace}/absent")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == f"memwatch explain: error: pod {namespace}/absent not found\n"
