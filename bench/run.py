"""`make bench`: run every benchmark, print one table, write it to bench/results/<date>.md
(``--quick``: <date>-quick.md, so a quick run never replaces the committed full results), and draw
its pictures into bench/results/<date>/ (``--quick``: <date>-quick/) with bench/pictures.py. The
results file is written after each benchmark, so a run cut short keeps what it measured.

    python bench/run.py                 # the full suite (~20 minutes on 2 cores)
    python bench/run.py --quick         # smaller sizes, fewer runs (a few minutes)
    python bench/run.py --only api-requests --only action-latency

Every row shows memwatch and its baseline measured in the same run, their ratio, the target from
issue #6 and whether it is met. A benchmark that cannot run here (not root, no local cluster, no
agent benchmark yet) prints a loud NOT RUN row saying why; the suite still prints everything else.
Benchmarks print figures; they do not fail. The structural guards live in `make test`.

Pictures need matplotlib, the ``bench`` extra (``make install`` installs it): without it the run says
so and draws none. A picture whose benchmark did not run, or handed over no data, is skipped with
the reason printed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, Context, Row, cluster_epoch, cluster_problem, machine, table

RESULTS = REPO / "bench" / "results"

#: (name for --only, module, figures it produces when it cannot run at all), in the order they run.
#: controller-scale runs before api-requests: it measures "N pods in the cluster", and the
#: annotated pods api-requests adds would count against it.
BENCHMARKS: list[tuple[str, str, list[str]]] = [
    ("oom-race", "oom_race", ["1. OOM race, node agent", "5. agent CPU, 110 pods, 100 ms sampling"]),
    ("controller-scale", "controller_scale", ["3. controller memory and start-up", "4. sweep and controller CPU"]),
    ("api-requests", "api_requests", ["2. API requests per sweep"]),
    ("action-latency", "action_latency", ["6. action latency"]),
    ("node-guard", "node_guard_cluster", ["7. node guard vs kubelet eviction"]),
    ("lint", "lint_scale", ["8. memwatch lint start-up and scale"]),
]
ORDER = ["1.", "2.", "3.", "4.", "5.", "6.", "7.", "8."]


def _run_one(name: str, module: str, fallback: list[str], ctx: Context) -> list[Row]:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return [Row.not_run(f, f"bench/{module}.py is not in this checkout") for f in fallback]
    if module == "oom_race":  # the node agent's benchmark: run(runs) -> list[dict]
        runs_fn: Callable[..., list[dict[str, object]]] = mod.run
        params = inspect.signature(runs_fn).parameters
        kwargs: dict[str, Any] = {"cpu_seconds": 3.0} if ctx.quick and "cpu_seconds" in params else {}
        if ctx.pictures is not None and "pictures" in params:
            kwargs["pictures"] = ctx.pictures
        rows = [Row.from_dict(d) for d in runs_fn(3 if ctx.quick else 10, **kwargs)]
        for r in rows:  # number its rows as issue #6 does: 1 (OOM race) and 5 (agent CPU)
            if not r.figure[:1].isdigit():
                r.figure = ("5. " if "cpu" in r.figure.lower() else "1. ") + r.figure
        return rows
    result: list[Row] = mod.run(ctx)
    return result


def _cluster_went_away(ctx: Context, recreated: bool) -> bool:
    """True when the local cluster was down or re-created during a benchmark and is up again
    (within 5 minutes): the benchmark is then worth one more try, with fresh credentials."""
    went_away = recreated
    if ctx._api is not None and not went_away:
        try:
            ctx._api.request("GET", "/api/v1/namespaces/default", timeout=5)
        except Exception:
            went_away = True
    deadline = time.monotonic() + 300
    while went_away and time.monotonic() < deadline:
        if cluster_problem(node_needed=True) is None:
            ctx._api, ctx._farm = None, None  # a re-created cluster has a new CA and no bench pods
            return True
        time.sleep(10)
    return False


def main(argv: list[str] | None = None) -> int:
    names = [b[0] for b in BENCHMARKS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer runs (a few minutes)")
    parser.add_argument("--only", action="append", choices=names, metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(names)}")
    parser.add_argument("--keep", action="store_true", help="leave the bench pods and namespaces in place")
    parser.add_argument("--no-write", action="store_true",
                        help="print the table only; write no results file and no pictures")
    parser.add_argument("--no-pictures", action="store_true",
                        help="draw no pictures (nor collect their data: the agent-CPU sweep is skipped)")
    args = parser.parse_args(argv)

    ctx = Context(quick=args.quick, log=lambda s: print(s, file=sys.stderr, flush=True))
    if not (args.no_write or args.no_pictures):
        if importlib.util.find_spec("matplotlib") is None:
            print("pictures: skipped, matplotlib is not installed (it is the `bench` extra: "
                  "`make install`, or pip install -e '.[bench]')", flush=True)
        else:
            ctx.pictures = {}
    started = time.monotonic()
    rows: list[Row] = []
    done: list[str] = []
    try:
        for name, module, fallback in BENCHMARKS:
            if args.only and name not in args.only:
                continue
            ctx.log(f"== {name} ({'quick' if args.quick else 'full'})")
            t0 = time.monotonic()
            got: list[Row] = []
            for attempt in (1, 2):
                epoch = cluster_epoch()
                try:
                    got = _run_one(name, module, fallback, ctx)
                except Exception as exc:  # one broken benchmark must not hide the others' figures
                    traceback.print_exc()
                    got = [Row.not_run(f, f"{name} failed: {type(exc).__name__}: {str(exc)[:200]}")
                           for f in fallback]
                recreated = name != "oom-race" and cluster_epoch() != epoch
                if attempt == 1 and (recreated or any(r.met == "**NOT RUN**" for r in got)) \
                        and _cluster_went_away(ctx, recreated):
                    ctx.log(f"== the cluster went away during {name} (others share it); it is back: again")
                    continue
                break
            rows += got
            done.append(name)
            ctx.log(f"== {name} done in {time.monotonic() - t0:.0f}s")
            if not args.no_write:  # a run cut short keeps what it measured
                write_results(rows, args, time.monotonic() - started, partial=done)
    finally:
        if not args.keep and ctx._farm is not None:
            ctx.log("== removing bench pods, namespaces and fake nodes")
            try:
                ctx.farm.cleanup()
            except Exception as exc:
                ctx.log(f"cleanup failed ({exc}); remove bench-* namespaces and bench-node-* nodes by hand")
    rows = sort_rows(rows)
    text = table(rows)
    print(text)
    missed = [r for r in rows if r.met == "**NO**"]
    not_run = [r for r in rows if r.met == "**NOT RUN**"]
    if not_run:
        print(f"NOT RUN: {len(not_run)} row(s); see the memwatch column for why.")
    if missed:
        print(f"Targets missed: {len(missed)} row(s): " + "; ".join(r.figure for r in missed))
    if not args.no_write:
        path = write_results(rows, args, time.monotonic() - started)
        print(f"written to {_shown(path)}")
        if ctx.pictures is not None:
            draw_pictures(ctx.pictures, path.parent / path.stem, rows, args.only)
    return 0


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _missing(benchmark: str, rows: list[Row], only: list[str] | None) -> str:
    """Why a benchmark handed over no data for its picture."""
    if only and benchmark not in only:
        return f"{benchmark} was not run (--only)"
    numbers = tuple(f.split(" ", 1)[0] for name, _, fallback in BENCHMARKS if name == benchmark for f in fallback)
    for r in rows:
        if r.met == "**NOT RUN**" and r.figure.startswith(numbers):
            return f"{benchmark} NOT RUN: {r.memwatch.removeprefix('**NOT RUN: ').removesuffix('**')}"
    return f"{benchmark} handed over no data for it"


def draw_pictures(data: dict[str, Any], out_dir: Path, rows: list[Row], only: list[str] | None = None) -> list[Path]:
    """Draw every picture whose data the benchmarks handed over into ``out_dir``; print each path, or
    why a picture was skipped. Never raises: a picture must not cost the run its table."""
    try:
        import pictures
    except ImportError as exc:  # matplotlib missing or broken
        print(f"pictures: skipped, bench/pictures.py cannot be imported: {exc}")
        return []
    written: list[Path] = []
    for filename, key, benchmark, draw in pictures.PICTURES:
        target = out_dir / filename
        if not data.get(key):
            kept = f"; the one drawn earlier stays ({_shown(target)})" if target.exists() else ""
            print(f"picture {filename}: skipped, {_missing(benchmark, rows, only)}{kept}")
            continue
        try:
            written.append(draw(data[key], target))
        except Exception as exc:
            traceback.print_exc()
            print(f"picture {filename}: failed, {type(exc).__name__}: {str(exc)[:200]}")
            continue
        print(f"picture: {_shown(target)}")
    return written


def _merge(rows: list[Row], path: Path) -> list[Row]:
    """With --only: keep the other figures of today's results file, replace the re-run ones."""
    if not path.exists():
        return rows
    numbers = {r.figure.split(" ", 1)[0] for r in rows}
    kept = []
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 6 and cells[0][:1].isdigit() and cells[0].split(" ", 1)[0] not in numbers:
            kept.append(Row(*cells))
    return sort_rows(kept + rows)


def sort_rows(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: next((i for i, p in enumerate(ORDER) if r.figure.startswith(p)), len(ORDER)))


def write_results(rows: list[Row], args: argparse.Namespace, seconds: float,
                  partial: list[str] | None = None) -> Path:
    """Write today's results file. ``partial``: the benchmarks done so far in a run still going (the
    file is written after each one, so a run cut short keeps what it measured); the rows of earlier
    today that this run has not re-run yet are kept, as with --only."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    # A quick run never replaces the full run's file, which is the one committed.
    path = RESULTS / f"{now:%Y-%m-%d}{'-quick' if args.quick else ''}.md"
    measured = len(rows)
    if args.only or partial is not None:
        rows = _merge(rows, path)
    kept = len(rows) - measured  # rows of earlier today's file this run did not re-run
    text = table(rows)
    notes = "".join(f"- **{r.figure}**: {r.note}\n" for r in rows if r.note)
    if notes:
        text += f"\n## Notes\n\n{notes}"
    details = "\n".join(f"- {k}: {v}" for k, v in machine().items())
    mode = "quick (`python bench/run.py --quick`)" if args.quick else "full (`make bench`)"
    only = ""
    if args.only:
        only = f"; {', '.join(args.only)} re-run with --only, " + (
            "the other rows kept from earlier today" if kept else
            "nothing else run today (the other benchmarks' figures are in earlier results files)")
    if partial is not None:
        only += (f"; STILL RUNNING or CUT SHORT after {', '.join(partial)} (rows not re-run yet are "
                 "kept from earlier today)")
    path.write_text(
        f"# memwatch benchmarks, {now:%Y-%m-%d %H:%M} UTC\n\n"
        f"Run: {mode}{only}, {seconds / 60:.1f} minutes. Ratio is memwatch / baseline (below 1x: memwatch "
        f"costs less). How each figure is measured: the docstring of its module in bench/.\n\n"
        f"{text}\n## Machine\n\n{details}\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
