"""The restart budget in the enforcer and the sweep (issue: an evict-recreate loop nothing stopped).

A Deployment whose pod leaks at start: memwatch acts on its pods at most N times per window, then
holds back with one `MemwatchBudgetExhausted` Warning Event per pod, a log line and a metric; it acts
again when the window frees a slot. Dry runs and refusals never spend the budget; a restarted
controller restores the count from memwatch's own Events. Runs as test_enforcer_sweep.py does:
index → sweep → enforcer → recorder, with only the API and time faked.
"""

from __future__ import annotations

import itertools
import logging
import re
from typing import Any

import pytest

from memwatch.observability import (
    REASON_BLOCKED,
    REASON_BUDGET_EXHAUSTED,
    REASON_CAPPED,
    REASON_DRY_RUN,
    REASON_ESCALATED,
    REASON_EVICTED,
    REASON_FAILED,
    REASON_PROTECTED,
)
from memwatch.policy import Defaults, RestartBudget

from .fakes import T0, FakeClock, FakeKube, Rig, iso, make_pod

_names = itertools.count(1)


@pytest.fixture
def kube(clock: FakeClock) -> FakeKube:
    return FakeKube(clock)


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="memwatch")


def lines(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if needle in r.getMessage()]


def metric(rig: Rig, name: str, **labels: str) -> float:
    return rig.metrics.registry.get_sample_value(name, labels) or 0.0


def replica(deployment: str = "web", namespace: str = "shop", started: float | None = None,
            **annotations: str) -> dict[str, Any]:
    """A new pod of a Deployment (its ReplicaSet's, as the Deployment controller makes them)."""
    template_hash = "5d4f8c7b9"
    ann = {"memwatch.io/limit": "512Mi"}
    ann.update({"memwatch.io/" + k.replace("_", "-"): v for k, v in annotations.items()})
    pod = make_pod(f"{deployment}-{template_hash}-{next(_names)}", namespace, annotations=ann,
                   labels={"app": deployment, "pod-template-hash": template_hash})
    pod["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "uid": "rs",
                                           "name": f"{deployment}-{template_hash}", "controller": True}]
    if started is not None:
        pod["status"]["startTime"] = iso(started)
    return pod


def leak(rig: Rig, pod: dict[str, Any]) -> str:
    """The Deployment's new pod, over its limit from the start: one sweep. Returns the sweep's result."""
    rig.add(pod)
    rig.over(pod)
    report = rig.sweep()
    (result,) = report.results or {"-": 1}
    return result


def reasons_of(kube: FakeKube, pod: dict[str, Any]) -> list[str]:
    return kube.reasons(pod["metadata"]["name"])


# ---------------------------------------------------------------------------------------------
# Three actions, then held


def test_three_actions_per_hour_then_one_event_per_pod(kube: FakeKube, clock: FakeClock,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(kube, clock)  # the default budget: 3/1h
    pods = [replica() for _ in range(5)]
    results = []
    for pod in pods:
        results.append(leak(rig, pod))
        clock.advance(60)
    assert results == ["evicted"] * 3 + ["budget-exhausted"] * 2
    assert [c[2] for c in kube.writes()] == [p["metadata"]["name"] for p in pods[:3]]
    # Each acted Event names the workload, so a restarted controller can count it.
    evicted = [e for e in kube.events if e["reason"] == REASON_EVICTED]
    assert len(evicted) == 3
    assert all(e["related"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "namespace": "shop"}
               for e in evicted)
    # The held pods stay over their limit for minutes: still one Event and one line each.
    rig.run_for(120, refresh=pods[3:])
    assert len(kube.writes()) == 3
    for pod in pods[3:]:
        assert reasons_of(kube, pod) == [REASON_BUDGET_EXHAUSTED]
    event = next(e for e in kube.events if e["reason"] == REASON_BUDGET_EXHAUSTED)
    assert event["type"] == "Warning" and event["related"]["name"] == "web"
    first = iso(T0)[11:19]
    frees = iso(T0 + 3600)[11:19]
    assert (f"would have evicted; restart budget 3/1h of Deployment/web spent (3 actions since {first}Z; "
            f"next frees at {frees}Z)") in event["message"]
    held = lines(caplog, "action=budget-exhausted")
    assert len(held) == 2
    assert re.search(r"action=budget-exhausted pod=shop/web-\S+ node=node-1 usage=600Mi limit=512Mi scope=pod "
                     r"source=fake .* detail='would have evicted; restart budget 3/1h of Deployment/web spent ",
                     held[0]), held[0]
    assert metric(rig, "memwatch_budget_exhausted_total", source="fake") == 2
    assert metric(rig, "memwatch_actions_total", result="budget-exhausted", source="fake") == 2
    assert metric(rig, "memwatch_actions_total", result="evicted", source="fake") == 3


def test_the_delete_action_says_it_would_have_deleted(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock)
    for _ in range(2):
        assert leak(rig, replica(action="delete", restart_budget="2/1h")) == "deleted"
    held = replica(action="delete", restart_budget="2/1h")
    assert leak(rig, held) == "budget-exhausted"
    assert "would have deleted; restart budget 2/1h of Deployment/web spent" in kube.events[-1]["message"]


def test_workloads_and_bare_pods_are_counted_apart(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock, max_per_namespace_per_minute=0, max_per_minute=0)
    for _ in range(3):
        assert leak(rig, replica("web")) == "evicted"
    assert leak(rig, replica("api")) == "evicted"  # another Deployment: its own budget
    assert leak(rig, replica("web", namespace="blog")) == "evicted"  # same name, another namespace
    for i in range(5):  # a bare pod's every action is its own: no budget
        assert leak(rig, make_pod(f"bare-{i}", "shop")) == "evicted"
    assert leak(rig, replica("web")) == "budget-exhausted"


def test_budget_off_and_the_default_from_the_flag(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock, max_per_namespace_per_minute=0, defaults=Defaults(restart_budget=RestartBudget(1, 600)))
    assert leak(rig, replica()) == "evicted"
    assert leak(rig, replica()) == "budget-exhausted"  # --default-restart-budget=1/10m
    assert leak(rig, replica(restart_budget="off")) == "evicted"  # this pod opts out
    assert leak(rig, replica(restart_budget="5/10m")) == "evicted"  # a larger budget: 3 of 5 used now


# ---------------------------------------------------------------------------------------------
# What spends the budget, and what does not


@pytest.mark.parametrize("global_dry_run", [True, False])
def test_dry_runs_do_not_spend_the_budget(kube: FakeKube, clock: FakeClock, global_dry_run: bool) -> None:
    rig = Rig(kube, clock, dry_run=global_dry_run)
    extra = {} if global_dry_run else {"action": "dry-run"}
    for _ in range(5):
        assert leak(rig, replica(restart_budget="1/1h", **extra)) == "would-evict"
    assert kube.reasons().count(REASON_DRY_RUN) == 5 and REASON_BUDGET_EXHAUSTED not in kube.reasons()
    assert len(rig.recorder.budget) == 0


def test_refusals_do_not_spend_the_budget(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock, max_per_namespace_per_minute=0)
    blocked, failed = replica(restart_budget="1/1h"), replica(restart_budget="1/1h")
    kube.script_evict(blocked["metadata"]["name"], 429)
    kube.script_evict(failed["metadata"]["name"], 500)
    assert leak(rig, blocked) == "blocked"
    assert leak(rig, failed) == "failed"
    protected = replica(restart_budget="1/1h")
    protected["spec"]["priority"] = 2_000_001_000  # system-node-critical: never touched
    assert leak(rig, protected) == "protected"
    assert [reasons_of(kube, p) for p in (blocked, failed, protected)] == [
        [REASON_BLOCKED], [REASON_FAILED], [REASON_PROTECTED]]
    assert len(rig.recorder.budget) == 0
    for pod in (blocked, failed, protected):
        rig.index.remove(pod)  # their retries and refusals aside
    # The one action the budget allows is still there.
    assert leak(rig, replica(restart_budget="1/1h")) == "evicted"
    assert leak(rig, replica(restart_budget="1/1h")) == "budget-exhausted"


def test_a_rate_cap_hold_does_not_spend_the_budget(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock, max_per_namespace_per_minute=1)
    assert leak(rig, make_pod("other", "shop")) == "evicted"  # takes the namespace's one slot
    pod = replica(restart_budget="1/1h")
    assert leak(rig, pod) == "rate-limited"
    assert reasons_of(kube, pod) == [REASON_CAPPED] and len(rig.recorder.budget) == 0
    rig.run_for(70, refresh=[pod])  # the cap's minute passes: the eviction goes, and counts
    assert reasons_of(kube, pod) == [REASON_CAPPED, REASON_EVICTED]
    assert leak(rig, replica(restart_budget="1/1h")) == "budget-exhausted"


def test_an_escalation_spends_the_budget(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock, escalation_timeout=30.0)
    pod = replica(restart_budget="1/1h", escalate="true")
    kube.script_evict(pod["metadata"]["name"], 429)
    assert leak(rig, pod) == "blocked"
    rig.run_for(40, refresh=[pod])
    assert reasons_of(kube, pod) == [REASON_BLOCKED, REASON_ESCALATED]
    assert kube.events[-1]["related"]["name"] == "web"
    assert leak(rig, replica(restart_budget="1/1h")) == "budget-exhausted"


# ---------------------------------------------------------------------------------------------
# When the window frees a slot


def test_a_held_pod_is_acted_on_when_the_window_frees_a_slot(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock)
    for _ in range(2):
        assert leak(rig, replica(restart_budget="2/10m")) == "evicted"
        clock.advance(60)
    held = replica(restart_budget="2/10m")
    assert leak(rig, held) == "budget-exhausted"  # at T0+120: the first slot frees at T0+600
    rig.run_for(470, refresh=[held])
    assert reasons_of(kube, held) == [REASON_BUDGET_EXHAUSTED] and len(kube.writes()) == 2
    rig.run_for(20, refresh=[held])
    evictions = kube.writes(name=held["metadata"]["name"])
    assert len(evictions) == 1
    assert T0 + 600 <= evictions[0][3] <= T0 + 611  # type: ignore[operator]  # within a retry of freeing
    assert reasons_of(kube, held) == [REASON_BUDGET_EXHAUSTED, REASON_EVICTED]


def test_a_held_pod_back_under_its_limit_is_left_alone(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock)
    assert leak(rig, replica(restart_budget="1/10m")) == "evicted"
    held = replica(restart_budget="1/10m")
    assert leak(rig, held) == "budget-exhausted"
    rig.source.set(held["metadata"]["uid"], 100 << 20, clock() - 1)  # the leak stopped
    rig.run_for(700)
    assert kube.writes(name=held["metadata"]["name"]) == []


# ---------------------------------------------------------------------------------------------
# Restarts: the count comes back from the Events


def test_a_restarted_controller_restores_the_budget_from_the_events(clock: FakeClock,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    before = FakeKube(clock)
    rig = Rig(before, clock)
    pods = [replica() for _ in range(4)]
    assert [leak(rig, p) for p in pods] == ["evicted"] * 3 + ["budget-exhausted"]
    clock.advance(300)

    after = FakeKube(clock)
    # The new process lists memwatch's Events (twice over: a watch that re-LISTs sees them again).
    after.event_pages = [{"items": before.events, "metadata": {"continue": "x"}},
                         {"items": before.events, "metadata": {}}]
    restarted = Rig(after, clock)
    assert restarted.recorder.load_history() == 2 * len(before.events)
    state = restarted.recorder.budget.state("shop", "Deployment/web", RestartBudget(3, 3600), clock())
    assert state.used == 3 and state.spent
    # The held pod was told already (no second Event); the Deployment's next pod is held and told once.
    fresh = replica()
    restarted.add(pods[3])
    restarted.over(pods[3])
    assert leak(restarted, fresh) == "budget-exhausted"
    restarted.run_for(60, refresh=[pods[3], fresh])
    assert after.writes() == []
    assert after.reasons() == [REASON_BUDGET_EXHAUSTED]
    assert after.events[0]["involvedObject"]["uid"] == fresh["metadata"]["uid"]


def test_actions_older_than_the_window_do_not_count_after_a_restart(clock: FakeClock) -> None:
    before = FakeKube(clock)
    rig = Rig(before, clock)
    for _ in range(3):
        assert leak(rig, replica(restart_budget="3/10m")) == "evicted"
    clock.advance(601)
    after = FakeKube(clock)
    after.event_pages = [{"items": before.events, "metadata": {}}]
    restarted = Rig(after, clock)
    restarted.recorder.load_history()
    assert leak(restarted, replica(restart_budget="3/10m")) == "evicted"


# ---------------------------------------------------------------------------------------------
# min-pod-age


def test_a_pod_younger_than_its_min_pod_age_is_acted_on_once_old_enough(kube: FakeKube, clock: FakeClock,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(kube, clock)
    pod = make_pod("slow-start", "shop", annotations={"memwatch.io/limit": "512Mi", "memwatch.io/min-pod-age": "1m"})
    pod["status"]["startTime"] = iso(clock() - 10)
    rig.add(pod)
    rig.over(pod)
    assert rig.sweep().results == {"too-young": 1}
    rig.run_for(45, refresh=[pod])
    assert kube.writes() == [] and kube.events == []  # no Event while it is young
    assert len(lines(caplog, "not acting yet on pod=shop/slow-start")) == 1  # one line, not one per sweep
    rig.run_for(10, refresh=[pod])
    (evicted,) = kube.writes()
    assert T0 + 50 <= evicted[3] <= T0 + 52  # type: ignore[operator]  # 60s after its start, within a retry
    assert kube.reasons() == [REASON_EVICTED]


def test_min_pod_age_from_the_flag_and_dry_run_waits_too(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock, defaults=Defaults(min_pod_age=30.0), dry_run=True)
    young = make_pod("young", "shop")
    young["status"]["startTime"] = iso(clock() - 5)
    old = make_pod("old", "shop")
    old["status"]["startTime"] = iso(clock() - 3600)
    rig.add(young, old)
    rig.over(young)
    rig.over(old)
    assert rig.sweep().results == {"too-young": 1, "would-evict": 1}
    assert kube.reasons() == [REASON_DRY_RUN]
