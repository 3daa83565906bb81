"""values.schema.json, through the real Helm engine: it rejects wrong types,
unknown enum values and malformed durations, with a message that names the
value and what was wrong."""

from __future__ import annotations

import json
from typing import Any

import helm_python
import pytest
import yaml

from .chartlib import CHART_DIR

REJECTED = {
    # name: (values, the value's path in the message, what the message says)
    "string-for-integer": ({"eviction": {"maxPerMinute": "20"}}, "/eviction/maxPerMinute", "want integer"),
    "float-for-integer": ({"replicaCount": 1.5}, "/replicaCount", "want integer"),
    "string-for-boolean": ({"dryRun": "yes"}, "/dryRun", "want boolean"),
    "unknown-source": ({"source": "prometheus"}, "/source", "value must be one of 'auto', 'metrics-api', 'kubelet'"),
    "negative-interval": ({"interval": "-5s"}, "/interval", "'-5s' does not match pattern"),
    "zero-interval": ({"interval": "0s"}, "/interval", "'0s' does not match pattern"),
    "unitless-interval": ({"interval": "5"}, "/interval", "'5' does not match pattern"),
    "negative-for": ({"defaultPolicy": {"for": "-1s"}}, "/defaultPolicy/for", "does not match pattern"),
    "negative-sample-period": ({"agent": {"samplePeriod": "-100ms"}}, "/agent/samplePeriod", "does not match"),
    "unknown-action": (
        {"defaultPolicy": {"action": "kill"}},
        "/defaultPolicy/action",
        "value must be one of 'evict', 'delete', 'dry-run'",
    ),
    "negative-grace-period": ({"defaultPolicy": {"gracePeriod": -1}}, "/defaultPolicy/gracePeriod", "minimum"),
    "budget-without-window": ({"defaultPolicy": {"restartBudget": "3"}}, "/defaultPolicy/restartBudget",
                              "'3' does not match pattern"),
    "budget-zero-window": ({"defaultPolicy": {"restartBudget": "3/0s"}}, "/defaultPolicy/restartBudget",
                           "does not match pattern"),
    "budget-in-days": ({"defaultPolicy": {"restartBudget": "3/1d"}}, "/defaultPolicy/restartBudget",
                       "does not match pattern"),
    "budget-unitless-window": ({"defaultPolicy": {"restartBudget": "3/3600"}}, "/defaultPolicy/restartBudget",
                               "does not match pattern"),
    "budget-as-number": ({"defaultPolicy": {"restartBudget": 3}}, "/defaultPolicy/restartBudget", "want string"),
    "budget-none": ({"defaultPolicy": {"restartBudget": "none"}}, "/defaultPolicy/restartBudget",
                    "does not match pattern"),
    "negative-min-pod-age": ({"defaultPolicy": {"minPodAge": "-1m"}}, "/defaultPolicy/minPodAge",
                             "does not match pattern"),
    "unitless-min-pod-age": ({"defaultPolicy": {"minPodAge": "60"}}, "/defaultPolicy/minPodAge",
                             "does not match pattern"),
    "negative-cap": ({"eviction": {"maxPerNamespacePerMinute": -1}}, "/eviction/maxPerNamespacePerMinute", "minimum"),
    "port-out-of-range": ({"metrics": {"port": 70000}}, "/metrics/port", "maximum"),
    "bad-namespace-name": ({"namespaces": ["Team_A"]}, "/namespaces/0", "does not match pattern"),
    "no-protected-namespace": ({"protection": {"namespaces": []}}, "/protection/namespaces", "minItems"),
    "unknown-pull-policy": ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy", "value must be one of"),
    "misspelt-key": ({"dryrun": True}, "additional properties 'dryrun' not allowed", ""),
    "misspelt-nested-key": ({"agent": {"enable": True}}, "/agent", "additional properties 'enable' not allowed"),
    "string-for-insecure-tls": ({"kubelet": {"insecureTLS": "yes"}}, "/kubelet/insecureTLS", "want boolean"),
    "not-a-pem-bundle": ({"kubelet": {"caBundle": "/etc/ssl/ca.crt"}}, "/kubelet/caBundle", "does not match pattern"),
    "unknown-address-type": ({"kubelet": {"preferredAddressTypes": ["PodIP"]}}, "/kubelet/preferredAddressTypes/0",
                             "value must be one of"),
    "no-address-type": ({"kubelet": {"preferredAddressTypes": []}}, "/kubelet/preferredAddressTypes", "minItems"),
    "string-for-evict": ({"agent": {"evict": "false"}}, "/agent/evict", "want boolean"),
    "misspelt-policy-key": ({"agent": {"admissionPolicy": {"enable": True}}}, "/agent/admissionPolicy",
                            "additional properties 'enable' not allowed"),
    "unknown-node-guard-mode": ({"agent": {"nodeGuard": {"mode": "yes"}}}, "/agent/nodeGuard/mode",
                                "value must be one of 'off', 'dry-run', 'on'"),
    "garbled-soft-line": ({"agent": {"nodeGuard": {"soft": "10 percent"}}}, "/agent/nodeGuard/soft",
                          "does not match pattern"),
    "psi-over-100": ({"agent": {"nodeGuard": {"psiFull": "150"}}}, "/agent/nodeGuard/psiFull", "does not match"),
    "zero-node-guard-wait": ({"agent": {"nodeGuard": {"wait": "0s"}}}, "/agent/nodeGuard/wait", "does not match"),
    "negative-node-guard-grace": ({"agent": {"nodeGuard": {"gracePeriod": -1}}}, "/agent/nodeGuard/gracePeriod",
                                  "minimum"),
}


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_schema_rejects(chart: helm_python.Chart, name: str) -> None:
    values, where, what = REJECTED[name]
    with pytest.raises(helm_python.HelmValuesError) as caught:
        chart.render(values, name="memwatch", namespace="memwatch")
    message = str(caught.value)
    assert "values don't meet the specifications of the schema" in message
    assert where in message and what in message, message


@pytest.mark.parametrize(
    "values",
    [
        {"interval": "250ms", "maxSampleAge": "2m", "agent": {"samplePeriod": "0.5s"}},
        {"defaultPolicy": {"for": "0s", "gracePeriod": 0, "action": "dry-run"}},
        {"defaultPolicy": {"gracePeriod": None}},
        {"defaultPolicy": {"restartBudget": "off", "minPodAge": "2m"}},
        {"defaultPolicy": {"restartBudget": "10/1h30m", "minPodAge": "500ms"}},
        {"defaultPolicy": {"restartBudget": "0/30s"}},
        {"serviceMonitor": {"enabled": True, "interval": "1m30s", "scrapeTimeout": "10s"}},
        {"namespaces": ["team-a"], "excludeNamespaces": ["b"], "protection": {"allowNamespaces": ["kube-system"]}},
        {"global": {"imageRegistry": "example"}},
        {"kubelet": {"caBundle": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                     "preferredAddressTypes": ["Hostname"]}},
        {"kubelet": {"insecureTLS": True}, "agent": {"enabled": True, "evict": False}},
        {"agent": {"enabled": True, "admissionPolicy": {"enabled": True}}},
        {"agent": {"enabled": True, "nodeGuard": {"mode": "on", "soft": "1.5Gi", "hard": "2.5%", "psiFull": "none",
                                                  "gracePeriod": 0, "wait": "45s", "maxPerMinute": 0}}},
    ],
)
def test_schema_accepts(chart: helm_python.Chart, values: dict[str, Any]) -> None:
    chart.validate_schema(chart.merge_values(values))
    chart.render(values, name="memwatch", namespace="memwatch")


def test_defaults_and_ci_values_are_valid(chart: helm_python.Chart) -> None:
    chart.validate_schema(chart.values)
    for path in sorted((CHART_DIR / "ci").glob("*-values.yaml")):
        chart.validate_schema(chart.merge_values(yaml.safe_load(path.read_text())))


def test_schema_covers_every_value(chart: helm_python.Chart) -> None:
    """Each key of values.yaml has a schema entry (unknown keys are rejected, so a
    value missing from the schema would be unusable)."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False

    def walk(values: dict[str, Any], node: dict[str, Any], path: str) -> None:
        for key, value in values.items():
            assert key in node.get("properties", {}), f"{path}{key} is not in values.schema.json"
            child = node["properties"][key]
            if isinstance(value, dict) and "properties" in child:
                walk(value, child, f"{path}{key}.")

    walk(chart.values, schema, "")
