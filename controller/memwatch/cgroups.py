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
  ``memory.usage_in_bytes`` through an eventfd, v2 ``memory.events`` changes (POLLPRI). Where no
  threshold can be armed (v2, a read-only ``cgroup.event_control``), the lean guard stands in
  (:meth:`CgroupSource.lean_crossed`): one ``pread`` of each quiet cgroup's usage file per sample.
* Kill: :mod:`memwatch.kill` (pidfds on v1, ``cgroup.kill`` on v2); psutil's top processes by RSS for
  the log line are here (:func:`top_processes`).

Pod UIDs and container IDs come from the API and are not trusted: only the API server's UID form and
the runtimes' 64-hex container ID form are used to build paths, and every resolved pod or container
cgroup must stay under a ``kubepods`` base (symlinks resolved). A cgroup that disappears mid-read (the
pod or container ended) raises :class:`Vanished`, which is not an error. Unreadable or garbled files
raise :class:`Unreadable`; :class:`CgroupSource` reports those once per pod and keeps sampling the
others, with every descriptor of a failed or departed pod closed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from memwatch.discovery import CONTAINER, Inotify, children, classify, name_containers
from memwatch.podindex import PodRecord
from memwatch.policy import Usage

log = logging.getLogger("memwatch.cgroups")

#: errno values meaning "this cgroup is gone" (removed directory, or a file of a removed cgroup).
GONE = frozenset({errno.ENOENT, errno.ENODEV, errno.ESRCH, errno.ENOTDIR})
#: The container runtimes whose IDs memwatch accepts, as the kubelet prefixes them in pod status.
RUNTIMES = ("containerd", "cri-o", "docker")
#: containerd, CRI-O and docker all name containers by 64 lowercase hex digits (ASCII only: no \d).
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
#: The API server's pod UIDs (RFC 4122 text form, lowercase).
_POD_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: Pod cgroups live under one of these, directly below the memory root or a bounded depth under it.
_KUBEPODS = ("kubepods", "kubepods.slice")
_QOS = ("burstable", "besteffort")
#: Re-read memory.stat every sample once the estimate is above this fraction of the lowest threshold.
STAT_GATE = 0.5
#: Below the gate, memory.stat (the inactive-file figure) is refreshed every this many samples.
STAT_EVERY = 10
#: Without an inotify watch on a pod's directory, it is scanned for new container cgroups this often (s).
SCAN_EVERY = 1.0
#: A child cgroup with no visible process yet is looked at every sample for this long (s), then only
#: when the directory changes or the API names a container (no hostPID: processes are never visible).
UNSETTLED_SECONDS = 5.0
#: ... and every few milliseconds for this long (s) right after it was made.
SETTLE_FAST = 1.0
SETTLE_PERIOD = 0.005


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


def container_id(cri_id: str) -> str | None:
    """``containerd://<64 hex>`` → ``<64 hex>``; None for anything else.

    The ID comes from the pod's status, which anyone able to write that status controls, and it is
    joined to a cgroup path: only the runtimes' own grammar (a :data:`RUNTIMES` prefix and 64 lowercase
    hex digits) is accepted, so ``..``, ``/`` or an absolute path can never reach the path.
    """
    runtime, sep, cid = cri_id.partition("://")
    if not sep or runtime not in RUNTIMES or _CONTAINER_ID.fullmatch(cid) is None:
        return None
    return cid


def valid_pod_uid(uid: str) -> bool:
    """Whether ``uid`` has the API server's pod UID form (it becomes part of a cgroup path)."""
    return _POD_UID.fullmatch(uid) is not None


def within(path: Path, root: Path) -> bool:
    """Whether ``path`` lies strictly below ``root``, both with every symlink and ``..`` resolved."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real != top and os.path.commonpath([real, top]) == top


def container_dir_matches(name: str, cid: str) -> bool:
    """Whether a child directory of a pod cgroup is the container ``cid``, for every runtime's naming:
    ``<id>`` (cgroupfs), ``cri-containerd-<id>.scope``, ``docker-<id>.scope``, ``crio-<id>.scope``."""
    base = name.removesuffix(".scope")
    return bool(cid) and (base == cid or base.endswith("-" + cid))


def find_container_cgroup(pod_dir: Path, cri_id: str) -> Path | None:
    """The container's cgroup under its pod's cgroup, or None when it is not (or no longer) there,
    or when ``cri_id`` is not a valid runtime ID (:func:`container_id`), or when the directory found
    resolves outside ``pod_dir`` (a symlink). Never raises."""
    cid = container_id(cri_id)
    if cid is None:
        return None
    found: Path | None = None
    try:
        direct = pod_dir / cid
        if direct.is_dir():
            found = direct
        else:
            with os.scandir(pod_dir) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False) and container_dir_matches(entry.name, cid):
                        found = Path(entry.path)
                        break
    except OSError:
        return None
    return found if found is not None and within(found, pod_dir) else None


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
        if exc.errno in GONE:
            raise Vanished(str(exc)) from None
        raise Unreadable(str(exc)) from None


def _exists(path: Path) -> bool:
    """``path.exists()`` that answers True (not gone) rather than raising on EACCES and the like."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno not in GONE
    return True


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
        self.last_usage: int | None = None  # raw usage at the last read (what the thresholds compare)
        #: The lowest raw usage at which the agent must judge this cgroup in full (set by the agent):
        #: where no kernel threshold is armed, the lean guard's line (:meth:`CgroupSource.lean_crossed`).
        self.line: int | None = None
        self.events_fd: int | None = None  # v2: memory.events, polled for POLLPRI
        self.opened_at = time.monotonic()  # when the agent first held this cgroup (for the arming figures)
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
            if exc.errno in GONE:
                raise Vanished(f"{self.path / name}: {exc.strerror}") from None
            raise Unreadable(f"{self.path / name}: {exc.strerror}") from None

    def usage(self) -> int:
        raw = _pread(self._usage_fd, 64)
        if not raw:
            # A removed v1 cgroup's open file reads empty rather than failing.
            if not _exists(self.path):
                raise Vanished(str(self.path))
            raise Unreadable(f"{self.path / self.hierarchy.usage_file}: empty")
        try:
            return int(raw)
        except ValueError:
            raise Unreadable(f"{self.path / self.hierarchy.usage_file}: {raw[:40]!r} is not a number") from None

    def inactive_file(self) -> int:
        text = _pread(self._stat_fd).decode("ascii", "replace")
        if not text and not _exists(self.path):
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
        ws = self.working_set_now(fresh)
        usage = self.last_usage
        assert usage is not None  # working_set_now read it
        return Sample(usage, ws, self._since_stat == 0, now)

    def working_set_now(self, fresh: bool = False) -> int:
        """:meth:`read`'s working set alone, with no timestamp or :class:`Sample` made for it: what
        :class:`CgroupSource` asks of every cgroup every sample (it takes the time once per pod).
        Raises :class:`Vanished` or :class:`Unreadable`."""
        usage = self.last_usage = self.usage()
        self._since_stat += 1
        estimate = working_set(usage, self._inactive)
        gate = self.gate_bytes
        if fresh or self._since_stat >= STAT_EVERY or gate is None or estimate >= gate * STAT_GATE:
            self.inactive_file()  # (sets _since_stat to 0: the figure is fresh)
            return working_set(usage, self._inactive)
        return estimate

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
                # Never O_CREAT: a plain file made where the kernel's control file should be would
                # take the registration and never fire (and the agent would count on it).
                fd = os.open(control, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, f"{efd} {self._usage_fd} {threshold}".encode())
                finally:
                    os.close(fd)
        except OSError as exc:
            self.unwatch()
            if exc.errno in GONE:
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

    def guarded_room(self) -> int | None:
        """Bytes of raw usage left, at the last read, below the line whose crossing will be noticed
        between full samples: the lowest v1 kernel threshold registered on this cgroup (the kernel
        wakes the agent), or else :attr:`line` (the lean guard reads the usage file every sample).
        None when neither guards it, or usage is already at or past the line: a threshold fires on
        a crossing only, and the working set may still grow under a usage past one (page cache)."""
        if self.last_usage is None:
            return None
        if self.events and self.thresholds:
            room = self.thresholds[0] - self.last_usage
        elif self.line is not None:
            room = self.line - self.last_usage
        else:
            return None
        return room if room > 0 else None

    def close(self) -> None:
        """Close every descriptor of this cgroup. Idempotent: a second call closes nothing (the numbers
        may belong to other files by then)."""
        self.unwatch()
        for fd in (self._usage_fd, self._stat_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._usage_fd = self._stat_fd = -1

    # -- the kill rung (memwatch.kill) ----------------------------------------------------------
    def procs(self) -> list[int]:
        """PIDs (as seen from this PID namespace) of every process in this cgroup, for the log line.

        Raises :class:`Vanished` or :class:`Unreadable`.
        """
        return read_procs(self.path)

    def kill(self) -> int:
        """SIGKILL this cgroup's processes through :func:`memwatch.kill.kill_cgroup`; how many were signalled.

        The 0.1 interface, kept for its callers: raises :class:`Vanished` when the cgroup is gone and
        :class:`Unreadable` (with :meth:`KillResult.describe`) when nothing, or not everything, was
        killed, so that no caller reports a kill of 0 processes. New code calls ``kill_cgroup``.
        """
        from memwatch.kill import kill_cgroup  # memwatch.kill builds on this module

        result = kill_cgroup(self.path, self.hierarchy)
        if result.vanished:
            raise Vanished(result.describe())
        if not result.ok:
            raise Unreadable(result.describe())
        return max(1, result.signalled)  # cgroup.kill may kill processes this namespace cannot see


def _holds_processes(cgroup: Path) -> bool:
    """Whether ``cgroup`` holds a process now (False when it is gone or unreadable)."""
    try:
        return bool(read_procs(cgroup))
    except CgroupError:
        return False


def read_procs(cgroup: Path) -> list[int]:
    """The PIDs listed in ``cgroup``'s own ``cgroup.procs`` (not its descendants').

    Raises :class:`Vanished` when the cgroup is gone, :class:`Unreadable` otherwise.
    """
    try:
        with open(cgroup / "cgroup.procs", "rb") as f:
            text = f.read()
    except OSError as exc:
        if exc.errno in GONE:
            raise Vanished(f"{cgroup}: {exc.strerror}") from None
        raise Unreadable(f"{cgroup}/cgroup.procs: {exc.strerror}") from None
    try:
        return [int(p) for p in text.split()]
    except ValueError:
        raise Unreadable(f"{cgroup}/cgroup.procs: {text[:40]!r} is not a list of PIDs") from None


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
    """The cgroups of one pod, as last resolved from its directory and its container IDs."""

    key: tuple[tuple[str, str], ...]  # the record's container_ids they were resolved from
    pod_dir: Path | None
    containers: dict[str, CgroupReader] = field(default_factory=dict)
    #: The pod cgroup: open from the moment it exists, so the kernel's thresholds guard the pod before
    #: any container is known; read for usage only while no container cgroup is.
    pod: CgroupReader | None = None
    scanned: float = 0.0  # monotonic time of the last look at the pod directory

    def readers(self) -> list[CgroupReader]:
        return [*self.containers.values(), *([self.pod] if self.pod is not None else [])]

    def close(self) -> None:
        for r in self.readers():
            r.close()


Locator = Callable[[PodRecord], tuple[Path | None, dict[str, Path]]]


class CgroupSource:
    """Working set of the node's watched pods from their cgroups: the node agent's usage source.

    Implements :class:`memwatch.sources.UsageSource`. A pod's cgroup is found by its UID as soon as
    the kubelet makes it, and its container cgroups as soon as the runtime makes them, from the
    directory itself (:mod:`memwatch.discovery`: inotify wakes the agent for both); the CRI container
    IDs in the pod status then name them. Until a container cgroup is known, the pod cgroup is read
    instead. Cgroups that vanish drop out silently. A pod whose cgroup cannot be opened or read (EACCES, EMFILE, ELOOP,
    garbled files) is skipped with its descriptors closed, logged once per problem (``problems``), and
    retried every sample; the other pods are sampled as usual. A container ID that is not a runtime ID,
    or a cgroup that resolves outside the pod's own directory, is refused, logged once (``refused``).
    """

    name = "cgroup"

    def __init__(self, hierarchy: Hierarchy, locate: Locator | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.hierarchy = hierarchy
        self.clock = clock
        self._locate = locate or self.locate
        self.pods: dict[str, PodCgroups] = {}
        self.problems: dict[str, str] = {}  # uid -> the read problem already logged for it
        self.refused: dict[str, str] = {}  # uid -> the refused container IDs or paths already logged
        self.vanished = 0
        self.generation = 0  # bumped whenever the set of open cgroups changes
        self._bases: list[Path] = []
        self._bases_at = -1e18
        self.notify: Inotify | None = None  # opened with the first pod cgroup found (see discovery)
        self._notify_tried = False
        self._watches: dict[Path, int] = {}  # watched directory -> inotify watch descriptor
        self._pod_dirs: dict[Path, str] = {}  # watched pod directory -> pod UID
        self._dirty: set[str] = set()  # pods whose directory changed since it was last looked at
        self._kinds: dict[str, dict[str, str]] = {}  # uid -> child directory name -> sandbox|container
        self._unsettled: dict[str, float] = {}  # uid -> since when it has had an undecided child
        self._said_enospc = False
        #: The lean guard (guard_lean): (usage fd, line, reader) of each cgroup it reads, the usage each
        #: read last, and the generation it was built for.
        self._lean: list[tuple[int, int, CgroupReader]] = []
        self._lean_prev: list[int] = []
        self._lean_generation = -1

    # -- resolution ----------------------------------------------------------------------------
    def bases(self) -> list[Path]:
        now = time.monotonic()
        if not self._bases or now - self._bases_at > 30.0:
            self._bases = discover_bases(self.hierarchy.memory_root)
            self._bases_at = now
            if self._bases:
                self._open_notify()  # from the start: the first pod cgroup made wakes the agent too
            if self.notify is not None:
                self._watch_bases()
        return self._bases

    # -- finding cgroups as they are made (memwatch.discovery) ---------------------------------
    def notify_fd(self) -> int | None:
        """The inotify descriptor to poll (readable when a pod or container cgroup came or went)."""
        return None if self.notify is None else self.notify.fd

    def _watch(self, path: Path) -> bool:
        if self.notify is None:
            return False
        if path in self._watches:
            return True
        try:
            self._watches[path] = self.notify.watch(path)
            return True
        except OSError as exc:
            if exc.errno == errno.ENOSPC and not self._said_enospc:
                self._said_enospc = True
                log.warning("out of inotify watches (%s): cgroups beyond them are found by scanning", exc)
            return False

    def _watch_bases(self) -> None:
        for base in self._bases:
            self._watch(base)
            for child in children(base):
                if child.name in _QOS or child.name in (f"kubepods-{q}.slice" for q in _QOS):
                    self._watch(child)

    def _open_notify(self) -> None:
        if self._notify_tried:
            return
        self._notify_tried = True
        self.notify = Inotify.open_or_none()
        if self.notify is not None:
            self._watch_bases()

    def changed(self) -> None:
        """Take in what inotify reported: the pods whose directory changed are looked at again at
        their next sample (a new pod directory needs nothing: pods without one look every sample)."""
        if self.notify is None:
            return
        paths, overflow = self.notify.read()
        if overflow:
            self._dirty.update(self.pods)
        for path in paths:
            uid = self._pod_dirs.get(path)
            if uid is not None:
                self._dirty.add(uid)
            if path not in self.notify.paths.values():  # the directory went, and its watch with it
                self._watches.pop(path, None)
                self._pod_dirs.pop(path, None)

    def unsettled(self) -> list[str]:
        """Pods with a child cgroup made less than :data:`SETTLE_FAST` ago that holds no process yet
        (runc makes the directory, then moves the container's first process in): looked at again
        within milliseconds, not at the next sample, so the agent holds the container at once."""
        now = time.monotonic()
        return [uid for uid, since in self._unsettled.items() if now < since + SETTLE_FAST]

    def settle(self, record: PodRecord) -> bool:
        """Look at an unsettled pod's directory again; True when the set of open cgroups changed."""
        generation = self.generation
        with contextlib.suppress(CgroupError, OSError):
            self.resolve(record)
        return self.generation != generation

    def _rescan_due(self, uid: str, entry: PodCgroups, now: float) -> bool:
        if uid in self._dirty:
            return True
        since = self._unsettled.get(uid)
        if since is not None:
            if now < since + UNSETTLED_SECONDS:
                return True
            del self._unsettled[uid]  # undecided for too long (no process visible): wait for the API's IDs
        unwatched = entry.pod_dir is not None and entry.pod_dir not in self._pod_dirs
        return unwatched and now - entry.scanned >= SCAN_EVERY

    def find_pod(self, uid: str, qos_class: str | None = None) -> Path | None:
        """The pod's cgroup directory by UID, for either cgroup driver, or None (also for a UID that
        is not the API server's form, and for a directory that resolves outside its kubepods base)."""
        if not valid_pod_uid(uid):
            return None
        for base in self.bases():
            for rel in pod_cgroup_candidates(uid, qos_class):
                path = base / rel
                with contextlib.suppress(OSError):
                    if path.is_dir() and within(path, base):
                        return path
        return None

    def locate(self, record: PodRecord) -> tuple[Path | None, dict[str, Path]]:
        """The pod's cgroup and its containers' cgroups (by name), as far as they exist now.

        Container IDs that are not runtime IDs are refused (logged once per pod), never joined to a path.
        """
        pod_dir = self.find_pod(record.uid, record.qos_class)
        containers: dict[str, Path] = {}
        refused = [f"{name}={cri_id[:80]!r}" for name, cri_id in record.container_ids
                   if cri_id and container_id(cri_id) is None]
        if refused:
            self._refuse(record, f"container ID not of the form <{'|'.join(RUNTIMES)}>://<64 hex digits>: "
                                 + ", ".join(refused))
        if pod_dir is None:
            return None, containers
        if self._watch(pod_dir):
            self._pod_dirs[pod_dir] = record.uid
        for name, cri_id in record.container_ids:
            found = find_container_cgroup(pod_dir, cri_id)
            if found is not None:
                containers[name] = found
        containers.update(self._unnamed(record, pod_dir, set(containers.values()), containers))
        return pod_dir, containers

    def _unnamed(self, record: PodRecord, pod_dir: Path, known: set[Path],
                 named: dict[str, Path]) -> dict[str, Path]:
        """Application-container cgroups in the pod's directory that the API has not named (yet)."""
        kinds = self._kinds.setdefault(record.uid, {})
        found: list[tuple[int, Path]] = []
        undecided = False
        present = set()
        for child in children(pod_dir):
            present.add(child.name)
            if child in known:
                continue
            kind = kinds.get(child.name)
            if kind is None:
                kind = classify(child)
                if kind is None:
                    undecided = True
                    continue
                kinds[child.name] = kind
            if kind == CONTAINER:
                with contextlib.suppress(OSError):
                    found.append((child.stat().st_ctime_ns, child))
        for gone in [n for n in kinds if n not in present]:
            del kinds[gone]
        if undecided:
            self._unsettled.setdefault(record.uid, time.monotonic())
        else:
            self._unsettled.pop(record.uid, None)
        if not found:
            return {}
        sole = record.containers[0].name if len(record.containers) == 1 and not record.has_init else None
        live = {path: _holds_processes(path) for path in named.values()}
        return name_containers(named, [p for _, p in sorted(found)], sole, live)

    def _refuse(self, record: PodRecord, message: str) -> None:
        if self.refused.get(record.uid) != message:
            log.warning("refusing to read or kill for pod=%s: %s (reported once)", record.key, message)
            self.refused[record.uid] = message

    def resolve(self, record: PodRecord) -> PodCgroups | None:
        """The pod's open cgroups, re-resolved when its container IDs change (a restart).

        Raises :class:`Unreadable` when a cgroup exists but cannot be opened; nothing stays open then.
        """
        uid = record.uid
        current = self.pods.get(uid)
        now = time.monotonic()
        if (current is not None and current.key == record.container_ids and (current.containers or current.pod)
                and not self._rescan_due(uid, current, now)):
            return current
        self._dirty.discard(uid)
        try:
            pod_dir, paths = self._locate(record)
        except OSError as exc:  # a custom locator, or a filesystem error discovery did not expect
            raise Unreadable(f"locating the cgroups: {exc}") from None
        old = current.readers() if current is not None else []
        reuse = {r.path: r for r in old}
        if pod_dir is None and not paths:
            if current is not None:
                self.forget(uid)
            return None
        entry = PodCgroups(record.container_ids, pod_dir, scanned=now)
        try:
            for name, path in paths.items():
                reader = reuse.pop(path, None)
                if reader is None:
                    with contextlib.suppress(Vanished):
                        reader = CgroupReader(path, self.hierarchy, self.clock)
                if reader is not None:
                    entry.containers[name] = reader
            if pod_dir is not None:
                entry.pod = reuse.pop(pod_dir, None)
                if entry.pod is None:
                    try:
                        entry.pod = CgroupReader(pod_dir, self.hierarchy, self.clock)
                    except Vanished:
                        if not entry.containers:
                            raise
        except BaseException as exc:
            for r in entry.readers():
                if r not in old:
                    r.close()  # what this call opened before the failure; the old entry stays as it was
            if isinstance(exc, Vanished):
                return current  # the pod cgroup went while it was being opened
            raise
        for r in reuse.values():
            r.close()  # cgroups that are gone from the pod (an ended container)
        if current is None or {n: r.path for n, r in entry.containers.items()} != \
                {n: r.path for n, r in current.containers.items()} or entry.pod is not current.pod:
            self.generation += 1
        self.pods[uid] = entry
        return entry

    def forget(self, uid: str) -> None:
        """Close every descriptor of one pod and drop what was remembered about it."""
        entry = self.pods.pop(uid, None)
        if entry is not None:
            entry.close()
            self.generation += 1
        self.problems.pop(uid, None)
        self.refused.pop(uid, None)
        self._dirty.discard(uid)
        self._kinds.pop(uid, None)
        self._unsettled.pop(uid, None)
        for path in [p for p, u in self._pod_dirs.items() if u == uid]:
            del self._pod_dirs[path]
            wd = self._watches.pop(path, None)
            if wd is not None and self.notify is not None:
                self.notify.unwatch(wd)

    def prune(self, live: Iterable[str]) -> None:
        """Close the cgroups of pods no longer watched, and forget their problems."""
        keep = set(live)
        for uid in {u for u in (*self.pods, *self.problems, *self.refused, *self._kinds) if u not in keep}:
            self.forget(uid)

    def close(self) -> None:
        """Close every open cgroup, and the inotify descriptor."""
        for uid in list(self.pods):
            self.forget(uid)
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        self._watches.clear()
        self._pod_dirs.clear()
        self._notify_tried = False

    # -- reading -------------------------------------------------------------------------------
    def sample(self, record: PodRecord, fresh: bool = False, rescan: bool = False) -> Usage | None:
        """One pod's usage now, or None (not found, vanished, unreadable: the last logged once).
        ``rescan``: look at the pod's directory first, whatever inotify said.

        Never raises for one pod's cgroup: a problem with it must not stop the other pods' samples.
        """
        if rescan:
            self._dirty.add(record.uid)
        # One function, not a wrapper around another: the agent asks this of every pod every sample.
        try:
            entry = self.resolve(record)
            if entry is None:
                return None
            # The sample's time: taken once, before its first read (what the earliest of one clock
            # reading per cgroup would give), so the figure is never dated later than a read in it.
            stamp = self.clock()
            containers: dict[str, int] = {}
            pod_bytes: int | None = None
            for name, reader in list(entry.containers.items()):
                try:
                    containers[name] = reader.working_set_now(fresh)
                except Vanished:
                    # That container ended (a restart gives it a new ID): resolve again next time.
                    self.vanished += 1
                    entry.containers.pop(name).close()
                    entry.key = ()
                    self.generation += 1
            pod = entry.pod
            if pod is None:
                if not entry.containers:
                    del self.pods[record.uid]  # every container vanished: nothing open, look again next time
                    return None
            elif not containers:
                pod_bytes = pod.working_set_now(fresh)
            elif pod.events or pod.line is not None:
                pod.last_usage = pod.usage()  # what its thresholds or line compare: see guarded_room
        except Vanished:
            self.vanished += 1
            self.forget(record.uid)
            return None
        except (Unreadable, OSError) as exc:
            # Keep the pod's readers open if they were (it is retried next sample); resolve() closed
            # whatever it had opened when the failure was in opening.
            self._problem(record, str(exc))
            return None
        if self.problems:
            self.problems.pop(record.uid, None)
        return Usage(containers, stamp, self.name, pod_bytes)

    def guarded_room(self, uid: str) -> int | None:
        """Bytes the pod may still grow before the kernel wakes the agent, at the last sample: the
        least room under the lowest threshold of every cgroup read for it (its containers', and its
        own, which guards pod-level lines); None when any of them is unguarded (see
        :meth:`CgroupReader.guarded_room`) or nothing is open. A pod with room may be sampled less
        often: between its samples, the kernel's notification stands guard."""
        entry = self.pods.get(uid)
        if entry is None or (not entry.containers and entry.pod is None):
            return None
        least: int | None = None
        for reader in entry.readers():
            if reader is entry.pod and entry.containers and not reader.thresholds and reader.line is None:
                continue  # only read as a fallback; its containers are the ones read and guarded
            room = reader.guarded_room()
            if room is None:
                return None
            least = room if least is None else min(least, room)
        return least

    # -- the lean guard -------------------------------------------------------------------------
    def guard_lean(self) -> int:
        """Take every open cgroup that has a :attr:`CgroupReader.line` and no kernel threshold into
        the lean guard (after the agent set the lines; again whenever cgroups come or go). Returns how many."""
        lean = []
        for entry in self.pods.values():
            for reader in entry.readers():
                if reader.line is not None and not reader.events:
                    lean.append((reader._usage_fd, reader.line, reader))
        self._lean = lean
        self._lean_prev = [r.last_usage if r.last_usage is not None else line for _, line, r in lean]
        self._lean_generation = self.generation
        return len(self._lean)

    def lean_crossed(self, lookahead: float) -> bool:
        """The kernel's threshold notification, done in user space where none is armed (cgroup v2, a
        read-only ``cgroup.event_control``): one ``pread`` of each guarded cgroup's usage file. True
        when one is at or past its line, or heading there within ``lookahead`` sample periods at the
        growth since the last call, unless its last full read was past the line already (its pod is
        read in full every sample then); also True when a file cannot be read, or the cgroups
        changed since :meth:`guard_lean` (the full sample finds out what happened)."""
        if self._lean_generation != self.generation:
            return True
        prev, pread = self._lean_prev, os.pread
        for i, (fd, line, reader) in enumerate(self._lean):
            try:
                usage = int(pread(fd, 64, 0))
            except (OSError, ValueError):
                return True
            last, prev[i] = prev[i], usage
            if (usage >= line or (usage > last and usage + (usage - last) * lookahead >= line)) \
                    and (reader.last_usage is None or reader.last_usage < line):
                return True
        return False

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
        names = {r.uid: {cid: name for name, cri_id in r.container_ids if (cid := container_id(cri_id))}
                 for r in records}
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

