"""Test doubles at the API level: a fake clock, a fake `Kube`, a fake usage source, pod builders.

The fakes have the same methods as the real objects (duck typing), record every call, and return
scripted results, so the enforcer and the sweep run exactly as in production.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from memwatch.clock import ManualClock
from memwatch.enforcer import Enforcer, EnforcerSettings
from memwatch.kube import WriteResult
from memwatch.observability import Metrics, Recorder
from memwatch.podindex import PodIndex, PodRecord
from memwatch.policy import Defaults, Usage
from memwatch.protections import Protections
from memwatch.sources import SourceError
from memwatch.sweep import Sweeper

T0 = 1_700_000_000.0  # a fixed epoch for the fake clock
MI = 1 << 20
GI = 1 << 30

_uids = itertools.count(1)


class FakeClock(ManualClock):
    """memwatch's :class:`~memwatch.clock.ManualClock`, also callable for the wall time (``clock()``)."""

    def __init__(self, start: float = T0) -> None:
        super().__init__(wall=start)

    def __call__(self) -> float:
        return self.wall()


class FakeKube:
    """Same methods as :class:`memwatch.kube.Kube`; records calls and returns scripted results.

    ``evict_results``/``delete_results`` map a pod name to a list of WriteResults (or status ints)
    consumed in order; the last one repeats. Unscripted writes succeed.
    """

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock
        self.calls: list[tuple[str, str, str, float | None]] = []  # (verb, namespace, name, time)
        self.events: list[dict[str, Any]] = []
        self.evict_results: dict[str, deque[WriteResult]] = {}
        self.delete_results: dict[str, deque[WriteResult]] = {}
        self.event_pages: list[dict[str, Any]] = []
        self.json: dict[str, Any] = {}
        self.apis: set[str] = {"policy/v1"}

    @staticmethod
    def _result(value: WriteResult | int) -> WriteResult:
        if isinstance(value, WriteResult):
            return value
        messages = {429: "Cannot evict pod as it would violate the pod's disruption budget.",
                    404: "pods not found", 500: "etcdserver: request timed out"}
        return WriteResult(value < 400, value, "" if value < 400 else f"HTTP {value}: {messages.get(value, '')}")

    def script_evict(self, name: str, *results: WriteResult | int) -> None:
        self.evict_results[name] = deque(self._result(r) for r in results)

    def script_delete(self, name: str, *results: WriteResult | int) -> None:
        self.delete_results[name] = deque(self._result(r) for r in results)

    def _next(self, table: dict[str, deque[WriteResult]], name: str, ok: int) -> WriteResult:
        queue = table.get(name)
        if not queue:
            return WriteResult(True, ok)
        return queue.popleft() if len(queue) > 1 else queue[0]

    def _now(self) -> float | None:
        return self.clock() if self.clock else None

    # -- the Kube surface -----------------------------------------------------------------------
    def evict(self, namespace: str, name: str, uid: str, grace_period: int | None) -> WriteResult:
        self.calls.append(("evict", namespace, name, self._now()))
        return self._next(self.evict_results, name, 201)

    def delete_pod(self, namespace: str, name: str, uid: str, grace_period: int | None) -> WriteResult:
        self.calls.append(("delete", namespace, name, self._now()))
        return self._next(self.delete_results, name, 200)

    def create_event(self, namespace: str, body: Mapping[str, Any]) -> WriteResult:
        self.events.append(dict(body))
        return WriteResult(True, 201)

    def list_pages(self, path: str, query: Mapping[str, Any] | None = None,
                   limit: int = 500) -> Iterator[dict[str, Any]]:
        self.calls.append(("list", "", path, self._now()))
        yield from self.event_pages

    def get_json(self, path: str, query: Mapping[str, Any] | None = None, timeout: float | None = None) -> Any:
        self.calls.append(("get", "", path, self._now()))
        return self.json[path]

    def get_bytes(self, path: str, query: Mapping[str, Any] | None = None, timeout: float | None = None) -> bytes:
        return json.dumps(self.get_json(path, query, timeout)).encode()

    def has_api(self, group_version: str) -> bool:
        return group_version in self.apis

    def request_count(self, verb: str | None = None, resource: str | None = None) -> int:
        return len(self.calls)

    # -- what happened --------------------------------------------------------------------------
    def writes(self, verb: str | None = None, name: str | None = None) -> list[tuple[str, str, str, float | None]]:
        return [c for c in self.calls if c[0] in ("evict", "delete")
                and (verb is None or c[0] == verb) and (name is None or c[2] == name)]

    def reasons(self, name: str | None = None) -> list[str]:
        return [e["reason"] for e in self.events if name is None or e["involvedObject"]["name"] == name]


class FakeSource:
    """A usage source returning scripted samples; counts fetches, can fail."""

    name = "fake"

    def __init__(self) -> None:
        self.samples: dict[str, Usage] = {}
        self.fetches = 0
        self.error: str | None = None

    def set(self, uid: str, total: int, timestamp: float, containers: Mapping[str, int] | None = None) -> None:
        self.samples[uid] = Usage(dict(containers or {"app": total}), timestamp, self.name, total)

    def fetch(self, records: Sequence[PodRecord]) -> dict[str, Usage]:
        self.fetches += 1
        if self.error:
            raise SourceError(self.error)
        wanted = {r.uid for r in records}
        return {uid: u for uid, u in self.samples.items() if uid in wanted}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_pod(name: str, namespace: str = "default", *, annotations: Mapping[str, str] | None = None,
             containers: Sequence[tuple[str, str | None]] = (("app", "1Gi"),), node: str | None = "node-1",
             uid: str | None = None, phase: str = "Running", labels: Mapping[str, str] | None = None,
             priority: int | None = None, owner_kind: str | None = None, terminating: bool = False,
             resource_version: str = "1") -> dict[str, Any]:
    """A raw pod as the API returns it (JSON dict), with only the fields that matter here."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid or f"uid-{name}-{next(_uids)}",
                            "resourceVersion": resource_version, "labels": dict(labels or {}),
                            "annotations": dict(annotations if annotations is not None
                                                else {"memwatch.io/limit": "512Mi"})}
    if owner_kind:
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": owner_kind, "name": "x", "uid": "owner"}]
    if terminating:
        meta["deletionTimestamp"] = iso(T0)
    spec: dict[str, Any] = {"containers": [
        {"name": c, "image": "busybox", **({"resources": {"limits": {"memory": lim}}} if lim else {})}
        for c, lim in containers]}
    if node:
        spec["nodeName"] = node
    if priority is not None:
        spec["priority"] = priority
    status = {"phase": phase, "qosClass": "Burstable",
              "containerStatuses": [{"name": c, "containerID": f"containerd://{name}-{c}"} for c, _ in containers]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


class Rig:
    """An index, a fake source, a recorder, an enforcer and a sweeper wired as in the controller."""

    def __init__(self, kube: Any, clock: FakeClock, *, source: Any = None, defaults: Defaults | None = None,
                 protections: Protections | None = None, max_sample_age: float = 60.0,
                 **enforcer: Any) -> None:
        self.kube, self.clock = kube, clock
        self.metrics = Metrics()
        self.recorder = Recorder(kube, self.metrics, host="test")
        self.index = PodIndex(defaults or Defaults(), (protections or Protections()).reason)
        self.source = source if source is not None else FakeSource()
        self.enforcer = Enforcer(kube, self.recorder, EnforcerSettings(**enforcer), clock=clock)
        self.sweeper = Sweeper(self.index, self.source, self.enforcer, self.recorder, interval=5.0,
                               max_sample_age=max_sample_age, clock=clock)

    def add(self, *pods: dict[str, Any]) -> list[str]:
        for pod in pods:
            self.index.upsert(pod)
        return [p["metadata"]["uid"] for p in pods]

    def record(self, pod: Mapping[str, Any]) -> PodRecord:
        rec = self.index.get(pod["metadata"]["uid"])
        assert rec is not None
        return rec

    def over(self, pod: Mapping[str, Any], total: int = 600 * MI, age: float = 1.0) -> None:
        """Script a fresh sample for ``pod`` (default: over a 512Mi limit)."""
        self.source.set(pod["metadata"]["uid"], total, self.clock() - age)

    def sweep(self, times: int = 1, step: float = 0.0) -> Any:
        report = None
        for _ in range(times):
            report = self.sweeper.sweep_once()
            if step:
                self.clock.advance(step)
        return report

    def run_for(self, seconds: float, tick: float = 0.5, refresh: Iterable[Mapping[str, Any]] = ()) -> None:
        """Let time pass as the run loop would: retries when due, a sweep every 5 s, fresh samples."""
        end = self.clock() + seconds
        next_sweep = self.clock() + 5.0
        while self.clock() < end:
            self.clock.advance(tick)
            for pod in refresh:
                self.over(pod)
            if self.clock() >= next_sweep:
                self.sweeper.sweep_once()
                next_sweep = self.clock() + 5.0
            else:
                self.sweeper.retry_due()


def deep_sizeof(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes held by ``obj`` and everything it references (slots, dicts, tuples, lists, strings).

    Shared singletons (None, small ints, interned short strings, enums, classes) are not charged
    to the record: they exist once per process whatever the number of pods.
    """
    seen = set() if seen is None else seen
    if id(obj) in seen or obj is None or isinstance(obj, (bool, type)) or _is_enum(obj):
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_sizeof(k, seen) + deep_sizeof(v, seen) for k, v in obj.items())
    elif isinstance(obj, (tuple, list, set, frozenset, deque)):
        size += sum(deep_sizeof(x, seen) for x in obj)
    elif not isinstance(obj, (str, bytes, int, float)):
        for klass in type(obj).__mro__:
            slots = getattr(klass, "__slots__", ())
            for slot in (slots,) if isinstance(slots, str) else slots:
                if hasattr(obj, slot):
                    size += deep_sizeof(getattr(obj, slot), seen)
        if hasattr(obj, "__dict__"):
            size += deep_sizeof(vars(obj), seen)
    return size


def _is_enum(obj: Any) -> bool:
    import enum

    return isinstance(obj, enum.Enum)
