"""MetricsApiSource reads metrics-server's own form of an item inline (one container, `<digits>Ki`,
a timestamp and window parsed already for an earlier item) and every other item through
``_sample``: both must give the very same sample for every item, odd ones included."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

from memwatch.podindex import PodIndex
from memwatch.policy import Defaults
from memwatch.sources import MetricsApiSource, _podmetrics_items

MEMORY = ["0Ki", "16388Ki", "000123Ki", "\uff11\uff12Ki", "12ki", "1Mi", "Ki", "-5Ki", "1.5Ki",
          "99999999999999Ki", "999999999999999Ki", "9999999999999999Ki", "12Ki "]
WINDOWS: list[Any] = ["15s", "10.036s", None, "garbled"]
NOW = time.time()
STAMPS = [time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - 5)), "not-a-time"]


def _at(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - seconds_ago))


def _running(name: str, seconds_ago: float) -> dict[str, Any]:
    return {"name": name, "state": {"running": {"startedAt": _at(seconds_ago)}}}


#: How the pod and its containers started, against the samples' windows (which begin 5 s to 20 s ago):
#: long before; the pod within the window; the sampled container restarted within it; another
#: container restarted within it (the sample is still the pod's own); not started; start unknown.
STARTS: list[tuple[str, str | None, list[dict[str, Any]]]] = [
    ("Running", _at(86400), [_running("app", 86400)]),
    ("Running", _at(10), [_running("app", 10)]),
    ("Running", _at(86400), [_running("app", 10)]),
    ("Running", _at(86400), [_running("app", 86400), _running("side", 10)]),
    ("Pending", None, []),
    ("Running", None, [_running("app", 86400)]),
]


def _pod(i: int, start: tuple[str, str | None, list[dict[str, Any]]]) -> dict[str, Any]:
    phase, started, statuses = start
    status: dict[str, Any] = {"phase": phase, "containerStatuses": statuses}
    if started is not None:
        status["startTime"] = started
    return {"metadata": {"name": f"p-{i}", "namespace": "ns", "uid": f"uid-{i}",
                         "annotations": {"memwatch.io/limit": "64Mi"}},
            "spec": {"nodeName": "n", "containers": [{"name": "app"}, {"name": "side"}]},
            "status": status}


class _Kube:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def get_bytes(self, path: str, query: Any = None, timeout: float | None = None) -> bytes:
        return self.body


def test_the_inline_read_gives_what_the_careful_one_gives_for_every_item() -> None:
    combos = list(itertools.product(MEMORY, WINDOWS, STAMPS, STARTS))
    # Each combination twice in a row: the second finds its timestamp and window parsed already.
    twice = [c for c in combos for _ in (0, 1)]
    items = [{"metadata": {"name": f"p-{i}", "namespace": "ns"}, "timestamp": ts, "window": window,
              "containers": [{"name": "app", "usage": {"cpu": "1m", "memory": memory}}]}
             for i, (memory, window, ts, _) in enumerate(twice)]
    body = json.dumps({"kind": "PodMetricsList", "items": items}).encode()
    index = PodIndex(Defaults(), lambda pod: None)
    index.replace((_pod(i, start) for i, (*_, start) in enumerate(twice)), lambda rec: True)
    records = index.snapshot()
    source = MetricsApiSource(_Kube(body))  # type: ignore[arg-type]
    got = source.fetch(records)
    decoded, exact = _podmetrics_items(body, {})
    assert exact, "metrics-server's own form"
    by_name = {r.name: r for r in records}
    for i, item in enumerate(decoded):
        rec = by_name[item.metadata.name]
        want = MetricsApiSource(_Kube(b""))._sample(rec, item, {}, {None: 0.0})  # type: ignore[arg-type]
        have = got.get(rec.uid)
        assert (have is None) == (want is None), (items[i], have, want)
        if want is not None and have is not None:
            assert (have.containers, have.timestamp, have.source, have.total) == \
                (want.containers, want.timestamp, want.source, want.total), items[i]
    assert len(got) >= 2 * len(STAMPS[:1]) * 3, "the well-formed items have samples"
    assert source.skipped["predates-pod"] > 0, "some samples may be a predecessor's, and are left out"
