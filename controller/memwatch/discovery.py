"""Finding a pod's cgroups the moment the kubelet and the runtime make them, without the API server.

The API server learns a container's ID from the kubelet after the container already runs; a leak that
starts with the container's first instruction can reach the kernel's OOM killer before that ID reaches
the agent. So the agent watches the node's cgroup tree itself:

* :class:`Inotify` (inotify(7) through libc): the kubepods QoS directories, to wake the moment a pod
  cgroup appears (the kubelet makes it with the sandbox, before any container), and each watched
  pod's own directory, to wake the moment a container cgroup appears (runc makes it before the
  container's process runs its first instruction) or goes (a restart makes a new one).
* :func:`classify`: a new child of a pod cgroup is the sandbox (every process in it is ``pause``) or
  an application container (any other process); with no process yet it is not decided.
* :func:`name_containers`: an application container found this way is named by the container ID the
  API reports when it is known; before that, in a pod with one container and no init containers, it
  can only be that container; otherwise it is watched under a provisional name (``?<first 12 hex>``):
  it counts towards the pod's usage and can be killed for a pod-level breach, and its per-container
  limit applies once the API names it.

Without inotify (refused, or out of watches) the source scans the pod directories on its samples
instead; without visible processes (no ``hostPID``) children are not classified and the agent waits
for the API's container IDs, as it did before.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

log = logging.getLogger("memwatch.discovery")

IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVED_TO = 0x00000080
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
_EVENT = struct.Struct("iIII")
#: Processes that are not the pod's application: the sandbox's (the pause image, every runtime) and
#: CRI-O's container monitor (in ``crio-conmon-<id>.scope`` inside the pod's slice). Never killed.
SANDBOX_COMMS = frozenset({"pause", "conmon"})
#: The runtime's own process while it sets a container up (``runc:[2:INIT]``, crun): the sandbox and
#: application containers alike start as one, so a cgroup holding only these is not decided yet.
SETTING_UP = ("runc", "crun")
SANDBOX, CONTAINER = "sandbox", "container"


class Inotify:
    """A non-blocking inotify descriptor watching directories for child directories made or removed."""

    MASK = IN_CREATE | IN_DELETE | IN_MOVED_TO | IN_DELETE_SELF | IN_ONLYDIR

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd: int = fd
        self.paths: dict[int, Path] = {}  # watch descriptor -> directory

    @classmethod
    def open_or_none(cls) -> Inotify | None:
        try:
            return cls()
        except (OSError, AttributeError) as exc:
            log.warning("inotify unavailable (%s): new pod and container cgroups are found by scanning on "
                        "each sample instead", exc)
            return None

    def watch(self, path: Path) -> int:
        """Watch ``path`` for child directories; returns the watch descriptor. Raises OSError."""
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), self.MASK)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        self.paths[wd] = path
        return int(wd)

    def unwatch(self, wd: int) -> None:
        if self.paths.pop(wd, None) is not None:
            self._libc.inotify_rm_watch(self.fd, wd)  # EINVAL once the directory is gone: nothing to do

    def read(self) -> tuple[set[Path], bool]:
        """Drain the queue: the watched directories whose children changed, and whether the queue
        overflowed (then every directory must be looked at again)."""
        changed: set[Path] = set()
        overflow = False
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                break
            if not buf:
                break
            off = 0
            while off + _EVENT.size <= len(buf):
                wd, mask, _cookie, size = _EVENT.unpack_from(buf, off)
                off += _EVENT.size + size
                if mask & IN_Q_OVERFLOW:
                    overflow = True
                    continue
                path = self.paths.get(wd)
                if mask & IN_IGNORED:
                    self.paths.pop(wd, None)  # the directory is gone, and its watch with it
                if path is not None:
                    changed.add(path)
        return changed, overflow

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        self.fd = -1
        self.paths.clear()


def children(pod_dir: Path) -> list[Path]:
    """The child cgroups of a pod cgroup (real directories only, never symlinks). Never raises."""
    try:
        with os.scandir(pod_dir) as it:
            return [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _comms(pids: Sequence[int]) -> Iterator[str]:
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm", "rb") as f:
                yield f.read().decode("utf-8", "replace").strip()
        except OSError:
            continue  # exited in between


def classify(cgroup: Path) -> str | None:
    """:data:`SANDBOX` when every process in ``cgroup`` is the pause program (or CRI-O's conmon),
    :data:`CONTAINER` when any is another program, None when no process is there (yet), none is
    visible from here, or the runtime is still setting it up (:data:`SETTING_UP`)."""
    if cgroup.name.startswith("crio-conmon-"):
        return SANDBOX
    try:
        with open(cgroup / "cgroup.procs", "rb") as f:
            pids = [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return None
    comms = [c for c in _comms(pids) if not c.startswith(SETTING_UP)]
    if not comms:
        return None
    return SANDBOX if all(c in SANDBOX_COMMS for c in comms) else CONTAINER


def short_id(dirname: str) -> str:
    """``cri-containerd-<id>.scope`` or ``<id>`` → the first 12 hex digits of the ID (as ``crictl`` shows)."""
    base = dirname.removesuffix(".scope")
    return base.rsplit("-", 1)[-1][:12]


def name_containers(known: Mapping[str, Path], found: Sequence[Path], sole: str | None,
                    live: Mapping[Path, bool]) -> dict[str, Path]:
    """Names for application-container cgroups the API has not named yet.

    ``known``: the cgroups matched to the API's container IDs; ``found``: the other application
    containers' cgroups, newest last; ``sole``: the pod's one container when it has exactly one and
    no init containers; ``live``: which cgroups hold processes now. The newest unnamed cgroup takes
    ``sole`` unless a live cgroup already holds that name (a known one that is empty is a container
    that exited: its restart is the new one); every other one is ``?<short id>``.
    """
    out: dict[str, Path] = {}
    for path in reversed(found):
        if sole is not None and (sole not in known or not live.get(known[sole], False)) and sole not in out:
            out[sole] = path
        else:
            out[f"?{short_id(path.name)}"] = path
    return out
