"""`memwatch lint`: validate memwatch annotations and policies in Kubernetes manifests, for users' own CI.

Reads Pods and the pod templates of Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and
CronJobs, also inside API lists (`kind: List`, `DeploymentList`, any kind ending in `List` with
`items`), in multi-document YAML or JSON. Prints the resolved policy of each annotated pod or
template, or a precise error naming the file, object, annotation and value. Uses the same
:func:`memwatch.policy.resolve` as the controller and the agent, so lint and runtime agree.

MemwatchPolicy and ClusterMemwatchPolicy objects are checked with
:func:`memwatch.policyset.parse_policy`, the controller's own parser: each problem is printed in the
words of the policy's ``Ready`` condition, and a value Kubernetes would type differently from the
schema (an unquoted ``1e9`` where a string is wanted) is an error too.

Hostile or huge input is read in bounded time and memory:

* Documents are streamed one at a time. A document whose text never mentions ``memwatch`` (nor a
  backslash, which a quoted key could use to spell it) cannot carry a memwatch annotation and is
  not parsed at all.
* YAML is read event by event (libyaml's C parser where PyYAML has it) into plain objects. An alias
  reuses the anchored object instead of copying it, an alias to a node that contains it is refused,
  and a document whose aliases expand to far more nodes than it writes is refused with kubectl's own
  rule ("excessive aliasing"). Nothing is recursive, so deep nesting cannot overflow the stack.
* Plain scalars are typed the way the API server will type them (kubectl's YAML→JSON reader, YAML
  1.1 as go-yaml resolves it): ``1e9``, ``30``, ``yes``, ``~`` are a number, a number, a boolean and
  null there, so an unquoted annotation value like those is an error.
* Every message quotes a bounded part of any value.
"""

from __future__ import annotations

import io
import math
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import yaml

from memwatch.podindex import template_policy
from memwatch.policy import PREFIX, InvalidPolicy, is_watched
from memwatch.policyset import CLUSTER, FIELDS, NAMESPACED, PolicyObject, parse_policy
from memwatch.quantity import SHOWN_CHARS

TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"}
#: Deeper than this, a document is refused: no Kubernetes object nests anywhere near it.
MAX_DEPTH = 1000
#: The longest output line: a message never grows with the input.
MAX_LINE = 1000

# PyYAML's C parser (libyaml) where it was built with it: about five times faster.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: A document marker line: `---` or `...` alone or followed by a space.
_MARKER = re.compile(r"(---|\.\.\.)(?:[ \t].*)?\r?\n?", re.DOTALL)


@dataclass(frozen=True, slots=True)
class NonString:
    """A plain YAML scalar that Kubernetes reads as a number, a boolean or null, not as a string."""

    type: str  # "a number", "a boolean", "null"
    text: str  # as written

    def __str__(self) -> str:
        return self.text


class Refused(ValueError):
    """A document lint will not read (excessive aliasing, self-reference, absurd nesting); says why."""


# -- Reading -------------------------------------------------------------------------------------


def documents(stream: Iterable[str]) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each YAML document in a stream, one at a time.

    YAML forbids a `---` or `...` line at column 0 inside a document (even inside block or quoted
    scalars), so splitting on those lines is what the YAML parser itself does; it lets lint hold one
    document at a time and skip the ones that cannot concern memwatch.
    """
    lines: list[str] = []
    start = 1
    number = 0
    for number, line in enumerate(stream, 1):
        if line.startswith(("---", "...")) and _MARKER.fullmatch(line):
            if line.startswith("..."):
                lines.append(line)
                yield start, "".join(lines)
                lines, start = [], number + 1
                continue
            if _has_content(lines):
                yield start, "".join(lines)
                lines, start = [], number
        lines.append(line)
    if _has_content(lines):
        yield start, "".join(lines)


def _has_content(lines: list[str]) -> bool:
    """True when the lines hold more than blank lines, comments and directives."""
    for line in lines:
        text = line.strip()
        if text and not text.startswith(("#", "%")):
            return True
    return False


def _may_concern_memwatch(text: str) -> bool:
    # A key can only spell memwatch.io/ literally, or through a double-quoted escape (a backslash).
    return "memwatch" in text or "\\" in text


def load(text: str) -> Iterator[Any]:
    """The documents in ``text``: JSON where it is JSON (tab-indented JSON is JSON, not YAML), else YAML.

    Raises :class:`Refused` or :class:`yaml.YAMLError` for a document that cannot be read.
    """
    body = text.lstrip()
    if _MARKER.match(body) and body.startswith("---"):
        body = body[body.find("\n") + 1:].lstrip() if "\n" in body else ""  # `---` then a JSON document
    if body[:1] in ("{", "["):
        import json

        try:
            yield json.loads(body)
            return
        except RecursionError:
            raise Refused(f"nested more than {MAX_DEPTH} deep") from None
        except ValueError:
            pass  # YAML flow style, such as {kind: Pod}: read it as YAML
    yield from _yaml_documents(text)


class _Frame:
    """A mapping or sequence being built from parser events."""

    __slots__ = ("anchor", "key", "merges", "obj", "size")

    def __init__(self, obj: dict[Any, Any] | list[Any], anchor: str | None) -> None:
        self.obj = obj
        self.anchor = anchor
        self.key: Any = _NO_KEY
        self.size = 1
        self.merges: list[Any] = []


_NO_KEY = object()  # a mapping frame waiting for its next key
_SKIP = object()  # a key that cannot be a JSON key (a mapping or a list): its value is dropped
_MERGE = object()  # the YAML merge key `<<`


def _yaml_documents(text: str) -> Iterator[Any]:
    """Build each YAML document from parser events, without recursion and without copying aliases."""
    loader = _LOADER(text)
    try:
        stack: list[_Frame] = []
        anchors: dict[str, tuple[Any, int]] = {}
        building: set[str] = set()
        written = aliased = 0
        root: Any = None
        while True:
            event = loader.get_event()
            if event is None:
                return
            kind = type(event)
            if kind is yaml.ScalarEvent:
                text = event.value
                # Fast path, inlined: most plain scalars (names, images) start with a letter no other
                # YAML type starts with.
                if event.tag is None and not event.style and text and text[0] not in _HINTS:
                    value: Any = text
                else:
                    value = _scalar(event)
                size = 1
                written += 1
                if event.anchor is not None:
                    anchors[event.anchor] = (value, 1)
            elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                if len(stack) >= MAX_DEPTH:
                    raise Refused(f"nested more than {MAX_DEPTH} deep")
                written += 1
                stack.append(_Frame({} if kind is yaml.MappingStartEvent else [], event.anchor))
                if event.anchor is not None:
                    building.add(event.anchor)
                continue
            elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                frame = stack.pop()
                value, size = frame.obj, frame.size
                if frame.merges:
                    _merge(frame.obj, frame.merges)  # type: ignore[arg-type]
                if frame.anchor is not None:
                    building.discard(frame.anchor)
                    anchors[frame.anchor] = (value, size)
            elif kind is yaml.AliasEvent:
                name = event.anchor
                if name in building:
                    raise Refused(f"the alias *{_clip(name)} is inside the node it names (an object that "
                                  "contains itself)")
                if name not in anchors:
                    raise Refused(f"the alias *{_clip(name)} names no anchor")
                value, size = anchors[name]
                aliased += size
                _check_aliasing(written, aliased)
            elif kind is yaml.DocumentStartEvent:
                anchors.clear()
                written = aliased = 0
                continue
            elif kind is yaml.DocumentEndEvent:
                yield root
                root = None
                continue
            else:
                continue
            if not stack:
                root = value
                continue
            parent = stack[-1]
            parent.size += size
            obj = parent.obj
            if type(obj) is list:
                obj.append(value)
            elif parent.key is _NO_KEY:
                if type(value) is str and value != "<<":
                    parent.key = value
                else:
                    parent.key = _key(value, event if kind is yaml.ScalarEvent else None)
            else:
                if parent.key is _MERGE:
                    parent.merges.append(value)
                elif parent.key is not _SKIP:
                    obj[parent.key] = value
                parent.key = _NO_KEY
    finally:
        loader.dispose()


def _key(value: Any, event: Any) -> Any:
    if type(value) is str:
        plain = event is not None and not event.style and event.tag is None
        return _MERGE if value == "<<" and plain else value
    if type(value) is NonString:
        return value.text  # YAML→JSON writes a number or boolean key as its text
    return _SKIP


def _merge(target: dict[Any, Any], merges: list[Any]) -> None:
    """YAML merge keys: keys written in the mapping win, then earlier merged mappings over later ones."""
    for merged in merges:
        for item in merged if type(merged) is list else [merged]:
            if type(item) is not dict:
                raise Refused("a merge key (<<) needs a mapping or a list of mappings")
            for key, value in item.items():
                target.setdefault(key, value)


def _check_aliasing(written: int, aliased: int) -> None:
    """Refuse a document that aliases expand far beyond what it writes: go-yaml's rule, which kubectl
    applies ("document contains excessive aliasing"), so such a document never reaches a cluster."""
    total = written + aliased
    if aliased <= 100 or total <= 1000:
        return
    if total <= 400_000:
        allowed = 0.99
    elif total >= 4_000_000:
        allowed = 0.10
    else:
        allowed = 0.99 - 0.89 * (total - 400_000) / 3_600_000
    if aliased / total > allowed:
        raise Refused(f"excessive aliasing: its aliases expand to more than {_count(aliased)} nodes from "
                      f"{_count(written)} written (kubectl refuses such a document)")


def _count(n: int) -> str:
    return f"{n:,}" if n < 10**15 else f"~10^{len(str(n)) - 1}"


# -- Scalars as Kubernetes types them -------------------------------------------------------------

_TAG = "tag:yaml.org,2002:"
_WORDS = {
    **dict.fromkeys(["y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON",
                     "n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"], "a boolean"),
    **dict.fromkeys(["", "~", "null", "Null", "NULL"], "null"),
    **dict.fromkeys([".nan", ".NaN", ".NAN", ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF",
                     "-.inf", "-.Inf", "-.INF"], "a number"),
}
_HINTS = frozenset("+-0123456789.yYnNtTfFoO~")
_GO_INT = re.compile(r"[+-]?(?:0[xX]([0-9a-fA-F]+)|0[oO]([0-7]+)|0[bB]([01]+)|(0[0-7]*)|([1-9][0-9]*))")
_YAML_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_DOT_FLOAT = re.compile(r"\.[0-9]+(?:[eE][-+]?[0-9]+)?")


def _scalar(event: Any) -> str | NonString:
    """A scalar's value as the API server will see it: a string, or a :class:`NonString`."""
    text: str = event.value
    tag = event.tag
    if tag is None:
        if event.style:  # quoted or block scalars are always strings
            return text
        kind = plain_type(text)
        return text if kind is None else NonString(kind, text)
    if tag.startswith(_TAG):
        name = tag[len(_TAG):]
        if name in ("str", "binary", "timestamp"):  # go-yaml keeps a timestamp as its text
            return text
        return NonString({"int": "a number", "float": "a number", "bool": "a boolean", "null": "null"}
                         .get(name, f"tagged !!{_clip(name)}"), text)
    return text  # `!` and local tags: go-yaml keeps the text


def plain_type(text: str) -> str | None:
    """What Kubernetes' YAML reader (go-yaml v2, YAML 1.1) makes of an unquoted scalar: None for a
    string, else "a number", "a boolean" or "null". PyYAML differs (it reads `1e9` as a string)."""
    if text and text[0] not in _HINTS:
        return None
    word = _WORDS.get(text)
    if word is not None:
        return word
    if text[0] == ".":
        return "a number" if _DOT_FLOAT.fullmatch(text) and _finite(text) else None
    if text[0] in "yYnNtTfFoO~":
        return None
    plain = text.replace("_", "")
    if _go_int(plain) or (_YAML_FLOAT.fullmatch(plain) and _finite(plain)):
        return "a number"
    return None


def _finite(text: str) -> bool:
    # Go's ParseFloat fails on overflow, and go-yaml then keeps the text as a string.
    return math.isfinite(float(text))


def _go_int(text: str) -> bool:
    """Go's ``strconv.ParseInt(text, 0, 64)``, or ``ParseUint`` for unsigned text, would succeed."""
    match = _GO_INT.fullmatch(text)
    if not match:
        return False
    hexa, octal, binary, zero_octal, decimal = match.groups()
    digits, base = next((d, b) for d, b in ((hexa, 16), (octal, 8), (binary, 2), (zero_octal, 8), (decimal, 10))
                        if d is not None)
    if len(digits.lstrip("0")) > 64:  # beyond any 64-bit value (and int()'s digit limit)
        return False
    value = int(digits, base)
    if text[0] == "-":
        return value <= 2**63
    return value < (2**63 if text[0] == "+" else 2**64)


def type_name(value: Any) -> str | None:
    """None for a string; otherwise what Kubernetes sees instead ("a number", "a list", ...)."""
    if isinstance(value, str):
        return None
    if isinstance(value, NonString):
        return value.type
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


_TRUE_WORDS = frozenset(["y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"])


def typed(value: NonString) -> Any:
    """The JSON value Kubernetes makes of a :class:`NonString` (``30`` → 30, ``yes`` → True, ``~`` →
    None); its text when it is none of those (an unknown tag)."""
    if value.type == "null":
        return None
    if value.type == "a boolean":
        return value.text in _TRUE_WORDS or value.text.lower() == "true"
    if value.type == "a number":
        text = value.text.replace("_", "")
        match = _GO_INT.fullmatch(text)
        if match and len(text) < 80:
            hexa, octal, binary, zero_octal, decimal = match.groups()
            digits, base = next((d, b) for d, b in ((hexa, 16), (octal, 8), (binary, 2), (zero_octal, 8),
                                                    (decimal, 10)) if d is not None)
            return -int(digits, base) if text[0] == "-" else int(digits, base)
        try:
            return float(text.lower().replace(".inf", "inf").replace(".nan", "nan"))
        except ValueError:
            return value.text
    return value.text


def plain(value: Any) -> Any:
    """A loaded document with every :class:`NonString` replaced by its JSON value (:func:`typed`), as
    the API server will store it. Without recursion, and an aliased object is converted once and
    shared, never expanded."""
    memo: dict[int, Any] = {}
    pending: list[tuple[Any, Any]] = []

    def convert(item: Any) -> Any:
        if type(item) is NonString:
            return typed(item)
        if type(item) is dict or type(item) is list:
            done = memo.get(id(item))
            if done is None:
                done = memo[id(item)] = {} if type(item) is dict else []
                pending.append((item, done))
            return done
        return item

    out = convert(value)
    while pending:
        source, target = pending.pop()
        if type(source) is dict:
            for key, item in source.items():
                target[key] = convert(item)
        else:
            target.extend(convert(item) for item in source)
    return out


def _clip(text: str, limit: int = SHOWN_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


def _shown_value(value: Any) -> str:
    """A bounded rendering of any value: never the expansion of an aliased structure."""
    if isinstance(value, (str, NonString)):
        return _clip(str(value))
    if isinstance(value, bool) or value is None:
        return "true" if value is True else "false" if value is False else "null"
    if isinstance(value, (int, float)):
        return _clip(repr(value))
    return f"<{type_name(value)}>"


# -- Linting -------------------------------------------------------------------------------------


def pod_templates(obj: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any], Mapping[str, Any]]]:
    """(label, pod metadata, pod spec) for every pod or pod template in a manifest object.

    Looks inside API lists (`kind: List`, `DeploymentList`, ...) without recursion.
    """
    pending: list[Any] = [obj]
    while pending:
        item = pending.pop()
        if not isinstance(item, Mapping):
            continue
        kind = item.get("kind")
        if not isinstance(kind, str):
            continue  # not a Kubernetes object (and an unhashable kind must not crash the linter)
        label = f"{_clip(kind)}/{_shown_value(_map(item.get('metadata')).get('name', '?'))}"
        if kind.endswith("List") and isinstance(item.get("items"), list):
            pending.extend(reversed(item["items"]))
        elif kind == "Pod":
            yield label, _map(item.get("metadata")), _map(item.get("spec"))
        elif kind in TEMPLATE_KINDS:
            tpl = _map(_map(item.get("spec")).get("template"))
            yield label, _map(tpl.get("metadata")), _map(tpl.get("spec"))
        elif kind == "CronJob":
            tpl = _map(_map(_map(_map(item.get("spec")).get("jobTemplate")).get("spec")).get("template"))
            yield label, _map(tpl.get("metadata")), _map(tpl.get("spec"))


def _map(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else empty: hand-written YAML can put anything anywhere."""
    return value if isinstance(value, Mapping) else {}


def _malformed(spec: Mapping[str, Any]) -> str | None:
    """What is structurally wrong with a pod spec's containers, or None (the API server would
    reject such a manifest; the linter must say so rather than crash)."""
    containers = spec.get("containers")
    if containers is None or (isinstance(containers, NonString) and containers.type == "null"):
        return None
    if not isinstance(containers, list):
        return "spec.containers is not a list"
    for i, c in enumerate(containers):
        if not isinstance(c, Mapping):
            return f"spec.containers[{i}] is not a mapping"
        if type_name(c.get("name", "")) is not None:
            return f"spec.containers[{i}].name is {type_name(c.get('name'))}, not a string"
        resources = c.get("resources")
        if resources is not None and not isinstance(resources, Mapping):
            return f"spec.containers[{i}].resources is not a mapping"
        limits = (resources or {}).get("limits")
        if limits is not None and not isinstance(limits, Mapping):
            return f"spec.containers[{i}].resources.limits is not a mapping"
        memory = (limits or {}).get("memory")
        if memory is not None and type_name(memory) not in (None, "a number"):
            return f"spec.containers[{i}].resources.limits.memory is {type_name(memory)}, not a quantity"
    return None


class _Output:
    """Lines to the output, each cut to MAX_LINE characters."""

    def __init__(self, out: TextIO, name: str) -> None:
        self.out = out
        self.name = name

    def line(self, text: str) -> None:
        line = f"{self.name}: {text}"
        if len(line) > MAX_LINE:
            line = line[:MAX_LINE] + "…"
        # Control characters (terminal escapes, newlines) and lone surrogates from YAML escapes are
        # shown escaped: one message is one line, and printing it cannot fail.
        line = line.translate(_CONTROL).encode("utf-8", "backslashreplace").decode("utf-8")
        print(line, file=self.out)


_CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)}


def lint_object(doc: Any, emit: _Output) -> tuple[int, int]:
    """Lint one manifest object. Returns (annotated templates found, errors)."""
    found = errors = 0
    for label, meta, spec in pod_templates(doc) if isinstance(doc, Mapping) else ():
        annotations = {k: v for k, v in _map(meta.get("annotations")).items() if isinstance(k, str)}
        if not is_watched(annotations):
            continue
        found += 1
        unquoted = sorted(k for k, v in annotations.items() if k.startswith(PREFIX) and type_name(v) is not None)
        for key in unquoted:
            value = annotations[key]
            shown = _shown_value(value)
            hint = f'; quote it: {_clip(key)}: "{shown}"' if isinstance(value, NonString) else ""
            emit.line(f"{label}: error: {_clip(key)}={shown}: annotation values must be strings, and "
                      f"Kubernetes reads this one as {type_name(value)}{hint}")
            errors += 1
        if unquoted:
            continue
        malformed = _malformed(spec)
        if malformed:
            emit.line(f"{label}: error: {malformed}")
            errors += 1
            continue
        containers = spec.get("containers")
        try:
            policy = template_policy({"annotations": annotations},
                                     {"containers": containers if isinstance(containers, list) else []})
        except InvalidPolicy as exc:
            for problem in exc.problems:
                emit.line(f"{label}: error: {problem}")
                errors += 1
            for warning in exc.warnings:
                emit.line(f"{label}: warning: {warning}")
            continue
        emit.line(f"{label}: ok: {policy.describe()}")
        for warning in policy.warnings:
            emit.line(f"{label}: warning: {warning}")
    return found, errors


POLICY_KINDS = (NAMESPACED, CLUSTER)
#: Policy spec fields the schema types as integers or booleans; every other one (and each
#: ``containers`` value, each ``matchLabels`` value) is a string.
_NOT_STRINGS = frozenset({"gracePeriod", "priority", "escalate", "predict"})


def objects(doc: Any) -> Iterator[Mapping[str, Any]]:
    """Every Kubernetes object in a document, inside API lists too (without recursion)."""
    pending: list[Any] = [doc]
    while pending:
        item = pending.pop()
        if not isinstance(item, Mapping) or not isinstance(item.get("kind"), str):
            continue
        if item["kind"].endswith("List") and isinstance(item.get("items"), list):
            pending.extend(reversed(item["items"]))
        else:
            yield item


def policy_summary(policy: PolicyObject) -> str:
    """One line: what a valid policy selects and sets (spec field names, as written in it)."""
    settings = dict(policy.settings)
    containers = [f"containers.{key[len(PREFIX + 'limit.'):]}={value}" for key, value in policy.settings
                  if key.startswith(PREFIX + "limit.")]
    sets = []
    for spec_field, key in FIELDS.items():  # in the order of the spec: limit, containers, limitOf, action, ...
        if key in settings:
            sets.append(f"{spec_field}={settings[key]}")
        if spec_field == "limit":
            sets += containers
    where = f"pods {policy.pod_selector}"
    if policy.kind == CLUSTER:
        where += f" in namespaces {policy.namespace_selector}"
    elif policy.namespace:
        where += f" in namespace {policy.namespace}"
    return f"selects {where}; priority {policy.priority}; sets " + " ".join(sets)


def _quoted(spec: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, NonString]]]:
    """The spec with each value the schema wants as a string, and YAML typed otherwise (an unquoted
    ``1e9``, ``true``), taken as the string meant; and (where, value) of each of those. A null is no
    error: the API server drops it (the field is then unset)."""
    wrong: list[tuple[str, NonString]] = []

    def fix(where: str, values: Mapping[str, Any], keys: Iterable[Any]) -> dict[Any, Any]:
        out = dict(values)
        for key in keys:
            value = values[key]
            if isinstance(value, NonString) and value.type != "null":
                wrong.append((f"{where}{_clip(str(key))}", value))
                out[key] = value.text
        return out

    fixed = fix("spec.", spec, [k for k in spec if k in FIELDS and k not in _NOT_STRINGS])
    containers = spec.get("containers")
    if isinstance(containers, Mapping):
        fixed["containers"] = fix("spec.containers.", containers, list(containers))
    for selector in ("podSelector", "namespaceSelector"):
        sel = spec.get(selector)
        if isinstance(sel, Mapping) and isinstance(sel.get("matchLabels"), Mapping):
            labels = sel["matchLabels"]
            fixed[selector] = {**sel, "matchLabels": fix(f"spec.{selector}.matchLabels.", labels, list(labels))}
    return fixed, wrong


def lint_policy(obj: Mapping[str, Any], emit: _Output) -> int:
    """Lint one MemwatchPolicy or ClusterMemwatchPolicy. Returns the number of errors."""
    kind = str(obj.get("kind"))
    label = f"{_clip(kind)}/{_shown_value(_map(obj.get('metadata')).get('name', '?'))}"
    errors = 0
    spec = obj.get("spec")
    if isinstance(spec, Mapping):
        spec, wrong = _quoted(spec)
        for where, value in wrong:
            emit.line(f"{label}: error: {where}: {_shown_value(value)}: Kubernetes reads this as {value.type}, "
                      f"and the policy's schema wants a string; quote it: \"{_shown_value(value)}\"")
            errors += 1
        obj = {**obj, "spec": spec}
    policy = parse_policy(plain(obj))  # the values as the API server stores them
    for problem in policy.problems:
        emit.line(f"{label}: error: {problem}")
        errors += 1
    if not errors:
        emit.line(f"{label}: ok: {policy_summary(policy)}")
        if not policy.gives_limit:
            emit.line(f"{label}: warning: it sets no limit, so it only changes pods that a limit already watches")
    return errors


def lint_stream(name: str, stream: Iterable[str], out: TextIO, counts: dict[str, int] | None = None) -> tuple[int, int]:
    """Lint one file, one document at a time. Returns (annotated templates found, errors);
    ``counts["policies"]`` counts the policy objects."""
    emit = _Output(out, name)
    found = errors = 0
    for first_line, text in documents(stream):
        if not _may_concern_memwatch(text):
            continue
        try:
            for doc in load(text):
                f, e = lint_object(doc, emit)
                found += f
                errors += e
                for obj in objects(doc):
                    if obj["kind"] in POLICY_KINDS:
                        errors += lint_policy(obj, emit)
                        if counts is not None:
                            counts["policies"] = counts.get("policies", 0) + 1
        except Refused as exc:
            emit.line(f"error: document at line {first_line}: {exc}")
            errors += 1
        except yaml.YAMLError as exc:
            emit.line(f"error: not valid YAML: {_yaml_problem(exc, first_line)}")
            errors += 1
    return found, errors


def _yaml_problem(exc: yaml.YAMLError, first_line: int) -> str:
    """The parser's complaint with its line and column in the whole file."""
    mark = getattr(exc, "problem_mark", None)
    what = ", ".join(str(part) for part in (getattr(exc, "context", None), getattr(exc, "problem", None)) if part)
    if mark is None:
        return _clip(str(exc), 200)
    return f"line {first_line + mark.line}, column {mark.column + 1}: {_clip(what or str(exc), 200)}"


def main(paths: list[str], out: TextIO = sys.stdout) -> int:
    """Exit code 0 when every annotation and policy in every file is valid, 1 otherwise."""
    total = errors = 0
    counts: dict[str, int] = {}
    for path in paths:
        try:
            if path == "-":
                stdin = getattr(sys.stdin, "buffer", None)
                text = sys.stdin if stdin is None else io.TextIOWrapper(stdin, encoding="utf-8-sig")
                found, bad = lint_stream("<stdin>", text, out, counts)
            else:
                with open(path, encoding="utf-8-sig") as fh:
                    found, bad = lint_stream(path, fh, out, counts)
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
    policies = f"{counts['policies']} policy object(s), " if counts.get("policies") else ""
    print(f"memwatch lint: {total} annotated pod template(s), {policies}{errors} error(s)", file=out)
    return 1 if errors else 0
