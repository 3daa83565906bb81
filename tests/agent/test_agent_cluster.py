"""The agent on the real local cluster: a pod growing 100 MiB/s toward a 200Mi hard limit, annotated
``memwatch.io/limit: 150Mi``, is evicted before the kubelet ever reports ``OOMKilled`` for it.

The agent runs as a host process for node ``node1`` (``memwatch agent --node-name node1 --kubeconfig …
--cgroup-root /sys/fs/cgroup --kill``), scoped to this test's own namespace so it touches nothing else.
Without memwatch the kernel kills this pod about 2 s after it starts.

Why ``--kill``: the eviction is accepted within tens of milliseconds of the crossing, but the hog runs
as PID 1 of its container, and the kernel does not apply SIGTERM's default action to PID 1, so
the kubelet's graceful stop waits out the grace period while the hog reaches its hard limit 0.5 s
later (measured here: evicted 44 ms after crossing, then OOMKilled). The kill rung ends the evicted
pod's container itself just before the hard limit; the kubelet does not restart a terminating pod.

Skips loudly when the local cluster is not up (``hack/local-cluster.sh status``) or the hog image
is not loaded (``hack/local-cluster.sh images``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.clusterkit import LOCAL_KUBECONFIG

REPO = Path(__file__).resolve().parents[2]
KUBECONFIG = os.environ.get("MEMWATCH_LOCAL_KUBECONFIG", LOCAL_KUBECONFIG)
NODE = "node1"
HOG_IMAGE = "docker.io/library/memwatch-hog:dev"
MEMWATCH = Path(sys.executable).parent / "memwatch"


def _cluster_down() -> str | None:
    if not Path(KUBECONFIG).exists():
        return f"no kubeconfig at {KUBECONFIG} (bring the cluster up with hack/local-cluster.sh up)"
    try:
        status = subprocess.run(["bash", str(REPO / "hack" / "local-cluster.sh"), "status"],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"hack/local-cluster.sh status failed: {exc}"
    if status.returncode != 0:
        return f"hack/local-cluster.sh status exited {status.returncode}: {status.stdout[-300:]}{status.stderr[-300:]}"
    if os.geteuid() != 0:
        return "the agent reads the node's cgroups as a host process: needs root"
    return None


WHY = _cluster_down()
pytestmark = [pytest.mark.cluster,
              pytest.mark.skipif(WHY is not None, reason=f"SKIPPED LOUDLY: local cluster not usable: {WHY}")]


@pytest.fixture
def core() -> Any:
    from kubernetes import client

    from memwatch.kube import load_client

    return client.CoreV1Api(load_client(KUBECONFIG))


@pytest.fixture
def namespace(core: Any) -> Iterator[str]:
    name = f"mw-agent-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name, grace_period_seconds=0)


@pytest.fixture
def agent(namespace: str, tmp_path: Path) -> Iterator[Path]:
    """``memwatch agent`` as a host process for node1, watching only this test's namespace."""
    log = tmp_path / "agent.log"
    env = {**os.environ, "MEMWATCH_PLAIN_LOGS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(MEMWATCH), "agent", "--node-name", NODE, "--kubeconfig", KUBECONFIG,
                                 "--cgroup-root", "/sys/fs/cgroup", "--namespace", namespace, "--kill",
                                 "--metrics-port", "0", "--liveness", ""],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while "listed pods" not in log.read_text(errors="replace"):
            assert proc.poll() is None, f"the agent exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the agent never listed pods:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)
        yield log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _hog_pod(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "annotations": {"memwatch.io/limit": "150Mi"}},
        "spec": {
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "hog", "image": HOG_IMAGE, "imagePullPolicy": "Never",
                "command": ["/hog", "--rate", "100", "--step", "1024", "--max", "400", "--hold"],
                "resources": {"limits": {"memory": "200Mi"}, "requests": {"memory": "200Mi"}},
            }],
        },
    }


class StatusRecorder:
    """Every status the API server reports for one pod, from a WATCH, until the pod is gone."""

    def __init__(self, core: Any, namespace: str, name: str) -> None:
        self.core, self.namespace, self.name = core, namespace, name
        self.terminations: list[dict[str, Any]] = []
        self.waiting: list[str] = []
        self.deleted = threading.Event()
        self.uid: str | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from kubernetes import watch

        w = watch.Watch()  # type: ignore[no-untyped-call]
        for ev in w.stream(self.core.list_namespaced_pod,  # type: ignore[no-untyped-call]
                           self.namespace,
                           field_selector=f"metadata.name={self.name}", timeout_seconds=120):
            pod = ev["object"]
            self.uid = pod.metadata.uid
            for cs in (pod.status.container_statuses or []):
                for state in (cs.state, cs.last_state):
                    if state is not None and state.terminated is not None:
                        t = state.terminated
                        entry = {"reason": t.reason, "exit_code": t.exit_code, "signal": t.signal}
                        if entry not in self.terminations:
                            self.terminations.append(entry)
                    if state is not None and state.waiting is not None and state.waiting.reason:
                        self.waiting.append(state.waiting.reason)
            if ev["type"] == "DELETED":
                self.deleted.set()
                w.stop()  # type: ignore[no-untyped-call]
                return


def test_agent_evicts_before_the_kubelet_reports_oomkilled(core: Any, namespace: str, agent: Path) -> None:
    name = "hog-100"
    recorder = StatusRecorder(core, namespace, name)
    time.sleep(0.5)  # the watch is open before the pod exists (it only has to see every status)
    core.create_namespaced_pod(namespace, _hog_pod(name))
    deadline = time.monotonic() + 90
    while not recorder.deleted.is_set() and time.monotonic() < deadline:
        if any(r in ("ErrImageNeverPull", "ErrImagePull", "ImagePullBackOff") for r in recorder.waiting):
            pytest.skip(f"SKIPPED LOUDLY: {HOG_IMAGE} is not loaded (hack/local-cluster.sh images)")
        if any(t["reason"] == "OOMKilled" for t in recorder.terminations):
            break
        time.sleep(0.1)
    log = agent.read_text(errors="replace")
    oom = [t for t in recorder.terminations if t["reason"] == "OOMKilled"]
    assert not oom, f"the kubelet reported OOMKilled before memwatch acted: {recorder.terminations}\n{log[-3000:]}"
    assert recorder.deleted.is_set(), f"the pod was never evicted: {recorder.terminations}\n{log[-3000:]}"
    lines = [ln for ln in log.splitlines() if "action=evicted" in ln and f"pod={namespace}/{name}" in ln]
    assert len(lines) == 1, log[-3000:]
    kills = [ln for ln in log.splitlines() if "action=killed" in ln and f"pod={namespace}/{name}" in ln]
    for field in ("source=cgroup", "crossed_at=", "detected_at=", "acted_at=", "limit=150Mi"):
        assert field in lines[0], lines[0]
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    reasons = {e.reason for e in events}
    assert "MemwatchEvicted" in reasons, reasons
    assert "OOMKilling" not in reasons and "OOMKilled" not in reasons, reasons
    # The kernel's own record: no memcg OOM kill of this pod's cgroup.
    dmesg = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    if dmesg.strip() and recorder.uid:
        assert not [ln for ln in dmesg.splitlines() if recorder.uid in ln and "oom" in ln.lower()]
    print(f"\nagent: {lines[0]}\n" + "".join(f"agent: {k}\n" for k in kills)
          + f"terminations seen: {recorder.terminations}")


def test_a_leak_from_the_first_instruction_is_killed_on_every_restart(core: Any, namespace: str,
                                                                      agent: Path) -> None:
    """#15: the hog grows 1000 MiB/s from its first instruction (no delay), ``memwatch.io/action:
    restart``, watch limit 200Mi under a 300Mi hard limit. The agent must hold the new container's
    cgroup before the API server reports its ID, on the first start and on every restart of the
    crash loop: the kubelet reports exit 137 from memwatch's SIGKILL each time, never OOMKilled."""
    name = "leak-at-start"
    recorder = StatusRecorder(core, namespace, name)
    time.sleep(0.5)
    pod = _hog_pod(name)
    pod["metadata"]["annotations"] = {"memwatch.io/limit": "200Mi", "memwatch.io/action": "restart"}
    pod["spec"]["containers"][0]["command"] = ["/hog", "--rate", "1000", "--step", "1024", "--max", "600", "--hold"]
    pod["spec"]["containers"][0]["resources"] = {"limits": {"memory": "300Mi"}, "requests": {"memory": "300Mi"}}
    core.create_namespaced_pod(namespace, pod)
    deadline = time.monotonic() + 120
    restarts = 0
    while time.monotonic() < deadline:
        if any(r in ("ErrImageNeverPull", "ErrImagePull", "ImagePullBackOff") for r in recorder.waiting):
            pytest.skip(f"SKIPPED LOUDLY: {HOG_IMAGE} is not loaded (hack/local-cluster.sh images)")
        if any(t["reason"] == "OOMKilled" for t in recorder.terminations):
            break
        statuses = core.read_namespaced_pod(name, namespace).status.container_statuses or []
        restarts = max((cs.restart_count for cs in statuses), default=0)
        if restarts >= 2:
            break
        time.sleep(0.2)
    log = agent.read_text(errors="replace")
    kills = [ln for ln in log.splitlines() if "action=killed" in ln and f"pod={namespace}/{name}" in ln]
    assert not [t for t in recorder.terminations if t["reason"] == "OOMKilled"], \
        f"the kernel won a race: {recorder.terminations}\n{log[-3000:]}"
    assert restarts >= 2, f"restarts: {restarts}; terminations {recorder.terminations}\n{log[-3000:]}"
    assert len(kills) >= 2, f"one kill per container instance expected:\n{log[-3000:]}"
    assert all(t["exit_code"] == 137 for t in recorder.terminations), recorder.terminations
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    reasons = {e.reason for e in events}
    assert "MemwatchKilled" in reasons and "OOMKilling" not in reasons, reasons
    print(f"\nagent: {len(kills)} kills, restarts {restarts}, terminations {recorder.terminations}\n"
          + "".join(f"agent: {k}\n" for k in kills[:3]))
