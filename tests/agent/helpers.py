"""Helpers for the node agent's tests: fixture paths, pods, settings and an API double."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from memwatch.kube import WriteResult
from memwatch.policy import Defaults
from memwatch.protections import Protections
from memwatch.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from realcgroup import V1_MEMORY, remove_tree, spawn, v1_unavailable, wait_comm

BENCH = Path(__file__).resolve().parents[2] / "bench"

FIXTURES = Path(__file__).parent / "fixtures"
MiB = 1 << 20

UID_B = "6f1c2f3e-8a4b-4c5d-9e0f-112233445566"  # burstable pod: containers app and sidecar
UID_G = "0a9b8c7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d"  # guaranteed pod: container main
CID_APP = "3c1a5bb9e2b0f4b1c7d5a2e8f9061b7c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a"
CID_SIDE = "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0"
CID_G = "aa11bb22cc33dd44ee55ff6600112233445566778899aabbccddeeff00112233"
#: The app container's working set in both fixture trees (see fixtures/README.md).
APP_WS = 208 * MiB + 1187840


class ApiDouble:
    """Stands in for :class:`memwatch.kube.Kube` at the API level: records writes, can be 'down'."""

    def __init__(self) -> None:
        self.evictions: list[tuple[str, str, str]] = []
        self.deletes: list[tuple[str, str, str]] = []
        self.events: list[dict[str, Any]] = []
        self.down = False

    def _result(self) -> WriteResult:
        return WriteResult(False, 0, "HTTP 0 unreachable: connection refused") if self.down else WriteResult(True, 201)

    def evict(self, namespace: str, name: str, uid: str, grace_period: int | None) -> WriteResult:
        res = self._result()
        if res.ok:
            self.evictions.append((namespace, name, uid))
        return res

    def delete_pod(self, namespace: str, name: str, uid: str, grace_period: int | None) -> WriteResult:
        res = self._result()
        if res.ok:
            self.deletes.append((namespace, name, uid))
        return res

    def create_event(self, namespace: str, body: dict[str, Any]) -> WriteResult:
        res = self._result()
        if res.ok:
            self.events.append(body)
        return res

    def reasons(self) -> list[str]:
        return [e["reason"] for e in self.events]


def load_bench(name: str) -> ModuleType:
    """A benchmark module of bench/ (``oom_race``, ``node_guard``, ...), loaded once under its own
    name: the tests that race the kernel use the benchmarks' harness."""
    key = f"memwatch_bench_{name}"
    module = sys.modules.get(key)
    if module is None:
        spec = importlib.util.spec_from_file_location(key, BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return module


def make_settings(cgroup_root: str | Path = "/sys/fs/cgroup", **over: Any) -> Settings:
    base: dict[str, Any] = dict(
        kubeconfig=None, namespaces=(), label_selector="", protections=Protections(), defaults=Defaults(),
        dry_run=False, escalation_timeout=60.0, max_per_minute=0, max_per_namespace_per_minute=0,
        metrics_port=0, liveness="", verbose=False, max_sample_age=2.0, node_name="node1",
        cgroup_root=str(cgroup_root), sample_period=0.1)
    base.update(over)
    return Settings(**base)


def make_pod(uid: str = UID_B, name: str = "app", namespace: str = "default",
             annotations: dict[str, str] | None = None,
             containers: tuple[tuple[str, str | None, str], ...] = (("app", "256Mi", CID_APP),
                                                                   ("sidecar", "128Mi", CID_SIDE)),
             qos: str = "Burstable", node: str = "node1", runtime: str = "containerd") -> dict[str, Any]:
    """A raw pod as the API returns it; ``containers`` are (name, limits.memory, CRI id)."""
    return {
        "metadata": {"uid": uid, "name": name, "namespace": namespace,
                     "annotations": annotations if annotations is not None else {"memwatch.io/limit": "300Mi"}},
        "spec": {"nodeName": node, "containers": [
            {"name": n, "resources": {"limits": {"memory": lim}} if lim else {}} for n, lim, _ in containers]},
        "status": {"phase": "Running", "qosClass": qos, "containerStatuses": [
            {"name": n, "containerID": f"{runtime}://{cid}"} for n, _, cid in containers if cid]},
    }


def v1_app(tree: Path) -> Path:
    return tree / "memory" / "kubepods" / "burstable" / f"pod{UID_B}" / CID_APP


def v2_app(tree: Path) -> Path:
    pod = f"kubepods-burstable-pod{UID_B.replace('-', '_')}.slice"
    return tree / "kubepods.slice" / "kubepods-burstable.slice" / pod / f"cri-containerd-{CID_APP}.scope"


def set_usage(cgroup: Path, working_set: int, inactive: int = 24 * MiB) -> None:
    """Rewrite a fixture cgroup's usage and memory.stat so its working set is ``working_set``."""
    usage_file = "memory.usage_in_bytes" if (cgroup / "memory.usage_in_bytes").exists() else "memory.current"
    key = "total_inactive_file" if usage_file == "memory.usage_in_bytes" else "inactive_file"
    (cgroup / usage_file).write_text(f"{working_set + inactive}\n")
    lines = []
    for line in (cgroup / "memory.stat").read_text().splitlines():
        k = line.split(" ", 1)[0]
        lines.append(f"{k} {inactive}" if k == key else line)
    (cgroup / "memory.stat").write_text("\n".join(lines) + "\n")


def fd_count() -> int:
    """How many descriptors this process holds now."""
    return len(os.listdir("/proc/self/fd"))


def v1_pod(tree: Path, uid: str, cid: str, working_set: int, qos: str = "burstable") -> Path:
    """Add a one-container pod to a v1 fixture tree, with just the files the reader opens; returns
    the container's cgroup (inactive file: 24 MiB)."""
    pod = tree / "memory" / "kubepods" / qos / f"pod{uid}"
    pod.mkdir(parents=True)
    container = pod / cid
    v1_container(container, working_set)
    return container


def v1_container(path: Path, working_set: int, inactive: int = 24 * MiB) -> None:
    """A minimal v1 container cgroup: the usage file, memory.stat and an empty cgroup.procs."""
    path.mkdir()
    (path / "memory.usage_in_bytes").write_text(f"{working_set + inactive}\n")
    (path / "memory.stat").write_text(f"cache {inactive}\ntotal_inactive_file {inactive}\n")
    (path / "cgroup.procs").write_text("")


def real_cgroup_unavailable() -> str | None:
    """Why a real cgroup v1 memory cgroup cannot be made here, or None when it can."""
    return v1_unavailable()


@contextlib.contextmanager
def real_memory_cgroup(prefix: str = "memwatch-test") -> Iterator[Path]:
    """A fresh real v1 memory cgroup (root only), removed with anything left in it afterwards."""
    path = V1_MEMORY / f"{prefix}-{uuid.uuid4().hex[:10]}"
    path.mkdir()
    try:
        yield path
    finally:
        remove_tree(path)


def spawn_in(cgroup: Path, argv: list[str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` inside a real cgroup (bench/realcgroup.py); returns once the process is in and
    runs ``argv`` (its exec done, so its name is the program's)."""
    proc = spawn(cgroup, argv, wait=True)
    wait_comm(proc.pid, Path(argv[0]).name[:15])
    return proc
