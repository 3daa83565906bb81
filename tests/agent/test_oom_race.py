"""The OOM race on a real cgroup v1 memory cgroup: the agent must act before the kernel, judged by the kernel.

Needs root and a writable cgroup v1 memory hierarchy (skips loudly otherwise). The harness is the
benchmark's (``bench/oom_race.py``); the benchmark runs >= 10 races per rate, these run a few.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from .helpers import load_bench

oom_race = load_bench("oom_race")
WHY = oom_race.cgroup_v1_unavailable()
pytestmark = [
    pytest.mark.cgroup,
    pytest.mark.skipif(WHY is not None, reason=f"SKIPPED LOUDLY: no real OOM race possible here: {WHY}"),
]
RUNS = 3


@pytest.fixture(scope="module")
def hog() -> Path:
    path: Path = oom_race.build_hog()
    return path


@pytest.fixture(scope="module")
def dmesg_readable() -> bool:
    readable = oom_race.dmesg_oom_for("memwatch-never-a-cgroup") is not None
    if not readable:
        warnings.warn("dmesg is unreadable here: the OOM race is judged by memory.oom_control oom_kill only",
                      stacklevel=1)
    return readable


@pytest.mark.parametrize("kernel_thresholds", [True, False], ids=["kernel-threshold", "lean-guard"])
@pytest.mark.parametrize("rate", [50, 200])
def test_the_agent_preempts_the_oom_killer_every_time_at_low_rates(hog: Path, rate: int, kernel_thresholds: bool,
                                                                   dmesg_readable: bool) -> None:
    """With a v1 threshold armed, and without one (as on cgroup v2: the lean guard stands in)."""
    for run in range(RUNS):
        result = oom_race.race_agent(hog, rate, kernel_thresholds=kernel_thresholds)
        assert result.oom_kill == 0, f"run {run}: the kernel OOM-killed the hog first: {result}"
        if dmesg_readable:
            assert result.dmesg_oom is False, f"run {run}: dmesg shows a memcg OOM kill: {result}"
        assert result.killer == "memwatch" and result.exit_signal == 9, f"run {run}: {result}"
        # Timings are the benchmark's business (a loaded machine is slow); only who won is asserted here.
        assert result.latency is not None, f"run {run}: no kill timing recorded: {result}"


def test_the_harness_sees_the_oom_killer_when_nobody_acts(hog: Path, dmesg_readable: bool) -> None:
    """The judge works: a 60 s poll loop on a fast hog loses to the kernel, and the kernel says so."""
    import random

    result = oom_race.race_poll(hog, 1000, 60.0, rng=random.Random(0))
    assert result.oom_kill == 1 and result.killer == "oom-killer" and not result.preempted
    if dmesg_readable:
        assert result.dmesg_oom is True
