"""`memwatch lint`: what users run in their own CI on their manifests."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Iterator
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


# -- Hostile input (issue #10 item 7): every input finishes fast, in little memory, with a clean message --

def _laughs(levels: int = 9, fan: int = 10) -> str:
    """A billion laughs: anchors a0..a<levels>, each `fan` aliases of the one before (10^9 leaves at 9)."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * fan) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fan) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def _bounded(text: str) -> tuple[int, str]:
    """Lint ``text``; assert it needed little memory and printed little."""
    tracemalloc.start()
    try:
        out = io.StringIO()
        _, errors = lint.lint_stream("m.yaml", io.StringIO(text), out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20, f"lint needed {peak >> 20} MiB"
    assert len(out.getvalue()) < 5000, out.getvalue()[:500]
    assert "Traceback" not in out.getvalue()
    return errors, out.getvalue()


@pytest.mark.timeout(30)
def test_alias_bomb_in_an_annotation_value_is_refused() -> None:
    text = _laughs() + "kind: Pod\nmetadata:\n  name: p\n  annotations:\n    memwatch.io/limit: *a9\n"
    errors, out = _bounded(text)
    assert errors == 1 and "excessive aliasing" in out and "kubectl refuses" in out


@pytest.mark.timeout(30)
def test_alias_bomb_in_metadata_name_is_refused() -> None:
    text = _laughs() + "kind: Pod\nmetadata:\n  name: *a9\n  annotations: {memwatch.io/limit: 1Gi}\n"
    errors, out = _bounded(text)
    assert errors == 1 and "excessive aliasing" in out


@pytest.mark.timeout(30)
def test_a_small_alias_in_a_name_or_value_is_shown_bounded() -> None:
    """Aliases below kubectl's threshold are read, and a structure in a value is named, never printed."""
    text = _laughs(2, 5) + "kind: Pod\nmetadata:\n  name: *a2\n  annotations: {memwatch.io/limit: *a2}\n"
    errors, out = _bounded(text)
    assert errors == 1
    assert "Pod/<a list>: error: memwatch.io/limit=<a list>: annotation values must be strings" in out


@pytest.mark.timeout(30)
def test_kind_list_containing_itself_is_refused() -> None:
    errors, out = _bounded("&l {kind: List, items: [*l], metadata: {annotations: {memwatch.io/limit: 1Gi}}}\n")
    assert errors == 1 and "the alias *l is inside the node it names" in out
    errors, out = _bounded("kind: List # of memwatch-annotated pods\nitems:\n- &i\n  kind: List\n  items: [*i]\n")
    assert errors == 1 and "contains itself" in out


@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["value", "document", "items"])
def test_flow_lists_nested_500_deep(where: str) -> None:
    deep = "[" * 500 + "]" * 500
    text = {
        "value": f"kind: Pod\nmetadata: {{name: p, annotations: {{memwatch.io/limit: {deep}}}}}\n",
        "document": f"# memwatch\n{deep}\n",
        "items": f"kind: List\nitems: {deep}\nmetadata: {{annotations: {{memwatch.io/limit: 1Gi}}}}\n",
    }[where]
    errors, out = _bounded(text)
    if where == "value":
        assert errors == 1 and "memwatch.io/limit=<a list>: annotation values must be strings" in out
    else:
        assert errors == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("opener", ["[", "{a: "])
def test_nesting_past_any_limit_is_a_clean_error(opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    errors, out = _bounded("kind: Pod # memwatch\nx: " + opener * 100_000 + closer * 100_000 + "\n")
    assert errors == 1 and ("nesting depth" in out or "nested more than" in out)


@pytest.mark.timeout(30)
def test_deep_json_is_a_clean_error() -> None:
    errors, out = _bounded('{"kind": "Pod", "memwatch": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    assert errors == 1 and f"nested more than {lint.MAX_DEPTH} deep" in out


@pytest.mark.timeout(30)
def test_huge_values_and_names_are_quoted_bounded() -> None:
    text = f"kind: Pod\nmetadata:\n  name: {'n' * 300_000}\n  annotations:\n    memwatch.io/limit: '{'9' * 300_000}x'\n"
    errors, out = _bounded(text)
    assert errors == 1 and "300001 characters" in out


@pytest.mark.timeout(30)
def test_merge_keys_are_read_as_kubectl_reads_them() -> None:
    text = ("kind: Pod\ncommon: &c {memwatch.io/limit: '512Mi', memwatch.io/for: '1s'}\n"
            "metadata:\n  name: m\n  annotations:\n    <<: *c\n    memwatch.io/for: 5s\n")
    errors, out = _bounded(text)
    assert errors == 0 and "Pod/m: ok: pod<=512Mi action=evict for=5s" in out


# -- Scalars as Kubernetes types them (item 8) -------------------------------------------------------

@pytest.mark.parametrize(("plain", "expected"), [
    ("1e9", "a number"), ("1E9", "a number"), ("30", "a number"), ("-1", "a number"), ("+1", "a number"),
    ("0x1F", "a number"), ("0o17", "a number"), ("017", "a number"), ("08", "a number"), ("0b101", "a number"),
    ("1_000", "a number"), (".5", "a number"), ("1.", "a number"), ("-.5e3", "a number"), (".inf", "a number"),
    ("-.Inf", "a number"), (".NaN", "a number"), ("18446744073709551615", "a number"),
    ("99999999999999999999", "a number"),  # past uint64: go-yaml reads it as a float
    ("true", "a boolean"), ("Yes", "a boolean"), ("y", "a boolean"), ("N", "a boolean"), ("off", "a boolean"),
    ("ON", "a boolean"), ("~", "null"), ("null", "null"), ("NULL", "null"), ("", "null"),
    ("512Mi", None), ("1e400", None),  # Go's ParseFloat overflows, so go-yaml keeps the text
    ("2024-01-01", None), ("0x", None), ("0xfffffffffffffffff", None), ("yES", None), ("nil", None),
    ("+", None), (".", None), ("1e", None), ("1.5.5", None), ("inf", None), ("1:30", None), ("٣", None),
])
def test_plain_scalars_are_typed_as_kubectl_types_them(plain: str, expected: str | None) -> None:
    assert lint.plain_type(plain) == expected


@pytest.mark.parametrize(("value", "fragment"), [
    ("1e9", 'as a number; quote it: memwatch.io/limit: "1e9"'),
    ("1073741824", "as a number"),
    ("0x40000000", "as a number"),
    ("~", "as null"),
    ("", "as null"),
    ("!!int '1073741824'", "as a number"),
    ("[512Mi]", "=<a list>: annotation values must be strings, and Kubernetes reads this one as a list"),
])
def test_unquoted_values_kubectl_refuses_are_errors(tmp_path: Path, value: str, fragment: str) -> None:
    code, out = run(tmp_path, f"kind: Pod\nmetadata:\n  name: p\n  annotations:\n    memwatch.io/limit: {value}\n")
    assert code == 1 and "Pod/p: error: memwatch.io/limit=" in out and fragment in out, out
    assert "ok:" not in out


@pytest.mark.parametrize("value", ["1Gi", "'1e9'", '"1073741824"', "!!str 1e9", "|-\n      1e9", "1e9Mi"])
def test_values_kubectl_reads_as_strings_are_judged_as_quantities(tmp_path: Path, value: str) -> None:
    _, out = run(tmp_path, f"kind: Pod\nmetadata:\n  name: p\n  annotations:\n    memwatch.io/limit: {value}\n")
    assert "annotation values must be strings" not in out, out
    assert ("Pod/p: ok:" in out) == (value != "1e9Mi"), out


def test_a_numeric_memory_limit_is_a_quantity(tmp_path: Path) -> None:
    text = ("kind: Pod\nmetadata: {name: p, annotations: {memwatch.io/limit: 90%}}\n"
            "spec: {containers: [{name: a, resources: {limits: {memory: 1073741824}}}]}\n")
    code, out = run(tmp_path, text)
    assert code == 0 and "Pod/p: ok: pod<=922Mi (90%)" in out


# -- Kubernetes' quantity grammar and the floor, seen through lint (item 9) ----------------------------

@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("memwatch.io/limit", "\uff15\uff10\uff10Mi", "is not a Kubernetes quantity"),
    ("memwatch.io/limit", "\u0665\u0661\u0662Mi", "is not a Kubernetes quantity"),
    ("memwatch.io/limit", "512Mi\\n", "has spaces around it"),
    ("memwatch.io/limit", "0.5", "below the smallest watch limit of 1Mi"),
    ("memwatch.io/limit", "1e-3", "below the smallest watch limit of 1Mi"),
    ("memwatch.io/limit", "+512m", "did you mean 512Mi?"),
    ("memwatch.io/grace-period", "1m", "is not a whole number of seconds"),
    ("memwatch.io/grace-period", "1e1", "is not a whole number of seconds"),
    ("memwatch.io/grace-period", "1_0", "is not a whole number of seconds"),
])
def test_values_kubernetes_refuses_or_that_are_absurd_are_errors(tmp_path: Path, key: str, value: str,
                                                                  fragment: str) -> None:
    other = "" if key == "memwatch.io/limit" else ', "memwatch.io/limit": "512Mi"'
    code, out = run(tmp_path, f'kind: Pod\nmetadata:\n  name: p\n  annotations: {{"{key}": "{value}"{other}}}\n')
    assert code == 1 and f"Pod/p: error: {key}=" in out and fragment in out, out
    assert "warning" not in out


# -- Reading (item 10) --------------------------------------------------------------------------------

def test_the_c_loader_is_used_where_pyyaml_has_it() -> None:
    import yaml

    assert lint._LOADER is getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def test_documents_are_linted_as_they_are_read() -> None:
    """lint holds one document at a time: the first is reported before the second is even read."""
    out = io.StringIO()
    doc = _template("Pod", '{"memwatch.io/limit": "512Mi"}', name="{n}")

    def lines() -> Iterator[str]:
        yield from doc.replace("{n}", "first").splitlines(keepends=True)
        yield "---\n"
        assert "Pod/first: ok" in out.getvalue(), "the first document was not linted before the next was read"
        yield from doc.replace("{n}", "second").splitlines(keepends=True)

    assert lint.lint_stream("m.yaml", lines(), out) == (2, 0)


@pytest.mark.parametrize("kind", ["DeploymentList", "PodList", "List", "StatefulSetList"])
def test_api_lists(tmp_path: Path, kind: str) -> None:
    import yaml

    items = [yaml.safe_load(_template("Deployment", '{"memwatch.io/limit": "512Mi"}', name="a")),
             yaml.safe_load(_template("Pod", '{"memwatch.io/limit": "9Gi"}', name="b")),
             {"kind": "List", "items": [yaml.safe_load(_template("Job", '{"memwatch.io/limit": "1Mi"}', name="c"))]}]
    code, out = run(tmp_path, yaml.safe_dump({"apiVersion": "v1", "kind": kind, "items": items}))
    assert code == 1
    assert "Deployment/a: ok" in out and "Pod/b: error" in out and "Job/c: ok" in out
    assert out.index("Deployment/a") < out.index("Pod/b") < out.index("Job/c")


def test_tab_indented_json_is_read_as_json(tmp_path: Path) -> None:
    doc = {"apiVersion": "v1", "kind": "PodList", "items": [
        {"kind": "Pod", "metadata": {"name": "t", "annotations": {"memwatch.io/limit": "512Mi"}},
         "spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "1Gi"}}}]}},
        {"kind": "Pod", "metadata": {"name": "n", "annotations": {"memwatch.io/limit": 1073741824}}}]}
    code, out = run(tmp_path, json.dumps(doc, indent="\t") + "\n", name="pods.json")
    assert "Pod/t: ok: pod<=512Mi" in out
    assert "Pod/n: error: memwatch.io/limit=1073741824: annotation values must be strings" in out
    assert code == 1


def test_yaml_flow_documents_that_are_not_json_are_still_yaml(tmp_path: Path) -> None:
    code, out = run(tmp_path, "{kind: Pod, metadata: {name: f, annotations: {memwatch.io/limit: 512Mi}}}\n")
    assert code == 0 and "Pod/f: ok" in out


def test_import_does_not_load_the_kubernetes_client() -> None:
    code = ("import sys, memwatch.lint, memwatch.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'kubernetes', 'kopf', 'urllib3'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", [
    _laughs() + "kind: Pod\nmetadata:\n  name: *a9\n  annotations: {memwatch.io/limit: 1Gi}\n",
    "&l {kind: List, items: [*l], metadata: {annotations: {memwatch.io/limit: 1Gi}}}\n",
    "kind: Pod # memwatch\nx: " + "[" * 100_000 + "]" * 100_000 + "\n",
])
def test_the_pure_python_parser_is_bounded_too(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    """Where PyYAML was built without libyaml, lint reads with its pure-Python parser, as safely."""
    import yaml

    monkeypatch.setattr(lint, "_LOADER", yaml.SafeLoader)
    errors, out = _bounded(text)
    assert errors == 1 and ("excessive aliasing" in out or "contains itself" in out or "nested more than" in out)


def test_json_after_a_document_marker_is_json(tmp_path: Path) -> None:
    doc = json.dumps({"kind": "Pod", "metadata": {"name": "j", "annotations": {"memwatch.io/limit": "512Mi"}}},
                     indent="\t")
    code, out = run(tmp_path, _template("Pod", '{"memwatch.io/limit": "256Mi"}', name="y") + "---\n" + doc + "\n")
    assert code == 0 and "Pod/y: ok" in out and "Pod/j: ok" in out


@pytest.mark.parametrize("pure", [False, True])
def test_control_characters_and_lone_surrogates_are_printed_escaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    pure: bool) -> None:
    import yaml

    if pure:  # libyaml refuses a lone surrogate escape; PyYAML's own parser reads it
        monkeypatch.setattr(lint, "_LOADER", yaml.SafeLoader)
    odd_key = '"memwatch.io/limit\\ud800": "x", ' if pure else ""
    text = ('kind: Pod\nmetadata:\n  name: "a\\x1b[31mb"\n'
            f'  annotations: {{{odd_key}memwatch.io/limit: "1\\nGi"}}\n')
    code, out = run(tmp_path, text)
    assert code == 1 and "\x1b" not in out
    assert "Pod/a\\x1b[31mb: error: memwatch.io/limit='1\\nGi'" in out
    assert len(out.splitlines()) == (3 if pure else 2)  # the error, (the odd key's warning,) the summary
