"""Usage sources and the pod watcher at the HTTP level: a real `Kube` against a fake API server.

Request counts are checked twice: at the fake server and through `Kube.request_count`, so the
structural guard (usage requests per sweep do not grow with watched pods) holds on both sides.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

from memwatch.clock import ManualClock
from memwatch.kube import Gone, Kube, KubeletClient
from memwatch.lifecycle import Lifecycle
from memwatch.podindex import PodIndex, PodRecord, build_record
from memwatch.policy import Defaults
from memwatch.protections import Protections
from memwatch.quantity import parse_time
from memwatch.sources import (
    AutoSource,
    KubeletSource,
    MetricsApiSource,
    NodeDirectory,
    SourceError,
    UsageSource,
    make_source,
)
from memwatch.watcher import ACTIVE_PODS, PodWatcher

from .fakeapi import METRICS, FakeApiServer, pod_metrics, summary, summary_pod
from .fakekubelet import KubeletApiServer, Pki
from .fakes import MI, FakeClock, FakeKube, Rig, make_pod

NOW = "2026-11-28T10:00:00Z"
NOW_TS = parse_time(NOW)
METRICS_PODS = METRICS + r"(/namespaces/[^/]+)?/pods"
NODE = r"/api/v1/nodes/[^/]+"


@pytest.fixture
def api(kubelet_api: KubeletApiServer) -> KubeletApiServer:
    """Here the API server is always the one whose Nodes' kubelets are fake HTTPS servers."""
    return kubelet_api


def kubelet_source(kube: Kube, pki: Pki, clock: Callable[[], float] = time.monotonic) -> KubeletSource:
    """The kubelet source trusting the test CA, as with --kubelet-ca-file."""
    return KubeletSource(kube, KubeletClient(kube, ca_file=str(pki.ca)), NodeDirectory(kube, clock=clock))


def auto_source(kube: Kube, pki: Pki) -> UsageSource:
    return make_source("auto", kube, kubelet_ca_file=str(pki.ca))


def records(n: int, namespaces: tuple[str, ...] = ("shop",), nodes: int = 3) -> list[PodRecord]:
    out = []
    for i in range(n):
        pod = make_pod(f"p{i}", namespaces[i % len(namespaces)], node=f"node-{i % nodes}", uid=f"uid-{i}",
                       containers=[("app", "1Gi"), ("side", "1Gi")])
        rec = build_record(pod, Defaults(), Protections().reason)
        assert rec is not None
        out.append(rec)
    return out


def serve_metrics(api: FakeApiServer, recs: list[PodRecord], app: str = "300Mi", side: str = "20Mi") -> None:
    api.pod_metrics = [pod_metrics(r.namespace, r.name, NOW, {"app": app, "side": side}) for r in recs]
    # Pods memwatch does not watch are in the list too (metrics-server returns every pod).
    api.pod_metrics += [pod_metrics("shop", f"other-{i}", NOW, {"app": "1Gi"}) for i in range(5)]


def serve_summaries(api: FakeApiServer, recs: list[PodRecord], nodes: int = 3) -> None:
    by_node: dict[str, list[dict[str, Any]]] = {f"node-{i}": [] for i in range(nodes)}
    for r in recs:
        assert r.node is not None
        by_node[r.node].append(summary_pod(r.namespace, r.name, r.uid, NOW, {"app": 300 * MI, "side": 20 * MI},
                                           pod_bytes=321 * MI))
    for node, pods in by_node.items():
        pods.append(summary_pod("kube-system", "unwatched", "uid-unwatched", NOW, {"c": 5 * MI}))
        api.summaries[node] = summary(node, NOW, pods)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------------
# metrics.k8s.io


def test_metrics_api_parses_bytes_and_timestamps(api: FakeApiServer) -> None:
    recs = records(3)
    serve_metrics(api, recs, app="300Mi", side="20480Ki")
    out = MetricsApiSource(api.kube()).fetch(recs)
    assert set(out) == {r.uid for r in recs}
    usage = out["uid-0"]
    assert usage.containers == {"app": 300 * MI, "side": 20 * MI}
    assert usage.total == 320 * MI and usage.timestamp == NOW_TS and usage.source == "metrics-api"


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_one_metrics_request_per_sweep_whatever_the_pod_count(api: FakeApiServer, n: int) -> None:
    kube = api.kube()
    recs = records(n)
    serve_metrics(api, recs)
    source = MetricsApiSource(kube, label_selector="memwatch.io/watch=true")
    for sweep in range(1, 4):
        out = source.fetch(recs)
        assert len(out) == n
        assert len(api.requests("GET", METRICS_PODS)) == sweep
        assert kube.request_count("GET", "metrics.k8s.io/pods") == sweep
        assert kube.request_count() == sweep  # nothing else at all
    assert api.requests()[0].path == METRICS + "/pods"
    assert api.requests()[0].query["labelSelector"] == "memwatch.io/watch=true"


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_one_metrics_request_per_watched_namespace(api: FakeApiServer, n: int) -> None:
    kube = api.kube()
    recs = records(n, namespaces=("shop", "blog"))
    serve_metrics(api, recs)
    out = MetricsApiSource(kube, namespaces=("shop", "blog")).fetch(recs)
    assert len(out) == n
    assert sorted(r.path for r in api.requests()) == [METRICS + "/namespaces/blog/pods",
                                                      METRICS + "/namespaces/shop/pods"]
    assert kube.request_count() == 2
    assert "labelSelector" not in api.requests()[0].query  # empty selectors are not sent


def test_sweep_makes_one_usage_request_whatever_the_pod_count(api: FakeApiServer, clock: FakeClock) -> None:
    """The structural guard end to end: the sweep (not just the source) asks once per sweep."""
    counts = []
    for n in (10, 100, 1000):
        api.clear()
        kube = api.kube()
        rig = Rig(FakeKube(clock), clock, source=MetricsApiSource(kube))
        pods = [make_pod(f"p{i}", "shop", uid=f"u{n}-{i}", containers=[("app", "1Gi"), ("side", "1Gi")])
                for i in range(n)]
        rig.add(*pods)
        recs = [rig.record(p) for p in pods]
        serve_metrics(api, recs)
        clock.advance(NOW_TS + 1 - clock())
        for _ in range(3):
            report = rig.sweep()
            assert report.sampled == n
        counts.append((len(api.requests()), kube.request_count()))
    assert counts == [(3, 3), (3, 3), (3, 3)]


@pytest.mark.parametrize("bad", [
    {"timestamp": None},
    {"timestamp": "yesterday"},
    {"containers": [{"name": "app", "usage": {"memory": "lots"}}]},
    {"metadata": {"name": "p0"}},  # no namespace
    {"containers": "app"},
    {"containers": [["app", "300Mi"]]},
    {"containers": [{"name": "app", "usage": "300Mi"}]},
    {"window": "a while"},
    {"window": 15},
    {"metadata": {"name": ["p0"], "namespace": "shop"}},  # unhashable
    {"containers": []},
    {"containers": [{"name": "", "usage": {"memory": "300Mi"}}, {"usage": {"memory": "20Mi"}}]},
    {"containers": [{"name": "app", "usage": {"memory": "300Mi"}}, {"name": "side", "usage": {"memory": [1]}}]},
])
def test_malformed_metrics_items_are_ignored(api: FakeApiServer, bad: dict[str, Any]) -> None:
    recs = records(2)
    serve_metrics(api, recs)
    api.pod_metrics[0].update(bad)
    out = MetricsApiSource(api.kube()).fetch(recs)
    assert set(out) == {"uid-1"}


def test_an_item_not_in_metrics_servers_exact_form_is_still_read(api: FakeApiServer) -> None:
    recs = records(2)
    serve_metrics(api, recs)
    api.pod_metrics[0]["containers"] = [{"name": "app", "usage": {"memory": 314572800}},  # a number
                                        {"name": "side"},  # no usage: left out
                                        "junk"]
    del api.pod_metrics[0]["window"]
    out = MetricsApiSource(api.kube()).fetch(recs)
    assert out["uid-0"].containers == {"app": 300 * MI} and out["uid-1"].containers == {"app": 300 * MI,
                                                                                      "side": 20 * MI}


def test_a_sample_is_reused_only_while_the_item_says_the_same(api: FakeApiServer) -> None:
    recs = records(2)
    serve_metrics(api, recs)
    source = MetricsApiSource(api.kube())
    first = source.fetch(recs)
    again = source.fetch(recs)
    assert again["uid-0"] is first["uid-0"] and again["uid-1"] is first["uid-1"]
    api.pod_metrics[0]["containers"][0]["usage"]["memory"] = "400Mi"  # same timestamp, new figure
    third = source.fetch(recs)
    assert third["uid-0"].containers["app"] == 400 * MI and third["uid-1"] is first["uid-1"]
    renamed = [dataclasses.replace(recs[0], containers_started=()), recs[1]]  # a new record, same item
    fourth = source.fetch(renamed)
    assert fourth["uid-0"] is not third["uid-0"] and fourth["uid-0"].containers == third["uid-0"].containers


def test_malformed_metrics_items_are_never_acted_on(api: FakeApiServer, clock: FakeClock) -> None:
    kube = FakeKube(clock)
    rig = Rig(kube, clock, source=MetricsApiSource(api.kube()))
    pods = [make_pod("bad", "shop"), make_pod("good", "shop")]
    rig.add(*pods)
    api.pod_metrics = [pod_metrics("shop", "bad", NOW, {"app": "900Mi"}),
                       pod_metrics("shop", "good", NOW, {"app": "900Mi"})]
    api.pod_metrics[0]["timestamp"] = "not a time"
    clock.advance(NOW_TS + 1 - clock())
    report = rig.sweep()
    assert [c[2] for c in kube.writes()] == ["good"]
    assert report.missing == 1


def test_metrics_api_error_is_a_source_error(api: FakeApiServer) -> None:
    api.metrics_served = False
    with pytest.raises(SourceError, match="metrics-api: HTTP 404"):
        MetricsApiSource(api.kube()).fetch(records(1))


@pytest.mark.parametrize("body", ["<html>502 Bad Gateway</html>", '{"items": [', ""])
def test_a_metrics_answer_that_is_not_json_is_a_source_error_and_acts_on_nothing(
        api: FakeApiServer, clock: FakeClock, caplog: pytest.LogCaptureFixture, body: str) -> None:
    api.pod_metrics_body = body  # a proxy's error page, a cut-off body, nothing
    with pytest.raises(SourceError, match=r"metrics-api: \S+ answered with something that is not JSON"):
        MetricsApiSource(api.kube()).fetch(records(1))
    kube = FakeKube(clock)
    rig = Rig(kube, clock, source=MetricsApiSource(api.kube()))
    rig.add(make_pod("db", "shop"))
    with caplog.at_level(logging.WARNING, logger="memwatch.sweep"):
        report = rig.sweep()
    assert report.error and "not JSON" in report.error and not kube.writes()
    assert [r.getMessage() for r in caplog.records if "usage read failed" in r.getMessage()]
    assert not [r for r in caplog.records if r.exc_info]  # a clear line, never a traceback


def test_a_list_not_in_metrics_servers_exact_form_is_read_item_by_item(api: FakeApiServer) -> None:
    """One odd item anywhere makes the typed decode refuse the whole list: every other item is
    still read, the careful way, to the same figures."""
    recs = records(3)
    serve_metrics(api, recs)
    exact = MetricsApiSource(api.kube()).fetch(recs)
    api.pod_metrics[2]["window"] = 15  # a number: not metrics-server's form
    out = MetricsApiSource(api.kube()).fetch(recs)
    assert set(out) == {"uid-0", "uid-1"} and all(out[u] == exact[u] for u in out)


def test_no_records_no_request(api: KubeletApiServer) -> None:
    kube = api.kube()
    assert MetricsApiSource(kube).fetch([]) == {} and kubelet_source(kube, api.pki).fetch([]) == {}
    assert api.requests() == [] and api.kubelet_requests() == []


# ---------------------------------------------------------------------------------------------
# kubelet Summary, read from each node's kubelet directly (never the API server's node proxy)


def test_kubelet_summary_parses_working_set_and_time(api: KubeletApiServer) -> None:
    recs = records(3, nodes=3)
    serve_summaries(api, recs)
    out = kubelet_source(api.kube(), api.pki).fetch(recs)
    usage = out["uid-0"]
    assert usage.containers == {"app": 300 * MI, "side": 20 * MI}
    assert usage.pod_bytes == 321 * MI and usage.total == 321 * MI  # the pod cgroup's figure wins
    assert usage.timestamp == NOW_TS and usage.source == "kubelet"
    assert "uid-unwatched" not in out


def test_kubelet_source_goes_straight_to_the_kubelet(api: KubeletApiServer) -> None:
    """No node proxy: the API server is asked only for Node objects; the Summary comes from the
    kubelet's own address and port (from the Node), with the ServiceAccount's bearer token."""
    kube = api.kube()
    recs = records(4, nodes=2)
    serve_summaries(api, recs, nodes=2)
    assert len(kubelet_source(kube, api.pki).fetch(recs)) == 4
    assert sorted(r.path for r in api.requests()) == ["/api/v1/nodes/node-0", "/api/v1/nodes/node-1"]
    assert not [r for r in api.requests() if "proxy" in r.path]
    got = sorted((r.node, r.path, r.authorization) for r in api.kubelet_requests())
    assert got == [(f"node-{i}", "/stats/summary", "Bearer sa-token-of-memwatch") for i in range(2)]
    assert kube.request_count("GET", "nodes/proxy") == 0
    assert kube.request_count("GET", "nodes/stats") == 2 and kube.request_count("GET", "nodes") == 2


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_one_kubelet_request_per_node_hosting_watched_pods(api: KubeletApiServer, n: int) -> None:
    """One Summary per node per sweep; the Nodes are read once, not per sweep (no Node LIST)."""
    kube = api.kube()
    recs = records(n, nodes=3)
    serve_summaries(api, recs, nodes=3)
    api.summaries["node-idle"] = summary("node-idle", NOW, [])  # hosts no watched pod: never asked
    source = kubelet_source(kube, api.pki)
    for sweep in range(1, 4):
        assert len(source.fetch(recs)) == n
        assert sorted(r.node for r in api.kubelet_requests()) == sorted([f"node-{i}" for i in range(3)] * sweep)
        assert kube.request_count("GET", "nodes/stats") == 3 * sweep
        assert kube.request_count() == 3 * sweep + 3  # plus the three Node GETs of the first sweep
    assert sorted(r.path for r in api.requests()) == [f"/api/v1/nodes/node-{i}" for i in range(3)]


def test_nodes_are_read_again_after_their_ttl_or_a_failure(api: KubeletApiServer) -> None:
    clock = FakeClock()
    kube = api.kube()
    recs = records(2, nodes=1)
    serve_summaries(api, recs, nodes=1)
    source = KubeletSource(kube, KubeletClient(kube, ca_file=str(api.pki.ca)),
                           NodeDirectory(kube, ttl=600, retry=30, clock=clock))
    source.fetch(recs)
    clock.advance(400)
    source.fetch(recs)
    assert len(api.requests("GET", NODE)) == 1
    clock.advance(201)  # past the TTL (spread between 480 s and 600 s)
    source.fetch(recs)
    assert len(api.requests("GET", NODE)) == 2
    # The kubelet stops answering: its Node is read again, but at most every `retry` seconds.
    api.kubelets["node-0"].stop()
    for _ in range(3):
        with pytest.raises(SourceError, match="kubelet unreachable"):
            source.fetch(recs)
    assert len(api.requests("GET", NODE)) == 2
    clock.advance(31)
    with pytest.raises(SourceError):
        source.fetch(recs)
    assert len(api.requests("GET", NODE)) == 3


def test_kubelet_address_follows_the_preferred_types(api: KubeletApiServer) -> None:
    from memwatch.sources import NodeLookupError, kubelet_endpoint

    node = {"status": {"addresses": [{"type": "Hostname", "address": "node-0"},
                                     {"type": "ExternalIP", "address": "203.0.113.7"},
                                     {"type": "InternalIP", "address": "10.0.0.7"}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": 10255}}}}
    assert kubelet_endpoint(node) == ("10.0.0.7", 10255)
    assert kubelet_endpoint(node, ("Hostname", "InternalIP")) == ("node-0", 10255)
    assert kubelet_endpoint({"status": {"addresses": [{"type": "InternalIP", "address": "fd00::7"}]}}) == \
        ("fd00::7", 10250)  # no daemonEndpoints: the kubelet's default port
    with pytest.raises(NodeLookupError, match=r"no address of type InternalIP.*it has: ExternalIP=203.0.113.7"):
        kubelet_endpoint({"status": {"addresses": [{"type": "ExternalIP", "address": "203.0.113.7"}]}},
                         ("InternalIP",))
    with pytest.raises(NodeLookupError, match="it has: none"):
        kubelet_endpoint({"status": "garbage"})


def test_kubelet_certificate_is_verified_against_the_ca(api: KubeletApiServer) -> None:
    recs = records(2, nodes=1)
    serve_summaries(api, recs, nodes=1)
    kube = api.kube()
    # The right CA: works (the other tests use it too).
    assert len(make_source("kubelet", kube, kubelet_ca_file=str(api.pki.ca)).fetch(recs)) == 2
    # Another CA: refused, with a message that says what to do.
    wrong = make_source("kubelet", kube, kubelet_ca_file=str(api.pki.other_ca))
    with pytest.raises(SourceError) as caught:
        wrong.fetch(recs)
    message = str(caught.value)
    assert "kubelet certificate not trusted" in message and "--kubelet-ca-file" in message
    assert "--kubelet-insecure-tls" in message
    # No CA given: the cluster CA the API client trusts (here: the test CA) is used.
    kube.api.configuration.ssl_ca_cert = str(api.pki.ca)
    assert len(make_source("kubelet", kube).fetch(recs)) == 2


def test_self_signed_kubelet_is_refused_without_the_insecure_flag(
        pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    """kind's kubelets serve self-signed certificates: refused (clear error), read with the flag."""
    api = KubeletApiServer(pki, self_signed=True)
    api.start()
    try:
        recs = records(2, nodes=1)
        serve_summaries(api, recs, nodes=1)
        kube = api.kube()
        with pytest.raises(SourceError, match=r"kubelet certificate not trusted.*--kubelet-insecure-tls"):
            make_source("kubelet", kube, kubelet_ca_file=str(pki.ca)).fetch(recs)
        served = len(api.kubelet_requests())
        assert served == 0, "no request is sent over an unverified connection"
        insecure = make_source("kubelet", kube, kubelet_ca_file=str(pki.ca), kubelet_insecure_tls=True)
        assert "certificates are NOT verified" in caplog.text
        assert len(insecure.fetch(recs)) == 2
        assert [r.path for r in api.kubelet_requests()] == ["/stats/summary"]
    finally:
        api.stop()


def test_kubelet_refusing_the_token_is_explained(api: KubeletApiServer) -> None:
    recs = records(1, nodes=1)
    serve_summaries(api, recs, nodes=1)
    kube = api.kube()
    kube.api.configuration.api_key = {"BearerToken": "Bearer someone-else"}
    with pytest.raises(SourceError, match=r"HTTP 401.*refused memwatch's credentials.*nodes/stats"):
        kubelet_source(kube, api.pki).fetch(recs)


def test_kubelet_timestamp_is_the_stalest_container(api: KubeletApiServer) -> None:
    recs = records(1, nodes=1)
    entry = summary_pod("shop", "p0", "uid-0", NOW, {"app": 1 * MI, "side": 1 * MI})
    entry["containers"][0]["memory"]["time"] = "2026-11-28T09:59:00Z"
    entry["memory"] = {"time": NOW, "workingSetBytes": 2 * MI}
    api.summaries["node-0"] = summary("node-0", NOW, [entry])
    assert kubelet_source(api.kube(), api.pki).fetch(recs)["uid-0"].timestamp == NOW_TS - 60  # type: ignore[operator]


def test_kubelet_lagging_pod_time_does_not_date_the_sample(api: KubeletApiServer) -> None:
    """Issue #9: a new pod's pod-level time is the second it started while its figure is current;
    the sample is dated by its containers' measurements."""
    recs = records(1, nodes=1)
    entry = summary_pod("shop", "p0", "uid-0", NOW, {"app": 118 * MI})
    entry["memory"] = {"time": "2026-11-28T09:59:48Z", "workingSetBytes": 118 * MI}
    api.summaries["node-0"] = summary("node-0", NOW, [entry])
    assert kubelet_source(api.kube(), api.pki).fetch(recs)["uid-0"].timestamp == NOW_TS


@pytest.mark.parametrize("mangle", [
    lambda e: e["containers"][0]["memory"].update(workingSetBytes="300Mi"),
    lambda e: [c["memory"].pop("time") for c in e["containers"]],
    lambda e: e.update(containers=[]),
    lambda e: e["containers"][0].pop("name"),
    lambda e: e["podRef"].pop("uid"),
])
def test_malformed_kubelet_entries_are_ignored(api: KubeletApiServer,
                                               mangle: Callable[[dict[str, Any]], Any]) -> None:
    recs = records(2, nodes=1)
    serve_summaries(api, recs, nodes=1)
    for entry in api.summaries["node-0"]["pods"]:
        entry.pop("memory", None)
    mangle(api.summaries["node-0"]["pods"][0])
    out = kubelet_source(api.kube(), api.pki).fetch(recs)
    assert "uid-1" in out
    if "uid-0" in out:  # a container without a usable figure is simply missing, never invented
        assert out["uid-0"].containers == {"side": 20 * MI}


def test_kubelet_node_failures(api: KubeletApiServer, caplog: pytest.LogCaptureFixture) -> None:
    recs = records(6, nodes=3)
    serve_summaries(api, recs, nodes=3)
    del api.summaries["node-1"]
    api.summaries["node-2"] = "{not json"
    out = kubelet_source(api.kube(), api.pki).fetch(recs)
    assert {r.node for r in recs if r.uid in out} == {"node-0"}
    assert ('kubelet source: node node-1 failed: reading its Node: HTTP 404 Not Found: nodes "node-1" not found'
            in caplog.text)
    assert "kubelet source: node node-2 failed" in caplog.text and "node-0" not in caplog.text
    api.summaries.clear()
    with pytest.raises(SourceError, match="every node failed"):
        kubelet_source(api.kube(), api.pki).fetch(recs)


# ---------------------------------------------------------------------------------------------
# auto: metrics-api while it is served, else kubelet, and switch when it comes or goes


def test_auto_source_picks_and_switches(api: KubeletApiServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="memwatch")
    kube = api.kube()
    recs = records(4, nodes=2)
    serve_metrics(api, recs)
    serve_summaries(api, recs, nodes=2)
    clock = FakeClock()
    auto = auto_source(kube, api.pki)
    assert isinstance(auto, AutoSource)
    auto.clock = clock
    auto.recheck_seconds = 60.0

    assert next(iter(auto.fetch(recs).values())).source == "metrics-api"
    assert "source auto: using metrics-api (metrics.k8s.io/v1beta1 is served)" in caplog.text
    discovery = len(api.requests("GET", METRICS))
    auto.fetch(recs)
    assert len(api.requests("GET", METRICS)) == discovery, "no discovery request before the recheck is due"

    # metrics-server goes away: the failing sweep raises, the next one rechecks and uses kubelet.
    api.metrics_served = False
    with pytest.raises(SourceError):
        auto.fetch(recs)
    assert next(iter(auto.fetch(recs).values())).source == "kubelet"
    assert "source auto: using kubelet (metrics.k8s.io/v1beta1 is not served)" in caplog.text

    # It comes back: picked up at the next recheck, not before.
    api.metrics_served = True
    clock.advance(30)
    assert next(iter(auto.fetch(recs).values())).source == "kubelet"
    clock.advance(31)
    assert next(iter(auto.fetch(recs).values())).source == "metrics-api"
    assert caplog.text.count("source auto: using metrics-api") == 2


def test_auto_source_starts_on_kubelet_without_metrics_server(api: KubeletApiServer) -> None:
    api.metrics_served = False
    recs = records(2, nodes=1)
    serve_summaries(api, recs, nodes=1)
    auto = auto_source(api.kube(), api.pki)
    assert {u.source for u in auto.fetch(recs).values()} == {"kubelet"}
    assert api.requests("GET", METRICS_PODS) == []


# ---------------------------------------------------------------------------------------------
# The watcher: paged LIST, WATCH with bookmarks, 410 → re-list; the index keeps annotated pods


def cluster(n: int, every: int = 10) -> list[dict[str, Any]]:
    """n pods; every `every`-th carries a memwatch annotation."""
    return [make_pod(f"p{i}", "shop", uid=f"uid-{i}", annotations={"memwatch.io/limit": "512Mi"}
                     if i % every == 0 else {"team": "x"}) for i in range(n)]


def test_paged_list_keeps_only_annotated_pods(api: FakeApiServer) -> None:
    api.pods = cluster(1234)
    index = PodIndex(Defaults(), Protections().reason)
    watcher = PodWatcher(api.kube(), index, label_selector="tier=web")
    watcher.list_once()
    pages = api.requests("GET", "/api/v1/pods")
    assert len(pages) == 3
    assert [p.query.get("continue") for p in pages] == [None, "500", "1000"]
    assert all(p.query["limit"] == "500" for p in pages)
    assert all(p.query["fieldSelector"] == ACTIVE_PODS and p.query["labelSelector"] == "tier=web" for p in pages)
    assert len(index) == 124 and watcher.resource_version == "1000" and watcher.synced.is_set()


def test_namespaced_watcher_lists_its_namespace(api: FakeApiServer) -> None:
    api.pods = cluster(10, every=1)
    watcher = PodWatcher(api.kube(), PodIndex(Defaults(), Protections().reason), namespace="shop")
    watcher.list_once()
    assert [r.path for r in api.requests()] == ["/api/v1/namespaces/shop/pods"]


def _ev(kind: str, pod: dict[str, Any], rv: str) -> dict[str, Any]:
    pod = {**pod, "metadata": {**pod["metadata"], "resourceVersion": rv}}
    return {"type": kind, "object": pod}


def test_watch_events_update_the_index(api: FakeApiServer) -> None:
    api.pods = cluster(20)  # p0 and p10 watched
    index = PodIndex(Defaults(), Protections().reason)
    watcher = PodWatcher(api.kube(), index)
    watcher.list_once()
    assert {r.name for r in index.snapshot()} == {"p0", "p10"}
    new = make_pod("new", "shop", uid="uid-new")
    plain = make_pod("plain", "shop", uid="uid-plain", annotations={})
    p0_unannotated = make_pod("p0", "shop", uid="uid-0", annotations={"team": "x"})
    api.watch_scripts.append([
        _ev("ADDED", new, "1001"),
        _ev("ADDED", plain, "1002"),
        _ev("MODIFIED", p0_unannotated, "1003"),  # annotation removed: no longer watched
        _ev("DELETED", api.pods[10], "1004"),
        {"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "1050"}}},
    ])
    watcher.watch_once()
    assert {r.name for r in index.snapshot()} == {"new"}
    assert watcher.resource_version == "1050"
    (watch,) = api.requests("GET", "/api/v1/pods")[1:]
    assert watch.query["watch"] == "true" and watch.query["allowWatchBookmarks"] == "true"
    assert watch.query["resourceVersion"] == "1000"


def test_watch_410_raises_gone(api: FakeApiServer) -> None:
    api.pods = cluster(3)
    watcher = PodWatcher(api.kube(), PodIndex(Defaults(), Protections().reason))
    watcher.list_once()
    api.watch_scripts.append([{"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                           "message": "too old resource version: 1 (5)",
                                                           "reason": "Expired", "code": 410}}])
    with pytest.raises(Gone):
        watcher.watch_once()


def test_run_relists_after_410_and_lifecycle_state_survives(api: FakeApiServer) -> None:
    api.pods = cluster(30)
    index = PodIndex(Defaults(), Protections().reason)
    watcher = PodWatcher(api.kube(), index, watch_timeout=1)
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}}
    added = make_pod("late", "shop", uid="uid-late")
    api.watch_scripts.extend([[_ev("ADDED", added, "1001"), gone]])
    lives = Lifecycle(ManualClock(), max_gap=15.0)

    def relisted() -> bool:
        if index.get("uid-0") is not None and lives.peek("uid-0") is None:
            lives.mark_done("uid-0", "evicted")  # acted on between the lists
        return watcher.lists >= 2

    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        wait_for(relisted)
    finally:
        watcher.stop()
        thread.join(timeout=5)
    assert not thread.is_alive()
    lists = [r for r in api.requests("GET", "/api/v1/pods") if r.query.get("watch") != "true"]
    assert len(lists) >= 2
    # The re-list is the truth: "late" came only from the watch and is not in the LIST, so it is gone.
    assert {r.name for r in index.snapshot()} == {"p0", "p10", "p20"}
    lives.retain(r.uid for r in index.snapshot())
    life = lives.peek("uid-0")
    assert life is not None and life.result == "evicted", "lifecycle state (keyed by UID) survives a re-list"
    assert all(r.method == "GET" for r in api.requests()), "the watcher never writes"


# ---------------------------------------------------------------------------------------------
# Request counting (what the structural guards and the benchmarks read)


@pytest.mark.parametrize(("path", "resource"), [
    ("/api/v1/pods", "pods"),
    ("/api/v1/namespaces/shop/pods", "pods"),
    ("/api/v1/namespaces/shop/pods/web/eviction", "pods/eviction"),
    ("/api/v1/namespaces/events/pods/proxy/eviction", "pods/eviction"),  # names that look like resources
    ("/api/v1/namespaces/shop/pods/events", "pods"),
    ("/api/v1/namespaces/shop/events", "events"),
    ("/api/v1/nodes/node-1/proxy/stats/summary", "nodes/proxy"),
    ("/api/v1/nodes/node-1", "nodes"),
    ("/apis/metrics.k8s.io/v1beta1/pods", "metrics.k8s.io/pods"),
    ("/apis/metrics.k8s.io/v1beta1/namespaces/shop/pods", "metrics.k8s.io/pods"),
    ("/apis/metrics.k8s.io/v1beta1", "metrics.k8s.io"),  # discovery is not a usage read
    ("/apis/policy/v1", "policy"),
    ("/apis/coordination.k8s.io/v1/namespaces/ops/leases/memwatch", "leases"),
])
def test_requests_are_counted_by_resource(path: str, resource: str) -> None:
    from memwatch.kube import _resource_of

    assert _resource_of(path) == resource


@pytest.mark.parametrize(("path", "resource"), [
    ("/stats/summary", "nodes/stats"),
    ("/metrics/resource", "nodes/metrics"),
    ("/logs/", "nodes/log"),
    ("/pods", "nodes/proxy"),
    ("/configz", "nodes/proxy"),
    ("/exec/ns/pod/c?command=id", "nodes/proxy"),
])
def test_kubelet_requests_are_counted_as_the_kubelet_authorizes_them(path: str, resource: str) -> None:
    from memwatch.kube import _kubelet_resource

    assert _kubelet_resource(path) == resource


def test_auto_source_discovery_is_not_counted_as_a_usage_read(api: KubeletApiServer) -> None:
    kube = api.kube()
    recs = records(100)
    serve_metrics(api, recs)
    auto = auto_source(kube, api.pki)
    for sweep in range(1, 4):
        auto.fetch(recs)
        assert kube.request_count("GET", "metrics.k8s.io/pods") == sweep
    assert kube.request_count("GET", "metrics.k8s.io") == 1


@pytest.mark.parametrize(("served", "version"), [(True, "policy/v1"), (False, "policy/v1beta1")])
def test_eviction_uses_policy_v1_where_served_else_v1beta1(api: FakeApiServer, served: bool, version: str) -> None:
    api.policy_v1_served = served
    kube = api.kube()
    for name in ("a", "b"):
        result = kube.evict("shop", name, f"uid-{name}", 7)
        assert result.ok and result.status == 201
    evictions = api.requests("POST")
    assert [r.path for r in evictions] == ["/api/v1/namespaces/shop/pods/a/eviction",
                                           "/api/v1/namespaces/shop/pods/b/eviction"]
    body = evictions[0].body
    assert body["apiVersion"] == version and body["kind"] == "Eviction"
    assert body["deleteOptions"] == {"preconditions": {"uid": "uid-a"}, "gracePeriodSeconds": 7}
    assert len(api.requests("GET", "/apis/policy/v1")) == 1, "discovery once, not per eviction"


def test_eviction_results_over_http(api: FakeApiServer) -> None:
    kube = api.kube()
    api.eviction.update({"pdb": deque([429]), "gone": deque([404]),
                         "err": deque([500])})
    blocked, gone, err = (kube.evict("shop", n, "u", None) for n in ("pdb", "gone", "err"))
    assert blocked.blocked and not blocked.ok and "disruption budget" in blocked.message
    assert gone.gone and not gone.ok
    assert not err.ok and err.status == 500 and not err.blocked and not err.gone


# ---------------------------------------------------------------------------------------------
# Samples that may belong to another pod (issue #9, defect 3): a window that began before the pod,
# or one of its containers, (re)started is skipped and counted, never acted on.


def started_pod(name: str, uid: str, start: str, containers: dict[str, str | None],
                sidecars: dict[str, str] | None = None, phase: str = "Running") -> dict[str, Any]:
    """A pod with status.startTime and each container's running.startedAt (None: not running)."""
    pod = make_pod(name, "shop", uid=uid, node="node-0", phase=phase,
                   containers=[(c, "1Gi") for c in containers])
    status = pod["status"]
    if start:
        status["startTime"] = start
    status["containerStatuses"] = [
        {"name": c, "containerID": f"containerd://{uid}-{c}",
         "state": {"running": {"startedAt": t}} if t else {"waiting": {"reason": "CrashLoopBackOff"}}}
        for c, t in containers.items()]
    if sidecars:
        status["initContainerStatuses"] = [{"name": c, "state": {"running": {"startedAt": t}}}
                                           for c, t in sidecars.items()]
    return pod


def record_of(pod: dict[str, Any]) -> PodRecord:
    rec = build_record(pod, Defaults(), Protections().reason)
    assert rec is not None
    return rec


def test_record_keeps_pod_and_container_start_times() -> None:
    rec = record_of(started_pod("db-0", "u1", "2026-11-28T09:59:00Z",
                                {"app": "2026-11-28T09:59:05Z", "crashing": None},
                                sidecars={"proxy": "2026-11-28T09:59:02Z"}))
    assert rec.started_at == NOW_TS - 60  # type: ignore[operator]
    assert dict(rec.containers_started) == {"app": NOW_TS - 55, "proxy": NOW_TS - 58}  # type: ignore[operator]
    assert record_of(make_pod("plain", "shop")).started_at is None


def test_metrics_sample_of_a_predecessor_is_skipped(api: FakeApiServer) -> None:
    """db-0 recreated 10 s ago: metrics-server still has its predecessor's 15 s window."""
    old = record_of(started_pod("db-0", "new-uid", "2026-11-28T09:59:50Z", {"app": "2026-11-28T09:59:51Z"}))
    fine = record_of(started_pod("web-0", "web-uid", "2026-11-28T09:00:00Z", {"app": "2026-11-28T09:00:01Z"}))
    api.pod_metrics = [pod_metrics("shop", "db-0", NOW, {"app": "900Mi"}, window="15s"),
                       pod_metrics("shop", "web-0", NOW, {"app": "100Mi"}, window="15s")]
    source = MetricsApiSource(api.kube())
    out = source.fetch([old, fine])
    assert set(out) == {"web-uid"}
    assert source.skipped == {"predates-pod": 1}
    # A later window, begun after the pod started, counts; the counter is per fetch.
    api.pod_metrics[0] = pod_metrics("shop", "db-0", "2026-11-28T10:00:10Z", {"app": "120Mi"}, window="15s")
    assert set(source.fetch([old, fine])) == {"new-uid", "web-uid"} and source.skipped == {}


def test_metrics_sample_before_a_container_restart_is_skipped(api: FakeApiServer) -> None:
    # The pod is old, but `app` restarted 5 s ago (OOM-killed, say) and the sidecar 20 s ago.
    rec = record_of(started_pod("db-0", "u1", "2026-11-28T09:00:00Z", {"app": "2026-11-28T09:59:55Z"},
                                sidecars={"proxy": "2026-11-28T09:59:40Z"}))
    api.pod_metrics = [pod_metrics("shop", "db-0", NOW, {"app": "900Mi", "proxy": "10Mi"}, window="15s")]
    source = MetricsApiSource(api.kube())
    assert source.fetch([rec]) == {} and source.skipped == {"predates-pod": 1}
    # Only the sidecar restarted, 20 s ago: the 15 s window began after it.
    rec = record_of(started_pod("db-0", "u1", "2026-11-28T09:00:00Z", {"app": "2026-11-28T09:00:01Z"},
                                sidecars={"proxy": "2026-11-28T09:59:40Z"}))
    assert set(source.fetch([rec])) == {"u1"} and source.skipped == {}


def test_metrics_sample_for_a_pod_not_started_yet_is_skipped(api: FakeApiServer) -> None:
    pending = record_of(started_pod("db-0", "u1", "", {"app": None}, phase="Pending"))
    api.pod_metrics = [pod_metrics("shop", "db-0", NOW, {"app": "900Mi"})]
    source = MetricsApiSource(api.kube())
    assert source.fetch([pending]) == {} and source.skipped == {"predates-pod": 1}


def test_predecessor_sample_never_evicts_the_replacement(api: FakeApiServer, clock: FakeClock) -> None:
    """End to end through the sweep: the healthy replacement is not evicted on its predecessor's data."""
    kube = FakeKube(clock)
    rig = Rig(kube, clock, source=MetricsApiSource(api.kube()))
    rig.add(started_pod("db-0", "new-uid", "2026-11-28T09:59:55Z", {"app": "2026-11-28T09:59:56Z"}))
    api.pod_metrics = [pod_metrics("shop", "db-0", NOW, {"app": "900Mi"})]  # over the 512Mi limit
    clock.now = NOW_TS + 1  # type: ignore[operator]
    rig.sweep()
    assert kube.writes() == []


def test_kubelet_sample_from_before_a_container_restart_is_skipped(api: KubeletApiServer) -> None:
    rec = record_of(started_pod("db-0", "u1", "2026-11-28T09:00:00Z", {"app": "2026-11-28T10:00:00Z"}))
    fine = record_of(started_pod("db-1", "u2", "2026-11-28T09:00:00Z", {"app": "2026-11-28T09:00:01Z"}))
    api.summaries["node-0"] = summary("node-0", NOW, [
        summary_pod("shop", "db-0", "u1", "2026-11-28T09:59:58Z", {"app": 900 * MI}),
        summary_pod("shop", "db-1", "u2", "2026-11-28T09:59:58Z", {"app": 100 * MI})])
    source = kubelet_source(api.kube(), api.pki)
    assert set(source.fetch([rec, fine])) == {"u2"}
    assert source.skipped == {"predates-pod": 1}


def test_a_quiet_watch_ends_on_the_servers_deadline_before_its_silence_counts(api: FakeApiServer) -> None:
    """Before 1.27 the API server sends a quiet watch its one bookmark just before timeoutSeconds:
    a timeout above WATCH_SILENCE made every quiet watch a "stalled" warning. Each WATCH now asks
    for a deadline under the silence, drawn anew (reconnects do not line up)."""
    from memwatch.watcher import WATCH_SILENCE

    api.pods = cluster(1)
    watcher = PodWatcher(api.kube(), PodIndex(Defaults(), Protections().reason))
    watcher.list_once()
    for _ in range(8):
        api.watch_scripts.append([])
        watcher.watch_once()
    timeouts = [int(r.query["timeoutSeconds"]) for r in api.requests("GET", "/api/v1/pods")
                if r.query.get("watch") == "true"]
    assert len(timeouts) == 8 and len(set(timeouts)) > 1, timeouts
    assert all(WATCH_SILENCE / 2 <= t < WATCH_SILENCE for t in timeouts), timeouts
