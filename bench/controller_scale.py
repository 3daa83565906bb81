"""Rows 3 and 4: controller memory, start-up and CPU at scale, against the same-run kopf baseline.

Row 3. 1k, 5k, 10k, 25k and 50k pods in the cluster (bench-mixed, 10 % annotated). `memwatch run` starts as
a child process, cluster-wide, ``--source metrics-api`` through the counting proxy (which serves
PodMetrics for the annotated pods), ``--dry-run``. Measured: wall time from spawning the process to
its first completed sweep (the sweep counter on its /metrics), RSS after 10 s of steady state, and
peak RSS (the kernel's VmHWM). Baseline: ``bench/kopf_baseline.py`` (a minimal ``@kopf.on.event``
pod handler filtered to the same annotated pods) over the same pods, spawn to "seen every pod".

Row 4. Sweep CPU: :meth:`Sweeper.sweep_once` in-process over 10k watched pods, with the usage read
included (the metrics-api source parsing a real 10k-item PodMetrics list body, no network),
``time.process_time`` per sweep, 100 sweeps once the heap has reached its steady size, measured
before row 3 fills the cluster (its API server and etcd share the machine's cores). Baseline: a
per-pod poller's CPU for one sweep (memwatch's own client GETting each pod's PodMetrics from a
local HTTP fake, ``time.thread_time``), measured on a slice and scaled to 10k. Steady-state CPU:
`memwatch run` and the kopf baseline watching the same 10k annotated pods while the benchmark
patches 20 of them per second, CPU from psutil.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    LABEL,
    REPO,
    Context,
    CountingProxy,
    FakeMetrics,
    Measured,
    Row,
    free_port,
    median,
    memwatch_run,
    met,
    mib,
    pct,
    ratio,
    wait_sweeps,
)

NAME = "controller-scale"
STEADY_SECONDS = 10.0


def _kopf(kubeconfig: str, expect: int, label: str) -> Measured:
    return Measured([sys.executable, str(REPO / "bench" / "kopf_baseline.py"), "--kubeconfig", kubeconfig,
                     "--expect", str(expect), "--label", label, "--annotated"])


def _steady_rss(proc: Measured, seconds: float) -> int:
    """Median RSS over the last half of ``seconds`` of steady state."""
    t0 = time.time()
    time.sleep(seconds)
    recent = [r for t, r in proc.rss if t >= t0 + seconds / 2]
    return int(median(recent)) if recent else proc.rss_now()


# -- row 3 -----------------------------------------------------------------------------------------
def _memwatch_startup(ctx: Context, n: int) -> dict[str, float]:
    watched = ctx.farm.watched("mixed", n)
    proxy = CountingProxy(ctx.api, f"scale-mw-{n}-{os.getpid()}")
    proxy.metrics.set_pods(watched)
    port = free_port()
    try:
        with memwatch_run(proxy.kubeconfig(), "--source", "metrics-api", "--interval", "5s", "--dry-run",
                          metrics_port=port) as proc:
            _, m = proc.wait_for(r"ready: first sweep ([\d.]+)s after start, watched=(\d+)", 300)
            wait_sweeps(port, 1, 120)
            first = time.time() - proc.started
            steady = _steady_rss(proc, 5.0 if ctx.quick else STEADY_SECONDS)
            peak = proc.hwm()
    finally:
        proxy.close()
    out = {"first": first, "internal": float(m.group(1)), "watched": float(m.group(2)),
           "steady": steady, "peak": peak}
    ctx.log(f"  memwatch n={n}: first sweep {first:.2f}s after spawn (controller's own: {out['internal']:.2f}s), "
            f"watched={out['watched']:.0f} rss steady={mib(steady)} peak={mib(peak)}")
    return out


def _kopf_startup(ctx: Context, n: int) -> dict[str, float]:
    expect = len(ctx.farm.watched("mixed", n))
    proxy = CountingProxy(ctx.api, f"scale-kopf-{n}-{os.getpid()}")
    try:
        with _kopf(proxy.kubeconfig(), expect, f"{LABEL}set=mixed") as proc:
            t, _ = proc.wait_for(r"seen-all", 600)
            first = t - proc.started
            steady = _steady_rss(proc, 5.0 if ctx.quick else STEADY_SECONDS)
            peak = proc.hwm()
    finally:
        proxy.close()
    ctx.log(f"  kopf     n={n}: seen all {expect} annotated pods {first:.2f}s after spawn, "
            f"rss steady={mib(steady)} peak={mib(peak)}")
    return {"first": first, "steady": steady, "peak": peak}


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the runs (one run: itself)."""
    return {k: median([r[k] for r in runs]) for k in runs[0]}


def row3(ctx: Context) -> list[Row]:
    sizes = (500, 1000) if ctx.quick else (1000, 5000, 10000, 25000, 50000)
    label = "/".join(f"{s / 1000:g}k" for s in sizes)
    figures = [f"3. controller RSS steady ({label} pods, 10 % annotated)", f"3. controller RSS peak ({label})",
               f"3. start to first complete sweep ({label}"
               + ("" if ctx.quick else f"; median of 3 at {sizes[-2] // 1000}k and {sizes[-1] // 1000}k") + ")",
               "3. start-up scaling, 2x pods"]
    problem = ctx.problem()
    if problem:
        return [Row.not_run(f, problem) for f in figures]
    mw: dict[int, dict[str, float]] = {}
    kp: dict[int, dict[str, float]] = {}
    cluster: dict[int, int] = {}
    for n in sizes:
        ctx.farm.ensure("mixed", n, ctx.log)
        cluster[n] = ctx.api.count("/api/v1/pods")
        # The scaling is judged on the two largest sizes, where one start-up against the same pods
        # varies by ~10 % (6.2 and 6.9 s at 50k, measured back to back): the median of three there.
        runs = 3 if n in sizes[-2:] and not ctx.quick else 1
        mw[n] = _median([_memwatch_startup(ctx, n) for _ in range(runs)])
        kp[n] = _median([_kopf_startup(ctx, n) for _ in range(runs)])
    if ctx.pictures is not None:  # bench/pictures.py: RSS and first sweep against pods
        ctx.pictures["controller_scale"] = [
            (cluster[n], mw[n]["steady"], kp[n]["steady"], mw[n]["first"], kp[n]["first"]) for n in sizes]
    big, half = sizes[-1], sizes[-2]
    at_target = big >= 50000
    quick_note = "" if at_target else f" (quick run: largest size {big:,}; targets are at 50k)"

    def series(d: dict[int, dict[str, float]], key: str, fmt: Any) -> str:
        return " / ".join(fmt(d[n][key]) for n in sizes)

    def secs(v: float) -> str:
        return f"{v:.1f} s"

    scale_mw = mw[big]["first"] / mw[half]["first"]
    scale_own = mw[big]["internal"] / mw[half]["internal"]  # without the constant cost of imports
    scale_kp = kp[big]["first"] / kp[half]["first"]
    pods_note = "pods in cluster " + " / ".join(f"{cluster[n]:,}" for n in sizes)
    return [
        Row(figures[0], series(mw, "steady", mib), series(kp, "steady", mib) + " (kopf on.event)",
            ratio(mw[big]["steady"], kp[big]["steady"]), "≤ 150 MiB at 50k" + quick_note,
            met(mw[big]["steady"] <= 150 * 2**20 if at_target else None)),
        Row(figures[1], series(mw, "peak", mib), series(kp, "peak", mib),
            ratio(mw[big]["peak"], kp[big]["peak"]), "≤ 200 MiB at 50k" + quick_note,
            met(mw[big]["peak"] <= 200 * 2**20 if at_target else None)),
        Row(figures[2], series(mw, "first", secs) + " (from spawn; own clock "
            + series(mw, "internal", secs) + ")",
            series(kp, "first", secs) + " (to seeing every pod)", ratio(mw[big]["first"], kp[big]["first"]),
            f"≤ 20 s at 50k; {pods_note}" + quick_note,
            met(mw[big]["first"] <= 20 if at_target else None)),
        Row(figures[3], f"{scale_own:.2f}x on its own clock ({scale_mw:.2f}x from spawn) for {big // half}x pods",
            f"{scale_kp:.2f}x", ratio(scale_own, scale_kp),
            f"≤ 2.2x per 2x pods ({half:,} → {big:,})", met(scale_own <= 2.2 * (big / half) / 2)),
    ]


# -- row 4: sweep CPU (in-process) -----------------------------------------------------------------
def _raw_pod(i: int) -> dict[str, Any]:
    name = f"p-{i:05d}"
    return {
        "metadata": {"name": name, "namespace": "bench", "uid": f"uid-{i:05d}",
                     "annotations": {"memwatch.io/limit": "64Mi"},
                     "labels": {"app": "bench", "pod-template-hash": "abc123"}},
        "spec": {"nodeName": f"node-{i % 50}",
                 "containers": [{"name": "app", "resources": {"limits": {"memory": "256Mi"}}}]},
        "status": {"phase": "Running", "qosClass": "Burstable", "startTime": "2026-01-01T00:00:00Z",
                   "containerStatuses": [{"name": "app", "containerID": f"containerd://{i:064x}",
                                          "state": {"running": {"startedAt": "2026-01-01T00:00:05Z"}}}]},
    }


class _BodyKube:
    """Stands in for :class:`memwatch.kube.Kube`: answers the metrics LIST from a bytes body whose
    samples are new (a later timestamp on every item) every ``fresh_every`` reads: 1 is the worst case
    (metrics-server scraped every node between two sweeps), 3 is its default cadence against memwatch's
    (a 15 s metric resolution, a 5 s sweep).

    The bodies of the first ``reads`` reads are stamped before any is measured: stamping one (a
    bytes.replace over ~2.3 MB) is the fake's work, not memwatch's, and is not counted as the sweep's."""

    def __init__(self, metrics: FakeMetrics, fresh_every: int = 1, reads: int = 0) -> None:
        self.metrics = metrics
        self.fresh_every = fresh_every
        self.reads = 0
        self.base = time.time() - 600
        self._bodies = {scrape: self._body(scrape) for scrape in range(reads // fresh_every + 1)}

    def _body(self, scrape: int) -> bytes:
        return self.metrics.list_body(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.base + scrape)).encode())

    def get_bytes(self, path: str, query: Any = None, timeout: float | None = None) -> bytes:
        scrape = self.reads // self.fresh_every
        self.reads += 1
        self._bodies.pop(scrape - 1, None)  # read for the last time
        body = self._bodies.get(scrape)
        if body is None:  # more reads than stamped beforehand
            body = self._bodies[scrape] = self._body(scrape)
        return body


#: The most sweeps a measurement runs before its first measured one (see :func:`_warm_up`).
MAX_WARM_UP = 20


def _warm_up(sweep: Any) -> int:
    """Sweeps until one faults in no new page (at most MAX_WARM_UP); returns how many ran.

    A new sweeper's first sweeps grow the heap to its steady size: the list being decoded lives
    beside the last one until it is compared, and the allocator settles over a few sweeps. Those
    sweeps page memory in, kernel time counted in ``process_time`` (seen on 2026-12-04 at 10,000
    pods: ~2,800, 1,300, 1,500, 800, 1,000 faults and up to 8 ms of system time in the five sweeps
    after the first; the twelfth was the first with none). That is the start-up of a process that then sweeps 17,280
    times a day, so the steady figures are measured after it; the start-up itself is row 3's."""
    for done in range(1, MAX_WARM_UP + 1):
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        sweep()
        if resource.getrusage(resource.RUSAGE_SELF).ru_minflt == faults:
            return done
    return MAX_WARM_UP


def _yardstick() -> float:
    """CPU seconds of a fixed piece of pure-Python work (~3 ms here): timed beside every measured
    sweep, its spread is the machine's own (a VM's neighbours, its clock), not memwatch's."""
    t0 = time.process_time()
    total = 0
    for i in range(100_000):
        total += i
    return time.process_time() - t0


#: Node agents in the sweep's --defer-to-agents measurement (a 500-node cluster's DaemonSet).
AGENTS = 500


def _agent_pod(i: int) -> dict[str, Any]:
    """A Ready memwatch agent pod on node ``agent-node-<i>`` (no bench pod runs there)."""
    return {"metadata": {"name": f"memwatch-agent-{i:05d}", "uid": f"agent-uid-{i:05d}"},
            "spec": {"nodeName": f"agent-node-{i}"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}


class _ScanningAgents:
    """The baseline: AgentTracker.defer as it was from 2026-12-01 to 12-04, a scan of every agent's node
    under a lock for each pod (pods x agents comparisons a sweep). Same answers, other cost."""

    def __init__(self, nodes: Any) -> None:
        self._nodes = {f"uid-{i}": node for i, node in enumerate(nodes)}
        self._lock = threading.Lock()

    def defer(self, record: Any) -> str | None:
        if not record.node or record.policy is None:
            return None
        with self._lock:
            covered = record.node in self._nodes.values()
        return f"the memwatch agent on node {record.node} handles it" if covered else None


def sweep_cpu(n: int, sweeps: int) -> dict[str, float]:
    """CPU per sweep_once over ``n`` watched pods: with the metrics-api parse, and decide-only; and
    with AGENTS node agents (--defer-to-agents all) against the scan of them it replaced."""
    from memwatch.agents import AgentTracker
    from memwatch.enforcer import Enforcer, EnforcerSettings
    from memwatch.observability import Metrics, Recorder
    from memwatch.podindex import PodIndex
    from memwatch.policy import Defaults, Usage
    from memwatch.sources import MetricsApiSource, _podmetrics_items
    from memwatch.sweep import Sweeper, paused_gc

    index = PodIndex(Defaults(), lambda pod: None)
    index.replace((_raw_pod(i) for i in range(n)), lambda rec: True)
    metrics = FakeMetrics()
    metrics.set_pods([("bench", f"p-{i:05d}") for i in range(n)])
    recorder = Recorder(None, Metrics())
    enforcer = Enforcer(None, recorder, EnforcerSettings(dry_run=True))

    class Prebuilt:
        name = "prebuilt"

        def __init__(self) -> None:
            now = time.time()
            self.samples = {r.uid: Usage({"app": 16 << 20}, now, "prebuilt") for r in index.snapshot()}

        def fetch(self, records: Any) -> dict[str, Usage]:
            now = time.time()  # new objects every sweep: every sample is judged (the decide worst case)
            return {uid: Usage(u.containers, now, u.source) for uid, u in self.samples.items()}

    warm_ups: list[int] = []
    yard: list[float] = []

    def measure(src: Any, defer: Any = None) -> list[float]:
        sweeper = Sweeper(index, src, enforcer, recorder, interval=5.0, max_sample_age=3600.0, defer=defer)
        warm_ups.append(_warm_up(sweeper.sweep_once))
        out = []
        for _ in range(sweeps):
            yard.append(_yardstick())
            t0 = time.process_time()
            report = sweeper.sweep_once()
            out.append(time.process_time() - t0)
            assert report.sampled == n, report
        return out

    body = _BodyKube(metrics, 1, sweeps)
    decode = []
    with paused_gc():  # as a sweep decodes it
        for _ in range(sweeps):
            t0 = time.process_time()
            _podmetrics_items(body.get_bytes("/apis/metrics.k8s.io/v1beta1/pods"), {})[0]
            decode.append(time.process_time() - t0)
    reads = sweeps + MAX_WARM_UP
    full = measure(MetricsApiSource(_BodyKube(metrics, 1, reads)))  # type: ignore[arg-type]
    cadence = measure(MetricsApiSource(_BodyKube(metrics, 3, reads)))  # type: ignore[arg-type]
    decide = measure(Prebuilt())
    # --defer-to-agents all, with AGENTS Ready agents on nodes other than the pods' (the worst case: every
    # pod is asked, none is left to an agent, every one is judged), against the scan it replaced
    # (_ScanningAgents).
    tracker = AgentTracker("all")
    tracker.replace((_agent_pod(i) for i in range(AGENTS)), lambda pod: True)
    assert len(tracker) == AGENTS and not any(tracker.defer(r) for r in index.snapshot())
    agents = measure(MetricsApiSource(_BodyKube(metrics, 1, reads)), tracker.defer)  # type: ignore[arg-type]
    scan = measure(MetricsApiSource(_BodyKube(metrics, 1, reads)),  # type: ignore[arg-type]
                   _ScanningAgents(tracker.nodes()).defer)
    return {"p50": pct(full, 50), "p99": pct(full, 99), "max": max(full), "warm_ups": max(warm_ups),
            "agents_p50": pct(agents, 50), "agents_p99": pct(agents, 99),
            "scan_p50": pct(scan, 50), "scan_p99": pct(scan, 99),
            "yard_p50": pct(yard, 50), "yard_p99": pct(yard, 99),
            "cadence_p50": pct(cadence, 50),
            "cadence_p99": pct(cadence, 99), "decide_p50": pct(decide, 50), "decide_p99": pct(decide, 99),
            "decode_p50": pct(decode, 50)}


def poller_cpu(n: int) -> float:
    """CPU (this thread only) of one per-pod poller sweep over ``n`` pods: GET each pod's
    PodMetrics with memwatch's client from a local HTTP fake, parse it, decide."""
    from memwatch.kube import Kube, load_client
    from memwatch.podindex import _container_specs
    from memwatch.policy import Defaults, Usage, breaches, resolve
    from memwatch.quantity import parse_bytes, parse_time

    proxy = CountingProxy(None, f"poller-{os.getpid()}")
    pol = resolve({"memwatch.io/limit": "64Mi"}, _container_specs(_raw_pod(0)["spec"]), Defaults())
    result: dict[str, float] = {}

    def work() -> None:
        kube = Kube(load_client(proxy.kubeconfig()))
        kube.get_json("/apis/metrics.k8s.io/v1beta1/namespaces/bench/pods/p-00000")  # connect
        t0 = time.thread_time()
        for i in range(n):
            item = kube.get_json(f"/apis/metrics.k8s.io/v1beta1/namespaces/bench/pods/p-{i:05d}")
            c = item["containers"][0]
            ts = parse_time(item["timestamp"]) or 0.0
            breaches(pol, Usage({c["name"]: parse_bytes(c["usage"]["memory"], allow_zero=True)}, ts, "poll"))
        result["cpu"] = time.thread_time() - t0

    try:
        t = threading.Thread(target=work)
        t.start()
        t.join()
    finally:
        proxy.close()
    return result["cpu"]


# -- row 4: steady-state CPU (child processes) -----------------------------------------------------
def _patcher(ctx: Context, pods: list[tuple[str, str]], rate: float, seconds: float) -> int:
    """PATCH a label on ``rate`` pods per second (round-robin), directly on the apiserver."""
    t0 = time.monotonic()
    k = 0
    while True:
        due = t0 + k / rate
        if due - t0 >= seconds:
            return k
        time.sleep(max(0.0, due - time.monotonic()))
        ns, name = pods[k % len(pods)]
        ctx.api.request("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}",
                        {"metadata": {"labels": {LABEL + "tick": str(k)}}},
                        content_type="application/merge-patch+json")
        k += 1


def steady_cpu(ctx: Context, n: int, seconds: float, rate: float = 20.0) -> dict[str, float]:
    ctx.farm.ensure("annotated", n, ctx.log)
    pods = ctx.farm.watched("annotated", n)
    proxy = CountingProxy(ctx.api, f"cpu-{n}-{os.getpid()}")
    proxy.metrics.set_pods(pods)
    port = free_port()
    try:
        with memwatch_run(proxy.kubeconfig(), "--source", "metrics-api", "--label-selector",
                          f"{LABEL}upto-{n}=yes", "--dry-run", metrics_port=port) as mw, \
                _kopf(proxy.kubeconfig(), n, f"{LABEL}set=annotated") as kp:
            mw.wait_for(r"ready: first sweep", 300)
            wait_sweeps(port, 2, 120)
            kp.wait_for(r"seen-all", 900)
            time.sleep(3)
            c_mw, c_kp, s0 = mw.cpu_seconds(), kp.cpu_seconds(), wait_sweeps(port, 0, 5)
            t0 = time.monotonic()
            sent = _patcher(ctx, pods, rate, seconds)
            elapsed = time.monotonic() - t0
            d_mw, d_kp = mw.cpu_seconds() - c_mw, kp.cpu_seconds() - c_kp
            sweeps = wait_sweeps(port, 0, 5) - s0
    finally:
        proxy.close()
    out = {"mw_mcpu": d_mw / elapsed * 1000, "kopf_mcpu": d_kp / elapsed * 1000, "events": sent / elapsed,
           "sweeps": sweeps}
    ctx.log(f"  steady n={n}: {sent} patches in {elapsed:.1f}s ({out['events']:.1f}/s), {sweeps:.0f} sweeps; "
            f"memwatch {out['mw_mcpu']:.0f} mCPU, kopf {out['kopf_mcpu']:.0f} mCPU")
    return out


def row4_sweep(ctx: Context) -> list[Row]:
    """Row 4's in-process figures: the sweep's CPU and the per-pod poller's (no cluster needed)."""
    n = 10000
    sweeps = 10 if ctx.quick else 100  # nearest-rank: the p99 of 100 is the 99th; of 30 it was the maximum
    rows: list[Row] = []
    cpu = sweep_cpu(n, sweeps)
    slice_n = 1000 if ctx.quick else 2000
    poll = poller_cpu(slice_n) * n / slice_n
    ctx.log(f"  sweep CPU n={n}: every sample new p50 {cpu['p50'] * 1000:.1f} ms p99 {cpu['p99'] * 1000:.1f} ms "
            f"max {cpu['max'] * 1000:.1f} ms (after {cpu['warm_ups']} warm-up sweeps at most; the machine's "
            f"yardstick p50 {cpu['yard_p50'] * 1000:.2f} ms p99 {cpu['yard_p99'] * 1000:.2f} ms); "
            f"metrics-server cadence p50 {cpu['cadence_p50'] * 1000:.1f} ms p99 {cpu['cadence_p99'] * 1000:.1f} ms "
            f"(decide only p50 {cpu['decide_p50'] * 1000:.1f} ms); per-pod poller {poll:.2f} s/sweep")
    rows.append(Row(
        f"4. sweep CPU at {n:,} watched pods, every sample new, p50 / p99 of {sweeps}",
        f"{cpu['p50'] * 1000:.1f} / {cpu['p99'] * 1000:.1f} ms, max {cpu['max'] * 1000:.1f} (incl. decoding the "
        f"PodMetrics list, {cpu['decode_p50'] * 1000:.1f} ms of it; deciding alone {cpu['decide_p50'] * 1000:.1f} ms; "
        f"p99 / p50 {cpu['p99'] / cpu['p50']:.2f}x against {cpu['yard_p99'] / cpu['yard_p50']:.2f}x for the "
        f"machine's yardstick, whose p50 is {cpu['yard_p50'] * 1000:.2f} ms)",
        f"{poll * 1000:,.0f} ms (per-pod poller, measured on {slice_n:,}, scaled)",
        ratio(cpu["p50"], poll), "≤ 50 ms per sweep", met(cpu["p99"] <= 0.050),
        note="The worst case: metrics-server scraped every node since the last sweep, so every item is "
             "new and is decoded, parsed and judged. The decode figure is memwatch's typed decode of the "
             "list (msgspec, into structs of the fields it reads) and freeing it; the fake stamps its "
             "bodies before the measured sweeps (until 2026-12-03 its stamping, ~2.7 ms, was counted "
             "in the sweep's CPU). Measured once the heap has grown to its steady size (sweeps until one "
             "faults in no new page, at most 20: the first sweeps' page faults are start-up, row 3's); until "
             "2026-12-03 after one warm-up sweep, and the p99 of 30 sweeps, which is their maximum. The "
             "yardstick is a fixed pure-Python loop timed before every measured sweep: its p99 / p50 is "
             "how much this machine alone stretches the same work, and its p50 how fast the machine is that "
             "day (this project's VM has measured 2.4 to 4.5 ms; the sweep's figures move with it)."))
    rows.append(Row(
        f"4. sweep CPU at {n:,} watched pods, metrics-server's cadence (new samples every 3rd sweep), "
        f"p50 / p99 of {sweeps}",
        f"{cpu['cadence_p50'] * 1000:.1f} / {cpu['cadence_p99'] * 1000:.1f} ms",
        f"{poll * 1000:,.0f} ms (per-pod poller)", ratio(cpu["cadence_p50"], poll), "≤ 50 ms per sweep",
        met(cpu["cadence_p99"] <= 0.050),
        note="metrics-server's default 15 s resolution against memwatch's 5 s sweep: two sweeps in three "
             "see the samples they saw before, and pods already judged under their limits are not judged "
             "again; the p99 is the third sweep, the row above."))
    rows.append(Row(
        f"4. sweep CPU at {n:,} watched pods, {AGENTS} node agents (--defer-to-agents all), every sample "
        f"new, p50 / p99 of {sweeps}",
        f"{cpu['agents_p50'] * 1000:.1f} / {cpu['agents_p99'] * 1000:.1f} ms (without agents "
        f"{cpu['p50'] * 1000:.1f} / {cpu['p99'] * 1000:.1f} ms)",
        f"{cpu['scan_p50'] * 1000:.1f} / {cpu['scan_p99'] * 1000:.1f} ms "
        "(a scan of every agent per pod, as until 2026-12-04)",
        ratio(cpu["agents_p50"], cpu["scan_p50"]), "≤ 50 ms per sweep", met(cpu["agents_p99"] <= 0.050),
        note=f"Every pod is asked whether its node's agent has it, and none is (the {AGENTS} agents run on "
             "other nodes), so every pod is still judged: the question's whole cost, on top of the row above. "
             "memwatch answers it with one set lookup (memwatch.agents.AgentTracker); the baseline is how it "
             "answered until 2026-12-04, a scan of every agent's node under a lock (pods x agents comparisons)."))
    return rows


def row4_steady(ctx: Context) -> list[Row]:
    """Row 4's steady controller CPU: `memwatch run` and kopf against the cluster's pods."""
    rows: list[Row] = []
    steady_n = 1000 if ctx.quick else 10000
    figure = f"4. steady controller CPU, {steady_n:,} watched pods, 20 pod events/s, per 1k pods"
    problem = ctx.problem()
    if problem:
        rows.append(Row.not_run(figure, problem))
        return rows
    s = steady_cpu(ctx, steady_n, 15.0 if ctx.quick else 30.0)
    per_k = steady_n / 1000
    rows.append(Row(
        figure, f"{s['mw_mcpu'] / per_k:.1f} mCPU ({s['mw_mcpu']:.0f} mCPU total, sweeps every 5 s incl.)",
        f"{s['kopf_mcpu'] / per_k:.1f} mCPU (kopf on.event, {s['kopf_mcpu']:.0f} total)",
        ratio(s["mw_mcpu"], s["kopf_mcpu"]), "≤ 5 mCPU per 1k pods", met(s["mw_mcpu"] / per_k <= 5),
        note="Sweeps every 5 s included; the usage list's samples move on every 15 s, as metrics-server's "
             "do (--metric-resolution=15s in its published manifests), so two sweeps in three find "
             "every sample unchanged."))
    return rows


ROW3 = ["3. controller memory and start-up"]
ROW4_SWEEP = ["4. sweep CPU"]
ROW4_STEADY = ["4. steady controller CPU"]


def run(ctx: Context) -> list[Row]:
    """Rows 3 and 4, in the table's order. The in-process sweep figures are measured first, while the
    cluster is not yet holding row 3's 50,000 pods: its API server and etcd share this machine's two
    cores, and a CPU figure of memwatch's own code is not a figure of their load (until 2026-12-03 it
    was measured after row 3, beside them)."""
    parts: dict[Any, list[Row]] = {}
    for part, fallback in ((row4_sweep, ROW4_SWEEP), (row3, ROW3), (row4_steady, ROW4_STEADY)):
        try:
            parts[part] = part(ctx)
        except Exception as exc:  # one part failing must not hide the other's figures
            ctx.log(f"  {part.__name__} failed: {type(exc).__name__}: {exc}")
            parts[part] = [Row.not_run(f, f"{type(exc).__name__}: {exc}") for f in fallback]
    return parts[row3] + parts[row4_sweep] + parts[row4_steady]
