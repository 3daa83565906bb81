"""Helpers for the chart tests: the real Helm engine (helm-python-sdk),
the chart's maintainer scripts, and the values scenarios (defaults plus every
charts/memwatch/ci/*-values.yaml)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO_DIR = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_DIR / "charts" / "memwatch"
RELEASE = "memwatch"
NAMESPACE = "memwatch"

Obj = dict[str, Any]


def load_hack(name: str) -> ModuleType:
    """Import one of charts/memwatch/hack/*.py (their names have dashes)."""
    path = CHART_DIR / "hack" / f"{name}.py"
    module_name = "memwatch_chart_" + name.replace("-", "_")
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


SCENARIOS: dict[str, Obj] = load_hack("lint").scenarios()


def deep_merge(base: Obj, override: Obj) -> Obj:
    """base with override merged in, recursively (as Helm coalesces values)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


_SEPARATOR = re.compile(r"^---\s*$", re.MULTILINE)


class Rendered:
    """The objects one rendering produced, with lookups the tests need."""

    def __init__(self, manifests: dict[str, str], values: Obj) -> None:
        self.values = values
        self.notes = next((text for path, text in manifests.items() if path.endswith("NOTES.txt")), "")
        self.objects: list[Obj] = []
        for path, text in sorted(manifests.items()):
            if path.endswith("NOTES.txt"):
                continue
            for doc in _SEPARATOR.split(text):
                obj = yaml.safe_load(doc)
                if obj:
                    obj.setdefault("metadata", {}).setdefault("annotations", {})
                    self.objects.append(obj)

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, component: str | None = None) -> Obj:
        found = [
            o
            for o in self.of_kind(kind)
            if component is None or o["metadata"]["labels"].get("app.kubernetes.io/component") == component
        ]
        assert len(found) == 1, f"expected one {kind} {component or ''}, got {[o['metadata']['name'] for o in found]}"
        return found[0]

    def maybe(self, kind: str, component: str | None = None) -> Obj | None:
        found = [
            o
            for o in self.of_kind(kind)
            if component is None or o["metadata"]["labels"].get("app.kubernetes.io/component") == component
        ]
        return found[0] if found else None

    @property
    def controller(self) -> Obj:
        return self.one("Deployment", "controller")

    @property
    def agent(self) -> Obj | None:
        return self.maybe("DaemonSet", "agent")

    @property
    def workloads(self) -> list[Obj]:
        return self.of_kind("Deployment") + self.of_kind("DaemonSet")

    @property
    def hooks(self) -> list[Obj]:
        return [o for o in self.objects if "helm.sh/hook" in o["metadata"]["annotations"]]


def container(workload: Obj) -> Obj:
    """The one container of a Deployment or DaemonSet."""
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: Obj = containers[0]
    return result


def args_of(workload: Obj) -> list[str]:
    return [str(arg) for arg in container(workload)["args"]]


def flag(args: list[str], name: str) -> list[str]:
    """The values given to --name=VALUE in args, in order."""
    prefix = f"--{name}="
    return [arg[len(prefix) :] for arg in args if arg.startswith(prefix)]
