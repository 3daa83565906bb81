"""Keeps a pod index resolved with the live policies: the policy and namespace watches, and the
re-list of the pod watches when what a pod resolves to may have changed.

One class for the controller and the node agent alike. The policies come from their own LIST+WATCH
(one per kind; MemwatchPolicy per watched namespace, ClusterMemwatchPolicy and Namespaces
cluster-wide), into a :class:`~memwatch.policyset.Policies`. On every change that can alter a pod's
resolution, the index gets the new :class:`~memwatch.policyset.PolicySet` and every pod watch
re-lists (one paged LIST each): pods a new policy selects are added, pods a deleted policy alone
selected are dropped, without keeping anything of the unwatched pods in memory.

Nothing is acted on while the pod index lags the policies (:meth:`PolicyFeed.current`): an
annotated pod whose policy says ``dry-run`` is never evicted because the policy arrived a moment
after the pod.
"""

from __future__ import annotations

import logging

from memwatch.kube import Kube
from memwatch.policyset import API_VERSION, CLUSTER, NAMESPACED, PLURALS, Policies, PolicySet
from memwatch.watcher import PodWatcher

log = logging.getLogger("memwatch.policies")

API = f"/apis/{API_VERSION}"


class PolicyFeed:
    """The policy watches of one process, feeding ``index`` and re-listing ``pod_watchers``."""

    def __init__(self, kube: Kube, index: object, pod_watchers: list[PodWatcher],
                 namespaces: list[str | None]) -> None:
        self.index = index
        self.pod_watchers = pod_watchers
        self.policies = Policies()
        self.policies.callbacks.append(self._changed)
        self.watchers = [PodWatcher(kube, self.policies.namespaced, ns, field_selector="",
                                    resource=PLURALS[NAMESPACED], api=API, optional=True) for ns in namespaces]
        self.watchers += [
            PodWatcher(kube, self.policies.cluster, None, field_selector="", resource=PLURALS[CLUSTER], api=API,
                       optional=True),
            PodWatcher(kube, self.policies.namespaces, None, field_selector="", resource="namespaces",
                       optional=True),
        ]

    def _changed(self, snapshot: PolicySet) -> None:
        setattr(self.index, "policies", snapshot)  # noqa: B010 (the index's public attribute)
        for w in self.pod_watchers:  # their sinks too (the node guard's view of the node's pods)
            if hasattr(w.index, "policies"):
                w.index.policies = snapshot
        log.info("policies changed: %d valid (generation %d); re-listing pods", len(snapshot), snapshot.generation)
        for w in self.pod_watchers:
            w.request_relist()

    def current(self, fresh: bool = True) -> bool:
        """Every policy watch listed (and, with ``fresh``, in sync now), and every pod watch listed
        with the policies as they are. The node agent asks without ``fresh``: it keeps acting on the
        policies it knows through an API outage, as it does on the pods it knows."""
        generation = self.policies.generation
        listed = all((w.in_sync() if fresh else w.synced.is_set()) for w in self.watchers)
        return listed and all(w.policy_generation == generation for w in self.pod_watchers)

    def start(self) -> None:
        for w in self.watchers:
            w.start()

    def stop(self) -> None:
        for w in self.watchers:
            w.stop()
