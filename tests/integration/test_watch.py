"""The pod watch and index against a real kube-apiserver: paged LIST, then WATCH from its version."""

from __future__ import annotations

import pytest

from memwatch.kube import Kube, load_client
from memwatch.podindex import PodIndex, PodRecord
from memwatch.policy import Defaults
from memwatch.protections import Protections
from memwatch.watcher import PodWatcher

from .clusterkit import MiB, hog_pod, wait_for
from .conftest import Cluster

pytestmark = pytest.mark.cluster

WATCHED = {"memwatch.io/limit": "100Mi"}


def records(index: PodIndex) -> dict[str, PodRecord]:
    return {r.name: r for r in index.snapshot()}


@pytest.mark.timeout(120)
def test_watch_keeps_the_index_in_step_with_the_cluster(cluster: Cluster, namespace: str) -> None:
    admin = cluster.admin
    for name in ("watched-1", "watched-2", "watched-3"):
        admin.create_pod(namespace, hog_pod(name, ["--sleep"], WATCHED))
    for name in ("plain-1", "plain-2"):
        admin.create_pod(namespace, hog_pod(name, ["--sleep"]))

    kube = Kube(load_client(cluster.kubeconfig))
    index = PodIndex(Defaults(), Protections().reason)
    watcher = PodWatcher(kube, index, namespace, page_size=2)
    watcher.list_once()
    # Five pods, two a page: three GETs, and only the annotated pods are kept.
    assert kube.requests == {("GET", "pods"): 3}
    assert set(records(index)) == {"watched-1", "watched-2", "watched-3"}
    assert watcher.synced.is_set() and watcher.resource_version
    limits = {name: [lim.bytes for lim in r.policy.limits] for name, r in records(index).items() if r.policy}
    assert limits == {name: [100 * MiB] for name in ("watched-1", "watched-2", "watched-3")}

    watcher.start()  # LIST again, then WATCH: every change below arrives through the watch
    try:
        def index_shows(what: str, check: object) -> None:
            wait_for(what, lambda: check(records(index)), 30, interval=0.2)  # type: ignore[operator]

        admin.annotate(namespace, "plain-1", {"memwatch.io/limit": "64Mi"})
        index_shows("a newly annotated pod to be watched",
                    lambda r: "plain-1" in r and r["plain-1"].policy.limits[0].bytes == 64 * MiB)

        admin.annotate(namespace, "watched-1", {"memwatch.io/limit": "200Mi"})
        index_shows("an edited limit to update the policy",
                    lambda r: r["watched-1"].policy.limits[0].bytes == 200 * MiB)

        admin.annotate(namespace, "watched-2", {"memwatch.io/limit": "150%abc"})
        index_shows("an invalid annotation to be recorded as a problem",
                    lambda r: r["watched-2"].policy is None and r["watched-2"].problems)

        admin.annotate(namespace, "watched-3", {"memwatch.io/limit": None})
        index_shows("a pod whose annotation was removed to leave the index", lambda r: "watched-3" not in r)

        admin.delete_pod(namespace, "watched-1", grace=0)
        index_shows("a deleted pod to leave the index", lambda r: "watched-1" not in r)

        index_shows("the scheduler's node to reach the index",
                    lambda r: r["plain-1"].node == cluster.node and r["watched-2"].node == cluster.node)
        assert set(records(index)) == {"plain-1", "watched-2"}
        assert {verb for verb, _ in kube.requests} == {"GET"}, "the watch never writes"
    finally:
        watcher.stop()
