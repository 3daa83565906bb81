"""`--log-format text|json` (issue 14, "Logs"): JSON lines for log pipelines, text unchanged.

* Text mode is byte-for-byte what memwatch printed before the flag existed: the GOLDEN_* strings
  below were captured from the code before the change (same inputs), and are compared whole.
* JSON mode: every stderr line parses; an action line of the controller, the agent and the node
  guard carries each field of its text line (parsed here independently of memwatch.logformat) as
  its own key, with the same value; exceptions are one ``exc`` string; kopf's own loggers are JSON.
* The CLI refuses a bad value with exit 2 and a message; the chart passes ``logFormat`` to both
  components and its schema refuses anything but text and json.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python
import kopf
import pytest

import memwatch
from agent.helpers import FIXTURES, UID_B, ApiDouble
from agent.helpers import make_pod as agent_pod
from agent.test_agent import Clock, make_agent, step
from agent.test_nodeguard import Api as GuardApi
from agent.test_nodeguard import guarded, set_limit
from chart.chartlib import CHART_DIR, NAMESPACE, RELEASE, Rendered, args_of, flag
from memwatch import cli, logformat
from memwatch.logformat import RESERVED, ActionFields, JsonFormatter, JsonHandler, log_action
from memwatch.nodeguard import Level, NodePod, Pending, guard_fields
from memwatch.nodesignals import NodeSignals, Psi
from memwatch.observability import REASON_EVICTED, ActionLine, Metrics, Recorder
from memwatch.podindex import PodRecord
from memwatch.policy import Problem
from memwatch.settings import Settings

from .fakes import MI, FakeClock, FakeKube, Rig, make_pod
from .test_cli_logging import _probe_once

# --------------------------------------------------------------------------------------------------
# Golden text, captured before --log-format existed (the same inputs as below, the code of the time)

GOLDEN_FULL = (
    "action=evicted pod=shop/web-7d9f node=node-1 usage=612Mi limit=512Mi scope=container:app source=kubelet "
    "sample_age=4.1s latency=38ms crossed_at=06:22:11.480Z detected_at=06:22:15.602Z acted_at=06:22:15.640Z "
    "uid=0f1e2d3c-uid detail='it\\'s \"over\"; grace 30s'")
GOLDEN_MINIMAL = "action=protected pod=kube-system/coredns node=- uid=u2"
GOLDEN_GUARD = (
    "action=evicted reason=node-pressure node=node1 available=79Mi kubepods_usage=321Mi psi_full_avg10=2.50 "
    "rule=qos-class pod=default/burstable level=soft mem_available=3Gi kubepods_limit=400Mi pod_usage=200Mi "
    "priority=-5 qos=Burstable uid=u3 why='available 40Mi < soft line 64Mi' "
    "detail='grace 5s (capped by --node-guard-grace)'")
#: What the process wrote to stderr (kopf's FULL format, times in UTC) for one eviction and one invalid pod.
GOLDEN_STDERR = (
    "[2024-06-10 06:22:15,640] memwatch             [INFO    ] action=evicted pod=shop/web-7d9f node=node-1 "
    "usage=612Mi limit=512Mi scope=pod source=kubelet sample_age=4.1s latency=38ms crossed_at=06:22:11.480Z "
    "detected_at=06:22:15.602Z acted_at=06:22:15.640Z uid=0f1e2d3c-uid\n"
    "[2024-06-10 06:22:15,640] memwatch             [WARNING ] action=ignored pod=shop/web-7d9f "
    "reason=InvalidMemwatchAnnotation problems=\"memwatch.io/limit='512m': a fraction of a byte; did you mean "
    "512Mi?\" (memwatch will not act on this pod)\n")

RECORD = PodRecord("0f1e2d3c-uid", "shop", "web-7d9f", "node-1", "Running", False, (), (), None, None,
                   (Problem("memwatch.io/limit", "512m", "a fraction of a byte; did you mean 512Mi?"),), ())


def full_line(scope: str = "container:app", detail: str = "it's \"over\"; grace 30s") -> ActionLine:
    return ActionLine("evicted", RECORD, 612 * MI, 512 * MI, scope, "kubelet", 4.1, 0.038,
                      1718000535.602, 1718000531.48, 1718000535.64, detail)


def pending() -> Pending:
    sig = NodeSignals(1718000535.0, 24 << 30, 3 << 30, 321 * MI, 400 * MI, Psi(1.0, 0.5, 10, 2.5, 0.25, 5), None)
    return Pending(NodePod("u3", "default", "burstable", priority=-5, qos="Burstable"), "qos-class", "evict",
                   Level.SOFT, "available 40Mi < soft line 64Mi", sig, 200 * MI, 0.0, None)


# --------------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """cli._logging configures process-wide logging (and, for JSON, the uncaught-exception hooks)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    names = (*cli.PROBE_LOGGERS, "memwatch", "urllib3")
    levels = {name: logging.getLogger(name).level for name in names}
    hooks = (sys.excepthook, threading.excepthook)
    yield
    logformat.drop_json(root)
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)
    assert (sys.excepthook, threading.excepthook) == hooks, "JSON mode left its exception hooks behind"


_TOKEN = re.compile(r"""(?P<key>[a-z_0-9]+)=(?P<value>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s'"]\S*)(?: |$)""")


def text_fields(line: str) -> dict[str, str]:
    """An action line's key=value fields, read as a log pipeline reads the text (quoted values are
    Python literals); the free text after the last field, if any, is not a field."""
    fields: dict[str, str] = {}
    pos = 0
    while (m := _TOKEN.match(line, pos)) is not None:
        value = m["value"]
        fields[m["key"]] = ast.literal_eval(value) if value[0] in "'\"" else value
        pos = m.end()
    assert fields.get("action"), f"not an action line: {line!r}"
    return fields


def json_lines(err: str) -> list[dict[str, Any]]:
    """Every line of stderr, each one JSON object (a line that is not fails the test)."""
    out = []
    for line in err.splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line in JSON mode: {line!r}")
        assert isinstance(obj, dict), line
        out.append(obj)
    return out


TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def check_envelope(obj: dict[str, Any]) -> None:
    assert TS.match(obj["ts"]), obj["ts"]
    assert obj["level"] in ("debug", "info", "warning", "error", "critical")
    assert isinstance(obj["logger"], str) and isinstance(obj["msg"], str)


def run_both(scenario: Callable[[str], None], capsys: pytest.CaptureFixture[str],
             monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[dict[str, Any]]]:
    """Run ``scenario`` once in text mode and once in JSON mode (fresh state each time; it gets the
    mode's name): the action lines text mode printed, and every line JSON mode printed."""
    monkeypatch.setenv("MEMWATCH_PLAIN_LOGS", "1")  # text without kopf's timestamp prefix, to compare
    capsys.readouterr()
    cli._logging(verbose=False, log_format="text")
    scenario("text")
    text = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("action=")]
    cli._logging(verbose=False, log_format="json")
    scenario("json")
    return text, json_lines(capsys.readouterr().err)


def assert_same_fields(text: list[str], objs: list[dict[str, Any]], renamed: dict[str, str] | None = None) -> None:
    """Each text action line has its JSON twin: the same message, and each field as its own key."""
    actions = [o for o in objs if "action" in o]
    assert text, "the scenario logged no action line"
    assert [o["msg"] for o in actions] == text
    for line, obj in zip(text, actions, strict=True):
        check_envelope(obj)
        expected = {(renamed or {}).get(k, k): v for k, v in text_fields(line).items()}
        got = {k: v for k, v in obj.items() if k not in RESERVED}
        assert got == expected, (line, obj)


# --------------------------------------------------------------------------------------------------
# Text mode: today's lines, byte for byte


def test_text_action_lines_are_unchanged() -> None:
    assert full_line().format() == GOLDEN_FULL
    assert str(full_line().fields()) == GOLDEN_FULL
    protected = PodRecord("u2", "kube-system", "coredns", None, "Running", False, (), (), "x", None, (), ())
    assert ActionLine("protected", protected).format() == GOLDEN_MINIMAL


def test_text_node_guard_line_is_unchanged() -> None:
    assert guard_fields("evicted", "node1", pending(), "grace 5s (capped by --node-guard-grace)").text() == GOLDEN_GUARD


@pytest.mark.parametrize("how", ["default", "flag"])
def test_text_mode_stderr_is_byte_for_byte_unchanged(how: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Through the real handler `memwatch run` installs (kopf's FULL format), for the recorder's eviction
    line and its invalid-annotation line."""
    if how == "default":
        cli._logging(verbose=False)
    else:
        settings = Settings.from_args(cli._parser({}).parse_args(["run"]), {})
        assert settings.log_format == "text"
        cli._logging(settings.verbose, settings.log_format)
    (handler,) = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)
                  and h.stream is sys.stderr]
    assert handler.formatter is not None and not isinstance(handler.formatter, JsonFormatter)
    handler.formatter.converter = time.gmtime  # the golden times are UTC

    def fixed_time(record: logging.LogRecord) -> bool:
        record.created, record.msecs = 1718000535.640, 640.0
        return True

    handler.addFilter(fixed_time)
    capsys.readouterr()
    recorder = Recorder(None, Metrics())
    recorder.action(full_line(scope="pod", detail=""), REASON_EVICTED)
    recorder.invalid(RECORD)
    assert capsys.readouterr().err == GOLDEN_STDERR


# --------------------------------------------------------------------------------------------------
# JSON mode: the same fields, as keys


def test_controller_action_line_in_json(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def scenario(mode: str) -> None:
        clock = FakeClock()
        kube = FakeKube(clock)
        rig = Rig(kube, clock)
        over = make_pod("web", "shop", uid="uid-web")
        rig.add(over, make_pod("bad", "shop", uid="uid-bad", annotations={"memwatch.io/limit": "512m"}))
        rig.source.set("uid-web", 612 * MI, clock() - 1.2)
        assert rig.sweep().results == {"evicted": 1}

    text, objs = run_both(scenario, capsys, monkeypatch)
    assert [text_fields(t)["action"] for t in text] == ["ignored", "evicted"]
    assert_same_fields(text, objs)
    evicted = next(o for o in objs if o.get("action") == "evicted")
    assert evicted["logger"] == "memwatch" and evicted["level"] == "info"
    assert evicted["usage"] == "612Mi" and evicted["limit"] == "512Mi" and evicted["sample_age"] == "1.2s"
    ignored = next(o for o in objs if o.get("action") == "ignored")
    assert ignored["level"] == "warning" and ignored["reason"] == "InvalidMemwatchAnnotation"
    assert "512m" in ignored["problems"] and not ignored["problems"].startswith(("'", '"'))  # the value, unquoted


def test_agent_action_line_in_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def scenario(mode: str) -> None:
        tree = tmp_path / mode
        shutil.copytree(FIXTURES / "v2-systemd", tree)
        api, clock = ApiDouble(), Clock()
        agent = make_agent(tree, api, clock)
        agent.index.upsert(agent_pod(annotations={"memwatch.io/limit.app": "200Mi", "memwatch.io/predict": "false"}))
        step(agent, clock)
        assert api.evictions == [("default", "app", UID_B)]

    text, objs = run_both(scenario, capsys, monkeypatch)
    assert_same_fields(text, objs)
    (evicted,) = [o for o in objs if o.get("action") == "evicted"]
    assert evicted["logger"] == "memwatch"  # the agent evicts through the enforcer and its recorder
    assert evicted["source"] == "cgroup" and evicted["scope"] == "container:app" and evicted["uid"] == UID_B


def test_node_guard_action_line_in_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def scenario(mode: str) -> None:
        tree = tmp_path / mode
        shutil.copytree(FIXTURES / "v1-cgroupfs", tree)
        set_limit(tree, 40 * MI)  # under the 64Mi soft line
        api = GuardApi()
        agent, clock, _ = guarded(tree, api)
        step(agent, clock)
        step(agent, clock)
        assert api.evictions == [("default", "burstable", UID_B)]

    text, objs = run_both(scenario, capsys, monkeypatch)
    # The guard's level=soft|hard is guard_level in JSON: `level` is the record's log level.
    assert_same_fields(text, objs, renamed={"level": "guard_level"})
    evicted = next(o for o in objs if o.get("action") == "evicted")
    assert evicted["logger"] == "memwatch.nodeguard" and evicted["reason"] == "node-pressure"
    assert evicted["level"] == "warning" and evicted["guard_level"] == "soft"
    assert evicted["rule"] == "qos-class" and evicted["why"] and not evicted["why"].startswith("'")


def test_json_values_are_the_text_values() -> None:
    """The fields are rendered once: the JSON value of a quoted field is the string its text shows as a
    literal, newlines and quotes included, and the JSON line stays one line."""
    fields = (ActionFields(note="(a note)").add("action", "failed").add("pod", "ns/p")
              .add("detail", "line one\nline 'two' \"three\"", quoted=True).add("priority", -5))
    record = logging.LogRecord("memwatch", logging.WARNING, __file__, 1, fields.text(), None, None)
    record.memwatch_action = fields
    out = JsonFormatter().format(record)
    assert "\n" not in out
    obj = json.loads(out)
    assert obj["detail"] == "line one\nline 'two' \"three\"" and obj["priority"] == "-5"
    assert obj["msg"] == fields.text() and text_fields(fields.text()) == fields.as_json()
    assert fields.text().endswith(" (a note)") and "note" not in obj


@pytest.mark.parametrize("name", sorted(RESERVED))
def test_an_action_field_cannot_take_a_line_key(name: str) -> None:
    with pytest.raises(ValueError, match="json_name"):
        ActionFields().add(name, "x")
    assert ActionFields().add(name, "x", json_name=f"my_{name}").as_json() == {f"my_{name}": "x"}
    with pytest.raises(ValueError, match="twice"):
        ActionFields().add("pod", "a").add("pod", "b")


def test_one_place_formats_action_lines() -> None:
    """No module but logformat.py spells out an ``action=`` line: the controller, the agent and the node
    guard all build ActionFields (a string or f-string starting with "action=" elsewhere would be a
    second formatter, whose lines JSON mode would not carry as fields)."""
    #: Not action lines: a policy's knobs (`memwatch lint` prints "pod<=512Mi action=evict ...").
    allowed = {("policy.py", "describe")}
    offenders = set()
    for path in sorted(Path(memwatch.__file__).parent.glob("*.py")):
        if path.name == "logformat.py":
            continue
        tree = ast.parse(path.read_text())
        functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("action="):
                inside = [f.name for f in functions if f.lineno <= node.lineno <= (f.end_lineno or f.lineno)]
                if (path.name, inside[-1] if inside else "") not in allowed:
                    offenders.add(f"{path.name}:{node.lineno}")
    assert sorted(offenders) == []


# --------------------------------------------------------------------------------------------------
# JSON mode: exceptions, kopf's loggers, the handler itself


def test_exceptions_are_one_exc_string(capsys: pytest.CaptureFixture[str]) -> None:
    cli._logging(verbose=False, log_format="json")
    capsys.readouterr()
    try:
        raise ValueError("boom\nsecond line of the message")
    except ValueError:
        logging.getLogger("memwatch.sweep").exception("sweep failed; the next sweep runs on schedule")
    fields = ActionFields().add("action", "failed").add("pod", "ns/p")
    try:
        raise RuntimeError("API down")
    except RuntimeError:
        logging.getLogger("memwatch.enforcer").warning(fields.text(), exc_info=True, extra={"memwatch_action": fields})
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 2
    sweep, action = json_lines(err)
    check_envelope(sweep)
    assert sweep["level"] == "error" and sweep["msg"] == "sweep failed; the next sweep runs on schedule"
    assert sweep["exc"].startswith("Traceback (most recent call last):")
    assert sweep["exc"].endswith("ValueError: boom\nsecond line of the message")
    assert action["action"] == "failed" and action["exc"].endswith("RuntimeError: API down")


def test_uncaught_exception_in_a_thread_is_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    cli._logging(verbose=False, log_format="json")
    capsys.readouterr()

    def crash() -> None:
        raise OSError("cgroup vanished")

    t = threading.Thread(target=crash, name="sampler")
    t.start()
    t.join()
    (obj,) = json_lines(capsys.readouterr().err)
    assert obj["level"] == "error" and "sampler" in obj["msg"]
    assert obj["exc"].endswith("OSError: cgroup vanished")


def test_kopf_loggers_are_json_too(capsys: pytest.CaptureFixture[str]) -> None:
    """kopf's own records (its probe activity, aiohttp's access log under kopf's health server, its
    per-object loggers) go through the one JSON handler: kopf added no text handler of its own."""
    cli._logging(verbose=True, log_format="json")
    root = logging.getLogger()
    streams = [h for h in root.handlers if isinstance(h, logging.StreamHandler) and h.stream is sys.stderr]
    assert len(streams) == 1 and isinstance(streams[0], JsonHandler)
    capsys.readouterr()
    import asyncio

    asyncio.run(_probe_once())  # kopf's real health reporter, logging at INFO in verbose mode
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop", "uid": "u1"}}
    kopf.LocalObjectLogger(body=kopf.Body(body), settings=kopf.OperatorSettings()).warning("handler failed")
    objs = json_lines(capsys.readouterr().err)
    for obj in objs:
        check_envelope(obj)
    by_logger = {o["logger"]: o for o in objs}
    assert "Activity 'memwatch' succeeded" in by_logger["kopf.activities.probe"]["msg"]
    assert "GET /healthz" in by_logger["aiohttp.access"]["msg"]
    obj = by_logger["kopf.objects"]
    assert obj["msg"] == "handler failed" and obj["level"] == "warning"
    assert obj["object"]["namespace"] == "shop" and obj["object"]["name"] == "web"


def test_back_to_text_leaves_no_json_behind(capsys: pytest.CaptureFixture[str]) -> None:
    cli._logging(verbose=False, log_format="json")
    cli._logging(verbose=False, log_format="json")  # configuring twice: still one handler
    assert sum(isinstance(h, JsonHandler) for h in logging.getLogger().handlers) == 1
    cli._logging(verbose=False, log_format="text")
    assert not any(isinstance(h, JsonHandler) for h in logging.getLogger().handlers)
    capsys.readouterr()
    log_action(logging.getLogger("memwatch"), ActionFields().add("action", "evicted").add("pod", "ns/p"))
    assert capsys.readouterr().err.endswith("] action=evicted pod=ns/p\n")
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        cli._logging(verbose=False, log_format="xml")


# --------------------------------------------------------------------------------------------------
# The flag


@pytest.mark.parametrize("command", [["run"], ["agent", "--node-name=n1"]])
def test_flag_and_env_reach_the_settings(command: list[str]) -> None:
    parser = cli._parser({})
    assert Settings.from_args(parser.parse_args(command), {}).log_format == "text"
    assert Settings.from_args(parser.parse_args([*command, "--log-format", "json"]), {}).log_format == "json"
    env = {"MEMWATCH_LOG_FORMAT": "json"}
    assert Settings.from_args(cli._parser(env).parse_args(command), env).log_format == "json"


@pytest.mark.parametrize(("argv", "env", "fragment"), [
    (["run", "--log-format", "xml"], {}, "argument --log-format: invalid choice: 'xml' (choose from 'text', 'json')"),
    (["agent", "--log-format=JSON"], {}, "argument --log-format: invalid choice: 'JSON'"),
    (["agent"], {"MEMWATCH_LOG_FORMAT": "yaml"}, "MEMWATCH_LOG_FORMAT='yaml': choose from text, json"),
])
def test_bad_value_exits_2_with_a_message(argv: list[str], env: dict[str, str], fragment: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv, env=env)
    assert exc.value.code == 2
    assert fragment in capsys.readouterr().err


def _memwatch(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("MEMWATCH_")}
    return subprocess.run([sys.executable, "-m", "memwatch", *argv], env={**base, **env}, capture_output=True,
                          text=True, timeout=60, check=False)


def test_real_process_bad_value_and_json_start_failure(tmp_path: Path) -> None:
    """As a user sees it: a bad value is exit 2, a message, no traceback; with json, even the
    "cannot start" line (no kubeconfig here) is a JSON line."""
    bad = _memwatch(["run", "--log-format", "xml"], {})
    assert bad.returncode == 2 and "invalid choice: 'xml'" in bad.stderr and "Traceback" not in bad.stderr
    missing = str(tmp_path / "no-kubeconfig")
    started = _memwatch(["agent", "--node-name=n1", f"--kubeconfig={missing}", "--metrics-port=0", "--liveness="],
                        {"MEMWATCH_LOG_FORMAT": "json"})
    assert started.returncode == 1, started.stderr
    (obj,) = json_lines(started.stderr)
    check_envelope(obj)
    assert obj["level"] == "error" and obj["logger"] == "memwatch" and obj["msg"].startswith("cannot start: ")


# --------------------------------------------------------------------------------------------------
# The chart


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


def render(chart: helm_python.Chart, values: dict[str, Any]) -> Rendered:
    return Rendered(chart.render(values, name=RELEASE, namespace=NAMESPACE), chart.merge_values(values))


def parsed(args: list[str]) -> Settings:
    """The container's command line as memwatch parses it."""
    args = [a.replace("$(NODE_NAME)", "node1") for a in args]
    return Settings.from_args(cli._parser({}).parse_args(args), {"POD_NAME": "m-0", "POD_NAMESPACE": NAMESPACE})


def test_chart_log_format_reaches_controller_and_agent(chart: helm_python.Chart) -> None:
    rendered = render(chart, {"logFormat": "json", "agent": {"enabled": True}})
    assert rendered.agent is not None
    for workload in (rendered.controller, rendered.agent):
        args = args_of(workload)
        assert flag(args, "log-format") == ["json"]
        assert parsed(args).log_format == "json"
    default = render(chart, {"agent": {"enabled": True}})
    assert default.agent is not None and default.values["logFormat"] == "text"
    for workload in (default.controller, default.agent):
        args = args_of(workload)
        assert not flag(args, "log-format")  # the default: today's command line, unchanged
        assert parsed(args).log_format == "text"


@pytest.mark.parametrize("bad", ["xml", "JSON", "", 1, True])
def test_chart_schema_refuses_other_formats(chart: helm_python.Chart, bad: Any) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        chart.render({"logFormat": bad}, name=RELEASE, namespace=NAMESPACE)
    message = str(caught.value)
    assert "values don't meet the specifications of the schema" in message
    assert "/logFormat" in message, message


def test_a_usage_just_over_its_limit_never_reads_as_equal_to_it() -> None:
    """`memory 120Mi is over the memwatch limit 120Mi` (the demo's first Event) read as a contradiction:
    beside its limit, a usage that differs from it shows as many decimals as it takes."""
    from memwatch.observability import event_message
    from memwatch.quantity import format_beside
    limit = 120 * MI
    for usage, shown in ((limit + 300 * 1024, "120.3Mi"), (limit + 5 * 1024, "120.005Mi"), (limit + 1, f"{limit + 1}B"),
                         (limit, "120Mi"), (612 * MI, "612Mi"), (limit - 1, f"{limit - 1}B")):
        line = ActionLine("evicted", RECORD, usage, limit, "pod", "cgroup", 0.0)
        assert f"usage={shown} limit=120Mi " in line.format()
        assert f"memory {shown} is over the memwatch limit 120Mi (" in event_message(line)
    assert format_beside(int(1.5 * (1 << 30)) + 1, int(1.5 * (1 << 30))) == f"{int(1.5 * (1 << 30)) + 1}B"
    assert format_beside(None, limit) == "?" and format_beside(limit + 1, None) == "120Mi"
