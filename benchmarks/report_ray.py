"""The rows that judge zmqruntime against Ray, measured in the same run.

Why a module of its own: the Ray targets are a second
set of bars on figures the other rows already show, and keeping them apart
keeps report.py's rows for ipyparallel/dask unchanged.  When Ray is not
installed, every row still appears, with ``n/a`` and the reason.
"""

from __future__ import annotations

from benchmarks.report import Row, error_of, fmt, get, span, verdict


def _note(r: dict, *path) -> str:
    for key in ("ray", "ray_bigresult"):
        for e in r.get(key) or []:
            if isinstance(e, dict) and e.get("unavailable"):
                return str(e.get("error", "ray not installed"))[:160]
    return error_of(r, *path) if path else ""


def _ratio(a, b):
    return a / b if a and b else None


def latency_row(r: dict) -> Row:
    zr = get(r, "zr_roundtrip", "noop_latency", "median_ms")
    ray = get(r, "ray", "latency", "median_ms")
    x = _ratio(ray, zr)
    return Row("no-op execute->result vs Ray",
               fmt(zr, ".3f", " ms") + span(r, ".2f", "zr_roundtrip", "noop_latency", "median_ms"),
               f"ray.get(f.remote()) {fmt(ray, '.2f', ' ms')}{span(r, '.2f', 'ray', 'latency', 'median_ms')}",
               fmt(x, ".1f", "x faster"), ">= 3x faster", verdict(x >= 3 if x else None),
               _note(r, "ray", "latency"), {"zr_ms": zr, "ray_ms": ray, "speedup_vs_ray": x})


def throughput_row(r: dict) -> Row:
    zr = get(r, "zr_roundtrip", "pipelined", "tasks_per_s")
    pipe, lst = get(r, "ray", "pipelined", "tasks_per_s"), get(r, "ray", "map", "tasks_per_s")
    x_pipe, x_list = _ratio(zr, pipe), _ratio(zr, lst)
    checks = [x >= 3 for x in (x_pipe, x_list) if x is not None]
    return Row("no-op pipelined vs Ray",
               fmt(zr, ".0f", " tasks/s") + span(r, ".0f", "zr_roundtrip", "pipelined", "tasks_per_s"),
               f"ray pipelined {fmt(pipe, '.0f')}{span(r, '.0f', 'ray', 'pipelined', 'tasks_per_s')}, "
               f"get(list) {fmt(lst, '.0f')}{span(r, '.0f', 'ray', 'map', 'tasks_per_s')} tasks/s",
               f"{fmt(x_pipe, '.2f', 'x')} / {fmt(x_list, '.2f', 'x')}", ">= 3x both",
               verdict(*(checks or [None])), _note(r, "ray", "pipelined"),
               {"zr_tasks_per_s": zr, "ray_pipelined_tasks_per_s": pipe, "ray_list_tasks_per_s": lst,
                "ratio_vs_ray_pipelined": x_pipe, "ratio_vs_ray_list": x_list})


def big_result_row(r: dict) -> Row:
    path = ("big_result", "make_and_get", "gb_per_s")
    zr, ray = get(r, "zr_bigresult", *path), get(r, "ray_bigresult", *path)
    ray_get = get(r, "ray_bigresult", "big_result", "gb_per_s")
    x = _ratio(zr, ray)
    return Row("256 MiB fresh result vs Ray (make+get)",
               fmt(zr, ".2f", " GB/s") + span(r, ".2f", "zr_bigresult", *path),
               f"ray {fmt(ray, '.2f', ' GB/s')}{span(r, '.2f', 'ray_bigresult', *path)} "
               f"(ray.get alone maps shm: {fmt(ray_get, ',.0f', ' GB/s')})",
               fmt(x, ".2f", "x Ray"), ">= 1x Ray", verdict(x >= 1 if x else None),
               _note(r, "ray_bigresult", "big_result") or error_of(r, "zr_bigresult", "big_result"),
               {"zr_gb_per_s": zr, "ray_gb_per_s": ray, "ray_get_only_gb_per_s": ray_get, "ratio_vs_ray": x})


def cold_start_row(r: dict) -> Row:
    zr = get(r, "zr_coldstart", "cold_start", "median_s")
    init = get(r, "ray", "startup", "init_s")
    frac = _ratio(zr, init)
    return Row("cold start vs ray.init",
               fmt(zr, ".3f", " s"),
               f"ray.init {fmt(init, '.2f', ' s')}{span(r, '.2f', 'ray', 'startup', 'init_s')}",
               fmt(frac, ".3f", " of ray.init"), "<= 1/5 of ray.init", verdict(frac <= 0.2 if frac else None),
               _note(r, "ray", "startup") or error_of(r, "zr_coldstart", "cold_start"),
               {"zr_s": zr, "ray_init_s": init, "fraction_of_ray_init": frac})


def cancel_rows(r: dict) -> list[Row]:
    rows = []
    for key, what, judged in (("cancel", "cancel loop vs ray.cancel", True),
                              ("cancel_blocked", "cancel in C vs ray.cancel(force)", False)):
        zr, ray = get(r, "zr_cancel", key, "median_ms"), get(r, "ray", key, "median_ms")
        alive = sum(e.get(key, {}).get("worker_survived", 0) for e in r.get("ray") or [] if isinstance(e, dict))
        of = sum(e.get(key, {}).get("of", 0) for e in r.get("ray") or [] if isinstance(e, dict))
        x = _ratio(ray, zr)
        rows.append(Row(what, fmt(zr, ".1f", " ms"),
                        f"ray {fmt(ray, '.1f', ' ms')}{span(r, '.1f', 'ray', key, 'median_ms')}; "
                        f"ray worker survived {alive}/{of}",
                        fmt(x, ".1f", "x faster"), "faster than Ray" if judged else "(for reference)",
                        verdict(x > 1 if x else None) if judged else "n/a",
                        _note(r, "ray", key) or error_of(r, "zr_cancel", key),
                        {"zr_ms": zr, "ray_ms": ray, "speedup_vs_ray": x,
                         "ray_worker_survived": alive, "ray_cancels": of}))
    return rows


def rows(r: dict) -> list[Row]:
    return [latency_row(r), throughput_row(r), big_result_row(r), cold_start_row(r), *cancel_rows(r)]
