"""What prometheus-operator makes of a ServiceMonitor: the Prometheus scrape configuration it
generates (pkg/prometheus/promcfg.go, generateServiceMonitorConfig; its golden files show the
result), for a Prometheus that runs without the operator, such as the e2e suite's
(tests/e2e/test_prometheus_cluster.py).

And, for a Prometheus built without Kubernetes discovery (Debian's package leaves it out: its
binary knows no `kubernetes_sd_configs`), what that discovery (role `endpoints`) would find, from
the API objects it reads, handed over through `file_sd_configs`: the relabelings, which make the
labels, stay the operator's and run in the real Prometheus.

Pure: objects in, objects out. Only the ServiceMonitor fields the translation knows are accepted;
any other is refused (ValueError), so that a field the chart starts using cannot be silently left
out of what the tests scrape with. tests/chart/test_scrapeconfig.py checks it against the
rendered ServiceMonitor.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

Obj = dict[str, Any]

#: The spec fields translated (see service_monitor_scrape_configs).
SPEC_FIELDS = {"jobLabel", "targetLabels", "podTargetLabels", "selector", "namespaceSelector", "endpoints"}
ENDPOINT_FIELDS = {"port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels", "relabelings",
                   "metricRelabelings"}
#: A RelabelConfig's fields in the CRD, and their names in Prometheus' configuration.
RELABEL_FIELDS = {"sourceLabels": "source_labels", "separator": "separator", "targetLabel": "target_label",
                  "regex": "regex", "modulus": "modulus", "replacement": "replacement", "action": "action"}


def sanitize_label_name(name: str) -> str:
    """A Kubernetes label key as Prometheus' Kubernetes discovery spells it in meta label names."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def relabel_config(crd: Obj) -> Obj:
    """One RelabelConfig of the CRD (camelCase) as Prometheus reads it (snake_case, the action in
    lower case), as the operator's generateRelabelConfig writes it."""
    unknown = set(crd) - set(RELABEL_FIELDS)
    if unknown:
        raise ValueError(f"relabeling fields this translation does not know: {sorted(unknown)}")
    out: Obj = {}
    for field, key in RELABEL_FIELDS.items():
        if crd.get(field) not in (None, "", [], 0):
            value = crd[field]
            out[key] = value.lower() if field == "action" else copy.deepcopy(value)
    return out


def _selector_relabelings(selector: Obj) -> list[Obj]:
    """The Service selector as keep/drop relabelings on the Service's labels."""
    unknown = set(selector) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise ValueError(f"selector fields this translation does not know: {sorted(unknown)}")
    out: list[Obj] = []
    for key in sorted(selector.get("matchLabels") or {}):
        name = sanitize_label_name(key)
        out.append({"action": "keep",
                    "source_labels": [f"__meta_kubernetes_service_label_{name}",
                                      f"__meta_kubernetes_service_labelpresent_{name}"],
                    "regex": f"({selector['matchLabels'][key]});true"})
    for expression in selector.get("matchExpressions") or []:
        name = sanitize_label_name(expression["key"])
        value, present = f"__meta_kubernetes_service_label_{name}", f"__meta_kubernetes_service_labelpresent_{name}"
        values = "|".join(expression.get("values") or [])
        operator = expression["operator"]
        if operator in ("In", "NotIn"):
            out.append({"action": "keep" if operator == "In" else "drop", "source_labels": [value, present],
                        "regex": f"({values});true"})
        elif operator in ("Exists", "DoesNotExist"):
            out.append({"action": "keep" if operator == "Exists" else "drop", "source_labels": [present],
                        "regex": "true"})
        else:
            raise ValueError(f"unknown selector operator {operator!r}")
    return out


def service_monitor_scrape_configs(monitor: Obj, kubernetes_sd: Obj | None = None, shards: int = 1,
                                   shard: int = 0) -> list[Obj]:
    """The scrape configs (one per endpoint) prometheus-operator generates for ``monitor``.

    - Kubernetes discovery with role ``endpoints``, limited to the namespaces of
      ``namespaceSelector.matchNames`` (the monitor's own namespace when it names none; all of
      them with ``any: true``); ``kubernetes_sd`` is merged into it (e.g. ``api_server`` and
      ``tls_config`` for a Prometheus outside the cluster; the operator's runs inside it).
    - Keep only the Services the selector selects, and the endpoint port named ``port``.
    - The operator's labels: ``node`` or ``pod`` from the address's target, ``namespace``,
      ``service``, ``pod``, ``container``; pods that finished dropped; ``job`` from the Service's
      name, then from its ``jobLabel`` label where it has one; ``endpoint`` the port's name.
    - Then the endpoint's own ``relabelings``, then the operator's sharding (hashmod on the
      address; one shard keeps everything), and its ``metricRelabelings``.
    """
    metadata, spec = monitor["metadata"], monitor["spec"]
    unknown = set(spec) - SPEC_FIELDS
    if unknown:
        raise ValueError(f"ServiceMonitor spec fields this translation does not know: {sorted(unknown)}")
    namespace_selector = spec.get("namespaceSelector") or {}
    if namespace_selector.get("any"):
        namespaces: list[str] = []
    else:
        namespaces = list(namespace_selector.get("matchNames") or [metadata["namespace"]])
    configs = []
    for index, endpoint in enumerate(spec["endpoints"]):
        unknown = set(endpoint) - ENDPOINT_FIELDS
        if unknown:
            raise ValueError(f"ServiceMonitor endpoint fields this translation does not know: {sorted(unknown)}")
        if not endpoint.get("port"):
            raise ValueError("an endpoint without a port name: this translation only follows named ports")
        port = endpoint["port"]
        sd: Obj = {"role": "endpoints"}
        if namespaces:
            sd["namespaces"] = {"names": namespaces}
        sd.update(copy.deepcopy(kubernetes_sd or {}))
        config: Obj = {"job_name": f"serviceMonitor/{metadata['namespace']}/{metadata['name']}/{index}",
                       "honor_labels": bool(endpoint.get("honorLabels", False)),
                       "kubernetes_sd_configs": [sd]}
        if endpoint.get("interval"):
            config["scrape_interval"] = endpoint["interval"]
        if endpoint.get("scrapeTimeout"):
            config["scrape_timeout"] = endpoint["scrapeTimeout"]
        if endpoint.get("path"):
            config["metrics_path"] = endpoint["path"]
        if endpoint.get("scheme"):
            config["scheme"] = endpoint["scheme"]
        target = ["__meta_kubernetes_endpoint_address_target_kind", "__meta_kubernetes_endpoint_address_target_name"]
        relabelings: list[Obj] = [
            {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
            *_selector_relabelings(spec.get("selector") or {}),
            {"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"], "regex": port},
            {"source_labels": target, "separator": ";", "regex": "Node;(.*)", "replacement": "${1}",
             "target_label": "node"},
            {"source_labels": target, "separator": ";", "regex": "Pod;(.*)", "replacement": "${1}",
             "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"},
        ]
        for label in spec.get("targetLabels") or []:
            relabelings.append({"source_labels": [f"__meta_kubernetes_service_label_{sanitize_label_name(label)}"],
                                "target_label": sanitize_label_name(label), "regex": "(.+)", "replacement": "${1}"})
        for label in spec.get("podTargetLabels") or []:
            relabelings.append({"source_labels": [f"__meta_kubernetes_pod_label_{sanitize_label_name(label)}"],
                                "target_label": sanitize_label_name(label), "regex": "(.+)", "replacement": "${1}"})
        relabelings.append({"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job",
                            "replacement": "${1}"})
        if spec.get("jobLabel"):
            job_label = f"__meta_kubernetes_service_label_{sanitize_label_name(spec['jobLabel'])}"
            relabelings.append({"source_labels": [job_label], "target_label": "job", "regex": "(.+)",
                                "replacement": "${1}"})
        relabelings.append({"target_label": "endpoint", "replacement": port})
        relabelings += [relabel_config(r) for r in endpoint.get("relabelings") or []]
        relabelings += [
            {"source_labels": ["__address__"], "target_label": "__tmp_hash", "modulus": shards, "action": "hashmod"},
            {"source_labels": ["__tmp_hash"], "regex": str(shard), "action": "keep"},
        ]
        config["relabel_configs"] = relabelings
        if endpoint.get("metricRelabelings"):
            config["metric_relabel_configs"] = [relabel_config(r) for r in endpoint["metricRelabelings"]]
        configs.append(config)
    return configs


def prometheus_config(monitors: list[Obj], rule_files: list[str], kubernetes_sd: Obj | None = None,
                      interval: str = "1s") -> Obj:
    """A whole Prometheus configuration: the scrape configs of ``monitors``, every ``interval``
    (the monitors' own intervals win, as with the operator), and ``rule_files``."""
    return {"global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
            "rule_files": list(rule_files),
            "scrape_configs": [c for m in monitors for c in service_monitor_scrape_configs(m, kubernetes_sd)]}


# --- Kubernetes discovery, where the Prometheus server has none ----------------------------------

#: What a Prometheus (or promtool) built without Kubernetes discovery says of kubernetes_sd_configs.
NO_KUBERNETES_SD = "field kubernetes_sd_configs not found"


def with_file_discovery(config: Obj, path: str) -> tuple[Obj, list[str]]:
    """``config`` (one scrape config with Kubernetes discovery, role endpoints) reading its targets
    from the file ``path`` instead, and the namespaces the discovery was limited to (empty: all),
    which whoever writes the file must keep to."""
    (sd,) = config["kubernetes_sd_configs"]
    if sd["role"] != "endpoints":
        raise ValueError(f"only role endpoints is emulated, not {sd['role']}")
    out = {k: copy.deepcopy(v) for k, v in config.items() if k != "kubernetes_sd_configs"}
    out["file_sd_configs"] = [{"files": [path], "refresh_interval": "1s"}]
    return out, list((sd.get("namespaces") or {}).get("names") or [])


def _object_labels(prefix: str, meta: Obj) -> dict[str, str]:
    """``<prefix>_label_<key>``, ``_labelpresent_``, ``_annotation_``, ``_annotationpresent_``."""
    out = {}
    for kind, items in (("label", meta.get("labels")), ("annotation", meta.get("annotations"))):
        for key, value in (items or {}).items():
            out[f"{prefix}_{kind}_{sanitize_label_name(key)}"] = str(value)
            out[f"{prefix}_{kind}present_{sanitize_label_name(key)}"] = "true"
    return out


def _pod_labels(pod: Obj) -> dict[str, str]:
    meta, status = pod["metadata"], pod.get("status") or {}
    ready = next((c["status"] for c in status.get("conditions") or [] if c.get("type") == "Ready"), "unknown")
    labels = {"__meta_kubernetes_pod_name": meta["name"], "__meta_kubernetes_pod_ip": status.get("podIP", ""),
              "__meta_kubernetes_pod_ready": str(ready).lower(), "__meta_kubernetes_pod_phase": status.get("phase", ""),
              "__meta_kubernetes_pod_node_name": (pod.get("spec") or {}).get("nodeName", ""),
              "__meta_kubernetes_pod_host_ip": status.get("hostIP", ""),
              "__meta_kubernetes_pod_uid": meta.get("uid", ""),
              **_object_labels("__meta_kubernetes_pod", meta)}
    owner = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), None)
    if owner:
        labels["__meta_kubernetes_pod_controller_kind"] = owner["kind"]
        labels["__meta_kubernetes_pod_controller_name"] = owner["name"]
    return labels


def _container_labels(container: Obj, port: Obj) -> dict[str, str]:
    return {"__meta_kubernetes_pod_container_name": container["name"],
            "__meta_kubernetes_pod_container_image": container.get("image", ""),
            "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
            "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
            "__meta_kubernetes_pod_container_port_protocol": port.get("protocol", "TCP"),
            "__meta_kubernetes_pod_container_init": "false"}


def endpoints_targets(endpoints: Obj, service: Obj | None, pods: Mapping[str, Obj]) -> list[dict[str, str]]:
    """The targets, each its labels with ``__address__``, that Prometheus' Kubernetes discovery
    (role endpoints; discovery/kubernetes/endpoints.go) makes of one Endpoints object, given the
    Service of the same name and the pods (by name) its addresses point to:

    one target per address (ready, then not ready) and port, with the namespace, the Endpoints'
    name, the Service's name, labels and annotations, the port's name and protocol, whether the
    address is ready, its target's kind and name, its node; and, where the target is a known pod,
    the pod's labels and those of the container that declares the port. Then one target for each
    other port the pods' containers declare, without the endpoint's port labels."""
    meta = endpoints["metadata"]
    group = {"__meta_kubernetes_namespace": meta["namespace"], "__meta_kubernetes_endpoints_name": meta["name"]}
    if service is not None:
        group["__meta_kubernetes_service_name"] = service["metadata"]["name"]
        group.update(_object_labels("__meta_kubernetes_service", service["metadata"]))
    targets: list[dict[str, str]] = []
    covered: dict[str, set[tuple[int, str]]] = {}  # pod name -> (port, protocol) already a target
    for subset in endpoints.get("subsets") or []:
        addresses = [(a, "true") for a in subset.get("addresses") or []]
        addresses += [(a, "false") for a in subset.get("notReadyAddresses") or []]
        for address, ready in addresses:
            ref = address.get("targetRef") or {}
            pod = pods.get(ref.get("name", "")) if ref.get("kind") == "Pod" else None
            for port in subset.get("ports") or []:
                protocol = port.get("protocol", "TCP")
                labels = {**group, "__address__": f"{address['ip']}:{port['port']}",
                          "__meta_kubernetes_endpoint_port_name": port.get("name", ""),
                          "__meta_kubernetes_endpoint_port_protocol": protocol,
                          "__meta_kubernetes_endpoint_ready": ready}
                if ref:
                    labels["__meta_kubernetes_endpoint_address_target_kind"] = ref.get("kind", "")
                    labels["__meta_kubernetes_endpoint_address_target_name"] = ref.get("name", "")
                if address.get("nodeName"):
                    labels["__meta_kubernetes_endpoint_node_name"] = address["nodeName"]
                if address.get("hostname"):
                    labels["__meta_kubernetes_endpoint_hostname"] = address["hostname"]
                if pod is not None:
                    labels.update(_pod_labels(pod))
                    for container in pod["spec"]["containers"]:
                        for declared in container.get("ports") or []:
                            if (declared["containerPort"], declared.get("protocol", "TCP")) == (port["port"], protocol):
                                labels.update(_container_labels(container, declared))
                    covered.setdefault(pod["metadata"]["name"], set()).add((port["port"], protocol))
                targets.append(labels)
    for name, done in covered.items():
        pod = pods[name]
        for container in pod["spec"]["containers"]:
            for declared in container.get("ports") or []:
                if (declared["containerPort"], declared.get("protocol", "TCP")) in done:
                    continue
                ip = (pod.get("status") or {}).get("podIP", "")
                targets.append({**group, "__address__": f"{ip}:{declared['containerPort']}", **_pod_labels(pod),
                                **_container_labels(container, declared)})
    return targets


def file_sd_groups(targets: list[dict[str, str]]) -> list[Obj]:
    """Targets as the target groups of a `file_sd_configs` file: one group per target."""
    return [{"targets": [t["__address__"]], "labels": {k: v for k, v in t.items() if k != "__address__"}}
            for t in targets]


def kubernetes_sd_access(kubeconfig: Obj, directory: Path, base: Path | None = None) -> Obj:
    """The `api_server` and credentials of a kubeconfig's current context as Kubernetes discovery
    takes them: certificates embedded in the kubeconfig (``*-data``) written to files in
    ``directory`` (mode 0600); file paths (relative to ``base``) kept; a bearer token written to a
    file too."""
    contexts = {c["name"]: c["context"] for c in kubeconfig.get("contexts") or []}
    context = contexts[kubeconfig["current-context"]]
    cluster = next(c["cluster"] for c in kubeconfig["clusters"] if c["name"] == context["cluster"])
    user: Obj = next((u["user"] for u in kubeconfig.get("users") or [] if u["name"] == context.get("user")), {})

    def material(entry: Obj, key: str, name: str) -> str | None:
        if entry.get(f"{key}-data"):
            path = directory / name
            path.touch(mode=0o600)
            path.write_bytes(base64.b64decode(entry[f"{key}-data"]))
            return str(path)
        if entry.get(key):
            return str((base or Path.cwd()) / entry[key])
        return None

    tls: Obj = {}
    for entry, key, field, name in ((cluster, "certificate-authority", "ca_file", "ca.crt"),
                                    (user, "client-certificate", "cert_file", "client.crt"),
                                    (user, "client-key", "key_file", "client.key")):
        if (found := material(entry, key, name)) is not None:
            tls[field] = found
    if cluster.get("insecure-skip-tls-verify"):
        tls["insecure_skip_verify"] = True
    access: Obj = {"api_server": cluster["server"]}
    if tls:
        access["tls_config"] = tls
    if user.get("token"):
        token = directory / "token"
        token.touch(mode=0o600)
        token.write_text(user["token"])
        access["authorization"] = {"credentials_file": str(token)}
    return access
