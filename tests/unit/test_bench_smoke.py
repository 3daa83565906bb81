"""The in-process benchmarks run: ``make bench`` is long and needs the cluster, so a benchmark that no
longer runs against the current code (an import gone, a signature changed) is found here, at tiny
sizes, not by the next full run's NOT RUN row. Figures are printed by ``make bench``, not checked."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # bench/ modules import their siblings by plain name

import controller_scale  # noqa: E402


def test_sweep_cpu_runs_and_measures_every_case() -> None:
    cpu = controller_scale.sweep_cpu(50, 2)
    assert set(cpu) >= {"p50", "p99", "cadence_p50", "cadence_p99", "decide_p50", "decode_p50"}
    assert all(v > 0 for v in cpu.values()), cpu


def test_the_per_pod_poller_baseline_runs() -> None:
    assert controller_scale.poller_cpu(3) > 0
