"""Draw the load curves of a run as PNGs (``python -m benchmarks --plots``).

Why: how cost grows is a shape, and a shape is read from a picture.  One PNG
per curve, into ``benchmarks/plots/``; a curve the run did not measure (or
that failed) is left out and said so.  matplotlib comes with the ``bench``
extra; the Agg backend needs no display.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend

PLOT_DIR = Path(__file__).with_name("plots")


def curve(results: dict, key: str) -> dict | None:
    rounds = results.get(key)
    entry = rounds[0] if isinstance(rounds, list) and rounds else rounds
    c = entry.get("curve") if isinstance(entry, dict) else None
    return c if isinstance(c, dict) and "error" not in c else None


def ok_points(points: dict, keys) -> list:
    return [(k, points[str(k)]) for k in keys
            if isinstance(points.get(str(k)), dict) and "error" not in points[str(k)]]


def _figure(title: str, ncols: int = 2):
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4.2))
    fig.suptitle(title)
    return fig, axes


def _save(fig, out: Path, name: str) -> Path:
    fig.tight_layout()
    path = out / name
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def clients(c: dict, out: Path) -> Path:
    fig, (lat, thr) = _figure("no-op execute -> result vs concurrent clients (server: 2 workers)")
    for mode, style in (("threads", "o-"), ("processes", "s-")):
        pts = ok_points(c.get(mode) or {}, c["clients"])
        xs = [n for n, _ in pts]
        lat.plot(xs, [p["median_ms"] for _, p in pts], style, label=f"{mode}: median")
        lat.plot(xs, [p["p90_ms"] for _, p in pts], style[0] + "--", alpha=0.4, label=f"{mode}: p90")
        thr.plot(xs, [p["tasks_per_s"] for _, p in pts], style, label=mode)
    for ax in (lat, thr):
        ax.set_xscale("log", base=2)
        ax.set_xticks(c["clients"], [str(n) for n in c["clients"]])
        ax.set_xlabel("concurrent clients")
        ax.grid(alpha=0.3)
        ax.legend()
    lat.set_yscale("log")
    lat.set_ylabel("latency per request (ms, log)")
    thr.set_ylabel("all clients together (tasks/s)")
    thr.set_ylim(bottom=0)
    return _save(fig, out, "clients.png")


def records(c: dict, out: Path) -> Path:
    fig, (lat, mem) = _figure("requests and server memory vs retained execution records")
    pts = c["points"]
    xs = [p["records"] for p in pts]
    for key, label in (("execute", "execute -> result"), ("execute_value", "execute '1' -> result"),
                       ("status", "status(id)"),
                       ("list", "list (newest 1,000)"), ("status_all", "status of all (newest 1,000)"),
                       ("list_all", "list of every record")):
        ys = [(p["records"], p[key]["median_ms"]) for p in pts if "median_ms" in p.get(key, {})]
        lat.plot([x for x, _ in ys], [y for _, y in ys], "o-", label=label)
    lat.plot(xs, [p["execute"]["p90_ms"] for p in pts], "o--", color="C0", alpha=0.4, label="execute: p90")
    lat.set_yscale("log")
    lat.set_ylabel("median latency (ms, log)")
    mem.plot(xs, [p["server_rss_bytes"] / 2**20 for p in pts], "o-", color="C4")
    mem.set_ylabel("server RSS (MiB)")
    mem.set_title(f"{c.get('bytes_per_record', 0):,.0f} bytes per record", fontsize=10)
    for ax in (lat, mem):
        ax.set_xscale("log")
        ax.set_xlabel("retained records")
        ax.grid(alpha=0.3)
    lat.legend()
    return _save(fig, out, "records.png")


def _size_label(n: int) -> str:
    return f"{n >> 30}G" if n >= 1 << 30 else f"{n >> 20}M" if n >= 1 << 20 else f"{n >> 10}K"


def sizes(c: dict, out: Path) -> Path:
    fig, (bw, frac) = _figure("result bandwidth vs result size (numpy float64 array)")
    pts = ok_points(c["points"], c["sizes"])
    xs = [n for n, _ in pts]
    bw.plot(xs, [p["zr"]["gb_per_s"] for _, p in pts], "o-", label="zmqruntime get_results")
    bw.plot(xs, [p["raw"]["gb_per_s"] for _, p in pts], "s--", label="raw pyzmq zero-copy")
    bw.set_ylabel("GB/s")
    bw.legend()
    frac.plot(xs, [100 * p["fraction_of_raw"] for _, p in pts], "o-", color="C2")
    frac.axhline(80, color="grey", linestyle=":", label="target 80 %")
    frac.set_ylabel("zmqruntime, % of raw")
    frac.set_ylim(0, 110)
    frac.legend()
    for ax in (bw, frac):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [_size_label(n) for n in xs])
        ax.set_xlabel("result size (bytes)")
        ax.grid(alpha=0.3)
    return _save(fig, out, "sizes.png")


def panels(c: dict, out: Path) -> Path:
    fig, (lat, cpu) = _figure("one kernel, N %%zmqexec panels streaming progress")
    pts = ok_points(c["points"], c["panels"])
    xs = [n for n, _ in pts]
    lat.plot(xs, [p["idle"]["median_ms"] for _, p in pts], "o-", label="trivial cell: median")
    lat.plot(xs, [p["idle"]["p90_ms"] for _, p in pts], "o--", alpha=0.5, label="p90")
    lat.axhline(50, color="grey", linestyle=":", label="target: median <= 50 ms")
    lat.set_ylabel("1+1 cell, request -> idle (ms)")
    lat.legend()
    cpu.plot(xs, [p["kernel_cpu_pct"] for _, p in pts], "o-", color="C3", label="kernel process")
    cpu.plot(xs, [p["kernel_main_thread_cpu_pct"] for _, p in pts], "s--", color="C1", label="kernel main thread")
    cpu.set_ylabel("% of one core")
    cpu.legend()
    for ax in (lat, cpu):
        ax.set_xlabel("panels streaming")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    return _save(fig, out, "panels.png")


def watchers(c: dict, out: Path) -> Path:
    fig, (lat, cpu) = _figure("server with N client processes, each watching its own running job")
    pts = ok_points(c["points"], c["watchers"])
    xs = [n for n, _ in pts]
    lat.plot(xs, [p["ping"]["median_ms"] for _, p in pts], "o-", label="ping: median")
    lat.plot(xs, [p["noop"]["median_ms"] for _, p in pts], "s-", label="no-op execute -> result: median")
    lat.plot(xs, [p["noop"]["p90_ms"] for _, p in pts], "s--", alpha=0.5, label="no-op: p90")
    lat.set_ylabel("probe client latency (ms, log)")
    lat.set_yscale("log")
    lat.legend()
    cpu.plot(xs, [p["server_cpu_pct"] for _, p in pts], "o-", color="C3")
    cpu.set_ylabel("server process CPU (% of one core)")
    cpu.set_ylim(bottom=0)
    for ax in (lat, cpu):
        ax.set_xlabel("watcher processes")
        ax.grid(alpha=0.3)
    return _save(fig, out, "watchers.png")


def sessions(c: dict, out: Path) -> Path:
    """zr_sessions: one no-op at a time per session, and pipelined, vs active sessions."""
    fig, (lat, thr) = _figure("no-op latency and pipelined throughput vs active sessions (concurrency 2)")
    counts = sorted(int(k.split("_")[0]) for k in (c.get("latency") or {}) if k.endswith("_sessions"))
    pts = [(n, c["latency"][f"{n}_sessions"]) for n in counts
           if isinstance(c["latency"].get(f"{n}_sessions"), dict) and "median_ms" in c["latency"][f"{n}_sessions"]]
    lat.plot([n for n, _ in pts], [p["median_ms"] for _, p in pts], "o-", label="median")
    lat.plot([n for n, _ in pts], [p["p90_ms"] for _, p in pts], "o--", alpha=0.4, label="p90")
    piped = [(n, (c.get("pipelined") or {}).get(f"{n}_sessions")) for n in counts]
    piped = [(n, p) for n, p in piped if isinstance(p, dict) and "tasks_per_s" in p]
    thr.plot([n for n, _ in piped], [p["tasks_per_s"] for _, p in piped], "s-", label="pipelined, all sessions")
    for ax in (lat, thr):
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.set_xlabel("active sessions (each its own client and worker)")
        ax.grid(alpha=0.3)
        ax.legend()
    lat.set_ylabel("no-op execute -> result (ms)")
    thr.set_ylabel("tasks/s")
    thr.set_ylim(bottom=0)
    return _save(fig, out, "sessions.png")


def sessions_curve(results: dict, key: str) -> dict | None:
    """zr_sessions keeps its points at the top level of its (first) round, not under "curve"."""
    rounds = results.get(key)
    entry = rounds[0] if isinstance(rounds, list) and rounds else rounds
    return entry if isinstance(entry, dict) and isinstance(entry.get("latency"), dict) else None


DRAWERS = {"curve_clients": clients, "curve_records": records, "curve_sizes": sizes,
           "curve_panels": panels, "curve_watchers": watchers, "zr_sessions": sessions}
GETTERS = {"zr_sessions": sessions_curve}


def draw_all(results: dict, out: Path = PLOT_DIR) -> list[Path]:
    """One PNG per curve in ``results``; ValueError if there is none to draw."""
    found = {key: c for key in DRAWERS if (c := GETTERS.get(key, curve)(results, key)) is not None}
    if not found:
        raise ValueError("no curve in these results (run without --only, or with curve_* keys)")
    out.mkdir(parents=True, exist_ok=True)
    return [DRAWERS[key](c, out) for key, c in found.items()]
