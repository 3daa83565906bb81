"""A real Prometheus server scraping real memwatch processes: every metric selector of every alert
and of every dashboard query has data.

test_alerts.py proves the rules and queries are valid PromQL and name only metrics memwatch's code
registers. This proves the next step, with no cluster: that the series they select exist, with the
labels they select by, when Prometheus scrapes memwatch.

- The controller (`python -m memwatch run`, with the command line the chart renders, leader
  election included) against the unit tests' fake API server (tests/unit/fakeapi.py, here with
  core discovery for kopf, Leases and an idle Event WATCH), serving pods that breach their watch
  limits: one evicted, one whose eviction fails (HTTP 500), one held by its Deployment's spent
  restart budget, one with a stale sample, one with none; its metrics API read fails (HTTP 500)
  until the controller has counted the failure.
- The node agent (`python -m memwatch agent`, the chart's command line, node guard in dry-run) on a
  copy of the v1 fixture cgroup tree, whose two pods breach (one evicted, one failing), plus a copy
  of its Guaranteed pod held by its Deployment's spent restart budget, and whose kubepods cgroup is
  given a hard limit just above its working set so the node guard acts (would-).
- The real `prometheus` (Debian's package, hack/promtool.sh --prometheus) scraping both every
  second, each target with the labels a ServiceMonitor gives it (namespace, service, job, pod,
  node), and the rendered PrometheusRule loaded as its rule file.

Then, through Prometheus' HTTP API: every vector selector of every alert expression and of every
dashboard query (variables at their "All" values) returns at least one series; every full
expression is a valid query and every dashboard query draws something; every rule evaluates
without error; the alerts with no `for` (MemwatchActionsFailing, MemwatchRestartBudgetExhausted,
MemwatchNodeGuardActing) fire;
and the scripted events really happened (test_the_scenario_happened).

What it does not prove: it runs against a fake API server and fixture cgroups, not the local
cluster, so not that a real ServiceMonitor scrape gives the series these labels (the targets get
them as static labels, read from the rendered Services and ServiceMonitor), nor the numbers a real
metrics-server, kubelet or kernel would produce; and the alerts with a `for` only have to evaluate
(promtool's unit tests in test_alerts.py fire and clear every alert). The scrape through the
ServiceMonitor is tests/e2e/test_prometheus_cluster.py's: the same Prometheus on the local
cluster, configured from the rendered ServiceMonitor as prometheus-operator would configure it
(tests/chart/scrapeconfig.py), checks that every name the alerts and the dashboard use has series
from the installed release, carrying the ServiceMonitor's labels.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from unit.fakeapi import METRICS, FakeApiServer, pod_metrics, status_body

from .chartlib import NAMESPACE, RELEASE, Obj, Rendered, args_of
from .test_alerts import (
    AGENT_FIXTURE,
    PROMTOOL_SH,
    alerts_of,
    as_promql,
    dashboard,
    dashboard_queries,
    hack_program,
    metric_names,
    variable_queries,
    variables_without_values,
)
from .test_alerts import run_promtool_sh as run_alerts_promtool_sh

#: Selectors that cannot have data in this setup, each with the reason. Keep it short: prefer
#: making the event happen.
NO_DATA_HERE: dict[str, str] = {}


def _psi_missing(path: Path = Path("/proc/pressure/memory")) -> str | None:
    """Why this machine's kernel gives no memory PSI, or None. The agent reads the node's PSI from
    the real /proc (it has no flag for another root), so without it that gauge has no series."""
    try:
        path.read_bytes()
    except OSError as error:
        return f"this kernel gives no memory pressure stall information ({path}: {error.strerror})"
    return None


if (_psi := _psi_missing()) is not None:
    NO_DATA_HERE["memwatch_node_memory_pressure_avg10"] = _psi

VALUES: Obj = {"agent": {"enabled": True}, "prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True},
               "serviceMonitor": {"enabled": True},
               # The fake serves the metrics API (the chart's `auto` would also try kubelets).
               "source": "metrics-api"}
SHOP = "shop"
CONTROLLER_POD, AGENT_POD = "memwatch-7d4b9c-x2x4k", "memwatch-agent-q7wzt"
AGENT_NODE, OTHER_NODE = "node1", "node2"
#: The v1 fixture's pods (tests/agent/fixtures/README.md): a Burstable pod (app + sidecar, about
#: 230Mi) and a Guaranteed one (main, about 42Mi).
UID_B, UID_G = "6f1c2f3e-8a4b-4c5d-9e0f-112233445566", "0a9b8c7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d"
CID_APP = "3c1a5bb9e2b0f4b1c7d5a2e8f9061b7c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a"
CID_SIDE = "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0"
CID_G = "aa11bb22cc33dd44ee55ff6600112233445566778899aabbccddeeff00112233"
#: A copy of the Guaranteed pod's cgroups (fixture_tree) for a pod the agent holds (restart budget).
UID_HELD, CID_HELD = "5e4d3c2b-1a09-4f8e-9d7c-6b5a49382716", "bb22cc33dd44ee55ff66001122334455667788" + "9" * 26
#: A restart budget that is spent before any action: the pods under it are held, never acted on.
NO_BUDGET = {"memwatch.io/restart-budget": "0/1h"}
#: The fixture kubepods' working set (memory.usage_in_bytes - total_inactive_file).
KUBEPODS_WS = 378675200 - 41943040
MiB = 1 << 20

STARTUP = 60.0  # seconds for a process to serve (kopf and the agent import a lot)
DATA = 90.0  # seconds for every selector to have data once Prometheus runs


# --- the Prometheus server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus_bin() -> str:
    """The Prometheus server's path, from hack/promtool.sh --prometheus (on PATH, or Debian's
    package, cached). Skipped (loudly) only when it cannot be downloaded and MEMWATCH_TEST_PROMTOOL=skip."""
    return hack_program("the prometheus server",
                        "the alert and dashboard selectors are NOT checked against a real scrape", "--prometheus")


def run_promtool_sh(tmp_path: Path, *args: str, **tools: str) -> subprocess.CompletedProcess[str]:
    """hack/promtool.sh ``args`` with stand-ins first on PATH and an empty cache (neither program installed)."""
    return run_alerts_promtool_sh(tmp_path, *args, programs=("promtool", "prometheus"), **tools)


#: A stand-in for Debian's package: `apt-get download` leaves a .deb, `dpkg-deb -x` unpacks both programs.
FAKE_PACKAGE = {
    "apt_get": "touch prometheus_2.42_amd64.deb",
    "dpkg_deb": 'mkdir -p "$3/usr/bin" && for p in prometheus promtool; do printf "#!/bin/sh\\necho $p 2.42\\n" '
                '> "$3/usr/bin/$p" && chmod +x "$3/usr/bin/$p"; done',
}


def test_promtool_sh_prometheus_prefers_the_one_on_path(tmp_path: Path) -> None:
    proc = run_promtool_sh(tmp_path, "--prometheus", prometheus="echo prometheus 9", promtool="echo promtool 9",
                           apt_get="exit 1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "bin" / "prometheus")


def test_promtool_sh_prometheus_installs_the_server_only(tmp_path: Path) -> None:
    proc = run_promtool_sh(tmp_path, "--prometheus", **FAKE_PACKAGE)
    assert proc.returncode == 0, proc.stderr
    installed = tmp_path / "cache" / "promtool" / "bin"
    assert proc.stdout == f"{installed / 'prometheus'}\n"
    assert f"step 3/3: check and install {installed / 'prometheus'}" in proc.stderr
    assert "prometheus 2.42" in proc.stderr  # its --version, checked before it is installed
    assert sorted(p.name for p in installed.iterdir()) == ["prometheus"]
    assert (tmp_path / "cache" / "promtool" / "PACKAGE").read_text() == "prometheus_2.42_amd64.deb\n"

    def again(*args: str, apt_get: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "bin" / "apt-get").write_text(f"#!/bin/sh\n{apt_get}\n")
        env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
               "MEMWATCH_CACHE": str(tmp_path / "cache")}
        return subprocess.run(["bash", str(PROMTOOL_SH), *args], env=env, capture_output=True, text=True, timeout=60)

    cached = again("--prometheus", apt_get="exit 1")  # cached: no download
    assert (cached.returncode, cached.stdout, cached.stderr) == (0, proc.stdout, "")
    promtool = again(apt_get=FAKE_PACKAGE["apt_get"])  # the default is still promtool, cached beside it
    assert promtool.returncode == 0, promtool.stderr
    assert promtool.stdout == f"{installed / 'promtool'}\n"
    assert sorted(p.name for p in installed.iterdir()) == ["prometheus", "promtool"]


def test_promtool_sh_says_which_program_the_package_lacks(tmp_path: Path) -> None:
    proc = run_promtool_sh(tmp_path, "--prometheus", apt_get=FAKE_PACKAGE["apt_get"], dpkg_deb='mkdir -p "$3"')
    assert proc.returncode == 1 and proc.stdout == ""
    assert "prometheus_2.42_amd64.deb holds no usr/bin/prometheus" in proc.stderr


@pytest.mark.parametrize("args", [["--server"], ["--prometheus", "--prometheus"]])
def test_promtool_sh_rejects_unknown_arguments(tmp_path: Path, args: list[str]) -> None:
    proc = run_promtool_sh(tmp_path, *args, apt_get="exit 1")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "usage:" in proc.stderr and "[--prometheus]" in proc.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def poll(check: Callable[[], bool], deadline: float) -> bool:
    """Whether ``check`` held before ``deadline`` (monotonic), trying every 0.2 s."""
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def wait_until(what: str, check: Callable[[], bool], deadline: float, why: Callable[[], str] = lambda: "") -> None:
    """Poll ``check`` until it holds; fail naming ``what`` (and ``why()``) at ``deadline``."""
    if not poll(check, deadline):
        pytest.fail(f"timed out waiting for {what}\n{why()}")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


class Prometheus:
    """Prometheus' HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def api(self, path: str, **params: str) -> Any:
        status, body = http_get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
        assert body, f"no answer from Prometheus for {path} {params} (HTTP {status})"
        return json.loads(body)

    def query(self, expr: str) -> Any:
        return self.api("query", query=expr)

    def series(self, expr: str) -> list[Obj]:
        answer = self.query(expr)
        assert answer["status"] == "success", f"{expr}: {answer}"
        result: list[Obj] = answer["data"]["result"]
        return result


# --- the fake API server -----------------------------------------------------------------------

LEASES = re.compile(r"/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/]+))?")
EVENTS = re.compile(r"/api/v1(?:/namespaces/[^/]+)?/events")


#: Core discovery, which kopf reads when it starts (it runs `memwatch run`'s process).
DISCOVERY: dict[str, Obj] = {
    "/api": {"kind": "APIVersions", "versions": ["v1"]},
    "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
        {"name": n, "singularName": "", "namespaced": ns, "kind": k, "verbs": ["get", "list", "watch"]}
        for n, ns, k in (("pods", True, "Pod"), ("events", True, "Event"), ("namespaces", False, "Namespace"))]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
}


class ClusterApi(FakeApiServer):
    """The unit tests' fake API server plus what a controller running for a while needs: core
    discovery (for kopf), Leases (leader election, as the chart runs it) and an Event WATCH that
    idles like its pod WATCH."""

    def __init__(self) -> None:
        super().__init__()
        self.leases: dict[tuple[str, str], Obj] = {}
        self._versions = itertools.count(1)

    def _route(self, h: BaseHTTPRequestHandler, method: str, path: str, query: dict[str, str],
               body: Any) -> tuple[int, Any]:
        if method == "GET" and path in DISCOVERY:
            return 200, DISCOVERY[path]
        m = LEASES.fullmatch(path)
        if m:
            with self.lock:
                return self._lease(method, m.group(1), m.group(2), body)
        if method == "GET" and query.get("watch") == "true" and EVENTS.fullmatch(path):
            self._stream_watch(h)
            return 0, None
        return super()._route(h, method, path, query, body)

    def _lease(self, method: str, namespace: str, name: str | None, body: Any) -> tuple[int, Any]:
        key = (namespace, name or (body or {}).get("metadata", {}).get("name", ""))
        current = self.leases.get(key)
        if method == "GET" and name:
            return (200, current) if current else (404, status_body(404, "NotFound", f'leases "{name}" not found'))
        if method == "POST" and not name:
            if current:
                return 409, status_body(409, "AlreadyExists", f'leases "{key[1]}" already exists')
        elif method == "PUT" and name:
            if not current:
                return 404, status_body(404, "NotFound", f'leases "{name}" not found')
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                return 409, status_body(409, "Conflict", "the object has been modified")
        else:
            return 405, status_body(405, "MethodNotAllowed", f"{method} {namespace}/{name}")
        lease = {**body, "metadata": {**body["metadata"], "resourceVersion": str(next(self._versions))}}
        self.leases[key] = lease
        return (201 if method == "POST" else 200), lease


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(name: str, node: str, annotations: dict[str, str], containers: list[tuple[str, str, str]],
        uid: str | None = None, qos: str = "Burstable", deployment: str | None = None) -> Obj:
    """A pod running for two hours as the API returns it; ``containers``: (name, limits.memory, CRI id);
    ``deployment``: the Deployment whose ReplicaSet owns it (its restart budget's workload)."""
    started = iso(time.time() - 7200)
    labels = {"app": name}
    owners = []
    if deployment:
        labels["pod-template-hash"] = "5c4b7f9d8"
        owners = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{deployment}-5c4b7f9d8",
                   "uid": f"uid-rs-{deployment}", "controller": True}]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": SHOP, "uid": uid or f"uid-{name}", "resourceVersion": "1",
                     "labels": labels, "annotations": annotations, "ownerReferences": owners},
        "spec": {"nodeName": node, "containers": [{"name": c, "image": "app", "resources": {"limits": {"memory": m}}}
                                                  for c, m, _ in containers]},
        "status": {"phase": "Running", "qosClass": qos, "startTime": started, "containerStatuses": [
            {"name": c, "containerID": f"containerd://{cid}", "state": {"running": {"startedAt": started}}}
            for c, _, cid in containers]},
    }


def serve_pods(api: ClusterApi) -> None:
    """Pods that make every series memwatch exports appear (see the module's docstring)."""
    over = {"memwatch.io/limit": "100Mi"}
    api.pods = [
        # The controller's (node2 has no agent): a fresh sample over the limit, evicted; the same,
        # but the eviction fails; the same, but held by its Deployment's spent restart budget; a
        # sample older than --max-sample-age; no sample at all.
        pod("evicted", OTHER_NODE, over, [("app", "512Mi", "c1")]),
        pod("failing", OTHER_NODE, over, [("app", "512Mi", "c2")]),
        pod("held", OTHER_NODE, over | NO_BUDGET, [("app", "512Mi", "c5")], deployment="held"),
        pod("stale", OTHER_NODE, over, [("app", "512Mi", "c3")]),
        pod("unsampled", OTHER_NODE, over, [("app", "512Mi", "c4")]),
        # The agent's, on node1 (the fixture's cgroups; no PodMetrics: to the controller these are
        # unsampled too): about 230Mi over 100Mi, evicted; about 42Mi over 20Mi, the eviction fails.
        pod("leaky", AGENT_NODE, over, [("app", "256Mi", CID_APP), ("sidecar", "128Mi", CID_SIDE)], uid=UID_B),
        pod("guaranteed", AGENT_NODE, {"memwatch.io/limit": "20Mi"}, [("main", "64Mi", CID_G)], uid=UID_G,
            qos="Guaranteed"),
        # A copy of that one (its cgroups copied by fixture_tree), held by its Deployment's budget.
        pod("held-on-node1", AGENT_NODE, {"memwatch.io/limit": "20Mi"} | NO_BUDGET, [("main", "64Mi", CID_HELD)],
            uid=UID_HELD, qos="Guaranteed", deployment="held-on-node1"),
    ]
    # HTTP 500 for every eviction of these two (the last status repeats).
    api.eviction = {"failing": deque([500]), "guaranteed": deque([500])}


def serve_metrics(api: ClusterApi) -> None:
    """PodMetrics as of now: 300Mi for three pods; for a fourth, a sample ten minutes old (after the
    pod started, but older than the chart's maxSampleAge of 60s)."""
    now = time.time()
    api.pod_metrics = [pod_metrics(SHOP, "evicted", iso(now), {"app": "300Mi"}),
                       pod_metrics(SHOP, "failing", iso(now), {"app": "300Mi"}),
                       pod_metrics(SHOP, "held", iso(now), {"app": "300Mi"}),
                       pod_metrics(SHOP, "stale", iso(now - 600), {"app": "300Mi"})]


# --- memwatch's processes ------------------------------------------------------------------------


def write_kubeconfig(directory: Path, server: str) -> Path:
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
              "clusters": [{"name": "fake", "cluster": {"server": server}}],
              "users": [{"name": "memwatch", "user": {"token": "memwatch-token"}}],
              "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "memwatch"}}]}
    path = directory / "kubeconfig"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def process_env(**extra: str) -> dict[str, str]:
    """This environment without a developer's MEMWATCH_*, KUBECONFIG or downward-API variables (the
    command lines say everything), nor prometheus_client's switch that drops the `_created` series
    the alerts read; plus ``extra``."""
    dropped = {"KUBECONFIG", "POD_NAME", "POD_NAMESPACE", "NODE_NAME", "PROMETHEUS_DISABLE_CREATED_SERIES"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMWATCH_") and k not in dropped}
    return {**env, "MEMWATCH_PLAIN_LOGS": "1", **extra}


class Processes:
    """Child processes, each logging to its own file; all stopped by :meth:`stop_all`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        with (self.directory / f"{name}.log").open("wb") as log:
            self.procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                                env=env, cwd=self.directory)

    def log(self, name: str, lines: int = 40) -> str:
        path = self.directory / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"--- last {lines} lines of {name}'s log ---\n" + "\n".join(text.splitlines()[-lines:])

    def logs(self) -> str:
        return "\n".join(self.log(name) for name in self.procs)

    def check_running(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}\n{self.log(name)}")

    def stop_all(self) -> None:
        """SIGTERM each (memwatch releases its Lease, Prometheus closes its TSDB), SIGKILL after 10 s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def metrics_text(port: int) -> str:
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    return body.decode() if status == 200 else ""


def fixture_tree(directory: Path) -> Path:
    """A copy of the v1 fixture tree whose kubepods cgroup has a hard limit 25Mi above its working
    set: under the node guard's soft line (10%, about 35Mi), over its hard one (5%); and a copy of
    the Guaranteed pod's cgroups as pod UID_HELD, container CID_HELD."""
    tree = directory / "cgroup"
    shutil.copytree(AGENT_FIXTURE, tree)
    held = tree / "memory" / "kubepods" / f"pod{UID_HELD}"
    shutil.copytree(tree / "memory" / "kubepods" / f"pod{UID_G}", held)
    (held / CID_G).rename(held / CID_HELD)
    (tree / "memory" / "kubepods" / "memory.limit_in_bytes").write_text(f"{KUBEPODS_WS + 25 * MiB}\n")
    return tree


# --- selectors ---------------------------------------------------------------------------------

_TOKENS = re.compile(
    r'"(?:[^"\\]|\\.)*"'  # a string: skipped
    r"|\[[^\[\]]*\]"  # a range or subquery: skipped
    r'|(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{(?:[^{}"]|"(?:[^"\\]|\\.)*")*\})?(\s*\()?')


def vector_selectors(expr: str) -> list[str]:
    """Each vector selector of a PromQL expression as written (``name{matchers}``), in order, once:
    an identifier that test_alerts.metric_names() counts as a metric, with its matchers."""
    names = metric_names(expr)
    found: list[str] = []
    for match in _TOKENS.finditer(expr):
        name, matchers, call = match.groups()
        if name and not call and name in names:
            selector = name + (matchers or "")
            if selector not in found:
                found.append(selector)
    assert {re.split(r"[{\s]", s, maxsplit=1)[0] for s in found} == names, (expr, found)
    return found


@pytest.mark.parametrize(("expr", "selectors"), [
    ('sum by (namespace, source) (increase(a_total{x="1", r=~"b|c"}[10m]) > 0 or (a_total{x="1"} and '
     'a_created{x="1", s="{not a} selector"} > time() - 600))', ['a_total{x="1", r=~"b|c"}', 'a_total{x="1"}',
                                                                  'a_created{x="1", s="{not a} selector"}']),
    ('up{job="a"} == 0 or rate(b_count{job="a"}[5m]) == 0', ['up{job="a"}', 'b_count{job="a"}']),
    ("x unless on (namespace, instance) y", ["x", "y"]),
])
def test_vector_selectors(expr: str, selectors: list[str]) -> None:
    assert vector_selectors(expr) == selectors


def excepted(selector: str) -> str | None:
    """Why ``selector`` cannot have data here, or None."""
    name = re.split(r"[{\s]", selector, maxsplit=1)[0]
    return NO_DATA_HERE.get(name)


# --- the run -----------------------------------------------------------------------------------


class Run:
    """What the module's tests look at: Prometheus' API, the chart's rules and dashboard, the processes."""

    def __init__(self, prometheus: Prometheus, rule: Obj, board: Obj, processes: Processes, api: ClusterApi) -> None:
        self.prometheus = prometheus
        self.alerts = alerts_of(rule)
        self.board = board
        self.processes = processes
        self.api = api

    def alert_selectors(self) -> dict[str, list[str]]:
        return {name: vector_selectors(alert["expr"]) for name, alert in self.alerts.items()}

    def dashboard_selectors(self) -> dict[str, list[str]]:
        queries = {**dashboard_queries(self.board),
                   **{f"variable ${name}": q for name, q in variable_queries(self.board).items()}}
        return {where: vector_selectors(as_promql(q)) for where, q in queries.items()}

    def without_data(self, selectors: dict[str, list[str]]) -> dict[str, list[str]]:
        """The selectors that return no series (and are not excepted), by where they are used."""
        missing: dict[str, list[str]] = {}
        cache: dict[str, bool] = {}
        for where, found in selectors.items():
            for selector in found:
                if selector not in cache:
                    cache[selector] = bool(self.prometheus.series(selector)) or excepted(selector) is not None
                if not cache[selector]:
                    missing.setdefault(where, []).append(selector)
        return missing

    def why(self) -> str:
        targets = self.prometheus.api("targets")["data"]["activeTargets"]
        health = [(t["labels"].get("job"), t["health"], t["lastError"]) for t in targets]
        return f"scrape targets: {health}\n{self.processes.logs()}"


def controller_argv(rendered: Rendered, kubeconfig: Path, port: int) -> list[str]:
    """`memwatch run` with the chart's arguments, pointed at the fake, sweeping every second."""
    args = args_of(rendered.controller)
    assert args[0] == "run" and "--leader-elect" in args, args
    return [sys.executable, "-m", "memwatch", *args, f"--kubeconfig={kubeconfig}", f"--metrics-port={port}",
            "--liveness=", "--interval=1s"]


def agent_argv(rendered: Rendered, kubeconfig: Path, port: int, tree: Path) -> list[str]:
    """`memwatch agent` with the chart's arguments (node guard in dry-run), on the fixture tree."""
    assert rendered.agent is not None
    args = [a.replace("$(NODE_NAME)", AGENT_NODE) for a in args_of(rendered.agent)]
    assert args[0] == "agent" and "--node-guard=dry-run" in args, args
    return [sys.executable, "-m", "memwatch", *args, f"--cgroup-root={tree}", f"--kubeconfig={kubeconfig}",
            f"--metrics-port={port}", "--liveness="]


def scrape_config(rendered: Rendered, ports: dict[str, int], rules: Path) -> Obj:
    """Two static scrape jobs, each target with the labels the chart's ServiceMonitor gives it: the
    namespace, Service and pod, the job from its jobLabel, the node from its relabeling."""
    monitor = rendered.one("ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"} in endpoint["relabelings"]
    jobs = []
    for component, pod_name, node in (("controller", CONTROLLER_POD, OTHER_NODE), ("agent", AGENT_POD, AGENT_NODE)):
        service = rendered.one("Service", component)
        labels = {"namespace": service["metadata"]["namespace"], "service": service["metadata"]["name"],
                  "pod": pod_name, "container": component, "endpoint": endpoint["port"], "node": node}
        jobs.append({"job_name": service["metadata"]["labels"][monitor["spec"]["jobLabel"]],
                     "metrics_path": endpoint["path"],
                     "static_configs": [{"targets": [f"127.0.0.1:{ports[component]}"], "labels": labels}]})
    return {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)], "scrape_configs": jobs}


@pytest.fixture(scope="module")
def run(prometheus_bin: str, chart: helm_python.Chart) -> Iterator[Run]:
    manifests = chart.render(VALUES, name=RELEASE, namespace=NAMESPACE)
    rendered = Rendered(manifests, chart.merge_values(VALUES))
    (rule,) = rendered.of_kind("PrometheusRule")
    (board_cm,) = [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    board = json.loads(next(iter(board_cm["data"].values())))
    assert board == dashboard()
    directory = Path(tempfile.mkdtemp(prefix="memwatch-prometheus-"))
    processes = Processes(directory)
    api = ClusterApi()
    try:
        serve_pods(api)
        serve_metrics(api)
        # The metrics API fails until the controller has counted it (memwatch_source_errors_total).
        api.refusals = [("GET", METRICS + "/pods", 500, "metrics-server: the server is currently unable to handle "
                                                       "the request")]
        api.idle_watch = 1.0  # each WATCH idles 1 s, then the watchers reconnect
        api.start()
        kubeconfig = write_kubeconfig(directory, api.url)
        ports = {"controller": free_port(), "agent": free_port(), "prometheus": free_port()}
        processes.start("controller", controller_argv(rendered, kubeconfig, ports["controller"]),
                        process_env(POD_NAME=CONTROLLER_POD, POD_NAMESPACE=NAMESPACE))
        processes.start("agent", agent_argv(rendered, kubeconfig, ports["agent"], fixture_tree(directory)),
                        process_env(POD_NAME=AGENT_POD, POD_NAMESPACE=NAMESPACE, NODE_NAME=AGENT_NODE))
        rules = directory / "rules.yaml"
        rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
        config = directory / "prometheus.yaml"
        config.write_text(yaml.safe_dump(scrape_config(rendered, ports, rules), sort_keys=False))
        url = f"http://127.0.0.1:{ports['prometheus']}"
        processes.start("prometheus", [prometheus_bin, f"--config.file={config}",
                                       f"--storage.tsdb.path={directory / 'data'}",
                                       f"--web.listen-address=127.0.0.1:{ports['prometheus']}"])
        prometheus = Prometheus(url)
        result = Run(prometheus, rule, board, processes, api)

        deadline = time.monotonic() + STARTUP
        wait_until("Prometheus to be ready", lambda: http_get(f"{url}/-/ready")[0] == 200, deadline,
                   processes.logs)
        errors = 'memwatch_source_errors_total{source="metrics-api"}'
        wait_until("the controller to count a failed usage read", lambda: errors in metrics_text(ports["controller"]),
                   deadline, processes.logs)
        wait_until("Prometheus to scrape the failed usage read", lambda: bool(prometheus.series(errors)), deadline,
                   result.why)
        serve_metrics(api)  # metrics-server is back, with fresh samples: the controller judges and acts
        api.refusals = []
        back = time.monotonic()
        processes.check_running()

        # Every selector with data (bounded: the tests say which have none), and at least 3 scrapes
        # of each target since the metrics API came back, so that rate() and increase() have points.
        deadline = time.monotonic() + DATA
        everything = {**result.alert_selectors(), **result.dashboard_selectors()}
        poll(lambda: not result.without_data(everything), deadline)

        def scraped_since() -> bool:
            window = max(1, int(time.monotonic() - back))
            return len(prometheus.series(f'count_over_time(up{{namespace="{NAMESPACE}"}}[{window}s]) >= 3')) == 2

        wait_until("3 scrapes of both targets", scraped_since, deadline, result.why)
        processes.check_running()
        yield result
    finally:
        processes.stop_all()
        api.stop()
        shutil.rmtree(directory, ignore_errors=True)


# --- the tests ----------------------------------------------------------------------------------


def test_every_alert_selector_has_data(run: Run) -> None:
    missing = run.without_data(run.alert_selectors())
    assert not missing, f"alert selectors with no series in Prometheus: {json.dumps(missing, indent=1)}\n{run.why()}"


def test_every_dashboard_selector_has_data(run: Run) -> None:
    missing = run.without_data(run.dashboard_selectors())
    assert not missing, f"dashboard selectors with no series: {json.dumps(missing, indent=1)}\n{run.why()}"


def test_dashboard_variables_have_values(run: Run) -> None:
    """Each variable's label_values(selector, label) lists at least one value (else every panel
    filtered by it is empty)."""
    missing = variables_without_values(run.board, run.prometheus.series)
    assert not missing, missing


def test_alert_expressions_are_valid_queries(run: Run) -> None:
    for name, alert in run.alerts.items():
        answer = run.prometheus.query(alert["expr"])
        assert answer["status"] == "success", f"{name}: {answer}"


def test_rules_evaluate_without_error(run: Run) -> None:
    """Prometheus loaded the rendered rules and evaluated every one (health ok, no error)."""
    def rules() -> dict[str, Obj]:
        groups = run.prometheus.api("rules")["data"]["groups"]
        return {r["name"]: r for g in groups for r in g["rules"]}

    wait_until("every rule to be evaluated", lambda: all(r["health"] != "unknown" for r in rules().values()),
               time.monotonic() + 10)
    found = rules()
    assert set(found) == set(run.alerts)
    bad = {name: (r["health"], r.get("lastError")) for name, r in found.items() if r["health"] != "ok"}
    assert not bad, bad


def test_dashboard_queries_are_valid_and_return_data(run: Run) -> None:
    """Every panel's whole query, its variables at "All", is valid and draws something."""
    empty = []
    for where, expr in dashboard_queries(run.board).items():
        answer = run.prometheus.query(as_promql(expr))
        assert answer["status"] == "success", f"{where}: {answer}"
        if not answer["data"]["result"] and not any(excepted(s) for s in vector_selectors(as_promql(expr))):
            empty.append(f"{where}: {as_promql(expr)}")
    assert not empty, "dashboard queries that return nothing:\n" + "\n".join(empty)


def test_alerts_without_for_fire(run: Run) -> None:
    """The failed evictions (the controller's and the agent's), the pods held by a spent restart
    budget (one each) and the node guard's dry-run action fire their alerts, which have no `for`:
    the whole expressions work on real series, not only their selectors."""
    def firing() -> dict[str, list[Obj]]:
        out: dict[str, list[Obj]] = {}
        for alert in run.prometheus.api("alerts")["data"]["alerts"]:
            if alert["state"] == "firing":
                out.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
        return out

    wanted = {"MemwatchActionsFailing", "MemwatchRestartBudgetExhausted", "MemwatchNodeGuardActing"}
    assert all("for" not in run.alerts[name] for name in wanted)
    poll(lambda: wanted <= set(firing()), time.monotonic() + 15)
    now = firing()
    assert wanted <= set(now), f"firing: {now}\n{run.why()}"
    sources = {labels["source"] for labels in now["MemwatchActionsFailing"]}
    assert len(sources) == 2, f"one failing-actions alert for the controller's source and one for the agent's: {now}"
    held = {labels["source"] for labels in now["MemwatchRestartBudgetExhausted"]}
    assert held == {"metrics-api", "cgroup"}, f"one budget alert for each component's source: {now}"
    assert {labels["node"] for labels in now["MemwatchNodeGuardActing"]} == {AGENT_NODE}


def test_the_scenario_happened(run: Run) -> None:
    """What the fake cluster scripted happened, as Prometheus saw it: each component evicted one pod,
    failed to evict another and held a third (restart budget), the controller skipped a stale and a
    missing sample and counted its failed usage read, the node guard would have evicted (dry-run),
    and the controller leads."""
    def labels(selector: str, *names: str) -> set[tuple[str, ...]]:
        return {tuple(s["metric"].get(n, "") for n in names) for s in run.prometheus.series(selector)}

    def problems() -> list[str]:
        expected: list[tuple[str, tuple[str, ...], set[tuple[str, ...]]]] = [
            ("memwatch_actions_total", ("job", "result", "source"), {
                ("controller", "evicted", "metrics-api"), ("controller", "failed", "metrics-api"),
                ("agent", "evicted", "cgroup"), ("agent", "failed", "cgroup")}),
            ("memwatch_action_latency_seconds_count", ("job", "action"), {("controller", "evicted"),
                                                                         ("agent", "evicted")}),
            ("memwatch_samples_skipped_total", ("reason",), {("stale",), ("missing",)}),
            ("memwatch_source_errors_total > 0", ("source",), {("metrics-api",)}),
            ("memwatch_budget_exhausted_total", ("job", "source"), {("controller", "metrics-api"),
                                                                    ("agent", "cgroup")}),
            ("memwatch_node_guard_actions_total", ("node", "action"), {(AGENT_NODE, "would-evict")}),
            ("memwatch_node_guard_level", ("node",), {(AGENT_NODE,)}),
            ("memwatch_leader == 1", ("job",), {("controller",)}),
        ]
        return [f"{selector} by {names}: {labels(selector, *names)}, expected at least {want}"
                for selector, names, want in expected if not want <= labels(selector, *names)]

    poll(lambda: not problems(), time.monotonic() + 15)
    assert not problems(), f"{problems()}\n{run.why()}"
    assert labels("memwatch_samples_skipped_total", "reason") == {("stale",), ("missing",)}
    assert labels("memwatch_node_guard_actions_total", "action") == {("would-evict",)}, "dry-run only"
    leases = [lease["spec"]["holderIdentity"] for lease in run.api.leases.values()]
    assert leases == [CONTROLLER_POD]
    # Nothing was written for real by the node guard in dry-run: the only evictions are the two
    # components' own (and the failing ones, retried); none of the held pods.
    evicted = {r.path.split("/")[-2] for r in run.api.requests("POST", r".*/eviction")}
    assert evicted == {"evicted", "failing", "leaky", "guaranteed"}


def test_exceptions_are_used_and_justified(run: Run) -> None:
    everything = {**run.alert_selectors(), **run.dashboard_selectors()}
    used = {re.split(r"[{\s]", s, maxsplit=1)[0] for found in everything.values() for s in found}
    assert set(NO_DATA_HERE) <= used, f"exceptions for metrics nothing selects: {set(NO_DATA_HERE) - used}"
    assert all(len(reason) > 10 for reason in NO_DATA_HERE.values())
