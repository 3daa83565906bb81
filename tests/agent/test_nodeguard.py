"""The node guard inside the agent, on fixture cgroup trees (v1 cgroupfs, v2 systemd) and an API double.

cgroup v2 cannot be mounted on this machine: the v2 paths (``kubepods.slice``, ``memory.max``,
``memory.pressure``) are covered by the v2 fixture tree only.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.helpers import UID_B, UID_G, ApiDouble, MiB, make_pod, make_settings
from agent.test_agent import Clock, step
from memwatch.agent import Agent
from memwatch.cgroups import CgroupSource, Hierarchy
from memwatch.kube import WriteResult
from memwatch.nodeguard import REASON_NODE_PRESSURE, GuardConfig, Level, Line, Mode
from memwatch.nodesignals import NodeSignalReader

GiB = 1 << 30
#: The fixture kubepods' working set: usage 378675200 - total_inactive_file 41943040.
KUBEPODS_WS = 378675200 - 41943040
PSI = "some avg10={s:.2f} avg60=0.00 avg300=0.00 total=1000\nfull avg10={f:.2f} avg60=0.00 avg300=0.00 total=500\n"


class Api(ApiDouble):
    """The API double, recording grace periods, with a PDB that can refuse evictions of chosen pods."""

    def __init__(self) -> None:
        super().__init__()
        self.graces: list[tuple[str, str, int | None]] = []
        self.pdb: set[str] = set()

    def evict(self, namespace: str, name: str, uid: str, grace_period: int | None) -> WriteResult:
        if uid in self.pdb:
            return WriteResult(False, 429, "Cannot evict pod as it would violate the pod's disruption budget.")
        self.graces.append(("evict", name, grace_period))
        return super().evict(namespace, name, uid, grace_period)

    def delete_pod(self, namespace: str, name: str, uid: str, grace_period: int | None) -> WriteResult:
        self.graces.append(("delete", name, grace_period))
        return super().delete_pod(namespace, name, uid, grace_period)

    def on(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["reason"] == REASON_NODE_PRESSURE and e["involvedObject"]["kind"] == kind]


def kubepods(tree: Path) -> Path:
    return tree / "memory" / "kubepods" if (tree / "memory").is_dir() else tree / "kubepods.slice"


def set_limit(tree: Path, room: int) -> None:
    """Give kubepods a hard limit ``room`` bytes above its working set."""
    kp = kubepods(tree)
    name = "memory.limit_in_bytes" if (kp / "memory.limit_in_bytes").exists() else "memory.max"
    (kp / name).write_text(f"{KUBEPODS_WS + room}\n")


def pod_dir(tree: Path, uid: str) -> Path:
    src = CgroupSource(Hierarchy.detect(tree))
    path = src.find_pod(uid, "Burstable" if uid == UID_B else "Guaranteed")
    assert path is not None
    return path


def guarded(tree: Path, api: Api | None = None, mode: Mode = Mode.ON, soft: str = "64Mi", hard: str = "16Mi",
            available: int = 20 * GiB, psi_full: float | None = None, **settings: Any) -> tuple[Agent, Clock, Path]:
    clock = Clock()
    cfg = GuardConfig(mode, Line.parse(soft), Line.parse(hard), psi_full=psi_full, grace=5, wait=30.0,
                      max_per_minute=settings.pop("cap", 5))
    source = CgroupSource(Hierarchy.detect(tree), clock=clock.wall)
    agent = Agent(make_settings(tree, node_guard=cfg, **settings), kube=api, source=source, clock=clock,
                  watch=False)
    assert agent.guard is not None
    proc = tree / "proc"
    (proc / "pressure").mkdir(parents=True, exist_ok=True)
    (proc / "pressure" / "memory").write_text(PSI.format(s=0, f=0))
    agent.guard.reader = NodeSignalReader(source.hierarchy, proc=proc, meminfo=lambda: (24 * GiB, available),
                                          clock=clock.wall, psi_trigger=False)
    # Two pods on the node, annotated for nothing: the guard sees every pod, not only watched ones.
    agent.guard.pods.upsert(make_pod(UID_B, name="burstable", annotations={}))
    agent.guard.pods.upsert(make_pod(UID_G, name="guaranteed", annotations={}, qos="Guaranteed",
                                     containers=(("main", "64Mi", None),)))
    return agent, clock, proc


@pytest.fixture(params=["v1", "v2"])
def tree(request: pytest.FixtureRequest, v1_tree: Path, v2_tree: Path) -> Path:
    return v1_tree if request.param == "v1" else v2_tree


def test_off_means_no_guard(tree: Path) -> None:
    agent = Agent(make_settings(tree), kube=None, source=CgroupSource(Hierarchy.detect(tree)), watch=False)
    assert agent.guard is None and agent.health()["node_guard"] is None


def test_signals_from_the_fixture_tree(tree: Path) -> None:
    set_limit(tree, 40 * MiB)
    agent, _, proc = guarded(tree)
    assert agent.guard is not None
    sig = agent.guard.reader.read()
    assert sig.kubepods_usage == KUBEPODS_WS
    assert sig.kubepods_limit == KUBEPODS_WS + 40 * MiB
    assert sig.kubepods_available == 40 * MiB
    assert sig.mem_available == 20 * GiB and sig.available == 40 * MiB
    assert sig.psi is not None and sig.psi.full_total == 500
    if (tree / "kubepods.slice").is_dir():  # v2: kubepods' own memory.pressure
        agent.guard.reader.close()
        (kubepods(tree) / "memory.pressure").write_text(PSI.format(s=3, f=1.5))
        agent.guard.reader = NodeSignalReader(Hierarchy.detect(tree), proc=proc, psi_trigger=False)
        sig = agent.guard.reader.read()
        assert sig.kubepods_psi is not None and sig.psi_full_avg10 == 1.5


def test_no_limit_no_pressure_nothing_happens(tree: Path) -> None:
    api = Api()
    agent, clock, _ = guarded(tree, api)
    for _ in range(5):
        step(agent, clock)
    assert agent.guard is not None and agent.guard.level is Level.OK
    assert api.evictions == [] and api.events == []


def test_soft_line_evicts_one_victim_and_names_the_rule(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    set_limit(tree, 40 * MiB)  # 40Mi of room: under the 64Mi soft line, over the 16Mi hard one
    api = Api()
    agent, clock, _ = guarded(tree, api)
    with caplog.at_level(logging.INFO, "memwatch.nodeguard"):
        step(agent, clock)
        step(agent, clock)  # the worker's result (the eviction went through) is read on the next sample
    assert api.evictions == [("default", "burstable", UID_B)]  # Burstable before Guaranteed
    assert api.graces == [("evict", "burstable", 5)]  # the pod's 30s, capped by --node-guard-grace
    line = next(r.getMessage() for r in caplog.records if "action=evicted" in r.getMessage())
    assert line.startswith("action=evicted reason=node-pressure node=node1 available=40Mi "
                           "kubepods_usage=321Mi psi_full_avg10=")
    assert "psi_full_avg10=0.00 rule=qos-class pod=default/burstable" in line
    (pod_ev,), (node_ev,) = api.on("Pod"), api.on("Node")
    assert pod_ev["involvedObject"]["uid"] == UID_B and "rule qos-class" in pod_ev["message"]
    assert node_ev["metadata"]["namespace"] == "default" and "default/burstable" in node_ev["message"]
    # Still short, and the victim still holds its memory: nobody else is chosen, whatever the readings say.
    for _ in range(20):
        step(agent, clock)
    assert len(api.evictions) == 1
    # The victim's cgroup goes away (the kubelet ended it): the next reading may choose again.
    shutil.rmtree(pod_dir(tree, UID_B))
    agent.guard.pods.remove(make_pod(UID_B))  # type: ignore[union-attr]
    step(agent, clock)  # freed: the guard chooses again in the same sample
    step(agent, clock)  # the eviction's result: its line and Events
    assert api.evictions[-1] == ("default", "guaranteed", UID_G)
    assert api.on("Pod")[-1]["message"].count("rule only-candidate") == 1
    text = agent.metrics.registry.get_sample_value("memwatch_node_guard_actions_total",
                                                   {"action": "evicted", "rule": "qos-class"})
    assert text == 1.0


def test_a_victim_that_is_never_freed_times_out(tree: Path) -> None:
    set_limit(tree, 40 * MiB)
    api = Api()
    agent, clock, _ = guarded(tree, api)
    step(agent, clock)
    assert len(api.evictions) == 1
    step(agent, clock, seconds=31.0)  # past --node-guard-wait
    step(agent, clock)
    step(agent, clock)
    assert [e[1] for e in api.evictions] == ["burstable", "guaranteed"]


def test_hard_line_deletes_with_grace_zero_without_the_kill_rung(tree: Path) -> None:
    set_limit(tree, 8 * MiB)  # under the 16Mi hard line
    api = Api()
    agent, clock, _ = guarded(tree, api)
    step(agent, clock)
    step(agent, clock)
    assert api.graces == [("delete", "burstable", 0)] and api.evictions == []
    assert api.on("Pod")[0]["message"].startswith("Deleted (grace 0) by memwatch's node guard")


def test_a_pending_eviction_escalates_at_the_hard_line(tree: Path) -> None:
    set_limit(tree, 40 * MiB)
    api = Api()
    agent, clock, _ = guarded(tree, api)
    step(agent, clock)
    set_limit(tree, 8 * MiB)
    step(agent, clock)
    step(agent, clock)
    assert api.graces == [("evict", "burstable", 5), ("delete", "burstable", 0)]  # the same victim


def test_pdb_refusal_moves_on_to_the_next_pod(tree: Path) -> None:
    set_limit(tree, 40 * MiB)
    api = Api()
    api.pdb.add(UID_B)
    agent, clock, _ = guarded(tree, api)
    step(agent, clock)
    step(agent, clock)
    step(agent, clock)
    assert api.evictions == [("default", "guaranteed", UID_G)]
    assert any("disruption budget" in e["message"] for e in api.on("Pod"))


def test_never_and_protected_pods_are_never_chosen(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    set_limit(tree, 40 * MiB)
    api = Api()
    agent, clock, _ = guarded(tree, api)
    assert agent.guard is not None
    agent.guard.pods.upsert(make_pod(UID_B, name="burstable", annotations={"memwatch.io/node-pressure": "never"}))
    agent.guard.pods.upsert(make_pod(UID_G, name="guaranteed", namespace="kube-system", annotations={},
                                     qos="Guaranteed", containers=(("main", "64Mi", None),)))
    with caplog.at_level(logging.WARNING, "memwatch.nodeguard"):
        for _ in range(3):
            step(agent, clock)
    assert api.evictions == [] and api.deletes == []
    assert sum("no pod may be chosen" in r.getMessage() for r in caplog.records) == 1  # said once


def test_dry_run_writes_nothing_and_reports_once(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    set_limit(tree, 40 * MiB)
    api = Api()
    agent, clock, _ = guarded(tree, api, mode=Mode.DRY_RUN)
    with caplog.at_level(logging.INFO, "memwatch.nodeguard"):
        for _ in range(10):
            step(agent, clock)
    assert api.evictions == [] and api.deletes == []
    assert sum("action=would-evict" in r.getMessage() for r in caplog.records) == 1
    assert len(api.on("Pod")) == 1 and api.on("Pod")[0]["message"].startswith("Dry run: would-evict")


def test_psi_full_line_acts(tree: Path) -> None:
    api = Api()
    agent, clock, proc = guarded(tree, api, psi_full=20.0)
    step(agent, clock)
    assert api.evictions == []
    (proc / "pressure" / "memory").write_text(PSI.format(s=40, f=25))
    step(agent, clock)
    assert api.evictions == [("default", "burstable", UID_B)]


def test_the_guard_has_its_own_cap(tree: Path) -> None:
    set_limit(tree, 40 * MiB)
    api = Api()
    agent, clock, _ = guarded(tree, api, cap=1)
    step(agent, clock)
    shutil.rmtree(pod_dir(tree, UID_B))
    for _ in range(5):
        step(agent, clock)
    assert len(api.evictions) == 1  # capped: one per minute


def test_the_cap_counts_victims_not_rungs(tree: Path) -> None:
    """With a cap of one a minute, the one victim's eviction is still escalated at the hard line:
    an escalation is the same victim, counted once (on the cluster, four hogs at once spent a cap of
    five on two evictions and their two kills, and the kernel took the rest)."""
    set_limit(tree, 40 * MiB)
    api = Api()
    agent, clock, _ = guarded(tree, api, cap=1)
    step(agent, clock)
    set_limit(tree, 8 * MiB)
    step(agent, clock)
    step(agent, clock)
    assert api.graces == [("evict", "burstable", 5), ("delete", "burstable", 0)]
    shutil.rmtree(pod_dir(tree, UID_B))  # freed: the next victim is a new one, and the cap is spent
    for _ in range(3):
        step(agent, clock)
    assert [g[1] for g in api.graces] == ["burstable", "burstable"]


def test_node_memavailable_alone_triggers(tree: Path) -> None:
    api = Api()
    agent, clock, _ = guarded(tree, api, soft="10%", hard="1%", available=GiB)  # 1Gi of 24Gi: under 10%
    step(agent, clock)
    step(agent, clock)
    assert api.evictions == [("default", "burstable", UID_B)]
    assert "node MemAvailable" in api.on("Node")[0]["message"]


def test_psi_trigger_refusal_is_said_once(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    """On the real /proc: this machine's kernel refuses PSI triggers (EINVAL); either way, one line."""
    reader = NodeSignalReader(Hierarchy.detect(tree))
    with caplog.at_level(logging.INFO, "memwatch.nodeguard"):
        reader.arm(None)
        reader.arm(None)
    lines = [r.getMessage() for r in caplog.records if "PSI trigger" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "falling back to sampling" in lines[0] or "armed" in lines[0]
    reader.close()


def test_missing_kubepods_is_said_once_and_node_figures_still_count(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "cg"
    (root / "memory").mkdir(parents=True)
    (root / "memory" / "memory.usage_in_bytes").write_text("0\n")
    reader = NodeSignalReader(Hierarchy.detect(root), proc=tmp_path / "noproc", meminfo=lambda: (GiB, GiB // 2),
                              psi_trigger=False)
    with caplog.at_level(logging.WARNING, "memwatch.nodeguard"):
        sigs = [reader.read() for _ in range(3)]
    assert sigs[-1].mem_available == GiB // 2 and sigs[-1].kubepods_usage is None and sigs[-1].psi is None
    assert sum("no kubepods cgroup" in r.getMessage() for r in caplog.records) == 1
    assert sum("no pressure stall information" in r.getMessage() for r in caplog.records) == 1


def test_the_tee_feeds_the_guard_from_the_agents_own_watch(v1_tree: Path) -> None:
    from agent.test_agent import make_agent  # noqa: F401  (the same construction as the other agent tests)
    from memwatch.watcher import Tee

    cfg = GuardConfig(Mode.DRY_RUN)
    agent = Agent(make_settings(v1_tree, node_guard=cfg), kube=object(), source=CgroupSource(Hierarchy.detect(v1_tree)),  # type: ignore[arg-type]
                  watch=True)
    assert agent.guard is not None and agent.watchers
    pods = [w for w in agent.watchers if w.resource == "pods"]
    assert pods and all(isinstance(w.index, Tee) for w in pods)
    assert not any(isinstance(w.index, Tee) for w in agent.watchers if w.resource != "pods")  # Events: not pods
    pods[0].index.upsert(make_pod(UID_B, annotations={}))  # not watched for a limit...
    assert len(agent.index) == 0 and len(agent.guard.pods) == 1  # ...but the guard knows it
    narrowed = Agent(make_settings(v1_tree, node_guard=cfg, label_selector="memwatch.io/watch=true"),
                     kube=object(), source=CgroupSource(Hierarchy.detect(v1_tree)), watch=True)  # type: ignore[arg-type]
    narrowed_pods = [w for w in narrowed.watchers if w.resource == "pods"]
    assert len(narrowed_pods) == 2 and narrowed_pods[1].label_selector == ""


def test_evict_false_leaves_the_api_alone(tree: Path) -> None:
    set_limit(tree, 8 * MiB)  # past the hard line, but no kill rung and no API actions allowed
    api = Api()
    agent, clock, _ = guarded(tree, api, evict=False)
    for _ in range(3):
        step(agent, clock)
    assert api.graces == [] and api.on("Pod") == []


def test_a_spent_restart_budget_does_not_hold_the_guard_and_it_does_not_count(tree: Path) -> None:
    """README "Protecting the node": saving the node comes before a workload's restart budget, as the
    kubelet's node-pressure eviction does; the guard's own per-node cap bounds it."""
    from memwatch.policy import RestartBudget

    set_limit(tree, 40 * MiB)
    api = Api()
    agent, clock, _ = guarded(tree, api)
    assert agent.guard is not None
    pod = make_pod(UID_B, name="burstable", annotations={})
    pod["metadata"]["labels"] = {"pod-template-hash": "5d9c8"}
    pod["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d9c8",
                                           "uid": "rs-1", "controller": True}]
    agent.guard.pods.upsert(pod)
    book = agent.recorder.budget
    now = clock.wall()
    for i in range(3):  # the default budget, 3/1h, spent on Deployment/web
        book.record("default", "Deployment/web", now - 60 * (i + 1), f"default/earlier-{i}")
    spent = RestartBudget(3, 3600.0)
    assert book.state("default", "Deployment/web", spent, now).used == 3
    step(agent, clock)
    step(agent, clock)
    assert api.evictions == [("default", "burstable", UID_B)]
    assert book.state("default", "Deployment/web", spent, clock.wall()).used == 3
