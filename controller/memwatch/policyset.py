"""MemwatchPolicy and ClusterMemwatchPolicy: which policies apply to a pod, and which one wins.

A policy's spec mirrors the pod annotations one to one (``limit`` is ``memwatch.io/limit``,
``gracePeriod`` is ``memwatch.io/grace-period``, ``containers: {app: 1Gi}`` is
``memwatch.io/limit.app``, ...). So resolving a pod is two pure steps:

1. :meth:`PolicySet.effective` merges, **field by field**, the pod's own ``memwatch.io/*``
   annotations (they win), then the matching ``MemwatchPolicy`` objects of its namespace, then the
   matching ``ClusterMemwatchPolicy`` objects. Between policies at one level the higher
   ``priority`` wins, then name order. Each field remembers where it came from (for ``memwatch
   explain`` and the policies' ``status.matchedPods``), and two policies at one level that set one
   field differently are a :class:`Conflict` (reported once per pod, naming the winner).
2. :func:`memwatch.policy.resolve` turns the merged annotations into a :class:`~memwatch.policy.Policy`,
   exactly as for an annotated pod.

Policies never watch a pod on their own unless they give it a limit: a policy that sets only
``action`` changes the annotated pods it selects and leaves the others alone. An invalid policy
(its ``status`` says why) is never applied. Nothing here does I/O; the controller, the node agent,
``memwatch explain`` and ``memwatch lint`` all call it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from memwatch.policy import (
    _PERCENT,
    KEY_ACTION,
    KEY_CONTAINER_LIMIT,
    KEY_ESCALATE,
    KEY_FOR,
    KEY_GRACE_PERIOD,
    KEY_LIMIT,
    KEY_LIMIT_OF,
    KEY_MIN_POD_AGE,
    KEY_NODE_PRESSURE,
    KEY_PREDICT,
    KEY_RESTART_BUDGET,
    LIMIT_OF_VALUES,
    MAX_FOR_SECONDS,
    MAX_GRACE_SECONDS,
    MAX_WINDOW_SECONDS,
    MIN_LIMIT,
    NODE_PRESSURE_VALUES,
    PREFIX,
    Action,
    is_watched,
    parse_budget,
)
from memwatch.quantity import QuantityError, parse_bytes, parse_duration, shown

GROUP = "memwatch.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
NAMESPACED = "MemwatchPolicy"
CLUSTER = "ClusterMemwatchPolicy"
PLURALS = {NAMESPACED: "memwatchpolicies", CLUSTER: "clustermemwatchpolicies"}

#: spec field → the annotation it stands for (``containers`` maps to ``memwatch.io/limit.<name>``).
FIELDS: dict[str, str] = {
    "limit": KEY_LIMIT,
    "limitOf": KEY_LIMIT_OF,
    "action": KEY_ACTION,
    "for": KEY_FOR,
    "gracePeriod": KEY_GRACE_PERIOD,
    "escalate": KEY_ESCALATE,
    "predict": KEY_PREDICT,
    "nodePressure": KEY_NODE_PRESSURE,
    "restartBudget": KEY_RESTART_BUDGET,
    "minPodAge": KEY_MIN_POD_AGE,
}
SELECTOR_FIELDS = ("podSelector", "namespaceSelector", "priority", "containers")
PRIORITY_RANGE = (-1000, 1000)
#: Where a field came from when no annotation and no policy set it.
DEFAULT = "default"
ANNOTATION = "annotation"

_LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_CONTAINER_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class SelectorError(ValueError):
    """A malformed metav1.LabelSelector."""


@dataclass(frozen=True, slots=True)
class Selector:
    """A metav1.LabelSelector: ``matchLabels`` and ``matchExpressions``, ANDed. Empty selects all."""

    labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[tuple[str, str, frozenset[str]], ...] = ()

    @classmethod
    def from_object(cls, obj: Any, where: str) -> Selector:
        if obj is None:
            return cls()
        if not isinstance(obj, Mapping):
            raise SelectorError(f"{where} must be a label selector (matchLabels, matchExpressions)")
        unknown = sorted(set(obj) - {"matchLabels", "matchExpressions"})
        if unknown:
            raise SelectorError(f"{where}: unknown field(s) {', '.join(unknown)}")
        labels = obj.get("matchLabels") or {}
        if not isinstance(labels, Mapping):
            raise SelectorError(f"{where}.matchLabels must be a map of label keys to values")
        pairs = []
        for key, value in labels.items():
            if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
                raise SelectorError(f"{where}.matchLabels: {shown(str(key))} is not a label key")
            pairs.append((key, str(value)))
        exprs = []
        for i, expr in enumerate(obj.get("matchExpressions") or ()):
            at = f"{where}.matchExpressions[{i}]"
            if not isinstance(expr, Mapping):
                raise SelectorError(f"{at} must be an object with key, operator and values")
            key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
            if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
                raise SelectorError(f"{at}.key: {shown(str(key))} is not a label key")
            if op not in _OPERATORS:
                raise SelectorError(f"{at}.operator must be one of {', '.join(_OPERATORS)}, not {shown(str(op))}")
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise SelectorError(f"{at}.values must be a list of strings")
            if op in ("In", "NotIn") and not values:
                raise SelectorError(f"{at}: {op} needs at least one value")
            if op in ("Exists", "DoesNotExist") and values:
                raise SelectorError(f"{at}: {op} takes no values")
            exprs.append((key, str(op), frozenset(values)))
        return cls(tuple(sorted(pairs)), tuple(exprs))

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.labels:
            if labels.get(key) != value:
                return False
        for key, op, values in self.expressions:
            present = key in labels
            if op == "In" and not (present and labels[key] in values):
                return False
            if op == "NotIn" and present and labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
        return True

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.labels]
        for key, op, values in self.expressions:
            vals = ",".join(sorted(values))
            parts.append({"In": f"{key} in ({vals})", "NotIn": f"{key} notin ({vals})",
                          "Exists": key, "DoesNotExist": f"!{key}"}[op])
        return ",".join(parts) or "(all)"


@dataclass(frozen=True, slots=True)
class PolicyObject:
    """One MemwatchPolicy or ClusterMemwatchPolicy, parsed: never raises, ``problems`` says what is wrong."""

    kind: str
    name: str
    namespace: str | None = None
    uid: str = ""
    generation: int = 0
    priority: int = 0
    pod_selector: Selector = Selector()
    namespace_selector: Selector = Selector()
    settings: tuple[tuple[str, str], ...] = ()  # (annotation key, value), sorted
    problems: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        """``MemwatchPolicy team-a/batch`` or ``ClusterMemwatchPolicy default``: how it is named everywhere."""
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def gives_limit(self) -> bool:
        return any(k == KEY_LIMIT or k.startswith(KEY_CONTAINER_LIMIT) for k, _ in self.settings)

    def get(self, key: str) -> str | None:
        return next((v for k, v in self.settings if k == key), None)

    def sort_key(self) -> tuple[int, str]:
        return (-self.priority, self.name)


def _text(value: Any) -> str:
    """A spec value in annotation form: booleans as true/false, numbers as digits."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _check_limit(value: str) -> str | None:
    if value.endswith("%"):
        if not _PERCENT.fullmatch(value):
            return "not a percentage (example: 90%)"
        percent = float(value[:-1])
        return None if 0 < percent <= 100 else "a percentage must be above 0% and at most 100%"
    try:
        size = parse_bytes(value)
    except QuantityError as exc:
        return str(exc)
    if size < MIN_LIMIT:
        return "below the smallest watch limit of 1Mi; is the unit right? (example: 512Mi)"
    return None


def _check(spec_field: str, value: Any) -> str | None:
    """What is wrong with one spec field's value (the same rules as the annotation), or None."""
    text = _text(value)
    try:
        if spec_field == "limit":
            return _check_limit(text)
        if spec_field == "limitOf":
            return None if text in LIMIT_OF_VALUES else f"must be one of {', '.join(LIMIT_OF_VALUES)}"
        if spec_field == "action":
            choices = ", ".join(a.value for a in Action)
            return None if text in {a.value for a in Action} else f"unknown action; choose one of {choices}"
        if spec_field == "for":
            return None if parse_duration(text) <= MAX_FOR_SECONDS else "longer than 24h; is the unit right?"
        if spec_field == "gracePeriod":
            if isinstance(value, bool) or not isinstance(value, int):
                return "must be whole seconds (an integer)"
            return None if 0 <= value <= MAX_GRACE_SECONDS else f"must be 0 to {MAX_GRACE_SECONDS} seconds"
        if spec_field in ("escalate", "predict"):
            return None if isinstance(value, bool) else "must be true or false"
        if spec_field == "nodePressure":
            return None if text in NODE_PRESSURE_VALUES else f"must be one of {', '.join(NODE_PRESSURE_VALUES)}"
        if spec_field == "restartBudget":
            parse_budget(text)
            return None
        if spec_field == "minPodAge":
            age = parse_duration(text)
            return None if age <= MAX_WINDOW_SECONDS else "longer than 7 days; is the unit right?"
    except QuantityError as exc:
        return str(exc)
    return None


def parse_policy(obj: Mapping[str, Any]) -> PolicyObject:
    """Parse a policy object from the API (or a manifest). Never raises: problems are collected,
    each naming the field (``spec.limit: ...``), in the words ``memwatch lint`` and the status use."""
    raw_meta = obj.get("metadata")
    meta: Mapping[str, Any] = raw_meta if isinstance(raw_meta, Mapping) else {}
    kind = str(obj.get("kind") or "")
    name = str(meta.get("name") or "")
    namespace = meta.get("namespace") if kind == NAMESPACED else None
    problems: list[str] = []
    if kind not in PLURALS:
        problems.append(f"kind must be {NAMESPACED} or {CLUSTER}, not {shown(kind)}")
    if obj.get("apiVersion") not in (None, API_VERSION):
        problems.append(f"apiVersion must be {API_VERSION}, not {shown(str(obj.get('apiVersion')))}")
    spec = obj.get("spec")
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        problems.append("spec must be an object")
        spec = {}
    allowed = set(FIELDS) | {"podSelector", "priority", "containers"}
    if kind == CLUSTER:
        allowed.add("namespaceSelector")
    for key in sorted(set(spec) - allowed):
        hint = " (only a ClusterMemwatchPolicy selects namespaces)" if key == "namespaceSelector" else ""
        problems.append(f"spec.{key}: unknown field{hint}")
    pod_sel = ns_sel = Selector()
    try:
        pod_sel = Selector.from_object(spec.get("podSelector"), "spec.podSelector")
    except SelectorError as exc:
        problems.append(str(exc))
    if kind == CLUSTER:
        try:
            ns_sel = Selector.from_object(spec.get("namespaceSelector"), "spec.namespaceSelector")
        except SelectorError as exc:
            problems.append(str(exc))
    priority = spec.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or not (
            PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]):
        problems.append(f"spec.priority: must be a whole number from {PRIORITY_RANGE[0]} to {PRIORITY_RANGE[1]}")
        priority = 0
    settings: dict[str, str] = {}
    for spec_field, key in FIELDS.items():
        if spec_field not in spec or spec[spec_field] is None:
            continue
        wrong = _check(spec_field, spec[spec_field])
        if wrong:
            problems.append(f"spec.{spec_field}: {shown(_text(spec[spec_field]))}: {wrong}")
        else:
            settings[key] = _text(spec[spec_field])
    containers = spec.get("containers") or {}
    if not isinstance(containers, Mapping):
        problems.append("spec.containers must be a map of container name to limit")
        containers = {}
    for cname, value in containers.items():
        if not isinstance(cname, str) or not _CONTAINER_NAME.fullmatch(cname):
            problems.append(f"spec.containers: {shown(str(cname))} is not a container name")
            continue
        wrong = _check("limit", value)
        if wrong:
            problems.append(f"spec.containers.{cname}: {shown(_text(value))}: {wrong}")
        else:
            settings[KEY_CONTAINER_LIMIT + cname] = _text(value)
    if not settings and not problems:
        problems.append("spec sets nothing: give at least limit, containers or one of "
                        + ", ".join(f for f in FIELDS if f not in ("limit",)))
    generation = meta.get("generation")
    return PolicyObject(kind=kind, name=name, namespace=str(namespace) if namespace else None,
                        uid=str(meta.get("uid") or ""), generation=generation if isinstance(generation, int) else 0,
                        priority=priority, pod_selector=pod_sel, namespace_selector=ns_sel,
                        settings=tuple(sorted(settings.items())), problems=tuple(problems))


@dataclass(frozen=True, slots=True)
class Conflict:
    """Two or more policies at one level that set one field differently; the first wins."""

    key: str
    winner: str
    value: str
    losers: tuple[tuple[str, str], ...]  # (policy ref, its value)

    def __str__(self) -> str:
        others = ", ".join(f"{ref} ({shown(v)})" for ref, v in self.losers)
        return f"{self.key}: {self.winner} ({shown(self.value)}) wins over {others}"


@dataclass(frozen=True, slots=True)
class Effective:
    """A pod's merged ``memwatch.io/*`` settings and where each came from."""

    annotations: Mapping[str, str]
    sources: Mapping[str, str]  # key -> ANNOTATION or a policy ref
    policies: tuple[str, ...] = ()  # every valid policy that selects the pod, in precedence order
    conflicts: tuple[Conflict, ...] = ()
    watched: bool = False  # own memwatch.io/ annotations, or a policy gives it a limit
    by_policy_only: bool = False  # watched only because a policy gives it a limit

    def origin(self, key: str) -> str:
        return self.sources.get(key, DEFAULT)


def own_settings(annotations: Mapping[str, Any] | None) -> dict[str, str]:
    """The ``memwatch.io/`` annotations of a pod (the only ones memwatch reads)."""
    return {k: v if isinstance(v, str) else str(v) for k, v in (annotations or {}).items()
            if isinstance(k, str) and k.startswith(PREFIX)}


class PolicySet:
    """An immutable set of valid policies plus the namespaces' labels: a snapshot, swapped whole."""

    def __init__(self, policies: Iterable[PolicyObject] = (),
                 namespace_labels: Mapping[str, Mapping[str, str]] | None = None) -> None:
        valid = [p for p in policies if p.valid]
        self.namespaced: dict[str, list[PolicyObject]] = {}
        for p in sorted((p for p in valid if p.kind == NAMESPACED), key=PolicyObject.sort_key):
            self.namespaced.setdefault(p.namespace or "", []).append(p)
        self.cluster = sorted((p for p in valid if p.kind == CLUSTER), key=PolicyObject.sort_key)
        self.namespace_labels: Mapping[str, Mapping[str, str]] = dict(namespace_labels or {})
        self.generation = 0
        # One tuple per distinct set of matching policies, shared by every record that has it:
        # memory stays flat in the pods a cluster-wide policy selects.
        self._refs: dict[tuple[str, ...], tuple[str, ...]] = {}

    def __bool__(self) -> bool:
        return bool(self.namespaced or self.cluster)

    def __len__(self) -> int:
        return len(self.cluster) + sum(len(v) for v in self.namespaced.values())

    @property
    def needs_namespaces(self) -> bool:
        return any(p.namespace_selector.labels or p.namespace_selector.expressions for p in self.cluster)

    def matching(self, namespace: str, labels: Mapping[str, str]) -> tuple[list[PolicyObject], list[PolicyObject]]:
        """The valid policies that select a pod: (namespaced, cluster), each in precedence order."""
        local = [p for p in self.namespaced.get(namespace, ()) if p.pod_selector.matches(labels)]
        ns_labels = self.namespace_labels.get(namespace)
        cluster = []
        for p in self.cluster:
            sel = p.namespace_selector
            # A namespace not seen yet (or gone) is not selected: unknown never widens a policy.
            if (sel.labels or sel.expressions) and (ns_labels is None or not sel.matches(ns_labels)):
                continue
            if p.pod_selector.matches(labels):
                cluster.append(p)
        return local, cluster

    def effective(self, namespace: str, labels: Mapping[str, str] | None,
                  annotations: Mapping[str, Any] | None) -> Effective:
        """Merge field by field: the pod's annotations, then its namespace's policies, then the cluster's."""
        own = own_settings(annotations)
        sources = {k: ANNOTATION for k in own}
        if not self:
            return Effective(own, sources, watched=is_watched(own))
        local, cluster = self.matching(namespace, labels or {})
        merged = dict(own)
        conflicts: list[Conflict] = []
        for level in (local, cluster):
            chosen: dict[str, tuple[str, str]] = {}  # key -> (ref, value) of this level's winner
            losers: dict[str, list[tuple[str, str]]] = {}
            for p in level:
                for key, value in p.settings:
                    if key not in chosen:
                        chosen[key] = (p.ref, value)
                    elif chosen[key][1] != value:
                        losers.setdefault(key, []).append((p.ref, value))
            for key, (ref, value) in chosen.items():
                if key not in merged:
                    merged[key] = value
                    sources[key] = ref
                if key in losers:
                    conflicts.append(Conflict(key, ref, value, tuple(losers[key])))
        own_watch = is_watched(own)
        by_policy = not own_watch and any(p.gives_limit for p in (*local, *cluster))
        refs = tuple(p.ref for p in (*local, *cluster))
        refs = self._refs.setdefault(refs, refs)
        return Effective(merged, sources, refs, tuple(conflicts), watched=own_watch or by_policy,
                         by_policy_only=by_policy)


EMPTY = PolicySet()


class PolicyStore:
    """A watcher sink for one kind of policy (and, with ``kind=None``, for namespaces' labels),
    feeding a :class:`Policies` that rebuilds the :class:`PolicySet` snapshot on every change."""

    def __init__(self, owner: Policies, kind: str | None) -> None:
        self.owner = owner
        self.kind = kind
        self.items: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _key(self, obj: Mapping[str, Any]) -> str:
        meta = obj.get("metadata") or {}
        return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"

    def _value(self, obj: Mapping[str, Any]) -> Any:
        if self.kind is None:  # a Namespace: its labels
            return dict((obj.get("metadata") or {}).get("labels") or {})
        return parse_policy({**obj, "kind": obj.get("kind") or self.kind})

    def upsert(self, obj: Mapping[str, Any]) -> None:
        value = self._value(obj)
        key = self._key(obj)
        with self.owner.lock:
            if self.items.get(key) == value:
                return  # a status write or resync: nothing a pod's resolution depends on changed
            self.items[key] = value
        self.owner.changed(self)

    def remove(self, obj: Mapping[str, Any]) -> None:
        with self.owner.lock:
            if self.items.pop(self._key(obj), None) is None:
                return
        self.owner.changed(self)

    def replace(self, objs: Iterable[Mapping[str, Any]], scope: Callable[[Any], bool]) -> None:
        fresh = {self._key(o): self._value(o) for o in objs}
        with self.owner.lock:
            if fresh == self.items:
                return
            self.items = fresh
        self.owner.changed(self)


class Policies:
    """The live policies of the cluster (or of the watched namespaces): two policy stores and the
    namespaces' labels, turned into one :class:`PolicySet` snapshot. ``on_change`` callbacks run
    (in the watch thread) after every change that can alter any pod's resolution."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.namespaced = PolicyStore(self, NAMESPACED)
        self.cluster = PolicyStore(self, CLUSTER)
        self.namespaces = PolicyStore(self, None)
        self.current: PolicySet = EMPTY
        self.generation = 0
        self.callbacks: list[Callable[[PolicySet], None]] = []

    def objects(self) -> list[PolicyObject]:
        with self.lock:
            return [*self.namespaced.items.values(), *self.cluster.items.values()]

    def changed(self, store: PolicyStore) -> None:
        with self.lock:
            if store is self.namespaces and not self.current.needs_namespaces:
                self.current = self._build()  # keep the labels fresh, but no pod can change
                return
            self.generation += 1
            self.current = self._build()
            snapshot = self.current
        for callback in self.callbacks:
            callback(snapshot)

    def _build(self) -> PolicySet:
        policies = [*self.namespaced.items.values(), *self.cluster.items.values()]
        snapshot = PolicySet(policies, {k.lstrip("/"): v for k, v in self.namespaces.items.items()})
        snapshot.generation = self.generation
        return snapshot
