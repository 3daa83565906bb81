"""memwatch's controller against a real kube-apiserver, kubelet and kernel: every outcome at once.

One controller (in-process, scoped to two test namespaces, sweeping every second, reading the
kubelet Summary API) watches a set of real memory hogs started together, so their memory is
measured in parallel. Each test below asserts one outcome on its own pods:

=============  ======================================  =====================================
pod            annotations / labels                    expected
=============  ======================================  =====================================
evictee        limit 80Mi, holds 160Mi                 evicted (policy/v1beta1), Event, log
sleeper        limit 300Mi, holds 20Mi                 untouched
unannotated    none, holds 160Mi                       not watched, untouched
invalid        limit ``150%abc``                       one InvalidMemwatchAnnotation Event
own            limit 80Mi + memwatch's own label       MemwatchProtected, not evicted
dry-run        limit 80Mi, action dry-run              MemwatchDryRun + would-evict, runs on
escalate       limit 80Mi, PDB minAvailable=2          429 → blocked → deleted after 5s
no-escalate    as above + ``memwatch.io/escalate: false``  blocked, never deleted
guarded-ns     limit 80Mi, in a protected namespace    MemwatchProtected, not evicted
=============  ======================================  =====================================

The last test reads the apiserver audit log for everything this controller sent: no writes to
the pods it watches except the evictions and the one escalated delete.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from memwatch.controller import Controller
from memwatch.kube import Kube, load_client
from memwatch.observability import (
    REASON_BLOCKED,
    REASON_DRY_RUN,
    REASON_ESCALATED,
    REASON_EVICTED,
    REASON_INVALID,
    REASON_PROTECTED,
)
from memwatch.sources import KubeletSource

from .clusterkit import (
    SELF_LABEL,
    LogCapture,
    MiB,
    audited_requests,
    captured_logs,
    forbidden_writes,
    hog_pod,
    holding,
    human_bytes,
    human_seconds,
    identity_for,
    is_running,
    pod_metadata,
    running_controller,
    sleeping,
    wait_for,
    wait_sweeps,
)
from .conftest import Cluster, NamespaceFactory

pytestmark = pytest.mark.cluster

HOLD_MIB = 160  # what each hog holds: twice its watch limit, well under its 400Mi hard limit
LIMIT = "80Mi"
SLEEPER_MIB = 20
ESCALATION_TIMEOUT = 5.0
GUARDED = {"memwatch-it/pdb": "guarded"}
#: Working-set samples refresh every 10-15 s (cadvisor housekeeping): allow for a few rounds.
MEASURED = 120


@dataclass
class Scenario:
    cluster: Cluster
    ns: str
    protected_ns: str
    pods: dict[str, dict[str, Any]]  # name -> the pod as it ran before memwatch started
    controller: Controller
    logs: LogCapture
    started: float
    before: dict[str, dict[str, Any]] = field(default_factory=dict)

    def uid(self, name: str) -> str:
        return str(self.pods[name]["metadata"]["uid"])

    def namespace_of(self, name: str) -> str:
        return str(self.pods[name]["metadata"]["namespace"])

    def events(self, name: str, reason: str | None = None) -> list[dict[str, Any]]:
        return self.cluster.admin.events(self.namespace_of(name), self.uid(name), reason)

    def wait_event(self, name: str, reason: str, timeout: float = MEASURED) -> dict[str, Any]:
        return self.cluster.admin.wait_event(self.namespace_of(name), self.uid(name), reason, timeout)

    def pod(self, name: str) -> dict[str, Any] | None:
        return self.cluster.admin.pod(self.namespace_of(name), name)

    def wait_gone(self, name: str, timeout: float = 30) -> None:
        """Wait until the pod is deleted or terminating."""
        def gone() -> bool:
            pod = self.pod(name)
            return pod is None or pod["metadata"]["uid"] != self.uid(name) or \
                bool(pod["metadata"].get("deletionTimestamp"))

        wait_for(f"pod {name} to be deleted", gone, timeout)

    def assert_running(self, name: str) -> None:
        pod = self.pod(name)
        assert pod is not None and pod["metadata"]["uid"] == self.uid(name), f"{name} is gone"
        assert is_running(pod), f"{name} is not running: {pod.get('status')}"

    def memwatch_events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events(name) if (e.get("source") or {}).get("component") == "memwatch"]

    def actions(self, result: str) -> float:
        value = self.controller.metrics.registry.get_sample_value(
            "memwatch_actions_total", {"result": result, "source": "kubelet"})
        return value or 0.0


@pytest.fixture(scope="module")
def scenario(cluster: Cluster, namespaces: NamespaceFactory) -> Iterator[Scenario]:
    admin = cluster.admin
    ns, protected_ns = namespaces("core"), namespaces("protected")
    limit = {"memwatch.io/limit": LIMIT}
    admin.create_pdb(ns, "guarded", GUARDED, min_available=2)
    specs = {
        "evictee": hog_pod("evictee", holding(HOLD_MIB), limit),
        "sleeper": hog_pod("sleeper", sleeping(SLEEPER_MIB), {"memwatch.io/limit": "300Mi"}),
        "unannotated": hog_pod("unannotated", holding(HOLD_MIB)),
        "invalid": hog_pod("invalid", holding(HOLD_MIB), {"memwatch.io/limit": "150%abc"}),
        "own": hog_pod("own", holding(HOLD_MIB), limit, labels=dict([SELF_LABEL])),
        "dry-run": hog_pod("dry-run", holding(HOLD_MIB), {**limit, "memwatch.io/action": "dry-run"}),
        # escalation comes from the controller's --escalate; this pod opts out
        "escalate": hog_pod("escalate", holding(HOLD_MIB), limit, labels=GUARDED),
        "no-escalate": hog_pod("no-escalate", holding(HOLD_MIB), {**limit, "memwatch.io/escalate": "false"},
                               labels=GUARDED),
    }
    for spec in specs.values():
        admin.create_pod(ns, spec)
    admin.create_pod(protected_ns, hog_pod("guarded-ns", holding(HOLD_MIB), limit))
    pods = admin.wait_running(ns, specs)
    pods.update(admin.wait_running(protected_ns, ["guarded-ns"]))
    # The budget must already refuse before memwatch starts, or the first eviction would pass.
    admin.wait_pdb_blocking(ns, "guarded", healthy=2)
    pods = {name: admin.pod(pod["metadata"]["namespace"], name) or pod for name, pod in pods.items()}
    with captured_logs() as logs, running_controller(
            cluster.kubeconfig, [ns, protected_ns], "--protected-namespace", protected_ns,
            "--escalate", "--escalation-timeout", f"{ESCALATION_TIMEOUT:g}s", tag="core") as controller:
        yield Scenario(cluster, ns, protected_ns, pods, controller, logs, time.time(),
                       before={name: pod_metadata(pod) for name, pod in pods.items()})


@pytest.mark.timeout(240)
def test_kubelet_source_reads_real_working_set(scenario: Scenario, cluster: Cluster) -> None:
    """KubeletSource.fetch: real working-set bytes near what the hogs hold, recent, one GET per node."""
    kube = Kube(load_client(cluster.kubeconfig))
    source = KubeletSource(kube)
    def listed() -> dict[str, Any] | None:
        index = {r.name: r for r in scenario.controller.index.snapshot()}
        return index if {"own", "sleeper", "guarded-ns"} <= set(index) else None

    index = wait_for("the index to list the pods", listed, 60)
    records = [index["own"], index["sleeper"], index["guarded-ns"]]  # two namespaces, one node
    fetches = 0

    bounds = {"own": (HOLD_MIB - 8, HOLD_MIB + 40), "guarded-ns": (HOLD_MIB - 8, HOLD_MIB + 40),
              "sleeper": (SLEEPER_MIB - 2, SLEEPER_MIB + 20)}

    def measured() -> dict[str, Any] | None:
        # The kubelet (cAdvisor) samples each container on its own housekeeping timer, so one
        # hog at its full size says nothing of another that may have been sampled mid-growth:
        # wait until every hog has been sampled at its full size.
        nonlocal fetches
        fetches += 1
        got = source.fetch(records)
        full = all(index[name].uid in got and got[index[name].uid].total >= low * MiB
                   for name, (low, _) in bounds.items())
        return got if full else None

    samples = wait_for("the kubelet to report every hog's full working set", measured, MEASURED, interval=2)
    now = time.time()
    # One Summary GET straight to the kubelet per node per fetch, and one Node GET (its address,
    # cached), nothing else: never the API server's node proxy.
    assert kube.requests == {("GET", "nodes/stats"): fetches, ("GET", "nodes"): 1}, \
        "one Summary GET per node per fetch, nothing else"
    assert set(samples) == {r.uid for r in records}
    for name, (low, high) in bounds.items():
        usage = samples[index[name].uid]
        assert usage.source == "kubelet"
        assert low * MiB <= usage.total <= high * MiB, f"{name}: working set {usage.total / MiB:.1f}Mi"
        assert set(usage.containers) == {"hog"}
        assert -2 <= now - usage.timestamp <= 45, f"{name}: sample {now - usage.timestamp:.1f}s old"
    # The controller's own sweeps: at most one Summary GET per sweep (one node hosts every pod);
    # the sweep under way may have read already but not yet counted itself. Its first sweep waits
    # for every one of its watches to have listed (pods, Events, policies, namespaces), which under
    # load can come after this test's own read above: wait for it rather than assume it.
    wait_sweeps(scenario.controller, 1, timeout=60)
    summaries = scenario.controller.kube.request_count("GET", "nodes/stats")
    assert 0 < summaries <= scenario.controller.sweeper.sweeps + 1


@pytest.mark.timeout(240)
def test_evicts_over_limit_pod_with_policy_v1beta1(scenario: Scenario, cluster: Cluster) -> None:
    event = scenario.wait_event("evictee", REASON_EVICTED)
    scenario.wait_gone("evictee")
    assert scenario.controller.kube.eviction_version() == "policy/v1beta1"  # Kubernetes 1.20
    assert event["type"] == "Normal" and event["source"]["component"] == "memwatch"
    m = re.search(rf"memory (\S+) is over the memwatch limit {LIMIT} \(pod, source kubelet, sample (\S+) old\)",
                  event["message"])
    assert m, event["message"]
    assert human_bytes(m[1]) > human_bytes(LIMIT)
    line = scenario.logs.wait(
        rf"action=evicted pod={scenario.ns}/evictee node={cluster.node} usage=(?P<usage>\S+) limit={LIMIT} "
        r"scope=pod source=kubelet sample_age=(?P<age>\S+) latency=(?P<latency>\S+)")
    assert human_bytes(line["usage"]) > human_bytes(LIMIT)
    assert human_seconds(line["age"]) <= 60 and human_seconds(line["latency"]) < 10
    assert scenario.actions("evicted") == 1
    assert len(scenario.events("evictee", REASON_EVICTED)) == 1


@pytest.mark.timeout(180)
def test_pdb_blocks_eviction_then_escalates(scenario: Scenario) -> None:
    blocked = scenario.wait_event("escalate", REASON_BLOCKED)
    assert blocked["type"] == "Warning"
    assert "escalating to delete in" in blocked["message"], blocked["message"]
    escalated = scenario.wait_event("escalate", REASON_ESCALATED, timeout=60)
    assert "Deleted after the eviction stayed blocked" in escalated["message"]
    scenario.wait_gone("escalate")
    first_refusal = scenario.logs.entries(rf"action=blocked pod={scenario.ns}/escalate ")[0][0]
    deleted = scenario.logs.entries(rf"action=escalated pod={scenario.ns}/escalate ")[0][0]
    assert ESCALATION_TIMEOUT - 0.5 <= deleted - first_refusal <= ESCALATION_TIMEOUT + 5

    # Its neighbour opted out: refused just as long, and longer, it is retried but never deleted.
    keep_blocked = scenario.wait_event("no-escalate", REASON_BLOCKED)
    assert "escalation is off" in keep_blocked["message"], keep_blocked["message"]
    keep_first = scenario.logs.entries(rf"action=blocked pod={scenario.ns}/no-escalate ")[0][0]
    evictions = scenario.controller.kube.request_count("POST", "pods/eviction")
    wait_for("the eviction to stay refused for twice the escalation timeout, with retries",
             lambda: time.time() - keep_first >= 2 * ESCALATION_TIMEOUT + 1 and
             scenario.controller.kube.request_count("POST", "pods/eviction") >= evictions + 2, 60)
    scenario.assert_running("no-escalate")
    assert [e["reason"] for e in scenario.memwatch_events("no-escalate")] == [REASON_BLOCKED]
    assert scenario.actions("escalated") == 1


@pytest.mark.timeout(180)
def test_invalid_annotation_one_warning_event(scenario: Scenario) -> None:
    event = scenario.wait_event("invalid", REASON_INVALID)
    wait_sweeps(scenario.controller, 4)
    assert event["type"] == "Warning"
    assert "memwatch.io/limit='150%abc'" in event["message"], event["message"]
    assert [e["reason"] for e in scenario.memwatch_events("invalid")] == [REASON_INVALID]
    lines = scenario.logs.lines(rf"action=ignored pod={scenario.ns}/invalid reason={REASON_INVALID} ")
    assert len(lines) == 1 and "150%abc" in lines[0]
    record = next(r for r in scenario.controller.index.snapshot() if r.name == "invalid")
    assert record.policy is None and record.problems
    scenario.assert_running("invalid")


@pytest.mark.timeout(180)
def test_protected_pods_are_not_evicted(scenario: Scenario) -> None:
    own = scenario.wait_event("own", REASON_PROTECTED)
    assert own["type"] == "Warning" and "memwatch's own pod" in own["message"], own["message"]
    other = scenario.wait_event("guarded-ns", REASON_PROTECTED)
    assert f"namespace {scenario.protected_ns} is protected" in other["message"], other["message"]
    scenario.logs.wait(rf"action=protected pod={scenario.ns}/own node=\S+ usage=\S+ limit={LIMIT} ")
    wait_sweeps(scenario.controller, 3)
    for name in ("own", "guarded-ns"):
        scenario.assert_running(name)
        assert [e["reason"] for e in scenario.memwatch_events(name)] == [REASON_PROTECTED]


@pytest.mark.timeout(180)
def test_dry_run_reports_and_leaves_the_pod_running(scenario: Scenario) -> None:
    event = scenario.wait_event("dry-run", REASON_DRY_RUN)
    assert event["message"].startswith("Dry run: would evict: memory "), event["message"]
    scenario.logs.wait(rf"action=would-evict pod={scenario.ns}/dry-run node=\S+ usage=\S+ limit={LIMIT} "
                       r"scope=pod source=kubelet ")
    wait_sweeps(scenario.controller, 3)
    scenario.assert_running("dry-run")
    assert [e["reason"] for e in scenario.memwatch_events("dry-run")] == [REASON_DRY_RUN]
    assert len(scenario.logs.lines(rf"action=would-evict pod={scenario.ns}/dry-run ")) == 1
    assert scenario.actions("would-evict") == 1


@pytest.mark.timeout(180)
def test_under_limit_and_unannotated_pods_are_untouched(scenario: Scenario) -> None:
    # Wait until memwatch has measured and judged the sleeper (it is under its limit) a few times.
    wait_for("the first action (memory is measured)", lambda: scenario.actions("evicted"), MEASURED)
    wait_sweeps(scenario.controller, 3)
    watched = {r.name for r in scenario.controller.index.snapshot()}
    assert "unannotated" not in watched and "sleeper" in watched
    for name in ("sleeper", "unannotated"):
        scenario.assert_running(name)
        assert scenario.memwatch_events(name) == []
        assert not scenario.logs.lines(rf"action=\S+ pod={scenario.ns}/{name} ")


@pytest.mark.timeout(180)
def test_no_writes_to_watched_pods(scenario: Scenario, cluster: Cluster) -> None:
    """Everything this controller sent: only evictions, the escalated delete and Events were writes."""
    scenario.wait_event("evictee", REASON_EVICTED)
    scenario.wait_event("escalate", REASON_ESCALATED, timeout=60)
    scenario.wait_event("no-escalate", REASON_BLOCKED)
    # 1. memwatch's own request counters (its one HTTP module counts every request).
    verbs = {(verb, resource) for verb, resource in scenario.controller.kube.requests}
    writes = {v for v in verbs if v[0] != "GET"}
    assert writes <= {("POST", "events"), ("POST", "pods/eviction"), ("DELETE", "pods")}, writes
    # 2. The pods memwatch never acted on are byte-for-byte as they were: same resourceVersion,
    #    no annotation, label or finalizer added.
    for name in ("sleeper", "unannotated", "invalid", "own", "dry-run", "no-escalate", "guarded-ns"):
        pod = scenario.pod(name)
        assert pod is not None
        assert pod_metadata(pod) == scenario.before[name], f"{name} was modified"
    # 3. The apiserver's own record of every request made as memwatch's identity.
    if cluster.audit_log is None:
        warnings.warn("no apiserver audit log: checked memwatch's request counters and the pods only",
                      stacklevel=1)
        return
    user = identity_for("core")

    def audited() -> list[Any] | None:
        requests = audited_requests(cluster.audit_log, user)  # type: ignore[arg-type]
        done = {(r.verb, r.subresource, r.name) for r in requests if r.resource == "pods" and r.writes}
        return requests if {("create", "eviction", "evictee"), ("delete", "", "escalate")} <= done else None

    requests = wait_for("the audit log to record memwatch's writes", audited, 30)
    assert forbidden_writes(requests) == []
    pod_writes = {(r.verb, r.subresource, r.name) for r in requests if r.resource == "pods" and r.writes}
    assert pod_writes == {("create", "eviction", "evictee"), ("create", "eviction", "escalate"),
                          ("create", "eviction", "no-escalate"), ("delete", "", "escalate")}, pod_writes
    assert not [r for r in requests if r.verb in ("patch", "update") and r.resource == "pods"]
    codes = {r.code for r in requests if r.subresource == "eviction" and r.name == "no-escalate"}
    assert codes == {429}, codes
