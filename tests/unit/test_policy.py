"""The policy engine: annotations → policy (valid and invalid tables), policy + usage → decision."""

from __future__ import annotations

from typing import Any

import pytest

from memwatch.clock import ManualClock
from memwatch.lifecycle import Lifecycle, Step
from memwatch.podindex import build_record
from memwatch.policy import (
    KEY_LIMIT,
    MIN_LIMIT,
    Action,
    ContainerSpec,
    Defaults,
    InvalidPolicy,
    Usage,
    breaches,
    resolve,
    seconds_to_cross,
)

from .fakes import GI, MI

P = "memwatch.io/"
# Two containers with hard limits: 2Gi + 1Gi, so the pod's summed hard limit is 3Gi.
CONTAINERS = (ContainerSpec("app", 2 * GI), ContainerSpec("side", 1 * GI))
NO_LIMITS = (ContainerSpec("app", None), ContainerSpec("side", 1 * GI))


def ann(**kv: str) -> dict[str, str]:
    """memwatch annotations from keyword arguments: limit_app → memwatch.io/limit.app, grace_period → grace-period."""
    out = {}
    for k, v in kv.items():
        key = k.replace("limit_", "limit.") if k.startswith("limit_") else k.replace("_", "-")
        out[P + key] = v
    return out


# ---------------------------------------------------------------------------------------------
# Limits


@pytest.mark.parametrize(("annotations", "expected"), [
    (ann(limit="512Mi"), [("pod", 512 * MI)]),
    (ann(limit="1.5Gi"), [("pod", 3 * GI // 2)]),
    (ann(limit="600M"), [("pod", 600_000_000)]),
    (ann(limit="1G"), [("pod", 1_000_000_000)]),
    (ann(limit="1e9"), [("pod", 1_000_000_000)]),
    (ann(limit="1.Gi"), [("pod", GI)]),
    (ann(limit=".5Gi"), [("pod", GI // 2)]),
    (ann(limit="+700Mi"), [("pod", 700 * MI)]),
    (ann(limit="1Mi"), [("pod", MI)]),
    (ann(limit="90%"), [("pod", int(3 * GI * 0.9))]),
    (ann(limit="100%"), [("pod", 3 * GI)]),
    (ann(limit="12.5%"), [("pod", 3 * GI // 8)]),
    (ann(limit_app="300Mi"), [("container:app", 300 * MI)]),
    (ann(limit_side="50%"), [("container:side", 512 * MI)]),
    (ann(limit_app="75%"), [("container:app", 1536 * MI)]),
    (ann(limit="2Gi", limit_app="1Gi", limit_side="25%"),
     [("pod", 2 * GI), ("container:app", 1 * GI), ("container:side", 256 * MI)]),
], ids=lambda v: repr(v) if isinstance(v, dict) else "")
def test_valid_limits_resolve_to_exact_bytes(annotations: dict[str, str], expected: list[tuple[str, int]]) -> None:
    policy = resolve(annotations, CONTAINERS)
    assert sorted((lim.scope, lim.bytes) for lim in policy.limits) == sorted(expected)
    assert policy.pod_hard_limit == 3 * GI
    assert dict(policy.container_hard_limits) == {"app": 2 * GI, "side": 1 * GI}


def test_absolute_limit_without_any_hard_limit_is_fine() -> None:
    policy = resolve(ann(limit="512Mi"), (ContainerSpec("app", None),))
    assert [(lim.scope, lim.bytes) for lim in policy.limits] == [("pod", 512 * MI)]
    assert policy.pod_hard_limit is None


def test_pod_and_container_limits_any_breach_triggers() -> None:
    policy = resolve(ann(limit="2Gi", limit_app="1Gi"), CONTAINERS)
    # Only the container limit is passed: still a breach.
    over_app = Usage({"app": 1 * GI + 1, "side": 100 * MI}, 10.0, "test")
    assert [b.limit.scope for b in breaches(policy, over_app)] == ["container:app"]
    # Only the pod limit is passed: still a breach.
    over_pod = Usage({"app": 900 * MI, "side": 1200 * MI}, 10.0, "test")
    assert [b.limit.scope for b in breaches(policy, over_pod)] == ["pod"]
    under = Usage({"app": 900 * MI, "side": 900 * MI}, 10.0, "test")
    assert breaches(policy, under) == []


# ---------------------------------------------------------------------------------------------
# The other keys and the defaults


@pytest.mark.parametrize(("extra", "field", "value"), [
    (ann(action="evict"), "action", Action.EVICT),
    (ann(action="delete"), "action", Action.DELETE),
    (ann(action="dry-run"), "action", Action.DRY_RUN),
    (ann(action=" Delete "), "action", Action.DELETE),
    (ann(grace_period="30"), "grace_period", 30),
    (ann(grace_period="0"), "grace_period", 0),
    (ann(grace_period="0030"), "grace_period", 30),
    (ann(**{"for": "5s"}), "for_seconds", 5.0),
    (ann(**{"for": "500ms"}), "for_seconds", 0.5),
    (ann(**{"for": "1m30s"}), "for_seconds", 90.0),
    (ann(**{"for": "2"}), "for_seconds", 2.0),
    (ann(**{"for": "1h"}), "for_seconds", 3600.0),
    (ann(escalate="true"), "escalate", True),
    (ann(escalate="Yes"), "escalate", True),
    (ann(escalate="false"), "escalate", False),
    (ann(escalate="off"), "escalate", False),
    (ann(predict="false"), "predict", False),
    (ann(predict="on"), "predict", True),
])
def test_knobs_parse(extra: dict[str, str], field: str, value: Any) -> None:
    policy = resolve({**ann(limit="1Gi"), **extra}, CONTAINERS)
    assert getattr(policy, field) == value


def test_defaults_apply_when_keys_are_absent() -> None:
    defaults = Defaults(action=Action.DELETE, grace_period=10, for_seconds=3.0, escalate=True, predict=False)
    policy = resolve(ann(limit="1Gi"), CONTAINERS, defaults)
    assert (policy.action, policy.grace_period, policy.for_seconds, policy.escalate, policy.predict) == (
        Action.DELETE, 10, 3.0, True, False)
    # Keys override the defaults, one by one.
    policy = resolve(ann(limit="1Gi", action="evict", grace_period="5", escalate="false", predict="true",
                         **{"for": "0"}), CONTAINERS, defaults)
    assert (policy.action, policy.grace_period, policy.for_seconds, policy.escalate, policy.predict) == (
        Action.EVICT, 5, 0.0, False, True)


def test_builtin_defaults() -> None:
    policy = resolve(ann(limit="1Gi"), CONTAINERS)
    assert (policy.action, policy.grace_period, policy.for_seconds, policy.escalate, policy.predict) == (
        Action.EVICT, None, 0.0, False, True)


def test_describe_names_every_limit_and_knob() -> None:
    policy = resolve(ann(limit="90%", limit_app="1Gi", action="delete", grace_period="30", escalate="true",
                         **{"for": "5s"}), CONTAINERS)
    text = policy.describe()
    for fragment in ("pod<=2.7Gi (90%)", "container:app<=1Gi", "action=delete", "grace-period=30s", "for=5s",
                     "escalate=true"):
        assert fragment in text


# ---------------------------------------------------------------------------------------------
# Invalid annotations: the exact key and a precise message


@pytest.mark.parametrize(("annotations", "containers", "key", "fragment"), [
    (ann(limit="512Xi"), CONTAINERS, "limit", "'512Xi' is not a Kubernetes quantity"),
    (ann(limit="12 bananas"), CONTAINERS, "limit", "is not a Kubernetes quantity"),
    (ann(limit="-1Gi"), CONTAINERS, "limit", "'-1Gi' must be greater than zero"),
    (ann(limit="0"), CONTAINERS, "limit", "'0' must be greater than zero"),
    (ann(limit="0Mi"), CONTAINERS, "limit", "must be greater than zero"),
    (ann(limit=""), CONTAINERS, "limit", "empty quantity"),
    (ann(limit="inf"), CONTAINERS, "limit", "not a Kubernetes quantity"),
    (ann(limit="1_000Mi"), CONTAINERS, "limit", "not a Kubernetes quantity"),
    (ann(limit="512 Mi"), CONTAINERS, "limit", "not a Kubernetes quantity"),
    (ann(limit="1_0%"), CONTAINERS, "limit", "not a percentage"),
    (ann(grace_period="7200"), CONTAINERS, "grace-period", "longer than 3600s"),
    (ann(limit="1e400"), CONTAINERS, "limit", "larger than any memory size"),
    (ann(limit="150%abc"), CONTAINERS, "limit", "'150%abc' is not a Kubernetes quantity"),
    (ann(limit="abc%"), CONTAINERS, "limit", "not a percentage (example: 90%)"),
    (ann(limit="0%"), CONTAINERS, "limit", "must be above 0% and at most 100%"),
    (ann(limit="-5%"), CONTAINERS, "limit", "must be above 0% and at most 100%"),
    (ann(limit="101%"), CONTAINERS, "limit", "must be above 0% and at most 100%"),
    (ann(limit="150%"), CONTAINERS, "limit", "must be above 0% and at most 100%"),
    (ann(limit="1Gi", action="kill"), CONTAINERS, "action", "unknown action; choose one of evict, delete, dry-run"),
    (ann(limit="1Gi", action=""), CONTAINERS, "action", "unknown action"),
    (ann(limit_nope="100Mi"), CONTAINERS, "limit.nope", "no container named 'nope' (containers: app, side)"),
    (ann(**{"limit.": "100Mi"}), CONTAINERS, "limit.", "no container named ''"),
    (ann(limit_side="2Gi"), CONTAINERS, "limit.side",
     "2Gi is above the hard memory limit of container 'side' (1Gi)"),
    (ann(limit_side="1025Mi"), CONTAINERS, "limit.side", "above the hard memory limit of container 'side'"),
    (ann(limit="4Gi"), CONTAINERS, "limit", "4Gi is above the hard memory limit of the pod (3Gi)"),
    (ann(limit="3073Mi"), CONTAINERS, "limit", "above the hard memory limit of the pod (3Gi)"),
    (ann(limit="90%"), NO_LIMITS, "limit",
     "a percentage needs every container to set resources.limits.memory"),
    (ann(limit_app="50%"), NO_LIMITS, "limit.app",
     "a percentage needs container 'app' to set resources.limits.memory"),
    (ann(limit="50%"), (), "limit", "a percentage needs every container"),
    (ann(limit="512m"), CONTAINERS, "limit", "'512m' means 512 thousandths of a byte (suffix m); did you mean 512Mi?"),
    (ann(limit_app="1.5m"), CONTAINERS, "limit.app", "did you mean 1.5Mi?"),
    (ann(limit="1Gi", grace_period="abc"), CONTAINERS, "grace-period", "'abc' is not a whole number of seconds"),
    (ann(limit="1Gi", grace_period="1.5"), CONTAINERS, "grace-period", "is not a whole number of seconds"),
    (ann(limit="1Gi", grace_period="-3"), CONTAINERS, "grace-period", "'-3' is not a whole number of seconds"),
    (ann(limit="1Gi", grace_period=""), CONTAINERS, "grace-period", "empty number of seconds"),
    (ann(limit="1Gi", **{"for": "5x"}), CONTAINERS, "for", "'5x' is not a duration"),
    (ann(limit="1Gi", **{"for": "-1s"}), CONTAINERS, "for", "is not a duration"),
    (ann(limit="1Gi", **{"for": "-1"}), CONTAINERS, "for", "'-1' is not a duration"),
    (ann(limit="1Gi", **{"for": "25h"}), CONTAINERS, "for", "longer than 24h; is the unit right?"),
    (ann(limit="1Gi", **{"for": "5s 3"}), CONTAINERS, "for", "is not a duration"),
    (ann(limit="1Gi", escalate="maybe"), CONTAINERS, "escalate", 'must be "true" or "false"'),
    (ann(limit="1Gi", predict="2"), CONTAINERS, "predict", 'must be "true" or "false"'),
    (ann(action="delete"), CONTAINERS, "limit",
     "no watch limit: set memwatch.io/limit or memwatch.io/limit.<container>"),
], ids=lambda v: repr(v) if isinstance(v, (dict, str)) else "")
def test_invalid_annotations_name_key_and_problem(annotations: dict[str, str], containers: tuple[ContainerSpec, ...],
                                                  key: str, fragment: str) -> None:
    with pytest.raises(InvalidPolicy) as err:
        resolve(annotations, containers)
    problems = err.value.problems
    assert [p.key for p in problems] == [P + key]
    assert fragment in problems[0].message
    assert problems[0].value == annotations.get(P + key, "")
    # The exception's text names the key, the value and the problem, for the log line and the Event.
    assert P + key in str(err.value) and fragment in str(err.value)


# Kubernetes' own grammar, exactly (issue #10 item 9): what `resource.ParseQuantity` refuses, memwatch
# refuses; grace-period is plain ASCII digits; a limit below MIN_LIMIT is a unit mistake, never acted on.
@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("limit", "\uff15\uff10\uff10Mi", "is not a Kubernetes quantity"),  # fullwidth digits
    ("limit", "\u0665\u0661\u0662Mi", "is not a Kubernetes quantity"),  # Arabic-Indic digits
    ("limit", "512Mi\n", "has spaces around it"),
    ("limit", " 512Mi", "has spaces around it"),
    ("limit", "512Mi ", "has spaces around it"),
    ("limit", "\t1Gi", "has spaces around it"),
    ("limit", "1e", "is not a Kubernetes quantity"),
    ("limit", "1Ki5", "is not a Kubernetes quantity"),
    ("limit", "0x100000", "is not a Kubernetes quantity"),
    ("limit", "1e99999999999999999999", "is not a Kubernetes quantity"),  # exponent outside int64
    ("limit", "\u0669\u0660%", "not a percentage"),
    ("limit", " 90%", "not a percentage"),
    ("limit", "0.5", "is only 1B, below the smallest watch limit of 1Mi"),
    ("limit", "1e-3", "is only 1B, below the smallest watch limit of 1Mi"),
    ("limit", "1e5", "is only 97.66Ki, below the smallest watch limit"),
    ("limit", "1023Ki", "below the smallest watch limit of 1Mi"),
    ("limit", "+512m", "did you mean 512Mi?"),
    ("limit", "512u", "millionths of a byte"),
    ("limit.side", "0.05%", "below the smallest watch limit of 1Mi"),
    ("grace-period", "1m", "is not a whole number of seconds"),
    ("grace-period", "1e1", "is not a whole number of seconds"),
    ("grace-period", "1_0", "is not a whole number of seconds"),
    ("grace-period", "+30", "is not a whole number of seconds"),
    ("grace-period", " 30", "is not a whole number of seconds"),
    ("grace-period", "\u0663\u0660", "is not a whole number of seconds"),
    ("grace-period", "9" * 30, "is too large"),
    ("for", "\u0665s", "is not a duration"),
    ("for", "1e1", "is not a duration"),
    ("for", "1_0s", "is not a duration"),
    ("for", " 5s", "is not a duration"),
])
def test_kubernetes_grammar_exactly(key: str, value: str, fragment: str) -> None:
    annotations = {P + key: value} if key.startswith("limit") else {KEY_LIMIT: "1Gi", P + key: value}
    with pytest.raises(InvalidPolicy) as err:
        resolve(annotations, CONTAINERS)
    assert [p.key for p in err.value.problems] == [P + key]
    assert fragment in err.value.problems[0].message


def test_a_limit_below_the_floor_never_reaches_the_index_as_a_policy() -> None:
    """The controller and the agent build their records with the same resolve: no policy, no action."""
    pod = {"metadata": {"uid": "u", "name": "p", "namespace": "n", "annotations": {KEY_LIMIT: "0.5"}},
           "spec": {"containers": [{"name": "app"}]}}
    record = build_record(pod, Defaults(), lambda _pod: None)
    assert record is not None and record.policy is None
    assert "below the smallest watch limit" in record.problems[0].message
    assert MIN_LIMIT == MI


def test_problem_messages_quote_at_most_a_bounded_part_of_the_value() -> None:
    with pytest.raises(InvalidPolicy) as err:
        resolve({KEY_LIMIT: "x" * 300_000}, CONTAINERS)
    assert len(str(err.value)) < 500 and "300000 characters" in str(err.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InvalidPolicy) as err:
        resolve(ann(limit="-1", limit_nope="1Gi", action="kill", grace_period="x", **{"for": "y"}), CONTAINERS)
    assert sorted(p.key for p in err.value.problems) == sorted(
        P + k for k in ("limit", "limit.nope", "action", "grace-period", "for"))


@pytest.mark.parametrize(("typo", "meant"), [
    ("memwatch.io/limt", KEY_LIMIT),
    ("memwatch.io/actoin", "memwatch.io/action"),
    ("memwatch.io/grace_period", "memwatch.io/grace-period"),
    ("memwatch.io/escalte", "memwatch.io/escalate"),
])
def test_unknown_key_warns_with_did_you_mean(typo: str, meant: str) -> None:
    policy = resolve({KEY_LIMIT: "1Gi", typo: "x"}, CONTAINERS)
    assert len(policy.warnings) == 1
    assert f"unknown annotation {typo!r} is ignored; did you mean {meant!r}?" in policy.warnings[0]


def test_unknown_key_far_from_any_known_one_warns_without_a_guess() -> None:
    policy = resolve({KEY_LIMIT: "1Gi", "memwatch.io/colour": "blue"}, CONTAINERS)
    assert policy.warnings == ("unknown annotation 'memwatch.io/colour' is ignored",)


def test_typo_of_the_only_limit_is_invalid_and_warned() -> None:
    with pytest.raises(InvalidPolicy) as err:
        resolve({"memwatch.io/limmit": "1Gi"}, CONTAINERS)
    assert err.value.problems[0].key == KEY_LIMIT
    assert any("did you mean 'memwatch.io/limit'" in w for w in err.value.warnings)


def test_other_prefixes_are_ignored() -> None:
    policy = resolve({KEY_LIMIT: "1Gi", "example.com/limit": "bad", "memwatch.iox/limit": "bad"}, CONTAINERS)
    assert policy.warnings == ()


@pytest.mark.parametrize(("annotations", "fragment"), [
    (ann(limit_side="1Gi"), "equals the hard memory limit of container 'side'"),
    (ann(limit="3Gi"), "equals the hard memory limit of the pod"),
    (ann(limit="1Mi"), "is only 1Mi; is the unit right?"),
])
def test_suspicious_but_valid_limits_warn(annotations: dict[str, str], fragment: str) -> None:
    policy = resolve(annotations, CONTAINERS)
    assert any(fragment in w for w in policy.warnings), policy.warnings


# ---------------------------------------------------------------------------------------------
# Decisions


def _policy(**kv: str) -> Any:
    return resolve(ann(**kv), CONTAINERS)


def _lives() -> tuple[ManualClock, Lifecycle]:
    clock = ManualClock()
    return clock, Lifecycle(clock, max_gap=60.0)


def lives_act(policy: Any, usage: Usage) -> Any:
    """The breach the lifecycle acts on for ``usage`` (the worst one)."""
    step, breach = _lives()[1].observe("u", policy, usage)
    assert step is Step.ACT and breach is not None
    return breach


def test_for_waits_then_acts() -> None:
    policy = _policy(limit="1Gi", **{"for": "10s"})
    clock, lives = _lives()
    over = lambda: Usage({"app": 2 * GI - 1}, clock.wall(), "test")  # noqa: E731
    assert lives.observe("u", policy, over())[0] is Step.WAIT
    clock.advance(5)
    assert lives.observe("u", policy, over())[0] is Step.WAIT
    clock.advance(5)
    step, breach = lives.observe("u", policy, over())
    assert step is Step.ACT
    assert breach is not None and breach.usage == 2 * GI - 1 and breach.over == GI - 1


def test_a_dip_below_the_limit_resets_the_breach() -> None:
    policy = _policy(limit="1Gi", **{"for": "10s"})
    clock, lives = _lives()
    assert lives.observe("u", policy, Usage({"app": 2 * GI - 1}, clock.wall(), "t"))[0] is Step.WAIT
    clock.advance(5)
    assert lives.observe("u", policy, Usage({"app": 100 * MI}, clock.wall(), "t")) == (Step.OK, None)
    clock.advance(6)
    assert lives.observe("u", policy, Usage({"app": 2 * GI - 1}, clock.wall(), "t"))[0] is Step.WAIT


def test_no_for_acts_on_the_first_sample() -> None:
    _, lives = _lives()
    assert lives.observe("u", _policy(limit="1Gi"), Usage({"app": GI + 1}, 5.0, "t"))[0] is Step.ACT


def test_exactly_at_the_limit_is_not_a_breach() -> None:
    assert breaches(_policy(limit="1Gi"), Usage({"app": GI}, 5.0, "t")) == []


def test_breaches_sorted_worst_first() -> None:
    policy = _policy(limit="2Gi", limit_app="1Gi", limit_side="100Mi")
    # pod: 2.2Gi/2Gi = 1.1; app: 1.5Gi/1Gi = 1.5; side: 700Mi/100Mi = 7.
    usage = Usage({"app": 3 * GI // 2, "side": 700 * MI}, 1.0, "t", pod_bytes=2 * GI + GI // 5)
    assert [b.limit.scope for b in breaches(policy, usage)] == ["container:side", "container:app", "pod"]
    assert lives_act(policy, usage).limit.scope == "container:side"


def test_missing_container_sample_is_never_a_breach() -> None:
    policy = _policy(limit_side="100Mi")
    usage = Usage({"app": 10 * GI}, 1.0, "t")  # no sample for side at all
    assert breaches(policy, usage) == []


def test_pod_total_prefers_the_pod_cgroup_figure() -> None:
    assert Usage({"a": 1, "b": 2}, 0.0, "t").total == 3
    assert Usage({"a": 1, "b": 2}, 0.0, "t", pod_bytes=10).total == 10
    policy = _policy(limit="1Gi")
    assert breaches(policy, Usage({"app": 100}, 0.0, "t", pod_bytes=GI + 1))[0].usage == GI + 1


@pytest.mark.parametrize(("samples", "ceiling", "expected"), [
    ([], 100, None),
    ([(0.0, 50)], 100, None),
    ([(0.0, 150)], 100, 0.0),
    ([(0.0, 10), (1.0, 100)], 100, 0.0),
    ([(0.0, 10), (1.0, 20), (2.0, 30)], 100, 7.0),
    ([(0.0, 0), (2.0, 20), (4.0, 40)], 100, 6.0),
    ([(0.0, 30), (1.0, 20), (2.0, 10)], 100, None),
    ([(0.0, 30), (1.0, 30)], 100, None),
    ([(5.0, 10), (5.0, 20)], 100, None),
])
def test_seconds_to_cross(samples: list[tuple[float, int]], ceiling: int, expected: float | None) -> None:
    got = seconds_to_cross(samples, ceiling)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_seconds_to_cross_tolerates_one_noisy_sample() -> None:
    samples = [(float(t), 10 * t) for t in range(10)]
    samples[5] = (5.0, 80)  # a spike
    got = seconds_to_cross(samples, 200)
    assert got is not None and 9 < got < 13
