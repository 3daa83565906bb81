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
from collections.abc import Iterator
from typing import Any

import kopf

from memwatch.controller import Controller


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
    engine: Controller | Any = memo["engine"]
    engine.start()
    logger.info("memwatch started")


@kopf.on.login()
def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    """kopf logs in with memwatch's own credentials (from --kubeconfig or in-cluster)."""
    return kopf.ConnectionInfo(**memo["engine"].kube.credentials())


@kopf.on.cleanup()
def cleanup(memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    """Stop the engine's threads on SIGTERM."""
    memo["engine"].stop()
    logger.info("memwatch stopped")


# errors=PERMANENT: kopf's default retries a failing activity handler forever, so the probe would hang
# (a timeout at the kubelet) instead of answering 500 with the reason.
@kopf.on.probe(id="memwatch", errors=kopf.ErrorsMode.PERMANENT)
def probe(memo: Any, **_: Any) -> dict[str, Any]:
    """Liveness: fails (HTTP 500) at once when the sweep loop is stuck, so the kubelet restarts memwatch."""
    health: dict[str, Any] = memo["engine"].health()
    return health
