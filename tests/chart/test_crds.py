"""The CustomResourceDefinitions in charts/memwatch/crds/: MemwatchPolicy and ClusterMemwatchPolicy.

apiextensions.k8s.io/v1 with structural schemas that Kubernetes 1.20 accepts (no CEL): every node
typed, no additionalProperties beside properties, the enums, patterns and ranges the API server
checks itself. The schemas are also run as JSON Schema over good and bad policies, the same cases
tests/integration/test_policy_crd.py sends to a real API server. Offline, no cluster.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from memwatch import policy
from memwatch.quantity import parse_bytes, parse_duration

from .chartlib import CHART_DIR, Obj, Rendered

CRD_DIR = CHART_DIR / "crds"
NAMESPACED = CRD_DIR / "memwatch.io_memwatchpolicies.yaml"
CLUSTER = CRD_DIR / "memwatch.io_clustermemwatchpolicies.yaml"
KUBE_VERSIONS = sorted({"1.25", kubernetes_validate.latest_version()})

LIMIT_PATTERN = r"^([0-9]+(\.[0-9]+)?%|[0-9]+(\.[0-9]+)?(e[0-9]+|[KMGTPE]i?|k|m)?)$"
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
BUDGET_PATTERN = r"^([0-9]+/([0-9]+(s|m|h))+|off)$"

#: (printed header, type, jsonPath), in order; kubectl prints a column's name upper-cased.
PRINTER_COLUMNS = [
    ("LIMIT", "string", ".spec.limit"),
    ("ACTION", "string", ".spec.action"),
    ("MATCHED", "integer", ".status.matchedPods"),
    ("READY", "string", '.status.conditions[?(@.type=="Ready")].status'),
    ("AGE", "date", ".metadata.creationTimestamp"),
]

#: spec field -> the pod annotation it mirrors (policy.KNOWN_KEYS, plus the per-container limits).
ANNOTATION_FIELDS = {
    "limit": policy.KEY_LIMIT,
    "containers": policy.KEY_CONTAINER_LIMIT + "<container>",
    "limitOf": policy.KEY_LIMIT_OF,
    "action": policy.KEY_ACTION,
    "for": policy.KEY_FOR,
    "gracePeriod": policy.KEY_GRACE_PERIOD,
    "escalate": policy.KEY_ESCALATE,
    "predict": policy.KEY_PREDICT,
    "nodePressure": policy.KEY_NODE_PRESSURE,
    "restartBudget": policy.KEY_RESTART_BUDGET,
    "minPodAge": policy.KEY_MIN_POD_AGE,
}

# The JSONSchemaProps keys a structural schema may use here. Left out on purpose: $ref, definitions,
# patternProperties, dependencies, additionalItems, uniqueItems, allOf/anyOf/oneOf/not (allowed by
# Kubernetes in restricted forms, not needed), nullable, x-kubernetes-int-or-string,
# x-kubernetes-embedded-resource and x-kubernetes-validations (CEL: 1.25+, not on 1.20).
SCHEMA_KEYS = {
    "type", "description", "properties", "additionalProperties", "items", "required", "enum", "pattern",
    "minimum", "maximum", "default", "format", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}
TYPES = {"object", "array", "string", "integer", "boolean", "number"}


def load(path: Path) -> Obj:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert len(docs) == 1, path.name
    crd: Obj = docs[0]
    return crd


def version(crd: Obj) -> Obj:
    (only,) = crd["spec"]["versions"]
    result: Obj = only
    return result


def schema(crd: Obj) -> Obj:
    result: Obj = version(crd)["schema"]["openAPIV3Schema"]
    return result


def nodes(node: Obj, path: str = "") -> list[tuple[str, Obj]]:
    """Every schema node under node, with its path (.spec.limit, .spec.containers.*, .status.conditions[])."""
    found = [(path or ".", node)]
    for name, child in (node.get("properties") or {}).items():
        found += nodes(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        found += nodes(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        found += nodes(node["items"], f"{path}[]")
    return found


def without_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: without_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [without_descriptions(v) for v in node]
    return node


CRDS = {"MemwatchPolicy": NAMESPACED, "ClusterMemwatchPolicy": CLUSTER}


@pytest.fixture(params=sorted(CRDS), scope="module")
def crd(request: pytest.FixtureRequest) -> Obj:
    return load(CRDS[request.param])


# --- the CustomResourceDefinition objects ------------------------------------------------------


def test_crd_files_are_exactly_the_two_policies() -> None:
    assert sorted(p.name for p in CRD_DIR.iterdir()) == sorted(p.name for p in CRDS.values())


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_crd_is_a_valid_v1_custom_resource_definition(crd: Obj, kube_version: str) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1" and crd["kind"] == "CustomResourceDefinition"
    kubernetes_validate.validate(crd, kube_version, strict=True)


def test_names_scope_and_version() -> None:
    namespaced, cluster = load(NAMESPACED), load(CLUSTER)
    assert namespaced["metadata"]["name"] == "memwatchpolicies.memwatch.io"
    assert namespaced["spec"]["group"] == "memwatch.io" and namespaced["spec"]["scope"] == "Namespaced"
    assert namespaced["spec"]["names"] == {
        "kind": "MemwatchPolicy", "listKind": "MemwatchPolicyList", "plural": "memwatchpolicies",
        "singular": "memwatchpolicy", "shortNames": ["mwp"], "categories": ["memwatch"]}
    assert cluster["metadata"]["name"] == "clustermemwatchpolicies.memwatch.io"
    assert cluster["spec"]["group"] == "memwatch.io" and cluster["spec"]["scope"] == "Cluster"
    assert cluster["spec"]["names"] == {
        "kind": "ClusterMemwatchPolicy", "listKind": "ClusterMemwatchPolicyList",
        "plural": "clustermemwatchpolicies", "singular": "clustermemwatchpolicy", "shortNames": ["cmwp"],
        "categories": ["memwatch"]}
    for one in (namespaced, cluster):
        assert version(one)["name"] == "v1alpha1" and version(one)["served"] and version(one)["storage"]
        assert "conversion" not in one["spec"] and "preserveUnknownFields" not in one["spec"]


def test_status_subresource_and_printer_columns(crd: Obj) -> None:
    assert version(crd)["subresources"] == {"status": {}}
    columns = version(crd)["additionalPrinterColumns"]
    assert [(c["name"].upper(), c["type"], c["jsonPath"]) for c in columns] == PRINTER_COLUMNS
    assert all("priority" not in c for c in columns)  # all five in the default `kubectl get` output
    # Each column's path exists in the schema (or is the object's own metadata).
    properties = dict(nodes(schema(crd)))
    for _, _, path in PRINTER_COLUMNS[:3]:
        assert path in properties, path
    assert ".status.conditions[].type" in properties and ".status.conditions[].status" in properties


# --- structural schema ---------------------------------------------------------------------------


def test_schema_is_structural(crd: Obj) -> None:
    """Kubernetes' structural-schema rules, as far as this schema needs them (apiextensions v1 refuses
    a CRD whose schema breaks one), and the objects that must prune unknown fields do."""
    root = schema(crd)
    assert root["type"] == "object" and set(root["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert root["properties"]["metadata"] == {"type": "object"}  # nothing else is allowed on metadata
    maps = set()
    for path, node in nodes(root):
        assert set(node) <= SCHEMA_KEYS, (path, set(node) - SCHEMA_KEYS)
        assert node.get("type") in TYPES, (path, node.get("type"))  # every node typed, preserve-unknown too
        if node["type"] == "object":
            assert not ("properties" in node and "additionalProperties" in node), path
            assert "properties" in node or "additionalProperties" in node or path in {".metadata", ".status.kopf"}
            if "additionalProperties" in node:
                assert isinstance(node["additionalProperties"], dict), path  # a typed map, never `true`
                maps.add(path)
            assert set(node.get("required", ())) <= set(node.get("properties", ())), path
        else:
            assert not {"properties", "additionalProperties", "required"} & set(node), path
        if node["type"] == "array":
            assert "items" in node, path
        else:
            assert "items" not in node, path
        if "enum" in node or "pattern" in node:
            assert node["type"] == "string" and all(isinstance(v, str) for v in node.get("enum", ())), path
        if "pattern" in node:
            assert node["pattern"].startswith("^") and node["pattern"].endswith("$"), path  # Go's match is unanchored
            re.compile(node["pattern"])
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert path == ".status.kopf", path  # kopf's bookkeeping only: everything else prunes unknown fields
        if "default" in node:
            jsonschema.validate(node["default"], node)
    # The only maps: label selectors' matchLabels and the per-container limits.
    expected_maps = {".spec.podSelector.matchLabels", ".spec.containers"}
    if crd["spec"]["names"]["kind"] == "ClusterMemwatchPolicy":
        expected_maps.add(".spec.namespaceSelector.matchLabels")
    assert maps == expected_maps


def test_every_field_is_described(crd: Obj) -> None:
    for path, node in nodes(schema(crd)):
        # Every field; a list's items and a map's values are described by the list or map.
        if path not in {".", ".metadata"} and not path.endswith(("[]", ".*")):
            assert len(node.get("description", "")) >= 10, path
    root = schema(crd)["description"]
    # Precedence, pruning and the 1.20 limit are explained where `kubectl explain` shows them.
    for phrase in ("annotation", "MemwatchPolicies of the pod's namespace", "ClusterMemwatchPolicies",
                   "spec.priority", "name order", "pruned", "1.25"):
        assert phrase in root, phrase


def test_only_priority_has_a_default(crd: Obj) -> None:
    """A schema default would make every policy set that field and override a lower level's value
    (field-by-field precedence): only priority, which is not a setting, has one."""
    defaults = {path: node["default"] for path, node in nodes(schema(crd)) if "default" in node}
    assert defaults == {".spec.priority": 0}


def test_spec_fields(crd: Obj) -> None:
    spec = schema(crd)["properties"]["spec"]
    props = spec["properties"]
    kind = crd["spec"]["names"]["kind"]
    expected = {"podSelector", "priority", *ANNOTATION_FIELDS} | ({"namespaceSelector"} if kind.startswith("Cluster")
                                                                   else set())
    assert set(props) == expected
    assert schema(crd)["required"] == ["spec"] and "required" not in spec  # every setting optional
    assert props["priority"] == props["priority"] | {"type": "integer", "minimum": -1000, "maximum": 1000,
                                                     "default": 0}
    assert props["limit"]["pattern"] == LIMIT_PATTERN
    assert props["containers"]["additionalProperties"] == {"type": "string", "pattern": LIMIT_PATTERN}
    assert props["limitOf"]["enum"] == ["limits", "requests"]
    assert props["action"]["enum"] == ["evict", "delete", "dry-run", "restart"]
    assert props["for"]["pattern"] == DURATION_PATTERN and props["minPodAge"]["pattern"] == DURATION_PATTERN
    assert props["gracePeriod"] | {"type": "integer", "minimum": 0, "maximum": 3600} == props["gracePeriod"]
    assert props["escalate"]["type"] == "boolean" and props["predict"]["type"] == "boolean"
    assert props["nodePressure"]["enum"] == ["evict", "never"]
    assert props["restartBudget"]["pattern"] == BUDGET_PATTERN
    for name in ("limit", "action", "for", "minPodAge", "restartBudget", "limitOf", "nodePressure"):
        assert props[name]["type"] == "string", name
    # The enums are memwatch's own values, so the API server and the controller agree.
    assert props["action"]["enum"] == [a.value for a in policy.Action]
    assert tuple(props["limitOf"]["enum"]) == policy.LIMIT_OF_VALUES
    assert tuple(props["nodePressure"]["enum"]) == policy.NODE_PRESSURE_VALUES


def test_fields_mirror_the_annotations_one_to_one(crd: Obj) -> None:
    props = schema(crd)["properties"]["spec"]["properties"]
    assert set(ANNOTATION_FIELDS.values()) - {policy.KEY_CONTAINER_LIMIT + "<container>"} == set(policy.KNOWN_KEYS)
    for name, key in ANNOTATION_FIELDS.items():
        assert props[name]["description"].startswith(f"{key}:"), name


def test_label_selectors(crd: Obj) -> None:
    props = schema(crd)["properties"]["spec"]["properties"]
    selectors = ["podSelector"] + (["namespaceSelector"] if "namespaceSelector" in props else [])
    for name in selectors:
        selector = props[name]
        assert selector["type"] == "object" and set(selector["properties"]) == {"matchLabels", "matchExpressions"}
        assert selector["properties"]["matchLabels"]["additionalProperties"] == {"type": "string"}
        requirement = selector["properties"]["matchExpressions"]["items"]
        assert requirement["required"] == ["key", "operator"]
        assert requirement["properties"]["key"]["type"] == "string"
        assert requirement["properties"]["operator"]["enum"] == ["In", "NotIn", "Exists", "DoesNotExist"]
        assert requirement["properties"]["values"]["items"] == {"type": "string"}
    if "namespaceSelector" in props:
        assert without_descriptions(props["namespaceSelector"]) == without_descriptions(props["podSelector"])


def test_status(crd: Obj) -> None:
    status = schema(crd)["properties"]["status"]
    props = status["properties"]
    assert set(props) == {"observedGeneration", "matchedPods", "lastActionTime", "conditions", "kopf"}
    assert props["observedGeneration"]["type"] == "integer" and props["matchedPods"]["type"] == "integer"
    assert props["lastActionTime"] | {"type": "string", "format": "date-time"} == props["lastActionTime"]
    condition = props["conditions"]["items"]
    assert set(condition["properties"]) == {"type", "status", "reason", "message", "lastTransitionTime",
                                            "observedGeneration"}
    assert condition["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert condition["properties"]["lastTransitionTime"]["format"] == "date-time"
    assert props["kopf"]["type"] == "object" and props["kopf"]["x-kubernetes-preserve-unknown-fields"] is True


def test_cluster_policy_is_the_namespaced_one_plus_a_namespace_selector() -> None:
    namespaced, cluster = load(NAMESPACED), load(CLUSTER)
    cluster_spec = copy.deepcopy(schema(cluster)["properties"]["spec"]["properties"])
    del cluster_spec["namespaceSelector"]
    assert without_descriptions(cluster_spec) == without_descriptions(schema(namespaced)["properties"]["spec"]
                                                                      ["properties"])
    assert schema(cluster)["properties"]["status"] == schema(namespaced)["properties"]["status"]
    assert version(cluster)["additionalPrinterColumns"] == version(namespaced)["additionalPrinterColumns"]
    # The field docs agree too, but for the fields whose scope differs.
    for name, field in cluster_spec.items():
        if name not in {"podSelector", "priority"}:
            assert field == schema(namespaced)["properties"]["spec"]["properties"][name], name


# --- the schema at work: what the API server accepts and refuses ---------------------------------

VALID_SPECS: list[Obj] = [
    {},
    {"limit": "512Mi", "action": "evict", "for": "30s"},
    {"limit": "90%", "limitOf": "requests", "priority": 1000, "gracePeriod": 0, "escalate": True, "predict": False},
    {"limit": "1e9", "containers": {"solver": "1536Mi", "sidecar": "12.5%"}, "action": "dry-run"},
    {"limit": "1000000", "for": "1m30s", "restartBudget": "3/1h", "minPodAge": "500ms", "priority": -1000},
    {"podSelector": {"matchLabels": {"app": "solver"},
                     "matchExpressions": [{"key": "tier", "operator": "In", "values": ["batch"]},
                                          {"key": "canary", "operator": "DoesNotExist"}]},
     "nodePressure": "never", "restartBudget": "off", "gracePeriod": 3600, "action": "restart"},
]

#: (spec, why the API server refuses it): the cases test_policy_crd.py sends to the real API server.
INVALID_SPECS: list[tuple[Obj, str]] = [
    ({"action": "explode"}, "enum"),
    ({"limit": "lots"}, "pattern"),
    ({"for": "soon"}, "pattern"),
    ({"restartBudget": "3 per hour"}, "pattern"),
    ({"priority": 5000}, "maximum"),
    ({"gracePeriod": "ten"}, "type"),
    ({"priority": -1001}, "minimum"),
    ({"gracePeriod": 3601}, "maximum"),
    ({"limitOf": "usage"}, "enum"),
    ({"nodePressure": "always"}, "enum"),
    ({"containers": {"app": "huge"}}, "pattern"),
    ({"escalate": "yes"}, "type"),
    ({"minPodAge": "5"}, "pattern"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}, "enum"),
    ({"podSelector": {"matchExpressions": [{"operator": "Exists"}]}}, "required"),
]


def policy_object(crd: Obj, spec: Obj) -> Obj:
    metadata: Obj = {"name": "p"}
    if crd["spec"]["scope"] == "Namespaced":
        metadata["namespace"] = "team-a"
    return {"apiVersion": "memwatch.io/v1alpha1", "kind": crd["spec"]["names"]["kind"], "metadata": metadata,
            "spec": spec}


@pytest.mark.parametrize("spec", VALID_SPECS, ids=lambda s: ",".join(s) or "empty")
def test_schema_accepts_valid_policies(crd: Obj, spec: Obj) -> None:
    jsonschema.validate(policy_object(crd, spec), schema(crd))


def test_schema_accepts_a_namespace_selector_on_cluster_policies_only() -> None:
    spec = {"namespaceSelector": {"matchLabels": {"team": "a"}}, "limit": "2Gi"}
    cluster = load(CLUSTER)
    jsonschema.validate(policy_object(cluster, spec), schema(cluster))
    assert "namespaceSelector" not in schema(load(NAMESPACED))["properties"]["spec"]["properties"]


@pytest.mark.parametrize(("spec", "why"), INVALID_SPECS, ids=lambda c: ",".join(c) if isinstance(c, dict) else c)
def test_schema_refuses_invalid_policies(crd: Obj, spec: Obj, why: str) -> None:
    with pytest.raises(jsonschema.ValidationError) as refused:
        jsonschema.validate(policy_object(crd, spec), schema(crd))
    assert refused.value.validator == why


def test_a_policy_needs_a_spec(crd: Obj) -> None:
    obj = policy_object(crd, {})
    del obj["spec"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(obj, schema(crd))


@pytest.mark.parametrize("value", ["512Mi", "2Gi", "1.5Gi", "600M", "100k", "1e9", "1000000", "90%", "12.5%",
                                   "100%", "1Ei", "512m"])
def test_limit_pattern_accepts(value: str) -> None:
    assert re.search(LIMIT_PATTERN, value), value


@pytest.mark.parametrize("value", ["lots", "", "512 Mi", " 512Mi", "-1Gi", "+1Gi", "90 %", "%", "1.Gi", ".5Gi",
                                   "5GB", "1e-3", "1E9", "1Ki ", "90%%", "0x10", "1_000", "\uff11Gi"])
def test_limit_pattern_refuses(value: str) -> None:
    assert not re.search(LIMIT_PATTERN, value), value


@pytest.mark.parametrize("value", ["30s", "1m30s", "500ms", "2h", "1.5h", "1h30m10s"])
def test_duration_pattern_accepts(value: str) -> None:
    assert re.search(DURATION_PATTERN, value), value


@pytest.mark.parametrize("value", ["soon", "", "30", "1d", "s", "-5s", "5 s", "1m 30s", "5S"])
def test_duration_pattern_refuses(value: str) -> None:
    assert not re.search(DURATION_PATTERN, value), value


@pytest.mark.parametrize("value", ["3/1h", "off", "10/30m", "1/1h30m", "100/7s"])
def test_budget_pattern_accepts(value: str) -> None:
    assert re.search(BUDGET_PATTERN, value), value


@pytest.mark.parametrize("value", ["3 per hour", "3/", "/1h", "3/1d", "3/1.5h", "3/1h ", "OFF", "3", "on"])
def test_budget_pattern_refuses(value: str) -> None:
    assert not re.search(BUDGET_PATTERN, value), value


def test_what_the_patterns_accept_memwatch_parses() -> None:
    """The values the patterns accept above are values memwatch's own parsers read (the schema checks
    shape; memwatch then checks the value, e.g. 512m is refused as 0.512 bytes)."""
    for text in ("512Mi", "2Gi", "1.5Gi", "600M", "100k", "1e9", "1000000", "1Ei"):
        assert parse_bytes(text) > 0, text
    for text in ("30s", "1m30s", "500ms", "2h", "1.5h", "1h30m10s"):
        assert parse_duration(text) > 0, text
    for text in ("3/1h", "10/30m", "1/1h30m", "100/7s"):
        assert policy.parse_budget(text) is not None, text
    assert policy.parse_budget("off") is None


# --- the chart: CRDs are installed from crds/, and rendered only when asked -----------------------


def test_rendering_includes_the_crds_only_when_asked(render: Any) -> None:
    plain: Rendered = render()
    assert plain.of_kind("CustomResourceDefinition") == []
    with_crds: Rendered = render(include_crds=True)
    crds = with_crds.of_kind("CustomResourceDefinition")
    assert sorted(c["metadata"]["name"] for c in crds) == ["clustermemwatchpolicies.memwatch.io",
                                                          "memwatchpolicies.memwatch.io"]
    for rendered_crd in crds:
        (on_disk,) = [load(p) for p in CRDS.values() if load(p)["metadata"]["name"] == rendered_crd["metadata"]["name"]]
        rendered_crd = copy.deepcopy(rendered_crd)
        if not rendered_crd["metadata"]["annotations"]:
            del rendered_crd["metadata"]["annotations"]
        assert rendered_crd == on_disk
    # Everything else is the same as without them.
    others = [o for o in with_crds.objects if o["kind"] != "CustomResourceDefinition"]
    assert others == plain.objects


def test_crds_are_plain_files_not_templates() -> None:
    """Helm never templates crds/: a {{ in them would reach the API server as it is."""
    for path in CRDS.values():
        assert "{{" not in path.read_text(), path.name


def test_chart_readme_explains_the_crds() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    section = readme.split("## Policies (CRDs)", 1)[1].split("\n## ", 1)[0]
    for phrase in ("kubectl apply -f charts/memwatch/crds/", "never", "MemwatchPolicy", "ClusterMemwatchPolicy"):
        assert phrase in section, phrase
