"""The installed controller's kopf handlers validate policies and write their status: a valid
MemwatchPolicy is Ready, one the schema lets through but memwatch cannot use is Invalid with the
reason, and neither gets a finalizer or an annotation (kopf keeps its bookkeeping in status)."""

from __future__ import annotations

from typing import Any

import pytest

from .support import Cluster, Memwatch, hog_pod, wait_for

pytestmark = pytest.mark.e2e

API = "/apis/memwatch.io/v1alpha1"


def ready(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    obj = cluster.get_or_none(f"{API}/namespaces/{ns}/memwatchpolicies/{name}") or {}
    conditions = (obj.get("status") or {}).get("conditions") or []
    found = next((c for c in conditions if c.get("type") == "Ready"), None)
    return {"object": obj, "condition": found} if found else None


@pytest.mark.timeout(240, func_only=True)
def test_the_controller_marks_policies_ready_or_invalid_and_never_acts_on_an_invalid_one(
        cluster: Cluster, memwatch: Memwatch, ns: str) -> None:
    pod = cluster.create(hog_pod(ns, "selected", ["--sleep", "--start", "120"], "400Mi", labels={"app": "sel"}))
    cluster.wait_running(ns, "selected")
    good = {"limit": "350Mi", "action": "dry-run", "podSelector": {"matchLabels": {"app": "other"}}}
    bad = {"limit": "0.5", "podSelector": {"matchLabels": {"app": "sel"}}}  # passes the schema: half a byte
    for name, spec in (("good", good), ("bad", bad)):
        cluster.request("POST", f"{API}/namespaces/{ns}/memwatchpolicies", {
            "apiVersion": "memwatch.io/v1alpha1", "kind": "MemwatchPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec})
    valid = wait_for("policy good to be Ready", lambda: ready(cluster, ns, "good"), 60)
    invalid = wait_for("policy bad to be marked", lambda: ready(cluster, ns, "bad"), 60)
    assert valid["condition"]["status"] == "True" and valid["condition"]["reason"] == "Valid"
    assert invalid["condition"]["status"] == "False" and invalid["condition"]["reason"] == "Invalid"
    assert "spec.limit" in invalid["condition"]["message"] and "1Mi" in invalid["condition"]["message"]
    for found in (valid, invalid):
        obj = found["object"]
        assert found["condition"]["observedGeneration"] == obj["metadata"]["generation"]
        assert not obj["metadata"].get("finalizers"), obj["metadata"]
        assert not any(k.startswith("kopf.zalando.org") for k in obj["metadata"].get("annotations") or {})
    # An edit that fixes it flips it to Ready, and a new transition time is written.
    cluster.request("PATCH", f"{API}/namespaces/{ns}/memwatchpolicies/bad",
                    {"spec": {"limit": "100Mi", "action": "dry-run"}}, content_type="application/merge-patch+json")
    fixed = wait_for("policy bad to be Ready after the edit",
                     lambda: (r := ready(cluster, ns, "bad")) and r["condition"]["status"] == "True" and r, 60)
    assert fixed["condition"]["observedGeneration"] == fixed["object"]["metadata"]["generation"] == 2
    # While it was invalid, it never acted: the only memwatch Event on the pod is the fixed policy's dry run.
    uid = pod["metadata"]["uid"]
    cluster.wait_event(ns, uid, "MemwatchDryRun", timeout=90)
    reasons = {e["reason"] for e in cluster.memwatch_events(ns, uid)}
    assert reasons == {"MemwatchDryRun"}, reasons
    # Deleting a policy is never held up by memwatch (no finalizer).
    cluster.request("DELETE", f"{API}/namespaces/{ns}/memwatchpolicies/good")
    wait_for("policy good to be gone", lambda: cluster.get_or_none(f"{API}/namespaces/{ns}/memwatchpolicies/good")
             is None or None, 30)
