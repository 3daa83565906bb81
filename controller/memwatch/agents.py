"""Who acts on a pod: the controller, or the node agent on the pod's node. Exactly one of them.

With both installed, a breach must not be acted on twice (an eviction from each, or the controller
evicting a ``memwatch.io/action: restart`` pod the agent is killing in place). The controller follows
the agent pods (one LIST+WATCH, narrowed server-side by ``--agent-selector`` in its own namespace) and
defers a pod to its node's agent while that agent is Ready:

* ``--defer-to-agents=all`` (agents that may evict, the chart's default with ``agent.enabled``): every
  pod on a node with a Ready agent is the agent's.
* ``--defer-to-agents=restart`` (kill-only agents, ``agent.evict: false``): only ``restart`` pods are the
  agent's; the controller evicts and deletes the rest.
* ``none`` (no agents): the controller acts on every pod.

A node whose agent is missing, not Ready, or gone falls back to the controller within one sweep.
Both components also learn of each other's actions continuously from memwatch's own Events
(:class:`EventHistory`), so neither acts on a pod the other already evicted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from memwatch.observability import Recorder
from memwatch.podindex import PodRecord
from memwatch.policy import Action

DEFER_CHOICES = ("none", "restart", "all")


def _ready_node(pod: Mapping[str, Any]) -> str | None:
    """The node of a Running, Ready, not terminating agent pod; else None."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") != "Running":
        return None
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ()
                if isinstance(c, Mapping))
    node = spec.get("nodeName")
    return str(node) if ready and node else None


class AgentTracker:
    """Nodes with a Ready memwatch agent, fed by a watch on the agent pods (a watcher sink)."""

    def __init__(self, mode: str = "none") -> None:
        if mode not in DEFER_CHOICES:
            raise ValueError(f"--defer-to-agents must be one of {', '.join(DEFER_CHOICES)}, not {mode!r}")
        self.mode = mode
        self._nodes: dict[str, str] = {}  # agent pod UID -> its node, while Ready
        #: The nodes in ``_nodes``, made again on every change to it (an agent pod's, so rarely): the sweep
        #: asks :meth:`defer` of every watched pod, and a scan of ``_nodes`` there cost pods x agents
        #: (10,000 pods, 500 agents: ~60 ms a sweep). Replaced whole, so reading it needs no lock.
        self._covered: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._nodes)

    def upsert(self, pod: Mapping[str, Any]) -> None:
        uid = str((pod.get("metadata") or {}).get("uid", ""))
        node = _ready_node(pod)
        with self._lock:
            if node is None:
                self._nodes.pop(uid, None)
            else:
                self._nodes[uid] = node
            self._covered = frozenset(self._nodes.values())

    def remove(self, pod: Mapping[str, Any]) -> None:
        with self._lock:
            self._nodes.pop(str((pod.get("metadata") or {}).get("uid", "")), None)
            self._covered = frozenset(self._nodes.values())

    def replace(self, pods: Iterable[Mapping[str, Any]], scope: Callable[[Any], bool]) -> None:
        fresh = {str((p.get("metadata") or {}).get("uid", "")): n for p in pods if (n := _ready_node(p))}
        with self._lock:
            self._nodes = fresh
            self._covered = frozenset(fresh.values())

    def nodes(self) -> frozenset[str]:
        return self._covered

    def defer(self, record: PodRecord) -> str | None:
        """Why the controller leaves this pod to its node's agent, or None when the controller acts."""
        if self.mode == "none" or not record.node or record.policy is None:
            return None
        if self.mode == "restart" and record.policy.action is not Action.RESTART:
            return None
        covered = record.node in self._covered  # one hash lookup, whatever the number of agents
        return f"the memwatch agent on node {record.node} handles it" if covered else None


class EventHistory:
    """A watcher sink over memwatch's own Events: every action any replica or agent reports reaches
    the :class:`~memwatch.observability.Recorder`'s memory as it happens (and the initial LIST is the
    history a restarted process loads), the restart budget's count of each workload's actions included
    (:mod:`memwatch.budget`: a re-LIST's Events are not counted twice)."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def upsert(self, event: Mapping[str, Any]) -> None:
        self.count += self.recorder.learn(event)

    def remove(self, event: Mapping[str, Any]) -> None:
        return  # an expired Event does not undo what it recorded

    def replace(self, events: Iterable[Mapping[str, Any]], scope: Callable[[Any], bool]) -> None:
        for event in events:
            self.upsert(event)
