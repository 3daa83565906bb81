#!/usr/bin/env python3
"""Time each step of a pod's teardown on the local cluster, from the outside.

    teardown_timing.py [--kubeconfig K] [--runs N] [--grace S] [--parallel P] [--image I] [--delete]
                       [--at-start SECONDS,...]

For each run: creates P memory-hog pods (`imagePullPolicy: Never`, terminationGracePeriodSeconds
S), waits until they run, evicts them (or deletes them with --delete) at once, and prints, per
pod, the seconds from the request to: the deletionTimestamp (seen on the watch), the container
reported terminated, the pod Failed/Succeeded or its containers all terminated, and the DELETED
watch event (the pod gone from the API). Ends with p50 / max per step. Cleans up its namespace.

--at-start: evict each pod that many seconds after its container's first process appears in its
cgroup (as memwatch's agent does with a pod that leaks from its first instruction), not once the
API says it runs; one pod at a time, the delays taken in turn. Run on the node (it reads
/sys/fs/cgroup). This is how the kubelet 1.20 race in README.md ("Pod teardown") was found.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from memwatch.cgroups import CgroupSource, Hierarchy, _holds_processes

NAMESPACE = "memwatch-teardown"


def hog(name: str, grace: int, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"memwatch-teardown": "true"}},
        "spec": {
            "terminationGracePeriodSeconds": grace,
            "containers": [{
                "name": "hog", "image": image, "imagePullPolicy": "Never",
                "command": ["/hog", "--rate", "50", "--max", "64", "--hold"],
                "resources": {"requests": {"memory": "16Mi"}, "limits": {"memory": "256Mi"}},
            }],
        },
    }


class Watcher(threading.Thread):
    """Records, per pod name, the first time each step was seen on a pod watch."""

    def __init__(self, core: Any) -> None:
        super().__init__(daemon=True)
        self.core = core
        self.seen: dict[str, dict[str, float]] = {}
        self.cond = threading.Condition()
        self.stopping = False

    def mark(self, name: str, step: str) -> None:
        with self.cond:
            self.seen.setdefault(name, {}).setdefault(step, time.time())
            self.cond.notify_all()

    def run(self) -> None:
        while not self.stopping:
            w = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for ev in w.stream(self.core.list_namespaced_pod, NAMESPACE, timeout_seconds=60):  # type: ignore[no-untyped-call]
                    pod, kind = ev["object"], ev["type"]
                    name = pod.metadata.name
                    if kind == "DELETED":
                        self.mark(name, "gone")
                        continue
                    statuses = pod.status.container_statuses or []
                    if statuses and all(s.state.running for s in statuses):
                        self.mark(name, "running")
                    if pod.metadata.deletion_timestamp:
                        self.mark(name, "deleting")
                    if statuses and all(s.state.terminated for s in statuses):
                        self.mark(name, "terminated")
                    if pod.status.phase in ("Failed", "Succeeded"):
                        self.mark(name, "phase-final")
            except Exception as exc:  # a watch that ends or breaks: start another
                print(f"watch restarted: {exc}", file=sys.stderr)

    def wait(self, name: str, step: str, timeout: float) -> float:
        deadline = time.time() + timeout
        with self.cond:
            while step not in self.seen.get(name, {}):
                left = deadline - time.time()
                if left <= 0:
                    raise TimeoutError(f"{name}: no {step} within {timeout:.0f}s")
                self.cond.wait(left)
            return self.seen[name][step]


def container_started(pods: CgroupSource, uid: str) -> bool:
    """Whether the pod's cgroup (found as memwatch's agent finds it, either cgroup driver, v1 or v2)
    holds a container's process besides its sandbox's: two child cgroups with processes in them."""
    pod = pods.find_pod(uid)
    if pod is None:
        return False
    try:
        children = [c for c in pod.iterdir() if c.is_dir()]
    except OSError:
        return False
    return sum(_holds_processes(c) for c in children) >= 2


def wait_started(pods: CgroupSource, uid: str, timeout: float) -> float:
    deadline = time.time() + timeout
    while not container_started(pods, uid):
        if time.time() > deadline:
            raise TimeoutError(f"pod {uid}: no container process in its cgroup within {timeout:.0f}s")
        time.sleep(0.005)
    return time.time()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", default=os.path.join(
        os.environ.get("MEMWATCH_CLUSTER_ROOT") or "/var/lib/memwatch-cluster", "kubeconfig"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--grace", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--image", default="docker.io/library/memwatch-hog:dev")
    parser.add_argument("--delete", action="store_true", help="DELETE the pods instead of evicting them")
    parser.add_argument("--at-start", default="", metavar="SECONDS,...",
                        help="evict each pod this long after its container's first process appears (one at a time)")
    args = parser.parse_args()
    at_start = [float(x) for x in args.at_start.split(",")] if args.at_start else []
    if at_start and args.parallel != 1:
        parser.error("--at-start takes one pod at a time (--parallel 1)")
    pods = CgroupSource(Hierarchy.detect("/sys/fs/cgroup")) if at_start else None

    api = kubernetes.config.new_client_from_config(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
    core: Any = kubernetes.client.CoreV1Api(api)
    try:
        core.create_namespace({"metadata": {"name": NAMESPACE}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    while True:  # pods cannot be created before the namespace's default ServiceAccount exists
        try:
            core.read_namespaced_service_account("default", NAMESPACE)
            break
        except ApiException:
            time.sleep(0.5)
    watcher = Watcher(core)
    watcher.start()
    steps = ("deleting", "terminated", "phase-final", "gone")
    results: dict[str, list[float]] = {s: [] for s in steps}
    try:
        for run in range(args.runs):
            names = [f"hog-{uuid.uuid4().hex[:6]}" for _ in range(args.parallel)]
            uids = {name: core.create_namespaced_pod(NAMESPACE, hog(name, args.grace, args.image)).metadata.uid
                    for name in names}
            for name in names:
                if pods is not None:
                    delay = at_start[run % len(at_start)]
                    time.sleep(max(0.0, wait_started(pods, uids[name], 120) + delay - time.time()))
                else:
                    watcher.wait(name, "running", 120)
            t0 = {}
            for name in names:
                t0[name] = time.time()
                if args.delete:
                    core.delete_namespaced_pod(name, NAMESPACE)
                else:
                    core.create_namespaced_pod_eviction(name, NAMESPACE, {
                        "apiVersion": "policy/v1beta1", "kind": "Eviction",
                        "metadata": {"name": name, "namespace": NAMESPACE}})
            for name in names:
                watcher.wait(name, "gone", 300)
                seen = watcher.seen[name]
                row = {s: seen[s] - t0[name] for s in steps if s in seen}
                for s, v in row.items():
                    results[s].append(v)
                shown = "  ".join(f"{s}={v:6.2f}s" for s, v in row.items())
                print(f"run {run + 1} {name} ({time.strftime('%H:%M:%S', time.gmtime(t0[name]))}Z): {shown}",
                      flush=True)
    finally:
        watcher.stopping = True
        core.delete_namespace(NAMESPACE)
    for s in steps:
        if results[s]:
            values = results[s]
            print(f"{s:12s} p50 {statistics.median(values):6.2f}s  max {max(values):6.2f}s  (n={len(values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
