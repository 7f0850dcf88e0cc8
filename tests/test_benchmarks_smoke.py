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

ROOT = Path(__file__).resolve().parent.parent
ZR_KEYS = ["zr_roundtrip", "zr_progress", "zr_bigresult", "zr_cancel", "zr_coldstart", "zr_kernel"]
BASELINE_KEYS = ["raw_reqrep", "raw_zerocopy"]
PEER_KEYS = ["ipyparallel", "dask"]  # optional extras: figures, or said to be not installed


def _errors(entry: dict) -> list[str]:
    found = [entry["error"]] if "error" in entry else []
    return found + [f"{k}: {v['error']}" for k, v in entry.items() if isinstance(v, dict) and "error" in v]


@pytest.mark.timeout(420)
def test_smoke_run_produces_every_row(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--budget", "380", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
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
    # The cancel rows really cancelled: both a Python loop and a task blocked in C.
    for key in ("cancel", "cancel_blocked"):
        assert results["zr_cancel"][0][key]["n"] >= 2


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
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=50)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not out.exists() and "[bench]" not in proc.stdout
