"""Usage sources: where the controller reads pods' memory from, one bulk read per sweep.

* :class:`MetricsApiSource`: ``metrics.k8s.io/v1beta1`` PodMetrics (metrics-server). One LIST per
  sweep, cluster-wide or one per watched namespace.
* :class:`KubeletSource`: each node's kubelet Summary API, read directly (as metrics-server does,
  never through the API server's node proxy). One GET per node that hosts watched pods. Needs no
  metrics-server.
* :class:`AutoSource`: metrics-api while it is served, else kubelet; re-checks every minute.

Each returns working-set bytes (the kubelet's and metrics-server's definition) with the time the
sample was taken, so the sweep can refuse to act on stale data, and leave out (counting them in
``skipped``) samples that may belong to an earlier pod or container of the same name. The node agent's cgroup reader
(:mod:`memwatch.cgroups`) implements the same protocol.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import msgspec

from memwatch.kube import ApiError, Kube, KubeletClient, loads
from memwatch.podindex import PodRecord
from memwatch.policy import Usage
from memwatch.quantity import QuantityError, parse_bytes, parse_duration, parse_time

log = logging.getLogger("memwatch.sources")

METRICS_GROUP_VERSION = "metrics.k8s.io/v1beta1"
#: Why a sample was left out: its window began before the pod, or one of its containers, started.
PREDATES_POD = "predates-pod"


# The fields of a PodMetrics item that memwatch reads, typed as metrics-server writes them: the
# decoder insists on these types (_podmetrics_items). Structs made by _item_carefully, for a list not
# in that form, hold whatever its items said (a struct's constructor checks nothing): _sample checks.
class _Memory(msgspec.Struct, gc=False):
    memory: str | None = None


class _Container(msgspec.Struct, gc=False):
    name: str
    usage: _Memory


class _Meta(msgspec.Struct, gc=False):
    name: str
    namespace: str


class _PodMetrics(msgspec.Struct, gc=False):
    metadata: _Meta
    timestamp: str
    containers: list[_Container]
    window: str | None = None


class _PodMetricsList(msgspec.Struct, gc=False):
    items: list[_PodMetrics] = msgspec.field(default_factory=list)


_EXACT = msgspec.json.Decoder(_PodMetricsList)


def _podmetrics_items(body: bytes, by_key: Mapping[tuple[Any, Any], PodRecord]) -> tuple[list[_PodMetrics], bool]:
    """The items of a PodMetrics LIST body, each read the same way after (plain attributes).

    metrics-server's exact form is decoded straight into slotted structs holding only the fields
    read here (name, namespace, timestamp, window, each container's name and memory): the labels,
    CPU figures and the rest are skipped unallocated. A 10,000-pod list decodes in ~3 ms instead of
    ~12 ms as plain JSON, and frees in ~1.5 ms instead of ~5. A body that is JSON but not exactly
    that form (a field missing or of another type, anywhere) is decoded as plain JSON instead, and
    each of its items that is one of ``by_key`` is read the careful way (:func:`_item_carefully`).
    Returns the items and whether they are of the exact form (their fields then hold the declared
    types). Raises ValueError (msgspec.DecodeError is one) when the body is not JSON at all."""
    try:
        return _EXACT.decode(body).items, True
    except msgspec.ValidationError:
        pass
    items = _mapping(loads(body)).get("items")
    return [s for s in (_item_carefully(i, by_key) for i in (items if type(items) is list else ())) if s], False


class SourceError(Exception):
    """The source could not produce samples this sweep (the sweep then acts on nothing)."""


class UsageSource(Protocol):
    """Reads the memory of many pods at once."""

    name: str

    def fetch(self, records: Sequence[PodRecord]) -> dict[str, Usage]:
        """Samples for as many of ``records`` as the source has, keyed by pod UID."""
        ...


_UNSEEN: Any = object()


class MetricsApiSource:
    """PodMetrics from metrics.k8s.io: one LIST per sweep (per watched namespace)."""

    name = "metrics-api"

    def __init__(self, kube: Kube, namespaces: Sequence[str] = (), label_selector: str = "") -> None:
        self.kube = kube
        self.namespaces = tuple(namespaces)
        self.label_selector = label_selector
        #: Samples of the last fetch left out, by reason (``predates-pod``).
        self.skipped: collections.Counter[str] = collections.Counter()
        #: uid -> (record, timestamp, window, (container, memory) as written, Usage) of the last fetch.
        self._seen: dict[str, tuple[PodRecord, _PodMetrics, Usage]] = {}
        self._seen_times: set[str] = set()  # the timestamps of the last fetch's items, as written

    def _paths(self) -> list[str]:
        base = f"/apis/{METRICS_GROUP_VERSION}"
        if not self.namespaces:
            return [f"{base}/pods"]
        return [f"{base}/namespaces/{quote(ns)}/pods" for ns in self.namespaces]

    def fetch(self, records: Sequence[PodRecord]) -> dict[str, Usage]:
        self.skipped = collections.Counter()
        by_key: dict[tuple[Any, Any], PodRecord] = {(r.namespace, r.name): r for r in records}
        out: dict[str, Usage] = {}
        if not by_key:
            return out
        # 10,000 pods a sweep, each item read in a few microseconds: the form metrics-server writes
        # is decoded into structs and read with plain attributes (anything else is read the careful
        # way into the same structs: _podmetrics_items). An item equal to the pod's item last time
        # (the same record; the same timestamp, window and memory strings) gives back the same Usage
        # object, unparsed, which the sweep then knows it judged already. Each distinct timestamp
        # and window string is parsed once per fetch.
        #
        # Most new items are one container's `<digits>Ki` with a timestamp and window parsed already
        # for an earlier item (metrics-server stamps a node's pods alike): in an exact-form list those
        # are read inline below, the rest through _sample. Same result, without three calls an item.
        before, seen, before_times, reused_times = self._seen, {}, self._seen_times, set()
        times: dict[str, float | None] = {}
        windows: dict[str | None, float | None] = {None: 0.0}
        lookup, name, skipped = by_key.get, self.name, self.skipped
        for path in self._paths():
            try:
                body = self.kube.get_bytes(path, {"labelSelector": self.label_selector})
            except ApiError as exc:
                raise SourceError(f"metrics-api: {exc}") from exc
            try:
                items, exact = _podmetrics_items(body, by_key)
            except ValueError as exc:
                raise SourceError(f"metrics-api: {path} answered with something that is not JSON: {exc}") from exc
            for item in items:
                meta = item.metadata
                rec = lookup((meta.namespace, meta.name))
                if rec is None:
                    continue
                uid = rec.uid
                # An item of the exact form stamped with a time no item had last fetch is new (one set
                # lookup); only one that may be unchanged is compared with the pod's last.
                last = before.get(uid) if not exact or item.timestamp in before_times else None
                if last is not None and last[0] is rec and last[1] == item:  # struct ==: every field, in C
                    out[uid] = last[2]
                    seen[uid] = last
                    if exact:
                        reused_times.add(item.timestamp)
                    continue
                listed = item.containers
                ts = times.get(item.timestamp) if exact else None  # exact: every field of its declared type
                window = windows.get(item.window) if ts is not None else None
                if ts is not None and window is not None and len(listed) == 1:
                    only = listed[0]
                    value = only.usage.memory
                    if value is not None and value[-2:] == "Ki" and 2 < len(value) <= 17 \
                            and (digits := value[:-2]).isdigit() and digits.isascii() and only.name:
                        containers = {only.name: int(digits) << 10}
                        settled = rec.settled_at  # measured from after it: no predecessor's (_predates' quick no)
                        if (settled is None or ts - window <= settled) and _predates(rec, ts - window, containers):
                            skipped[PREDATES_POD] += 1
                            continue
                        made = Usage(containers, ts, name)
                        out[uid] = made
                        seen[uid] = (rec, item, made)
                        continue
                usage = self._sample(rec, item, times, windows)
                if usage is not None:
                    out[uid] = usage
                    seen[uid] = (rec, item, usage)
        self._seen, self._seen_times = seen, reused_times.union(times)
        return out

    def _sample(self, rec: PodRecord, item: _PodMetrics, times: dict[str, float | None],
                windows: dict[str | None, float | None]) -> Usage | None:
        """The Usage one item describes, or None when it is malformed, empty, or may be a predecessor's."""
        raw_ts, raw_window = item.timestamp, item.window
        if type(raw_ts) is not str:
            return None
        ts = times.get(raw_ts, _UNSEEN)
        if ts is _UNSEEN:
            ts = times[raw_ts] = parse_time(raw_ts)
        if raw_window is None:
            window: float | None = 0.0
        elif type(raw_window) is str:
            window = windows.get(raw_window, _UNSEEN)
            if window is _UNSEEN:
                window = windows[raw_window] = _window(raw_window)
        else:
            window = None
        listed = item.containers
        if len(listed) == 1 and type(name := listed[0].name) is str and name \
                and type(value := listed[0].usage.memory) is str:
            try:  # one container, as metrics-server writes it: _container_bytes' work without its loop
                containers: dict[str, int] | None = {name: parse_bytes(value, True)}
            except QuantityError:
                return None
        else:
            containers = _container_bytes(listed)
        if ts is None or window is None or not containers:
            return None  # malformed or empty: treated as missing, never acted on
        # Keyed by name, so the sample may be a predecessor's (a StatefulSet pod recreated under its
        # name): it counts only if its window began after this pod started.
        if _predates(rec, ts - window, containers):
            self.skipped[PREDATES_POD] += 1
            return None
        return Usage(containers, ts, self.name)


def _item_carefully(item: Any, by_key: Mapping[tuple[Any, Any], PodRecord]) -> _PodMetrics | None:
    """An item of a list not in metrics-server's exact form, as the struct the exact form decodes to,
    holding what it said (of any type; :meth:`MetricsApiSource._sample` checks): None when it is not
    one of ``by_key`` or not readable at all. Containers that are not objects are left out."""
    if type(item) is not dict:
        return None
    meta = item.get("metadata")
    if type(meta) is not dict:
        return None
    name: Any = meta.get("name")
    namespace: Any = meta.get("namespace")
    try:
        if (namespace, name) not in by_key:
            return None
    except TypeError:  # an unhashable name: not one of ours
        return None
    listed = item.get("containers")
    containers = []
    for c in listed if type(listed) is list else ():
        if type(c) is dict:
            usage = c.get("usage")
            cname: Any = c.get("name")
            memory: Any = usage.get("memory") if type(usage) is dict else None
            containers.append(_Container(cname, _Memory(memory)))
    stamp: Any = item.get("timestamp")
    return _PodMetrics(_Meta(name, namespace), stamp, containers, item.get("window"))


def _window(value: Any) -> float | None:
    """A PodMetrics window (`15s`, `10.036s`) in seconds; 0 when absent, None when garbled."""
    if value is None:
        return 0.0
    try:
        return parse_duration(str(value))
    except QuantityError:
        return None


def _predates(record: PodRecord, window_start: float, containers: Iterable[str]) -> bool:
    """Whether a sample measured from ``window_start`` on may describe an earlier pod or container.

    It must start after the pod started and after each of its containers last (re)started. A pod
    that has not started (Pending, no startTime) has no sample of its own yet; a start time that
    is unknown otherwise (a status without it) is not held against the sample.
    """
    if record.started_at is None:
        return record.phase == "Pending"
    if window_start <= record.started_at:
        return True
    for name, started in record.containers_started:  # noqa: SIM110 (a plain loop: every new sample)
        if window_start <= started and name in containers:
            return True
    return False


def _container_bytes(listed: list[_Container]) -> dict[str, int] | None:
    """Container name -> working-set bytes of an item's containers, leaving out those without a name
    or a memory figure; None when any figure is garbled (the whole sample is then treated as missing)."""
    out: dict[str, int] = {}
    for c in listed:
        name, value = c.name, c.usage.memory
        if not name or value is None:
            continue
        try:
            out[name if type(name) is str else str(name)] = parse_bytes(
                value if type(value) is str else str(value), allow_zero=True)
        except QuantityError:
            return None
    return out


#: Node address types tried in order for each kubelet (metrics-server's default order).
DEFAULT_ADDRESS_TYPES = ("InternalIP", "Hostname", "InternalDNS", "ExternalIP")
#: The kubelet's port when the Node does not say (status.daemonEndpoints.kubeletEndpoint.Port).
DEFAULT_KUBELET_PORT = 10250


class NodeLookupError(Exception):
    """The Node object is missing, unreadable, or names no usable kubelet address."""


def kubelet_endpoint(node: Mapping[str, Any], address_types: Sequence[str] = DEFAULT_ADDRESS_TYPES) -> tuple[str, int]:
    """The kubelet's (address, port) from a Node object: the first address of a preferred type."""
    status = _mapping(node.get("status"))
    listed = status.get("addresses")
    addresses = [a for a in listed if isinstance(a, Mapping)] if isinstance(listed, list) else []
    port = _mapping(_mapping(status.get("daemonEndpoints")).get("kubeletEndpoint")).get("Port")
    if not isinstance(port, int) or not 0 < port < 65536:
        port = DEFAULT_KUBELET_PORT
    for kind in address_types:
        for address in addresses:
            if address.get("type") == kind and address.get("address"):
                return str(address["address"]), port
    found = ", ".join(f"{a.get('type')}={a.get('address')}" for a in addresses) or "none"
    raise NodeLookupError(f"no address of type {', '.join(address_types)} (it has: {found})")


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass(slots=True)
class _NodeEntry:
    endpoint: tuple[str, int] | None
    error: str | None
    fetched: float
    expires: float


class NodeDirectory:
    """Where each node's kubelet listens, from the Node objects: one GET per node, then cached.

    A node is read when first needed, again after ``ttl`` (spread by up to a fifth, so that nodes
    seen together are not all re-read in one sweep), and again after its kubelet failed (its
    address may have changed), at most once per ``retry`` seconds. So the usage requests of a
    steady sweep are the kubelets' alone: no Node LIST, no per-sweep GET.
    """

    def __init__(self, kube: Kube, address_types: Sequence[str] = DEFAULT_ADDRESS_TYPES, ttl: float = 600.0,
                 retry: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.address_types = tuple(address_types)
        self.ttl, self.retry, self.clock = ttl, retry, clock
        self._entries: dict[str, _NodeEntry] = {}
        self._lock = threading.Lock()

    def endpoint(self, node: str) -> tuple[str, int]:
        """The kubelet address of ``node``; raises :class:`NodeLookupError`."""
        now = self.clock()
        with self._lock:
            entry = self._entries.get(node)
        if entry is None or now >= entry.expires:
            entry = self._read(node, now, entry)
            with self._lock:
                self._entries[node] = entry
        if entry.endpoint is None:
            raise NodeLookupError(entry.error or "unknown")
        return entry.endpoint

    def _read(self, node: str, now: float, old: _NodeEntry | None) -> _NodeEntry:
        try:
            endpoint = kubelet_endpoint(_mapping(self.kube.get_node(node)), self.address_types)
        except (ApiError, ValueError, NodeLookupError) as exc:
            # Keep a known address through an API outage; ask again after `retry`.
            return _NodeEntry(old.endpoint if old else None, f"reading its Node: {exc}", now, now + self.retry)
        return _NodeEntry(endpoint, None, now, now + self.ttl * random.uniform(0.8, 1.0))

    def failed(self, node: str) -> None:
        """The kubelet at the cached address failed: read the Node again, at most every ``retry``."""
        with self._lock:
            entry = self._entries.get(node)
            if entry is not None:
                entry.expires = min(entry.expires, entry.fetched + self.retry)

    def forget_except(self, nodes: Iterable[str]) -> None:
        """Drop nodes that host no watched pod any more (bounded memory as nodes come and go)."""
        keep = set(nodes)
        with self._lock:
            for name in [n for n in self._entries if n not in keep]:
                del self._entries[name]


class KubeletSource:
    """Each node's kubelet Summary API, read directly: one GET per node hosting watched pods.

    Reads ``https://<node address>:<kubelet port>/stats/summary`` as metrics-server does, with
    only `nodes/stats` get (and `nodes` get for the addresses), never the API server's node proxy.
    """

    name = "kubelet"

    def __init__(self, kube: Kube, kubelet: KubeletClient | None = None, nodes: NodeDirectory | None = None,
                 parallelism: int = 8) -> None:
        self.kube = kube
        self.kubelet = kubelet or KubeletClient(kube)
        self.nodes = nodes or NodeDirectory(kube)
        self.parallelism = parallelism
        self.skipped: collections.Counter[str] = collections.Counter()
        self._failing: dict[str, str] = {}  # node → last error, to log changes only

    def _summary(self, node: str) -> dict[str, Any]:
        try:
            host, port = self.nodes.endpoint(node)
        except NodeLookupError as exc:
            raise ValueError(str(exc)) from exc
        try:
            data: dict[str, Any] = self.kubelet.get_json(host, port, "/stats/summary")
        except ApiError as exc:
            if exc.status == 0:
                self.nodes.failed(node)
            raise
        return data

    def fetch(self, records: Sequence[PodRecord]) -> dict[str, Usage]:
        self.skipped = collections.Counter()
        wanted = {r.uid: r for r in records}
        nodes = sorted({r.node for r in records if r.node})
        out: dict[str, Usage] = {}
        self.nodes.forget_except(nodes)
        if not nodes:
            return out
        failures: list[str] = []
        with ThreadPoolExecutor(max_workers=min(self.parallelism, len(nodes))) as pool:
            results = list(pool.map(self._safe_summary, nodes))
        for node, (summary, error) in zip(nodes, results, strict=True):
            if error is not None:
                failures.append(f"{node}: {error}")
                continue
            pods = _mapping(summary).get("pods")
            for pod in pods if isinstance(pods, list) else ():
                if not isinstance(pod, dict):
                    continue
                record = wanted.get(str(_mapping(pod.get("podRef")).get("uid")))
                if record is None:
                    continue
                usage = _summary_usage(pod, self.name)
                if usage is None:
                    continue
                if _predates(record, usage.timestamp, usage.containers):
                    self.skipped[PREDATES_POD] += 1
                    continue
                out[record.uid] = usage
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
                            "logged again when it recovers)", node, error[:500])
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
    listed = pod.get("containers")
    for c in listed if isinstance(listed, list) else ():
        if not isinstance(c, dict):
            continue
        mem = _mapping(c.get("memory"))
        ws = mem.get("workingSetBytes")
        if c.get("name") and isinstance(ws, int):
            containers[c["name"]] = ws
            t = parse_time(mem.get("time"))
            if t is not None:
                times.append(t)
    pod_mem = _mapping(pod.get("memory"))
    pod_ws = pod_mem.get("workingSetBytes")
    if not times:
        # The pod-level time lags its own figure (a new pod's reads as the second it started while
        # its value is current), so it dates the sample only when no container has a time.
        pod_t = parse_time(pod_mem.get("time"))
        if pod_t is not None:
            times.append(pod_t)
    if not times or (not containers and not isinstance(pod_ws, int)):
        return None
    # The stalest container time, not the freshest: the sample has one time, and it must hold for
    # every container's figure, or a container whose stats stopped would pass as fresh.
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

    @property
    def skipped(self) -> collections.Counter[str]:
        """The current source's samples left out by its last fetch, by reason."""
        if self.current is self.metrics:
            return self.metrics.skipped
        if self.current is self.kubelet:
            return self.kubelet.skipped
        return collections.Counter()

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


def make_source(kind: str, kube: Kube, namespaces: Sequence[str] = (), label_selector: str = "", *,
                kubelet_ca_file: str | None = None, kubelet_insecure_tls: bool = False,
                kubelet_address_types: Sequence[str] = DEFAULT_ADDRESS_TYPES,
                kubelet_timeout: float = 10.0) -> UsageSource:
    """The source for ``--source``, with the ``--kubelet-*`` TLS and address settings (and how long
    a kubelet may take to answer)."""
    metrics = MetricsApiSource(kube, namespaces, label_selector)
    if kind not in ("metrics-api", "kubelet", "auto"):
        raise ValueError(f"unknown source {kind!r}")
    if kind == "metrics-api":
        return metrics
    if kubelet_insecure_tls:
        log.warning("kubelet source: --kubelet-insecure-tls: kubelets' serving certificates are NOT verified "
                    "(anyone who can intercept node traffic can feed memwatch false usage)")
    client = KubeletClient(kube, ca_file=kubelet_ca_file, insecure=kubelet_insecure_tls, timeout=kubelet_timeout)
    kubelet = KubeletSource(kube, client, NodeDirectory(kube, kubelet_address_types))
    if kind == "kubelet":
        return kubelet
    return AutoSource(kube, metrics, kubelet)
