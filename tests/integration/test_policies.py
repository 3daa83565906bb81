"""Policies on the real API server: a MemwatchPolicy watches pods nobody annotated, a pod annotation
overrides one field of it, an edit takes effect within a sweep, a deletion stops the watching, two
policies at one level that disagree give one MemwatchPolicyConflict Event, and the controller writes
the policies' status.matchedPods. Judged from the API server (Events, pods, the policies' status)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from memwatch.observability import REASON_DRY_RUN, REASON_EVICTED, REASON_POLICY_CONFLICT

from .clusterkit import captured_logs, hog_pod, holding, is_running, running_controller, wait_for
from .conftest import Cluster
from .test_policy_crd import collection, crds, create, delete, policy  # noqa: F401 (crds: a fixture)

pytestmark = pytest.mark.cluster

HOLD_MIB = 160  # each hog's usage, under its 400Mi hard limit


def memwatch_events(cluster: Cluster, ns: str, uid: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in cluster.admin.events(ns, uid, reason) if (e.get("source") or {}).get("component") == "memwatch"]


@pytest.mark.timeout(300)
def test_a_policy_watches_unannotated_pods_and_follows_edits_and_deletion(cluster: Cluster, crds: None,  # noqa: F811
                                                                          namespace: str) -> None:
    admin, ns = cluster.admin, namespace
    specs = {
        "web": hog_pod("web", holding(HOLD_MIB), labels={"app": "web"}),  # only the policy watches it
        "web-dry": hog_pod("web-dry", holding(HOLD_MIB), {"memwatch.io/action": "dry-run"}, labels={"app": "web"}),
        "db": hog_pod("db", holding(HOLD_MIB), labels={"app": "db"}),  # no policy selects it
        "edit": hog_pod("edit", holding(HOLD_MIB), labels={"app": "edit"}),
        "fade": hog_pod("fade", holding(HOLD_MIB), labels={"app": "fade"}),
        "both": hog_pod("both", holding(HOLD_MIB), labels={"app": "both"}),
    }
    for spec in specs.values():
        admin.create_pod(ns, spec)
    pods = admin.wait_running(ns, specs)
    uid = {name: pod["metadata"]["uid"] for name, pod in pods.items()}
    # 30% of the 400Mi hard limit = 120Mi: the hogs hold 160Mi, so they pass it.
    create(admin, policy("MemwatchPolicy", "web", {"limit": "30%", "podSelector": {"matchLabels": {"app": "web"}}}, ns))
    create(admin, policy("MemwatchPolicy", "edit", {"limit": "300Mi", "podSelector": {"matchLabels": {"app": "edit"}}},
                         ns))
    create(admin, policy("MemwatchPolicy", "fade", {"limit": "100Mi", "action": "dry-run",
                                                    "podSelector": {"matchLabels": {"app": "fade"}}}, ns))
    for name, limit in (("both-a", "100Mi"), ("both-b", "120Mi")):
        create(admin, policy("MemwatchPolicy", name, {"limit": limit, "action": "dry-run",
                                                      "podSelector": {"matchLabels": {"app": "both"}}}, ns))

    with captured_logs() as logs, running_controller(cluster.kubeconfig, [ns], tag="policies") as controller:
        # A namespace policy evicts a pod nobody annotated; its annotation overrides one field of another.
        ev = admin.wait_event(ns, uid["web"], REASON_EVICTED, timeout=120)
        assert "over the memwatch limit 120Mi" in ev["message"], ev["message"]
        admin.wait_event(ns, uid["web-dry"], REASON_DRY_RUN, timeout=60)
        admin.wait_event(ns, uid["fade"], REASON_DRY_RUN, timeout=60)
        conflict = admin.wait_event(ns, uid["both"], REASON_POLICY_CONFLICT, timeout=60)
        assert "MemwatchPolicy " + ns + "/both-a" in conflict["message"] and "wins over" in conflict["message"]
        # status, written by the controller: pods each policy applies to, and its last action (web's eviction)
        def status(name: str) -> dict[str, Any]:
            return dict((admin.get(f"{collection(ns)}/{name}") or {}).get("status") or {})

        wait_for("status.matchedPods of both-a and both-b",
                 lambda: status("both-a").get("matchedPods") == status("both-b").get("matchedPods") == 1, 30)
        web_status = wait_for("web's status: web-dry left, and the eviction's time",
                              lambda: (s := status("web")).get("matchedPods") == 1 and s.get("lastActionTime") and s,
                              30)
        assert web_status["lastActionTime"] >= ev["firstTimestamp"][:19], (web_status, ev["firstTimestamp"])
        assert "lastActionTime" not in status("both-a")  # dry runs are not actions
        # Editing the policy's limit changes the outcome within a sweep (and a re-list).
        assert not memwatch_events(cluster, ns, uid["edit"], REASON_EVICTED)
        edited = time.monotonic()
        admin.request("PATCH", f"{collection(ns)}/edit", {"spec": {"limit": "100Mi"}},
                      content_type="application/merge-patch+json")
        admin.wait_event(ns, uid["edit"], REASON_EVICTED, timeout=60)
        took = time.monotonic() - edited
        # Deleting a policy leaves the pods it alone selected alone: no more Events, not watched.
        delete(admin, ns, "fade")
        wait_for("the controller to stop watching fade",
                 lambda: all(r.name != "fade" for r in controller.index.snapshot()), 30)
        settled = len(memwatch_events(cluster, ns, uid["fade"], REASON_DRY_RUN))
        sweeps = controller.sweeper.sweeps
        wait_for("three more sweeps", lambda: controller.sweeper.sweeps >= sweeps + 3, 30)
        assert len(memwatch_events(cluster, ns, uid["fade"], REASON_DRY_RUN)) == settled == 1
        assert logs.lines("policies changed")

    # the pods no policy evicts are still running: db (no policy), web-dry (dry-run), fade, both
    for name in ("db", "web-dry", "fade", "both"):
        pod = admin.pod(ns, name)
        assert pod is not None and pod["metadata"]["uid"] == uid[name] and is_running(pod), name
    assert not memwatch_events(cluster, ns, uid["db"], REASON_DRY_RUN)
    assert len(memwatch_events(cluster, ns, uid["both"], REASON_POLICY_CONFLICT)) == 1
    print(f"policy edit -> eviction: {took:.1f}s")
    assert took < 30, f"an edited policy took {took:.1f}s to act (sweep 1s, samples refresh every ~10-15s)"
