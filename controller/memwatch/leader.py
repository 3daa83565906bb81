"""Leader election over a coordination.k8s.io/v1 Lease, so several replicas can run and one acts.

client-go's rules, on this process's monotonic clock only (:mod:`memwatch.clock`):

* A candidate never compares the holder's ``renewTime`` (another machine's wall clock) with its own
  clock. It remembers when *it* last saw the Lease record change (``observed``, monotonic) and takes
  over only after a full ``leaseDurationSeconds`` without a change. Clock skew between replicas
  therefore cannot make two leaders.
* The leader counts its validity from the *start* of its last successful renewal request, and stops
  acting ``renew_deadline`` after it (shorter than the lease), so it has stopped before any candidate
  can take over. :meth:`LeaderElector.may_write` is the fence checked right before every write.
* A paused leader (SIGSTOP, a frozen VM) resumes with its monotonic clock past its deadline: it
  writes nothing until it has renewed again.
* A leader that shuts down releases the Lease (empty holder), and a standby checks every half
  ``retry`` period, so a rolling upgrade hands over within about a second instead of a whole
  lease duration.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from memwatch.clock import SYSTEM, Clock
from memwatch.kube import ApiError, Kube

log = logging.getLogger("memwatch.leader")


def _micro(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record_key(lease: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies one version of the Lease record (client-go compares the whole record)."""
    spec = lease.get("spec") or {}
    return (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("acquireTime"),
            spec.get("leaseTransitions"), (lease.get("metadata") or {}).get("resourceVersion"))


class LeaderElector:
    """One replica's side of the election. ``lease_duration`` > ``renew_deadline`` > ``retry``."""

    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, lease_duration: float = 15.0,
                 renew_deadline: float = 10.0, retry: float = 2.0, clock: Clock = SYSTEM,
                 on_change: Callable[[bool], None] | None = None) -> None:
        if not lease_duration > renew_deadline > retry > 0:
            raise ValueError("leader election needs lease_duration > renew_deadline > retry > 0")
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.lease_duration, self.renew_deadline, self.retry = lease_duration, renew_deadline, retry
        self.clock = clock
        self.on_change = on_change
        self._valid_until = -1e18  # mono: this replica may act until then
        self._leader = False
        self._observed: tuple[Any, ...] | None = None  # the Lease record last seen
        self._observed_at = 0.0  # mono: when it was first seen in that state
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def is_leader(self) -> bool:
        return self._leader and self.clock.mono() < self._valid_until

    def may_write(self) -> bool:
        """The fence: True only while this replica's last renewal is recent enough that no other
        replica can have taken over. Checked right before every write."""
        return self.is_leader()

    def _body(self, lease: dict[str, Any] | None, transitions: int) -> dict[str, Any]:
        now = self.clock.wall()  # renewTime is informational for humans; nobody compares it with a clock
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
        start = self.clock.mono()
        ok = False
        try:
            lease = self.kube.get_lease(self.namespace, self.name)
            if lease is None:
                ok = self.kube.create_lease(self.namespace, self._body(None, 0)).ok
            else:
                spec = lease.get("spec") or {}
                holder = spec.get("holderIdentity")
                duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
                transitions = int(spec.get("leaseTransitions") or 0)
                key = _record_key(lease)
                if key != self._observed:
                    self._observed, self._observed_at = key, start
                if holder == self.identity:
                    ok = self.kube.replace_lease(self.namespace, self.name, self._body(lease, transitions)).ok
                elif not holder or start - self._observed_at > duration:
                    log.info("lease %s/%s %s; taking over", self.namespace, self.name,
                             "was released" if not holder else
                             f"held by {holder} unchanged for {start - self._observed_at:.1f}s")
                    ok = self.kube.replace_lease(self.namespace, self.name,
                                                 self._body(lease, transitions + 1)).ok
        except ApiError as exc:
            log.warning("leader election: %s", exc)
        if ok:
            # From the request's start: the server may have written it at any point after that.
            self._valid_until = start + self.renew_deadline
        self._set(ok or (self._leader and self.clock.mono() < self._valid_until))
        return self.is_leader()

    def release(self) -> None:
        """Give the Lease up (on shutdown), so another replica takes over at its next retry."""
        with self._lock:
            was = self._leader
            self._set(False)
            self._valid_until = -1e18
        if not was:
            return
        try:
            lease = self.kube.get_lease(self.namespace, self.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            body = self._body(lease, int((lease.get("spec") or {}).get("leaseTransitions") or 0))
            body["spec"].update(holderIdentity="", leaseDurationSeconds=1)
            if self.kube.replace_lease(self.namespace, self.name, body).ok:
                log.info("released the lease %s/%s", self.namespace, self.name)
        except ApiError as exc:
            log.warning("leader election: could not release the lease: %s", exc)

    def _set(self, leader: bool) -> None:
        if leader != self._leader:
            log.info("leader election: %s the lease %s/%s", "acquired" if leader else "lost",
                     self.namespace, self.name)
            self._leader = leader
            if self.on_change:
                self.on_change(leader)

    def run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    break
                leader = self.try_acquire()
            # A standby looks twice as often as the leader renews (a GET, no write): a released
            # Lease (a rolling upgrade) is taken over within half a retry period.
            self._stop.wait(self.retry if leader else self.retry / 2)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="leader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop electing and release the Lease if held."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.renew_deadline)
        self.release()
