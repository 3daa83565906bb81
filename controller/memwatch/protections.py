"""Protections: which pods memwatch must never touch, whatever their annotations say.

Like descheduler's eligibility filter, this is separate from the policy (what to do) and the
enforcer (how to do it). Every check returns a reason string, used in the log line and in the
``MemwatchProtected`` Event, or None when the pod may be acted on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from memwatch.podindex import MIRROR_ANNOTATION

#: The priority of the `system-cluster-critical` PriorityClass.
SYSTEM_CLUSTER_CRITICAL = 2_000_000_000

_REQ = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9._/-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<val>[A-Za-z0-9._-]*)|\s+(?P<setop>in|notin)\s*\((?P<vals>[^)]*)\))?\s*$"
)


class SelectorError(ValueError):
    """A label selector that does not parse."""


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A Kubernetes label selector string (equality- and set-based), matched client-side."""

    text: str
    requirements: tuple[tuple[str, str, frozenset[str]], ...]

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        reqs: list[tuple[str, str, frozenset[str]]] = []
        for part in _split(text):
            m = _REQ.match(part)
            if not m:
                raise SelectorError(f"{text!r} is not a label selector (bad part {part!r})")
            key = m.group("key")
            if m.group("neg"):
                if m.group("op") or m.group("setop"):
                    raise SelectorError(f"{text!r}: '!' takes a bare key")
                reqs.append((key, "!exists", frozenset()))
            elif m.group("op"):
                op = "!=" if m.group("op") == "!=" else "="
                reqs.append((key, op, frozenset({m.group("val")})))
            elif m.group("setop"):
                vals = frozenset(v.strip() for v in m.group("vals").split(",") if v.strip())
                reqs.append((key, m.group("setop"), vals))
            else:
                reqs.append((key, "exists", frozenset()))
        return cls(text, tuple(reqs))

    def matches(self, labels: Mapping[str, str]) -> bool:
        if not self.requirements:
            return False  # an empty selector protects nothing
        for key, op, vals in self.requirements:
            present = key in labels
            value = labels.get(key)
            ok = {
                "exists": present,
                "!exists": not present,
                "=": present and value in vals,
                "in": present and value in vals,
                "!=": not present or value not in vals,
                "notin": not present or value not in vals,
            }[op]
            if not ok:
                return False
        return True


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p for p in parts if p.strip()]


@dataclass(frozen=True, slots=True)
class Protections:
    """The never-touch rules. Each default can be changed by a flag."""

    protected_namespaces: frozenset[str] = frozenset({"kube-system"})
    allowed_namespaces: frozenset[str] = frozenset()  # protected namespaces explicitly allowed
    excluded_namespaces: frozenset[str] = frozenset()  # deny list
    included_namespaces: frozenset[str] = frozenset()  # allow list; empty means all
    protected_priority: int | None = SYSTEM_CLUSTER_CRITICAL
    self_selector: LabelSelector | None = None
    self_pod: tuple[str, str] | None = None  # (namespace, name) of this very process's pod

    def reason(self, pod: Mapping[str, Any]) -> str | None:
        """Why this raw pod must not be touched, or None."""
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        ns = str(meta.get("namespace", ""))
        name = str(meta.get("name", ""))
        if MIRROR_ANNOTATION in (meta.get("annotations") or {}):
            return "mirror pod of a static pod"
        if any(ref.get("kind") == "Node" for ref in meta.get("ownerReferences") or ()):
            return "static pod owned by its node"
        if self.self_pod == (ns, name) or (
                self.self_selector is not None and self.self_selector.matches(meta.get("labels") or {})):
            return "memwatch's own pod"
        if self.included_namespaces and ns not in self.included_namespaces:
            return f"namespace {ns} is not in the watched namespaces"
        if ns in self.excluded_namespaces:
            return f"namespace {ns} is excluded"
        if ns in self.protected_namespaces and ns not in self.allowed_namespaces:
            return f"namespace {ns} is protected (allow it with --allow-namespace {ns})"
        priority = spec.get("priority")
        if self.protected_priority is not None and isinstance(priority, int) \
                and priority >= self.protected_priority:
            return f"priority {priority} is at or above {self.protected_priority} (system-critical)"
        return None
