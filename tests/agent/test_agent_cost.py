"""The node agent's cost per pod and sample, in operations rather than CPU time.

The agent reads every watched pod on its node every ``--sample-period`` (100 ms) unless the kernel
stands guard over it (a v1 threshold, :mod:`memwatch.agent`'s adaptive sampling); on cgroup v2, and
wherever ``cgroup.event_control`` cannot be written, nothing does, and every pod is read every
sample. Its CPU is then the cost of one quiet pod's sample times the pods on the node, so that cost
must stay a small constant: counted here as the Python functions and built-in calls one pass makes
(``sys.setprofile``) over the benchmark's fixture tree (``bench/oom_race.py``'s 110-pod rows, which
have no ``cgroup.event_control``), at two sizes; the difference per added pod is the per-pod cost.

These are counts, so they do not flake on a loaded machine; `make bench` gives the CPU figure.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path
from typing import Any

import pytest

from memwatch.agent import Agent
from memwatch.cgroups import CgroupSource, Hierarchy

from .helpers import load_bench

oom_race = load_bench("oom_race")

#: Python-level calls per pod and sample: record, cgroup read, history, lifecycle, prediction.
MAX_PY_CALLS_IDLE = 20  # far below the limits: memory.stat every 10th sample
MAX_PY_CALLS_NEAR = 24  # above half the watch limit: memory.stat every sample
#: Every call (Python and built-in, dict.get included) per pod and sample.
MAX_ALL_CALLS_IDLE = 42
MAX_ALL_CALLS_NEAR = 52


def _agent(root: Path, pods: int, near: bool) -> Agent:
    raw = oom_race._fixture_tree(root, pods, near)
    agent = Agent(oom_race.agent_settings(0.1, cgroup_root=str(root)), kube=None,
                  source=CgroupSource(Hierarchy.detect(root)), watch=False)
    for pod in raw:
        agent.index.upsert(pod)
    for _ in range(12):  # past the first reads (opening, memory.stat) and a full history ring
        agent.tick()
    return agent


def _calls(root: Path, pods: int, near: bool, ticks: int = 5) -> tuple[float, float]:
    """(Python calls, all calls) per tick over ``pods`` fixture pods, every one read every tick."""
    agent = _agent(root, pods, near)
    counts: collections.Counter[str] = collections.Counter()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            counts[event] += 1

    try:
        for _ in range(ticks):
            sys.setprofile(profile)
            try:
                sampled = agent.tick()
            finally:
                sys.setprofile(None)
            assert sampled == pods, "no threshold stands guard here: every pod is read every sample"
    finally:
        agent.source.close()
    return counts["call"] / ticks, (counts["call"] + counts["c_call"]) / ticks


@pytest.mark.parametrize(("near", "max_py", "max_all"), [
    (False, MAX_PY_CALLS_IDLE, MAX_ALL_CALLS_IDLE), (True, MAX_PY_CALLS_NEAR, MAX_ALL_CALLS_NEAR)],
    ids=["idle", "near-limits"])
def test_per_pod_cost_of_a_sample_is_a_small_constant(tmp_path: Path, near: bool, max_py: int,
                                                      max_all: int) -> None:
    (py_s, all_s), (py_l, all_l) = _calls(tmp_path / "small", 20, near), _calls(tmp_path / "large", 60, near)
    py, every = (py_l - py_s) / 40, (all_l - all_s) / 40
    assert py <= max_py, f"{py:.1f} Python calls per pod and sample (bound {max_py})"
    assert every <= max_all, f"{every:.1f} calls per pod and sample (bound {max_all})"


def test_with_no_threshold_armed_anywhere_no_pod_is_scheduled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Adaptive sampling leaves a pod to the kernel only under an armed v1 threshold. With none on
    the node, the pass does not ask after one pod by pod: every pod is read, every sample."""
    agent = _agent(tmp_path, 5, near=False)
    asked: list[str] = []
    monkeypatch.setattr(agent.source, "guarded_room", lambda uid: asked.append(uid))
    try:
        assert not agent._guarding
        assert [agent.tick() for _ in range(3)] == [5, 5, 5] and agent.skipped == 0
        assert asked == [] and all(st.next_sample == 0.0 for st in agent.states.values())
    finally:
        agent.source.close()


def test_schedules_made_under_a_guard_end_with_it(tmp_path: Path) -> None:
    """When the last threshold goes (its cgroups closed or unarmed), the pods' next reads planned
    under it are dropped: no pod waits for a guard that is no longer there."""
    agent = _agent(tmp_path, 3, near=False)
    try:
        agent._guarding = True  # as if thresholds were armed at the last sync
        for st in agent.states.values():
            st.next_sample = 1e18
        agent._events_dirty = True
        agent._sync_events()
        assert not agent._guarding and all(st.next_sample == 0.0 for st in agent.states.values())
        assert agent.tick() == 3
    finally:
        agent.source.close()
