"""`memwatch explain -f`: a pod's settings field by field and where each came from, offline.

Manifests are written here, the command runs in-process (its real parser, reader and output), and
expected figures (bytes of a percentage) are computed here from the manifests, never copied from
the command's output.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from memwatch import cli, explain
from memwatch.policyset import parse_policy
from memwatch.protections import SYSTEM_CLUSTER_CRITICAL

MI = 1 << 20
GI = 1 << 30

NAMESPACE = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {env: prod}}
"""

WEB = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  template:
    metadata:
      labels: {app: web}
      annotations: {memwatch.io/action: dry-run}
    spec:
      containers:
      - name: app
        resources: {limits: {memory: 1Gi}, requests: {memory: 512Mi}}
"""

POLICIES = """\
apiVersion: memwatch.io/v1alpha1
kind: MemwatchPolicy
metadata: {name: limits, namespace: shop}
spec: {podSelector: {matchLabels: {app: web}}, limit: 90%, limitOf: requests, for: 30s, priority: 10}
---
apiVersion: memwatch.io/v1alpha1
kind: MemwatchPolicy
metadata: {name: slow, namespace: shop}
spec: {for: 1m, action: delete}
---
apiVersion: memwatch.io/v1alpha1
kind: ClusterMemwatchPolicy
metadata: {name: base}
spec: {restartBudget: 5/2h, minPodAge: 1m, gracePeriod: 20, namespaceSelector: {matchLabels: {env: prod}}}
"""


def write(tmp_path: Path, name: str, *docs: str) -> str:
    path = tmp_path / name
    path.write_text("---\n".join(textwrap.dedent(d) for d in docs))
    return str(path)


def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`memwatch explain ARGV` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = explain.main(list(argv), env=env if env is not None else {}, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def as_json(*argv: str) -> dict[str, Any]:
    code, out, err = run(*argv, "-o", "json")
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def pods(*argv: str) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in as_json(*argv)["pods"]}


def fields(pod: dict[str, Any]) -> dict[str, tuple[str | None, str]]:
    """field -> (value as set, where it came from)."""
    return {f["field"]: (f["value"], f["source"]) for f in pod["fields"]}


def text_rows(out: str) -> dict[str, tuple[str, str]]:
    """The field table of the text output: field -> (value, from), by the header's column positions."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:3] == ["FIELD", "VALUE", "FROM"])
    header = lines[start]
    value_at, from_at = header.index("VALUE"), header.index("FROM")
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        rows[line[:value_at].strip()] = (line[value_at:from_at].strip(), line[from_at:].strip())
    return rows


# ---------------------------------------------------------------------------------------------
# Field by field: the pod's annotation, then its namespace's policies, then the cluster's, then defaults


def test_each_field_names_where_it_came_from(tmp_path: Path) -> None:
    files = ["-f", write(tmp_path, "app.yaml", NAMESPACE, WEB), "-f", write(tmp_path, "policies.yaml", POLICIES)]
    web = pods(*files)["web"]
    assert web["kind"] == "Deployment" and web["namespace"] == "shop" and web["watched"] is True
    assert fields(web) == {
        "limit": ("90%", "MemwatchPolicy shop/limits"),
        "limit-of": ("requests", "MemwatchPolicy shop/limits"),
        "action": ("dry-run", "annotation"),  # the pod's own annotation wins over shop/slow's delete
        "for": ("30s", "MemwatchPolicy shop/limits"),  # priority 10 wins over shop/slow's 1m
        "grace-period": ("20", "ClusterMemwatchPolicy base"),
        "escalate": (None, "default"),
        "predict": (None, "default"),
        "node-pressure": (None, "default"),
        "restart-budget": ("5/2h", "ClusterMemwatchPolicy base"),
        "min-pod-age": ("1m", "ClusterMemwatchPolicy base"),
    }
    assert web["policies"] == ["MemwatchPolicy shop/limits", "MemwatchPolicy shop/slow", "ClusterMemwatchPolicy base"]
    assert web["action"] == "dry-run" and web["protected"] is None and web["workload"] == "Deployment/web"
    assert "MemwatchPolicy shop/limits" in web["why"] and "annotations" in web["why"]
    assert web["restart_budget"]["budget"] == "5/2h" and "unknown offline" in web["restart_budget"]["text"]

    code, out, err = run(*files)
    assert code == 0 and err == ""
    rows = text_rows(out)
    expected = int(512 * MI * 90 / 100)
    assert rows["limit"] == (f"90% of resources.requests.memory: 461Mi ({expected} bytes)",
                             "MemwatchPolicy shop/limits")
    assert rows["action"] == ("dry-run", "annotation")
    assert rows["for"] == ("30s", "MemwatchPolicy shop/limits")
    assert rows["grace-period"] == ("20s", "ClusterMemwatchPolicy base")
    assert rows["escalate"] == ("false", "default") and rows["predict"] == ("true", "default")
    assert rows["restart-budget"] == ("5/2h", "ClusterMemwatchPolicy base")
    assert rows["min-pod-age"] == ("1m", "ClusterMemwatchPolicy base")
    assert out.startswith("Deployment (pod template) shop/web\n")
    assert "  Watched:        yes: it carries memwatch.io/ annotations; its watch limit comes from " \
           "MemwatchPolicy shop/limits" in out
    assert "  Restart budget: 5/2h on Deployment/web; left: unknown offline" in out


def test_percent_of_requests_and_of_limits(tmp_path: Path) -> None:
    pod = textwrap.dedent("""\
        apiVersion: v1
        kind: Pod
        metadata: {name: p, namespace: shop, annotations: {memwatch.io/limit: 75%, memwatch.io/limit.side: 50%}}
        spec:
          containers:
          - {name: app, resources: {limits: {memory: 1Gi}, requests: {memory: 600Mi}}}
          - {name: side, resources: {limits: {memory: 256Mi}, requests: {memory: 100Mi}}}
        """)
    requests = "apiVersion: memwatch.io/v1alpha1\nkind: MemwatchPolicy\nmetadata: {name: r, namespace: shop}\n" \
               "spec: {limitOf: requests}\n"
    by_requests = pods("-f", write(tmp_path, "a.yaml", pod, requests))["p"]
    limits = {lim["scope"]: lim["bytes"] for lim in by_requests["limits"]}
    assert limits == {"pod": int(700 * MI * 75 / 100), "container:side": int(100 * MI * 50 / 100)}
    assert fields(by_requests)["limit-of"] == ("requests", "MemwatchPolicy shop/r")
    assert {f["field"]: f["bytes"] for f in by_requests["fields"]}["limit.side"] == 50 * MI
    by_limits = pods("-f", write(tmp_path, "b.yaml", pod))["p"]
    assert {lim["scope"]: lim["bytes"] for lim in by_limits["limits"]} == \
        {"pod": int((GI + 256 * MI) * 75 / 100), "container:side": 128 * MI}
    assert fields(by_limits)["limit-of"] == (None, "default")
    assert {f["field"]: f["effective"] for f in by_limits["fields"]}["limit-of"] == "limits"


# ---------------------------------------------------------------------------------------------
# Conflicts and invalid policies


def test_conflicts_name_the_winner_and_the_losers(tmp_path: Path) -> None:
    policies = textwrap.dedent("""\
        apiVersion: memwatch.io/v1alpha1
        kind: MemwatchPolicy
        metadata: {name: b-second, namespace: shop}
        spec: {limit: 600Mi, action: delete}
        ---
        apiVersion: memwatch.io/v1alpha1
        kind: MemwatchPolicy
        metadata: {name: a-first, namespace: shop}
        spec: {limit: 500Mi, action: evict}
        ---
        apiVersion: memwatch.io/v1alpha1
        kind: MemwatchPolicy
        metadata: {name: z-urgent, namespace: shop}
        spec: {for: 5s, priority: 100}
        ---
        apiVersion: memwatch.io/v1alpha1
        kind: MemwatchPolicy
        metadata: {name: y-lazy, namespace: shop}
        spec: {for: 10m}
        """)
    pod = "kind: Pod\nmetadata: {name: p, namespace: shop, annotations: {memwatch.io/action: dry-run}}\n" \
          "spec: {containers: [{name: app, resources: {limits: {memory: 1Gi}}}]}\n"
    got = pods("-f", write(tmp_path, "c.yaml", pod, policies))["p"]
    conflicts = {c["field"]: c for c in got["conflicts"]}
    # Same priority: name order; a higher priority wins whatever its name.
    assert conflicts["limit"]["winner"] == "MemwatchPolicy shop/a-first" and conflicts["limit"]["value"] == "500Mi"
    assert conflicts["limit"]["losers"] == [{"policy": "MemwatchPolicy shop/b-second", "value": "600Mi"}]
    assert conflicts["limit"]["moot"] is False
    assert conflicts["for"]["winner"] == "MemwatchPolicy shop/z-urgent"
    assert conflicts["for"]["losers"] == [{"policy": "MemwatchPolicy shop/y-lazy", "value": "10m"}]
    assert conflicts["action"]["moot"] is True  # the pod's own annotation sets it anyway
    assert fields(got)["limit"] == ("500Mi", "MemwatchPolicy shop/a-first")
    assert fields(got)["for"] == ("5s", "MemwatchPolicy shop/z-urgent")
    _, out, _ = run("-f", str(tmp_path / "c.yaml"))
    assert "limit: MemwatchPolicy shop/a-first ('500Mi') wins over MemwatchPolicy shop/b-second ('600Mi')" in out
    assert "action: MemwatchPolicy shop/a-first ('evict') wins over MemwatchPolicy shop/b-second ('delete'); " \
           "moot: the pod's own annotation sets it" in out


def test_invalid_policies_that_would_select_the_pod_are_listed_with_their_problems(tmp_path: Path) -> None:
    policies = textwrap.dedent("""\
        apiVersion: memwatch.io/v1alpha1
        kind: MemwatchPolicy
        metadata: {name: broken, namespace: shop}
        spec: {podSelector: {matchLabels: {app: web}}, limit: lots, action: explode}
        ---
        apiVersion: memwatch.io/v1alpha1
        kind: MemwatchPolicy
        metadata: {name: elsewhere, namespace: shop}
        spec: {podSelector: {matchLabels: {app: db}}, limit: lots}
        ---
        apiVersion: memwatch.io/v1alpha1
        kind: MemwatchPolicy
        metadata: {name: other-namespace, namespace: blog}
        spec: {limit: lots}
        ---
        apiVersion: memwatch.io/v1alpha1
        kind: ClusterMemwatchPolicy
        metadata: {name: bad-selector}
        spec: {limit: 1Gi, podSelector: {matchExpressions: [{key: app, operator: Near}]}}
        """)
    got = pods("-f", write(tmp_path, "p.yaml", NAMESPACE, WEB, policies))["web"]
    invalid = {p["policy"]: p for p in got["invalid_policies"]}
    assert set(invalid) == {"MemwatchPolicy shop/broken", "ClusterMemwatchPolicy bad-selector"}
    broken = invalid["MemwatchPolicy shop/broken"]
    assert broken["selects"] is True
    # The words of the policy's Ready condition: parse_policy's problems, as the controller reports them.
    assert broken["problems"] == list(parse_policy(yaml.safe_load(policies.split("---")[0])).problems)
    assert sorted(broken["problems"]) == sorted([
        "spec.limit: 'lots': 'lots' is not a Kubernetes quantity (examples: 512Mi, 1.5Gi, 600M)",
        "spec.action: 'explode': unknown action; choose one of evict, delete, dry-run, restart",
    ])
    assert invalid["ClusterMemwatchPolicy bad-selector"]["selects"] is None
    # Invalid policies are never applied: nothing gives this annotated pod a limit, so it is invalid.
    assert got["policies"] == [] and got["watched"] is True and got["action"] == "nothing: its settings are invalid"
    assert got["problems"] == ["memwatch.io/limit='': no watch limit: set memwatch.io/limit or "
                               "memwatch.io/limit.<container>"]
    _, out, _ = run("-f", str(tmp_path / "p.yaml"))
    assert "  Invalid policies (ignored by memwatch):" in out
    assert "    MemwatchPolicy shop/broken would select it: spec.limit: 'lots'" in out
    assert "    ClusterMemwatchPolicy bad-selector may select it (its selector is invalid): " \
           "spec.podSelector.matchExpressions[0].operator" in out


# ---------------------------------------------------------------------------------------------
# Protected and not watched


def _pod(name: str, namespace: str = "shop", annotations: str = "{memwatch.io/limit: 512Mi}", labels: str = "{}",
         extra: str = "") -> str:
    return (f"kind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, annotations: {annotations}, "
            f"labels: {labels}}}\nspec: {{containers: [{{name: app, resources: {{limits: {{memory: 1Gi}}}}}}]"
            f"{extra}}}\n")


def test_protected_pods_say_why(tmp_path: Path) -> None:
    template = textwrap.dedent("""\
        kind: DaemonSet
        metadata: {name: agent, namespace: shop}
        spec:
          template:
            metadata: {annotations: {memwatch.io/limit: 100Mi}}
            spec:
              priorityClassName: system-cluster-critical
              containers: [{name: app, resources: {limits: {memory: 1Gi}}}]
        """)
    path = write(tmp_path, "p.yaml", _pod("dns", "kube-system"),
                 _pod("critical", extra=f", priority: {SYSTEM_CLUSTER_CRITICAL}"),
                 _pod("self", labels="{app.kubernetes.io/name: memwatch}"), _pod("ok"), template)
    got = pods("-f", path)
    assert got["dns"]["protected"] == "namespace kube-system is protected (allow it with --allow-namespace kube-system)"
    assert got["critical"]["protected"].startswith(f"priority {SYSTEM_CLUSTER_CRITICAL} is at or above")
    assert got["agent"]["protected"].startswith(f"priority {SYSTEM_CLUSTER_CRITICAL} is at or above")
    assert got["self"]["protected"] == "memwatch's own pod"
    assert got["ok"]["protected"] is None and got["ok"]["action"] == "evict"
    for name in ("dns", "critical", "self", "agent"):
        assert got[name]["watched"] is True and got[name]["action"] == "nothing: protected", name
    _, out, _ = run("-f", path, "dns")
    assert "  Protected:      yes: namespace kube-system is protected" in out
    assert "  On a breach:    nothing: protected" in out
    # The controller's flags, as `memwatch status` takes them.
    got = pods("-f", path, "--allow-namespace", "kube-system", "--protected-priority", "none", "--dry-run")
    assert got["dns"]["protected"] is None and got["dns"]["action"] == "dry-run"
    assert got["critical"]["protected"] is None
    assert {f["field"]: f["effective"] for f in got["ok"]["fields"]}["action"] == \
        "evict (the controller runs with --dry-run: dry-run)"
    got = pods("-f", path, "--default-action", "delete", "--default-restart-budget", "off", "--default-for", "10s")
    assert fields(got["ok"])["action"] == (None, "default")
    assert {f["field"]: f["effective"] for f in got["ok"]["fields"]}["action"] == "delete"
    assert {f["field"]: f["effective"] for f in got["ok"]["fields"]}["for"] == "10s"
    assert got["ok"]["restart_budget"]["budget"] == "off"


def test_not_watched_pods_say_why(tmp_path: Path) -> None:
    no_limits = ("kind: Pod\nmetadata: {name: unlimited, namespace: shop, labels: {app: web}}\n"
                 "spec: {containers: [{name: app}]}\n")
    only_action = ("apiVersion: memwatch.io/v1alpha1\nkind: MemwatchPolicy\nmetadata: {name: acts, namespace: shop}\n"
                   "spec: {podSelector: {matchLabels: {tier: be}}, action: delete}\n")
    percent = ("apiVersion: memwatch.io/v1alpha1\nkind: MemwatchPolicy\nmetadata: {name: pct, namespace: shop}\n"
               "spec: {podSelector: {matchLabels: {app: web}}, limit: 90%}\n")
    path = write(tmp_path, "n.yaml", _pod("plain", annotations="{}"),
                 _pod("guarded", annotations="{memwatch.io/node-pressure: never}"),
                 _pod("backend", annotations="{}", labels="{tier: be}"), no_limits, only_action, percent)
    got = pods("-f", path)
    for name in ("plain", "guarded", "backend", "unlimited"):
        assert got[name]["watched"] is False, name
        assert got[name]["action"] == "nothing: not watched"
        assert got[name]["restart_budget"]["text"] == "-: not watched"
    assert got["plain"]["why"] == "it has no memwatch.io/ annotation and no valid policy gives it a watch limit"
    assert "only memwatch.io/ annotation is memwatch.io/node-pressure" in got["guarded"]["why"]
    assert got["backend"]["why"].startswith("MemwatchPolicy shop/acts selects it but sets no watch limit")
    assert got["unlimited"]["why"].startswith("MemwatchPolicy shop/pct gives it a watch limit that cannot apply to it: "
                                              "memwatch.io/limit='90%': a percentage needs every container to set "
                                              "resources.limits.memory")
    _, out, _ = run("-f", path, "plain")
    assert "  Watched:        no: it has no memwatch.io/ annotation" in out


def test_invalid_annotations_are_watched_but_never_acted_on(tmp_path: Path) -> None:
    got = pods("-f", write(tmp_path, "i.yaml", _pod("bad", annotations="{memwatch.io/limit: lots}")))["bad"]
    assert got["watched"] is True and got["action"] == "nothing: its settings are invalid"
    assert got["problems"] and got["problems"][0].startswith("memwatch.io/limit='lots'")
    assert fields(got)["limit"] == ("lots", "annotation")


def test_namespace_selector_needs_the_namespace_labels(tmp_path: Path) -> None:
    cluster = ("apiVersion: memwatch.io/v1alpha1\nkind: ClusterMemwatchPolicy\nmetadata: {name: prod}\n"
               "spec: {namespaceSelector: {matchLabels: {env: prod}}, limit: 700Mi}\n")
    pod = _pod("p", annotations="{}")
    without = pods("-f", write(tmp_path, "a.yaml", pod, cluster))["p"]
    assert without["watched"] is False
    assert without["notes"] == ["the labels of namespace shop are unknown (the files hold no Namespace object of that "
                                "name), so ClusterMemwatchPolicy prod (which selects namespaces by label) is taken as "
                                "not selecting it"]
    with_labels = pods("-f", write(tmp_path, "b.yaml", NAMESPACE, pod, cluster))["p"]
    assert with_labels["watched"] is True and with_labels["notes"] == []
    assert fields(with_labels)["limit"] == ("700Mi", "ClusterMemwatchPolicy prod")
    assert with_labels["why"] == "ClusterMemwatchPolicy prod gives it a watch limit"


def test_objects_without_a_namespace_take_dash_n(tmp_path: Path) -> None:
    policy = "apiVersion: memwatch.io/v1alpha1\nkind: MemwatchPolicy\nmetadata: {name: x}\nspec: {limit: 300Mi}\n"
    pod = "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: app}]}\n"
    path = write(tmp_path, "a.yaml", pod, policy)
    got = pods("-f", path, "-n", "team")["p"]
    assert got["namespace"] == "team" and fields(got)["limit"] == ("300Mi", "MemwatchPolicy team/x")
    assert pods("-f", path)["p"]["namespace"] == "default"


def test_json_document(tmp_path: Path) -> None:
    doc = as_json("-f", write(tmp_path, "app.yaml", NAMESPACE, WEB, POLICIES), "shop/web")
    assert doc["mode"] == "offline" and doc["notes"] == [] and len(doc["pods"]) == 1
    web = doc["pods"][0]
    assert set(web) == {"kind", "namespace", "name", "uid", "watched", "why", "action", "protected", "workload",
                        "policies", "fields", "limits", "conflicts", "invalid_policies", "problems", "warnings",
                        "restart_budget", "notes"}
    limit = next(f for f in web["fields"] if f["field"] == "limit")
    assert limit == {"field": "limit", "annotation": "memwatch.io/limit", "spec_field": "limit", "value": "90%",
                     "effective": f"90% of resources.requests.memory: 461Mi ({int(512 * MI * 0.9)} bytes)",
                     "bytes": int(512 * MI * 0.9), "source": "MemwatchPolicy shop/limits"}
    assert web["limits"] == [{"scope": "pod", "text": "90%", "bytes": int(512 * MI * 0.9),
                              "source": "MemwatchPolicy shop/limits"}]
    assert [f["spec_field"] for f in web["fields"]] == ["limit", "limitOf", "action", "for", "gracePeriod", "escalate",
                                                        "predict", "nodePressure", "restartBudget", "minPodAge"]
    assert web["restart_budget"]["used"] is None and web["restart_budget"]["left"] is None


def test_many_pods_and_filters(tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", _pod("a"), _pod("b"), WEB)
    assert [p["name"] for p in as_json("-f", path)["pods"]] == ["a", "b", "web"]
    for wanted in ("web", "shop/web", "Deployment/web", "deployment/web"):
        assert [p["name"] for p in as_json("-f", path, wanted)["pods"]] == ["web"], wanted
    code, out, _ = run("-f", path)
    assert code == 0 and out.count("\n\n") >= 2 and "Pod shop/a\n" in out and "Pod shop/b\n" in out


def test_stdin_and_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    items = {"kind": "List", "items": [json.loads(json.dumps({
        "kind": "Pod", "metadata": {"name": "listed", "namespace": "shop",
                                    "annotations": {"memwatch.io/limit": "256Mi"}},
        "spec": {"containers": [{"name": "app"}]}}))]}
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(json.dumps(items).encode())))
    got = pods("-f", "-")
    assert fields(got["listed"])["limit"] == ("256Mi", "annotation")


# ---------------------------------------------------------------------------------------------
# Errors: one line, exit 1 (2 for a flag argparse refuses), never a traceback


def _one_line_error(result: tuple[int, str, str], code: int, *fragments: str) -> None:
    got, out, err = result
    assert got == code, err
    assert out == "" and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_input_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", _pod("a"))
    _one_line_error(run("-f", path, "nope"), 1, "memwatch explain: error: no pod or pod template 'nope' in")
    _one_line_error(run("-f", str(tmp_path / "absent.yaml")), 1, "absent.yaml: No such file or directory")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Pod\nmetadata: [\n")
    _one_line_error(run("-f", str(bad)), 1, "bad.yaml: not valid YAML: line 3")
    empty = write(tmp_path, "empty.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    _one_line_error(run("-f", empty), 1, "no pod or pod template in")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00kind")
    _one_line_error(run("-f", str(binary)), 1, "not UTF-8 text")
    _one_line_error(run("-f", path, "-n", "Not_A_Namespace"), 1, "is not a namespace name")


@pytest.mark.parametrize(("argv", "fragment"), [
    ([], "name a pod: NAMESPACE/POD or -n NAMESPACE POD"),
    (["shop/Web_1"], "'Web_1' is not a pod name"),
    (["a/b/c"], "'b/c' is not a pod name"),
    (["shop/web", "-n", "blog"], "'shop/web' names namespace 'shop' but -n says 'blog'"),
    (["UPPER/web"], "'UPPER' is not a namespace name"),
])
def test_bad_pod_names_are_refused_before_any_kubeconfig(argv: list[str], fragment: str, tmp_path: Path) -> None:
    _one_line_error(run(*argv, "--kubeconfig", str(tmp_path / "none")), 1, fragment)


def test_bad_flags_exit_2() -> None:
    _one_line_error(run("-o", "yaml", "shop/web"), 2, "invalid choice: 'yaml'")
    _one_line_error(run("--default-action", "explode", "shop/web"), 2, "invalid choice: 'explode'")


def test_missing_kubeconfig_is_one_line(tmp_path: Path) -> None:
    _one_line_error(run("shop/web", "--kubeconfig", str(tmp_path / "none")), 1, "kubeconfig", "no such file")


def test_cli_wiring(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "p.yaml", _pod("a"))
    assert cli.main(["explain", "-f", path, "-o", "json"], env={}) == 0
    assert json.loads(capsys.readouterr().out)["pods"][0]["name"] == "a"
    monkeypatch.setattr(sys, "argv", ["kubectl-memwatch", "explain", "-f", path, "nope"])
    assert cli.kubectl_main() == 1
    assert capsys.readouterr().err.startswith("kubectl memwatch explain: error: no pod or pod template 'nope'")
    # Options before the command word go through the full parser.
    with pytest.raises(SystemExit) as exc:
        cli.main(["explain", "--help"], env={})
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--filename", "--namespace", "--output", "--kubeconfig", "--context", "--protected-namespace",
                 "--allow-namespace", "--self-selector", "--default-action", "--default-restart-budget", "--dry-run"):
        assert flag in text, flag
    with pytest.raises(SystemExit):
        cli.main(["--help"], env={})
    assert "explain" in capsys.readouterr().out


def test_the_kubectl_plugin_runs_explain(tmp_path: Path) -> None:
    plugin = Path(sys.executable).parent / "kubectl-memwatch"
    assert plugin.exists(), "the console script is not installed: make install"
    path = write(tmp_path, "p.yaml", _pod("a"))
    proc = subprocess.run([str(plugin), "explain", "-f", path], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Pod shop/a\n")


def test_import_stays_light() -> None:
    code = ("import sys, memwatch.explain, memwatch.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'kubernetes', 'kopf', 'urllib3'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr

