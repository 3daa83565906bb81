"""#11's e2e scenario: the node guard keeps kubepods out of the kernel's OOM killer, on the real cluster.

Three pods without memory limits on the node: a priority-0 BestEffort hog growing 100 MiB/s, a
Burstable service of a higher PriorityClass holding steady memory, and a pod annotated
``memwatch.io/node-pressure: never``. kubepods is given a hard limit 1 GiB above what it holds now,
as the kubelet does with node allocatable enforced on pods (here written straight to the kubepods
cgroup for the length of the test and put back after, so the other suites keep the whole node).
memwatch's node guard (chart ``agent.nodeGuard.mode: "on"``, ``agent.kill: true``, installed by
the suite) must act on the hog and only the hog, and nothing may be OOM-killed: judged by the
kernel's ``oom_kill`` counter of kubepods (v1 counts a kill in the victim's own cgroup, so the
pods' cgroups are summed too) and by the kubelet's container statuses.

Runs on the local cluster only (it writes the node's kubepods cgroup as root); skips loudly elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memwatch.nodeguard import REASON_NODE_PRESSURE, RULES

from .support import PART_OF, Cluster, Memwatch, PodRecorder, hog_container, sleeper_pod, wait_for

pytestmark = pytest.mark.e2e

KUBEPODS = Path("/sys/fs/cgroup/memory/kubepods")
ROOM = 1 << 30  # kubepods' limit: what it holds now plus this
SERVICE_CLASS = "memwatch-e2e-service"


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root: it gives kubepods a hard limit for its length"
    if not (KUBEPODS / "memory.limit_in_bytes").exists():
        return f"no cgroup v1 kubepods at {KUBEPODS} (the local cluster's layout; kind runs it inside a container)"
    return None


def _read(path: Path) -> int:
    return int(path.read_text().split()[0])


def _oom_kills() -> int:
    """kubepods' oom_kill counter plus every descendant's (v1 counts a kill in the OOM cgroup only)."""
    total = 0
    for top, _, _ in os.walk(KUBEPODS):
        with contextlib.suppress(OSError, ValueError):
            for line in (Path(top) / "memory.oom_control").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    total += int(value)
    return total


@contextlib.contextmanager
def kubepods_limit(room: int) -> Iterator[int]:
    """kubepods' hard limit set to its usage now plus ``room`` for the block; the old one put back."""
    limit_file = KUBEPODS / "memory.limit_in_bytes"
    before = limit_file.read_text().strip()
    limit = _read(KUBEPODS / "memory.usage_in_bytes") + room
    limit_file.write_text(str(limit))
    try:
        yield limit
    finally:
        limit_file.write_text(before)


def _best_effort_hog(ns: str, name: str) -> dict[str, Any]:
    container = hog_container(["--rate", "100", "--max", "3000", "--hold"], "1Mi")
    container["resources"] = {}  # no requests, no limits: BestEffort, and the kernel's limit is kubepods'
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": dict(PART_OF)},
            "spec": {"terminationGracePeriodSeconds": 2, "containers": [container]}}


@pytest.mark.timeout(300, func_only=True)
def test_the_node_guard_acts_on_the_hog_only_and_nothing_is_oom_killed(
        cluster: Cluster, memwatch: Memwatch, ns: str, recorder: PodRecorder, clock: Any) -> None:
    why = _why_not()
    if why:
        pytest.skip(f"SKIPPED LOUDLY: {why}")
    missing = memwatch.agent_ready()
    if missing:
        pytest.fail(f"the node guard runs in the agent, which is not ready: {missing}")
    cluster.create({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                    "metadata": {"name": SERVICE_CLASS}, "value": 1000,
                    "description": "memwatch e2e: the service the node guard must spare"})
    service = sleeper_pod(ns, "service", 150, "1Gi")
    service["spec"]["priorityClassName"] = SERVICE_CLASS
    service["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "10m", "memory": "200Mi"}}  # Burstable
    never = sleeper_pod(ns, "never", 100, "1Gi", {"memwatch.io/node-pressure": "never"})
    never["spec"]["containers"][0]["resources"] = {}
    spared = {}
    for pod in (service, never):
        created = cluster.create(pod)
        spared[created["metadata"]["name"]] = created["metadata"]["uid"]
    for name in spared:
        cluster.wait_running(ns, name)
    time.sleep(2)  # the sleepers have taken their memory
    oom_before = _oom_kills()
    with kubepods_limit(ROOM) as limit:
        clock("limited")
        hog = cluster.create(_best_effort_hog(ns, "hog"))
        uid = hog["metadata"]["uid"]

        def acted() -> dict[str, Any] | None:
            found = [e for e in cluster.memwatch_events(ns, uid) if e["reason"] == REASON_NODE_PRESSURE]
            return found[0] if found else None

        def oom() -> str | None:
            kills = _oom_kills() - oom_before
            return f"the kernel OOM-killed {kills} process(es) in kubepods" if kills else recorder.oom(uid)

        event = wait_for("the node guard to act on the hog", acted, 120, poll=0.2, fail=oom)
        clock("acted")

        def stopped() -> bool:
            hist = recorder.history(uid)
            return hist is not None and (hist.deleted or hist.restarts > 0)

        wait_for("the hog to stop", stopped, 60, fail=oom)
        clock("stopped")
        usage_at_end = _read(KUBEPODS / "memory.usage_in_bytes")
    message = str(event.get("message", ""))
    print(f"\nkubepods limit {limit >> 20} MiB; {event['reason']}: {message}")
    assert any(f"rule {rule}" in message for rule in RULES), message
    assert _oom_kills() == oom_before, "the kernel OOM-killed inside kubepods"
    assert recorder.oom(uid) is None
    for name, spared_uid in spared.items():
        assert not [e for e in cluster.memwatch_events(ns, spared_uid)], f"{name} was acted on"
        assert recorder.oom(spared_uid) is None
        pod = cluster.pod(ns, name)
        assert pod is not None and pod["metadata"]["uid"] == spared_uid, f"{name} is gone"
        restarts = sum(cs.get("restartCount", 0) for cs in pod["status"].get("containerStatuses") or [])
        assert restarts == 0, f"{name} restarted {restarts} time(s)"
    assert usage_at_end < limit, "kubepods never got its memory back"
