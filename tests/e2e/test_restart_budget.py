"""The restart budget end to end, on a real cluster with memwatch installed.

A one-replica Deployment whose pod is over its watch limit from its start (the hog holding 160 MiB
against a 100Mi limit, well under its 400Mi kernel limit) is an evict-recreate loop. With
``memwatch.io/restart-budget: "3/10m"`` on its pod template memwatch acts on it at most 3 times in 10
minutes, then posts ``MemwatchBudgetExhausted`` on the next pod and leaves it alone; and the count
survives a restart of every memwatch pod (the controller and, when deployed, the node agents): the
new ones learn it from memwatch's own Events, which name the Deployment in ``related``.

Everything is counted from the API server's Events, never from memwatch's logs.
"""

from __future__ import annotations

from typing import Any

import pytest

from memwatch.quantity import parse_time

from .support import ACTION_REASONS, PART_OF, Cluster, Memwatch, PodRecorder, hog_container, repeated, wait_for

pytestmark = pytest.mark.e2e

WATCH = "100Mi"
HARD = "400Mi"
#: The hog as a sleeper holding 160 MiB from its start: over the watch limit at once, never OOM-killed.
LEAKS_AT_START = ["--sleep", "--start", "160"]
BUDGET = "3/10m"
WINDOW = 600.0
EXHAUSTED = "MemwatchBudgetExhausted"
SWEEPS = 3


def leaking_deployment(ns: str, name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": dict(PART_OF)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**labels, **PART_OF},
                             "annotations": {"memwatch.io/limit": WATCH, "memwatch.io/restart-budget": BUDGET}},
                "spec": {"terminationGracePeriodSeconds": 2, "containers": [hog_container(LEAKS_AT_START, HARD)]},
            },
        },
    }


def memwatch_events(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    """Every Event memwatch posted in the namespace (the controller's and the agents'), oldest first."""
    return [e for e in cluster.events(ns) if (e.get("source") or {}).get("component") == "memwatch"
            or e.get("reportingComponent") == "memwatch"]


def acted(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("reason") in ACTION_REASONS]


def exhausted(events: list[dict[str, Any]], uid: str | None = None) -> list[dict[str, Any]]:
    return [e for e in events if e.get("reason") == EXHAUSTED
            and (uid is None or (e.get("involvedObject") or {}).get("uid") == uid)]


def event_time(event: dict[str, Any]) -> float:
    ts = parse_time(event.get("firstTimestamp") or event.get("eventTime"))
    assert ts is not None, f"Event without a timestamp: {event}"
    return ts


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e.get("reason", ""), (e.get("involvedObject") or {}).get("name", ""),
             (e.get("source") or {}).get("host", "")) for e in events]


def no_oom(recorder: PodRecorder) -> str | None:
    for hist in list(recorder.pods.values()):
        if hist.oom:
            return f"pod {hist.name} was OOM-killed ({hist.oom}): the hog should never reach its kernel limit"
    return None


@pytest.mark.timeout(480, func_only=True)
def test_a_leaking_deployment_is_acted_on_three_times_then_held_across_a_restart(
        cluster: Cluster, memwatch: Memwatch, ns: str, recorder: PodRecorder, clock: Any) -> None:
    if memwatch.dry_run:
        pytest.skip("memwatch is installed with --dry-run: nothing spends a restart budget")
    name = "leaky"
    related = {"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "namespace": ns}
    cluster.create(leaking_deployment(ns, name))
    clock("created")

    def too_many() -> str | None:
        events = memwatch_events(cluster, ns)
        if len(acted(events)) > 3:
            return f"memwatch acted more than 3 times: {summary(acted(events))}"
        return no_oom(recorder)

    # Three actions, one per pod, each naming the Deployment (the API server keeps `related`).
    def three_actions() -> list[dict[str, Any]] | None:
        done = acted(memwatch_events(cluster, ns))
        return done if len(done) >= 3 else None

    three = wait_for("memwatch to act 3 times on the Deployment's pods", three_actions, 240, poll=1.0,
                     fail=too_many)
    clock("third_action")
    assert len({e["involvedObject"]["uid"] for e in three}) == 3, summary(three)
    for event in three:
        assert event.get("related") == related, f"the acted Event does not name the Deployment: {event}"

    # Then the next pod is held: one Warning Event saying what memwatch would have done.
    def first_held() -> dict[str, Any] | None:
        hits = exhausted(memwatch_events(cluster, ns))
        return hits[0] if hits else None

    held_event = wait_for(f"a {EXHAUSTED} Event", first_held, 180, poll=1.0, fail=too_many)
    clock("exhausted")
    assert held_event["type"] == "Warning"
    message = held_event["message"]
    assert f"restart budget {BUDGET} of Deployment/{name} spent (3 actions since" in message, message
    assert "would have evicted" in message or "would have deleted" in message, message
    held_uid, held_name = held_event["involvedObject"]["uid"], held_event["involvedObject"]["name"]
    assert held_uid not in {e["involvedObject"]["uid"] for e in three}
    first_action = min(event_time(e) for e in three)

    # Restart every memwatch pod: the new ones know the budget only from the Events.
    old = {p["metadata"]["name"] for p in memwatch.all_pods()}
    for pod_name in old:
        cluster.remove_pod(memwatch.namespace, pod_name)
    clock("restart")
    new = memwatch.wait_ready(timeout=180)
    assert new["metadata"]["name"] not in old
    if memwatch.agent_daemonset:
        wait_for("new agent pods", lambda: memwatch.agent_ready(exclude=old) is None, 180)
    clock("memwatch_ready_again")

    # A few sweeps later: still no fourth action, and the held pod was not told twice.
    memwatch.wait_sweeps(SWEEPS, check=too_many)
    events = memwatch_events(cluster, ns)
    assert len(acted(events)) == 3, summary(acted(events))
    again = repeated(exhausted(events, held_uid), EXHAUSTED)
    assert not again, f"{EXHAUSTED} was repeated on pod {held_name} across the restart: {again}"

    # The Deployment's next pod is held by the new memwatch too.
    cluster.remove_pod(ns, held_name)

    def next_held() -> dict[str, Any] | None:
        hits = [e for e in exhausted(memwatch_events(cluster, ns)) if e["involvedObject"]["uid"] != held_uid]
        return hits[0] if hits else None

    fresh = wait_for(f"{EXHAUSTED} on the Deployment's next pod", next_held, 180, poll=1.0, fail=too_many)
    clock("next_pod_held")
    host = (fresh.get("source") or {}).get("host") or fresh.get("reportingInstance") or "?"
    assert host not in old, f"a memwatch pod from before the restart posted it: {fresh.get('source')}"
    assert f"restart budget {BUDGET} of Deployment/{name} spent" in fresh["message"], fresh["message"]
    memwatch.wait_sweeps(SWEEPS, check=too_many)
    final = memwatch_events(cluster, ns)
    assert len(acted(final)) == 3, summary(acted(final))
    assert no_oom(recorder) is None

    # All of this must have happened inside the budget's window, or "no fourth action" proves nothing.
    last = max(event_time(e) for e in final)
    clock("window_used", last - first_action)
    assert last - first_action < WINDOW - 30, (
        f"the test took {last - first_action:.0f}s of the {WINDOW:.0f}s window: too slow to prove the budget held")
