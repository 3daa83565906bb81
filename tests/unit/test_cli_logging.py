"""`kubectl logs` at the default level: no line per liveness probe; `--verbose` brings them back.

The probe is served by kopf's real health reporter (aiohttp) calling memwatch's probe handler,
and the output is what the stream handler that `memwatch.cli._logging` installs writes to stderr.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from kopf._core.engines.probing import health_reporter  # the code behind kopf.run(liveness_endpoint=...)

import memwatch.handlers  # noqa: F401  (registers the probe handler)
from memwatch.cli import KOPF_TASK_FAILURES, PROBE_LOGGERS, _logging


class _HealthyEngine:
    def health(self) -> dict[str, Any]:
        return {"watched": 0}


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """_logging configures process-wide loggers: put them back for the other tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in (*PROBE_LOGGERS, "memwatch", "urllib3")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _StalledEngine:
    def health(self) -> dict[str, Any]:
        raise RuntimeError("sweep loop stalled for 400s")


async def _probe_once(engine: Any = None) -> bytes:
    """Serve the liveness endpoint as kopf.run does, GET it once (as the kubelet does), stop."""
    url = f"http://127.0.0.1:{_free_port()}/healthz"
    ready = asyncio.Event()
    server = asyncio.create_task(health_reporter(
        url, memo=kopf.Memo(engine=engine or _HealthyEngine()), indices={}, registry=kopf.get_default_registry(),
        settings=kopf.OperatorSettings(), ready_flag=ready))
    try:
        await ready.wait()
        with await asyncio.to_thread(urllib.request.urlopen, url, timeout=10) as response:
            body: bytes = response.read()
            return body
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server


def test_probes_are_silent_at_the_default_level(capsys: pytest.CaptureFixture[str]) -> None:
    _logging(verbose=False)
    body = asyncio.run(_probe_once())
    assert b'"memwatch"' in body  # the probe really ran memwatch's handler
    logging.getLogger("memwatch").info("action=evicted pod=ns/p")
    err = capsys.readouterr().err
    assert "GET /healthz" not in err
    assert "Activity 'memwatch'" not in err
    assert "action=evicted pod=ns/p" in err  # the lines users look for still show


def test_verbose_shows_probes(capsys: pytest.CaptureFixture[str]) -> None:
    _logging(verbose=True)
    asyncio.run(_probe_once())
    err = capsys.readouterr().err
    assert "GET /healthz" in err
    assert "Activity 'memwatch' succeeded" in err


def test_a_failing_probe_still_shows_at_the_default_level(capsys: pytest.CaptureFixture[str]) -> None:
    _logging(verbose=False)
    # kopf logs a probe handler's exception at ERROR through the probe activity's logger.
    logging.getLogger("kopf.activities.probe").error("Activity 'memwatch' failed: sweep loop stalled")
    assert "sweep loop stalled" in capsys.readouterr().err


def test_a_stalled_sweep_fails_the_probe_at_once() -> None:
    """HTTP 500 within the kubelet's probe timeout (1 s by default), not a hang while kopf retries
    the handler: a hanging probe is a timeout, and the kubelet learns less from it."""
    import time
    import urllib.error

    t0 = time.monotonic()
    with pytest.raises(urllib.error.HTTPError) as failed:
        asyncio.run(_probe_once(_StalledEngine()))
    assert failed.value.code == 500
    assert time.monotonic() - t0 < 1.0


def _kopf_task_failure() -> None:
    try:
        raise UnicodeDecodeError("utf-8", b"\x89", 0, 1, "invalid start byte")
    except UnicodeDecodeError as exc:  # how kopf logs the failure of one of its tasks
        logging.getLogger(KOPF_TASK_FAILURES).exception(f"Resource observer has failed: {exc}")


def test_kopfs_task_failure_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    _logging(verbose=False)
    capsys.readouterr()
    _kopf_task_failure()
    logging.getLogger("memwatch.sweep").error("a memwatch error keeps its traceback", exc_info=ValueError("x"))
    err = capsys.readouterr().err.splitlines()
    assert "Resource observer has failed: 'utf-8' codec can't decode byte 0x89" in err[0]
    assert "a memwatch error keeps its traceback" in err[1]
    assert err[2:] == ["ValueError: x"], "only memwatch's own record carries its exception"


def test_verbose_keeps_kopfs_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    _logging(verbose=True)
    capsys.readouterr()
    _kopf_task_failure()
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err and err.rstrip().endswith("invalid start byte")
