"""The node guard end to end (issue #11): the node runs short, memwatch evicts the hog, and only the hog.

Needs the local cluster brought up with node allocatable enforced on pods, so that kubepods has a small
hard limit (``MEMWATCH_CLUSTER_PODS_MEMORY=2048 hack/local-cluster.sh up``), and memwatch installed with
the agent and ``agent.nodeGuard.mode: on`` (tests/e2e/values-e2e.yaml). Skips loudly otherwise. The test
runs on the node's host (the local cluster is Docker-less), so it reads the kernel's own counters:
``oom_kill`` summed over the kubepods subtree (``memwatch.nodesignals.oom_kills``) must not move.

Three pods without memory limits: a BestEffort priority-0 hog growing at 50 MiB/s, a Burstable service
at a higher priority holding 200 MiB, and a BestEffort pod annotated ``memwatch.io/node-pressure: never``
holding 100 MiB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from memwatch.cgroups import Hierarchy, discover_bases
from memwatch.nodesignals import oom_kills

from .support import HOG_IMAGE, PART_OF, PULL_POLICY, Cluster, Memwatch, PodRecorder, wait_for

pytestmark = pytest.mark.e2e

HIGH = "memwatch-e2e-node-guard-high"


def kubepods_limit() -> tuple[Hierarchy, Path, int] | None:
    root = Path("/sys/fs/cgroup")
    try:
        hierarchy = Hierarchy.detect(root)
    except Exception:
        return None
    bases = sorted(discover_bases(hierarchy.memory_root), key=lambda p: len(p.parts))
    if not bases:
        return None
    raw = (bases[0] / hierarchy.limit_file).read_text().strip()
    if not raw.isdigit() or int(raw) >= 1 << 62:
        return None
    return hierarchy, bases[0], int(raw)


def pod(ns: str, name: str, args: list[str], annotations: dict[str, str] | None = None,
        requests: str | None = None, priority_class: str | None = None) -> dict[str, Any]:
    resources = {"requests": {"cpu": "10m", "memory": requests}} if requests else {}
    spec: dict[str, Any] = {"terminationGracePeriodSeconds": 2, "containers": [
        {"name": "hog", "image": HOG_IMAGE, "imagePullPolicy": PULL_POLICY, "command": ["/hog", *args],
         "resources": resources}]}
    if priority_class:
        spec["priorityClassName"] = priority_class
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "annotations": annotations or {}, "labels": dict(PART_OF)},
            "spec": spec}


@pytest.mark.timeout(300, func_only=True)
def test_node_guard_evicts_only_the_hog_before_any_oom(cluster: Cluster, memwatch: Memwatch, ns: str,
                                                        recorder: PodRecorder) -> None:
    found = kubepods_limit()
    if found is None:
        pytest.skip("SKIPPED LOUDLY: kubepods has no hard limit here; bring the local cluster up with "
                    "MEMWATCH_CLUSTER_PODS_MEMORY=2048 hack/local-cluster.sh up")
    if memwatch.agent_daemonset is None:
        pytest.skip("SKIPPED LOUDLY: memwatch is installed without its node agent")
    ds = cluster.get(f"/apis/apps/v1/namespaces/{memwatch.namespace}/daemonsets/{memwatch.agent_daemonset}")
    args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
    if "--node-guard=on" not in args:
        pytest.skip(f"SKIPPED LOUDLY: the agent runs without --node-guard=on (args: {args})")
    hierarchy, kubepods, limit = found
    before = oom_kills(kubepods, hierarchy)
    existing = cluster.get_or_none(f"/apis/scheduling.k8s.io/v1/priorityclasses/{HIGH}")
    if existing is None:
        cluster.create({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                        "metadata": {"name": HIGH, "labels": dict(PART_OF)}, "value": 1000})
    service = cluster.create(pod(ns, "service", ["--sleep", "--start", "200"], requests="64Mi",
                                 priority_class=HIGH))
    never = cluster.create(pod(ns, "never", ["--sleep", "--start", "100"],
                               {"memwatch.io/node-pressure": "never"}))
    for p in (service, never):
        cluster.wait_running(ns, p["metadata"]["name"])
    hog = cluster.create(pod(ns, "hog", ["--rate", "50", "--max", str(2 * (limit >> 20)), "--hold"]))
    hog_uid = hog["metadata"]["uid"]

    def no_oom() -> str | None:
        for uid in (hog_uid, service["metadata"]["uid"], never["metadata"]["uid"]):
            if recorder.oom(uid):
                return f"OOMKilled: {recorder.oom(uid)}"
        now = oom_kills(kubepods, hierarchy)
        return f"kubepods oom_kill moved {before} -> {now}" if now != before else None

    event = cluster.wait_event(ns, hog_uid, "MemwatchNodePressure", timeout=(limit >> 20) / 50 + 60, fail=no_oom)
    assert "rule lowest-priority" in event["message"], event["message"]
    wait_for("the hog to be gone", lambda: cluster.pod(ns, "hog") is None or None, 60, fail=no_oom)
    assert no_oom() is None
    for p in (service, never):  # untouched: same pod, running, no memwatch Event
        current = cluster.pod(ns, p["metadata"]["name"])
        assert current is not None and current["metadata"]["uid"] == p["metadata"]["uid"]
        assert current["status"]["phase"] == "Running"
        assert not [e for e in cluster.memwatch_events(ns, p["metadata"]["uid"])
                    if e.get("reason") == "MemwatchNodePressure"]
    node_events = cluster.get("/api/v1/namespaces/default/events",
                              fieldSelector="reason=MemwatchNodePressure,involvedObject.kind=Node")
    assert any(f"{ns}/hog" in e["message"] for e in node_events["items"])
