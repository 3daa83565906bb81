"""The benchmarks' pictures (bench/pictures.py, issue #13): each drawing function writes a PNG of its
fixed pixel size from small synthetic data, missing or partial data is skipped or drawn without a
crash, and matplotlib stays out of the runtime package (it is the ``bench`` extra only)."""

from __future__ import annotations

import importlib.util
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("matplotlib", reason="matplotlib is the `bench` extra (make install installs it)")

BENCH = Path(__file__).resolve().parents[2] / "bench"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_bench(name: str) -> ModuleType:
    """A module of bench/ under its own name (as tests/agent/helpers.py loads the benchmarks)."""
    key = f"memwatch_bench_{name}"
    module = sys.modules.get(key)
    if module is None:
        if str(BENCH) not in sys.path:
            sys.path.insert(0, str(BENCH))  # bench/ modules import their siblings by plain name
        spec = importlib.util.spec_from_file_location(key, BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return module


pictures = load_bench("pictures")


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def assert_png(path: Path, size: tuple[int, int]) -> None:
    assert path.is_file() and path.stat().st_size > 10_000, f"{path}: missing or nearly empty"
    assert png_size(path) == size


def trace(rate: float, stop_mib: float, acted: float | None, oom: float | None, reads_every: float,
          killer: str) -> dict[str, Any]:
    """A hog growing at ``rate`` MiB/s until ``stop_mib``, its memory gone once it is killed."""
    end = stop_mib / rate
    t = [i * 0.002 for i in range(int((end + 0.05) / 0.002))]
    ws = [min(rate * x, stop_mib) if x <= end else 0.0 for x in t]
    reads_t = [i * reads_every for i in range(1, int(end / reads_every) + 1)]
    return {"t": t, "usage_mib": ws, "ws_mib": ws, "reads_t": reads_t, "reads_mib": [rate * x for x in reads_t],
            "acted": acted, "crossed": None if acted is None else 192 / rate, "oom": oom, "predicted": False,
            "killer": killer}


def races() -> list[dict[str, Any]]:
    out = []
    for rate in (50, 200, 500, 1000):
        mw = trace(rate, 195, 195 / rate, None, 0.1, "memwatch")
        poll = trace(rate, 256, None, 256 / rate, 10.0, "oom-killer")
        out.append({"rate": rate, "hard_mib": 256, "watch_mib": 192, "memwatch": mw, "poll10": poll})
    return out


def test_oom_race_picture(tmp_path: Path) -> None:
    path = pictures.oom_race(races(), tmp_path / "oom-race.png")
    assert path == tmp_path / "oom-race.png"
    assert_png(path, pictures.OOM_RACE_SIZE)


def test_oom_race_picture_draws_partial_races(tmp_path: Path) -> None:
    """One rate only; no baseline; memwatch that never acted and lost to the kernel; a poll that won."""
    lost = trace(1000, 256, None, 0.256, 0.1, "oom-killer")
    won = trace(50, 195, 3.9, None, 10.0, "poll")
    data = [{"rate": 1000, "hard_mib": 256, "watch_mib": 192, "memwatch": lost, "poll10": None},
            {"rate": 50, "hard_mib": 256, "watch_mib": 192, "memwatch": trace(50, 195, 3.9, None, 0.1, "memwatch"),
             "poll10": won},
            {"rate": 200, "hard_mib": 256, "watch_mib": 192, "memwatch": None, "poll10": None}]
    assert_png(pictures.oom_race(data[:1], tmp_path / "one.png"), pictures.OOM_RACE_SIZE)
    assert_png(pictures.oom_race(data, tmp_path / "three.png"), pictures.OOM_RACE_SIZE)


def test_controller_scale_picture(tmp_path: Path) -> None:
    mib = 2**20
    points = [(1000, 40 * mib, 60 * mib, 1.2, 2.0), (5000, 70 * mib, 180 * mib, 2.5, 9.0),
              (10000, 100 * mib, 454 * mib, 4.0, 25.6), (50000, 300 * mib, None, 15.0, None)]
    path = pictures.controller_scale(points, tmp_path / "sub" / "controller-scale.png")
    assert_png(path, pictures.CONTROLLER_SCALE_SIZE)


def test_agent_cpu_picture(tmp_path: Path) -> None:
    points = [(n, 0.02 * n, 0.006 * n + 0.1, 10.0 * n, 1.2 * n + 5) for n in (10, 25, 50, 110, 250)]
    assert_png(pictures.agent_cpu(points, tmp_path / "agent-cpu.png"), pictures.AGENT_CPU_SIZE)
    without_reads = [(n, f, a, None, None) for n, f, a, *_ in points]
    assert_png(pictures.agent_cpu(without_reads, tmp_path / "no-reads.png", target_pct=None),
               pictures.AGENT_CPU_SIZE)


def test_counts_spanning_a_decade_get_a_log_axis() -> None:
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    pictures._count_axis(ax, [1000, 5000, 50000])
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1k", "5k", "50k"]
    ax = Figure().subplots()
    pictures._count_axis(ax, [100, 250])
    assert ax.get_xscale() == "linear"


@pytest.mark.parametrize("draw", ["oom_race", "controller_scale", "agent_cpu"])
def test_no_data_is_an_error_the_runner_reports(draw: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        getattr(pictures, draw)([], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_the_runner_draws_what_it_has_and_says_why_it_skips_the_rest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = load_bench("run")
    rows = [run.Row.not_run("3. controller memory and start-up", "no local cluster at /var/lib/x")]
    data = {"agent_cpu": [(10, 0.2, 0.1, 100.0, 20.0), (250, 4.0, 1.5, 2500.0, 300.0)],
            "oom_race": [{"rate": 50, "broken": True, "memwatch": {"t": [0.0], "ws_mib": []}}]}
    written = run.draw_pictures(data, tmp_path, rows)
    out = capsys.readouterr().out
    assert written == [tmp_path / "agent-cpu.png"]
    assert_png(tmp_path / "agent-cpu.png", pictures.AGENT_CPU_SIZE)
    assert f"picture: {tmp_path / 'agent-cpu.png'}" in out
    assert "picture controller-scale.png: skipped, controller-scale NOT RUN: no local cluster" in out
    assert "picture oom-race.png: failed, ValueError" in out  # bad data: reported, the run goes on
    capsys.readouterr()
    run.draw_pictures({}, tmp_path, [], only=["api-requests"])
    assert "picture oom-race.png: skipped, oom-race was not run (--only)" in capsys.readouterr().out


def test_the_runner_says_so_without_matplotlib(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """No matplotlib: the run says so and collects no picture data (no agent-CPU sweep)."""
    run = load_bench("run")
    seen: dict[str, Any] = {}

    def fake_find_spec(name: str, *args: Any) -> Any:
        return None if name == "matplotlib" else real(name, *args)

    real = importlib.util.find_spec
    monkeypatch.setattr(run.importlib.util, "find_spec", fake_find_spec)
    monkeypatch.setattr(run, "BENCHMARKS", [])
    results = run.RESULTS / "never-written.md"
    monkeypatch.setattr(run, "write_results", lambda *a, **k: seen.setdefault("path", results))
    monkeypatch.setattr(run, "draw_pictures", lambda *a, **k: seen.setdefault("drawn", True))
    assert run.main([]) == 0
    out = capsys.readouterr().out
    assert "pictures: skipped, matplotlib is not installed" in out
    assert "drawn" not in seen


def test_make_bench_hands_the_data_over_and_writes_the_pictures_beside_the_results(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """bench/run.py end to end with a stand-in for bench/oom_race.py (no cgroup, no cluster): it is
    handed the pictures dict, and the PNGs land in results/<date>-quick/, next to <date>-quick.md."""
    run = load_bench("run")
    calls: dict[str, Any] = {}

    def fake_run(runs: int, cpu_seconds: float = 10.0,
                 pictures: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        calls.update(runs=runs, cpu_seconds=cpu_seconds, pictures=pictures)
        assert pictures is not None
        pictures["oom_race"] = races()[:2]
        pictures["agent_cpu"] = [(10, 0.3, 0.2, 100.0, 15.0), (110, 4.4, 1.4, 1100.0, 110.0)]
        return [{"name": "OOM race 50 MiB/s: pre-empted (3 runs)", "memwatch": "100% (3/3)", "baseline": "-",
                 "ratio": "-", "target": ">= 100%", "met": True}]

    stand_in = ModuleType("oom_race")
    stand_in.run = fake_run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "oom_race", stand_in)  # what run.py's import_module("oom_race") finds
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    assert run.main(["--quick", "--only", "oom-race"]) == 0
    out = capsys.readouterr().out
    assert calls["runs"] == 3 and calls["cpu_seconds"] == 3.0 and isinstance(calls["pictures"], dict)
    results = sorted(tmp_path.glob("*-quick.md"))
    assert len(results) == 1
    folder = results[0].with_suffix("")
    assert_png(folder / "oom-race.png", pictures.OOM_RACE_SIZE)
    assert_png(folder / "agent-cpu.png", pictures.AGENT_CPU_SIZE)
    assert not (folder / "controller-scale.png").exists()
    assert f"picture: {folder / 'oom-race.png'}" in out
    assert "picture controller-scale.png: skipped, controller-scale was not run (--only)" in out


def test_a_run_cut_short_keeps_what_it_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The results file is written after each benchmark: a run killed in the second keeps the first's
    rows, and rows of earlier today that it had not re-run yet."""
    run = load_bench("run")
    earlier = run.Row("8. lint figure", "1 s", "2 s", "0.5x", "≤ 15 s", "yes")
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    run.write_results([earlier], run.argparse.Namespace(quick=True, only=None), 60.0)

    first = ModuleType("bench_first")
    first.run = lambda ctx: [run.Row("2. first figure", "1", "10", "0.1x", "1", "yes")]  # type: ignore[attr-defined]

    def killed(ctx: Any) -> list[Any]:
        raise KeyboardInterrupt  # the run is stopped here (Ctrl-C, a CI timeout's signal)

    second = ModuleType("bench_second")
    second.run = killed  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bench_first", first)
    monkeypatch.setitem(sys.modules, "bench_second", second)
    monkeypatch.setattr(run, "BENCHMARKS", [("first", "bench_first", ["2. first"]),
                                            ("second", "bench_second", ["3. second"])])
    with pytest.raises(KeyboardInterrupt):
        run.main(["--quick", "--no-pictures"])
    text = next(tmp_path.glob("*-quick.md")).read_text()
    assert "| 2. first figure | 1 | 10 |" in text
    assert "| 8. lint figure | 1 s |" in text, "earlier today's rows not re-run yet are kept"
    assert "CUT SHORT after first" in text


def test_a_run_with_only_says_whether_it_kept_rows_of_earlier_today(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    run = load_bench("run")
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    only = run.argparse.Namespace(quick=True, only=["lint"])
    first = run.write_results([run.Row("8. lint figure", "1 s", "2 s", "0.5x", "≤ 15 s", "yes")], only, 60.0)
    assert "nothing else run today" in first.read_text() and "kept from earlier today" not in first.read_text()
    run.write_results([run.Row("2. first figure", "1", "10", "0.1x", "1", "yes")],
                      run.argparse.Namespace(quick=True, only=["first"]), 60.0)
    text = first.read_text()
    assert "the other rows kept from earlier today" in text and "| 8. lint figure | 1 s |" in text


def test_the_runtime_package_never_imports_matplotlib() -> None:
    """Every module of memwatch imported in a fresh interpreter: matplotlib (the `bench` extra) is not loaded."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import memwatch\n"
        "names = [m.name for m in pkgutil.walk_packages(memwatch.__path__, 'memwatch.')\n"
        "         if m.name != 'memwatch.__main__']\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'matplotlib' or m.startswith('matplotlib.'))\n"
        "print(len(names), bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"memwatch imported matplotlib: {done.stdout} {done.stderr[-2000:]}"
    count = int(done.stdout.split()[0])
    assert count >= 20, f"only {count} memwatch modules imported: {done.stdout}"


def test_matplotlib_is_the_bench_extra_not_a_runtime_dependency() -> None:
    import tomllib

    project = tomllib.loads((BENCH.parent / "pyproject.toml").read_text())["project"]
    assert not any(d.lower().startswith("matplotlib") for d in project["dependencies"])
    assert any(d.startswith("matplotlib>=") and "<" in d for d in project["optional-dependencies"]["bench"])
    assert "'.[test,bench]'" in (BENCH.parent / "Makefile").read_text()
