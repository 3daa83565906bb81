"""Pods change under memwatch's feet: a pod recreated under the same name right after its eviction
(a StatefulSet's ``db-0``), and a namespace deleted while its pod's eviction is blocked by a
PodDisruptionBudget.
"""

from __future__ import annotations

import time

import pytest

from integration.clusterkit import captured_logs, running_controller, wait_for, wait_sweeps
from integration.conftest import Cluster

from .faultkit import (
    FaultReport,
    Tally,
    breaching,
    create_running,
    healthy,
    no_write_for,
    not_the_cluster,
    pod_writes,
    tally,
    wait_gone,
    wait_write,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


def test_pod_recreated_under_the_same_name(fault_cluster: Cluster, fault_ns: str) -> None:
    """Three times: ``db-0`` in breach is evicted, and a new ``db-0`` takes its name the moment it is
    free. The first two new ones breach too (each must be evicted once: no history by name); the
    last is healthy, under the same limit, and must never be touched."""
    admin, audit = fault_cluster.admin, fault_cluster.audit_log
    assert audit is not None
    due: dict[str, str] = {}
    uids = create_running(admin, fault_ns, [breaching("db-0"), healthy("under")])
    spared = {uids["under"]: "under"}
    gaps: list[float] = []
    with running_controller(fault_cluster.kubeconfig, [fault_ns], tag="fault-recreate") as c:
        uid = uids["db-0"]
        for round_ in range(3):
            due[uid] = f"db-0 #{round_ + 1}"
            wait_write(audit, fault_ns, uid, 90)
            wait_gone(admin, fault_ns, "db-0", uid)
            gone = time.time()
            last = round_ == 2
            manifest = healthy("db-0", mib=40, limit="80Mi") if last else breaching("db-0")
            uid = create_running(admin, fault_ns, [manifest])["db-0"]
            gaps.append(time.time() - gone)
        spared[uid] = "db-0 #4 (healthy)"
        late = no_write_for(audit, fault_ns, [uid], 15)
        wait_sweeps(c, 3, 60)
    writes = pod_writes(audit, fault_ns, not_the_cluster)
    result = tally("pod recreated under the same name after its eviction (x3)", writes, due=due, spared=spared)
    result.wrong += [f"{w} (the healthy replacement)" for w in late if w not in writes]
    result.note = "replacements running " + ", ".join(f"{g:.1f}s" for g in gaps) + " after the name was free"
    FaultReport.add(result).check()


def test_namespace_deleted_while_eviction_is_blocked(fault_cluster: Cluster, fault_ns: str) -> None:
    admin, audit = fault_cluster.admin, fault_cluster.audit_log
    assert audit is not None
    manifest = breaching("guarded")
    manifest["metadata"]["labels"] = {"app": "guarded"}
    uids = create_running(admin, fault_ns, [manifest, healthy("under")])
    admin.create_pdb(fault_ns, "guard", {"app": "guarded"}, min_available=1)
    admin.wait_pdb_blocking(fault_ns, "guard", healthy=1)
    with captured_logs() as logs, running_controller(fault_cluster.kubeconfig, [fault_ns],
                                                     "--escalation-timeout", "10m", tag="fault-nsdelete") as c:
        def blocked() -> bool:
            return any(w.code == 429 for w in pod_writes(audit, fault_ns, not_the_cluster))
        wait_for("memwatch's eviction to be refused by the PodDisruptionBudget", blocked, 90)
        mark = len(logs.lines())
        deleted = time.time()
        admin.delete_namespace(fault_ns)

        def namespace_gone() -> bool:
            return admin.get(f"/api/v1/namespaces/{fault_ns}") is None
        wait_for(f"namespace {fault_ns} to be gone", namespace_gone, 180)
        gone_after = time.time() - deleted
        wait_sweeps(c, 5, 60)
        health = c.health()
        after = logs.lines()[mark:]
    about = [line for line in after if fault_ns in line]
    tracebacks = [line for line in after if "Traceback" in line]
    writes = pod_writes(audit, fault_ns, not_the_cluster)
    result = Tally("namespace deleted while its pod's eviction is blocked by a PDB")
    result.wrong = [f"{w} (accepted: memwatch forced past the PDB)" for w in writes if w.accepted]
    result.wrong += [f"{w} (the pod under its limit)" for w in writes if w.uid == uids["under"]]
    result.note = (f"{sum(w.code == 429 for w in writes)} refused evictions; namespace gone in {gone_after:.0f}s; "
                   f"{len(about)} log lines about it afterwards; controller healthy ({health['sweeps']} sweeps)")
    FaultReport.add(result).check()
    assert not tracebacks, tracebacks
    assert len(about) <= 5, "\n".join(about)
