"""`memwatch explain NS/POD` against the HTTP fake API server: a real `Kube` from a real kubeconfig
file, the command's real reads (the pod, both kinds of policy, the namespace, memwatch's Events),
its output, exit codes and stderr lines; and :func:`memwatch.explain.budget_use` on its own.
"""

from __future__ import annotations

import io
import json
import re
import socket
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from memwatch import explain
from memwatch.observability import REASON_DRY_RUN, REASON_EVICTED, REASON_KILLED, build_event
from memwatch.podindex import build_record
from memwatch.policy import Defaults, RestartBudget
from memwatch.protections import Protections

from .fakeapi import FakeApiServer, status_body, write_kubeconfig
from .fakes import iso, make_pod

API = "/apis/memwatch.io/v1alpha1"
HOUR = 3600.0


class PolicyApiServer(FakeApiServer):
    """The fake API server, also serving one pod by name, the policy CRDs and Namespaces' labels."""

    def __init__(self) -> None:
        super().__init__()
        self.crds = True
        self.policies: list[dict[str, Any]] = []
        self.namespace_labels: dict[str, dict[str, str]] = {}

    def _route(self, h: BaseHTTPRequestHandler, method: str, path: str, query: dict[str, str],
               body: Any) -> tuple[int, Any]:
        refused = any(verb == method and re.fullmatch(p, path) for verb, p, _, _ in self.refusals)
        if method != "GET" or refused:
            return super()._route(h, method, path, query, body)
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)", path)
        if m:
            pod = next((p for p in self.pods if (p["metadata"]["namespace"], p["metadata"]["name"]) == m.groups()),
                       None)
            if pod is None:
                return 404, status_body(404, "NotFound", f'pods "{m.group(2)}" not found')
            return 200, pod
        m = re.fullmatch(API + r"(?:/namespaces/([^/]+))?/(memwatchpolicies|clustermemwatchpolicies)", path)
        if m:
            if not self.crds:
                return 404, status_body(404, "NotFound", "the server could not find the requested resource")
            kind = "MemwatchPolicy" if m.group(2) == "memwatchpolicies" else "ClusterMemwatchPolicy"
            items = [p for p in self.policies if p["kind"] == kind
                     and (kind != "MemwatchPolicy" or p["metadata"].get("namespace") == m.group(1))]
            # A LIST's items carry no kind: the client must know it from the path.
            return 200, {"kind": f"{kind}List", "apiVersion": "memwatch.io/v1alpha1", "metadata": {},
                         "items": [{k: v for k, v in p.items() if k != "kind"} for p in items]}
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)", path)
        if m and m.group(1) in self.namespace_labels:
            return 200, {"kind": "Namespace", "apiVersion": "v1",
                         "metadata": {"name": m.group(1), "labels": self.namespace_labels[m.group(1)]}}
        return super()._route(h, method, path, query, body)


def policy(kind: str, name: str, spec: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": f"uid-{name}", "generation": 1}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "memwatch.io/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}


def owned(pod: dict[str, Any], deployment: str, template_hash: str = "5c4b7f9d8") -> dict[str, Any]:
    pod["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "controller": True,
                                           "name": f"{deployment}-{template_hash}", "uid": "rs"}]
    pod["metadata"]["labels"]["pod-template-hash"] = template_hash
    return pod


def event(pod: dict[str, Any], reason: str, at: float, related: str | None = None,
          component: str = "memwatch") -> dict[str, Any]:
    record = build_record(pod, Defaults(), Protections(protected_namespaces=frozenset()).reason)
    assert record is not None
    ev = build_event(record, reason, "m", warning=False, related=related, at=at)
    ev["source"]["component"] = ev["reportingComponent"] = component
    return ev


@pytest.fixture
def api() -> Iterator[PolicyApiServer]:
    server = PolicyApiServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Scene:
    """A Deployment's pod selected by a MemwatchPolicy and a ClusterMemwatchPolicy, its own annotation
    overriding one field, and memwatch's Events on its workload."""

    def __init__(self, api: PolicyApiServer, tmp_path: Path) -> None:
        self.api = api
        self.now = time.time()
        self.pod = owned(make_pod("web-5c4b7f9d8-q7wzt", "shop", annotations={"memwatch.io/action": "dry-run"},
                                  labels={"app": "web"}, containers=[("app", "1Gi")]), "web")
        other = owned(make_pod("web-5c4b7f9d8-abcde", "shop", labels={"app": "web"}), "web")
        api.pods = [self.pod, make_pod("plain", "shop", annotations={})]
        api.policies = [
            policy("MemwatchPolicy", "limits", {"podSelector": {"matchLabels": {"app": "web"}}, "limit": "600Mi",
                                                "action": "delete"}, "shop"),
            policy("MemwatchPolicy", "broken", {"limit": "lots"}, "shop"),
            policy("MemwatchPolicy", "elsewhere", {"limit": "1Gi"}, "blog"),
            policy("ClusterMemwatchPolicy", "base", {"restartBudget": "3/1h", "for": "10s",
                                                     "namespaceSelector": {"matchLabels": {"env": "prod"}}}),
        ]
        api.namespace_labels = {"shop": {"env": "prod"}}
        self.first = self.now - 1800
        api.events = [
            event(self.pod, REASON_EVICTED, self.first, related="Deployment/web"),
            event(other, REASON_EVICTED, self.now - 600),  # no `related`: a pod of the workload, by its name
            event(other, REASON_KILLED, self.now - 500),  # a kill naming no workload never counts
            event(other, REASON_DRY_RUN, self.now - 400, related="Deployment/web"),  # not an action
            event(other, REASON_EVICTED, self.now - 2 * HOUR, related="Deployment/web"),  # out of the window
            event(self.pod, REASON_EVICTED, self.now - 60, related="Deployment/web", component="someone-else"),
            event(make_pod("api-6d5f-xyz12", "shop"), REASON_EVICTED, self.now - 60, related="Deployment/api"),
        ]
        self.kubeconfig = write_kubeconfig(tmp_path, api.url)

    def argv(self, *extra: str) -> list[str]:
        return ["--kubeconfig", str(self.kubeconfig), *extra]


@pytest.fixture
def scene(api: PolicyApiServer, tmp_path: Path) -> Scene:
    return Scene(api, tmp_path)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = explain.main(list(argv), env={}, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def explained(scene: Scene, *argv: str) -> dict[str, Any]:
    code, out, err = run(*scene.argv(*argv, "-o", "json"))
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    assert doc["mode"] == "live"
    (pod,) = doc["pods"]
    return pod


def test_live_pod_field_by_field_with_its_budget(scene: Scene) -> None:
    pod = explained(scene, "shop/web-5c4b7f9d8-q7wzt")
    sources = {f["field"]: (f["value"], f["source"]) for f in pod["fields"]}
    assert sources["limit"] == ("600Mi", "MemwatchPolicy shop/limits")
    assert sources["action"] == ("dry-run", "annotation")
    assert sources["for"] == ("10s", "ClusterMemwatchPolicy base")
    assert sources["restart-budget"] == ("3/1h", "ClusterMemwatchPolicy base")
    assert sources["escalate"] == (None, "default")
    assert pod["watched"] is True and pod["action"] == "dry-run" and pod["workload"] == "Deployment/web"
    assert pod["uid"] == scene.pod["metadata"]["uid"]
    assert pod["policies"] == ["MemwatchPolicy shop/limits", "ClusterMemwatchPolicy base"]
    assert [p["policy"] for p in pod["invalid_policies"]] == ["MemwatchPolicy shop/broken"]
    budget = pod["restart_budget"]
    # Two evictions in the last hour: one naming the workload, one of its pods without `related`.
    assert (budget["budget"], budget["used"], budget["left"], budget["window_seconds"]) == ("3/1h", 2, 1, HOUR)
    assert budget["oldest_action"] == iso(scene.first) and budget["frees_at"] is None
    assert budget["text"].startswith("1 of 3 left on Deployment/web (budget 3/1h; 2 actions in the last 1h")
    # The reads: the pod, both kinds of policy, the namespace (a cluster policy selects by label), the Events.
    gets = sorted(r.path for r in scene.api.requests("GET"))
    assert gets == sorted(["/api/v1/namespaces/shop/pods/web-5c4b7f9d8-q7wzt", "/api/v1/namespaces/shop",
                           f"{API}/namespaces/shop/memwatchpolicies", f"{API}/clustermemwatchpolicies",
                           "/api/v1/namespaces/shop/events"])
    assert scene.api.requests("GET", "/api/v1/namespaces/shop/events")[0].query["fieldSelector"] == "source=memwatch"
    assert scene.api.writes() == []


def test_live_text_and_the_dash_n_form(scene: Scene) -> None:
    code, out, err = run(*scene.argv("-n", "shop", "web-5c4b7f9d8-q7wzt"))
    assert code == 0 and err == ""
    assert out.startswith("Pod shop/web-5c4b7f9d8-q7wzt\n")
    assert re.search(r"^  limit +600Mi \(629145600 bytes\) +MemwatchPolicy shop/limits$", out, re.M), out
    assert re.search(r"^  action +dry-run +annotation$", out, re.M), out
    assert "  Restart budget: 1 of 3 left on Deployment/web" in out
    assert "MemwatchPolicy shop/broken would select it: spec.limit: 'lots'" in out


def test_the_context_namespace_is_the_default(scene: Scene, tmp_path: Path) -> None:
    assert explained(scene, "web-5c4b7f9d8-q7wzt")["namespace"] == "shop"  # the kubeconfig context's


def test_a_spent_budget_says_when_it_frees(scene: Scene) -> None:
    scene.api.policies[3]["spec"]["restartBudget"] = "2/1h"
    budget = explained(scene, "shop/web-5c4b7f9d8-q7wzt")["restart_budget"]
    assert (budget["used"], budget["left"]) == (2, 0)
    assert budget["frees_at"] == iso(scene.first + HOUR)
    assert "the next frees at" in budget["text"]


def test_pod_not_found(scene: Scene) -> None:
    code, out, err = run(*scene.argv("shop/absent"))
    assert code == 1 and out == ""
    assert err == "memwatch explain: error: pod shop/absent not found\n"


def test_forbidden_pod(scene: Scene) -> None:
    message = 'pods "web" is forbidden: User "jane" cannot get resource "pods" in the namespace "shop"'
    scene.api.refusals = [("GET", "/api/v1/namespaces/shop/pods/web", 403, message)]
    code, out, err = run(*scene.argv("shop/web"))
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("memwatch explain: error: forbidden: cannot get pod shop/web: HTTP 403") and message in err


def test_api_down(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kubeconfig = write_kubeconfig(tmp_path, f"http://127.0.0.1:{port}")
    code, out, err = run("--kubeconfig", str(kubeconfig), "shop/web")
    assert code == 1 and out == "" and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"memwatch explain: error: cannot reach the API server at http://127.0.0.1:{port} "
                          "(get pod shop/web)")


def test_what_the_caller_may_not_read_is_a_note(scene: Scene) -> None:
    scene.api.refusals = [("GET", f"{API}/clustermemwatchpolicies", 403, "clustermemwatchpolicies is forbidden"),
                          ("GET", "/api/v1/namespaces/shop/events", 403, "events is forbidden")]
    code, out, err = run(*scene.argv("shop/web-5c4b7f9d8-q7wzt", "-o", "json"))
    assert code == 0
    assert err.splitlines() == ["memwatch explain: cannot list ClusterMemwatchPolicy objects: HTTP 403 Forbidden: "
                                "clustermemwatchpolicies is forbidden; the explanation leaves them out"]
    doc = json.loads(out)
    assert doc["notes"] == [err.splitlines()[0].removeprefix("memwatch explain: ")]
    pod = doc["pods"][0]
    assert pod["policies"] == ["MemwatchPolicy shop/limits"]
    assert pod["restart_budget"]["left"] is None and pod["restart_budget"]["budget"] == "3/1h"  # the default
    assert "cannot read memwatch's Events in namespace shop: HTTP 403" in pod["restart_budget"]["text"]


def test_without_the_crds(scene: Scene) -> None:
    scene.api.crds = False
    code, out, err = run(*scene.argv("shop/web-5c4b7f9d8-q7wzt", "-o", "json"))
    assert code == 0
    assert err == ("memwatch explain: the memwatch.io policy CRDs are not installed: no MemwatchPolicy or "
                   "ClusterMemwatchPolicy applies\n")
    pod = json.loads(out)["pods"][0]
    assert pod["policies"] == [] and pod["problems"][0].startswith("memwatch.io/limit='': no watch limit")


def test_a_namespace_whose_labels_cannot_be_read(scene: Scene) -> None:
    scene.api.refusals = [("GET", "/api/v1/namespaces/shop", 403, "namespaces is forbidden")]
    code, out, err = run(*scene.argv("shop/web-5c4b7f9d8-q7wzt", "-o", "json"))
    assert code == 0 and "cannot get namespace shop (for its labels): HTTP 403" in err
    pod = json.loads(out)["pods"][0]
    assert pod["policies"] == ["MemwatchPolicy shop/limits"]
    assert pod["notes"] == ["the labels of namespace shop are unknown (it could not be read), so ClusterMemwatchPolicy "
                            "base (which selects namespaces by label) is taken as not selecting it"]


def test_not_watched_live(scene: Scene) -> None:
    pod = explained(scene, "shop/plain")
    assert pod["watched"] is False and pod["workload"] is None
    assert pod["why"] == ("ClusterMemwatchPolicy base selects it but sets no watch limit (a policy without one only "
                          "changes pods that a limit already watches)")


def test_a_finished_pod_is_not_watched(scene: Scene) -> None:
    scene.pod["status"]["phase"] = "Succeeded"
    pod = explained(scene, "shop/web-5c4b7f9d8-q7wzt")
    assert pod["watched"] is False and pod["why"].startswith("the pod has finished (phase Succeeded)")


# ---------------------------------------------------------------------------------------------
# budget_use on its own


def _ev(name: str, reason: str, at: float, related: str | None = None, pod: str = "web-abc12-xyz98",
        uid: str = "u1", component: str = "memwatch") -> dict[str, Any]:
    ev: dict[str, Any] = {"metadata": {"name": name, "namespace": "shop"}, "reason": reason,
                          "involvedObject": {"kind": "Pod", "name": pod, "uid": uid, "namespace": "shop"},
                          "source": {"component": component}, "firstTimestamp": iso(at)}
    if related:
        kind, _, rname = related.partition("/")
        ev["related"] = {"kind": kind, "name": rname, "namespace": "shop"}
    return ev


def test_budget_use_counts_each_action_once_in_the_window() -> None:
    now = 1_700_000_000.0
    budget = RestartBudget(3, HOUR)
    events = [
        _ev("a", REASON_EVICTED, now - 100, "Deployment/web"),
        _ev("a", REASON_EVICTED, now - 100, "Deployment/web"),  # the same Event twice (a re-list)
        _ev("b", REASON_KILLED, now - 200, "Deployment/web"),  # a kill in place that was the pod's action
        _ev("c", REASON_EVICTED, now - HOUR - 1, "Deployment/web"),  # before the window
        _ev("d", REASON_EVICTED, now - 300, "Deployment/other"),  # another workload
        _ev("e", REASON_EVICTED, now - 300, None, pod="unrelated-pod", uid="u9"),  # not a pod of it
        _ev("f", REASON_EVICTED, now - 300, None, pod="whatever", uid="me"),  # this very pod
        _ev("g", REASON_EVICTED, now - 300, "Deployment/web", component="kubelet"),
    ]
    use = explain.budget_use(events, "shop", "Deployment/web", "me", budget, now)
    assert (use.used, use.left, use.oldest, use.frees_at) == (3, 0, now - 300, now - 300 + HOUR)
    assert explain.budget_use([], "shop", "Deployment/web", "me", budget, now).left == 3
    statefulset = [_ev("s", REASON_EVICTED, now - 10, None, pod="db-0", uid="x")]
    assert explain.budget_use(statefulset, "shop", "StatefulSet/db", "me", budget, now).used == 1
    assert explain.budget_use(statefulset, "shop", "StatefulSet/dbx", "me", budget, now).used == 0
