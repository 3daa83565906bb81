"""The enforcer: the only code that evicts or deletes pods.

The action ladder, like descheduler's evictor:

1. ``dry-run`` (per pod, or ``--dry-run`` globally): everything but the write.
2. ``evict``: the Eviction API, so PodDisruptionBudgets are honoured. A 429 (a PDB blocks it) is
   retried with backoff. If it stays blocked past ``--escalation-timeout`` and escalation is allowed
   (``memwatch.io/escalate`` or ``--escalate``) the pod is deleted; otherwise memwatch says so in an
   Event and keeps retrying.
3. ``delete``: a plain delete with the grace period, UID-preconditioned.

Caps (per minute, over everything this process writes, and per namespace) hold actions back; each
hold is logged. The controller's caps are therefore cluster-wide (one leader acts); each node agent
has its own per-node caps (``--node-max-evictions-per-minute``). The node agent reuses this class and
adds its kill rung on top.

The enforcer holds no per-pod state: it performs one rung per call and returns an
:class:`~memwatch.lifecycle.Outcome`; the caller's :class:`~memwatch.lifecycle.Lifecycle` decides
when to try again. Right before every write it asks ``may_write`` (the leader's fence).

Before the ladder, :meth:`Enforcer.hold` (also the node agent's, before a kill in place) keeps back an
action on a pod younger than its ``min-pod-age``, and one on a workload whose restart budget
(:mod:`memwatch.budget`) is spent. Every successful eviction, deletion or escalation counts against
the budget; dry runs and refusals do not.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from memwatch.clock import SYSTEM, Clock
from memwatch.kube import Kube, WriteResult
from memwatch.lifecycle import Outcome, Trigger
from memwatch.observability import (
    REASON_BLOCKED,
    REASON_BUDGET_EXHAUSTED,
    REASON_CAPPED,
    REASON_DELETED,
    REASON_DRY_RUN,
    REASON_ESCALATED,
    REASON_EVICTED,
    REASON_FAILED,
    ActionLine,
    Recorder,
    event_message,
)
from memwatch.podindex import PodRecord
from memwatch.policy import Action, Policy, format_window

log = logging.getLogger("memwatch.enforcer")

WINDOW = 60.0  # the caps count writes over the last minute
#: Pods remembered as held (restart budget, min-pod-age) so that each is logged once, not every retry.
MAX_HELD = 10_000


@dataclass(frozen=True, slots=True)
class EnforcerSettings:
    dry_run: bool = False
    escalation_timeout: float = 60.0
    max_per_minute: int = 20  # 0: no cap
    max_per_namespace_per_minute: int = 5  # 0: no cap
    retry_min: float = 1.0
    retry_max: float = 10.0


class RateCaps:
    """Sliding one-minute caps on real writes, cluster-wide and per namespace."""

    def __init__(self, total: int, per_namespace: int, clock: Callable[[], float]) -> None:
        """``clock`` is monotonic: a wall-clock step must not empty or freeze the window."""
        self.total, self.per_namespace, self.clock = total, per_namespace, clock
        self.scope = "cluster-wide"  # an agent's caps say "node <name>"
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
            return f"{self.scope} cap of {self.total} evictions per minute reached"
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
    """Carries out one rung of the action ladder per call; holds no per-pod state."""

    def __init__(self, kube: Kube | None, recorder: Recorder, settings: EnforcerSettings,
                 clock: Clock = SYSTEM, may_write: Callable[[], bool] = lambda: True) -> None:
        self.kube = kube
        self.recorder = recorder
        self.settings = settings
        self.clock = clock
        self.may_write = may_write
        self.caps = RateCaps(settings.max_per_minute, settings.max_per_namespace_per_minute, clock.mono)
        # Pods whose hold was logged already (the agent asks from two threads: its loop and its worker).
        self._held: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._held_lock = threading.Lock()

    # -- the ladder ----------------------------------------------------------------------------
    def act(self, record: PodRecord, trigger: Trigger, *, escalate: bool = False,
            blocked_for: float | None = None) -> Outcome:
        """Act on a pod whose policy says so, on its current record.

        ``escalate``: the eviction has been blocked past the escalation timeout and may become a
        delete. ``blocked_for``: how long it has been blocked (None: never), for the messages.
        """
        policy = record.policy
        assert policy is not None, "only pods with a valid policy are acted on"
        if record.terminating:
            return Outcome("gone")  # someone else is already deleting it
        young = self._too_young(record, policy)
        if young is not None:
            return young  # not even a dry-run report yet: memwatch would not act on it yet
        if self.settings.dry_run or policy.action is Action.DRY_RUN:
            verb = Action.EVICT if policy.action is Action.DRY_RUN else policy.action
            # A report, not an action: said once per pod (also across restarts, from the Events), and
            # the pod stays eligible, so switching it to `evict` later takes effect at once.
            result = f"would-{verb.value}"
            if not self.recorder.already(record.uid, [REASON_DRY_RUN]):
                self._emit(result, REASON_DRY_RUN, record, trigger, None,
                           "dry-run: nothing was written" + (" (--dry-run)" if self.settings.dry_run else ""))
            return Outcome(result)
        deleting = policy.action is Action.DELETE or (escalate and blocked_for is not None)
        spent = self._budget_spent(record, policy, trigger, "deleted" if deleting else "evicted")
        if spent is not None:
            return spent
        capped = self.caps.check(record.namespace)
        if capped:
            line = self._line("rate-limited", record, trigger, None, capped)
            if self.recorder.already(record.uid, [REASON_CAPPED]):
                line.log(log, warning=True)  # every hold is logged; the Event is posted once per pod
            else:
                self.recorder.action(line, REASON_CAPPED, warning=True)
            return Outcome("rate-limited")
        if policy.action is Action.DELETE:
            return self._delete(record, trigger, "deleted", REASON_DELETED)
        if escalate and blocked_for is not None:
            return self._delete(record, trigger, "escalated", REASON_ESCALATED,
                                f"eviction blocked by a PodDisruptionBudget for {blocked_for:.0f}s; deleting")
        return self._evict(record, trigger, blocked_for)

    # -- holds: min-pod-age and the restart budget ------------------------------------------------
    def hold(self, record: PodRecord, trigger: Trigger, planned: str,
             post: Callable[[Callable[[], None]], object] | None = None) -> Outcome | None:
        """Whether an action is held back now, before any write: the pod is younger than its
        ``min-pod-age``, or its workload's restart budget is spent (then logged, counted and Evented
        once per pod). :meth:`act` asks this itself; the node agent asks it before a kill in place.
        ``planned``: what memwatch would do (``evicted``, ``killed container app``), for the messages.
        ``post``: how to run the Event's API call (the agent's loop hands it to its worker thread)."""
        policy = record.policy
        assert policy is not None
        return self._too_young(record, policy) or self._budget_spent(record, policy, trigger, planned, post)

    def _first_hold(self, uid: str, kind: str) -> bool:
        """True the first time this pod is held for ``kind`` (until :meth:`_release`)."""
        with self._held_lock:
            if (uid, kind) in self._held:
                return False
            self._held[(uid, kind)] = None
            while len(self._held) > MAX_HELD:
                self._held.popitem(last=False)
            return True

    def _release(self, uid: str, kind: str) -> None:
        with self._held_lock:
            self._held.pop((uid, kind), None)

    def _too_young(self, record: PodRecord, policy: Policy) -> Outcome | None:
        """A pod younger than its min-pod-age is not acted on yet (one log line, no Event)."""
        if not policy.min_pod_age or record.started_at is None:
            return None  # no grace, or no start time known: a running pod over its limit is acted on
        age = self.clock.wall() - record.started_at
        if age >= policy.min_pod_age:
            return None
        wait = policy.min_pod_age - age
        if self._first_hold(record.uid, "young"):
            log.info("not acting yet on pod=%s: it started %.0fs ago, min-pod-age is %s; judged again in %.0fs",
                     record.key, max(age, 0.0), format_window(policy.min_pod_age), wait)
        return Outcome("too-young", wait)

    def _budget_spent(self, record: PodRecord, policy: Policy, trigger: Trigger, planned: str,
                      post: Callable[[Callable[[], None]], object] | None = None) -> Outcome | None:
        """The workload's restart budget is spent: one action line (``action=budget-exhausted``) and
        one metric increment per pod each time it is held, and one Warning Event per pod, ever."""
        budget, workload = policy.restart_budget, record.workload
        if budget is None or not workload:
            return None  # no budget (off), or a bare pod: each of its actions is its own
        now = self.clock.wall()
        state = self.recorder.budget.state(record.namespace, workload, budget, now)
        if not state.spent:
            self._release(record.uid, "budget")  # a later exhaustion is said again
            return None
        retry = None if state.frees_at is None else max(0.0, state.frees_at - now)
        detail = f"would have {planned}; {state.describe(workload)}"
        if not self._first_hold(record.uid, "budget"):
            log.debug("still held pod=%s: %s", record.key, detail)
            return Outcome("budget-exhausted", retry)
        line = self._line("budget-exhausted", record, trigger, None, detail)
        line.log(log, warning=True)
        source = trigger.source or "-"
        self.recorder.metrics.actions.labels("budget-exhausted", source).inc()
        self.recorder.metrics.budget_exhausted.labels(source).inc()
        if not self.recorder.already(record.uid, [REASON_BUDGET_EXHAUSTED]):  # also across restarts
            self.recorder.remember(record.uid, REASON_BUDGET_EXHAUSTED)
            job = partial(self.recorder.event, record, REASON_BUDGET_EXHAUSTED, event_message(line), True,
                          related=True)
            if post is None:
                job()
            else:
                post(job)
        return Outcome("budget-exhausted", retry)

    def counted(self, record: PodRecord, at: float) -> str | None:
        """A successful action at ``at``: count it against the workload's restart budget. Returns the
        name its Event must be posted under (None for a bare pod)."""
        self._release(record.uid, "budget")
        self._release(record.uid, "young")
        return self.recorder.count(record, at)

    def node_pressure(self, namespace: str, name: str, uid: str, verb: str, grace: int) -> WriteResult:
        """The node guard's one write (:mod:`memwatch.nodeguard`): an eviction (``evict``) or a delete
        (``delete``) with the guard's own grace period, UID-preconditioned. The guard keeps its own caps,
        state and messages (the node's numbers, the rule); the write itself stays here."""
        if self.kube is None:
            return WriteResult(False, 0, "no API client")
        if not self.may_write():
            return WriteResult(False, 0, "this process may not write now")
        if verb == "delete":
            return self.kube.delete_pod(namespace, name, uid, grace)
        return self.kube.evict(namespace, name, uid, grace)

    def _fenced(self, record: PodRecord) -> bool:
        """The leader's fence, checked right before a write: a replica that may have lost its lease
        writes nothing."""
        if self.may_write():
            return False
        log.info("not acting on pod=%s: this replica cannot prove it still holds the leader lease", record.key)
        return True

    def _evict(self, record: PodRecord, trigger: Trigger, blocked_for: float | None) -> Outcome:
        assert self.kube is not None and record.policy is not None
        if self._fenced(record):
            return Outcome("not-leader")
        res = self.kube.evict(record.namespace, record.name, record.uid, record.policy.grace_period)
        now = self.clock.wall()
        if res.ok:
            self.caps.take(record.namespace)
            return self._done(record, trigger, "evicted", REASON_EVICTED, now)
        if res.gone:
            return self._gone(record, res)
        if res.blocked:
            return self._blocked(record, trigger, res, blocked_for)
        if res.throttled:
            log.info("eviction of pod=%s throttled by the API server (%s); retrying in %.0fs", record.key,
                     _short(res.message), res.retry_after or self.settings.retry_min)
            return Outcome("throttled", res.retry_after)
        return self._failed(record, trigger, res, "evict")

    def _blocked(self, record: PodRecord, trigger: Trigger, res: WriteResult, blocked_for: float | None) -> Outcome:
        assert record.policy is not None
        waited = blocked_for or 0.0
        deadline = self.settings.escalation_timeout - waited
        plan = (f"escalating to delete in {max(deadline, 0):.0f}s" if record.policy.escalate
                else "escalation is off (memwatch.io/escalate or --escalate); retrying")
        if blocked_for is None and not self.recorder.already(record.uid, [REASON_BLOCKED]):
            self._emit("blocked", REASON_BLOCKED, record, trigger, None, f"{_short(res.message)}; {plan}",
                       warning=True)
        else:
            log.debug("still blocked pod=%s waited=%.1fs %s", record.key, waited, plan)
        return Outcome("blocked")

    def _delete(self, record: PodRecord, trigger: Trigger, result: str, reason: str, detail: str = "") -> Outcome:
        assert self.kube is not None and record.policy is not None
        if self._fenced(record):
            return Outcome("not-leader")
        res = self.kube.delete_pod(record.namespace, record.name, record.uid, record.policy.grace_period)
        now = self.clock.wall()
        if res.ok:
            self.caps.take(record.namespace)
            return self._done(record, trigger, result, reason, now, detail)
        if res.gone:
            return self._gone(record, res)
        if res.throttled:
            return Outcome("throttled", res.retry_after)
        return self._failed(record, trigger, res, "delete")

    def _done(self, record: PodRecord, trigger: Trigger, result: str, reason: str, now: float,
              detail: str = "") -> Outcome:
        self._emit(result, reason, record, trigger, now, detail, counted=self.counted(record, now))
        return Outcome(result)

    def _gone(self, record: PodRecord, res: WriteResult) -> Outcome:
        what = "was replaced (UID precondition failed)" if res.status == 409 else "is already gone"
        log.info("pod=%s %s; nothing to do", record.key, what)
        return Outcome("gone")

    def _failed(self, record: PodRecord, trigger: Trigger, res: WriteResult, verb: str) -> Outcome:
        detail = f"{verb} failed: {_short(res.message)}"
        line = self._line("failed", record, trigger, None, detail)
        if self.recorder.already(record.uid, [REASON_FAILED + ":" + detail[:80]]):
            line.log(log, warning=True)
        else:
            # One Event per pod and kind of failure: a later, different failure is posted too.
            self.recorder.remember(record.uid, REASON_FAILED + ":" + detail[:80])
            self._emit("failed", REASON_FAILED, record, trigger, None, detail, warning=True)
        return Outcome("failed")

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
              detail: str = "", warning: bool = False, once: bool = False, counted: str | None = None) -> None:
        line = self._line(result, record, trigger, acted_at, detail)
        self.recorder.action(line, reason, warning=warning, once=once, counted=counted)
        if line.latency is not None:
            self.recorder.metrics.latency.labels(result, trigger.source).observe(max(0.0, line.latency))


def _short(message: str) -> str:
    return message.replace("\n", " ")[:300]
