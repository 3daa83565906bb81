"""Settings and the CLI: every flag also from MEMWATCH_*, bad values exit 2 naming the flag and value.

The option tables (settings.COMMON/RUN/AGENT) are iterated programmatically, so a new flag is
covered by these tests the moment it is added (or fails them until it gets a sample value here).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from memwatch import settings as s
from memwatch.cli import _parser
from memwatch.policy import Action
from memwatch.settings import AGENT, COMMON, RUN, Option, Settings

from .fakes import MI

# A valid, non-default sample for each option type: (text for flag/env, parsed value).
SAMPLES: dict[Any, tuple[str, Any]] = {
    str: ("sample-value", "sample-value"),
    s._duration: ("7s", 7.0),
    s._positive_duration: ("1m30s", 90.0),
    s._non_negative_int: ("7", 7),
    s._grace_period: ("30", 30),
    s._port: ("7070", 7070),
    s._bytes: ("7Mi", 7 * MI),
    s.selector_arg: ("team in (a, b),!canary", "team in (a, b),!canary"),
    s._priority: ("1000", 1000),
    s._percent: ("70%", 70.0),
    s._boolean: ("false", False),
    s._address_types: ("Hostname,InternalIP", ("Hostname", "InternalIP")),
    s._line: ("7%", s.Line.parse("7%")),  # between the default hard (5%) and soft (10%) lines
    s._optional_percent: ("25%", 25.0),
    s._restart_budget: ("5/30m", s.RestartBudget(5, 1800.0)),
    s._min_pod_age: ("2m", 120.0),
}

TABLES = {"run": COMMON + RUN, "agent": COMMON + AGENT}
CASES = [pytest.param(cmd, opt, id=f"{cmd}{opt.flag}") for cmd, table in TABLES.items() for opt in table]


def sample(opt: Option) -> tuple[str, Any]:
    if opt.boolean:
        return "true", True
    if opt.choices:
        choice = next(c for c in reversed(opt.choices) if c != opt.default)
        return choice, choice
    assert opt.type in SAMPLES, f"add a sample value for {opt.flag} (type {opt.type}) to SAMPLES"
    return SAMPLES[opt.type]


def value(args: argparse.Namespace, opt: Option) -> Any:
    return s._repeat(args, opt.dest) if opt.repeat else getattr(args, opt.dest)


def parse(argv: list[str], env: dict[str, str] | None = None) -> argparse.Namespace:
    return _parser(env or {}).parse_args(argv)


def test_option_tables_are_sane() -> None:
    for cmd, table in TABLES.items():
        flags = [o.flag for o in table]
        assert len(flags) == len(set(flags)), f"duplicate flag in memwatch {cmd}"
        for opt in table:
            assert opt.flag.startswith("--") and opt.help, opt
            assert opt.env == "MEMWATCH_" + opt.flag[2:].replace("-", "_").upper()


@pytest.mark.parametrize(("cmd", "opt"), CASES)
def test_every_flag_is_settable_by_flag_and_by_env(cmd: str, opt: Option) -> None:
    text, expected = sample(opt)
    default = value(parse([cmd]), opt)
    if opt.repeat:
        expected = ["a", "b"]
        from_flag = value(parse([cmd, opt.flag, "a", opt.flag, "b"]), opt)
        from_env = value(parse([cmd], {opt.env: " a, b ,"}), opt)
    elif opt.boolean:
        from_flag = value(parse([cmd, opt.flag]), opt)
        from_env = value(parse([cmd], {opt.env: "true"}), opt)
        assert value(parse([cmd], {opt.env: "no"}), opt) is False
    else:
        from_flag = value(parse([cmd, opt.flag, text]), opt)
        from_env = value(parse([cmd], {opt.env: text}), opt)
    assert default != expected, "the sample must differ from the default, or the test proves nothing"
    assert from_flag == expected
    assert from_env == expected
    # The flag wins over the environment.
    if not opt.boolean and not opt.repeat:
        env_value = "garbage" if opt.type is str and not opt.choices else text
        other = value(parse([cmd, opt.flag, text], {opt.env: env_value}), opt)
        assert other == expected
    # And the value reaches Settings (conflicting pairs aside).
    if opt.flag != "--all-namespaces":
        env = {opt.env: "a,b" if opt.repeat else text}
        Settings.from_args(parse([cmd], env), env)


def test_env_reaches_settings() -> None:
    env = {"MEMWATCH_NAMESPACE": "shop,blog", "MEMWATCH_DRY_RUN": "yes", "MEMWATCH_DEFAULT_ACTION": "delete",
           "MEMWATCH_ESCALATE": "1", "MEMWATCH_INTERVAL": "2s", "MEMWATCH_SOURCE": "kubelet",
           "MEMWATCH_ALLOW_NAMESPACE": "kube-system", "MEMWATCH_PROTECTED_PRIORITY": "none",
           "MEMWATCH_MAX_EVICTIONS_PER_MINUTE": "0", "POD_NAMESPACE": "ops"}
    st = Settings.from_args(parse(["run"], env), env)
    assert st.namespaces == ("shop", "blog")
    assert st.dry_run is True and st.interval == 2.0 and st.source == "kubelet"
    assert st.defaults.action is Action.DELETE and st.defaults.escalate is True
    assert st.protections.included_namespaces == {"shop", "blog"}
    assert st.protections.allowed_namespaces == {"kube-system"}
    assert st.protections.protected_priority is None
    assert st.max_per_minute == 0
    assert st.leader_election_namespace == "ops"  # from the downward API when the flag is unset


def test_repeatable_flag_replaces_the_env_list() -> None:
    args = parse(["run", "--protected-namespace", "infra"], {"MEMWATCH_PROTECTED_NAMESPACE": "a,b"})
    assert s._repeat(args, "protected_namespace") == ["infra"]
    assert s._repeat(parse(["run"]), "protected_namespace") == ["kube-system"]


# ---------------------------------------------------------------------------------------------
# Bad values: exit 2 with a message naming the flag or variable and the value (real processes)

BAD: list[tuple[str, list[str], dict[str, str], list[str]]] = [
    ("negative-interval", ["run", "--interval", "-5"], {}, ["--interval", "'-5'"]),
    ("zero-interval", ["run", "--interval=0"], {}, ["--interval", "'0' must be greater than zero"]),
    ("bad-port", ["run", "--metrics-port", "70000"], {}, ["--metrics-port", "'70000' is not a TCP port"]),
    ("port-not-a-number", ["run", "--metrics-port", "http"], {}, ["--metrics-port", "'http'"]),
    ("unknown-source", ["run", "--source", "prometheus"], {}, ["--source", "'prometheus'"]),
    ("bad-selector", ["run", "--self-selector", "app in (a"], {}, ["--self-selector", "app in (a"]),
    ("bad-duration", ["run", "--escalation-timeout", "soon"], {}, ["--escalation-timeout", "'soon'"]),
    ("negative-cap", ["run", "--max-evictions-per-minute", "-1"], {}, ["--max-evictions-per-minute", "'-1'"]),
    ("env-bad-boolean", ["run"], {"MEMWATCH_DRY_RUN": "maybe"}, ["MEMWATCH_DRY_RUN='maybe'", "true or false"]),
    ("env-negative-interval", ["run"], {"MEMWATCH_INTERVAL": "-1s"}, ["MEMWATCH_INTERVAL='-1s'"]),
    ("env-unknown-source", ["run"], {"MEMWATCH_SOURCE": "nope"}, ["MEMWATCH_SOURCE='nope'", "choose from"]),
    ("env-bad-port", ["run"], {"MEMWATCH_METRICS_PORT": "-80"}, ["MEMWATCH_METRICS_PORT='-80'"]),
    ("env-bad-selector", ["run"], {"MEMWATCH_LABEL_SELECTOR": "a b"}, ["MEMWATCH_LABEL_SELECTOR='a b'"]),
    ("env-bad-percent", ["agent"], {"MEMWATCH_KILL_CEILING": "150%"}, ["MEMWATCH_KILL_CEILING='150%'"]),
    ("namespace-and-all", ["run", "--namespace", "a", "--all-namespaces"], {},
     ["--namespace and --all-namespaces exclude each other"]),
    ("env-namespace-and-all", ["run"], {"MEMWATCH_NAMESPACE": "a,b", "MEMWATCH_ALL_NAMESPACES": "true"},
     ["--namespace and --all-namespaces exclude each other"]),
    ("no-command", [], {}, ["required: COMMAND"]),
    # The annotation's rule for memwatch.io/grace-period, not int()'s: ASCII digits only, at most an hour.
    ("grace-underscore", ["run", "--default-grace-period", "1_0"], {}, ["--default-grace-period", "'1_0'"]),
    ("grace-spaces", ["agent", "--default-grace-period", " 5 "], {}, ["--default-grace-period", "' 5 '"]),
    ("grace-arabic-digits", ["run", "--default-grace-period", "\u0665"], {}, ["--default-grace-period"]),
    ("grace-too-long", ["run", "--default-grace-period", "86400"], {}, ["--default-grace-period", "3600s"]),
    ("env-grace-unit", ["run"], {"MEMWATCH_DEFAULT_GRACE_PERIOD": "1m"}, ["MEMWATCH_DEFAULT_GRACE_PERIOD='1m'"]),
]


#: Run as real processes (exit code and stderr as a user sees them); the rest run in-process.
SUBPROCESS = ("negative-interval", "env-bad-boolean", "namespace-and-all")


def _memwatch(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MEMWATCH_")}
    base.update(env, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "memwatch", *argv], env=base, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(scope="module")
def bad_runs() -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    """The subprocess cases, run in parallel once (each is a fresh interpreter)."""
    cases = {name: (argv, env) for name, argv, env, _ in BAD if name in SUBPROCESS}
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        futures = {name: pool.submit(_memwatch, argv, env) for name, (argv, env) in cases.items()}
        yield {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize(("name", "fragments"), [pytest.param(n, f, id=n) for n, _, _, f in BAD if n in SUBPROCESS])
def test_bad_values_exit_2_in_a_real_process(bad_runs: dict[str, subprocess.CompletedProcess[str]],
                                             name: str, fragments: list[str]) -> None:
    proc = bad_runs[name]
    assert proc.returncode == 2, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(("argv", "env", "fragments"), [pytest.param(a, e, f, id=n) for n, a, e, f in BAD])
def test_bad_values_exit_2_naming_flag_and_value(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                env: dict[str, str], fragments: list[str]) -> None:
    from memwatch.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv, env=env)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err


# ---------------------------------------------------------------------------------------------
# --help documents every option with its variable


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        _parser({}).parse_args([*argv, "--help"])
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # undo line wrapping


@pytest.fixture
def helps(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    return {cmd: _help(cmd.split(), capsys) for cmd in ("", "run", "agent")}


def test_run_help_in_a_real_process() -> None:
    proc = _memwatch(["run", "--help"], {})
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for opt in COMMON + RUN:
        assert opt.flag in text and f"[env {opt.env}]" in text


def test_top_level_help_lists_the_commands(helps: dict[str, str]) -> None:
    for fragment in ("run", "agent", "lint", "run the cluster controller", "validate memwatch annotations"):
        assert fragment in helps[""]


@pytest.mark.parametrize(("cmd", "opt"), CASES)
def test_subcommand_help_documents_every_option(helps: dict[str, str], cmd: str, opt: Option) -> None:
    text = helps[cmd]
    assert opt.flag in text
    assert f"[env {opt.env}]" in text
    # argparse wraps lines at spaces and at hyphens: compare without any whitespace.
    assert "".join(opt.help.split()) in "".join(text.split())
