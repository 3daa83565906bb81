"""The node guard against the kernel on a real cgroup v1 ``kubepods`` stand-in (root, no cluster).

A real memory cgroup ``/sys/fs/cgroup/memory/memwatch-node-<id>/kubepods`` with a small hard limit plays
the kubelet's enforced node allocatable. Under it, like the kubelet's cgroupfs layout, three pods:

* ``besteffort/pod<hog>``: a BestEffort, priority 0 hog growing at ``rate`` MiB/s (``tests/images/hog``);
* ``burstable/pod<service>``: a Burstable, priority 1000 service holding ``steady`` MiB;
* ``besteffort/pod<never>``: a pod annotated ``memwatch.io/node-pressure: never`` holding ``steady`` MiB.

The real agent (guard on, the node's MemAvailable and PSI as they are) samples every 100 ms. Its API is
a double standing in for the kubelet: an accepted eviction kills the pod's processes after
``kubelet_delay`` seconds (the kubelet noticing and stopping the pod). Judged by the kernel's
``oom_kill`` counter in kubepods' ``memory.oom_control``: a race is pre-empted when that counter did not
move and the guard acted on the hog, and only the hog.

``python bench/node_guard.py [--runs N] [--rates 50,200,500]``: one row per rate.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oom_race import build_hog, cgroup_v1_unavailable  # this directory (run as a script, or on sys.path)
from realcgroup import V1_MEMORY, remove_tree
from realcgroup import spawn as spawn_in

from memwatch.agent import Agent
from memwatch.cgroups import CgroupSource, Hierarchy
from memwatch.kill import kill_cgroup
from memwatch.kube import WriteResult
from memwatch.nodeguard import GuardConfig, Line, Mode, NodeGuard
from memwatch.nodesignals import oom_kills
from memwatch.policy import Defaults
from memwatch.protections import Protections
from memwatch.settings import Settings

MiB = 1 << 20
LIMIT_MIB = 384
STEADY_MIB = 32


def _write(path: Path, value: str) -> None:
    path.write_text(value)


@contextlib.contextmanager
def node(limit_mib: int = LIMIT_MIB) -> Iterator[Path]:
    """A fresh real memory root holding ``kubepods`` with a hard limit (no swap); removed afterwards."""
    root = V1_MEMORY / f"memwatch-node-{uuid.uuid4().hex[:10]}"
    kubepods = root / "kubepods"
    kubepods.mkdir(parents=True)
    try:
        _write(kubepods / "memory.swappiness", "0")
        _write(kubepods / "memory.limit_in_bytes", str(limit_mib * MiB))
        with contextlib.suppress(OSError):
            _write(kubepods / "memory.memsw.limit_in_bytes", str(limit_mib * MiB))
        yield root
    finally:
        remove_tree(root)


def spawn(cgroup: Path, argv: list[str]) -> subprocess.Popen[bytes]:
    cgroup.mkdir(parents=True, exist_ok=True)
    return spawn_in(cgroup, argv)


def raw_pod(uid: str, name: str, qos: str, priority: int, annotations: dict[str, str] | None = None,
            request: str | None = None) -> dict[str, Any]:
    res = {"requests": {"memory": request}} if request else {}
    return {"metadata": {"uid": uid, "name": name, "namespace": "bench", "annotations": annotations or {}},
            "spec": {"nodeName": "bench-node", "priority": priority, "terminationGracePeriodSeconds": 30,
                     "containers": [{"name": "c", "resources": res}]},
            "status": {"phase": "Running", "qosClass": qos}}


class KubeletDouble:
    """The API as the guard sees it, and the kubelet behind it: an accepted eviction (or delete) ends the
    pod's processes ``delay`` seconds later."""

    def __init__(self, hierarchy: Hierarchy, paths: dict[str, Path], delay: float) -> None:
        self.hierarchy, self.paths, self.delay = hierarchy, paths, delay
        self.writes: list[tuple[str, str, int | None]] = []
        self.events: list[dict[str, Any]] = []

    def _end(self, uid: str) -> None:
        path = self.paths.get(uid)
        if path is not None:
            threading.Timer(self.delay, lambda: kill_cgroup(path, self.hierarchy)).start()

    def evict(self, namespace: str, name: str, uid: str, grace_period: int | None) -> WriteResult:
        self.writes.append(("evict", name, grace_period))
        self._end(uid)
        return WriteResult(True, 201)

    def delete_pod(self, namespace: str, name: str, uid: str, grace_period: int | None) -> WriteResult:
        self.writes.append(("delete", name, grace_period))
        self._end(uid)
        return WriteResult(True, 200)

    def create_event(self, namespace: str, body: dict[str, Any]) -> WriteResult:
        self.events.append(body)
        return WriteResult(True, 201)

    def list_pages(self, path: str, query: Any = None, limit: int = 500) -> Iterator[dict[str, Any]]:
        return iter(())


@dataclass
class NodeRace:
    rate: int
    oom_kill: int | None = None
    actions: list[tuple[str, str]] = field(default_factory=list)  # (action, pod name)
    latency: float | None = None  # first sample past a line -> the guard's first action completed
    rule: str | None = None

    @property
    def preempted(self) -> bool:
        return self.oom_kill == 0 and bool(self.actions) and all(name == "hog" for _, name in self.actions)


def race(hog: Path, rate: int, kill: bool = False, kubelet_delay: float = 0.2, limit_mib: int = LIMIT_MIB,
         soft: str = "30%", hard: str = "12%", seconds: float | None = None, mode: Mode = Mode.ON) -> NodeRace:
    """One race of the node guard against the kernel, on a fresh kubepods stand-in."""
    uids = {name: str(uuid.uuid4()) for name in ("hog", "service", "never")}
    with node(limit_mib) as root:
        hierarchy = Hierarchy(1, root)
        kp = root / "kubepods"
        paths = {uids["hog"]: kp / "besteffort" / f"pod{uids['hog']}",
                 uids["service"]: kp / "burstable" / f"pod{uids['service']}",
                 uids["never"]: kp / "besteffort" / f"pod{uids['never']}"}
        api = KubeletDouble(hierarchy, paths, kubelet_delay)
        cfg = GuardConfig(mode, Line.parse(soft), Line.parse(hard), grace=0, wait=10.0, max_per_minute=0)
        settings = Settings(kubeconfig=None, namespaces=(), label_selector="", protections=Protections(),
                            defaults=Defaults(), dry_run=False, escalation_timeout=60.0, metrics_port=0, liveness="",
                            verbose=False, max_sample_age=2.0, node_name="bench-node", kill=kill, node_guard=cfg)
        agent = Agent(settings, kube=api, source=CgroupSource(hierarchy), watch=False)  # type: ignore[arg-type]
        guard = agent.guard or NodeGuard(agent, cfg)  # off: a guard that is never ticked (nothing acts)
        for pod in (raw_pod(uids["hog"], "hog", "BestEffort", 0),
                    raw_pod(uids["service"], "service", "Burstable", 1000, request=f"{STEADY_MIB}Mi"),
                    raw_pod(uids["never"], "never", "BestEffort", 0, {"memwatch.io/node-pressure": "never"})):
            guard.pods.upsert(pod)
        steady = [spawn(paths[uids[n]], [str(hog), "--sleep", "--start", str(STEADY_MIB)])
                  for n in ("service", "never")]
        time.sleep(0.3)
        proc = spawn(paths[uids["hog"]], [str(hog), "--rate", str(rate), "--max", str(limit_mib * 2), "--hold"])
        agent.start()
        try:
            proc.wait(timeout=seconds or (limit_mib / rate + 5))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        finally:
            time.sleep(0.3)
            agent.stop()
            agent.worker.run_pending()
        result = NodeRace(rate, oom_kills(kp, hierarchy))
        names = {u: n for n, u in uids.items()}
        result.actions = [(t.action, names.get(t.uid, t.uid)) for t in guard.timings]
        if guard.timings:
            first = guard.timings[0]
            result.latency = first.acted_at - first.over_at
            result.rule = first.rule
        for p in steady:
            p.kill()
            p.wait()
        return result


def run(runs: int, rates: tuple[int, ...], kill: bool) -> list[dict[str, Any]]:
    hog = build_hog()
    rows = []
    for rate in rates:
        results = [race(hog, rate, kill=kill) for _ in range(runs)]
        lat = [r.latency for r in results if r.latency is not None]
        rows.append({"rate_mib_s": rate, "runs": runs,
                     "preempted_pct": 100.0 * sum(r.preempted for r in results) / runs,
                     "oom_kills": sum(r.oom_kill or 0 for r in results),
                     "latency_p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
                     "latency_max_ms": round(max(lat) * 1000, 1) if lat else None,
                     "actions": sorted({a for r in results for a, _ in r.actions})})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--rates", default="50,200,500")
    ap.add_argument("--kill", action="store_true", help="the kill rung is on (hard line kills in place)")
    args = ap.parse_args(argv)
    why = cgroup_v1_unavailable()
    if why:
        print(f"SKIPPED: {why}")
        return 0
    for row in run(args.runs, tuple(int(r) for r in args.rates.split(",")), args.kill):
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
