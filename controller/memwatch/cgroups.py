"""Pod memory straight from the node's cgroup files: the node agent's usage source and kill rung.

* Where: :class:`Hierarchy` detects cgroup v1 or v2 under ``--cgroup-root``; :func:`pod_cgroup_candidates`
  names a pod's cgroup by UID for both kubelet cgroup drivers (``cgroupfs``: ``kubepods/burstable/pod<uid>``;
  ``systemd``: ``kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice``);
  :func:`find_container_cgroup` finds a container's cgroup by its CRI id (``<id>``, ``cri-containerd-<id>.scope``,
  ``docker-<id>.scope``, ``crio-<id>.scope``).
* What: the kubelet's working set, ``memory.usage_in_bytes - total_inactive_file`` (v1) or
  ``memory.current - inactive_file`` (v2), read with ``pread`` on descriptors kept open (measured here:
  2 us per usage read, 19 us per ``memory.stat`` read; re-opening costs 49 us). ``memory.stat`` is the
  expensive part, so it is re-read every sample only for cgroups near a threshold (:class:`CgroupReader`).
* When: kernel notifications wake the agent between samples: v1 ``cgroup.event_control`` thresholds on
  ``memory.usage_in_bytes`` through an eventfd, v2 ``memory.events`` changes (POLLPRI).
* Kill: SIGKILL every process in the container's ``cgroup.procs`` (or ``cgroup.kill`` on v2), with
  psutil's top processes by RSS for the log line.

A cgroup that disappears mid-read (the pod or container ended) raises :class:`Vanished`, which is not
an error. Unreadable or garbled files raise :class:`Unreadable`; the caller reports those once per pod.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from memwatch.podindex import PodRecord
from memwatch.policy import Usage

log = logging.getLogger("memwatch.cgroups")

#: errno values meaning "this cgroup is gone" (removed directory, or a file of a removed cgroup).
_GONE = frozenset({errno.ENOENT, errno.ENODEV, errno.ESRCH, errno.ENOTDIR})
#: Pod cgroups live under one of these, directly below the memory root or a bounded depth under it.
_KUBEPODS = ("kubepods", "kubepods.slice")
_QOS = ("burstable", "besteffort")
#: Re-read memory.stat every sample once the estimate is above this fraction of the lowest threshold.
STAT_GATE = 0.5
#: Below the gate, memory.stat (the inactive-file figure) is refreshed every this many samples.
STAT_EVERY = 10


class CgroupError(Exception):
    """Base of the cgroup reader's errors."""


class Vanished(CgroupError):
    """The cgroup no longer exists: the pod or container ended. Not an error."""


class Unreadable(CgroupError):
    """A cgroup file could not be read or parsed (permissions, garbled content)."""


# ---------------------------------------------------------------------------------------------
# Where: hierarchy, pod and container cgroups


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """The cgroup memory hierarchy: its version and the directory holding its root cgroup."""

    version: int  # 1 or 2
    memory_root: Path

    @classmethod
    def detect(cls, cgroup_root: str | os.PathLike[str]) -> Hierarchy:
        """v1 when a ``memory`` controller hierarchy is mounted (also on hybrid hosts), else v2.

        Raises :class:`CgroupError` naming what was looked for when neither is there.
        """
        root = Path(cgroup_root)
        if (root / "memory" / "memory.usage_in_bytes").exists() or (root / "memory" / "memory.stat").exists():
            return cls(1, root / "memory")
        for candidate in (root, root / "unified"):
            controllers = candidate / "cgroup.controllers"
            with contextlib.suppress(OSError):
                if "memory" in controllers.read_text().split():
                    return cls(2, candidate)
        raise CgroupError(f"no cgroup memory controller under {root}: neither {root}/memory/memory.usage_in_bytes "
                          f"(v1) nor 'memory' in {root}/cgroup.controllers (v2)")

    @property
    def usage_file(self) -> str:
        return "memory.usage_in_bytes" if self.version == 1 else "memory.current"

    @property
    def inactive_key(self) -> str:
        # v1's total_* figures include descendant cgroups, like v2's do by default.
        return "total_inactive_file" if self.version == 1 else "inactive_file"

    @property
    def limit_file(self) -> str:
        return "memory.limit_in_bytes" if self.version == 1 else "memory.max"


def pod_cgroup_candidates(uid: str, qos_class: str | None = None) -> list[str]:
    """The pod's cgroup directory relative to a kubepods base, for both drivers, likeliest first.

    ``cgroupfs``: ``burstable/pod<uid>`` (Guaranteed pods sit directly in ``kubepods``).
    ``systemd``: ``kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice``, dashes in the UID
    turned into underscores because systemd reads a dash as a slice separator.
    """
    u_ = uid.replace("-", "_")
    qos = (qos_class or "").lower()
    order = [q for q in ("", *_QOS) if q == ("" if qos == "guaranteed" else qos)]
    order += [q for q in ("burstable", "besteffort", "") if q not in order]
    out: list[str] = []
    for q in order:
        out.append(f"{q}/pod{uid}" if q else f"pod{uid}")
        out.append(f"kubepods-{q}.slice/kubepods-{q}-pod{u_}.slice" if q else f"kubepods-pod{u_}.slice")
    return out


def container_id(cri_id: str) -> str:
    """``containerd://abc…`` → ``abc…`` (the runtime prefix is not part of the cgroup name)."""
    return cri_id.split("://", 1)[-1]


def container_dir_matches(name: str, cid: str) -> bool:
    """Whether a child directory of a pod cgroup is the container ``cid``, for every runtime's naming:
    ``<id>`` (cgroupfs), ``cri-containerd-<id>.scope``, ``docker-<id>.scope``, ``crio-<id>.scope``."""
    base = name.removesuffix(".scope")
    return bool(cid) and (base == cid or base.endswith("-" + cid))


def find_container_cgroup(pod_dir: Path, cri_id: str) -> Path | None:
    """The container's cgroup under its pod's cgroup, or None when it is not (or no longer) there."""
    cid = container_id(cri_id)
    direct = pod_dir / cid
    if direct.is_dir():
        return direct
    try:
        with os.scandir(pod_dir) as it:
            for entry in it:
                if entry.is_dir() and container_dir_matches(entry.name, cid):
                    return Path(entry.path)
    except OSError:
        return None
    return None


def discover_bases(memory_root: Path, max_depth: int = 3) -> list[Path]:
    """Every ``kubepods``/``kubepods.slice`` directory within ``max_depth`` of the memory root.

    Usually just one, right under the root; a kubelet ``--cgroup-root`` or a node running inside a
    container (kind) nests it deeper. Bounded so that it stays cheap on a busy node.
    """
    found: list[Path] = []
    level = [memory_root]
    for _ in range(max_depth + 1):
        nxt: list[Path] = []
        for d in level:
            try:
                with os.scandir(d) as it:
                    for entry in it:
                        if not entry.is_dir(follow_symlinks=False):
                            continue
                        if entry.name in _KUBEPODS:
                            found.append(Path(entry.path))
                        elif not entry.name.startswith(("pod", "kubepods-")):
                            nxt.append(Path(entry.path))
            except OSError:
                continue
        level = nxt
    return found


def parse_stat(text: str, key: str) -> int | None:
    """One value of ``memory.stat`` (``key value`` lines), or None if absent.

    Raises :class:`Unreadable` when the line is there but its value is not a number.
    """
    start = 0
    while True:
        i = text.find(key + " ", start)
        if i < 0:
            return None
        if i == 0 or text[i - 1] == "\n":
            end = text.find("\n", i)
            raw = text[i + len(key) + 1: end if end >= 0 else len(text)]
            try:
                return int(raw)
            except ValueError:
                raise Unreadable(f"memory.stat {key}={raw.strip()!r} is not a number") from None
        start = i + 1


def working_set(usage: int, inactive_file: int) -> int:
    """The kubelet's working set: usage minus the inactive file cache, never below zero."""
    return max(0, usage - inactive_file)


# ---------------------------------------------------------------------------------------------
# What: one cgroup's working set, read cheaply


@dataclass(slots=True)
class Sample:
    """One read of one cgroup: raw usage, working set, and whether the inactive-file figure was fresh."""

    usage: int
    working_set: int
    fresh: bool
    timestamp: float


def _pread(fd: int, size: int = 65536) -> bytes:
    try:
        return os.pread(fd, size, 0)
    except OSError as exc:
        if exc.errno in _GONE:
            raise Vanished(str(exc)) from None
        raise Unreadable(str(exc)) from None


class CgroupReader:
    """One cgroup (a container's or a pod's), with its files kept open.

    ``memory.stat`` costs ten times the usage file, so :meth:`read` refreshes the inactive-file figure
    every sample only when the estimate is at or above :data:`STAT_GATE` of ``gate_bytes`` (the lowest
    threshold that matters for this cgroup), or when asked (``fresh=True``, before any action), and
    every :data:`STAT_EVERY` samples otherwise. A decision to act is never made on a stale figure:
    the caller asks for a fresh read first.
    """

    def __init__(self, path: Path, hierarchy: Hierarchy, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.hierarchy = hierarchy
        self.clock = clock
        self.gate_bytes: int | None = None
        self._inactive = 0
        self._since_stat = STAT_EVERY  # first read always reads memory.stat
        self.thresholds: tuple[int, ...] | None = None  # what the kernel was asked to report
        self.events: list[int] = []  # eventfds registered for this cgroup (v1 thresholds)
        self.events_fd: int | None = None  # v2: memory.events, polled for POLLPRI
        self._usage_fd = self._open(hierarchy.usage_file)
        try:
            self._stat_fd = self._open("memory.stat")
        except CgroupError:
            os.close(self._usage_fd)
            raise

    def _open(self, name: str) -> int:
        try:
            return os.open(self.path / name, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in _GONE:
                raise Vanished(f"{self.path / name}: {exc.strerror}") from None
            raise Unreadable(f"{self.path / name}: {exc.strerror}") from None

    def usage(self) -> int:
        raw = _pread(self._usage_fd, 64)
        if not raw:
            # A removed v1 cgroup's open file reads empty rather than failing.
            if not self.path.exists():
                raise Vanished(str(self.path))
            raise Unreadable(f"{self.path / self.hierarchy.usage_file}: empty")
        try:
            return int(raw)
        except ValueError:
            raise Unreadable(f"{self.path / self.hierarchy.usage_file}: {raw[:40]!r} is not a number") from None

    def inactive_file(self) -> int:
        text = _pread(self._stat_fd).decode("ascii", "replace")
        if not text and not self.path.exists():
            raise Vanished(str(self.path))
        value = parse_stat(text, self.hierarchy.inactive_key)
        if value is None:
            raise Unreadable(f"{self.path}/memory.stat has no {self.hierarchy.inactive_key}")
        self._inactive = value
        self._since_stat = 0
        return value

    def read(self, fresh: bool = False) -> Sample:
        """The working set now. Raises :class:`Vanished` or :class:`Unreadable`."""
        now = self.clock()
        usage = self.usage()
        self._since_stat += 1
        estimate = working_set(usage, self._inactive)
        gate = self.gate_bytes
        if fresh or self._since_stat >= STAT_EVERY or gate is None or estimate >= gate * STAT_GATE:
            self.inactive_file()
            return Sample(usage, working_set(usage, self._inactive), True, now)
        return Sample(usage, estimate, False, now)

    def hard_limit(self) -> int | None:
        """The cgroup's own hard limit (``memory.limit_in_bytes``/``memory.max``), None when unlimited."""
        try:
            raw = (self.path / self.hierarchy.limit_file).read_text().strip()
        except OSError:
            return None
        if raw == "max" or not raw.isdigit():
            return None
        value = int(raw)
        return None if value >= (1 << 62) else value

    # -- notifications -------------------------------------------------------------------------
    def watch_thresholds(self, thresholds: Iterable[int]) -> list[int]:
        """Ask the kernel to wake us when usage crosses any of ``thresholds``; returns fds to poll.

        v1: one eventfd per threshold through ``cgroup.event_control`` (needs write access there; on a
        read-only mount this raises :class:`Unreadable` and the agent polls only). v2: ``memory.events``,
        which the kernel marks changed when the cgroup hits ``memory.high`` or ``memory.max``.
        Replaces earlier registrations (closing a v1 eventfd unregisters it).
        """
        self.unwatch()
        wanted = tuple(sorted(set(thresholds)))
        if self.hierarchy.version == 2:
            self.events_fd = self._open("memory.events")
            self.thresholds = wanted
            return [self.events_fd]
        control = self.path / "cgroup.event_control"
        try:
            for threshold in wanted:
                efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                self.events.append(efd)
                with open(control, "w") as f:
                    f.write(f"{efd} {self._usage_fd} {threshold}")
        except OSError as exc:
            self.unwatch()
            if exc.errno in _GONE:
                raise Vanished(str(exc)) from None
            raise Unreadable(f"{control}: {exc.strerror}") from None
        self.thresholds = wanted
        return list(self.events)

    def unwatch(self) -> None:
        self.thresholds = None
        for fd in self.events:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.events = []
        if self.events_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.events_fd)
            self.events_fd = None

    def close(self) -> None:
        self.unwatch()
        for fd in (self._usage_fd, self._stat_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the kill rung -------------------------------------------------------------------------
    def procs(self) -> list[int]:
        """PIDs (in the host's PID namespace) of every process in this cgroup."""
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            raise Vanished(str(self.path)) from None
        except (OSError, ValueError) as exc:
            raise Unreadable(f"{self.path}/cgroup.procs: {exc}") from None

    def kill(self, rounds: int = 5) -> int:
        """SIGKILL every process in the cgroup (``cgroup.kill`` on v2 where the kernel has it).

        Repeats while processes remain, since one may fork between reading the list and the signal.
        Returns how many processes were signalled (1 for ``cgroup.kill``).
        """
        if self.hierarchy.version == 2 and (self.path / "cgroup.kill").exists():
            try:
                (self.path / "cgroup.kill").write_text("1")
                return 1
            except OSError as exc:
                log.warning("cgroup.kill failed in %s (%s); signalling each process", self.path, exc)
        signalled: set[int] = set()
        for _ in range(rounds):
            pids = [p for p in self.procs() if p not in signalled]
            if not pids:
                break
            for pid in pids:
                signalled.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0)  # let the kernel reap before looking again
        return len(signalled)


@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    name: str
    rss: int

    def __str__(self) -> str:
        return f"{self.name}({self.pid}):{self.rss >> 20}Mi"


def top_processes(pids: Sequence[int], n: int = 3, max_examined: int = 64) -> list[Proc]:
    """The ``n`` largest processes by RSS (psutil), for the kill log line. Never raises."""
    found: list[Proc] = []
    for pid in pids[:max_examined]:
        try:
            p = psutil.Process(pid)
            found.append(Proc(pid, p.name(), p.memory_info().rss))
        except (psutil.Error, OSError):
            continue
    found.sort(key=lambda p: p.rss, reverse=True)
    return found[:n]


# ---------------------------------------------------------------------------------------------
# The usage source


@dataclass(slots=True)
class PodCgroups:
    """The cgroups of one pod, as last resolved from its container IDs."""

    key: tuple[tuple[str, str], ...]  # the record's container_ids they were resolved from
    pod_dir: Path | None
    containers: dict[str, CgroupReader] = field(default_factory=dict)
    pod: CgroupReader | None = None  # read only when no container cgroup is known yet

    def readers(self) -> list[CgroupReader]:
        return [*self.containers.values(), *([self.pod] if self.pod is not None else [])]

    def close(self) -> None:
        for r in self.readers():
            r.close()


Locator = Callable[[PodRecord], tuple[Path | None, dict[str, Path]]]


class CgroupSource:
    """Working set of the node's watched pods from their cgroups: the node agent's usage source.

    Implements :class:`memwatch.sources.UsageSource`. Container cgroups are found through the CRI
    container IDs in the pod status; until a pod has one, its pod cgroup is read instead. Cgroups
    that vanish drop out silently; unreadable ones are logged once per pod (``problems``).
    """

    name = "cgroup"

    def __init__(self, hierarchy: Hierarchy, locate: Locator | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.hierarchy = hierarchy
        self.clock = clock
        self._locate = locate or self.locate
        self.pods: dict[str, PodCgroups] = {}
        self.problems: dict[str, str] = {}  # uid -> the problem already logged for it
        self.vanished = 0
        self.generation = 0  # bumped whenever the set of open cgroups changes
        self._bases: list[Path] = []
        self._bases_at = -1e18

    # -- resolution ----------------------------------------------------------------------------
    def bases(self) -> list[Path]:
        now = time.monotonic()
        if not self._bases or now - self._bases_at > 30.0:
            self._bases = discover_bases(self.hierarchy.memory_root)
            self._bases_at = now
        return self._bases

    def find_pod(self, uid: str, qos_class: str | None = None) -> Path | None:
        """The pod's cgroup directory by UID, for either cgroup driver, or None."""
        for base in self.bases():
            for rel in pod_cgroup_candidates(uid, qos_class):
                path = base / rel
                if path.is_dir():
                    return path
        return None

    def locate(self, record: PodRecord) -> tuple[Path | None, dict[str, Path]]:
        """The pod's cgroup and its containers' cgroups (by name), as far as they exist now."""
        pod_dir = self.find_pod(record.uid, record.qos_class)
        containers: dict[str, Path] = {}
        if pod_dir is not None:
            for name, cri_id in record.container_ids:
                found = find_container_cgroup(pod_dir, cri_id)
                if found is not None:
                    containers[name] = found
        return pod_dir, containers

    def resolve(self, record: PodRecord) -> PodCgroups | None:
        """The pod's open cgroups, re-resolved when its container IDs change (a restart)."""
        current = self.pods.get(record.uid)
        if current is not None and current.key == record.container_ids and (current.containers or current.pod):
            return current
        if current is not None:
            current.close()
            del self.pods[record.uid]
        pod_dir, paths = self._locate(record)
        if pod_dir is None and not paths:
            return None
        entry = PodCgroups(record.container_ids, pod_dir)
        self.generation += 1
        for name, path in paths.items():
            try:
                entry.containers[name] = CgroupReader(path, self.hierarchy, self.clock)
            except Vanished:
                continue
        if not entry.containers and pod_dir is not None:
            try:
                entry.pod = CgroupReader(pod_dir, self.hierarchy, self.clock)
            except Vanished:
                return None
        self.pods[record.uid] = entry
        return entry

    def forget(self, uid: str) -> None:
        entry = self.pods.pop(uid, None)
        if entry is not None:
            entry.close()
            self.generation += 1
        self.problems.pop(uid, None)

    def prune(self, live: Iterable[str]) -> None:
        """Close the cgroups of pods no longer watched."""
        keep = set(live)
        for uid in [u for u in self.pods if u not in keep]:
            self.forget(uid)

    # -- reading -------------------------------------------------------------------------------
    def sample(self, record: PodRecord, fresh: bool = False) -> Usage | None:
        """One pod's usage now, or None (not found, vanished, unreadable: the last logged once)."""
        entry = self.resolve(record)
        if entry is None:
            return None
        containers: dict[str, int] = {}
        pod_bytes: int | None = None
        stamp: float | None = None
        try:
            for name, reader in list(entry.containers.items()):
                try:
                    s = reader.read(fresh)
                except Vanished:
                    # That container ended (a restart gives it a new ID): resolve again next time.
                    self.vanished += 1
                    entry.containers.pop(name).close()
                    entry.key = ()
                    self.generation += 1
                    continue
                containers[name] = s.working_set
                stamp = s.timestamp if stamp is None else min(stamp, s.timestamp)
            if entry.pod is not None:
                s = entry.pod.read(fresh)
                pod_bytes, stamp = s.working_set, s.timestamp
        except Vanished:
            self.vanished += 1
            self.forget(record.uid)
            return None
        except Unreadable as exc:
            self._problem(record, str(exc))
            return None
        if stamp is None:
            return None
        self.problems.pop(record.uid, None)
        return Usage(containers, stamp, self.name, pod_bytes)

    def _problem(self, record: PodRecord, message: str) -> None:
        if self.problems.get(record.uid) != message:
            log.warning("cannot read the cgroup of pod=%s: %s (reported once; retrying every sample)",
                        record.key, message)
            self.problems[record.uid] = message

    def fetch(self, records: Sequence[PodRecord]) -> dict[str, Usage]:
        out: dict[str, Usage] = {}
        for record in records:
            usage = self.sample(record)
            if usage is not None:
                out[record.uid] = usage
        return out


# ---------------------------------------------------------------------------------------------
# Fallback: psutil, where cgroup files cannot be read


def _pod_of(cgroup_text: str) -> tuple[str, str] | None:
    """(pod UID, container id) from a process's ``/proc/<pid>/cgroup``, if it is in a pod."""
    for line in cgroup_text.splitlines():
        path = line.split(":", 2)[-1]
        parts = [p for p in path.split("/") if p]
        for i, part in enumerate(parts):
            base = part.removesuffix(".slice")
            j = base.rfind("pod")
            if j < 0 or not (base.startswith("pod") or base.startswith("kubepods")):
                continue
            uid = base[j + 3:].replace("_", "-")
            if len(uid) != 36:
                continue
            cid = parts[i + 1].removesuffix(".scope") if i + 1 < len(parts) else ""
            return uid, cid.rsplit("-", 1)[-1]
    return None


class ProcessSource:
    """RSS of pods' processes through psutil and ``/proc/<pid>/cgroup``: the fallback usage source.

    RSS is not the working set (shared pages count in each process), so this source only serves
    pods whose cgroups cannot be read. It scans every process, so it runs at most every ``period``.
    """

    name = "psutil"

    def __init__(self, period: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.period = period
        self.clock = clock
        self._last = -1e18
        self._cache: dict[str, Usage] = {}

    def fetch(self, records: Sequence[PodRecord]) -> dict[str, Usage]:
        now = self.clock()
        if now - self._last >= self.period:
            self._last = now
            self._cache = self._scan(records, now)
        wanted = {r.uid for r in records}
        return {u: s for u, s in self._cache.items() if u in wanted}

    @staticmethod
    def _scan(records: Sequence[PodRecord], now: float) -> dict[str, Usage]:
        names = {r.uid: {container_id(cid): name for name, cid in r.container_ids} for r in records}
        sums: dict[str, dict[str, int]] = {}
        for proc in psutil.process_iter():
            try:
                with open(f"/proc/{proc.pid}/cgroup") as f:
                    found = _pod_of(f.read())
                if found is None or found[0] not in names:
                    continue
                rss = proc.memory_info().rss
            except (OSError, psutil.Error):
                continue
            uid, cid = found
            name = names[uid].get(cid)
            if name is not None:
                per = sums.setdefault(uid, {})
                per[name] = per.get(name, 0) + rss
        return {uid: Usage(per, now, "psutil") for uid, per in sums.items()}

