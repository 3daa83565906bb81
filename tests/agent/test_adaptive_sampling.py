"""Adaptive sampling on real cgroup v1 memory cgroups: a quiet pod far below its lines is read less
often while the kernel's threshold notification stands guard, and a crossing between two of its
samples is still acted on at once, judged by the kernel (root only; skips loudly otherwise).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memwatch.agent import MAX_STRIDE, Agent
from memwatch.cgroups import CgroupSource, Hierarchy
from memwatch.lifecycle import Phase

from .helpers import ApiDouble, load_bench, make_settings

MiB = 1 << 20
UID = "5a0e3d1c-0000-4000-8000-00000000ad01"




oom_race = load_bench("oom_race")
WHY = oom_race.cgroup_v1_unavailable()
pytestmark = [pytest.mark.cgroup,
              pytest.mark.skipif(WHY is not None, reason=f"SKIPPED LOUDLY: no real memory cgroups here: {WHY}")]


def _pod(limit: str = "48Mi") -> dict[str, Any]:
    return {"metadata": {"uid": UID, "name": "quiet", "namespace": "default",
                         "annotations": {"memwatch.io/limit": limit, "memwatch.io/action": "evict"}},
            "spec": {"nodeName": "node-a", "containers": [{"name": "c", "resources": {"limits": {"memory": "128Mi"}}}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "c", "containerID": "containerd://ab"}]}}


@pytest.fixture(scope="module")
def hog() -> Path:
    path: Path = oom_race.build_hog()
    return path


@pytest.fixture
def quiet(hog: Path) -> Iterator[tuple[Agent, Any, ApiDouble]]:
    """A real cgroup (hard limit 128 MiB) holding a process with 16 MiB; the agent watches it at 48Mi."""
    cg = oom_race.MemCgroup(128 * MiB, prefix="memwatch-adaptive")
    procs = [cg.spawn([str(hog), "--sleep", "--start", "16"])]
    try:
        deadline = time.monotonic() + 10
        while int((cg.path / "memory.usage_in_bytes").read_text()) < 12 * MiB:
            assert time.monotonic() < deadline, "the holder never allocated its 16 MiB"
            time.sleep(0.02)
        kube = ApiDouble()
        source = CgroupSource(Hierarchy(1, oom_race.V1_MEMORY), locate=lambda rec: (None, {"c": cg.path}))
        agent = Agent(make_settings(sample_period=0.1, node_name="node-a"), kube=kube,  # type: ignore[arg-type]
                      source=source, watch=False)
        agent.index.upsert(_pod())
        yield agent, cg, kube
    finally:
        for p in procs:
            p.kill()
        cg.close()


def _ticks(agent: Agent, n: int, period: float = 0.1) -> list[int]:
    """``n`` ticks a period apart; how many pods each one read."""
    out = []
    for _ in range(n):
        out.append(agent.tick())
        time.sleep(period)
    return out


def test_a_quiet_pod_under_the_kernels_guard_is_read_every_stride_not_every_sample(
        quiet: tuple[Agent, Any, ApiDouble]) -> None:
    agent, _, _ = quiet
    sampled = _ticks(agent, 3 * MAX_STRIDE + 2)
    reader = agent.source.pods[UID].containers["c"]
    assert reader.thresholds and reader.events, "the 48Mi threshold is registered with the kernel"
    assert agent.source.guarded_room(UID) is not None
    reads = sum(sampled)
    assert agent.skipped > 0 and reads <= len(sampled) // 2, (sampled, agent.skipped)
    positions = [k for k, n in enumerate(sampled) if n]
    gaps = [b - a for a, b in itertools.pairwise(positions)]
    assert gaps and max(gaps) <= MAX_STRIDE, f"read at ticks {positions}: never more than {MAX_STRIDE} apart"


@pytest.mark.parametrize("kernel_thresholds", [True, False], ids=["kernel-threshold", "lean-guard"])
def test_a_crossing_between_two_samples_is_acted_on_at_the_very_next_tick(
        quiet: tuple[Agent, Any, ApiDouble], hog: Path, kernel_thresholds: bool) -> None:
    """Under the kernel's threshold, and without one (as on cgroup v2, or a read-only
    cgroup.event_control: the lean guard reads the usage file every sample)."""
    agent, cg, kube = quiet
    agent._events_ok = kernel_thresholds  # False: no registration is tried
    _ticks(agent, 4)
    reader = agent.source.pods[UID].containers["c"]
    assert bool(reader.events) is kernel_thresholds and reader.line == 48 * MiB
    st = agent.states[UID]
    assert st.next_sample > time.monotonic() + 0.3, "the quiet pod is not due for a while"
    grower = cg.spawn([str(hog), "--rate", "400", "--max", "48", "--hold"])
    try:
        deadline = time.monotonic() + 5
        while int((cg.path / "memory.usage_in_bytes").read_text()) < 64 * MiB:
            assert time.monotonic() < deadline, "the grower never took the pod past 48Mi"
            time.sleep(0.005)
        assert time.monotonic() < st.next_sample, "the crossing came before the pod's next sample was due"
        # One tick: the kernel's eventfd, or the lean guard's read, says a line was crossed, so this one reads it.
        agent.tick()
        life = agent.lifecycle.peek(UID)
        assert life is not None and life.phase is not Phase.IDLE, life
        agent.worker.run_pending(block=2.0)
        assert kube.evictions == [("default", "quiet", UID)], kube.evictions
    finally:
        grower.kill()
        grower.wait()
    assert cg.oom_kills() == 0


def test_usage_past_a_threshold_is_never_guarded(quiet: tuple[Agent, Any, ApiDouble]) -> None:
    """A threshold fires on a crossing only: once raw usage (page cache included) is past it, the
    working set may still grow to it without a word from the kernel, so the pod is read every sample."""
    agent, _, _ = quiet
    agent.index.upsert(_pod(limit="8Mi"))  # below what the holder already uses: the kernel will never cross it
    sampled = _ticks(agent, 2 * MAX_STRIDE)
    assert agent.source.pods[UID].containers["c"].thresholds == (8 * MiB,)
    assert agent.source.guarded_room(UID) is None
    assert sampled[2:] == [1] * (len(sampled) - 2), sampled


def test_a_tick_with_no_pod_due_and_nothing_changed_does_not_pass_over_the_pods(
        quiet: tuple[Agent, Any, ApiDouble]) -> None:
    """Idle ticks cost a wake-up, not a pass over every pod; any change to the pods (here the watch
    limit) makes the very next tick read them again."""
    agent, _, _ = quiet
    sampled = _ticks(agent, MAX_STRIDE + 4)
    assert agent.idle_ticks >= MAX_STRIDE // 2, (sampled, agent.idle_ticks)
    for _ in range(MAX_STRIDE + 2):  # on to just after a read: the pod is then not due for a while
        if agent.tick():
            break
        time.sleep(0.1)
    assert agent.states[UID].next_sample > time.monotonic() + 0.3, "read just now, not due again soon"
    idle = agent.idle_ticks
    assert agent.tick() == 0 and agent.idle_ticks == idle + 1, "not due and nothing changed: no pass"
    agent.index.upsert(_pod(limit="40Mi"))  # a new record (and policy) for the pod
    assert agent.tick() == 1 and agent.idle_ticks == idle + 1, "a changed pod is read at the next tick"


def test_waiting_less_than_a_millisecond_sleeps_instead_of_spinning(quiet: tuple[Agent, Any, ApiDouble]) -> None:
    """poll() takes whole milliseconds: a wait of 0.4 ms must sleep (rounded up), not return at once
    (rounded down), or the run loop spins through the last millisecond before every tick."""
    agent, _, _ = quiet
    _ticks(agent, 2)
    assert agent._poll is not None, "the kernel's notifications are armed: waits go through poll()"
    t0 = time.monotonic()
    agent.wait(0.0004)
    assert time.monotonic() - t0 >= 0.0004
