"""`memwatch lint` on MemwatchPolicy and ClusterMemwatchPolicy manifests: the controller's own parser,
the words of the policy's Ready condition, and values typed as the API server types them."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from memwatch import lint
from memwatch.policyhandlers import ready_condition

HEAD = "apiVersion: memwatch.io/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}{ns}}}\n"


def doc(spec: str | None, kind: str = "MemwatchPolicy", name: str = "p", namespace: str | None = "shop") -> str:
    head = HEAD.format(kind=kind, name=name, ns=f", namespace: {namespace}" if namespace else "")
    return head + ("" if spec is None else "spec:\n" + textwrap.indent(textwrap.dedent(spec), "  "))


def run(tmp_path: Path, *docs: str) -> tuple[int, str]:
    path = tmp_path / "policies.yaml"
    path.write_text("---\n".join(docs))
    out = io.StringIO()
    code = lint.main([str(path)], out=out)
    return code, out.getvalue().replace(f"{path}: ", "")


def condition(text: str) -> str:
    """The message of the controller's Ready condition for the same object."""
    return str(ready_condition(yaml.safe_load(text), None, now="2026-01-01T00:00:00Z")["message"])


def test_a_valid_policy_is_ok_with_a_one_line_summary(tmp_path: Path) -> None:
    namespaced = doc("""\
        podSelector: {matchLabels: {app: web}}
        priority: 10
        limit: 90%
        limitOf: requests
        containers: {app: 1536Mi}
        action: delete
        for: 1m30s
        gracePeriod: 30
        escalate: true
        predict: false
        restartBudget: 3/1h
        minPodAge: 90s
        """)
    cluster = doc("""\
        namespaceSelector: {matchExpressions: [{key: env, operator: In, values: [prod, staging]}]}
        limit: 2Gi
        """, kind="ClusterMemwatchPolicy", name="base", namespace=None)
    code, out = run(tmp_path, namespaced, cluster)
    assert code == 0, out
    assert out.splitlines() == [
        "MemwatchPolicy/p: ok: selects pods app=web in namespace shop; priority 10; sets limit=90% "
        "containers.app=1536Mi limitOf=requests action=delete for=1m30s gracePeriod=30 escalate=true predict=false "
        "restartBudget=3/1h minPodAge=90s",
        "ClusterMemwatchPolicy/base: ok: selects pods (all) in namespaces env in (prod,staging); priority 0; "
        "sets limit=2Gi",
        "memwatch lint: 0 annotated pod template(s), 2 policy object(s), 0 error(s)",
    ]


def test_a_policy_without_a_limit_is_ok_with_a_warning(tmp_path: Path) -> None:
    code, out = run(tmp_path, doc("action: dry-run\n"))
    assert code == 0
    assert "MemwatchPolicy/p: warning: it sets no limit, so it only changes pods that a limit already watches" in out


@pytest.mark.parametrize(("spec", "expected"), [
    ("action: explode\n", "spec.action: 'explode': unknown action; choose one of evict, delete, dry-run, restart"),
    ("limitOf: both\n", "spec.limitOf: 'both': must be one of limits, requests"),
    ("nodePressure: sometimes\n", "spec.nodePressure: 'sometimes': must be one of evict, never"),
    ("limit: lots\n", "spec.limit: 'lots': 'lots' is not a Kubernetes quantity"),
    ("limit: 512m\n", "spec.limit: '512m': '512m' means 512 thousandths of a byte (suffix m); did you mean 512Mi?"),
    ("for: soon\n", "spec.for: 'soon': 'soon' is not a duration"),
    ("restartBudget: 3 per hour\n", "spec.restartBudget: '3 per hour': '3 per hour' is not a restart budget"),
    ("gracePeriod: 5000\n", "spec.gracePeriod: '5000': must be 0 to 3600 seconds"),
    ("gracePeriod: '30'\n", "spec.gracePeriod: '30': must be whole seconds (an integer)"),
    ("escalate: 'true'\n", "spec.escalate: 'true': must be true or false"),
    ("containers: {app: 200%}\n", "spec.containers.app: '200%': a percentage must be above 0% and at most 100%"),
    ("priority: 5000\nlimit: 1Gi\n", "spec.priority: must be a whole number from -1000 to 1000"),
    ("limitt: 1Gi\nlimit: 1Gi\n", "spec.limitt: unknown field"),
    ("namespaceSelector: {}\nlimit: 1Gi\n",
     "spec.namespaceSelector: unknown field (only a ClusterMemwatchPolicy selects namespaces)"),
    ("podSelector: {matchExpressions: [{key: app, operator: Near}]}\nlimit: 1Gi\n",
     "spec.podSelector.matchExpressions[0].operator must be one of In, NotIn, Exists, DoesNotExist, not 'Near'"),
    ("{}\n", "spec sets nothing: give at least limit, containers or one of"),
])
def test_each_problem_in_the_words_of_the_ready_condition(tmp_path: Path, spec: str, expected: str) -> None:
    text = doc(spec)
    code, out = run(tmp_path, text)
    assert code == 1, out
    errors = [line.removeprefix("MemwatchPolicy/p: error: ") for line in out.splitlines()
              if line.startswith("MemwatchPolicy/p: error: ")]
    assert errors and errors[0].startswith(expected), out
    assert condition(text) == "memwatch ignores this policy: " + "; ".join(errors)
    assert out.splitlines()[-1] == f"memwatch lint: 0 annotated pod template(s), 1 policy object(s), " \
                                   f"{len(errors)} error(s)"


def test_every_problem_is_listed(tmp_path: Path) -> None:
    text = doc("action: explode\nfor: soon\nlimit: lots\n")
    code, out = run(tmp_path, text)
    assert code == 1
    errors = [line.split(": error: ", 1)[1] for line in out.splitlines() if ": error: " in line]
    assert len(errors) == 3 and condition(text) == "memwatch ignores this policy: " + "; ".join(errors)


@pytest.mark.parametrize("spec", [None, "\n"])
def test_no_spec_at_all(tmp_path: Path, spec: str | None) -> None:
    code, out = run(tmp_path, doc(spec))
    assert code == 1 and "MemwatchPolicy/p: error: spec sets nothing" in out


def test_unquoted_values_the_schema_wants_as_strings(tmp_path: Path) -> None:
    """Kubernetes reads `1e9`, `300` and `true` as a number and a boolean, and the schema refuses them;
    the value meant is still judged (here 1e9 is a fine limit, 300 bytes is not)."""
    code, out = run(tmp_path, doc("limit: 1e9\ncontainers: {app: 300}\npodSelector: {matchLabels: {canary: true}}\n"))
    assert code == 1
    errors = [line for line in out.splitlines() if ": error: " in line]
    assert errors == [
        "MemwatchPolicy/p: error: spec.limit: 1e9: Kubernetes reads this as a number, and the policy's schema wants "
        'a string; quote it: "1e9"',
        "MemwatchPolicy/p: error: spec.containers.app: 300: Kubernetes reads this as a number, and the policy's "
        'schema wants a string; quote it: "300"',
        "MemwatchPolicy/p: error: spec.podSelector.matchLabels.canary: true: Kubernetes reads this as a boolean, "
        'and the policy\'s schema wants a string; quote it: "true"',
        "MemwatchPolicy/p: error: spec.containers.app: '300': below the smallest watch limit of 1Mi; is the unit "
        "right? (example: 512Mi)",
    ]


def test_typed_fields_read_as_the_api_server_reads_them(tmp_path: Path) -> None:
    """YAML 1.1 as go-yaml reads it: `yes` is true, `0x1E` is 30, `~` is unset."""
    code, out = run(tmp_path, doc("limit: 1Gi\nescalate: yes\ngracePeriod: 0x1E\nfor: ~\n"))
    assert code == 0, out
    assert "sets limit=1Gi gracePeriod=30 escalate=true\n" in out and "for=" not in out


def test_policies_in_lists_and_beside_pods(tmp_path: Path) -> None:
    items: list[Any] = [yaml.safe_load(doc("limit: 1Gi\n", name="a")), yaml.safe_load(doc("action: nope\n", name="b"))]
    listed = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items})
    pod = "kind: Pod\nmetadata: {name: x, annotations: {memwatch.io/limit: 512Mi}}\nspec: {containers: [{name: app}]}\n"
    code, out = run(tmp_path, listed, pod)
    assert code == 1
    assert "MemwatchPolicy/a: ok:" in out and "MemwatchPolicy/b: error: spec.action: 'nope'" in out
    assert "Pod/x: ok: pod<=512Mi" in out
    assert out.splitlines()[-1] == "memwatch lint: 1 annotated pod template(s), 2 policy object(s), 1 error(s)"


def test_wrong_kind_or_api_version_of_a_policy(tmp_path: Path) -> None:
    text = doc("limit: 1Gi\n").replace("memwatch.io/v1alpha1", "memwatch.io/v2")
    code, out = run(tmp_path, text)
    assert code == 1 and "error: apiVersion must be memwatch.io/v1alpha1, not 'memwatch.io/v2'" in out


def test_without_policies_the_summary_line_is_unchanged(tmp_path: Path) -> None:
    code, out = run(tmp_path, "kind: ConfigMap\nmetadata: {name: memwatch}\n")
    assert code == 0 and out == "memwatch lint: 0 annotated pod template(s), 0 error(s)\n"


def test_the_command_line(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(doc("limit: 1Gi\n"))
    bad.write_text(doc("limit: lots\n"))
    for path, code in ((good, 0), (bad, 1)):
        proc = subprocess.run([sys.executable, "-m", "memwatch", "lint", str(path)], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == code, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr


def test_plain_types_documents_without_copying_aliases() -> None:
    (loaded,) = lint.load("a: &x {n: 0x10, b: off, z: ~, f: 1.5e3, s: '7'}\nb: *x\nc: [*x, *x]\n")
    typed = lint.plain(loaded)
    assert typed["a"] == {"n": 16, "b": False, "z": None, "f": 1500.0, "s": "7"}
    assert typed["a"] is typed["b"] is typed["c"][0] is typed["c"][1]
