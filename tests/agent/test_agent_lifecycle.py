"""Issue #9 on the node agent: it uses the same pod lifecycle as the sweep (defects 1, 2, 7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.helpers import UID_B, ApiDouble, MiB, make_pod, set_usage, v1_app
from memwatch.kube import WriteResult
from memwatch.observability import REASON_BLOCKED, REASON_DRY_RUN, REASON_EVICTED

from .test_agent import Clock, make_agent, step

PDB_429 = WriteResult(False, 429, "HTTP 429 Too Many Requests: Cannot evict pod as it would violate the pod's "
                                  "disruption budget.")


class BlockingApi(ApiDouble):
    """An API whose evictions a PodDisruptionBudget refuses while ``blocked``."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked = True
        self.attempts = 0

    def evict(self, namespace: str, name: str, uid: str, grace_period: int | None) -> WriteResult:
        self.attempts += 1
        return PDB_429 if self.blocked else super().evict(namespace, name, uid, grace_period)


def _run(agent: Any, clock: Clock, seconds: float) -> None:
    for _ in range(int(seconds / 0.1)):
        step(agent, clock)


def test_a_blocked_eviction_is_cancelled_when_usage_falls(v1_tree: Path) -> None:
    """0.1 escalated a PDB-blocked eviction to a delete 10 s later although usage had fallen."""
    api = BlockingApi()
    clock = Clock()
    agent = make_agent(v1_tree, api, clock, escalation_timeout=10.0)
    agent.index.upsert(make_pod(annotations={"memwatch.io/limit.app": "200Mi", "memwatch.io/escalate": "true",
                                             "memwatch.io/predict": "false"}))
    _run(agent, clock, 1.0)  # 208Mi > 200Mi: evict, refused
    assert api.attempts >= 1 and api.reasons() == [REASON_BLOCKED]
    set_usage(v1_app(v1_tree), 100 * MiB)
    attempts = api.attempts
    _run(agent, clock, 15.0)
    assert api.deletes == [], "usage fell: the pending eviction must be dropped, never escalated"
    assert api.attempts == attempts


def test_a_blocked_eviction_escalates_while_usage_stays_over(v1_tree: Path) -> None:
    api = BlockingApi()
    clock = Clock()
    agent = make_agent(v1_tree, api, clock, escalation_timeout=10.0)
    agent.index.upsert(make_pod(annotations={"memwatch.io/limit.app": "200Mi", "memwatch.io/escalate": "true",
                                             "memwatch.io/predict": "false"}))
    _run(agent, clock, 12.0)
    assert api.deletes == [("default", "app", UID_B)]
    assert 3 <= api.attempts <= 12, "retries back off instead of evicting every 100 ms"


def test_switching_from_dry_run_to_evict_takes_effect_at_once(v1_tree: Path) -> None:
    api = ApiDouble()
    clock = Clock()
    agent = make_agent(v1_tree, api, clock)
    ann = {"memwatch.io/limit.app": "200Mi", "memwatch.io/action": "dry-run", "memwatch.io/predict": "false"}
    agent.index.upsert(make_pod(annotations=ann))
    _run(agent, clock, 1.0)
    assert api.evictions == [] and api.reasons() == [REASON_DRY_RUN]
    agent.index.upsert(make_pod(annotations={**ann, "memwatch.io/action": "evict"}))
    _run(agent, clock, 0.3)
    assert api.evictions == [("default", "app", UID_B)] and api.reasons() == [REASON_DRY_RUN, REASON_EVICTED]


def test_each_agent_has_its_own_per_node_cap(v1_tree: Path, tmp_path: Path) -> None:
    """The cap of an agent counts that agent's writes only, and is set by its own flag: with two nodes
    the cluster-wide total is up to twice the per-node cap, as documented."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(v1_tree, other)
    apis, agents = [], []
    for tree, node in ((v1_tree, "node1"), (other, "node2")):
        api = ApiDouble()
        agent = make_agent(tree, api, Clock(), node_name=node, node_max_per_minute=1, max_per_minute=100)
        ann = {"memwatch.io/limit": "40Mi", "memwatch.io/predict": "false"}  # both fixture pods are over it
        agent.index.upsert(make_pod(node=node, annotations=ann))
        agent.index.upsert(make_pod(uid="0a9b8c7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d", name="main", qos="Guaranteed",
                                    node=node, annotations=ann,
                                    containers=(("main", "512Mi",
                                                 "aa11bb22cc33dd44ee55ff6600112233445566778899aabbccddeeff00112233"),)))
        apis.append(api)
        agents.append(agent)
    for agent in agents:
        for _ in range(5):
            step(agent)
    assert [len(api.evictions) for api in apis] == [1, 1]
    assert "node node1's cap of 1 evictions per minute reached" in str(apis[0].events)


def test_no_fake_kills_an_agent_that_cannot_kill_evicts_instead(v1_tree: Path, caplog: Any) -> None:
    """Issue #10 item 3: the default chart's agent (no hostPID, no CAP_KILL, read-only cgroups) used to
    'kill' 0 processes every 100 ms and log action=killed. Now: one line, one Event, then eviction."""
    import logging

    from memwatch.capabilities import KillCapability
    from memwatch.observability import REASON_KILL_UNAVAILABLE, REASON_KILLED

    api = ApiDouble()
    clock = Clock()
    confined = KillCapability(version=1, host_pids=False, cap_kill=False, pidfd=True, cgroup_kill=False,
                              events_writable=False)
    agent = make_agent(v1_tree, api, clock)
    agent.capability = confined
    agent.index.upsert(make_pod(annotations={"memwatch.io/limit.app": "200Mi", "memwatch.io/action": "restart",
                                             "memwatch.io/predict": "false"}))
    with caplog.at_level(logging.INFO, logger="memwatch"):
        _run(agent, clock, 2.0)
    assert api.evictions == [("default", "app", UID_B)]
    assert api.reasons() == [REASON_KILL_UNAVAILABLE, REASON_EVICTED]
    assert REASON_KILLED not in api.reasons()
    assert not [r for r in caplog.records if "action=killed" in r.getMessage()]
    assert len([r for r in caplog.records if "action=kill-unavailable" in r.getMessage()]) == 1


def test_one_kill_per_container_instance(v1_tree: Path) -> None:
    import subprocess

    api = ApiDouble()
    clock = Clock()
    agent = make_agent(v1_tree, api, clock)
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        (v1_app(v1_tree) / "cgroup.procs").write_text(f"{procs[0].pid}\n")
        agent.index.upsert(make_pod(annotations={"memwatch.io/limit.app": "200Mi", "memwatch.io/action": "restart",
                                                 "memwatch.io/predict": "false"}))
        step(agent, clock)
        assert procs[0].wait(timeout=5) == -9
        # The fixture cgroup is the same instance (same container ID): a new process in it is not
        # killed again on every sample, however long the usage stays over.
        (v1_app(v1_tree) / "cgroup.procs").write_text(f"{procs[1].pid}\n")
        _run(agent, clock, 1.0)
        assert procs[1].poll() is None
        assert api.reasons().count("MemwatchKilled") == 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
