"""The node agent as the chart installs it by default (`agent.enabled: true`, nothing else): no
hostPID, no CAP_KILL, a read-only cgroup mount. A pod annotated ``memwatch.io/action: restart``
goes over its limit: the agent must not pretend to kill it. It says once, in its log and in one
`MemwatchKillUnavailable` Event, that it cannot kill in place, and evicts the pod instead; it never
logs ``action=killed``, and the container is never restarted in place.

Real cluster, real Helm engine, the agent under the chart's own ServiceAccount. Skips loudly
without the local cluster, like `test_install.py`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from .test_install import HOG_IMAGE, installed, wait_for

pytestmark = pytest.mark.cluster

RELEASE = "mwagent"
NAMESPACE = "memwatch-agent-test"
WORKLOAD_NAMESPACE = "memwatch-agent-workload"
TEST_LABEL = ("memwatch-agent-test", "true")
# The chart's agent as it comes: only enabled. No controller, so the agent alone acts on the pod
# (with a controller, `restart` pods on a node with a Ready agent are the agent's anyway).
VALUES: dict[str, Any] = {
    "image": {"tag": "dev", "pullPolicy": "Never"},
    "labelSelector": "=".join(TEST_LABEL),
    "replicaCount": 0,
    "agent": {"enabled": True},
}


@pytest.fixture(scope="module")
def core() -> Iterator[Any]:
    with installed(RELEASE, VALUES, NAMESPACE, WORKLOAD_NAMESPACE) as (_api, core, _helm):
        yield core


def _agent_pod(core: Any) -> Any:
    pods = core.list_namespaced_pod(
        NAMESPACE, label_selector=f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=agent").items
    assert len(pods) == 1, [p.metadata.name for p in pods]
    return pods[0]


def test_default_agent_cannot_kill_so_it_says_so_once_and_evicts(core: Any) -> None:
    agent = _agent_pod(core)
    spec = agent.spec
    assert not spec.host_pid, "the default agent must not share the host's PID namespace"
    name = f"restart-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_pod(WORKLOAD_NAMESPACE, {
        "metadata": {"name": name, "labels": dict([TEST_LABEL]),
                     "annotations": {"memwatch.io/limit": "100Mi", "memwatch.io/action": "restart"}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "hog", "image": HOG_IMAGE, "imagePullPolicy": "Never",
                # Grows to 150Mi and holds: over memwatch's limit, under the kernel's.
                "command": ["/hog", "--rate", "50", "--max", "150", "--hold"],
                "resources": {"requests": {"memory": "64Mi"}, "limits": {"memory": "256Mi"}},
            }],
        },
    })

    def events(reason: str) -> list[Any]:
        return list(core.list_namespaced_event(
            WORKLOAD_NAMESPACE, field_selector=f"involvedObject.name={name},reason={reason}").items)

    wait_for(f"a MemwatchEvicted Event on {name}", lambda: events("MemwatchEvicted"), timeout=120, every=1)

    def gone() -> bool:
        try:
            pod = core.read_namespaced_pod(name, WORKLOAD_NAMESPACE)
        except ApiException as error:
            return error.status == 404
        return pod.status.phase == "Failed" and pod.status.reason == "Evicted"

    wait_for(f"{name} to be evicted", gone, timeout=60)
    unavailable = events("MemwatchKillUnavailable")
    assert len(unavailable) == 1 and (unavailable[0].count or 1) == 1, unavailable
    assert unavailable[0].type == "Warning"
    assert not events("MemwatchKilled")
    logs = core.read_namespaced_pod_log(agent.metadata.name, NAMESPACE)
    assert "action=killed" not in logs, logs[-3000:]
    mine = [line for line in logs.splitlines() if f"pod={WORKLOAD_NAMESPACE}/{name}" in line]
    assert sum("action=kill-unavailable" in line for line in mine) == 1, mine
    assert sum("action=evicted" in line for line in mine) == 1, mine
    # What the agent found it can do, said once at start-up.
    assert sum("kill rung:" in line for line in logs.splitlines()) == 1, logs[:3000]
