"""The sweep: one periodic pass that reads usage for every watched pod at once and decides.

No per-pod timers, daemons or tasks: one loop, one bulk usage read per sweep (see
:mod:`memwatch.sources`), the shared pod lifecycle (:mod:`memwatch.lifecycle`, owned by this
loop's thread), and actions through the :mod:`memwatch.enforcer`. Between sweeps the loop wakes
only for due retries (a blocked eviction reaching its escalation deadline), and every retry is
judged again on the pod's *current* record.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import logging
import math
import operator
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from memwatch.clock import SYSTEM, Clock
from memwatch.enforcer import Enforcer
from memwatch.lifecycle import Lifecycle, Outcome, Phase, Retry, Step, Trigger
from memwatch.observability import REASON_PROTECTED, ActionLine, Recorder
from memwatch.podindex import FINISHED, PodIndex, PodRecord
from memwatch.policy import Breach, Usage
from memwatch.sources import SourceError, UsageSource

log = logging.getLogger("memwatch.sweep")

_SAMPLE = operator.itemgetter(1)  # the Usage in a judged (record, usage, quiet)
_SOURCE_AND_TIME = operator.attrgetter("source", "timestamp")

#: How often a sweep loop that may not act yet (not synced, not the leader) checks again, seconds.
NOT_READY_RECHECK = 0.5


@dataclass(slots=True)
class SweepReport:
    """What one sweep saw and did (for tests, benchmarks and the liveness probe)."""

    started: float
    duration: float = 0.0
    watched: int = 0
    sampled: int = 0
    stale: int = 0
    missing: int = 0
    invalid: int = 0
    deferred: int = 0
    results: dict[str, int] = field(default_factory=dict)
    error: str | None = None


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector paused for the duration (process-wide; reference counting goes on).

    A sweep decodes the usage list into ~10 objects per pod and drops them all at its end: every one
    is freed by reference counting, none is cyclic. But their allocation alone set off collections
    mid-sweep, each traversing every long-lived object (the index, the lifecycle, kopf's state): at
    10,000 pods that was more than half the sweep's CPU (224 ms with it, 90 ms without, p50 in
    ``bench/controller_scale.py``). Paused, the list is freed before any collection sees it, so the
    collector's counts fall back and nothing piles up for later. Cyclic garbage made meanwhile by other
    threads waits for the next collection; a pause that someone else started is left as it was.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class Sweeper:
    """Runs sweeps over the index. Single-threaded: it alone owns the pods' lifecycle state."""

    def __init__(self, index: PodIndex, source: UsageSource, enforcer: Enforcer, recorder: Recorder,
                 interval: float = 5.0, max_sample_age: float = 60.0, clock: Clock = SYSTEM,
                 is_leader: Callable[[], bool] = lambda: True,
                 defer: Callable[[PodRecord], str | None] | None = None) -> None:
        self.index = index
        self.source = source
        self.enforcer = enforcer
        self.recorder = recorder
        self.metrics = recorder.metrics
        self.interval = interval
        self.max_sample_age = max_sample_age
        self.clock = clock
        self.is_leader = is_leader
        #: Why a pod is left to its node's agent (None: the sweep acts); not asked at all without agents.
        self.defer = defer
        st = enforcer.settings
        # A sweep that did not see the pod for three intervals (not leader, usage read failing, the
        # process paused) does not continue an earlier breach.
        self.lifecycle = Lifecycle(clock, max_gap=3 * interval + 1.0,
                                   retry=Retry(st.retry_min, st.retry_max, st.escalation_timeout))
        self.last: SweepReport | None = None
        self.sweeps = 0
        self.heartbeat = time.monotonic()  # last loop iteration, for the liveness probe
        self._last_error: str | None = None
        #: uid -> (record, sample, quiet) of every pod the last sweep judged on a fresh sample; quiet:
        #: under every limit with nothing under way. Replaced whole each sweep (the metrics thread reads it).
        self._judged: dict[str, tuple[PodRecord, Usage, bool]] = {}
        self._judged_at = -math.inf  # mono, when _judged was last replaced
        self.metrics.nearest.view(self._nearest_view)
        #: Pods whose missing sample was logged (once, until a sample arrives).
        self._reported_missing: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one sweep -----------------------------------------------------------------------------
    def sweep_once(self) -> SweepReport:
        with paused_gc():
            return self._sweep()

    def _sweep(self) -> SweepReport:
        """One sweep: every watched pod's usage in one read, each new sample judged.

        The cost is per pod, so the loops stay lean (10,000 pods in tens of milliseconds): a pod
        whose record and sample are the very objects an earlier sweep found under every limit, with
        nothing under way, is not judged again (nothing about it can have changed but the sample's
        age, which is still checked); a new sample under every limit of a pod with nothing under way
        changes no state, so it is only noted.
        """
        t0 = time.perf_counter()
        report = SweepReport(started=self.clock.wall())
        records = self.index.snapshot()
        report.watched = len(records)
        lives = self.lifecycle
        lives.retain(r.uid for r in records)
        if self._reported_missing:
            self._reported_missing.intersection_update(r.uid for r in records)
        recorder, defer, acted_on = self.recorder, self.defer, self.recorder.acted_on
        candidates: list[PodRecord] = []
        for rec in records:
            if not rec.plain:
                if rec.policy is None:
                    report.invalid += 1
                    recorder.invalid(rec)
                    continue
                if rec.warnings:
                    recorder.warnings(rec)
                if rec.conflicts:
                    recorder.conflicts(rec)
                if rec.terminating or not rec.node or rec.phase in FINISHED:
                    continue  # finished, being deleted, or not yet on a node (no memory to read)
            uid = rec.uid
            life = lives.peek(uid)
            if life is not None and life.phase is Phase.DONE:
                continue  # already handled
            if acted_on(uid):
                lives.mark_done(uid, "already")  # acted on before (a restart, or another component)
                continue
            if defer is not None and defer(rec):
                report.deferred += 1
                lives.interrupt(uid)
                continue
            candidates.append(rec)
        self.metrics.watched.set(report.watched)
        self.metrics.invalid.set(report.invalid)
        try:
            samples = self.source.fetch(candidates) if candidates else {}
        except SourceError as exc:
            report.error = str(exc)
            self.metrics.source_errors.labels(self.source.name).inc()
            if report.error != self._last_error:
                log.warning("sweep: usage read failed, acting on nothing until it works (logged again when "
                            "the error changes): %s", exc)
            self._last_error = report.error
            samples = {}
        else:
            if self._last_error is not None:
                log.info("sweep: usage read works again")
            self._last_error = None
        for reason, n in (getattr(self.source, "skipped", None) or {}).items():
            self.metrics.skipped.labels(reason, self.source.name).inc(n)
        detected = self.clock.wall()
        max_age = self.max_sample_age
        judged_before: dict[str, tuple[PodRecord, Usage, bool]] = self._judged
        judged: dict[str, tuple[PodRecord, Usage, bool]] = {}
        reported_missing = self._reported_missing
        OK, CLEARED, ACT = Step.OK, Step.CLEARED, Step.ACT  # locals: read for every pod
        peek = lives.peek
        for rec in candidates:
            uid = rec.uid
            usage = samples.get(uid)
            if usage is None:
                self._missing(rec, report)
                continue
            ts = usage.timestamp
            age = detected - ts
            if age > max_age or age < -max_age:
                # Too old, or from the future (a clock step on either side): never acted on.
                lives.interrupt(uid)
                report.stale += 1
                self.metrics.skipped.labels("stale", usage.source).inc()
                log.info("stale sample for pod=%s age=%.1fs > max-sample-age=%.0fs (not acted on)",
                         rec.key, age, max_age)
                continue
            seen = judged_before.get(uid)
            if seen is not None and seen[1] is usage and seen[0] is rec and seen[2]:
                judged[uid] = seen  # the same facts and the same sample, found under every limit
                continue
            policy = rec.policy
            assert policy is not None
            if reported_missing:
                reported_missing.discard(uid)
            if usage.total <= policy.under_all and peek(uid) is None:
                # Lifecycle.observe's first answer, inlined (most pods, every sweep): no state under way and
                # under the lowest of its limits is Step.OK, and nothing is noted.
                judged[uid] = (rec, usage, True)
                continue
            step, breach = lives.observe(uid, policy, usage)
            # OK or CLEARED: under every limit, and nothing under way now
            judged[uid] = (rec, usage, step is OK or step is CLEARED)
            if step is CLEARED:
                log.info("pod=%s is back under its limit; dropping the pending action", rec.key)
            if step is not ACT or breach is None:
                continue
            result = self._act(rec, breach, usage, detected)
            report.results[result] = report.results.get(result, 0) + 1
        self._judged, self._judged_at = judged, time.monotonic()
        report.sampled = len(judged)  # every sample judged was fresh enough, and none other
        # One histogram observation per distinct (source, sample time), counted in C: a node's pods
        # share a sample time, so that is a few dozen observations for thousands of pods.
        ages = collections.Counter(map(_SOURCE_AND_TIME, map(_SAMPLE, judged.values())))
        observe = self.metrics.sample_age.observe
        for (source, ts), n in ages.items():
            observe(source, max(detected - ts, 0.0), n)
        report.duration = time.perf_counter() - t0
        self.metrics.sweep.observe(report.duration)
        self.last = report
        self.sweeps += 1
        return report

    def _nearest_view(self) -> Iterable[tuple[PodRecord, Usage, bool]]:
        """The pods the last sweep judged, while sweeps run (a replica that stopped leading shows none)."""
        if time.monotonic() - self._judged_at > 3 * self.interval + 1.0:
            return ()
        return self._judged.values()

    def _missing(self, rec: PodRecord, report: SweepReport) -> None:
        """No sample for a candidate this sweep: an ongoing breach does not carry over."""
        self.lifecycle.interrupt(rec.uid)
        if report.error:
            return
        report.missing += 1
        self.metrics.skipped.labels("missing", self.source.name).inc()
        if rec.uid not in self._reported_missing:
            log.info("no usage sample for pod=%s node=%s source=%s (not acted on until one arrives)",
                     rec.key, rec.node or "-", self.source.name)
            self._reported_missing.add(rec.uid)

    def _act(self, rec: PodRecord, breach: Breach, usage: Usage, detected: float) -> str:
        life = self.lifecycle.get(rec.uid)
        trigger = Trigger(breach, usage.source, usage.timestamp, life.crossed_at or usage.timestamp, detected)
        if rec.protected:
            self._refuse(rec, trigger)
            return "protected"
        assert rec.policy is not None
        if life.blocked_since is None:
            first = self.recorder.blocked_since.get(rec.uid)
            if first is not None:  # blocked before a restart: the escalation deadline does not reset
                self.lifecycle.restore_blocked(rec.uid, first)
        outcome = self.enforcer.act(rec, trigger, escalate=self.lifecycle.should_escalate(rec.uid, rec.policy.escalate),
                                    blocked_for=self.lifecycle.blocked_for(rec.uid))
        self.lifecycle.result(rec.uid, outcome)
        return outcome.result

    def _refuse(self, rec: PodRecord, trigger: Trigger) -> None:
        line = ActionLine("protected", rec, trigger.breach.usage, trigger.breach.limit.bytes,
                          trigger.breach.limit.scope, trigger.source,
                          max(0.0, trigger.detected_at - trigger.sample_time), detail=str(rec.protected))
        self.recorder.action(line, REASON_PROTECTED, warning=True, once=True)

    def retry_due(self) -> int:
        """Retry every pending action whose time has come, each on the pod's current record and
        judged again on the last fresh sample. Returns how many were tried."""
        tried = 0
        for uid in self.lifecycle.due():
            rec = self.index.get(uid)
            if rec is None or rec.terminating:
                self.lifecycle.result(uid, Outcome("gone"))  # deleted, or being deleted by someone
                continue
            if rec.policy is None or (self.defer is not None and self.defer(rec)):
                self.lifecycle.cancel(uid)  # annotations now invalid, or the agent has it
                continue
            life = self.lifecycle.get(uid)
            step, breach = self.lifecycle.recheck(uid, rec.policy)
            if step is Step.CLEARED:
                log.info("pod=%s is under its current limit; dropping the pending action", rec.key)
            if step is not Step.ACT or breach is None or life.usage is None:
                continue
            tried += 1
            self._act(rec, breach, life.usage, self.clock.wall())
        return tried

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        mono = self.clock.mono
        next_sweep = mono()
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            now = mono()
            try:
                if now >= next_sweep:
                    next_sweep = now + self.interval
                    if self.is_leader():
                        self.sweep_once()
                    else:
                        # Not ready yet (the watch is still listing) or not the leader: look again
                        # soon, so the first sweep follows the initial LIST (or a takeover) at once
                        # instead of up to a whole interval later.
                        next_sweep = now + min(self.interval, NOT_READY_RECHECK)
                elif self.is_leader():
                    self.retry_due()
            except Exception:  # a bug or an odd API answer in one sweep must not stop the controller
                log.exception("sweep failed; the next sweep runs on schedule")
            deadline = self.lifecycle.next_deadline()
            wake = next_sweep if deadline is None else min(next_sweep, deadline)
            self._stop.wait(max(0.0, min(wake - mono(), self.interval)))

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="sweep", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop and wait (up to ``timeout``) for a sweep under way to finish."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
