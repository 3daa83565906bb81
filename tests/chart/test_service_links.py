"""Service links off: a Service named <release>-metrics would inject MEMWATCH_METRICS_PORT=tcp://…
into memwatch's own pods, where MEMWATCH_* variables are its settings (seen on a real cluster)."""

from __future__ import annotations

from .chartlib import Rendered


def test_workloads_do_not_get_service_environment_variables(scenario: Rendered) -> None:
    for workload in scenario.workloads:
        spec = workload["spec"]["template"]["spec"]
        assert spec.get("enableServiceLinks") is False, workload["metadata"]["name"]
