"""NOTES.txt, rendered by the real Helm engine: one command that reads every action from every
component, and no claim that memwatch acts when nothing runs."""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest

from .chartlib import NAMESPACE, Obj, Rendered


def action_commands(notes: str) -> list[list[str]]:
    """Every `kubectl logs ... | grep action=` command in the notes, as argv of its kubectl part."""
    return [shlex.split(line.split("|")[0]) for line in notes.splitlines()
            if line.strip().startswith("kubectl logs") and "grep action=" in line]


def selects(selector: str, labels: dict[str, str]) -> bool:
    """Whether an equality-based label selector (k=v,k2=v2) matches labels, as the API server does."""
    return all(labels.get(key) == value for key, value in (term.split("=", 1) for term in selector.split(",")))


def option(argv: list[str], *names: str) -> str:
    """The value of the first of names in argv, in the `-n value` or `--name=value` form."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name:
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    raise AssertionError(f"no {' or '.join(names)} in {shlex.join(argv)}")


def test_one_command_reads_the_actions_of_every_component(scenario: Rendered) -> None:
    check_action_command(scenario)


def test_the_command_follows_a_renamed_chart(render: Any) -> None:
    check_action_command(render({"nameOverride": "oomguard", "agent": {"enabled": True}}))


def check_action_command(scenario: Rendered) -> None:
    commands = action_commands(scenario.notes)
    assert len(commands) == 1, f"NOTES.txt should give one command for every action, got {commands}"
    argv = commands[0]
    assert option(argv, "-n", "--namespace") == NAMESPACE
    # kubectl shows 10 lines per pod by default when given a selector; --prefix names the pod
    # and the container, which is what says which component acted.
    assert "--prefix" in argv and option(argv, "--tail") == "-1"
    selector = option(argv, "-l", "--selector")
    workloads: list[Obj] = [scenario.controller] + ([scenario.agent] if scenario.agent else [])
    for workload in workloads:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selects(selector, labels), f"{selector} misses the pods of {workload['metadata']['name']}"
    containers = {w["spec"]["template"]["spec"]["containers"][0]["name"] for w in workloads}
    for name in containers:
        assert f'"{name}"' in scenario.notes  # the notes say which container name means which component


@pytest.mark.parametrize("agent", [False, True])
def test_scaled_to_zero_says_so(render: Any, agent: bool) -> None:
    notes = render({"replicaCount": 0, "agent": {"enabled": agent}}).notes
    assert "THE CONTROLLER IS SCALED TO ZERO (replicaCount: 0)" in notes
    assert "--set replicaCount=1" in notes
    if agent:
        assert "only the\n  *** node agents run" in notes
        assert "Dry-run is off: memwatch acts" in notes  # the agents do
    else:
        assert "memwatch acts on nothing" in notes
        assert "memwatch acts (" not in notes


def test_scaled_to_zero_in_dry_run_has_one_banner(render: Any) -> None:
    notes = render({"replicaCount": 0, "dryRun": True}).notes
    assert "SCALED TO ZERO" in notes and "DRY-RUN IS ON" not in notes


@pytest.mark.parametrize("replicas", [1, 3])
def test_a_running_controller_is_not_called_scaled_to_zero(render: Any, replicas: int) -> None:
    notes = render({"replicaCount": replicas}).notes
    assert "SCALED TO ZERO" not in notes
    assert re.search(r"Dry-run is off: memwatch acts \(evict by default\)", notes)
