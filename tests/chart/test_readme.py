"""The chart README's values table is generated from values.yaml
(charts/memwatch/hack/gen-readme.py); this fails when they drift."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .chartlib import CHART_DIR, load_hack

gen_readme = load_hack("gen-readme")


def test_readme_values_table_is_in_sync() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    assert readme == gen_readme.render(readme), (
        "charts/memwatch/README.md is out of date with values.yaml: "
        "run .venv/bin/python charts/memwatch/hack/gen-readme.py"
    )


def test_every_value_is_documented_once() -> None:
    rows = gen_readme.rows()
    paths = [".".join(row.path) for row in rows]
    assert len(paths) == len(set(paths))
    for row in rows:
        assert row.description.strip(), row.path


def test_readme_shows_install_annotation_and_logs() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    assert "helm install memwatch charts/memwatch" in readme
    assert "memwatch.io/limit" in readme
    assert "action=evicted pod=" in readme


def copy_chart(tmp_path: Path) -> Path:
    copy = tmp_path / "memwatch"
    shutil.copytree(CHART_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_drift_is_detected(tmp_path: Path) -> None:
    chart = copy_chart(tmp_path)
    values = chart / "values.yaml"
    values.write_text(values.read_text().replace("interval: 5s", "interval: 7s", 1))
    readme = (chart / "README.md").read_text()
    assert gen_readme.render(readme, chart) != readme


def test_undocumented_value_is_an_error(tmp_path: Path) -> None:
    chart = copy_chart(tmp_path)
    values = chart / "values.yaml"
    values.write_text(values.read_text() + "\nundocumented: 1\n")
    with pytest.raises(gen_readme.UndocumentedValueError, match="undocumented"):
        gen_readme.rows(chart)
