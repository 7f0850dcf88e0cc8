"""Run every benchmark side by side, print the table, write results.json.

Usage (from the repo root):

    python -m benchmarks.run                     # everything, ~3-5 minutes
    python -m benchmarks.run --only raw_reqrep,zr_roundtrip
    python -m benchmarks.run --quick             # fewer samples: smoke test only

Why this shape: each benchmark runs in its own fresh Python process, one after
another (never in parallel: 2 noisy cores), under a hard timeout that kills
its whole process group.  So one benchmark hanging, crashing or leaking memory
cannot spoil the others, and peak-RSS figures are per benchmark.  A total time
budget keeps the run bounded: a benchmark that would start after the budget is
spent is recorded as skipped instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from benchmarks import common, report

# (result key, module in benchmarks/, hard timeout in seconds).  Baselines first.
BENCHMARKS = [
    ("raw_reqrep", "baseline_reqrep", 60),
    ("raw_zerocopy", "baseline_zerocopy", 90),
    ("ipyparallel", "baseline_ipyparallel", 120),
    ("dask", "baseline_dask", 120),
    ("zr_roundtrip", "zr_roundtrip", 90),
    ("zr_progress", "zr_progress", 120),
    ("zr_bigresult", "zr_bigresult", 120),
    ("zr_cancel", "zr_cancel", 90),
    ("zr_coldstart", "zr_coldstart", 60),
    ("zr_kernel", "zr_kernel", 180),
]
MIN_SLOT = 15  # seconds: don't start a benchmark with less budget than this


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated result keys: " + ", ".join(k for k, _, _ in BENCHMARKS))
    p.add_argument("--budget", type=float, default=300.0, help="total seconds (default 300)")
    p.add_argument("--quick", action="store_true", help="a fifth of the samples (not for real figures)")
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        os.environ["BENCHMARKS_QUICK"] = "1"  # inherited by every benchmark process
    selected = set(args.only.split(",")) if args.only else None
    unknown = (selected or set()) - {k for k, _, _ in BENCHMARKS}
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2

    results: dict = {}
    start = time.monotonic()
    for key, module, cap in BENCHMARKS:
        if selected and key not in selected:
            continue
        left = args.budget - (time.monotonic() - start)
        if left < MIN_SLOT:
            results[key] = {"error": f"skipped: time budget of {args.budget:.0f}s spent"}
            print(f"[bench] {key:<14} skipped (budget)", flush=True)
            continue
        print(f"[bench] {key:<14} ...", end=" ", flush=True)
        t0 = time.monotonic()
        results[key] = common.run_benchmark_module(module, timeout=min(cap, left))
        status = "error" if _has_error(results[key]) else "ok"
        print(f"{status} ({time.monotonic() - t0:.1f}s)", flush=True)

    rows = report.comparisons(results)
    print(report.render(results, rows))
    report.write_json(args.out, results, rows,
                      {"quick": args.quick, "total_s": round(time.monotonic() - start, 1)})
    print(f"\nwrote {args.out} (total {time.monotonic() - start:.0f}s)")
    return 0


def _has_error(entry) -> bool:
    if not isinstance(entry, dict):
        return False
    return "error" in entry or any(isinstance(v, dict) and "error" in v for v in entry.values())


if __name__ == "__main__":
    sys.exit(main())
