"""A real Prometheus server scraping memwatch on the real cluster, the way the chart's ServiceMonitor
has prometheus-operator scrape it (issue #14): every metric name the alerts and the dashboard
query has series there, with the labels the ServiceMonitor gives them.

tests/chart/test_prometheus_scrape.py proves the alerts' and the dashboard's selectors against
memwatch's processes on a fake API server; this proves them against the release the e2e suite
installed (tests/e2e/values-e2e.yaml, as hack/e2e-install.py installs it):

- The chart is rendered with the suite's values plus `serviceMonitor`, `prometheusRule` and
  `grafanaDashboard` enabled (the cluster has no prometheus-operator CRDs: they are never
  installed). The rendered ServiceMonitor becomes Prometheus' scrape configuration as the
  operator generates it (tests/chart/scrapeconfig.py, checked in tests/chart/test_scrapeconfig.py):
  Kubernetes discovery of role endpoints in the release namespace, keep the Services the monitor
  selects and the port it names, then the operator's labels (namespace, service, pod, container,
  job from the Service's `app.kubernetes.io/component`, endpoint) and the monitor's own
  relabeling (node). The metrics Services come from the install; one it lacks is created here from
  the rendered chart and removed afterwards.
- The real `prometheus` (hack/promtool.sh --prometheus: on PATH, else Debian's package) runs on
  this machine with that configuration, scraping every second, the rendered PrometheusRule's rules
  loaded. Its Kubernetes discovery reads the local API server with the kubeconfig's credentials
  (embedded certificates written to files). Debian's package is built WITHOUT Kubernetes
  discovery (its binary refuses `kubernetes_sd_configs`): with that binary the test does the
  discovery itself, from the same API objects Prometheus would read (Endpoints, Services and Pods
  of the namespace, every second), and hands Prometheus the very `__meta_kubernetes_*` labels its
  discovery would make through `file_sd_configs` (scrapeconfig.endpoints_targets); the
  relabelings, which make the labels, are still the operator's and still run in Prometheus. The
  run says which discovery it used (the e2e timings line `discovery=`).
- memwatch acts, in a namespace of the test's own: a pod over its watch limit is evicted; a
  Deployment's pod over its limit is held by its spent restart budget (`0/1h`); and, where the
  node guard test can run (root, cgroup v1 kubepods), kubepods is given a hard limit 1 GiB above its
  usage for a BestEffort hog the node guard then evicts, as tests/e2e/test_node_guard.py does.

Then, through Prometheus' HTTP API: the controller's and each agent's targets are up, with the
labels namespace, service, job, pod, container, endpoint and node of their own pods; every metric
name the alert expressions and the dashboard queries (variables at "All") use has a series from the
release, each carrying those labels; every alert expression and dashboard query is a valid query;
every rule evaluates without error; the restart budget alert (and the node guard's, when it acted)
fires. The names that cannot have data on a healthy cluster in a short test are listed in
NO_DATA_HERE (plus, where the controller leaves every pod to an agent, its sample series:
CONTROLLER_SAMPLES), each with its reason, and must be exactly the names without data.

What it does not prove: with Debian's binary, that Prometheus' own Kubernetes discovery makes the
meta labels the emulation makes (scrapeconfig.endpoints_targets follows its documented labels);
the alerts with a `for` only have to evaluate (promtool's unit tests in tests/chart/test_alerts.py
fire them).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import helm_python
import pytest
import yaml

from chart.chartlib import CHART_DIR, Obj, Rendered, args_of, deep_merge
from chart.scrapeconfig import (
    NO_KUBERNETES_SD,
    endpoints_targets,
    file_sd_groups,
    kubernetes_sd_access,
    prometheus_config,
    with_file_discovery,
)
from chart.test_alerts import (
    alerts_of,
    as_promql,
    dashboard_queries,
    hack_program,
    metric_names,
    variable_queries,
    variables_without_values,
)
from chart.test_prometheus_scrape import Processes, Prometheus, _psi_missing, free_port, http_get, poll
from integration.clusterkit import LOCAL_KUBECONFIG
from memwatch.kube import ApiError
from memwatch.nodeguard import REASON_NODE_PRESSURE

from .support import (
    ACTION_REASONS,
    E2E_NAMESPACE,
    E2E_RELEASE,
    PART_OF,
    Cluster,
    Memwatch,
    hog_container,
    hog_pod,
    unique,
    wait_for,
)
from .test_node_guard import ROOM, _best_effort_hog, _oom_kills, _why_not, kubepods_limit

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
#: What the suite installs (tests/e2e/conftest.py): hack/e2e-install.py with these values.
E2E_VALUES = ROOT / "tests" / "e2e" / "values-e2e.yaml"
#: Rendered too, for the test's purpose: the cluster has no prometheus-operator, so the suite's
#: install never enables them.
MONITORING: Obj = {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                   "grafanaDashboard": {"enabled": True}}
#: The labels a ServiceMonitor target gets from the operator (and `node` from the chart's relabeling).
TARGET_LABELS = ("namespace", "service", "job", "pod", "container", "endpoint", "node")
WATCH, HARD, HOLDS = "100Mi", "400Mi", ["--sleep", "--start", "160"]  # over the watch limit from its start

STARTUP = 45.0  # seconds for Prometheus to be ready and scrape every target
ACTIVITY = 90.0  # seconds for each piece of memwatch activity to happen
DATA = 45.0  # seconds for every name to have data once the activity happened

#: Names the alerts or the dashboard use that cannot have a series on a healthy cluster in a short
#: test, each with the reason. Keep it short: prefer making the event happen (as the evictions, the
#: held pod and the node guard here). test_exceptions_are_exactly_the_names_without_data holds it
#: to exactly the names without data.
NO_DATA_HERE: dict[str, str] = {
    "memwatch_source_errors_total": (
        "counted only when a sweep's usage read fails (its series appears at the first failure): on a healthy "
        "cluster the usage source answers, and breaking metrics-server or the kubelets for this test would "
        "break the suites that run after it (tests/chart/test_prometheus_scrape.py makes it fail)"),
}
if (_psi := _psi_missing()) is not None:
    NO_DATA_HERE["memwatch_node_memory_pressure_avg10"] = _psi
#: The controller's usage-read series. The chart's controller leaves every pod on a node with a
#: Ready agent to that agent (`--defer-to-agents=all`, its default with `agent.enabled`): where
#: every node runs one, as on the local cluster, it judges no pod, reads no usage and so observes
#: no sample age and skips no sample. Excepted only when that holds (checked in the run).
CONTROLLER_SAMPLES = ("memwatch_sample_age_seconds_bucket", "memwatch_sample_age_seconds_count",
                      "memwatch_samples_skipped_total")
CONTROLLER_DEFERS = ("the controller reads usage only for pods on nodes without a Ready agent (--defer-to-agents=all, "
                     "the chart's default with the agent), and every node here runs one: it samples no pod "
                     "(tests/chart/test_prometheus_scrape.py gives its controller a node without an agent)")
#: Why the node guard cannot be made to act here, or None (then it is, and its names need data).
NODE_GUARD_WHY = _why_not()
if NODE_GUARD_WHY is not None:
    for _name in ("memwatch_node_guard_actions_total", "memwatch_node_guard_actions_created"):
        NO_DATA_HERE[_name] = (f"the node guard acts only when the node runs short of memory, which this test "
                               f"makes happen only where it can: here it cannot ({NODE_GUARD_WHY})")


# --- the chart as the suite installs it ------------------------------------------------------------


def _installer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("memwatch_e2e_install", ROOT / "hack" / "e2e-install.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def e2e_values() -> Obj:
    """The values hack/e2e-install.py installs the suite's release with (--values values-e2e.yaml,
    --agent auto), as tests/e2e/conftest.py runs it."""
    args = argparse.Namespace(values=[str(E2E_VALUES)], set=None, agent="auto")
    values: Obj = _installer()._values(args)
    return values


def render() -> Rendered:
    values = deep_merge(e2e_values(), MONITORING)
    with helm_python.Chart.load(CHART_DIR) as chart:
        return Rendered(chart.render(values, name=E2E_RELEASE, namespace=E2E_NAMESPACE), chart.merge_values(values))


def used_names(rule: Obj, board: Obj) -> dict[str, list[str]]:
    """Every metric name the alert expressions and the dashboard queries use, with where."""
    where: dict[str, list[str]] = {}
    queries = {f"alert {name}": alert["expr"] for name, alert in alerts_of(rule).items()}
    queries |= {f"panel {k}": as_promql(q) for k, q in dashboard_queries(board).items()}
    queries |= {f"variable ${k}": as_promql(q) for k, q in variable_queries(board).items()}
    for place, expr in queries.items():
        for name in metric_names(expr):
            where.setdefault(name, []).append(place)
    return where


# --- discovery where the Prometheus binary has none --------------------------------------------------


class Discovery:
    """Prometheus' Kubernetes discovery (role endpoints) of ``namespaces``, done here from the API
    server every second and written to ``path`` for `file_sd_configs`: what a Prometheus built
    with Kubernetes discovery would find itself."""

    def __init__(self, cluster: Cluster, namespaces: list[str], path: Path) -> None:
        self.cluster, self.namespaces, self.path = cluster, namespaces, path
        self.error: str | None = None
        self.written = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="discovery", daemon=True)

    def targets(self) -> list[dict[str, str]]:
        found: list[dict[str, str]] = []
        for ns in self.namespaces:
            endpoints = self.cluster.get(f"/api/v1/namespaces/{ns}/endpoints").get("items") or []
            services = {s["metadata"]["name"]: s
                        for s in self.cluster.get(f"/api/v1/namespaces/{ns}/services").get("items") or []}
            pods = {p["metadata"]["name"]: p for p in self.cluster.pods(ns)}
            for ep in endpoints:
                found += endpoints_targets(ep, services.get(ep["metadata"]["name"]), pods)
        return found

    def refresh(self) -> None:
        text = json.dumps(file_sd_groups(self.targets()), sort_keys=True)
        if text != self.written:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.rename(self.path)  # Prometheus never reads half a file
            self.written = text

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.refresh()
                self.error = None
            except Exception as exc:  # an API server hiccup: try again next second
                self.error = str(exc)

    def start(self) -> None:
        self.refresh()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


# --- the run ---------------------------------------------------------------------------------------


def reachable(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=3):
            return True
    except OSError:
        return False


def metrics_port(pod: Obj) -> int:
    return next(int(p["containerPort"]) for c in pod["spec"]["containers"] for p in c.get("ports") or []
                if p.get("name") == "metrics")


class Run:
    """What the module's tests look at."""

    def __init__(self, prometheus: Prometheus, rule: Obj, board: Obj, processes: Processes, memwatch: Memwatch,
                 discovery: str) -> None:
        self.prometheus, self.rule, self.board = prometheus, rule, board
        self.alerts = alerts_of(rule)
        self.processes, self.memwatch, self.discovery = processes, memwatch, discovery
        self.names = used_names(rule, board)
        self.pods: list[Obj] = []  # memwatch's pods scraped (controller and agents)
        self.services: dict[str, str] = {}  # component -> metrics Service
        self.node_guard_node: str | None = None  # where the node guard acted, when it was made to
        self.timings: dict[str, str] = {}
        #: NO_DATA_HERE, and the controller's sample series where it defers every pod to an agent.
        self.exceptions: dict[str, str] = dict(NO_DATA_HERE)

    def series(self, name: str) -> list[Obj]:
        return self.prometheus.series(f'{{__name__="{name}", namespace="{self.memwatch.namespace}"}}')

    def without_data(self) -> set[str]:
        return {name for name in self.names if not self.series(name)}

    def why(self) -> str:
        targets = self.prometheus.api("targets")["data"]
        health = [(t["labels"], t["health"], t["lastError"]) for t in targets["activeTargets"]]
        return (f"discovery: {self.discovery}; active targets: {health}; dropped: {len(targets['droppedTargets'])}\n"
                f"{self.processes.logs()}")


def memwatch_pods(memwatch: Memwatch) -> list[Obj]:
    """memwatch's running pods that are not going away: the ones Prometheus must scrape."""
    return [p for p in memwatch.all_pods() if (p.get("status") or {}).get("phase") == "Running"
            and p["status"].get("podIP") and not p["metadata"].get("deletionTimestamp")]


def ensure_services(cluster: Cluster, rendered: Rendered, components: list[str]) -> list[str]:
    """The rendered metrics Services of ``components`` that the install lacks, created; their paths."""
    created = []
    for component in components:
        service = rendered.one("Service", component)
        meta = service["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/services"
        if cluster.get_or_none(f"{path}/{meta['name']}") is None:
            cluster.request("POST", path, service)
            created.append(f"{path}/{meta['name']}")
    return created


def held_deployment(ns: str) -> Obj:
    """One replica over its watch limit from its start, whose restart budget allows no action."""
    labels = {"app": "held"}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "held", "namespace": ns, "labels": dict(PART_OF)},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": {**labels, **PART_OF},
                                               "annotations": {"memwatch.io/limit": WATCH,
                                                               "memwatch.io/restart-budget": "0/1h",
                                                               "memwatch.io/node-pressure": "never"}},
                                  "spec": {"terminationGracePeriodSeconds": 2,
                                           "containers": [hog_container(HOLDS, HARD)]}}}}


def make_activity(run: Run, cluster: Cluster, memwatch: Memwatch, ns: str, t0: float) -> None:
    """An eviction, a pod held by its restart budget, a calm watched pod (judged on every sample:
    the nearest-pods gauges) and, where it can, the node guard acting."""
    never = {"memwatch.io/node-pressure": "never"}  # only the hog is the node guard's to choose
    evicted = cluster.create(hog_pod(ns, "evicted", HOLDS, HARD, {"memwatch.io/limit": WATCH, **never}))
    cluster.create(held_deployment(ns))
    cluster.create(hog_pod(ns, "calm", ["--sleep", "--start", "16"], "256Mi", {"memwatch.io/limit": "200Mi", **never}))
    uid = evicted["metadata"]["uid"]
    wait_for("memwatch to act on pod evicted", lambda: [e for e in cluster.memwatch_events(ns, uid)
                                                         if e["reason"] in ACTION_REASONS], ACTIVITY, poll=1.0)
    run.timings["evicted"] = f"{time.monotonic() - t0:.1f}s"
    wait_for("a MemwatchBudgetExhausted Event on the held Deployment's pod",
             lambda: cluster.events(ns, reason="MemwatchBudgetExhausted"), ACTIVITY, poll=1.0)
    run.timings["held"] = f"{time.monotonic() - t0:.1f}s"
    if NODE_GUARD_WHY is not None:
        run.timings["node_guard"] = "not made to act: " + NODE_GUARD_WHY
        return
    missing = memwatch.agent_ready()
    if missing:
        pytest.fail(f"the node guard runs in the agent, which is not ready: {missing}")
    oom_before = _oom_kills()
    with kubepods_limit(ROOM):
        hog = cluster.create(_best_effort_hog(ns, "hog"))
        hog_uid = hog["metadata"]["uid"]

        def oom() -> str | None:
            kills = _oom_kills() - oom_before
            return f"the kernel OOM-killed {kills} process(es) in kubepods" if kills else None

        wait_for("the node guard to act on the hog", lambda: [
            e for e in cluster.memwatch_events(ns, hog_uid) if e["reason"] == REASON_NODE_PRESSURE], ACTIVITY,
            poll=0.2, fail=oom)
        run.node_guard_node = ((cluster.pod(ns, "hog") or hog).get("spec") or {}).get("nodeName")

        def stopped() -> bool:
            pod = cluster.pod(ns, "hog")
            statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
            return pod is None or pod["metadata"]["uid"] != hog_uid or pod["status"].get("phase") in (
                "Failed", "Succeeded") or any(s.get("restartCount") for s in statuses) or bool(
                pod["metadata"].get("deletionTimestamp"))

        wait_for("the hog to stop", stopped, 60, fail=oom)
    run.timings["node_guard"] = f"{time.monotonic() - t0:.1f}s"


@pytest.fixture(scope="module")
def run(cluster: Cluster, memwatch: Memwatch) -> Iterator[Run]:
    t0 = time.monotonic()
    prometheus_bin = hack_program("the prometheus server", "memwatch on the cluster is NOT scraped by a real "
                                  "Prometheus", "--prometheus")
    kubeconfig = cluster.kubeconfig
    if not kubeconfig:
        pytest.fail("no kubeconfig path: set KUBECONFIG (Prometheus' discovery needs the API server's credentials)")
    on_local = os.path.realpath(kubeconfig) == os.path.realpath(LOCAL_KUBECONFIG)
    rendered = render()
    (rule,) = rendered.of_kind("PrometheusRule")
    (board_cm,) = [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    board = json.loads(next(iter(board_cm["data"].values())))
    components = ["controller"] + (["agent"] if memwatch.agent_daemonset else [])
    assert bool(rendered.agent) == bool(memwatch.agent_daemonset), (
        "the rendered values and the installed release disagree about the agent: the test renders the wrong values")

    pods = memwatch_pods(memwatch)
    controller = next((p for p in pods if p["metadata"]["labels"].get("app.kubernetes.io/component") == "controller"),
                      None)
    assert controller is not None, f"no running memwatch controller pod in {memwatch.namespace}"
    if not reachable(controller["status"]["podIP"], metrics_port(controller)):
        why = (f"this machine cannot reach the pod network (controller pod {controller['status']['podIP']}:"
               f"{metrics_port(controller)}), so a Prometheus running here cannot scrape memwatch")
        if on_local:
            pytest.fail(f"{why}: on the local cluster it must (its pods are on this machine's bridge)")
        pytest.skip(f"SKIPPED LOUDLY: {why} (kind runs its pods inside a container); memwatch on the cluster is "
                    "NOT scraped by a real Prometheus")

    directory = Path(tempfile.mkdtemp(prefix="memwatch-prometheus-cluster-"))
    directory.chmod(0o700)
    processes = Processes(directory)
    created_services: list[str] = []
    discovery: Discovery | None = None
    ns: str | None = None
    try:
        created_services = ensure_services(cluster, rendered, components)
        access = kubernetes_sd_access(yaml.safe_load(Path(kubeconfig).read_text()), directory,
                                      base=Path(kubeconfig).resolve().parent)
        rules = directory / "rules.yaml"
        rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
        config = prometheus_config([rendered.one("ServiceMonitor")], [str(rules)], access)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [prometheus_bin, f"--config.file={directory / 'prometheus.yaml'}",
                f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{port}"]

        def start(name: str, whole: Obj) -> bool:
            """Start Prometheus with ``whole`` and wait until it is ready; False when it refuses
            Kubernetes discovery (it exits at once, saying so); any other failure fails the test."""
            (directory / "prometheus.yaml").write_text(yaml.safe_dump(whole, sort_keys=False))
            processes.start(name, argv)
            proc = processes.procs[name]
            ready = poll(lambda: proc.poll() is not None or http_get(f"{url}/-/ready")[0] == 200,
                         time.monotonic() + STARTUP)
            if proc.poll() is not None:
                if NO_KUBERNETES_SD in processes.log(name, 200):
                    del processes.procs[name]  # it has ended; its log stays in the directory
                    return False
                pytest.fail(f"Prometheus exited with {proc.returncode}\n{processes.log(name)}")
            if not ready:
                pytest.fail(f"Prometheus is not ready after {STARTUP:.0f}s\n{processes.log(name)}")
            return True

        mode = "kubernetes (Prometheus' own Kubernetes discovery)"
        if not start("prometheus", config):
            # Debian's binary: the discovery is done here, the relabeling stays Prometheus'.
            (job,) = config["scrape_configs"]
            swapped, namespaces = with_file_discovery(job, str(directory / "targets.json"))
            discovery = Discovery(cluster, namespaces, directory / "targets.json")
            discovery.start()
            mode = (f"file (emulated Kubernetes discovery: {prometheus_bin} is built without it, "
                    f"'{NO_KUBERNETES_SD}')")
            if not start("prometheus-file-sd", {**config, "scrape_configs": [swapped]}):
                pytest.fail(f"Prometheus refused file discovery too\n{processes.logs()}")
        prometheus = Prometheus(url)
        result = Run(prometheus, rule, board, processes, memwatch, mode)
        result.timings["discovery"] = mode.split(" ", 1)[0]
        result.services = {c: rendered.one("Service", c)["metadata"]["name"] for c in components}
        if "--defer-to-agents=all" in args_of(rendered.controller) and memwatch.agent_ready() is None:
            result.exceptions |= dict.fromkeys(CONTROLLER_SAMPLES, CONTROLLER_DEFERS)
        print(f"\nPrometheus discovery: {mode}", flush=True)

        # Every memwatch pod a target, up.
        def all_up() -> bool:
            result.pods = memwatch_pods(memwatch)
            active = prometheus.api("targets")["data"]["activeTargets"]
            return ({t["labels"].get("pod") for t in active} == {p["metadata"]["name"] for p in result.pods}
                    and all(t["health"] == "up" for t in active))

        if not poll(all_up, time.monotonic() + STARTUP):
            processes.check_running()
            pytest.fail(f"not every memwatch pod is an up target in Prometheus: pods "
                        f"{[p['metadata']['name'] for p in result.pods]}\n{result.why()}"
                        + (f"\nlast discovery error: {discovery.error}" if discovery and discovery.error else ""))
        result.timings["targets_up"] = f"{time.monotonic() - t0:.1f}s"

        ns = unique("e2e-prometheus")
        cluster.create_namespace(ns)
        make_activity(result, cluster, memwatch, ns, t0)

        # Every name with data (bounded: the tests say which have none).
        poll(lambda: result.without_data() <= set(result.exceptions), time.monotonic() + DATA)
        processes.check_running()
        result.timings["data"] = f"{time.monotonic() - t0:.1f}s"
        yield result
    finally:
        if discovery is not None:
            discovery.stop()
        processes.stop_all()
        if ns is not None:
            cluster.delete_namespace(ns)
        for path in created_services:
            try:
                cluster.request("DELETE", path)
            except ApiError as exc:
                if exc.status != 404:
                    raise
        shutil.rmtree(directory, ignore_errors=True)


# --- the tests ------------------------------------------------------------------------------------


@pytest.mark.timeout(60, func_only=True)
def test_targets_are_up_with_the_service_monitor_labels(run: Run, request: pytest.FixtureRequest) -> None:
    """Each memwatch pod is one target, up, labelled as the ServiceMonitor has the operator label it:
    its namespace, its component's metrics Service, job the component, its own name, container,
    endpoint `metrics`, and its node."""
    for key, value in run.timings.items():
        request.node.user_properties.append((key, value))
    up = {s["metric"]["pod"]: s for s in run.prometheus.series(f'up{{namespace="{run.memwatch.namespace}"}}')}
    assert set(up) == {p["metadata"]["name"] for p in run.pods}, run.why()
    components = set()
    for pod in run.pods:
        component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
        components.add(component)
        series = up[pod["metadata"]["name"]]
        labels = series["metric"]
        assert series["value"][1] == "1", f"{pod['metadata']['name']} is down\n{run.why()}"
        assert {k: labels.get(k) for k in TARGET_LABELS} == {
            "namespace": run.memwatch.namespace, "service": run.services[component], "job": component,
            "pod": pod["metadata"]["name"], "container": pod["spec"]["containers"][0]["name"], "endpoint": "metrics",
            "node": pod["spec"]["nodeName"]}, labels
        assert labels["instance"] == f"{pod['status']['podIP']}:{metrics_port(pod)}"
    assert components == set(run.services), f"scraped components {components}, metrics Services {run.services}"


@pytest.mark.timeout(60, func_only=True)
def test_every_metric_name_has_series_from_the_cluster(run: Run) -> None:
    """Every name the alerts and the dashboard use has a series from the release, and every series
    of it carries the ServiceMonitor's labels (so the rules' and panels' matchers can find it)."""
    missing = {name: run.names[name] for name in sorted(run.without_data() - set(run.exceptions))}
    assert not missing, f"names with no series from the cluster: {json.dumps(missing, indent=1)}\n{run.why()}"
    unlabelled = {}
    for name in sorted(set(run.names) - set(run.exceptions)):
        bad = [s["metric"] for s in run.series(name) if not all(s["metric"].get(k) for k in TARGET_LABELS)]
        if bad:
            unlabelled[name] = bad[:2]
    assert not unlabelled, f"series without the ServiceMonitor's labels: {unlabelled}"


@pytest.mark.timeout(60, func_only=True)
def test_alert_expressions_are_valid_queries(run: Run) -> None:
    for name, alert in run.alerts.items():
        answer = run.prometheus.query(alert["expr"])
        assert answer["status"] == "success", f"{name}: {answer}"


@pytest.mark.timeout(60, func_only=True)
def test_dashboard_queries_are_valid_queries(run: Run) -> None:
    """Every panel's query and every variable's, variables at "All"."""
    queries = {**dashboard_queries(run.board), **{f"${k}": q for k, q in variable_queries(run.board).items()}}
    for where, expr in queries.items():
        answer = run.prometheus.query(as_promql(expr))
        assert answer["status"] == "success", f"{where}: {as_promql(expr)}: {answer}"
    # The variables list values from the cluster (else every panel filtered by them is empty).
    missing = variables_without_values(run.board, run.prometheus.series)
    assert not missing, missing


@pytest.mark.timeout(60, func_only=True)
def test_rules_evaluate_without_error(run: Run) -> None:
    """Prometheus loaded the rendered rules and evaluated every one (health ok, no error)."""
    def rules() -> dict[str, Obj]:
        groups = run.prometheus.api("rules")["data"]["groups"]
        return {r["name"]: r for g in groups for r in g["rules"]}

    poll(lambda: all(r["health"] != "unknown" for r in rules().values()), time.monotonic() + 15)
    found = rules()
    assert set(found) == set(run.alerts)
    bad = {name: (r["health"], r.get("lastError")) for name, r in found.items() if r["health"] != "ok"}
    assert not bad, bad


@pytest.mark.timeout(60, func_only=True)
def test_the_activity_fires_its_alerts_with_the_cluster_labels(run: Run) -> None:
    """The pod held by its restart budget (and the node guard's action, when it was made to act)
    fire their alerts, which have no `for`: the rules' default selectors find the real series; and
    the eviction is counted by the component that made it, with its pod's labels."""
    def firing() -> dict[str, list[Obj]]:
        out: dict[str, list[Obj]] = {}
        for alert in run.prometheus.api("alerts")["data"]["alerts"]:
            if alert["state"] == "firing":
                out.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
        return out

    wanted = {"MemwatchRestartBudgetExhausted"} | ({"MemwatchNodeGuardActing"} if run.node_guard_node else set())
    assert all("for" not in run.alerts[name] for name in wanted)
    poll(lambda: wanted <= set(firing()), time.monotonic() + 20)
    now = firing()
    assert wanted <= set(now), f"firing: {now}\n{run.why()}"
    assert {a["namespace"] for a in now["MemwatchRestartBudgetExhausted"]} == {run.memwatch.namespace}
    if run.node_guard_node:
        assert run.node_guard_node in {a["node"] for a in now["MemwatchNodeGuardActing"]}, now
    acted = [s["metric"] for s in run.prometheus.series(
        f'memwatch_actions_total{{namespace="{run.memwatch.namespace}", result=~"evicted|deleted|killed"}}')]
    pods = {p["metadata"]["name"]: p for p in run.pods}
    assert acted, run.why()
    for labels in acted:
        assert labels["pod"] in pods and labels["job"] == pods[labels["pod"]]["metadata"]["labels"][
            "app.kubernetes.io/component"], labels


@pytest.mark.timeout(60, func_only=True)
def test_exceptions_are_exactly_the_names_without_data(run: Run) -> None:
    """No silent skip: the excepted names are used, justified, and are exactly the ones that have no
    series (an exception that has data is stale: remove it)."""
    unused = set(run.exceptions) - set(run.names)
    assert not unused, f"exceptions for names nothing uses: {unused}"
    assert all(len(reason) > 40 for reason in run.exceptions.values())
    without = run.without_data()
    assert without == set(run.exceptions), (
        f"names without data: {sorted(without)}; excepted: {sorted(run.exceptions)}\n"
        + "\n".join(f"{name} has data but is excepted: {run.series(name)[:2]}"
                    for name in sorted(set(run.exceptions) - without)))
    print("\nnames without data on this cluster, and why:\n" + "\n".join(
        f"  {name}: {reason}" for name, reason in sorted(run.exceptions.items())))
