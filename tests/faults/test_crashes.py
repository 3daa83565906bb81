"""memwatch itself dies at the worst moment: the controller SIGKILLed after the API server carried
out its eviction and before the controller heard so (so before its Event), then started again; the
node agent SIGKILLed after its kill and before its Event, then started again.

The controller is a real ``memwatch run`` process under its own ServiceAccount, talking to the API
server through :class:`ApiTap`, which SIGKILLs it the instant the eviction's answer arrives, before
passing it on. The restarted controller must not evict the pod again (it is already terminating or
gone), nor touch the pod under its limit.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from integration.clusterkit import wait_for
from integration.conftest import Cluster

from .faultkit import (
    ApiTap,
    FaultReport,
    MemwatchProcess,
    Tally,
    acted_events,
    breaching,
    create_running,
    healthy,
    not_the_cluster,
    pod_writes,
    service_account_kubeconfig,
    tally,
    wait_gone,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


def test_controller_killed_between_eviction_and_event(fault_cluster: Cluster, fault_ns: str, tmp_path: Path) -> None:
    admin, audit = fault_cluster.admin, fault_cluster.audit_log
    assert audit is not None
    server = admin.kube.api.configuration.host
    parts = urlsplit(server)
    upstream = (parts.hostname or "", parts.port or 443)
    argv = ["--namespace", fault_ns, "--source", "kubelet", "--interval", "1s", "--liveness", "",
            "--metrics-port", "0"]
    env = {"POD_NAME": "memwatch-crash", "POD_NAMESPACE": fault_ns}
    with ApiTap(upstream) as tap:
        user = service_account_kubeconfig(admin, fault_ns, "memwatch-crash", f"https://127.0.0.1:{tap.port}",
                                          tmp_path / "tapped.kc")
        direct = tmp_path / "direct.kc"
        direct.write_text((tmp_path / "tapped.kc").read_text().replace(f"https://127.0.0.1:{tap.port}", server))
        first = MemwatchProcess(["run", "--kubeconfig", str(tmp_path / "tapped.kc"), *argv],
                                tmp_path / "first.log", env)
        tap.trigger = f"POST /api/v1/namespaces/{fault_ns}/pods/over/eviction".encode()
        tap.on_answer = lambda: first.signal(signal.SIGKILL)
        # The pods run before the controller starts: started first, it may evict ``over`` (no
        # ``for``) before the kubelet reports it Ready, and the wait below would never see it run.
        uids = create_running(admin, fault_ns, [breaching("over"), healthy("under")])
        first.start()
        try:
            wait_for("the eviction to be answered, and the controller killed", tap.fired.is_set, 90)
            killed = time.time()
            assert first.proc is not None
            first.proc.wait(10)
        finally:
            first.kill()
    second = MemwatchProcess(["run", "--kubeconfig", str(direct), *argv], tmp_path / "second.log", env).start()
    try:
        second.wait_log("ready: first sweep", 90)
        restarted = time.time()
        time.sleep(15)  # a dozen sweeps: its chance to evict again
        wait_gone(admin, fault_ns, "over", uids["over"])
    finally:
        second.stop()
    writes = pod_writes(audit, fault_ns, not_the_cluster)
    result = tally("controller SIGKILLed between its eviction and its Event, restarted", writes,
                   due={uids["over"]: "over"}, spared={uids["under"]: "under"})
    events = acted_events(admin, fault_ns, uids["over"])
    result.note = (f"killed with first.proc rc={first.proc.returncode}; restarted controller swept "
                   f"{time.time() - restarted:.0f}s; {events} MemwatchEvicted Event(s) (the killed one never posted)")
    FaultReport.add(result).check()
    assert all(w.user == user for w in writes), writes
    del killed


def _restarts(admin: Any, namespace: str, name: str) -> tuple[int, list[int]]:
    """(restartCount, exit codes of the last terminated instance) of a pod's one container."""
    pod = admin.pod(namespace, name)
    status = ((pod or {}).get("status") or {}).get("containerStatuses") or [{}]
    last = (status[0].get("lastState") or {}).get("terminated") or {}
    return int(status[0].get("restartCount") or 0), [last["exitCode"]] if "exitCode" in last else []


def test_agent_killed_mid_kill(fault_cluster: Cluster, fault_ns: str, tmp_path: Path) -> None:
    """The node agent (a real ``memwatch agent`` process on the node, with the kill rung) SIGKILLs a
    container at its watch limit (``memwatch.io/action: restart``) and is itself SIGKILLed before
    its Event leaves (:class:`ApiTap` kills it the moment it sends its first Event). The pod's limit
    is then raised above what the container uses, and the agent started again: the kernel's and
    the kubelet's count says the container was killed exactly once (restartCount 1, exit 137), and
    the new instance, under its new limit, is left alone; the pod under its limit is never touched.
    """
    admin, audit = fault_cluster.admin, fault_cluster.audit_log
    assert audit is not None
    server = admin.kube.api.configuration.host
    parts = urlsplit(server)
    argv = ["agent", "--namespace", fault_ns, "--node-name", fault_cluster.node, "--kill",
            "--liveness", "", "--metrics-port", "0"]
    env = {"POD_NAME": "memwatch-agent-crash", "POD_NAMESPACE": fault_ns, "NODE_NAME": fault_cluster.node}
    uids = create_running(admin, fault_ns, [healthy("under")])
    with ApiTap((parts.hostname or "", parts.port or 443)) as tap:
        service_account_kubeconfig(admin, fault_ns, "memwatch-agent", f"https://127.0.0.1:{tap.port}",
                                   tmp_path / "tapped.kc")
        direct = tmp_path / "direct.kc"
        direct.write_text((tmp_path / "tapped.kc").read_text().replace(f"https://127.0.0.1:{tap.port}", server))
        first = MemwatchProcess([*argv[:1], "--kubeconfig", str(tmp_path / "tapped.kc"), *argv[1:]],
                                tmp_path / "first.log", env)
        tap.trigger = f"POST /api/v1/namespaces/{fault_ns}/events".encode()
        tap.on_request = lambda: first.signal(signal.SIGKILL)
        first.start()
        try:
            first.wait_log("kill rung:", 60)
            uids |= create_running(admin, fault_ns, [breaching("over", **{"memwatch.io/action": "restart"})])
            wait_for("the agent to kill the container, and be killed before its Event", tap.fired.is_set, 90)
            assert first.proc is not None
            first.proc.wait(10)
        finally:
            first.kill()
    admin.annotate(fault_ns, "over", {"memwatch.io/limit": "300Mi"})
    wait_for("the killed container to be restarted", lambda: _restarts(admin, fault_ns, "over")[0] >= 1, 60)
    second = MemwatchProcess([*argv[:1], "--kubeconfig", str(direct), *argv[1:]], tmp_path / "second.log",
                             env).start()
    try:
        second.wait_log("kill rung:", 60)
        time.sleep(20)  # the restarted agent's chance to kill again
    finally:
        second.stop()
    restarts, codes = _restarts(admin, fault_ns, "over")
    under, _ = _restarts(admin, fault_ns, "under")
    result = Tally("agent SIGKILLed mid-kill (after the SIGKILL, before its Event), restarted")
    if restarts != 1 or codes != [137]:
        result.double.append(f"over: restartCount {restarts}, last exit codes {codes} (expected 1 and [137])")
    if under:
        result.wrong.append(f"under: restartCount {under}")
    result.wrong += [str(w) for w in pod_writes(audit, fault_ns, not_the_cluster)]
    killed = "action=killed" in first.log()
    result.note = (f"first agent logged the kill: {killed}; the new instance ran 20 s under the restarted agent "
                   f"untouched: {restarts == 1}")
    FaultReport.add(result).check()
