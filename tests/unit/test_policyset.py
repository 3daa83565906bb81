"""MemwatchPolicy / ClusterMemwatchPolicy: parsing, selection and precedence (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from memwatch.podindex import PodIndex, build_record
from memwatch.policy import Action, Defaults
from memwatch.policyhandlers import ready_condition
from memwatch.policyset import (
    CLUSTER,
    NAMESPACED,
    Policies,
    PolicySet,
    Selector,
    SelectorError,
    parse_policy,
)


def policy(kind: str = NAMESPACED, name: str = "p", namespace: str | None = "team", **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": f"uid-{name}", "generation": 2}
    if kind == NAMESPACED:
        meta["namespace"] = namespace
    return {"apiVersion": "memwatch.io/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}


def pod(namespace: str = "team", labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
        limit: str | None = "1Gi", request: str | None = "512Mi", name: str = "web-1") -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if limit:
        resources["limits"] = {"memory": limit}
    if request:
        resources["requests"] = {"memory": request}
    return {"metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "labels": labels or {},
                         "annotations": annotations or {}},
            "spec": {"nodeName": "n1", "containers": [{"name": "app", "resources": resources}]},
            "status": {"phase": "Running"}}


def record(pods: dict[str, Any], *policies: dict[str, Any], ns_labels: dict[str, dict[str, str]] | None = None):
    return build_record(pods, Defaults(), lambda p: None,
                        PolicySet([parse_policy(p) for p in policies], ns_labels or {}))


# -- parsing ---------------------------------------------------------------------------------------

def test_a_valid_policy_maps_its_fields_to_the_annotations_one_to_one() -> None:
    p = parse_policy(policy(limit="90%", limitOf="requests", action="delete", gracePeriod=5, escalate=True,
                            predict=False, nodePressure="evict", restartBudget="2/10m", minPodAge="30s",
                            containers={"app": "800Mi"}, **{"for": "10s"}))
    assert p.valid, p.problems
    assert dict(p.settings) == {
        "memwatch.io/limit": "90%", "memwatch.io/limit-of": "requests", "memwatch.io/action": "delete",
        "memwatch.io/grace-period": "5", "memwatch.io/escalate": "true", "memwatch.io/predict": "false",
        "memwatch.io/node-pressure": "evict", "memwatch.io/restart-budget": "2/10m",
        "memwatch.io/min-pod-age": "30s", "memwatch.io/limit.app": "800Mi", "memwatch.io/for": "10s"}
    assert p.ref == "MemwatchPolicy team/p"


@pytest.mark.parametrize(("spec", "needle"), [
    ({"limit": "lots"}, "spec.limit"),
    ({"limit": "0.5"}, "spec.limit"),
    ({"limit": "150%"}, "spec.limit"),
    ({"limit": "1Gi", "action": "explode"}, "spec.action"),
    ({"limit": "1Gi", "for": "soon"}, "spec.for"),
    ({"limit": "1Gi", "gracePeriod": "ten"}, "spec.gracePeriod"),
    ({"limit": "1Gi", "gracePeriod": 7200}, "spec.gracePeriod"),
    ({"limit": "1Gi", "escalate": "yes"}, "spec.escalate"),
    ({"limit": "1Gi", "restartBudget": "3 per hour"}, "spec.restartBudget"),
    ({"limit": "1Gi", "priority": 5000}, "spec.priority"),
    ({"limit": "1Gi", "limitt": "1Gi"}, "spec.limitt: unknown field"),
    ({"limit": "1Gi", "namespaceSelector": {}}, "only a ClusterMemwatchPolicy"),
    ({"limit": "1Gi", "podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}, "operator"),
    ({"limit": "1Gi", "podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}, "at least one"),
    ({"containers": {"Bad_Name": "1Gi"}}, "not a container name"),
    ({}, "spec sets nothing"),
])
def test_an_invalid_policy_names_the_field_and_is_never_applied(spec: dict[str, Any], needle: str) -> None:
    p = parse_policy(policy(**spec))
    assert not p.valid and any(needle in problem for problem in p.problems), p.problems
    assert record(pod(), policy(**spec)) is None  # an unannotated pod stays unwatched
    condition = ready_condition(policy(**spec), None, now="2026-12-02T00:00:00Z")
    assert condition["status"] == "False" and condition["reason"] == "Invalid" and needle in condition["message"]
    assert condition["observedGeneration"] == 2


def test_parse_policy_never_raises_on_garbage() -> None:
    for body in ({}, {"kind": NAMESPACED, "spec": "x"}, {"kind": CLUSTER, "metadata": [], "spec": {"limit": 5}},
                 {"kind": NAMESPACED, "spec": {"containers": ["a"], "podSelector": "x"}}):
        assert not parse_policy(body).valid


def test_selectors_follow_metav1_label_selector_semantics() -> None:
    sel = Selector.from_object({"matchLabels": {"app": "web"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["a", "b"]},
        {"key": "canary", "operator": "DoesNotExist"},
        {"key": "env", "operator": "NotIn", "values": ["prod"]},
        {"key": "team", "operator": "Exists"}]}, "s")
    assert sel.matches({"app": "web", "tier": "a", "team": "x"})
    assert not sel.matches({"app": "web", "tier": "c", "team": "x"})
    assert not sel.matches({"app": "web", "tier": "a", "team": "x", "canary": "1"})
    assert not sel.matches({"app": "web", "tier": "a", "team": "x", "env": "prod"})
    assert not sel.matches({"app": "web", "tier": "a"})
    assert Selector.from_object(None, "s").matches({}) and Selector.from_object({}, "s").matches({"a": "b"})
    with pytest.raises(SelectorError):
        Selector.from_object({"matchLabels": {"bad key!": "x"}}, "s")


# -- selection and precedence ----------------------------------------------------------------------

def test_a_namespace_policy_watches_an_unannotated_pod_at_90_percent_of_its_limit() -> None:
    rec = record(pod(labels={"app": "web"}), policy(limit="90%", podSelector={"matchLabels": {"app": "web"}}))
    assert rec is not None and rec.policy is not None
    assert rec.policy.limits[0].bytes == int((1 << 30) * 0.9)
    assert rec.policies == ("MemwatchPolicy team/p",)
    assert record(pod(labels={"app": "db"}), policy(limit="90%", podSelector={"matchLabels": {"app": "web"}})) is None
    assert record(pod(namespace="other"), policy(limit="90%")) is None  # another namespace's policy


def test_limit_of_requests_takes_the_percentage_of_the_memory_request() -> None:
    rec = record(pod(limit=None, request="1Gi"), policy(limit="50%", limitOf="requests"))
    assert rec is not None and rec.policy is not None and rec.policy.limits[0].bytes == 512 << 20
    # of limits (the default), a pod without a limit cannot use a percentage: not watched, no Event
    assert record(pod(limit=None, request="1Gi"), policy(limit="50%")) is None


def test_a_pod_annotation_wins_field_by_field() -> None:
    rec = record(pod(annotations={"memwatch.io/action": "dry-run"}),
                 policy(limit="900Mi", action="delete", gracePeriod=7))
    assert rec is not None and rec.policy is not None
    assert rec.policy.action is Action.DRY_RUN  # the annotation
    assert rec.policy.limits[0].bytes == 900 << 20 and rec.policy.grace_period == 7  # the policy


def test_namespace_policy_beats_cluster_policy_and_priority_then_name_break_ties() -> None:
    ps = PolicySet([parse_policy(p) for p in (
        policy(CLUSTER, "all", limit="800Mi", action="delete", gracePeriod=9),
        policy(NAMESPACED, "b-team", limit="700Mi"),
        policy(NAMESPACED, "a-team", limit="600Mi", priority=-1),
        policy(NAMESPACED, "z-team", action="dry-run", priority=10),
    )])
    eff = ps.effective("team", {}, {})
    assert eff.annotations["memwatch.io/limit"] == "700Mi"  # b-team beats a-team (priority 0 > -1)
    assert eff.origin("memwatch.io/limit") == "MemwatchPolicy team/b-team"
    assert eff.annotations["memwatch.io/action"] == "dry-run"  # z-team (namespace level) beats the cluster
    assert eff.origin("memwatch.io/grace-period") == "ClusterMemwatchPolicy all"
    assert eff.origin("memwatch.io/for") == "default"
    assert [str(c) for c in eff.conflicts] == [
        "memwatch.io/limit: MemwatchPolicy team/b-team ('700Mi') wins over MemwatchPolicy team/a-team ('600Mi')"]
    assert eff.policies == ("MemwatchPolicy team/z-team", "MemwatchPolicy team/b-team",
                            "MemwatchPolicy team/a-team", "ClusterMemwatchPolicy all")


def test_a_cluster_policy_selects_namespaces_by_label_and_never_an_unknown_namespace() -> None:
    cp = policy(CLUSTER, "batch", limit="90%", namespaceSelector={"matchLabels": {"tier": "batch"}})
    assert record(pod(namespace="jobs"), cp, ns_labels={"jobs": {"tier": "batch"}}) is not None
    assert record(pod(namespace="web"), cp, ns_labels={"web": {"tier": "web"}}) is None
    assert record(pod(namespace="new"), cp, ns_labels={}) is None


def test_a_policy_without_a_limit_changes_annotated_pods_only() -> None:
    dry = policy(action="dry-run")
    assert record(pod(), dry) is None
    rec = record(pod(annotations={"memwatch.io/limit": "900Mi"}), dry)
    assert rec is not None and rec.policy is not None and rec.policy.action is Action.DRY_RUN


def test_an_annotated_pod_with_a_bad_merged_value_is_invalid_and_reported() -> None:
    rec = record(pod(limit=None, annotations={"memwatch.io/action": "evict"}), policy(limit="90%"))
    assert rec is not None and rec.policy is None and rec.problems  # annotated: the pod gets its Event


# -- the live set ----------------------------------------------------------------------------------

def test_policies_rebuild_the_set_and_call_back_only_on_real_changes() -> None:
    pols = Policies()
    seen: list[int] = []
    pols.callbacks.append(lambda snap: seen.append(snap.generation))
    body = policy(limit="1Gi")
    pols.namespaced.upsert(body)
    pols.namespaced.upsert({**body, "status": {"matchedPods": 3}})  # a status write changes nothing
    assert seen == [1] and len(pols.current) == 1
    pols.namespaces.upsert({"metadata": {"name": "team", "labels": {"a": "b"}}})  # no namespaceSelector in use
    assert seen == [1] and pols.current.namespace_labels == {"team": {"a": "b"}}
    pols.cluster.upsert(policy(CLUSTER, "c", limit="1Gi", namespaceSelector={"matchLabels": {"a": "b"}}))
    pols.namespaces.upsert({"metadata": {"name": "team", "labels": {"a": "c"}}})  # now it matters
    assert seen == [1, 2, 3]
    pols.namespaced.remove(body)
    assert seen[-1] == 4 and len(pols.current) == 1


def test_the_index_resolves_new_pods_with_the_policies_it_holds() -> None:
    index = PodIndex(Defaults(), lambda p: None)
    index.upsert(pod())
    assert len(index) == 0
    index.policies = PolicySet([parse_policy(policy(limit="1000Mi"))])
    index.upsert(pod())
    assert len(index) == 1
    index.replace([], lambda r: True)
    assert len(index) == 0


def test_ready_condition_keeps_its_transition_time_while_the_status_holds() -> None:
    first = ready_condition(policy(limit="1Gi"), None, now="2026-12-02T10:00:00Z")
    again = ready_condition(policy(limit="2Gi"), [first], now="2026-12-02T11:00:00Z")
    assert first["status"] == again["status"] == "True"
    assert again["lastTransitionTime"] == "2026-12-02T10:00:00Z"
    flipped = ready_condition(policy(limit="nope"), [again], now="2026-12-02T12:00:00Z")
    assert flipped["status"] == "False" and flipped["lastTransitionTime"] == "2026-12-02T12:00:00Z"


def test_the_node_guard_takes_node_pressure_from_a_policy_unless_the_pod_says_otherwise() -> None:
    from memwatch.nodeguard import NodePods, node_pod

    ps = PolicySet([parse_policy(policy(nodePressure="evict", podSelector={"matchLabels": {"app": "batch"}}))])
    assert node_pod(pod(labels={"app": "batch"}), lambda p: None, ps).node_pressure == "evict"  # type: ignore[union-attr]
    own = pod(labels={"app": "batch"}, annotations={"memwatch.io/node-pressure": "never"})
    assert node_pod(own, lambda p: None, ps).node_pressure == "never"  # type: ignore[union-attr]
    assert node_pod(pod(labels={"app": "web"}), lambda p: None, ps).node_pressure is None  # type: ignore[union-attr]
    pods = NodePods(lambda p: None)
    pods.policies = ps
    pods.replace([pod(labels={"app": "batch"})], lambda r: True)
    assert [p.node_pressure for p in pods.snapshot()] == ["evict"]


def test_a_policy_watched_pod_costs_no_more_memory_than_an_annotated_one() -> None:
    """Memory stays flat in the pods a cluster policy matches: a record resolved through a policy is
    the size of one resolved from annotations (the policy refs are shared strings, not copies)."""
    import gc
    import tracemalloc

    n = 2000
    cluster = PolicySet([parse_policy(policy(CLUSTER, "all", limit="64Mi"))])

    def cost(pods: list[dict[str, Any]], policies: PolicySet) -> int:
        index = PodIndex(Defaults(), lambda p: None)
        index.policies = policies
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        index.replace(pods, lambda r: True)
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert len(index) == n
        return after - before

    annotated = cost([pod(name=f"a{i}", annotations={"memwatch.io/limit": "64Mi"}) for i in range(n)], PolicySet())
    matched = cost([pod(name=f"p{i}") for i in range(n)], cluster)
    print(f"per pod: annotated {annotated / n:.0f} B, policy-matched {matched / n:.0f} B")
    assert matched <= annotated * 1.15, (annotated / n, matched / n)
