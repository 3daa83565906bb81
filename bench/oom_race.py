"""The OOM race: does memwatch's node agent act before the kernel's OOM killer? Judged by the kernel.

For each growth rate (50, 200, 500, 1000 MiB/s) and each run:

1. create a real cgroup v1 memory cgroup ``/sys/fs/cgroup/memory/memwatch-test-<random>`` with a
   hard limit (256 MiB), swappiness 0 and the same memory+swap limit, so nothing escapes to swap;
2. start the static C hog (``tests/images/hog/hog.c``) inside it, growing at the rate;
3. point a real :class:`memwatch.agent.Agent` at it (its cgroup reader, kernel threshold
   notifications, growth prediction and kill rung; no API: the pod is annotated
   ``memwatch.io/action: restart``, so the action is the local kill), watch limit 64 MiB below
   the hard limit;
4. judge by the kernel's record: ``memory.oom_control`` ``oom_kill`` stays 0, ``dmesg`` shows no
   memcg OOM kill naming the cgroup, and the agent's kill came first.

Baselines, on the same hog and judged the same way: a poll loop every 10 s (the kubelet's
eviction cadence) and every 60 s (the closest existing controllers), each starting at a random
phase, reading the same working set and killing at the same watch limit.

The same race with no kernel threshold armed (as on cgroup v2), at 50, 200 and 1000 MiB/s: the lean
guard against the same agent reading every pod in full every sample, interleaved.

Also the agent's CPU at 110 watched pods sampled every 100 ms: fixture cgroup trees (idle pods,
and pods all near their limits so ``memory.stat`` is read every sample), and 110 real v1 memory
cgroups each holding a sleeping process near its limit. Baseline: the same reads done naively
(open, read, close every file, every sample).

Pictures (``bench/pictures.py``, when ``run`` is given a ``pictures`` dict): the first run of each
rate, memwatch's and the 10 s poll's, is traced (the cgroup read every 2 ms by a separate process,
the reads the agent or the poller made, when it acted, when the kernel's ``oom_kill`` went up); its
results count in the rows like every other run's. And the agent's CPU against pod count (10 to 250
real v1 cgroups), adaptive sampling against fixed (``memwatch.agent.MAX_STRIDE`` 1: every pod read
every 100 ms); this sweep adds no row.

Run: ``python bench/oom_race.py [--runs N] [--quick]`` (root, writable cgroup v1). ``run(runs)``
returns the rows for ``make bench``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

import memwatch.agent as agent_module
from memwatch.agent import Agent
from memwatch.cgroups import CgroupReader, CgroupSource, Hierarchy
from memwatch.podindex import PodRecord
from memwatch.policy import Defaults, Usage
from memwatch.protections import Protections
from memwatch.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cgroup_trace import CgroupTrace
from realcgroup import V1_MEMORY, spawn, v1_unavailable

REPO = Path(__file__).resolve().parent.parent
HOG_SOURCE = REPO / "tests" / "images" / "hog" / "hog.c"
MiB = 1 << 20
RATES = (50, 200, 500, 1000)
HARD_MIB = 256
GAP_MIB = 64  # watch limit = hard limit - 64 MiB
#: Pod counts of the agent-CPU picture (110: the kubelet's default --max-pods, row 5's count).
SWEEP_PODS = (10, 25, 50, 110, 250)
TRACE_PERIOD = 0.002  # seconds between the trace process's reads of the racing cgroup (cgroup_trace.py)


# ---------------------------------------------------------------------------------------------
# Harness


def cgroup_v1_unavailable() -> str | None:
    """Why the real-cgroup harness cannot run here, or None when it can."""
    why = v1_unavailable()
    if why is None and shutil.which("gcc") is None:
        return "gcc is missing (the hog is built with gcc -static)"
    return why


def build_hog(cache: Path | None = None) -> Path:
    """Compile the hog (static, -O2) into a cache outside the repository, keyed by its source hash."""
    digest = hashlib.sha256(HOG_SOURCE.read_bytes()).hexdigest()[:16]
    base = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "memwatch"
    out = base / f"hog-{digest}"
    if not out.exists():
        base.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        subprocess.run(["gcc", "-static", "-O2", "-o", str(tmp), str(HOG_SOURCE)], check=True)
        tmp.rename(out)
    return out


class MemCgroup:
    """A real v1 memory cgroup with a hard limit, no swap; removed (its processes killed) on close."""

    def __init__(self, hard: int, prefix: str = "memwatch-test", path: Path | None = None) -> None:
        self.path = path or V1_MEMORY / f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.path.mkdir(parents=path is not None)
        try:
            self._write("memory.swappiness", "0")
            self._write("memory.limit_in_bytes", str(hard))
            with contextlib.suppress(OSError):  # absent without swap accounting
                self._write("memory.memsw.limit_in_bytes", str(hard))
        except OSError:
            self.close()
            raise

    def _write(self, name: str, value: str) -> None:
        (self.path / name).write_text(value)

    def oom_kills(self) -> int:
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise RuntimeError("this kernel's memory.oom_control has no oom_kill counter")

    def spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the cgroup (:func:`realcgroup.spawn`): no byte escapes it."""
        return spawn(self.path, argv)

    def close(self) -> None:
        for _ in range(50):
            with contextlib.suppress(OSError, ValueError):
                for pid in (self.path / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)


def dmesg_oom_for(name: str) -> bool | None:
    """Whether the kernel log has a memcg OOM kill naming this cgroup; None when dmesg is unreadable."""
    try:
        out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return any(f"oom_memcg=/{name}" in line or (f"/{name}" in line and "Killed process" in line)
               for line in out.stdout.splitlines())


@dataclass
class RaceResult:
    """One run: who killed the hog first, by the kernel's own counters."""

    rate: int
    killer: str  # "memwatch", "oom-killer", "nobody"
    oom_kill: int
    dmesg_oom: bool | None
    latency: float | None = None  # seconds from crossing the watch limit to the kill completing
    predicted: bool = False
    exit_signal: int | None = None
    trace: dict[str, Any] | None = None  # with trace=True: the time series for bench/pictures.py

    @property
    def preempted(self) -> bool:
        return self.killer == "memwatch" and self.oom_kill == 0 and self.dmesg_oom is not True


class RecordingSource(CgroupSource):
    """The agent's cgroup source, keeping every read the agent made: (epoch, container bytes)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads: list[tuple[float, int]] = []

    def sample(self, record: PodRecord, fresh: bool = False, rescan: bool = False) -> Usage | None:
        usage = super().sample(record, fresh, rescan)
        if usage is not None:
            self.reads.append((usage.timestamp, sum(usage.containers.values()) or (usage.total or 0)))
        return usage


def _pod(rate: int, hard_mib: int, watch_mib: int) -> dict[str, Any]:
    return {
        "metadata": {"uid": str(uuid.uuid4()), "name": f"hog-{rate}", "namespace": "bench",
                     "annotations": {"memwatch.io/limit": f"{watch_mib}Mi", "memwatch.io/action": "restart"}},
        "spec": {"nodeName": "bench", "containers": [
            {"name": "hog", "resources": {"limits": {"memory": f"{hard_mib}Mi"}}}]},
        "status": {"phase": "Running", "qosClass": "Burstable",
                   "containerStatuses": [{"name": "hog", "containerID": "bench://hog"}]},
    }


def agent_settings(sample_period: float = 0.1, **over: Any) -> Settings:
    base: dict[str, Any] = dict(
        kubeconfig=None, namespaces=(), label_selector="", protections=Protections(), defaults=Defaults(),
        dry_run=False, escalation_timeout=60.0, max_per_minute=0, max_per_namespace_per_minute=0,
        metrics_port=0, liveness="", verbose=False, max_sample_age=2.0, node_name="bench",
        cgroup_root="/sys/fs/cgroup", sample_period=sample_period)
    base.update(over)
    return Settings(**base)


def race_agent(hog: Path, rate: int, hard_mib: int = HARD_MIB, gap_mib: int = GAP_MIB,
               sample_period: float = 0.1, trace: bool = False, kernel_thresholds: bool = True) -> RaceResult:
    """One race of the real agent against the kernel. ``trace``: also record the race's time series
    (:class:`CgroupTrace`, the agent's own reads, when it acted) in ``result.trace``.
    ``kernel_thresholds=False``: the agent registers no v1 threshold (as on cgroup v2, or a read-only
    ``cgroup.event_control``), so only its lean guard stands between its full reads of the cgroup."""
    cg = MemCgroup(hard_mib * MiB)
    try:
        with CgroupTrace(cg.path, TRACE_PERIOD) if trace else contextlib.nullcontext() as tracer:
            # Only a traced race keeps the agent's reads (the others run exactly as before).
            source = (RecordingSource if trace else CgroupSource)(
                Hierarchy(1, V1_MEMORY), locate=lambda rec: (None, {"hog": cg.path}))
            agent = Agent(agent_settings(sample_period), kube=None, source=source, watch=False)
            agent.index.upsert(_pod(rate, hard_mib, hard_mib - gap_mib))
            agent._events_ok = kernel_thresholds  # False: as after a failed registration, none is tried
            started = time.time()
            proc = cg.spawn([str(hog), "--rate", str(rate), "--max", str(hard_mib * 2), "--hold"])
            agent.start()
            try:
                proc.wait(timeout=hard_mib / rate + 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            finally:
                agent.stop()
        oom = cg.oom_kills()
        timing = next((t for t in agent.timings if t.result == "killed"), None)
        killer = "oom-killer" if oom else ("memwatch" if timing else "nobody")
        result = RaceResult(rate, killer, oom, dmesg_oom_for(cg.path.name),
                            exit_signal=-proc.returncode if proc.returncode and proc.returncode < 0 else None)
        if timing is not None:
            result.latency = timing.acted_at - timing.crossed_at
            result.predicted = timing.predicted
            if oom:  # both fired: which first? ours is timestamped; the kernel's counter is not
                result.killer = "oom-killer"
        if tracer is not None:
            reads = source.reads if isinstance(source, RecordingSource) else []
            result.trace = tracer.series(started, reads, result.killer,
                                         acted=None if timing is None else timing.acted_at,
                                         crossed=None if timing is None else timing.crossed_at,
                                         predicted=result.predicted)
        return result
    finally:
        cg.close()


def pause_program(cache: Path | None = None) -> Path:
    """A stand-in for the sandbox's pause program: ``sleep`` under the name ``pause`` (its comm)."""
    base = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "memwatch"
    out = base / "pause"
    if not out.exists():
        base.mkdir(parents=True, exist_ok=True)
        shutil.copy(shutil.which("sleep") or "/bin/sleep", out)
    return out


@dataclass
class StartRace(RaceResult):
    """A race where the leak starts with the container's first instruction."""

    first_sample: float | None = None  # seconds from the container's first process to the agent holding it
    sandbox_alive: bool = True


def race_from_start(hog: Path, pause: Path, rate: int, hard_mib: int = 300, watch_mib: int = 200,
                    sample_period: float = 0.1) -> StartRace:
    """The kubelet's and runc's order on a real v1 hierarchy, the agent finding everything itself.

    A real agent (default cgroup discovery, no API: the pod is in its index as the watch delivers it
    at binding, Pending, with no container IDs) watches a scratch ``kubepods`` tree. Then, as the
    kubelet and runc do: the pod cgroup is made with its limit, the sandbox cgroup with a ``pause``
    process, then the container cgroup, and the hog starts in it at once, growing at ``rate`` from its
    first instruction. Judged by the kernel: ``oom_kill`` of the container and the pod cgroups stays 0,
    the hog dies of the agent's SIGKILL, and the sandbox is left alone.
    """
    root = V1_MEMORY / f"memwatch-arm-{uuid.uuid4().hex[:10]}"
    uid = str(uuid.uuid4())
    hard = hard_mib * MiB
    procs: list[subprocess.Popen[bytes]] = []
    groups: list[MemCgroup] = []
    try:
        (root / "kubepods" / "burstable").mkdir(parents=True)
        source = CgroupSource(Hierarchy(1, root))
        agent = Agent(agent_settings(sample_period), kube=None, source=source, watch=False)
        agent.index.upsert({
            "metadata": {"uid": uid, "name": f"leak-{rate}", "namespace": "bench",
                         "annotations": {"memwatch.io/limit": f"{watch_mib}Mi", "memwatch.io/action": "restart"}},
            "spec": {"nodeName": "bench", "containers": [
                {"name": "app", "resources": {"limits": {"memory": f"{hard_mib}Mi"}}}]},
            "status": {"phase": "Pending", "qosClass": "Burstable"},
        })
        agent.start()
        try:
            time.sleep(2 * sample_period)  # bound to the node: the agent knows the pod, nothing exists yet
            pod = MemCgroup(hard, path=root / "kubepods" / "burstable" / f"pod{uid}")
            groups.append(pod)
            sandbox = MemCgroup(hard, path=pod.path / uuid.uuid4().hex.ljust(64, "0"))
            groups.append(sandbox)
            procs.append(sandbox.spawn([str(pause), "3600"]))
            time.sleep(0.05)  # the kubelet's gap between the sandbox and the first container
            made = time.monotonic()
            app = MemCgroup(hard, path=pod.path / uuid.uuid4().hex.ljust(64, "1"))
            groups.append(app)
            hog_proc = app.spawn([str(hog), "--rate", str(rate), "--max", str(hard_mib * 2), "--hold"])
            procs.append(hog_proc)
            joined = made
            while time.monotonic() - made < 2.0 and not (app.path / "cgroup.procs").read_bytes().strip():
                time.sleep(0.0005)  # the container's first process is in: from here, the agent's clock runs
            joined = time.monotonic()
            try:
                hog_proc.wait(timeout=hard_mib / rate + 10)
            except subprocess.TimeoutExpired:
                hog_proc.kill()
                hog_proc.wait()
            entry = source.pods.get(uid)
            reader = None if entry is None else entry.containers.get("app")
            opened = None if reader is None else reader.opened_at
        finally:
            agent.stop()
        oom = app.oom_kills() + pod.oom_kills()
        timing = next((t for t in agent.timings if t.result == "killed"), None)
        killer = "oom-killer" if oom else ("memwatch" if timing else "nobody")
        rc = hog_proc.returncode
        result = StartRace(rate, killer, oom, dmesg_oom_for(app.path.name),
                           exit_signal=-rc if rc is not None and rc < 0 else None,
                           first_sample=None if opened is None else max(0.0, opened - joined),
                           sandbox_alive=procs[0].poll() is None)
        if timing is not None:
            result.latency = timing.acted_at - timing.crossed_at
            result.predicted = timing.predicted
        return result
    finally:
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait()
        for g in reversed(groups):
            g.close()
        for d in (root / "kubepods" / "burstable", root / "kubepods", root):
            with contextlib.suppress(OSError):
                d.rmdir()


def lean_rows(hog: Path, runs: int, rates: tuple[int, ...] = (50, 200, 1000)) -> list[dict[str, Any]]:
    """The race with no kernel threshold armed (as on cgroup v2, or a read-only cgroup.event_control):
    the lean guard (quiet pods read in full once per stride, their usage file every sample) against
    the same agent reading every pod in full every sample (``MAX_STRIDE`` 1), the two interleaved."""
    rows = []
    for rate in rates:
        lean: list[RaceResult] = []
        every: list[RaceResult] = []
        for _ in range(runs):
            lean.append(race_agent(hog, rate, kernel_thresholds=False))
            shipped = agent_module.MAX_STRIDE
            agent_module.MAX_STRIDE = 1
            try:
                every.append(race_agent(hog, rate, kernel_thresholds=False))
            finally:
                agent_module.MAX_STRIDE = shipped
        target = "100%" if rate <= 200 else ">= the baseline, within one run"
        rows.append({
            "name": f"OOM race {rate} MiB/s without kernel thresholds (lean guard, as on cgroup v2): pre-empted "
                    f"({len(lean)} runs)",
            "memwatch": f"{_pct(lean):.0f}% ({sum(r.preempted for r in lean)}/{len(lean)})",
            "baseline": f"every pod read in full every sample {_pct(every):.0f}% "
                        f"({sum(r.preempted for r in every)}/{len(every)})",
            "ratio": "-", "target": target,
            # One run in ten either way is within what the baseline itself varies by between runs.
            "met": _pct(lean) >= 100.0 if rate <= 200 else _pct(lean) >= _pct(every) - 100.0 / max(len(lean), 1),
            "detail": {"oom_kills": sum(r.oom_kill for r in lean), "baseline_oom_kills": sum(r.oom_kill for r in every),
                       "predicted": sum(r.predicted for r in lean)},
        })
    return rows


def start_rows(runs: int = 20, rates: tuple[int, ...] = (200, 500, 1000)) -> list[dict[str, Any]]:
    """Leaks that start with the container: pre-empted share per rate, and how soon the agent held it."""
    hog, pause = build_hog(), pause_program()
    rows = []
    for rate in rates:
        results = [race_from_start(hog, pause, rate) for _ in range(runs)]
        ok = [r for r in results if r.preempted and r.sandbox_alive]
        firsts = [r.first_sample for r in results if r.first_sample is not None]
        pct = 100.0 * len(ok) / len(results)
        rows.append({
            "name": f"leak from the first instruction, {rate} MiB/s: pre-empted ({runs} runs)",
            "memwatch": f"{pct:.0f}% ({len(ok)}/{len(results)}); held the container cgroup "
                        f"{_ms(_quantile(firsts, 0.5))} / {_ms(_quantile(firsts, 0.99))} "
                        "after its first process (p50 / p99)",
            "baseline": "API container IDs (0.1): 3/10 at 500, 6/10 at 1000 MiB/s on the cluster",
            "ratio": "-", "target": ">= 95%", "met": pct >= 95.0,
            "detail": {"killers": [r.killer for r in results], "oom_kills": sum(r.oom_kill for r in results),
                       "sandbox_killed": sum(not r.sandbox_alive for r in results),
                       "first_sample_ms": [round(v * 1000, 1) for v in firsts]},
        })
    return rows


def race_poll(hog: Path, rate: int, interval: float, hard_mib: int = HARD_MIB, gap_mib: int = GAP_MIB,
              rng: random.Random | None = None, trace: bool = False) -> RaceResult:
    """The baseline: a poll loop every ``interval`` seconds, starting at a random phase. ``trace``: as
    :func:`race_agent`'s (the reads are the poller's)."""
    rng = rng or random.Random()
    watch = (hard_mib - gap_mib) * MiB
    cg = MemCgroup(hard_mib * MiB)
    tracer = CgroupTrace(cg.path, TRACE_PERIOD) if trace else None
    reads: list[tuple[float, int]] = []
    try:
        if tracer is not None:
            tracer.__enter__()
        started = time.time()
        proc = cg.spawn([str(hog), "--rate", str(rate), "--max", str(hard_mib * 2), "--hold"])
        time.sleep(0.01)
        reader = CgroupReader(cg.path, Hierarchy(1, V1_MEMORY))
        previous: tuple[float, int] | None = None
        acted: float | None = None
        crossed: float | None = None
        next_poll = time.time() + rng.uniform(0, interval)
        while proc.poll() is None:
            time.sleep(min(0.01, max(0.0, next_poll - time.time())))
            if proc.poll() is not None or time.time() < next_poll:
                continue
            sample = reader.read(fresh=True)
            reads.append((sample.timestamp, sample.working_set))
            if sample.working_set >= watch:
                crossed = sample.timestamp
                if previous is not None and previous[1] < watch:
                    t0, v0 = previous
                    crossed = t0 + (watch - v0) / max(1, sample.working_set - v0) * (sample.timestamp - t0)
                reader.kill()
                acted = time.time()
                proc.wait()
                break
            previous = (sample.timestamp, sample.working_set)
            next_poll += interval
        reader.close()
        proc.wait()
        if tracer is not None:
            time.sleep(0.05)  # the picture shows the memory going away
            tracer.__exit__()
        oom = cg.oom_kills()
        killer = "oom-killer" if oom else ("poll" if acted else "nobody")
        result = RaceResult(rate, killer, oom, dmesg_oom_for(cg.path.name))
        if acted is not None and crossed is not None and not oom:
            result.killer = "memwatch"  # "the poller acted first", in the same terms as the agent
            result.latency = acted - crossed
        if tracer is not None:
            result.trace = tracer.series(started, reads, "oom-killer" if oom else ("poll" if acted else "nobody"),
                                         acted=acted, crossed=crossed)
        return result
    finally:
        if tracer is not None:
            tracer.__exit__()
        cg.close()


# ---------------------------------------------------------------------------------------------
# Agent CPU at 110 pods


def _fixture_tree(root: Path, pods: int, hot: bool) -> list[dict[str, Any]]:
    """A v1 cgroupfs tree of ``pods`` burstable pods with one container each; returns the raw pods."""
    mem = root / "memory"
    mem.mkdir(parents=True)
    (mem / "memory.usage_in_bytes").write_text("0\n")
    (mem / "memory.stat").write_text("total_inactive_file 0\n")
    stat = (REPO / "tests/agent/fixtures/v1-cgroupfs/memory/kubepods/memory.stat").read_text()
    out = []
    for i in range(pods):
        uid = str(uuid.UUID(int=i + 1))
        cid = f"{i + 1:064x}"
        d = mem / "kubepods" / "burstable" / f"pod{uid}" / cid
        d.mkdir(parents=True)
        used = (200 if hot else 20) * MiB  # hot: above half the 256Mi limit, memory.stat every sample
        (d / "memory.usage_in_bytes").write_text(f"{used}\n")
        (d / "memory.stat").write_text(stat)
        (d / "cgroup.procs").write_text("")
        out.append({
            "metadata": {"uid": uid, "name": f"p{i}", "namespace": "bench",
                         "annotations": {"memwatch.io/limit": "240Mi"}},
            "spec": {"nodeName": "bench", "containers": [
                {"name": "c", "resources": {"limits": {"memory": "256Mi"}}}]},
            "status": {"phase": "Running", "qosClass": "Burstable",
                       "containerStatuses": [{"name": "c", "containerID": f"containerd://{cid}"}]},
        })
    return out


def _cpu_percent(fn: Any, seconds: float) -> float:
    proc = psutil.Process()
    before = proc.cpu_times()
    t0 = time.monotonic()
    fn(seconds)
    wall = time.monotonic() - t0
    after = proc.cpu_times()
    return float(100.0 * ((after.user - before.user) + (after.system - before.system)) / wall)


def agent_cpu(root: Path, pods: list[dict[str, Any]], seconds: float, locate: Any = None) -> tuple[float, int]:
    """CPU % of one core used by a running agent (loop + worker threads) over ``seconds``."""
    cpu, ticks, _ = _agent_cpu_reads(root, pods, seconds, locate)
    return cpu, ticks


def _process_cpu_percent(fn: Any, seconds: float) -> float:
    """:func:`_cpu_percent` on the nanosecond process clock (psutil's ticks are 10 ms: 0.3 % of a core
    over a 3 s window, too coarse for the sweep's short windows)."""
    before = time.process_time()
    t0 = time.monotonic()
    fn(seconds)
    wall = time.monotonic() - t0
    return 100.0 * (time.process_time() - before) / wall


def _agent_cpu_reads(root: Path, pods: list[dict[str, Any]], seconds: float, locate: Any = None,
                     cpu_percent: Any = _cpu_percent) -> tuple[float, int, int]:
    """:func:`agent_cpu`, and how many pod reads the agent made (the rest were left to the kernel)."""
    hierarchy = Hierarchy.detect(root) if locate is None else Hierarchy(1, V1_MEMORY)
    source = CgroupSource(hierarchy, locate=locate)
    agent = Agent(agent_settings(0.1, cgroup_root=str(root)), kube=None, source=source, watch=False)
    for pod in pods:
        agent.index.upsert(pod)
    agent.tick()
    assert len(source.pods) == len(pods), f"resolved {len(source.pods)} of {len(pods)} pods"

    def go(s: float) -> None:
        agent.start()
        time.sleep(s)
        agent.stop()

    ticks0, skipped0 = agent.ticks, agent.skipped
    cpu = cpu_percent(go, seconds)
    ticks = agent.ticks - ticks0
    return cpu, ticks, ticks * len(pods) - (agent.skipped - skipped0)


def cpu_sweep(hog: Path, seconds: float, counts: tuple[int, ...] = SWEEP_PODS,
              log: Any = None) -> list[tuple[int, float, float, float, float]]:
    """The agent's CPU against pod count, for the pictures: ``max(counts)`` real v1 cgroups as in row 5
    (a sleeping process 20 MiB into 32, watched at 30Mi), the first ``n`` of them watched, ``seconds``
    per point and mode. Adaptive: the agent as shipped (a quiet pod under a kernel threshold is read
    up to ``MAX_STRIDE`` periods apart); fixed: ``MAX_STRIDE`` 1, every pod read every 100 ms.
    Returns (pods, fixed CPU %, adaptive CPU %, fixed reads/s, adaptive reads/s) per count."""
    points = []
    with real_cgroups(hog, max(counts)) as (groups, pods):
        by_uid = {pod["metadata"]["uid"]: g.path for pod, g in zip(pods, groups, strict=True)}

        def locate(rec: PodRecord) -> tuple[None, dict[str, Path]]:
            return None, {"c": by_uid[rec.uid]}

        for n in counts:
            measured = {}
            for mode, stride in (("fixed", 1), ("adaptive", agent_module.MAX_STRIDE)):
                shipped = agent_module.MAX_STRIDE
                agent_module.MAX_STRIDE = stride
                try:
                    cpu, _, reads = _agent_cpu_reads(V1_MEMORY, pods[:n], seconds, locate=locate,
                                                     cpu_percent=_process_cpu_percent)
                finally:
                    agent_module.MAX_STRIDE = shipped
                measured[mode] = (cpu, reads / seconds)
            points.append((n, measured["fixed"][0], measured["adaptive"][0], measured["fixed"][1],
                           measured["adaptive"][1]))
            if log is not None:
                log(f"  agent CPU, {n} pods: fixed {measured['fixed'][0]:.2f}% ({measured['fixed'][1]:.0f} reads/s), "
                    f"adaptive {measured['adaptive'][0]:.2f}% ({measured['adaptive'][1]:.0f} reads/s)")
    return points


def naive_cpu(paths: list[Path], seconds: float, period: float = 0.1) -> float:
    """The baseline: open, read and close both files of every cgroup, every sample, no notifications."""
    def go(s: float) -> None:
        end = time.monotonic() + s
        while time.monotonic() < end:
            t0 = time.monotonic()
            for p in paths:
                with open(p / "memory.usage_in_bytes") as f:
                    int(f.read())
                with open(p / "memory.stat") as f:
                    for line in f:
                        if line.startswith("total_inactive_file "):
                            break
            time.sleep(max(0.0, period - (time.monotonic() - t0)))

    return _cpu_percent(go, seconds)


@contextlib.contextmanager
def real_cgroups(hog: Path, n: int, limit_mib: int = 32, watch: str = "30Mi",
                 ) -> Iterator[tuple[list[MemCgroup], list[dict[str, Any]]]]:
    """``n`` real v1 memory cgroups (limit ``limit_mib``, watch limit ``watch``), each with a sleeping
    process holding 20 MiB: near its limits with the defaults, idle with a 256 MiB limit."""
    groups: list[MemCgroup] = []
    procs: list[subprocess.Popen[bytes]] = []
    pods = []
    try:
        for i in range(n):
            cg = MemCgroup(limit_mib * MiB, prefix="memwatch-bench")
            groups.append(cg)
            procs.append(cg.spawn([str(hog), "--sleep", "--start", "20"]))
            uid = str(uuid.UUID(int=i + 1))
            pods.append({
                "metadata": {"uid": uid, "name": f"p{i}", "namespace": "bench",
                             "annotations": {"memwatch.io/limit": watch}},
                "spec": {"nodeName": "bench", "containers": [
                    {"name": "c", "resources": {"limits": {"memory": f"{limit_mib}Mi"}}}]},
                "status": {"phase": "Running", "containerStatuses": [{"name": "c", "containerID": f"x://{i}"}]},
            })
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
                int((g.path / "memory.usage_in_bytes").read_text()) < 16 * MiB for g in groups):
            time.sleep(0.05)
        yield groups, pods
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        for g in groups:
            g.close()


# ---------------------------------------------------------------------------------------------
# Rows


@dataclass
class RateRuns:
    rate: int
    agent: list[RaceResult] = field(default_factory=list)
    poll10: list[RaceResult] = field(default_factory=list)
    poll60: list[RaceResult] = field(default_factory=list)


def _pct(results: list[RaceResult]) -> float:
    return 100.0 * sum(r.preempted for r in results) / len(results) if results else 0.0


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    cuts: list[float] = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[int(q * 100) - 1]


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f} ms"


def race_picture(rate: int, agent: RaceResult, poll10: RaceResult | None, hard_mib: int = HARD_MIB,
                 gap_mib: int = GAP_MIB) -> dict[str, Any]:
    """One rate's traced races as :func:`pictures.oom_race` takes them."""
    return {"rate": rate, "hard_mib": hard_mib, "watch_mib": hard_mib - gap_mib, "memwatch": agent.trace,
            "poll10": None if poll10 is None else poll10.trace}


def run(runs: int = 10, rates: tuple[int, ...] = RATES, cpu_seconds: float = 10.0,
        baselines: bool = True, pictures: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every row of the benchmark as data: name, memwatch, baseline, ratio, target, met (+ detail).

    ``pictures``: filled with the data of bench/pictures.py's pictures: ``oom_race`` (the first run of
    each rate traced, memwatch's and the 10 s poll's; the rows count it like the others) and
    ``agent_cpu`` (:func:`cpu_sweep`, ``cpu_seconds`` a point; it adds no row)."""
    why = cgroup_v1_unavailable()
    if why:
        raise RuntimeError(f"SKIPPED: the OOM race needs a real cgroup v1 memory hierarchy: {why}")
    hog = build_hog()
    rng = random.Random(1234)
    rows: list[dict[str, Any]] = []
    dmesg_readable = dmesg_oom_for("memwatch-never-a-cgroup") is not None
    traces: list[dict[str, Any]] = []
    if pictures is not None:
        pictures["oom_race"] = traces  # replaced, not added to, if make bench runs this again
    for rate in rates:
        rr = RateRuns(rate)
        for i in range(runs):
            traced = pictures is not None and i == 0
            rr.agent.append(race_agent(hog, rate, trace=traced))
            if baselines:
                rr.poll10.append(race_poll(hog, rate, 10.0, rng=rng, trace=traced))
                rr.poll60.append(race_poll(hog, rate, 60.0, rng=rng))
            if traced:
                traces.append(race_picture(rate, rr.agent[-1], rr.poll10[-1] if baselines else None))
        lat = [r.latency for r in rr.agent if r.latency is not None and r.preempted]
        p50, p99 = _quantile(lat, 0.5), _quantile(lat, 0.99)
        target_pct = 100.0 if rate <= 200 else 95.0
        pct = _pct(rr.agent)
        base = f"10s poll {_pct(rr.poll10):.0f}%, 60s poll {_pct(rr.poll60):.0f}%" if baselines else "-"
        ratio = (f"{pct / _pct(rr.poll10):.1f}x vs 10s" if baselines and _pct(rr.poll10) else
                 ("inf vs 10s" if baselines and pct else "-"))
        rows.append({
            "name": f"OOM race {rate} MiB/s: pre-empted ({len(rr.agent)} runs)",
            "memwatch": f"{pct:.0f}% ({sum(r.preempted for r in rr.agent)}/{len(rr.agent)})",
            "baseline": base, "ratio": ratio, "target": f">= {target_pct:.0f}%", "met": pct >= target_pct,
            "detail": {"oom_kills": sum(r.oom_kill for r in rr.agent),
                       "predicted": sum(r.predicted for r in rr.agent), "dmesg_readable": dmesg_readable,
                       "killers": [r.killer for r in rr.agent]},
        })
        poll_lat = [r.latency for r in rr.poll10 if r.latency is not None]
        rows.append({
            "name": f"OOM race {rate} MiB/s: crossing to kill, p50 / p99",
            "memwatch": f"{_ms(p50)} / {_ms(p99)}",
            "baseline": f"10s poll p50 {_ms(_quantile(poll_lat, 0.5))}" if baselines else "-",
            "ratio": "-", "target": "p99 <= 150 ms", "met": p99 is not None and p99 <= 0.150,
            "detail": {"latencies_ms": [round(v * 1000, 1) for v in lat]},
        })
    rows.extend(lean_rows(hog, runs))
    rows.extend(start_rows(runs=max(runs, 20) if runs >= 10 else runs))
    rows.extend(cpu_rows(hog, cpu_seconds))
    if pictures is not None:
        pictures["agent_cpu"] = cpu_sweep(hog, cpu_seconds)
    return rows


def cpu_rows(hog: Path, seconds: float) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="memwatch-bench-") as tmp:
        for hot in (False, True):
            root = Path(tmp) / ("hot" if hot else "idle")
            pods = _fixture_tree(root, 110, hot)
            cpu, ticks = agent_cpu(root, pods, seconds)
            paths = [p for p in (root / "memory" / "kubepods" / "burstable").glob("pod*/*")]
            base = naive_cpu(paths, seconds)
            rows.append(_cpu_row(f"agent CPU, 110 fixture pods @100ms ({'all near limits' if hot else 'idle'}; "
                                 "no kernel thresholds, as on cgroup v2: the lean guard)",
                                 cpu, base, ticks, seconds, target=2.0 if hot else 1.0))
    with real_cgroups(hog, 110) as (groups, pods):
        by_uid = {pod["metadata"]["uid"]: g.path for pod, g in zip(pods, groups, strict=True)}
        cpu, ticks = agent_cpu(V1_MEMORY, pods, seconds,
                               locate=lambda rec: (None, {"c": by_uid[rec.uid]}))
        base = naive_cpu([g.path for g in groups], seconds)
        rows.append(_cpu_row("agent CPU, 110 real v1 cgroups @100ms (all near limits)", cpu, base, ticks, seconds))
    with real_cgroups(hog, 110, limit_mib=256, watch="240Mi") as (groups, pods):
        by_uid = {pod["metadata"]["uid"]: g.path for pod, g in zip(pods, groups, strict=True)}
        cpu, ticks = agent_cpu(V1_MEMORY, pods, seconds,
                               locate=lambda rec: (None, {"c": by_uid[rec.uid]}))
        base = naive_cpu([g.path for g in groups], seconds)
        rows.append(_cpu_row("agent CPU, 110 real v1 cgroups @100ms (idle: 20 of 256 MiB)", cpu, base, ticks,
                             seconds, target=1.0))
    return rows


def _cpu_row(name: str, cpu: float, base: float, ticks: int, seconds: float, target: float = 2.0) -> dict[str, Any]:
    return {"name": name, "memwatch": f"{cpu:.2f}% of a core", "baseline": f"{base:.2f}% (naive re-open reads)",
            "ratio": f"{cpu / base:.2f}x" if base else "-", "target": f"< {target:g}%", "met": cpu < target,
            "detail": {"samples": ticks, "seconds": seconds}}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| figure | memwatch | baseline | ratio | target | met |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['memwatch']} | {r['baseline']} | {r['ratio']} | {r['target']} | "
                     f"{'yes' if r['met'] else '**no**'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=10, help="runs per growth rate (default 10)")
    ap.add_argument("--quick", action="store_true", help="3 runs per rate, 3 s CPU windows")
    ap.add_argument("--rates", default=",".join(map(str, RATES)), help="MiB/s, comma-separated")
    ap.add_argument("--no-baselines", action="store_true", help="skip the 10 s / 60 s poll loops")
    args = ap.parse_args(argv)
    runs = 3 if args.quick else args.runs
    try:
        rows = run(runs, tuple(int(r) for r in args.rates.split(",")), 3.0 if args.quick else 10.0,
                   baselines=not args.no_baselines)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 3
    print(table(rows))
    if rows and not rows[0]["detail"].get("dmesg_readable", True):
        print("\nWARNING: dmesg is unreadable here: judged by memory.oom_control oom_kill only.", file=sys.stderr)
    for r in rows:
        if r["detail"]:
            print(f"<!-- {r['name']}: {r['detail']} -->")
    return 0


if __name__ == "__main__":
    sys.exit(main())
