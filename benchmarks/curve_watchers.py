"""Curve: the server with 0, 1, 10, 50 attached client processes, each watching its own job.

Why: a shared server has many notebooks attached, each with a running job
and a panel subscribed to its events.  This shows what that costs everyone
else: the server's ping and a no-op execute -> result (from a probe client
in this process), the server's CPU share, and whether each watcher still
receives its job's events in order with none lost.

One point = N watcher processes (``python -m benchmarks.curve_watchers
--child``).  Each connects its own ``ExecutionClient``, runs a job that
sleeps 10 ms per item under ``progress(..., min_interval=0.02)`` (about 50
events/s, as a panel sees a real job), subscribes to that execution only, says
READY once its first event arrived, and counts events (``seq`` gaps) until
told to stop (a stop-file); then cancels its job and reports.  The server
runs N_max + 1 workers so every job runs at once and the probe's no-op still
finds a free worker.  Jobs end by themselves after ``JOB_MAX_S``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from benchmarks import common, zr_server

WATCHERS = (0, 1, 2) if common.SMOKE else (0, 1, 10, 50)
WINDOW = common.sized(3.0 if common.QUICK else 6.0, 0.5)
PING_SAMPLES = common.sized(200, 10)
NOOP_SAMPLES = common.sized(50, 5)
READY_TIMEOUT = 120.0
PROBE_TIMEOUT = 60.0  # one probe request, worst case (a saturated machine, not a lost server)
JOB_MAX_S = 120.0
JOB = """
import time
from zmqruntime import progress
_end = time.monotonic() + {max_s}
for _i in progress(range(10**7), desc="watched", min_interval=0.02):
    time.sleep(0.01)
    if time.monotonic() > _end:
        break
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def probe(client, pid: int) -> dict:
    """The probe's figures over one window, with N watchers streaming."""
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    ping = common.summarize(common.time_each(lambda: client.ping(timeout=PROBE_TIMEOUT), n=PING_SAMPLES,
                                             warmup=5), "ms", 1e3)
    noop = common.summarize(common.time_each(lambda: zr_server.run_to_result(client, "None", PROBE_TIMEOUT),
                                             n=NOOP_SAMPLES, warmup=3), "ms", 1e3)
    left = WINDOW - (time.perf_counter() - t0)
    if left > 0:
        time.sleep(left)
    span = time.perf_counter() - t0
    return {"ping": ping, "noop": noop, "window_s": span,
            "server_cpu_pct": 100 * (cpu_seconds(pid) - cpu0) / span,
            "server_rss_bytes": int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")}


def point(client, port: int, pid: int, n: int, workdir: Path) -> dict:
    stop = workdir / f"stop-{n}"
    procs = []
    try:
        for _ in range(n):
            procs.append(common.spawn_python(["-m", "benchmarks.curve_watchers", "--child", str(port), str(stop)]))
        for p in procs:
            common.read_line(p, READY_TIMEOUT, "READY")
        out = probe(client, pid)
        stop.touch()
        reports = [json.loads(common.read_line(p, 60, "RESULT")) for p in procs]
    finally:
        for p in procs:
            common.reap(p)
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        raise RuntimeError(f"{len(errors)} watcher(s) failed: {errors[0]}")
    out["watchers"] = n
    if reports:
        out["events_per_s_per_watcher"] = sorted(r["events_per_s"] for r in reports)[len(reports) // 2]
        out["events_total"] = sum(r["events"] for r in reports)
        out["seq_gaps"] = sum(r["seq_gaps"] for r in reports)
        out["out_of_order"] = sum(r["out_of_order"] for r in reports)
    return out


def measure_curve(client, port: int) -> dict:
    rdir = Path(os.environ["ZMQRUNTIME_RUNTIME_DIR"])
    pid = zr_server.server_pid(rdir, port)
    if not pid:
        raise RuntimeError("no server pid in the connection file")
    for _ in range(3):  # workers up before the first point
        zr_server.run_to_result(client, "None", timeout=60)
    points = {str(n): common.guarded(point, client, port, pid, n, rdir) for n in WATCHERS}
    return {"watchers": list(WATCHERS), "window_s": WINDOW, "points": points}


def measure() -> dict:
    return zr_server.measure_curve(measure_curve, (f"--ExecutionServer.concurrency={max(WATCHERS) + 1}",))


class Counter:
    """Subscriber callback: progress events of one execution, their seq order."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.times: list[float] = []
        self.first = threading.Event()

    def __call__(self, event) -> None:
        if zr_server.event_type(event) != "progress":
            return
        seq = zr_server.event_seq(event)
        if seq is not None:
            self.seqs.append(seq)
        self.times.append(time.perf_counter())
        self.first.set()

    def report(self) -> dict:
        s = self.seqs
        gaps = sum(b - a - 1 for a, b in zip(s, s[1:]) if b > a + 1)
        span = self.times[-1] - self.times[0] if len(self.times) > 1 else 0.0
        return {"events": len(self.times), "events_per_s": (len(self.times) - 1) / span if span else 0.0,
                "seq_gaps": gaps, "out_of_order": sum(1 for a, b in zip(s, s[1:]) if b <= a)}


def child(port: int, stop: Path) -> None:
    """One watcher process: its own job, its own subscription; READY, then RESULT."""
    ExecutionClient, _ = zr_server.import_api()
    result: dict
    try:
        with ExecutionClient(port=port, auto_spawn=False) as client:
            counter = Counter()
            eid = client.execute(JOB.format(max_s=JOB_MAX_S))
            sub = client.subscribe(counter, execution_id=eid)
            try:
                if not counter.first.wait(READY_TIMEOUT):
                    raise TimeoutError(f"no progress event within {READY_TIMEOUT}s")
                print("READY", flush=True)
                deadline = time.monotonic() + READY_TIMEOUT + JOB_MAX_S
                while not stop.exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
                result = counter.report()
                client.cancel(eid)
                client.wait(eid, timeout=30)
            finally:
                sub.close()
    except Exception as exc:  # noqa: BLE001 -- reported to the parent, which raises
        result = {"error": f"{type(exc).__name__}: {exc}"}
        print("READY", flush=True)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        common.child_main(measure)
