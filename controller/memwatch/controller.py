"""The cluster controller, assembled: watchers → index → sweep → enforcer, plus leader election.

Plain threads, no asyncio: the official client is synchronous and must never block kopf's event
loop. kopf runs the process (CLI, logging, liveness, startup/cleanup) through :mod:`memwatch.handlers`.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from memwatch.agents import AgentTracker, EventHistory
from memwatch.clock import SYSTEM, Clock
from memwatch.enforcer import Enforcer, EnforcerSettings
from memwatch.kube import Kube, load_client
from memwatch.leader import LeaderElector
from memwatch.observability import HISTORY_SELECTOR, Metrics, Recorder
from memwatch.podindex import PodIndex
from memwatch.policystatus import PolicyStatus
from memwatch.policywatch import PolicyFeed
from memwatch.settings import Settings
from memwatch.sources import UsageSource, make_source
from memwatch.sweep import Sweeper
from memwatch.watcher import PodWatcher, Tee

log = logging.getLogger("memwatch")


def enforcer_settings(settings: Settings) -> EnforcerSettings:
    return EnforcerSettings(dry_run=settings.dry_run, escalation_timeout=settings.escalation_timeout,
                            max_per_minute=settings.max_per_minute,
                            max_per_namespace_per_minute=settings.max_per_namespace_per_minute)


class Controller:
    """`memwatch run`: one in-memory index, one periodic sweep, one bulk usage read per sweep."""

    def __init__(self, settings: Settings, kube: Kube | None = None, source: UsageSource | None = None,
                 metrics: Metrics | None = None, clock: Clock = SYSTEM) -> None:
        self.settings = settings
        self.clock = clock
        self.kube = kube or Kube(load_client(settings.kubeconfig))
        self.metrics = metrics or Metrics()
        identity = settings.pod_name or socket.gethostname()
        self.recorder = Recorder(self.kube, self.metrics, host=identity)
        self.index = PodIndex(settings.defaults, settings.protections.reason)
        scopes: list[str | None] = list(settings.namespaces) or [None]
        self.watchers = [PodWatcher(self.kube, self.index, ns, settings.label_selector) for ns in scopes]
        # MemwatchPolicy/ClusterMemwatchPolicy: the index resolves pods with them (memwatch.policywatch).
        self.policy_feed = PolicyFeed(self.kube, self.index, list(self.watchers), scopes)
        self.policy_status = PolicyStatus(self.kube, self.index, self.policy_feed.policies, clock=clock)
        # memwatch's own Events, followed continuously: the initial LIST is the history a restart
        # needs, and every later action (another replica's, an agent's) is known as it happens.
        self.history = EventHistory(self.recorder)
        self.watchers += [PodWatcher(self.kube, Tee(self.history, self.policy_status), ns,
                                     field_selector=HISTORY_SELECTOR, resource="events")
                          for ns in scopes]
        self.agents = AgentTracker(settings.defer_to_agents)
        if settings.defer_to_agents != "none":
            if not settings.pod_namespace:
                raise ValueError("--defer-to-agents needs $POD_NAMESPACE (the namespace of the agent pods)")
            self.watchers.append(PodWatcher(self.kube, self.agents, settings.pod_namespace, settings.agent_selector,
                                            field_selector="", resource="pods"))
        self.source = source or make_source(
            settings.source, self.kube, settings.namespaces, settings.label_selector,
            kubelet_ca_file=settings.kubelet_ca_file, kubelet_insecure_tls=settings.kubelet_insecure_tls,
            kubelet_address_types=settings.kubelet_preferred_address_types)
        self.leader: LeaderElector | None = None
        if settings.leader_elect:
            if not settings.leader_election_namespace:
                raise ValueError("--leader-elect needs --leader-election-namespace or $POD_NAMESPACE")
            self.leader = LeaderElector(self.kube, settings.leader_election_namespace,
                                        settings.leader_election_name, identity, clock=clock,
                                        on_change=lambda v: self.metrics.leader.set(int(v)))
        else:
            self.metrics.leader.set(1)
        self.enforcer = Enforcer(self.kube, self.recorder, enforcer_settings(settings), clock=clock,
                                 may_write=self._may_write)
        self.sweeper = Sweeper(self.index, self.source, self.enforcer, self.recorder,
                               interval=settings.interval, max_sample_age=settings.max_sample_age,
                               clock=clock, is_leader=self._may_act,
                               defer=None if self.agents.mode == "none" else self.agents.defer)
        self.started = time.monotonic()
        self.first_sweep: float | None = None

    def _may_write(self) -> bool:
        """The fence before every write: still the leader, and the index still in sync."""
        if self.leader is not None and not self.leader.may_write():
            return False
        return all(w.in_sync() for w in self.watchers) and self.policy_feed.current()

    def _may_act(self) -> bool:
        """Sweep only as the leader, while every watch is in sync and memwatch's history is known."""
        if self.leader is not None and not self.leader.is_leader():
            return False
        if not all(w.in_sync() for w in self.watchers) or not self.policy_feed.current():
            return False
        if self.first_sweep is None:
            self.first_sweep = time.monotonic() - self.started
            log.info("ready: first sweep %.2fs after start, watched=%d earlier_events=%d source=%s "
                     "interval=%.1fs dry_run=%s defer_to_agents=%s", self.first_sweep, len(self.index),
                     len(self.history), self.settings.source, self.settings.interval, self.settings.dry_run,
                     self.settings.defer_to_agents)
        return True

    def start(self) -> None:
        self.metrics.serve(self.settings.metrics_port)
        self.policy_feed.start()
        for w in self.watchers:
            w.start()
        if self.leader is not None:
            self.leader.start()
        self.sweeper.start()
        self.policy_status.start(lambda: self._may_act() and self._may_write())

    def stop(self) -> None:
        """Stop sweeping, then release the Lease so a successor takes over at its next retry."""
        self.sweeper.stop()  # joins the sweep thread: no write can follow the lease's release
        if self.leader is not None:
            self.leader.stop()
        self.policy_status.stop()
        self.policy_feed.stop()
        for w in self.watchers:
            w.stop()

    def health(self) -> dict[str, Any]:
        """For kopf's liveness probe. Raises when the sweep loop is stuck."""
        beat = self.sweeper.heartbeat
        stalled = time.monotonic() - beat
        if stalled > 3 * self.settings.interval + 60:
            raise RuntimeError(f"sweep loop stalled for {stalled:.0f}s")
        last = self.sweeper.last
        return {
            "watched": len(self.index),
            "synced": all(w.synced.is_set() for w in self.watchers),
            "leader": self.leader is None or self.leader.is_leader(),
            "sweeps": self.sweeper.sweeps,
            "last_sweep_seconds": None if last is None else round(last.duration, 4),
        }
