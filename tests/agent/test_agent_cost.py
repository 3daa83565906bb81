"""The node agent's cost per pod and sample, in operations rather than CPU time.

The agent reads every watched pod on its node every ``--sample-period`` (100 ms), in full (record,
cgroup reads, history, lifecycle, prediction) unless something stands guard over it between full
reads: a v1 kernel threshold, or where none can be armed (cgroup v2, a read-only
``cgroup.event_control``) the lean guard, one ``pread`` of the pod's usage file per sample
(:meth:`memwatch.cgroups.CgroupSource.lean_crossed`). Its CPU is then the lean guard's per-pod
cost on every sample, plus a full sample's per-pod cost on the pods that are due. Both must stay
small constants: counted here as the Python functions and built-in calls one tick makes
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

from memwatch.agent import MAX_STRIDE, Agent
from memwatch.cgroups import CgroupSource, Hierarchy

from .helpers import load_bench

oom_race = load_bench("oom_race")

#: Python-level calls per pod and full sample: record, cgroup read, history, lifecycle, prediction,
#: and when the pod is next due (the guard's schedule).
MAX_PY_CALLS_IDLE = 20  # far below the limits: memory.stat every 10th sample
MAX_PY_CALLS_NEAR = 25  # above half the watch limit: memory.stat every sample
#: Every call (Python and built-in, dict.get included) per pod and full sample.
MAX_ALL_CALLS_IDLE = 50
MAX_ALL_CALLS_NEAR = 61
#: Per pod and sample of a pass that reads no pod in full (the lean guard alone): no Python call,
#: one built-in (pread).
MAX_PY_CALLS_LEAN = 0
MAX_ALL_CALLS_LEAN = 1


def _agent(root: Path, pods: int, near: bool) -> Agent:
    raw = oom_race._fixture_tree(root, pods, near)
    agent = Agent(oom_race.agent_settings(0.1, cgroup_root=str(root)), kube=None,
                  source=CgroupSource(Hierarchy.detect(root)), watch=False)
    for pod in raw:
        agent.index.upsert(pod)
    for _ in range(12):  # past the first reads (opening, memory.stat) and a full history ring
        agent._full_tick = True
        agent.tick()
    return agent


def _calls(root: Path, pods: int, near: bool, full: bool, ticks: int = 5) -> tuple[float, float]:
    """(Python calls, all calls) per tick over ``pods`` fixture pods: every pod read in full each
    tick (``full``, as after a crossing), or none (every pod quiet and not due: the lean guard alone)."""
    agent = _agent(root, pods, near)
    counts: collections.Counter[str] = collections.Counter()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            counts[event] += 1

    try:
        for _ in range(ticks):
            agent._full_tick = full
            if not full:
                for st in agent.states.values():
                    st.next_sample = float("inf")  # none due: what a tick between two strides does
            sys.setprofile(profile)
            try:
                sampled = agent.tick()
            finally:
                sys.setprofile(None)
            assert sampled == (pods if full else 0), sampled
    finally:
        agent.source.close()
    return counts["call"] / ticks, (counts["call"] + counts["c_call"]) / ticks


@pytest.mark.parametrize(("near", "max_py", "max_all"), [
    (False, MAX_PY_CALLS_IDLE, MAX_ALL_CALLS_IDLE), (True, MAX_PY_CALLS_NEAR, MAX_ALL_CALLS_NEAR)],
    ids=["idle", "near-limits"])
def test_per_pod_cost_of_a_full_sample_is_a_small_constant(tmp_path: Path, near: bool, max_py: int,
                                                           max_all: int) -> None:
    (py_s, all_s), (py_l, all_l) = (_calls(tmp_path / "small", 20, near, full=True),
                                    _calls(tmp_path / "large", 60, near, full=True))
    py, every = (py_l - py_s) / 40, (all_l - all_s) / 40
    assert py <= max_py, f"{py:.1f} Python calls per pod and sample (bound {max_py})"
    assert every <= max_all, f"{every:.1f} calls per pod and sample (bound {max_all})"


@pytest.mark.parametrize("near", [False, True], ids=["idle", "near-limits"])
def test_per_pod_cost_of_a_lean_sample_is_a_read_and_a_compare(tmp_path: Path, near: bool) -> None:
    (py_s, all_s), (py_l, all_l) = (_calls(tmp_path / "small", 20, near, full=False),
                                    _calls(tmp_path / "large", 60, near, full=False))
    py, every = (py_l - py_s) / 40, (all_l - all_s) / 40
    assert py <= MAX_PY_CALLS_LEAN, f"{py:.1f} Python calls per pod and lean sample (bound {MAX_PY_CALLS_LEAN})"
    assert every <= MAX_ALL_CALLS_LEAN, f"{every:.1f} calls per pod and lean sample (bound {MAX_ALL_CALLS_LEAN})"


def test_full_reads_per_sample_are_bounded_by_the_pods_due(tmp_path: Path) -> None:
    """Without kernel thresholds, quiet pods far from their lines are read in full once per stride
    (at most MAX_STRIDE samples apart), not every sample: over 3 strides, 110 pods are read in full
    about 3 times each, never every sample; a pod past its line is read in full every sample."""
    agent = _agent(tmp_path, 110, near=False)
    hot = next(iter(agent.source.pods.values())).containers["c"]
    (hot.path / "memory.usage_in_bytes").write_text(f"{250 << 20}\n")  # past its 240Mi line
    try:
        assert agent._guarding and agent._lean_guarding
        agent._full_tick = True
        agent.tick()  # reads the hot pod past its line: it is then read every sample, and wakes no other
        ticks = 3 * MAX_STRIDE
        sampled = [agent.tick() for _ in range(ticks)]
        assert all(n >= 1 for n in sampled), f"the pod past its line is read every sample: {sampled}"
        # Each quiet pod at most once per stride (+1 for the stride under way), the hot one every sample.
        assert sum(sampled) <= 109 * (ticks // MAX_STRIDE + 1) + ticks, sampled
        assert sum(sampled) < 110 * ticks // 2, sampled
    finally:
        agent.source.close()


def test_schedules_made_under_a_guard_end_with_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the last guard goes (its cgroups closed, no threshold armed and no line for the lean guard),
    the pods' next reads planned under it are dropped: no pod waits for a guard that is no longer there."""
    agent = _agent(tmp_path, 3, near=False)
    try:
        assert agent._guarding
        for st in agent.states.values():
            st.next_sample = 1e18

        def unguarded() -> int:
            for entry in agent.source.pods.values():
                for reader in entry.readers():
                    reader.line = None
            return 0

        monkeypatch.setattr(agent.source, "guard_lean", unguarded)
        agent._events_dirty = True
        agent._sync_events()
        assert not agent._guarding and all(st.next_sample == 0.0 for st in agent.states.values())
        assert [agent.tick() for _ in range(3)] == [3, 3, 3]
    finally:
        agent.source.close()
