"""Turn raw benchmark results into the headline: ratios against baselines.

Why: absolute times on a noisy 2-core box mean little from one day to the next;
the ratio to a baseline measured in the same run is the figure the targets
(benchmarks/README.md, "zmqruntime rows and targets") are written in.  This module knows the targets and how to compare,
and nothing about how anything was measured.

Each comparison row carries: the zmqruntime value, the baseline(s) it is
judged against, the ratio(s), the target, and a verdict -- ``ok``, ``MISS``,
or ``n/a`` (something needed was not measured; the reason is in ``note``).
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.profile_ping import TIMELINE


@dataclass
class Row:
    what: str
    value: str = "-"
    baseline: str = "-"
    ratio: str = "-"
    target: str = ""
    verdict: str = "n/a"
    note: str = ""
    numbers: dict = field(default_factory=dict)


def _walk(node, path):
    for key in path:
        if not isinstance(node, dict) or "error" in node or key not in node:
            return None
        node = node[key]
    return node


def values(results: dict, key: str, *path) -> list:
    """The value at ``path`` in every round of benchmark ``key`` (missing ones left out)."""
    rounds = results.get(key)
    rounds = rounds if isinstance(rounds, list) else [rounds]
    found = [_walk(rnd, path) for rnd in rounds]
    return [v for v in found if v is not None]


def get(results: dict, key: str, *path):
    """The figure at ``results[key][round][path...]``: the median over rounds, or None."""
    found = values(results, key, *path)
    numbers = [v for v in found if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numbers:
        return statistics.median(numbers)
    return found[0] if found else None


def numbers(results: dict, key: str, *path) -> list[float]:
    """The figure at ``path`` in every round that has it."""
    return [v for v in values(results, key, *path) if isinstance(v, (int, float)) and not isinstance(v, bool)]


def span(results: dict, spec: str, key: str, *path) -> str:
    """`` [min-max]`` of a figure over the rounds, or "" with fewer than two rounds."""
    numbers = [v for v in values(results, key, *path) if isinstance(v, (int, float))]
    if len(numbers) < 2:
        return ""
    return f" [{min(numbers):{spec}}-{max(numbers):{spec}}]"


def error_of(results: dict, key: str, *path) -> str:
    """The first error message found along ``path`` in any round (for the ``note`` column)."""
    rounds = results.get(key)
    for node in (rounds if isinstance(rounds, list) else [rounds]):
        for step in [*path, None]:
            if not isinstance(node, dict):
                break
            if "error" in node:
                return str(node["error"]).splitlines()[0][:160]
            node = node.get(step) if step is not None else None
    return ""


def fmt(x, spec: str, unit: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{unit}"


def verdict(*checks) -> str:
    if any(c is None for c in checks):
        return "n/a"
    return "ok" if all(checks) else "MISS"


def ping_row(r: dict) -> Row:
    """zmqruntime's ping (IPC, the default for a local server) against raw DEALER/ROUTER on IPC:
    the same socket pattern on the same transport. TCP REQ/REP is shown for reference."""
    zr = get(r, "zr_roundtrip", "ping", "median_us")
    split = get(r, "zr_roundtrip", "ping_split", "median_us")  # sent as three frames, not one head
    sleeping = get(r, "zr_roundtrip", "ping_sleeping", "median_us")  # the client's busy-poll off
    raw, rd = get(r, "raw_reqrep", "median_us"), get(r, "raw_reqrep", "router_dealer", "median_us")
    rd_ipc = get(r, "raw_reqrep", "router_dealer_ipc", "median_us")
    ratio = zr / rd_ipc if zr and rd_ipc else None
    sleeping_ratio = sleeping / rd_ipc if sleeping and rd_ipc else None
    asides = [f"sent split: {fmt(split, '.0f', ' us')}" if split else "",
              f"client not spinning: {fmt(sleeping, '.0f', ' us')}" if sleeping else ""]
    aside = "; ".join(a for a in asides if a)
    return Row("ping round trip, brief (median)",
               fmt(zr, ".0f", " us") + span(r, ".0f", "zr_roundtrip", "ping", "median_us")
               + (f" ({aside})" if aside else ""),
               f"DEALER/ROUTER ipc {fmt(rd_ipc, '.0f', ' us')}{span(r, '.0f', 'raw_reqrep', 'router_dealer_ipc', 'median_us')}; "
               f"tcp: DEALER/ROUTER {fmt(rd, '.0f', ' us')}, REQ/REP {fmt(raw, '.0f', ' us')}",
               fmt(ratio, ".2f", "x DEALER/ROUTER")
               + (f" (not spinning {fmt(sleeping_ratio, '.2f', 'x')})" if sleeping_ratio else ""),
               "<= 1.5x raw (same pattern, ipc)",
               verdict(ratio <= 1.5 if ratio else None),
               error_of(r, "zr_roundtrip", "ping") or error_of(r, "raw_reqrep"),
               {"zr_us": zr, "zr_split_us": split, "zr_sleeping_us": sleeping, "raw_us": raw,
                "raw_router_dealer_us": rd, "raw_router_dealer_ipc_us": rd_ipc, "ratio": ratio,
                "sleeping_ratio": sleeping_ratio})


def ping_full_row(r: dict) -> Row:
    """The full ping reply (identity and load, ~0.9 KB of JSON signed and read), for reference:
    what the brief ping leaves out costs this much more per round trip."""
    zr = get(r, "zr_roundtrip", "ping_full", "median_us")
    rd_ipc = get(r, "raw_reqrep", "router_dealer_ipc", "median_us")
    ratio = zr / rd_ipc if zr and rd_ipc else None
    return Row("ping, full reply (median)",
               fmt(zr, ".0f", " us") + span(r, ".0f", "zr_roundtrip", "ping_full", "median_us"),
               f"DEALER/ROUTER ipc {fmt(rd_ipc, '.0f', ' us')}", fmt(ratio, ".2f", "x DEALER/ROUTER"),
               "(for reference)", "n/a", error_of(r, "zr_roundtrip", "ping_full") or error_of(r, "raw_reqrep"),
               {"zr_us": zr, "raw_router_dealer_ipc_us": rd_ipc, "ratio": ratio})


def noop_latency_row(r: dict) -> Row:
    zr = get(r, "zr_roundtrip", "noop_latency", "median_ms")
    ipp, dsk = get(r, "ipyparallel", "latency", "median_ms"), get(r, "dask", "latency", "median_ms")
    s_ipp = ipp / zr if zr and ipp else None
    s_dsk = dsk / zr if zr and dsk else None
    checks = [zr <= 0.5 if zr else None] + [s >= need for s, need in ((s_ipp, 8), (s_dsk, 15)) if s is not None]
    return Row("no-op execute->result (median)",
               fmt(zr, ".3f", " ms") + span(r, ".2f", "zr_roundtrip", "noop_latency", "median_ms"),
               f"ipp {fmt(ipp, '.2f', ' ms')}{span(r, '.1f', 'ipyparallel', 'latency', 'median_ms')}, "
               f"dask {fmt(dsk, '.2f', ' ms')}{span(r, '.1f', 'dask', 'latency', 'median_ms')}",
               f"{fmt(s_ipp, '.1f', 'x')} / {fmt(s_dsk, '.1f', 'x')} faster",
               "<= 0.5 ms; >= 8x ipp, >= 15x dask", verdict(*checks),
               error_of(r, "zr_roundtrip", "noop_latency") or peer_note(r),
               {"zr_ms": zr, "ipyparallel_ms": ipp, "dask_ms": dsk,
                "speedup_vs_ipyparallel": s_ipp, "speedup_vs_dask": s_dsk})


def noop_floor_row(r: dict) -> Row:
    """The no-op against its transport floor: the same four hops (client, server, worker and back) in raw
    pyzmq, the relay busy-polling as ours does. What is above the floor is our handling; the floor with
    the worker linked by a socketpair shows what the link's ZeroMQ hops cost."""
    zr = get(r, "zr_roundtrip", "noop_latency", "median_ms")
    floor, pair = get(r, "raw_relay", "zmq", "median_us"), get(r, "raw_relay", "socketpair", "median_us")
    ratio = zr * 1000 / floor if zr and floor else None
    return Row("no-op vs its transport floor (relay)", fmt(zr, ".3f", " ms"),
               f"raw relay, zmq link {fmt(floor, '.0f', ' us')}{span(r, '.0f', 'raw_relay', 'zmq', 'median_us')}; "
               f"socketpair link {fmt(pair, '.0f', ' us')}{span(r, '.0f', 'raw_relay', 'socketpair', 'median_us')}",
               fmt(ratio, ".1f", "x the floor"), "(for reference)", "n/a",
               error_of(r, "zr_roundtrip", "noop_latency") or error_of(r, "raw_relay"),
               {"zr_ms": zr, "floor_zmq_us": floor, "floor_socketpair_us": pair, "ratio": ratio})


def peer_note(r: dict) -> str:
    """Say plainly which optional peers are missing (their rows then judge zmqruntime alone)."""
    missing = [k for k in ("ipyparallel", "dask", "ray") if any(
        isinstance(e, dict) and e.get("unavailable") for e in (r.get(k) or []))]
    return f"not installed: {', '.join(missing)}" if missing else ""


def _throughput_row(r: dict, key: str, what: str, judged: bool, peer_key: str = "pipelined") -> Row:
    """A zmqruntime tasks/s figure beside the ipyparallel and dask ones (``peer_key``: pipelined or map)."""
    zr = get(r, "zr_roundtrip", key, "tasks_per_s")
    ipp, dsk = get(r, "ipyparallel", peer_key, "tasks_per_s"), get(r, "dask", peer_key, "tasks_per_s")
    x_ipp = zr / ipp if zr and ipp else None
    x_dsk = zr / dsk if zr and dsk else None
    # Judged in every round, not on the medians: zmqruntime's worst round against each peer's best.
    worst = min(numbers(r, "zr_roundtrip", key, "tasks_per_s"), default=None)
    best = [max(numbers(r, peer, peer_key, "tasks_per_s"), default=None) for peer in ("ipyparallel", "dask")]
    checks = [worst / b >= 5 for b in best if b and worst] if zr else []
    result = verdict(*(checks or [None])) if judged else "n/a"  # no baseline measured: no verdict
    return Row(what, fmt(zr, ".0f", " tasks/s") + span(r, ".0f", "zr_roundtrip", key, "tasks_per_s"),
               f"ipp {fmt(ipp, '.0f')}{span(r, '.0f', 'ipyparallel', peer_key, 'tasks_per_s')}, "
               f"dask {fmt(dsk, '.0f')}{span(r, '.0f', 'dask', peer_key, 'tasks_per_s')} tasks/s",
               f"{fmt(x_ipp, '.1f', 'x')} / {fmt(x_dsk, '.1f', 'x')}", ">= 5x both, every round" if judged else "(for reference)",
               result, error_of(r, "zr_roundtrip", key) or peer_note(r),
               {"zr_tasks_per_s": zr, "ipyparallel_tasks_per_s": ipp, "dask_tasks_per_s": dsk,
                "ratio_vs_ipyparallel": x_ipp, "ratio_vs_dask": x_dsk})


def pipelined_row(r: dict) -> Row:
    return _throughput_row(r, "pipelined", "no-op pipelined (async client)", judged=True)


def engine_row(r: dict) -> Row:
    """The same no-op batch as one execute_many, the client idle: the server and worker's own rate."""
    engine, client = get(r, "zr_roundtrip", "pipelined_engine", "tasks_per_s"), get(r, "zr_roundtrip", "pipelined", "tasks_per_s")
    share = client / engine if client and engine else None
    return Row("no-op pipelined, engine only (execute_many)",
               fmt(engine, ".0f", " tasks/s") + span(r, ".0f", "zr_roundtrip", "pipelined_engine", "tasks_per_s"),
               f"async client {fmt(client, '.0f', ' tasks/s')}", f"client reaches {fmt(share and share * 100, '.0f', '%')}",
               "(for reference)", "n/a", error_of(r, "zr_roundtrip", "pipelined_engine"),
               {"engine_tasks_per_s": engine, "client_tasks_per_s": client, "client_share": share})


def sync_batch_row(r: dict) -> Row:
    return _throughput_row(r, "sync_batch", "no-op batch, blocking client", judged=False)


def map_row(r: dict) -> Row:
    """The peers' batch APIs (ipyparallel map_async, dask map) against the same zmqruntime pipelined run."""
    return _throughput_row(r, "pipelined", "no-op pipelined vs peers' map", judged=True, peer_key="map")


def progress_rate_row(r: dict) -> Row:
    ev = get(r, "zr_progress", "event_rate") or {}
    rate, gaps = ev.get("events_per_s"), ev.get("seq_gaps")
    got, sent = ev.get("progress_events_received"), ev.get("emitted_iterations")
    lost_ok = None if gaps is None else (gaps == 0 and ev.get("seq_duplicates", 0) == 0)
    return Row("progress events -> subscriber", fmt(rate, ",.0f", " ev/s"),
               f"{fmt(got, ',')} recv / {fmt(sent, ',')} iters; task emits "
               f"{fmt(ev.get('task_emit_per_s'), ',.0f', '/s')}",
               f"seq gaps {fmt(gaps, 'd')}", ">= 50k/s, none lost",
               verdict(rate >= 50_000 if rate else None, lost_ok),
               error_of(r, "zr_progress", "event_rate") or ("" if ev.get("seq_checked", True)
                                                            else "events carry no seq field"),
               {"events_per_s": rate, "received": got, "iterations": sent, "seq_gaps": gaps})


def progress_overhead_row(r: dict) -> Row:
    ov = get(r, "zr_progress", "overhead", "overhead_s")
    bare = get(r, "zr_progress", "overhead", "bare_loop_s")
    return Row("1M progress() calls, overhead", fmt(ov, ".3f", " s"), fmt(bare, ".3f", " s bare loop"),
               "-", "<= 1 s", verdict(ov <= 1.0 if ov is not None else None),
               error_of(r, "zr_progress", "overhead"), {"overhead_s": ov, "bare_loop_s": bare})


def server_cpu_row(r: dict) -> Row:
    """What serving a busy task's output costs the cores the task wants (the server's spin included)."""
    printing = get(r, "zr_progress", "server_cpu", "printing_pct")
    silent = get(r, "zr_progress", "server_cpu", "silent_pct")
    return Row("server CPU while a busy task prints", fmt(printing, ".1f", "% of a core"),
               f"same task silent {fmt(silent, '.1f', '%')}", "-", "(for reference)", "n/a",
               error_of(r, "zr_progress", "server_cpu"), {"printing_pct": printing, "silent_pct": silent})


def big_result_rows(r: dict) -> list[Row]:
    zr_bw, raw_bw = get(r, "zr_bigresult", "big_result", "gb_per_s"), get(r, "raw_zerocopy", "gb_per_s")
    frac = zr_bw / raw_bw if zr_bw and raw_bw else None
    zr_rss = get(r, "zr_bigresult", "big_result", "peak_rss_increase_ratio")
    raw_rss = get(r, "raw_zerocopy", "peak_rss_increase_ratio")
    note = error_of(r, "zr_bigresult", "big_result") or error_of(r, "raw_zerocopy")
    return [
        Row("256 MiB result bandwidth", fmt(zr_bw, ".2f", " GB/s") + span(r, ".2f", "zr_bigresult", "big_result", "gb_per_s"),
            fmt(raw_bw, ".2f", " GB/s raw zero-copy") + span(r, ".2f", "raw_zerocopy", "gb_per_s"),
            fmt(frac and frac * 100, ".0f", "% of raw"), ">= 60% of raw",
            verdict(frac >= 0.6 if frac else None), note,
            {"zr_gb_per_s": zr_bw, "raw_gb_per_s": raw_bw, "fraction_of_raw": frac}),
        Row("256 MiB result, receiver peak RSS", fmt(zr_rss, ".2f", "x array"),
            fmt(raw_rss, ".2f", "x array raw"), "-", "<= 1.3x array",
            verdict(zr_rss <= 1.3 if zr_rss is not None else None), note,
            {"zr_rss_ratio": zr_rss, "raw_rss_ratio": raw_rss}),
    ]


def cancel_rows(r: dict) -> list[Row]:
    rows = []
    for key, what in (("cancel", "cancel running Python loop"), ("cancel_blocked", "cancel task blocked in C (sleep)")):
        ms = get(r, "zr_cancel", key, "median_ms")
        rows.append(Row(what, fmt(ms, ".1f", " ms"), "-", "-", "<= 200 ms",
                        verdict(ms <= 200 if ms is not None else None), error_of(r, "zr_cancel", key),
                        {"median_ms": ms, "max_ms": get(r, "zr_cancel", key, "p90_ms")}))
    return rows


def cold_start_row(r: dict) -> Row:
    s = get(r, "zr_coldstart", "cold_start", "median_s")
    imp = get(r, "zr_coldstart", "cold_start", "import_s")
    return Row("auto-spawn cold start -> 1st result", fmt(s, ".3f", " s"),
               f"(+ import {fmt(imp, '.3f', ' s')})", "-", "<= 0.3 s",
               verdict(s <= 0.3 if s is not None else None), error_of(r, "zr_coldstart", "cold_start"),
               {"median_s": s, "import_s": imp})


def kernel_row(r: dict) -> Row:
    """Trivial cell (request -> idle on IOPub) while a %%zmqexec job streams; judged on the flood."""
    k = ("zr_kernel", "kernel")
    base = get(r, *k, "baseline", "idle", "median_ms")
    thr = get(r, *k, "throttled", "idle", "median_ms")
    fl = get(r, *k, "flood", "idle", "median_ms")
    fl_p90, fl_max = get(r, *k, "flood", "idle", "p90_ms"), get(r, *k, "flood", "idle", "max_ms")
    return Row("kernel: trivial cell, job floods progress",
               f"{fmt(fl, '.1f', ' ms')} (p90 {fmt(fl_p90, '.0f')}, max {fmt(fl_max, '.0f')})",
               f"idle kernel {fmt(base, '.1f', ' ms')}; throttled job {fmt(thr, '.1f', ' ms')}",
               fmt(fl and base and fl / base, ".1f", "x idle"), "<= 50 ms (median)",
               verdict(fl <= 50 if fl is not None else None),
               error_of(r, *k, "flood") or error_of(r, *k, "baseline") or error_of(r, *k, "throttled"),
               {"flood_median_ms": fl, "flood_p90_ms": fl_p90, "flood_max_ms": fl_max,
                "flood_reply_median_ms": get(r, *k, "flood", "reply", "median_ms"),
                "throttled_median_ms": thr, "throttled_p90_ms": get(r, *k, "throttled", "idle", "p90_ms"),
                "throttled_max_ms": get(r, *k, "throttled", "idle", "max_ms"),
                "baseline_median_ms": base, "baseline_p90_ms": get(r, *k, "baseline", "idle", "p90_ms"),
                "baseline_max_ms": get(r, *k, "baseline", "idle", "max_ms")})


def kernel_widget_row(r: dict) -> Row:
    k = ("zr_kernel", "kernel", "flood")
    upd = get(r, *k, "widget_updates_per_s")
    recv = get(r, *k, "kernel_events_received_per_s")
    emit = get(r, *k, "job_items_per_s")
    main_pct = get(r, *k, "kernel_main_thread_cpu_pct")
    us_ev = get(r, *k, "kernel_main_thread_us_per_event")
    return Row("kernel: progress-bar updates, flood", fmt(upd, ".1f", " upd/s"),
               f"job emits {fmt(emit, ',.0f', ' ev/s')}; kernel receives {fmt(recv, ',.0f', '/s')}",
               f"kernel main thread {fmt(main_pct, '.0f', '% CPU')}, {fmt(us_ev, '.1f', ' us/event')}",
               "~10/s (coalesced)", "n/a", error_of(r, *k),
               {"widget_updates_per_s": upd, "job_events_per_s": emit, "kernel_events_per_s": recv,
                "kernel_main_thread_cpu_pct": main_pct, "kernel_main_thread_us_per_event": us_ev,
                "kernel_cpu_pct": get(r, *k, "kernel_cpu_pct"), "kernel_events": get(r, *k, "kernel_events")})


def ping_profile_row(r: dict) -> Row:
    """Where a brief ping's time goes (``profile_ping``): the server's main-thread CPU per ping
    beside the raw echo's, and its steps timed in place beside the same steps in a tight loop."""
    k = "profile_ping"
    ours, raw = get(r, k, "zmqruntime_not_spinning", "server", "main_us"), get(r, k, "raw_echo", "server", "main_us")
    steps = {name: get(r, k, "in_place_us", name) for name in PING_STEPS}
    loop = {name: get(r, k, "tight_loop_us", name) for name in ("verify and decode", "encode and sign the reply")}
    slower = [steps[n] / loop[n] for n in loop if steps.get(n) and loop.get(n)]
    factor = sum(slower) / len(slower) if slower else None
    return Row("ping: where the server's time goes (profile)",
               f"server main thread {fmt(ours, '.0f', ' us')} CPU per ping, not spinning; in place: "
               + ", ".join(f"{name} {fmt(v, '.1f')}" for name, v in steps.items()) + " us",
               f"raw echo's main thread {fmt(raw, '.0f', ' us')}; tight loop: verify and decode "
               f"{fmt(loop['verify and decode'], '.1f')}, encode and sign {fmt(loop['encode and sign the reply'], '.1f')} us",
               f"in place {fmt(factor, '.1f', 'x')} the tight loop", "(for reference)", "n/a", error_of(r, k),
               {"server_main_us": ours, "raw_server_main_us": raw, "in_place_us": steps, "tight_loop_us": loop,
                "in_place_factor": factor})


def noop_profile_row(r: dict) -> Row:
    """CPU per no-op ``run()`` of each process on its path (``profile_ping``): where its time goes."""
    k = "profile_ping"
    wall = get(r, k, "noop", "round_trip_us")
    cpu = {who: (get(r, k, "noop", who, "main_us"), get(r, k, "noop", who, "other_threads_us"))
           for who in ("client", "server", "worker")}
    timeline = {name: get(r, k, "noop_timeline_us", name) for name in NOOP_SEGMENTS}
    return Row("no-op: CPU per execution by process, and its path (profile)",
               f"{fmt(wall, '.0f', ' us')} a no-op; CPU per no-op (main thread + others): "
               + ", ".join(f"{who} {fmt(main, '.0f')} + {fmt(other, '.0f')}" for who, (main, other) in cpu.items())
               + " us (the server busy-polls)",
               "path, median us: " + ", ".join(f"{name} {fmt(v, '.0f')}" for name, v in timeline.items()),
               "-", "(for reference)", "n/a", error_of(r, k, "noop") or error_of(r, k, "noop_timeline_us"),
               {"wall_us": wall, **{f"{who}_main_us": main for who, (main, _) in cpu.items()},
                **{f"{who}_other_us": other for who, (_, other) in cpu.items()}, "timeline_us": timeline})


#: The segments of a no-op's path, then the whole, as the row names them.
NOOP_SEGMENTS = (*(name for name, _, _ in TIMELINE), "whole no-op")
PING_STEPS = ("handle_request (all of a request)", "verify and decode", "replay check", "encode and sign the reply",
              "send the reply", "receive the request")


def comparisons(results: dict) -> list[Row]:
    from benchmarks import report_curves, report_ray
    from benchmarks.rows_kernel_flood import flood_rows

    return [ping_row(results), ping_full_row(results), ping_profile_row(results), noop_latency_row(results), noop_floor_row(results), noop_profile_row(results), pipelined_row(results), map_row(results), engine_row(results), sync_batch_row(results),
            progress_rate_row(results), progress_overhead_row(results), server_cpu_row(results),
            *big_result_rows(results), *cancel_rows(results), cold_start_row(results),
            kernel_row(results), kernel_widget_row(results), *flood_rows(results),
            *report_ray.rows(results), *report_curves.rows(results), *_scaleout_rows(results)]


def _scaleout_rows(results: dict) -> list[Row]:
    from benchmarks.rows_scaleout import dask_rows, session_rows

    return [*session_rows(results), *dask_rows(results)]



def baseline_lines(r: dict) -> list[str]:
    def line(name, text, *path):
        err = error_of(r, *path)
        return f"  {name:<28} {err if err else text}"
    return [
        line("raw pyzmq REQ/REP", f"{fmt(get(r, 'raw_reqrep', 'median_us'), '.0f', ' us')} median "
             f"(p10 {fmt(get(r, 'raw_reqrep', 'p10_us'), '.0f')}, p90 {fmt(get(r, 'raw_reqrep', 'p90_us'), '.0f')})",
             "raw_reqrep"),
        line("raw zero-copy 256 MiB", f"{fmt(get(r, 'raw_zerocopy', 'gb_per_s'), '.2f', ' GB/s')}, "
             f"receiver peak RSS +{fmt(get(r, 'raw_zerocopy', 'peak_rss_increase_ratio'), '.2f', 'x')} array",
             "raw_zerocopy"),
        line("raw pyzmq DEALER/ROUTER", f"{fmt(get(r, 'raw_reqrep', 'router_dealer', 'median_us'), '.0f', ' us')} median",
             "raw_reqrep", "router_dealer"),
        line("raw DEALER/ROUTER over ipc", f"{fmt(get(r, 'raw_reqrep', 'router_dealer_ipc', 'median_us'), '.0f', ' us')} median",
             "raw_reqrep", "router_dealer_ipc"),
        line("raw relay, 4 hops (ipc)", f"zmq link {fmt(get(r, 'raw_relay', 'zmq', 'median_us'), '.0f', ' us')}, "
             f"socketpair link {fmt(get(r, 'raw_relay', 'socketpair', 'median_us'), '.0f', ' us')} median", "raw_relay"),
        line("ipyparallel (2 engines)", f"apply_sync {fmt(get(r, 'ipyparallel', 'latency', 'median_ms'), '.2f', ' ms')}, "
             f"apply_async {fmt(get(r, 'ipyparallel', 'pipelined', 'tasks_per_s'), '.0f', ' tasks/s')}, "
             f"map_async {fmt(get(r, 'ipyparallel', 'map', 'tasks_per_s'), '.0f', ' tasks/s')}",
             "ipyparallel"),
        line("dask.distributed (2 workers)", f"submit().result() {fmt(get(r, 'dask', 'latency', 'median_ms'), '.2f', ' ms')}, "
             f"submit+gather {fmt(get(r, 'dask', 'pipelined', 'tasks_per_s'), '.0f', ' tasks/s')}, "
             f"map+gather {fmt(get(r, 'dask', 'map', 'tasks_per_s'), '.0f', ' tasks/s')}",
             "dask"),
        line("ray (num_cpus=2)", f"ray.get(f.remote()) {fmt(get(r, 'ray', 'latency', 'median_ms'), '.2f', ' ms')}, "
             f"pipelined {fmt(get(r, 'ray', 'pipelined', 'tasks_per_s'), '.0f', ' tasks/s')}, "
             f"get(list) {fmt(get(r, 'ray', 'map', 'tasks_per_s'), '.0f', ' tasks/s')}, "
             f"ray.init {fmt(get(r, 'ray', 'startup', 'init_s'), '.2f', ' s')}",
             "ray"),
    ]


def render(results: dict, rows: list[Row]) -> str:
    cols = ["what", "value", "baseline", "ratio", "target", "verdict"]
    table = [cols] + [[getattr(row, c) for c in cols] for row in rows]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(cols))]
    out = ["", "Baselines (same run):", *baseline_lines(results), "",
           "zmqruntime vs baselines:"]
    for i, line in enumerate(table):
        out.append("  " + "  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip())
        if i == 0:
            out.append("  " + "  ".join("-" * w for w in widths))
    notes = [f"  {row.what}: {row.note}" for row in rows if row.note]
    if notes:
        out += ["", "Notes / errors:", *notes]
    return "\n".join(out)


def meta() -> dict:
    import os

    return {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": sys.version.split()[0],
            "platform": platform.platform(), "cpus": os.cpu_count()}


def load_results(path: Path) -> dict:
    """The ``results`` of a saved run; ValueError if the file is not one."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a results file ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), dict):
        raise ValueError(f"{path}: not a results file (no 'results' object)")  # noqa: TRY004
    return doc["results"]


def write_json(path: Path, results: dict, rows: list[Row], extra: dict) -> None:
    doc = {"meta": {**meta(), **extra},
           "comparisons": [asdict(row) for row in rows],
           "results": results}
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
