"""Run every benchmark side by side, print the table, write results.json.

Usage (from the repo root):

    python -m benchmarks                         # everything, 3 interleaved rounds
    python -m benchmarks --quick                 # a fifth of the samples, 2 rounds
    python -m benchmarks --only raw_reqrep,zr_roundtrip
    python -m benchmarks --smoke                 # tiny sizes, 1 round: "does it still run"
    python -m benchmarks --plots                 # ... and draw the curves into benchmarks/plots/
    python -m benchmarks --plots results.json    # only draw, from a saved run
    python -m benchmarks --compare OLD.json NEW.json   # per-row ratios of two saved runs

Why this shape: each benchmark runs in its own fresh Python process, one after
another (never in parallel: 2 noisy cores), under a hard timeout that kills
its whole process group.  So one benchmark hanging, crashing or leaking memory
cannot spoil the others, and peak-RSS figures are per benchmark.

A/B interleaving: a comparison (zmqruntime and the baselines it is judged
against) is a *group*.  Each group runs ``--rounds`` times, alternating the
order (A B, then B A, ...), with the samples split over the rounds; a slow
minute on the machine then hits both sides of a ratio instead of one.  The
report takes the median over the rounds and shows their min-max.  Benchmarks
with no baseline (cancel, cold start, the kernel) run once.

A total time budget keeps the run bounded: a benchmark that would start after
the budget is spent is recorded as skipped instead.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from benchmarks import common, compare, report

# (result key, module in benchmarks/, hard timeout in seconds per run).
MODULES = {
    "raw_reqrep": ("baseline_reqrep", 60),
    "raw_relay": ("baseline_relay", 60),
    "raw_zerocopy": ("baseline_zerocopy", 90),
    "ipyparallel": ("baseline_ipyparallel", 150),
    "dask": ("baseline_dask", 150),
    "zr_roundtrip": ("zr_roundtrip", 120),
    "profile_ping": ("profile_ping", 120),
    "zr_progress": ("zr_progress", 120),
    "zr_bigresult": ("zr_bigresult", 120),
    "zr_cancel": ("zr_cancel", 90),
    "zr_coldstart": ("zr_coldstart", 60),
    "zr_kernel": ("zr_kernel", 180),
    "zr_kernel_flood": ("zr_kernel_flood", 240),
    "zr_sessions": ("zr_sessions", 300),
    "zr_dask": ("zr_dask", 420),
    "zr_bulk": ("zr_bulk", 900),
    "ray": ("baseline_ray", 300),
    "ray_bigresult": ("baseline_ray_bigresult", 240),
    "curve_clients": ("curve_clients", 400),
    "curve_records": ("curve_records", 600),
    "curve_sizes": ("curve_sizes", 400),
    "curve_panels": ("curve_panels", 400),
    "curve_watchers": ("curve_watchers", 400),
}
# Groups run in this order; the bool says whether the group is interleaved over rounds.
GROUPS = [
    (("raw_reqrep", "raw_relay", "zr_roundtrip", "ipyparallel", "dask", "ray"), True),
    (("raw_zerocopy", "zr_bigresult", "ray_bigresult"), True),
    (("profile_ping",), False),
    (("zr_progress",), False),
    (("zr_cancel",), False),
    (("zr_coldstart",), False),
    (("zr_kernel",), False),
    (("zr_kernel_flood",), False),
    (("zr_sessions",), False),
    (("zr_dask",), False),
    (("zr_bulk",), False),
    # How cost grows with the work: one run each, the curves carry their own baselines.
    (("curve_clients",), False),
    (("curve_records",), False),
    (("curve_sizes",), False),
    (("curve_panels",), False),
    (("curve_watchers",), False),
]
MIN_SLOT = 15  # seconds: don't start a benchmark with less budget than this


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated result keys: " + ", ".join(MODULES))
    p.add_argument("--rounds", type=int, help="interleaved A/B rounds (default 3; 2 with --quick; 1 with --smoke)")
    p.add_argument("--budget", type=float, help="total seconds (default 2700; 1500 with --quick; 380 with --smoke)")
    p.add_argument("--quick", action="store_true", help="a fifth of the samples (not for real figures)")
    p.add_argument("--smoke", action="store_true", help="smallest sizes, one round: checks it runs, figures meaningless")
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    p.add_argument("--plots", nargs="?", const="", metavar="RESULTS.json",
                   help="draw the curves as PNGs into benchmarks/plots/: after this run, "
                        "or only from a saved RESULTS.json (nothing is run then)")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("OLD.json", "NEW.json"),
                   help="print the per-row ratios NEW/OLD of two saved runs (nothing is run)")
    args = p.parse_args(argv)
    for path in ([Path(args.plots)] if args.plots else []) + list(args.compare or []):
        if not path.is_file():
            p.error(f"no such results file: {path}")
    if args.rounds is None:
        args.rounds = 1 if args.smoke else 2 if args.quick else 3
    if args.budget is None:
        args.budget = 380.0 if args.smoke else 1500.0 if args.quick else 2700.0
    if args.rounds < 1 or args.budget <= 0:
        p.error("--rounds must be >= 1 and --budget > 0")
    return args


def plan(selected: set | None, rounds: int) -> list[tuple[int, str]]:
    """The run order: ``(round, key)`` pairs, alternating A/B order per round."""
    order = []
    for keys, interleaved in GROUPS:
        keys = [k for k in keys if not selected or k in selected]
        for r in range(rounds if interleaved else 1):
            order += [(r, k) for k in (keys if r % 2 == 0 else keys[::-1])]
    return order


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.compare:
        return compare.main(*args.compare)
    if args.plots:
        try:
            return draw(report.load_results(Path(args.plots)))
        except ValueError as exc:
            print(f"--plots: {exc}", file=sys.stderr)
            return 2
    # A background job of a non-interactive shell starts with SIGINT ignored, and an ignored
    # signal stays ignored across exec: every benchmark process, and the peers' workers, would
    # inherit it. Ray's ray.cancel(force=False) interrupts its worker with SIGINT, so it then
    # never stops a task. Handled here, a child starts with the default action instead (a
    # caught signal is reset by exec).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ["BENCHMARKS_ROUNDS"] = str(args.rounds)  # inherited by every benchmark process
    if args.quick:
        os.environ["BENCHMARKS_QUICK"] = "1"
    if args.smoke:
        os.environ["BENCHMARKS_SMOKE"] = "1"
    selected = set(args.only.split(",")) if args.only else None
    unknown = (selected or set()) - set(MODULES)
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2

    results: dict = {}  # key -> list of round results
    start = time.monotonic()
    for rnd, key in plan(selected, args.rounds):
        module, cap = MODULES[key]
        left = args.budget - (time.monotonic() - start)
        label = f"{key} r{rnd + 1}"
        if left < MIN_SLOT:
            results.setdefault(key, []).append({"error": f"skipped: time budget of {args.budget:.0f}s spent"})
            print(f"[bench] {label:<18} skipped (budget)", flush=True)
            continue
        print(f"[bench] {label:<18} ...", end=" ", flush=True)
        t0 = time.monotonic()
        load = os.getloadavg()[0]  # the 2 cores are shared: say how busy they were
        entry = common.run_benchmark_module(module, timeout=min(cap, left))
        if isinstance(entry, dict):
            entry["_loadavg_1m"] = round(load, 2)
        results.setdefault(key, []).append(entry)
        status = "unavailable" if entry.get("unavailable") else "error" if _has_error(entry) else "ok"
        print(f"{status} ({time.monotonic() - t0:.1f}s)", flush=True)

    run_meta = {"quick": args.quick, "smoke": args.smoke, "rounds": args.rounds,
                "total_s": round(time.monotonic() - start, 1)}
    try:
        rows = report.comparisons(results)
    except Exception:  # noqa: BLE001 -- a report bug must not lose a long run's measurements
        report.write_json(args.out, results, [], run_meta)
        traceback.print_exc()
        print(f"report failed; raw results saved in {args.out}", file=sys.stderr)
        return 1
    print(report.render(results, rows))
    report.write_json(args.out, results, rows, run_meta)
    print(f"\nwrote {args.out} (total {time.monotonic() - start:.0f}s)")
    if args.plots == "":
        return draw(results)
    return 0


def draw(results: dict) -> int:
    """Draw every curve found in ``results``; say where, or why not (exit 2)."""
    try:
        from benchmarks import plots
    except ImportError as exc:
        print(f"--plots needs matplotlib ({exc}); pip install -e '.[bench]'", file=sys.stderr)
        return 2
    try:
        written = plots.draw_all(results, plots.PLOT_DIR)
    except ValueError as exc:
        print(f"--plots: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"plot: {path}")
    return 0


def _has_error(entry) -> bool:
    if not isinstance(entry, dict):
        return False
    return "error" in entry or any(isinstance(v, dict) and "error" in v for v in entry.values())


if __name__ == "__main__":
    sys.exit(main())
