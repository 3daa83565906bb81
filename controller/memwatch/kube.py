"""The one module that talks to the Kubernetes API.

Everything goes through :class:`Kube`: raw JSON in and out (typed models cost ~20x the time and
memory on large lists), paged LISTs, WATCH streams with bookmarks, and the few writes memwatch
makes: evictions, deletions, Events and its leader Lease. Only :mod:`memwatch.enforcer` calls the
pod writes; an architecture test checks that no other module does. :class:`KubeletClient` reads
nodes' kubelets directly (the kubelet usage source), with the same credentials.

Every request is counted by (verb, resource) so tests and benchmarks can prove that requests per
sweep do not grow with the number of pods.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import ssl
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

log = logging.getLogger("memwatch.kube")

try:  # a C decoder: a 10,000-pod PodMetrics list (2.3 MB) decodes in ~12 ms instead of ~70 ms
    import orjson

    def loads(data: bytes | str) -> Any:
        """Decode JSON as :func:`json.loads` does (same values, same errors), only faster: what orjson
        refuses (NaN, Infinity) is decoded by :mod:`json` instead. One difference is left: orjson
        reads an integer outside 64 bits as a float; the API server and the kubelet, whose integers
        are Go's, never write one (tests/unit/test_properties.py holds the rest to json's results)."""
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return json.loads(data)
except ImportError:  # pragma: no cover - orjson is a dependency; an install without it still works
    def loads(data: bytes | str) -> Any:
        return json.loads(data)


class ApiError(Exception):
    """A failed API request, with the HTTP status (0 when the server could not be reached)."""

    def __init__(self, status: int, reason: str, body: str = "", retry_after: float | None = None) -> None:
        self.status, self.reason, self.body, self.retry_after = status, reason, body, retry_after
        detail = body
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            decoded = json.loads(body)
            detail = str(decoded.get("message", body))
            # A PodDisruptionBudget refusal names itself in its causes; keep them in the message.
            causes = ((decoded.get("details") or {}).get("causes") or [])
            kinds = sorted({str(c.get("reason") or c.get("type")) for c in causes if isinstance(c, dict)})
            if kinds:
                detail += f" (causes: {', '.join(kinds)})"
        super().__init__(f"HTTP {status} {reason}: {detail}".strip()[:500])


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (API Priority and Fairness sends whole seconds)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


class Gone(ApiError):
    """410: a watch's resourceVersion is too old; LIST again."""


class TooLargeResourceVersion(Gone):
    """The server has not seen the watch's resourceVersion yet (a restored or lagging etcd, another
    API server): retrying the same version never works; LIST again (client-go's reflector does)."""


def _is_too_large_rv(status: int, message: str) -> bool:
    return status in (504, 500) and "too large resource version" in message.lower()


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Outcome of an eviction or deletion."""

    ok: bool
    status: int
    message: str = ""
    retry_after: float | None = None  # seconds, from a Retry-After header

    @property
    def blocked(self) -> bool:
        """A PodDisruptionBudget refused the eviction (a 429 that says so)."""
        text = self.message.lower()
        return self.status == 429 and ("disruption budget" in text or "disruptionbudget" in text)

    @property
    def throttled(self) -> bool:
        """Any other 429: API Priority and Fairness (or a proxy) asks to come back later."""
        return self.status == 429 and not self.blocked

    @property
    def gone(self) -> bool:
        """The pod no longer exists, or a new pod now has its name (the UID precondition failed)."""
        return self.status == 404 or (self.status == 409 and "precondition" in self.message.lower())


def load_client(kubeconfig: str | None = None, context: str | None = None) -> k8s_client.ApiClient:
    """An ApiClient from an explicit kubeconfig, else in-cluster config, else the default kubeconfig."""
    configuration = k8s_client.Configuration()
    if kubeconfig:
        k8s_config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    else:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except k8s_config.ConfigException:
            k8s_config.load_kube_config(context=context, client_configuration=configuration)
    return k8s_client.ApiClient(configuration)


#: Where a Pod finds its own namespace (the in-cluster config's ServiceAccount).
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class ConfigError(ValueError):
    """No usable client configuration (no kubeconfig, an unreadable one, an unknown context)."""


def load_user_client(kubeconfig: str | None = None, context: str | None = None,
                     env: Mapping[str, str] | None = None) -> tuple[k8s_client.ApiClient, str]:
    """The client and default namespace of a command a person runs (``memwatch status``), found as
    kubectl finds them: ``kubeconfig``, else ``$KUBECONFIG`` (a ':'-separated list), else
    ``~/.kube/config``, else the in-cluster config. The namespace is the context's (``default`` when
    it names none), or in a pod its ServiceAccount's. Raises :class:`ConfigError` saying what is wrong.

    The controller's :func:`load_client` prefers the in-cluster config instead: it runs in a pod.
    """
    env = os.environ if env is None else env
    path = kubeconfig or env.get("KUBECONFIG") or ""
    if not path and os.path.exists(os.path.expanduser("~/.kube/config")):
        path = "~/.kube/config"
    configuration = k8s_client.Configuration()
    if path:
        if not any(os.path.exists(os.path.expanduser(p)) for p in path.split(os.pathsep) if p):
            raise ConfigError(f"kubeconfig {path}: no such file")
        try:
            k8s_config.load_kube_config(config_file=path, context=context, client_configuration=configuration)
            contexts, current = k8s_config.list_kube_config_contexts(path)
        except Exception as exc:  # a person's file: whatever is wrong with it is a config error, said in one line
            raise ConfigError(f"kubeconfig {path}: {' '.join(str(exc).split()) or type(exc).__name__}") from exc
        if context:
            current = next((c for c in contexts if isinstance(c, dict) and c.get("name") == context), current)
        namespace = ((current or {}).get("context") or {}).get("namespace") or "default"
        return k8s_client.ApiClient(configuration), str(namespace)
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        raise ConfigError("no kubeconfig: pass --kubeconfig, set $KUBECONFIG or create ~/.kube/config") from None
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as fh:
            namespace = fh.read().strip() or "default"
    except OSError:
        namespace = "default"
    return k8s_client.ApiClient(configuration), namespace


def _resource_of(path: str) -> str:
    """A coarse resource name for request counting: `pods`, `pods/eviction`, `nodes/proxy`, …

    Read by position (/api/v1 or /apis/<group>/<version>, then namespaces/<ns>, then
    <resource>[/<name>[/<subresource>]]), so a namespace or pod named like a resource does not
    change the count, and a discovery GET (/apis/<group>/<version>) is counted as the group.
    """
    parts = [p for p in path.split("?")[0].split("/") if p]
    group = parts[1] if parts[:1] == ["apis"] and len(parts) > 1 else ""
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:] if group else []
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    if not rest:
        return group or "/"
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    return f"{group}/{resource}" if group == "metrics.k8s.io" else resource


class Kube:
    """Thin raw-JSON client over the official client's configuration and connection pool."""

    def __init__(self, api_client: k8s_client.ApiClient, timeout: float = 30.0) -> None:
        self.api = api_client
        self.timeout = timeout
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self._lock = threading.Lock()
        self._eviction_version: str | None = None

    def credentials(self) -> dict[str, Any]:
        """The connection this client uses (server, CA, client cert, token), for kopf's login,
        so kopf and memwatch always talk to the same cluster as the same identity."""
        cfg = self.api.configuration
        return {
            "server": cfg.host,
            "ca_path": cfg.ssl_ca_cert or None,
            "insecure": not cfg.verify_ssl,
            "certificate_path": cfg.cert_file or None,
            "private_key_path": cfg.key_file or None,
            "token": self.token(),
            "username": cfg.username or None,
            "password": cfg.password or None,
        }

    @property
    def server(self) -> str:
        """The API server's URL."""
        return str(self.api.configuration.host)

    def token(self) -> str | None:
        """The bearer token this client sends, re-read where the loader refreshes it (in-cluster)."""
        token = self.api.configuration.get_api_key_with_prefix("BearerToken") or ""
        # The in-cluster loader writes "bearer <token>", kubeconfig "Bearer <token>".
        return (token.split(" ", 1)[1] if token.lower().startswith("bearer ") else token).strip() or None

    def count(self, verb: str, resource: str) -> None:
        """Count a request made outside :meth:`_request` (the kubelet client's)."""
        with self._lock:
            self.requests[(verb, resource)] += 1

    # -- plumbing ------------------------------------------------------------------------------
    def _request(self, method: str, path: str, query: Mapping[str, Any] | None = None,
                 body: Any = None, stream: bool = False, timeout: float | None = None,
                 content_type: str = "application/json") -> urllib3.BaseHTTPResponse:
        params = [(k, v) for k, v in (query or {}).items() if v is not None and v != ""]
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        method, url, headers, _, _ = self.api.param_serialize(
            method, path, query_params=params, header_params=headers, auth_settings=["BearerToken"])
        self.count(method, _resource_of(path))
        t = timeout if timeout is not None else self.timeout
        try:
            resp = self.api.rest_client.pool_manager.request(
                method, url, headers=headers,
                body=json.dumps(body) if body is not None else None,
                preload_content=False,
                timeout=urllib3.Timeout(connect=min(t, 10.0), read=t),
                retries=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(0, "unreachable", str(exc)) from exc
        if resp.status >= 400:
            data = resp.read().decode("utf-8", "replace")
            resp.release_conn()
            cls = Gone if resp.status == 410 else ApiError
            raise cls(resp.status, resp.reason or "", data, _retry_after(resp.headers.get("Retry-After")))
        if not stream:
            resp.read(cache_content=True)  # fully buffered; .data holds it (urllib3 2 caches only if asked)
            resp.release_conn()
        return resp

    def get_json(self, path: str, query: Mapping[str, Any] | None = None,
                 timeout: float | None = None) -> Any:
        """GET and decode JSON."""
        return loads(self.get_bytes(path, query, timeout))

    def get_bytes(self, path: str, query: Mapping[str, Any] | None = None,
                  timeout: float | None = None) -> bytes:
        """GET, the body as it came (for a caller that decodes it with its own schema)."""
        data: bytes = self._request("GET", path, query, timeout=timeout).data
        return data

    def get_node(self, name: str) -> dict[str, Any]:
        """One Node object (the kubelet source reads its addresses and kubelet port)."""
        node: dict[str, Any] = self.get_json(f"/api/v1/nodes/{quote(name)}", timeout=10)
        return node

    def get_json_or_none(self, path: str, query: Mapping[str, Any] | None = None) -> Any:
        """GET and decode JSON; None when the object does not exist (404)."""
        try:
            return self.get_json(path, query)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def request_count(self, verb: str | None = None, resource: str | None = None) -> int:
        """How many requests were made, optionally of one verb and/or resource."""
        with self._lock:
            return sum(n for (v, r), n in self.requests.items()
                       if (verb is None or v == verb) and (resource is None or r == resource))

    # -- reads ---------------------------------------------------------------------------------
    def has_api(self, group_version: str) -> bool:
        """Whether the server serves ``group/version`` (discovery)."""
        try:
            self.get_json(f"/apis/{group_version}", timeout=10)
            return True
        except ApiError as exc:
            if exc.status in (404, 503):
                return False
            raise

    def list_pages(self, path: str, query: Mapping[str, Any] | None = None,
                   limit: int = 500) -> Iterator[dict[str, Any]]:
        """Paged LIST: yields each page (a decoded list object). The last has metadata.resourceVersion."""
        q = dict(query or {})
        q["limit"] = limit
        while True:
            page = self.get_json(path, q)
            yield page
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return
            q["continue"] = token

    def watch(self, path: str, resource_version: str, query: Mapping[str, Any] | None = None,
              timeout_seconds: int = 300, silence: float = 120.0,
              on_connect: Callable[[], None] | None = None,
              hold: Callable[[Any], None] | None = None) -> Iterator[dict[str, Any]]:
        """WATCH from ``resource_version`` with bookmarks; yields decoded watch events.

        Raises :class:`Gone` when the version expired or is too large (also when that arrives as
        an ERROR event). A stream silent for ``silence`` seconds (no event, no bookmark: the API
        server sends a bookmark about every minute) raises :class:`ApiError` status 0, so a stalled
        connection is noticed in two bookmark intervals rather than at the watch's own timeout.
        """
        q = dict(query or {})
        q.update(watch="true", resourceVersion=resource_version, allowWatchBookmarks="true",
                 timeoutSeconds=timeout_seconds)
        try:
            resp = self._request("GET", path, q, stream=True, timeout=min(float(timeout_seconds) + 30, silence))
        except ApiError as exc:
            if not isinstance(exc, Gone) and _is_too_large_rv(exc.status, str(exc)):
                raise TooLargeResourceVersion(exc.status, exc.reason, exc.body) from exc
            raise
        if on_connect is not None:
            on_connect()
        if hold is not None:
            hold(resp)  # the caller may end the stream from another thread (resp.shutdown())
        buffer = b""
        try:
            for chunk in self._chunks(resp):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        code = int(status.get("code") or 0)
                        if code == 410:
                            raise Gone(410, "Gone", status.get("message", ""))
                        if _is_too_large_rv(code, str(status.get("message", ""))):
                            raise TooLargeResourceVersion(code, str(status.get("reason", "")),
                                                          str(status.get("message", "")))
                        raise ApiError(code, status.get("reason", "watch error"), status.get("message", ""))
                    yield event
        finally:
            if hold is not None:
                hold(None)
            resp.release_conn()

    @staticmethod
    def _chunks(resp: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        """The body's chunks; a connection dropped mid-stream becomes an ApiError (status 0)."""
        try:
            yield from resp.stream(64 * 1024, decode_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(0, "stream interrupted", str(exc)) from exc

    # -- writes (callers: memwatch.enforcer and memwatch.leader only) ---------------------------
    def eviction_version(self) -> str:
        """`policy/v1` where served (1.22+), else `policy/v1beta1` (1.20, 1.21)."""
        if self._eviction_version is None:
            try:
                self._eviction_version = "policy/v1" if self.has_api("policy/v1") else "policy/v1beta1"
            except ApiError:
                return "policy/v1"  # unknown for now: try the current API, ask again next time
        return self._eviction_version

    def _write(self, method: str, path: str, body: Any, query: Mapping[str, Any] | None = None,
               content_type: str = "application/json") -> WriteResult:
        try:
            resp = self._request(method, path, query, body=body, content_type=content_type)
            return WriteResult(True, resp.status)
        except ApiError as exc:
            return WriteResult(False, exc.status, str(exc), exc.retry_after)

    def evict(self, namespace: str, name: str, uid: str, grace_period: int | None) -> WriteResult:
        """POST an Eviction for the pod; 429 means a PodDisruptionBudget blocks it."""
        version = self.eviction_version()
        body: dict[str, Any] = {
            "apiVersion": version, "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
            "deleteOptions": {"preconditions": {"uid": uid}},
        }
        if grace_period is not None:
            body["deleteOptions"]["gracePeriodSeconds"] = grace_period
        result = self._write("POST", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}/eviction", body)
        if not result.ok and result.status in (400, 404) and version == "policy/v1" \
                and "Eviction" in result.message and "policy/v1" in result.message:
            self._eviction_version = "policy/v1beta1"  # server older than discovery suggested
            return self.evict(namespace, name, uid, grace_period)
        return result

    def delete_pod(self, namespace: str, name: str, uid: str, grace_period: int | None) -> WriteResult:
        """DELETE the pod, only if it is still the same pod (UID precondition)."""
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": uid}}
        if grace_period is not None:
            body["gracePeriodSeconds"] = grace_period
        return self._write("DELETE", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}", body)

    def merge_patch(self, path: str, body: Mapping[str, Any]) -> WriteResult:
        """A JSON merge patch (callers: memwatch.policystatus, on the policies' status subresource)."""
        return self._write("PATCH", path, body, content_type="application/merge-patch+json")

    def create_event(self, namespace: str, body: Mapping[str, Any]) -> WriteResult:
        return self._write("POST", f"/api/v1/namespaces/{quote(namespace)}/events", body)

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        lease: dict[str, Any] | None = self.get_json_or_none(
            f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace)}/leases/{quote(name)}")
        return lease

    def create_lease(self, namespace: str, body: Mapping[str, Any]) -> WriteResult:
        return self._write("POST", f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace)}/leases", body)

    def replace_lease(self, namespace: str, name: str, body: Mapping[str, Any]) -> WriteResult:
        return self._write(
            "PUT", f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace)}/leases/{quote(name)}", body)


class KubeletClient:
    """HTTPS straight to each node's kubelet, as metrics-server does, never through the API server.

    The API server's node proxy needs `nodes/proxy`, which a kubelet with webhook authorization
    also accepts for exec, logs and configz; a direct GET of `/stats/summary` needs only
    `nodes/stats` (the kubelet asks the API server whether the caller may `get nodes/stats`).
    It sends the same credentials as :class:`Kube` (the ServiceAccount's token, re-read as it
    rotates) and keeps one connection pool per kubelet.

    TLS: the kubelet's serving certificate is verified against ``ca_file``, else the cluster CA the
    API client trusts. ``insecure`` turns verification off, for clusters (kind, kubeadm defaults)
    whose kubelets serve self-signed certificates that no CA signs.
    """

    def __init__(self, kube: Kube, ca_file: str | None = None, insecure: bool = False,
                 timeout: float = 10.0) -> None:
        cfg = kube.api.configuration
        if ca_file and not insecure:
            try:  # a bad file is a start-up error, not a failure at every sweep
                ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise ValueError(f"--kubelet-ca-file {ca_file!r} is not a readable PEM file of CA certificates "
                                 f"({exc})") from None
        self.kube = kube
        self.timeout = timeout
        self.insecure = insecure
        self.ca_file = None if insecure else (ca_file or cfg.ssl_ca_cert or None)
        if insecure:
            # Said once at start-up by the source; urllib3 would otherwise warn on every request.
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        # 5,000 nodes is Kubernetes' supported maximum: every kubelet keeps its pool (one socket).
        self._pools = urllib3.PoolManager(
            num_pools=5000, maxsize=1, block=False,
            cert_reqs="CERT_NONE" if insecure else "CERT_REQUIRED", ca_certs=self.ca_file,
            cert_file=cfg.cert_file or None, key_file=cfg.key_file or None)

    def get_json(self, host: str, port: int, path: str) -> Any:
        """GET ``path`` from the kubelet at ``host:port`` and decode JSON.

        Raises :class:`ApiError`: status 0 when it cannot be reached or its certificate is not
        trusted (the message says which, and what to do), else the kubelet's HTTP status.
        """
        netloc = f"[{host}]" if ":" in host else host
        url = f"https://{netloc}:{port}{path}"
        headers = {"Accept": "application/json"}
        token = self.kube.token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.kube.count("GET", _kubelet_resource(path))
        try:
            resp = self._pools.request("GET", url, headers=headers, preload_content=False, retries=False,
                                       timeout=urllib3.Timeout(connect=min(self.timeout, 5.0), read=self.timeout))
        except urllib3.exceptions.SSLError as exc:
            trusted = f"the CA in {self.ca_file}" if self.ca_file else "the system's CAs"
            raise ApiError(0, "kubelet certificate not trusted", (
                f"{url}: {exc}. Its serving certificate is not signed by {trusted}: pass the CA that "
                "signs kubelet serving certificates with --kubelet-ca-file, or, on clusters whose "
                "kubelets use self-signed certificates (kind), --kubelet-insecure-tls")) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(0, "kubelet unreachable", f"{url}: {exc}") from exc
        try:
            data = resp.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(0, "kubelet stream interrupted", f"{url}: {exc}") from exc
        finally:
            resp.release_conn()
        if resp.status >= 400:
            hint = ""
            if resp.status in (401, 403):
                hint = f" (the kubelet refused memwatch's credentials: it needs `get` on {_kubelet_resource(path)})"
            raise ApiError(resp.status, resp.reason or "", data.decode("utf-8", "replace")[:300] + hint)
        return loads(data)


def _kubelet_resource(path: str) -> str:
    """The RBAC subresource a kubelet with webhook authorization checks for ``path``."""
    first = path.lstrip("/").split("/", 1)[0].split("?", 1)[0]
    return {"stats": "nodes/stats", "metrics": "nodes/metrics", "logs": "nodes/log", "spec": "nodes/spec",
            "checkpoint": "nodes/checkpoint"}.get(first, "nodes/proxy")
