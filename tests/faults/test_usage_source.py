"""The usage source fails: the kubelet stopped for 30 s, and a kubelet that answers 500s, garbage,
a truncated body, or too late. No action may rest on data that is stale or broken, and once the
source works again every due action happens, once.

In both scenarios a pod's watch limit is lowered *during* the fault, below what the pod held at the
last good sample: acting then would be acting on stale data. A pod in breach with ``for: 20s`` when
the kubelet stops must breach for 20 s again on fresh samples before it is acted on (a breach does
not hold across a gap in the samples).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from integration.clusterkit import captured_logs, controller_kube, identity_for, settings, stop, wait_for, wait_sweeps
from integration.conftest import Cluster
from memwatch.controller import Controller
from memwatch.lifecycle import Phase
from memwatch.sources import KubeletSource, kubelet_endpoint

from .faultkit import (
    LIMIT,
    Components,
    FaultReport,
    KubeletFaultProxy,
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

#: Samples older than this are stale: short, so that the faults below outlast it.
MAX_AGE = "5s"


def _controller(cluster: Cluster, namespace: str, tag: str) -> Controller:
    identity = identity_for(tag)
    return Controller(settings(cluster.kubeconfig, [namespace], "--max-sample-age", MAX_AGE, identity=identity),
                      kube=controller_kube(cluster.kubeconfig, identity))


@pytest.fixture
def kubelet_back(components: Components) -> Iterator[None]:
    """Whatever happens in the test, the kubelet runs again afterwards."""
    yield
    try:
        components.pid("kubelet")
    except AssertionError:
        components.start("kubelet")


def test_kubelet_stopped_for_30s(fault_cluster: Cluster, components: Components, fault_ns: str,
                                 kubelet_back: None) -> None:
    admin, audit = fault_cluster.admin, fault_cluster.audit_log
    assert audit is not None
    uids = create_running(admin, fault_ns, [
        breaching("timed", **{"memwatch.io/for": "20s"}),   # breaching when the kubelet stops
        healthy("lowered", mib=120),                         # its limit drops below 120Mi mid-outage
        healthy("under"),
    ])
    c = _controller(fault_cluster, fault_ns, "fault-kubelet")
    c.start()
    try:
        def breach_begun() -> bool:
            life = c.sweeper.lifecycle.peek(uids["timed"])
            return life is not None and life.phase is Phase.BREACHING
        wait_for("the controller to see the breach begin", breach_begun, 90)
        stopped = time.time()
        components.stop("kubelet")
        time.sleep(8)  # every sample memwatch holds is now older than --max-sample-age
        admin.annotate(fault_ns, "lowered", {"memwatch.io/limit": LIMIT})
        during = no_write_for(audit, fault_ns, uids.values(), 30 - (time.time() - stopped))
        components.start("kubelet")
        restarted = time.time()
        lowered = wait_write(audit, fault_ns, uids["lowered"], 120)
        timed = wait_write(audit, fault_ns, uids["timed"], 120)
        for name in ("lowered", "timed"):
            wait_gone(admin, fault_ns, name, uids[name])
        wait_sweeps(c, 3, 60)
    finally:
        stop(c)
    writes = pod_writes(audit, fault_ns, not_the_cluster)
    result = tally("kubelet stopped 30 s (samples stale; a limit lowered mid-outage)", writes,
                   due={uids["timed"]: "timed", uids["lowered"]: "lowered"}, spared={uids["under"]: "under"},
                   fault_ended=restarted)
    result.wrong += [f"{w} (during the outage, on stale data)" for w in during]
    waited = timed.at - restarted
    result.note = (f"for: 20s pod acted {waited:.1f}s after the kubelet came back; lowered-limit pod "
                   f"{lowered.at - restarted:.1f}s")
    if waited < 19.0:
        result.wrong.append(f"the for: 20s pod was acted on {waited:.1f}s after samples resumed: its breach "
                            "was carried across the outage")
    FaultReport.add(result).check()


class _Redirect:
    """The Node directory, pointed at the fault proxy (everything after the address is real)."""

    def __init__(self, host: str, port: int) -> None:
        self.endpoint_ = (host, port)

    def endpoint(self, node: str) -> tuple[str, int]:
        return self.endpoint_

    def failed(self, node: str) -> None:
        pass

    def forget_except(self, nodes: Any) -> None:
        pass


def test_usage_source_answers_badly(fault_cluster: Cluster, fault_ns: str) -> None:
    admin, audit = fault_cluster.admin, fault_cluster.audit_log
    assert audit is not None
    modes = ["500", "garbage", "truncated", "slow"]
    uids = create_running(admin, fault_ns, [*(healthy(f"p-{m}", mib=120) for m in modes), healthy("under")])
    host, port = kubelet_endpoint(admin.get(f"/api/v1/nodes/{fault_cluster.node}"))
    c = _controller(fault_cluster, fault_ns, "fault-source")
    assert isinstance(c.source, KubeletSource)
    figures: list[str] = []
    wrong: list[str] = []
    with KubeletFaultProxy(host, port, delay=12.0) as proxy, captured_logs() as logs:
        c.source.nodes = _Redirect(proxy.host, proxy.port)  # type: ignore[assignment]
        c.start()
        try:
            wait_sweeps(c, 2, 90)
            for mode in modes:
                pod = f"p-{mode}"
                proxy.mode = mode
                began = time.time()
                time.sleep(7)  # longer than --max-sample-age: every earlier sample is stale
                admin.annotate(fault_ns, pod, {"memwatch.io/limit": LIMIT})
                during = no_write_for(audit, fault_ns, [uids[pod]], 8)
                wrong += [f"{w} (while the source answered {mode})" for w in during]
                proxy.mode = "ok"
                ended = time.time()
                acted = wait_write(audit, fault_ns, uids[pod], 90)
                figures.append(f"{mode}: {proxy.requests[mode]} bad answers, acted {acted.at - ended:.1f}s after")
                del began
            for mode in modes:
                wait_gone(admin, fault_ns, f"p-{mode}", uids[f"p-{mode}"])
            wait_sweeps(c, 3, 60)
        finally:
            stop(c)
        failures = logs.lines(r"kubelet source: node .* failed|usage read failed")
        tracebacks = [line for line in logs.lines() if "Traceback" in line]
    writes = pod_writes(audit, fault_ns, not_the_cluster)
    result = tally("usage source: 500, garbage JSON, truncated body, 12 s late", writes,
                   due={uids[f"p-{m}"]: f"p-{m}" for m in modes}, spared={uids["under"]: "under"})
    result.wrong += wrong
    result.note = "; ".join(figures) + f"; {len(failures)} failure log lines"
    FaultReport.add(result).check()
    assert not tracebacks, tracebacks
    # Lines when the source starts failing and when its error changes (a truncated body fails as an
    # IncompleteRead or as a TLS EOF), not one per sweep: at most three per fault, whose ~15 sweeps
    # would otherwise log 30.
    assert len(failures) <= 3 * len(modes), failures
