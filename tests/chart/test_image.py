"""The Dockerfile's promises, checked statically (building it needs a base
image: the local cluster's `hack/local-cluster.sh images` builds this same
file with podman)."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from .chartlib import CHART_DIR, REPO_DIR

DOCKERFILE = (REPO_DIR / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#"))
    )
    found = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_multi_stage_from_an_overridable_slim_python_base() -> None:
    steps = instructions()
    assert steps[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    froms = [args for word, args in steps if word == "FROM"]
    assert froms == ["${BASE_IMAGE} AS builder", "${BASE_IMAGE}"]


def test_installs_the_package_from_a_wheel() -> None:
    assert re.search(r"pip wheel --no-deps --wheel-dir /wheels \.", DOCKERFILE)
    # At the pinned versions of constraints.txt (tests/unit/test_constraints.py checks them).
    assert re.search(r"pip install -c constraints\.txt /wheels/memwatch-\*\.whl", DOCKERFILE)
    final = DOCKERFILE.split("\nFROM ${BASE_IMAGE}\n", 1)[1]
    assert "COPY --from=builder /opt/memwatch /opt/memwatch" in final
    assert "pip install" not in final


def test_pip_index_comes_from_build_arguments_only() -> None:
    steps = instructions()
    args = {rest.split("=")[0] for word, rest in steps if word == "ARG"}
    assert {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"} <= args
    # A TLS-intercepting proxy's CA comes in as an optional build secret,
    # never baked into a layer.
    assert "RUN --mount=type=secret,id=pip_cert" in DOCKERFILE
    # No index is named in the file: no URL at all outside comments.
    assert not [rest for _, rest in steps if "://" in rest]


def test_runs_as_the_charts_non_root_user(chart: Any) -> None:
    steps = instructions()
    (user,) = [rest for word, rest in steps if word == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit()
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    for context in (values["podSecurityContext"], values["agent"]["podSecurityContext"]):
        assert context["runAsUser"] == int(uid) and context["runAsGroup"] == int(gid)


def test_entrypoint_is_memwatch_run() -> None:
    steps = instructions()
    assert [json.loads(rest) for word, rest in steps if word == "ENTRYPOINT"] == [["memwatch"]]
    assert [json.loads(rest) for word, rest in steps if word == "CMD"] == [["run"]]
    # The last stage ends with them.
    assert [word for word, _ in steps][-2:] == ["ENTRYPOINT", "CMD"]


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [
        line.strip()
        for line in (REPO_DIR / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:] for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "LICENSE", "constraints.txt", "controller/"}
    # The Dockerfile copies exactly what is allowed.
    copied = {rest.split()[0] for word, rest in instructions() if word == "COPY" and "--from" not in rest}
    copied |= {
        part for word, rest in instructions() if word == "COPY" and "--from" not in rest for part in rest.split()[:-1]
    }
    assert copied == {"pyproject.toml", "README.md", "LICENSE", "constraints.txt", "controller"}
