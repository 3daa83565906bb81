"""A fake Kubernetes API server over real HTTP on 127.0.0.1, serving real-shaped JSON.

It serves what memwatch reads and writes: discovery for ``metrics.k8s.io/v1beta1`` and
``policy/v1``, PodMetricsList (cluster-wide and per namespace), the kubelet Summary through the
node proxy, paged pod LISTs with ``continue`` tokens, pod WATCH streams, Events, Namespaces,
evictions and deletions. Every request is logged so tests can count them and check what was
written; ``refusals`` scripts an API server that says no (RBAC, a bad selector).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from kubernetes import client as k8s_client

from memwatch.kube import Kube

METRICS = "/apis/metrics.k8s.io/v1beta1"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def pod_metrics(namespace: str, name: str, timestamp: str, containers: dict[str, str],
                window: str = "15s") -> dict[str, Any]:
    """One PodMetrics item as metrics-server returns it."""
    return {"metadata": {"name": name, "namespace": namespace, "creationTimestamp": timestamp,
                         "labels": {"app": name}},
            "timestamp": timestamp, "window": window,
            "containers": [{"name": c, "usage": {"cpu": "1m", "memory": mem}} for c, mem in containers.items()]}


def summary_pod(namespace: str, name: str, uid: str, timestamp: str, containers: dict[str, int],
                pod_bytes: int | None = None) -> dict[str, Any]:
    """One pods[] entry of a kubelet Summary (stats/summary)."""
    entry: dict[str, Any] = {
        "podRef": {"name": name, "namespace": namespace, "uid": uid},
        "startTime": timestamp,
        "containers": [{"name": c, "startTime": timestamp,
                        "memory": {"time": timestamp, "workingSetBytes": ws, "usageBytes": ws + 4096,
                                   "rssBytes": ws // 2, "pageFaults": 1, "majorPageFaults": 0}}
                       for c, ws in containers.items()],
    }
    if pod_bytes is not None:
        entry["memory"] = {"time": timestamp, "workingSetBytes": pod_bytes, "usageBytes": pod_bytes}
    return entry


def summary(node: str, timestamp: str, pods: list[dict[str, Any]]) -> dict[str, Any]:
    return {"node": {"nodeName": node, "startTime": timestamp,
                     "memory": {"time": timestamp, "workingSetBytes": 1 << 30}},
            "pods": pods}


def write_kubeconfig(directory: Path, server: str, namespace: str | None = "shop", name: str = "kubeconfig",
                     token: str = "jane-token") -> Path:
    """A person's kubeconfig for ``server`` (a user with a bearer token; the context's namespace)."""
    context: dict[str, Any] = {"cluster": "fake", "user": "jane"}
    if namespace:
        context["namespace"] = namespace
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
              "clusters": [{"name": "fake", "cluster": {"server": server}}],
              "users": [{"name": "jane", "user": {"token": token}}],
              "contexts": [{"name": "fake", "context": context}]}
    path = directory / name
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


class FakeApiServer:
    """The fake API server. Mutate its public fields to script responses."""

    def __init__(self) -> None:
        self.log: list[Request] = []
        self.lock = threading.Lock()
        self.metrics_served = True
        self.policy_v1_served = True  # False: a 1.20/1.21 server (Eviction only in policy/v1beta1)
        self.pod_metrics: list[dict[str, Any]] = []
        self.pod_metrics_body: str | None = None  # the LIST's raw answer instead (malformed JSON)
        self.summaries: dict[str, Any] = {}  # node → Summary dict (or raw str for malformed JSON)
        self.eviction: dict[str, deque[int]] = {}  # pod name → statuses; the last repeats
        self.pods: list[dict[str, Any]] = []
        self.resource_version = "1000"
        self.watch_scripts: deque[list[Any]] = deque()  # each: events (dict) or pauses (float)
        self.idle_watch = 0.05
        self.events: list[dict[str, Any]] = []
        self.namespaces: set[str] = set()  # served besides those of ``pods``
        #: (method, path regex, status, message): requests the server refuses, first match wins.
        self.refusals: list[tuple[str, str, int, str]] = []
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                fake._dispatch(self)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.02,), name="fake-api", daemon=True).start()

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def kube(self) -> Kube:
        """A real memwatch Kube pointed at this server."""
        cfg = k8s_client.Configuration()
        cfg.host = self.url
        return Kube(k8s_client.ApiClient(cfg), timeout=10)

    # -- what happened ---------------------------------------------------------------------------
    def requests(self, method: str | None = None, path: str | None = None) -> list[Request]:
        with self.lock:
            return [r for r in self.log if (method is None or r.method == method)
                    and (path is None or re.fullmatch(path, r.path))]

    def writes(self) -> list[Request]:
        return [r for r in self.requests() if r.method != "GET"]

    def clear(self) -> None:
        with self.lock:
            self.log.clear()

    # -- routing ---------------------------------------------------------------------------------
    def _dispatch(self, h: BaseHTTPRequestHandler) -> None:
        split = urlsplit(h.path)
        path = unquote(split.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        with self.lock:
            self.log.append(Request(h.command, path, query, body))
        status, payload = self._route(h, h.command, path, query, body)
        if status == 0:
            return  # streamed already
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _route(self, h: BaseHTTPRequestHandler, method: str, path: str, query: dict[str, str],
               body: Any) -> tuple[int, Any]:
        not_found = (404, status_body(404, "NotFound", f"the server could not find {path}"))
        for verb, pattern, code, message in self.refusals:
            if verb == method and re.fullmatch(pattern, path):
                reason = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden"}.get(code, "InternalError")
                return code, status_body(code, reason, message)
        if method == "GET":
            if path == METRICS:
                if not self.metrics_served:
                    return not_found
                return 200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "metrics.k8s.io/v1beta1",
                             "resources": [{"name": "pods", "namespaced": True, "kind": "PodMetrics",
                                            "verbs": ["get", "list"]}]}
            m = re.fullmatch(METRICS + r"(?:/namespaces/([^/]+))?/pods", path)
            if m:
                if not self.metrics_served:
                    return not_found
                if self.pod_metrics_body is not None:
                    return 200, self.pod_metrics_body
                items = [i for i in self.pod_metrics if m.group(1) in (None, i["metadata"].get("namespace"))]
                return 200, {"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1",
                             "metadata": {}, "items": items}
            if path == "/apis/policy/v1":
                if not self.policy_v1_served:
                    return not_found
                return 200, {"kind": "APIResourceList", "groupVersion": "policy/v1", "resources": []}
            m = re.fullmatch(r"/api/v1/nodes/([^/]+)/proxy/stats/summary", path)
            if m:
                if m.group(1) not in self.summaries:
                    return 404, status_body(404, "NotFound", f'nodes "{m.group(1)}" not found')
                return 200, self.summaries[m.group(1)]
            m = re.fullmatch(r"/api/v1(?:/namespaces/([^/]+))?/pods", path)
            if m:
                if query.get("watch") == "true":
                    self._stream_watch(h)
                    return 0, None
                return 200, self._page(m.group(1), query)
            m = re.fullmatch(r"/api/v1/namespaces/([^/]+)", path)
            if m:
                known = self.namespaces | {p["metadata"]["namespace"] for p in self.pods}
                if m.group(1) not in known:
                    return 404, status_body(404, "NotFound", f'namespaces "{m.group(1)}" not found')
                return 200, {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": m.group(1)},
                             "status": {"phase": "Active"}}
            m = re.fullmatch(r"/api/v1(?:/namespaces/([^/]+))?/events", path)
            if m:
                items = [e for e in self.events if m.group(1) in (None, e["metadata"]["namespace"])]
                return 200, {"kind": "EventList", "apiVersion": "v1",
                             "metadata": {"resourceVersion": self.resource_version}, "items": items}
            return not_found
        if method == "POST":
            m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/eviction", path)
            if m:
                queue = self.eviction.get(m.group(2))
                code = (queue.popleft() if len(queue) > 1 else queue[0]) if queue else 201
                if code == 429:
                    return 429, status_body(429, "TooManyRequests",
                                            "Cannot evict pod as it would violate the pod's disruption budget.")
                if code >= 400:
                    return code, status_body(code, "InternalError", f"eviction failed with {code}")
                return code, {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": code}
            m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/events", path)
            if m:
                with self.lock:
                    self.events.append(body)
                return 201, body
            return not_found
        if method == "DELETE":
            m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)", path)
            if m:
                return 200, {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": m.group(2)}}
        return (405, status_body(405, "MethodNotAllowed", f"{method} {path}"))

    def _page(self, namespace: str | None, query: dict[str, str]) -> dict[str, Any]:
        pods = [p for p in self.pods if namespace in (None, p["metadata"]["namespace"])]
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or len(pods) or 1)
        end = start + limit
        meta: dict[str, Any] = {"resourceVersion": self.resource_version}
        if end < len(pods):
            meta["continue"] = str(end)
        return {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": pods[start:end]}

    def _stream_watch(self, h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.end_headers()  # HTTP/1.0, no length: the stream ends when the connection closes
        script = self.watch_scripts.popleft() if self.watch_scripts else [self.idle_watch]
        for item in script:
            if isinstance(item, (int, float)):
                time.sleep(item)
                continue
            h.wfile.write(json.dumps(item).encode() + b"\n")
            h.wfile.flush()
