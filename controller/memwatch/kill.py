"""The kill rung: SIGKILL every process of one container's cgroup, and never any other process.

* cgroup v2: write ``cgroup.kill`` (Linux 5.14+), which kills the cgroup and every descendant at once,
  as the kernel's own OOM killer does with ``memory.oom.group``; no PID is involved, so none can be
  reused, and it works without seeing the host's PIDs or holding CAP_KILL (write access suffices).
* cgroup v1, and v2 without a usable ``cgroup.kill``: through pidfds. For each PID listed in
  ``cgroup.procs`` (of the cgroup and its descendants) open a pidfd, then read the list again and
  signal only the pidfds whose PID is still listed. A pidfd names one process for good, so a PID that
  exited and was reused by an unrelated host process between the read and the signal is never
  signalled: either the new holder is not in the cgroup (not listed on the re-read), or the pidfd's
  process is already dead (the signal fails with ESRCH). Kernels without pidfds (before 5.3) are
  refused rather than signalled by bare PID.

Every call returns a :class:`KillResult`; signalling no process at all is a failure (``ok`` False)
with the reason, never a kill.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from memwatch.cgroups import GONE, Hierarchy, Unreadable, Vanished, read_procs
from memwatch.discovery import SANDBOX, children, classify

#: Rounds of list-open-recheck-signal: a process may fork between one listing and its signal.
ROUNDS = 5
#: Descendant cgroups walked below a container's cgroup (containers rarely have any).
MAX_CGROUPS = 256
#: Why a cgroup with no visible process might still have some: the PIDs belong to another namespace.
INVISIBLE_HINT = "no process left, or their PIDs are not visible here (the agent needs hostPID: true)"


@dataclass(frozen=True, slots=True)
class KillResult:
    """What one kill of one cgroup did.

    ``signalled`` counts the processes SIGKILLed through pidfds, or for ``cgroup.kill`` the processes
    this agent could see in the cgroup just before (the kernel kills them all, seen or not).
    ``error`` says why nothing, or not everything, was killed; ``vanished`` that the cgroup was gone.
    """

    cgroup: Path
    method: str  # "cgroup.kill" or "pidfd"
    signalled: int = 0
    error: str | None = None
    vanished: bool = False

    @property
    def ok(self) -> bool:
        """True only when the kill reached the cgroup's processes: ``cgroup.kill`` was accepted, or at
        least one process was signalled and none was refused. Zero processes is never ``ok``."""
        if self.error is not None or self.vanished:
            return False
        return self.method == "cgroup.kill" or self.signalled > 0

    def describe(self) -> str:
        """For the log line and the Event: what was signalled, how, or why not."""
        if self.vanished:
            return f"nothing killed: {self.cgroup} is gone (the container ended)"
        if self.method == "cgroup.kill" and self.ok:
            return f"SIGKILL to the whole cgroup through cgroup.kill ({self.signalled} process(es) visible here)"
        if self.ok:
            return f"SIGKILL to {self.signalled} process(es) through pidfds"
        if self.signalled:
            return f"SIGKILL to only {self.signalled} process(es) through pidfds: {self.error}"
        return f"nothing killed: {self.error}"


def member_pids(cgroup: Path, max_cgroups: int = MAX_CGROUPS) -> set[int]:
    """PIDs in ``cgroup`` and its descendant cgroups (symlinks not followed), as seen from this PID
    namespace. Raises :class:`Vanished` when ``cgroup`` itself is gone, :class:`Unreadable` otherwise."""
    pids = set(read_procs(cgroup))
    seen = 1
    for top, dirs, _ in os.walk(cgroup, followlinks=False):
        for d in dirs:
            if seen >= max_cgroups:
                return pids
            seen += 1
            with contextlib.suppress(Vanished):  # a descendant that just went away
                pids.update(read_procs(Path(top) / d))
    return pids


def _populated(cgroup: Path) -> bool | None:
    """v2 ``cgroup.events``: whether any process (in any PID namespace) is in the cgroup; None unknown."""
    try:
        text = (cgroup / "cgroup.events").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "populated":
            return value.strip() == "1"
    return None


def kill_cgroup(cgroup: Path, hierarchy: Hierarchy, rounds: int = ROUNDS) -> KillResult:
    """SIGKILL every process of ``cgroup`` (and its descendants). Never raises; see :class:`KillResult`.

    v2: ``cgroup.kill``, falling back to pidfds when the kernel lacks it or the write is refused.
    v1: pidfds (see the module docstring for why a reused PID is never signalled).
    """
    note = ""
    if hierarchy.version == 2:
        if _populated(cgroup) is False:
            return KillResult(cgroup, "cgroup.kill", error="no process left in the cgroup (cgroup.events)")
        control = cgroup / "cgroup.kill"
        try:
            visible = len(member_pids(cgroup))
        except (Vanished, Unreadable):
            visible = 0
        try:
            fd = os.open(control, os.O_WRONLY | os.O_CLOEXEC)  # never O_CREAT: only the kernel's file
            try:
                os.write(fd, b"1")
            finally:
                os.close(fd)
            return KillResult(cgroup, "cgroup.kill", visible)
        except OSError as exc:
            if exc.errno in GONE and not os.path.isdir(cgroup):
                return KillResult(cgroup, "cgroup.kill", vanished=True)
            if exc.errno != errno.ENOENT:  # ENOENT: a kernel before 5.14, which has no cgroup.kill
                note = f"; cgroup.kill refused: {exc.strerror}"
    result = signal_members(cgroup, rounds)
    if note and not result.ok:
        return KillResult(result.cgroup, result.method, result.signalled, f"{result.error}{note}", result.vanished)
    return result


def kill_pod(pod_dir: Path, hierarchy: Hierarchy, rounds: int = ROUNDS) -> KillResult:
    """SIGKILL a pod's application containers and never its sandbox (the node guard's hard line): every
    child cgroup that :func:`memwatch.discovery.classify` does not call the sandbox (``pause``, CRI-O's
    conmon). With the sandbox alive, the kubelet restarts the containers in place, as after an OOM
    kill, instead of tearing the pod's network down. Processes placed straight in a pod cgroup with no
    child cgroups are killed as one. ``ok`` when at least one container's processes were killed."""
    kids = children(pod_dir)
    if not kids:
        return kill_cgroup(pod_dir, hierarchy, rounds)
    targets = [c for c in kids if classify(c) != SANDBOX]
    if not targets:
        return KillResult(pod_dir, "pidfd", error="nothing but the pod's sandbox to kill")
    results = [kill_cgroup(t, hierarchy, rounds) for t in targets]
    method = results[0].method
    if all(r.vanished for r in results):
        return KillResult(pod_dir, method, vanished=True)
    signalled = sum(r.signalled for r in results)
    if any(r.ok for r in results):
        return KillResult(pod_dir, method, signalled)
    errors = "; ".join(f"{r.cgroup.name[:20]}: {r.error}" for r in results if r.error)
    return KillResult(pod_dir, method, signalled, errors or "nothing killed")


def signal_members(cgroup: Path, rounds: int = ROUNDS) -> KillResult:
    """SIGKILL the processes of ``cgroup`` (and descendants) through pidfds, re-checking membership
    after each pidfd is open. Never raises."""
    signalled: set[int] = set()
    refused: dict[int, str] = {}
    try:
        for _ in range(rounds):
            todo = member_pids(cgroup) - signalled - refused.keys()
            if not todo:
                break
            fds: dict[int, int] = {}
            try:
                for pid in sorted(todo):
                    try:
                        fds[pid] = os.pidfd_open(pid)
                    except ProcessLookupError:
                        continue  # exited since the listing
                    except OSError as exc:
                        if exc.errno == errno.ENOSYS:
                            return KillResult(cgroup, "pidfd", len(signalled),
                                              "this kernel has no pidfd_open (Linux 5.3+): refusing to signal "
                                              "by bare PID, which may have been reused")
                        refused[pid] = f"pidfd_open({pid}): {exc.strerror}"
                # The re-check: a PID still listed now belongs to the process its pidfd names, or that
                # process has exited (and the signal fails with ESRCH). Never another process.
                still = member_pids(cgroup)
                for pid, fd in fds.items():
                    if pid not in still:
                        continue
                    try:
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    except OSError as exc:
                        refused[pid] = f"SIGKILL to {pid}: {exc.strerror}"
                        continue
                    signalled.add(pid)
            finally:
                for fd in fds.values():
                    os.close(fd)
    except Vanished:
        if not signalled:
            return KillResult(cgroup, "pidfd", vanished=True)
    except Unreadable as exc:
        return KillResult(cgroup, "pidfd", len(signalled), str(exc))
    if refused:
        first = next(iter(refused.values()))
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        hint = " (the agent needs CAP_KILL)" if "not permitted" in first else ""
        return KillResult(cgroup, "pidfd", len(signalled), f"{first}{more}{hint}")
    if not signalled:
        return KillResult(cgroup, "pidfd", 0, f"no process in {cgroup}/cgroup.procs to signal: {INVISIBLE_HINT}")
    return KillResult(cgroup, "pidfd", len(signalled))
