"""The enforcer and the sweep against an API-level double (FakeKube) and a fake clock.

Everything runs as in production (index → sweep → decide → enforcer → recorder); only the API
calls and time are faked, so every scenario is deterministic and takes milliseconds.
"""

from __future__ import annotations

import itertools
import logging
import re
from typing import Any

import pytest

from memwatch.observability import (
    REASON_BLOCKED,
    REASON_CAPPED,
    REASON_DELETED,
    REASON_DRY_RUN,
    REASON_ESCALATED,
    REASON_EVICTED,
    REASON_FAILED,
    REASON_INVALID,
    REASON_PROTECTED,
)
from memwatch.policy import Defaults

from .fakes import MI, T0, FakeClock, FakeKube, Rig, iso, make_pod


@pytest.fixture
def kube(clock: FakeClock) -> FakeKube:
    return FakeKube(clock)


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="memwatch")


def lines(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if needle in r.getMessage()]


def pod(name: str = "web", namespace: str = "shop", **annotations: str) -> dict[str, Any]:
    ann = {"memwatch.io/limit": "512Mi"}
    ann.update({"memwatch.io/" + k.replace("_", "-"): v for k, v in annotations.items()})
    return make_pod(name, namespace, annotations=ann)


def metric(rig: Rig, name: str, **labels: str) -> float:
    return rig.metrics.registry.get_sample_value(name, labels) or 0.0


# ---------------------------------------------------------------------------------------------
# Evict, delete, dry-run


def test_evict_posts_event_and_logs_the_kill_line(kube: FakeKube, clock: FakeClock,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(kube, clock)
    p = pod()
    rig.add(p)
    rig.source.set(p["metadata"]["uid"], 612 * MI, clock() - 1.2)
    report = rig.sweep()
    assert report.results == {"evicted": 1}
    assert [c[:3] for c in kube.writes()] == [("evict", "shop", "web")]
    assert kube.reasons() == [REASON_EVICTED]
    event = kube.events[0]
    assert event["type"] == "Normal" and event["involvedObject"]["uid"] == p["metadata"]["uid"]
    assert event["involvedObject"]["kind"] == "Pod" and event["source"]["component"] == "memwatch"
    assert "memory 612Mi is over the memwatch limit 512Mi (pod, source fake, sample 1.2s old)" in event["message"]
    (line,) = lines(caplog, "action=evicted")
    assert re.search(r"action=evicted pod=shop/web node=node-1 usage=612Mi limit=512Mi scope=pod source=fake "
                     r"sample_age=1\.2s latency=\d+ms ", line), line
    assert metric(rig, "memwatch_actions_total", result="evicted", source="fake") == 1
    assert metric(rig, "memwatch_action_latency_seconds_count", action="evicted", source="fake") == 1
    # Acted on: never again, however long it stays over.
    rig.sweep(times=5, step=5)
    assert len(kube.writes()) == 1 and kube.reasons() == [REASON_EVICTED]


def test_container_limit_breach_is_reported_with_its_scope(kube: FakeKube, clock: FakeClock,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(kube, clock)
    p = make_pod("db", "shop", annotations={"memwatch.io/limit.app": "100Mi"}, containers=[("app", "1Gi")])
    rig.add(p)
    rig.source.set(p["metadata"]["uid"], 150 * MI, clock() - 1, containers={"app": 150 * MI})
    rig.sweep()
    assert "scope=container:app" in lines(caplog, "action=evicted")[0]


def test_delete_action(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock)
    p = pod(action="delete", grace_period="3")
    rig.add(p)
    rig.over(p)
    assert rig.sweep().results == {"deleted": 1}
    assert [c[:3] for c in kube.writes()] == [("delete", "shop", "web")]
    assert kube.reasons() == [REASON_DELETED]


@pytest.mark.parametrize(("global_dry_run", "action", "result"), [
    (True, "evict", "would-evict"),
    (True, "delete", "would-delete"),
    (False, "dry-run", "would-evict"),
])
def test_dry_run_writes_nothing_but_the_event(kube: FakeKube, clock: FakeClock, caplog: pytest.LogCaptureFixture,
                                              global_dry_run: bool, action: str, result: str) -> None:
    rig = Rig(kube, clock, dry_run=global_dry_run)
    p = pod(action=action)
    rig.add(p)
    rig.over(p)
    assert rig.sweep().results == {result: 1}
    rig.run_for(120, refresh=[p])
    assert kube.writes() == []
    assert kube.reasons() == [REASON_DRY_RUN]
    assert "dry-run: nothing was written" in kube.events[0]["message"]
    assert ("--dry-run" in kube.events[0]["message"]) is global_dry_run
    assert len(lines(caplog, f"action={result} pod=shop/web")) == 1
    assert metric(rig, "memwatch_actions_total", result=result, source="fake") == 1


# ---------------------------------------------------------------------------------------------
# Blocked by a PodDisruptionBudget: retry with backoff, escalate only when allowed


def _evict_times(kube: FakeKube) -> list[float]:
    return [t for verb, _, _, t in kube.writes("evict") if t is not None]


def test_blocked_retries_with_backoff_then_escalates(kube: FakeKube, clock: FakeClock,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(kube, clock, escalation_timeout=60.0)
    p = pod(escalate="true")
    kube.script_evict("web", 429)
    rig.add(p)
    rig.over(p)
    assert rig.sweep().results == {"blocked": 1}
    assert kube.reasons() == [REASON_BLOCKED]
    blocked = kube.events[0]
    assert blocked["type"] == "Warning" and "escalating to delete in 60s" in blocked["message"]
    rig.run_for(59.0, refresh=[p])
    assert kube.writes("delete") == [] and kube.reasons() == [REASON_BLOCKED]
    rig.run_for(1.5, refresh=[p])
    deletes = kube.writes("delete")
    assert len(deletes) == 1 and T0 + 60 <= deletes[0][3] <= T0 + 60.5  # type: ignore[operator]
    assert kube.reasons() == [REASON_BLOCKED, REASON_ESCALATED]
    assert lines(caplog, "action=escalated pod=shop/web")
    # Backoff: retries start at retry_min, grow, and never exceed retry_max.
    times = _evict_times(kube)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] == pytest.approx(1.0)
    assert max(gaps) <= 10.0 + 0.5 and max(gaps) >= 5.0
    assert len(times) < 25, "backoff must not hammer the API"
    rig.run_for(120, refresh=[p])
    assert len(kube.writes("delete")) == 1  # done: never again


@pytest.mark.parametrize(("defaults", "annotation", "escalates"), [
    (Defaults(), None, False),  # off by default
    (Defaults(escalate=True), None, True),  # --escalate
    (Defaults(escalate=True), "false", False),  # the pod opts out
    (Defaults(), "true", True),  # the pod opts in
])
def test_escalation_only_when_allowed(kube: FakeKube, clock: FakeClock, defaults: Defaults, annotation: str | None,
                                      escalates: bool) -> None:
    rig = Rig(kube, clock, defaults=defaults, escalation_timeout=30.0)
    p = pod(**({"escalate": annotation} if annotation else {}))
    kube.script_evict("web", 429)
    rig.add(p)
    rig.over(p)
    rig.sweep()
    rig.run_for(600, refresh=[p])
    assert len(kube.writes("delete")) == (1 if escalates else 0)
    assert kube.reasons().count(REASON_BLOCKED) == 1
    if not escalates:
        assert "escalation is off" in kube.events[0]["message"]
        times = _evict_times(kube)
        assert len(times) > 50 and times[-1] > T0 + 580  # keeps retrying ...
        assert max(b - a for a, b in itertools.pairwise(times)) <= 10.5  # ... at most every retry_max


def test_back_under_the_limit_drops_the_pending_eviction(kube: FakeKube, clock: FakeClock,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(kube, clock)
    p = pod(escalate="true")
    kube.script_evict("web", 429)
    rig.add(p)
    rig.over(p)
    rig.sweep()
    clock.advance(5)
    rig.over(p, total=100 * MI)
    rig.sweep()
    assert lines(caplog, "back under its limit")
    life = rig.sweeper.lifecycle.get(p["metadata"]["uid"])
    assert rig.sweeper.lifecycle.next_deadline() is None and life.blocked_since is None
    n = len(kube.writes())
    rig.run_for(120)
    assert len(kube.writes()) == n


def test_gone_pod_is_not_retried(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock)
    p = pod()
    kube.script_evict("web", 404)
    rig.add(p)
    rig.over(p)
    assert rig.sweep().results == {"gone": 1}
    rig.run_for(60, refresh=[p])
    assert len(kube.writes()) == 1 and kube.reasons() == []
    assert rig.sweeper.lifecycle.get(p["metadata"]["uid"]).result == "gone"


def test_other_failures_emit_action_failed_once_and_retry(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock)
    p = pod()
    kube.script_evict("web", 500, 500, 500, 201)
    rig.add(p)
    rig.over(p)
    assert rig.sweep().results == {"failed": 1}
    failed = kube.events[0]
    assert failed["reason"] == REASON_FAILED and failed["type"] == "Warning"
    assert "evict failed: HTTP 500" in failed["message"]
    rig.run_for(60, refresh=[p])
    assert len(kube.writes("evict")) == 4
    assert kube.reasons() == [REASON_FAILED, REASON_EVICTED]
    times = _evict_times(kube)
    assert times[1] - times[0] == pytest.approx(1.0)  # retry_min, then retry_max
    assert times[2] - times[1] == pytest.approx(10.0)


# ---------------------------------------------------------------------------------------------
# Rate caps


def test_cluster_wide_cap_holds_actions_back_and_logs_it(kube: FakeKube, clock: FakeClock,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(kube, clock, max_per_minute=2, max_per_namespace_per_minute=0)
    pods = [pod(f"p{i}", f"ns{i}") for i in range(4)]
    rig.add(*pods)
    for p in pods:
        rig.over(p)
    report = rig.sweep()
    assert report.results == {"evicted": 2, "rate-limited": 2}
    assert len(kube.writes()) == 2
    held = lines(caplog, "action=rate-limited")
    assert held and all("cluster-wide cap of 2 evictions per minute reached" in h for h in held)
    assert kube.reasons().count(REASON_CAPPED) == 2
    rig.run_for(55, refresh=pods)
    assert len(kube.writes()) == 2, "the cap holds for the whole minute"
    rig.run_for(20, refresh=pods)
    assert len(kube.writes()) == 4
    assert kube.reasons().count(REASON_EVICTED) == 4 and kube.reasons().count(REASON_CAPPED) == 2


def test_per_namespace_cap(kube: FakeKube, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(kube, clock, max_per_minute=0, max_per_namespace_per_minute=1)
    pods = [pod("a1", "a"), pod("a2", "a"), pod("b1", "b")]
    rig.add(*pods)
    for p in pods:
        rig.over(p)
    assert rig.sweep().results == {"evicted": 2, "rate-limited": 1}
    assert sorted(c[1] for c in kube.writes()) == ["a", "b"]
    assert lines(caplog, "cap of 1 evictions per minute in namespace a reached")


def test_dry_run_is_not_capped(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock, dry_run=True, max_per_minute=1)
    pods = [pod(f"p{i}") for i in range(3)]
    rig.add(*pods)
    for p in pods:
        rig.over(p)
    assert rig.sweep().results == {"would-evict": 3}


# ---------------------------------------------------------------------------------------------
# Refusals: protected, invalid, stale, missing, source errors, terminating


def test_protected_pod_over_its_limit_is_never_touched(kube: FakeKube, clock: FakeClock,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(kube, clock)
    p = pod("coredns", "kube-system")
    rig.add(p)
    rig.over(p)
    rig.sweep()
    rig.run_for(60, refresh=[p])
    assert kube.writes() == []
    assert kube.reasons() == [REASON_PROTECTED]
    assert kube.events[0]["type"] == "Warning" and "kube-system is protected" in kube.events[0]["message"]
    assert len(lines(caplog, "action=protected pod=kube-system/coredns")) == 1


def test_invalid_annotation_reported_once_never_acted_on(kube: FakeKube, clock: FakeClock,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(kube, clock)
    p = pod(limit="150%abc")
    rig.add(p)
    rig.over(p, total=10 << 30)
    for _ in range(10):
        report = rig.sweep()
        clock.advance(5)
    assert report.invalid == 1 and report.results == {}
    assert kube.writes() == []
    assert kube.reasons() == [REASON_INVALID]
    event = kube.events[0]
    assert event["type"] == "Warning"
    assert "memwatch.io/limit='150%abc'" in event["message"] and "not a Kubernetes quantity" in event["message"]
    (line,) = lines(caplog, REASON_INVALID)
    assert "pod=shop/web" in line and "150%abc" in line
    assert rig.source.fetches == 0, "an invalid pod is not even measured"


def test_stale_sample_is_counted_logged_never_acted_on(kube: FakeKube, clock: FakeClock,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(kube, clock, max_sample_age=60.0)
    p = pod()
    rig.add(p)
    rig.over(p, age=61.0)
    report = rig.sweep()
    assert (report.stale, report.sampled, report.results) == (1, 0, {})
    assert kube.writes() == [] and kube.events == []
    assert lines(caplog, "stale sample for pod=shop/web age=61.0s > max-sample-age=60s")
    assert metric(rig, "memwatch_samples_skipped_total", reason="stale", source="fake") == 1
    rig.over(p, age=59.0)  # fresh enough: now it acts
    assert rig.sweep().results == {"evicted": 1}


def test_missing_sample_is_counted_logged_once_never_acted_on(kube: FakeKube, clock: FakeClock,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(kube, clock)
    p = pod()
    rig.add(p)
    for _ in range(3):
        report = rig.sweep()
    assert report.missing == 1 and report.results == {}
    assert kube.writes() == [] and kube.events == []
    assert len(lines(caplog, "no usage sample for pod=shop/web")) == 1
    assert metric(rig, "memwatch_samples_skipped_total", reason="missing", source="fake") == 3


def test_source_error_acts_on_nothing(kube: FakeKube, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(kube, clock)
    p = pod()
    rig.add(p)
    rig.over(p)
    rig.source.error = "metrics-api: HTTP 503"
    for _ in range(3):
        report = rig.sweep()
    assert report.error == "metrics-api: HTTP 503" and report.results == {} and report.missing == 0
    assert kube.writes() == [] and kube.events == []
    assert len(lines(caplog, "usage read failed, acting on nothing")) == 1  # logged when it starts failing
    assert metric(rig, "memwatch_source_errors_total", source="fake") == 3
    rig.source.error = None
    assert rig.sweep().results == {"evicted": 1}


@pytest.mark.parametrize("kw", [{"terminating": True}, {"phase": "Succeeded"}, {"phase": "Failed"}, {"node": None}])
def test_terminating_finished_and_unscheduled_pods_are_skipped(kube: FakeKube, clock: FakeClock,
                                                               kw: dict[str, Any]) -> None:
    rig = Rig(kube, clock)
    p = make_pod("web", "shop", **kw)
    rig.add(p)
    rig.over(p)
    rig.sweep(times=3)
    assert kube.writes() == [] and kube.events == []
    assert rig.source.fetches == 0


def test_for_waits_across_sweeps(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock)
    p = pod(**{"for": "10s"})
    rig.add(p)
    results = []
    for _ in range(4):
        rig.over(p, age=0.0)
        results.append(rig.sweep().results)
        clock.advance(5)
    assert results == [{}, {}, {"evicted": 1}, {}]


# ---------------------------------------------------------------------------------------------
# Restarts: the cluster's Events remember what memwatch did


def _event(uid: str, reason: str, first: float, name: str = "web") -> dict[str, Any]:
    return {"metadata": {"name": f"{name}.x", "namespace": "shop"}, "reason": reason,
            "involvedObject": {"kind": "Pod", "namespace": "shop", "name": name, "uid": uid},
            "source": {"component": "memwatch"}, "firstTimestamp": iso(first), "lastTimestamp": iso(first)}


@pytest.mark.parametrize("reason", [REASON_EVICTED, REASON_DELETED, REASON_ESCALATED])
def test_restarted_sweeper_does_not_act_twice(clock: FakeClock, reason: str) -> None:
    kube = FakeKube(clock)
    done, fresh = pod("done"), pod("fresh")
    kube.event_pages = [{"items": [_event(done["metadata"]["uid"], reason, T0 - 300, "done")],
                         "metadata": {"continue": "x"}},
                        {"items": [_event("someone-else", REASON_PROTECTED, T0 - 10)], "metadata": {}}]
    rig = Rig(kube, clock)  # a new process: empty memory
    assert rig.recorder.load_history() == 2
    rig.add(done, fresh)
    rig.over(done)
    rig.over(fresh)
    rig.sweep(times=3, step=5)
    assert [c[2] for c in kube.writes()] == ["fresh"]
    assert rig.sweeper.lifecycle.get(done["metadata"]["uid"]).result == "already"


def test_dry_run_is_reported_once_across_restarts_and_does_not_block_a_later_eviction(clock: FakeClock) -> None:
    kube = FakeKube(clock)
    web = pod("web", action="dry-run")
    kube.event_pages = [{"items": [_event(web["metadata"]["uid"], REASON_DRY_RUN, T0 - 300)], "metadata": {}}]
    rig = Rig(kube, clock)  # restarted: the DryRun Event is already on the cluster
    rig.recorder.load_history()
    rig.add(web)
    rig.over(web)
    rig.sweep(times=3, step=5)
    assert kube.reasons() == [] and kube.writes() == []  # not reported again, nothing written
    # The user switches the pod from dry-run to evict: memwatch now evicts it.
    web["metadata"]["annotations"]["memwatch.io/action"] = "evict"
    rig.add(web)
    rig.sweep()
    assert [c[2] for c in kube.writes()] == ["web"]


def test_restart_keeps_the_escalation_deadline(clock: FakeClock) -> None:
    kube = FakeKube(clock)
    p = pod(escalate="true")
    kube.event_pages = [{"items": [_event(p["metadata"]["uid"], REASON_BLOCKED, T0 - 50)], "metadata": {}}]
    kube.script_evict("web", 429)
    rig = Rig(kube, clock, escalation_timeout=60.0)
    rig.recorder.load_history()
    assert rig.recorder.blocked_since == {p["metadata"]["uid"]: T0 - 50}
    rig.add(p)
    rig.over(p)
    rig.sweep()
    rig.run_for(15, refresh=[p])
    deletes = kube.writes("delete")
    assert len(deletes) == 1, "blocked for 50s before the restart: 10s more, not 60"
    assert T0 + 10 <= deletes[0][3] <= T0 + 10.5  # type: ignore[operator]


def test_invalid_annotation_not_reannounced_after_restart(clock: FakeClock) -> None:
    kube = FakeKube(clock)
    p = pod(limit="lots")
    kube.event_pages = [{"items": [_event(p["metadata"]["uid"], REASON_INVALID, T0 - 50)], "metadata": {}}]
    rig = Rig(kube, clock)
    rig.recorder.load_history()
    rig.add(p)
    rig.sweep(times=3)
    assert kube.events == []


# ---------------------------------------------------------------------------------------------
# Pods already judged under their limits are not judged again: but every change still counts


def test_a_lowered_limit_counts_with_the_same_sample(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock)
    p = pod()
    rig.add(p)
    rig.over(p, total=400 * MI)  # under 512Mi: the same Usage object on every sweep from here
    assert rig.sweep(times=3, step=1).results == {}
    p["metadata"]["annotations"]["memwatch.io/limit"] = "300Mi"  # a new record, the same sample
    p["metadata"]["resourceVersion"] = "2"
    rig.add(p)
    assert rig.sweep().results == {"evicted": 1}


def test_a_new_sample_over_the_limit_counts(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock)
    p = pod()
    rig.add(p)
    rig.over(p, total=400 * MI)
    assert rig.sweep(times=3, step=1).results == {}
    rig.over(p, total=600 * MI)
    assert rig.sweep().results == {"evicted": 1}


def test_an_unchanged_sample_still_goes_stale(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock, max_sample_age=10.0)
    p = pod()
    rig.add(p)
    rig.over(p, total=400 * MI)
    assert rig.sweep().stale == 0
    clock.advance(30)
    report = rig.sweep()
    assert (report.stale, report.sampled) == (1, 0)
    assert metric(rig, "memwatch_samples_skipped_total", reason="stale", source="fake") == 1


def test_every_judged_sample_counts_in_the_sample_age_histogram(kube: FakeKube, clock: FakeClock) -> None:
    rig = Rig(kube, clock)
    pods = [pod(f"web-{i}") for i in range(3)]
    rig.add(*pods)
    for i, p in enumerate(pods):
        rig.over(p, total=100 * MI, age=1.0 + i * 10)  # ages 1 s, 11 s, 21 s
    rig.sweep(times=2)
    assert metric(rig, "memwatch_sample_age_seconds_count", source="fake") == 6
    assert metric(rig, "memwatch_sample_age_seconds_bucket", source="fake", le="2.0") == 2
    assert metric(rig, "memwatch_sample_age_seconds_bucket", source="fake", le="15.0") == 4
    assert metric(rig, "memwatch_sample_age_seconds_sum", source="fake") == pytest.approx(2 * (1 + 11 + 21))


def test_the_nearest_pods_are_exported_bounded(kube: FakeKube, clock: FakeClock) -> None:
    from memwatch.observability import NEAREST_PODS

    rig = Rig(kube, clock)
    pods = [pod(f"web-{i:02d}") for i in range(NEAREST_PODS + 5)]
    rig.add(*pods)
    for i, p in enumerate(pods):
        rig.over(p, total=(100 + 20 * i) * MI)  # web-14 the nearest: 380Mi of 512Mi
    rig.sweep()
    samples = [s for f in rig.metrics.registry.collect() if f.name == "memwatch_pod_usage_ratio" for s in f.samples]
    assert len(samples) == NEAREST_PODS
    assert {s.labels["pod_name"] for s in samples} == {f"web-{i:02d}" for i in range(5, NEAREST_PODS + 5)}
    assert metric(rig, "memwatch_pod_usage_ratio", pod_namespace="shop", pod_name="web-14", scope="pod") == 380 / 512
    assert metric(rig, "memwatch_pod_headroom_bytes", pod_namespace="shop", pod_name="web-14", scope="pod") == 132 * MI
    rig.over(pods[0], total=500 * MI)  # web-00 comes nearest
    rig.sweep()
    assert metric(rig, "memwatch_pod_headroom_bytes", pod_namespace="shop", pod_name="web-00", scope="pod") == 12 * MI
    assert rig.metrics.registry.get_sample_value(
        "memwatch_pod_usage_ratio", {"pod_namespace": "shop", "pod_name": "web-05", "scope": "pod"}) is None
