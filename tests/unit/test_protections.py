"""Protections: who memwatch never touches, and the label selectors that name memwatch's own pods."""

from __future__ import annotations

from typing import Any

import pytest

from memwatch.podindex import MIRROR_ANNOTATION, build_record
from memwatch.policy import Defaults
from memwatch.protections import SYSTEM_CLUSTER_CRITICAL, LabelSelector, Protections, SelectorError
from memwatch.settings import Settings

from .fakes import make_pod

DEFAULT = Protections()


def _pod(**kw: Any) -> dict[str, Any]:
    extra_annotations = kw.pop("extra_annotations", {})
    pod = make_pod(kw.pop("name", "web"), kw.pop("namespace", "shop"), **kw)
    pod["metadata"]["annotations"].update(extra_annotations)
    return pod


@pytest.mark.parametrize(("pod", "protections", "fragment"), [
    (_pod(), DEFAULT, None),
    (_pod(extra_annotations={MIRROR_ANNOTATION: "abc"}), DEFAULT, "mirror pod"),
    (_pod(owner_kind="Node"), DEFAULT, "static pod owned by its node"),
    (_pod(owner_kind="ReplicaSet"), DEFAULT, None),
    (_pod(namespace="kube-system"), DEFAULT, "namespace kube-system is protected (allow it with --allow-namespace"),
    (_pod(namespace="kube-system"), Protections(allowed_namespaces=frozenset({"kube-system"})), None),
    (_pod(namespace="kube-system"), Protections(protected_namespaces=frozenset()), None),
    (_pod(namespace="infra"), Protections(protected_namespaces=frozenset({"kube-system", "infra"})),
     "namespace infra is protected"),
    (_pod(priority=SYSTEM_CLUSTER_CRITICAL), DEFAULT, "priority 2000000000 is at or above 2000000000"),
    (_pod(priority=SYSTEM_CLUSTER_CRITICAL + 1000), DEFAULT, "system-critical"),
    (_pod(priority=SYSTEM_CLUSTER_CRITICAL - 1), DEFAULT, None),
    (_pod(priority=SYSTEM_CLUSTER_CRITICAL), Protections(protected_priority=None), None),
    (_pod(priority=1000), Protections(protected_priority=1000), "priority 1000"),
    (_pod(labels={"app.kubernetes.io/name": "memwatch"}),
     Protections(self_selector=LabelSelector.parse("app.kubernetes.io/name=memwatch")), "memwatch's own pod"),
    (_pod(labels={"app.kubernetes.io/name": "web"}),
     Protections(self_selector=LabelSelector.parse("app.kubernetes.io/name=memwatch")), None),
    (_pod(name="memwatch-0", namespace="ops"), Protections(self_pod=("ops", "memwatch-0")), "memwatch's own pod"),
    (_pod(name="memwatch-0", namespace="other"), Protections(self_pod=("ops", "memwatch-0")), None),
    (_pod(namespace="shop"), Protections(excluded_namespaces=frozenset({"shop"})), "namespace shop is excluded"),
    (_pod(namespace="shop"), Protections(included_namespaces=frozenset({"blog"})),
     "namespace shop is not in the watched namespaces"),
    (_pod(namespace="blog"), Protections(included_namespaces=frozenset({"blog"})), None),
    # The deny list wins over the allow list.
    (_pod(namespace="blog"), Protections(included_namespaces=frozenset({"blog"}),
                                          excluded_namespaces=frozenset({"blog"})), "excluded"),
], ids=lambda v: "" if isinstance(v, (dict, Protections)) else str(v))
def test_protection_reasons(pod: dict[str, Any], protections: Protections, fragment: str | None) -> None:
    reason = protections.reason(pod)
    if fragment is None:
        assert reason is None
    else:
        assert reason is not None and fragment in reason


def test_own_pod_from_settings_downward_api_and_self_selector() -> None:
    from memwatch.cli import _parser

    args = _parser({}).parse_args(["run"])
    settings = Settings.from_args(args, {"POD_NAME": "memwatch-abc", "POD_NAMESPACE": "memwatch"})
    me = _pod(name="memwatch-abc", namespace="memwatch")
    assert settings.protections.reason(me) == "memwatch's own pod"
    # The default self selector matches the chart's pods even without the downward API.
    sibling = _pod(name="memwatch-xyz", namespace="memwatch", labels={"app.kubernetes.io/name": "memwatch"})
    assert settings.protections.reason(sibling) == "memwatch's own pod"
    assert settings.protections.reason(_pod(namespace="memwatch")) is None


def test_protected_pod_record_keeps_its_reason() -> None:
    record = build_record(_pod(namespace="kube-system"), Defaults(), DEFAULT.reason)
    assert record is not None and record.protected is not None and "kube-system" in record.protected
    assert record.policy is not None  # still resolved: a protected pod's policy is reported, never acted on


# ---------------------------------------------------------------------------------------------
# Label selectors


@pytest.mark.parametrize(("selector", "labels", "expected"), [
    ("app=web", {"app": "web"}, True),
    ("app=web", {"app": "db"}, False),
    ("app=web", {}, False),
    ("app==web", {"app": "web"}, True),
    ("app!=web", {"app": "db"}, True),
    ("app!=web", {}, True),
    ("app!=web", {"app": "web"}, False),
    ("app", {"app": ""}, True),
    ("app", {"other": "x"}, False),
    ("!app", {"other": "x"}, True),
    ("!app", {"app": "x"}, False),
    ("tier in (web, api)", {"tier": "api"}, True),
    ("tier in (web,api)", {"tier": "db"}, False),
    ("tier in (web)", {}, False),
    ("tier notin (web, api)", {"tier": "db"}, True),
    ("tier notin (web, api)", {}, True),
    ("tier notin (web, api)", {"tier": "web"}, False),
    ("app=web,tier in (a, b),!canary", {"app": "web", "tier": "b"}, True),
    ("app=web,tier in (a, b),!canary", {"app": "web", "tier": "b", "canary": "1"}, False),
    ("app.kubernetes.io/name=memwatch", {"app.kubernetes.io/name": "memwatch"}, True),
    (" app = web , env = prod ", {"app": "web", "env": "prod"}, True),
    ("app=", {"app": ""}, True),
    ("", {"app": "web"}, False),  # an empty selector protects nothing
])
def test_selector_matches(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert LabelSelector.parse(selector).matches(labels) is expected


@pytest.mark.parametrize("selector", [
    "app=web=x", "tier in (a", "tier in a", "!app=web", "!tier in (a)", "app >= 3", "a b", "app=we b",
    "app=(web)", "=web",
])
def test_selector_errors(selector: str) -> None:
    with pytest.raises(SelectorError) as err:
        LabelSelector.parse(selector)
    assert repr(selector) in str(err.value)


def test_selector_requirements_are_structured() -> None:
    sel = LabelSelector.parse("a=1,b!=2,c in (x, y),d notin (z),e,!f")
    assert sel.requirements == (
        ("a", "=", frozenset({"1"})), ("b", "!=", frozenset({"2"})), ("c", "in", frozenset({"x", "y"})),
        ("d", "notin", frozenset({"z"})), ("e", "exists", frozenset()), ("f", "!exists", frozenset()))
