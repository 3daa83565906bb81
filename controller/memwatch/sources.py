"""Usage sources: where the controller reads pods' memory from, one bulk read per sweep.

* :class:`MetricsApiSource`: ``metrics.k8s.io/v1beta1`` PodMetrics (metrics-server). One LIST per
  sweep, cluster-wide or one per watched namespace.
* :class:`KubeletSource`: the kubelet Summary API through the API server's node proxy. One GET per
  node that hosts watched pods. Needs no metrics-server.
* :class:`AutoSource`: metrics-api while it is served, else kubelet; re-checks every minute.

Each returns working-set bytes (the kubelet's and metrics-server's definition) with the time the
sample was taken, so the sweep can refuse to act on stale data. The node agent's cgroup reader
(:mod:`memwatch.cgroups`) implements the same protocol.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol
from urllib.parse import quote

from memwatch.kube import ApiError, Kube
from memwatch.podindex import PodRecord
from memwatch.policy import Usage
from memwatch.quantity import QuantityError, parse_bytes, parse_time

log = logging.getLogger("memwatch.sources")

METRICS_GROUP_VERSION = "metrics.k8s.io/v1beta1"


class SourceError(Exception):
    """The source could not produce samples this sweep (the sweep then acts on nothing)."""


class UsageSource(Protocol):
    """Reads the memory of many pods at once."""

    name: str

    def fetch(self, records: Sequence[PodRecord]) -> dict[str, Usage]:
        """Samples for as many of ``records`` as the source has, keyed by pod UID."""
        ...


class MetricsApiSource:
    """PodMetrics from metrics.k8s.io: one LIST per sweep (per watched namespace)."""

    name = "metrics-api"

    def __init__(self, kube: Kube, namespaces: Sequence[str] = (), label_selector: str = "") -> None:
        self.kube = kube
        self.namespaces = tuple(namespaces)
        self.label_selector = label_selector

    def _paths(self) -> list[str]:
        base = f"/apis/{METRICS_GROUP_VERSION}"
        if not self.namespaces:
            return [f"{base}/pods"]
        return [f"{base}/namespaces/{quote(ns)}/pods" for ns in self.namespaces]

    def fetch(self, records: Sequence[PodRecord]) -> dict[str, Usage]:
        by_key = {(r.namespace, r.name): r.uid for r in records}
        out: dict[str, Usage] = {}
        if not by_key:
            return out
        for path in self._paths():
            try:
                data = self.kube.get_json(path, {"labelSelector": self.label_selector})
            except ApiError as exc:
                raise SourceError(f"metrics-api: {exc}") from exc
            for item in data.get("items") or ():
                meta = item.get("metadata") or {}
                uid = by_key.get((str(meta.get("namespace")), str(meta.get("name"))))
                if uid is None:
                    continue
                ts = parse_time(item.get("timestamp"))
                containers = _container_bytes(
                    (c.get("name"), (c.get("usage") or {}).get("memory")) for c in item.get("containers") or ())
                if ts is None or containers is None:
                    continue  # malformed: treated as missing, never acted on
                out[uid] = Usage(containers, ts, self.name)
        return out


def _container_bytes(pairs: Iterable[tuple[Any, Any]]) -> dict[str, int] | None:
    out: dict[str, int] = {}
    for name, value in pairs:
        if not name or value is None:
            continue
        try:
            out[str(name)] = parse_bytes(str(value), allow_zero=True)
        except QuantityError:
            return None
    return out


class KubeletSource:
    """The kubelet Summary API through the node proxy: one GET per node hosting watched pods."""

    name = "kubelet"

    def __init__(self, kube: Kube, parallelism: int = 8) -> None:
        self.kube = kube
        self.parallelism = parallelism
        self._failing: dict[str, str] = {}  # node → last error, to log changes only

    def _summary(self, node: str) -> dict[str, Any]:
        data: dict[str, Any] = self.kube.get_json(f"/api/v1/nodes/{quote(node)}/proxy/stats/summary",
                                                  timeout=10)
        return data

    def fetch(self, records: Sequence[PodRecord]) -> dict[str, Usage]:
        wanted = {r.uid for r in records}
        nodes = sorted({r.node for r in records if r.node})
        out: dict[str, Usage] = {}
        if not nodes:
            return out
        failures: list[str] = []
        with ThreadPoolExecutor(max_workers=min(self.parallelism, len(nodes))) as pool:
            results = list(pool.map(self._safe_summary, nodes))
        for node, (summary, error) in zip(nodes, results, strict=True):
            if error is not None:
                failures.append(f"{node}: {error}")
                continue
            for pod in (summary or {}).get("pods") or ():
                ref = pod.get("podRef") or {}
                uid = ref.get("uid")
                if uid not in wanted:
                    continue
                usage = _summary_usage(pod, self.name)
                if usage is not None:
                    out[uid] = usage
        self._report(nodes, failures)
        if failures and len(failures) == len(nodes):
            raise SourceError("kubelet: every node failed: " + "; ".join(failures)[:500])
        return out

    def _report(self, nodes: Sequence[str], failures: Sequence[str]) -> None:
        """Log a node when it starts failing and when it recovers, not on every sweep."""
        failed = dict(f.split(": ", 1) for f in failures)
        for node, error in failed.items():
            if node not in self._failing:
                log.warning("kubelet source: node %s failed: %s (its pods are not acted on until it answers; "
                            "logged again when it recovers)", node, error[:300])
        for node in [n for n in self._failing if n in nodes and n not in failed]:
            log.info("kubelet source: node %s answers again", node)
        self._failing = {n: e for n, e in self._failing.items() if n not in nodes} | failed

    def _safe_summary(self, node: str) -> tuple[dict[str, Any] | None, str | None]:
        try:
            return self._summary(node), None
        except (ApiError, ValueError) as exc:
            return None, str(exc)


def _summary_usage(pod: dict[str, Any], source: str) -> Usage | None:
    """Working set of one pod entry in a kubelet Summary."""
    containers: dict[str, int] = {}
    times: list[float] = []
    for c in pod.get("containers") or ():
        mem = c.get("memory") or {}
        ws = mem.get("workingSetBytes")
        if c.get("name") and isinstance(ws, int):
            containers[c["name"]] = ws
            t = parse_time(mem.get("time"))
            if t is not None:
                times.append(t)
    pod_mem = pod.get("memory") or {}
    pod_ws = pod_mem.get("workingSetBytes")
    pod_t = parse_time(pod_mem.get("time"))
    if pod_t is not None:
        times.append(pod_t)
    if not times or (not containers and not isinstance(pod_ws, int)):
        return None
    # The oldest timestamp: the sample is only as fresh as its stalest part.
    return Usage(containers, min(times), source, pod_ws if isinstance(pod_ws, int) else None)


class AutoSource:
    """metrics-api when the API server serves it, else kubelet. Logs each switch."""

    name = "auto"

    def __init__(self, kube: Kube, metrics: MetricsApiSource, kubelet: KubeletSource,
                 recheck_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.metrics, self.kubelet = metrics, kubelet
        self.recheck_seconds = recheck_seconds
        self.clock = clock
        self.current: UsageSource | None = None
        self._checked_at = -1e18

    def _choose(self) -> UsageSource:
        now = self.clock()
        if self.current is not None and now - self._checked_at < self.recheck_seconds:
            return self.current
        self._checked_at = now
        try:
            served = self.kube.has_api(METRICS_GROUP_VERSION)
        except ApiError as exc:
            log.warning("source auto: cannot check for %s (%s); keeping %s", METRICS_GROUP_VERSION, exc,
                        self.current.name if self.current else "kubelet")
            served = self.current is self.metrics
        chosen: UsageSource = self.metrics if served else self.kubelet
        if chosen is not self.current:
            log.info("source auto: using %s (%s %s)", chosen.name, METRICS_GROUP_VERSION,
                     "is served" if served else "is not served")
            self.current = chosen
        return chosen

    def fetch(self, records: Sequence[PodRecord]) -> dict[str, Usage]:
        source = self._choose()
        try:
            return source.fetch(records)
        except SourceError:
            if source is self.metrics:
                self._checked_at = -1e18  # the API may have gone: look again next sweep
            raise


def make_source(kind: str, kube: Kube, namespaces: Sequence[str] = (), label_selector: str = "") -> UsageSource:
    """The source for ``--source``."""
    metrics = MetricsApiSource(kube, namespaces, label_selector)
    kubelet = KubeletSource(kube)
    if kind == "metrics-api":
        return metrics
    if kind == "kubelet":
        return kubelet
    if kind == "auto":
        return AutoSource(kube, metrics, kubelet)
    raise ValueError(f"unknown source {kind!r}")
