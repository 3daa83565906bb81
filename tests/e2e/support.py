"""What the e2e scenarios share: a raw-JSON cluster handle, workload builders, the installed
memwatch as seen from outside, a pod-status recorder, and waits that each carry a deadline.

Nothing here sleeps for a fixed time to let something happen: every wait polls a condition (an
Event, a log line, a pod status, the controller's sweep counter) until it holds or its deadline
passes, and fails fast on a state that can no longer turn out well (an image that cannot be
pulled, a hog OOM-killed when it should have been evicted).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

from memwatch.kube import ApiError, Gone, Kube, load_client
from memwatch.quantity import parse_bytes, parse_duration

T = TypeVar("T")

HOG_IMAGE = os.environ.get("MEMWATCH_E2E_HOG_IMAGE", "docker.io/library/memwatch-hog:dev")
# Images are loaded into the node (kind load, or ctr import): never pull them.
PULL_POLICY = os.environ.get("MEMWATCH_E2E_PULL_POLICY", "Never")
SELF_SELECTOR = "app.kubernetes.io/name=memwatch"
CONTROLLER_SELECTOR = SELF_SELECTOR + ",app.kubernetes.io/component=controller"
AGENT_SELECTOR = SELF_SELECTOR + ",app.kubernetes.io/component=agent"
#: The label on everything the suite creates; values-e2e.yaml streams memwatch only pods with it.
PART_OF = {"app.kubernetes.io/part-of": "memwatch-e2e"}
#: Event reasons that mean memwatch acted on a pod (observability.ACTED_REASONS, minus dry-run).
ACTION_REASONS = ("MemwatchEvicted", "MemwatchDeleted", "MemwatchEscalated", "MemwatchKilled")
#: Container waiting reasons after which a pod will not start by itself.
HOPELESS = ("ErrImageNeverPull", "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerError",
            "CreateContainerConfigError", "CrashLoopBackOff", "RunContainerError")
_FIELD = re.compile(r"(\w+)=('[^']*'|\S+)")


class WaitTimeout(AssertionError):
    """A condition did not hold before its deadline."""


def wait_for(what: str, check: Callable[[], T | None], timeout: float, poll: float = 0.5,
             fail: Callable[[], str | None] | None = None) -> T:
    """Poll ``check`` until it returns something truthy, and return that.

    ``fail`` is polled too: when it returns a message, the wait stops at once with that message
    (the condition can no longer hold). Raises :class:`WaitTimeout` at the deadline.
    """
    deadline = time.monotonic() + timeout
    transient = ""
    while True:
        try:
            value = check()
        except ApiError as exc:
            if exc.status and exc.status < 500:
                raise
            value, transient = None, str(exc)  # a busy or restarting API server: try again
        if value:
            return value
        if fail is not None:
            problem = fail()
            if problem:
                raise AssertionError(f"while waiting for {what}: {problem}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            last = f" (last API error: {transient})" if transient else ""
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}{last}")
        time.sleep(min(poll, remaining))


def reporter(event: Mapping[str, Any]) -> str:
    """Which memwatch component posted an Event: `agent` or `controller` (by its pod's name)."""
    host = str((event.get("source") or {}).get("host") or event.get("reportingInstance") or "")
    return "agent" if "-agent-" in host else "controller"


def repeated(events: list[dict[str, Any]], reason: str) -> dict[str, int]:
    """Components that posted ``reason`` more than once. The controller and the node agent each
    report on their own, so one Event from each is expected; more from either is a repeat (also
    across restarts, where the pod names change)."""
    counts: dict[str, int] = {}
    for event in events:
        if event.get("reason") == reason:
            counts[reporter(event)] = counts.get(reporter(event), 0) + 1
    return {who: n for who, n in counts.items() if n > 1}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def kill_fields(line: str) -> dict[str, str]:
    """The key=value fields of a memwatch action log line."""
    return {k: v.strip("'") for k, v in _FIELD.findall(line)}


# ---------------------------------------------------------------------------------------------
# The cluster


class Cluster(Kube):
    """memwatch's own raw-JSON client, plus the reads and writes the scenarios make."""

    def __init__(self, kubeconfig: str | None) -> None:
        super().__init__(load_client(kubeconfig))
        self.kubeconfig = kubeconfig
        self._policy_version: str | None = None

    # -- plumbing ------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None,
                timeout: float = 30.0, raw: bool = False, content_type: str = "application/json") -> Any:
        resp = self._request(method, path, query, body=body, timeout=timeout, content_type=content_type)
        data = resp.data.decode("utf-8", "replace")
        if raw:
            return data
        return json.loads(data) if data else {}

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def get_or_none(self, path: str) -> Any:
        return self.get_json_or_none(path)

    def reachable(self, timeout: float = 5.0) -> str | None:
        """The server's version when the API answers, else None."""
        try:
            data = self.request("GET", "/version", timeout=timeout)
        except Exception:
            return None
        return str(data.get("gitVersion") or "?")

    def has_group(self, group: str) -> bool:
        try:
            groups = self.get("/apis").get("groups") or []
        except ApiError:
            return False
        return any(g.get("name") == group for g in groups)

    # -- namespaces ----------------------------------------------------------------------------
    def create_namespace(self, name: str) -> None:
        self.request("POST", "/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": PART_OF}})
        # The controller manager creates the `default` ServiceAccount; pods are refused until then.
        wait_for(f"the default ServiceAccount in {name}",
                 lambda: self.get_or_none(f"/api/v1/namespaces/{name}/serviceaccounts/default"), 60)

    def delete_namespace(self, name: str) -> None:
        try:
            self.request("DELETE", f"/api/v1/namespaces/{name}", {"propagationPolicy": "Background"})
        except ApiError as exc:
            if exc.status != 404:
                raise

    # -- pods ----------------------------------------------------------------------------------
    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        ns = obj["metadata"].get("namespace")
        kind = obj["kind"]
        path = {
            "Pod": f"/api/v1/namespaces/{ns}/pods",
            "Deployment": f"/apis/apps/v1/namespaces/{ns}/deployments",
            "PodDisruptionBudget": f"/apis/{obj.get('apiVersion')}/namespaces/{ns}/poddisruptionbudgets",
            "PriorityClass": "/apis/scheduling.k8s.io/v1/priorityclasses",  # cluster-scoped
        }[kind]

        def post() -> dict[str, Any]:
            try:
                created: dict[str, Any] = self.request("POST", path, obj)
            except ApiError as exc:
                if exc.status != 409:  # 5xx (e.g. Kubernetes 1.20's "No API token found for service
                    raise              # account" in a new namespace) is retried by wait_for
                created = self.get(f"{path}/{obj['metadata']['name']}")  # a retried POST that landed
            return created

        return wait_for(f"the API server to create {kind} {ns}/{obj['metadata']['name']}", post, 60)

    def pod(self, ns: str, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self.get_or_none(f"/api/v1/namespaces/{ns}/pods/{name}")
        return result

    def pods(self, ns: str, selector: str = "") -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get(f"/api/v1/namespaces/{ns}/pods",
                                               labelSelector=selector or None).get("items") or []
        return items

    def remove_pod(self, ns: str, name: str, grace: int | None = None) -> None:
        body: dict[str, Any] = {} if grace is None else {"gracePeriodSeconds": grace}
        try:
            self.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}", body)
        except ApiError as exc:
            if exc.status != 404:
                raise

    def patch_annotations(self, ns: str, name: str, annotations: Mapping[str, str | None]) -> None:
        self.request("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}",
                     {"metadata": {"annotations": dict(annotations)}},
                     content_type="application/merge-patch+json")

    def pod_log(self, ns: str, name: str, container: str | None = None) -> str:
        try:
            text: str = self.request("GET", f"/api/v1/namespaces/{ns}/pods/{name}/log",
                                     query={"container": container}, raw=True)
        except ApiError:
            return ""
        return text

    def wait_running(self, ns: str, name: str, timeout: float = 120) -> dict[str, Any]:
        """Wait until the pod's containers all run; fail fast on an image or start error."""

        def running() -> dict[str, Any] | None:
            pod = self.pod(ns, name)
            statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
            if pod and statuses and all("running" in (s.get("state") or {}) for s in statuses):
                return pod
            return None

        return wait_for(f"pod {ns}/{name} to run", running, timeout, fail=lambda: hopeless(self.pod(ns, name)))

    # -- PodDisruptionBudgets: policy/v1 where served, else policy/v1beta1 (Kubernetes < 1.21) --
    @property
    def policy_version(self) -> str:
        if self._policy_version is None:
            group = self.get("/apis/policy")
            versions = [v["version"] for v in group.get("versions") or []]
            self._policy_version = "v1" if "v1" in versions else "v1beta1"
        return self._policy_version

    # -- Events and nodes ----------------------------------------------------------------------
    def events(self, ns: str, uid: str | None = None, name: str | None = None,
               reason: str | None = None) -> list[dict[str, Any]]:
        selectors = [f"involvedObject.uid={uid}" if uid else "", f"involvedObject.name={name}" if name else "",
                     f"reason={reason}" if reason else ""]
        query = ",".join(s for s in selectors if s)
        items: list[dict[str, Any]] = self.get(f"/api/v1/namespaces/{ns}/events",
                                               fieldSelector=query or None).get("items") or []
        return sorted(items, key=lambda e: e.get("firstTimestamp") or e.get("eventTime") or "")

    def memwatch_events(self, ns: str, uid: str) -> list[dict[str, Any]]:
        return [e for e in self.events(ns, uid=uid) if (e.get("source") or {}).get("component") == "memwatch"
                or e.get("reportingComponent") == "memwatch"]

    def wait_event(self, ns: str, uid: str, reason: str, timeout: float,
                   fail: Callable[[], str | None] | None = None) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            hits = [e for e in self.memwatch_events(ns, uid) if e.get("reason") == reason]
            return hits[0] if hits else None

        return wait_for(f"Event {reason} on pod uid {uid} in {ns}", found, timeout, fail=fail)

    def ready_nodes(self) -> list[str]:
        """Schedulable nodes whose Ready condition is True (the benchmarks register fake nodes that
        never are)."""
        return [n["metadata"]["name"] for n in self.get("/api/v1/nodes").get("items") or []
                if not n["spec"].get("unschedulable")
                and any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions") or [])]

    def node_ready(self, name: str) -> bool:
        node = self.get(f"/api/v1/nodes/{name}")
        return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions") or [])

    def working_set(self, pod: Mapping[str, Any]) -> int | None:
        """The pod's working set as the usage sources see it: metrics.k8s.io when served (what
        `--source=auto` picks), else the kubelet Summary API through the node proxy."""
        meta, node = pod["metadata"], (pod.get("spec") or {}).get("nodeName")
        if self.has_group("metrics.k8s.io"):
            data = self.get_or_none(f"/apis/metrics.k8s.io/v1beta1/namespaces/{meta['namespace']}/pods/"
                                    f"{meta['name']}")
            if not data:
                return None
            return sum(parse_bytes(c["usage"]["memory"], allow_zero=True) for c in data.get("containers") or [])
        if not node:
            return None
        summary = self.get(f"/api/v1/nodes/{quote(node)}/proxy/stats/summary")
        for entry in summary.get("pods") or []:
            if (entry.get("podRef") or {}).get("uid") == meta["uid"]:
                ws = (entry.get("memory") or {}).get("workingSetBytes")
                if ws is not None:
                    return int(ws)
                containers = [c for c in entry.get("containers") or [] if (c.get("memory") or {})]
                if containers:
                    return sum(int(c["memory"].get("workingSetBytes") or 0) for c in containers)
        return None


def hopeless(pod: Mapping[str, Any] | None) -> str | None:
    """Why a pod will not start on its own (an image missing from the node, a crash loop), if so."""
    for s in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        waiting = (s.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in HOPELESS:
            hint = ""
            if "Pull" in str(waiting.get("reason")):
                hint = " (is the image loaded into the node? `hack/local-cluster.sh images` or `kind load`)"
            return f"container {s.get('name')}: {waiting.get('reason')}: {waiting.get('message', '')}{hint}"
    return None


def pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def oom_killed(pod: Mapping[str, Any] | None) -> str | None:
    """The container the kernel OOM-killed, from the current or last state, if any."""
    for s in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        for key in ("state", "lastState"):
            term = (s.get(key) or {}).get("terminated") or {}
            if term.get("reason") == "OOMKilled":
                return f"container {s.get('name')} {key}.terminated.reason=OOMKilled (exit {term.get('exitCode')})"
    return None


# ---------------------------------------------------------------------------------------------
# Workloads


def hog_container(args: list[str], limit: str, request: str = "16Mi") -> dict[str, Any]:
    """The static memory hog (tests/images/hog): ``/hog --rate MIB_PER_S --max MIB [--hold]``."""
    return {
        "name": "hog",
        "image": HOG_IMAGE,
        "imagePullPolicy": PULL_POLICY,
        "command": ["/hog", *args],
        "resources": {"requests": {"cpu": "10m", "memory": request}, "limits": {"memory": limit}},
    }


def hog_pod(ns: str, name: str, args: list[str], limit: str, annotations: Mapping[str, str] | None = None,
            labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A bare pod running the hog. The hog is PID 1 and ignores SIGTERM: a short grace period
    keeps evictions quick, and its SIGKILL is reported as `Error`, never as `OOMKilled`."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "annotations": dict(annotations or {}),
                     "labels": {**PART_OF, **(labels or {})}},
        "spec": {"terminationGracePeriodSeconds": 2, "containers": [hog_container(args, limit)]},
    }


def sleeper_pod(ns: str, name: str, start_mib: int, limit: str,
                annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The hog as a sleeper: holds ``start_mib`` MiB, then sleeps."""
    return hog_pod(ns, name, ["--sleep", "--start", str(start_mib)], limit, annotations)


# ---------------------------------------------------------------------------------------------
# Pod-status recorder: every status of every pod in a namespace, from a WATCH, so that an
# OOMKilled seen for an instant (or on a pod deleted right after) is never missed.


@dataclass
class PodHistory:
    uid: str
    name: str
    oom: str | None = None
    restarts: int = 0
    deleted: bool = False
    phases: list[str] = field(default_factory=list)


class PodRecorder:
    def __init__(self, cluster: Cluster, ns: str) -> None:
        self.cluster, self.ns = cluster, ns
        self.pods: dict[str, PodHistory] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pods-{ns}", daemon=True)
        self.error: str | None = None

    def __enter__(self) -> PodRecorder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _seen(self, kind: str, pod: Mapping[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        uid = meta.get("uid", "")
        with self._lock:
            hist = self.pods.setdefault(uid, PodHistory(uid, meta.get("name", "")))
            hist.oom = hist.oom or oom_killed(pod)
            statuses = (pod.get("status") or {}).get("containerStatuses") or []
            hist.restarts = max([hist.restarts, *(int(s.get("restartCount") or 0) for s in statuses)])
            phase = (pod.get("status") or {}).get("phase") or "?"
            if not hist.phases or hist.phases[-1] != phase:
                hist.phases.append(phase)
            hist.deleted = hist.deleted or kind == "DELETED"

    def _run(self) -> None:
        rv = ""
        while not self._stop.is_set():
            try:
                if not rv:
                    listing = self.cluster.get(f"/api/v1/namespaces/{self.ns}/pods")
                    for pod in listing.get("items") or []:
                        self._seen("ADDED", pod)
                    rv = listing["metadata"]["resourceVersion"]
                for ev in self.cluster.watch(f"/api/v1/namespaces/{self.ns}/pods", rv, timeout_seconds=5):
                    obj = ev.get("object") or {}
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if ev.get("type") != "BOOKMARK":
                        self._seen(ev["type"], obj)
            except Gone:
                rv = ""  # list again
            except Exception as exc:  # keep recording through a dropped connection
                self.error = str(exc)
                rv = ""
                self._stop.wait(0.5)

    def history(self, uid: str) -> PodHistory | None:
        with self._lock:
            return self.pods.get(uid)

    def oom(self, uid: str) -> str | None:
        hist = self.history(uid)
        return hist.oom if hist else None


# ---------------------------------------------------------------------------------------------
# memwatch as installed


def _args_of(deployment: Mapping[str, Any]) -> list[str]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return [str(a) for c in containers for a in (c.get("args") or [])]


def _flag(args: list[str], name: str) -> str | None:
    for arg in args:
        if arg == name:
            return "true"
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


#: The release the suite tests: the installers' (`hack/e2e-install.py`, `tests/e2e/kind/run.sh`) defaults.
E2E_NAMESPACE = os.environ.get("MEMWATCH_E2E_NAMESPACE", "memwatch")
E2E_RELEASE = os.environ.get("MEMWATCH_E2E_RELEASE", "memwatch")


@dataclass
class Memwatch:
    """The memwatch release under test, found by its namespace and release name."""

    cluster: Cluster
    namespace: str
    deployment: str
    args: list[str]
    agent_daemonset: str | None
    release: str = E2E_RELEASE

    @classmethod
    def find(cls, cluster: Cluster, namespace: str = E2E_NAMESPACE, release: str = E2E_RELEASE) -> Memwatch | None:
        """Release ``release`` in ``namespace`` ($MEMWATCH_E2E_RELEASE and $MEMWATCH_E2E_NAMESPACE, both
        `memwatch` by default), or None. Never another release: other suites install their own,
        configured for their own pods, and a suite that borrowed one would test the wrong thing."""
        instance = f",app.kubernetes.io/instance={release}"
        deps = cluster.get(f"/apis/apps/v1/namespaces/{namespace}/deployments",
                           labelSelector=CONTROLLER_SELECTOR + instance).get("items") or []
        if not deps:
            return None
        if len(deps) > 1:
            raise AssertionError(f"release {release} in {namespace} has several controller Deployments: "
                                 + ", ".join(d["metadata"]["name"] for d in deps))
        dep = deps[0]
        ds = cluster.get(f"/apis/apps/v1/namespaces/{namespace}/daemonsets",
                         labelSelector=AGENT_SELECTOR + instance).get("items")
        return cls(cluster, namespace, dep["metadata"]["name"], _args_of(dep),
                   ds[0]["metadata"]["name"] if ds else None, release)

    def selector(self, base: str = SELF_SELECTOR) -> str:
        """``base`` narrowed to this release's pods."""
        return f"{base},app.kubernetes.io/instance={self.release}"

    # -- configuration, from the controller's own flags ----------------------------------------
    def duration(self, flag: str, default: float) -> float:
        value = _flag(self.args, flag)
        return parse_duration(value) if value else default

    @property
    def interval(self) -> float:
        return self.duration("--interval", 5.0)

    @property
    def escalation_timeout(self) -> float:
        return self.duration("--escalation-timeout", 60.0)

    @property
    def escalates(self) -> bool:
        return _flag(self.args, "--escalate") is not None

    @property
    def dry_run(self) -> bool:
        return _flag(self.args, "--dry-run") is not None

    def agent_ready(self, exclude: Collection[str] = ()) -> str | None:
        """None when an agent pod (not one of ``exclude``) is ready on every Ready node, else why not."""
        if not self.agent_daemonset:
            return "the agent DaemonSet is not deployed (chart value agent.enabled=false)"
        ready = {p["spec"].get("nodeName") for p in self.cluster.pods(self.namespace, self.selector(AGENT_SELECTOR))
                 if p["metadata"]["name"] not in exclude and not p["metadata"].get("deletionTimestamp")
                 and pod_ready(p)}
        missing = [n for n in self.cluster.ready_nodes() if n not in ready]
        return f"no ready agent pod on node(s) {', '.join(missing)}" if missing else None

    # -- pods and logs -------------------------------------------------------------------------
    def controller_pods(self) -> list[dict[str, Any]]:
        """The controller pods that run and are not going away."""
        return [p for p in self.cluster.pods(self.namespace, self.selector(CONTROLLER_SELECTOR))
                if not p["metadata"].get("deletionTimestamp") and (p.get("status") or {}).get("phase") == "Running"]

    def controller_pod(self) -> dict[str, Any]:
        pods = self.controller_pods()
        assert pods, f"no running memwatch controller pod in {self.namespace}"
        return pods[0]

    def all_pods(self) -> list[dict[str, Any]]:
        return self.cluster.pods(self.namespace, self.selector())

    def logs(self) -> dict[str, str]:
        """Every memwatch pod's log (controller and agent), by pod name."""
        return {p["metadata"]["name"]: self.cluster.pod_log(self.namespace, p["metadata"]["name"])
                for p in self.all_pods()}

    def lines(self, pattern: str) -> list[tuple[str, str]]:
        """(pod, line) of every log line matching ``pattern`` (a regex)."""
        rx = re.compile(pattern)
        return [(pod, line) for pod, text in self.logs().items() for line in text.splitlines() if rx.search(line)]

    def wait_line(self, pattern: str, timeout: float, fail: Callable[[], str | None] | None = None) -> tuple[str, str]:
        def found() -> tuple[str, str] | None:
            hits = self.lines(pattern)
            return hits[0] if hits else None

        return wait_for(f"a memwatch log line matching {pattern!r}", found, timeout, poll=1.0, fail=fail)

    def wait_ready(self, timeout: float = 180) -> dict[str, Any]:
        """Wait for a controller pod that has logged its first sweep (watches synced, history loaded)."""

        def ready() -> dict[str, Any] | None:
            for pod in self.controller_pods():
                text = self.cluster.pod_log(self.namespace, pod["metadata"]["name"], "controller")
                if "ready: first sweep" in text:
                    return pod
            return None

        def broken() -> str | None:
            for pod in self.cluster.pods(self.namespace, self.selector(CONTROLLER_SELECTOR)):
                problem = hopeless(pod)
                if problem:
                    return f"controller pod {pod['metadata']['name']}: {problem}"
            return None

        return wait_for("the memwatch controller's first sweep", ready, timeout, poll=1.0, fail=broken)

    # -- the sweep counter: memwatch_sweep_duration_seconds_count on /metrics ------------------
    def sweeps(self, pod: Mapping[str, Any]) -> int | None:
        port = 9090
        for c in pod["spec"]["containers"]:
            for p in c.get("ports") or []:
                if p.get("name") == "metrics":
                    port = int(p["containerPort"])
        name = pod["metadata"]["name"]
        try:
            text = self.cluster.request("GET", f"/api/v1/namespaces/{self.namespace}/pods/{name}:{port}/proxy/metrics",
                                        raw=True, timeout=10)
        except Exception:
            return None
        m = re.search(r"^memwatch_sweep_duration_seconds_count(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)
        return int(float(m.group(1))) if m else None

    def wait_sweeps(self, n: int, check: Callable[[], str | None] | None = None) -> int:
        """Wait until the leading controller has completed ``n`` more sweeps, checking ``check`` (an
        invariant: it returns a failure message, or None) after each one."""
        pod = self.controller_pod()
        start = self.sweeps(pod)
        if start is None:
            raise AssertionError(f"cannot read memwatch_sweep_duration_seconds_count from {pod['metadata']['name']}"
                                 " through the API server's pod proxy")
        seen = start

        def advanced() -> int | None:
            nonlocal seen
            now = self.sweeps(pod)
            if now is None or now < seen:
                raise AssertionError(f"controller pod {pod['metadata']['name']} restarted while counting sweeps")
            seen = now
            return now if now - start >= n else None

        return wait_for(f"{n} controller sweeps", advanced, timeout=n * self.interval * 3 + 30, poll=1.0,
                        fail=check)
