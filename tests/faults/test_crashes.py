"""memwatch itself dies at the worst moment: the controller SIGKILLed after the API server carried
out its eviction and before the controller heard so (so before its Event), then started again.

The controller is a real ``memwatch run`` process under its own ServiceAccount, talking to the API
server through :class:`ApiTap`, which SIGKILLs it the instant the eviction's answer arrives, before
passing it on. The restarted controller must not evict the pod again (it is already terminating or
gone), nor touch the pod under its limit.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from integration.clusterkit import wait_for
from integration.conftest import Cluster

from .faultkit import (
    ApiTap,
    FaultReport,
    MemwatchProcess,
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
        first.start()
        try:
            uids = create_running(admin, fault_ns, [breaching("over"), healthy("under")])
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
