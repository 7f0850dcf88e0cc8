"""The benchmark suite still runs end to end (``python -m benchmarks --smoke``).

Why: benchmarks/ is not exercised by anything else in the suite, so it would
rot silently.  This runs every benchmark at its smallest size, one round,
and checks that each produced its figures and that the report printed every
row.  It asserts nothing about speed: the figures of a smoke run mean nothing
(and timing thresholds do not belong in tests on a noisy 2-core machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.rows_kernel_flood import flood_rows

ROOT = Path(__file__).resolve().parent.parent
ZR_KEYS = ["zr_roundtrip", "profile_ping", "zr_progress", "zr_bigresult", "zr_cancel", "zr_coldstart", "zr_kernel", "zr_kernel_flood",
           "curve_clients", "curve_records", "curve_sizes", "curve_panels", "curve_watchers"]
BASELINE_KEYS = ["raw_reqrep", "raw_relay", "raw_zerocopy"]
PEER_KEYS = ["ipyparallel", "dask", "ray", "ray_bigresult"]  # optional extras: figures, or said to be not installed
CURVE_POINTS = {"curve_clients": ("threads", "processes"), "curve_sizes": ("points",),
                "curve_panels": ("points",), "curve_watchers": ("points",)}


def _errors(entry: dict) -> list[str]:
    found = [entry["error"]] if "error" in entry else []
    return found + [f"{k}: {v['error']}" for k, v in entry.items() if isinstance(v, dict) and "error" in v]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_smoke_run_produces_every_row(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--budget", "380", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    doc = json.loads(out.read_text())
    assert doc["meta"]["smoke"] is True and doc["meta"]["rounds"] == 1
    results = doc["results"]
    for key in ZR_KEYS + BASELINE_KEYS:
        assert key in results, f"{key} did not run: {proc.stdout[-2000:]}"
        for entry in results[key]:
            assert not _errors(entry), f"{key} failed: {_errors(entry)}"
    for key in PEER_KEYS:
        for entry in results[key]:
            assert entry.get("unavailable") or not _errors(entry), f"{key} failed: {_errors(entry)}"
            if entry.get("unavailable"):
                assert "not installed" in entry["error"]

    # Every row of the report is printed, with a zmqruntime figure in it.
    rows = doc["comparisons"]
    expected = [row.what for row in report.comparisons(results)]
    assert [row["what"] for row in rows] == expected
    for row in rows:
        assert row["what"] in proc.stdout
        assert row["value"] != "-", f"row {row['what']!r} has no zmqruntime figure: {row}"
        assert row["verdict"] in ("ok", "MISS", "n/a")
    # The flood rows (issue 11): a remote and a local cell each printed every line, beside the probes;
    # their latency, kernel CPU and IOPub bytes reached the table (figures present, never judged here).
    flood = results["zr_kernel_flood"][0]["flood"]
    assert flood["remote_tenth"]["flood"]["lines"] == flood["lines"] // 10
    for where in ("remote", "local"):
        assert flood[where]["flood"]["lines"] == flood["lines"], where
        assert flood[where]["idle"]["n"] == flood["cells"] and flood[where]["iopub"]["bytes"] > 0, where
    by_name = {row["what"]: row for row in rows}
    names = [row.what for row in flood_rows(results)]
    assert len(names) == 4 and all(name in by_name for name in names), names
    for figure in ("remote_median_ms", "local_median_ms", "idle_median_ms", "remote_kernel_cpu_pct",
                   "local_kernel_cpu_pct", "remote_bytes", "local_bytes", "remote_bytes_per_line",
                   "remote_marginal_bytes_per_line"):
        assert any(by_name[name]["numbers"].get(figure) is not None for name in names), figure
    # The cancel rows really cancelled: both a Python loop and a task blocked in C.
    for key in ("cancel", "cancel_blocked"):
        assert results["zr_cancel"][0][key]["n"] >= 2
    # Every point of every curve was measured (none failed quietly inside a curve).
    for key, groups in CURVE_POINTS.items():
        curve = results[key][0]["curve"]
        for group in groups:
            bad = {n: p["error"] for n, p in curve[group].items() if "error" in p}
            assert curve[group] and not bad, f"{key} {group}: {bad}"
    assert [p["records"] for p in results["curve_records"][0]["curve"]["points"]] == [10, 100]
    # Ray, when installed, was shut down with nothing of it left running: any of its
    # processes still alive 5 s after ray.shutdown() was named and killed by the benchmark.
    for entry in results["ray"] + results["ray_bigresult"]:
        if entry.get("unavailable"):
            continue
        for name_pid in entry["leftover_processes"]:
            name, pid = name_pid[:-1].rsplit("(", 1)
            comm = Path(f"/proc/{pid}/comm")
            assert not comm.exists() or comm.read_text().strip() != name[:15], f"{name_pid} still running"

    # The saved run can be drawn (matplotlib comes with [bench]; without it --plots says so) ...
    try:
        from benchmarks import plots
    except ImportError:
        drawn_cli = subprocess.run([sys.executable, "-m", "benchmarks", "--plots", str(out)], cwd=ROOT,
                                   env=env, capture_output=True, text=True, timeout=60, check=False)
        assert drawn_cli.returncode == 2 and "--plots needs matplotlib" in drawn_cli.stderr
    else:
        drawn = plots.draw_all(results, tmp_path / "plots")
        assert sorted(p.name for p in drawn) == ["clients.png", "panels.png", "records.png", "sessions.png",
                                                 "sizes.png", "watchers.png"]
        assert all(p.stat().st_size > 10_000 for p in drawn)
    # ... and compared with itself.
    cmp = subprocess.run([sys.executable, "-m", "benchmarks", "--compare", str(out), str(out)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert cmp.returncode == 0, cmp.stderr
    assert "no-op execute->result vs Ray: verdict" in cmp.stdout and "x1.00" in cmp.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, message", [
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--budget", "-5"], "--budget > 0"),
    (["--rounds", "many"], "invalid int value"),
    (["--only", "zr_nothing"], "unknown benchmark(s): zr_nothing"),
])
def test_bad_flags_are_refused_before_anything_runs(tmp_path: Path, args: list, message: str) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", *args, "--out", str(out)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=50, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not out.exists() and "[bench]" not in proc.stdout


def _not_results(tmp: Path) -> str:
    path = tmp / "not-results.json"
    path.write_text('{"something": "else"}')
    return str(path)


def _garbage(tmp: Path) -> str:
    path = tmp / "garbage.json"
    path.write_text("this is not json")
    return str(path)


def _no_curves(tmp: Path) -> str:
    path = tmp / "no-curves.json"
    path.write_text('{"meta": {}, "comparisons": [], "results": {"raw_reqrep": [{"median_us": 30}]}}')
    return str(path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("make_args, message", [
    (lambda t: ["--plots", str(t / "missing.json")], "no such results file"),
    (lambda t: ["--plots", _garbage(t)], "not a results file"),
    (lambda t: ["--plots", _not_results(t)], "no 'results' object"),
    (lambda t: ["--plots", _no_curves(t)], "no curve in these results"),
    (lambda t: ["--compare", _no_curves(t)], "expected 2 arguments"),
    (lambda t: ["--compare", str(t / "missing.json"), _no_curves(t)], "no such results file"),
    (lambda t: ["--compare", _garbage(t), _no_curves(t)], "not a results file"),
    (lambda t: ["--compare", _no_curves(t), _not_results(t)], "not a results file"),
])
def test_bad_plots_and_compare_flags_are_refused(tmp_path: Path, make_args, message: str) -> None:
    """--plots FILE and --compare read saved runs: a wrong file is a clear error, nothing runs."""
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", *make_args(tmp_path), "--out", str(out)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=50, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not out.exists() and "[bench]" not in proc.stdout
