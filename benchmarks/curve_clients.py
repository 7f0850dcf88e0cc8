"""Curve: no-op latency and throughput vs concurrent clients (threads and processes).

Why: the other rows measure one client; this shows how the server shares
itself out as clients are added -- whether latency grows only as the queue
does (N clients on 2 workers: about N/2 tasks ahead of each request) and
whether throughput holds.

One point = N clients (1, 4, 16, 64), each its own ``ExecutionClient``,
each doing ``execute("None")`` -> result one at a time for ``DURATION`` s,
all starting together.  Two ways of being N clients:

  * ``threads``: N threads in this process (they share one GIL: the client
    side's own limit shows here);
  * ``processes``: N child processes (``python -m benchmarks.curve_clients
    --child``), started and warmed up first, released together by a go-file.

Per point: median and p90 latency over every request of every client, and
aggregate tasks/s.  The server runs 2 workers (as in zr_roundtrip.py).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from benchmarks import common, zr_server

NOOP = "None"
WORKERS = 2
CLIENTS = (1, 2) if common.SMOKE else (1, 4, 16, 64)
DURATION = common.sized(1.5 if common.QUICK else 3.0, 0.3)
READY_TIMEOUT = 120.0
#: Each request's reply timeout in the clients: at 64 client processes (and their 64 session
#: workers) on 2 cores a reply took over the default 10 s once (run F of 2026-11-30), which
#: lost the whole point; a slow reply belongs in the latency figures instead.
REQUEST_TIMEOUT = 60.0


def summarize_point(latencies: list[float], done: int, seconds: float) -> dict:
    out = common.summarize(latencies, "ms", 1e3)
    out["tasks_per_s"] = done / seconds
    return out


def run_for(client, duration: float, start_at: float) -> list[float]:
    """One client's loop: requests until ``duration`` after ``start_at``; latencies (s)."""
    while time.perf_counter() < start_at:
        time.sleep(0.0005)
    end = start_at + duration
    out = []
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        zr_server.run_to_result(client, NOOP, timeout=60)
        out.append(time.perf_counter() - t0)
    return out


def threads_point(port: int, n: int) -> dict:
    ExecutionClient, _ = zr_server.import_api()
    clients = [ExecutionClient(port=port, auto_spawn=False, timeout=REQUEST_TIMEOUT) for _ in range(n)]
    results: list = [None] * n
    try:
        for c in clients:
            # warm up each connection and its session's worker (it boots now: untimed, and on a
            # loaded machine 64 boots take longer than the default 10 s wait)
            zr_server.run_to_result(c, NOOP, timeout=READY_TIMEOUT)
        start_at = time.perf_counter() + 0.2

        def work(i: int) -> None:
            results[i] = common.guarded(lambda: {"lat": run_for(clients[i], DURATION, start_at)})

        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DURATION + 60)
        wall = time.perf_counter() - start_at
    finally:
        for c in clients:
            c.close()
    return combine(results, wall)


def combine(results: list, wall: float) -> dict:
    errors = [r["error"] for r in results if not isinstance(r, dict) or "error" in r] if all(
        isinstance(r, dict) for r in results) else ["a client thread did not finish"]
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]}")
    lat = [x for r in results for x in r["lat"]]
    return summarize_point(lat, len(lat), wall)


def processes_point(port: int, n: int, workdir: Path) -> dict:
    go = workdir / f"go-{n}"
    procs = []
    try:
        for _ in range(n):
            procs.append(common.spawn_python(
                ["-m", "benchmarks.curve_clients", "--child", str(port), str(DURATION), str(go)]))
        for p in procs:
            common.read_line(p, READY_TIMEOUT, "READY")
        t0 = time.perf_counter()
        go.touch()
        results = [json.loads(common.read_line(p, DURATION + 60, "RESULT")) for p in procs]
        wall = time.perf_counter() - t0
    finally:
        for p in procs:
            common.reap(p)
    return combine([{"lat": r["lat"]} if "lat" in r else r for r in results], wall)


def measure_curve(client, port: int) -> dict:
    workdir = Path(zr_server.os.environ["ZMQRUNTIME_RUNTIME_DIR"])
    out: dict = {"clients": list(CLIENTS), "duration_s": DURATION, "workers": WORKERS}
    for _ in range(common.sized(50, 3)):  # both workers up and warm before the first point
        zr_server.run_to_result(client, NOOP, timeout=60)
    out["threads"] = {str(n): common.guarded(threads_point, port, n) for n in CLIENTS}
    out["processes"] = {str(n): common.guarded(processes_point, port, n, workdir) for n in CLIENTS}
    return out


def measure() -> dict:
    return zr_server.measure_curve(measure_curve, (f"--ExecutionServer.concurrency={WORKERS}",))


def child(port: int, duration: float, go: Path) -> None:
    """One client process: warm up, say READY, wait for the go-file, run, print RESULT."""
    try:
        ExecutionClient, _ = zr_server.import_api()
        with ExecutionClient(port=port, auto_spawn=False, timeout=REQUEST_TIMEOUT) as client:
            for _ in range(3):  # the first boots this session's worker: untimed, and it may queue behind 63 others
                zr_server.run_to_result(client, NOOP, timeout=READY_TIMEOUT)
            print("READY", flush=True)
            deadline = time.monotonic() + READY_TIMEOUT
            while not go.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError("no go-file")
                time.sleep(0.001)
            lat = run_for(client, duration, time.perf_counter())
        print("RESULT " + json.dumps({"lat": [round(x, 7) for x in lat]}), flush=True)
    except Exception as exc:  # noqa: BLE001 -- reported to the parent, which raises
        print("READY", flush=True)
        print("RESULT " + json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(int(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4]))
    else:
        common.child_main(measure)
