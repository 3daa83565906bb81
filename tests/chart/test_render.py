"""The rendered chart: valid Kubernetes objects, standard labels, matching
selectors, the restricted security context, probes and the flags the CLI
expects. Every test renders with the real Helm engine."""

from __future__ import annotations

import re
import sys
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from .chartlib import CHART_DIR, NAMESPACE, RELEASE, REPO_DIR, Obj, Rendered, args_of, container, flag

# The oldest and newest Kubernetes schemas kubernetes-validate bundles (offline).
# The local test cluster runs 1.20, older than any bundled schema: the chart
# uses no field newer than 1.19 (seccompProfile), and the install test covers 1.20.
KUBE_VERSIONS = sorted({"1.25", kubernetes_validate.latest_version()})

# The prometheus-operator CRD is not bundled anywhere offline: this is the
# subset of monitoring.coreos.com/v1 ServiceMonitor the chart uses, with
# unknown fields rejected, so a typo in the template still fails.
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR_SCHEMA: Obj = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _LABELS},
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": _LABELS},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string"},
                            "scrapeTimeout": {"type": "string"},
                            "relabelings": {"type": "array", "items": {"type": "object"}},
                            "metricRelabelings": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                },
            },
        },
    },
}

STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# --- schema validity -------------------------------------------------------


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_object_is_valid_kubernetes(scenario: Rendered, version: str) -> None:
    for obj in scenario.objects:
        if obj["kind"] == "ServiceMonitor":
            jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
            continue
        # strict: unknown fields are errors too (a misspelt key would be
        # silently dropped by the API server).
        kubernetes_validate.validate(obj, version, strict=True)


def test_validator_catches_a_bad_object(render: Any) -> None:
    """Guard against a validator that accepts anything."""
    deployment = render().controller
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Always"
    deployment["spec"]["replicaz"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


def test_namespaced_objects_name_the_release_namespace(scenario: Rendered) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    watched = set(scenario.values["namespaces"])
    for obj in scenario.objects:
        namespace = obj["metadata"].get("namespace")
        if obj["kind"] in cluster_scoped:
            assert namespace is None
        elif obj["kind"] in {"Role", "RoleBinding"} and obj["metadata"]["name"].endswith("-agent-node-events"):
            assert namespace == "default"  # the node guard's Event on the (cluster-scoped) Node lives there
        elif obj["kind"] in {"Role", "RoleBinding"}:
            assert namespace in watched | {NAMESPACE}
        else:
            assert namespace == NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']}"


# --- labels and selectors --------------------------------------------------


def test_standard_labels_everywhere(scenario: Rendered, chart: Any) -> None:
    expected = {
        "app.kubernetes.io/name": "memwatch",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/version": chart.metadata["appVersion"],
        "app.kubernetes.io/managed-by": "Helm",
        "helm.sh/chart": f"memwatch-{chart.version}",
    }
    for obj in scenario.objects:
        labels = obj["metadata"]["labels"]
        assert {key: labels.get(key) for key in STANDARD_LABELS} == expected, obj["metadata"]["name"]
    for workload in scenario.workloads:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert {key: labels.get(key) for key in STANDARD_LABELS} == expected


def test_selectors_match_pod_template_labels(scenario: Rendered) -> None:
    workloads = scenario.workloads
    for workload in workloads:
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector_matches(selector, workload["spec"]["template"]["metadata"]["labels"])
        # Selectors are immutable: no version or chart label in them.
        assert set(selector) == {
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
        }
    # The controller's and the agent's selectors never overlap.
    for workload in workloads:
        for other in workloads:
            if other is not workload:
                assert not selector_matches(
                    workload["spec"]["selector"]["matchLabels"], other["spec"]["template"]["metadata"]["labels"]
                )


def test_services_select_exactly_one_workload_and_its_port(scenario: Rendered) -> None:
    services = scenario.of_kind("Service")
    assert len(services) == (2 if scenario.agent else 1)
    for service in services:
        selected = [
            w
            for w in scenario.workloads
            if selector_matches(service["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(selected) == 1
        port_names = {p["name"] for p in container(selected[0])["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names


def test_service_monitor_selects_the_metrics_services(scenario: Rendered) -> None:
    monitor = scenario.maybe("ServiceMonitor")
    if not scenario.values["serviceMonitor"]["enabled"]:
        assert monitor is None
        return
    assert monitor is not None
    selected = [
        s
        for s in scenario.of_kind("Service")
        if selector_matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert selected == scenario.of_kind("Service")
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics"}
    for service in selected:
        assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
    for key, value in scenario.values["serviceMonitor"]["labels"].items():
        assert monitor["metadata"]["labels"][key] == value


def test_self_selector_matches_memwatch_pods_only(scenario: Rendered) -> None:
    for workload in scenario.workloads:
        (self_selector,) = flag(args_of(workload), "self-selector")
        wanted = dict(term.split("=", 1) for term in self_selector.split(","))
        for other in scenario.workloads:
            assert selector_matches(wanted, other["spec"]["template"]["metadata"]["labels"])
        assert not selector_matches(wanted, {"app.kubernetes.io/name": "memwatch"})


# --- security ----------------------------------------------------------------


def assert_restricted(pod: Obj, ctr: Obj) -> None:
    """The Kubernetes "restricted" Pod Security Standard, as far as a pod spec shows it."""
    pod_sc = pod.get("securityContext", {})
    sc = ctr.get("securityContext", {})
    assert pod_sc.get("runAsNonRoot") is True or sc.get("runAsNonRoot") is True
    assert pod_sc.get("runAsUser", sc.get("runAsUser")) != 0
    assert sc.get("readOnlyRootFilesystem") is True
    assert sc.get("allowPrivilegeEscalation") is False
    assert sc.get("capabilities", {}).get("drop") == ["ALL"]
    assert not sc.get("capabilities", {}).get("add")
    assert not sc.get("privileged")
    seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
    assert seccomp.get("type") == "RuntimeDefault"
    for host in ("hostPID", "hostIPC", "hostNetwork"):
        assert not pod.get(host)
    assert not [v for v in pod.get("volumes", []) if "hostPath" in v]


def test_controller_is_restricted(scenario: Rendered) -> None:
    assert_restricted(pod_spec(scenario.controller), container(scenario.controller))


def test_test_hook_is_restricted(scenario: Rendered) -> None:
    for hook in scenario.hooks:
        assert hook["kind"] == "Pod"
        assert hook["spec"]["automountServiceAccountToken"] is False
        assert_restricted(hook["spec"], hook["spec"]["containers"][0])


def test_agent_is_unprivileged_without_the_kill_rung(render: Any) -> None:
    agent = render({"agent": {"enabled": True}}).agent
    assert agent is not None
    pod, ctr = pod_spec(agent), container(agent)
    assert not pod.get("hostPID") and not pod.get("hostNetwork") and not pod.get("hostIPC")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    sc = ctr["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert not sc.get("privileged")
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    (mount,) = [m for m in ctr["volumeMounts"] if m["name"] == "cgroup"]
    assert mount == {"name": "cgroup", "mountPath": "/host/sys/fs/cgroup", "readOnly": True}
    (volume,) = [v for v in pod["volumes"] if v["name"] == "cgroup"]
    assert volume["hostPath"] == {"path": "/sys/fs/cgroup", "type": "Directory"}
    # The only hostPath.
    assert [v["name"] for v in pod["volumes"] if "hostPath" in v] == ["cgroup"]
    assert "--kill" not in args_of(agent)


def test_kill_rung_adds_exactly_what_it_needs(render: Any) -> None:
    agent = render({"agent": {"enabled": True, "kill": True}}).agent
    assert agent is not None
    pod, ctr = pod_spec(agent), container(agent)
    assert pod["hostPID"] is True
    assert not pod.get("hostNetwork") and not pod.get("hostIPC")
    assert pod["securityContext"]["runAsUser"] == 0
    assert pod["securityContext"]["runAsNonRoot"] is False
    sc = ctr["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["KILL"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert not sc.get("privileged")
    (mount,) = [m for m in ctr["volumeMounts"] if m["name"] == "cgroup"]
    assert mount["readOnly"] is False
    assert "--kill" in args_of(agent)


def test_kill_rung_explains_each_privilege() -> None:
    source = (CHART_DIR / "templates" / "agent" / "daemonset.yaml").read_text()
    for why in ("hostPID: true", "CAP_KILL", "cgroup.kill"):
        assert why in source
    assert re.search(r"#.*host PID namespace", source)


# --- probes, resources, image ----------------------------------------------------


def test_liveness_probe_and_no_readiness_probe(scenario: Rendered) -> None:
    for workload in scenario.workloads:
        ctr = container(workload)
        probe = ctr["livenessProbe"]
        assert probe["httpGet"] == {"path": "/healthz", "port": "liveness"}
        (port,) = [p for p in ctr["ports"] if p["name"] == "liveness"]
        (liveness,) = flag(args_of(workload), "liveness")
        assert liveness == f"http://0.0.0.0:{port['containerPort']}/healthz"
        assert "readinessProbe" not in ctr
        assert "startupProbe" not in ctr


def test_no_readiness_probe_is_explained() -> None:
    helpers = (CHART_DIR / "templates" / "_helpers.tpl").read_text()
    assert "# No readinessProbe: an operator serves no traffic" in helpers


def test_resources_are_small_and_explicit(scenario: Rendered) -> None:
    for workload in scenario.workloads:
        resources = container(workload)["resources"]
        assert resources["requests"]["cpu"] and resources["requests"]["memory"]
        assert resources["limits"]["memory"]


def test_image_defaults_to_app_version(render: Any, chart: Any) -> None:
    rendered = render({"agent": {"enabled": True}})
    for workload in rendered.workloads:
        assert container(workload)["image"] == f"docker.io/library/memwatch:{chart.metadata['appVersion']}"
    rendered = render({"agent": {"enabled": True}, "image": {"tag": "dev", "pullPolicy": "Never"}})
    for workload in rendered.workloads:
        assert container(workload)["image"] == "docker.io/library/memwatch:dev"
        assert container(workload)["imagePullPolicy"] == "Never"


def test_long_release_names_fit(render: Any) -> None:
    name = "a-very-long-release-name-that-goes-on-and-on-and-on"  # 51 chars, within Helm's 53
    rendered = render({"agent": {"enabled": True}, "serviceMonitor": {"enabled": True}}, name=name)
    for obj in rendered.objects:
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
        for value in obj["metadata"]["labels"].values():
            assert len(value) <= 63
    names = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in rendered.objects]
    assert len(names) == len(set(names))


# --- the command line -----------------------------------------------------------


def test_controller_command_line(render: Any) -> None:
    rendered = render()
    args = args_of(rendered.controller)
    assert args[0] == "run"
    assert args[1:] == [
        "--all-namespaces",
        "--self-selector=app.kubernetes.io/name=memwatch,app.kubernetes.io/instance=memwatch",
        "--protected-namespace=kube-system",
        "--protected-priority=2000000000",
        "--default-action=evict",
        "--default-for=0s",
        "--default-restart-budget=3/1h",
        "--default-min-pod-age=0s",
        "--escalation-timeout=60s",
        "--metrics-port=9090",
        "--liveness=http://0.0.0.0:8080/healthz",
        "--source=auto",
        "--interval=5s",
        "--max-sample-age=60s",
        "--max-evictions-per-minute=20",
        "--max-evictions-per-namespace-per-minute=5",
        "--kubelet-preferred-address-types=InternalIP,Hostname,InternalDNS,ExternalIP",
        "--leader-elect",
        "--leader-election-name=memwatch",
        "--leader-election-namespace=memwatch",
    ]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container(rendered.controller)["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}


def test_every_value_reaches_its_flag(render: Any) -> None:
    values = {
        "namespaces": ["team-a", "team-b"],
        "excludeNamespaces": ["scratch"],
        "labelSelector": "memwatch.io/enabled=true",
        "protection": {"namespaces": ["kube-system", "infra"], "allowNamespaces": ["infra"], "priority": 1000},
        "dryRun": True,
        "defaultPolicy": {"action": "delete", "gracePeriod": 0, "for": "10s", "restartBudget": "5/30m",
                          "minPodAge": "2m"},
        "eviction": {
            "maxPerMinute": 0,
            "maxPerNamespacePerMinute": 2,
            "escalate": True,
            "escalationTimeout": "30s",
        },
        "source": "kubelet",
        "interval": "2s",
        "maxSampleAge": "30s",
        "verbose": True,
        "metrics": {"port": 9100},
        "liveness": {"port": 8081},
        "extraArgs": ["--something-new"],
        "agent": {"enabled": True, "samplePeriod": "250ms", "kill": True, "maxEvictionsPerMinute": 3,
                  "extraArgs": ["--agent-thing"]},
    }
    rendered = render(values)
    controller, agent = args_of(rendered.controller), args_of(rendered.agent or {})
    shared = {
        "namespace": ["team-a", "team-b"],
        "exclude-namespace": ["scratch"],
        "label-selector": ["memwatch.io/enabled=true"],
        "protected-namespace": ["kube-system", "infra"],
        "allow-namespace": ["infra"],
        "protected-priority": ["1000"],
        "default-action": ["delete"],
        "default-grace-period": ["0"],
        "default-for": ["10s"],
        "default-restart-budget": ["5/30m"],
        "default-min-pod-age": ["2m"],
        "escalation-timeout": ["30s"],
        "metrics-port": ["9100"],
        "liveness": ["http://0.0.0.0:8081/healthz"],
    }
    for args in (controller, agent):
        for name, wanted in shared.items():
            assert flag(args, name) == wanted, name
        for switch in ("--dry-run", "--escalate", "--verbose"):
            assert switch in args
        assert "--all-namespaces" not in args
    assert flag(controller, "source") == ["kubelet"]
    assert flag(controller, "interval") == ["2s"]
    assert flag(controller, "max-sample-age") == ["30s"]
    # Caps: the controller's are cluster-wide, each agent's its node's own (issue #9 defect 7).
    assert flag(controller, "max-evictions-per-minute") == ["0"]
    assert flag(controller, "max-evictions-per-namespace-per-minute") == ["2"]
    assert flag(agent, "node-max-evictions-per-minute") == ["3"]
    assert not flag(agent, "max-evictions-per-minute") and not flag(controller, "node-max-evictions-per-minute")
    # One component per pod: the controller defers to Ready agents, the agent leaves announcements to it.
    assert flag(controller, "defer-to-agents") == ["all"]
    assert flag(controller, "agent-selector") == [
        "app.kubernetes.io/name=memwatch,app.kubernetes.io/instance=memwatch,app.kubernetes.io/component=agent"]
    assert "--controller-runs" in agent
    assert controller[-1] == "--something-new"
    assert agent[0] == "agent"
    assert flag(agent, "sample-period") == ["250ms"]
    assert flag(agent, "cgroup-root") == ["/host/sys/fs/cgroup"]
    assert flag(agent, "node-name") == ["$(NODE_NAME)"]
    assert agent[-1] == "--agent-thing"
    for only_controller in ("source", "interval", "max-sample-age", "leader-election-name"):
        assert not flag(agent, only_controller)
    node_name = next(e for e in container(rendered.agent or {})["env"] if e["name"] == "NODE_NAME")
    assert node_name["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    ports = {p["name"]: p["containerPort"] for p in container(rendered.controller)["ports"]}
    assert ports == {"metrics": 9100, "liveness": 8081}


def test_leader_election_lease_matches_its_role(scenario: Rendered) -> None:
    args = args_of(scenario.controller)
    assert "--leader-elect" in args
    (lease,) = flag(args, "leader-election-name")
    assert flag(args, "leader-election-namespace") == [NAMESPACE]
    roles = [r for r in scenario.of_kind("Role") if r["metadata"]["name"].endswith("-leader-election")]
    (role,) = roles
    assert role["metadata"]["namespace"] == NAMESPACE
    named = [rule for rule in role["rules"] if rule.get("resourceNames")]
    assert [rule["resourceNames"] for rule in named] == [[lease]]


def test_agent_tolerates_every_taint_and_rolls(render: Any) -> None:
    agent = render({"agent": {"enabled": True}}).agent
    assert agent is not None
    assert pod_spec(agent)["tolerations"] == [{"operator": "Exists"}]
    assert agent["spec"]["updateStrategy"]["type"] == "RollingUpdate"


def test_agent_off_by_default(render: Any) -> None:
    rendered = render()
    assert rendered.agent is None
    assert not [o for o in rendered.objects if o["metadata"]["labels"].get("app.kubernetes.io/component") == "agent"]


def test_service_monitor_needs_the_metrics_service(chart: Any) -> None:
    with pytest.raises(Exception, match=r"serviceMonitor\.enabled needs metrics\.service\.enabled"):
        chart.render({"serviceMonitor": {"enabled": True}, "metrics": {"service": {"enabled": False}}})


# --- NOTES.txt and README: Event reasons -----------------------------------------


def event_reasons() -> tuple[str, ...]:
    """Every Event reason memwatch records (memwatch.observability.ALL_REASONS)."""
    if str(REPO_DIR / "controller") not in sys.path:
        sys.path.insert(0, str(REPO_DIR / "controller"))
    try:
        from memwatch.observability import ALL_REASONS
    except ImportError as error:
        pytest.skip(f"SKIPPED LOUDLY: memwatch.observability does not import ({error}): Event reasons NOT checked")
    return tuple(ALL_REASONS)


def test_readme_lists_every_event_reason() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    for reason in event_reasons():
        assert f"`{reason}`" in readme


def test_notes_say_how_to_use_it(scenario: Rendered) -> None:
    notes = scenario.notes
    assert "memwatch.io/limit" in notes
    assert "--prefix --tail=-1 | grep action=" in notes
    assert "kubectl get events -A --field-selector reason=MemwatchEvicted" in notes
    for reason in event_reasons():
        assert reason in notes
    if scenario.values["dryRun"]:
        assert "DRY-RUN IS ON" in notes
    else:
        assert "Dry-run is off" in notes


# --- the node guard ----------------------------------------------------------


def test_node_guard_flags_follow_the_values(render: Any) -> None:
    from memwatch.cli import _parser

    default = args_of(render({"agent": {"enabled": True}}).agent)
    assert "--node-guard=dry-run" in default and "--node-guard-soft=10%" in default
    guard = {"mode": "on", "soft": "1Gi", "hard": "256Mi", "psiFull": "20", "gracePeriod": 10, "wait": "1m",
             "maxPerMinute": 2}
    args = args_of(render({"agent": {"enabled": True, "nodeGuard": guard}}).agent)
    for expected in ("--node-guard=on", "--node-guard-soft=1Gi", "--node-guard-hard=256Mi", "--node-guard-psi-full=20",
                     "--node-guard-grace=10", "--node-guard-wait=1m", "--node-guard-max-per-minute=2"):
        assert expected in args
    # What the chart renders, the CLI accepts (the flags parse to the same guard).
    parsed = _parser({}).parse_args([a.replace("$(NODE_NAME)", "n1") for a in args])
    assert (parsed.node_guard, parsed.node_guard_soft.bytes, parsed.node_guard_psi_full) == ("on", 1 << 30, 20.0)
    off = args_of(render({"agent": {"enabled": True, "nodeGuard": {"mode": "off"}}}).agent)
    assert "--node-guard=off" in off and not any(a.startswith("--node-guard-") for a in off)
