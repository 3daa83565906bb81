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
    return LeaderElector(store, "memwatch", "memwatch", who, lease_duration=15, renew=5,  # type: ignore[arg-type]
                         clock=clock)


def test_one_replica_leads_and_a_standby_takes_over_only_after_expiry(clock: FakeClock) -> None:
    store = LeaseStore()
    a, b = _elector(store, "a", clock), _elector(store, "b", clock)
    assert a.try_acquire() and a.is_leader()
    assert not b.try_acquire() and not b.is_leader()
    assert store.lease is not None and store.lease["spec"]["holderIdentity"] == "a"

    clock.advance(5)
    assert a.try_acquire()  # renewal
    clock.advance(10)  # a's lease, renewed 10 s ago, is still valid for others: b must wait
    assert not b.try_acquire()
    # a stops acting before its lease can expire for others (renewed at t+5, valid to t+15).
    assert not a.is_leader()

    clock.advance(6)  # 16 s since a's last renewal > 15 s lease duration
    assert b.try_acquire() and b.is_leader()
    assert store.lease["spec"]["holderIdentity"] == "b"
    assert store.lease["spec"]["leaseTransitions"] == 1
    assert not a.try_acquire() and not a.is_leader()


def test_get_json_or_none_maps_404_to_none_and_returns_objects(api: FakeApiServer) -> None:
    kube = api.kube()
    assert kube.get_json_or_none("/apis/coordination.k8s.io/v1/namespaces/x/leases/missing") is None
    assert kube.get_lease("x", "missing") is None
    assert kube.get_json_or_none("/apis/metrics.k8s.io/v1beta1") is not None
