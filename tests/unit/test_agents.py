"""Who acts on a pod (:class:`memwatch.agents.AgentTracker`): which pods are left to their node's
agent, and that asking costs one lookup whatever the number of agents (the sweep asks it of every
watched pod: a scan of the agents cost 10,000 pods x 500 agents, ~60 ms a sweep)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from memwatch.agents import AgentTracker
from memwatch.podindex import PodRecord, build_record
from memwatch.policy import Defaults


def _agent(uid: str, node: Any, ready: bool = True, phase: str = "Running", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"memwatch-agent-{uid}", "namespace": "memwatch", "uid": uid}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-04T10:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": node},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def _record(node: str, action: str = "evict") -> PodRecord:
    pod = {"metadata": {"name": "web", "namespace": "app", "uid": f"pod-on-{node}",
                        "annotations": {"memwatch.io/limit": "64Mi", "memwatch.io/action": action}},
           "spec": {"nodeName": node, "containers": [{"name": "app"}]},
           "status": {"phase": "Running"}}
    rec = build_record(pod, Defaults(), lambda pod: None)
    assert rec is not None and rec.policy is not None, rec
    return rec


def test_a_pod_is_left_to_a_ready_agent_on_its_node_and_to_no_other() -> None:
    tracker = AgentTracker("all")
    tracker.replace([_agent("a1", "n1"), _agent("a2", "n2", ready=False), _agent("a3", "n3", phase="Pending"),
                     _agent("a4", "n4", deleting=True)], lambda obj: True)
    assert tracker.defer(_record("n1")) == "the memwatch agent on node n1 handles it"
    for node in ("n2", "n3", "n4", "n5"):  # not Ready, not Running, being deleted, no agent
        assert tracker.defer(_record(node)) is None, node
    assert tracker.nodes() == frozenset({"n1"})


def test_coverage_follows_the_agents_watch() -> None:
    tracker = AgentTracker("all")
    tracker.upsert(_agent("a1", "n1"))
    tracker.upsert(_agent("a2", "n1"))  # a second agent pod on the node (a rollout): either covers it
    assert tracker.defer(_record("n1"))
    tracker.remove(_agent("a1", "n1"))
    assert tracker.defer(_record("n1")), "the node's other agent still covers it"
    tracker.upsert(_agent("a2", "n1", ready=False))
    assert tracker.defer(_record("n1")) is None, "no Ready agent left on the node: the controller acts"
    tracker.upsert(_agent("a3", "n2"))
    tracker.replace([_agent("a4", "n3")], lambda obj: True)  # a re-LIST is the whole truth
    assert [bool(tracker.defer(_record(n))) for n in ("n1", "n2", "n3")] == [False, False, True]


@pytest.mark.parametrize(("mode", "action", "deferred"), [
    ("none", "evict", False), ("none", "restart", False),
    ("restart", "evict", False), ("restart", "restart", True),
    ("all", "evict", True), ("all", "delete", True), ("all", "restart", True),
])
def test_the_mode_says_which_pods_are_the_agents(mode: str, action: str, deferred: bool) -> None:
    tracker = AgentTracker(mode)
    tracker.upsert(_agent("a1", "n1"))
    assert bool(tracker.defer(_record("n1", action))) is deferred


class _Node(str):
    """A node name that counts how often it is compared for equality."""

    compared = 0
    __hash__ = str.__hash__

    def __eq__(self, other: object) -> bool:
        _Node.compared += 1
        return str.__eq__(self, other)


def test_asking_costs_one_lookup_whatever_the_number_of_agents() -> None:
    tracker = AgentTracker("all")
    tracker.replace([_agent(f"a{i}", f"node-{i}") for i in range(1000)], lambda obj: True)
    elsewhere = dataclasses.replace(_record("x"), node=_Node("elsewhere"))  # no agent there: a scan's worst case
    covered = dataclasses.replace(_record("x"), node=_Node("node-999"))
    _Node.compared = 0
    assert tracker.defer(elsewhere) is None
    assert tracker.defer(covered)
    assert _Node.compared <= 1, f"the pods' nodes were compared with {_Node.compared} agents' to answer for two pods"
