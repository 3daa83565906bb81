"""The node guard's pure parts: lines, assessment, victim order (no cgroups, no API)."""

from __future__ import annotations

from typing import Any

import pytest

from memwatch.nodeguard import (
    ONLY,
    Candidate,
    GuardConfig,
    Level,
    Line,
    Mode,
    NodePod,
    NodePods,
    assess,
    choose_victim,
    eligible,
    node_event,
    node_pod,
)
from memwatch.nodesignals import NodeSignals, Psi, parse_psi
from memwatch.podindex import build_record
from memwatch.policy import Defaults, is_watched, resolve
from memwatch.protections import Protections

MiB = 1 << 20
GiB = 1 << 30


def pod(name: str, priority: int = 0, qos: str = "Burstable", requests: int = 0, annotation: str | None = None,
        protected: str | None = None, terminating: bool = False) -> NodePod:
    return NodePod(uid=f"uid-{name}", namespace="ns", name=name, priority=priority, qos=qos, requests=requests,
                   node_pressure=annotation, protected=protected, terminating=terminating)


def cand(name: str, usage_mib: int, **kw: Any) -> Candidate:
    return Candidate(pod(name, **kw), usage_mib * MiB)


# -- lines ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "free_of_4gi"), [("10%", 4 * GiB // 10), ("500Mi", 500 * MiB), ("1Gi", GiB),
                                                   ("2.5%", int(4 * GiB * 0.025))])
def test_line_parses_bytes_and_percentages(text: str, free_of_4gi: int) -> None:
    assert Line.parse(text).free(4 * GiB) == free_of_4gi


@pytest.mark.parametrize("text", ["", "10Q", "0%", "100%", "-5%", "ten%", "1e3%", "%"])
def test_line_refuses_garbage_with_a_message(text: str) -> None:
    with pytest.raises(ValueError, match=r"percentage|bytes"):
        Line.parse(text)


def test_config_refuses_a_hard_line_above_the_soft_line() -> None:
    with pytest.raises(ValueError, match="hard line must be the lower one"):
        GuardConfig(Mode.ON, Line.parse("5%"), Line.parse("10%"))
    with pytest.raises(ValueError, match="hard line must be the lower one"):
        GuardConfig(Mode.ON, Line.parse("100Mi"), Line.parse("200Mi"))
    GuardConfig(Mode.ON, Line.parse("10%"), Line.parse("100Mi"))  # mixed units: compared per total, at run time


def test_config_refuses_a_wait_shorter_than_the_grace_period() -> None:
    with pytest.raises(ValueError, match="shorter than --node-guard-grace"):
        GuardConfig(Mode.ON, grace=30, wait=10.0)


def sig(avail: int | None = 20 * GiB, total: int = 24 * GiB, kp_usage: int | None = None,
        kp_limit: int | None = None, full: float = 0.0) -> NodeSignals:
    psi = Psi(0.0, 0.0, 0, full, 0.0, 0)
    return NodeSignals(1.0, total, avail, kp_usage, kp_limit, psi)


def test_assess_node_memavailable_against_both_lines() -> None:
    cfg = GuardConfig(Mode.ON, Line.parse("10%"), Line.parse("5%"))
    assert assess(sig(avail=10 * GiB), cfg)[0] is Level.OK
    level, why = assess(sig(avail=2 * GiB), cfg)
    assert level is Level.SOFT and "node MemAvailable" in why and "soft line" in why
    assert assess(sig(avail=GiB), cfg)[0] is Level.HARD


def test_assess_kubepods_against_its_own_limit() -> None:
    cfg = GuardConfig(Mode.ON, Line.parse("10%"), Line.parse("5%"))
    # the node has plenty; kubepods has 150Mi of room under its 2Gi limit: past soft (205Mi), not hard (102Mi)
    level, why = assess(sig(kp_usage=2 * GiB - 150 * MiB, kp_limit=2 * GiB), cfg)
    assert level is Level.SOFT and "kubepods" in why
    assert assess(sig(kp_usage=2 * GiB - 50 * MiB, kp_limit=2 * GiB), cfg)[0] is Level.HARD
    assert assess(sig(kp_usage=GiB, kp_limit=2 * GiB), cfg)[0] is Level.OK
    assert assess(sig(kp_usage=3 * GiB, kp_limit=None), cfg)[0] is Level.OK  # no limit: node figures only


def test_assess_bytes_lines_and_psi() -> None:
    cfg = GuardConfig(Mode.ON, Line.parse("300Mi"), Line.parse("100Mi"), psi_full=20.0)
    assert assess(sig(avail=250 * MiB), cfg)[0] is Level.SOFT
    assert assess(sig(avail=50 * MiB), cfg)[0] is Level.HARD
    level, why = assess(sig(full=25.0), cfg)
    assert level is Level.SOFT and "full avg10=25.00%" in why
    assert assess(sig(full=5.0), cfg)[0] is Level.OK
    assert assess(sig(full=99.0), GuardConfig(Mode.ON))[0] is Level.OK  # no PSI line: PSI alone never acts


def test_assess_with_no_signal_at_all_is_ok() -> None:
    assert assess(NodeSignals(1.0), GuardConfig(Mode.ON))[0] is Level.OK


def test_psi_parse() -> None:
    p = parse_psi("some avg10=1.50 avg60=0.30 avg300=0.00 total=123\nfull avg10=0.75 avg60=0.10 avg300=0.00 total=45\n")
    assert (p.some_avg10, p.full_avg10, p.some_total, p.full_total, p.full_avg60) == (1.5, 0.75, 123, 45, 0.1)
    from memwatch.cgroups import Unreadable
    with pytest.raises(Unreadable):
        parse_psi("garbage")
    with pytest.raises(Unreadable):
        parse_psi("some avg10=x avg60=0 total=0")


# -- victim order ----------------------------------------------------------------------------------


def test_annotation_evict_comes_first() -> None:
    c = choose_victim([cand("big", 900), cand("volunteer", 10, priority=1000, qos="Guaranteed", annotation="evict")])
    assert c is not None and c.victim.pod.name == "volunteer" and c.rule == "node-pressure-evict"


def test_lowest_priority_next() -> None:
    c = choose_victim([cand("high", 900, priority=100), cand("low", 10, priority=-5, qos="Guaranteed")])
    assert c is not None and c.victim.pod.name == "low" and c.rule == "lowest-priority"


def test_qos_class_next() -> None:
    c = choose_victim([cand("g", 900, qos="Guaranteed"), cand("bu", 900, qos="Burstable"),
                       cand("be", 10, qos="BestEffort")])
    assert c is not None and c.victim.pod.name == "be" and c.rule == "qos-class"


def test_usage_above_requests_next() -> None:
    # "big" uses more, but "over" is further above what it asked for
    c = choose_victim([cand("big", 900, requests=850 * MiB), cand("over", 300, requests=0)])
    assert c is not None and c.victim.pod.name == "over" and c.rule == "usage-above-requests"


def test_largest_usage_last() -> None:
    c = choose_victim([cand("a", 300, requests=100 * MiB), cand("b", 400, requests=200 * MiB)])
    assert c is not None and c.victim.pod.name == "b" and c.rule == "largest-usage"


def test_full_order_on_a_mixed_node() -> None:
    pods = [cand("hog", 1500, priority=0, qos="BestEffort"),
            cand("service", 400, priority=1000, requests=300 * MiB),
            cand("precious", 3000, priority=0, qos="BestEffort", annotation="never"),
            cand("system", 5000, priority=2_000_000_000, protected="priority is system-critical"),
            cand("leaving", 4000, terminating=True)]
    order = []
    exclude: set[str] = set()
    while (c := choose_victim(pods, exclude)) is not None:
        order.append((c.victim.pod.name, c.rule))
        exclude.add(c.victim.pod.uid)
    assert order == [("hog", "lowest-priority"), ("service", ONLY)]


def test_never_protected_never_annotated_never_invalid() -> None:
    assert choose_victim([cand("p", 900, protected="memwatch's own pod")]) is None
    assert choose_victim([cand("n", 900, annotation="never")]) is None
    assert choose_victim([cand("typo", 900, annotation="invalid")]) is None
    assert eligible(cand("n", 1, annotation="never")) == "memwatch.io/node-pressure: never"
    assert "treated as never" in (eligible(cand("t", 1, annotation="invalid")) or "")


def test_choice_is_deterministic_on_a_tie() -> None:
    a, b = cand("a", 100), cand("b", 100)
    first = choose_victim([a, b])
    assert first is not None and first == choose_victim([b, a])
    assert first.rule == "largest-usage"


# -- pods from the API ------------------------------------------------------------------------------


def raw(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"uid": "u1", "name": "p", "namespace": "ns", "annotations": annotations or {}},
            "spec": {"nodeName": "n1", "containers": [
                {"name": "a", "resources": {"requests": {"memory": "100Mi"}}},
                {"name": "b", "resources": {"requests": {"memory": "28Mi"}}}], **spec},
            "status": {"phase": "Running", "qosClass": "Burstable"}}


def test_node_pod_from_the_api() -> None:
    p = node_pod(raw({"memwatch.io/node-pressure": " Evict "}, priority=7, terminationGracePeriodSeconds=60),
                 Protections().reason)
    assert p is not None
    assert (p.priority, p.qos, p.requests, p.grace, p.node_pressure, p.protected) == (7, "Burstable", 128 * MiB,
                                                                                     60, "evict", None)
    typo = node_pod(raw({"memwatch.io/node-pressure": "nevr"}), Protections().reason)
    assert typo is not None and typo.node_pressure == "invalid"
    done = raw()
    done["status"]["phase"] = "Succeeded"
    assert node_pod(done, Protections().reason) is None


def test_node_pods_sink_follows_list_and_watch() -> None:
    sink = NodePods(Protections().reason)
    sink.replace(iter([raw()]), lambda r: True)
    assert len(sink) == 1
    sink.remove(raw())
    assert len(sink) == 0


def test_node_pressure_alone_is_not_a_watch_annotation() -> None:
    """A pod annotated only for the node guard is not watched (no 'no watch limit' Event), and the key is known."""
    ann = {"memwatch.io/node-pressure": "never"}
    assert not is_watched(ann)
    assert build_record(raw(ann), Defaults(), Protections().reason) is None
    policy = resolve({"memwatch.io/limit": "100Mi", "memwatch.io/node-pressure": "never"}, ())
    assert policy.warnings == ()
    typo = resolve({"memwatch.io/limit": "100Mi", "memwatch.io/node-pressure": "nevr"}, ())
    assert any("treats it as never" in w for w in typo.warnings)


def test_node_event_is_on_the_node_in_default() -> None:
    ev = node_event("n1", "MemwatchNodePressure", "x" * 2000, True, "agent-1")
    assert ev["metadata"]["namespace"] == "default"
    assert ev["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "n1"}
    assert len(ev["message"]) == 1024 and ev["type"] == "Warning"
