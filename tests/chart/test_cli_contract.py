"""The command lines the chart renders are accepted by memwatch's own parser,
and mean what the values say. This is the contract between the chart and
`memwatch run` / `memwatch agent`."""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType
from typing import Any

import pytest

from .chartlib import NAMESPACE, REPO_DIR, Obj, Rendered, args_of

POD_ENV = {"POD_NAME": "memwatch-0", "POD_NAMESPACE": NAMESPACE, "NODE_NAME": "node1"}


def _import(name: str) -> ModuleType:
    if str(REPO_DIR / "controller") not in sys.path:
        sys.path.insert(0, str(REPO_DIR / "controller"))
    try:
        return importlib.import_module(name)
    except ImportError as error:
        pytest.skip(f"SKIPPED LOUDLY: {name} does not import ({error}); the chart's flags are NOT checked")


def parse(workload: Obj) -> Any:
    """Parse a rendered container's args as the container would (with $(VAR) expanded)."""
    cli = _import("memwatch.cli")
    settings = _import("memwatch.settings")
    args = [arg.replace("$(NODE_NAME)", POD_ENV["NODE_NAME"]) for arg in args_of(workload)]
    parser: argparse.ArgumentParser = cli._parser({})
    try:
        namespace = parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"memwatch rejects the chart's command line: {args}")
    return settings.Settings.from_args(namespace, POD_ENV)


def test_controller_and_agent_flags_parse(scenario: Rendered) -> None:
    workloads = [scenario.controller] + ([scenario.agent] if scenario.agent else [])
    for workload in workloads:
        settings = parse(workload)
        values = scenario.values
        assert settings.dry_run == values["dryRun"]
        assert settings.namespaces == tuple(values["namespaces"])
        assert settings.defaults.action.value == values["defaultPolicy"]["action"]
        budget = _import("memwatch.policy").parse_budget(values["defaultPolicy"]["restartBudget"])
        assert settings.defaults.restart_budget == budget
        assert settings.defaults.min_pod_age == parse_seconds(values["defaultPolicy"]["minPodAge"])
        assert settings.max_per_minute == values["eviction"]["maxPerMinute"]
        assert settings.metrics_port == values["metrics"]["port"]
        assert settings.protections.protected_namespaces == frozenset(values["protection"]["namespaces"])
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert settings.protections.self_selector is not None
        assert settings.protections.self_selector.matches(labels)


def test_controller_settings(render: Any) -> None:
    settings = parse(render({"interval": "2s", "source": "kubelet", "replicaCount": 2}).controller)
    assert settings.source == "kubelet"
    assert settings.interval == 2.0
    assert settings.leader_elect is True
    assert settings.leader_election_namespace == NAMESPACE
    assert settings.leader_election_name == "memwatch"


def parse_seconds(duration: str) -> float:
    """A chart duration (`2m`, `1h30m`, `500ms`) in seconds, as the flags read it."""
    seconds: float = _import("memwatch.quantity").parse_duration(duration)
    return seconds


@pytest.mark.parametrize(("budget", "min_age", "expected_budget", "expected_age"), [
    ("5/30m", "2m", (5, 1800.0), 120.0),
    ("off", "1h30m", None, 5400.0),
])
def test_restart_budget_and_min_pod_age_reach_both_components(render: Any, budget: str, min_age: str,
                                                              expected_budget: tuple[int, float] | None,
                                                              expected_age: float) -> None:
    """defaultPolicy.restartBudget and .minPodAge become the same Defaults in the controller and the agent."""
    rendered = render({"defaultPolicy": {"restartBudget": budget, "minPodAge": min_age}, "agent": {"enabled": True}})
    assert rendered.agent is not None
    for workload in (rendered.controller, rendered.agent):
        defaults = parse(workload).defaults
        got = None if defaults.restart_budget is None else (defaults.restart_budget.actions,
                                                            defaults.restart_budget.window)
        assert (got, defaults.min_pod_age) == (expected_budget, expected_age)


def test_agent_settings(render: Any) -> None:
    agent = render({"agent": {"enabled": True, "kill": True, "samplePeriod": "250ms"}}).agent
    assert agent is not None
    settings = parse(agent)
    assert settings.node_name == "node1"
    assert settings.cgroup_root == "/host/sys/fs/cgroup"
    assert settings.sample_period == 0.25
    assert settings.kill is True
