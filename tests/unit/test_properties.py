"""Property tests: no input string crashes the parsers, the policy engine or `memwatch lint`."""

from __future__ import annotations

import io
import tracemalloc

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from memwatch import lint
from memwatch.policy import (
    KEY_ACTION,
    KEY_ESCALATE,
    KEY_FOR,
    KEY_GRACE_PERIOD,
    KEY_LIMIT,
    KEY_PREDICT,
    MIN_LIMIT,
    PREFIX,
    ContainerSpec,
    InvalidPolicy,
    Policy,
    resolve,
)
from memwatch.quantity import QuantityError, parse_bytes, parse_duration

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# YAML round trips are slow in pure Python: fewer examples keep the suite at seconds.
LINT = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that looks like what people write, plus anything at all.
QUANTITYISH = st.one_of(
    st.text(),
    st.from_regex(r"\A[-+ ]?[0-9._eE]{0,12}(Ki|Mi|Gi|Ti|Pi|Ei|[numkKMGTPE])?%?[a-z%]{0,3} ?\Z"),
    st.sampled_from(["nan", "NaN%", "inf", "-inf", "Infinity", "sNaN", "1e999999999Ei", "1E", "0x10", "1_000",
                     "9" * 400, "1e-400", "%", "100%%", "1.5.5Gi", "\x00", "٣Mi", "½Gi"]),
)
DURATIONISH = st.one_of(
    st.text(),
    st.from_regex(r"\A[-+ ]?([0-9.eE]{0,6}(ms|h|m|s)?){0,4}\Z"),
    st.sampled_from(["nan", "inf", "1e400", "9" * 400 + "h", "1e308h", "0.5ms1s", "1m30s", "1s1s1s"]),
)
KNOWN = [KEY_LIMIT, KEY_ACTION, KEY_GRACE_PERIOD, KEY_FOR, KEY_ESCALATE, KEY_PREDICT]
CONTAINER_NAMES = st.one_of(st.text(max_size=20), st.sampled_from(["app", "side", "", "a.b", "limit"]))
CONTAINERS = st.lists(
    st.builds(ContainerSpec, CONTAINER_NAMES, st.one_of(st.none(), st.integers(1, 2**63))), max_size=4)


@st.composite
def annotation_maps(draw: st.DrawFn) -> tuple[dict[str, str], list[ContainerSpec]]:
    containers = draw(CONTAINERS)
    annotations: dict[str, str] = {}
    for key in draw(st.lists(st.sampled_from(KNOWN), unique=True)):
        annotations[key] = draw(QUANTITYISH if key == KEY_LIMIT else st.one_of(QUANTITYISH, DURATIONISH))
    names = [c.name for c in containers] + draw(st.lists(CONTAINER_NAMES, max_size=2))
    for name in draw(st.lists(st.sampled_from(names), unique=True)) if names else ():
        annotations[PREFIX + "limit." + name] = draw(QUANTITYISH)
    for suffix in draw(st.lists(st.text(max_size=30), max_size=3)):
        annotations[PREFIX + suffix] = draw(st.text())
    annotations.update(draw(st.dictionaries(st.text(max_size=30), st.text(max_size=30), max_size=3)))
    return annotations, containers


@FAST
@given(annotation_maps())
@example(({KEY_LIMIT: "150%abc"}, [ContainerSpec("app", 1)]))
@example(({KEY_LIMIT: "1e-300%"}, [ContainerSpec("app", 2**63)]))
@example(({KEY_LIMIT: "100%", PREFIX + "limit.": "1"}, []))
def test_resolve_raises_only_invalid_policy(case: tuple[dict[str, str], list[ContainerSpec]]) -> None:
    annotations, containers = case
    try:
        policy = resolve(annotations, containers)
    except InvalidPolicy as exc:
        assert exc.problems, "an InvalidPolicy always says what is wrong"
        assert all(p.key.startswith(PREFIX) for p in exc.problems)
        return
    assert isinstance(policy, Policy)
    assert policy.limits and all(lim.bytes >= MIN_LIMIT for lim in policy.limits)
    # A valid limit is never above the hard limit it is measured against.
    hard = dict(policy.container_hard_limits)
    for lim in policy.limits:
        ceiling = policy.pod_hard_limit if lim.container is None else hard.get(lim.container)
        assert ceiling is None or lim.bytes <= ceiling
    policy.describe()


@FAST
@given(QUANTITYISH, st.booleans())
def test_parse_bytes_raises_only_quantity_error(text: str, allow_zero: bool) -> None:
    try:
        value = parse_bytes(text, allow_zero=allow_zero)
    except QuantityError:
        return
    assert isinstance(value, int) and 0 <= value <= 2**63
    assert value > 0 or allow_zero
    # Kubernetes' grammar: ASCII only, nothing around the number.
    assert text.isascii() and text == text.strip() and "_" not in text


UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


@FAST
@given(st.integers(1, 2**20), st.sampled_from(sorted(UNITS)), st.sampled_from(["", "+", "0", "00"]))
def test_parse_bytes_is_exact_on_every_plain_form(number: int, unit: str, prefix: str) -> None:
    assert parse_bytes(f"{prefix}{number}{unit}") == number * UNITS[unit]


@FAST
@given(st.integers(1, 10**12), st.integers(0, 12), st.sampled_from(["e", "E"]))
def test_parse_bytes_reads_exponents_and_fractions_exactly(number: int, shift: int, e: str) -> None:
    digits = str(number)
    point = max(0, len(digits) - shift)
    text = f"{digits[:point]}.{digits[point:]}{e}{shift}" if point else f".{digits}{e}{len(digits)}"
    assert parse_bytes(text) == number


@FAST
@given(DURATIONISH)
def test_parse_duration_raises_only_quantity_error(text: str) -> None:
    try:
        value = parse_duration(text)
    except QuantityError:
        return
    assert isinstance(value, float) and value >= 0 and value != float("inf")


# -- memwatch lint on arbitrary YAML-ish text ----------------------------------------------------

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12),
                    QUANTITYISH)
JSONISH = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=10), st.integers()), inner, max_size=3)),
    max_leaves=12)


@st.composite
def manifests(draw: st.DrawFn) -> str:
    """Kubernetes-shaped documents with arbitrary holes and types in them, as YAML text."""
    kind = draw(st.one_of(st.sampled_from(["Pod", "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob",
                                           "List", "ConfigMap"]), JSONISH))
    annotations = draw(st.one_of(
        st.dictionaries(st.sampled_from([*KNOWN, PREFIX + "limit.app", PREFIX + "limt"]), SCALARS, max_size=4),
        JSONISH))
    container = draw(st.one_of(
        st.fixed_dictionaries({"name": st.one_of(st.just("app"), SCALARS),
                               "resources": st.one_of(st.fixed_dictionaries(
                                   {"limits": st.one_of(st.fixed_dictionaries({"memory": SCALARS}), JSONISH)}),
                                   JSONISH)}),
        JSONISH))
    spec = draw(st.one_of(st.fixed_dictionaries({"containers": st.one_of(st.just([container]), JSONISH)}), JSONISH))
    meta = draw(st.one_of(st.fixed_dictionaries({"name": SCALARS, "annotations": st.just(annotations)}), JSONISH))
    pod = {"metadata": meta, "spec": spec}
    shapes = {
        "Pod": {"kind": kind, **pod},
        "template": {"kind": kind, "metadata": {"name": "x"}, "spec": {"template": pod}},
        "cron": {"kind": kind, "metadata": {"name": "x"}, "spec": {"jobTemplate": {"spec": {"template": pod}}}},
        "list": {"kind": "List", "items": [{"kind": kind, **pod}, draw(JSONISH)]},
    }
    docs = [shapes[draw(st.sampled_from(sorted(shapes)))] for _ in range(draw(st.integers(1, 3)))]
    return yaml.safe_dump_all(docs, sort_keys=False)


def _lint(text: str) -> int:
    out = io.StringIO()
    stream = io.StringIO(text)
    found, errors = lint.lint_stream("x.yaml", stream, out)
    assert found >= 0 and errors >= 0
    return 1 if errors else 0


@LINT
@given(manifests())
def test_lint_never_crashes_on_odd_manifests(text: str) -> None:
    assert _lint(text) in (0, 1)


@LINT
@given(st.one_of(st.text(), st.text(alphabet=":-[]{}#&*!|>'\"%@`\n ,?abc12"), manifests().map(lambda s: s[:-7])))
@example("kind: Pod\nmetadata: [1, 2]\n")
@example("kind: [Pod]\n")
@example("kind: Deployment\nspec: 5\n")
@example("kind: Pod\nmetadata:\n  annotations:\n    1: x\n    memwatch.io/limit: 1Gi\n")
@example("kind: Pod\nmetadata:\n  annotations: {memwatch.io/limit: 1Gi}\nspec: {containers: 3}\n")
@example("kind: Pod\nmetadata:\n  annotations: {memwatch.io/limit: 1Gi}\nspec: {containers: [3]}\n")
@example("kind: Pod\nmetadata:\n  annotations: {memwatch.io/limit: 90%}\n"
         "spec: {containers: [{name: a, resources: [1]}]}\n")
def test_lint_never_crashes_on_arbitrary_text(text: str) -> None:
    assert _lint(text) in (0, 1)


# -- memwatch lint on hostile YAML: aliases, self-references, deep nesting (issue #10 item 7) ----------

HOSTILE = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
POD_LEAF = "{kind: Pod, metadata: {name: leaf, annotations: {memwatch.io/limit: 512Mi}}}"
PLACES = ["annotation", "name", "kind", "items", "containers", "memory", "annotations", "spec"]


def _document(value: str, place: str) -> str:
    """A Pod- or List-shaped document with ``value`` (YAML flow text) put at ``place``."""
    annotations = f"{{memwatch.io/limit: {value}}}" if place == "annotation" else (
        value if place == "annotations" else "{memwatch.io/limit: 512Mi}")
    name = value if place == "name" else "p"
    kind = value if place == "kind" else ("List" if place == "items" else "Pod")
    memory = value if place == "memory" else "1Gi"
    containers = value if place == "containers" else f"[{{name: app, resources: {{limits: {{memory: {memory}}}}}}}]"
    spec = value if place == "spec" else f"{{containers: {containers}}}"
    items = f"items: {value}\n" if place == "items" else ""
    # The comment makes lint parse the document even where no memwatch key is left in it.
    return (f"# memwatch\nkind: {kind}\nmetadata:\n  name: {name}\n  annotations: {annotations}\nspec: {spec}\n{items}")


def _lint_bounded(text: str) -> str:
    tracemalloc.start()
    try:
        out = io.StringIO()
        found, errors = lint.lint_stream("x.yaml", io.StringIO(text), out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found >= 0 and errors >= 0
    assert peak < 64 << 20, f"{peak >> 20} MiB"
    lines = out.getvalue().splitlines()
    assert all(len(line) <= lint.MAX_LINE + 20 for line in lines)
    return out.getvalue()


@HOSTILE
@given(levels=st.integers(0, 14), fan=st.integers(1, 12), leaf=st.sampled_from(["lol", "512Mi", "1e9", POD_LEAF]),
       place=st.sampled_from(PLACES))
def test_lint_is_bounded_on_alias_chains(levels: int, fan: int, leaf: str, place: str) -> None:
    """Anchors a0..aN, each `fan` aliases of the one before, the last aliased into any field."""
    anchors = [f"a0: &a0 [{', '.join([leaf] * fan)}]"]
    anchors += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fan)}]" for i in range(1, levels + 1)]
    text = "\n".join(anchors) + "\n" + _document(f"*a{levels}", place)
    out = _lint_bounded(text)
    if fan ** (levels + 1) > 10**6:  # far past kubectl's ratio: refused, never expanded
        assert "excessive aliasing" in out


@HOSTILE
@given(depth=st.integers(0, 30), opener=st.sampled_from(["[", "{k: "]), place=st.sampled_from(PLACES))
def test_lint_refuses_every_self_reference(depth: int, opener: str, place: str) -> None:
    closer = "]" if opener == "[" else "}"
    value = "&self " + opener * depth + "[*self]" + closer * depth
    out = _lint_bounded(_document(value, place))
    assert "contains itself" in out


@HOSTILE
@given(depth=st.integers(1, 3000), style=st.sampled_from(["flow-list", "flow-map", "block"]),
       place=st.sampled_from(PLACES))
def test_lint_is_bounded_on_deep_nesting(depth: int, style: str, place: str) -> None:
    if style == "block":  # nested block sequences: "- - - x"
        text = "# memwatch\n" + "- " * depth + "x\n"
    else:
        opener, closer = ("[", "]") if style == "flow-list" else ("{k: ", "}")
        text = _document(opener * depth + "x" + closer * depth, place)
    out = _lint_bounded(text)
    if depth > lint.MAX_DEPTH + 5:
        assert "nested more than" in out or "nesting depth" in out


# -- the JSON decoder every API and kubelet read goes through (orjson, json where orjson refuses) ---
JSONISH = st.recursive(
    # Go's int64 is the widest integer the API server writes; orjson reads integers outside 64 bits as
    # floats (found by this test), so the property holds within them.
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20)


@given(JSONISH)
@example({"k": [1.5, "Ki", None]})
def test_loads_decodes_exactly_what_json_decodes(value: object) -> None:
    import json

    from memwatch.kube import loads

    text = json.dumps(value)
    assert loads(text.encode()) == json.loads(text)


@given(st.binary(max_size=40))
@example(b"{not json")
@example(b'{"a": NaN}')
def test_loads_fails_only_where_json_fails_and_with_the_same_error(data: bytes) -> None:
    import json

    from memwatch.kube import loads

    try:
        expected = json.loads(data)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        try:
            loads(data)
        except ValueError:
            return
        raise AssertionError(f"loads accepted {data!r}, which json refuses") from None
    got = loads(data)
    assert got == expected or (got != got and expected != expected)  # NaN is never equal to itself
