"""Real cgroup v1 memory cgroups for the benchmarks and the tests that race the kernel: whether they
can be made here, and removing a tree of them with whatever still runs inside (the one copy of both,
imported by bench/oom_race.py, bench/node_guard.py and tests/agent/helpers.py)."""

from __future__ import annotations

import contextlib
import os
import signal
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
