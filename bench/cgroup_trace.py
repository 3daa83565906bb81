"""A cgroup v1 memory cgroup's working set over time, read every few milliseconds by a separate
process while a race runs (bench/oom_race.py's traced races, for bench/pictures.py).

A process of its own, not a thread: it never waits for the racing agent's interpreter lock, and
the agent never waits for it. It opens its own file descriptors, arms no threshold, and records
(epoch, usage, working set) per read plus the first time the kernel's ``oom_kill`` counter went up.
Closing its stdin stops it; it then writes what it read to stdout.

    python bench/cgroup_trace.py /sys/fs/cgroup/memory/<cgroup> 0.002   # the child side
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MiB = 1 << 20
INACTIVE_KEY = b"total_inactive_file"  # the kubelet's working set on v1: usage - total_inactive_file


class CgroupTrace:
    """``with CgroupTrace(path) as trace:`` reads ``path`` every ``period`` seconds until the block
    ends; then ``trace.samples`` holds (epoch, usage bytes, working-set bytes) and ``trace.oom_at``
    when the kernel's OOM killer first struck in it (None: never)."""

    def __init__(self, path: Path, period: float = 0.002) -> None:
        self.path = Path(path)
        self.period = period
        self.samples: list[tuple[float, int, int]] = []
        self.oom_at: float | None = None
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> CgroupTrace:
        self._proc = subprocess.Popen([sys.executable, __file__, str(self.path), str(self.period)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        self._proc.stdout.readline()  # "ready": its files are open and it has read once
        return self

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            out, _ = proc.communicate(timeout=10)  # closes its stdin: it stops and reports
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        for line in out.splitlines():
            fields = line.split()
            if len(fields) != 4:
                continue
            t, usage, inactive, oom = float(fields[0]), int(fields[1]), int(fields[2]), int(fields[3])
            self.samples.append((t, usage, max(0, usage - inactive)))
            if oom > 0 and self.oom_at is None:
                self.oom_at = t

    def series(self, start: float, reads: list[tuple[float, int]], killer: str, acted: float | None = None,
               crossed: float | None = None, predicted: bool = False) -> dict[str, Any]:
        """Plain data for :func:`pictures.oom_race`: seconds from ``start`` (the hog's spawn), MiB.
        ``reads``: (epoch, bytes) the agent or the poller read itself."""
        def rel(t: float | None) -> float | None:
            return None if t is None else round(t - start, 6)

        kept = [s for s in self.samples if s[0] >= start - 0.05]
        return {"t": [round(t - start, 6) for t, _, _ in kept], "usage_mib": [u / MiB for _, u, _ in kept],
                "ws_mib": [w / MiB for _, _, w in kept], "reads_t": [round(t - start, 6) for t, _ in reads],
                "reads_mib": [v / MiB for _, v in reads], "acted": rel(acted), "crossed": rel(crossed),
                "oom": rel(self.oom_at), "predicted": predicted, "killer": killer}


def _stat_value(text: bytes, key: bytes) -> int:
    for line in text.splitlines():
        name, _, value = line.partition(b" ")
        if name == key:
            return int(value)
    return 0


def main(argv: list[str]) -> int:
    """The child: read until stdin closes (or the cgroup goes), then print one line per read."""
    path, period = Path(argv[0]), float(argv[1])
    fds = [os.open(path / name, os.O_RDONLY | os.O_CLOEXEC)
           for name in ("memory.usage_in_bytes", "memory.stat", "memory.oom_control")]
    lines: list[str] = []
    ready = False
    while True:
        t = time.time()
        try:
            usage = int(os.pread(fds[0], 64, 0))
            inactive = _stat_value(os.pread(fds[1], 65536, 0), INACTIVE_KEY)
            oom = _stat_value(os.pread(fds[2], 4096, 0), b"oom_kill")
        except (OSError, ValueError):  # the cgroup was removed: its files read empty
            break
        lines.append(f"{t:.6f} {usage} {inactive} {oom}")
        if not ready:
            print("ready", flush=True)
            ready = True
        if select.select([sys.stdin], [], [], period)[0]:
            break  # stdin closed (or written to): stop
    if not ready:
        print("ready", flush=True)
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
