"""A restart does not act twice: memwatch's memory of what it did lives in the cluster's Events.

A first controller reports a dry-run pod and is refused the eviction of a PodDisruptionBudget-
guarded pod. A second, fresh controller then takes over: it must not report the dry-run pod
again, and it must escalate the guarded pod when the first refusal's deadline passes, not a full
escalation timeout after its own start.
"""

from __future__ import annotations

import re
import time

import pytest

from memwatch.observability import REASON_BLOCKED, REASON_DRY_RUN, REASON_ESCALATED

from .clusterkit import (
    audited_requests,
    captured_logs,
    forbidden_writes,
    hog_pod,
    holding,
    identity_for,
    is_running,
    running_controller,
    wait_for,
    wait_sweeps,
)
from .conftest import Cluster

pytestmark = pytest.mark.cluster

TIMEOUT = 20.0  # --escalation-timeout: long enough to restart well inside it
GUARDED = {"memwatch-it/pdb": "guarded"}
LIMIT = {"memwatch.io/limit": "80Mi"}


@pytest.mark.timeout(240)
def test_restart_does_not_act_twice(cluster: Cluster, namespace: str) -> None:
    admin = cluster.admin
    admin.create_pdb(namespace, "guarded", GUARDED, min_available=1)
    admin.create_pod(namespace, hog_pod("dry-run", holding(160), {**LIMIT, "memwatch.io/action": "dry-run"}))
    admin.create_pod(namespace, hog_pod("blocked", holding(160), LIMIT, labels=GUARDED))
    pods = admin.wait_running(namespace, ["dry-run", "blocked"])
    admin.wait_pdb_blocking(namespace, "guarded", healthy=1)
    dry_uid, blocked_uid = (pods[n]["metadata"]["uid"] for n in ("dry-run", "blocked"))
    flags = ("--escalate", "--escalation-timeout", f"{TIMEOUT:g}s")

    with captured_logs() as logs:
        with running_controller(cluster.kubeconfig, [namespace], *flags, tag="restart-a") as first:
            admin.wait_event(namespace, dry_uid, REASON_DRY_RUN, 120)
            admin.wait_event(namespace, blocked_uid, REASON_BLOCKED, 120)
            blocked_for = first.sweeper.lifecycle.blocked_for(blocked_uid)
            assert blocked_for is not None
            refused_at = time.time() - blocked_for
            # Keep retrying for a while, so that a successor which forgot the first refusal
            # would escalate clearly later than one which remembers it.
            wait_for("the first controller to retry the blocked eviction",
                     lambda: first.kube.request_count("POST", "pods/eviction") >= 6, TIMEOUT / 2)
        restarted_at = time.time()
        assert restarted_at - refused_at < TIMEOUT - 8, "the first controller ran too long to tell"
        blocked_pod = admin.pod(namespace, "blocked")
        assert blocked_pod is not None and is_running(blocked_pod), "escalated before the restart"

        with running_controller(cluster.kubeconfig, [namespace], *flags, tag="restart-b") as second:
            admin.wait_event(namespace, blocked_uid, REASON_ESCALATED, TIMEOUT + 30)
            wait_sweeps(second, 3)  # and it has swept the dry-run pod, over its limit, since
            escalated_at = logs.entries(rf"action=escalated pod={namespace}/blocked ")[0][0]

    # Not reported twice: one dry-run Event and one would-evict line, both from the first controller.
    dry_events = admin.events(namespace, dry_uid, REASON_DRY_RUN)
    assert [e["source"].get("host") for e in dry_events] == [identity_for("restart-a")]
    assert len(logs.lines(rf"action=would-evict pod={namespace}/dry-run ")) == 1
    loaded = [int(n) for n in re.findall(r"ready: .* earlier_events=(\d+) ", "\n".join(logs.lines()))]
    assert len(loaded) == 2 and loaded[0] == 0 and loaded[1] >= 2, loaded  # the second one read the first's
    # The escalation deadline ran from the first refusal (Event times have one-second resolution).
    assert TIMEOUT - 1.5 <= escalated_at - refused_at <= TIMEOUT + 4, escalated_at - refused_at
    assert escalated_at - restarted_at < TIMEOUT - 3, "the restart reset the escalation deadline"
    second_refusal = [e for e in admin.events(namespace, blocked_uid, REASON_BLOCKED)
                      if e["source"].get("host") == identity_for("restart-b")]
    # The first refusal's Event is remembered across the restart: the pod gets one, not one per process.
    assert second_refusal == []
    escalations = admin.events(namespace, blocked_uid, REASON_ESCALATED)
    assert [e["source"].get("host") for e in escalations] == [identity_for("restart-b")]

    if cluster.audit_log is not None:
        requests = audited_requests(cluster.audit_log, identity_for("restart-"))
        assert requests and forbidden_writes(requests) == []
