"""`memwatch status` against the HTTP fakes: a real `Kube` from a real kubeconfig file, the real
usage sources, and the command's real output (table, wide, JSON), exit codes and stderr lines.

Expected figures are computed here from what the fakes serve (bytes, limits, times), never copied
from the command's own output.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from memwatch import cli, status
from memwatch.observability import (
    REASON_BLOCKED,
    REASON_BUDGET_EXHAUSTED,
    REASON_DRY_RUN,
    REASON_EVICTED,
    REASON_INVALID,
    REASON_KILLED,
    REASON_WARNING,
    build_event,
)
from memwatch.podindex import build_record
from memwatch.policy import Defaults
from memwatch.protections import Protections
from memwatch.quantity import format_bytes, parse_duration

from .fakeapi import METRICS, FakeApiServer, pod_metrics, status_body, summary, summary_pod, write_kubeconfig
from .fakekubelet import TOKEN, KubeletApiServer, Pki
from .fakes import GI, MI, iso, make_pod

ROOT = Path(__file__).resolve().parents[2]
LIMIT_NEAR, USED_NEAR = 512 * MI, 480 * MI
LIMIT_FAR_PERCENT, USED_FAR = 90, 100 * MI
LIMIT_OVER, USED_OVER = 256 * MI, 300 * MI
APP_LIMIT, APP_USED, SIDE_USED = 256 * MI, 250 * MI, 40 * MI
ESC = "\x1b["


# ---------------------------------------------------------------------------------------------
# Helpers


class Terminal(io.StringIO):
    """An output stream that says it is a terminal (UTF-8, as a modern one is)."""

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def isatty(self) -> bool:
        return True


def run(*argv: str, env: dict[str, str] | None = None, tty: bool = False) -> tuple[int, str, str]:
    """`memwatch status ARGV` in-process: (exit code, stdout, stderr)."""
    out: io.StringIO = Terminal() if tty else io.StringIO()
    err = io.StringIO()
    code = status.main(list(argv), env=env if env is not None else {}, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def table(text: str) -> list[dict[str, str]]:
    """Parse the table back into rows by its header's column positions (cells are left-aligned)."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[0]
    columns = [(m.group(0), m.start()) for m in re.finditer(r"\S+(?: \S+)*", header)]
    rows = []
    for line in lines[1:]:
        cells = {}
        for i, (name, start) in enumerate(columns):
            end = columns[i + 1][1] if i + 1 < len(columns) else None
            cells[name] = line[start:end].strip()
        rows.append(cells)
    return rows


def headroom_text(limit: int, used: int) -> str:
    room = limit - used
    return f"{100 * room / limit:.0f}% " + ("-" if room < 0 else "") + format_bytes(abs(room))


def memwatch_event(pod: dict[str, Any], reason: str, at: float, message: str = "m",
                   component: str = "memwatch") -> dict[str, Any]:
    record = build_record(pod, Defaults(), Protections(protected_namespaces=frozenset()).reason)
    assert record is not None
    event = build_event(record, reason, message, warning=False)
    event["firstTimestamp"] = event["lastTimestamp"] = iso(at)
    event["source"]["component"] = component
    if component != "memwatch":
        event["reportingComponent"] = component
    return event


# ---------------------------------------------------------------------------------------------
# The fake API server with the policy CRDs (installed, no policy, unless a test says otherwise)

POLICY_API = "/apis/memwatch.io/v1alpha1"
POLICY_LISTS = re.compile(POLICY_API + r"(?:/namespaces/([^/]+))?/(memwatchpolicies|clustermemwatchpolicies)")


class PolicyRoutes(FakeApiServer):
    """Also serves both kinds of policy (``crds`` False: not installed, 404) and Namespaces with their
    labels (``namespace_labels``), one by name and as a LIST. A LIST's items carry no kind, as the
    API server's do. ``refusals`` still come first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crds = True
        self.policies: list[dict[str, Any]] = []
        self.namespace_labels: dict[str, dict[str, str]] = {}

    def _namespace(self, name: str) -> dict[str, Any]:
        return {"kind": "Namespace", "apiVersion": "v1", "status": {"phase": "Active"},
                "metadata": {"name": name, "labels": self.namespace_labels.get(name, {})}}

    def _route(self, h: BaseHTTPRequestHandler, method: str, path: str, query: dict[str, str],
               body: Any) -> tuple[int, Any]:
        refused = any(verb == method and re.fullmatch(p, path) for verb, p, _, _ in self.refusals)
        if method != "GET" or refused:
            return super()._route(h, method, path, query, body)
        m = POLICY_LISTS.fullmatch(path)
        if m:
            if not self.crds:
                return 404, status_body(404, "NotFound", "the server could not find the requested resource")
            kind = "MemwatchPolicy" if m.group(2) == "memwatchpolicies" else "ClusterMemwatchPolicy"
            if kind == "ClusterMemwatchPolicy" and m.group(1):
                return 404, status_body(404, "NotFound", "a cluster-scoped resource has no namespace")
            items = [{k: v for k, v in p.items() if k != "kind"} for p in self.policies if p["kind"] == kind
                     and m.group(1) in (None, p["metadata"].get("namespace"))]
            return 200, {"kind": f"{kind}List", "apiVersion": "memwatch.io/v1alpha1", "metadata": {}, "items": items}
        known = self.namespaces | set(self.namespace_labels) | {p["metadata"]["namespace"] for p in self.pods}
        if path == "/api/v1/namespaces":
            return 200, {"kind": "NamespaceList", "apiVersion": "v1", "metadata": {},
                         "items": [self._namespace(n) for n in sorted(known)]}
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)", path)
        if m and m.group(1) in known:
            return 200, self._namespace(m.group(1))
        return super()._route(h, method, path, query, body)


class StatusApiServer(PolicyRoutes):
    """The fake API server, with the policy CRDs."""


class StatusKubeletApiServer(PolicyRoutes, KubeletApiServer):
    """The fake API server whose Nodes' kubelets are fake HTTPS servers, with the policy CRDs."""


@pytest.fixture
def api() -> Iterator[StatusApiServer]:
    server = StatusApiServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kubelet_api(pki: Pki) -> Iterator[StatusKubeletApiServer]:
    server = StatusKubeletApiServer(pki)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def policy(kind: str, name: str, spec: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    """A MemwatchPolicy (with ``namespace``) or ClusterMemwatchPolicy object as the API returns it."""
    meta: dict[str, Any] = {"name": name, "uid": f"uid-{name}", "generation": 1}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "memwatch.io/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}


# ---------------------------------------------------------------------------------------------
# The scene: pods near, far, over, container-limited, invalid, unwatched, and one protected


class Scene:
    def __init__(self, api: FakeApiServer, tmp_path: Path, token: str = "jane-token") -> None:
        self.api = api
        self.now = time.time()
        self.sampled = self.now - 3
        pods = {
            "near": make_pod("near", "shop", annotations={"memwatch.io/limit": "512Mi"}),
            "far": make_pod("far", "shop", annotations={"memwatch.io/limit": f"{LIMIT_FAR_PERCENT}%",
                                                        "memwatch.io/action": "delete"}, containers=[("app", "1Gi")]),
            "over": make_pod("over", "shop", annotations={"memwatch.io/limit": "256Mi"}, containers=[("app", None)]),
            "split": make_pod("split", "shop", annotations={"memwatch.io/limit": "1Gi",
                                                            "memwatch.io/limit.app": "256Mi"},
                              containers=[("app", "512Mi"), ("side", "512Mi")]),
            "bad": make_pod("bad", "shop", annotations={"memwatch.io/limit": "lots"}),
            "plain": make_pod("plain", "shop", annotations={}),
            "dns": make_pod("dns", "kube-system", annotations={"memwatch.io/limit": "100Mi"}),
        }
        self.pods = pods
        api.pods = list(pods.values())
        t = iso(self.sampled)
        api.pod_metrics = [
            pod_metrics("shop", "near", t, {"app": f"{USED_NEAR // MI}Mi"}),
            pod_metrics("shop", "far", t, {"app": f"{USED_FAR // MI}Mi"}),
            pod_metrics("shop", "over", t, {"app": f"{USED_OVER // MI}Mi"}),
            pod_metrics("shop", "split", t, {"app": f"{APP_USED // MI}Mi", "side": f"{SIDE_USED // MI}Mi"}),
            pod_metrics("shop", "bad", t, {"app": "10Mi"}),
            pod_metrics("shop", "plain", t, {"app": "900Mi"}),
            pod_metrics("kube-system", "dns", t, {"app": "90Mi"}),
        ]
        self.blocked_at, self.evicted_at = self.now - 125, self.now - 20
        api.events = [
            memwatch_event(pods["near"], REASON_DRY_RUN, self.now - 400),  # listed first, but older: not the last
            memwatch_event(pods["near"], REASON_BLOCKED, self.blocked_at, "Eviction refused (PodDisruptionBudget)"),
            memwatch_event(pods["near"], REASON_DRY_RUN, self.now - 300),  # listed last, but older
            memwatch_event(pods["over"], REASON_EVICTED, self.evicted_at, "Evicted: memory 300Mi is over"),
            memwatch_event(pods["over"], REASON_WARNING, self.now - 5),  # a finding, not an action
            memwatch_event(pods["bad"], REASON_INVALID, self.now - 5),
            memwatch_event(pods["far"], REASON_KILLED, self.now - 5, component="someone-else"),  # not memwatch's
        ]
        self.kubeconfig = write_kubeconfig(tmp_path, api.url, token=token)

    def uid(self, name: str) -> str:
        return str(self.pods[name]["metadata"]["uid"])

    def argv(self, *extra: str) -> list[str]:
        return ["--kubeconfig", str(self.kubeconfig), *extra]


@pytest.fixture
def scene(api: FakeApiServer, tmp_path: Path) -> Scene:
    return Scene(api, tmp_path)


# ---------------------------------------------------------------------------------------------
# Table and JSON, field by field


def test_table_field_by_field_nearest_first(scene: Scene) -> None:
    code, out, err = run(*scene.argv())
    assert code == 0, err
    rows = table(out)
    assert [r["POD"] for r in rows] == ["shop/over", "shop/split", "shop/near", "shop/far", "shop/bad"]
    by = {r["POD"].split("/")[1]: r for r in rows}
    far_limit = int(GI * LIMIT_FAR_PERCENT / 100)
    expected = {
        "near": ("480Mi", "512Mi", "1Gi", headroom_text(LIMIT_NEAR, USED_NEAR), "evict"),
        "far": ("100Mi", f"{format_bytes(far_limit)} ({LIMIT_FAR_PERCENT}%)", "1Gi",
                headroom_text(far_limit, USED_FAR), "delete"),
        "over": ("300Mi", "256Mi", "-", headroom_text(LIMIT_OVER, USED_OVER), "evict"),
        # Two limits: the container's is the tighter, and its own working set is the one shown.
        "split": ("250Mi", "256Mi", "512Mi", headroom_text(APP_LIMIT, APP_USED), "evict"),
    }
    for name, (working_set, limit, hard, headroom, action) in expected.items():
        row = by[name]
        assert (row["WORKING SET"], row["WATCH LIMIT"], row["HARD LIMIT"], row["HEADROOM"], row["ACTION"]) == \
            (working_set, limit, hard, headroom, action), name
        assert row["FROM"] == "annotation" and row["NODE"] == "node-1"
        assert row["GROWTH"] == "-"  # one read: no rate yet
    assert by["over"]["HEADROOM"].startswith("-") and by["over"]["CROSSES IN"] == "now"
    assert by["near"]["CROSSES IN"] == "-"
    for name, word, at in (("near", "blocked", scene.blocked_at), ("over", "evicted", scene.evicted_at)):
        m = re.fullmatch(rf"{word} (\S+) ago", by[name]["LAST ACTION"])
        assert m, by[name]["LAST ACTION"]
        assert abs(parse_duration(m[1]) - (time.time() - at)) <= 3
    assert by["far"]["LAST ACTION"] == "-"  # another component's Event is not memwatch's
    assert by["bad"]["ACTION"] == "invalid" and by["bad"]["WATCH LIMIT"] == "-" and by["bad"]["LAST ACTION"] == "-"
    assert "shop/plain" not in out and "kube-system" not in out  # unwatched; another namespace
    assert ESC not in out and "█" not in out
    assert err == ""


def test_json_field_by_field(scene: Scene) -> None:
    code, out, err = run(*scene.argv("-o", "json"))
    assert code == 0, err
    doc = json.loads(out)
    assert doc["namespace"] == "shop" and doc["source"] == "auto" and doc["source_used"] == "metrics-api"
    assert doc["usage_error"] is None and doc["events_error"] is None
    pods = {p["name"]: p for p in doc["pods"]}
    assert [p["name"] for p in doc["pods"]] == ["over", "split", "near", "far", "bad"]
    far_limit = int(GI * LIMIT_FAR_PERCENT / 100)
    for name, limit, used, hard, scope in [("near", LIMIT_NEAR, USED_NEAR, GI, "pod"),
                                           ("far", far_limit, USED_FAR, GI, "pod"),
                                           ("over", LIMIT_OVER, USED_OVER, None, "pod"),
                                           ("split", APP_LIMIT, APP_USED, 512 * MI, "container:app")]:
        pod = pods[name]
        assert pod["uid"] == scene.uid(name) and pod["namespace"] == "shop" and pod["node"] == "node-1"
        assert pod["working_set_bytes"] == used
        assert pod["watch_limit_bytes"] == limit and pod["limit_from"] == "annotation" and pod["scope"] == scope
        assert pod["hard_limit_bytes"] == hard
        assert pod["headroom_bytes"] == limit - used
        assert pod["headroom_percent"] == pytest.approx(100 * (limit - used) / limit, abs=0.01)
        assert pod["usage_source"] == "metrics-api"
        assert pod["sample_time"] == iso(scene.sampled)
        assert pod["growth_bytes_per_second"] is None
    assert pods["far"]["watch_limit"] == f"{LIMIT_FAR_PERCENT}%" and pods["far"]["action"] == "delete"
    assert pods["split"]["containers"] == {"app": APP_USED, "side": SIDE_USED}
    assert pods["over"]["seconds_to_limit"] == 0 and pods["near"]["seconds_to_limit"] is None
    assert pods["near"]["last_action"] == {"reason": REASON_BLOCKED, "result": "blocked",
                                           "time": iso(scene.blocked_at),
                                           "message": "Eviction refused (PodDisruptionBudget)"}
    assert pods["over"]["last_action"]["reason"] == REASON_EVICTED
    assert pods["over"]["last_action"]["time"] == iso(scene.evicted_at)
    assert pods["far"]["last_action"] is None and pods["bad"]["last_action"] is None
    bad = pods["bad"]
    assert bad["action"] == "invalid" and bad["watch_limit_bytes"] is None and bad["headroom_bytes"] is None
    assert bad["problems"] and "memwatch.io/limit='lots'" in bad["problems"][0]
    # One bulk usage read, one pod LIST, one LIST of each kind of policy, one Event LIST, one
    # namespace check: nothing per pod (and no namespace labels: no policy selects namespaces by label).
    gets = [r.path for r in scene.api.requests("GET")]
    assert sorted(gets) == sorted([METRICS, METRICS + "/namespaces/shop/pods", "/api/v1/namespaces/shop",
                                   "/api/v1/namespaces/shop/pods", "/api/v1/namespaces/shop/events",
                                   POLICY_API + "/namespaces/shop/memwatchpolicies",
                                   POLICY_API + "/clustermemwatchpolicies"])
    assert all(p["policies"] == [] and p["workload"] is None for p in doc["pods"])
    assert scene.api.requests("GET", "/api/v1/namespaces/shop/events")[0].query["fieldSelector"] == "source=memwatch"
    assert scene.api.writes() == []


@pytest.mark.parametrize(("by", "order"), [
    ("usage", ["near", "over", "split", "far", "bad"]),  # largest working set first (split: 250Mi of app)
    ("headroom", ["over", "split", "near", "far", "bad"]),
])
def test_sort(scene: Scene, by: str, order: list[str]) -> None:
    code, out, _ = run(*scene.argv("-o", "json", "--sort", by))
    assert code == 0
    assert [p["name"] for p in json.loads(out)["pods"]] == order


def test_wide_adds_scope_source_age_and_notes(scene: Scene) -> None:
    code, out, _ = run(*scene.argv("-A", "-o", "wide"))
    assert code == 0
    by = {r["POD"]: r for r in table(out)}
    assert by["shop/split"]["SCOPE"] == "container:app" and by["shop/near"]["SCOPE"] == "pod"
    assert by["shop/near"]["SOURCE"] == "metrics-api" and by["shop/near"]["SAMPLED"].endswith("s ago")
    assert by["shop/bad"]["NOTE"].startswith("invalid: memwatch.io/limit='lots'")
    dns = by["kube-system/dns"]
    assert dns["ACTION"] == "protected" and "namespace kube-system is protected" in dns["NOTE"]
    assert dns["HEADROOM"] == headroom_text(100 * MI, 90 * MI)


def test_the_controller_flags_change_the_action(scene: Scene) -> None:
    code, out, _ = run(*scene.argv("-A", "-o", "json", "--allow-namespace", "kube-system", "--dry-run"))
    assert code == 0
    actions = {p["name"]: p["action"] for p in json.loads(out)["pods"]}
    assert actions == {"dns": "dry-run", "near": "dry-run", "far": "dry-run", "over": "dry-run", "split": "dry-run",
                       "bad": "invalid"}
    code, out, _ = run(*scene.argv("-A", "-o", "json", "--default-action", "delete"))
    actions = {p["name"]: p["action"] for p in json.loads(out)["pods"]}
    assert actions["near"] == "delete" and actions["far"] == "delete" and actions["dns"] == "protected"


# ---------------------------------------------------------------------------------------------
# Terminal or pipe


def test_no_colour_or_bar_when_piped(scene: Scene) -> None:
    _, out, _ = run(*scene.argv())
    assert ESC not in out and "█" not in out and "░" not in out


def test_colour_and_bar_on_a_terminal(scene: Scene) -> None:
    code, out, _ = run(*scene.argv(), tty=True)
    assert code == 0
    lines = {line.split()[0].replace(status.BOLD, ""): line for line in out.splitlines()[1:]}
    plain = {name: re.sub(r"\x1b\[[0-9;]*m", "", line) for name, line in lines.items()}
    for name, limit, used, colour in [("shop/near", LIMIT_NEAR, USED_NEAR, status.RED),  # 6% left
                                      ("shop/far", int(GI * 0.9), USED_FAR, status.GREEN),
                                      ("shop/over", LIMIT_OVER, USED_OVER, status.BOLD + status.RED)]:
        filled = round(min(1.0, used / limit) * status.BAR_WIDTH)
        bar = "█" * filled + "░" * (status.BAR_WIDTH - filled)
        assert f"{colour}{bar} {headroom_text(limit, used)}" in lines[name], lines[name]
        assert f"{bar} {headroom_text(limit, used)}" in plain[name]
    assert out.splitlines()[0].startswith(status.BOLD + "POD")
    # NO_COLOR (no-color.org) turns it off on a terminal too.
    _, out, _ = run(*scene.argv(), tty=True, env={"NO_COLOR": "1"})
    assert ESC not in out and "█" not in out


# ---------------------------------------------------------------------------------------------
# No usage source: the pods and their limits anyway, and one line saying which and why


def test_no_metrics_api(scene: Scene) -> None:
    scene.api.metrics_served = False
    code, out, err = run(*scene.argv("--source", "metrics-api"))
    assert code == 0
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("memwatch status: no usage source reachable: metrics-api: HTTP 404")
    assert "metrics-server" in lines[0] and "--source kubelet" in lines[0]
    rows = {r["POD"]: r for r in table(out)}
    assert set(rows) == {"shop/near", "shop/far", "shop/over", "shop/split", "shop/bad"}
    assert rows["shop/near"]["WATCH LIMIT"] == "512Mi" and rows["shop/near"]["HARD LIMIT"] == "1Gi"
    assert {r["WORKING SET"] for r in rows.values()} == {"-"} and {r["HEADROOM"] for r in rows.values()} == {"-"}
    code, out, err = run(*scene.argv("--source", "metrics-api", "-o", "json"))
    doc = json.loads(out)
    assert doc["usage_error"].startswith("no usage source reachable: metrics-api: HTTP 404")
    assert all(p["working_set_bytes"] is None for p in doc["pods"])


def test_metrics_api_forbidden_says_what_rbac_it_needs(scene: Scene) -> None:
    scene.api.refusals = [("GET", METRICS + r"/namespaces/shop/pods", 403,
                           'pods.metrics.k8s.io is forbidden: User "jane" cannot list resource "pods"')]
    code, out, err = run(*scene.argv())
    assert code == 0 and len(err.splitlines()) == 1
    assert "HTTP 403" in err and "list on pods.metrics.k8s.io" in err
    assert len(table(out)) == 5


def test_auto_reads_the_kubelets_without_metrics_server(kubelet_api: KubeletApiServer, tmp_path: Path,
                                                        pki: Pki) -> None:
    """As the controller: no metrics API, so the kubelet Summary, one GET per node, straight to the kubelet."""
    scene = Scene(kubelet_api, tmp_path, token=TOKEN)  # the token the fake kubelets accept
    kubelet_api.metrics_served = False
    t = iso(scene.sampled)
    kubelet_api.summaries["node-1"] = summary("node-1", t, [
        summary_pod("shop", name, scene.uid(name), t, {"app": used}) for name, used in
        (("near", USED_NEAR), ("far", USED_FAR))])
    code, out, err = run(*scene.argv("-o", "json", "--kubelet-ca-file", str(pki.ca)))
    assert code == 0
    doc = json.loads(out)
    assert doc["source_used"] == "kubelet"
    got = {p["name"]: p for p in doc["pods"]}
    assert got["near"]["working_set_bytes"] == USED_NEAR and got["near"]["usage_source"] == "kubelet"
    assert got["far"]["working_set_bytes"] == USED_FAR
    assert got["over"]["working_set_bytes"] is None  # the kubelet does not report it
    assert err == "memwatch status: no usage sample for 2 pods from source kubelet (a pod's first sample comes " \
                  "10-20 s after it starts)\n"  # over and split; bad has no limit to measure against
    assert [(r.node, r.path) for r in kubelet_api.kubelet_requests()] == [("node-1", "/stats/summary")]


def test_no_source_at_all_says_which_and_why(kubelet_api: KubeletApiServer, tmp_path: Path) -> None:
    scene = Scene(kubelet_api, tmp_path)
    kubelet_api.metrics_served = False  # and no node has a kubelet (no Node object either)
    code, out, err = run(*scene.argv())
    assert code == 0
    assert err.splitlines() == [err.strip()], err  # one line
    assert err.startswith("memwatch status: no usage source reachable: source auto chose kubelet: kubelet: "
                          "every node failed: node-1: reading its Node: HTTP 404")
    assert {r["WATCH LIMIT"] for r in table(out)} >= {"512Mi", "256Mi"}


# ---------------------------------------------------------------------------------------------
# Bad input and a cluster that says no: one line, non-zero, no traceback, no hang


def _one_line_error(code: int, out: str, err: str, expected_code: int, *fragments: str) -> None:
    assert code == expected_code, err
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


def test_api_down(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    kubeconfig = write_kubeconfig(tmp_path, f"http://127.0.0.1:{port}")
    _one_line_error(*run("--kubeconfig", str(kubeconfig)), 1,
                    f"memwatch status: error: cannot reach the API server at http://127.0.0.1:{port}",
                    "Connection refused")


def test_api_that_never_answers_times_out(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # connections are accepted by the kernel, and never answered
        kubeconfig = write_kubeconfig(tmp_path, f"http://127.0.0.1:{listener.getsockname()[1]}")
        started = time.monotonic()
        result = run("--kubeconfig", str(kubeconfig), "--request-timeout", "0.5s")
        elapsed = time.monotonic() - started
    _one_line_error(*result, 1, "cannot reach the API server", "timed out")
    assert elapsed < 10


def test_forbidden_pods(scene: Scene) -> None:
    message = 'pods is forbidden: User "jane" cannot list resource "pods" in API group "" in the namespace "shop"'
    scene.api.refusals = [("GET", "/api/v1/namespaces/shop/pods", 403, message)]
    _one_line_error(*run(*scene.argv()), 1, "memwatch status: error: forbidden: cannot list pods in namespace shop",
                    message)


def test_unauthorized(scene: Scene) -> None:
    scene.api.refusals = [("GET", "/api/v1/namespaces/shop", 401, "Unauthorized")]
    _one_line_error(*run(*scene.argv()), 1, "refused your credentials", "check your kubeconfig")


def test_may_not_read_namespaces_or_events(scene: Scene) -> None:
    """Less RBAC than the whole view needs: the rows anyway, and a line for what is missing."""
    scene.api.refusals = [("GET", "/api/v1/namespaces/shop", 403, 'namespaces "shop" is forbidden'),
                          ("GET", "/api/v1/namespaces/shop/events", 403, "events is forbidden")]
    code, out, err = run(*scene.argv())
    assert code == 0
    assert err.splitlines() == ["memwatch status: cannot read memwatch's Events in namespace shop: HTTP 403 "
                                "Forbidden: events is forbidden; LAST ACTION shows '?'"]
    assert {r["LAST ACTION"] for r in table(out)} == {"?"}


def test_unknown_namespace(scene: Scene) -> None:
    _one_line_error(*run(*scene.argv("-n", "nope")), 1, "memwatch status: error: namespace 'nope' not found")


@pytest.mark.parametrize("selector", ["a=b=c", "app in (web", "!"])
def test_bad_selector_is_refused_before_any_request(scene: Scene, selector: str) -> None:
    _one_line_error(*run(*scene.argv("-l", selector)), 2, "argument -l/--selector", repr(selector))
    assert scene.api.requests() == []


def test_selector_the_api_server_refuses(scene: Scene) -> None:
    scene.api.refusals = [("GET", "/api/v1/namespaces/shop/pods", 400,
                           'unable to parse requirement: values[0][app]: Invalid value: "-web"')]
    _one_line_error(*run(*scene.argv("-l", "app=-web")), 2, "invalid label selector 'app=-web'", "-web")


def test_selector_is_sent_to_the_api_server(scene: Scene) -> None:
    code, _, _ = run(*scene.argv("-l", "tier=web", "-o", "json"))
    assert code == 0
    assert scene.api.requests("GET", "/api/v1/namespaces/shop/pods")[0].query["labelSelector"] == "tier=web"
    assert scene.api.requests("GET", METRICS + "/namespaces/shop/pods")[0].query["labelSelector"] == "tier=web"


@pytest.mark.parametrize(("argv", "fragment"), [
    (["-n", "shop", "-A"], "not allowed with argument"),
    (["--sort", "name"], "invalid choice: 'name'"),
    (["-o", "yaml"], "invalid choice: 'yaml'"),
    (["--interval", "0s"], "must be greater than zero"),
    (["--source", "prometheus"], "invalid choice"),
])
def test_bad_flags_one_line_exit_2(scene: Scene, argv: list[str], fragment: str) -> None:
    _one_line_error(*run(*scene.argv(*argv)), 2, fragment)


def test_kubelet_flags_that_exclude_each_other(scene: Scene, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    _one_line_error(*run(*scene.argv("--kubelet-ca-file", str(ca), "--kubelet-insecure-tls")), 2, "exclude each other")


def test_missing_kubeconfig(tmp_path: Path) -> None:
    _one_line_error(*run("--kubeconfig", str(tmp_path / "none")), 1, "kubeconfig", "no such file")
    garbage = tmp_path / "garbage"
    garbage.write_text("clusters: 3\n")
    _one_line_error(*run("--kubeconfig", str(garbage)), 1, f"kubeconfig {garbage}:")


def test_unknown_context(scene: Scene) -> None:
    _one_line_error(*run(*scene.argv("--context", "prod")), 1, "kubeconfig", "prod")


# ---------------------------------------------------------------------------------------------
# Whose kubeconfig, which namespace


def test_namespace_and_kubeconfig_come_as_kubectl_finds_them(scene: Scene, tmp_path: Path) -> None:
    scene.api.namespaces = {"blog"}
    blog = write_kubeconfig(tmp_path, scene.api.url, namespace="blog", name="blog-kubeconfig")
    scene.api.clear()
    code, _, err = run("-o", "json", env={"KUBECONFIG": f"{tmp_path / 'absent'}:{blog}"})
    assert code == 0, err
    assert scene.api.requests("GET", "/api/v1/namespaces/blog/pods"), "the context's namespace"
    scene.api.clear()
    no_namespace = write_kubeconfig(tmp_path, scene.api.url, namespace=None, name="plain-kubeconfig")
    code, out, err = run("--kubeconfig", str(no_namespace), "-o", "json")
    assert code == 1 and "namespace 'default' not found" in err  # the context names none: default
    scene.api.clear()
    code, out, _ = run("--kubeconfig", str(no_namespace), "-A", "-o", "json")
    assert code == 0 and json.loads(out)["namespace"] is None
    assert sorted(r.path for r in scene.api.requests("GET") if r.path.endswith("/pods")) == \
        sorted([METRICS + "/pods", "/api/v1/pods"])
    assert {p["namespace"] for p in json.loads(out)["pods"]} == {"shop", "kube-system"}
    assert scene.api.requests("GET", "/api/v1/events"), "every namespace's Events"


def test_the_user_token_is_sent(scene: Scene) -> None:
    """The caller's own credentials (their RBAC), from their kubeconfig."""
    seen: list[str | None] = []
    original = scene.api._dispatch

    def spy(h: Any) -> None:
        seen.append(h.headers.get("Authorization"))
        original(h)

    scene.api._dispatch = spy  # type: ignore[method-assign]
    assert run(*scene.argv())[0] == 0
    assert seen and set(seen) == {"Bearer jane-token"}


def test_cli_wiring_and_the_kubectl_plugin(scene: Scene, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.main(["status", *scene.argv("-o", "json")], env={}) == 0
    assert json.loads(capsys.readouterr().out)["pods"][0]["name"] == "over"
    monkeypatch.setattr(sys, "argv", ["kubectl-memwatch", "status", *scene.argv("-n", "nope")])
    assert cli.kubectl_main() == 1
    assert capsys.readouterr().err == "kubectl memwatch status: error: namespace 'nope' not found\n"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kubectl-memwatch"] == "memwatch.cli:kubectl_main"
    installed = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert installed.get("kubectl-memwatch") == "memwatch.cli:kubectl_main", "reinstall: make install"


def test_kubectl_plugin_runs_from_path(scene: Scene) -> None:
    """kubectl finds `kubectl-memwatch` on $PATH and runs it with the words after `memwatch`."""
    plugin = Path(sys.executable).parent / "kubectl-memwatch"
    assert plugin.exists(), "the console script is not installed: make install"
    proc = subprocess.run([str(plugin), "status", *scene.argv()], capture_output=True, text=True, timeout=60,
                          env=_clean_env())
    assert proc.returncode == 0, proc.stderr
    assert table(proc.stdout)[0]["POD"] == "shop/over"


def test_help_lists_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"], env={})
    assert "status" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main(["status", "--help"], env={})
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--namespace", "--all-namespaces", "--selector", "--sort", "--watch", "--output", "--source",
                 "--kubelet-insecure-tls", "--kubeconfig", "--context", "--dry-run", "--protected-namespace"):
        assert flag in text


def test_status_import_stays_light() -> None:
    code = ("import sys, memwatch.status, memwatch.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'kubernetes', 'kopf', 'urllib3'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------
# --watch: growth from successive reads, and Ctrl-C


def test_watch_measures_growth_between_reads(scene: Scene) -> None:
    """Each read brings a newer sample; the growth rate and time to cross are fitted over them."""
    rate = 4 * MI  # bytes per second, for `near`
    start = time.time() - 30
    frames: list[int] = []

    def serve(step: int) -> None:
        t = start + 10 * step
        used = USED_NEAR - 3 * rate * 10 + rate * 10 * step
        scene.api.pod_metrics = [pod_metrics("shop", "near", iso(t), {"app": f"{used // MI}Mi"}),
                                 pod_metrics("shop", "far", iso(t), {"app": f"{USED_FAR // MI}Mi"})]

    serve(0)
    out, err = io.StringIO(), io.StringIO()
    args = status.build_parser(env={}).parse_args(scene.argv("--watch", "-o", "json", "--interval", "1s"))
    kube, opts, source = status.connect(args, {})
    reader = status.Reader(kube, opts, source)
    view = status.View(opts, out, err, {})

    def sleep(seconds: float) -> None:
        assert 0 <= seconds <= 1
        frames.append(1)
        if len(frames) == 4:
            raise KeyboardInterrupt
        serve(len(frames))

    assert status.watch(reader, view, reader.read(), sleep=sleep) == 0
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(docs) == 4
    near = [next(p for p in d["pods"] if p["name"] == "near") for d in docs]
    assert near[0]["growth_bytes_per_second"] is None
    for doc in near[1:]:
        assert doc["growth_bytes_per_second"] == pytest.approx(rate, rel=0.01)
    last = near[-1]
    assert last["seconds_to_limit"] == pytest.approx((LIMIT_NEAR - last["working_set_bytes"]) / rate, abs=0.2)
    far = next(p for p in docs[-1]["pods"] if p["name"] == "far")
    assert far["growth_bytes_per_second"] == 0 and far["seconds_to_limit"] is None  # flat: never crosses
    by_growth = status.sort_rows(status.build_rows(reader.read(), view.history), "growth")
    assert [r.record.name for r in by_growth][:2] == ["near", "far"]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMWATCH_") and k != "KUBECONFIG"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _lines(stream: Any) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in iter(stream.readline, "")], daemon=True).start()
    return lines


def _wait_for(lines: queue.Queue[str], seen: list[str], check: Callable[[list[str]], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check(seen):
        remaining = deadline - time.monotonic()
        assert remaining > 0, "output not seen in time:\n" + "".join(seen)
        try:
            seen.append(lines.get(timeout=remaining))
        except queue.Empty:
            continue


def _interruptible() -> None:
    """In the child, before exec: Ctrl-C as a terminal delivers it. A test run started as a background
    job of a shell without job control (`(make test &)`, `nohup ... &`) inherits SIGINT ignored, and
    Python then installs no KeyboardInterrupt handler: the command under test would never see Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.timeout(60)
def test_ctrl_c_ends_watch_cleanly(scene: Scene) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "memwatch", "status", *scene.argv("--watch", "--interval", "0.2s")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_clean_env(),
                            preexec_fn=_interruptible)
    try:
        seen: list[str] = []
        _wait_for(_lines(proc.stdout), seen, lambda s: sum(line.startswith("Every 0.2s:") for line in s) >= 3, 30)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    frames = "".join(seen).split("Every 0.2s:")[1:]
    assert all("shop/over" in frame and "shop/near" in frame for frame in frames[:2])
    assert ESC not in "".join(seen)  # piped: frames are appended, plain


@pytest.mark.timeout(60)
def test_ctrl_c_during_a_single_read_is_clean(tmp_path: Path) -> None:
    with socket.socket() as listener:  # an API server that never answers: the read is under way
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        kubeconfig = write_kubeconfig(tmp_path, f"http://127.0.0.1:{listener.getsockname()[1]}")
        proc = subprocess.Popen([sys.executable, "-m", "memwatch", "status", "--kubeconfig", str(kubeconfig),
                                 "--request-timeout", "30s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=_clean_env(), preexec_fn=_interruptible)
        try:
            conn, _ = listener.accept()  # the request arrived: the command is waiting for the answer
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
            conn.close()
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err and out == ""


def test_watch_keeps_the_last_rows_through_a_failed_read(scene: Scene) -> None:
    """The API server refuses one read: the frame keeps the rows it had and says why; then recovers."""
    out, err = io.StringIO(), io.StringIO()
    args = status.build_parser(env={}).parse_args(scene.argv("--watch", "--interval", "1s"))
    kube, opts, source = status.connect(args, {})
    reader = status.Reader(kube, opts, source)
    view = status.View(opts, out, err, {})
    sleeps = 0

    def sleep(seconds: float) -> None:
        nonlocal sleeps
        sleeps += 1
        if sleeps == 1:
            scene.api.refusals = [("GET", "/api/v1/namespaces/shop/pods", 403, "pods is forbidden")]
        elif sleeps == 2:
            scene.api.refusals = []
        else:
            raise KeyboardInterrupt

    assert status.watch(reader, view, reader.read(), sleep=sleep) == 0
    frames = [f for f in out.getvalue().split("\n\n") if f.strip()]
    assert len(frames) == 3
    rows = [table("\n".join(line for line in f.splitlines()[1:] if not line.startswith("!"))) for f in frames]
    assert [r["POD"] for r in rows[0]] == [r["POD"] for r in rows[1]] == [r["POD"] for r in rows[2]]
    assert "! forbidden: cannot list pods in namespace shop: HTTP 403 Forbidden: pods is forbidden; showing the " \
           "last read" in frames[1]
    assert "!" not in frames[0] and "!" not in frames[2]
    assert err.getvalue() == ""


def test_namespace_name_is_checked_before_any_request(scene: Scene) -> None:
    _one_line_error(*run(*scene.argv("-n", "shop/../x")), 2, "is not a namespace name")
    assert scene.api.requests() == []


def test_a_server_that_is_not_kubernetes(tmp_path: Path) -> None:
    class Html(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>proxy login</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        kubeconfig = write_kubeconfig(tmp_path, f"http://127.0.0.1:{server.server_address[1]}")
        _one_line_error(*run("--kubeconfig", str(kubeconfig)), 1,
                        "did not answer as a Kubernetes API server")
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------
# Policies: pods resolved as the controller resolves them, and where each watch limit comes from

WEB_LIMIT, WEB_USED, OWN_LIMIT, SIDE_LIMIT, BATCH_SIDE_USED = 600 * MI, 500 * MI, 700 * MI, 300 * MI, 280 * MI
CRDS_MISSING = ("memwatch status: the memwatch.io policy CRDs are not installed: no MemwatchPolicy or "
                "ClusterMemwatchPolicy applies; watch limits come from annotations only")


def with_policies(scene: Scene) -> StatusApiServer:
    """The scene plus pods that only policies watch, and the policies: in shop, a MemwatchPolicy giving
    app=web pods a limit and action delete; cluster-wide, a ClusterMemwatchPolicy giving tier=batch pods
    of team=shop namespaces a limit on their `side` container; in blog, a MemwatchPolicy watching every
    pod; and an invalid one (never applied)."""
    api = scene.api
    assert isinstance(api, StatusApiServer)
    web = {"app": "web"}
    extra = {
        "web": make_pod("web", "shop", annotations={}, labels=web),  # only the policy watches it
        "own": make_pod("own", "shop", annotations={"memwatch.io/limit": "700Mi"}, labels=web),  # its own limit
        "batch": make_pod("batch", "shop", annotations={}, labels={"tier": "batch"},
                          containers=[("app", "512Mi"), ("side", "512Mi")]),
        "post": make_pod("post", "blog", annotations={}, labels=web),
        "loner": make_pod("loner", "shop", annotations={}, labels={"app": "other"}),  # nothing selects it
    }
    scene.pods.update(extra)
    api.pods = list(scene.pods.values())
    t = iso(scene.sampled)
    api.pod_metrics += [pod_metrics("shop", "web", t, {"app": f"{WEB_USED // MI}Mi"}),
                        pod_metrics("shop", "own", t, {"app": f"{WEB_USED // MI}Mi"}),
                        pod_metrics("shop", "batch", t, {"app": "100Mi", "side": f"{BATCH_SIDE_USED // MI}Mi"}),
                        pod_metrics("blog", "post", t, {"app": "10Mi"}),
                        pod_metrics("shop", "loner", t, {"app": "900Mi"})]
    api.policies = [
        policy("MemwatchPolicy", "limits", {"podSelector": {"matchLabels": web}, "limit": "600Mi", "action": "delete"},
               "shop"),
        policy("MemwatchPolicy", "broken", {"podSelector": {"matchLabels": web}, "limit": "lots"}, "shop"),
        policy("ClusterMemwatchPolicy", "batch", {"namespaceSelector": {"matchLabels": {"team": "shop"}},
                                                  "podSelector": {"matchLabels": {"tier": "batch"}},
                                                  "containers": {"side": "300Mi"}}),
        policy("MemwatchPolicy", "everything", {"limit": "1Gi"}, "blog"),
    ]
    api.namespace_labels = {"shop": {"team": "shop"}, "blog": {"team": "blog"}}
    return api


def test_policy_watched_pods_say_which_policy_set_their_limit(scene: Scene) -> None:
    api = with_policies(scene)
    code, out, err = run(*scene.argv("-o", "json"))
    assert code == 0 and err == "", err
    pods = {p["name"]: p for p in json.loads(out)["pods"]}
    assert set(pods) == {"near", "far", "over", "split", "bad", "web", "own", "batch"}  # not loner, not blog's
    web, own, batch = pods["web"], pods["own"], pods["batch"]
    assert (web["limit_from"], web["watch_limit_bytes"], web["scope"], web["action"]) == \
        ("MemwatchPolicy shop/limits", WEB_LIMIT, "pod", "delete")
    assert web["headroom_bytes"] == WEB_LIMIT - WEB_USED and web["policies"] == ["MemwatchPolicy shop/limits"]
    # Its own annotation's limit wins; the policy still gives it its action.
    assert (own["limit_from"], own["watch_limit_bytes"], own["action"]) == ("annotation", OWN_LIMIT, "delete")
    assert own["policies"] == ["MemwatchPolicy shop/limits"]
    assert (batch["limit_from"], batch["watch_limit_bytes"], batch["scope"], batch["working_set_bytes"]) == \
        ("ClusterMemwatchPolicy batch", SIDE_LIMIT, "container:side", BATCH_SIDE_USED)
    assert batch["policies"] == ["ClusterMemwatchPolicy batch"] and batch["action"] == "evict"
    # Annotated pods no policy selects are as they were.
    assert pods["near"]["limit_from"] == "annotation" and pods["near"]["policies"] == []
    # The table says the same; the namespace's labels were read once, for the cluster policy's namespaceSelector.
    code, out, _ = run(*scene.argv())
    by = {r["POD"]: r for r in table(out)}
    assert {name: by[f"shop/{name}"]["FROM"] for name in ("web", "own", "batch", "near")} == {
        "web": "MemwatchPolicy shop/limits", "own": "annotation", "batch": "ClusterMemwatchPolicy batch",
        "near": "annotation"}
    assert by["shop/web"]["WATCH LIMIT"] == "600Mi" and by["shop/web"]["ACTION"] == "delete"
    assert by["shop/web"]["HEADROOM"] == headroom_text(WEB_LIMIT, WEB_USED)
    assert by["shop/batch"]["HEADROOM"] == headroom_text(SIDE_LIMIT, BATCH_SIDE_USED)
    assert not api.requests("GET", "/api/v1/namespaces"), "one namespace: its own labels, no LIST"


def test_policies_of_every_namespace_with_all_namespaces(scene: Scene) -> None:
    api = with_policies(scene)
    api.clear()
    code, out, err = run(*scene.argv("-A", "-o", "json"))
    assert code == 0 and err == "", err
    pods = {(p["namespace"], p["name"]): p for p in json.loads(out)["pods"]}
    assert pods[("blog", "post")]["limit_from"] == "MemwatchPolicy blog/everything"
    assert pods[("blog", "post")]["watch_limit_bytes"] == GI
    assert pods[("shop", "web")]["limit_from"] == "MemwatchPolicy shop/limits"  # not blog's
    assert pods[("shop", "batch")]["limit_from"] == "ClusterMemwatchPolicy batch"
    assert ("shop", "loner") not in pods
    gets = {r.path for r in api.requests("GET")}
    assert {POLICY_API + "/memwatchpolicies", POLICY_API + "/clustermemwatchpolicies", "/api/v1/namespaces"} <= gets
    assert not any("/namespaces/shop/memwatchpolicies" in path for path in gets)


def test_no_policy_crds_said_once_and_annotations_only(scene: Scene) -> None:
    api = with_policies(scene)
    api.crds = False
    code, out, err = run(*scene.argv())
    assert code == 0
    assert err.splitlines() == [CRDS_MISSING]
    by = {r["POD"]: r for r in table(out)}
    assert set(by) == {"shop/near", "shop/far", "shop/over", "shop/split", "shop/bad", "shop/own"}
    assert {r["FROM"] for r in by.values() if r["WATCH LIMIT"] != "-"} == {"annotation"}
    assert by["shop/own"]["ACTION"] == "evict"  # no policy gives it delete
    code, out, err = run(*scene.argv("-o", "json"))
    assert code == 0 and json.loads(out)["notes"] == [CRDS_MISSING[len("memwatch status: "):]]


def test_no_policy_crds_said_once_with_watch(scene: Scene) -> None:
    """--watch: the note in the first frame only (the reads go on every interval)."""
    assert isinstance(scene.api, StatusApiServer)
    scene.api.crds = False
    out, err = io.StringIO(), io.StringIO()
    args = status.build_parser(env={}).parse_args(scene.argv("--watch", "--interval", "1s"))
    kube, opts, source = status.connect(args, {})
    reader = status.Reader(kube, opts, source)
    view = status.View(opts, out, err, {})
    sleeps = 0

    def sleep(seconds: float) -> None:
        nonlocal sleeps
        sleeps += 1
        if sleeps == 3:
            raise KeyboardInterrupt

    assert status.watch(reader, view, reader.read(), sleep=sleep) == 0
    frames = [f for f in out.getvalue().split("\n\n") if f.strip()]
    assert len(frames) == 3
    note = "! " + CRDS_MISSING[len("memwatch status: "):]
    assert [note in f for f in frames] == [True, False, False]
    assert len(scene.api.requests("GET", POLICY_API + "/clustermemwatchpolicies")) == 3
    assert err.getvalue() == ""


def test_policies_forbidden_said_once_never_a_failure(scene: Scene) -> None:
    with_policies(scene)
    scene.api.refusals = [
        ("GET", POLICY_API + "/namespaces/shop/memwatchpolicies", 403, "memwatchpolicies.memwatch.io is forbidden"),
        ("GET", POLICY_API + "/clustermemwatchpolicies", 403, "clustermemwatchpolicies.memwatch.io is forbidden")]
    code, out, err = run(*scene.argv())
    assert code == 0
    assert err.splitlines() == [
        "memwatch status: cannot list MemwatchPolicy objects in namespace shop: HTTP 403 Forbidden: "
        "memwatchpolicies.memwatch.io is forbidden; cannot list ClusterMemwatchPolicy objects: HTTP 403 Forbidden: "
        "clustermemwatchpolicies.memwatch.io is forbidden; pods are resolved without them"]
    by = {r["POD"]: r for r in table(out)}
    assert "shop/web" not in by and by["shop/own"]["FROM"] == "annotation" and by["shop/near"]["WATCH LIMIT"]
    # One kind readable: its policies apply; the line names the other only.
    scene.api.refusals = scene.api.refusals[1:]
    code, out, err = run(*scene.argv("-o", "json"))
    assert code == 0 and err.splitlines() == [
        "memwatch status: cannot list ClusterMemwatchPolicy objects: HTTP 403 Forbidden: "
        "clustermemwatchpolicies.memwatch.io is forbidden; pods are resolved without them"]
    pods = {p["name"]: p for p in json.loads(out)["pods"]}
    assert pods["web"]["limit_from"] == "MemwatchPolicy shop/limits" and "batch" not in pods


def test_namespace_labels_unreadable_leave_out_the_policies_that_need_them(scene: Scene) -> None:
    with_policies(scene)
    scene.api.refusals = [("GET", "/api/v1/namespaces/shop", 403, 'namespaces "shop" is forbidden')]
    code, out, err = run(*scene.argv("-o", "json"))
    assert code == 0
    assert err.splitlines() == [
        "memwatch status: cannot get namespace shop (for their labels): HTTP 403 Forbidden: namespaces \"shop\" "
        "is forbidden; ClusterMemwatchPolicies that select namespaces by label are left out"]
    pods = {p["name"]: p for p in json.loads(out)["pods"]}
    assert "batch" not in pods and pods["web"]["limit_from"] == "MemwatchPolicy shop/limits"


def test_policies_credentials_refused_is_the_error(scene: Scene) -> None:
    scene.api.refusals = [("GET", POLICY_API + "/clustermemwatchpolicies", 401, "Unauthorized")]
    _one_line_error(*run(*scene.argv()), 1, "refused your credentials (list ClusterMemwatchPolicy objects)")


def test_budget_exhausted_is_a_last_action(scene: Scene) -> None:
    held_at, message = scene.now - 30, "Not acted on: the workload's restart budget is spent"
    scene.api.events.append(memwatch_event(scene.pods["far"], REASON_BUDGET_EXHAUSTED, held_at, message))
    code, out, _ = run(*scene.argv("-o", "json"))
    assert code == 0
    far = next(p for p in json.loads(out)["pods"] if p["name"] == "far")
    assert far["last_action"] == {"reason": REASON_BUDGET_EXHAUSTED, "result": "budget-exhausted",
                                  "time": iso(held_at), "message": message}
    code, out, _ = run(*scene.argv())
    row = next(r for r in table(out) if r["POD"] == "shop/far")
    assert re.fullmatch(r"budget-exhausted \S+ ago", row["LAST ACTION"]), row["LAST ACTION"]


def test_limit_origin_names_the_key_of_the_limit() -> None:
    """A container's limit comes from its own key, the pod's from memwatch.io/limit."""
    pod = make_pod("p", "shop", annotations={"memwatch.io/limit": "1Gi"}, containers=[("app", "1Gi")])
    record = build_record(pod, Defaults(), Protections().reason)
    assert record is not None and record.policy is not None
    sources = {"memwatch.io/limit": "annotation", "memwatch.io/limit.app": "MemwatchPolicy shop/apps"}
    pod_limit = record.policy.limits[0]
    app_limit = dataclasses.replace(pod_limit, container="app")
    assert status.limit_origin(record, pod_limit, sources) == "annotation"
    assert status.limit_origin(record, app_limit, sources) == "MemwatchPolicy shop/apps"
    assert status.limit_origin(record, app_limit) == "annotation"  # a snapshot without sources
