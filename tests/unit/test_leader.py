"""Leader election over a Lease: one replica acts; a standby takes over only after the lease expires."""

from __future__ import annotations

from typing import Any

from memwatch.kube import WriteResult
from memwatch.leader import LeaderElector

from .fakeapi import FakeApiServer
from .fakes import FakeClock


class LeaseStore:
    """The Lease API as the elector uses it, with optimistic concurrency on resourceVersion."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None if self.lease is None else {**self.lease, "metadata": dict(self.lease["metadata"])}

    def _store(self, body: Any) -> WriteResult:
        self.version += 1
        self.lease = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.version)}}
        return WriteResult(True, 200)

    def create_lease(self, namespace: str, body: Any) -> WriteResult:
        return WriteResult(False, 409, "exists") if self.lease is not None else self._store(body)

    def replace_lease(self, namespace: str, name: str, body: Any) -> WriteResult:
        assert self.lease is not None
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            return WriteResult(False, 409, "conflict")
        return self._store(body)


def _elector(store: LeaseStore, who: str, clock: FakeClock) -> LeaderElector:
    return LeaderElector(store, "memwatch", "memwatch", who, lease_duration=15,  # type: ignore[arg-type]
                         renew_deadline=10, retry=2, clock=clock)


def test_one_replica_leads_and_a_standby_takes_over_only_after_expiry(clock: FakeClock) -> None:
    store = LeaseStore()
    a, b = _elector(store, "a", clock), _elector(store, "b", clock)
    assert a.try_acquire() and a.is_leader()
    assert not b.try_acquire() and not b.is_leader()  # b first sees the record now
    assert store.lease is not None and store.lease["spec"]["holderIdentity"] == "a"

    clock.advance(5)
    assert a.try_acquire()  # renewal: the record changes, b's observation starts over
    assert not b.try_acquire()
    clock.advance(10)
    # a renewed 10 s ago: it stops acting at its renew deadline, before others may take over...
    assert not a.is_leader() and not a.may_write()
    assert not b.try_acquire()  # ...and b has seen the record unchanged for only 10 s of its 15 s

    clock.advance(6)  # b has now seen it unchanged for 16 s > 15 s
    assert b.try_acquire() and b.is_leader()
    assert store.lease["spec"]["holderIdentity"] == "b"
    assert store.lease["spec"]["leaseTransitions"] == 1
    assert not a.try_acquire() and not a.is_leader()


def test_wall_clock_skew_never_makes_two_leaders(clock: FakeClock) -> None:
    """Takeover is judged on the candidate's own monotonic clock, never on renewTime: a candidate
    whose wall clock runs hours ahead (or a holder whose runs behind) waits a full lease all the same."""
    store = LeaseStore()
    a, b = _elector(store, "a", clock), _elector(store, "b", clock)
    assert a.try_acquire()
    for _ in range(10):
        clock.step_wall(3600)  # b's view of "now" jumps an hour ahead each round
        clock.advance(2)
        assert a.try_acquire() and a.is_leader()
        assert not b.try_acquire() and not b.is_leader()
    clock.step_wall(-7200)  # and back: still one leader
    clock.advance(2)
    assert a.try_acquire() and not b.try_acquire()


def test_a_paused_leader_writes_nothing_until_it_renews(clock: FakeClock) -> None:
    """SIGSTOP past the lease: the monotonic clock kept running, so on resume the fence is down."""
    store = LeaseStore()
    a, b = _elector(store, "a", clock), _elector(store, "b", clock)
    assert a.try_acquire() and a.may_write()
    assert not b.try_acquire()
    clock.advance(16)  # a is frozen; b keeps observing
    assert not a.may_write(), "the fence is down the moment the renew deadline has passed"
    assert b.try_acquire() and b.may_write()
    assert not a.try_acquire() and not a.may_write(), "a lost the lease and must not write"


def test_release_hands_over_at_the_next_retry(clock: FakeClock) -> None:
    store = LeaseStore()
    a, b = _elector(store, "a", clock), _elector(store, "b", clock)
    assert a.try_acquire()
    assert not b.try_acquire()
    a.stop()  # a rolling upgrade: the old replica shuts down
    assert store.lease is not None and store.lease["spec"]["holderIdentity"] == ""
    assert not a.is_leader()
    clock.advance(2)  # one retry period, not a lease duration
    assert b.try_acquire() and b.is_leader()


def test_a_failed_renewal_keeps_leading_only_until_the_renew_deadline(clock: FakeClock) -> None:
    store = LeaseStore()
    a = _elector(store, "a", clock)
    assert a.try_acquire()
    store.replace_lease = lambda *args: WriteResult(False, 500, "etcd down")  # type: ignore[method-assign]
    clock.advance(9)
    assert a.try_acquire(), "a failed renewal within the deadline keeps the lease"
    assert a.may_write()  # 9 s < 10 s renew deadline
    clock.advance(1.5)
    assert not a.try_acquire() and not a.may_write()


def test_get_json_or_none_maps_404_to_none_and_returns_objects(api: FakeApiServer) -> None:
    kube = api.kube()
    assert kube.get_json_or_none("/apis/coordination.k8s.io/v1/namespaces/x/leases/missing") is None
    assert kube.get_lease("x", "missing") is None
    assert kube.get_json_or_none("/apis/metrics.k8s.io/v1beta1") is not None
