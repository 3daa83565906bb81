"""One pod's lifecycle, shared by the controller's sweep and the node agent's loop. Pure: no I/O.

    IDLE ──over a limit──▶ BREACHING ──for: elapsed──▶ act ──in effect──▶ DONE
      ▲                        │                        │
      └──under every limit─────┴───── PENDING ◀─────────┘ blocked (PDB), failed, throttled, held by a cap,
                                         │  the restart budget or min-pod-age (HELD)
                                         │  retried at ``next_attempt`` on the *current* record
                                         └──under every limit: cancelled (back to IDLE)

The state is keyed by pod UID and kept apart from the watch's pod facts (:class:`~memwatch.podindex.PodRecord`,
immutable, replaced by the watch thread): one :class:`Lifecycle` is owned by one thread, the sweep loop
or the agent's sampling loop. Action results reach it through :meth:`Lifecycle.result`, on that thread.

Every duration is on the monotonic clock (:mod:`memwatch.clock`): ``memwatch.io/for``, retries, the
escalation deadline. A breach lasts only while *consecutive fresh* samples show it: a stale or missing
sample, or a gap longer than ``max_gap`` between observations, starts it again.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from memwatch.clock import Clock
from memwatch.policy import Breach, Policy, Usage, breaches, is_over

#: Results that end a pod's lifecycle: memwatch never acts on that UID again.
FINAL = frozenset({"evicted", "deleted", "escalated", "killed", "gone", "already"})
#: Results that hold an action back without writing (the workload's restart budget is spent, the pod
#: is younger than its min-pod-age): judged again at ``retry_after`` (at most ``retry_max`` later).
HELD = frozenset({"budget-exhausted", "too-young"})


class Phase(enum.StrEnum):
    IDLE = "idle"  # under every limit, or nothing known yet
    BREACHING = "breaching"  # over a limit, waiting out memwatch.io/for (or dry-run reporting)
    PENDING = "pending"  # acted, not in effect yet: retried at next_attempt
    DONE = "done"  # acted (or the pod is gone): never again


class Step(enum.StrEnum):
    """What an observation means for the caller."""

    DONE = "done"  # already acted on: nothing to do
    OK = "ok"  # under every limit
    CLEARED = "cleared"  # under every limit again: a pending action was cancelled
    WAIT = "wait"  # over, but not for memwatch.io/for yet
    HOLD = "hold"  # over, and a retry is scheduled later
    ACT = "act"  # act now


@dataclass(frozen=True, slots=True)
class Trigger:
    """Why memwatch acts: the breach and its timing (wall clock, for the log line and Event)."""

    breach: Breach
    source: str
    sample_time: float  # epoch, when the over-limit sample was taken
    crossed_at: float  # epoch, first over-limit sample of this breach
    detected_at: float  # epoch, when memwatch saw it


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt to act achieved (from the enforcer or the kill rung)."""

    result: str  # evicted, deleted, escalated, killed, gone, blocked, throttled, failed, rate-limited,
    #              would-<verb>, not-leader, waiting, budget-exhausted, too-young
    retry_after: float | None = None  # seconds, when the server said (Retry-After)


@dataclass(slots=True)
class PodLife:
    """The lifecycle state of one pod UID."""

    phase: Phase = Phase.IDLE
    breach_since: float | None = None  # mono: first fresh over-limit observation of this breach
    crossed_at: float | None = None  # wall: that sample's timestamp (for the log line)
    last_seen: float | None = None  # mono: last fresh observation
    usage: Usage | None = None  # the last fresh sample: retries re-decide on it with the current policy
    blocked_since: float | None = None  # mono: first refusal by a PodDisruptionBudget
    next_attempt: float = 0.0  # mono
    failures: int = 0  # consecutive failed attempts
    result: str | None = None  # the final result once DONE
    announced: object = None  # what was last announced for the pod (problems, warnings, protection)


@dataclass(frozen=True, slots=True)
class Retry:
    """Backoff settings for PENDING pods."""

    retry_min: float = 1.0
    retry_max: float = 10.0
    escalation_timeout: float = 60.0


class Lifecycle:
    """The lifecycle of every pod one loop handles, keyed by UID. Not thread-safe by design:
    one thread owns it."""

    def __init__(self, clock: Clock, max_gap: float, retry: Retry | None = None) -> None:
        self.clock = clock
        self.max_gap = max_gap
        self.retry = retry or Retry()
        self._lives: dict[str, PodLife] = {}
        #: The pod's state, or None when it has none (every quiet pod). The dict's own ``get``, not
        #: a method wrapping it: the sweep and the agent ask it of every pod, every pass.
        self.peek: Callable[[str], PodLife | None] = self._lives.get

    def __len__(self) -> int:
        return len(self._lives)

    def get(self, uid: str) -> PodLife:
        life = self._lives.get(uid)
        if life is None:
            life = self._lives[uid] = PodLife()
        return life

    def quiet(self, uid: str) -> bool:
        """Whether the pod has nothing under way: no state yet, or IDLE with no breach and no
        refusal remembered. For such a pod, an observation under every limit changes nothing that
        matters, so :meth:`observe` does not note it."""
        life = self._lives.get(uid)
        return life is None or (life.phase is Phase.IDLE and life.breach_since is None
                                and life.blocked_since is None)

    def forget(self, uid: str) -> None:
        self._lives.pop(uid, None)

    def retain(self, uids: Iterable[str]) -> None:
        """Drop the state of pods that are gone (not in ``uids``): memory stays bounded. With no state
        at all (every pod quiet, the usual case) ``uids`` is not even read."""
        if not self._lives:
            return
        keep = set(uids)
        for uid in [u for u in self._lives if u not in keep]:
            del self._lives[uid]

    # -- observations ----------------------------------------------------------------------------
    def interrupt(self, uid: str) -> None:
        """No fresh sample this time (missing or stale): an ongoing breach does not carry over."""
        life = self._lives.get(uid)
        if life is not None and life.phase is not Phase.DONE:
            life.breach_since = life.crossed_at = None
            if life.phase is Phase.BREACHING:
                life.phase = Phase.IDLE

    def cancel(self, uid: str) -> None:
        """Drop any breach and pending action (the pod is no longer ours to act on)."""
        life = self._lives.get(uid)
        if life is not None and life.phase is not Phase.DONE:
            self._reset(life)

    def observe(self, uid: str, policy: Policy, usage: Usage) -> tuple[Step, Breach | None]:
        """Record a fresh sample and say what to do. The caller acts on ``Step.ACT`` and reports the
        outcome with :meth:`result`.

        A sample under every limit of a pod with nothing under way (:meth:`quiet`) changes nothing
        that matters, so it is answered ``Step.OK`` without noting it: the sweep and the agent ask
        this of every sample of every pod, and most are that."""
        life = self._lives.get(uid)
        if (life is None or (life.phase is Phase.IDLE and life.breach_since is None  # quiet(), inlined:
                             and life.blocked_since is None)) \
                and (usage.total <= policy.under_all or not is_over(policy, usage)):  # every sample
            return Step.OK, None
        if life is None:
            life = self._lives[uid] = PodLife()
        if life.phase is Phase.DONE:
            return Step.DONE, None
        now = self.clock.mono()
        if life.last_seen is not None and now - life.last_seen > self.max_gap:
            life.breach_since = life.crossed_at = None  # a gap: the breach must be seen again
        life.last_seen = now
        life.usage = usage
        return self._judge(life, policy, now)

    def _judge(self, life: PodLife, policy: Policy, now: float) -> tuple[Step, Breach | None]:
        assert life.usage is not None
        over = breaches(policy, life.usage)
        if not over:
            cancelled = life.phase is Phase.PENDING
            self._reset(life)
            return (Step.CLEARED if cancelled else Step.OK), None
        if life.breach_since is None:
            life.breach_since, life.crossed_at = now, life.usage.timestamp
        if now - life.breach_since < policy.for_seconds:
            if life.phase is not Phase.PENDING:
                life.phase = Phase.BREACHING
            return Step.WAIT, over[0]
        if life.phase is Phase.PENDING and now < life.next_attempt:
            return Step.HOLD, over[0]
        if life.phase is not Phase.PENDING:
            life.phase = Phase.BREACHING
        return Step.ACT, over[0]

    @staticmethod
    def _reset(life: PodLife) -> None:
        life.phase = Phase.IDLE
        life.breach_since = life.crossed_at = life.blocked_since = None
        life.next_attempt = 0.0
        life.failures = 0

    # -- retries ---------------------------------------------------------------------------------
    def due(self) -> list[str]:
        """UIDs whose retry is due now and whose last fresh sample is recent enough to act on."""
        now = self.clock.mono()
        return [uid for uid, life in self._lives.items()
                if life.phase is Phase.PENDING and life.next_attempt <= now
                and life.last_seen is not None and now - life.last_seen <= self.max_gap]

    def recheck(self, uid: str, policy: Policy) -> tuple[Step, Breach | None]:
        """A due retry: judge the last fresh sample again against the pod's *current* policy (a raised
        limit or a new action counts at once)."""
        life = self.get(uid)
        if life.phase is Phase.DONE or life.usage is None:
            return Step.DONE, None
        return self._judge(life, policy, self.clock.mono())

    def next_deadline(self) -> float | None:
        """When the earliest retry is due (monotonic), so the loop can wake for it."""
        return min((life.next_attempt for life in self._lives.values() if life.phase is Phase.PENDING),
                   default=None)

    def should_escalate(self, uid: str, escalate: bool) -> bool:
        """Whether a blocked eviction has waited out ``escalation_timeout`` and may become a delete."""
        life = self.get(uid)
        return (escalate and life.blocked_since is not None
                and self.clock.mono() - life.blocked_since >= self.retry.escalation_timeout)

    def blocked_for(self, uid: str) -> float | None:
        life = self._lives.get(uid)
        if life is None or life.blocked_since is None:
            return None
        return self.clock.mono() - life.blocked_since

    def restore_blocked(self, uid: str, first_wall: float) -> None:
        """After a restart: the eviction was first refused at ``first_wall`` (an Event's time), so the
        escalation deadline does not start over. Converted to the monotonic clock once, here."""
        life = self.get(uid)
        if life.blocked_since is None:
            ago = max(0.0, self.clock.wall() - first_wall)
            life.blocked_since = self.clock.mono() - min(ago, self.retry.escalation_timeout)

    # -- outcomes --------------------------------------------------------------------------------
    def result(self, uid: str, outcome: Outcome) -> None:
        """Apply the outcome of an attempt to act."""
        life = self.get(uid)
        now = self.clock.mono()
        r = outcome.result
        if r in FINAL:
            life.phase, life.result = Phase.DONE, r
            life.blocked_since, life.next_attempt = None, 0.0
            return
        if r.startswith("would-") or r in ("not-leader", "waiting", "deferred"):
            return  # nothing was written: decided again on the next sample
        retry = self.retry
        life.phase = Phase.PENDING
        if r == "blocked":
            life.failures = 0
            if life.blocked_since is None:
                life.blocked_since = now
            waited = now - life.blocked_since
            backoff = min(max(retry.retry_min, waited / 2), retry.retry_max)
            deadline = life.blocked_since + retry.escalation_timeout
            life.next_attempt = min(now + backoff, deadline) if now < deadline else now + backoff
        elif r == "throttled":
            life.failures = 0
            wait = outcome.retry_after if outcome.retry_after is not None else retry.retry_min
            life.next_attempt = now + min(max(wait, retry.retry_min), retry.retry_max * 3)
        elif r == "failed":
            life.failures += 1
            life.next_attempt = now + (retry.retry_min if life.failures == 1 else retry.retry_max)
        elif r in HELD:
            # Nothing written: look again when a budget slot frees or the pod is old enough, and at
            # least every retry_max (a raised budget or a changed policy counts soon).
            life.failures = 0
            wait = outcome.retry_after if outcome.retry_after is not None else retry.retry_max
            life.next_attempt = now + min(max(wait, retry.retry_min), retry.retry_max)
        else:  # rate-limited (a cap holds it back) and anything new: back off
            life.failures = 0
            life.next_attempt = now + retry.retry_max

    def mark_done(self, uid: str, result: str) -> None:
        """Memwatch acted on this UID earlier (its Events say so): never again."""
        self.result(uid, Outcome(result if result in FINAL else "already"))
