"""The enforcer: the only code that evicts or deletes pods.

The action ladder, like descheduler's evictor:

1. ``dry-run`` (per pod, or ``--dry-run`` globally): everything but the write.
2. ``evict``: the Eviction API, so PodDisruptionBudgets are honoured. A 429 (a PDB blocks it) is
   retried with backoff. If it stays blocked past ``--escalation-timeout`` and escalation is allowed
   (``memwatch.io/escalate`` or ``--escalate``) the pod is deleted; otherwise memwatch says so in an
   Event and keeps retrying.
3. ``delete``: a plain delete with the grace period, UID-preconditioned.

Global caps (per minute, cluster-wide and per namespace) hold actions back; each hold is logged.
The node agent reuses this class and adds its kill rung on top.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

from memwatch.kube import Kube, WriteResult
from memwatch.observability import (
    REASON_BLOCKED,
    REASON_CAPPED,
    REASON_DELETED,
    REASON_DRY_RUN,
    REASON_ESCALATED,
    REASON_EVICTED,
    REASON_FAILED,
    ActionLine,
    Recorder,
)
from memwatch.podindex import PodRecord
from memwatch.policy import Action, Breach

log = logging.getLogger("memwatch.enforcer")

WINDOW = 60.0  # the caps count writes over the last minute


@dataclass(frozen=True, slots=True)
class EnforcerSettings:
    dry_run: bool = False
    escalation_timeout: float = 60.0
    max_per_minute: int = 20  # 0: no cap
    max_per_namespace_per_minute: int = 5  # 0: no cap
    retry_min: float = 1.0
    retry_max: float = 10.0


@dataclass(frozen=True, slots=True)
class Trigger:
    """Why the enforcer is asked to act: the breach and its timing, for the log line and Event."""

    breach: Breach
    source: str
    sample_time: float  # epoch, when the over-limit sample was taken
    crossed_at: float  # epoch, first over-limit sample of this breach
    detected_at: float  # epoch, when memwatch saw it


class RateCaps:
    """Sliding one-minute caps on real writes, cluster-wide and per namespace."""

    def __init__(self, total: int, per_namespace: int, clock: Callable[[], float]) -> None:
        self.total, self.per_namespace, self.clock = total, per_namespace, clock
        self._all: deque[float] = deque()
        self._ns: dict[str, deque[float]] = defaultdict(deque)

    def _trim(self, q: deque[float], now: float) -> None:
        while q and now - q[0] >= WINDOW:
            q.popleft()

    def check(self, namespace: str) -> str | None:
        """Why an action in ``namespace`` must wait now, or None if it may go."""
        now = self.clock()
        self._trim(self._all, now)
        ns_q = self._ns[namespace]
        self._trim(ns_q, now)
        if self.total and len(self._all) >= self.total:
            return f"cluster-wide cap of {self.total} evictions per minute reached"
        if self.per_namespace and len(ns_q) >= self.per_namespace:
            return f"cap of {self.per_namespace} evictions per minute in namespace {namespace} reached"
        if not ns_q:
            del self._ns[namespace]  # keep memory bounded by active namespaces
        return None

    def take(self, namespace: str) -> None:
        now = self.clock()
        self._all.append(now)
        self._ns[namespace].append(now)


class Enforcer:
    """Carries out decisions. Owns the sweep-state fields of :class:`PodRecord` it touches."""

    def __init__(self, kube: Kube | None, recorder: Recorder, settings: EnforcerSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self.kube = kube
        self.recorder = recorder
        self.settings = settings
        self.clock = clock
        self.caps = RateCaps(settings.max_per_minute, settings.max_per_namespace_per_minute, clock)
        self._pending: dict[str, tuple[PodRecord, Trigger]] = {}  # blocked or failed: retry due

    # -- the ladder ----------------------------------------------------------------------------
    def act(self, record: PodRecord, trigger: Trigger) -> str:
        """Act on a pod whose policy says so. Returns the result name (also logged)."""
        policy = record.policy
        assert policy is not None, "the sweep only passes pods with a valid policy"
        now = self.clock()
        if now < record.next_attempt:
            return "waiting"
        if self.settings.dry_run or policy.action is Action.DRY_RUN:
            verb = Action.EVICT if policy.action is Action.DRY_RUN else policy.action
            # A report, not an action: said once per pod (also across restarts, from the Events), and
            # the pod stays eligible, so switching it to `evict` later takes effect at once.
            result = f"would-{verb.value}"
            if not self.recorder.already(record.uid, [REASON_DRY_RUN]):
                self._emit(result, REASON_DRY_RUN, record, trigger, None,
                           "dry-run: nothing was written" + (" (--dry-run)" if self.settings.dry_run else ""))
            return result
        capped = self.caps.check(record.namespace)
        if capped:
            record.next_attempt = now + self.settings.retry_max
            self._pending[record.uid] = (record, trigger)
            line = self._line("rate-limited", record, trigger, None, capped)
            if self.recorder.already(record.uid, [REASON_CAPPED]):
                log.warning(line.format())  # every hold is logged; the Event is posted once per pod
            else:
                self.recorder.action(line, REASON_CAPPED, warning=True)
            return "rate-limited"
        if policy.action is Action.DELETE:
            return self._delete(record, trigger, "deleted", REASON_DELETED)
        return self._evict(record, trigger)

    def _evict(self, record: PodRecord, trigger: Trigger) -> str:
        assert self.kube is not None and record.policy is not None
        res = self.kube.evict(record.namespace, record.name, record.uid, record.policy.grace_period)
        now = self.clock()
        if res.ok:
            self.caps.take(record.namespace)
            return self._done(record, trigger, "evicted", REASON_EVICTED, now)
        if res.gone:
            return self._gone(record)
        if res.blocked:
            return self._blocked(record, trigger, res, now)
        return self._failed(record, trigger, res, "evict", now)

    def _blocked(self, record: PodRecord, trigger: Trigger, res: WriteResult, now: float) -> str:
        assert record.policy is not None
        first = record.blocked_since is None
        if first:
            # Restored from the cluster's Events after a restart, so the deadline does not reset.
            record.blocked_since = self.recorder.blocked_since.get(record.uid, now)
        assert record.blocked_since is not None
        waited = now - record.blocked_since
        deadline = self.settings.escalation_timeout - waited
        if record.policy.escalate and deadline <= 0:
            return self._delete(record, trigger, "escalated", REASON_ESCALATED,
                                f"eviction blocked by a PodDisruptionBudget for {waited:.0f}s; deleting")
        plan = (f"escalating to delete in {max(deadline, 0):.0f}s" if record.policy.escalate
                else "escalation is off (memwatch.io/escalate or --escalate); retrying")
        if first:
            self._emit("blocked", REASON_BLOCKED, record, trigger, None, f"{_short(res.message)}; {plan}",
                       warning=True)
        else:
            log.debug("still blocked pod=%s waited=%.1fs %s", record.key, waited, plan)
        backoff = min(max(self.settings.retry_min, waited / 2), self.settings.retry_max)
        next_try = now + backoff
        if record.policy.escalate and deadline > 0:
            next_try = min(next_try, now + deadline)  # wake exactly at the escalation deadline
        record.next_attempt = next_try
        self._pending[record.uid] = (record, trigger)
        return "blocked"

    def _delete(self, record: PodRecord, trigger: Trigger, result: str, reason: str, detail: str = "") -> str:
        assert self.kube is not None and record.policy is not None
        res = self.kube.delete_pod(record.namespace, record.name, record.uid, record.policy.grace_period)
        now = self.clock()
        if res.ok:
            self.caps.take(record.namespace)
            return self._done(record, trigger, result, reason, now, detail)
        if res.gone:
            return self._gone(record)
        return self._failed(record, trigger, res, "delete", now)

    def _done(self, record: PodRecord, trigger: Trigger, result: str, reason: str, now: float,
              detail: str = "") -> str:
        record.acted = result
        record.blocked_since = None
        self._pending.pop(record.uid, None)
        self._emit(result, reason, record, trigger, now, detail)
        return result

    def _gone(self, record: PodRecord) -> str:
        record.acted = "gone"
        self._pending.pop(record.uid, None)
        log.info("pod=%s is already gone; nothing to do", record.key)
        return "gone"

    def _failed(self, record: PodRecord, trigger: Trigger, res: WriteResult, verb: str, now: float) -> str:
        attempts = 1 if record.next_attempt == 0 else 2
        record.next_attempt = now + (self.settings.retry_min if attempts == 1 else self.settings.retry_max)
        self._pending[record.uid] = (record, trigger)
        self._emit("failed", REASON_FAILED, record, trigger, None, f"{verb} failed: {_short(res.message)}",
                   warning=True, once=True)
        return "failed"

    # -- retries between sweeps ------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """When the earliest pending retry is due (epoch), so the loop can wake for it."""
        return min((r.next_attempt for r, _ in self._pending.values()), default=None)

    def retry_due(self) -> int:
        """Retry every pending action whose time has come. Returns how many were tried."""
        now = self.clock()
        due = [(r, t) for r, t in self._pending.values() if r.next_attempt <= now]
        for record, trigger in due:
            if record.terminating or record.acted is not None:
                self._pending.pop(record.uid, None)
                continue
            self.act(record, trigger)
        return len(due)

    def clear(self, record: PodRecord) -> None:
        """The pod is back under its limit (or gone): drop pending retries and block state."""
        self._pending.pop(record.uid, None)
        record.blocked_since = None
        record.next_attempt = 0.0

    # -- output --------------------------------------------------------------------------------
    def _line(self, result: str, record: PodRecord, trigger: Trigger, acted_at: float | None,
              detail: str = "") -> ActionLine:
        latency = None if acted_at is None else acted_at - trigger.detected_at
        return ActionLine(
            result=result, record=record, usage=trigger.breach.usage, limit=trigger.breach.limit.bytes,
            scope=trigger.breach.limit.scope, source=trigger.source,
            sample_age=max(0.0, trigger.detected_at - trigger.sample_time), latency=latency,
            detected_at=trigger.detected_at, crossed_at=trigger.crossed_at, acted_at=acted_at, detail=detail)

    def _emit(self, result: str, reason: str, record: PodRecord, trigger: Trigger, acted_at: float | None,
              detail: str = "", warning: bool = False, once: bool = False) -> None:
        line = self._line(result, record, trigger, acted_at, detail)
        self.recorder.action(line, reason, warning=warning, once=once)
        if line.latency is not None:
            self.recorder.metrics.latency.labels(result, trigger.source).observe(line.latency)


def _short(message: str) -> str:
    return message.replace("\n", " ")[:300]
