"""RBAC, least privilege, rule by rule.

The expected rules are written out here from issue #4 and the CLI contract,
independently of the templates, and compared exactly: a rule too many fails
as surely as a rule too few.
"""

from __future__ import annotations

from typing import Any

import pytest

from .chartlib import NAMESPACE, RELEASE, SCENARIOS, Obj, Rendered, deep_merge

Rule = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]

POD_READ: Rule = (("",), ("pods",), (), ("get", "list", "watch"))
EVICT: Rule = (("",), ("pods/eviction",), (), ("create",))
DELETE: Rule = (("",), ("pods",), (), ("delete",))
EVENTS: Rule = (("",), ("events",), (), ("create", "list", "patch", "watch"))
METRICS: Rule = (("metrics.k8s.io",), ("pods",), (), ("get", "list"))
NODE_STATS: Rule = (("",), ("nodes/stats",), (), ("get",))
NODE_GET: Rule = (("",), ("nodes",), (), ("get",))
NODE_EVENT: Rule = (("",), ("events",), (), ("create",))
LEASE_CREATE: Rule = (("coordination.k8s.io",), ("leases",), (), ("create",))
# The memwatch.io policies (charts/memwatch/crds/): read by both, their status written by the controller
# only, never the policies themselves; Namespaces read for a ClusterMemwatchPolicy's namespaceSelector.
POLICY_READ: Rule = (("memwatch.io",), ("memwatchpolicies", "clustermemwatchpolicies"), (), ("get", "list", "watch"))
POLICY_STATUS: Rule = (("memwatch.io",), ("memwatchpolicies/status", "clustermemwatchpolicies/status"), (),
                       ("get", "patch"))
NS_POLICY_READ: Rule = (("memwatch.io",), ("memwatchpolicies",), (), ("get", "list", "watch"))
NS_POLICY_STATUS: Rule = (("memwatch.io",), ("memwatchpolicies/status",), (), ("get", "patch"))
CLUSTER_POLICY_READ: Rule = (("memwatch.io",), ("clustermemwatchpolicies",), (), ("get", "list", "watch"))
CLUSTER_POLICY_STATUS: Rule = (("memwatch.io",), ("clustermemwatchpolicies/status",), (), ("get", "patch"))
NAMESPACES_READ: Rule = (("",), ("namespaces",), (), ("list", "watch"))


def lease_use(name: str) -> Rule:
    return (("coordination.k8s.io",), ("leases",), (name,), ("get", "update"))


def normalize(rule: Obj) -> Rule:
    assert set(rule) <= {"apiGroups", "resources", "resourceNames", "verbs"}, rule
    return (
        tuple(rule["apiGroups"]),
        tuple(rule["resources"]),
        tuple(rule.get("resourceNames", ())),
        tuple(sorted(rule["verbs"])),
    )


def rules_of(role: Obj) -> list[Rule]:
    return sorted(normalize(rule) for rule in role["rules"])


def expected_rbac(values: Obj) -> dict[tuple[str, str | None, str], list[Rule]]:
    """(kind, namespace, name) -> rules, from the spec."""
    fullname = RELEASE  # the release name contains the chart name
    can_delete = (
        values["rbac"]["allowDelete"] or values["eviction"]["escalate"] or values["defaultPolicy"]["action"] == "delete"
    )
    pod_rules = [POD_READ, EVICT, EVENTS] + ([DELETE] if can_delete else [])
    agent_rules = pod_rules if values["agent"]["evict"] else [POD_READ, EVENTS]
    controller_rules = pod_rules + ([METRICS] if values["source"] in ("auto", "metrics-api") else [])
    cluster_rules = [NODE_STATS, NODE_GET] if values["source"] in ("auto", "kubelet") else []
    watched = values["namespaces"]
    roles: dict[tuple[str, str | None, str], list[Rule]] = {}
    # The policies: all in the ClusterRole cluster-wide; with namespaces, MemwatchPolicies in each Role and
    # only the cluster-scoped ClusterMemwatchPolicies (and Namespaces) in the ClusterRole, which is then
    # always there.
    if not watched:
        cluster_rules = [*controller_rules, *cluster_rules, POLICY_READ, POLICY_STATUS, NAMESPACES_READ]
    else:
        cluster_rules = [*cluster_rules, CLUSTER_POLICY_READ, CLUSTER_POLICY_STATUS, NAMESPACES_READ]
    for namespace in watched:
        roles[("Role", namespace, fullname)] = [*controller_rules, NS_POLICY_READ, NS_POLICY_STATUS]
    roles[("ClusterRole", None, fullname)] = cluster_rules
    # With agents, the controller follows their pods in its own namespace (--defer-to-agents).
    agent = values["agent"]
    agent_pods = [POD_READ] if agent["enabled"] and (agent.get("evict", True) or agent.get("kill")) else []
    roles[("Role", NAMESPACE, f"{fullname}-leader-election")] = [LEASE_CREATE, lease_use(fullname), *agent_pods]
    if values["agent"]["enabled"]:
        if watched:
            for namespace in watched:
                roles[("Role", namespace, f"{fullname}-agent")] = [*agent_rules, NS_POLICY_READ]
            roles[("ClusterRole", None, f"{fullname}-agent")] = [CLUSTER_POLICY_READ, NAMESPACES_READ]
            # The node guard's Event on the Node lives in default (a Node is cluster-scoped): create only.
            if agent["nodeGuard"]["mode"] != "off" and "default" not in watched:
                roles[("Role", "default", f"{fullname}-agent-node-events")] = [NODE_EVENT]
        else:
            roles[("ClusterRole", None, f"{fullname}-agent")] = [*agent_rules, POLICY_READ, NAMESPACES_READ]
    return {key: sorted(rules) for key, rules in roles.items()}


CASES: dict[str, Obj] = {
    **{f"scenario-{name}": values for name, values in SCENARIOS.items()},
    "source-kubelet": {"source": "kubelet"},
    "source-metrics-api": {"source": "metrics-api"},
    "namespaced-auto": {"namespaces": ["team-a"], "agent": {"enabled": True}},
    "namespaced-kubelet": {"namespaces": ["team-a", "team-b"], "source": "kubelet"},
    "escalate": {"eviction": {"escalate": True}},
    "allow-delete": {"rbac": {"allowDelete": True}, "agent": {"enabled": True}},
    "default-action-delete": {"defaultPolicy": {"action": "delete"}},
    "dry-run-default": {"defaultPolicy": {"action": "dry-run"}},
    "agent-kill-only": {"agent": {"enabled": True, "kill": True, "evict": False}, "eviction": {"escalate": True}},
    "namespaced-agent-kill-only": {"namespaces": ["team-a"], "agent": {"enabled": True, "evict": False},
                                   "rbac": {"allowDelete": True}},
    "agent-admission-policy": {"agent": {"enabled": True, "admissionPolicy": {"enabled": True}}},
    "namespaced-node-guard-off": {"namespaces": ["team-a"], "agent": {"enabled": True, "nodeGuard": {"mode": "off"}}},
    "namespaced-with-default": {"namespaces": ["team-a", "default"], "agent": {"enabled": True}},
}


@pytest.fixture(params=sorted(CASES), scope="module")
def case(request: pytest.FixtureRequest, render: Any) -> Rendered:
    rendered: Rendered = render(CASES[request.param])
    return rendered


ROLE_KINDS = ("ClusterRole", "Role")


def test_rules_are_exactly_the_spec(case: Rendered) -> None:
    actual = {
        (role["kind"], role["metadata"].get("namespace"), role["metadata"]["name"]): rules_of(role)
        for kind in ROLE_KINDS
        for role in case.of_kind(kind)
    }
    assert actual == expected_rbac(case.values)


def test_no_wildcards_no_secrets(case: Rendered) -> None:
    forbidden_resources = {"secrets", "configmaps", "pods/exec", "pods/attach", "serviceaccounts/token"}
    for kind in ROLE_KINDS:
        for role in case.of_kind(kind):
            for rule in role["rules"]:
                for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                    assert not any("*" in item for item in rule.get(field, [])), (role["metadata"]["name"], rule)
                assert not forbidden_resources & set(rule["resources"])
                assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
            assert "aggregationRule" not in role


def test_every_binding_binds_its_role_to_its_own_service_account(case: Rendered) -> None:
    roles = {
        (role["kind"], role["metadata"].get("namespace"), role["metadata"]["name"])
        for kind in ROLE_KINDS
        for role in case.of_kind(kind)
    }
    bindings = case.of_kind("ClusterRoleBinding") + case.of_kind("RoleBinding")
    assert len(bindings) == len(roles)
    accounts = {sa["metadata"]["name"] for sa in case.of_kind("ServiceAccount")}
    for binding in bindings:
        namespace = binding["metadata"].get("namespace")
        ref = binding["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io"
        assert (ref["kind"], namespace if ref["kind"] == "Role" else None, ref["name"]) in roles
        (subject,) = binding["subjects"]
        assert subject["kind"] == "ServiceAccount"
        assert subject["namespace"] == NAMESPACE
        assert subject["name"] in accounts
        # The agent's roles go to the agent's account, the controller's to the controller's.
        is_agent = binding["metadata"]["labels"]["app.kubernetes.io/component"] == "agent"
        assert subject["name"].endswith("-agent") == is_agent


def test_controller_and_agent_have_their_own_service_accounts(render: Any) -> None:
    rendered = render({"agent": {"enabled": True}})
    controller_sa = rendered.controller["spec"]["template"]["spec"]["serviceAccountName"]
    agent = rendered.agent
    assert agent is not None
    agent_sa = agent["spec"]["template"]["spec"]["serviceAccountName"]
    assert controller_sa != agent_sa
    assert {sa["metadata"]["name"] for sa in rendered.of_kind("ServiceAccount")} == {controller_sa, agent_sa}


def test_rbac_create_false_renders_no_rbac(render: Any) -> None:
    rendered = render({"rbac": {"create": False}, "agent": {"enabled": True}})
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        assert rendered.of_kind(kind) == []


def test_existing_service_accounts(render: Any) -> None:
    values = {
        "serviceAccount": {"create": False, "name": "mine"},
        "agent": {"enabled": True, "serviceAccount": {"create": False, "name": "my-agent"}},
    }
    rendered = render(values)
    assert rendered.of_kind("ServiceAccount") == []
    assert rendered.controller["spec"]["template"]["spec"]["serviceAccountName"] == "mine"
    subjects = {
        b["metadata"]["name"]: b["subjects"][0]["name"]
        for b in rendered.of_kind("ClusterRoleBinding") + rendered.of_kind("RoleBinding")
    }
    assert subjects == {"memwatch": "mine", "memwatch-leader-election": "mine", "memwatch-agent": "my-agent"}


def test_expected_rbac_follows_defaults(chart: Any) -> None:
    """The spec function itself, on the defaults: the issue's list, nothing else."""
    expected = expected_rbac(deep_merge(chart.values, {}))
    assert expected[("ClusterRole", None, "memwatch")] == sorted([POD_READ, EVICT, EVENTS, METRICS, NODE_STATS,
                                                                  NODE_GET, POLICY_READ, POLICY_STATUS,
                                                                  NAMESPACES_READ])
    assert DELETE not in expected[("ClusterRole", None, "memwatch")]


def test_no_node_proxy_anywhere(case: Rendered) -> None:
    """`nodes/proxy` is exec-equivalent on a kubelet with webhook authorization (issue #10): never granted,
    nor anything else under nodes/ but stats (and the Node objects themselves)."""
    for kind in ROLE_KINDS:
        for role in case.of_kind(kind):
            for rule in role["rules"]:
                assert "nodes/proxy" not in rule["resources"], role["metadata"]["name"]
                assert {r for r in rule["resources"] if r.startswith("nodes")} <= {"nodes", "nodes/stats"}
                if "nodes" in rule["resources"]:
                    assert rule["verbs"] == ["get"]


def test_no_node_proxy_in_any_ci_values_file(scenario: Rendered) -> None:
    text = str([role["rules"] for kind in ROLE_KINDS for role in scenario.of_kind(kind)])
    assert "nodes/proxy" not in text


@pytest.mark.parametrize("namespaces", [[], ["team-a", "team-b"]])
@pytest.mark.parametrize("delete", [False, True])
def test_kill_only_agent_can_neither_evict_nor_delete(render: Any, namespaces: list[str], delete: bool) -> None:
    rendered = render({"namespaces": namespaces, "rbac": {"allowDelete": delete},
                       "agent": {"enabled": True, "kill": True, "evict": False}})
    agent_roles = [r for kind in ROLE_KINDS for r in rendered.of_kind(kind)
                   if r["metadata"]["labels"]["app.kubernetes.io/component"] == "agent"
                   and not r["metadata"]["name"].endswith("-node-events")]  # events create only, in default
    # One per namespace, and the ClusterRole (with namespaces: the cluster-scoped policies and Namespaces).
    assert len(agent_roles) == len(namespaces) + 1
    policy_reads = {(res, verb) for res in ("memwatchpolicies", "clustermemwatchpolicies", "namespaces")
                    for verb in ("get", "list", "watch")} - {("namespaces", "get")}
    for role in agent_roles:
        granted = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
        assert ("pods/eviction", "create") not in granted and ("pods", "delete") not in granted
        if role["kind"] == "ClusterRole" and namespaces:
            assert granted == {(r, v) for r, v in policy_reads if r != "memwatchpolicies"}
            continue
        assert granted - policy_reads == {("pods", "get"), ("pods", "list"), ("pods", "watch"), ("events", "create"),
                                          ("events", "patch"), ("events", "list"), ("events", "watch")}
    # The controller keeps its own: evictions happen, through it.
    controller_roles = [r for kind in ROLE_KINDS for r in rendered.of_kind(kind)
                        if r["metadata"]["labels"]["app.kubernetes.io/component"] == "controller"]
    assert any("pods/eviction" in rule["resources"] for r in controller_roles for rule in r["rules"])


def readme_rbac_rows() -> dict[str, str]:
    """The README's RBAC table: ServiceAccount -> the text of its rule column, all rows joined."""
    from .chartlib import REPO_DIR

    readme = (REPO_DIR / "README.md").read_text()
    section = readme.split("### RBAC: what each ServiceAccount can do", 1)[1].split("\n### ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] in ("controller", "agent"):
            rows[cells[0]] = rows.get(cells[0], "") + " " + cells[1]
    return rows


def test_readme_rbac_table_names_every_grant(case: Rendered) -> None:
    """Every resource and verb a role grants is in the README's row for its ServiceAccount."""
    rows = readme_rbac_rows()
    for kind in ROLE_KINDS:
        for role in case.of_kind(kind):
            account = role["metadata"]["labels"]["app.kubernetes.io/component"]
            text = rows[account]
            for rule in role["rules"]:
                for resource in rule["resources"]:
                    group = rule["apiGroups"][0]
                    assert (f"`{group}` {resource}" if group and group != "coordination.k8s.io" else resource) \
                        in text or f"`{resource}`" in text, (account, resource)
                    for verb in rule["verbs"]:
                        assert verb in text, (account, resource, verb)
    assert "nodes/proxy" not in rows["controller"] + rows["agent"]
