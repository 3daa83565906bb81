"""The benchmarks' pictures (issue #13), drawn with matplotlib's headless Agg backend into PNG files.

One function per picture. Each takes plain data (lists, tuples, dicts of numbers, as the benchmarks
hand them over) and the output path, writes the PNG at a fixed pixel size and returns the path:

* :func:`oom_race`: one race per growth rate; the hog's working set over time, memwatch's run
  beside the 10 s poll baseline's on the same hog, the watch and hard limits, when memwatch acted
  and when the kernel killed the baseline's hog (data: ``bench/oom_race.py``, ``run(pictures=...)``);
* :func:`controller_scale`: the controller's RSS and its time to the first complete sweep against pod
  count, beside the kopf baseline (data: ``bench/controller_scale.py``, row 3);
* :func:`agent_cpu`: the node agent's CPU against pod count, adaptive sampling against fixed
  (data: ``bench/oom_race.py``, ``cpu_sweep``).

matplotlib is a ``bench`` extra (``pip install -e '.[bench]'``; ``make install`` installs it), never a
runtime dependency: nothing in the memwatch package imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, NullLocator

DPI = 100
#: Pixel sizes (width, height) of the PNGs.
OOM_RACE_SIZE = (1400, 1000)
CONTROLLER_SCALE_SIZE = (1300, 560)
AGENT_CPU_SIZE = (1300, 560)

MEMWATCH = "tab:blue"
BASELINE = "tab:gray"
KOPF = "tab:orange"
WATCH = "tab:orange"
HARD = "tab:red"
FIXED = "tab:purple"
ADAPTIVE = "tab:blue"


def _figure(size: tuple[int, int]) -> Figure:
    fig = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # the headless Agg canvas, whatever backend pyplot would pick
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)  # no bbox_inches="tight": the pixel size stays fixed
    return path


def _count_axis(ax: Axes, counts: Sequence[float]) -> None:
    """Pod counts on x: logarithmic when they span a decade or more, ticked at the measured counts."""
    counts = sorted({c for c in counts if c > 0})
    if not counts:
        return
    if counts[-1] / counts[0] >= 10:
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        lo, hi = math.log10(counts[0]), math.log10(counts[-1])
        pad = (hi - lo) * 0.06
        ax.set_xlim(10 ** (lo - pad), 10 ** (hi + pad))
    ax.xaxis.set_major_locator(FixedLocator(counts))
    ax.set_xticklabels([_count(c) for c in counts])


def _headroom(ax: Axes) -> None:
    """y from 0, with room at the top for the legend (upper left) above the highest point."""
    top = max((float(y) for line in ax.get_lines() for y in line.get_ydata()), default=0.0)
    ax.set_ylim(0, top * 1.3 if top > 0 else 1.0)


def _count(n: float) -> str:
    if n >= 1000 and n % 1000 == 0:
        return f"{n / 1000:g}k"
    return f"{n:,.0f}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if abs(seconds) < 10 else f"{seconds:.1f} s"


# -- 1. the OOM race -------------------------------------------------------------------------------


def oom_race(races: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """One panel per growth rate: the container's working set (MiB) against seconds from the hog's
    start, for memwatch's race (the cgroup read every few ms, and the agent's own reads) and the 10 s
    poll baseline's race on the same hog; the watch and hard limits; when memwatch's kill completed;
    when the kernel OOM-killed the baseline's hog (or the poller killed it, when its poll came in time).

    ``races``: per rate ``{"rate", "hard_mib", "watch_mib", "memwatch": trace, "poll10": trace or None}``,
    a trace being ``{"t", "ws_mib", "reads_t", "reads_mib", "acted", "crossed", "oom", "predicted",
    "killer"}`` (seconds from the hog's start, MiB; ``acted``/``crossed``/``oom`` None when it did not
    happen), as ``bench/oom_race.py``'s ``race_picture`` makes them.
    """
    if not races:
        raise ValueError("no races to draw")
    fig = _figure(OOM_RACE_SIZE)
    n = len(races)
    cols = 1 if n == 1 else 2
    rows = math.ceil(n / cols)
    axes = fig.subplots(rows, cols, squeeze=False)
    first = races[0]
    fig.suptitle(f"OOM race: memwatch's node agent against the kernel's OOM killer, one run per growth rate\n"
                 f"hard limit {first.get('hard_mib', '?')} MiB, watch limit {first.get('watch_mib', '?')} MiB; "
                 "baseline: a poll loop every 10 s on the same hog", fontsize=13)
    for ax, race in zip(axes.flat, races, strict=False):
        _race_panel(ax, race)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    handles = [
        Line2D([], [], color=MEMWATCH, lw=2, label="working set, memwatch's run (cgroup, every 2 ms)"),
        Line2D([], [], color=MEMWATCH, marker="o", ls="", ms=5, label="memwatch agent's own reads"),
        Line2D([], [], color=MEMWATCH, ls="--", lw=1.5, label="memwatch killed the hog"),
        Line2D([], [], color=BASELINE, lw=2, label="working set, 10 s poll's run"),
        Line2D([], [], color=BASELINE, marker="x", ls="", ms=7, label="10 s poll's reads"),
        Line2D([], [], color=HARD, ls=":", lw=2, label="kernel OOM-killed the hog (10 s poll's run)"),
        Line2D([], [], color=WATCH, ls="--", lw=1.2, label="watch limit"),
        Line2D([], [], color=HARD, lw=1.2, label="hard limit"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=10, frameon=False)
    return _save(fig, path)


def _race_panel(ax: Axes, race: Mapping[str, Any]) -> None:
    hard, watch = race.get("hard_mib"), race.get("watch_mib")
    mw: Mapping[str, Any] = race.get("memwatch") or {}
    poll: Mapping[str, Any] = race.get("poll10") or {}
    ends: list[float] = []
    if poll.get("t"):
        ax.plot(poll["t"], poll["ws_mib"], color=BASELINE, lw=2, alpha=0.8)
        ends.append(poll["t"][-1])
    if poll.get("reads_t"):
        ax.plot(poll["reads_t"], poll["reads_mib"], color=BASELINE, marker="x", ls="", ms=7)
    if mw.get("t"):
        ax.plot(mw["t"], mw["ws_mib"], color=MEMWATCH, lw=2)
        ends.append(mw["t"][-1])
    if mw.get("reads_t"):
        ax.plot(mw["reads_t"], mw["reads_mib"], color=MEMWATCH, marker="o", ls="", ms=4)
    for level, color, ls, what in ((watch, WATCH, "--", "watch limit"), (hard, HARD, "-", "hard limit")):
        if level is not None:
            ax.axhline(level, color=color, ls=ls, lw=1.2)
            ax.text(0.01, level, f"{what} {level:g} MiB", transform=ax.get_yaxis_transform(), ha="left",
                    va="bottom", fontsize=9, color=color)
    notes = []
    if mw.get("acted") is not None:
        ax.axvline(mw["acted"], color=MEMWATCH, ls="--", lw=1.5)
        ends.append(mw["acted"])
        when = ""
        if mw.get("crossed") is not None:
            lag = mw["acted"] - mw["crossed"]
            when = (f", {_ms(lag)} after it crossed the watch limit" if lag >= 0
                    else f", {_ms(-lag)} before it would cross the watch limit")
        how = " (predicted from its growth)" if mw.get("predicted") else ""
        notes.append(f"memwatch killed it at {mw['acted']:.2f} s{when}{how}")
    elif mw:
        notes.append(f"memwatch did not act (killer: {mw.get('killer', '?')})")
    if mw.get("oom") is not None:
        ax.axvline(mw["oom"], color=HARD, ls="-.", lw=1.5)
        notes.append(f"the kernel OOM-killed memwatch's hog at {mw['oom']:.2f} s")
    if poll:
        if poll.get("oom") is not None:
            ax.axvline(poll["oom"], color=HARD, ls=":", lw=2)
            ends.append(poll["oom"])
            notes.append(f"10 s poll: too late, the kernel OOM-killed it at {poll['oom']:.2f} s")
        elif poll.get("acted") is not None:
            ax.axvline(poll["acted"], color=BASELINE, ls="--", lw=1.5)
            ends.append(poll["acted"])
            notes.append(f"10 s poll: its poll came in time, it killed the hog at {poll['acted']:.2f} s")
        else:
            notes.append(f"10 s poll: {poll.get('killer', 'nobody')} ended it")
    else:
        notes.append("10 s poll baseline: not run")
    if notes:
        ax.text(0.02, 0.97, "\n".join(notes), transform=ax.transAxes, va="top", ha="left", fontsize=9,
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "0.8"})
    end = max(ends) if ends else 1.0
    ax.set_xlim(0, end * 1.12 if end > 0 else 1.0)
    top = max(v for v in (hard, watch, 1) if v is not None)
    ax.set_ylim(0, top * 1.45)  # room above the hard limit for the notes
    ax.set_title(f"{race.get('rate', '?')} MiB/s", fontsize=12, fontweight="bold")
    ax.set_xlabel("seconds since the hog started")
    ax.set_ylabel("working set (MiB)")
    ax.grid(True, alpha=0.3)


# -- 2. controller scale ---------------------------------------------------------------------------


def controller_scale(points: Sequence[Sequence[float | None]], path: Path) -> Path:
    """The controller's steady RSS (MiB) and its time from spawn to the first complete sweep (s)
    against pods in the cluster, memwatch beside the kopf baseline.

    ``points``: ``(pods, memwatch_rss_bytes, kopf_rss_bytes, memwatch_first_sweep_s, kopf_first_s)``
    per measured size (a kopf figure may be None: not measured at that size).
    """
    pts = sorted((p for p in points if p and p[0]), key=lambda p: float(p[0] or 0))
    if not pts:
        raise ValueError("no points to draw")
    fig = _figure(CONTROLLER_SCALE_SIZE)
    rss_ax, first_ax = fig.subplots(1, 2)
    fig.suptitle("Controller at scale: memwatch against a minimal kopf controller (same pods, same run)",
                 fontsize=13)
    pods = [float(p[0] or 0) for p in pts]

    def series(ax: Axes, index: int, scale: float, color: str, label: str, marker: str) -> None:
        xy = [(x, float(p[index]) / scale) for x, p in zip(pods, pts, strict=True) if p[index] is not None]
        if xy:
            ax.plot([x for x, _ in xy], [y for _, y in xy], color=color, marker=marker, lw=2, ms=7, label=label)

    series(rss_ax, 1, 2**20, MEMWATCH, "memwatch run", "o")
    series(rss_ax, 2, 2**20, KOPF, "kopf baseline (@kopf.on.event)", "s")
    rss_ax.set_title("steady-state RSS")
    rss_ax.set_ylabel("RSS (MiB)")
    series(first_ax, 3, 1.0, MEMWATCH, "memwatch: spawn to first complete sweep", "o")
    series(first_ax, 4, 1.0, KOPF, "kopf: spawn to seeing every watched pod", "s")
    first_ax.set_title("start-up: time to the first complete sweep")
    first_ax.set_ylabel("seconds from spawn")
    for ax in (rss_ax, first_ax):
        _headroom(ax)
        _count_axis(ax, pods)
        ax.set_xlabel("pods in the cluster (10 % annotated)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize=10)
    return _save(fig, path)


# -- 3. agent CPU ----------------------------------------------------------------------------------


def agent_cpu(points: Sequence[Sequence[float | None]], path: Path, target_pct: float | None = 2.0) -> Path:
    """The node agent's CPU (% of one core) against watched pods on the node, fixed sampling (every
    pod every 100 ms) against adaptive (quiet pods under a kernel threshold read less often); beside
    it, the cgroup reads per second that explain the difference, when given.

    ``points``: ``(pods, fixed_cpu_pct, adaptive_cpu_pct, fixed_reads_per_s, adaptive_reads_per_s)``
    per pod count (the reads may be None or left off).
    """
    pts = sorted((p for p in points if p and p[0]), key=lambda p: float(p[0] or 0))
    if not pts:
        raise ValueError("no points to draw")
    fig = _figure(AGENT_CPU_SIZE)
    has_reads = any(len(p) >= 5 and (p[3] is not None or p[4] is not None) for p in pts)
    if has_reads:
        cpu_ax, reads_ax = fig.subplots(1, 2)
    else:
        cpu_ax, reads_ax = fig.subplots(1, 1), None
    fig.suptitle("Node agent CPU against pods on the node (real cgroup v1 memory cgroups, 100 ms sample period)",
                 fontsize=13)
    pods = [float(p[0] or 0) for p in pts]

    def series(ax: Axes, index: int, color: str, label: str, marker: str) -> None:
        xy = [(x, float(v)) for x, p in zip(pods, pts, strict=True)
              if len(p) > index and (v := p[index]) is not None]
        if xy:
            ax.plot([x for x, _ in xy], [y for _, y in xy], color=color, marker=marker, lw=2, ms=7, label=label)

    series(cpu_ax, 1, FIXED, "fixed: every pod read every 100 ms", "s")
    series(cpu_ax, 2, ADAPTIVE, "adaptive: quiet pods left to kernel thresholds", "o")
    if target_pct is not None:
        cpu_ax.axhline(target_pct, color=HARD, ls="--", lw=1.2,
                       label=f"target: < {target_pct:g}% of a core at 110 pods")
    cpu_ax.set_title("agent CPU (loop and worker threads)")
    cpu_ax.set_ylabel("CPU (% of one core)")
    axes: list[Axes] = [cpu_ax]
    if reads_ax is not None:
        series(reads_ax, 3, FIXED, "fixed", "s")
        series(reads_ax, 4, ADAPTIVE, "adaptive", "o")
        reads_ax.set_title("cgroup reads the agent made")
        reads_ax.set_ylabel("pod reads per second")
        axes.append(reads_ax)
    for ax in axes:
        _headroom(ax)
        _count_axis(ax, pods)
        ax.set_xlabel("watched pods on the node")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize=10)
    return _save(fig, path)


#: (file name, key in the benchmarks' pictures data, benchmark that hands it over, drawing function).
PICTURES: list[tuple[str, str, str, Callable[[Any, Path], Path]]] = [
    ("oom-race.png", "oom_race", "oom-race", oom_race),
    ("controller-scale.png", "controller_scale", "controller-scale", controller_scale),
    ("agent-cpu.png", "agent_cpu", "oom-race", agent_cpu),
]
