"""The API server's answer is not what a client expects: kopf's API discovery at start-up (the
list of API groups) gets ``400 Bad Request`` with a body that is not UTF-8, as Go's HTTP server answers a request that
reached it garbled (a broken proxy on the way, or this suite's own tap once, which is how this
fault was found).

kopf (memwatch's process loop and policy validation) cannot read such an answer and ends its run.
memwatch must not end with it: the controller is a real ``memwatch run`` process talking to the
API server through :class:`ApiTap`, which answers that one discovery request itself. Judged from
the audit log: the pod over its limit (whose ``for`` makes the eviction due only after the fault)
is evicted exactly once, the pod under its limit is never touched, kopf's discovery is asked again
and reaches the API server, and the process is still running, having said what happened in one
log line, without a traceback.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from integration.clusterkit import audit_code, audit_entries, audit_user, wait_for
from integration.conftest import Cluster

from .faultkit import (
    ApiTap,
    FaultReport,
    MemwatchProcess,
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

DISCOVERY = "/apis"  # kopf reads it first, CRDs installed or not; memwatch's own client never does
#: What Go's net/http writes for a request line it cannot parse, with the garbage in the body.
GARBLED = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
           b"Content-Length: 41\r\n\r\n400 Bad Request: garbled \x89\xfe\x00 request line")


def test_garbled_answer_to_kopf_discovery(fault_cluster: Cluster, fault_ns: str, tmp_path: Path) -> None:
    admin, audit = fault_cluster.admin, fault_cluster.audit_log
    assert audit is not None
    server = urlsplit(admin.kube.api.configuration.host)
    argv = ["run", "--namespace", fault_ns, "--source", "kubelet", "--interval", "1s", "--liveness", "",
            "--metrics-port", "0"]
    uids = create_running(admin, fault_ns, [breaching("over", **{"memwatch.io/for": "15s"}), healthy("under")])
    with ApiTap((server.hostname or "", server.port or 443)) as tap:
        user = service_account_kubeconfig(admin, fault_ns, "memwatch-garbled", f"https://127.0.0.1:{tap.port}",
                                          tmp_path / "tapped.kc")
        tap.trigger = f"GET {DISCOVERY} ".encode()
        tap.reply = GARBLED
        proc = MemwatchProcess([*argv, "--kubeconfig", str(tmp_path / "tapped.kc")], tmp_path / "memwatch.log",
                               {"POD_NAME": "memwatch-garbled", "POD_NAMESPACE": fault_ns}).start()
        try:
            wait_for("kopf's discovery to get the garbled answer", tap.fired.is_set, 60)
            fault_ended = time.time()

            def rediscovered() -> bool:
                return any(audit_user(ev) == user and audit_code(ev) == 200
                           for ev in audit_entries(audit, f'"requestURI":"{DISCOVERY}"'))

            wait_for("kopf to ask for the discovery again and be answered", rediscovered, 90)
            wait_gone(admin, fault_ns, "over", uids["over"])
            assert proc.proc is not None
            alive = proc.proc.poll() is None
        finally:
            proc.stop()
    log = proc.log()
    writes = pod_writes(audit, fault_ns, not_the_cluster)
    result = tally("kopf's API discovery answered 400, body not UTF-8", writes, due={uids["over"]: "over"},
                   spared={uids["under"]: "under"}, fault_ended=fault_ended)
    said = [line for line in log.splitlines() if "kopf stopped on an error" in line and "restarting kopf" in line]
    result.note = (f"process alive throughout: {alive}; recovery includes the pod's for: 15s; "
                   f"exit on SIGTERM rc={proc.proc.returncode}")
    FaultReport.add(result).check()
    assert alive, f"memwatch exited after the garbled answer:\n{log[-3000:]}"
    assert proc.proc.returncode == 0, f"memwatch did not stop cleanly on SIGTERM:\n{log[-3000:]}"
    assert said, f"no log line says kopf's run failed and is restarted:\n{log[-3000:]}"
    assert "Traceback" not in log, f"a traceback in memwatch's log:\n{log[-3000:]}"
    assert all(w.user == user for w in writes), writes
