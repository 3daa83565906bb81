"""Real cgroup v1 memory cgroups for the benchmarks and the tests that race the kernel: whether they
can be made here, and removing a tree of them with whatever still runs inside (the one copy of both,
imported by bench/oom_race.py, bench/node_guard.py and tests/agent/helpers.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

V1_MEMORY = Path("/sys/fs/cgroup/memory")


def v1_unavailable() -> str | None:
    """Why a real cgroup v1 memory cgroup cannot be made here, or None when it can."""
    if os.geteuid() != 0:
        return "not root: creating memory cgroups needs root"
    if not (V1_MEMORY / "memory.usage_in_bytes").exists():
        return f"no cgroup v1 memory hierarchy at {V1_MEMORY}"
    if not os.access(V1_MEMORY, os.W_OK):
        return f"{V1_MEMORY} is not writable"
    return None


def remove_tree(root: Path) -> None:
    """SIGKILL what is left in a real cgroup tree and remove it, deepest first; waits on the kernel
    (rmdir answers EBUSY until it has reaped the killed processes)."""
    for top, _, _ in sorted(os.walk(root), key=lambda t: -len(t[0])):
        for _attempt in range(500):
            with contextlib.suppress(OSError, ValueError):
                for pid in (Path(top) / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            try:
                os.rmdir(top)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.002)


def _runc_init() -> str:
    """``sh`` under the name ``runc-init``: the wrapper that joins a cgroup and then execs the program
    plays the part of runc's init process, which memwatch.discovery rightly does not take for the
    sandbox or a container (a plain ``sh`` there would be, until its exec)."""
    home = Path(tempfile.gettempdir()) / f"memwatch-harness-{os.getuid()}"
    link = home / "runc-init"
    if not link.exists():
        home.mkdir(exist_ok=True)
        tmp = home / f".runc-init-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(shutil.which("sh") or "/bin/sh")
        tmp.replace(link)
    return str(link)


def spawn(cgroup: Path, argv: list[str], wait: bool = False) -> subprocess.Popen[bytes]:
    """Start ``argv`` inside a real cgroup: the wrapper joins it, then execs, so no byte escapes.
    ``wait``: return only once the wrapper is in the cgroup (its exec may still be under way)."""
    script = f'echo $$ > {cgroup}/cgroup.procs && {"echo in && " if wait else ""}exec "$@" >/dev/null 2>&1'
    proc = subprocess.Popen([_runc_init(), "-c", script, "runc-init", *argv],
                            stdout=subprocess.PIPE if wait else subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if wait:
        assert proc.stdout is not None
        with proc.stdout:
            proc.stdout.readline()
    return proc


def wait_comm(pid: int, name: str, timeout: float = 5.0) -> None:
    """Wait until process ``pid`` runs the program called ``name`` (its exec has happened)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                return
        time.sleep(0.001)
    raise TimeoutError(f"process {pid} never became {name!r}")
