"""Fixtures for the chart tests: the chart loaded by the real Helm engine
(helm-python-sdk) and rendered with each values scenario."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import helm_python
import pytest

from .chartlib import CHART_DIR, NAMESPACE, RELEASE, SCENARIOS, Obj, Rendered


@pytest.fixture(scope="session")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: helm_python.Chart) -> Any:
    """render(values, name=..., namespace=..., include_crds=False) -> Rendered, with the real Helm engine.

    include_crds adds the chart's crds/ (the CustomResourceDefinitions, as they are: Helm never
    templates them) ahead of the templates, as `helm template --include-crds` does."""

    def _render(values: Obj | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE,
                include_crds: bool = False) -> Rendered:
        values = values or {}
        manifests = chart.render(values, name=name, namespace=namespace)
        if include_crds:
            manifests = {crd["filename"]: crd["data"] for crd in chart.crds} | manifests
        return Rendered(manifests, chart.merge_values(values))

    return _render


@pytest.fixture(params=sorted(SCENARIOS), scope="session")
def scenario(request: pytest.FixtureRequest, render: Any) -> Rendered:
    """Each scenario rendered: defaults and every ci/*-values.yaml."""
    rendered: Rendered = render(SCENARIOS[request.param])
    return rendered
