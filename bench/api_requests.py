"""Row 2: API requests per sweep against the real kube-apiserver, at 10 … 10,000 annotated pods.

`memwatch run` runs as a child process through a :class:`~common.CountingProxy` (an independent
count, cross-checked against the apiserver's audit log where it exists). The pods are Pending pods
bound to four fake nodes; a server-side label selector (``bench.memwatch.io/upto-N``) gives the
controller exactly N of them. For each size it measures, over several steady-state sweeps:

* usage requests per sweep, ``--source metrics-api`` (the proxy serves PodMetrics itself);
* usage requests per sweep, ``--source kubelet``: one Summary GET per fake node, sent straight to
  that node's kubelet as metrics-server does (never through the API server's node proxy), so they
  are counted at :class:`~common.FakeKubelets`, which stand in for the kubelets at the addresses the
  fake Nodes' status gives;
* every request per steady-state sweep, and every write to a pod over the process's life.

Baseline: a per-pod poller (one GET of each pod's PodMetrics per sweep) really run through the
same proxy for the sizes up to 1,000; at 10,000 its count is extrapolated (N requests).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    FAKE_NODES,
    LABEL,
    AuditTail,
    Context,
    CountingProxy,
    FakeKubelets,
    Row,
    free_port,
    is_pod_write,
    memwatch_run,
    met,
    ratio,
    scrape,
    wait_sweeps,
)

NAME = "api-requests"
SWEEPS = 5
BASELINE_MAX_MEASURED = 1000


def _steady(ctx: Context, n: int, source: str) -> dict[str, float]:
    """One controller at ``n`` watched pods: per-sweep counts over SWEEPS steady-state sweeps."""
    pods = ctx.farm.watched("annotated", n)
    proxy = CountingProxy(ctx.api, f"req-{source}-{n}-{os.getpid()}-{int(time.time())}")
    proxy.metrics.set_pods(pods)
    port = free_port()
    kubelets = FakeKubelets() if source == "kubelet" else None
    extra: list[str] = []
    if kubelets is not None:  # the kubelet source reads each node's kubelet directly, as metrics-server does
        kubelets.point_nodes(ctx.api)
        extra = ["--kubelet-insecure-tls"]
    proc = memwatch_run(proxy.kubeconfig(), "--source", source, "--label-selector", f"{LABEL}upto-{n}=yes",
                        "--interval", "1s", "--dry-run", *extra, metrics_port=port)
    try:
        with proc:
            proc.wait_for(r"ready: first sweep", 120 + n / 50)
            warm = wait_sweeps(port, 2, 60)
            s0 = wait_sweeps(port, warm + 1, 30)
            before = proxy.snapshot()
            k0 = kubelets.summaries() if kubelets else 0
            audit = AuditTail(proxy.user_agent)
            s1 = wait_sweeps(port, s0 + (3 if ctx.quick else SWEEPS), 60)
            after = proxy.snapshot()
            k1 = kubelets.summaries() if kubelets else 0
            watched = int(scrape(port, "memwatch_watched_pods"))
        audited = audit.count()
    finally:
        proxy.close()
        if kubelets is not None:
            kubelets.close()
    window: Counter[tuple[str, str]] = after - before
    sweeps = s1 - s0
    usage = window[("list", "podmetrics")] if source == "metrics-api" else k1 - k0
    out = {
        "watched": watched,
        "usage": usage / sweeps,
        "total": (sum(window.values()) + (k1 - k0 if kubelets else 0)) / sweeps,
        "pod_writes": sum(c for (v, r), c in after.items() if is_pod_write(v, r)),
        "all_writes": sum(c for (v, _), c in window.items() if v not in ("get", "list", "watch")),
        "per_pod_gets": sum(c for (v, r), c in window.items() if v == "get" and r in ("pods", "podmetrics")),
    }
    if audited is not None and source == "kubelet":
        # What reached the API server from this controller in the window: no nodes/proxy at all (the
        # Summary GETs go to the kubelets, counted there), Node GETs only when their cache expires.
        out["audit_proxy"] = audited[("get", "nodes/proxy")] / sweeps
    ctx.log(f"  {source:11s} n={n:>5}: watched={watched} usage/sweep={out['usage']:.2f} "
            f"total/sweep={out['total']:.2f} pod-writes={out['pod_writes']} window={dict(window)}"
            + (f" audit nodes/proxy/sweep={out['audit_proxy']:.2f}" if "audit_proxy" in out else ""))
    return out


def _baseline(ctx: Context, n: int) -> int:
    """A per-pod poller's sweep: one GET of each pod's PodMetrics, counted by the proxy."""
    from memwatch.kube import Kube, load_client

    pods = ctx.farm.watched("annotated", n)
    proxy = CountingProxy(ctx.api, f"req-baseline-{n}-{os.getpid()}")
    try:
        kube = Kube(load_client(proxy.kubeconfig()))
        for ns, name in pods:
            kube.get_json(f"/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods/{name}")
        return sum(proxy.snapshot().values())
    finally:
        proxy.close()


def run(ctx: Context) -> list[Row]:
    sizes = (10, 100, 1000) if ctx.quick else (10, 100, 1000, 10000)
    label = "/".join(f"{s:,}" for s in sizes)
    figures = [f"2. usage requests/sweep, metrics-api ({label} pods)",
               f"2. usage requests/sweep, kubelet ({label} pods on {len(FAKE_NODES)} nodes)",
               "2. all requests per steady-state sweep",
               "2. writes to watched pods"]
    problem = ctx.problem()
    if problem:
        return [Row.not_run(f, problem) for f in figures]
    metrics: dict[int, dict[str, float]] = {}
    kubelet: dict[int, dict[str, float]] = {}
    base: dict[int, int] = {}
    for n in sizes:
        ctx.farm.ensure("annotated", n, ctx.log)
        metrics[n] = _steady(ctx, n, "metrics-api")
        kubelet[n] = _steady(ctx, n, "kubelet")
        if n <= BASELINE_MAX_MEASURED:
            base[n] = _baseline(ctx, n)
    extrapolated = [n for n in sizes if n not in base]
    base_s = " / ".join(f"{base.get(n, n):,}" + ("*" if n in extrapolated else "") for n in sizes)
    base_note = "per-pod poller, measured" + (f"; *extrapolated (N GETs) at {'/'.join(map(str, extrapolated))}"
                                              if extrapolated else "")
    biggest = sizes[-1]

    def fmt(d: dict[int, dict[str, float]], key: str) -> str:
        return " / ".join(f"{d[n][key]:.1f}".rstrip("0").rstrip(".") for n in sizes)

    nodes = {n: min(n, len(FAKE_NODES)) for n in sizes}
    m_ok = all(abs(metrics[n]["usage"] - 1) < 0.01 for n in sizes)
    k_ok = all(abs(kubelet[n]["usage"] - nodes[n]) < 0.01 for n in sizes)
    total_ok = all(metrics[n]["per_pod_gets"] == 0 and kubelet[n]["per_pod_gets"] == 0 for n in sizes)
    writes = sum(metrics[n]["pod_writes"] + kubelet[n]["pod_writes"] for n in sizes)
    audit = [kubelet[n].get("audit_proxy") for n in sizes]
    audit_s = (" (counted at the fake kubelets; nodes/proxy in the audit log: "
               + " / ".join(f"{a:.0f}" for a in audit if a is not None) + ")"
               if all(a is not None for a in audit) else " (counted at the fake kubelets)")
    return [
        Row(figures[0], fmt(metrics, "usage"), base_s + f" ({base_note})",
            ratio(metrics[biggest]["usage"], base.get(biggest, biggest)), "1 per sweep, constant", met(m_ok)),
        Row(figures[1], fmt(kubelet, "usage") + audit_s, base_s,
            ratio(kubelet[biggest]["usage"], base.get(biggest, biggest)),
            "1 per node hosting watched pods (" + "/".join(str(nodes[n]) for n in sizes) + ")", met(k_ok)),
        Row(figures[2], "metrics-api " + fmt(metrics, "total") + "; kubelet " + fmt(kubelet, "total"),
            base_s, ratio(metrics[biggest]["total"], base.get(biggest, biggest)),
            "no per-pod requests", met(total_ok)),
        Row(figures[3], f"{writes:.0f} (whole runs, {2 * len(sizes)} controllers)", "—", "—",
            "0 in steady state", met(writes == 0)),
    ]
