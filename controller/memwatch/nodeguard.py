"""The node guard: keep the node itself alive under memory pressure, before the kernel OOM killer and the kubelet.

The node agent samples every pod's cgroup every 100 ms; once per sample it also calls
:meth:`NodeGuard.tick`, which reads the node's signals (:mod:`memwatch.nodesignals`), compares them with
two lines, and when the node is short acts on **one** pod at a time:

* **Lines** (:func:`assess`): ``--node-guard-soft`` (act: evict, PDB-aware) and ``--node-guard-hard``
  (act without waiting for grace periods: kill in place through the kill rung, else delete with grace
  0). Each is free memory, in bytes (``500Mi``) or as a percentage (``10%``) of the node's memory
  (against MemAvailable) and of kubepods' hard limit (against its room under that limit), whichever is
  tighter. ``--node-guard-psi-full`` (optional) is the soft line for thrashing: ``full avg10`` percent.
* **Victim** (:func:`choose_victim`, pure): never a protected pod (:mod:`memwatch.protections`), never one
  annotated ``memwatch.io/node-pressure: never`` (or with a value that is neither ``evict`` nor
  ``never``: memwatch does not act on a mistake); ``memwatch.io/node-pressure: evict`` first; then the
  lowest priority; then BestEffort before Burstable before Guaranteed; then the largest usage above
  requests; then the largest usage. The rule that separated the victim from the runner-up is named in
  the log line and the Events (``only-candidate`` when there was no runner-up).
* **One at a time**: after acting, the guard waits until the victim's memory is freed (its pod cgroup
  gone, or its working set down to a quarter) or ``--node-guard-wait`` passes, before choosing again:
  never a burst of evictions on one stale reading. A victim whose eviction is still pending when the
  hard line is crossed is escalated (kill, else delete with grace 0), not replaced.
* **Caps**: every guard action counts against ``--node-guard-max-per-minute`` (this node's, separate
  from the per-pod ``--node-max-evictions-per-minute``).

API writes and Events go through the agent's :class:`~memwatch.agent.ActionWorker`; kills go through
:func:`memwatch.kill.kill_pod` inline (the pod's containers, never its sandbox). ``--node-guard=dry-run``
logs and Events what it would do (once per victim and pressure episode) and writes nothing else.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import queue
import re
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge

from memwatch.enforcer import RateCaps
from memwatch.kill import kill_pod
from memwatch.kube import WriteResult
from memwatch.logformat import ActionFields, log_action
from memwatch.nodesignals import NodeSignalReader, NodeSignals, pod_working_set
from memwatch.observability import COMPONENT
from memwatch.podindex import FINISHED, PodRecord
from memwatch.policy import KEY_NODE_PRESSURE, NODE_PRESSURE_VALUES
from memwatch.policyset import EMPTY, PolicySet
from memwatch.quantity import QuantityError, format_bytes, parse_bytes
from memwatch.watcher import ACTIVE_PODS, PodWatcher, Tee

if TYPE_CHECKING:
    from memwatch.agent import Agent

log = logging.getLogger("memwatch.nodeguard")

REASON_NODE_PRESSURE = "MemwatchNodePressure"
#: A victim's memory counts as freed once its working set is down to this fraction of what it was.
FREED_FRACTION = 0.25
QOS_ORDER = {"BestEffort": 0, "Burstable": 1, "Guaranteed": 2}

#: The rules, in the order they are applied; the one that separated the victim from the runner-up is named.
RULES = ("node-pressure-evict", "lowest-priority", "qos-class", "usage-above-requests", "largest-usage")
ONLY = "only-candidate"


class Mode(enum.StrEnum):
    OFF = "off"
    DRY_RUN = "dry-run"
    ON = "on"


class Level(enum.IntEnum):
    OK = 0
    SOFT = 1
    HARD = 2


# ---------------------------------------------------------------------------------------------
# Lines


_PERCENT = re.compile(r"[0-9]+(?:\.[0-9]+)?%")


@dataclass(frozen=True, slots=True)
class Line:
    """A free-memory line: bytes, or a percentage of the memory it is applied to."""

    text: str
    bytes: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, text: str) -> Line:
        """``500Mi`` or ``10%``. Raises ValueError with a message naming the value."""
        raw = text.strip()
        if raw.endswith("%"):
            if not _PERCENT.fullmatch(raw) or not 0 < float(raw[:-1]) < 100:
                raise ValueError(f"{text!r} is not a percentage above 0% and below 100% (example: 10%)")
            return cls(raw, percent=float(raw[:-1]))
        try:
            value = parse_bytes(raw)
        except QuantityError as exc:
            raise ValueError(f"{text!r} is neither free bytes (example: 500Mi) nor a percentage "
                             f"(example: 10%): {exc}") from None
        return cls(raw, bytes=value)

    def free(self, total: int) -> int:
        """The free bytes this line stands for, for memory of ``total`` bytes."""
        if self.percent is not None:
            return int(total * self.percent / 100)
        assert self.bytes is not None
        return self.bytes

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class GuardConfig:
    """The node guard's settings (``--node-guard*`` flags)."""

    mode: Mode = Mode.DRY_RUN
    soft: Line = field(default_factory=lambda: Line.parse("10%"))
    hard: Line = field(default_factory=lambda: Line.parse("5%"))
    psi_full: float | None = None  # full avg10 percent; None: off
    grace: int = 5  # seconds: cap on the grace period of the guard's evictions
    wait: float = 30.0  # seconds a victim's memory may take to be freed before choosing again
    max_per_minute: int = 5  # 0: no cap

    def __post_init__(self) -> None:
        same_unit = (self.soft.percent is None) == (self.hard.percent is None)
        if same_unit and self.hard.free(100) > self.soft.free(100):
            raise ValueError(f"--node-guard-hard={self.hard} asks for more free memory than "
                             f"--node-guard-soft={self.soft}: the hard line must be the lower one")
        if self.psi_full is not None and not 0 < self.psi_full <= 100:
            raise ValueError(f"--node-guard-psi-full={self.psi_full:g} must be above 0 and at most 100 (percent)")
        if self.wait < self.grace:
            raise ValueError(f"--node-guard-wait={self.wait:g}s is shorter than --node-guard-grace={self.grace}s: "
                             "the guard would choose again before the victim could end")


def assess(sig: NodeSignals, cfg: GuardConfig) -> tuple[Level, str]:
    """Which line the node is past, and why (for the log line), from one reading. Pure."""
    level, why = Level.OK, ""
    scopes = []
    if sig.mem_available is not None and sig.mem_total:
        scopes.append(("node MemAvailable", sig.mem_available, sig.mem_total))
    if sig.kubepods_available is not None and sig.kubepods_limit:
        scopes.append(("kubepods room under its limit", sig.kubepods_available, sig.kubepods_limit))
    for name, avail, total in scopes:
        for lvl, line in ((Level.HARD, cfg.hard), (Level.SOFT, cfg.soft)):
            free = line.free(total)
            if avail < free and lvl > level:
                level = lvl
                why = (f"{name} {format_bytes(max(avail, 0))} is below the {lvl.name.lower()} line "
                       f"{format_bytes(free)} ({line} of {format_bytes(total)})")
    psi = sig.psi_full_avg10
    if cfg.psi_full is not None and psi is not None and psi >= cfg.psi_full and level < Level.SOFT:
        level, why = Level.SOFT, f"memory pressure full avg10={psi:.2f}% is at or above {cfg.psi_full:g}%"
    return level, why


# ---------------------------------------------------------------------------------------------
# The pods of this node, every one of them (not only the annotated ones)


@dataclass(frozen=True, slots=True)
class NodePod:
    """What victim choice needs of one pod on this node."""

    uid: str
    namespace: str
    name: str
    priority: int = 0
    qos: str = "Burstable"
    requests: int = 0  # sum of the running containers' requests.memory
    grace: int = 30  # spec.terminationGracePeriodSeconds
    node_pressure: str | None = None  # evict, never, invalid, or None
    protected: str | None = None
    terminating: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def node_pod(pod: Mapping[str, Any], protect: Callable[[Mapping[str, Any]], str | None],
             policies: PolicySet = EMPTY) -> NodePod | None:
    """A raw pod (API JSON) as a :class:`NodePod`; None for a finished pod. Its ``node-pressure``
    choice is the annotation's, else the policies' (``nodePressure``; :mod:`memwatch.policyset`)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    if status.get("phase") in FINISHED:
        return None
    requests = 0
    containers = [*(c for c in spec.get("initContainers") or () if isinstance(c, Mapping)
                    and c.get("restartPolicy") == "Always"),
                  *(c for c in spec.get("containers") or () if isinstance(c, Mapping))]
    for c in containers:
        text = ((c.get("resources") or {}).get("requests") or {}).get("memory")
        if text is not None:
            with contextlib.suppress(QuantityError):
                requests += parse_bytes(str(text))
    annotations = meta.get("annotations") or {}
    raw = annotations.get(KEY_NODE_PRESSURE)
    if raw is None and policies:
        raw = policies.effective(str(meta.get("namespace", "")), meta.get("labels"),
                                 annotations).annotations.get(KEY_NODE_PRESSURE)
    choice: str | None = None
    if raw is not None:
        choice = str(raw).strip().lower()
        if choice not in NODE_PRESSURE_VALUES:
            choice = "invalid"
    priority = spec.get("priority")
    grace = spec.get("terminationGracePeriodSeconds")
    return NodePod(
        uid=str(meta.get("uid", "")), namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")),
        priority=priority if isinstance(priority, int) else 0,
        qos=str(status.get("qosClass") or "Burstable"),
        requests=requests, grace=grace if isinstance(grace, int) and grace >= 0 else 30,
        node_pressure=choice, protected=protect(pod), terminating=meta.get("deletionTimestamp") is not None)


class NodePods:
    """Every pod of this node (a :class:`~memwatch.watcher.Sink`), fed by the agent's watch."""

    def __init__(self, protect: Callable[[Mapping[str, Any]], str | None]) -> None:
        self.protect = protect
        self.policies: PolicySet = EMPTY  # set by the agent's policy feed (memwatch.policywatch)
        self.pods: dict[str, NodePod] = {}

    def __len__(self) -> int:
        return len(self.pods)

    def upsert(self, obj: Mapping[str, Any]) -> None:
        rec = node_pod(obj, self.protect, self.policies)
        uid = str((obj.get("metadata") or {}).get("uid", ""))
        if rec is None:
            self.pods.pop(uid, None)
        else:
            self.pods[uid] = rec

    def remove(self, obj: Mapping[str, Any]) -> None:
        self.pods.pop(str((obj.get("metadata") or {}).get("uid", "")), None)

    def replace(self, objs: Iterable[Mapping[str, Any]], scope: Callable[[Any], bool]) -> None:
        policies = self.policies
        fresh = {r.uid: r for o in objs if (r := node_pod(o, self.protect, policies)) is not None}
        for uid in [u for u, r in self.pods.items() if scope(r) and u not in fresh]:
            del self.pods[uid]
        self.pods.update(fresh)

    def snapshot(self) -> list[NodePod]:
        return list(self.pods.values())  # dict copy under the GIL: safe against the watch thread


# ---------------------------------------------------------------------------------------------
# Victim choice: pure


@dataclass(frozen=True, slots=True)
class Candidate:
    pod: NodePod
    usage: int  # working set of its pod cgroup

    @property
    def above_requests(self) -> int:
        return self.usage - self.pod.requests


@dataclass(frozen=True, slots=True)
class Choice:
    victim: Candidate
    rule: str
    eligible: int  # how many pods could have been chosen


def eligible(c: Candidate, exclude: Iterable[str] = ()) -> str | None:
    """Why a pod may not be chosen, or None when it may."""
    p = c.pod
    if p.protected:
        return f"protected: {p.protected}"
    if p.node_pressure == "never":
        return f"{KEY_NODE_PRESSURE}: never"
    if p.node_pressure == "invalid":
        return f"{KEY_NODE_PRESSURE} is neither evict nor never (treated as never)"
    if p.terminating:
        return "already terminating"
    if p.uid in exclude:
        return "refused or failed earlier in this pressure episode"
    return None


def rank(c: Candidate) -> tuple[int, int, int, int, int]:
    """The sort key: the first candidate after sorting is the victim."""
    return (0 if c.pod.node_pressure == "evict" else 1, c.pod.priority, QOS_ORDER.get(c.pod.qos, 1),
            -c.above_requests, -c.usage)


def choose_victim(candidates: Sequence[Candidate], exclude: Iterable[str] = ()) -> Choice | None:
    """The one pod to act on, and the rule that picked it; None when no pod may be chosen."""
    skip = set(exclude)
    ok = sorted((c for c in candidates if eligible(c, skip) is None), key=lambda c: (rank(c), c.pod.uid))
    if not ok:
        return None
    if len(ok) == 1:
        return Choice(ok[0], ONLY, 1)
    first, second = rank(ok[0]), rank(ok[1])
    rule = next((name for name, a, b in zip(RULES, first, second, strict=True) if a != b), RULES[-1])
    return Choice(ok[0], rule, len(ok))


# ---------------------------------------------------------------------------------------------
# The guard: decision state, one victim at a time


@dataclass(frozen=True, slots=True)
class GuardTiming:
    """One guard action's timestamps (epoch), for the benchmark: ``over_at`` is the first sample past a
    line in this episode (the crossing itself lies within one sample period before it)."""

    action: str
    uid: str
    rule: str
    over_at: float
    acted_at: float


@dataclass(slots=True)
class Pending:
    """The victim being acted on or waited for."""

    pod: NodePod
    rule: str
    rung: str  # evict, kill, delete, or would-evict / would-kill / would-delete (dry-run)
    level: Level
    why: str
    signals: NodeSignals
    usage: int
    started: float  # mono: action submitted (in flight) or done (waiting)
    path: Path | None
    in_flight: bool = False


def guard_fields(action: str, node: str, p: Pending, detail: str) -> ActionFields:
    """The node guard's action line: the node's numbers, the rule, the victim. Its ``level`` (soft or
    hard) is ``guard_level`` in JSON, where ``level`` is the record's log level."""
    s = p.signals
    return (ActionFields().add("action", action).add("reason", "node-pressure").add("node", node)
            .add("available", format_bytes(s.available)).add("kubepods_usage", format_bytes(s.kubepods_usage))
            .add("psi_full_avg10", _pct(s.psi_full_avg10)).add("rule", p.rule).add("pod", p.pod.key)
            .add("level", p.level.name.lower(), json_name="guard_level")
            .add("mem_available", format_bytes(s.mem_available)).add("kubepods_limit", format_bytes(s.kubepods_limit))
            .add("pod_usage", format_bytes(p.usage)).add("priority", p.pod.priority).add("qos", p.pod.qos)
            .add("uid", p.pod.uid).add("why", p.why, quoted=True).add("detail", detail, quoted=True))


def node_event(node: str, reason: str, message: str, warning: bool, host: str = "") -> dict[str, Any]:
    """A core/v1 Event on the Node (cluster-scoped: the Event lives in ``default``, as the kubelet's do)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{node}.memwatch.{uuid.uuid4().hex[:12]}", "namespace": "default"},
        "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node},
        "reason": reason, "message": message[:1024], "type": "Warning" if warning else "Normal",
        "source": {"component": COMPONENT, **({"host": host} if host else {})},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        "reportingComponent": COMPONENT, "reportingInstance": host or COMPONENT,
    }


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


class NodeGuard:
    """The node guard of one agent: :meth:`tick` once per agent sample, from the sampling thread only."""

    def __init__(self, agent: Agent, cfg: GuardConfig, reader: NodeSignalReader | None = None) -> None:
        self.agent = agent
        self.cfg = cfg
        self.node = agent.node
        self.clock = agent.clock
        self.reader = reader or NodeSignalReader(agent.source.hierarchy, clock=agent.clock.wall)
        self.pods = NodePods(agent.settings.protections.reason)
        self.pending: Pending | None = None
        self.results: queue.SimpleQueue[tuple[str, str, WriteResult, float]] = queue.SimpleQueue()
        self.excluded: set[str] = set()  # refused or failed in this pressure episode
        self.reported: set[tuple[str, str]] = set()  # dry-run: (uid, rung) said in this pressure episode
        self.level = Level.OK
        self.last: NodeSignals | None = None
        self.fds: list[tuple[int, int]] = []
        self.over_at: float | None = None  # first sample past a line in this episode
        self.timings: deque[GuardTiming] = deque(maxlen=1000)
        self._paths: dict[str, Path] = {}
        self._said: set[str] = set()
        self.caps = RateCaps(cfg.max_per_minute, 0, self.clock.mono)
        self.caps.scope = f"node {self.node}'s node-guard"
        r = agent.metrics.registry
        self.g_available = Gauge("memwatch_node_memory_available_bytes", "The node's MemAvailable.", registry=r)
        self.g_total = Gauge("memwatch_node_memory_total_bytes", "The node's MemTotal.", registry=r)
        self.g_kp_usage = Gauge("memwatch_node_kubepods_working_set_bytes",
                                "Working set of the kubepods cgroup (every pod of the node).", registry=r)
        self.g_kp_limit = Gauge("memwatch_node_kubepods_limit_bytes",
                                "Hard limit of the kubepods cgroup (0: none; node allocatable not enforced).",
                                registry=r)
        self.g_psi = Gauge("memwatch_node_memory_pressure_avg10", "Memory PSI avg10 percent (/proc/pressure/memory).",
                           ["kind"], registry=r)
        self.g_psi_total = Gauge("memwatch_node_memory_pressure_stall_seconds",
                                 "Memory PSI total stall time since boot (a counter's value).", ["kind"], registry=r)
        self.g_level = Gauge("memwatch_node_guard_level", "Node guard: 0 ok, 1 past the soft line, 2 past the hard.",
                             registry=r)
        self.c_actions = Counter("memwatch_node_guard_actions_total", "Node guard actions, by action and rule.",
                                 ["action", "rule"], registry=r)

    # -- wiring ------------------------------------------------------------------------------------
    @classmethod
    def attach(cls, agent: Agent) -> NodeGuard | None:
        """The guard for ``agent`` (None with ``--node-guard=off``), fed by the agent's pod watch: the
        same watch when it sees every pod of the node, else one more (field selector: this node)."""
        cfg: GuardConfig = agent.settings.node_guard
        if cfg.mode is Mode.OFF:
            return None
        guard = cls(agent, cfg)
        s = agent.settings
        pod_watchers = [w for w in agent.watchers if w.resource == "pods"]
        if pod_watchers and not s.label_selector:
            for w in pod_watchers:
                w.index = Tee(w.index, guard.pods)
        elif agent.watchers and agent.kube is not None:
            field_selector = f"spec.nodeName={agent.node},{ACTIVE_PODS}"
            scopes: list[str | None] = list(s.namespaces) or [None]
            agent.watchers += [PodWatcher(agent.kube, guard.pods, ns, "", field_selector) for ns in scopes]
        log.info("node guard %s: soft line %s, hard line %s free (of the node's memory and of kubepods' limit), "
                 "psi full avg10 %s, grace <= %ds, wait %.0fs, cap %d/min", cfg.mode, cfg.soft, cfg.hard,
                 "off" if cfg.psi_full is None else f">= {cfg.psi_full:g}%", cfg.grace, cfg.wait, cfg.max_per_minute)
        return guard

    def _once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(message, *args)

    # -- the sample -----------------------------------------------------------------------------------
    def tick(self) -> Level:
        """Read the signals, follow the pending victim or choose one. Never raises for one bad reading."""
        self._drain()
        sig = self.reader.read()
        self.last = sig
        self._export(sig)
        level, why = assess(sig, self.cfg)
        self.level = level
        self.g_level.set(int(level))
        if level is Level.OK:
            self.over_at = None
        elif self.over_at is None:
            self.over_at = sig.timestamp
        self._arm(sig)
        if self.pending is not None:
            self._follow(sig, level, why)
            if self.pending is not None:
                return level
        if level is Level.OK:
            self.excluded.clear()
            self.reported.clear()
            return level
        choice = choose_victim(self._candidates(), self.excluded)
        if choice is None:
            self._once(f"none:{len(self.pods)}", "node guard: node=%s is short (%s) but no pod may be chosen "
                       "(%d pods known; protected, memwatch.io/node-pressure: never, or refused)",
                       self.node, why, len(self.pods))
            return level
        self._act(choice, level, why, sig)
        return level

    def _export(self, sig: NodeSignals) -> None:
        if sig.mem_available is not None:
            self.g_available.set(sig.mem_available)
        if sig.mem_total is not None:
            self.g_total.set(sig.mem_total)
        if sig.kubepods_usage is not None:
            self.g_kp_usage.set(sig.kubepods_usage)
        self.g_kp_limit.set(sig.kubepods_limit or 0)
        if sig.psi is not None:
            self.g_psi.labels("some").set(sig.psi.some_avg10)
            self.g_psi.labels("full").set(sig.psi.full_avg10)
            self.g_psi_total.labels("some").set(sig.psi.some_total / 1e6)
            self.g_psi_total.labels("full").set(sig.psi.full_total / 1e6)

    def _arm(self, sig: NodeSignals) -> None:
        usage = None
        if sig.kubepods_limit is not None:
            limit = sig.kubepods_limit
            usage = tuple(sorted({max(0, limit - line.free(limit)) for line in (self.cfg.soft, self.cfg.hard)}))
        fds = self.reader.arm(usage)
        if fds != self.fds:
            self.fds = fds
            self.agent._events_dirty = True  # the agent rebuilds its poll set with these

    def _path(self, pod: NodePod) -> Path | None:
        path = self._paths.get(pod.uid)
        if path is None or not path.is_dir():
            path = self.agent.source.find_pod(pod.uid, pod.qos)
            if path is None:
                self._paths.pop(pod.uid, None)
                return None
            self._paths[pod.uid] = path
        return path

    def _candidates(self) -> list[Candidate]:
        out = []
        pods = self.pods.snapshot()
        known = {p.uid for p in pods}
        for uid in [u for u in self._paths if u not in known]:
            del self._paths[uid]
        for pod in pods:
            path = self._path(pod)
            usage = None if path is None else pod_working_set(path, self.agent.source.hierarchy)
            if usage is not None:
                out.append(Candidate(pod, usage))
        return out

    # -- acting ---------------------------------------------------------------------------------------
    def _hard_rung(self) -> str:
        return "kill" if self.agent.settings.kill and self.agent.capability.can_kill else "delete"

    def _act(self, choice: Choice, level: Level, why: str, sig: NodeSignals, rung: str | None = None,
             escalation: bool = False) -> None:
        """Act on the chosen victim. The per-node cap counts victims: ``escalation`` (the pending
        victim, taken to the hard rung) was counted when it was chosen, and is not counted again."""
        pod = choice.victim.pod
        rung = rung or (self._hard_rung() if level is Level.HARD else "evict")
        path = self._paths.get(pod.uid)
        now = self.clock.mono()
        if rung != "kill" and not self.agent.settings.evict:
            self._once("no-evict", "node guard: node=%s is short (%s), but --evict=false: no API action; the guard "
                       "acts only at the hard line, and only with the kill rung (--kill)", self.node, why)
            return
        if self.cfg.mode is Mode.DRY_RUN:
            self.pending = Pending(pod, choice.rule, "would-" + rung, level, why, sig, choice.victim.usage, now, path)
            if (pod.uid, rung) not in self.reported:
                self.reported.add((pod.uid, rung))
                self._report("would-" + rung, self.pending, "dry-run (--node-guard=dry-run): nothing was written")
            return
        capped = None if escalation else self.caps.check(pod.namespace)
        if capped:
            if f"capped:{pod.uid}" not in self._said:  # said once per pod, as _once does
                self._said.add(f"capped:{pod.uid}")
                log_action(log, guard_fields("rate-limited", self.node, Pending(
                    pod, choice.rule, rung, level, why, sig, choice.victim.usage, now, path), capped), warning=True)
            return
        if not escalation:
            self.caps.take(pod.namespace)
        pending = self.pending = Pending(pod, choice.rule, rung, level, why, sig, choice.victim.usage, now, path)
        if rung == "kill":
            self._kill(pending)
            return
        self._submit(pending)

    def _kill(self, p: Pending) -> None:
        if p.path is None:
            self._fail(p, "no pod cgroup to kill")
            return
        result = kill_pod(p.path, self.agent.source.hierarchy)  # its containers, never its sandbox
        if result.vanished:
            self.pending = None
            return
        if not result.ok:
            log.warning("node guard: kill of pod=%s failed (%s); deleting with grace 0 instead", p.pod.key,
                        result.describe())
            p.rung = "delete"
            self._submit(p)
            return
        p.started = self.clock.mono()
        self._timing("killed", p, self.clock.wall())
        self._report("killed", p, result.describe())

    def _submit(self, p: Pending) -> None:
        pod, rung = p.pod, p.rung
        grace = 0 if rung in ("delete", "evict-now") else min(pod.grace, self.cfg.grace)
        enforcer = self.agent.enforcer

        def job() -> None:
            verb = "delete" if rung == "delete" else "evict"
            res = enforcer.node_pressure(pod.namespace, pod.name, pod.uid, verb, grace)
            self.results.put((pod.uid, rung, res, self.clock.wall()))

        p.in_flight = self.agent.worker.submit(job, "node-guard:" + pod.uid)
        p.started = self.clock.mono()

    def _drain(self) -> None:
        while True:
            try:
                uid, rung, res, acted = self.results.get_nowait()
            except queue.Empty:
                return
            p = self.pending
            if p is None or p.pod.uid != uid:
                continue
            p.in_flight = False
            p.started = self.clock.mono()
            if res.ok:
                self._timing({"delete": "deleted"}.get(rung, "evicted"), p, acted)
                self._report({"delete": "deleted"}.get(rung, "evicted"), p,
                             "grace 0" if rung in ("delete", "evict-now") else
                             f"grace {min(p.pod.grace, self.cfg.grace)}s (capped by --node-guard-grace)")
            elif res.gone:
                log.info("node guard: pod=%s is already gone", p.pod.key)
                self.pending = None
            elif rung == "delete" and res.status == 403:
                self._once("delete-403", "node guard: no RBAC to delete pods (%s); evicting with grace 0 instead "
                           "(a PodDisruptionBudget can refuse that)", res.message[:200])
                p.rung = "evict-now"
                self._submit(p)
            elif res.blocked:
                self._report("blocked", p, f"a PodDisruptionBudget refused the eviction ({res.message[:200]}); "
                             "choosing another pod", warning=True)
                self.excluded.add(uid)
                self.pending = None
            else:
                self._fail(p, f"{rung} failed: HTTP {res.status} {res.message[:200]}")

    def _timing(self, action: str, p: Pending, acted: float) -> None:
        over = self.over_at if self.over_at is not None else p.signals.timestamp
        self.timings.append(GuardTiming(action, p.pod.uid, p.rule, over, acted))

    def _fail(self, p: Pending, detail: str) -> None:
        self._report("failed", p, detail, warning=True)
        self.excluded.add(p.pod.uid)
        self.pending = None

    def _follow(self, sig: NodeSignals, level: Level, why: str) -> None:
        """The pending victim: freed, timed out, or (past the hard line) escalated."""
        p = self.pending
        assert p is not None
        if p.in_flight:
            return
        now = self.clock.mono()
        dry = p.rung.startswith("would-")
        if not dry:
            usage = None if p.path is None else pod_working_set(p.path, self.agent.source.hierarchy)
            if usage is None or usage <= p.usage * FREED_FRACTION:
                log.info("node guard: node=%s pod=%s memory freed %.1fs after action=%s (was %s, now %s); "
                         "available=%s", self.node, p.pod.key, now - p.started, p.rung, format_bytes(p.usage),
                         format_bytes(usage or 0), format_bytes(sig.available))
                self.pending = None
                return
        elif level is Level.OK:
            self.pending = None
            return
        if level is Level.HARD and p.rung in ("evict", "would-evict"):
            self._act(Choice(Candidate(p.pod, p.usage), p.rule, 1), level, why, sig,
                      rung=self._hard_rung(), escalation=True)
            return
        if now - p.started >= self.cfg.wait:
            if not dry:
                log.warning("node guard: node=%s pod=%s memory not freed %.0fs after action=%s (--node-guard-wait); "
                            "choosing again", self.node, p.pod.key, now - p.started, p.rung)
                self.excluded.add(p.pod.uid)
            self.pending = None

    # -- output ---------------------------------------------------------------------------------------
    def _report(self, action: str, p: Pending, detail: str, warning: bool = True) -> None:
        """One log line now; the pod's and the Node's Events from the worker thread."""
        log_action(log, guard_fields(action, self.node, p, detail), warning)
        self.c_actions.labels(action, p.rule).inc()
        self.agent.metrics.actions.labels(action, "node-guard").inc()
        head = {"evicted": "Evicted", "deleted": "Deleted (grace 0)", "killed": "Killed in place",
                "blocked": "Eviction refused", "failed": "Action failed"}.get(action, f"Dry run: {action}")
        numbers = (f"available {format_bytes(p.signals.available)}, kubepods {format_bytes(p.signals.kubepods_usage)}"
                   f" of {format_bytes(p.signals.kubepods_limit)}, psi full avg10 {_pct(p.signals.psi_full_avg10)}")
        pod_msg = (f"{head} by memwatch's node guard to relieve memory pressure on node {self.node} "
                   f"(rule {p.rule}; pod used {format_bytes(p.usage)}): {p.why}; {numbers}. {detail}")
        node_msg = (f"memwatch node guard: {action} pod {p.pod.key} (rule {p.rule}, used {format_bytes(p.usage)}): "
                    f"{p.why}; {numbers}. {detail}")
        recorder = self.agent.recorder
        kube = self.agent.kube
        rec = PodRecord(p.pod.uid, p.pod.namespace, p.pod.name, self.node, "Running", p.pod.terminating, (), (),
                        p.pod.protected, None, (), (), p.pod.qos)

        def post() -> None:
            recorder.event(rec, REASON_NODE_PRESSURE, pod_msg[:1024], warning)
            if kube is not None:
                res = kube.create_event("default", node_event(self.node, REASON_NODE_PRESSURE, node_msg, warning,
                                                              recorder.host))
                if not res.ok:
                    self._once("node-event", "node guard: Event on Node %s not posted: %s", self.node, res.message)

        self.agent.worker.submit(post)

    def status(self) -> dict[str, Any]:
        """For the agent's health endpoint and tests."""
        p = self.pending
        return {"mode": str(self.cfg.mode), "level": self.level.name.lower(),
                "pending": None if p is None else {"pod": p.pod.key, "rung": p.rung, "rule": p.rule}}
