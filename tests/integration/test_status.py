"""`memwatch status` against a real kube-apiserver and kubelet, run as a person runs it: a separate
process, the cluster's kubeconfig, ``--source kubelet`` (each node's Summary API, read straight from
the kubelet as in test_controller.py).

Three real hogs in a fresh namespace: ``near`` holds 80 MiB under a 100Mi watch limit, ``far``
holds 16 MiB under 300Mi, ``plain`` has no annotation. The kubelet reports a new pod's working
set only after its next housekeeping (10-20 s), so the JSON is read again until both are measured,
with a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from memwatch.quantity import parse_bytes

from .clusterkit import MiB, hog_pod, holding, wait_for
from .conftest import Cluster

pytestmark = [pytest.mark.cluster]

NEAR_MIB, NEAR_LIMIT = 80, "100Mi"
FAR_MIB, FAR_LIMIT = 16, "300Mi"
HARD_LIMIT = "400Mi"  # hog_pod's limits.memory
#: Working-set samples refresh every 10-15 s (cadvisor housekeeping): allow for a few rounds.
MEASURED = 120
#: The working set of a hog holding N MiB: N, give or take its own pages (as test_controller.py allows).
SLACK_BELOW, SLACK_ABOVE = 8, 40


def memwatch_status(cluster: Cluster, *argv: str) -> subprocess.CompletedProcess[str]:
    """`memwatch status ARGV` in its own process, with the cluster's kubeconfig and nothing else of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMWATCH_") and k not in ("KUBECONFIG", "NO_COLOR")}
    return subprocess.run([sys.executable, "-m", "memwatch", "status", "--kubeconfig", cluster.kubeconfig, *argv],
                          capture_output=True, text=True, timeout=90, env=env)


def table(text: str) -> list[dict[str, str]]:
    """The table's rows by its header's column positions (cells are left-aligned)."""
    lines = [line for line in text.splitlines() if line.strip()]
    columns = [(m.group(0), m.start()) for m in re.finditer(r"\S+(?: \S+)*", lines[0])]
    return [{name: line[start:columns[i + 1][1] if i + 1 < len(columns) else None].strip()
             for i, (name, start) in enumerate(columns)} for line in lines[1:]]


@pytest.mark.timeout(360)
def test_status_lists_watched_pods_with_real_usage(cluster: Cluster, namespace: str) -> None:
    admin = cluster.admin
    admin.create_pod(namespace, hog_pod("near", holding(NEAR_MIB), {"memwatch.io/limit": NEAR_LIMIT},
                                        hard_limit=HARD_LIMIT))
    admin.create_pod(namespace, hog_pod("far", holding(FAR_MIB), {"memwatch.io/limit": FAR_LIMIT},
                                        hard_limit=HARD_LIMIT))
    admin.create_pod(namespace, hog_pod("plain", holding(FAR_MIB), hard_limit=HARD_LIMIT))
    pods = admin.wait_running(namespace, ["near", "far", "plain"])

    def measured() -> tuple[dict[str, Any], str] | None:
        proc = memwatch_status(cluster, "-n", namespace, "-o", "json", "--source", "kubelet")
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        doc: dict[str, Any] = json.loads(proc.stdout)
        used = {p["name"]: p["working_set_bytes"] for p in doc["pods"]}
        if used.get("far") is None or (used.get("near") or 0) < (NEAR_MIB - SLACK_BELOW) * MiB:
            return None  # not measured yet (the kubelet's first sample of a new pod lags)
        return doc, proc.stderr

    doc, err = wait_for("memwatch status to show both hogs' working sets", measured, MEASURED, interval=2)
    assert "Traceback" not in err and "no usage" not in err, err
    assert doc["namespace"] == namespace and doc["source"] == "kubelet" and doc["source_used"] == "kubelet"
    assert doc["usage_error"] is None and doc["events_error"] is None
    # The watched pods only (not `plain`), nearest their watch limit first.
    assert [p["name"] for p in doc["pods"]] == ["near", "far"]
    for row in doc["pods"]:
        name = row["name"]
        hold, limit = {"near": (NEAR_MIB, NEAR_LIMIT), "far": (FAR_MIB, FAR_LIMIT)}[name]
        used = row["working_set_bytes"]
        assert (hold - SLACK_BELOW) * MiB <= used <= (hold + SLACK_ABOVE) * MiB, f"{name}: {used / MiB:.1f}Mi"
        assert row["uid"] == pods[name]["metadata"]["uid"] and row["namespace"] == namespace
        assert row["node"] == pods[name]["spec"]["nodeName"] and row["phase"] == "Running"
        assert row["watch_limit_bytes"] == parse_bytes(limit) and row["watch_limit"] == limit
        assert row["limit_from"] == "annotation" and row["scope"] == "pod"
        assert row["hard_limit_bytes"] == parse_bytes(HARD_LIMIT)
        assert row["headroom_bytes"] == parse_bytes(limit) - used
        assert row["headroom_percent"] == pytest.approx(100 * (parse_bytes(limit) - used) / parse_bytes(limit),
                                                        abs=0.01)
        assert row["usage_source"] == "kubelet" and set(row["containers"]) == {"hog"}
        assert -2 <= row["sample_age_seconds"] <= 60, row["sample_age_seconds"]
        assert row["action"] == "evict" and row["last_action"] is None  # nothing acted on them
        assert row["problems"] == [] and row["protected"] is None
    near, far = doc["pods"]
    assert near["headroom_percent"] < far["headroom_percent"]

    # The table, piped: plain text, the same pods in the same order, every column filled.
    proc = memwatch_status(cluster, "-n", namespace, "--source", "kubelet")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "\x1b" not in proc.stdout
    rows = table(proc.stdout)
    assert [r["POD"] for r in rows] == [f"{namespace}/near", f"{namespace}/far"]
    for row, limit in zip(rows, (NEAR_LIMIT, FAR_LIMIT), strict=True):
        assert row["NODE"] == near["node"]
        assert row["WATCH LIMIT"] == limit and row["FROM"] == "annotation" and row["HARD LIMIT"] == HARD_LIMIT
        assert parse_bytes(row["WORKING SET"]) > 0, row  # e.g. 81.5Mi
        m = re.fullmatch(r"(\d+)% (\S+)", row["HEADROOM"])
        assert m, row["HEADROOM"]
        assert 0 < int(m[1]) < 100 and parse_bytes(m[2]) > 0
        assert row["ACTION"] == "evict" and row["LAST ACTION"] == "-"
    wide = {r["POD"]: r for r in table(memwatch_status(cluster, "-n", namespace, "--source", "kubelet",
                                                       "-o", "wide").stdout)}
    assert wide[f"{namespace}/near"]["SCOPE"] == "pod" and wide[f"{namespace}/near"]["SOURCE"] == "kubelet"


@pytest.mark.timeout(120)
def test_status_refuses_bad_input_on_a_real_cluster(cluster: Cluster, namespace: str) -> None:
    """One line on stderr, a non-zero code, no traceback: from the real API server's own answers."""
    proc = memwatch_status(cluster, "-n", f"{namespace}-absent")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == f"memwatch status: error: namespace '{namespace}-absent' not found\n"
    # A selector memwatch's parser lets through and the API server refuses (a value may not start with '-').
    proc = memwatch_status(cluster, "-n", namespace, "-l", "app=-web")
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.startswith("memwatch status: error: invalid label selector 'app=-web': HTTP 400")
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    # An empty namespace is listed as such (not an error).
    proc = memwatch_status(cluster, "-n", namespace, "-o", "json", "--source", "kubelet")
    assert proc.returncode == 0 and json.loads(proc.stdout)["pods"] == [], proc.stderr
