"""The node's memory signals, for the node guard (:mod:`memwatch.nodeguard`): read once per agent sample.

* ``kubepods`` (v1) or ``kubepods.slice`` (v2), the parent of every pod cgroup: its working set
  (usage minus inactive file, as the kubelet computes it) against its hard limit, which exists when the
  kubelet enforces node allocatable on pods (``enforceNodeAllocatable: [pods]``). Read through a
  :class:`~memwatch.cgroups.CgroupReader` kept open.
* ``MemAvailable`` and ``MemTotal`` of the node, through psutil.
* Pressure stall information: ``/proc/pressure/memory`` (``some``/``full`` ``avg10``, ``avg60`` and the
  ``total`` stall counter in microseconds) and, on v2, the kubepods cgroup's own ``memory.pressure``.

Wake-ups between samples: a v1 eventfd threshold on the kubepods ``memory.usage_in_bytes``
(:meth:`CgroupReader.watch_thresholds`, needs a writable ``cgroup.event_control``) and a PSI trigger on
``/proc/pressure/memory`` where the kernel accepts one. Where either is refused (read-only mount, or
EINVAL from a kernel without PSI triggers for unprivileged writers), :meth:`NodeSignalReader.arm` says
so once in the log and the guard samples only.

Every read failure is reported once and never raised: a node whose files cannot be read has a guard
that sees no signal (and does nothing), never an agent that stops sampling its pods.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from memwatch.cgroups import CgroupError, CgroupReader, Hierarchy, Unreadable, Vanished, discover_bases, parse_stat

log = logging.getLogger("memwatch.nodeguard")

#: How often a missing kubepods cgroup is looked for again.
REDISCOVER_SECONDS = 30.0
#: The PSI trigger asked for when arming: wake when ``full`` stalls reach 100 ms within 1 s.
PSI_TRIGGER = b"full 100000 1000000\x00"


@dataclass(frozen=True, slots=True)
class Psi:
    """One memory pressure reading (``/proc/pressure/memory`` or a v2 cgroup's ``memory.pressure``)."""

    some_avg10: float
    some_avg60: float
    some_total: int  # microseconds
    full_avg10: float
    full_avg60: float
    full_total: int  # microseconds


def parse_psi(text: str) -> Psi:
    """Parse the PSI format (``some avg10=0.00 avg60=0.00 avg300=0.00 total=0`` and a ``full`` line).

    Raises :class:`Unreadable` on anything else. A kernel with only a ``some`` line (the CPU's old
    format) gives ``full`` as zeros.
    """
    values: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        kind, _, rest = line.strip().partition(" ")
        if kind in ("some", "full"):
            values[kind] = dict(part.split("=", 1) for part in rest.split() if "=" in part)
    if "some" not in values:
        raise Unreadable(f"not a pressure stall file: {text[:60]!r}")
    full = values.get("full", {})
    try:
        return Psi(float(values["some"]["avg10"]), float(values["some"]["avg60"]), int(values["some"]["total"]),
                   float(full.get("avg10", 0)), float(full.get("avg60", 0)), int(full.get("total", 0)))
    except (KeyError, ValueError):
        raise Unreadable(f"garbled pressure stall file: {text[:120]!r}") from None


@dataclass(frozen=True, slots=True)
class NodeSignals:
    """One reading of the node's memory signals. Absent figures are None (not read, not there)."""

    timestamp: float
    mem_total: int | None = None
    mem_available: int | None = None
    kubepods_usage: int | None = None  # working set of kubepods
    kubepods_limit: int | None = None  # None: no hard limit (node allocatable not enforced on pods)
    psi: Psi | None = None  # the node's
    kubepods_psi: Psi | None = None  # v2 only

    @property
    def kubepods_available(self) -> int | None:
        """What kubepods may still take before its hard limit, or None when it has none."""
        if self.kubepods_limit is None or self.kubepods_usage is None:
            return None
        return self.kubepods_limit - self.kubepods_usage

    @property
    def available(self) -> int | None:
        """The tighter of the node's MemAvailable and kubepods' room under its limit."""
        found = [v for v in (self.mem_available, self.kubepods_available) if v is not None]
        return min(found) if found else None

    @property
    def psi_full_avg10(self) -> float | None:
        """The worse ``full avg10`` of the node's and kubepods' pressure."""
        found = [p.full_avg10 for p in (self.psi, self.kubepods_psi) if p is not None]
        return max(found) if found else None


def _virtual_memory() -> tuple[int, int]:
    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


class NodeSignalReader:
    """Reads :class:`NodeSignals` with descriptors kept open; never raises from :meth:`read`."""

    def __init__(self, hierarchy: Hierarchy, proc: Path = Path("/proc"),
                 meminfo: Callable[[], tuple[int, int]] = _virtual_memory,
                 clock: Callable[[], float] = time.time, psi_trigger: bool = True) -> None:
        self.hierarchy = hierarchy
        self.psi_trigger = psi_trigger  # tests with a fake /proc say False: a plain file accepts any write
        self.proc = proc
        self.meminfo = meminfo
        self.clock = clock
        self.kubepods: CgroupReader | None = None
        self.kubepods_path: Path | None = None
        self._looked = -1e18
        self._limit: int | None = None
        self._psi_fd: int | None = None
        self._cg_psi_fd: int | None = None
        self._said: set[str] = set()
        self.trigger_fd: int | None = None  # an accepted PSI trigger (POLLPRI)
        self.armed_usage: tuple[int, ...] | None = None  # the v1 kubepods thresholds registered

    # -- once-per-problem logging ------------------------------------------------------------------
    def _once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(message, *args)

    # -- kubepods ----------------------------------------------------------------------------------
    def _find_kubepods(self) -> None:
        now = time.monotonic()
        if self.kubepods is not None or now - self._looked < REDISCOVER_SECONDS:
            return
        self._looked = now
        bases = sorted(discover_bases(self.hierarchy.memory_root), key=lambda p: len(p.parts))
        if not bases:
            self._once("no-kubepods", "node guard: no kubepods cgroup under %s; using the node's MemAvailable "
                       "and pressure only", self.hierarchy.memory_root)
            return
        try:
            self.kubepods = CgroupReader(bases[0], self.hierarchy, self.clock)
            self.kubepods_path = bases[0]
        except CgroupError as exc:
            self._once("kubepods-open", "node guard: cannot open %s (%s); retrying every %.0fs",
                       bases[0], exc, REDISCOVER_SECONDS)
            return
        if self.hierarchy.version == 2:
            with contextlib.suppress(OSError):
                self._cg_psi_fd = os.open(bases[0] / "memory.pressure", os.O_RDONLY | os.O_CLOEXEC)

    def _read_kubepods(self) -> tuple[int | None, int | None, Psi | None]:
        self._find_kubepods()
        reader = self.kubepods
        if reader is None:
            return None, None, None
        try:
            usage = reader.read(fresh=True).working_set
            self._limit = reader.hard_limit()  # every sample: ~10 us, and the kubelet may resize kubepods
        except (Vanished, Unreadable) as exc:
            self._once(f"kubepods-read:{exc}", "node guard: cannot read %s: %s (said once)", reader.path, exc)
            self._close_kubepods()
            return None, None, None
        psi = None
        if self._cg_psi_fd is not None:
            psi = self._read_psi(self._cg_psi_fd, "kubepods-psi")
        return usage, self._limit, psi

    def _close_kubepods(self) -> None:
        if self.kubepods is not None:
            self.kubepods.close()
        self.kubepods = None
        self.armed_usage = None
        if self._cg_psi_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._cg_psi_fd)
            self._cg_psi_fd = None

    # -- PSI ----------------------------------------------------------------------------------------
    def _read_psi(self, fd: int, what: str) -> Psi | None:
        try:
            return parse_psi(os.pread(fd, 512, 0).decode("ascii", "replace"))
        except (OSError, Unreadable) as exc:
            self._once(what, "node guard: cannot read pressure stall information (%s): %s (said once)", what, exc)
            return None

    def _node_psi(self) -> Psi | None:
        if self._psi_fd is None:
            if "psi-open" in self._said:
                return None
            try:
                self._psi_fd = os.open(self.proc / "pressure" / "memory", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                self._once("psi-open", "node guard: no pressure stall information at %s (%s); "
                           "MemAvailable and kubepods only", self.proc / "pressure" / "memory", exc.strerror)
                return None
        return self._read_psi(self._psi_fd, "node-psi")

    # -- reading ----------------------------------------------------------------------------------
    def read(self) -> NodeSignals:
        """Every signal now. Never raises."""
        now = self.clock()
        total: int | None
        avail: int | None
        try:
            total, avail = self.meminfo()
        except (OSError, psutil.Error, ValueError) as exc:
            self._once("meminfo", "node guard: cannot read MemAvailable: %s (said once)", exc)
            total = avail = None
        usage, limit, cg_psi = self._read_kubepods()
        return NodeSignals(now, total, avail, usage, limit, self._node_psi(), cg_psi)

    # -- kernel notifications ------------------------------------------------------------------------
    def arm(self, kubepods_usage: tuple[int, ...] | None) -> list[tuple[int, int]]:
        """Register kernel wake-ups; returns ``(fd, poll mask)`` pairs to poll (POLLIN=1, POLLPRI=2).

        ``kubepods_usage``: the kubepods usages at which v1 should wake us (the soft and the hard
        line: between them a fast leak leaves a few samples at most), or None. A PSI trigger is
        tried once; refusals are said once and leave sampling alone.
        """
        fds: list[tuple[int, int]] = []
        reader = self.kubepods
        if reader is not None and self.hierarchy.version == 1 and kubepods_usage:
            if self.armed_usage != kubepods_usage and "kubepods-eventfd" not in self._said:
                try:
                    reader.watch_thresholds(kubepods_usage)
                    self.armed_usage = kubepods_usage
                except (Vanished, Unreadable) as exc:
                    self._once("kubepods-eventfd", "node guard: no kernel threshold notification on %s (%s); "
                               "sampling it every agent sample instead", reader.path, exc)
            fds += [(fd, 1) for fd in reader.events]
        if self.psi_trigger and self.trigger_fd is None and "psi-trigger" not in self._said:
            path = self.proc / "pressure" / "memory"
            fd = -1
            try:
                fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
                os.write(fd, PSI_TRIGGER)
                self.trigger_fd = fd
                self._said.add("psi-trigger")
                log.info("node guard: PSI trigger armed on %s (%s)", path, PSI_TRIGGER.rstrip(b"\x00").decode())
            except OSError as exc:
                if fd >= 0:
                    os.close(fd)
                why = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                self._once("psi-trigger", "node guard: the kernel refused a PSI trigger on %s (%s: %s); "
                           "falling back to sampling it every agent sample", path, why, exc.strerror)
        if self.trigger_fd is not None:
            fds.append((self.trigger_fd, 2))
        return fds

    def close(self) -> None:
        self._close_kubepods()
        for fd in (self._psi_fd, self.trigger_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._psi_fd = self.trigger_fd = None


def pod_working_set(path: Path, hierarchy: Hierarchy) -> int | None:
    """One pod cgroup's working set, read fresh (open, read, close), or None when gone or unreadable."""
    try:
        reader = CgroupReader(path, hierarchy)
    except CgroupError:
        return None
    try:
        return reader.read(fresh=True).working_set
    except CgroupError:
        return None
    finally:
        reader.close()


def oom_kills(cgroup: Path, hierarchy: Hierarchy, max_cgroups: int = 4096) -> int | None:
    """The kernel's OOM kill count in a cgroup and every cgroup below it (v1 ``memory.oom_control``, v2
    ``memory.events``). v1 counts a kill only in the victim's own cgroup (a pod's, not kubepods'), so the
    subtree is summed; v2's ``memory.events`` is hierarchical already, so only ``cgroup`` is read there.
    None when ``cgroup`` itself cannot be read."""
    name = "memory.oom_control" if hierarchy.version == 1 else "memory.events"
    try:
        total = parse_stat((cgroup / name).read_text(), "oom_kill") or 0
    except (OSError, Unreadable):
        return None
    if hierarchy.version == 2:
        return total
    seen = 0
    for top, dirs, _ in os.walk(cgroup):
        for d in dirs:
            seen += 1
            if seen > max_cgroups:
                return total
            with contextlib.suppress(OSError, Unreadable):
                total += parse_stat((Path(top) / d / name).read_text(), "oom_kill") or 0
    return total
