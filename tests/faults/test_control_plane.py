"""The control plane fails in the middle of a breach: kube-apiserver frozen (SIGSTOP) for 20 s,
kube-apiserver killed (SIGKILL) and restarted, etcd restarted.

Each scenario: a pod over its watch limit (with ``memwatch.io/for`` so the fault lands while the
breach is being timed) and a pod under its limit; an in-process controller under its own user name.
The fault starts once the controller has seen the breach begin. Judged from the audit log: the pod
in breach is evicted exactly once, the other never touched, and the time from the end of the fault
to the eviction is the time to recover.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from integration.clusterkit import captured_logs, running_controller, wait_for, wait_sweeps
from integration.conftest import Cluster
from memwatch.lifecycle import Phase

from .faultkit import (
    Components,
    FaultReport,
    acted_events,
    api_answers,
    breaching,
    create_running,
    healthy,
    not_the_cluster,
    pod_writes,
    tally,
    wait_gone,
    wait_write,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


def freeze_apiserver(components: Components) -> None:
    with components.frozen("kube-apiserver"):
        time.sleep(20)


def kill_and_restart_apiserver(components: Components) -> None:
    components.restart("kube-apiserver", kill=True)


def restart_etcd(components: Components) -> None:
    components.restart("etcd")


FAULTS: dict[str, tuple[Callable[[Components], None], str]] = {
    "apiserver-frozen": (freeze_apiserver, "kube-apiserver SIGSTOPped for 20 s mid-breach"),
    "apiserver-killed": (kill_and_restart_apiserver, "kube-apiserver SIGKILLed and restarted mid-breach"),
    "etcd-restarted": (restart_etcd, "etcd restarted mid-breach"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_control_plane_fault_mid_breach(fault: str, fault_cluster: Cluster, components: Components,
                                        fault_ns: str) -> None:
    inject, title = FAULTS[fault]
    admin, audit = fault_cluster.admin, fault_cluster.audit_log
    assert audit is not None
    uids = create_running(admin, fault_ns, [breaching("over", **{"memwatch.io/for": "8s"}), healthy("under")])
    tag = f"fault-{fault}"
    with captured_logs() as logs, running_controller(fault_cluster.kubeconfig, [fault_ns], tag=tag) as c:
        def breach_begun() -> bool:
            life = c.sweeper.lifecycle.peek(uids["over"])
            return life is not None and life.phase is Phase.BREACHING
        wait_for("the controller to see the breach begin", breach_begun, 90)
        started = time.time()
        inject(components)
        ended = time.time()
        api_answers(admin)
        evicted = wait_write(audit, fault_ns, uids["over"], 120)
        wait_gone(admin, fault_ns, "over", uids["over"])
        wait_sweeps(c, 3, 90)  # time to make a second, wrong action if it were going to
        tracebacks = [line for line in logs.lines() if "Traceback" in line]
    writes = pod_writes(audit, fault_ns, not_the_cluster)
    result = tally(title, writes, due={uids["over"]: "over"}, spared={uids["under"]: "under"},
                   fault_ended=ended)
    events = acted_events(admin, fault_ns, uids["over"])
    result.note = (f"fault lasted {ended - started:.1f}s; evicted {evicted.at - started:.1f}s after it began; "
                   f"{events} MemwatchEvicted Event(s)")
    FaultReport.add(result).check()
    assert events == 1, f"expected one MemwatchEvicted Event on the pod, found {events}"
    assert not tracebacks, tracebacks
