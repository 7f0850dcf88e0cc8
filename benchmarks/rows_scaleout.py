"""Report rows for sessions and the dask backend (zr_sessions, zr_dask), with their targets."""

from __future__ import annotations

from benchmarks.report import Row, error_of, fmt, get, verdict


def session_rows(r: dict) -> list[Row]:
    k = "zr_sessions"
    ready = get(r, k, "new_session", "spare_ready", "median_ms")
    b2b = get(r, k, "new_session", "back_to_back", "median_ms")
    rows = [Row("new session: first no-op (spare worker ready)", fmt(ready, ".1f", " ms"),
                f"back to back (worker boots): {fmt(b2b, '.0f', ' ms')}", "-", "-", "n/a",
                error_of(r, k, "new_session"), {"spare_ready_ms": ready, "back_to_back_ms": b2b})]
    for n in (1, 4, 16):
        lat = get(r, k, "latency", f"{n}_sessions", "median_ms")
        p90 = get(r, k, "latency", f"{n}_sessions", "p90_ms")
        tput = get(r, k, "pipelined", f"{n}_sessions", "tasks_per_s")
        rows.append(Row(f"{n} active sessions: no-op latency / pipelined", fmt(lat, ".2f", " ms") + f" (p90 {fmt(p90, '.1f')})",
                        "-", fmt(tput, ",.0f", " tasks/s"), "-", "n/a",
                        error_of(r, k, "latency") or error_of(r, k, "pipelined"),
                        {"latency_median_ms": lat, "latency_p90_ms": p90, "pipelined_tasks_per_s": tput}))
    return rows


def dask_rows(r: dict) -> list[Row]:
    k = "zr_dask"
    zr, raw = get(r, k, "zr_noop", "median_ms"), get(r, k, "raw_submit_result", "median_ms")
    ratio = get(r, k, "overhead_ratio")
    ev, gaps = get(r, k, "progress", "events_per_s"), get(r, k, "progress", "seq_gaps")
    speed, raw_speed = get(r, k, "parallel_speedup"), get(r, k, "raw_map_speedup")
    local = get(r, k, "local", "ratio")
    return [
        Row("dask backend: no-op execute -> result", fmt(zr, ".2f", " ms"), f"raw submit().result() {fmt(raw, '.2f', ' ms')}",
            fmt(ratio, ".2f", "x"), "<= 1.2x raw", verdict(ratio <= 1.2 if ratio is not None else None),
            error_of(r, k), {"zr_ms": zr, "raw_ms": raw, "ratio": ratio}),
        Row("dask backend: progress events from a task", fmt(ev, ",.0f", " ev/s"), "-", f"{gaps} seq gaps" if gaps is not None else "-",
            ">= 10k/s, none lost", verdict(ev >= 10_000 and gaps == 0 if ev is not None else None),
            error_of(r, k, "progress"), {"events_per_s": ev, "seq_gaps": gaps}),
        Row("dask backend: CPU-bound parallel_map, 2 workers vs 1", fmt(speed, ".2f", "x"),
            f"dask's own client.map {fmt(raw_speed, '.2f', 'x')}", "-", ">= 1.8x",
            verdict(speed >= 1.8 if speed is not None else None), error_of(r, k),
            {"speedup": speed, "raw_map_speedup": raw_speed, "parallel_s": get(r, k, "parallel_map_2_workers_s"),
             "serial_s": get(r, k, "serial_1_worker_s")}),
        Row("local parallel_map vs ProcessPoolExecutor.map", fmt(get(r, k, "local", "parallel_map_s"), ".2f", " s"),
            f"ProcessPoolExecutor {fmt(get(r, k, 'local', 'process_pool_s'), '.2f', ' s')}", fmt(local, ".2f", "x"),
            "-", "n/a", error_of(r, k, "local"), {"ratio": local}),
    ]
