"""The restart budget: at most N memwatch actions per window on one workload.

A one-replica Deployment whose pod leaks at start is evicted, recreated, evicted again: without a
brake memwatch would churn it forever. The budget counts actions per *workload* (the pod's
controlling owner, a ReplicaSet folded into its Deployment) and stops acting when it is spent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from memwatch.policy import MAX_WINDOW_SECONDS, RestartBudget
from memwatch.quantity import parse_time

#: The label the Deployment controller puts on its ReplicaSets' pods: the ReplicaSet's name is
#: ``<deployment>-<pod-template-hash>``.
TEMPLATE_HASH = "pod-template-hash"


def workload_of(pod: Mapping[str, Any]) -> str | None:
    """The pod's workload as ``Kind/name`` (``Deployment/web``, ``StatefulSet/db``, ``Job/x``), from its
    controlling owner reference; a ReplicaSet made by a Deployment is folded into the Deployment.
    None for a bare pod (no controller), whose every action is its own."""
    meta = pod.get("metadata") or {}
    for ref in meta.get("ownerReferences") or ():
        if not isinstance(ref, Mapping) or not ref.get("controller"):
            continue
        kind, name = str(ref.get("kind") or ""), str(ref.get("name") or "")
        if not kind or not name:
            return None
        if kind == "ReplicaSet":
            template_hash = (meta.get("labels") or {}).get(TEMPLATE_HASH)
            if template_hash and name.endswith("-" + str(template_hash)):
                return f"Deployment/{name[: -len(str(template_hash)) - 1]}"
        return f"{kind}/{name}"
    return None


#: The API group of each workload kind memwatch names in an Event's ``related`` reference.
API_VERSIONS = {"Deployment": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1", "ReplicaSet": "apps/v1",
                "Job": "batch/v1", "CronJob": "batch/v1", "ReplicationController": "v1"}
#: Actions older than this are forgotten: no window may be longer (:data:`memwatch.policy.MAX_WINDOW_SECONDS`).
HORIZON = MAX_WINDOW_SECONDS
#: At most this many actions are remembered, cluster-wide; the oldest go first.
MAX_ENTRIES = 100_000


def reference(namespace: str, workload: str) -> dict[str, str]:
    """The core/v1 ObjectReference of a workload (``Deployment/web``), for an Event's ``related``."""
    kind, _, name = workload.partition("/")
    ref = {"kind": kind, "name": name, "namespace": namespace}
    version = API_VERSIONS.get(kind)
    if version:
        ref["apiVersion"] = version  # best effort: an unknown controller kind goes without
    return ref


def from_reference(ref: Any, namespace: str = "") -> tuple[str, str] | None:
    """(namespace, ``Kind/name``) of an Event's ``related`` reference; None when it names no workload."""
    if not isinstance(ref, Mapping):
        return None
    kind, name = str(ref.get("kind") or ""), str(ref.get("name") or "")
    if not kind or not name:
        return None
    return str(ref.get("namespace") or namespace), f"{kind}/{name}"


def clock_time(ts: float) -> str:
    """``10:02:11Z``: the wall-clock time of an action, for messages."""
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class BudgetState:
    """A workload's restart budget at one moment: how much of it the window holds."""

    budget: RestartBudget
    used: int  # actions within the window
    since: float | None = None  # the oldest of them (epoch)
    frees_at: float | None = None  # when spent: when the next action is allowed again (epoch)

    @property
    def spent(self) -> bool:
        return self.used >= self.budget.actions

    @property
    def left(self) -> int:
        return max(0, self.budget.actions - self.used)

    def describe(self, workload: str) -> str:
        """``restart budget 3/1h of Deployment/web spent (3 actions since 10:02:11Z; next frees at 11:02:11Z)``."""
        head = f"restart budget {self.budget} of {workload}"
        if not self.spent:
            return f"{head}: {self.left} of {self.budget.actions} left"
        if self.budget.actions == 0:
            return f"{head} allows no action"
        since = "" if self.since is None else f" since {clock_time(self.since)}"
        frees = "" if self.frees_at is None else f"; next frees at {clock_time(self.frees_at)}"
        return f"{head} spent ({self.used} action{'s' if self.used != 1 else ''}{since}{frees})"


class BudgetBook:
    """memwatch's actions per workload, on the wall clock: the restart budget's memory. Thread-safe
    (the enforcer records from the sweep or the agent's worker, the Events watch learns).

    Every action is kept under a key, the name of the Event that reports it: the Event this process
    posts and the same Event read back from the cluster (or read again by a re-LIST) count once.
    Actions older than ``horizon`` before the latest time the book has seen are forgotten, and at
    most ``max_entries`` are kept (the oldest go first): memory stays bounded.
    """

    def __init__(self, horizon: float = HORIZON, max_entries: int = MAX_ENTRIES,
                 wall: Callable[[], float] = time.time) -> None:
        self.horizon = horizon
        self.max_entries = max_entries
        self.wall = wall  # only to refuse a learned Event dated in the future (another machine's clock)
        self._lock = threading.Lock()
        self._by_workload: dict[tuple[str, str], dict[str, float]] = {}  # (namespace, workload) -> key -> time
        self._where: dict[str, tuple[str, str]] = {}  # key -> (namespace, workload)
        self._added = 0
        self._latest = float("-inf")  # the latest "now" seen: this process's actions and questions

    def __len__(self) -> int:
        with self._lock:
            return len(self._where)

    def record(self, namespace: str, workload: str, at: float, key: str, *, learned: bool = False) -> bool:
        """Count one action on ``workload`` at ``at`` (epoch). False when ``key`` is already counted, or
        the action is older than the horizon. A ``learned`` time (another machine's) never moves the
        book's idea of now."""
        with self._lock:
            if not learned:
                self._latest = max(self._latest, at)
            if key in self._where or at < self._latest - self.horizon:
                return False
            self._where[key] = (namespace, workload)
            self._by_workload.setdefault((namespace, workload), {})[key] = at
            self._added += 1
            if self._added >= 1024 or len(self._where) > self.max_entries:
                self._prune()
        return True

    def learn(self, event: Mapping[str, Any]) -> bool:
        """Count an acted Event of memwatch's (read from the cluster) when it names its workload in
        ``related``. Dedupe by the Event's namespace and name (its uid when it has no name)."""
        meta = event.get("metadata") or {}
        namespace = str(meta.get("namespace") or (event.get("involvedObject") or {}).get("namespace") or "")
        where = from_reference(event.get("related"), namespace)
        at = parse_time(event.get("firstTimestamp") or event.get("eventTime") or event.get("lastTimestamp"))
        ident = meta.get("name") or meta.get("uid")
        if where is None or at is None or not ident:
            return False
        return self.record(where[0], where[1], min(at, self.wall()), f"{namespace}/{ident}", learned=True)

    def state(self, namespace: str, workload: str, budget: RestartBudget, now: float) -> BudgetState:
        """How much of ``budget`` the actions on ``workload`` in the window ending ``now`` use."""
        with self._lock:
            self._latest = max(self._latest, now)
            times = sorted(t for t in (self._by_workload.get((namespace, workload)) or {}).values()
                           if t > now - budget.window)
        used = len(times)
        if not times:
            return BudgetState(budget, 0)
        frees_at = None
        if used >= budget.actions and budget.actions > 0:
            # The window must lose enough actions to leave one free: the (used - N + 1)th oldest.
            frees_at = times[used - budget.actions] + budget.window
        return BudgetState(budget, used, times[0], frees_at)

    def prune(self, now: float | None = None) -> None:
        """Forget actions older than the horizon before ``now`` (and the oldest beyond ``max_entries``)."""
        with self._lock:
            if now is not None:
                self._latest = max(self._latest, now)
            self._prune()

    def _prune(self) -> None:
        self._added = 0
        cutoff = self._latest - self.horizon
        entries = [(self._by_workload[where][key], key) for key, where in self._where.items()]
        drop = [key for t, key in entries if t < cutoff]
        excess = len(entries) - len(drop) - self.max_entries
        if excess > 0:
            keep = sorted((t, key) for t, key in entries if t >= cutoff)
            drop += [key for _, key in keep[:excess]]
        for key in drop:
            where = self._where.pop(key)
            times = self._by_workload[where]
            del times[key]
            if not times:
                del self._by_workload[where]
