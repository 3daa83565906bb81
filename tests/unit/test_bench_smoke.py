"""The in-process benchmarks run: ``make bench`` is long and needs the cluster, so a benchmark that no
longer runs against the current code (an import gone, a signature changed) is found here, at tiny
sizes, not by the next full run's NOT RUN row. Figures are printed by ``make bench``, not checked."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # bench/ modules import their siblings by plain name

import controller_scale  # noqa: E402


def test_sweep_cpu_runs_and_measures_every_case() -> None:
    cpu = controller_scale.sweep_cpu(50, 2)
    assert set(cpu) >= {"p50", "p99", "cadence_p50", "cadence_p99", "decide_p50", "decode_p50",
                        "agents_p50", "agents_p99", "scan_p50", "scan_p99"}
    assert all(v > 0 for v in cpu.values()), cpu


def test_the_agents_baseline_answers_as_memwatch_does() -> None:
    """The --defer-to-agents row's baseline (the scan it replaced) answers as memwatch's set lookup does."""
    from memwatch.agents import AgentTracker
    from memwatch.podindex import PodIndex
    from memwatch.policy import Defaults

    tracker = AgentTracker("all")
    tracker.replace([controller_scale._agent_pod(i) for i in range(3)] + [
        {**controller_scale._agent_pod(9), "spec": {"nodeName": "node-7"}}], lambda pod: True)
    index = PodIndex(Defaults(), lambda pod: None)
    index.replace((controller_scale._raw_pod(i) for i in range(100)), lambda rec: True)
    scan = controller_scale._ScanningAgents(tracker.nodes())
    answers = [(tracker.defer(r), scan.defer(r)) for r in index.snapshot()]
    assert all(ours == theirs for ours, theirs in answers)
    assert sum(1 for ours, _ in answers if ours) == 2  # the pods on node-7 (7 and 57) are left to its agent


def test_the_sweep_figures_are_measured_after_the_heap_stops_growing() -> None:
    """The warm-up runs sweeps until one faults in no new page, and never more than MAX_WARM_UP."""
    kept: list[bytearray] = []

    def grows(times: int) -> Callable[[], None]:
        def sweep() -> None:
            if len(kept) < times:  # 8 MiB of new, touched pages: page faults, as a growing heap makes
                kept.append(bytearray(b"x" * (8 << 20)))
        return sweep

    assert controller_scale._warm_up(grows(3)) == 4  # three growing sweeps, then a steady one
    kept.clear()
    assert controller_scale._warm_up(grows(10**6)) == controller_scale.MAX_WARM_UP  # bounded
    kept.clear()


def test_the_sweep_figures_are_measured_before_row_3_fills_the_cluster(monkeypatch: Any) -> None:
    """Row 4's in-process figures run first (no 50k pods' API server beside them) and are still
    reported after row 3's; one part failing does not hide the others."""
    ran: list[str] = []

    def part(name: str, fail: bool = False) -> Callable[[Any], list[Any]]:
        def run(ctx: Any) -> list[Any]:
            ran.append(name)
            if fail:
                raise RuntimeError("boom")
            return [name]
        return run

    monkeypatch.setattr(controller_scale, "row4_sweep", part("4-sweep"))
    monkeypatch.setattr(controller_scale, "row3", part("3", fail=True))
    monkeypatch.setattr(controller_scale, "row4_steady", part("4-steady"))
    rows = controller_scale.run(controller_scale.Context(quick=True, log=lambda s: None))
    assert ran == ["4-sweep", "3", "4-steady"]
    assert rows[0].figure.startswith("3.") and "boom" in rows[0].memwatch and rows[0].met == "**NOT RUN**"
    assert rows[1:] == ["4-sweep", "4-steady"]


def test_the_per_pod_poller_baseline_runs() -> None:
    assert controller_scale.poller_cpu(3) > 0


def test_lint_peak_rss_is_lints_own_not_its_parents(tmp_path: Path) -> None:
    """The lint row's peak RSS is the child's own VmHWM: the child's ru_maxrss would carry this
    process's resident size over fork and exec (make bench's was 278 MiB after the 50k-pod rows)."""
    import lint_scale

    path = tmp_path / "manifests.yaml"
    assert lint_scale.generate(path, 0.2, 0.1) > 0
    ballast = bytearray(256 << 20)
    ballast[::4096] = b"x" * len(ballast[::4096])  # resident, not just reserved
    wall, cpu, peak_mib, code = lint_scale.run_lint(path)
    assert code == 0 and wall > 0 and cpu > 0
    assert 5 < peak_mib < 128, f"lint's peak {peak_mib:.0f} MiB: its own, not this process's 256 MiB ballast"
    del ballast
