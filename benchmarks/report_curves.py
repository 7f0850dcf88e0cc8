"""Table rows for the load curves: each curve's endpoints, and a verdict where a target exists.

Why: the curves themselves are drawn by plots.py; the table (and
``--compare``) need a few numbers per curve -- its first and last point --
so a regression in how cost grows shows up beside the other rows.
"""

from __future__ import annotations

from benchmarks.report import Row, error_of, fmt, get, verdict

FLAT = 1.5  # records: the last level within 1.5x of the first counts as flat


def _num(x):
    return x if isinstance(x, (int, float)) else None


def _c(r: dict, key: str, *path):
    return get(r, key, "curve", *path)


def _ends(r: dict, key: str, list_key: str) -> tuple[str, str]:
    xs = get(r, key, "curve", list_key) or []
    return (str(xs[0]), str(xs[-1])) if xs else ("?", "?")


def _err(r: dict, key: str) -> str:
    note = error_of(r, key, "curve")
    if note:
        return note
    points = get(r, key, "curve", "points") or get(r, key, "curve", "threads") or {}
    items = points.items() if isinstance(points, dict) else enumerate(points)
    bad = [f"{k}: {v['error']}" for k, v in items if isinstance(v, dict) and "error" in v]
    return bad[0][:160] if bad else ""


def clients_rows(r: dict) -> list[Row]:
    lo, hi = _ends(r, "curve_clients", "clients")
    rows = []
    for mode in ("threads", "processes"):
        a, b = _c(r, "curve_clients", mode, lo, "median_ms"), _c(r, "curve_clients", mode, hi, "median_ms")
        p90 = _c(r, "curve_clients", mode, hi, "p90_ms")
        ta, tb = _c(r, "curve_clients", mode, lo, "tasks_per_s"), _c(r, "curve_clients", mode, hi, "tasks_per_s")
        rows.append(Row(f"clients {lo}->{hi} ({mode}): no-op latency",
                        f"{fmt(a, '.2f')} -> {fmt(b, '.2f', ' ms')} (p90 {fmt(p90, '.1f')})",
                        f"throughput {fmt(ta, ',.0f')} -> {fmt(tb, ',.0f')} tasks/s",
                        fmt(tb and ta and tb / ta, ".2f", "x throughput"), "(curve)", "n/a",
                        _err(r, "curve_clients"),
                        {"latency_first_ms": a, "latency_last_ms": b, "latency_last_p90_ms": p90,
                         "tasks_per_s_first": ta, "tasks_per_s_last": tb}))
    return rows


def records_rows(r: dict) -> list[Row]:
    pts = _c(r, "curve_records", "points") or []
    first, last = (pts[0], pts[-1]) if pts else ({}, {})

    def m(p, k):
        return (p.get(k) or {}).get("median_ms")

    lo, hi = first.get("records"), last.get("records")
    g_exec, g_stat = _c(r, "curve_records", "growth", "execute"), _c(r, "curve_records", "growth", "status")
    g_val = _c(r, "curve_records", "growth", "execute_value")
    g_list, g_all = _c(r, "curve_records", "growth", "list"), _c(r, "curve_records", "growth", "status_all")
    full_lo = _c(r, "curve_records", "list_growth_from") or lo  # the first level that fills a reply
    full = next((p for p in pts if p.get("records") == full_lo), first)
    bpr = _c(r, "curve_records", "bytes_per_record")
    err = _err(r, "curve_records")
    return [
        Row(f"records {fmt(lo, ',')}->{fmt(hi, ',')}: execute, with value, status(id)",
            f"exec {fmt(m(first, 'execute'), '.2f')} -> {fmt(m(last, 'execute'), '.2f')} ms; "
            f"exec(value) {fmt(m(first, 'execute_value'), '.2f')} -> {fmt(m(last, 'execute_value'), '.2f')} ms; "
            f"status {fmt(m(first, 'status'), '.2f')} -> {fmt(m(last, 'status'), '.2f')} ms",
            f"exec p90 {fmt((first.get('execute') or {}).get('p90_ms'), '.1f')} -> "
            f"{fmt((last.get('execute') or {}).get('p90_ms'), '.1f')} ms",
            f"{fmt(g_exec, '.2f', 'x')} / {fmt(g_val, '.2f', 'x')} / {fmt(g_stat, '.2f', 'x')}", f"flat (<= {FLAT}x)",
            verdict(g_exec <= FLAT if g_exec else None, g_stat <= FLAT if g_stat else None,
                    *([g_val <= FLAT] if g_val else [])), err,
            {"execute_first_ms": m(first, "execute"), "execute_last_ms": m(last, "execute"),
             "status_first_ms": m(first, "status"), "status_last_ms": m(last, "status"),
             "execute_value_first_ms": m(first, "execute_value"), "execute_value_last_ms": m(last, "execute_value"),
             "execute_growth": g_exec, "execute_value_growth": g_val, "status_growth": g_stat}),
        Row(f"records {fmt(full_lo, ',')}->{fmt(hi, ',')}: list, status(all) (newest 1,000)",
            f"list {fmt(m(full, 'list'), '.1f')} -> {fmt(m(last, 'list'), ',.1f')} ms; "
            f"status(all) {fmt(m(full, 'status_all'), '.1f')} -> {fmt(m(last, 'status_all'), ',.1f')} ms",
            f"another client's ping meanwhile: {fmt(_num(last.get('ping_during_status_all_ms')), ',.1f', ' ms')}; "
            f"list of every record: {fmt(m(last, 'list_all'), ',.0f', ' ms')} "
            f"({fmt((last.get('list_all') or {}).get('us_per_record'), '.1f')} us per record)",
            f"{fmt(g_list, '.2f', 'x')} / {fmt(g_all, '.2f', 'x')}", f"flat (<= {FLAT}x)",
            verdict(g_list <= FLAT if g_list else None, g_all <= FLAT if g_all else None),
            err or next((f"{k} at {fmt(hi, ',')}: {last[k]['error']}" for k in ("list", "status_all", "list_all")
                         if isinstance(last.get(k), dict) and "error" in last[k]), ""),
            {"list_first_ms": m(first, "list"), "list_last_ms": m(last, "list"),
             "status_all_last_ms": m(last, "status_all"), "list_all_last_ms": m(last, "list_all"),
             "list_growth": g_list, "status_all_growth": g_all,
             "ping_during_status_all_ms": _num(last.get("ping_during_status_all_ms"))}),
        Row("records: server memory", fmt(bpr, ",.0f", " bytes/record"),
            f"RSS {fmt(first.get('server_rss_bytes') and first['server_rss_bytes'] / 2**20, '.0f')} -> "
            f"{fmt(last.get('server_rss_bytes') and last['server_rss_bytes'] / 2**20, '.0f', ' MiB')}",
            "-", "(curve)", "n/a", err, {"bytes_per_record": bpr}),
    ]


def sizes_row(r: dict) -> Row:
    sizes = _c(r, "curve_sizes", "sizes") or []
    done = [s for s in sizes if _c(r, "curve_sizes", "points", str(s), "zr", "gb_per_s") is not None]
    lo, hi = (done[0], done[-1]) if done else (None, None)

    def bw(s, who):
        return _c(r, "curve_sizes", "points", str(s), who, "gb_per_s") if s else None

    def label(s):
        return "-" if s is None else f"{s >> 30} GiB" if s >= 1 << 30 else f"{s >> 20} MiB" if s >= 1 << 20 \
            else f"{s >> 10} KiB"
    frac = _c(r, "curve_sizes", "points", str(hi), "fraction_of_raw") if hi else None
    return Row(f"result bandwidth {label(lo)}->{label(hi)}",
               f"{fmt(bw(lo, 'zr'), '.3f')} -> {fmt(bw(hi, 'zr'), '.2f', ' GB/s')}",
               f"raw {fmt(bw(lo, 'raw'), '.3f')} -> {fmt(bw(hi, 'raw'), '.2f', ' GB/s')}",
               fmt(frac and 100 * frac, ".0f", f"% of raw at {label(hi)}"), "(curve)", "n/a",
               _err(r, "curve_sizes"),
               {"zr_first_gb_per_s": bw(lo, "zr"), "zr_last_gb_per_s": bw(hi, "zr"),
                "raw_last_gb_per_s": bw(hi, "raw"), "last_fraction_of_raw": frac, "last_bytes": hi})


def panels_row(r: dict) -> Row:
    lo, hi = _ends(r, "curve_panels", "panels")
    def p(n, *path):
        return _c(r, "curve_panels", "points", n, *path)

    med, p90, base = p(hi, "idle", "median_ms"), p(hi, "idle", "p90_ms"), p(lo, "idle", "median_ms")
    cpu = p(hi, "kernel_cpu_pct")
    return Row(f"kernel, {hi} panels streaming: trivial cell",
               f"{fmt(med, '.1f', ' ms')} (p90 {fmt(p90, '.0f')})",
               f"{lo} panels {fmt(base, '.1f', ' ms')}", f"kernel CPU {fmt(cpu, '.0f', '%')} of a core",
               "<= 50 ms median", verdict(med <= 50 if med is not None else None), _err(r, "curve_panels"),
               {"median_ms": med, "p90_ms": p90, "no_panels_median_ms": base, "kernel_cpu_pct": cpu})


def watchers_row(r: dict) -> Row:
    lo, hi = _ends(r, "curve_watchers", "watchers")

    def w(n, *path):
        return _c(r, "curve_watchers", "points", n, *path)

    gaps, disorder = w(hi, "seq_gaps"), w(hi, "out_of_order")
    return Row(f"server, {hi} watcher processes",
               f"ping {fmt(w(hi, 'ping', 'median_ms'), '.2f')} ms, no-op {fmt(w(hi, 'noop', 'median_ms'), '.2f', ' ms')}",
               f"{lo} watchers: ping {fmt(w(lo, 'ping', 'median_ms'), '.2f')}, no-op {fmt(w(lo, 'noop', 'median_ms'), '.2f')} ms",
               f"server CPU {fmt(w(hi, 'server_cpu_pct'), '.0f', '%')}; {fmt(w(hi, 'events_per_s_per_watcher'), '.0f')} "
               f"ev/s each; gaps {fmt(gaps, 'd')}", "none lost, in order",
               verdict(gaps == 0 if gaps is not None else None, disorder == 0 if disorder is not None else None),
               _err(r, "curve_watchers"),
               {"ping_ms": w(hi, "ping", "median_ms"), "noop_ms": w(hi, "noop", "median_ms"),
                "idle_ping_ms": w(lo, "ping", "median_ms"), "idle_noop_ms": w(lo, "noop", "median_ms"),
                "server_cpu_pct": w(hi, "server_cpu_pct"), "seq_gaps": gaps, "out_of_order": disorder})


def rows(r: dict) -> list[Row]:
    return [*clients_rows(r), *records_rows(r), sizes_row(r), panels_row(r), watchers_row(r)]
