"""Time, split by job: a wall clock for what is compared with other machines, a monotonic one for the rest.

* ``wall()`` (epoch seconds): the age of a usage sample (its timestamp comes from another machine),
  Event times, log-line timestamps. It can step: NTP, a VM resumed, an operator's ``date -s``.
* ``mono()`` (seconds since an arbitrary start, never steps): every duration and schedule in
  memwatch: sweeps, ``memwatch.io/for``, retries and escalation deadlines, the kill rung's
  ``--kill-after``, rate caps, and leader-election leases (client-go's rule: never compare another
  machine's timestamps with your own clock; time how long *you* have seen a record unchanged).

One :class:`Clock` is injected everywhere so tests can step either clock on its own.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """The two clocks memwatch uses."""

    def wall(self) -> float:
        """Epoch seconds; may step."""
        ...

    def mono(self) -> float:
        """Monotonic seconds; never steps, so durations and schedules use it."""
        ...


class SystemClock:
    """The process's real clocks."""

    def wall(self) -> float:
        return time.time()

    def mono(self) -> float:
        return time.monotonic()


SYSTEM = SystemClock()


class ManualClock:
    """A clock that moves only when told to (tests, fault injection).

    :meth:`advance` moves both clocks as real time passing would; :meth:`step_wall` moves only the
    wall clock, as an NTP step or a skewed machine does.
    """

    def __init__(self, wall: float = 1_700_000_000.0, mono: float = 1000.0) -> None:
        self._wall = wall
        self._mono = mono

    def wall(self) -> float:
        return self._wall

    def mono(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> float:
        """Let ``seconds`` pass; returns the new wall time."""
        self._wall += seconds
        self._mono += seconds
        return self._wall

    def step_wall(self, seconds: float) -> None:
        """Step the wall clock only (forward or back)."""
        self._wall += seconds


class SkewedClock:
    """The system clocks with the wall clock offset by ``skew`` seconds (fault injection: a replica
    whose clock is wrong). The monotonic clock is the real one."""

    def __init__(self, skew: float) -> None:
        self.skew = skew

    def wall(self) -> float:
        return time.time() + self.skew

    def mono(self) -> float:
        return time.monotonic()
