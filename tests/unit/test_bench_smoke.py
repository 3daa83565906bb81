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
