"""`memwatch lint`: what users run in their own CI on their manifests."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from memwatch import lint

DEPLOYMENT = textwrap.dedent("""\
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: web
      namespace: shop
      annotations:
        memwatch.io/limit: "1Gi"   # on the Deployment itself: not a pod, ignored
    spec:
      replicas: 2
      selector: {matchLabels: {app: web}}
      template:
        metadata:
          labels: {app: web}
          annotations:
            memwatch.io/limit: "{limit}"
            memwatch.io/action: evict
            memwatch.io/grace-period: "30"
            memwatch.io/for: 5s
        spec:
          containers:
          - name: app
            image: nginx
            resources:
              limits: {memory: 1Gi}
          - name: side
            image: envoy
            resources:
              limits: {memory: 512Mi}
    """)


def _template(kind: str, annotations: str, name: str = "x") -> str:
    pod = textwrap.indent(textwrap.dedent(f"""\
        metadata:
          annotations: {annotations}
        spec:
          containers:
          - name: app
            image: busybox
            resources: {{limits: {{memory: 1Gi}}}}
        """), "    ")
    if kind == "Pod":
        return f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  annotations: {annotations}\n" \
               "spec:\n  containers:\n  - name: app\n    resources: {limits: {memory: 1Gi}}\n"
    if kind == "CronJob":
        return (f"apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: {name}\nspec:\n  schedule: '* * * * *'\n"
                "  jobTemplate:\n    spec:\n      template:\n" + textwrap.indent(pod, "      "))
    return f"kind: {kind}\nmetadata:\n  name: {name}\nspec:\n  template:\n" + pod


def run(tmp_path: Path, text: str, name: str = "m.yaml") -> tuple[int, str]:
    path = tmp_path / name
    path.write_text(text)
    out = io.StringIO()
    code = lint.main([str(path)], out=out)
    return code, out.getvalue()


def test_valid_deployment_prints_the_resolved_policy(tmp_path: Path) -> None:
    code, out = run(tmp_path, DEPLOYMENT.replace("{limit}", "90%"))
    assert code == 0, out
    path = tmp_path / "m.yaml"
    assert f"{path}: Deployment/web: ok: pod<=1.35Gi (90%) action=evict grace-period=30s for=5s escalate=false" in out
    assert "1 annotated pod template(s), 0 error(s)" in out


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("memwatch.io/limit", "512Xi", "is not a Kubernetes quantity"),
    ("memwatch.io/limit", "-1Gi", "must be greater than zero"),
    ("memwatch.io/limit", "0", "must be greater than zero"),
    ("memwatch.io/limit", "150%abc", "is not a Kubernetes quantity"),
    ("memwatch.io/limit", "101%", "at most 100%"),
    ("memwatch.io/limit", "2Gi", "above the hard memory limit of the pod (1Gi)"),
    ("memwatch.io/limit", "512m", "did you mean 512Mi?"),
    ("memwatch.io/action", "kill", "unknown action"),
    ("memwatch.io/limit.nope", "100Mi", "no container named 'nope' (containers: app)"),
    ("memwatch.io/limit.app", "2Gi", "above the hard memory limit of container 'app' (1Gi)"),
    ("memwatch.io/grace-period", "soon", "is not a whole number of seconds"),
    ("memwatch.io/for", "5 parsecs", "is not a duration"),
    ("memwatch.io/escalate", "perhaps", 'must be "true" or "false"'),
])
def test_each_bad_value_names_file_object_annotation_and_value(tmp_path: Path, key: str, value: str,
                                                               fragment: str) -> None:
    base = '{"memwatch.io/limit": "512Mi"}' if key != "memwatch.io/limit" else "{}"
    annotations = base[:-1] + (", " if base != "{}" else "") + f'"{key}": "{value}"' + "}"
    code, out = run(tmp_path, _template("Deployment", annotations, name="web"))
    assert code == 1, out
    line = next(ln for ln in out.splitlines() if ": error: " in ln)
    assert line.startswith(f"{tmp_path / 'm.yaml'}: Deployment/web: error: {key}={value!r}: ")
    assert fragment in line
    assert "0 error(s)" not in out


def test_unknown_key_is_a_warning_not_an_error(tmp_path: Path) -> None:
    code, out = run(tmp_path, _template("Deployment", '{"memwatch.io/limit": "512Mi", "memwatch.io/limt": "1"}'))
    assert code == 0
    assert "warning: unknown annotation 'memwatch.io/limt' is ignored; did you mean 'memwatch.io/limit'?" in out


@pytest.mark.parametrize("kind", ["Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"])
def test_every_pod_carrier_kind(tmp_path: Path, kind: str) -> None:
    code, out = run(tmp_path, _template(kind, '{"memwatch.io/limit": "512Mi"}', name="thing"))
    assert code == 0, out
    assert f"{kind}/thing: ok: pod<=512Mi" in out
    code, out = run(tmp_path, _template(kind, '{"memwatch.io/limit": "5Gi"}', name="thing"))
    assert code == 1 and f"{kind}/thing: error: memwatch.io/limit='5Gi'" in out


def test_multi_document_yaml_reports_each(tmp_path: Path) -> None:
    text = "\n---\n".join([
        _template("Deployment", '{"memwatch.io/limit": "512Mi"}', name="good"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {a: b}\n",
        _template("StatefulSet", '{"memwatch.io/limit": "oops"}', name="bad"),
        _template("Job", '{"other.io/x": "y"}', name="unwatched"),
        "",
    ])
    code, out = run(tmp_path, text)
    assert code == 1
    assert "Deployment/good: ok" in out and "StatefulSet/bad: error: memwatch.io/limit='oops'" in out
    assert "unwatched" not in out and "cfg" not in out
    assert "2 annotated pod template(s), 1 error(s)" in out


def test_kind_list(tmp_path: Path) -> None:
    import yaml

    items = [yaml.safe_load(_template("Deployment", '{"memwatch.io/limit": "512Mi"}', name="a")),
             yaml.safe_load(_template("Pod", '{"memwatch.io/limit": "9Gi"}', name="b"))]
    code, out = run(tmp_path, yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    assert code == 1
    assert "Deployment/a: ok" in out and "Pod/b: error" in out


def test_invalid_yaml(tmp_path: Path) -> None:
    code, out = run(tmp_path, "kind: Pod\nmetadata: {name: [unclosed, annotations: {memwatch.io/limit: 1Gi}}\n")
    assert code == 1
    assert f"{tmp_path / 'm.yaml'}: error: not valid YAML: line 2, column " in out
    assert len(out.splitlines()) == 2  # the error, then the summary: one line each


def test_an_invalid_document_names_its_line_in_the_file_and_the_others_are_still_read(tmp_path: Path) -> None:
    good = _template("Pod", '{"memwatch.io/limit": "512Mi"}', name="good")
    bad = "kind: Pod\nmetadata: {name: p, annotations: {memwatch.io/limit: [1Gi}\n"
    code, out = run(tmp_path, good + "---\n" + bad + "---\n" + good)
    assert code == 1
    assert out.count("Pod/good: ok") == 2
    assert f"error: not valid YAML: line {good.count(chr(10)) + 3}, column" in out


def test_documents_that_never_mention_memwatch_are_not_parsed(tmp_path: Path) -> None:
    """lint checks memwatch annotations: a document without them is skipped unread, which keeps lint
    fast on large repositories (general YAML validity is kubectl's or kubeconform's job)."""
    code, out = run(tmp_path, "kind: Pod\nmetadata: {name: [unclosed\n")
    assert code == 0 and "0 annotated pod template(s), 0 error(s)" in out


def test_missing_file() -> None:
    out = io.StringIO()
    assert lint.main(["/nonexistent/memwatch.yaml"], out=out) == 1
    assert "/nonexistent/memwatch.yaml: error: No such file or directory" in out.getvalue()


def test_binary_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_bytes(b"\xff\xfe\x00kind: Pod\x80\x81")
    out = io.StringIO()
    assert lint.main([str(tmp_path / "b.yaml")], out=out) == 1
    assert "error" in out.getvalue()


@pytest.mark.parametrize(("text", "fragment"), [
    ("kind: Pod\nmetadata: {name: p, annotations: {memwatch.io/limit: 1Gi}}\nspec: {containers: 3}\n",
     "Pod/p: error: spec.containers is not a list"),
    ("kind: Pod\nmetadata: {name: p, annotations: {memwatch.io/limit: 1Gi}}\nspec: {containers: [x]}\n",
     "Pod/p: error: spec.containers[0] is not a mapping"),
    ("kind: Pod\nmetadata: {name: p, annotations: {memwatch.io/limit: 1Gi}}\n"
     "spec: {containers: [{name: a, resources: {limits: [1]}}]}\n",
     "Pod/p: error: spec.containers[0].resources.limits is not a mapping"),
])
def test_malformed_pod_spec_is_a_precise_error(tmp_path: Path, text: str, fragment: str) -> None:
    code, out = run(tmp_path, text)
    assert code == 1 and fragment in out


def test_files_without_annotations_pass(tmp_path: Path) -> None:
    code, out = run(tmp_path, _template("Deployment", "{}"))
    assert code == 0 and "0 annotated pod template(s), 0 error(s)" in out


def test_cli_stdin_and_exit_codes(tmp_path: Path) -> None:
    """The real command: files and '-' (stdin) together; exit 1 when any is bad."""
    good = tmp_path / "good.yaml"
    good.write_text(DEPLOYMENT.replace("{limit}", "700Mi"))
    proc = subprocess.run([sys.executable, "-m", "memwatch", "lint", str(good), "-"],
                          input=_template("Pod", '{"memwatch.io/limit": "512Xi"}', name="bad"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert f"{good}: Deployment/web: ok: pod<=700Mi" in proc.stdout
    assert "<stdin>: Pod/bad: error: memwatch.io/limit='512Xi'" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "memwatch", "lint", "-"], input=DEPLOYMENT.replace("{limit}", "1Gi"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_unquoted_annotation_values_are_errors(tmp_path: Path) -> None:
    """The API server rejects non-string annotation values, so lint must not say ok."""
    path = tmp_path / "pod.yaml"
    path.write_text(_template("Pod", "{memwatch.io/limit: 512Mi, memwatch.io/grace-period: 30, "
                                     "memwatch.io/escalate: true}", name="unquoted"))
    out = io.StringIO()
    assert lint.main([str(path)], out) == 1
    text = out.getvalue()
    assert "Pod/unquoted: error: memwatch.io/grace-period=30: annotation values must be strings" in text
    assert "memwatch.io/escalate=true: annotation values must be strings" in text
    assert "ok:" not in text
