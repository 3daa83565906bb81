"""kopf ends its run when one of its own tasks fails; memwatch's engine keeps running and kopf starts
again (memwatch.handlers.run).

kopf.run is scripted here (it fails, then a signal ends it) so that the restart loop's rules can be
checked one by one: the engine starts once and stops once, the pauses grow and are capped, a signal
during a pause stops the process, each failure is one log line with its cause. The real failure
(kopf's API discovery answered ``400`` with a body that is not UTF-8, a real ``memwatch run``
process on the real API server) is tests/faults/test_api_answers.py.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import time
from typing import Any

import kopf
import pytest

import memwatch.handlers as handlers


class Engine:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")

    def stop(self) -> None:
        self.calls.append("stop")


class ScriptedKopf:
    """kopf.run: runs memwatch's startup handler as kopf would, then fails ``failures`` times."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs = 0

    def __call__(self, *, memo: Any, **_: Any) -> None:
        self.runs += 1
        handlers.startup(settings=kopf.OperatorSettings(), memo=memo, logger=logging.getLogger("kopf.test"))
        if self.runs <= self.failures:
            try:
                raise ValueError("Attempt to decode JSON with unexpected mimetype: text/plain")
            except ValueError:
                raise UnicodeDecodeError("utf-8", b"\x89", 0, 1, "invalid start byte")  # noqa: B904


def serve(monkeypatch: pytest.MonkeyPatch, kopf_run: ScriptedKopf, pauses: list[float] | None = None) -> int:
    monkeypatch.setattr(kopf, "run", kopf_run)
    if pauses is not None:
        monkeypatch.setattr(handlers, "_signalled_within", lambda seconds: pauses.append(seconds) and False)
    return handlers.run(engine, namespaces=[], liveness=None, identity="test", policy_handlers=False)


engine = Engine()


@pytest.fixture(autouse=True)
def _fresh_engine() -> None:
    engine.calls.clear()


def test_the_engine_outlives_kopfs_failures(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    kopf_run, pauses = ScriptedKopf(failures=2), []
    assert serve(monkeypatch, kopf_run, pauses) == 0
    assert kopf_run.runs == 3
    assert engine.calls == ["start", "stop"], "started once across kopf's runs, stopped once at the end"
    assert pauses == [1.0, 2.0]
    said = [r.getMessage() for r in caplog.records if r.name == "memwatch" and r.levelno == logging.ERROR]
    assert len(said) == 2
    assert said[0].startswith("kopf stopped on an error: UnicodeDecodeError: 'utf-8' codec can't decode byte 0x89")
    assert "(while handling ValueError: Attempt to decode JSON with unexpected mimetype: text/plain)" in said[0]
    assert "memwatch's node agent keeps running; restarting kopf in 1s" in said[0]
    assert "restarting kopf in 2s" in said[1]


def test_pauses_grow_to_a_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    serve(monkeypatch, ScriptedKopf(failures=8), pauses)
    assert pauses == [1.0, 2.0, 5.0, 10.0, 30.0, 30.0, 30.0, 30.0]


def test_a_run_longer_than_the_longest_pause_starts_the_pauses_over(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    # Each failed run reads the clock at its start and its end: run 1 lasts 1 s, run 2 100 s, run 3 0.5 s.
    clock = itertools.chain([0.0, 1.0, 100.0, 200.0, 300.0, 300.5], itertools.repeat(400.0))
    monkeypatch.setattr(handlers.time, "monotonic", lambda: next(clock))
    serve(monkeypatch, ScriptedKopf(failures=3), pauses)
    assert pauses == [1.0, 1.0, 2.0]


def test_a_signal_during_the_pause_stops_memwatch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "RESTART_DELAYS", (60.0,))
    before = signal.getsignal(signal.SIGTERM)

    def terminate_once_waiting() -> None:
        deadline = time.monotonic() + 10
        while signal.getsignal(signal.SIGTERM) is before and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_once_waiting, daemon=True).start()
    kopf_run = ScriptedKopf(failures=100)
    began = time.monotonic()
    assert serve(monkeypatch, kopf_run) == 0
    assert time.monotonic() - began < 5, "SIGTERM ends the 60 s pause at once"
    assert kopf_run.runs == 1, "kopf is not started again after SIGTERM"
    assert engine.calls == ["start", "stop"]
    assert signal.getsignal(signal.SIGTERM) is before, "the pause gives the signal handlers back"


def test_kopf_failing_before_memwatch_started_stops_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def login_fails(**_: Any) -> None:
        raise RuntimeError("cannot log in")

    monkeypatch.setattr(kopf, "run", login_fails)
    monkeypatch.setattr(handlers, "_signalled_within", lambda seconds: True)  # then SIGTERM
    assert handlers.run(engine, namespaces=[], liveness=None, identity="t", policy_handlers=True) == 0
    assert engine.calls == []


def test_reason_is_one_line_with_its_causes() -> None:
    try:
        try:
            raise KeyError("first\nline")
        except KeyError as exc:
            raise OSError("second") from exc
    except OSError as exc:
        assert handlers.reason(exc) == "OSError: second (while handling KeyError: 'first\\nline')"
