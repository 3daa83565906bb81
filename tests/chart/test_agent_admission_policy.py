"""agent.admissionPolicy: a ValidatingAdmissionPolicy (1.30+) that admits the agent's evictions and
deletions only for pods on its own node.

The local cluster runs 1.20 (no ValidatingAdmissionPolicy), so the policy is proven here, not on
a cluster: rendered by the real Helm engine, validated against the Kubernetes 1.30+ schemas, and
its CEL run by a CEL interpreter (cel-python) the way the API server runs it: the match
condition, then the variables, then every validation once per parameter (every pod of the
request's namespace), all of which must pass; no parameter at all denies.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate import utils as kv_utils

from .chartlib import NAMESPACE, Obj, Rendered

ON = {"agent": {"enabled": True, "admissionPolicy": {"enabled": True}}}
AGENT_USER = f"system:serviceaccount:{NAMESPACE}:memwatch-agent"
NODE_KEY = "authentication.kubernetes.io/node-name"
# ValidatingAdmissionPolicy is admissionregistration.k8s.io/v1 from 1.30 on.
VAP_VERSIONS = sorted({v for v in kv_utils.all_versions() if tuple(map(int, v.split(".")[:2])) >= (1, 30)},
                      key=lambda v: tuple(map(int, v.split("."))))


def policy_and_binding(rendered: Rendered) -> tuple[Obj, Obj]:
    (policy,) = rendered.of_kind("ValidatingAdmissionPolicy")
    (binding,) = rendered.of_kind("ValidatingAdmissionPolicyBinding")
    return policy, binding


@pytest.mark.parametrize("values", [
    {},
    {"agent": {"enabled": True}},
    {"agent": {"enabled": False, "admissionPolicy": {"enabled": True}}},
    # A kill-only agent cannot evict or delete at all: nothing to restrict.
    {"agent": {"enabled": True, "evict": False, "admissionPolicy": {"enabled": True}}},
])
def test_off_unless_asked_for(render: Any, values: Obj) -> None:
    rendered = render(values)
    assert not rendered.of_kind("ValidatingAdmissionPolicy")
    assert not rendered.of_kind("ValidatingAdmissionPolicyBinding")


@pytest.mark.parametrize("version", [VAP_VERSIONS[0], VAP_VERSIONS[-1]])
def test_policy_is_valid_kubernetes(render: Any, version: str) -> None:
    assert VAP_VERSIONS[0].startswith("1.30")
    for obj in policy_and_binding(render(ON)):
        kubernetes_validate.validate(obj, version, strict=True)


def test_policy_shape(render: Any) -> None:
    policy, binding = policy_and_binding(render(ON))
    spec = policy["spec"]
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert spec["failurePolicy"] == "Fail"
    assert spec["paramKind"] == {"apiVersion": "v1", "kind": "Pod"}
    rules = {(op, res) for r in spec["matchConstraints"]["resourceRules"]
             for op in r["operations"] for res in r["resources"]}
    assert rules == {("CREATE", "pods/eviction"), ("DELETE", "pods")}
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    # Every pod of the request's namespace is a parameter: a narrower selector would leave pods unchecked.
    assert binding["spec"]["paramRef"] == {"selector": {}, "parameterNotFoundAction": "Deny"}
    assert "matchResources" not in binding["spec"]


def test_policy_names_the_agents_own_service_account(render: Any) -> None:
    rendered = render({"agent": {"enabled": True, "admissionPolicy": {"enabled": True},
                                 "serviceAccount": {"create": False, "name": "node-guard"}}},
                      namespace="ops")
    policy, _ = policy_and_binding(rendered)
    (condition,) = policy["spec"]["matchConditions"]
    assert condition["expression"] == "request.userInfo.username == 'system:serviceaccount:ops:node-guard'"


# --- the CEL, evaluated ------------------------------------------------------------------------


def pod(name: str, node: str | None) -> Obj:
    spec: Obj = {"containers": [{"name": "app"}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop"}, "spec": spec}


def request(operation: str, name: str, user: str = AGENT_USER, node: str | None = "node-a") -> Obj:
    user_info: Obj = {"username": user, "groups": ["system:serviceaccounts"]}
    if node is not None:
        user_info["extra"] = {NODE_KEY: [node], "authentication.kubernetes.io/pod-name": ["memwatch-agent-x"]}
    return {"operation": operation, "name": name, "namespace": "shop", "userInfo": user_info,
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "subResource": "eviction" if operation == "CREATE" else ""}


class Admission:
    """The API server's evaluation of one policy and binding, with cel-python as the CEL engine."""

    def __init__(self, policy: Obj, binding: Obj) -> None:
        self.celpy = pytest.importorskip(
            "celpy", reason="SKIPPED LOUDLY: cel-python is not installed; the policy's CEL is NOT evaluated")
        self.env = self.celpy.Environment()
        self.spec, self.binding = policy["spec"], binding["spec"]

    def _eval(self, expression: str, activation: Obj) -> Any:
        program = self.env.program(self.env.compile(expression))
        return program.evaluate({k: self.celpy.json_to_cel(v) for k, v in activation.items()})

    def admits(self, req: Obj, obj: Obj | None, old: Obj | None, namespace_pods: list[Obj]) -> bool:
        base: Obj = {"request": req, "object": obj, "oldObject": old}
        if not all(self._true(c["expression"], base) for c in self.spec["matchConditions"]):
            return True  # not the agent: the policy does not apply
        variables = {}
        for var in self.spec.get("variables", ()):
            variables[var["name"]] = self._eval(var["expression"], {**base, "variables": variables})
        if not namespace_pods:
            return self.binding["paramRef"]["parameterNotFoundAction"] == "Allow"
        for param in namespace_pods:
            activation = {**base, "variables": variables, "params": param}
            for validation in self.spec["validations"]:
                if not self._true(validation["expression"], activation):
                    return False
        return True

    def _true(self, expression: str, activation: Obj) -> bool:
        """Exactly true; false, a non-boolean and an evaluation error all fail (failurePolicy: Fail)."""
        try:
            result = self._eval(expression, activation)
        except self.celpy.CELEvalError:
            return False
        return isinstance(result, self.celpy.celtypes.BoolType) and bool(result)


@pytest.fixture(scope="module")
def admission(render: Any) -> Admission:
    return Admission(*policy_and_binding(render(ON)))


def eviction(name: str) -> Obj:
    return {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": "shop"}}


NAMESPACE_PODS = [pod("web-1", "node-b"), pod("hog", "node-a"), pod("db-0", "node-b"), pod("pending", None)]


@pytest.mark.parametrize(("target", "admitted"), [
    ("hog", True),  # on the agent's own node
    ("db-0", False),  # on another node
    ("web-1", False),
    ("pending", False),  # not scheduled: on no node of the agent's
    ("gone", True),  # no such pod: admission lets it through, the API answers 404
])
def test_agent_evicts_only_on_its_own_node(admission: Admission, target: str, admitted: bool) -> None:
    assert admission.admits(request("CREATE", target), eviction(target), None, NAMESPACE_PODS) is admitted


@pytest.mark.parametrize(("target", "admitted"), [("hog", True), ("db-0", False), ("pending", False)])
def test_agent_deletes_only_on_its_own_node(admission: Admission, target: str, admitted: bool) -> None:
    old = next(p for p in NAMESPACE_PODS if p["metadata"]["name"] == target)
    assert admission.admits(request("DELETE", target), None, old, NAMESPACE_PODS) is admitted


def test_token_without_a_node_is_refused(admission: Admission) -> None:
    """A token that is not node-bound (before 1.30, or not a pod's) cannot be placed: refused."""
    assert not admission.admits(request("CREATE", "hog", node=None), eviction("hog"), None, NAMESPACE_PODS)
    assert not admission.admits(request("DELETE", "hog", node=None), None, NAMESPACE_PODS[1], NAMESPACE_PODS)


def test_other_users_are_not_affected(admission: Admission) -> None:
    controller = f"system:serviceaccount:{NAMESPACE}:memwatch"
    assert admission.admits(request("CREATE", "db-0", user=controller, node="node-a"), eviction("db-0"), None,
                            NAMESPACE_PODS)
    assert admission.admits(request("CREATE", "db-0", user="kubernetes-admin", node=None), eviction("db-0"), None,
                            NAMESPACE_PODS)


def test_empty_namespace_is_denied(admission: Admission) -> None:
    assert not admission.admits(request("CREATE", "hog"), eviction("hog"), None, [])
