"""manifests/: memwatch.yaml is the chart rendered with default values, and
every example is valid under `memwatch lint`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .chartlib import REPO_DIR, Rendered, load_hack

render_manifests = load_hack("render-manifests")

MANIFEST = REPO_DIR / "manifests" / "memwatch.yaml"
EXAMPLES = sorted((REPO_DIR / "manifests" / "examples").glob("*.yaml"))
ANNOTATION_KEYS = {
    "memwatch.io/limit",
    "memwatch.io/action",
    "memwatch.io/grace-period",
    "memwatch.io/for",
    "memwatch.io/escalate",
}


def test_manifest_is_in_sync_with_the_chart() -> None:
    assert MANIFEST.read_text() == render_manifests.render_manifests(), (
        "manifests/memwatch.yaml is out of date with charts/memwatch: run `make manifests`"
    )


def test_manifest_is_the_chart_defaults_plus_its_namespace(render: Any) -> None:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    assert docs[0] == {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "memwatch"}}
    # As `helm template --include-crds`: the chart's crds/ too, so that `kubectl apply -f` installs them.
    rendered: Rendered = render(include_crds=True)
    chart_objects = [o for o in rendered.objects if o not in rendered.hooks]
    for obj in chart_objects:
        if not obj["metadata"]["annotations"]:
            del obj["metadata"]["annotations"]
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(docs[1:], key=key) == sorted(chart_objects, key=key)
    # Helm's install order: the CRDs first (Helm installs crds/ before any template), then the
    # ServiceAccount and RBAC before the Deployment.
    kinds = [d["kind"] for d in docs]
    assert kinds[1:3] == ["CustomResourceDefinition"] * 2 and kinds.count("CustomResourceDefinition") == 2
    assert kinds.index("ServiceAccount") < kinds.index("ClusterRole") < kinds.index("Deployment")


def test_manifest_carries_the_crd_files_as_they_are() -> None:
    """Each CRD in memwatch.yaml is its crds/ file, object for object (only the file's leading
    comment is left out), under a Source line naming that file."""
    text = MANIFEST.read_text()
    crd_files = sorted((REPO_DIR / "charts" / "memwatch" / "crds").glob("*.yaml"))
    assert len(crd_files) == 2
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all(text) if d and d["kind"] == "CustomResourceDefinition"}
    for path in crd_files:
        crd = yaml.safe_load(path.read_text())
        assert docs[crd["metadata"]["name"]] == crd, path.name
        assert f"# Source: memwatch/crds/{path.name}\n" in text


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid_kubernetes(example: Path) -> None:
    for doc in yaml.safe_load_all(example.read_text()):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_annotations_name_real_containers(example: Path) -> None:
    """A light check that holds until `memwatch lint` lands: known keys, and
    per-container keys that name a container of the pod."""
    found = False
    for doc in yaml.safe_load_all(example.read_text()):
        if doc["kind"] not in ("Deployment", "Job", "Pod"):
            continue
        template = doc if doc["kind"] == "Pod" else doc["spec"]["template"]
        containers = {c["name"] for c in template["spec"]["containers"]}
        for key in template["metadata"].get("annotations", {}):
            if key.startswith("memwatch.io/limit."):
                assert key.removeprefix("memwatch.io/limit.") in containers, key
                found = True
            elif key.startswith("memwatch.io/"):
                assert key in ANNOTATION_KEYS, key
                found |= key == "memwatch.io/limit"
    assert found, f"{example.name} sets no memwatch.io/limit annotation"


def test_examples_cover_the_issue() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"annotated-deployment", "memory-hog", "dry-run", "per-container"} <= names


def _memwatch_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_DIR / "controller"), env.get("PYTHONPATH")]))
    return env


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_passes_memwatch_lint(example: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "memwatch", "lint", str(example)],
        env=_memwatch_env(),
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"memwatch lint {example.name}:\n{result.stdout}\n{result.stderr}"
