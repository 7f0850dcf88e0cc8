"""Report rows for zr_kernel_flood: a tqdm flood + 10,000 printed lines, remote cell beside local cell.

Why a module of its own: the rows read one benchmark's three scenarios (idle
kernel, remote ``%%zmqexec`` cell, the same cell local) and only the remote
latency has a target (the kernel's: a trivial cell within 50 ms while a job
streams); the local figures are the comparison, shown for reference.
"""

from __future__ import annotations

from benchmarks.report import Row, error_of, fmt, get, verdict

KEY = ("zr_kernel_flood", "flood")


def _latency(r: dict, where: str) -> tuple:
    return tuple(get(r, *KEY, where, "idle", f) for f in ("median_ms", "p90_ms", "max_ms"))


def _ms(median, p90, top) -> str:
    return f"{fmt(median, '.1f', ' ms')} (p90 {fmt(p90, '.0f')}, max {fmt(top, '.0f')})"


def flood_rows(r: dict) -> list[Row]:
    idle = get(r, *KEY, "idle", "idle", "median_ms")
    remote, local = _latency(r, "remote"), _latency(r, "local")
    rem_cpu, loc_cpu = get(r, *KEY, "remote", "kernel_cpu_pct"), get(r, *KEY, "local", "kernel_cpu_pct")
    rem_main = get(r, *KEY, "remote", "kernel_main_thread_cpu_pct")
    loc_main = get(r, *KEY, "local", "kernel_main_thread_cpu_pct")
    idle_cpu = get(r, *KEY, "idle", "kernel_cpu_pct")
    rem_items, loc_items = get(r, *KEY, "remote", "flood", "items_per_s"), get(r, *KEY, "local", "flood", "items_per_s")
    rem_b, loc_b = get(r, *KEY, "remote", "iopub", "bytes"), get(r, *KEY, "local", "iopub", "bytes")
    rem_bl, loc_bl = get(r, *KEY, "remote", "iopub_bytes_per_line"), get(r, *KEY, "local", "iopub_bytes_per_line")
    rem_x = get(r, *KEY, "remote", "iopub_bytes_over_text")
    marginal, marginal_x = get(r, *KEY, "remote_marginal_bytes_per_line"), get(r, *KEY, "remote_marginal_over_text")
    lines = get(r, *KEY, "lines")
    err_remote = error_of(r, *KEY, "remote") or error_of(r, *KEY, "idle")
    err_local = error_of(r, *KEY, "local") or error_of(r, *KEY, "idle")
    return [
        Row("kernel: trivial cell, remote cell floods tqdm + prints", _ms(*remote),
            f"idle kernel {fmt(idle, '.1f', ' ms')}; same cell local {fmt(local[0], ',.0f', ' ms')}",
            fmt(remote[0] and idle and remote[0] / idle, ".1f", "x idle"), "<= 50 ms (median)",
            verdict(remote[0] <= 50 if remote[0] is not None else None), err_remote,
            {"remote_median_ms": remote[0], "remote_p90_ms": remote[1], "remote_max_ms": remote[2],
             "idle_median_ms": idle, "local_median_ms": local[0]}),
        Row("kernel: trivial cell, same cell run locally", _ms(*local),
            f"idle kernel {fmt(idle, '.1f', ' ms')} (the local cell blocks the kernel)",
            fmt(local[0] and remote[0] and local[0] / remote[0], ",.0f", "x remote"), "(for reference)", "n/a",
            err_local, {"local_median_ms": local[0], "local_p90_ms": local[1], "local_max_ms": local[2]}),
        Row("kernel CPU, tqdm flood + prints: remote vs local",
            f"remote {fmt(rem_cpu, '.0f', '%')} of a core (main thread {fmt(rem_main, '.0f', '%')})",
            f"local {fmt(loc_cpu, '.0f', '%')} (main thread {fmt(loc_main, '.0f', '%')}); "
            f"idle kernel {fmt(idle_cpu, '.0f', '%')}",
            f"loop {fmt(rem_items, ',.0f')} vs {fmt(loc_items, ',.0f')} it/s", "(for reference)", "n/a",
            err_remote or err_local,
            {"remote_kernel_cpu_pct": rem_cpu, "remote_main_thread_cpu_pct": rem_main,
             "local_kernel_cpu_pct": loc_cpu, "local_main_thread_cpu_pct": loc_main, "idle_kernel_cpu_pct": idle_cpu,
             "remote_items_per_s": rem_items, "local_items_per_s": loc_items}),
        Row(f"IOPub bytes to the frontend, {fmt(lines, ',')} printed lines",
            f"remote {fmt(rem_b and rem_b / 1e6, '.2f', ' MB')}, {fmt(rem_bl, ',.0f', ' B/line')} "
            f"({fmt(rem_x, '.1f', 'x the text')}); 9/10 of the lines: {fmt(marginal, ',.0f', ' B/line')} "
            f"({fmt(marginal_x, '.1f', 'x the text')})",
            f"local {fmt(loc_b and loc_b / 1e6, '.2f', ' MB')}, {fmt(loc_bl, ',.0f', ' B/line')}",
            fmt(rem_b and loc_b and rem_b / loc_b, ".3f", "x local"), "linear (for reference)", "n/a",
            err_remote or err_local or error_of(r, *KEY, "remote_tenth"),
            {"remote_bytes": rem_b, "local_bytes": loc_b, "remote_bytes_per_line": rem_bl,
             "local_bytes_per_line": loc_bl, "remote_bytes_over_text": rem_x,
             "remote_marginal_bytes_per_line": marginal, "remote_marginal_over_text": marginal_x}),
    ]
