"""What the controller tells each policy's ``status``: how many pods it applies to, and when
memwatch last acted on one of them.

The policies' ``Ready`` condition is written by the kopf handlers (:mod:`memwatch.policyhandlers`),
on create, update and resume; the counts come from the running engine, so this thread writes them,
as the leader only, every ``period`` seconds and only for the policies whose numbers changed (a
merge patch of two fields on the status subresource: no write to pods, none to the policies' spec).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from memwatch.clock import SYSTEM, Clock
from memwatch.kube import Kube
from memwatch.observability import ACTED_REASONS
from memwatch.podindex import PodIndex
from memwatch.policyset import API_VERSION, PLURALS, Policies, PolicyObject
from memwatch.quantity import parse_time

log = logging.getLogger("memwatch.policies")


def status_path(policy: PolicyObject) -> str:
    plural = PLURALS[policy.kind]
    if policy.namespace:
        return f"/apis/{API_VERSION}/namespaces/{quote(policy.namespace)}/{plural}/{quote(policy.name)}/status"
    return f"/apis/{API_VERSION}/{plural}/{quote(policy.name)}/status"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PolicyStatus:
    """``status.matchedPods`` and ``status.lastActionTime`` of every policy; also a watcher sink
    for memwatch's own Events (to learn when a pod a policy selects was acted on)."""

    def __init__(self, kube: Kube | None, index: PodIndex, policies: Policies, period: float = 10.0,
                 clock: Clock = SYSTEM) -> None:
        self.kube = kube
        self.index = index
        self.policies = policies
        self.period = period
        self.clock = clock
        self.last_action: dict[str, float] = {}  # policy ref -> epoch seconds
        self._refs_of: dict[str, tuple[str, ...]] = {}  # pod uid -> policy refs, as of the last pass
        self._written: dict[str, tuple[int, float | None]] = {}  # policy uid -> what its status says
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the Events sink -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.last_action)

    def upsert(self, event: Mapping[str, Any]) -> None:
        if event.get("reason") not in ACTED_REASONS:
            return
        uid = str((event.get("involvedObject") or {}).get("uid") or "")
        at = parse_time(event.get("lastTimestamp") or event.get("firstTimestamp") or event.get("eventTime"))
        if not uid or at is None:
            return
        record = self.index.get(uid)
        refs = record.policies if record is not None else self._refs_of.get(uid, ())
        with self._lock:
            for ref in refs:
                self.last_action[ref] = max(at, self.last_action.get(ref, 0.0))

    def remove(self, event: Mapping[str, Any]) -> None:
        return

    def replace(self, events: Iterable[Mapping[str, Any]], scope: Callable[[Any], bool]) -> None:
        for event in events:
            self.upsert(event)

    # -- the status writes -------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Pods each policy applies to (watched pods the policy selects), by policy ref."""
        matched: dict[str, int] = {}
        refs_of: dict[str, tuple[str, ...]] = {}
        for record in self.index.snapshot():
            if record.policies:
                refs_of[record.uid] = record.policies
                for ref in record.policies:
                    matched[ref] = matched.get(ref, 0) + 1
        self._refs_of = refs_of
        return matched

    def write_once(self) -> int:
        """Patch the status of every policy whose numbers changed. Returns the writes made."""
        if self.kube is None:
            return 0
        matched = self.counts()
        writes = 0
        live = set()
        for policy in self.policies.objects():
            live.add(policy.uid)
            n = matched.get(policy.ref, 0) if policy.valid else 0
            with self._lock:
                last = self.last_action.get(policy.ref)
            if self._written.get(policy.uid) == (n, last):
                continue
            status: dict[str, Any] = {"matchedPods": n}
            if last is not None:
                status["lastActionTime"] = _iso(last)
            result = self.kube.merge_patch(status_path(policy), {"status": status})
            if result.ok:
                self._written[policy.uid] = (n, last)
                writes += 1
            elif result.status != 404:  # 404: deleted meanwhile
                log.warning("policy status not written: %s: %s", policy.ref, result.message)
        for uid in [u for u in self._written if u not in live]:
            del self._written[uid]
        return writes

    def run(self, may_write: Callable[[], bool]) -> None:
        while not self._stop.wait(self.period):
            try:
                if may_write():
                    self.write_once()
            except Exception:  # a status write must never stop the controller
                log.exception("policy status pass failed; next one in %.0fs", self.period)

    def start(self, may_write: Callable[[], bool]) -> None:
        self._thread = threading.Thread(target=self.run, args=(may_write,), name="policy-status", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
