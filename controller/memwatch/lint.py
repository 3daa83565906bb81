"""`memwatch lint`: validate memwatch annotations in Kubernetes manifests, for users' own CI.

Reads Pods and the pod templates of Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and
CronJobs (also inside `kind: List`), in multi-document YAML. Prints the resolved policy of each
annotated pod or template, or a precise error naming the file, object, annotation and value.
Uses the same :func:`memwatch.policy.resolve` as the controller, so lint and runtime agree.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

import yaml

from memwatch.podindex import template_policy
from memwatch.policy import PREFIX, InvalidPolicy, is_watched

TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"}


def pod_templates(obj: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any], Mapping[str, Any]]]:
    """(label, pod metadata, pod spec) for every pod or pod template in a manifest object."""
    kind = obj.get("kind")
    if not isinstance(kind, str):
        return  # not a Kubernetes object (and an unhashable kind must not crash the linter)
    name = _map(obj.get("metadata")).get("name", "?")
    label = f"{kind}/{name}"
    if kind == "List":
        items = obj.get("items")
        for item in items if isinstance(items, list) else ():
            if isinstance(item, Mapping):
                yield from pod_templates(item)
    elif kind == "Pod":
        yield label, _map(obj.get("metadata")), _map(obj.get("spec"))
    elif kind in TEMPLATE_KINDS:
        tpl = _map(_map(obj.get("spec")).get("template"))
        yield label, _map(tpl.get("metadata")), _map(tpl.get("spec"))
    elif kind == "CronJob":
        tpl = _map(_map(_map(_map(obj.get("spec")).get("jobTemplate")).get("spec")).get("template"))
        yield label, _map(tpl.get("metadata")), _map(tpl.get("spec"))


def _map(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else empty: hand-written YAML can put anything anywhere."""
    return value if isinstance(value, Mapping) else {}


def _malformed(spec: Mapping[str, Any]) -> str | None:
    """What is structurally wrong with a pod spec's containers, or None (the API server would
    reject such a manifest; the linter must say so rather than crash)."""
    containers = spec.get("containers")
    if containers is None:
        return None
    if not isinstance(containers, list):
        return "spec.containers is not a list"
    for i, c in enumerate(containers):
        if not isinstance(c, Mapping):
            return f"spec.containers[{i}] is not a mapping"
        resources = c.get("resources")
        if resources is not None and not isinstance(resources, Mapping):
            return f"spec.containers[{i}].resources is not a mapping"
        limits = (resources or {}).get("limits")
        if limits is not None and not isinstance(limits, Mapping):
            return f"spec.containers[{i}].resources.limits is not a mapping"
    return None


def lint_stream(name: str, stream: TextIO, out: TextIO) -> tuple[int, int]:
    """Lint one file. Returns (annotated templates found, errors)."""
    found = errors = 0
    try:
        docs = [d for d in yaml.safe_load_all(stream) if d is not None]
    except yaml.YAMLError as exc:
        print(f"{name}: error: not valid YAML: {exc}".replace("\n", " "), file=out)
        return 0, 1
    for doc in docs:
        if not isinstance(doc, Mapping):
            continue
        for label, meta, spec in pod_templates(doc):
            annotations = _map(meta.get("annotations"))
            annotations = {k: v for k, v in annotations.items() if isinstance(k, str)}
            if not is_watched(annotations):
                continue
            found += 1
            unquoted = [k for k, v in annotations.items() if k.startswith(PREFIX) and not isinstance(v, str)]
            for key in sorted(unquoted):
                print(f"{name}: {label}: error: {key}={annotations[key]!r}: annotation values must be strings; "
                      f"quote it (the API server rejects unquoted {type(annotations[key]).__name__} values)",
                      file=out)
                errors += 1
            if unquoted:
                continue
            malformed = _malformed(spec)
            if malformed:
                print(f"{name}: {label}: error: {malformed}", file=out)
                errors += 1
                continue
            try:
                policy = template_policy({"annotations": annotations}, spec)
            except InvalidPolicy as exc:
                for problem in exc.problems:
                    print(f"{name}: {label}: error: {problem}", file=out)
                    errors += 1
                for warning in exc.warnings:
                    print(f"{name}: {label}: warning: {warning}", file=out)
                continue
            print(f"{name}: {label}: ok: {policy.describe()}", file=out)
            for warning in policy.warnings:
                print(f"{name}: {label}: warning: {warning}", file=out)
    return found, errors


def main(paths: list[str], out: TextIO = sys.stdout) -> int:
    """Exit code 0 when every annotation in every file is valid, 1 otherwise."""
    total = errors = 0
    for path in paths:
        try:
            if path == "-":
                found, bad = lint_stream("<stdin>", sys.stdin, out)
            else:
                with open(path, encoding="utf-8") as fh:
                    found, bad = lint_stream(path, fh, out)
        except UnicodeDecodeError as exc:
            print(f"{path}: error: not UTF-8 text: {exc}", file=out)
            errors += 1
            continue
        except OSError as exc:
            print(f"{path}: error: {exc.strerror or exc}", file=out)
            errors += 1
            continue
        total += found
        errors += bad
    print(f"memwatch lint: {total} annotated pod template(s), {errors} error(s)", file=out)
    return 1 if errors else 0
