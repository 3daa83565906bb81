"""kopf handlers for memwatch's own objects, the policies: validate each one and say so in its
``status`` (the ``Ready`` condition). Registered by ``memwatch run`` only (the node agent reads
policies but writes nothing to them).

This is what kopf is for: create, update and resume handlers on custom resources memwatch owns.
kopf keeps its own bookkeeping in the policies' ``status.kopf`` (not in annotations: memwatch may
patch only the status subresource), and the delete handler is optional, so no finalizer is ever
added: deleting a policy, or uninstalling memwatch, never hangs on memwatch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from memwatch.policyset import CLUSTER, GROUP, NAMESPACED, PLURALS, VERSION, parse_policy

log = logging.getLogger("memwatch.policies")

CONDITION = "Ready"
VALID, INVALID = "Valid", "Invalid"


def ready_condition(body: Mapping[str, Any], old: Any, now: str | None = None) -> dict[str, Any]:
    """The ``Ready`` condition for a policy body (pure: tested without a cluster). ``old`` is the
    current ``status.conditions``; ``lastTransitionTime`` moves only when the status flips."""
    policy = parse_policy(body)
    now = now or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = "True" if policy.valid else "False"
    previous = next((c for c in old or () if isinstance(c, Mapping) and c.get("type") == CONDITION), None)
    since = previous.get("lastTransitionTime") if previous and previous.get("status") == status else None
    if policy.valid:
        message = ("applies to the pods it selects (a pod's own memwatch.io/ annotations win field by field)"
                   + ("" if policy.gives_limit else "; it sets no limit, so it only changes pods that a limit "
                      "already watches"))
    else:
        message = "memwatch ignores this policy: " + "; ".join(policy.problems)
    return {"type": CONDITION, "status": status, "reason": VALID if policy.valid else INVALID,
            "message": message[:1024], "lastTransitionTime": since or now,
            "observedGeneration": policy.generation}


def _validate(body: Mapping[str, Any], status: Mapping[str, Any], patch: kopf.Patch, reason: str) -> None:
    condition = ready_condition(body, (status or {}).get("conditions"))
    patch.status["conditions"] = [condition]
    patch.status["observedGeneration"] = condition["observedGeneration"]
    ref = parse_policy(body).ref
    if condition["status"] == "True":
        log.info("policy %s: %s (%s)", reason, ref, condition["message"])
    else:
        log.warning("policy invalid: %s: %s", ref, condition["message"])


def register() -> None:
    """Register the handlers (once per process, for ``memwatch run``)."""
    for kind in (NAMESPACED, CLUSTER):
        plural = PLURALS[kind]

        @kopf.on.resume(GROUP, VERSION, plural, id=f"validate-{plural}-resume")
        @kopf.on.create(GROUP, VERSION, plural, id=f"validate-{plural}-create")
        @kopf.on.update(GROUP, VERSION, plural, id=f"validate-{plural}-update", field="spec")
        def validate(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, reason: Any, **_: Any) -> None:
            _validate(body, status, patch, str(reason))

        @kopf.on.delete(GROUP, VERSION, plural, id=f"deleted-{plural}", optional=True)
        def deleted(body: kopf.Body, **_: Any) -> None:
            log.info("policy deleted: %s; the pods only it selected are no longer watched",
                     parse_policy(body).ref)


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf's bookkeeping in the policies' status (the only part of them memwatch may write)."""
    settings.persistence.progress_storage = kopf.StatusProgressStorage()
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage()
