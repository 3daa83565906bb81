"""Observability: the kill log line, Events on the pod, and Prometheus metrics.

One structured log line per decision that acts (``kubectl logs deploy/memwatch | grep action=``; its
fields are formatted, as text or JSON, by :mod:`memwatch.logformat`),
one Event on the pod for every action and every refusal, and metrics on ``--metrics-port``.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from memwatch.budget import BudgetBook, reference
from memwatch.kube import Kube
from memwatch.logformat import ActionFields, log_action
from memwatch.podindex import PodRecord
from memwatch.quantity import format_beside, format_bytes, format_duration, parse_time

log = logging.getLogger("memwatch")

COMPONENT = "memwatch"
#: Server-side selector for memwatch's own Events (every replica and agent posts with this source).
HISTORY_SELECTOR = f"source={COMPONENT}"

# Event reasons: one name per outcome, used in code, docs, NOTES.txt and tests.
REASON_EVICTED = "MemwatchEvicted"
REASON_DELETED = "MemwatchDeleted"
REASON_DRY_RUN = "MemwatchDryRun"
REASON_BLOCKED = "MemwatchEvictionBlocked"
REASON_ESCALATED = "MemwatchEscalated"
REASON_PROTECTED = "MemwatchProtected"
REASON_INVALID = "InvalidMemwatchAnnotation"
REASON_WARNING = "MemwatchAnnotationWarning"
REASON_KILLED = "MemwatchKilled"
REASON_FAILED = "MemwatchActionFailed"
REASON_CAPPED = "MemwatchRateLimited"
REASON_KILL_UNAVAILABLE = "MemwatchKillUnavailable"
#: Two policies at one level set one field of a pod differently (memwatch.policyset): once per pod.
REASON_POLICY_CONFLICT = "MemwatchPolicyConflict"
#: The workload's restart budget is spent: memwatch does not act on the pod (once per pod).
REASON_BUDGET_EXHAUSTED = "MemwatchBudgetExhausted"
ALL_REASONS = (REASON_EVICTED, REASON_DELETED, REASON_DRY_RUN, REASON_BLOCKED, REASON_ESCALATED,
               REASON_PROTECTED, REASON_INVALID, REASON_WARNING, REASON_KILLED, REASON_FAILED, REASON_CAPPED,
               REASON_KILL_UNAVAILABLE, REASON_POLICY_CONFLICT, REASON_BUDGET_EXHAUSTED)
#: Reasons that mean "memwatch already acted on this pod": after a restart (or when the other
#: component did it) it must not act again. A kill in place is not one: it ends one container
#: instance, the pod goes on, and a later breach of the restarted container is a new one.
ACTED_REASONS = frozenset({REASON_EVICTED, REASON_DELETED, REASON_ESCALATED})
#: Reasons of the Events that count against a workload's restart budget (:mod:`memwatch.budget`), when
#: they name the workload in ``related``: the acted ones, and a kill in place that was the pod's action
#: (``memwatch.io/action: restart``; the agent's last-resort kill names no workload and never counts).
BUDGET_REASONS = ACTED_REASONS | {REASON_KILLED}

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """memwatch's Prometheus metrics (in their own registry, so tests can make many)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.actions = Counter("memwatch_actions_total", "Actions taken or refused, by result and source.",
                               ["result", "source"], registry=r)
        self.watched = Gauge("memwatch_watched_pods", "Pods with memwatch annotations in the index.",
                             registry=r)
        self.invalid = Gauge("memwatch_invalid_policies", "Watched pods whose annotations are invalid.",
                             registry=r)
        self.sweep = Histogram("memwatch_sweep_duration_seconds", "Time for one sweep (read usage, decide, act).",
                               buckets=LATENCY_BUCKETS, registry=r)
        self.sample_age = BatchHistogram("memwatch_sample_age_seconds", "Age of usage samples when decided on.",
                                         "source", (0.1, 0.5, 1, 2, 5, 10, 15, 30, 60, 120), registry=r)
        self.skipped = Counter("memwatch_samples_skipped_total", "Pods not decided on, by reason (stale, missing).",
                               ["reason", "source"], registry=r)
        self.latency = Histogram("memwatch_action_latency_seconds",
                                 "From detecting a breach to the write completing.",
                                 ["action", "source"], buckets=LATENCY_BUCKETS, registry=r)
        self.source_errors = Counter("memwatch_source_errors_total", "Sweeps whose usage read failed.",
                                     ["source"], registry=r)
        self.leader = Gauge("memwatch_leader", "1 when this replica is the one that acts.", registry=r)
        self.nearest = NearestPods(r)
        self.budget_exhausted = Counter(
            "memwatch_budget_exhausted_total",
            "Pods over their limit not acted on because their workload's restart budget was spent "
            "(once per pod each time it is held), by source.", ["source"], registry=r)

    def serve(self, port: int) -> None:
        """Expose /metrics on ``port`` (0: do not serve)."""
        if port:
            start_http_server(port, registry=self.registry)


#: How many pods the nearest-to-their-limit gauges show (bounded: one series each, whatever the pod count).
NEAREST_PODS = 10


class NearestPods:
    """The watched pods nearest their watch limits, as two gauges with one series per pod for at most
    :data:`NEAREST_PODS` pods (so the series stay bounded at any pod count):

    * ``memwatch_pod_usage_ratio{pod_namespace, pod_name, scope}``: working set over the watch limit
      it is nearest (1 is at the limit; above 1 is over it);
    * ``memwatch_pod_headroom_bytes{pod_namespace, pod_name, scope}``: the watch limit minus the
      working set.

    Not ``namespace`` and ``pod``: a scrape gives every series those of memwatch's own pod. Computed
    when scraped, from the pods the last sweep (or agent sample) judged on a fresh sample: the sweep
    pays nothing for it. A replica that is not sweeping (not the leader) shows none.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._view: Any = None
        registry.register(self)

    def view(self, judged: Any) -> None:
        """Where the pods come from: a callable returning ``(record, usage, ...)`` tuples."""
        self._view = judged

    def nearest(self, k: int = NEAREST_PODS) -> list[tuple[float, int, PodRecord, str]]:
        """``(ratio, headroom bytes, record, scope)`` of the ``k`` pods nearest a watch limit, nearest first."""
        import heapq

        rows = []
        for entry in (self._view() if self._view is not None else ()):
            rec, usage = entry[0], entry[1]
            policy = rec.policy
            if policy is None:
                continue
            best = None
            for limit in policy.limits:
                used = usage.total if limit.container is None else usage.containers.get(limit.container)
                if used is None or limit.bytes <= 0:
                    continue
                ratio = used / limit.bytes
                if best is None or ratio > best[0]:
                    best = (ratio, limit.bytes - used, rec, limit.scope)
            if best is not None:
                rows.append(best)
        return heapq.nlargest(k, rows, key=lambda row: row[0])

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        labels = ["pod_namespace", "pod_name", "scope"]
        return (GaugeMetricFamily("memwatch_pod_usage_ratio", "Working set over the watch limit (1 = at the "
                                  f"limit) of the {NEAREST_PODS} watched pods nearest their limits.", labels=labels),
                GaugeMetricFamily("memwatch_pod_headroom_bytes", "Watch limit minus working set of the "
                                  f"{NEAREST_PODS} watched pods nearest their limits.", labels=labels))

    def describe(self) -> list[GaugeMetricFamily]:
        return list(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ratio, headroom = self._families()
        for r, room, rec, scope in self.nearest():
            ratio.add_metric([rec.namespace, rec.name, scope], r)
            headroom.add_metric([rec.namespace, rec.name, scope], room)
        yield ratio
        yield headroom


class BatchHistogram:
    """A histogram with one label that takes ``count`` equal observations in one call.

    The sweep observes the age of every pod's sample, every sweep; at 10,000 pods one
    ``Histogram.observe`` each (~2.5 µs) was half the sweep's budget. Samples taken at one time
    (metrics-server writes one timestamp per node scrape) have one age, so the sweep counts them and
    observes each distinct age once. Exposed exactly as a ``prometheus_client`` Histogram is
    (``_bucket`` with ``le``, ``_count``, ``_sum``), from a collector registered in ``registry``.
    """

    def __init__(self, name: str, documentation: str, label: str, buckets: Iterable[float],
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.bounds = (*sorted(float(b) for b in buckets), math.inf)
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, label_value: str, value: float, count: int = 1) -> None:
        """Record ``count`` observations of ``value`` (NaN is dropped, as nothing can bucket it)."""
        if count <= 0 or value != value:
            return
        i = bisect.bisect_left(self.bounds, value)  # the first bucket whose upper bound (le) holds it
        with self._lock:
            counts = self._counts.get(label_value)
            if counts is None:
                counts = self._counts[label_value] = [0] * len(self.bounds)
                self._sums[label_value] = 0.0
            counts[i] += count
            self._sums[label_value] += value * count

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=[self.label])]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        with self._lock:
            snapshot = [(lv, list(c), self._sums[lv]) for lv, c in sorted(self._counts.items())]
        for label_value, counts, total in snapshot:
            cumulative, buckets = 0, []
            for bound, n in zip(self.bounds, counts, strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))  # as prometheus_client
            family.add_metric([label_value], buckets, total)
        yield family


@dataclass(frozen=True, slots=True)
class ActionLine:
    """Everything in one kill log line and its Event."""

    result: str  # evicted, deleted, would-evict, blocked, escalated, killed, failed, rate-limited, protected
    record: PodRecord
    usage: int | None = None
    limit: int | None = None
    scope: str = "pod"
    source: str = ""
    sample_age: float | None = None
    latency: float | None = None
    detected_at: float | None = None  # epoch
    crossed_at: float | None = None  # epoch: sample time of the first over-limit sample
    acted_at: float | None = None  # epoch: write completed
    detail: str = ""

    def fields(self) -> ActionFields:
        """The line's fields (:mod:`memwatch.logformat` renders them as text or as JSON keys)."""
        r = self.record
        f = ActionFields().add("action", self.result).add("pod", r.key).add("node", r.node or "-")
        if self.usage is not None:
            f.add("usage", format_beside(self.usage, self.limit)).add("limit", format_bytes(self.limit))
            f.add("scope", self.scope)
        if self.source:
            f.add("source", self.source)
        if self.sample_age is not None:
            f.add("sample_age", format_duration(self.sample_age))
        if self.latency is not None:
            f.add("latency", format_duration(self.latency))
        for name, ts in (("crossed_at", self.crossed_at), ("detected_at", self.detected_at),
                         ("acted_at", self.acted_at)):
            if ts is not None:
                f.add(name, _iso(ts))
        f.add("uid", r.uid)
        if self.detail:
            f.add("detail", self.detail, quoted=True)
        return f

    def format(self) -> str:
        """The text form: ``action=evicted pod=ns/name node=... uid=...``."""
        return self.fields().text()

    def log(self, logger: logging.Logger, warning: bool = False) -> None:
        """Log the line (text or JSON, as configured)."""
        log_action(logger, self.fields(), warning, stacklevel=2)  # the record names our caller


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S.%f")[:-3] + "Z"


class Recorder:
    """Writes log lines, Events and metrics. Events that must appear once are de-duplicated,
    also across restarts (:meth:`remember` loads the ones already on the cluster)."""

    MAX_REMEMBERED = 100_000

    def __init__(self, kube: Kube | None, metrics: Metrics, host: str = "") -> None:
        self.kube = kube
        self.metrics = metrics
        self.host = host
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        #: UIDs with an acted reason (ACTED_REASONS) among ``_seen``: the sweep asks for each pod, each
        #: sweep, so the answer is one set lookup without the lock (a set is safe to read under the GIL).
        self._acted: set[str] = set()
        #: Whether memwatch (any replica or agent) already evicted, deleted or escalated on a UID:
        #: ``already(uid, ACTED_REASONS)`` as one set lookup, the set's own ``__contains__`` (the
        #: sweep asks it of every pod, every sweep; the set is only ever changed in place).
        self.acted_on: Callable[[str], bool] = self._acted.__contains__
        self._lock = threading.Lock()
        #: When a pod's eviction was first refused, from Events already on the cluster: so the
        #: escalation deadline survives a controller restart.
        self.blocked_since: dict[str, float] = {}
        #: memwatch's actions per workload (the restart budget), from this process and from the Events.
        self.budget = BudgetBook()

    # -- memory of what was already said -----------------------------------------------------
    def remember(self, uid: str, reason: str) -> None:
        with self._lock:
            self._seen[(uid, reason)] = None
            self._seen.move_to_end((uid, reason))
            if reason in ACTED_REASONS:
                self._acted.add(uid)
            while len(self._seen) > self.MAX_REMEMBERED:
                (old, old_reason), _ = self._seen.popitem(last=False)
                if old_reason in ACTED_REASONS:
                    self._unact(old)

    def _unact(self, uid: str) -> None:
        if not any((uid, r) in self._seen for r in ACTED_REASONS):
            self._acted.discard(uid)

    def already(self, uid: str, reasons: Iterable[str]) -> str | None:
        """The first of ``reasons`` already reported for ``uid``, if any."""
        with self._lock:
            return next((r for r in reasons if (uid, r) in self._seen), None)

    def forget(self, uid: str, reason: str) -> None:
        with self._lock:
            self._seen.pop((uid, reason), None)
            if reason in ACTED_REASONS:
                self._unact(uid)

    def load_history(self, namespaces: Iterable[str] = ()) -> int:
        """Remember memwatch's own Events already on the cluster (one paged LIST per scope)."""
        if self.kube is None:
            return 0
        paths = [f"/api/v1/namespaces/{ns}/events" for ns in namespaces] or ["/api/v1/events"]
        n = 0
        for path in paths:
            for page in self.kube.list_pages(path, {"fieldSelector": HISTORY_SELECTOR}):
                for ev in page.get("items") or ():
                    n += self.learn(ev)
        return n

    def learn(self, ev: Mapping[str, Any]) -> int:
        """Remember one of memwatch's Events (from any replica or agent). Returns 1 if it counted."""
        uid = (ev.get("involvedObject") or {}).get("uid")
        reason = ev.get("reason")
        if not uid or not reason:
            return 0
        self.remember(str(uid), str(reason))
        first = parse_time(ev.get("firstTimestamp") or ev.get("eventTime"))
        if reason == REASON_BLOCKED and first is not None:
            self.blocked_since[str(uid)] = min(first, self.blocked_since.get(str(uid), first))
        if reason in BUDGET_REASONS:
            self.budget.learn(ev)
        return 1

    def count(self, record: PodRecord, at: float) -> str | None:
        """Count a successful action at ``at`` (epoch) against the restart budget of the pod's workload
        (a bare pod has none: None). Returns the name to post its Event under: that Event, read back
        from the cluster (or by another replica that counted it already), is not counted twice."""
        if not record.workload:
            return None
        name = event_name(record)
        self.budget.record(record.namespace, record.workload, at, f"{record.namespace}/{name}")
        return name

    # -- output ------------------------------------------------------------------------------
    def action(self, line: ActionLine, reason: str, warning: bool = False, once: bool = False,
               counted: str | None = None) -> None:
        """Log the line, count it, and post the Event (once per pod and reason if ``once``).
        ``counted``: the Event name :meth:`count` gave the action (it then names the workload)."""
        if once and self.already(line.record.uid, [reason]):
            return
        line.log(log, warning)
        self.metrics.actions.labels(line.result, line.source or "-").inc()
        message = event_message(line)
        self.event(line.record, reason, message, warning, name=counted, related=counted is not None,
                   at=line.acted_at if counted else None)
        self.remember(line.record.uid, reason)

    def event(self, record: PodRecord, reason: str, message: str, warning: bool = False, *,
              name: str | None = None, related: bool = False, at: float | None = None) -> None:
        """Post an Event on the pod. A failure is logged, never raised: it must not stop a sweep.
        ``related``: name the pod's workload in the Event (the restart budget counts an acted Event
        that does); ``name`` and ``at``: the Event's name and time (default: a new name, now)."""
        if self.kube is None:
            return
        body = build_event(record, reason, message, warning, self.host, name=name,
                           related=record.workload if related else None, at=at)
        result = self.kube.create_event(record.namespace, body)
        if not result.ok:
            log.warning("event not posted: pod=%s reason=%s: %s", record.key, reason, result.message)

    def invalid(self, record: PodRecord) -> None:
        """Report an invalid annotation once: one log line, one Warning Event."""
        if self.already(record.uid, [REASON_INVALID]):
            return
        problems = "; ".join(str(p) for p in record.problems)
        log_action(log, ActionFields(note="(memwatch will not act on this pod)").add("action", "ignored")
                   .add("pod", record.key).add("reason", REASON_INVALID).add("problems", problems, quoted=True),
                   warning=True)
        self.metrics.actions.labels("invalid", "-").inc()
        self.event(record, REASON_INVALID, f"memwatch will not act on this pod: {problems}"[:1024], True)
        self.remember(record.uid, REASON_INVALID)

    def conflicts(self, record: PodRecord) -> None:
        """Report, once per pod, policies that disagree on a field, naming the one that wins."""
        if not record.conflicts or self.already(record.uid, [REASON_POLICY_CONFLICT]):
            return
        text = "; ".join(record.conflicts)
        log.warning("policy conflict pod=%s: %s", record.key, text)
        self.event(record, REASON_POLICY_CONFLICT, f"memwatch policies disagree: {text}"[:1024], True)
        self.remember(record.uid, REASON_POLICY_CONFLICT)

    def warnings(self, record: PodRecord) -> None:
        """Report annotation warnings (typos, limits equal to the hard limit) once."""
        if not record.warnings or self.already(record.uid, [REASON_WARNING]):
            return
        text = "; ".join(record.warnings)
        log.warning("annotation warning pod=%s: %s", record.key, text)
        self.event(record, REASON_WARNING, text[:1024], True)
        self.remember(record.uid, REASON_WARNING)


def event_message(line: ActionLine) -> str:
    """The Event text for an action line (public: the agent logs first and posts the Event later)."""
    parts = {
        "evicted": "Evicted",
        "deleted": "Deleted",
        "would-evict": "Dry run: would evict",
        "would-delete": "Dry run: would delete",
        "would-restart": "Dry run: would restart",
        "blocked": "Eviction refused (PodDisruptionBudget); will retry",
        "escalated": "Deleted after the eviction stayed blocked",
        "killed": "Killed the container's processes",
        "failed": "Action failed",
        "rate-limited": "Held back by the eviction rate cap",
        "protected": "Not acted on: protected",
        "kill-unavailable": "Cannot kill in place here; evicting instead",
        "budget-exhausted": "Not acted on: the workload's restart budget is spent",
    }
    head = parts.get(line.result, line.result)
    text = head
    if line.usage is not None:
        usage, limit = format_beside(line.usage, line.limit), format_bytes(line.limit)
        text += f": memory {usage} is over the memwatch limit {limit} ({line.scope}, source {line.source}"
        if line.sample_age is not None:
            text += f", sample {format_duration(line.sample_age)} old"
        text += ")"
    if line.detail:
        text += f". {line.detail}"
    return text[:1024]


def event_name(record: PodRecord) -> str:
    """A new, unique name for an Event on the pod."""
    return f"{record.name}.memwatch.{uuid.uuid4().hex[:12]}"


def build_event(record: PodRecord, reason: str, message: str, warning: bool, host: str = "", *,
                name: str | None = None, related: str | None = None, at: float | None = None) -> dict[str, Any]:
    """A core/v1 Event on the pod (pure: tested without a cluster). ``related``: a workload
    (``Deployment/web``) named in the Event's ``related`` ObjectReference (core/v1 has it since 1.10)."""
    when = datetime.now(UTC) if at is None else datetime.fromtimestamp(at, UTC)
    now = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name or event_name(record), "namespace": record.namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": record.namespace,
                           "name": record.name, "uid": record.uid},
        "reason": reason,
        "message": message,
        "type": "Warning" if warning else "Normal",
        "source": {"component": COMPONENT, **({"host": host} if host else {})},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "reportingComponent": COMPONENT,
        "reportingInstance": host or COMPONENT,
    }
    if related:
        body["related"] = reference(record.namespace, related)
    return body
