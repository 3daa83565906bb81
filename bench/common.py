"""Shared pieces of the benchmark suite: result rows, the machine's details, the cluster, a
counting proxy that also serves a fake metrics.k8s.io, the bench pod farm, and controller
processes measured with psutil.

Requests are counted independently of memwatch's own ``Kube.requests``: every client under test
talks to :class:`CountingProxy` on 127.0.0.1, which forwards to the real kube-apiserver and counts
each request by verb and resource. The local cluster has no metrics-server, so the proxy answers
``metrics.k8s.io`` itself with real PodMetrics JSON shapes for the bench pods.
"""

from __future__ import annotations

import contextlib
import http.server
import importlib.metadata
import json
import os
import platform
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import psutil
import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

REPO = Path(__file__).resolve().parent.parent
#: hack/local-cluster.sh's run dir (the Makefile exports it under this name).
CLUSTER_ROOT = Path(os.environ.get("MEMWATCH_CLUSTER_ROOT") or "/var/lib/memwatch-cluster")
KUBECONFIG = os.environ.get("MEMWATCH_KUBECONFIG") or str(CLUSTER_ROOT / "kubeconfig")
AUDIT_LOG = os.environ.get("MEMWATCH_AUDIT_LOG") or str(CLUSTER_ROOT / "logs" / "audit.log")
LOCAL_CLUSTER = REPO / "hack" / "local-cluster.sh"

#: Every object the benchmarks create carries this label, and lives in a `bench-*` namespace.
PART_OF = {"app.kubernetes.io/part-of": "memwatch-bench"}
LABEL = "bench.memwatch.io/"
FAKE_NODES = tuple(f"bench-node-{i}" for i in range(4))
PAUSE_IMAGE = "localhost/memwatch-pause:3.4"
MiB = 1 << 20


# -- rows ------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the results table."""

    figure: str
    memwatch: str
    baseline: str
    ratio: str
    target: str
    met: str  # "yes", "**NO**", "—" (no target), or "**NOT RUN**"
    note: str = ""

    @classmethod
    def not_run(cls, figure: str, why: str) -> Row:
        why = " ".join(why.replace("|", "/").split())[:300]
        return cls(figure, f"**NOT RUN: {why}**", "—", "—", "—", "**NOT RUN**")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Row:
        met = d.get("met")
        met_s = met if isinstance(met, str) else ("yes" if met else ("**NO**" if met is not None else "—"))
        return cls(str(d.get("name", "?")), str(d.get("memwatch", "")), str(d.get("baseline", "")),
                   str(d.get("ratio", "")), str(d.get("target", "")), met_s, str(d.get("note", "")))


def met(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**NO**")


def table(rows: Sequence[Row]) -> str:
    head = "| figure | memwatch | baseline | ratio | target | met? |\n|---|---|---|---|---|---|\n"
    return head + "".join(
        f"| {r.figure} | {r.memwatch} | {r.baseline} | {r.ratio} | {r.target} | {r.met} |\n" for r in rows)


def ratio(a: float, b: float, digits: int = 2) -> str:
    """``a/b`` as ``0.05x``; memwatch divided by baseline (below 1: memwatch costs less)."""
    if b == 0:
        return "—"
    r = a / b
    if r < 0.01:
        return f"1/{b / a:,.0f}" if a else "0"
    return f"{r:.{digits}f}x" if r < 100 else f"{r:,.0f}x"


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 10 samples is the maximum)."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[k]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def mib(nbytes: float) -> str:
    return f"{nbytes / MiB:.0f} MiB"


def machine() -> dict[str, str]:
    """The details the results file records next to the table."""
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "CPU": cpu,
        "cores": f"{psutil.cpu_count(logical=True)} logical ({psutil.cpu_count(logical=False)} physical)",
        "memory": f"{psutil.virtual_memory().total / (1 << 30):.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "kopf": version("kopf"),
        "kubernetes (client)": version("kubernetes"),
        "memwatch": version("memwatch"),
    }


# -- the cluster -----------------------------------------------------------------------------------
class Api:
    """A small raw-JSON client for the benchmark's own set-up requests (never counted)."""

    def __init__(self, kubeconfig: str = KUBECONFIG, pool: int = 16) -> None:
        cfg = k8s_client.Configuration()
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
        cfg.connection_pool_maxsize = pool
        self.cfg = cfg
        self.client = k8s_client.ApiClient(cfg)
        self.pool = self.client.rest_client.pool_manager
        self.host = cfg.host.rstrip("/")
        self.auth: dict[str, str] = {}
        token = cfg.get_api_key_with_prefix("authorization")
        if token:
            self.auth["Authorization"] = token

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
                timeout: float = 60.0, content_type: str = "application/json",
                ok: Iterable[int] = ()) -> tuple[int, Any]:
        url = self.host + path
        if query:
            url += "?" + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in query.items())
        headers = {"Accept": "application/json", **self.auth}
        if body is not None:
            headers["Content-Type"] = content_type
        resp = self.pool.request(method, url, headers=headers, retries=False,
                                 body=None if body is None else json.dumps(body), timeout=timeout)
        data = json.loads(resp.data) if resp.data else None
        if resp.status >= 400 and resp.status not in ok:
            msg = data.get("message") if isinstance(data, dict) else resp.data[:200].decode("utf-8", "replace")
            raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {msg}")
        return resp.status, data

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query or None)[1]

    def count(self, path: str, **query: Any) -> int:
        """Items of a paged LIST."""
        n, cont = 0, ""
        while True:
            q = dict(query, limit=500, **({"continue": cont} if cont else {}))
            page = self.get(path, **q)
            n += len(page.get("items") or ())
            cont = (page.get("metadata") or {}).get("continue") or ""
            if not cont:
                return n


def watch_pods(api: Api, namespace: str, on_event: Callable[[dict[str, Any], float], None],
               stop: threading.Event) -> None:
    """Stream a namespace's pod watch events to ``on_event(event, arrival)`` until ``stop`` is set
    (LIST for a resourceVersion, then WATCH; again after any error or a closed stream)."""
    while not stop.is_set():
        with contextlib.suppress(Exception):
            rv = api.get(f"/api/v1/namespaces/{namespace}/pods")["metadata"]["resourceVersion"]
            url = (f"{api.host}/api/v1/namespaces/{namespace}/pods?watch=true"
                   f"&resourceVersion={rv}&timeoutSeconds=600")
            resp = api.pool.request("GET", url, headers={"Accept": "application/json", **api.auth},
                                    preload_content=False, retries=False, timeout=None)
            buf = b""
            for chunk in resp.stream(4096):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        on_event(json.loads(line), time.time())
                if stop.is_set():
                    break
            resp.release_conn()
        stop.wait(0.2)


def cluster_epoch() -> tuple[float, str]:
    """Changes when the shared local cluster is re-created (others bring it down and up): a
    measurement that spans a change is worth nothing."""
    pid = Path(KUBECONFIG).parent / "pids" / "kube-apiserver.pid"
    try:
        return (Path(KUBECONFIG).stat().st_mtime, pid.read_text().strip())
    except OSError:
        return (0.0, "")


def cluster_problem(api_needed: bool = True, node_needed: bool = False) -> str | None:
    """Why the real local cluster cannot be used now, or None when it can."""
    if os.geteuid() != 0:
        return "not root (the local cluster runs as root)"
    if not Path(KUBECONFIG).exists():
        return f"no cluster: {KUBECONFIG} does not exist (run `bash hack/local-cluster.sh up`)"
    try:
        api = Api()
        api.request("GET", "/version", timeout=5)
        if node_needed:
            node = api.get("/api/v1/nodes/node1")
            ready = [c for c in (node.get("status") or {}).get("conditions") or () if c.get("type") == "Ready"]
            if not ready or ready[0].get("status") != "True":
                return "no cluster: node1 is not Ready"
    except Exception as exc:
        return f"no cluster: {str(exc)[:150]}"
    return None


def ensure_namespace(api: Api, name: str) -> None:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": PART_OF}}
    api.request("POST", "/api/v1/namespaces", body, ok=(409,))


def delete_namespace(api: Api, name: str) -> None:
    """Force-delete the namespace's pods (those on fake nodes would wait for a kubelet forever), then it."""
    ns = quote(name)
    with contextlib.suppress(RuntimeError):
        api.request("DELETE", f"/api/v1/namespaces/{ns}/pods", {"gracePeriodSeconds": 0}, ok=(404,), timeout=600)
    api.request("DELETE", f"/api/v1/namespaces/{ns}", ok=(404, 409))


def ensure_fake_nodes(api: Api) -> None:
    """Node objects no kubelet backs: bench pods bound to them count as on a node (so PodGC leaves
    them alone), and nothing else is scheduled there (unschedulable, tainted)."""
    for name in FAKE_NODES:
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {**PART_OF, "kubernetes.io/hostname": name}},
                "spec": {"unschedulable": True,
                         "taints": [{"key": LABEL + "fake", "value": "true", "effect": "NoSchedule"}]}}
        api.request("POST", "/api/v1/nodes", body, ok=(409,))


def delete_fake_nodes(api: Api) -> None:
    for name in FAKE_NODES:
        api.request("DELETE", f"/api/v1/nodes/{name}", ok=(404,))


def bench_pod(name: str, labels: dict[str, str], annotations: dict[str, str] | None,
              node: str | None) -> dict[str, Any]:
    """A pod that never runs: bound to a fake node, or left to a scheduler that does not exist."""
    spec: dict[str, Any] = {
        "containers": [{"name": "app", "image": PAUSE_IMAGE,
                        "resources": {"limits": {"memory": "256Mi"}, "requests": {"memory": "16Mi"}}}],
        "tolerations": [{"operator": "Exists"}],  # fake nodes go NotReady: their pods must stay
        "terminationGracePeriodSeconds": 0,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
    }
    if node:
        spec["nodeName"] = node
    else:
        spec["schedulerName"] = "bench-no-scheduler"
    meta: dict[str, Any] = {"name": name, "labels": {**PART_OF, **labels}}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


class PodFarm:
    """The bench pods, created idempotently: ``ensure(n)`` makes pods 0..n-1 exist.

    * ``mixed`` (namespace bench-mixed): every 10th pod annotated and bound to a fake node, the
      rest un-annotated and never scheduled. For controller memory and start-up (row 3).
    * ``annotated`` (namespace bench-annotated): every pod annotated and bound to a fake node, with
      ``bench.memwatch.io/upto-N`` labels so a label selector picks the first 10/100/1k/10k (row 2, 4).
    """

    NAMESPACES = {"mixed": "bench-mixed", "annotated": "bench-annotated"}
    ANNOTATIONS = {"memwatch.io/limit": "64Mi"}
    TIERS = (10, 100, 1000, 10000)

    def __init__(self, api: Api) -> None:
        self.api = api
        self.have: dict[str, int] = {}

    def namespace(self, kind: str) -> str:
        return self.NAMESPACES[kind]

    def annotated(self, kind: str, i: int) -> bool:
        return kind == "annotated" or i % 10 == 0

    def name(self, kind: str, i: int) -> str:
        return f"{kind[0]}-{i:05d}"

    def pod(self, kind: str, i: int) -> dict[str, Any]:
        labels = {LABEL + "set": kind}
        if kind == "annotated":
            labels.update({f"{LABEL}upto-{t}": "yes" for t in self.TIERS if i < t})
        if self.annotated(kind, i):
            node = FAKE_NODES[(i // (1 if kind == "annotated" else 10)) % len(FAKE_NODES)]
            return bench_pod(self.name(kind, i), labels, self.ANNOTATIONS, node)
        return bench_pod(self.name(kind, i), labels, None, None)

    def watched(self, kind: str, n: int) -> list[tuple[str, str]]:
        """(namespace, name) of the annotated pods among the first ``n``."""
        ns = self.namespace(kind)
        return [(ns, self.name(kind, i)) for i in range(n) if self.annotated(kind, i)]

    def ensure(self, kind: str, n: int, log: Callable[[str], None] = print) -> float:
        """Create pods 0..n-1 of ``kind`` that do not exist yet. Returns the seconds it took."""
        t0 = time.monotonic()
        ns = self.namespace(kind)
        if kind not in self.have:
            ensure_namespace(self.api, ns)
            ensure_fake_nodes(self.api)
            self.have[kind] = self.api.count(f"/api/v1/namespaces/{ns}/pods")
        have = self.have[kind]
        if have >= n:
            return 0.0
        existing = set()
        if have:
            existing = {p["metadata"]["name"] for p in self._items(ns)}
        todo = [i for i in range(n) if self.name(kind, i) not in existing]
        log(f"  creating {len(todo)} {kind} pods in {ns} ...")

        def create(i: int) -> None:
            self.api.request("POST", f"/api/v1/namespaces/{ns}/pods", self.pod(kind, i), ok=(409,))

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(create, todo))
        self.have[kind] = max(have, n)
        took = time.monotonic() - t0
        log(f"  created {len(todo)} pods in {took:.1f}s ({len(todo) / max(took, 1e-9):.0f}/s)")
        return took

    def _items(self, ns: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cont = ""
        while True:
            page = self.api.get(f"/api/v1/namespaces/{ns}/pods", limit=500, **({"continue": cont} if cont else {}))
            out += page.get("items") or ()
            cont = (page.get("metadata") or {}).get("continue") or ""
            if not cont:
                return out

    def cleanup(self) -> None:
        for ns in self.NAMESPACES.values():
            delete_namespace(self.api, ns)
        delete_fake_nodes(self.api)
        self.have.clear()


# -- the counting proxy ----------------------------------------------------------------------------
def classify(method: str, path: str, query: dict[str, list[str]]) -> tuple[str, str]:
    """(verb, resource) in Kubernetes' own terms: list/watch/get/create/patch/delete, pods, …"""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["apis"] and len(parts) <= 3:
        return ("get", "discovery")
    if parts[:1] == ["api"] and len(parts) <= 2:
        return ("get", "discovery")
    core = parts[2:] if parts[:1] == ["api"] else parts[3:]
    resource, name, sub = "", "", ""
    if core[:1] == ["namespaces"] and len(core) >= 3:
        core = core[2:]
    if core:
        resource = core[0]
        name = core[1] if len(core) > 1 else ""
        sub = "/".join(core[2:3]) if len(core) > 2 else ""
    if "metrics.k8s.io" in parts:
        resource = "podmetrics"
    full = resource + (f"/{sub}" if sub else "")
    m = method.upper()
    if m == "GET":
        watch = query.get("watch", ["false"])[0] in ("true", "1")
        verb = "watch" if watch else ("get" if name else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(m, m.lower())
        if m == "DELETE" and not name:
            verb = "deletecollection"
    return (verb, full or "?")


def is_pod_write(verb: str, resource: str) -> bool:
    return resource.startswith("pods") and verb not in ("get", "list", "watch")


class FakeMetrics:
    """PodMetrics for a set of pods, as metrics-server serves them: a cached body per pod set,
    with the timestamp put in per request. The timestamp moves on once per ``resolution`` seconds,
    as metrics-server's samples do (15 s: ``--metric-resolution`` in its published manifests)."""

    def __init__(self, resolution: float = 15.0) -> None:
        self._pods: list[tuple[str, str]] = []
        self._body = b""
        self._lock = threading.Lock()
        self.usage = "16388Ki"  # as metrics-server writes it; under the bench limit (64Mi): no action, no writes
        self.resolution = resolution

    def set_pods(self, pods: Sequence[tuple[str, str]]) -> None:
        items = [self._item(ns, name) for ns, name in pods]
        body = json.dumps({"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1",
                           "metadata": {"selfLink": "/apis/metrics.k8s.io/v1beta1/pods"}, "items": items})
        with self._lock:
            self._pods = list(pods)
            self._body = body.encode()

    def _item(self, ns: str, name: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": ns, "creationTimestamp": "__TS__"},
                "timestamp": "__TS__", "window": "30s",
                "containers": [{"name": "app", "usage": {"cpu": "1m", "memory": self.usage}}]}

    @staticmethod
    def _now() -> bytes:
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ").encode()

    def _sampled(self) -> bytes:
        """When metrics-server last scraped: now, floored to the resolution."""
        t = time.time() // self.resolution * self.resolution
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ").encode()

    def list_body(self, stamp: bytes | None = None) -> bytes:
        """The LIST body, every item stamped ``stamp`` (default: the last scrape, see ``resolution``)."""
        with self._lock:
            return self._body.replace(b"__TS__", stamp or self._sampled())

    def get_body(self, ns: str, name: str) -> bytes | None:
        item = self._item(ns, name)
        item.update(kind="PodMetrics", apiVersion="metrics.k8s.io/v1beta1")
        return json.dumps(item).encode().replace(b"__TS__", self._now())


DISCOVERY = json.dumps({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "metrics.k8s.io/v1beta1",
                        "resources": [{"name": "pods", "singularName": "", "namespaced": True, "kind": "PodMetrics",
                                       "verbs": ["get", "list"]}]}).encode()


class CountingProxy:
    """An HTTP proxy on 127.0.0.1 in front of the real kube-apiserver that counts every request.

    Clients get a kubeconfig pointing at it (:meth:`kubeconfig`); it forwards with the admin
    credentials, adding ``memwatch-bench/<tag>`` to the User-Agent so the apiserver's audit log
    can confirm the count. ``metrics.k8s.io`` is answered here from :class:`FakeMetrics`.
    """

    def __init__(self, api: Api | None, tag: str, metrics: FakeMetrics | None = None) -> None:
        self.api = api
        self.tag = tag
        self.metrics = metrics or FakeMetrics()
        self.counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self.user_agent = f"memwatch-bench/{tag}"
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name=f"proxy-{tag}", daemon=True)
        self._thread.start()
        self._dir = tempfile.mkdtemp(prefix=f"memwatch-bench-{tag}-")

    def kubeconfig(self) -> str:
        path = os.path.join(self._dir, "kubeconfig")
        cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "bench",
               "clusters": [{"name": "bench", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
               "users": [{"name": "bench", "user": {"token": "bench-proxy"}}],
               "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}]}
        Path(path).write_text(json.dumps(cfg))
        return path

    def snapshot(self) -> Counter[tuple[str, str]]:
        with self._lock:
            return Counter(self.counts)

    def _count(self, key: tuple[str, str]) -> None:
        with self._lock:
            self.counts[key] += 1

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        split = urlsplit(h.path)
        query = parse_qs(split.query)
        method = h.command
        key = classify(method, split.path, query)
        self._count(key)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        if "/apis/metrics.k8s.io" in split.path:
            self._metrics(h, split.path)
            return
        if self.api is None:  # metrics only (in-process benchmarks without a cluster)
            self._reply(h, 502, b'{"kind":"Status","code":502,"message":"no upstream"}')
            return
        headers = {k: v for k, v in h.headers.items()
                   if k.lower() in ("accept", "content-type", "accept-encoding")}
        headers.update(self.api.auth)
        headers["User-Agent"] = f"{h.headers.get('User-Agent', '')} {self.user_agent}".strip()
        watch = key[0] == "watch"
        try:
            up = self.api.pool.request(method, self.api.host + h.path, headers=headers, body=body,
                                       preload_content=False, retries=False,
                                       timeout=urllib3.Timeout(connect=10, read=None if watch else 120))
        except Exception as exc:
            self._reply(h, 502, json.dumps({"kind": "Status", "code": 502, "message": str(exc)}).encode())
            return
        try:
            if not watch:
                self._reply(h, up.status, up.read(decode_content=False), up.headers.get("Content-Type"),
                            up.headers.get("Content-Encoding"))
                return
            h.send_response(up.status)
            h.send_header("Content-Type", up.headers.get("Content-Type", "application/json"))
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            for chunk in up.stream(64 * 1024, decode_content=True):
                if chunk:
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    h.wfile.flush()
            h.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, urllib3.exceptions.HTTPError):
            h.close_connection = True
        finally:
            up.release_conn()

    def _metrics(self, h: http.server.BaseHTTPRequestHandler, path: str) -> None:
        parts = [p for p in path.split("/") if p]
        if len(parts) == 3:  # /apis/metrics.k8s.io/v1beta1: discovery
            self._reply(h, 200, DISCOVERY)
        elif parts[-1] == "pods":
            self._reply(h, 200, self.metrics.list_body())
        elif len(parts) == 7 and parts[-2] == "pods":
            self._reply(h, 200, self.metrics.get_body(parts[4], parts[6]) or b"{}")
        else:
            self._reply(h, 404, b'{"kind":"Status","code":404}')

    @staticmethod
    def _reply(h: http.server.BaseHTTPRequestHandler, status: int, data: bytes,
               content_type: str | None = "application/json", encoding: str | None = None) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", content_type or "application/json")
            if encoding:
                h.send_header("Content-Encoding", encoding)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self._dir, ignore_errors=True)


class FakeKubelets:
    """One HTTPS server on 127.0.0.1 per fake node, standing in for its kubelet: counts the Summary
    GETs memwatch's kubelet source sends straight to the kubelets (they never pass the API server,
    so neither the counting proxy nor the audit log sees them) and answers an empty Summary.

    :meth:`point_nodes` writes each fake Node's status as a kubelet would (InternalIP 127.0.0.1, its
    port in ``daemonEndpoints``), so memwatch finds them as it finds real kubelets. The certificate
    is self-signed: memwatch runs with ``--kubelet-insecure-tls`` against them.
    """

    def __init__(self, nodes: Sequence[str] = FAKE_NODES) -> None:
        self._dir = tempfile.mkdtemp(prefix="memwatch-bench-kubelets-")
        cert, key = os.path.join(self._dir, "cert.pem"), os.path.join(self._dir, "key.pem")
        made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                               "-subj", "/CN=bench-kubelet", "-keyout", key, "-out", cert],
                              capture_output=True, text=True)
        if made.returncode != 0:
            raise RuntimeError(f"openssl could not make the fake kubelets' certificate: {made.stderr.strip()}")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.counts: Counter[tuple[str, str]] = Counter()  # (node, path)
        self._lock = threading.Lock()
        self.servers: dict[str, http.server.ThreadingHTTPServer] = {}
        fake = self
        for node in nodes:
            class Handler(http.server.BaseHTTPRequestHandler):
                protocol_version = "HTTP/1.1"
                name = node

                def log_message(self, *args: Any) -> None:
                    pass

                def do_GET(self) -> None:
                    with fake._lock:
                        fake.counts[(self.name, urlsplit(self.path).path)] += 1
                    data = json.dumps({"node": {"nodeName": self.name}, "pods": []}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            server.daemon_threads = True
            server.socket = context.wrap_socket(server.socket, server_side=True)
            threading.Thread(target=server.serve_forever, name=f"kubelet-{node}", daemon=True).start()
            self.servers[node] = server

    def point_nodes(self, api: Api) -> None:
        for node, server in self.servers.items():
            api.request("PATCH", f"/api/v1/nodes/{node}/status",
                        {"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                                    "daemonEndpoints": {"kubeletEndpoint": {"Port": server.server_address[1]}}}},
                        content_type="application/merge-patch+json")

    def summaries(self) -> int:
        with self._lock:
            return sum(c for (_, path), c in self.counts.items() if path == "/stats/summary")

    def close(self) -> None:
        for server in self.servers.values():
            server.shutdown()
            server.server_close()
        shutil.rmtree(self._dir, ignore_errors=True)


class AuditTail:
    """Counts what the apiserver's audit log records from one proxy tag, from now on: an
    independent check of the proxy's count. ``count()`` is None when there is no audit log."""

    def __init__(self, user_agent_tag: str) -> None:
        self.tag = user_agent_tag.encode()
        self.path = Path(AUDIT_LOG)
        self.offset = self.path.stat().st_size if self.path.exists() else -1

    def count(self) -> Counter[tuple[str, str]] | None:
        if self.offset < 0 or not self.path.exists():
            return None
        ids: dict[str, tuple[str, str]] = {}
        with self.path.open("rb") as f:
            f.seek(self.offset)
            for raw in f:
                if self.tag not in raw:
                    continue
                try:
                    ev = json.loads(raw)
                except ValueError:
                    continue
                ref = ev.get("objectRef") or {}
                res = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
                ids[ev.get("auditID", "")] = (ev.get("verb", "?"), res)  # a watch logs twice: one ID
        return Counter(ids.values())


# -- processes under test --------------------------------------------------------------------------
@dataclass
class Measured:
    """A child process, its log lines (with arrival times) and RSS samples."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0  # epoch
    lines: list[tuple[float, str]] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> Measured:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MEMWATCH_PLAIN_LOGS": "1", **self.env}
        for k in [k for k in env if k.startswith("MEMWATCH_") and k not in ("MEMWATCH_PLAIN_LOGS",)]:
            if k not in self.env:
                env.pop(k)
        self.started = time.time()
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                     cwd=REPO)
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._sample, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append((time.time(), raw.decode("utf-8", "replace").rstrip()))
                self._cond.notify_all()

    def _sample(self) -> None:
        assert self.proc is not None
        try:
            p = psutil.Process(self.proc.pid)
            while not self._stop.is_set() and self.proc.poll() is None:
                self.rss.append((time.time(), p.memory_info().rss))
                self._stop.wait(0.05)
        except psutil.Error:
            pass

    def wait_for(self, pattern: str, timeout: float) -> tuple[float, re.Match[str]]:
        """Wait for a log line matching ``pattern``; returns its arrival time and match."""
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        seen = 0
        with self._cond:
            while True:
                for t, line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return t, m
                seen = len(self.lines)
                left = deadline - time.time()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None and seen == len(self.lines)):
                    tail = "\n".join(line for _, line in self.lines[-15:])
                    raise TimeoutError(f"no line matching {pattern!r} after {timeout:.0f}s "
                                       f"(exit={self.proc.poll() if self.proc else None}); last lines:\n{tail}")
                self._cond.wait(min(left, 0.5))

    def matches(self, pattern: str) -> list[tuple[float, re.Match[str]]]:
        rx = re.compile(pattern)
        with self._cond:
            return [(t, m) for t, line in self.lines if (m := rx.search(line))]

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        t = psutil.Process(self.proc.pid).cpu_times()
        return float(t.user + t.system)

    def hwm(self) -> int:
        """Peak RSS as the kernel saw it (VmHWM), in bytes."""
        assert self.proc is not None
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return max((r for _, r in self.rss), default=0)

    def rss_now(self) -> int:
        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def stop(self) -> None:
        self._stop.set()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> Measured:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def memwatch_run(kubeconfig: str, *args: str, metrics_port: int | None = None) -> Measured:
    """`memwatch run` as a child process, as users run it (not started yet)."""
    argv = [sys.executable, "-m", "memwatch", "run", "--kubeconfig", kubeconfig, "--liveness", "",
            "--metrics-port", str(metrics_port or 0), *args]
    return Measured(argv)


def scrape(port: int, metric: str) -> float:
    """One sample's value from a Prometheus /metrics endpoint (sum over labels)."""
    resp = urllib3.request("GET", f"http://127.0.0.1:{port}/metrics", timeout=5, retries=False)
    total = 0.0
    for line in resp.data.decode().splitlines():
        if line.startswith(metric + " ") or line.startswith(metric + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_sweeps(port: int, n: float, timeout: float) -> float:
    """Wait until the controller has completed ``n`` sweeps; returns the count seen."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(Exception):
            got = scrape(port, "memwatch_sweep_duration_seconds_count")
            if got >= n:
                return got
        time.sleep(0.02)
    raise TimeoutError(f"fewer than {n} sweeps after {timeout:.0f}s")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


@dataclass
class Context:
    """What every benchmark gets from bench/run.py."""

    quick: bool
    log: Callable[[str], None] = print
    #: Data for bench/pictures.py, by picture (None: no pictures are drawn, collect nothing).
    pictures: dict[str, Any] | None = None
    _api: Api | None = None
    _farm: PodFarm | None = None

    def problem(self, node_needed: bool = False) -> str | None:
        return cluster_problem(node_needed=node_needed)

    @property
    def api(self) -> Api:
        if self._api is None:
            self._api = Api()
        return self._api

    @property
    def farm(self) -> PodFarm:
        if self._farm is None:
            self._farm = PodFarm(self.api)
        return self._farm
