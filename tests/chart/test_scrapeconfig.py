"""The chart's ServiceMonitor as prometheus-operator turns it into Prometheus' scrape configuration
(tests/chart/scrapeconfig.py), with no cluster: the translation is the operator's, and applied
to the endpoints Kubernetes discovery would find for the rendered Services and pods, it gives
the controller's and the agent's targets the labels the rendered alerts select by.

tests/e2e/test_prometheus_cluster.py runs a real Prometheus with this configuration against the
local cluster.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from .chartlib import NAMESPACE, RELEASE, Obj, Rendered
from .scrapeconfig import (
    NO_KUBERNETES_SD,
    endpoints_targets,
    file_sd_groups,
    kubernetes_sd_access,
    prometheus_config,
    relabel_config,
    sanitize_label_name,
    service_monitor_scrape_configs,
    with_file_discovery,
)
from .test_alerts import alerts_of, hack_program, run_promtool
from .test_prometheus_scrape import Processes, Prometheus, free_port, http_get, poll

VALUES: Obj = {"agent": {"enabled": True}, "serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}


@pytest.fixture(scope="module")
def rendered(render: Any) -> Rendered:
    result: Rendered = render(VALUES)
    return result


# --- the translation, as the operator writes it ------------------------------------------------


def test_the_rendered_monitor_translates_as_the_operator_does(rendered: Rendered) -> None:
    """Field by field what the operator generates for this ServiceMonitor (its golden files'
    layout: pkg/prometheus/testdata/*ServiceMonitor*.golden)."""
    (config,) = service_monitor_scrape_configs(rendered.one("ServiceMonitor"))
    target = ["__meta_kubernetes_endpoint_address_target_kind", "__meta_kubernetes_endpoint_address_target_name"]
    assert config == {
        "job_name": f"serviceMonitor/{NAMESPACE}/{RELEASE}/0",
        "honor_labels": False,
        "kubernetes_sd_configs": [{"role": "endpoints", "namespaces": {"names": [NAMESPACE]}}],
        "metrics_path": "/metrics",
        "relabel_configs": [
            {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
            {"action": "keep", "source_labels": ["__meta_kubernetes_service_label_app_kubernetes_io_instance",
                                                 "__meta_kubernetes_service_labelpresent_app_kubernetes_io_instance"],
             "regex": f"({RELEASE});true"},
            {"action": "keep", "source_labels": ["__meta_kubernetes_service_label_app_kubernetes_io_name",
                                                 "__meta_kubernetes_service_labelpresent_app_kubernetes_io_name"],
             "regex": "(memwatch);true"},
            {"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"], "regex": "metrics"},
            {"source_labels": target, "separator": ";", "regex": "Node;(.*)", "replacement": "${1}",
             "target_label": "node"},
            {"source_labels": target, "separator": ";", "regex": "Pod;(.*)", "replacement": "${1}",
             "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job", "replacement": "${1}"},
            {"source_labels": ["__meta_kubernetes_service_label_app_kubernetes_io_component"], "target_label": "job",
             "regex": "(.+)", "replacement": "${1}"},
            {"target_label": "endpoint", "replacement": "metrics"},
            # The ServiceMonitor's own relabeling: the pod's node.
            {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"},
            {"source_labels": ["__address__"], "target_label": "__tmp_hash", "modulus": 1, "action": "hashmod"},
            {"source_labels": ["__tmp_hash"], "regex": "0", "action": "keep"},
        ],
    }


def test_the_monitors_options_reach_the_config(render: Any) -> None:
    mine = {"sourceLabels": ["__meta_kubernetes_namespace"], "targetLabel": "ns", "action": "Replace"}
    drop = {"sourceLabels": ["__name__"], "regex": "go_.*", "action": "drop"}
    monitor = render({**VALUES, "serviceMonitor": {"enabled": True, "interval": "15s", "scrapeTimeout": "5s",
                                                   "relabelings": [mine], "metricRelabelings": [drop]}}
                     ).one("ServiceMonitor")
    api = {"api_server": "https://10.0.0.1:6443", "tls_config": {"ca_file": "/ca.crt"}}
    (config,) = service_monitor_scrape_configs(monitor, api)
    assert (config["scrape_interval"], config["scrape_timeout"]) == ("15s", "5s")
    assert config["kubernetes_sd_configs"] == [{"role": "endpoints", "namespaces": {"names": [NAMESPACE]}, **api}]
    # The user's relabelings after the chart's node relabeling, before the sharding.
    assert config["relabel_configs"][-4:-2] == [
        {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "ns", "action": "replace"}]
    assert config["metric_relabel_configs"] == [{"source_labels": ["__name__"], "regex": "go_.*", "action": "drop"}]
    whole = prometheus_config([monitor], ["/rules.yaml"], api)
    assert whole["global"] == {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    assert whole["rule_files"] == ["/rules.yaml"] and whole["scrape_configs"] == [config]


@pytest.mark.parametrize(("change", "message"), [
    ({"spec": {"sampleLimit": 10}}, "spec fields this translation does not know: ['sampleLimit']"),
    ({"endpoint": {"bearerTokenFile": "/t"}}, "endpoint fields this translation does not know: ['bearerTokenFile']"),
    ({"endpoint": {"port": ""}}, "without a port name"),
    ({"relabeling": {"sourceLabels": ["a"], "labelmap": "b"}}, "relabeling fields this translation does not know"),
])
def test_what_it_cannot_translate_is_refused(rendered: Rendered, change: Obj, message: str) -> None:
    monitor = yaml.safe_load(yaml.safe_dump(rendered.one("ServiceMonitor")))
    monitor["spec"].update(change.get("spec", {}))
    monitor["spec"]["endpoints"][0].update(change.get("endpoint", {}))
    if "relabeling" in change:
        monitor["spec"]["endpoints"][0]["relabelings"].append(change["relabeling"])
    with pytest.raises(ValueError, match=re.escape(message)):
        service_monitor_scrape_configs(monitor)


def test_selector_expressions() -> None:
    monitor = {"metadata": {"name": "m", "namespace": "n"},
               "spec": {"namespaceSelector": {"any": True}, "endpoints": [{"port": "web"}],
                        "selector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                                          {"key": "x.io/off", "operator": "DoesNotExist"}]}}}
    (config,) = service_monitor_scrape_configs(monitor)
    assert config["kubernetes_sd_configs"] == [{"role": "endpoints"}]
    assert config["relabel_configs"][1:3] == [
        {"action": "keep", "source_labels": ["__meta_kubernetes_service_label_tier",
                                             "__meta_kubernetes_service_labelpresent_tier"], "regex": "(a|b);true"},
        {"action": "drop", "source_labels": ["__meta_kubernetes_service_labelpresent_x_io_off"], "regex": "true"}]
    assert relabel_config({"targetLabel": "a", "replacement": "b", "action": "Replace"}) == {
        "target_label": "a", "replacement": "b", "action": "replace"}


# --- what Prometheus makes of it ---------------------------------------------------------------


def _expand(template: str, match: re.Match[str]) -> str:
    """Go's Regexp.Expand: $1, ${1}, $name, ${name}; an unknown group is empty."""
    def group(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        try:
            return match.group(int(name) if name.isdigit() else name) or ""
        except IndexError:  # no such group
            return ""
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", group, template)


def relabel(labels: dict[str, str], configs: list[Obj]) -> dict[str, str] | None:
    """Prometheus' relabeling (the actions the operator uses), or None when a target is dropped."""
    labels = dict(labels)
    for c in configs:
        action = c.get("action", "replace")
        value = c.get("separator", ";").join(labels.get(name, "") for name in c.get("source_labels", []))
        regex = re.compile(c.get("regex", "(.*)"))
        match = regex.fullmatch(value)
        if (action == "keep" and match is None) or (action == "drop" and match is not None):
            return None
        if action == "replace" and match is not None:
            target, result = _expand(c["target_label"], match), _expand(c.get("replacement", "$1"), match)
            if result:
                labels[target] = result
            else:
                labels.pop(target, None)
        elif action == "hashmod":
            digest = hashlib.md5(value.encode()).digest()
            labels[c["target_label"]] = str(int.from_bytes(digest[8:], "big") % c["modulus"])
        elif action not in ("replace", "keep", "drop"):
            raise AssertionError(f"relabel action {action} not simulated")
    return labels


def target_labels(config: Obj, discovered: dict[str, str]) -> dict[str, str] | None:
    """The labels Prometheus gives a discovered target of this scrape config (its populateLabels):
    job and the internal labels first, then the relabelings, then the internal labels dropped and
    `instance` defaulting to the address."""
    labels = {"job": config["job_name"], "__metrics_path__": config.get("metrics_path", "/metrics"),
              "__scheme__": config.get("scheme", "http"), **discovered}
    out = relabel(labels, config["relabel_configs"])
    if out is None or not out.get("__address__"):
        return None
    out.setdefault("instance", out["__address__"])
    return {k: v for k, v in out.items() if not k.startswith("__")}


def pod_of(workload: Obj, name: str, node: str, ip: str, phase: str = "Running") -> Obj:
    """A pod of the rendered Deployment or DaemonSet, as the API returns it once it runs."""
    template = workload["spec"]["template"]
    return {"metadata": {"name": name, "namespace": workload["metadata"]["namespace"], "uid": f"uid-{name}",
                         "labels": template["metadata"]["labels"],
                         "ownerReferences": [{"kind": workload["kind"], "name": workload["metadata"]["name"],
                                              "controller": True}]},
            "spec": {**template["spec"], "nodeName": node},
            "status": {"phase": phase, "podIP": ip, "hostIP": "10.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def endpoints_of(service: Obj, pods: list[Obj]) -> Obj:
    """The Endpoints object the endpoints controller keeps for ``service`` and the ``pods`` it selects."""
    ports = []
    for port in service["spec"]["ports"]:
        number = next(p["containerPort"] for c in pods[0]["spec"]["containers"] for p in c.get("ports") or []
                      if p.get("name") == port["targetPort"])
        ports.append({"name": port["name"], "port": number, "protocol": port.get("protocol", "TCP")})
    addresses = [{"ip": p["status"]["podIP"], "nodeName": p["spec"]["nodeName"],
                  "targetRef": {"kind": "Pod", "name": p["metadata"]["name"], "namespace": p["metadata"]["namespace"]}}
                 for p in pods]
    return {"metadata": {"name": service["metadata"]["name"], "namespace": service["metadata"]["namespace"]},
            "subsets": [{"addresses": addresses, "ports": ports}]}


def selects(service: Obj, pod: Obj) -> bool:
    return all(pod["metadata"]["labels"].get(k) == v for k, v in service["spec"]["selector"].items())


def discover(service: Obj, pods: list[Obj]) -> list[dict[str, str]]:
    assert all(selects(service, p) for p in pods), f"{service['metadata']['name']} does not select its pods"
    return endpoints_targets(endpoints_of(service, pods), service, {p["metadata"]["name"]: p for p in pods})


def rule_matchers(expr: str, metric: str) -> dict[str, str]:
    """The label matchers of the first ``metric{...}`` selector in ``expr``."""
    match = re.search(re.escape(metric) + r"\{([^}]*)\}", expr)
    assert match, (metric, expr)
    return dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))


def test_discovery_of_the_rendered_services(rendered: Rendered) -> None:
    """What Kubernetes discovery finds for the rendered controller Service and its pod: the metrics
    port's target with the Service's and the pod's labels, and the pod's other port (liveness)
    as a target without endpoint port labels."""
    service = rendered.one("Service", "controller")
    pod = pod_of(rendered.controller, "memwatch-5d8f-abcde", "node2", "10.244.0.10")
    metrics, liveness = discover(service, [pod])

    def meta(prefix: str, labels: dict[str, str]) -> dict[str, str]:
        return {f"{prefix}_{kind}_{sanitize_label_name(k)}": v if kind == "label" else "true"
                for k, v in labels.items() for kind in ("label", "labelpresent")}

    assert metrics == {
        "__address__": "10.244.0.10:9090", "__meta_kubernetes_namespace": NAMESPACE,
        "__meta_kubernetes_endpoints_name": "memwatch-metrics", "__meta_kubernetes_service_name": "memwatch-metrics",
        **meta("__meta_kubernetes_service", service["metadata"]["labels"]),
        "__meta_kubernetes_endpoint_port_name": "metrics", "__meta_kubernetes_endpoint_port_protocol": "TCP",
        "__meta_kubernetes_endpoint_ready": "true", "__meta_kubernetes_endpoint_address_target_kind": "Pod",
        "__meta_kubernetes_endpoint_address_target_name": "memwatch-5d8f-abcde",
        "__meta_kubernetes_endpoint_node_name": "node2",
        "__meta_kubernetes_pod_name": "memwatch-5d8f-abcde", "__meta_kubernetes_pod_ip": "10.244.0.10",
        "__meta_kubernetes_pod_ready": "true", "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_node_name": "node2", "__meta_kubernetes_pod_host_ip": "10.0.0.1",
        "__meta_kubernetes_pod_uid": "uid-memwatch-5d8f-abcde",
        **meta("__meta_kubernetes_pod", pod["metadata"]["labels"]),
        "__meta_kubernetes_pod_controller_kind": "Deployment", "__meta_kubernetes_pod_controller_name": "memwatch",
        "__meta_kubernetes_pod_container_name": "controller",
        "__meta_kubernetes_pod_container_image": pod["spec"]["containers"][0]["image"],
        "__meta_kubernetes_pod_container_port_name": "metrics", "__meta_kubernetes_pod_container_port_number": "9090",
        "__meta_kubernetes_pod_container_port_protocol": "TCP", "__meta_kubernetes_pod_container_init": "false"}
    assert liveness["__address__"] == "10.244.0.10:8080"
    assert liveness["__meta_kubernetes_pod_container_port_name"] == "liveness"
    assert not any(k.startswith("__meta_kubernetes_endpoint_") for k in liveness)
    # Not-ready addresses are found too, marked so.
    endpoints = endpoints_of(service, [pod])
    endpoints["subsets"][0]["notReadyAddresses"] = endpoints["subsets"][0].pop("addresses")
    (not_ready, _) = endpoints_targets(endpoints, service, {pod["metadata"]["name"]: pod})
    assert not_ready["__meta_kubernetes_endpoint_ready"] == "false"


def scenario(rendered: Rendered, ips: dict[str, str] | None = None,
             ports: dict[str, int] | None = None) -> tuple[dict[str, Obj], list[dict[str, str]]]:
    """The controller's and the agent's pods (on node2 and node1) and everything discovery finds
    in the namespace: their Services' targets, a Service of another release selecting the
    controller's pod, and a finished pod behind the agent's Service. ``ports`` moves each
    component's metrics port (for a real scrape on one address)."""
    ips = ips or {"controller": "10.244.0.10", "agent": "10.244.0.11", "finished": "10.244.0.12"}
    workloads = {"controller": rendered.controller, "agent": rendered.agent or {}}
    if ports:
        workloads = yaml.safe_load(yaml.safe_dump(workloads))
        for component, workload in workloads.items():
            for port in workload["spec"]["template"]["spec"]["containers"][0]["ports"]:
                if port["name"] == "metrics":
                    port["containerPort"] = ports[component]
    pods = {"controller": pod_of(workloads["controller"], "memwatch-5d8f-abcde", "node2", ips["controller"]),
            "agent": pod_of(workloads["agent"], "memwatch-agent-x7k2p", "node1", ips["agent"]),
            "finished": pod_of(workloads["agent"], "memwatch-agent-old", "node1", ips["finished"], "Succeeded")}
    other = yaml.safe_load(yaml.safe_dump(rendered.one("Service", "controller")))
    other["metadata"]["labels"]["app.kubernetes.io/instance"] = "other"
    other["metadata"]["name"] = "other-metrics"
    discovered = (discover(rendered.one("Service", "controller"), [pods["controller"]])
                  + discover(rendered.one("Service", "agent"), [pods["agent"], pods["finished"]])
                  + discover(other, [pods["controller"]]))
    return pods, discovered


def expected_labels(rendered: Rendered, pods: dict[str, Obj], ports: dict[str, int] | None = None
                    ) -> list[dict[str, str]]:
    """The labels the operator's configuration gives the controller's and the agent's targets."""
    out = []
    for component in ("controller", "agent"):
        pod = pods[component]
        port = (ports or {}).get(component, 9090)
        out.append({"job": component, "namespace": NAMESPACE,
                    "service": rendered.one("Service", component)["metadata"]["name"],
                    "pod": pod["metadata"]["name"], "container": component, "endpoint": "metrics",
                    "node": pod["spec"]["nodeName"], "instance": f"{pod['status']['podIP']}:{port}"})
    return out


def test_each_metrics_service_gets_the_labels_the_alerts_select_by(rendered: Rendered) -> None:
    """Discovery of the rendered Services and pods, relabeled by the translated config: the
    controller's and the agent's metrics ports are the only targets kept (not their liveness ports,
    not another release's Service, not a finished pod), each with the operator's labels (job: the
    Service's component) and its node; the rendered rules' default selectors match them."""
    (config,) = service_monitor_scrape_configs(rendered.one("ServiceMonitor"))
    pods, discovered = scenario(rendered)
    assert len(discovered) == 8  # 4 pods (one twice), 2 ports each
    kept = [labels for labels in (target_labels(config, d) for d in discovered) if labels is not None]
    assert kept == expected_labels(rendered, pods)
    targets = {labels["job"]: labels for labels in kept}
    alerts = {name: alert["expr"] for name, alert in alerts_of(rendered.one("PrometheusRule")).items()}
    for component, (alert, metric) in {"controller": ("MemwatchNoLeader", "memwatch_leader"),
                                       "agent": ("MemwatchAgentDown", "up")}.items():
        matchers = rule_matchers(alerts[alert], metric)
        assert matchers and all(targets[component].get(k) == v for k, v in matchers.items()), (
            component, matchers, targets[component])


def test_relabel_simulation() -> None:
    """The simulation above does what Prometheus does with the operator's kinds of rules."""
    configs: list[Obj] = [
        {"source_labels": ["a", "b"], "separator": ";", "regex": "x;(.*)", "replacement": "${1}-$1",
         "target_label": "c"},
        {"source_labels": ["missing"], "target_label": "d"},
        {"target_label": "e", "replacement": "fixed"},
        {"source_labels": ["a"], "target_label": "h", "modulus": 1, "action": "hashmod"}]
    assert relabel({"a": "x", "b": "y", "d": "old"}, configs) == {"a": "x", "b": "y", "c": "y-y", "e": "fixed",
                                                                 "h": "0"}
    assert relabel({"a": "xx"}, [{"action": "keep", "source_labels": ["a"], "regex": "x"}]) is None
    assert relabel({"a": "x"}, [{"action": "drop", "source_labels": ["a"], "regex": "x|y"}]) is None


# --- Kubernetes discovery's access, and discovery through a file ----------------------------------


def test_access_from_a_kubeconfig(tmp_path: Path) -> None:
    """Embedded certificates become files only the owner reads; paths stay; a token becomes a file."""
    data = {name: base64.b64encode(f"{name} pem".encode()).decode() for name in ("ca", "crt", "key")}
    kubeconfig: Obj = {
        "current-context": "b",
        "contexts": [{"name": "a", "context": {"cluster": "x", "user": "x"}},
                     {"name": "b", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {"server": "https://10.244.0.1:6443",
                                               "certificate-authority-data": data["ca"]}}],
        "users": [{"name": "u", "user": {"client-certificate-data": data["crt"], "client-key-data": data["key"]}}]}
    access = kubernetes_sd_access(kubeconfig, tmp_path)
    assert access == {"api_server": "https://10.244.0.1:6443", "tls_config": {
        "ca_file": str(tmp_path / "ca.crt"), "cert_file": str(tmp_path / "client.crt"),
        "key_file": str(tmp_path / "client.key")}}
    assert (tmp_path / "client.key").read_text() == "key pem"
    assert all((tmp_path / n).stat().st_mode & 0o777 == 0o600 for n in ("ca.crt", "client.crt", "client.key"))
    kubeconfig["clusters"][0]["cluster"] = {"server": "https://h:6443", "certificate-authority": "pki/ca.crt",
                                            "insecure-skip-tls-verify": True}
    kubeconfig["users"][0]["user"] = {"token": "t0k3n"}
    access = kubernetes_sd_access(kubeconfig, tmp_path, base=Path("/etc/k"))
    assert access == {"api_server": "https://h:6443",
                      "tls_config": {"ca_file": "/etc/k/pki/ca.crt", "insecure_skip_verify": True},
                      "authorization": {"credentials_file": str(tmp_path / "token")}}
    assert (tmp_path / "token").read_text() == "t0k3n"


def test_file_discovery_keeps_the_relabelings(rendered: Rendered) -> None:
    (config,) = service_monitor_scrape_configs(rendered.one("ServiceMonitor"), {"api_server": "https://a"})
    swapped, namespaces = with_file_discovery(config, "/sd/targets.json")
    assert namespaces == [NAMESPACE]
    assert swapped["file_sd_configs"] == [{"files": ["/sd/targets.json"], "refresh_interval": "1s"}]
    assert "kubernetes_sd_configs" not in swapped
    assert {k: v for k, v in swapped.items() if k != "file_sd_configs"} == {
        k: v for k, v in config.items() if k != "kubernetes_sd_configs"}
    assert file_sd_groups([{"__address__": "1.2.3.4:9090", "__meta_x": "y"}]) == [
        {"targets": ["1.2.3.4:9090"], "labels": {"__meta_x": "y"}}]


# --- the real Prometheus and promtool --------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    return hack_program("promtool", "the translated scrape configuration is NOT checked by promtool")


@pytest.mark.parametrize("discovery", ["kubernetes", "file"])
def test_promtool_accepts_the_config(promtool: str, rendered: Rendered, tmp_path: Path, discovery: str) -> None:
    """The whole configuration, with discovery pointed at an API server outside the cluster (or
    at a file) and the rendered rules, as the e2e test writes it, is valid for Prometheus."""
    for name in ("ca.crt", "client.crt", "client.key"):
        (tmp_path / name).write_text("not read by `promtool check config`\n")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rendered.one("PrometheusRule")["spec"]["groups"]}, sort_keys=False))
    api = {"api_server": "https://10.244.0.1:6443",
           "tls_config": {"ca_file": str(tmp_path / "ca.crt"), "cert_file": str(tmp_path / "client.crt"),
                          "key_file": str(tmp_path / "client.key")}}
    whole = prometheus_config([rendered.one("ServiceMonitor")], [str(rules)], api)
    if discovery == "file":
        whole["scrape_configs"] = [with_file_discovery(c, str(tmp_path / "targets.json"))[0]
                                   for c in whole["scrape_configs"]]
        (tmp_path / "targets.json").write_text("[]\n")
    config = tmp_path / "prometheus.yaml"
    config.write_text(yaml.safe_dump(whole, sort_keys=False))
    proc = run_promtool(promtool, "check", "config", config)
    if discovery == "kubernetes" and NO_KUBERNETES_SD in proc.stdout + proc.stderr:
        pytest.skip(f"SKIPPED LOUDLY: {promtool} is built without Kubernetes discovery (Debian's package): the "
                    "kubernetes_sd_configs variant is NOT checked by promtool (the file variant is)")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


class MetricsServer:
    """A /metrics endpoint on 127.0.0.1 serving one gauge, in a thread."""

    def __init__(self, body: str) -> None:
        payload = body.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_real_prometheus_relabels_as_the_simulation_does(rendered: Rendered, tmp_path: Path) -> None:
    """Debian's real Prometheus (hack/promtool.sh --prometheus), given the translated config with
    the discovered targets through a file (the controller's and the agent's metrics ports moved to
    two local servers): it keeps exactly the two targets the simulation above keeps, with the same
    labels, drops the other six, and scrapes both."""
    prometheus_bin = hack_program("the prometheus server", "the relabeling is NOT checked by a real Prometheus",
                                  "--prometheus")
    servers = {c: MetricsServer(f"# TYPE memwatch_leader gauge\nmemwatch_leader {v}\n")
               for c, v in (("controller", 1), ("agent", 0))}
    processes = Processes(tmp_path)
    try:
        ports = {c: s.port for c, s in servers.items()}
        pods, discovered = scenario(rendered, {c: "127.0.0.1" for c in ("controller", "agent", "finished")}, ports)
        (config,) = service_monitor_scrape_configs(rendered.one("ServiceMonitor"))
        targets_file = tmp_path / "targets.json"
        targets_file.write_text(json.dumps(file_sd_groups(discovered)))
        swapped, _ = with_file_discovery(config, str(targets_file))
        whole = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}, "scrape_configs": [swapped]}
        (tmp_path / "prometheus.yaml").write_text(yaml.safe_dump(whole, sort_keys=False))
        web = free_port()
        processes.start("prometheus", [prometheus_bin, f"--config.file={tmp_path / 'prometheus.yaml'}",
                                       f"--storage.tsdb.path={tmp_path / 'data'}",
                                       f"--web.listen-address=127.0.0.1:{web}"])
        prometheus = Prometheus(f"http://127.0.0.1:{web}")

        def scraped() -> bool:
            if http_get(f"{prometheus.url}/-/ready")[0] != 200:
                return False
            active = prometheus.api("targets")["data"]["activeTargets"]
            return len(active) == 2 and all(t["health"] == "up" for t in active)

        if not poll(scraped, time.monotonic() + 30):
            processes.check_running()
            pytest.fail(f"Prometheus did not scrape both targets: {http_get(f'{prometheus.url}/api/v1/targets')}"
                        f"\n{processes.logs()}")
        answer = prometheus.api("targets")["data"]
        simulated = [target_labels(config, d) for d in discovered]
        assert sorted((t["labels"] for t in answer["activeTargets"]), key=lambda t: t["job"]) == sorted(
            (labels for labels in simulated if labels is not None), key=lambda t: t["job"])
        assert sorted(answer["activeTargets"][0]["labels"]) == sorted(expected_labels(rendered, pods, ports)[0])
        assert len(answer["droppedTargets"]) == len(discovered) - 2
        leader = prometheus.series("memwatch_leader")
        assert {(s["metric"]["job"], s["metric"]["service"], s["value"][1]) for s in leader} == {
            ("controller", "memwatch-metrics", "1"), ("agent", "memwatch-agent-metrics", "0")}
    finally:
        processes.stop_all()
        for server in servers.values():
            server.stop()
