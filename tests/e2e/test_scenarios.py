"""memwatch end to end, on a real cluster with memwatch installed (issue #5, scenarios 1-9).

Real workloads: the static memory hog (tests/images/hog) grows at a set rate; as a sleeper it
holds a fixed amount. Real usage data is 10-15 s old (the kubelet's cAdvisor housekeeping, or
metrics-server's resolution), so the hogs that memwatch's sweep must beat grow slowly enough to
leave that window between crossing the watch limit and hitting the kernel limit:

    8 MiB/s, watch limit 120Mi, kernel limit 400Mi: crosses at ~15 s, OOM-killed at ~50 s.

Every wait is on a condition (an Event, a log line, a pod status, the controller's sweep
counter) with a deadline; each test also has a pytest-timeout for its body.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from memwatch.quantity import parse_bytes, parse_time

from .support import (
    ACTION_REASONS,
    PART_OF,
    Cluster,
    Memwatch,
    PodRecorder,
    hog_container,
    hog_pod,
    kill_fields,
    repeated,
    reporter,
    sleeper_pod,
    unique,
    wait_for,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RATE = 8  # MiB/s
WATCH = "120Mi"
HARD = "400Mi"
GROWS_TO_OOM = ["--rate", str(RATE), "--max", "1000"]  # stops only when the kernel kills it
GROWS_AND_HOLDS = ["--rate", str(RATE), "--max", "200", "--hold"]  # over WATCH, well under HARD
SWEEPS = 5  # "several sweeps"


def no_oom(recorder: PodRecorder, uid: str) -> Callable[[], str | None]:
    """A fail-fast check for waits: the kernel OOM-killed the pod, so memwatch lost the race."""

    def check() -> str | None:
        oom = recorder.oom(uid)
        return f"the kernel OOM-killed the pod before memwatch acted: {oom}" if oom else None

    return check


def untouched(cluster: Cluster, ns: str, name: str, uid: str, restarts: int = 0) -> Callable[[], str | None]:
    """An invariant for waits: the pod is the same pod, alive, not restarted (beyond ``restarts``
    it had already), never acted on."""

    def check() -> str | None:
        pod = cluster.pod(ns, name)
        if pod is None or pod["metadata"]["uid"] != uid:
            return f"pod {ns}/{name} is gone"
        if pod["metadata"].get("deletionTimestamp"):
            return f"pod {ns}/{name} is being deleted"
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        if sum(int(s.get("restartCount") or 0) for s in statuses) > restarts:
            return f"pod {ns}/{name} restarted: {statuses}"
        acted = [e["reason"] for e in cluster.memwatch_events(ns, uid) if e["reason"] in ACTION_REASONS]
        if acted:
            return f"memwatch acted on pod {ns}/{name}: {acted}"
        return None

    return check


def wait_gone(cluster: Cluster, ns: str, name: str, uid: str, timeout: float = 60) -> None:
    def gone() -> bool:
        pod = cluster.pod(ns, name)
        return pod is None or pod["metadata"]["uid"] != uid

    wait_for(f"pod {ns}/{name} to be gone", gone, timeout)


def event_time(event: dict[str, Any]) -> float:
    ts = parse_time(event.get("firstTimestamp") or event.get("eventTime"))
    assert ts is not None, f"Event without a timestamp: {event}"
    return ts


# ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(300, func_only=True)
def test_1_annotated_hog_is_evicted_before_the_kernel_oom_kills_it(
        cluster: Cluster, memwatch: Memwatch, ns: str, recorder: PodRecorder, clock: Any) -> None:
    pod = cluster.create(hog_pod(ns, "hog", GROWS_TO_OOM, HARD, {"memwatch.io/limit": WATCH}))
    uid = pod["metadata"]["uid"]
    cluster.wait_running(ns, "hog")
    clock("running")

    event = cluster.wait_event(ns, uid, "MemwatchEvicted", timeout=150, fail=no_oom(recorder, uid))
    clock("evicted")
    assert "over the memwatch limit 120Mi" in event["message"], event["message"]

    pod_name, line = memwatch.wait_line(rf"action=evicted pod={ns}/hog ", 30)
    fields = kill_fields(line)
    assert fields["uid"] == uid
    assert fields["limit"] == WATCH and fields["scope"] == "pod"
    # The line rounds usage to the nearest MiB, and the agent's kernel threshold on the pod cgroup
    # catches the crossing within a page or two: 120.2Mi is written `120Mi`, equal to the limit.
    assert parse_bytes(fields["usage"]) >= parse_bytes(WATCH), line
    assert parse_bytes(fields["usage"]) < parse_bytes(HARD), line
    assert fields.get("source") and fields.get("latency") and fields.get("sample_age"), line
    for key in ("usage", "source", "sample_age", "latency"):
        clock(key, fields[key])
    clock("acted_by", pod_name)  # the controller, or the node agent when it is deployed
    print(f"\nkill line ({pod_name}): {line}")

    node = fields["node"]
    wait_gone(cluster, ns, "hog", uid)
    clock("gone")
    history = recorder.history(uid)
    assert history is not None and history.oom is None, f"OOMKilled: {history}"
    assert history.restarts == 0, f"the hog restarted: {history}"
    assert cluster.node_ready(node), f"node {node} is not Ready after the eviction"


@pytest.mark.timeout(240, func_only=True)
def test_2_the_same_hog_without_the_annotation_is_oom_killed(
        cluster: Cluster, memwatch: Memwatch, ns: str, recorder: PodRecorder, clock: Any) -> None:
    pod = cluster.create(hog_pod(ns, "hog", GROWS_TO_OOM, HARD))
    uid = pod["metadata"]["uid"]
    node = cluster.wait_running(ns, "hog")["spec"]["nodeName"]
    clock("running")

    oom = wait_for("the kernel to OOM-kill the unannotated hog", lambda: recorder.oom(uid), 150)
    clock("oom_killed")
    print(f"\n{oom}")
    assert cluster.memwatch_events(ns, uid) == [], "memwatch acted on a pod without annotations"
    assert cluster.node_ready(node), f"node {node} is not Ready after the OOM kill"


@pytest.mark.timeout(240, func_only=True)
def test_3_annotated_pod_below_its_limit_is_never_touched(
        cluster: Cluster, memwatch: Memwatch, ns: str, clock: Any) -> None:
    pod = cluster.create(sleeper_pod(ns, "calm", 32, "256Mi", {"memwatch.io/limit": "200Mi"}))
    uid = pod["metadata"]["uid"]
    running = cluster.wait_running(ns, "calm")
    # Sweeps only count once the usage source reports the pod.
    usage = wait_for("the usage source to report the pod", lambda: cluster.working_set(running), 120)
    clock("sampled")
    assert usage < parse_bytes("200Mi"), usage

    memwatch.wait_sweeps(SWEEPS, check=untouched(cluster, ns, "calm", uid))
    clock("sweeps_done")
    assert untouched(cluster, ns, "calm", uid)() is None
    assert cluster.memwatch_events(ns, uid) == []


@pytest.mark.timeout(240, func_only=True)
def test_4_malformed_annotation_gets_a_warning_event_and_is_not_touched(
        cluster: Cluster, memwatch: Memwatch, ns: str, clock: Any) -> None:
    pod = cluster.create(sleeper_pod(ns, "typo", 64, "256Mi", {"memwatch.io/limit": "half a gig"}))
    uid = pod["metadata"]["uid"]
    cluster.wait_running(ns, "typo")

    event = cluster.wait_event(ns, uid, "InvalidMemwatchAnnotation", timeout=90)
    clock("warned")
    assert event["type"] == "Warning"
    assert "memwatch.io/limit" in event["message"] and "half a gig" in event["message"], event["message"]
    memwatch.wait_line(rf"action=ignored pod={ns}/typo reason=InvalidMemwatchAnnotation", 30)

    memwatch.wait_sweeps(SWEEPS, check=untouched(cluster, ns, "typo", uid))
    assert untouched(cluster, ns, "typo", uid)() is None
    again = repeated(cluster.memwatch_events(ns, uid), "InvalidMemwatchAnnotation")
    assert not again, f"the warning was repeated: {again}"


@pytest.mark.timeout(360, func_only=True)
def test_5_pdb_blocks_the_eviction_then_memwatch_escalates(
        cluster: Cluster, memwatch: Memwatch, ns: str, recorder: PodRecorder, clock: Any) -> None:
    labels = {"app": "guarded"}
    cluster.create({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "guarded", "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**labels, **PART_OF},
                             "annotations": {"memwatch.io/limit": WATCH, "memwatch.io/escalate": "true"}},
                "spec": {"terminationGracePeriodSeconds": 2,
                         "containers": [hog_container(GROWS_AND_HOLDS, HARD)]},
            },
        },
    })
    cluster.create({
        "apiVersion": f"policy/{cluster.policy_version}", "kind": "PodDisruptionBudget",
        "metadata": {"name": "guarded", "namespace": ns},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": labels}},
    })

    def first_pod() -> dict[str, Any] | None:
        pods = [p for p in cluster.pods(ns, "app=guarded") if not p["metadata"].get("deletionTimestamp")]
        return pods[0] if pods else None

    pod = wait_for("the Deployment's pod", first_pod, 60)
    name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
    cluster.wait_running(ns, name)

    def pdb_holds() -> bool:
        pdb = cluster.get(f"/apis/policy/{cluster.policy_version}/namespaces/{ns}/poddisruptionbudgets/guarded")
        st = pdb.get("status") or {}
        return st.get("currentHealthy") == 1 and st.get("disruptionsAllowed") == 0

    wait_for("the PodDisruptionBudget to allow no disruption", pdb_holds, 60)

    blocked = cluster.wait_event(ns, uid, "MemwatchEvictionBlocked", timeout=150, fail=no_oom(recorder, uid))
    clock("blocked")
    escalated = cluster.wait_event(ns, uid, "MemwatchEscalated", timeout=memwatch.escalation_timeout + 90,
                                   fail=no_oom(recorder, uid))
    clock("escalated")
    waited = event_time(escalated) - event_time(blocked)
    clock("blocked_to_escalated", waited)
    # Event timestamps have one-second resolution.
    assert waited >= memwatch.escalation_timeout - 1, f"escalated after {waited}s, before the timeout"
    memwatch.wait_line(rf"action=blocked pod={ns}/{name} ", 30)
    memwatch.wait_line(rf"action=escalated pod={ns}/{name} ", 30)
    wait_gone(cluster, ns, name, uid)
    assert recorder.oom(uid) is None


@pytest.mark.timeout(300, func_only=True)
def test_6_dry_run_says_it_would_evict_and_the_pod_keeps_running(
        cluster: Cluster, memwatch: Memwatch, ns: str, recorder: PodRecorder, clock: Any) -> None:
    pod = cluster.create(hog_pod(ns, "dry", GROWS_AND_HOLDS, HARD,
                                 {"memwatch.io/limit": WATCH, "memwatch.io/action": "dry-run"}))
    uid = pod["metadata"]["uid"]
    cluster.wait_running(ns, "dry")

    event = cluster.wait_event(ns, uid, "MemwatchDryRun", timeout=150, fail=no_oom(recorder, uid))
    clock("dry_run_event")
    assert "would evict" in event["message"], event["message"]
    _, line = memwatch.wait_line(rf"action=would-evict pod={ns}/dry ", 30)
    assert kill_fields(line)["limit"] == WATCH

    memwatch.wait_sweeps(SWEEPS, check=untouched(cluster, ns, "dry", uid))
    assert untouched(cluster, ns, "dry", uid)() is None
    still = cluster.pod(ns, "dry")
    assert still is not None and still["status"]["phase"] == "Running"
    again = repeated(cluster.memwatch_events(ns, uid), "MemwatchDryRun")
    assert not again, f"the dry run was repeated: {again}"


@pytest.mark.timeout(180, func_only=True)
def test_7_agent_fast_path_beats_a_100_mib_per_second_hog(
        cluster: Cluster, memwatch: Memwatch, ns: str, recorder: PodRecorder, clock: Any,
        request: pytest.FixtureRequest) -> None:
    missing = None if (ROOT / "controller" / "memwatch" / "agent.py").exists() else \
        "controller/memwatch/agent.py does not exist yet (the agent issue)"
    missing = missing or memwatch.agent_ready()
    if missing:
        # Run it anyway: without the agent the kernel must win this race, which is the point.
        request.applymarker(pytest.mark.xfail(strict=False, reason=f"needs the node agent: {missing}"))

    pod = cluster.create(hog_pod(ns, "fast", ["--rate", "100", "--max", "1000"], "200Mi",
                                 {"memwatch.io/limit": "150Mi"}))
    uid = pod["metadata"]["uid"]

    def acted() -> dict[str, Any] | None:
        hits = [e for e in cluster.memwatch_events(ns, uid) if e["reason"] in ACTION_REASONS]
        return hits[0] if hits else None

    event = wait_for("memwatch to act on the 100 MiB/s hog", acted, 90, poll=0.2, fail=no_oom(recorder, uid))
    clock("acted")
    print(f"\n{event['reason']}: {event['message']}")

    def settled() -> bool:
        hist = recorder.history(uid)
        return hist is not None and (hist.deleted or hist.restarts > 0)

    wait_for("the handled pod to stop", settled, 60, fail=no_oom(recorder, uid))
    assert recorder.oom(uid) is None


@pytest.mark.timeout(420, func_only=True)
def test_8_controller_restart_during_a_breach_neither_acts_twice_nor_misses_the_pod(
        cluster: Cluster, memwatch: Memwatch, ns: str, recorder: PodRecorder, clock: Any) -> None:
    # Two pods: one memwatch has already acted on (dry-run: it stays over its limit, so a memwatch
    # that forgot would act again), and one whose breach starts just before the restart and must
    # last 30s (memwatch.io/for): longer than the old pods' shutdown, so only the new ones can act.
    # Every memwatch pod restarts: the controller and, when deployed, the node agents.
    acted = cluster.create(hog_pod(ns, "acted", GROWS_AND_HOLDS, HARD,
                                   {"memwatch.io/limit": WATCH, "memwatch.io/action": "dry-run"}))
    acted_uid = acted["metadata"]["uid"]
    cluster.wait_running(ns, "acted")
    cluster.wait_event(ns, acted_uid, "MemwatchDryRun", timeout=150, fail=no_oom(recorder, acted_uid))
    clock("first_acted")

    late = cluster.create(hog_pod(ns, "late", GROWS_AND_HOLDS, HARD,
                                  {"memwatch.io/limit": WATCH, "memwatch.io/for": "30s"}))
    late_uid = late["metadata"]["uid"]
    running = cluster.wait_running(ns, "late")
    wait_for("the usage source to see pod late over its limit",
             lambda: (cluster.working_set(running) or 0) > parse_bytes(WATCH), 120, poll=1.0,
             fail=no_oom(recorder, late_uid))
    clock("breach_seen")

    old = {p["metadata"]["name"] for p in memwatch.all_pods()}
    for name in old:
        cluster.remove_pod(memwatch.namespace, name)
    clock("restart")
    new = memwatch.wait_ready(timeout=180)
    assert new["metadata"]["name"] not in old
    if memwatch.agent_daemonset:
        wait_for("new agent pods", lambda: memwatch.agent_ready(exclude=old) is None, 180)
    clock("memwatch_ready_again")

    evicted = cluster.wait_event(ns, late_uid, "MemwatchEvicted", timeout=180, fail=no_oom(recorder, late_uid))
    clock("late_evicted")
    acted_by = (evicted.get("source") or {}).get("host") or "?"
    clock("acted_by", acted_by)
    assert acted_by not in old, f"a memwatch pod acted on pod late during its shutdown: {evicted.get('source')}"

    memwatch.wait_sweeps(SWEEPS, check=untouched(cluster, ns, "acted", acted_uid))
    again = repeated(cluster.memwatch_events(ns, acted_uid), "MemwatchDryRun")
    assert not again, f"the dry run on pod acted was repeated across the restart: {again}"
    evictions = [e for e in cluster.memwatch_events(ns, late_uid) if e["reason"] in ACTION_REASONS]
    assert len(evictions) == 1, f"acted twice on pod late: {[(e['reason'], reporter(e)) for e in evictions]}"
    after = [pod for pod, _ in memwatch.lines(rf"action=would-evict pod={ns}/acted ") if pod not in old]
    assert not after, f"memwatch repeated the dry run after the restart: {after}"


@pytest.mark.timeout(360, func_only=True)
def test_9_protected_namespaces_and_memwatchs_own_pods_are_never_touched(
        cluster: Cluster, memwatch: Memwatch, clock: Any) -> None:
    system_ns = "kube-system"
    name = unique("memwatch-e2e-protected")
    marked: list[tuple[str, str, int]] = []  # memwatch's own pods: name, uid, restarts so far
    try:
        pod = cluster.create(sleeper_pod(system_ns, name, 48, "128Mi", {"memwatch.io/limit": "16Mi"}))
        uid = pod["metadata"]["uid"]
        cluster.wait_running(system_ns, name)
        # memwatch's own pods, annotated with a limit far below their usage.
        for own in memwatch.all_pods():
            if own["metadata"].get("deletionTimestamp") or own["status"].get("phase") != "Running":
                continue  # e.g. agent pods Pending on a benchmark's fake nodes: no memory to judge
            cluster.patch_annotations(memwatch.namespace, own["metadata"]["name"], {"memwatch.io/limit": "16Mi"})
            restarts = sum(int(s.get("restartCount") or 0) for s in own["status"].get("containerStatuses") or [])
            marked.append((own["metadata"]["name"], own["metadata"]["uid"], restarts))

        event = cluster.wait_event(system_ns, uid, "MemwatchProtected", timeout=150)
        assert "kube-system is protected" in event["message"], event["message"]
        for _, own_uid, _ in marked:
            ev = cluster.wait_event(memwatch.namespace, own_uid, "MemwatchProtected", timeout=90)
            assert "memwatch's own pod" in ev["message"], ev["message"]
        clock("protected_events")

        def all_untouched() -> str | None:
            problems = [untouched(cluster, system_ns, name, uid)()]
            problems += [untouched(cluster, memwatch.namespace, n, u, r)() for n, u, r in marked]
            return "; ".join(p for p in problems if p) or None

        memwatch.wait_sweeps(SWEEPS, check=all_untouched)
        assert all_untouched() is None
    finally:
        cluster.remove_pod(system_ns, name, grace=0)
        for own_name, _, _ in marked:
            try:
                cluster.patch_annotations(memwatch.namespace, own_name, {"memwatch.io/limit": None})
            except Exception as exc:  # the pod may be gone: nothing to undo
                print(f"could not remove the annotation from {own_name}: {exc}")
