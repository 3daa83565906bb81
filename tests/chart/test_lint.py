"""`helm lint --strict` with the real Helm engine, for every values scenario."""

from __future__ import annotations

import pytest

from .chartlib import SCENARIOS, load_hack

lint = load_hack("lint")


def test_scenarios_cover_the_issue() -> None:
    # Issue #4: agent on, dry-run, namespaced RBAC, ServiceMonitor on, kill rung on.
    assert {"defaults", "agent", "dry-run", "namespaced", "servicemonitor", "kill"} <= set(SCENARIOS)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_lint_strict(name: str) -> None:
    assert lint.lint(SCENARIOS[name]) == []


def test_lint_reports_bad_values() -> None:
    problems = lint.lint({"source": "prometheus"})
    assert problems, "lint passed values the schema must reject"
    assert any("source" in problem for problem in problems)
