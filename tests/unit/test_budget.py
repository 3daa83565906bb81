"""The restart budget's book (memwatch.budget): workloads, the sliding window, and what it learns
from memwatch's own Events (deduplicated, so a re-LIST or this process's own Event never counts twice)."""

from __future__ import annotations

from typing import Any

import pytest

from memwatch.budget import BudgetBook, from_reference, reference, workload_of
from memwatch.observability import REASON_EVICTED, REASON_KILLED, REASON_PROTECTED, Metrics, Recorder, build_event
from memwatch.podindex import PodIndex, PodRecord
from memwatch.policy import Defaults, RestartBudget
from memwatch.protections import Protections

from .fakes import T0, iso, make_pod

HOUR = RestartBudget(3, 3600.0)


def build(pod: dict[str, Any]) -> PodRecord:
    """The pod's record, as the watch makes it."""
    index = PodIndex(Defaults(), Protections().reason)
    index.upsert(pod)
    record = index.get(pod["metadata"]["uid"])
    assert record is not None
    return record


def owned(kind: str, name: str, labels: dict[str, str] | None = None, controller: bool = True) -> dict[str, Any]:
    pod = make_pod("p", "shop", labels=labels)
    pod["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "n"},  # not the controller: ignored
        {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "o", "controller": controller}]
    return pod


# ---------------------------------------------------------------------------------------------
# Which workload a pod belongs to


def test_a_deployments_replicaset_is_folded_into_the_deployment() -> None:
    assert workload_of(owned("ReplicaSet", "web-5d4f8c7b9", {"pod-template-hash": "5d4f8c7b9"})) == "Deployment/web"


def test_a_replicaset_of_its_own_stays_a_replicaset() -> None:
    assert workload_of(owned("ReplicaSet", "batchers")) == "ReplicaSet/batchers"
    # A hash label that is not the name's suffix: not a Deployment's ReplicaSet.
    assert workload_of(owned("ReplicaSet", "rs-1", {"pod-template-hash": "abc"})) == "ReplicaSet/rs-1"


@pytest.mark.parametrize("kind", ["StatefulSet", "DaemonSet", "Job"])
def test_other_controllers_are_the_workload(kind: str) -> None:
    assert workload_of(owned(kind, "db")) == f"{kind}/db"


def test_bare_pods_and_non_controller_owners_have_no_workload() -> None:
    assert workload_of(make_pod("bare")) is None
    assert workload_of(owned("ReplicaSet", "web-1", {"pod-template-hash": "1"}, controller=False)) is None
    assert workload_of({}) is None


def test_the_pod_record_carries_the_workload() -> None:
    pod = owned("ReplicaSet", "web-5d4f8c7b9", {"pod-template-hash": "5d4f8c7b9"})
    assert build(pod).workload == "Deployment/web"
    assert build(make_pod("bare")).workload is None


@pytest.mark.parametrize(("workload", "api_version"), [
    ("Deployment/web", "apps/v1"), ("StatefulSet/db", "apps/v1"), ("DaemonSet/agent", "apps/v1"),
    ("Job/migrate", "batch/v1"), ("CloneSet/x", None)])
def test_the_related_reference_round_trips(workload: str, api_version: str | None) -> None:
    ref = reference("shop", workload)
    assert ref.get("apiVersion") == api_version
    assert ref["namespace"] == "shop" and f"{ref['kind']}/{ref['name']}" == workload
    assert from_reference(ref) == ("shop", workload)
    assert from_reference(None) is None and from_reference({"kind": "Deployment"}) is None


# ---------------------------------------------------------------------------------------------
# The sliding window


def test_the_window_slides() -> None:
    book = BudgetBook()
    for i, t in enumerate((T0, T0 + 600, T0 + 1200)):
        assert not book.state("shop", "Deployment/web", HOUR, t).spent
        assert book.record("shop", "Deployment/web", t, f"k{i}")
    state = book.state("shop", "Deployment/web", HOUR, T0 + 1300)
    assert state.spent and state.used == 3 and state.left == 0
    assert state.since == T0 and state.frees_at == T0 + 3600
    assert "restart budget 3/1h of Deployment/web spent (3 actions since " in state.describe("Deployment/web")
    assert "next frees at" in state.describe("Deployment/web")
    # The first action leaves the window an hour after it: one slot is free again.
    after = book.state("shop", "Deployment/web", HOUR, T0 + 3600)
    assert not after.spent and after.used == 2 and after.left == 1
    # Other workloads and namespaces have budgets of their own.
    assert book.state("shop", "Deployment/api", HOUR, T0 + 1300).used == 0
    assert book.state("blog", "Deployment/web", HOUR, T0 + 1300).used == 0


def test_overspent_frees_when_enough_actions_leave_the_window() -> None:
    book = BudgetBook()
    for i in range(5):  # e.g. the controller and an agent both acted before learning of each other
        book.record("shop", "Deployment/web", T0 + 10 * i, f"k{i}")
    state = book.state("shop", "Deployment/web", RestartBudget(3, 600.0), T0 + 100)
    assert state.used == 5 and state.frees_at == T0 + 20 + 600  # the third oldest must leave


def test_a_zero_budget_never_allows_an_action() -> None:
    book = BudgetBook()
    state = book.state("shop", "Deployment/web", RestartBudget(0, 3600.0), T0)
    assert state.spent and state.frees_at is None
    assert "allows no action" in state.describe("Deployment/web")


def test_a_key_counts_once() -> None:
    book = BudgetBook()
    assert book.record("shop", "Deployment/web", T0, "shop/e1")
    assert not book.record("shop", "Deployment/web", T0 + 5, "shop/e1")
    assert book.state("shop", "Deployment/web", HOUR, T0 + 10).used == 1


def test_memory_is_bounded() -> None:
    book = BudgetBook(horizon=3600.0, max_entries=100)
    for i in range(1000):
        book.record("shop", f"Deployment/w{i % 7}", T0 + i, f"k{i}")
    assert len(book) <= 100
    # Everything older than the horizon goes at the next prune.
    book.prune(T0 + 1000 + 3600 + 1)
    assert len(book) == 0
    assert not book.record("shop", "Deployment/w", T0, "old")  # older than the horizon: not counted


# ---------------------------------------------------------------------------------------------
# Learning from memwatch's Events


def acted(name: str, first: float, workload: str | None = "Deployment/web", reason: str = REASON_EVICTED,
          namespace: str = "shop") -> dict[str, Any]:
    ev: dict[str, Any] = {
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"}, "reason": reason,
        "involvedObject": {"kind": "Pod", "namespace": namespace, "name": "web-x", "uid": f"pod-{name}"},
        "source": {"component": "memwatch"}, "firstTimestamp": iso(first), "lastTimestamp": iso(first)}
    if workload:
        ev["related"] = reference(namespace, workload)
    return ev


def test_learned_events_are_deduplicated_across_relists() -> None:
    book = BudgetBook()
    events = [acted(f"e{i}", T0 + i) for i in range(3)]
    assert [book.learn(e) for e in events] == [True, True, True]
    assert [book.learn(e) for e in events] == [False, False, False]  # the watch re-LISTed
    assert book.state("shop", "Deployment/web", HOUR, T0 + 60).used == 3


def test_events_without_a_workload_or_a_time_do_not_count() -> None:
    book = BudgetBook()
    assert not book.learn(acted("bare", T0, workload=None))
    untimed = acted("untimed", T0)
    del untimed["firstTimestamp"], untimed["lastTimestamp"]
    assert not book.learn(untimed)
    assert len(book) == 0


def test_an_event_from_the_future_counts_as_now() -> None:
    book = BudgetBook(wall=lambda: T0)
    book.learn(acted("ahead", T0 + 7200))  # another machine's clock runs two hours ahead
    assert book.state("shop", "Deployment/web", HOUR, T0 + 3601).used == 0


def test_the_recorder_learns_only_acted_events_that_name_a_workload() -> None:
    rec = Recorder(None, Metrics())
    rec.learn(acted("e1", T0))
    rec.learn(acted("e2", T0, reason=REASON_KILLED))  # the agent killed a restart pod in place
    rec.learn(acted("e3", T0, reason=REASON_PROTECTED))  # a refusal: not an action
    rec.learn(acted("e4", T0, workload=None))  # a last-resort kill names no workload
    assert rec.budget.state("shop", "Deployment/web", HOUR, T0 + 1).used == 2


def test_this_processs_own_event_read_back_is_not_counted_twice() -> None:
    pod = owned("ReplicaSet", "web-5d4f8c7b9", {"pod-template-hash": "5d4f8c7b9"})
    record = build(pod)
    rec = Recorder(None, Metrics())
    name = rec.count(record, T0)
    assert name is not None
    body = build_event(record, REASON_EVICTED, "Evicted", False, name=name, related=record.workload, at=T0)
    assert body["metadata"]["name"] == name and body["firstTimestamp"] == iso(T0)
    assert body["related"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "namespace": "shop"}
    rec.learn(body)  # the Events watch delivers it back
    assert rec.budget.state("shop", "Deployment/web", HOUR, T0 + 1).used == 1
    assert rec.count(build(make_pod("bare")), T0) is None  # a bare pod has no budget


def test_a_restarted_process_restores_the_count_from_the_events() -> None:
    pod = owned("ReplicaSet", "web-5d4f8c7b9", {"pod-template-hash": "5d4f8c7b9"})
    record = build(pod)
    old = Recorder(None, Metrics())
    events = []
    for i in range(3):
        name = old.count(record, T0 + 60 * i)
        events.append(build_event(record, REASON_EVICTED, "Evicted", False, name=name, related=record.workload,
                                  at=T0 + 60 * i))
    new = Recorder(None, Metrics())
    for ev in events:
        new.learn(ev)
    state = new.budget.state("shop", "Deployment/web", HOUR, T0 + 300)
    assert state.spent and state.since == T0 and state.frees_at == T0 + 3600
