"""Curve: one kernel with 0, 1, 10, 50 ``%%zmqexec`` panels streaming progress at once.

Why: a notebook often has several jobs running, each with its live panel,
and the kernel must stay responsive for the next cell.  The target:
a trivial cell <= 50 ms median with 50 panels streaming.

Set-up as in zr_kernel.py (a real ipykernel via jupyter_client, its own
runtime dir and server port, ``%load_ext zmqruntime_jupyter``,
``%zmq connect``), reusing its ``Kernel`` driver.  The server runs
N_max + 1 workers so every job runs at once, each job in a session of
its own (a notebook's cells share one session and would run one by one).  For each N: N non-blocking
``%%zmqexec`` jobs, each sleeping 10 ms per item under
``progress(..., min_interval=0.02)`` (about 50 events/s each, 2,500/s at 50);
once the last one's progress bar moves, ``CELLS`` trivial ``1+1`` cells
(request -> idle on IOPub: median, p90), bracketed by two stats cells giving
the kernel's CPU share (whole process and main thread, % of one core) and the
events it received; then every job is cancelled and awaited.  N = 0 is the
same kernel with nothing running.
"""

from __future__ import annotations

import time

from benchmarks import common, zr_kernel

PANELS = (0, 1, 2) if common.SMOKE else (0, 1, 10, 50)
CELLS = common.scaled(30, minimum=5) if not common.QUICK else 15
JOB_MAX_S = 120.0
JOB = """%%zmqexec --name bench-panel-{k} --session bench-panel-{k}
from zmqruntime import progress
import time
_end = time.monotonic() + {max_s}
for _i in progress(range(10**7), desc="panel {k}", min_interval=0.02):
    time.sleep(0.01)
    if time.monotonic() > _end:
        break
"""
CANCEL_ALL = """import zmqruntime_jupyter as _z
_live = [_h for _h in list(_z.current_state().handles.values()) if not _h.final]
for _h in _live:
    _h.cancel()
for _h in _live:
    _h.wait(timeout=30)
"""


def point(kernel: zr_kernel.Kernel, n: int) -> dict:
    last_bar = None
    for k in range(n):
        msg_id, _ = kernel.run(JOB.format(k=k, max_s=JOB_MAX_S))
        last_bar = kernel.watcher.bar_of(msg_id)
    try:
        if n:
            if last_bar is None:
                raise RuntimeError("the %%zmqexec cell opened no progress-bar widget")
            kernel.watcher.wait_updates(last_bar, 2, zr_kernel.STREAMING_TIMEOUT)
        before = zr_kernel.stream_stats(kernel)
        t0 = time.perf_counter()
        cells = zr_kernel.trivial_cells(kernel, n=CELLS)
        after = zr_kernel.stream_stats(kernel)
        span = time.perf_counter() - t0
    finally:
        if n:
            kernel.run(CANCEL_ALL, timeout=60)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return {"panels": n, "idle": cells["idle"], "reply": cells["reply"],
            "kernel_cpu_pct": 100 * delta.get("cpu_s", 0) / span,
            "kernel_main_thread_cpu_pct": 100 * delta.get("main_thread_cpu_s", 0) / span,
            "kernel_events_per_s": delta.get("events", 0) / span, "window_s": span}


def measure_curve(port: int, runtime_dir: str) -> dict:
    with zr_kernel.connected_kernel(port, runtime_dir) as kernel:
        points = {}
        for n in PANELS:
            points[str(n)] = common.guarded(point, kernel, n)
            time.sleep(0.5)  # let the kernel settle between points
        return {"panels": list(PANELS), "cells": CELLS, "points": points}


def measure() -> dict:
    return zr_kernel.measure_with_server(
        "curve", lambda _client, port, runtime_dir: measure_curve(port, runtime_dir),
        server_args=(f"--ExecutionServer.concurrency={max(PANELS) + 1}",),
        warm_tasks=3)  # workers up before the first point


if __name__ == "__main__":
    common.child_main(measure)
