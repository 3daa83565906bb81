#!/usr/bin/env python3
"""Lint the chart with the real Helm engine (helm-python-sdk), strict, with its
default values and with every ci/*-values.yaml scenario. Exit 1 on any error
or warning (`helm lint --strict`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import helm_python
import yaml

CHART_DIR = Path(__file__).resolve().parents[1]
SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


def scenarios() -> dict[str, dict[str, Any]]:
    """The values to lint and render with: the defaults, then each ci/*-values.yaml."""
    found: dict[str, dict[str, Any]] = {"defaults": {}}
    for path in sorted((CHART_DIR / "ci").glob("*-values.yaml")):
        found[path.name.removesuffix("-values.yaml")] = yaml.safe_load(path.read_text()) or {}
    return found


def lint(values: dict[str, Any]) -> list[str]:
    """The problems (warnings and errors) `helm lint --strict` finds with these values."""
    report = helm_python.lint(CHART_DIR, values, strict=True, namespace="memwatch")
    problems = [
        f"{SEVERITY.get(m['severity'], m['severity'])} {m['path']}: {m['error']}"
        for m in report["messages"]
        if m["severity"] >= 2
    ]
    return problems + list(report["errors"])


def main() -> int:
    failed = False
    for name, values in scenarios().items():
        problems = lint(values)
        print(f"{name}: {'OK' if not problems else 'FAILED'}")
        for problem in problems:
            print(f"  {problem}")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
