"""The lean guard: where no kernel threshold can be armed (cgroup v2, a read-only
``cgroup.event_control``), one ``pread`` of each quiet pod's usage file per sample stands in for the
kernel's notification, and the pod is read in full once per stride. A crossing, or a growth heading
for a line, between two full reads is acted on at the very next sample.

The fixture trees have no ``cgroup.event_control``, so every agent here runs on the lean guard. On
real cgroups, judged by the kernel: tests/agent/test_adaptive_sampling.py (a crossing between two
full reads) and tests/agent/test_oom_race.py (the race), each with and without kernel thresholds.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pytest

from memwatch.agent import MAX_STRIDE, Agent
from memwatch.cgroups import CgroupReader, CgroupSource, Hierarchy
from memwatch.lifecycle import Phase

from .helpers import UID_B, ApiDouble, make_pod, make_settings, set_usage, v1_app, v2_app

MiB = 1 << 20


def _agent(tree: Path, api: ApiDouble | None = None, **annotations: str) -> Agent:
    agent = Agent(make_settings(tree, sample_period=0.1), kube=api,  # type: ignore[arg-type]
                  source=CgroupSource(Hierarchy.detect(tree)), watch=False)
    agent.index.upsert(make_pod(annotations={"memwatch.io/limit.app": "250Mi", **annotations}))
    return agent


def _app_reader(agent: Agent) -> CgroupReader:
    return agent.source.pods[UID_B].containers["app"]


def _quiet(agent: Agent, tree: Path, app: Path) -> None:
    """Two full reads of the app at 100 MiB (far under its 250Mi line; the pod cgroup, which holds
    app and sidecar, at 160 MiB), then its lean guard armed."""
    set_usage(app, 100 * MiB)
    usage_file = "memory.usage_in_bytes" if (app / "memory.usage_in_bytes").exists() else "memory.current"
    (app.parent / usage_file).write_text(f"{160 * MiB}\n")
    agent.tick()
    agent.tick()
    assert agent._lean_guarding and _app_reader(agent).line is not None


@pytest.fixture(params=["v1", "v2"])
def tree(request: pytest.FixtureRequest) -> tuple[Path, Path]:
    root: Path = request.getfixturevalue(f"{request.param}_tree")
    return root, (v1_app if request.param == "v1" else v2_app)(root)


def test_a_quiet_pod_is_read_in_full_once_per_stride_and_its_usage_file_every_sample(
        tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root, app = tree
    agent = _agent(root)
    _quiet(agent, root, app)
    lean_calls = []
    crossed = agent.source.lean_crossed
    monkeypatch.setattr(agent.source, "lean_crossed", lambda k: lean_calls.append(k) or crossed(k))
    sampled = []
    for _ in range(3 * MAX_STRIDE):
        sampled.append(agent.tick())
        time.sleep(0.1)
    assert len(lean_calls) == len(sampled), "the lean guard reads the usage file every sample"
    full = [k for k, n in enumerate(sampled) if n]
    assert 2 <= len(full) <= 4, f"read in full at samples {full}: once per stride of {MAX_STRIDE}"
    assert full[0] <= MAX_STRIDE and all(b - a <= MAX_STRIDE for a, b in itertools.pairwise(full)), full


def test_a_crossing_between_two_full_reads_is_acted_on_at_the_very_next_sample(tree: tuple[Path, Path]) -> None:
    root, app = tree
    api = ApiDouble()
    agent = _agent(root, api)
    _quiet(agent, root, app)
    assert agent.tick() == 0, "quiet and not due: no full read"
    set_usage(app, 260 * MiB)  # past the 250Mi line between two samples
    assert agent.tick() >= 1, "the lean guard saw the crossing: this sample reads the pod"
    life = agent.lifecycle.peek(UID_B)
    assert life is not None and life.phase is not Phase.IDLE, life
    agent.worker.run_pending()
    assert api.evictions == [("default", "app", UID_B)]


def test_a_growth_heading_for_a_line_is_read_in_full_before_it_gets_there(tree: tuple[Path, Path]) -> None:
    """Prediction needs consecutive full reads of a growing pod: a growth that would reach the line
    within the lookahead at its current rate wakes the next sample, long before the line."""
    root, app = tree
    agent = _agent(root, ApiDouble())
    _quiet(agent, root, app)
    assert agent.tick() == 0
    reader = _app_reader(agent)
    step = int((reader.line - reader.last_usage) / agent._lookahead()) + MiB  # reaches the line within it
    set_usage(app, 100 * MiB + step)
    assert agent.tick() >= 1, "a growth heading for the line reads the pod at once"
    assert agent.lifecycle.peek(UID_B) is None or agent.lifecycle.peek(UID_B).phase is Phase.IDLE


def test_a_slow_drift_far_below_every_line_reads_nothing_in_full(tree: tuple[Path, Path]) -> None:
    root, app = tree
    agent = _agent(root)
    _quiet(agent, root, app)
    assert agent.tick() == 0
    set_usage(app, 100 * MiB + 64 * 1024)  # 64 KiB more: years from any line at this rate
    assert agent.tick() == 0


def test_lean_crossed_rules(v1_tree: Path) -> None:
    """The guard's own rules on one fixture cgroup: a line, a growth within the lookahead, a reader
    already past its line (read in full every sample anyway), a garbled or vanished file, and
    cgroups changed since the guard was built."""
    agent = _agent(v1_tree)
    app = v1_app(v1_tree)
    _quiet(agent, v1_tree, app)
    source, reader = agent.source, _app_reader(agent)
    line = reader.line
    assert line is not None
    usage_file = app / "memory.usage_in_bytes"

    def crossed_at(usage: int, lookahead: float = 0.0) -> bool:
        usage_file.write_text(f"{usage}\n")
        return source.lean_crossed(lookahead)

    raw = reader.last_usage
    assert raw is not None and raw < line
    assert not crossed_at(raw)
    assert crossed_at(line)  # at the line counts
    assert not crossed_at(line - 1)
    assert not crossed_at(line - 10 * MiB, lookahead=1e6)  # falling: no growth, however far it looks
    assert crossed_at(line - 5 * MiB, lookahead=1.0)  # +5 MiB a sample: the line in 1 sample
    assert not crossed_at(line - 4 * MiB, lookahead=1.0)  # +1 MiB a sample: 4 samples away
    assert not crossed_at(line - 4 * MiB, lookahead=1e6)  # flat now
    usage_file.write_text("garbled\n")
    assert source.lean_crossed(0.0), "a usage file that does not read as a number: read in full"
    usage_file.write_text("")
    assert source.lean_crossed(0.0), "an emptied file (a removed v1 cgroup reads empty): read in full"
    usage_file.write_text(f"{raw}\n")
    assert not source.lean_crossed(0.0)
    reader.last_usage = line + 1  # its last full read was past the line: its pod is read every sample anyway
    assert not crossed_at(line + 2 * MiB)
    reader.last_usage = raw
    source.generation += 1  # a cgroup came or went since the guard was built
    assert crossed_at(raw)


def test_the_kernels_threshold_and_the_lean_guard_never_both_guard_one_cgroup(v1_tree: Path) -> None:
    """A cgroup with a kernel threshold armed is the kernel's to guard: the lean guard leaves it out."""
    agent = _agent(v1_tree)
    _quiet(agent, v1_tree, v1_app(v1_tree))
    reader = _app_reader(agent)
    assert any(r is reader for _, _, r in agent.source._lean)
    reader.events = [-1]  # as if a v1 eventfd were registered
    try:
        agent.source.guard_lean()
        assert all(r is not reader for _, _, r in agent.source._lean)
    finally:
        reader.events = []


def test_a_kernel_registration_for_old_lines_is_dropped_when_it_cannot_be_renewed(v1_tree: Path) -> None:
    """Notifications stopped working (a registration failed) and then the pod's lines changed: the
    kernel still holds the old thresholds, which guard none of the new lines. They are dropped, and the
    lean guard takes the cgroup at its new line."""
    agent = _agent(v1_tree)
    _quiet(agent, v1_tree, v1_app(v1_tree))
    reader = _app_reader(agent)
    reader.events, reader.thresholds = [os.eventfd(0)], (250 * MiB,)  # as if armed at the old line
    agent._events_ok = False
    agent.index.upsert(make_pod(annotations={"memwatch.io/limit.app": "200Mi"}))  # a lower line
    agent.tick()
    assert not reader.events and reader.thresholds is None
    assert reader.line == 200 * MiB and any(r is reader for _, _, r in agent.source._lean)
    room = reader.guarded_room()  # below the new line (raw usage 124 MiB: 100 working set, 24 inactive)
    assert room == 200 * MiB - 124 * MiB
