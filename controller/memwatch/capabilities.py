"""What the node agent can really do, probed once at start: can its kill rung kill anything?

The default chart gives the agent no host PID namespace, no CAP_KILL and a read-only cgroup mount;
there ``cgroup.procs`` reads empty and a "kill" would signal nothing. :func:`probe` finds that out
before any kill is attempted, so that ``memwatch.io/action: restart`` and ``--kill`` fall back to
eviction with one clear message instead of reporting kills that did not happen.

What the kill rung needs (see :mod:`memwatch.kill`):

* cgroup v2 with ``cgroup.kill`` (Linux 5.14+) writable: nothing else; the kernel kills every
  process of the cgroup, whichever PID namespace it is in.
* otherwise, pidfds: the pods' processes visible here (``hostPID: true``), CAP_KILL in the effective
  capability set (processes of other users), and a kernel with ``pidfd_open`` (Linux 5.3+).

"Pods' processes visible" is not "our PID namespace is PID 1's" (inside any PID namespace PID 1 is
that namespace's init) nor "the host's init namespace" (a kind node is a container: its agent with
``hostPID`` shares the node's namespace, not the host's). It is tested directly: without
``hostPID`` every process this agent can see is one of its own pod's, all listed in some
``cgroup.procs`` under ``kubepods``; with it, the node's own processes (kubelet, the container
runtime, init) are visible too, and they are in no pod's cgroup.

The parsing functions take text, so that their tests do not depend on the machine.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from memwatch.cgroups import CgroupError, Hierarchy, discover_bases, read_procs

#: The capability number of CAP_KILL (linux/capability.h).
CAP_KILL = 5
#: Cgroups walked under the kubepods bases when listing pods' processes (a node runs ~110 pods).
MAX_CGROUPS = 20_000


@dataclass(frozen=True, slots=True)
class KillCapability:
    """What the agent found it can do, and the one-line reason when the kill rung is unavailable."""

    version: int  # cgroup version
    host_pids: bool  # pods' processes are visible from this PID namespace (hostPID)
    cap_kill: bool  # CAP_KILL is in the effective capability set
    pidfd: bool  # the kernel has pidfd_open (Linux 5.3+)
    cgroup_kill: bool  # v2: cgroup.kill exists and is writable (Linux 5.14+, writable mount)
    events_writable: bool  # v1: cgroup.event_control is writable (kernel threshold notifications)
    uid: int = -1

    @property
    def pidfd_kill(self) -> bool:
        """Whether processes can be killed one by one through pidfds."""
        return self.host_pids and self.cap_kill and self.pidfd

    @property
    def can_kill(self) -> bool:
        """Whether the kill rung can kill: through ``cgroup.kill`` (v2) or through pidfds."""
        return (self.version == 2 and self.cgroup_kill) or self.pidfd_kill

    @property
    def missing(self) -> tuple[str, ...]:
        """What the pidfd route lacks, each with what provides it; empty when nothing is missing."""
        out = []
        if not self.host_pids:
            out.append("the processes of other pods are not visible here (the agent needs hostPID: true)")
        if not self.cap_kill:
            out.append("CAP_KILL is not in the effective capabilities (add the KILL capability)")
        if not self.pidfd:
            out.append("this kernel has no pidfd_open (Linux 5.3+)")
        return tuple(out)

    @property
    def reason(self) -> str:
        """Why the kill rung cannot kill, naming what is missing; empty when it can."""
        if self.can_kill:
            return ""
        pidfds = "; ".join(self.missing)
        if self.version == 2:
            return ("neither cgroup.kill (Linux 5.14+ and a writable cgroup mount) nor pidfds: " + pidfds)
        return pidfds

    def describe(self) -> str:
        """The line the agent logs once at start."""
        if self.version == 2 and self.cgroup_kill:
            how = "cgroup.kill"
        elif self.pidfd_kill:
            how = "pidfds (host PIDs visible, CAP_KILL)"
        else:
            return f"kill rung unavailable (cgroup v{self.version}, uid {self.uid}): {self.reason}"
        events = "" if self.version == 2 or self.events_writable else \
            "; cgroup.event_control is not writable: no kernel threshold notifications, sampling only"
        return f"kill rung available through {how} (cgroup v{self.version}, uid {self.uid}){events}"


def parse_cap_eff(status_text: str) -> int | None:
    """The effective capability mask from ``/proc/<pid>/status`` (``CapEff:`` in hex), or None."""
    for line in status_text.splitlines():
        key, _, value = line.partition(":")
        if key == "CapEff":
            try:
                return int(value.strip(), 16)
            except ValueError:
                return None
    return None


def parse_uid(status_text: str) -> int | None:
    """The effective UID from ``/proc/<pid>/status`` (``Uid: real effective saved fs``), or None."""
    for line in status_text.splitlines():
        key, _, value = line.partition(":")
        if key == "Uid":
            fields = value.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1])
    return None


def has_capability(mask: int | None, cap: int) -> bool:
    """Whether capability number ``cap`` is set in ``mask``."""
    return mask is not None and bool(mask >> cap & 1)


def parse_pids(names: Iterable[str]) -> set[int]:
    """The PIDs among the entries of a ``/proc`` listing."""
    return {int(n) for n in names if n.isascii() and n.isdigit()}


def sees_host_pids(visible: Iterable[int], in_pods: Iterable[int], still_there: Callable[[int], bool]) -> bool:
    """Whether this PID namespace shows processes outside every pod.

    ``visible``: the PIDs in ``/proc``, listed *before* ``in_pods``: those listed in the ``cgroup.procs``
    of every cgroup under the kubepods bases. A visible PID in no pod's cgroup is a node process,
    unless it exited before the cgroups were walked (``still_there`` checks that).
    """
    pods = set(in_pods)
    return any(still_there(pid) for pid in visible if pid not in pods)


def pod_pids(bases: Sequence[Path], max_cgroups: int = MAX_CGROUPS) -> set[int]:
    """Every PID (as seen from here) in a ``cgroup.procs`` under the kubepods bases. Never raises."""
    pids: set[int] = set()
    seen = 0
    for base in bases:
        for top, _, _ in os.walk(base, followlinks=False):
            seen += 1
            if seen > max_cgroups:
                return pids
            with contextlib.suppress(CgroupError):
                pids.update(read_procs(Path(top)))
    return pids


def _writable(path: Path) -> bool:
    """Write access for this process's effective IDs; a read-only mount answers EROFS, so False."""
    try:
        return os.access(path, os.W_OK, effective_ids=os.access in os.supports_effective_ids)
    except OSError:
        return False


def _has_pidfd() -> bool:
    """Whether this kernel (and Python) can open pidfds."""
    try:
        fd = os.pidfd_open(os.getpid())
    except AttributeError:
        return False
    except OSError as exc:
        return exc.errno != errno.ENOSYS  # any other error (EMFILE) says the call exists
    os.close(fd)
    return True


def probe(hierarchy: Hierarchy, proc: Path = Path("/proc"), bases: Sequence[Path] | None = None) -> KillCapability:
    """Find out what the kill rung can do here (see the module docstring). Never raises.

    ``bases``: the kubepods cgroups, found under the hierarchy's memory root when not given.
    """
    found = list(bases) if bases is not None else discover_bases(hierarchy.memory_root)
    try:
        status = (proc / "self" / "status").read_text()
    except OSError:
        status = ""
    try:
        visible = parse_pids(os.listdir(proc))
    except OSError:
        visible = set()
    in_pods = pod_pids(found)
    host_pids = sees_host_pids(visible, in_pods, lambda pid: (proc / str(pid)).exists())
    where = found[0] if found else hierarchy.memory_root
    cgroup_kill = hierarchy.version == 2 and (where / "cgroup.kill").exists() and _writable(where / "cgroup.kill")
    events = hierarchy.version == 1 and _writable(where / "cgroup.event_control")
    uid = parse_uid(status)
    return KillCapability(hierarchy.version, host_pids, has_capability(parse_cap_eff(status), CAP_KILL),
                          _has_pidfd(), cgroup_kill, events, -1 if uid is None else uid)
