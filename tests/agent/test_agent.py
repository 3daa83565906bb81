"""The node agent's loop against fixture cgroup trees and an API double (no root, no cluster)."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.helpers import (
    APP_WS,
    UID_B,
    ApiDouble,
    MiB,
    make_pod,
    make_settings,
    set_usage,
    v1_app,
    v2_app,
)
from memwatch import cli
from memwatch.agent import Agent
from memwatch.cgroups import CgroupSource, Hierarchy
from memwatch.clock import SYSTEM, ManualClock
from memwatch.clock import Clock as MemwatchClock
from memwatch.observability import REASON_EVICTED, REASON_FAILED, REASON_KILLED, REASON_PROTECTED
from memwatch.settings import AGENT
from memwatch.watcher import ACTIVE_PODS


class Clock(ManualClock):
    """memwatch's manual clock; ``now`` moves both clocks, as time passing does."""

    def __init__(self) -> None:
        super().__init__(wall=1_000_000.0)

    def __call__(self) -> float:
        return self.wall()

    @property
    def now(self) -> float:
        return self.wall()

    @now.setter
    def now(self, value: float) -> None:
        self.advance(value - self.wall())


def make_agent(tree: Path, api: ApiDouble | None = None, clock: MemwatchClock | None = None,
               **settings: Any) -> Agent:
    clk = clock or Clock()
    source = CgroupSource(Hierarchy.detect(tree), clock=clk.wall)
    return Agent(make_settings(tree, **settings), kube=api, source=source, clock=clk,
                 watch=False)


def step(agent: Agent, clock: Clock | None = None, seconds: float = 0.1) -> int:
    """One sample, then everything the worker thread would do."""
    n = agent.tick()
    agent.worker.run_pending()
    if clock is not None:
        clock.now += seconds
    return n


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_under_the_limit_nothing_happens(v2_tree: Path) -> None:
    api = ApiDouble()
    agent = make_agent(v2_tree, api)
    agent.index.upsert(make_pod(annotations={"memwatch.io/limit.app": "250Mi"}))
    for _ in range(5):
        assert step(agent) == 1
    assert api.evictions == [] and api.events == []


def test_the_nearest_pods_gauges_read_the_agents_samples(v2_tree: Path) -> None:
    agent = make_agent(v2_tree, ApiDouble())
    agent.index.upsert(make_pod(annotations={"memwatch.io/limit.app": "250Mi"}))
    step(agent)
    labels = {"pod_namespace": "default", "pod_name": "app", "scope": "container:app"}
    get = agent.metrics.registry.get_sample_value
    assert get("memwatch_pod_headroom_bytes", labels) == 250 * MiB - APP_WS
    assert get("memwatch_pod_usage_ratio", labels) == pytest.approx(APP_WS / (250 * MiB))


@pytest.mark.parametrize("tree_name", ["v1_tree", "v2_tree"])
def test_over_the_limit_it_evicts_through_the_enforcer(tree_name: str, request: pytest.FixtureRequest,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    tree: Path = request.getfixturevalue(tree_name)
    api = ApiDouble()
    clock = Clock()
    agent = make_agent(tree, api, clock)
    agent.index.upsert(make_pod(annotations={"memwatch.io/limit.app": "200Mi", "memwatch.io/predict": "false"}))
    with caplog.at_level(logging.INFO, logger="memwatch"):
        step(agent, clock)
    assert api.evictions == [("default", "app", UID_B)]
    assert api.reasons() == [REASON_EVICTED]
    line = next(r.getMessage() for r in caplog.records if "action=evicted" in r.getMessage())
    for field in ("crossed_at=", "detected_at=", "acted_at=", "scope=container:app", "source=cgroup",
                  f"usage={APP_WS / MiB:.0f}"[:9]):
        assert field in line, (field, line)
    step(agent, clock)
    assert len(api.evictions) == 1  # acted once, not every 100 ms


def test_prediction_acts_before_the_watch_limit_when_the_hard_limit_is_near(v1_tree: Path) -> None:
    api = ApiDouble()
    clock = Clock()
    agent = make_agent(v1_tree, api, clock)
    # Watch limit 250Mi, hard limit 256Mi: growing 500 MiB/s, the next sample would be past both.
    agent.index.upsert(make_pod(annotations={"memwatch.io/limit.app": "250Mi"}))
    app = v1_app(v1_tree)
    for mib in (100, 150, 200):
        set_usage(app, mib * MiB)
        step(agent, clock)
    assert api.evictions == [("default", "app", UID_B)]
    timing = agent.timings[-1]
    assert timing.predicted and timing.result == "evicted"


def test_prediction_can_be_turned_off(v1_tree: Path) -> None:
    api = ApiDouble()
    clock = Clock()
    agent = make_agent(v1_tree, api, clock)
    agent.index.upsert(make_pod(annotations={"memwatch.io/limit.app": "250Mi", "memwatch.io/predict": "false"}))
    app = v1_app(v1_tree)
    for mib in (100, 150, 200):
        set_usage(app, mib * MiB)
        step(agent, clock)
    assert api.evictions == []
    set_usage(app, 251 * MiB)
    step(agent, clock)
    assert api.evictions == [("default", "app", UID_B)]


def test_slow_growth_far_from_the_hard_limit_is_not_predicted(v1_tree: Path) -> None:
    api = ApiDouble()
    clock = Clock()
    agent = make_agent(v1_tree, api, clock)
    agent.index.upsert(make_pod(annotations={"memwatch.io/limit.app": "250Mi"}))
    for mib in range(100, 160, 5):  # 50 MiB/s, 96 MiB of headroom: ~2 s away
        set_usage(v1_app(v1_tree), mib * MiB)
        step(agent, clock)
    assert api.evictions == []


def test_restart_kills_the_container_in_place_and_events_it(v2_tree: Path, sleeper: subprocess.Popen[bytes]) -> None:
    api = ApiDouble()
    agent = make_agent(v2_tree, api)
    (v2_app(v2_tree) / "cgroup.procs").write_text(f"{sleeper.pid}\n")
    agent.index.upsert(make_pod(annotations={"memwatch.io/limit.app": "200Mi", "memwatch.io/action": "restart"}))
    step(agent)
    assert sleeper.wait(timeout=5) == -signal.SIGKILL
    assert api.evictions == []
    assert api.reasons() == [REASON_KILLED]
    assert "SIGKILL to 1 process(es) through pidfds of container app" in api.events[0]["message"]
    assert "sleep(" in api.events[0]["message"]  # psutil's top processes
    assert agent.timings[-1].result == "killed"


def test_api_down_keeps_sampling_and_the_local_kill_still_works(
        v1_tree: Path, sleeper: subprocess.Popen[bytes], caplog: pytest.LogCaptureFixture) -> None:
    api = ApiDouble()
    api.down = True
    clock = Clock()
    agent = make_agent(v1_tree, api, clock, kill=True, kill_after=0.5)
    (v1_app(v1_tree) / "cgroup.procs").write_text(f"{sleeper.pid}\n")
    agent.index.upsert(make_pod(annotations={"memwatch.io/limit.app": "200Mi", "memwatch.io/predict": "false"}))
    with caplog.at_level(logging.WARNING, logger="memwatch"):
        for _ in range(3):
            assert step(agent, clock) == 1  # sampling goes on
    assert api.evictions == []
    failed = [r for r in caplog.records if "action=failed" in r.getMessage()]
    assert len(failed) == 1 and "unreachable" in failed[0].getMessage()
    assert sleeper.poll() is None  # below the kill ceiling: no kill
    set_usage(v1_app(v1_tree), 250 * MiB)  # past 95% of the 256Mi hard limit, eviction not in effect
    for _ in range(8):
        step(agent, clock)
        if sleeper.poll() is not None:
            break
    assert sleeper.wait(timeout=5) == -signal.SIGKILL
    assert any("action=killed" in r.getMessage() and "last resort" in r.getMessage() for r in caplog.records)
    api.down = False
    step(agent, clock)
    assert REASON_FAILED not in api.reasons()  # posted nothing while down; the kill's Event follows later


def test_protected_pods_are_refused_once_and_never_touched(v2_tree: Path, sleeper: subprocess.Popen[bytes]) -> None:
    api = ApiDouble()
    agent = make_agent(v2_tree, api, kill=True, kill_after=0.0)
    (v2_app(v2_tree) / "cgroup.procs").write_text(f"{sleeper.pid}\n")
    agent.index.upsert(make_pod(namespace="kube-system", annotations={"memwatch.io/limit.app": "200Mi",
                                                                      "memwatch.io/action": "restart"}))
    set_usage(v2_app(v2_tree), 255 * MiB)
    for _ in range(5):
        step(agent)
    assert api.evictions == [] and api.reasons() == [REASON_PROTECTED]
    assert sleeper.poll() is None


def test_pods_leaving_the_node_release_their_cgroups(v2_tree: Path) -> None:
    agent = make_agent(v2_tree, ApiDouble())
    pod = make_pod(annotations={"memwatch.io/limit.app": "250Mi"})
    agent.index.upsert(pod)
    step(agent)
    assert UID_B in agent.source.pods and UID_B in agent.states
    agent.index.remove(pod)
    step(agent)
    assert agent.source.pods == {} and agent.states == {}


def test_the_watch_is_narrowed_to_this_node_server_side(tmp_path: Path, v1_tree: Path) -> None:
    agent = Agent(make_settings(v1_tree, namespaces=("a", "b")), kube=ApiDouble(), watch=True)  # type: ignore[arg-type]
    pods = [w for w in agent.watchers if w.resource == "pods"]
    assert [w.namespace for w in pods] == ["a", "b"]
    for w in pods:
        assert w.field_selector == f"spec.nodeName=node1,{ACTIVE_PODS}"
    # the other watches are memwatch's own Events (field selector source=memwatch), per namespace
    events = [w for w in agent.watchers if w.resource == "events"]
    assert [w.namespace for w in events] == ["a", "b"] and len(agent.watchers) == 4
    assert all(w.field_selector == "source=memwatch" for w in events)


def test_over_its_own_memory_ceiling_the_agent_sheds_history(v2_tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    agent = make_agent(v2_tree, ApiDouble(), memory_ceiling=1 << 20)
    agent.index.upsert(make_pod(annotations={"memwatch.io/limit.app": "250Mi"}))
    with caplog.at_level(logging.WARNING, logger="memwatch"):
        step(agent)
        step(agent)
    assert agent.over_ceiling and agent.health()["over_memory_ceiling"]
    assert agent.states[UID_B].history.maxlen == 2
    assert len([r for r in caplog.records if "--memory-ceiling" in r.getMessage()]) == 1


def test_health_fails_when_the_loop_stalls(v2_tree: Path) -> None:
    agent = make_agent(v2_tree, ApiDouble())
    assert agent.health()["node"] == "node1"
    agent.heartbeat = time.monotonic() - 3600
    with pytest.raises(RuntimeError, match="stalled"):
        agent.health()


def test_the_loop_runs_and_stops(v2_tree: Path) -> None:
    api = ApiDouble()
    agent = make_agent(v2_tree, api, clock=SYSTEM, sample_period=0.01)
    agent.index.upsert(make_pod(annotations={"memwatch.io/limit.app": "200Mi"}))
    agent.start()
    try:
        deadline = time.monotonic() + 5
        while not api.evictions and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        agent.stop()
    assert api.evictions == [("default", "app", UID_B)] and agent.ticks >= 1, (
        f"evictions {api.evictions}, events {api.reasons()}, ticks {agent.ticks}, "
        f"last sample {agent.last_tick * 1000:.1f} ms, lifecycle {agent.lifecycle.peek(UID_B)}")


def test_agent_help_documents_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["agent", "--help"], env={})
    out = capsys.readouterr().out
    for opt in AGENT:
        assert opt.flag in out and opt.env in out
