"""Issue #9: one pod lifecycle, shared by the sweep and the agent, under faults.

Each test is a scenario from the issue that memwatch 0.1 got wrong; they run the real sweep
(index → source → lifecycle → enforcer) against the API double, with both clocks under control.
"""

from __future__ import annotations

from typing import Any

import pytest

from memwatch.clock import ManualClock
from memwatch.kube import WriteResult
from memwatch.lifecycle import Lifecycle, Outcome, Phase, Retry, Step
from memwatch.observability import REASON_BLOCKED, REASON_DRY_RUN, REASON_EVICTED
from memwatch.podindex import build_record
from memwatch.policy import ContainerSpec, Defaults, Usage, breaches, resolve
from memwatch.protections import Protections

from .fakes import MI, FakeClock, FakeKube, Rig, make_pod

APF_429 = WriteResult(False, 429, "HTTP 429 Too Many Requests: Too many requests, please try again later.",
                      retry_after=3.0)
UID_GONE_409 = WriteResult(False, 409, "HTTP 409 Conflict: Precondition failed: UID in precondition: a, "
                                       "UID in object meta: b")


def pod(name: str = "web", **annotations: str) -> dict[str, Any]:
    ann = {"memwatch.io/limit": "512Mi"}
    ann.update({"memwatch.io/" + k.replace("_", "-"): v for k, v in annotations.items()})
    return make_pod(name, "shop", annotations=ann)


@pytest.fixture
def kube(clock: FakeClock) -> FakeKube:
    return FakeKube(clock)


# ---------------------------------------------------------------------------------------------
# The state machine on its own


def _policy(**ann: str) -> Any:
    return resolve({"memwatch.io/limit": "100Mi", **{"memwatch.io/" + k: v for k, v in ann.items()}},
                    [ContainerSpec("app", 1 << 30)])


def _usage(clock: ManualClock, mib: int) -> Usage:
    return Usage({"app": mib * MI}, clock.wall(), "t")


def test_for_is_timed_on_the_monotonic_clock_not_the_wall_clock() -> None:
    clock = ManualClock()
    lives = Lifecycle(clock, max_gap=15.0)
    policy = _policy(**{"for": "5m"})
    assert lives.observe("u", policy, _usage(clock, 200))[0] is Step.WAIT
    clock.step_wall(3600)  # an NTP step forward: the samples now look an hour apart
    clock.advance(5)
    assert lives.observe("u", policy, _usage(clock, 200))[0] is Step.WAIT, "a wall step is not 5 minutes"
    for _ in range(60):
        clock.advance(5)
        step, _ = lives.observe("u", policy, _usage(clock, 200))
    assert step is Step.ACT


def test_a_breach_lasts_only_while_consecutive_fresh_samples_show_it() -> None:
    clock = ManualClock()
    lives = Lifecycle(clock, max_gap=15.0)
    policy = _policy(**{"for": "5m"})
    assert lives.observe("u", policy, _usage(clock, 200))[0] is Step.WAIT
    clock.advance(600)  # ten minutes with no sample (source down, not leader, process paused)
    assert lives.observe("u", policy, _usage(clock, 200))[0] is Step.WAIT, "a gap restarts the breach"
    clock.advance(5)
    lives.interrupt("u")  # a stale or missing sample in between
    assert lives.observe("u", policy, _usage(clock, 200))[0] is Step.WAIT


def test_quiet_samples_are_answered_without_state_and_a_breach_still_times_from_its_first_sample() -> None:
    """Most samples are a quiet pod under every limit: observe answers OK without noting them (no
    state kept), and the first sample over starts ``for`` then, not at the first quiet sample."""
    clock = ManualClock()
    lives = Lifecycle(clock, max_gap=15.0)
    policy = _policy(**{"for": "10s"})
    for _ in range(30):
        assert lives.observe("u", policy, _usage(clock, 50)) == (Step.OK, None)
        clock.advance(1)
    assert len(lives) == 0, "a quiet pod under its limits keeps no state"
    assert lives.observe("u", policy, _usage(clock, 200))[0] is Step.WAIT
    clock.advance(9)
    assert lives.observe("u", policy, _usage(clock, 200))[0] is Step.WAIT, "for: counts from the first sample over"
    clock.advance(1)
    assert lives.observe("u", policy, _usage(clock, 200))[0] is Step.ACT
    lives.result("u", Outcome("blocked"))
    clock.advance(1)
    # not quiet (an action pending): a sample under the limit is noted, and cancels it
    assert lives.observe("u", policy, _usage(clock, 50))[0] is Step.CLEARED
    assert lives.quiet("u")


@pytest.mark.parametrize("annotations", [
    {"memwatch.io/limit": "100Mi"},
    {"memwatch.io/limit": "100Mi", "memwatch.io/limit.app": "60Mi"},  # a container limit: no shortcut
    {"memwatch.io/limit.side": "10Mi"},
])
def test_the_one_comparison_shortcut_answers_as_every_limit_would(annotations: dict[str, str]) -> None:
    """observe answers most quiet samples with ``total <= policy.under_all``: for every figure around
    the limits it must say what judging each limit says."""
    policy = resolve(annotations, [ContainerSpec("app", 1 << 30), ContainerSpec("side", 1 << 30)])
    assert policy.under_all == (100 * MI if "memwatch.io/limit.app" not in annotations
                                and "memwatch.io/limit.side" not in annotations else -1)
    clock = ManualClock()
    for app in (0, 9, 10, 11, 59, 60, 61, 99, 100, 101):
        for side in (0, 1, 11):
            usage = Usage({"app": app * MI, "side": side * MI}, clock.wall(), "t")
            lives = Lifecycle(clock, max_gap=15.0)
            step, breach = lives.observe("u", policy, usage)
            assert (step is Step.OK) is (not breaches(policy, usage)), (annotations, app, side, step, breach)


def test_pending_action_is_cancelled_when_usage_falls() -> None:
    clock = ManualClock()
    lives = Lifecycle(clock, max_gap=15.0, retry=Retry(escalation_timeout=10.0))
    policy = _policy(escalate="true")
    assert lives.observe("u", policy, _usage(clock, 208))[0] is Step.ACT
    lives.result("u", Outcome("blocked"))
    assert lives.get("u").phase is Phase.PENDING
    clock.advance(1)
    assert lives.observe("u", policy, _usage(clock, 100))[0] is Step.CLEARED
    clock.advance(20)
    assert not lives.should_escalate("u", True) and lives.due() == []


def test_retry_backoff_per_outcome() -> None:
    clock = ManualClock()
    lives = Lifecycle(clock, max_gap=1e9, retry=Retry(retry_min=1.0, retry_max=10.0))
    policy = _policy()
    lives.observe("u", policy, _usage(clock, 200))
    start = clock.mono()
    lives.result("u", Outcome("throttled", retry_after=3.0))
    assert lives.get("u").next_attempt == start + 3.0, "API Priority and Fairness' Retry-After is honoured"
    lives.result("u", Outcome("rate-limited"))
    lives.result("u", Outcome("failed"))
    assert lives.get("u").next_attempt == start + 1.0, "a first failure after a hold retries at retry_min"
    lives.result("u", Outcome("failed"))
    assert lives.get("u").next_attempt == start + 10.0
    lives.result("u", Outcome("evicted"))
    assert lives.get("u").phase is Phase.DONE
    assert lives.observe("u", policy, _usage(clock, 900))[0] is Step.DONE


# ---------------------------------------------------------------------------------------------
# The sweep: retries act on the current record (defect 2)


def _blocked_rig(kube: FakeKube, clock: FakeClock, p: dict[str, Any]) -> Rig:
    rig = Rig(kube, clock, escalation_timeout=30.0)
    kube.script_evict("web", 429)
    rig.add(p)
    rig.over(p)
    assert rig.sweep().results == {"blocked": 1}
    return rig


def test_retry_honours_a_new_dry_run_action(kube: FakeKube, clock: FakeClock) -> None:
    p = pod(escalate="true")
    rig = _blocked_rig(kube, clock, p)
    p["metadata"]["annotations"]["memwatch.io/action"] = "dry-run"
    rig.add(p)  # the watch replaces the record
    n = len(kube.writes())
    rig.run_for(120, refresh=[p])
    assert len(kube.writes()) == n, "a dry-run pod is never evicted or escalated"
    assert REASON_DRY_RUN in kube.reasons() and REASON_EVICTED not in kube.reasons()


def test_retry_honours_a_raised_limit(kube: FakeKube, clock: FakeClock) -> None:
    p = pod(escalate="true")
    rig = _blocked_rig(kube, clock, p)
    p["metadata"]["annotations"]["memwatch.io/limit"] = "900Mi"
    rig.add(p)
    n = len(kube.writes())
    for _ in range(40):  # retries between sweeps, on the last sample, judged with the new limit
        clock.advance(0.5)
        rig.sweeper.retry_due()
    assert len(kube.writes()) == n
    assert rig.sweeper.lifecycle.get(p["metadata"]["uid"]).phase is Phase.IDLE


def test_retry_stops_when_someone_else_deletes_the_pod(kube: FakeKube, clock: FakeClock) -> None:
    p = pod(escalate="true")
    rig = _blocked_rig(kube, clock, p)
    p["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    rig.add(p)
    n = len(kube.writes())
    rig.run_for(120, refresh=[p])
    assert len(kube.writes()) == n and kube.reasons().count(REASON_EVICTED) == 0


# ---------------------------------------------------------------------------------------------
# API answers read right (defect 9)


def test_a_throttling_429_is_not_a_disruption_budget(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock, escalation_timeout=10.0)
    p = pod(escalate="true")
    kube.script_evict("web", APF_429, APF_429, APF_429, 201)
    rig.add(p)
    rig.over(p)
    assert rig.sweep().results == {"throttled": 1}
    rig.run_for(60, refresh=[p])
    assert REASON_BLOCKED not in kube.reasons(), "no PodDisruptionBudget Event for throttling"
    assert kube.writes("delete") == [], "throttling never starts the escalation clock"
    times = [c[3] for c in kube.writes("evict")]
    assert len(times) == 4 and times[1] - times[0] >= 3.0  # type: ignore[operator]
    assert kube.reasons() == [REASON_EVICTED]


def test_a_replaced_pod_is_not_retried_forever(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock)
    p = pod()
    kube.script_evict("web", UID_GONE_409)
    rig.add(p)
    rig.over(p)
    assert rig.sweep().results == {"gone": 1}
    rig.run_for(60, refresh=[p])
    assert len(kube.writes()) == 1 and kube.reasons() == []


def test_a_pdb_429_is_a_block(kube: FakeKube, clock: FakeClock) -> None:
    body = ('{"kind":"Status","message":"Cannot evict pod as it would violate the pod\'s disruption budget.",'
            '"details":{"causes":[{"reason":"DisruptionBudget","message":"needs 1 healthy pods"}]},"code":429}')
    from memwatch.kube import ApiError
    err = ApiError(429, "Too Many Requests", body)
    assert WriteResult(False, 429, str(err)).blocked
    assert not WriteResult(False, 429, "HTTP 429 Too Many Requests: Too many requests").blocked


# ---------------------------------------------------------------------------------------------
# Clocks (defect 5) and gaps (defect 6) through the sweep


def test_a_forward_wall_step_does_not_satisfy_for(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock)
    p = pod(**{"for": "5m"})
    rig.add(p)
    rig.over(p)
    rig.sweep()
    clock.step_wall(3600)
    clock.advance(5)
    rig.over(p)
    rig.sweep()
    assert kube.writes() == []


def test_for_does_not_hold_across_missing_samples(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock)
    p = pod(**{"for": "5m"})
    rig.add(p)
    rig.over(p)
    rig.sweep()
    del rig.source.samples[p["metadata"]["uid"]]
    for _ in range(120):  # ten minutes of sweeps with no sample
        clock.advance(5)
        rig.sweep()
    rig.over(p)
    rig.sweep()
    assert kube.writes() == [], "two samples 10 minutes apart are not a 5-minute breach"


def test_samples_from_the_future_are_not_acted_on(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock)
    p = pod()
    rig.add(p)
    rig.source.set(p["metadata"]["uid"], 600 * MI, clock() + 3600)  # the node's clock is an hour ahead
    assert rig.sweep().stale == 1 and kube.writes() == []


def test_the_sweep_loop_keeps_running_after_a_backward_wall_step() -> None:
    """The loop schedules on the monotonic clock: a wall clock an hour behind changes nothing."""
    import threading
    import time

    from memwatch.clock import SkewedClock

    kube = FakeKube()
    rig = Rig(kube, FakeClock())
    rig.sweeper.clock = SkewedClock(-3600.0)
    rig.sweeper.interval = 0.05
    thread = threading.Thread(target=rig.sweeper.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while rig.sweeper.sweeps < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    rig.sweeper.stop()
    thread.join(timeout=2)
    assert rig.sweeper.sweeps >= 5


# ---------------------------------------------------------------------------------------------
# Native sidecars (defect 10)


def _sidecar_pod(**annotations: str) -> dict[str, Any]:
    p = make_pod("web", "shop", annotations={"memwatch.io/limit": "90%", **annotations},
                 containers=[("app", "1Gi")])
    p["spec"]["initContainers"] = [
        {"name": "proxy", "restartPolicy": "Always", "resources": {"limits": {"memory": "1Gi"}}},
        {"name": "setup", "resources": {"limits": {"memory": "4Gi"}}},  # runs to completion first: not counted
    ]
    p["status"]["initContainerStatuses"] = [{"name": "proxy", "containerID": "containerd://" + "a" * 64},
                                            {"name": "setup", "containerID": "containerd://" + "b" * 64}]
    return p


def test_native_sidecars_count_as_containers() -> None:
    rec = build_record(_sidecar_pod(**{"memwatch.io/limit.proxy": "512Mi"}), Defaults(), Protections().reason)
    assert rec is not None and rec.policy is not None, rec.problems if rec else None
    assert {c.name for c in rec.containers} == {"app", "proxy"}
    assert rec.policy.pod_hard_limit == 2 << 30, "a pod-level % includes the sidecar's limit"
    assert dict(rec.container_ids) == {"proxy": "containerd://" + "a" * 64, "app": "containerd://web-app"}
