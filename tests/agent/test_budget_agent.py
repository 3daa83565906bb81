"""The node agent honours the restart budget too: the same hold as the controller's (the enforcer's),
for its evictions and for a kill in place (``memwatch.io/action: restart``)."""

from __future__ import annotations

import logging
import signal
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.helpers import UID_B, ApiDouble, MiB, make_pod, set_usage, v1_app
from memwatch.budget import reference
from memwatch.capabilities import KillCapability
from memwatch.observability import REASON_BUDGET_EXHAUSTED, REASON_EVICTED, REASON_KILLED

from .test_agent import Clock, make_agent, step

CAN_KILL = KillCapability(version=1, host_pids=True, cap_kill=True, pidfd=True, cgroup_kill=False,
                          events_writable=True)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def replica(**annotations: str) -> dict[str, Any]:
    """The fixture tree's burstable pod, as a pod of Deployment web."""
    pod = make_pod(name="web-5d4f8c7b9-x1", annotations={"memwatch.io/limit.app": "200Mi",
                                                         "memwatch.io/predict": "false", **annotations})
    pod["metadata"]["labels"] = {"pod-template-hash": "5d4f8c7b9"}
    pod["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d4f8c7b9",
                                           "uid": "rs", "controller": True}]
    return pod


def evicted_before(at: float, n: int) -> dict[str, Any]:
    """An Event of memwatch's (the controller's, or this agent before a restart) on an earlier pod of web."""
    return {"metadata": {"name": f"web-old-{n}.memwatch.{n:012x}", "namespace": "default"},
            "reason": REASON_EVICTED, "type": "Normal",
            "involvedObject": {"kind": "Pod", "namespace": "default", "name": f"web-old-{n}", "uid": f"old-{n}"},
            "related": reference("default", "Deployment/web"), "source": {"component": "memwatch"},
            "firstTimestamp": iso(at), "lastTimestamp": iso(at)}


def test_the_agent_holds_its_eviction_while_the_budget_is_spent(v1_tree: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    api = ApiDouble()
    clock = Clock()
    agent = make_agent(v1_tree, api, clock)
    for n, ago in enumerate((300, 200, 100)):
        agent.recorder.learn(evicted_before(clock.now - ago, n))
    agent.index.upsert(replica(**{"memwatch.io/restart-budget": "3/10m"}))
    with caplog.at_level(logging.INFO, logger="memwatch"):
        for _ in range(30):  # 3 s at 100 ms: over its limit (208Mi > 200Mi) all along
            step(agent, clock)
    assert api.evictions == []
    assert api.reasons() == [REASON_BUDGET_EXHAUSTED]  # one Event, not one per sample
    event = api.events[0]
    assert event["type"] == "Warning" and event["related"]["name"] == "web"
    assert "would have evicted; restart budget 3/10m of Deployment/web spent (3 actions since" in event["message"]
    held = [r.getMessage() for r in caplog.records if "action=budget-exhausted" in r.getMessage()]
    assert len(held) == 1 and "source=cgroup" in held[0]
    assert agent.metrics.registry.get_sample_value("memwatch_budget_exhausted_total", {"source": "cgroup"}) == 1
    # The oldest action leaves the window (10 minutes after it): the agent evicts, and counts it.
    clock.now += 300
    for _ in range(3):
        step(agent, clock)
    assert api.evictions == [("default", "web-5d4f8c7b9-x1", UID_B)]
    assert api.reasons() == [REASON_BUDGET_EXHAUSTED, REASON_EVICTED]
    assert api.events[-1]["related"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                         "namespace": "default"}
    assert agent.recorder.budget.state("default", "Deployment/web", agent.index.get(UID_B).policy.restart_budget,
                                       clock.now).used == 3  # type: ignore[union-attr]


def test_a_kill_in_place_is_held_too(v1_tree: Path) -> None:
    api = ApiDouble()
    clock = Clock()
    agent = make_agent(v1_tree, api, clock)
    agent.capability = CAN_KILL  # it could kill: the budget is what holds it back
    for n in range(2):
        agent.recorder.learn(evicted_before(clock.now - 60 * (n + 1), n))
    agent.index.upsert(replica(**{"memwatch.io/action": "restart", "memwatch.io/restart-budget": "2/1h"}))
    for _ in range(20):
        step(agent, clock)
    assert api.reasons() == [REASON_BUDGET_EXHAUSTED]
    assert "would have killed container app; restart budget 2/1h of Deployment/web spent" in api.events[0]["message"]
    assert not [t for t in agent.timings if t.result == "killed"]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_a_restart_kill_counts_and_a_last_resort_kill_does_not(v1_tree: Path,
                                                               sleeper: subprocess.Popen[bytes]) -> None:
    api = ApiDouble()
    clock = Clock()
    agent = make_agent(v1_tree, api, clock)
    if not agent.capability.can_kill:
        pytest.skip(f"the kill rung cannot kill here: {agent.capability.describe()}")
    (v1_app(v1_tree) / "cgroup.procs").write_text(f"{sleeper.pid}\n")
    agent.index.upsert(replica(**{"memwatch.io/action": "restart"}))
    step(agent, clock)
    assert sleeper.wait(timeout=5) == -signal.SIGKILL
    assert api.reasons() == [REASON_KILLED]
    assert api.events[0]["related"]["name"] == "web"  # the pod's own action: it counts
    assert len(agent.recorder.budget) == 1


def test_the_last_resort_kill_after_an_eviction_counts_once(v1_tree: Path, sleeper: subprocess.Popen[bytes]) -> None:
    api = ApiDouble()
    clock = Clock()
    agent = make_agent(v1_tree, api, clock, kill=True, kill_after=0.5)
    if not agent.capability.can_kill:
        pytest.skip(f"the kill rung cannot kill here: {agent.capability.describe()}")
    (v1_app(v1_tree) / "cgroup.procs").write_text(f"{sleeper.pid}\n")
    agent.index.upsert(replica())
    step(agent, clock)
    assert api.reasons() == [REASON_EVICTED]
    set_usage(v1_app(v1_tree), 250 * MiB)  # past 95% of its 256Mi hard limit; the eviction not in effect
    for _ in range(10):
        step(agent, clock)
        if sleeper.poll() is not None:
            break
    assert sleeper.wait(timeout=5) == -signal.SIGKILL
    step(agent, clock)
    assert api.reasons() == [REASON_EVICTED, REASON_KILLED]
    assert "related" not in api.events[1]  # it follows the eviction, which counted already
    assert len(agent.recorder.budget) == 1
