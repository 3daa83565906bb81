"""`memwatch agent`: the node-local fast path. One per node; acts before the kernel OOM killer does.

Assembled like :mod:`memwatch.controller` from the same parts (policy, protections, index, enforcer,
recorder), with these differences:

* The watch is narrowed server-side to this node (``spec.nodeName=<node>``), so the agent's API
  load is one LIST+WATCH of its own pods, whatever the size of the cluster.
* Usage comes from the node's cgroup files (:class:`memwatch.cgroups.CgroupSource`), read every
  ``--sample-period`` (100 ms) by one loop, no per-pod threads. The loop also wakes when the kernel
  reports a threshold crossing (v1 eventfd on ``memory.usage_in_bytes``, v2 ``memory.events``), and
  when inotify reports a new pod or container cgroup (:mod:`memwatch.discovery`): a pod is armed
  from its pod cgroup's creation, before its first container runs.
* Adaptive sampling: a quiet pod far below its lines is read in full every 1 to ``MAX_STRIDE``
  samples, fewer the faster it grows, while something stands guard below its lowest line: a v1
  kernel threshold, or where none can be armed the lean guard, which reads only the usage file of
  each such cgroup every sample and compares it with the line and the growth since the last one
  (:meth:`memwatch.cgroups.CgroupSource.lean_crossed`). Either one's crossing makes that sample read
  every pod in full.
* Growth prediction: a short ring of samples per pod; when the growth rate will carry a container
  past its hard limit (``limits.memory``) before the next sample plus the time the action takes
  (:func:`memwatch.policy.seconds_to_cross`), the agent acts now. ``memwatch.io/predict: "false"``
  turns it off.
* Writes to the API (evictions, Events) run on one worker thread, so an unreachable API server
  never stalls sampling. The kill rung needs no API and runs inline: ``memwatch.io/action: restart``
  kills the container in place at its watch limit; ``--kill`` kills any watched container whose
  eviction has not taken effect when it passes ``--kill-ceiling`` (after ``--kill-after``), or whose
  hard limit is about to be crossed. Both are logged and Evented (``MemwatchKilled``).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import queue
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import psutil
from prometheus_client import Gauge, Histogram

from memwatch.agents import EventHistory
from memwatch.capabilities import KillCapability, probe
from memwatch.cgroups import (
    SETTLE_PERIOD,
    CgroupReader,
    CgroupSource,
    Hierarchy,
    ProcessSource,
    Unreadable,
    Vanished,
    top_processes,
)
from memwatch.clock import SYSTEM, Clock
from memwatch.enforcer import Enforcer, EnforcerSettings
from memwatch.kill import kill_cgroup
from memwatch.kube import Kube, load_client
from memwatch.lifecycle import HELD, Lifecycle, Outcome, Phase, PodLife, Retry, Step, Trigger
from memwatch.nodeguard import NodeGuard
from memwatch.observability import (
    HISTORY_SELECTOR,
    LATENCY_BUCKETS,
    REASON_DRY_RUN,
    REASON_FAILED,
    REASON_KILL_UNAVAILABLE,
    REASON_KILLED,
    REASON_PROTECTED,
    ActionLine,
    Metrics,
    Recorder,
    event_message,  # the Event text for a line logged here already (Recorder.action would log it late)
)
from memwatch.podindex import FINISHED, PodIndex, PodRecord
from memwatch.policy import Action, Breach, Limit, Policy, Usage, seconds_to_cross
from memwatch.policywatch import PolicyFeed
from memwatch.quantity import format_bytes
from memwatch.settings import Settings
from memwatch.watcher import ACTIVE_PODS, PodWatcher

log = logging.getLogger("memwatch.agent")

#: Samples kept per pod (a ring): enough for a growth rate, small enough to stay bounded.
HISTORY = 10
#: Samples the growth rate is fitted over: ~300 ms at 100 ms, so a leak that just started counts.
PREDICT_WINDOW = 4
#: Starting guesses for how long an action takes, refined by measurement (an EWMA).
INITIAL_ACTION_SECONDS = {"kill": 0.005, "evict": 0.05}
SELF_CHECK_SECONDS = 1.0
#: A quiet pod under the kernel's guard is read at least every MAX_STRIDE sample periods (1 s at 100 ms).
MAX_STRIDE = 10
#: Growth assumed for a pod that shows none, when judging how far it is from its lowest threshold.
GROWTH_FLOOR = 1 << 20  # bytes per second


@dataclass(slots=True)
class PodState:
    """What only the agent keeps per pod (the lifecycle itself is :mod:`memwatch.lifecycle`'s):
    a bounded ring of samples for growth prediction and what the kill rung did."""

    #: (sample time, container bytes, pod total). The container mapping is the sample's own, not a copy:
    #: every source builds a new one per sample and nothing changes a sample once taken.
    history: deque[tuple[float, Mapping[str, int], int]]
    policy: Policy | None = None  # the policy the kernel thresholds were registered for
    evicting_since: float | None = None  # mono: first API action submitted, for --kill-after
    killed: dict[str, tuple[float, str]] = field(default_factory=dict)  # container -> (mono, its CRI id)
    refused: bool = False
    next_sample: float = 0.0  # mono: a quiet pod under the kernel's guard is not read again before it


def agent_enforcer_settings(settings: Settings) -> EnforcerSettings:
    """The agent's caps are its node's own (``--node-max-evictions-per-minute``), not the controller's
    cluster-wide ones: every agent counts only its own writes."""
    return EnforcerSettings(dry_run=settings.dry_run, escalation_timeout=settings.escalation_timeout,
                            max_per_minute=settings.node_max_per_minute, max_per_namespace_per_minute=0)


@dataclass(frozen=True, slots=True)
class ActionTiming:
    """One action's timestamps (epoch): for the log line, the histogram and the benchmark."""

    uid: str
    result: str
    container: str | None
    crossed_at: float
    detected_at: float
    acted_at: float
    predicted: bool


class ActionWorker:
    """One thread that makes every API call (enforcer actions, Events): the loop never waits on them.

    Jobs are keyed by pod so one pod never has two in flight. Results go back to the sampling loop,
    which owns the pods' lifecycle (:attr:`results`).
    """

    def __init__(self) -> None:
        self.busy: set[str] = set()
        self.results: queue.SimpleQueue[tuple[str, Outcome]] = queue.SimpleQueue()
        self._q: queue.SimpleQueue[tuple[str | None, Callable[[], None]]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[[], None], key: str | None = None) -> bool:
        if key is not None:
            if key in self.busy:
                return False
            self.busy.add(key)
        self._q.put((key, fn))
        return True

    def run_pending(self, block: float | None = 0.0) -> None:
        """Run queued jobs (tests call this directly instead of starting the thread). ``block``: wait
        that long for the first (None: until one comes)."""
        while True:
            try:
                key, fn = self._q.get(timeout=block) if block != 0.0 else self._q.get_nowait()
            except queue.Empty:
                break
            block = 0.0
            try:
                fn()
            except Exception:
                log.exception("agent action failed")
            finally:
                if key is not None:
                    self.busy.discard(key)

    def run(self) -> None:
        # Asleep until a job comes (stop() sends an empty one): it used to wake 4 times a second only
        # to look at the stop flag, and a sleeping thread's wake-up costs ~0.1 ms of CPU on a VM.
        while not self._stop.is_set():
            self.run_pending(block=None)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="agent-actions", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._q.put((None, lambda: None))  # wakes run()


def _interpolate(t0: float, v0: int, t1: float, v1: int, level: int) -> float:
    """When a straight line from (t0, v0) to (t1, v1) passed ``level``."""
    if v1 <= v0 or t1 <= t0:
        return t1
    return t0 + (level - v0) / (v1 - v0) * (t1 - t0)


class Agent:
    """`memwatch agent`: sample this node's watched pods' cgroups, predict, and act before the kernel."""

    def __init__(self, settings: Settings, kube: Kube | None = None, source: CgroupSource | None = None,
                 metrics: Metrics | None = None, clock: Clock = SYSTEM, watch: bool = True,
                 capability: KillCapability | None = None) -> None:
        if not settings.node_name:
            raise ValueError("memwatch agent needs --node-name (or $NODE_NAME from the downward API)")
        self.settings = settings
        self.node = settings.node_name
        self.clock = clock
        self.kube = kube if kube is not None or not watch else Kube(load_client(settings.kubeconfig))
        self.metrics = metrics or Metrics()
        self.recorder = Recorder(self.kube, self.metrics, host=settings.pod_name or f"memwatch-agent/{self.node}")
        self.index = PodIndex(settings.defaults, settings.protections.reason)
        node_field = f"spec.nodeName={self.node},{ACTIVE_PODS}"
        scopes: list[str | None] = list(settings.namespaces) or [None]
        self.watchers: list[PodWatcher] = []
        if watch and self.kube is not None:
            self.watchers = [PodWatcher(self.kube, self.index, ns, settings.label_selector, node_field)
                             for ns in scopes]
        # The policies, resolved into the index like the controller's (memwatch.policywatch).
        self.policy_feed: PolicyFeed | None = None
        if self.watchers and self.kube is not None:
            self.policy_feed = PolicyFeed(self.kube, self.index, list(self.watchers), scopes)
            # memwatch's own Events, followed as they happen (the controller's, the other agents'):
            # a workload's restart budget counts every component's actions, not only this agent's.
            self.watchers += [PodWatcher(self.kube, EventHistory(self.recorder), ns, field_selector=HISTORY_SELECTOR,
                                         resource="events") for ns in scopes]
        self.source = source or CgroupSource(Hierarchy.detect(settings.cgroup_root), clock=clock.wall)
        self.fallback = ProcessSource(clock=clock.wall)
        # What the kill rung can really do here, found out once: never report a kill that cannot happen.
        self.capability = capability or probe(self.source.hierarchy)
        self.enforcer = Enforcer(self.kube, self.recorder, agent_enforcer_settings(settings), clock=clock)
        self.enforcer.caps.scope = f"node {self.node}'s"
        self.worker = ActionWorker()
        es = self.enforcer.settings
        # A breach must be seen by consecutive samples: a gap of 20 sample periods (at least 1 s) ends it.
        self.lifecycle = Lifecycle(clock, max_gap=max(1.0, 20 * settings.sample_period),
                                   retry=Retry(es.retry_min, es.retry_max, es.escalation_timeout))
        self.states: dict[str, PodState] = {}
        self.metrics.nearest.view(self._nearest_view)
        self.history_len = HISTORY
        self.action_seconds = dict(INITIAL_ACTION_SECONDS)
        self.timings: deque[ActionTiming] = deque(maxlen=1000)
        self.ticks = 0
        self.skipped = 0  # pod samples left to the kernel's guard (adaptive sampling)
        self.idle_ticks = 0  # ticks that found no pod due and nothing changed: no pass over the pods
        self._full_tick = True  # the next tick reads every pod (the kernel woke us)
        self._woken = True  # a descriptor was ready since the last pass (cgroups came or went, a crossing)
        #: What the last pass over the pods saw (index and cgroup generations, policies current) and
        #: when its first guarded pod is due: until then, with all of it unchanged, a tick has nothing to read.
        self._pass_key: tuple[int, int, bool] | None = None
        self._next_due = 0.0
        self._sampled = self._live = 0  # pods the last pass read, and looked at
        #: Whether any open cgroup is guarded: a v1 threshold armed, or a line for the lean guard
        #: (found by _sync_events, the one place that arms and sets them). Without a guard no pod can
        #: be left unread, so a pass reads every pod and skips the adaptive-sampling bookkeeping; every
        #: next_sample is then 0. Wrong only towards True between two syncs (a closed cgroup's eventfds
        #: go with it; the lean guard answers True once the cgroups changed), which reads no fewer pods.
        self._guarding = False
        self._lean_guarding = False  # some guarded cgroup has no kernel threshold: lean_crossed each tick
        self.last_tick = 0.0
        self.heartbeat = time.monotonic()
        self.rss = 0
        self.over_ceiling = False
        self._self_checked = -1e18
        self._events_ok = True
        self._events_dirty = True
        self._history_loaded = self.kube is None
        self._history_next = 0.0
        self._synced_generation = -1
        self._poll: Any = None  # select.poll
        self._poll_fds: dict[int, CgroupReader | None] = {}
        self._poll_key: tuple[int, ...] = ()
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rss_gauge = Gauge("memwatch_agent_rss_bytes", "The node agent's own resident memory.",
                                registry=self.metrics.registry)
        self._tick_hist = Histogram("memwatch_agent_sample_duration_seconds",
                                    "Time for one agent sample of every watched pod on the node.",
                                    buckets=LATENCY_BUCKETS, registry=self.metrics.registry)
        self.guard = NodeGuard.attach(self)  # --node-guard: the node's own memory, once per sample
        if self.policy_feed is not None:  # the guard's own pod watch (a --label-selector agent) re-lists too
            self.policy_feed.pod_watchers = [w for w in self.watchers if w.resource == "pods"]

    # -- one sample of every pod -----------------------------------------------------------------
    def _kill_rung(self, policy: Policy) -> bool:
        return (self.settings.kill or policy.action is Action.RESTART) and self.capability.can_kill

    def _load_history(self) -> None:
        """Remember memwatch's Events already on the cluster, so a restarted agent does not repeat
        itself (runs on the worker thread: an unreachable API server never delays sampling)."""
        try:
            n = self.recorder.load_history(self.settings.namespaces)
            self._history_loaded = True
            log.info("loaded %d earlier memwatch Events (so a restart does not act twice)", n)
        except Exception as exc:  # any API failure: try again later, keep sampling meanwhile
            log.warning("cannot read earlier memwatch Events yet (%s); retrying in 30s", exc)
            self._history_next = time.monotonic() + 30.0

    def _nearest_view(self) -> Iterator[tuple[PodRecord, Usage]]:
        """The pods with a fresh sample, for the nearest-pods gauges (called when scraped)."""
        now = self.clock.wall()
        for uid, st in list(self.states.items()):
            if not st.history:
                continue
            ts, containers, total = st.history[-1]
            rec = self.index.get(uid)
            if rec is not None and now - ts <= self.settings.max_sample_age:
                yield rec, Usage(containers, ts, "cgroup", total)

    def tick(self) -> int:
        """Sample every watched pod on this node once, decide and act. Returns pods sampled."""
        t0 = time.perf_counter()
        if not self._history_loaded and time.monotonic() >= self._history_next:
            self._history_next = float("inf")  # one load in flight at a time
            self.worker.submit(self._load_history)
        applied = self._apply_results()
        if not self._full_tick and self._poll is not None:
            self.wait(0)  # a threshold crossed since the last wait (tick() called on its own) reads all
        if self._lean_guarding and not self._full_tick and self.source.lean_crossed(self._lookahead()):
            self._full_tick = True  # as when the kernel wakes the agent: this sample reads every pod
        current = self.policy_feed is None or self.policy_feed.current(fresh=False)
        key = (self.index.generation, self.source.generation, current)
        if (not applied and not self._full_tick and not self._woken and not self._events_dirty
                and not self.worker.busy and key == self._pass_key and time.monotonic() < self._next_due):
            self.idle_ticks += 1  # every pod is quiet under the kernel's guard and none is due
            self.skipped += self._live
            self._tail(t0)
            return 0
        self._pass_key, self._woken = key, False
        self._next_due = self._pass(current)
        self._tail(t0)
        return self._sampled

    def _pass(self, current: bool) -> float:
        """One pass over the watched pods: read the due and unguarded ones, judge, act. Returns when
        the first pod it left to the kernel is due (0: a pod needs the very next tick).

        One loop does all of a pod's work before the next pod's (its record, cgroups and state are
        looked at once, while they are in the cache): most pods are quiet, and the cost of a sample
        is the cost of a quiet pod times the pods on the node."""
        lives = self.lifecycle
        records = self.index.snapshot() if current else []  # policies not in yet: judge nothing
        # Only pods that left the index lose their state: an evicted pod keeps DONE until it is gone.
        if len(lives):
            lives.retain({r.uid for r in records} | self.worker.busy)
        uids: set[str] = set()
        missing: list[PodRecord] = []
        sampled = 0
        full, self._full_tick = self._full_tick, False
        now = time.monotonic()
        next_due = float("inf")
        # Without a threshold armed anywhere, no pod is left to the kernel: no schedule to keep.
        guarding, kill = self._guarding, self.settings.kill
        sample, acted_on = self.source.sample, self.recorder.acted_on
        for rec in records:
            if rec.policy is None:
                self._announce(rec, "invalid")
                continue
            if rec.warnings:
                self._announce(rec, "warnings")
            if rec.phase in FINISHED or (rec.node and rec.node != self.node):
                continue
            uid = rec.uid
            if acted_on(uid):
                lives.mark_done(uid, "already")  # acted on before a restart, or by the controller
            life = lives.peek(uid)
            if (rec.terminating or (life is not None and life.phase is Phase.DONE)) and not kill:
                continue  # evicted or going: only the last-resort kill rung still cares
            uids.add(uid)
            if not full and guarding:
                until = self._quiet_until(rec)
                if now < until:
                    self.skipped += 1
                    next_due = min(next_due, until)
                    continue
            usage = sample(rec)
            if usage is None:
                lives.interrupt(uid)
                if rec.container_ids and uid in self.source.problems:
                    missing.append(rec)
                next_due = 0.0
                continue
            self._evaluate(rec, usage, life)
            sampled += 1
            if guarding:
                self._schedule(rec, now)
                next_due = min(next_due, self._quiet_until(rec))
            else:
                next_due = 0.0  # read again at the next tick (every next_sample is 0: see _sync_events)
        if missing:  # cgroups unreadable: psutil's RSS, at its own slower cadence
            for rec in missing:
                usage = self.fallback.fetch([rec]).get(rec.uid)
                if usage is not None and self.clock.wall() - usage.timestamp <= self.settings.max_sample_age:
                    self._evaluate(rec, usage, lives.peek(rec.uid))
                    sampled += 1
        self.source.prune(uids)
        for uid in self.states.keys() - uids:
            del self.states[uid]
        self._sampled, self._live = sampled, len(uids)
        return next_due

    def _tail(self, t0: float) -> None:
        """What every tick does, whether or not it passed over the pods."""
        self._retry_due()
        self._sync_events()
        self._self_check()
        if self.guard is not None:
            self.guard.tick()
        self.ticks += 1
        self.last_tick = time.perf_counter() - t0
        self._tick_hist.observe(self.last_tick)

    # -- adaptive sampling ----------------------------------------------------------------------------
    def _quiet_until(self, rec: PodRecord) -> float:
        """Until when this pod's samples can be left to the kernel (0.0: read it now): it is quiet
        (under every limit, nothing in flight, its current policy's thresholds registered), and every
        cgroup read for it has a v1 threshold notification armed below its lowest line that usage
        has not reached. A crossing then wakes the agent at once, and that sample reads every pod."""
        st = self.states.get(rec.uid)
        if st is None or not st.next_sample or st.policy is not rec.policy or self._events_dirty:
            return 0.0  # (next_sample 0.0: nothing stands guard over it, see _schedule)
        if rec.terminating or rec.uid in self.worker.busy or st.evicting_since is not None or st.killed:
            return 0.0
        life = self.lifecycle.peek(rec.uid)
        if life is not None and life.phase is not Phase.IDLE:
            return 0.0
        return st.next_sample if self.source.guarded_room(rec.uid) is not None else 0.0

    def _schedule(self, rec: PodRecord, now: float) -> None:
        """When a quiet, guarded pod is read next: sooner the faster it grows towards its lowest
        threshold (at least GROWTH_FLOOR assumed), at most MAX_STRIDE sample periods away."""
        st = self.states.get(rec.uid)
        if st is None:
            return
        period = self.settings.sample_period
        room = self.source.guarded_room(rec.uid)
        if room is None:
            st.next_sample = 0.0
            return
        growth = 0.0
        if len(st.history) >= 2:
            (t0, _, v0), (t1, _, v1) = st.history[0], st.history[-1]
            if t1 > t0:
                growth = (v1 - v0) / (t1 - t0)
        seconds_to_line = room / max(growth, GROWTH_FLOOR)
        stride = max(1, min(MAX_STRIDE, int(seconds_to_line / (2 * period))))
        st.next_sample = now + (stride - 0.5) * period  # due at the tick ``stride`` periods from now

    def _lookahead(self) -> float:
        """Sample periods ahead in which a growth towards a line counts as reaching it (the lean
        guard's): as far ahead as :meth:`_predict`'s cheap test looks, four slowest-action horizons."""
        period = self.settings.sample_period
        return 4 * (period + max(self.action_seconds.values())) / period

    def _announce(self, rec: PodRecord, what: str) -> None:
        """Report an invalid policy or annotation warnings once per pod and content (on the worker),
        unless the controller runs: then it is the one component that announces them."""
        if self.settings.controller_runs:
            return
        life = self.lifecycle.get(rec.uid)
        key = (what, rec.problems, rec.warnings)
        if life.announced == key:
            return
        life.announced = key
        self.worker.submit(partial(self.recorder.invalid if what == "invalid" else self.recorder.warnings, rec))

    def _apply_results(self) -> int:
        """Outcomes of the worker's API actions, applied on this (the lifecycle's own) thread."""
        applied = 0
        while True:
            try:
                uid, outcome = self.worker.results.get_nowait()
            except queue.Empty:
                return applied
            applied += 1
            self.lifecycle.result(uid, outcome)
            st = self.states.get(uid)
            if st is not None and (outcome.result in ("rate-limited", "not-leader", "waiting")
                                   or outcome.result in HELD or outcome.result.startswith("would-")):
                st.evicting_since = None  # nothing in effect: --kill-after counts from a real action

    def _state(self, rec: PodRecord) -> PodState:
        st = self.states.get(rec.uid)
        if st is None:
            st = self.states[rec.uid] = PodState(deque(maxlen=self.history_len))
        return st

    def _evaluate(self, rec: PodRecord, usage: Usage, life: PodLife | None) -> None:
        """Judge one fresh sample of the pod, and act on it when it comes to that. ``life``: the pod's
        lifecycle state as the pass found it (``Lifecycle.peek``).

        Most samples are of a quiet pod under every limit and heading for none: for those this notes
        the sample in the history ring and asks :meth:`Lifecycle.observe` and :meth:`_predict`, which
        answer without keeping anything, and returns."""
        policy = rec.policy
        assert policy is not None
        st = self.states.get(rec.uid)
        if st is None:
            st = self._state(rec)
        if st.policy is not policy:
            st.policy = policy
            self._events_dirty = True  # new pod or changed annotations: new kernel thresholds
        st.history.append((usage.timestamp, usage.containers, usage.total))
        if rec.terminating or (life is not None and life.phase is Phase.DONE) or rec.uid in self.worker.busy:
            self._last_resort(rec, usage, st)  # acted on, or an API action in flight
            return
        step, breach = self.lifecycle.observe(rec.uid, policy, usage)
        if step is Step.CLEARED:
            st.evicting_since = None
            log.info("pod=%s is back under its limit; dropping the pending action", rec.key)
            return
        predicted = None
        if policy.predict and (step is Step.OK or step is Step.WAIT):
            predicted = self._predict(policy, st)
        if step is not Step.ACT and predicted is None:
            if step is not Step.OK:
                self._last_resort(rec, usage, st)  # over, waiting (for:, a retry): the kill rung may still fire
            return
        # About to act: never on a stale inactive-file figure. Read once more, fresh, and decide again.
        if usage.source == self.source.name:
            fresh = self.source.sample(rec, fresh=True)
            if fresh is None:
                return  # vanished in between: nothing to act on
            usage = fresh
            st.history[-1] = (usage.timestamp, usage.containers, usage.total)
            step, breach = self.lifecycle.observe(rec.uid, policy, usage)
            predicted = None
            if policy.predict and (step is Step.OK or step is Step.WAIT):
                predicted = self._predict(policy, st)
            if step is not Step.ACT and predicted is None:
                return
        detected = self.clock.wall()
        crossed = life.crossed_at if (life := self.lifecycle.peek(rec.uid)) is not None else None
        trigger, container = self._trigger(policy, usage, st, breach, crossed, predicted, detected)
        if predicted is not None:
            name, seconds, hard = predicted
            log.info("predicted: pod=%s container=%s usage=%s crosses its hard limit %s in %.0fms; acting now",
                     rec.key, name, format_bytes(usage.containers.get(name, usage.total)), format_bytes(hard),
                     seconds * 1000)
        if rec.protected:
            if not st.refused:
                st.refused = True
                self._record(ActionLine("protected", rec, trigger.breach.usage, trigger.breach.limit.bytes,
                                        trigger.breach.limit.scope, trigger.source, 0.0, detail=str(rec.protected)),
                             REASON_PROTECTED, warning=True, once=True)
            return
        if policy.action is Action.RESTART and not self.settings.dry_run:
            if self.capability.can_kill:
                if container is not None and st.killed.get(container, (0.0, ""))[1] == self._instance(rec, container):
                    return  # this instance was killed already: its restart is a new one
                # The same holds as an eviction's (min-pod-age, the restart budget); the Event on the worker.
                held = self.enforcer.hold(rec, trigger, f"killed container {container or '?'}",
                                          post=self.worker.submit)
                if held is not None:
                    self.lifecycle.result(rec.uid, held)
                    return
                self._kill(rec, st, usage, trigger, container, "memwatch.io/action: restart",
                           predicted is not None, counted=True)
                return
            self._cannot_kill(rec, trigger)  # said once per pod; evicted instead (when allowed)
        if not self.settings.evict:
            return  # --evict=false: API actions are the controller's (it acts on this pod itself)
        self._submit_enforcer(rec, st, trigger, predicted is not None)

    def _cannot_kill(self, rec: PodRecord, trigger: Trigger) -> None:
        """``restart`` on an agent that cannot kill: one line and one Event per pod, then eviction."""
        if self.recorder.already(rec.uid, [REASON_KILL_UNAVAILABLE]):
            return
        self.recorder.remember(rec.uid, REASON_KILL_UNAVAILABLE)
        then = "evicting instead" if self.settings.evict else "left to the controller (--evict=false)"
        self._record(self._line("kill-unavailable", rec, trigger, None,
                                f"memwatch.io/action: restart, but {self.capability.reason}; {then}"),
                     REASON_KILL_UNAVAILABLE, warning=True)

    def _horizon(self, policy: Policy) -> float:
        kind = "kill" if policy.action is Action.RESTART else "evict"
        return self.settings.sample_period + self.action_seconds[kind]

    def _predict(self, policy: Policy, st: PodState, horizon: float | None = None) -> tuple[str, float, int] | None:
        """(container, seconds to its hard limit, the limit) when it will be crossed within ``horizon``
        (by default the policy's action's, :meth:`_horizon`: worked out only for a container that grows)."""
        if len(st.history) < 2:
            return None
        (t1, c1, _), (t2, c2, _) = st.history[-2], st.history[-1]
        for name, hard in policy.container_hard_limits:
            v1, v2 = c1.get(name), c2.get(name)
            if v2 is None:
                continue
            if v2 >= hard:
                return name, 0.0, hard
            if v1 is None or t2 <= t1 or v2 <= v1:
                continue
            if horizon is None:
                horizon = self._horizon(policy)
            # Cheap test first: only a container heading for its limit gets the least-squares fit.
            if (hard - v2) / ((v2 - v1) / (t2 - t1)) > 4 * horizon:
                continue
            window = list(st.history)[-PREDICT_WINDOW:]
            series = [(t, c[name]) for t, c, _ in window if name in c]
            seconds = seconds_to_cross(series, hard)
            if seconds is not None and seconds < horizon:
                return name, seconds, hard
        return None

    def _trigger(self, policy: Policy, usage: Usage, st: PodState, breach: Breach | None,
                 crossed_at: float | None, predicted: tuple[str, float, int] | None,
                 detected: float) -> tuple[Trigger, str | None]:
        """The trigger for the enforcer and the log line, and the container to kill if it comes to that."""
        if breach is None:
            assert predicted is not None
            name = predicted[0]
            limit = next((lim for lim in policy.limits if lim.container == name),
                         next((lim for lim in policy.limits if lim.container is None), policy.limits[0]))
            breach = Breach(limit, usage.containers.get(name, usage.total) if limit.container else usage.total)
            return Trigger(breach, usage.source, usage.timestamp, detected, detected), name
        container = breach.limit.container
        if container is None and usage.containers:
            container = max(usage.containers, key=lambda n: usage.containers[n])
        crossed = usage.timestamp
        if len(st.history) >= 2:
            (t0, c0, p0), (t1, c1, p1) = st.history[-2], st.history[-1]
            v0 = p0 if breach.limit.container is None else c0.get(breach.limit.container)
            v1 = p1 if breach.limit.container is None else c1.get(breach.limit.container)
            if v0 is not None and v1 is not None and v0 <= breach.limit.bytes < v1:
                crossed = _interpolate(t0, v0, t1, v1, breach.limit.bytes)
        if crossed_at is not None and crossed_at < usage.timestamp:
            crossed = min(crossed, crossed_at)  # over for a while (memwatch.io/for): since then
        return Trigger(breach, usage.source, usage.timestamp, crossed, detected), container

    def _submit_enforcer(self, rec: PodRecord, st: PodState, trigger: Trigger, predicted: bool) -> None:
        """Hand one rung of the ladder to the worker; its outcome comes back through the results queue."""
        uid = rec.uid
        policy = rec.policy
        assert policy is not None
        escalate = self.lifecycle.should_escalate(uid, policy.escalate)
        blocked_for = self.lifecycle.blocked_for(uid)
        if st.evicting_since is None:
            st.evicting_since = self.clock.mono()

        def job() -> None:
            # Right before the write: the pod as it is now (a newer record, deleted, or replaced).
            current = self.index.get(uid)
            if current is None or current.policy is None:
                self.worker.results.put((uid, Outcome("gone" if current is None else "waiting")))
                return
            t0 = self.clock.mono()
            outcome = self.enforcer.act(current, trigger, escalate=escalate, blocked_for=blocked_for)
            done = self.clock.mono()
            self._learn("evict", done - t0)
            if outcome.result in ("evicted", "deleted", "escalated") or outcome.result.startswith("would-"):
                self.timings.append(ActionTiming(uid, outcome.result, None, trigger.crossed_at, trigger.detected_at,
                                                 self.clock.wall(), predicted))
            self.worker.results.put((uid, outcome))

        self.worker.submit(job, uid)

    def _retry_due(self) -> None:
        """Pending actions whose retry is due: judged again on the current record, then retried."""
        for uid in self.lifecycle.due():
            if uid in self.worker.busy:
                continue
            rec = self.index.get(uid)
            st = self.states.get(uid)
            if rec is None or rec.terminating:
                self.lifecycle.result(uid, Outcome("gone"))
                continue
            if rec.policy is None or st is None:
                self.lifecycle.cancel(uid)
                continue
            life = self.lifecycle.get(uid)
            step, breach = self.lifecycle.recheck(uid, rec.policy)
            if step is Step.CLEARED:
                st.evicting_since = None
                log.info("pod=%s is under its current limit; dropping the pending action", rec.key)
            if step is not Step.ACT or breach is None or life.usage is None or rec.protected:
                continue
            now = self.clock.wall()
            trigger = Trigger(breach, life.usage.source, life.usage.timestamp, life.crossed_at or now, now)
            if (rec.policy.action is Action.RESTART and not self.settings.dry_run) or not self.settings.evict:
                continue  # the kill rung acts on samples, not on retries; --evict=false: no API actions
            self._submit_enforcer(rec, st, trigger, False)

    def _learn(self, kind: str, seconds: float) -> None:
        self.action_seconds[kind] = min(1.0, max(0.001, 0.8 * self.action_seconds[kind] + 0.2 * seconds))

    # -- the kill rung ---------------------------------------------------------------------------
    def _last_resort(self, rec: PodRecord, usage: Usage, st: PodState) -> None:
        """``--kill``: a container past ``--kill-ceiling`` whose eviction has not taken effect within
        ``--kill-after``, or one about to cross its hard limit (the kernel would kill it anyway)."""
        policy = rec.policy
        if not self.settings.kill or not self.capability.can_kill or policy is None or rec.protected:
            return
        now = self.clock.mono()
        horizon = self.settings.sample_period + self.action_seconds["kill"]
        imminent = self._predict(policy, st, horizon) if policy.predict else None
        for name, hard in policy.container_hard_limits:
            used = usage.containers.get(name)
            if used is None:
                continue
            over = used >= hard * self.settings.kill_ceiling / 100
            soon = imminent is not None and imminent[0] == name
            if not (over or soon):
                continue
            if name in st.killed and st.killed[name][1] == self._instance(rec, name):
                continue  # this very container instance was killed already: one kill per instance
            waited = None if st.evicting_since is None else now - st.evicting_since
            if not soon and (waited is None or waited < self.settings.kill_after):
                continue
            limit = next((lim for lim in policy.limits if lim.container == name), policy.limits[0])
            wall = self.clock.wall()
            trigger = Trigger(Breach(limit, used), usage.source, usage.timestamp, usage.timestamp, wall)
            why = (f"last resort: {name} predicted to cross its hard limit {format_bytes(hard)}" if soon else
                   f"last resort: {name} is over --kill-ceiling={self.settings.kill_ceiling:g}% of "
                   f"{format_bytes(hard)} and the eviction has not taken effect after {waited or 0:.1f}s")
            if self.settings.dry_run:
                if not self.recorder.already(rec.uid, [REASON_DRY_RUN + ":kill"]):
                    self.recorder.remember(rec.uid, REASON_DRY_RUN + ":kill")
                    self._record(self._line("would-kill", rec, trigger, None, why), REASON_DRY_RUN)
                continue
            self._kill(rec, st, usage, trigger, name, why, soon)

    def _instance(self, rec: PodRecord, container: str) -> str:
        """Which instance of a container this is: its cgroup (named by its container ID), so a restart
        is a new instance and the same one is never killed twice."""
        entry = self.source.pods.get(rec.uid)
        reader = None if entry is None else entry.containers.get(container)
        return str(reader.path) if reader is not None else dict(rec.container_ids).get(container, "")

    def _kill(self, rec: PodRecord, st: PodState, usage: Usage, trigger: Trigger, container: str | None,
              why: str, predicted: bool, counted: bool = False) -> None:
        """SIGKILL the container's processes now (pidfds, or cgroup.kill on v2); log and Event it
        (the Event on the worker thread). A kill that reached no process is a failure, never ``killed``.
        ``counted``: the pod's own action (``restart``), which counts against the restart budget; the
        last-resort kill does not (it follows an eviction that counted, or forestalls the kernel's)."""
        entry = self.source.pods.get(rec.uid)
        reader = None if entry is None or container is None else entry.containers.get(container)
        if reader is None:
            # A pod-level breach seen before its containers were: look at the pod's directory now.
            fresh = self.source.sample(rec, fresh=True, rescan=True)
            entry = self.source.pods.get(rec.uid)
            if fresh is not None and fresh.containers and entry is not None:
                if container not in entry.containers:
                    container = max(fresh.containers, key=lambda n: fresh.containers[n])
                reader = entry.containers.get(container) if container is not None else None
        if reader is None or container is None:
            self._record(self._line("failed", rec, trigger, None,
                                    f"{why}: no cgroup for container {container!r} to kill"),
                         REASON_FAILED, warning=True, once=True)
            return
        instance = self._instance(rec, container)
        if st.killed.get(container, (0.0, ""))[1] == instance:
            return  # one kill per container instance, not one per sample
        t0 = self.clock.mono()
        try:
            top = top_processes(reader.procs())
        except (Vanished, Unreadable):
            top = []
        result = kill_cgroup(reader.path, reader.hierarchy)
        if result.vanished:
            return  # it ended on its own
        if not result.ok:
            self._record(self._line("failed", rec, trigger, None, f"{why}: {result.describe()}"),
                         REASON_FAILED, warning=True, once=True)
            return
        acted_mono = self.clock.mono()
        acted = self.clock.wall()
        self._learn("kill", acted_mono - t0)
        st.killed[container] = (acted_mono, instance)
        st.history.clear()
        name = self.enforcer.counted(rec, acted) if counted else None
        if counted:
            self.lifecycle.cancel(rec.uid)  # the container restarts: a new breach must be seen afresh
        else:
            self.lifecycle.interrupt(rec.uid)  # likewise, and an eviction pending stays pending
        self.timings.append(ActionTiming(rec.uid, "killed", container, trigger.crossed_at, trigger.detected_at,
                                         acted, predicted))
        detail = (f"{why}; {result.describe()} of container {container}"
                  + (f"; top: {' '.join(str(p) for p in top)}" if top else ""))
        line = self._line("killed", rec, trigger, acted, detail)
        self.metrics.latency.labels("killed", trigger.source).observe(acted - trigger.detected_at)
        self._record(line, REASON_KILLED, warning=True, counted=name)

    def _line(self, result: str, rec: PodRecord, trigger: Trigger, acted: float | None, detail: str) -> ActionLine:
        lim: Limit = trigger.breach.limit
        return ActionLine(result, rec, trigger.breach.usage, lim.bytes, lim.scope, trigger.source,
                          max(0.0, trigger.detected_at - trigger.sample_time),
                          None if acted is None else acted - trigger.detected_at,
                          trigger.detected_at, trigger.crossed_at, acted, detail)

    def _record(self, line: ActionLine, reason: str, warning: bool = False, once: bool = False,
                counted: str | None = None) -> None:
        """Log now; post the Event from the worker thread (the API may be slow or unreachable).
        ``counted``: the Event name the restart budget counted the action under."""
        line.log(log, warning)
        self.worker.submit(lambda: self._post(line, reason, warning, once, counted))

    def _post(self, line: ActionLine, reason: str, warning: bool, once: bool, counted: str | None = None) -> None:
        if once and self.recorder.already(line.record.uid, [reason]):
            return
        self.metrics.actions.labels(line.result, line.source or "-").inc()
        self.recorder.event(line.record, reason, event_message(line), warning, name=counted,
                            related=counted is not None, at=line.acted_at if counted else None)
        self.recorder.remember(line.record.uid, reason)

    # -- kernel notifications ------------------------------------------------------------------------
    def _sync_events(self) -> None:
        """Register kernel thresholds and memory.stat gates for new or changed cgroups, and rebuild the
        poll set; only when a cgroup was opened or closed or a policy changed, not every sample."""
        if not self._events_dirty and self._synced_generation == self.source.generation:
            return
        self._events_dirty = False
        self._synced_generation = self.source.generation
        for uid, entry in self.source.pods.items():
            st = self.states.get(uid)
            if st is None or st.policy is None:
                continue
            # Each cgroup's line for the lean guard: its lowest threshold, or for a container its hard
            # limit when the policy predicts and that is lower (a growth heading there must be read in
            # full early, to be predicted).
            hard = dict(st.policy.container_hard_limits) if st.policy.predict else {}
            armed: list[tuple[CgroupReader, tuple[int, ...], set[int]]] = [
                (reader, self._thresholds(st.policy, name), {hard[name]} if name in hard else set())
                for name, reader in entry.containers.items()]
            if entry.pod is not None:
                # The pod cgroup holds its containers: a threshold at every line that matters for any
                # of them wakes the agent for a container it has not found yet (a leak from the start).
                pod_lines = {lim.bytes for lim in st.policy.limits if lim.container is None}
                entry.pod.gate_bytes = min(pod_lines, default=None)
                names = {lim.container for lim in st.policy.limits if lim.container is not None}
                names |= {name for name, _ in st.policy.container_hard_limits}
                armed.append((entry.pod, tuple(sorted(
                    pod_lines | {v for name in names for v in self._thresholds(st.policy, name)})), set()))
            for reader, wanted, hard_lines in armed:
                if reader is not entry.pod:
                    reader.gate_bytes = min(wanted, default=None)
                reader.line = min((*wanted, *hard_lines), default=None)
                if reader.thresholds == wanted:
                    continue
                if not wanted or not self._events_ok:
                    # A registration for other lines guards none of these: dropped, so the lean guard
                    # (which leaves a cgroup with kernel thresholds to the kernel) takes the cgroup.
                    reader.unwatch()
                    continue
                try:
                    reader.watch_thresholds(wanted)
                except Vanished:
                    continue
                except Unreadable as exc:
                    self._events_ok = False
                    log.warning("kernel memory notifications unavailable (%s); the lean guard reads each quiet "
                                "cgroup's usage file every %.0fms instead", exc, self.settings.sample_period * 1000)
        extra = self.guard.fds if self.guard is not None else []  # kubepods eventfd, PSI trigger
        notify = self.source.notify_fd()
        if notify is not None:
            extra = [*extra, (notify, select.POLLIN)]  # a pod or container cgroup was made
        key = tuple(fd for entry in self.source.pods.values() for r in entry.readers()
                    for fd in (*r.events, *([r.events_fd] if r.events_fd is not None else [])))
        # Guarded: by a kernel threshold, or else by the lean guard (lean_crossed, every sample).
        self._lean_guarding = self.source.guard_lean() > 0
        guarding = self._lean_guarding or any(r.events for entry in self.source.pods.values() for r in entry.readers())
        if self._guarding and not guarding:
            for st in self.states.values():
                st.next_sample = 0.0  # their schedules counted on a guard that is gone: read every tick
            self._next_due = 0.0
        self._guarding = guarding
        key += tuple(fd for fd, _ in extra)
        if key != self._poll_key or self._poll is None:
            poll = select.poll()
            poll.register(self._wake, select.POLLIN)
            self._poll_fds = {self._wake: None}
            for entry in self.source.pods.values():
                for r in entry.readers():
                    for fd in r.events:
                        poll.register(fd, select.POLLIN)
                        self._poll_fds[fd] = r
                    if r.events_fd is not None:
                        poll.register(r.events_fd, select.POLLPRI)
                        self._poll_fds[r.events_fd] = r
            for fd, mask in extra:
                poll.register(fd, mask)
                self._poll_fds[fd] = None
            self._poll, self._poll_key = poll, key

    def _thresholds(self, policy: Policy, container: str) -> tuple[int, ...]:
        values = {lim.bytes for lim in policy.limits if lim.container in (None, container)}
        hard = dict(policy.container_hard_limits).get(container)
        if hard is not None and self._kill_rung(policy):
            values.add(int(hard * self.settings.kill_ceiling / 100))
        return tuple(sorted(values))

    def wait(self, seconds: float) -> bool:
        """Sleep until the next sample is due or the kernel reports a crossing. True when woken early."""
        if self._poll is None:
            self._stop.wait(seconds)
            return False
        # Whole milliseconds, rounded up: rounded down, the last millisecond before a tick was a busy
        # loop of poll(0) (about 1 % of a core at a 100 ms period, measured).
        ready = self._poll.poll(max(0, math.ceil(seconds * 1000)))
        if ready:
            self._woken = True  # whatever it was (a crossing, cgroups come or gone): the next tick passes
        notify = self.source.notify_fd()
        for fd, _ in ready:
            reader = self._poll_fds.get(fd)
            if reader is not None:
                self._full_tick = True  # a pod's threshold: the next tick reads the guarded pods too
            if fd == notify:
                self.source.changed()  # drains it: the pods whose directory changed look again now
                continue
            with contextlib.suppress(OSError):
                if reader is not None and fd == reader.events_fd:
                    os.pread(fd, 4096, 0)  # v2: re-arm the notification
                else:
                    os.read(fd, 8)  # eventfd: reset its counter
        return bool(ready)

    # -- its own memory --------------------------------------------------------------------------------
    def _self_check(self) -> None:
        now = time.monotonic()
        if now - self._self_checked < SELF_CHECK_SECONDS:
            return
        self._self_checked = now
        try:
            self.rss = psutil.Process().memory_info().rss
        except psutil.Error:
            return
        self._rss_gauge.set(self.rss)
        over = self.rss > self.settings.memory_ceiling
        if over and not self.over_ceiling:
            log.warning("agent memory %s is over --memory-ceiling=%s: keeping 2 samples per pod instead of %d",
                        format_bytes(self.rss), format_bytes(self.settings.memory_ceiling), HISTORY)
            self.history_len = 2
            for st in self.states.values():
                st.history = deque(st.history, maxlen=2)
            gc.collect()
        elif not over and self.over_ceiling:
            log.info("agent memory %s is back under --memory-ceiling", format_bytes(self.rss))
            self.history_len = HISTORY
        self.over_ceiling = over

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        period = self.settings.sample_period
        next_tick = time.monotonic()
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            if self.heartbeat >= next_tick:
                try:
                    self.tick()
                except Exception:  # a bug in one sample must not stop the agent
                    log.exception("agent sample failed; the next one runs on schedule")
                next_tick = self.heartbeat + period
            timeout = max(0.0, next_tick - time.monotonic())
            unsettled = self.source.unsettled()
            if unsettled:
                timeout = min(timeout, SETTLE_PERIOD)
            if self.wait(timeout):
                next_tick = time.monotonic()  # the kernel says a threshold was crossed: sample now
            elif unsettled and time.monotonic() < next_tick:
                self._settle(unsettled)

    def _settle(self, uids: list[str]) -> None:
        """New container cgroups whose first process just arrived: hold them and arm their thresholds
        now, between samples (:meth:`CgroupSource.unsettled`)."""
        changed = False
        for uid in uids:
            rec = self.index.get(uid)
            if rec is not None:
                changed |= self.source.settle(rec)
        if changed:
            self._sync_events()

    def start(self) -> None:
        self.metrics.serve(self.settings.metrics_port)
        if self.policy_feed is not None:
            self.policy_feed.start()
        for w in self.watchers:
            w.start()
        self.worker.start()
        self._thread = threading.Thread(target=self.run, name="agent", daemon=True)
        self._thread.start()
        log.info("agent started: node=%s cgroup v%d at %s, sample-period=%.0fms kill=%s dry_run=%s",
                 self.node, self.source.hierarchy.version, self.source.hierarchy.memory_root,
                 self.settings.sample_period * 1000, self.settings.kill, self.settings.dry_run)
        # Said once: what the kill rung can do here, and if nothing, why (restart then evicts).
        (log.info if self.capability.can_kill else log.warning)("kill rung: %s", self.capability.describe())

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            os.eventfd_write(self._wake, 1)
        if self.policy_feed is not None:
            self.policy_feed.stop()
        for w in self.watchers:
            w.stop()
        self.worker.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.source.close()
        if self.guard is not None:
            self.guard.reader.close()

    def health(self) -> dict[str, Any]:
        """For kopf's liveness probe. Raises when the sampling loop is stuck."""
        stalled = time.monotonic() - self.heartbeat
        if stalled > max(30.0, 50 * self.settings.sample_period):
            raise RuntimeError(f"agent sampling loop stalled for {stalled:.0f}s")
        return {
            "node": self.node,
            "watched": len(self.index),
            "synced": all(w.synced.is_set() for w in self.watchers),
            "samples": self.ticks,
            "last_sample_seconds": round(self.last_tick, 5),
            "rss_bytes": self.rss,
            "over_memory_ceiling": self.over_ceiling,
            "kernel_notifications": self._events_ok,
            "pod_reads_left_to_the_kernel": self.skipped,  # adaptive sampling: guarded quiet pods
            "node_guard": None if self.guard is None else self.guard.status(),
        }


