"""`memwatch lint` start-up and scale (issue #13): time and peak RSS on generated manifests.

    python bench/lint_scale.py                      # 50 MB of Deployments, 10 % annotated
    python bench/lint_scale.py --annotated 1.0      # every Deployment annotated (the worst case)
    python bench/lint_scale.py --mb 5 --startup-runs 3

Each figure is one run of the real command (`python -m memwatch lint FILE`) in a child process;
wall time and CPU time come from the child's resource usage, peak RSS from its own VmHWM. Start-up is measured
inside a fresh interpreter, from the first import of memwatch to lint's first line of output on a
one-Pod file (the interpreter's own start is not counted), and the fastest of a few runs is shown.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web-{i}
  namespace: team-{team}
  labels: {{app: web-{i}, tier: frontend}}
spec:
  replicas: 2
  selector:
    matchLabels: {{app: web-{i}}}
  template:
    metadata:
      labels: {{app: web-{i}, tier: frontend}}
{annotations}    spec:
      containers:
      - name: app
        image: registry.example/web:{i}
        ports: [{{containerPort: 8080}}]
        env:
        - {{name: MODE, value: production}}
        resources:
          requests: {{cpu: 100m, memory: 256Mi}}
          limits: {{memory: 1Gi}}
---
"""
ANNOTATIONS = """\
      annotations:
        memwatch.io/limit: "{limit}Mi"
        memwatch.io/for: "5s"
"""
NO_ANNOTATIONS = """\
      annotations:
        prometheus.io/scrape: "true"
"""

STARTUP = """
import sys, time
started = time.perf_counter()
from memwatch.cli import main
class FirstLine:
    at = None
    def write(self, text):
        if FirstLine.at is None:
            FirstLine.at = time.perf_counter() - started
        return len(text)
    def flush(self):
        pass
sys.stdout = FirstLine()
main(["lint", sys.argv[1]])
sys.stdout = sys.__stdout__
print(FirstLine.at)
"""


def generate(path: Path, megabytes: float, annotated: float) -> int:
    """Write Deployments until the file holds ``megabytes``; every 1/annotated-th one is annotated."""
    target = int(megabytes * 1_000_000)
    written = count = 0
    step = 0 if annotated <= 0 else max(1, round(1 / annotated))
    with path.open("w") as fh:
        while written < target:
            block = ANNOTATIONS.format(limit=500 + count % 400) if step and count % step == 0 else NO_ANNOTATIONS
            text = DEPLOYMENT.format(i=count, team=count % 50, annotations=block)
            fh.write(text)
            written += len(text)
            count += 1
    return count


#: `memwatch lint` as `python -m memwatch` runs it, then its own peak RSS (VmHWM, KiB) written to the
#: file in argv[2]. Not the child's ru_maxrss: Linux carries the forking parent's resident size over
#: exec into it, so a child of a big process (make bench's, after the 50k-pod rows) "peaked" at 278 MiB.
PEAK = """
import atexit, sys
def peak():
    with open("/proc/self/status") as fh, open(sys.argv[2], "w") as out:
        out.write(next(line.split()[1] for line in fh if line.startswith("VmHWM:")))
atexit.register(peak)
from memwatch.cli import main
raise SystemExit(main(["lint", sys.argv[1]]))
"""


def run_lint(path: Path) -> tuple[float, float, float, int]:
    """(wall s, CPU s, peak RSS MiB, exit code) of one `memwatch lint` run."""
    with tempfile.TemporaryDirectory(prefix="memwatch-lint-peak-") as tmp:
        peak = Path(tmp) / "vmhwm"
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", PEAK, str(path), str(peak)], stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        reported = peak.read_text() if peak.exists() else ""
    if not reported.isdigit():
        raise RuntimeError(f"memwatch lint did not report its peak RSS (exit {code})")
    return wall, usage.ru_utime + usage.ru_stime, int(reported) / 1024, code


def startup(runs: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "pod.yaml"
        small.write_text("kind: Pod\nmetadata:\n  name: p\n  annotations: {memwatch.io/limit: 512Mi}\n")
        return sorted(float(subprocess.run([sys.executable, "-c", STARTUP, str(small)], check=True,
                                           capture_output=True, text=True).stdout) for _ in range(runs))


def run(ctx: Any) -> list[Any]:
    """Row group 8 for `make bench` (bench/run.py): start-up and the 50 MB file (5 MB when quick)."""
    from common import Row, met

    mb = 5.0 if ctx.quick else 50.0
    times = startup(3 if ctx.quick else 5)
    ctx.log(f"  lint start-up: fastest {times[0]:.3f} s, median {times[len(times) // 2]:.3f} s of {len(times)}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifests.yaml"
        count = generate(path, mb, 0.1)
        size = path.stat().st_size / 1_000_000
        wall, cpu, rss, code = run_lint(path)
    ctx.log(f"  lint on {size:.1f} MB ({count:,} Deployments): {wall:.1f} s wall, {cpu:.1f} s CPU, "
            f"{rss:.0f} MiB peak, exit {code}")
    at_target = mb >= 50
    return [
        Row("8. `memwatch lint` start-up (import to first output, one small file), fastest of "
            f"{len(times)}", f"{times[0]:.3f} s (median {times[len(times) // 2]:.3f} s)",
            "0.36 s (0.1, 2026-11-28, not re-run)", f"{times[0] / 0.36:.2f}x", "≤ 0.15 s", met(times[0] <= 0.15)),
        Row(f"8. `memwatch lint` on {size:.0f} MB of manifests ({count:,} Deployments, 10 % annotated)",
            f"{wall:.1f} s wall, {cpu:.1f} s CPU, {rss:.0f} MiB peak RSS, exit {code}",
            "3 min 50 s, 600 MB (0.1 on 50 MB, 2026-11-28, not re-run)",
            f"{wall / 230:.2f}x" if at_target else "-", "≤ 15 s, ≤ 200 MB" + ("" if at_target else " (at 50 MB)"),
            met(wall <= 15 and rss <= 200 and code == 0) if at_target else met(None)),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=50.0, help="size of the generated manifest file")
    parser.add_argument("--annotated", type=float, default=0.1, help="fraction of Deployments annotated")
    parser.add_argument("--startup-runs", type=int, default=5)
    args = parser.parse_args()
    times = startup(args.startup_runs)
    print(f"start-up (import to first output, one small file): fastest {times[0]:.3f} s, "
          f"median {times[len(times) // 2]:.3f} s of {len(times)}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifests.yaml"
        count = generate(path, args.mb, args.annotated)
        size = path.stat().st_size / 1_000_000
        wall, cpu, rss, code = run_lint(path)
    print(f"lint on {size:.1f} MB ({count:,} Deployments, {args.annotated:.0%} annotated): "
          f"{wall:.1f} s wall, {cpu:.1f} s CPU, {rss:.0f} MiB peak RSS, exit {code}")
    load = os.getloadavg()[0]
    print(f"load average while measuring: {load:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
