"""The in-memory index of watched pods, fed by the watch and read by the sweep.

Only pods that carry a ``memwatch.io/`` annotation get a record, and a record keeps only what the
policy, the protections and the enforcer need: no annotations, labels or spec beyond that. Memory
therefore grows with the number of *watched* pods, by a small bounded amount each, not with the
size of the cluster or of its objects.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from memwatch.budget import workload_of
from memwatch.policy import ContainerSpec, Defaults, InvalidPolicy, Policy, Problem, is_watched, resolve
from memwatch.policyset import EMPTY, PolicySet
from memwatch.quantity import QuantityError, parse_bytes, parse_time

#: Pod phases with nothing left to watch.
FINISHED = frozenset({"Succeeded", "Failed"})
#: kubelet marks mirror pods (the API shadow of a static pod) with this annotation.
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


@dataclass(frozen=True, slots=True)
class PodRecord:
    """One watched pod: immutable facts from the watch, replaced whole on every update.

    What memwatch decided and did about the pod lives elsewhere, keyed by UID and owned by one
    thread (:mod:`memwatch.lifecycle`), so the watch thread replacing a record never races it.
    """

    uid: str
    namespace: str
    name: str
    node: str | None
    phase: str
    terminating: bool
    containers: tuple[ContainerSpec, ...]
    container_ids: tuple[tuple[str, str], ...]  # (name, CRI id such as "containerd://abc…")
    protected: str | None  # why memwatch must never touch this pod, or None
    policy: Policy | None
    problems: tuple[Problem, ...]
    warnings: tuple[str, ...]
    qos_class: str | None = None
    started_at: float | None = None  # status.startTime, epoch seconds (None: not started, or unknown)
    containers_started: tuple[tuple[str, float], ...] = ()  # (name, running.startedAt) of running containers
    has_init: bool = False  # init containers that run before the others (not native sidecars)
    workload: str | None = None  # the controlling owner, ``Kind/name`` (:func:`memwatch.budget.workload_of`)
    policies: tuple[str, ...] = ()  # the MemwatchPolicy/ClusterMemwatchPolicy refs that select the pod
    conflicts: tuple[str, ...] = ()  # policies at one level disagreeing on a field (who won)
    #: A valid policy, nothing to report (no warnings, no conflicts), not being deleted, on a node and
    #: not finished: the sweep asks nothing more of the record before reading the pod's usage. Worked
    #: out once per record, not six questions per pod every sweep.
    plain: bool = field(init=False, repr=False, compare=False)
    #: The latest of the pod's start and its running containers' starts (None: the pod's start is
    #: unknown). A sample measured from after it cannot be a predecessor's: one comparison per new
    #: sample instead of :func:`memwatch.sources._predates`' loop.
    settled_at: float | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "plain", self.policy is not None and not self.warnings and not self.conflicts
                           and not self.terminating and bool(self.node) and self.phase not in FINISHED)
        started = self.started_at
        object.__setattr__(self, "settled_at", None if started is None else
                           max(started, max((at for _, at in self.containers_started), default=started)))

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def _running_containers(spec: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    """The containers that run alongside each other: regular ones and native sidecars (init
    containers with ``restartPolicy: Always``, which run for the pod's whole life and whose memory
    the pod's usage includes)."""
    for c in spec.get("initContainers") or ():
        if isinstance(c, Mapping) and c.get("restartPolicy") == "Always":
            yield c
    for c in spec.get("containers") or ():
        if isinstance(c, Mapping):
            yield c


def _memory(resources: Any, which: str) -> int | None:
    """``resources.<which>.memory`` in bytes; None when unset (or, leniently, unparsable: the API
    server validated it, and memwatch would rather not watch than crash)."""
    text = (((resources or {}).get(which) or {}) if isinstance(resources, Mapping) else {}).get("memory")
    if text is None:
        return None
    try:
        return parse_bytes(str(text))
    except QuantityError:
        return None


def _container_specs(spec: Mapping[str, Any]) -> tuple[ContainerSpec, ...]:
    return tuple(ContainerSpec(str(c.get("name", "")), _memory(c.get("resources"), "limits"),
                               _memory(c.get("resources"), "requests"))
                 for c in _running_containers(spec))


def template_policy(meta: Mapping[str, Any], spec: Mapping[str, Any],
                    defaults: Defaults | None = None) -> Policy:
    """Resolve the policy of a pod or pod template (used by the index and by `memwatch lint`)."""
    return resolve(meta.get("annotations") or {}, _container_specs(spec), defaults or Defaults())


def build_record(pod: Mapping[str, Any], defaults: Defaults,
                 protect: Callable[[Mapping[str, Any]], str | None],
                 policies: PolicySet = EMPTY) -> PodRecord | None:
    """Turn a raw pod (JSON dict from the API) into a record, or None if it is not watched.

    A pod is watched when it carries ``memwatch.io/`` annotations, or when a policy gives it a
    limit (:mod:`memwatch.policyset`). A pod that only a policy selects, and that the policy cannot
    apply to (a percentage limit on a pod without memory limits), is not watched: no Event on it
    (a cluster-wide policy would otherwise flag every such pod); ``memwatch explain`` says why."""
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    if not policies and not is_watched(annotations):
        return None  # the common case, kept cheap: no policies, no annotations
    effective = policies.effective(str(meta.get("namespace", "")), meta.get("labels"), annotations)
    if not effective.watched:
        return None
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    containers = _container_specs(spec)
    policy: Policy | None = None
    problems: tuple[Problem, ...] = ()
    try:
        policy = resolve(effective.annotations, containers, defaults)
        warnings = policy.warnings
    except InvalidPolicy as exc:
        if effective.by_policy_only:
            return None
        problems, warnings = exc.problems, exc.warnings
    names = {c.name for c in containers}
    statuses = [*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())]
    ids = tuple((str(cs.get("name", "")), str(cs["containerID"]))
                for cs in statuses if isinstance(cs, Mapping) and cs.get("containerID") and cs.get("name") in names)
    return PodRecord(
        uid=str(meta.get("uid", "")),
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        node=spec.get("nodeName"),
        phase=str(status.get("phase", "Unknown")),
        terminating=meta.get("deletionTimestamp") is not None,
        containers=containers,
        container_ids=ids,
        protected=protect(pod),
        policy=policy,
        problems=problems,
        warnings=tuple(warnings),
        qos_class=status.get("qosClass"),
        started_at=parse_time(status.get("startTime")),
        containers_started=_containers_started(status),
        has_init=any(isinstance(c, Mapping) and c.get("restartPolicy") != "Always"
                     for c in spec.get("initContainers") or ()),
        workload=workload_of(pod),
        policies=effective.policies,
        conflicts=tuple(str(c) for c in effective.conflicts),
    )


def _containers_started(status: Mapping[str, Any]) -> tuple[tuple[str, float], ...]:
    """When each running container (native sidecars included) last (re)started."""
    out = []
    statuses = [cs for key in ("containerStatuses", "initContainerStatuses") for cs in status.get(key) or ()]
    for cs in statuses:
        started = parse_time(((cs.get("state") or {}).get("running") or {}).get("startedAt"))
        if cs.get("name") and started is not None:
            out.append((str(cs["name"]), started))
    return tuple(out)


class PodIndex:
    """Thread-safe map of watched pods by UID.

    The watch thread calls :meth:`upsert`, :meth:`remove` and :meth:`replace`; the sweep calls
    :meth:`snapshot` and :meth:`get`. Records are immutable: an update replaces one whole.
    """

    def __init__(self, defaults: Defaults, protect: Callable[[Mapping[str, Any]], str | None]) -> None:
        self._defaults = defaults
        self._protect = protect
        #: The policies every record is resolved with; swapped whole (then the watchers re-list).
        self.policies: PolicySet = EMPTY
        self._pods: dict[str, PodRecord] = {}
        self._lock = threading.Lock()
        #: Counts every change to the map: equal between two reads, nothing was added, replaced or removed.
        self.generation = 0
        self.synced = threading.Event()  # set once every watch has listed at least once

    def __len__(self) -> int:
        return len(self._pods)

    def upsert(self, pod: Mapping[str, Any]) -> None:
        """Apply an ADDED/MODIFIED pod from the watch."""
        uid = str((pod.get("metadata") or {}).get("uid", ""))
        record = build_record(pod, self._defaults, self._protect, self.policies)
        with self._lock:
            if record is None:
                self._pods.pop(uid, None)  # annotations removed: stop watching
            else:
                self._pods[uid] = record
            self.generation += 1

    def remove(self, pod: Mapping[str, Any]) -> None:
        """Apply a DELETED pod from the watch."""
        uid = str((pod.get("metadata") or {}).get("uid", ""))
        with self._lock:
            self._pods.pop(uid, None)
            self.generation += 1

    def replace(self, pods: Iterable[Mapping[str, Any]], scope: Callable[[PodRecord], bool]) -> None:
        """Apply a full LIST: ``pods`` is the truth for every record matching ``scope``."""
        fresh: dict[str, PodRecord] = {}
        for pod in pods:
            record = build_record(pod, self._defaults, self._protect, self.policies)
            if record is not None:
                fresh[record.uid] = record
        with self._lock:
            for uid in [u for u, r in self._pods.items() if scope(r) and u not in fresh]:
                del self._pods[uid]
            for uid, record in fresh.items():
                self._pods[uid] = record
            self.generation += 1

    def snapshot(self) -> list[PodRecord]:
        """The records as they are now."""
        with self._lock:
            return list(self._pods.values())

    def get(self, uid: str) -> PodRecord | None:
        with self._lock:
            return self._pods.get(uid)
