"""kopf wiring: thin handlers only. kopf runs the process; memwatch's engine does the work.

memwatch uses kopf for what it is good at (the CLI run loop, startup settings, logging, the
liveness endpoint, graceful shutdown) and deliberately registers no resource handlers on pods:
kopf's create/update/resume handlers write a last-handled annotation on every pod, timers and
daemons add finalizers, and its pod index does not scale (see :mod:`memwatch.watcher`).
memwatch never writes to the pods it watches except to evict or delete them.
"""

from __future__ import annotations

import itertools
import logging
import signal
import time
from collections.abc import Iterator, Sequence
from typing import Any

import kopf

from memwatch.controller import Controller

log = logging.getLogger("memwatch")

#: Pauses before kopf's run starts again after it failed; the last one repeats. A run that lasted
#: longer than the last pause starts the sequence over.
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)


class RetryForever:
    """kopf's API retry backoffs, never exhausted: a dead API server must not end the process.

    An iterable (not an iterator), so every request starts its own sequence.
    """

    def __iter__(self) -> Iterator[float]:
        return itertools.chain((1, 1, 2, 3, 5, 8, 13), itertools.repeat(30.0))


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any],
            **_: Any) -> None:
    """Tune kopf so that it writes nothing, then start memwatch's engine (watchers and sweep)."""
    settings.posting.enabled = False  # kopf must not post its own Events; memwatch posts on pods itself
    settings.scanning.disabled = True  # no namespace/CRD scanning: memwatch watches pods itself
    settings.peering.standalone = True  # HA is memwatch's Lease (--leader-elect), not kopf peering
    settings.networking.error_backoffs = RetryForever()  # keep running through API outages
    if memo.get("policy_handlers"):  # memwatch run: kopf validates the policies (memwatch.policyhandlers)
        from memwatch import policyhandlers

        policyhandlers.configure(settings)
    if not memo.get("started"):  # kopf's run may start again (run()); memwatch's engine starts once
        engine: Controller | Any = memo["engine"]
        engine.start()
        memo["started"] = True
        logger.info("memwatch started")


@kopf.on.login()
def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    """kopf logs in with memwatch's own credentials (from --kubeconfig or in-cluster)."""
    return kopf.ConnectionInfo(**memo["engine"].kube.credentials())


# errors=PERMANENT: kopf's default retries a failing activity handler forever, so the probe would hang
# (a timeout at the kubelet) instead of answering 500 with the reason.
@kopf.on.probe(id="memwatch", errors=kopf.ErrorsMode.PERMANENT)
def probe(memo: Any, **_: Any) -> dict[str, Any]:
    """Liveness: fails (HTTP 500) at once when the sweep loop is stuck, so the kubelet restarts memwatch."""
    health: dict[str, Any] = memo["engine"].health()
    return health


def run(engine: Any, *, namespaces: Sequence[str], liveness: str | None, identity: str,
        policy_handlers: bool) -> int:
    """Run kopf around memwatch's engine until SIGTERM or SIGINT; then stop the engine. Returns 0.

    kopf ends its whole run when one of its own tasks fails: its API discovery reading an answer it
    cannot decode (a ``400`` whose body is not UTF-8, as a garbled request gets) is one such failure.
    The engine (watchers, sweep or sampling, actions, the Lease) runs on threads of its own and does
    not need kopf to act, so it keeps running. kopf starts again after a pause, and the reason is one
    log line. Until then the liveness endpoint and the policy handlers are down, not the enforcement.
    """
    memo = kopf.Memo(engine=engine, policy_handlers=policy_handlers, started=False)
    failures = 0
    try:
        while True:
            began = time.monotonic()
            try:
                kopf.run(clusterwide=not namespaces, namespaces=list(namespaces), standalone=True,
                         liveness_endpoint=liveness, identity=identity, memo=memo)  # type: ignore[arg-type]
                return 0  # a signal ended the run: the process stops
            except Exception as exc:
                if time.monotonic() - began > RESTART_DELAYS[-1]:
                    failures = 0
                delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
                failures += 1
                log.error("kopf stopped on an error: %s; memwatch's %s keeps running; restarting kopf in %.0fs "
                          "(its liveness endpoint and policy handlers are down until then)",
                          reason(exc), "controller" if policy_handlers else "node agent", delay)
            if _signalled_within(delay):
                return 0
    finally:
        if memo.get("started"):
            engine.stop()
            log.info("memwatch stopped")


def reason(exc: BaseException, depth: int = 3) -> str:
    """An exception and what it was raised while handling, in one line."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < depth:
        parts.append(f"{type(seen).__name__}: {seen}".replace("\n", " "))
        seen = seen.__cause__ or seen.__context__
    return " (while handling ".join(parts) + ")" * (len(parts) - 1)


def _signalled_within(seconds: float) -> bool:
    """Sleep ``seconds`` between kopf's runs (kopf's own signal handling is gone with its loop);
    True as soon as SIGTERM or SIGINT arrives: the process stops instead of starting kopf again."""
    came: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: came.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        deadline = time.monotonic() + seconds
        while not came and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        return bool(came)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
