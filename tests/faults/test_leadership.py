"""Several replicas: clocks skewed by ±30 s, a rolling upgrade's handover, and a leader frozen
(SIGSTOP) past its lease and resumed.

The skew is injected through memwatch's clock (two in-process replicas, wall clocks 60 s apart);
the frozen leader is a real ``memwatch run`` process under its own ServiceAccount, so the audit log
names every write it makes and SIGSTOP freezes all of it, mid-sweep if it was sweeping.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from integration.clusterkit import controller_kube, identity_for, settings, stop, wait_for
from integration.conftest import Cluster
from memwatch.clock import SkewedClock
from memwatch.controller import Controller

from .faultkit import (
    LIMIT,
    FaultReport,
    MemwatchProcess,
    breaching,
    create,
    create_running,
    healthy,
    not_the_cluster,
    pod_writes,
    service_account_kubeconfig,
    tally,
    wait_gone,
    wait_write,
    writes_by,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

LEASE = "memwatch-faults"


def _holder(cluster: Cluster, namespace: str) -> str | None:
    lease = cluster.admin.get(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE}")
    return ((lease or {}).get("spec") or {}).get("holderIdentity") or None


def _replica(cluster: Cluster, namespace: str, tag: str, skew: float) -> Controller:
    identity = identity_for(tag)
    s = settings(cluster.kubeconfig, [namespace], "--leader-elect", "--leader-election-namespace", namespace,
                 "--leader-election-name", LEASE, identity=identity)
    return Controller(s, kube=controller_kube(cluster.kubeconfig, identity), clock=SkewedClock(skew))


def test_two_replicas_with_skewed_clocks_then_a_rolling_handover(fault_cluster: Cluster, fault_ns: str) -> None:
    admin, audit = fault_cluster.admin, fault_cluster.audit_log
    assert audit is not None
    uids = create_running(admin, fault_ns, [healthy("under")])
    ahead = _replica(fault_cluster, fault_ns, "fault-skew-ahead", +30.0)
    behind = _replica(fault_cluster, fault_ns, "fault-skew-behind", -30.0)
    both = [ahead, behind]
    overlap = 0
    try:
        ahead.start()
        wait_for("the first replica to lead", lambda: _holder(fault_cluster, fault_ns) == identity_for(
            "fault-skew-ahead"), 60)
        behind.start()
        uids["over"] = create(admin, fault_ns, breaching("over"))  # the leader may act before it is Ready
        wait_write(audit, fault_ns, uids["over"], 90)
        # Two lease durations with both running: the replica 60 s behind must never think the lease
        # expired, and the two must never both believe they lead.
        until = time.monotonic() + 32
        while time.monotonic() < until:
            overlap += ahead.sweeper.is_leader() and behind.sweeper.is_leader()
            time.sleep(0.1)
        # The rolling upgrade: the leader stops (and releases the Lease); the other takes over.
        t0 = time.monotonic()
        stop(ahead)
        wait_for("the other replica to take the lease", lambda: _holder(fault_cluster, fault_ns) == identity_for(
            "fault-skew-behind"), 30, interval=0.05)
        handover = time.monotonic() - t0
        uids["late"] = create(admin, fault_ns, breaching("late"))
        wait_write(audit, fault_ns, uids["late"], 90)
        for name in ("over", "late"):
            wait_gone(admin, fault_ns, name, uids[name])
    finally:
        for c in both:
            stop(c)
    writes = pod_writes(audit, fault_ns, not_the_cluster)
    result = tally("two replicas, wall clocks skewed +30 s / -30 s; rolling handover", writes,
                   due={uids["over"]: "over", uids["late"]: "late"}, spared={uids["under"]: "under"})
    result.recovery = handover
    result.note = (f"handover {handover:.2f}s after the leader stopped; {overlap} samples with two leaders; "
                   f"late pod acted by {next(w.user for w in writes if w.uid == uids['late'])}")
    FaultReport.add(result).check()
    assert overlap == 0
    assert handover <= 2.0, f"the rolling upgrade left no leader for {handover:.2f}s"


def test_leader_frozen_past_its_lease(fault_cluster: Cluster, fault_ns: str, tmp_path: Path) -> None:
    """The leader is SIGSTOPped while it times a breach (``for: 8s``), stays frozen for 30 s (twice its
    15 s lease), and resumes. The other replica takes over and acts; the old leader must make no
    write at all (pod, Event) after its freeze: its monotonic clock is past its renew deadline."""
    admin, audit = fault_cluster.admin, fault_cluster.audit_log
    assert audit is not None
    server = admin.kube.api.configuration.host
    procs: dict[str, MemwatchProcess] = {}
    users: dict[str, str] = {}
    for name in ("first", "second"):
        users[name] = service_account_kubeconfig(admin, fault_ns, f"memwatch-{name}", server, tmp_path / f"{name}.kc")
        procs[name] = MemwatchProcess(
            ["run", "--kubeconfig", str(tmp_path / f"{name}.kc"), "--namespace", fault_ns, "--source", "kubelet",
             "--interval", "1s", "--liveness", "", "--metrics-port", "0", "--leader-elect",
             "--leader-election-namespace", fault_ns, "--leader-election-name", LEASE],
            tmp_path / f"{name}.log", {"POD_NAME": f"memwatch-{name}", "POD_NAMESPACE": fault_ns})
    try:
        procs["first"].start()
        wait_for("the first replica to lead", lambda: _holder(fault_cluster, fault_ns) == "memwatch-first", 90)
        procs["second"].start()
        time.sleep(5)
        assert procs["second"].proc is not None and procs["second"].proc.poll() is None, procs["second"].log()
        # ``over`` runs under a limit it never reaches, then has it lowered: the breach begins at the
        # annotation, not whenever the kubelet's stats and its Ready status happen to arrive.
        uids = create_running(admin, fault_ns, [breaching("over", **{"memwatch.io/for": "8s",
                                                                      "memwatch.io/limit": "300Mi"}),
                                                healthy("under")])
        admin.annotate(fault_ns, "over", {"memwatch.io/limit": LIMIT})
        time.sleep(3)  # the leader has sampled the breach and is timing its 8 s
        procs["first"].signal(signal.SIGSTOP)
        frozen = time.time()
        try:
            evicted = wait_write(audit, fault_ns, uids["over"], 60)
            time.sleep(max(0.0, frozen + 30 - time.time()))
        finally:
            procs["first"].signal(signal.SIGCONT)
        resumed = time.time()
        time.sleep(15)  # the resumed replica's chance to make a wrong write
        wait_gone(admin, fault_ns, "over", uids["over"])
    finally:
        for p in procs.values():
            p.stop()
    all_writes = pod_writes(audit, fault_ns, not_the_cluster)
    result = tally("leader SIGSTOPped 30 s (2x its lease) mid-breach, then resumed", all_writes,
                   due={uids["over"]: "over"}, spared={uids["under"]: "under"}, fault_ended=resumed)
    # Anything but a refused Lease update (it may try to renew; it must not succeed while the other leads).
    stale = [w for w in writes_by(audit, users["first"], since=frozen) if w[1] != "leases" or w[3] < 400]
    result.wrong += [f"{w} (a write by the frozen leader after it resumed)" for w in stale]
    result.recovery = evicted.at - frozen
    result.note = (f"taken over and acted {evicted.at - frozen:.1f}s after the freeze, by "
                   f"{'the second replica' if evicted.user == users['second'] else evicted.user}")
    FaultReport.add(result).check()
    assert evicted.user == users["second"]
