"""Leader election over a coordination.k8s.io/v1 Lease, so several replicas can run and one acts.

The holder renews the Lease every ``renew`` seconds; a replica takes over when the holder's renew
time is older than ``lease_duration``. A replica that cannot renew stops acting before its Lease
can expire (it counts from its own last successful renewal), so two replicas never act at once.
Non-leaders keep their pod index warm and take over within one lease duration.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from memwatch.kube import ApiError, Kube
from memwatch.quantity import parse_time

log = logging.getLogger("memwatch.leader")


def _micro(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, lease_duration: float = 15.0,
                 renew: float = 5.0, clock: Callable[[], float] = time.time,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.lease_duration, self.renew = lease_duration, renew
        self.clock = clock
        self.on_change = on_change
        self._valid_until = 0.0
        self._leader = False
        self._stop = threading.Event()

    def is_leader(self) -> bool:
        return self._leader and self.clock() < self._valid_until

    def _body(self, lease: dict[str, Any] | None, now: float, transitions: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_duration),
                     "acquireTime": _micro(now), "renewTime": _micro(now), "leaseTransitions": transitions},
        }
        if lease is not None:
            body["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                body["spec"]["acquireTime"] = lease["spec"].get("acquireTime", _micro(now))
        return body

    def try_acquire(self) -> bool:
        """One round: acquire, renew or observe. Returns whether this replica leads now."""
        now = self.clock()
        try:
            lease = self.kube.get_lease(self.namespace, self.name)
            if lease is None:
                ok = self.kube.create_lease(self.namespace, self._body(None, now, 0)).ok
            else:
                spec = lease.get("spec") or {}
                holder = spec.get("holderIdentity")
                renewed = parse_time(spec.get("renewTime")) or 0.0
                duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
                transitions = int(spec.get("leaseTransitions") or 0)
                if holder == self.identity:
                    ok = self.kube.replace_lease(self.namespace, self.name,
                                                 self._body(lease, now, transitions)).ok
                elif not holder or now - renewed > duration:
                    log.info("lease %s/%s held by %s expired; taking over", self.namespace, self.name, holder)
                    ok = self.kube.replace_lease(self.namespace, self.name,
                                                 self._body(lease, now, transitions + 1)).ok
                else:
                    ok = False
        except ApiError as exc:
            log.warning("leader election: %s", exc)
            ok = False
        if ok:
            self._valid_until = now + self.lease_duration - self.renew  # stop acting before others may start
        self._set(ok and now < self._valid_until)
        return self._leader

    def _set(self, leader: bool) -> None:
        if leader != self._leader:
            log.info("leader election: %s the lease %s/%s", "acquired" if leader else "lost",
                     self.namespace, self.name)
            self._leader = leader
            if self.on_change:
                self.on_change(leader)

    def run(self) -> None:
        while not self._stop.is_set():
            self.try_acquire()
            self._stop.wait(self.renew)

    def start(self) -> None:
        threading.Thread(target=self.run, name="leader", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
