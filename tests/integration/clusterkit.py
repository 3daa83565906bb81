"""Helpers for the integration tests against a real kube-apiserver.

The tests' own client (:class:`Admin`) is separate from memwatch's: it creates namespaces, pods
and PodDisruptionBudgets and reads Events. memwatch's controller runs in-process under its own
client identity (impersonated, see :func:`controller_kube`), so the apiserver audit log tells its
requests apart from the tests'. Every wait polls a condition with a deadline; nothing sleeps for
a fixed time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from memwatch.cli import _parser
from memwatch.controller import Controller
from memwatch.kube import ApiError, Kube, load_client
from memwatch.quantity import parse_bytes, parse_duration
from memwatch.settings import Settings

T = TypeVar("T")

#: hack/local-cluster.sh's run dir (the Makefile exports it under this name; CLUSTER_ROOT=... there).
LOCAL_ROOT = Path(os.environ.get("MEMWATCH_CLUSTER_ROOT") or "/var/lib/memwatch-cluster")
LOCAL_KUBECONFIG = str(LOCAL_ROOT / "kubeconfig")
LOCAL_AUDIT_LOG = str(LOCAL_ROOT / "logs" / "audit.log")
HOG_IMAGE = "docker.io/library/memwatch-hog:dev"
SELF_LABEL = ("app.kubernetes.io/name", "memwatch")  # memwatch's default --self-selector
MiB = 1 << 20

#: One id per test session: namespaces and controller identities carry it.
SESSION = uuid.uuid4().hex[:6]


def kubeconfig_path() -> str | None:
    """$MEMWATCH_TEST_KUBECONFIG, else the local cluster's admin kubeconfig, else $KUBECONFIG."""
    explicit = os.environ.get("MEMWATCH_TEST_KUBECONFIG")
    if explicit:
        return explicit
    if Path(LOCAL_KUBECONFIG).is_file():
        return LOCAL_KUBECONFIG
    return os.environ.get("KUBECONFIG") or None


def audit_log_path() -> Path | None:
    path = Path(os.environ.get("MEMWATCH_TEST_AUDIT_LOG", LOCAL_AUDIT_LOG))
    return path if path.is_file() else None


# ---------------------------------------------------------------------------------------------
# Waiting


def wait_for(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` s.

    API errors count as "not yet" (and are reported if the deadline passes).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except (ApiError, AssertionError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# The tests' own client


class Admin:
    """Raw-JSON requests as the cluster admin, through memwatch's own HTTP module."""

    def __init__(self, kubeconfig: str) -> None:
        self.kube = Kube(load_client(kubeconfig), timeout=20)

    def request(self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None,
                content_type: str = "application/json") -> Any:
        resp = self.kube._request(method, path, query, body=body, content_type=content_type)
        return json.loads(resp.data) if resp.data else None

    def get(self, path: str, query: Mapping[str, Any] | None = None) -> Any:
        """GET, or None on 404."""
        return self.kube.get_json_or_none(path, query)

    # -- namespaces ------------------------------------------------------------------------------
    def create_namespace(self, name: str) -> None:
        """Create a namespace and wait until pods can be created in it."""
        self.request("POST", "/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"memwatch-it": SESSION}}})
        # Pods are refused until the controller-manager has given the default ServiceAccount its token.
        wait_for(f"the default ServiceAccount of {name}",
                 lambda: (self.get(f"/api/v1/namespaces/{name}/serviceaccounts/default") or {}).get("secrets"), 30,
                 interval=0.2)

    def delete_namespace(self, name: str) -> None:
        with contextlib.suppress(ApiError):
            self.request("DELETE", f"/api/v1/namespaces/{name}",
                         {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"})

    # -- pods ------------------------------------------------------------------------------------
    def create_pod(self, namespace: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
        pod: dict[str, Any] = self.request("POST", f"/api/v1/namespaces/{namespace}/pods", manifest)
        return pod

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        pod: dict[str, Any] | None = self.get(f"/api/v1/namespaces/{namespace}/pods/{quote(name)}")
        return pod

    def annotate(self, namespace: str, name: str, annotations: Mapping[str, str | None]) -> None:
        """Merge-patch annotations (None removes one)."""
        self.request("PATCH", f"/api/v1/namespaces/{namespace}/pods/{quote(name)}",
                     {"metadata": {"annotations": dict(annotations)}},
                     content_type="application/merge-patch+json")

    def delete_pod(self, namespace: str, name: str, grace: int = 0) -> None:
        self.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{quote(name)}",
                     {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": grace})

    def wait_running(self, namespace: str, names: Iterable[str], timeout: float = 120) -> dict[str, dict[str, Any]]:
        """Wait until every pod runs with all containers ready; returns them by name."""
        names = list(names)

        def ready() -> dict[str, dict[str, Any]] | None:
            pods = {p["metadata"]["name"]: p for p in
                    self.get(f"/api/v1/namespaces/{namespace}/pods")["items"]}
            for name in names:
                pod = pods.get(name)
                if pod is None or not is_running(pod):
                    return None
            return {n: pods[n] for n in names}

        return wait_for(f"pods {names} in {namespace} to run", ready, timeout)

    # -- PodDisruptionBudgets (policy/v1beta1: the only version 1.20 serves) ---------------------
    def create_pdb(self, namespace: str, name: str, labels: Mapping[str, str], min_available: int) -> None:
        self.request("POST", f"/apis/policy/v1beta1/namespaces/{namespace}/poddisruptionbudgets", {
            "apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
            "metadata": {"name": name},
            "spec": {"minAvailable": min_available, "selector": {"matchLabels": dict(labels)}}})

    def wait_pdb_blocking(self, namespace: str, name: str, healthy: int, timeout: float = 60) -> dict[str, Any]:
        """Wait until the PDB's status is current and allows no disruption with ``healthy`` pods up."""
        path = f"/apis/policy/v1beta1/namespaces/{namespace}/poddisruptionbudgets/{name}"

        def blocking() -> dict[str, Any] | None:
            pdb = self.get(path)
            status = pdb.get("status") or {}
            current = status.get("observedGeneration") == pdb["metadata"].get("generation")
            if current and status.get("currentHealthy") == healthy and status.get("disruptionsAllowed") == 0:
                return pdb
            return None

        return wait_for(f"PodDisruptionBudget {namespace}/{name} to block evictions", blocking, timeout)

    # -- Events ----------------------------------------------------------------------------------
    def events(self, namespace: str, uid: str | None = None, reason: str | None = None) -> list[dict[str, Any]]:
        selectors = []
        if uid:
            selectors.append(f"involvedObject.uid={uid}")
        if reason:
            selectors.append(f"reason={reason}")
        data = self.get(f"/api/v1/namespaces/{namespace}/events", {"fieldSelector": ",".join(selectors)})
        return list(data["items"])

    def wait_event(self, namespace: str, uid: str, reason: str, timeout: float = 60) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            items = self.events(namespace, uid, reason)
            return items[0] if items else None

        return wait_for(f"Event {reason} on pod uid {uid}", found, timeout)


def is_running(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    return (status.get("phase") == "Running" and bool(statuses) and all(c.get("ready") for c in statuses)
            and not (pod.get("metadata") or {}).get("deletionTimestamp"))


def hog_pod(name: str, command: list[str], annotations: Mapping[str, str] | None = None,
            labels: Mapping[str, str] | None = None, hard_limit: str = "400Mi") -> dict[str, Any]:
    """A pod running the hog image (``command`` after ``/hog``), one container named ``hog``."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": dict(labels or {}), "annotations": dict(annotations or {})},
        "spec": {
            # The hog is PID 1 and ignores SIGTERM: a short grace period keeps teardown quick.
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "hog", "image": HOG_IMAGE, "imagePullPolicy": "Never",
                "command": ["/hog", *command],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                              "limits": {"memory": hard_limit}},
            }],
        },
    }


def holding(mib: int) -> list[str]:
    """hog arguments: grow fast to ``mib`` MiB, then hold it."""
    return ["--rate", "200", "--max", str(mib), "--hold"]


def sleeping(mib: int) -> list[str]:
    """hog arguments: allocate ``mib`` MiB at once, then sleep."""
    return ["--sleep", "--start", str(mib)]


# ---------------------------------------------------------------------------------------------
# memwatch under test


def settings(kubeconfig: str, namespaces: Iterable[str], *flags: str, identity: str) -> Settings:
    """Settings exactly as `memwatch run` builds them, scoped to ``namespaces``, with quick sweeps."""
    argv = ["run", "--kubeconfig", kubeconfig, "--metrics-port", "0", "--liveness", "",
            "--source", "kubelet", "--interval", "1s", "--max-sample-age", "60s"]
    for ns in namespaces:
        argv += ["--namespace", ns]
    args = _parser({}).parse_args([*argv, *flags])
    # POD_NAME becomes the Events' source.host, so each controller's Events can be told apart.
    return Settings.from_args(args, env={"POD_NAME": identity, "POD_NAMESPACE": "memwatch-it"})


def controller_kube(kubeconfig: str, identity: str) -> Kube:
    """memwatch's client under its own user name (impersonated), so the audit log isolates it."""
    api = load_client(kubeconfig)
    api.set_default_header("Impersonate-User", identity)
    api.set_default_header("Impersonate-Group", "system:masters")
    return Kube(api)


def identity_for(tag: str) -> str:
    return f"memwatch-it-{SESSION}-{tag}"


@contextlib.contextmanager
def running_controller(kubeconfig: str, namespaces: Iterable[str], *flags: str,
                       tag: str) -> Iterator[Controller]:
    """A started in-process Controller; stopped (and its sweep thread joined) on exit."""
    identity = identity_for(tag)
    controller = Controller(settings(kubeconfig, namespaces, *flags, identity=identity),
                            kube=controller_kube(kubeconfig, identity))
    controller.start()
    try:
        yield controller
    finally:
        stop(controller)


def stop(controller: Controller, timeout: float = 30) -> None:
    """Stop a controller and wait until its sweep loop has really ended (it may be mid-sweep)."""
    controller.stop()
    thread = controller.sweeper._thread
    if thread is not None:
        thread.join(timeout)
        assert not thread.is_alive(), "the sweep thread did not stop"


def wait_sweeps(controller: Controller, more: int, timeout: float = 60) -> int:
    """Wait until the controller has swept ``more`` more times (with samples in each)."""
    target = controller.sweeper.sweeps + more
    return wait_for(f"{more} more sweeps", lambda: controller.sweeper.sweeps >= target and
                    controller.sweeper.sweeps, timeout)


# ---------------------------------------------------------------------------------------------
# memwatch's log lines


class LogCapture(logging.Handler):
    """Collects memwatch's log messages (every thread), to wait and assert on."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._lines: list[str] = []
        self._times: list[float] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._guard:
            self._lines.append(record.getMessage())
            self._times.append(record.created)

    def lines(self, pattern: str = "") -> list[str]:
        return [line for _, line in self.entries(pattern)]

    def entries(self, pattern: str = "") -> list[tuple[float, str]]:
        """(epoch, message) of every line matching ``pattern``."""
        rx = re.compile(pattern)
        with self._guard:
            return [(t, line) for t, line in zip(self._times, self._lines, strict=True) if rx.search(line)]

    def wait(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        rx = re.compile(pattern)

        def found() -> re.Match[str] | None:
            with self._guard:
                return next((m for m in map(rx.search, self._lines) if m), None)

        return wait_for(f"a log line matching {pattern!r}", found, timeout)


@contextlib.contextmanager
def captured_logs() -> Iterator[LogCapture]:
    logger = logging.getLogger("memwatch")
    capture = LogCapture()
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(capture)
    try:
        yield capture
    finally:
        logger.removeHandler(capture)
        logger.setLevel(old_level)


# ---------------------------------------------------------------------------------------------
# The apiserver audit log: what memwatch's identity really sent


@dataclass(frozen=True, slots=True)
class AuditedRequest:
    verb: str
    uri: str
    user: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int

    @property
    def writes(self) -> bool:
        return self.verb not in ("get", "list", "watch")


def audit_entries(path: Path, needle: str) -> list[dict[str, Any]]:
    """The audit log's requests whose line holds ``needle`` (a cheap pre-filter: the log holds every
    request of the cluster), one entry per request (the last stage logged), oldest first. The one
    reader of the audit log for every suite (integration, faults)."""
    seen: dict[str, dict[str, Any]] = {}
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if needle not in line:
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue  # a line cut by the writer, being written now
            if isinstance(ev, dict):
                seen[ev.get("auditID", line)] = ev
    return list(seen.values())


def audit_user(ev: Mapping[str, Any]) -> str:
    """Who made the request: the impersonated user when there is one."""
    return str((ev.get("impersonatedUser") or {}).get("username") or (ev.get("user") or {}).get("username", ""))


def audit_code(ev: Mapping[str, Any]) -> int:
    return int((ev.get("responseStatus") or {}).get("code") or 0)


def audited_requests(path: Path, user_prefix: str) -> list[AuditedRequest]:
    """Requests made as any user whose name starts with ``user_prefix`` (one entry per request)."""
    out = []
    for ev in audit_entries(path, user_prefix):
        user = audit_user(ev)
        if not user.startswith(user_prefix):
            continue
        ref = ev.get("objectRef") or {}
        out.append(AuditedRequest(
            verb=ev.get("verb", ""), uri=ev.get("requestURI", ""), user=user,
            resource=ref.get("resource", ""), subresource=ref.get("subresource", ""),
            namespace=ref.get("namespace", ""), name=ref.get("name", ""), code=audit_code(ev)))
    return out


#: The only writes memwatch may make on pods: evict them, or delete them.
ALLOWED_POD_WRITES = frozenset({("create", "eviction"), ("delete", "")})
#: And anywhere else: Events (and its leader Lease, unused here).
ALLOWED_OTHER_WRITES = frozenset({("create", "events"), ("create", "leases"), ("update", "leases")})


def forbidden_writes(requests: Iterable[AuditedRequest]) -> list[AuditedRequest]:
    """Writes other than evictions and deletions of pods, Events and the Lease."""
    bad = []
    for r in requests:
        if not r.writes:
            continue
        if r.resource == "pods":
            if (r.verb, r.subresource) not in ALLOWED_POD_WRITES:
                bad.append(r)
        elif (r.verb, r.resource) not in ALLOWED_OTHER_WRITES:
            bad.append(r)
    return bad


def pod_metadata(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a pod memwatch must never change (managedFields aside: the kubelet writes)."""
    meta = pod["metadata"]
    return {k: meta.get(k) for k in ("resourceVersion", "annotations", "labels", "finalizers",
                                       "ownerReferences", "deletionTimestamp")}


def human_bytes(text: str) -> int:
    """Parse memwatch's human byte format (`160Mi`, `1.5Gi`) back to bytes."""
    return parse_bytes(text)


def human_seconds(text: str) -> float:
    """Parse memwatch's human duration format (`350ms`, `5.2s`, `1m05s`) back to seconds."""
    return parse_duration(text)
