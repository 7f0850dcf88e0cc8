"""zmqruntime: progress events -- delivery rate with nothing lost, and in-task cost.

Why: progress is the feature users watch, and it must neither drop events nor
slow the task.  Two measurements (targets in benchmarks/README.md):

  * event rate: a task emits ``N_EVENTS`` unthrottled progress events
    (``progress(range(N), min_interval=0)``; it stops early, and says so, if
    that takes over ``EMIT_SECONDS_CAP``); a ``subscribe`` callback in this
    process records every event.  Reported: progress events received, their
    rate at the subscriber, and whether the per-execution sequence numbers are
    contiguous (nothing lost).  Target >= 50k events/s, zero lost.
  * overhead: inside one task, time a bare ``for`` loop over 1M items and the
    same loop wrapped in the default (throttled) ``progress()``; the difference
    is the cost of progress reporting.  Target <= 1 s.

  * the server's CPU while a CPU-bound task prints a line per iteration for
    ``BUSY_SECONDS`` (its output reaches the server every few milliseconds),
    beside the same task silent: what serving the output costs the machine
    whose cores the task wants. For reference.

There is no external baseline; the targets are absolute.
"""

from __future__ import annotations

import statistics
import threading
import time

from benchmarks import common, zr_server

N_EVENTS = common.sized(200_000 // 5 if common.QUICK else 200_000, 2_000)
N_OVERHEAD = common.sized(1_000_000, 10_000)
DONE_TIMEOUT = 60.0

EMIT_SECONDS_CAP = 20.0  # a slow emitter stops early (reported), not past our timeout
EMIT_CODE = """
import time
from zmqruntime import progress
_n = 0
_t0 = time.perf_counter()
_cap = _t0 + {cap}
for _i in progress(range({n}), desc="bench-events", min_interval=0):
    _n += 1
    if _n % 1024 == 0 and time.perf_counter() > _cap:
        break
(_n, time.perf_counter() - _t0)
"""

OVERHEAD_CODE = """
import time
from zmqruntime import progress
_t0 = time.perf_counter()
for _i in range({n}):
    pass
_bare = time.perf_counter() - _t0
_t0 = time.perf_counter()
for _i in progress(range({n}), desc="bench-overhead"):
    pass
(_bare, time.perf_counter() - _t0)
"""


class Recorder:
    """Subscriber callback: timestamp and keep every event; flag 'done' events."""

    def __init__(self) -> None:
        self.events: list[tuple[float, object]] = []
        self.done_ids: set = set()
        self.changed = threading.Condition()

    def __call__(self, event) -> None:
        now = time.perf_counter()
        self.events.append((now, event))  # list.append is atomic under the GIL
        if zr_server.event_type(event) == "done":
            with self.changed:
                self.done_ids.add(zr_server.event_exec_id(event))
                self.changed.notify_all()

    def wait_done(self, eid, timeout: float) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: eid in self.done_ids, timeout):
                raise TimeoutError(f"no 'done' event for {eid} within {timeout}s "
                                   f"({len(self.events)} events seen)")


def seq_report(seqs: list[int]) -> dict:
    if not seqs:
        return {"seq_checked": False}
    ordered = sorted(seqs)
    gaps = sum(b - a - 1 for a, b in zip(ordered, ordered[1:]) if b > a + 1)
    return {"seq_checked": True, "first_seq": ordered[0], "last_seq": ordered[-1],
            "seq_gaps": gaps, "seq_duplicates": len(ordered) - len(set(ordered)),
            "seq_in_order": seqs == ordered}


def measure_event_rate(client) -> dict:
    rec = Recorder()
    sub = client.subscribe(rec, execution_id=None)
    try:
        # Warm-up execution: its 'done' arriving proves the subscription is live
        # (no fixed sleep for the PUB/SUB slow-joiner).
        rec.wait_done(client.execute("None"), timeout=DONE_TIMEOUT)
        rec.events.clear()

        t_submit = time.perf_counter()
        eid = client.execute(EMIT_CODE.format(n=N_EVENTS, cap=EMIT_SECONDS_CAP))
        rec.wait_done(eid, timeout=DONE_TIMEOUT)
        t_done = time.perf_counter()
        client.wait(eid, timeout=10)
        iterations, task_loop_s = zr_server.last_value(client.get_results(eid))
    finally:
        sub.close()

    mine = [(t, e) for t, e in rec.events if zr_server.event_exec_id(e) == eid]
    prog = [t for t, e in mine if zr_server.event_type(e) == "progress"]
    seqs = [s for s in (zr_server.event_seq(e) for _, e in mine) if s is not None]
    span = (prog[-1] - prog[0]) if len(prog) > 1 else float("nan")
    return {
        "emitted_iterations": iterations,
        "stopped_early_by_cap": iterations < N_EVENTS,
        "progress_events_received": len(prog),
        "events_received_total": len(mine),
        "missing_vs_iterations": max(0, iterations - len(prog)),
        "events_per_s": len(prog) / span if span > 0 else None,
        "events_per_s_end_to_end": len(prog) / (t_done - t_submit),
        "end_to_end_s": t_done - t_submit,
        "task_loop_s": task_loop_s,
        "task_emit_per_s": iterations / task_loop_s if task_loop_s else None,
        **seq_report(seqs),
    }


def measure_progress_overhead(client) -> dict:
    code = OVERHEAD_CODE.format(n=N_OVERHEAD)
    zr_server.run_to_result(client, code, timeout=60)  # warm-up
    pairs = [zr_server.run_to_result(client, code, timeout=60) for _ in range(3)]
    bare = [p[0] for p in pairs]
    wrapped = [p[1] for p in pairs]
    return {
        "iterations": N_OVERHEAD,
        "bare_loop_s": statistics.median(bare),
        "progress_loop_s": statistics.median(wrapped),
        "overhead_s": statistics.median(w - b for b, w in pairs),
    }


BUSY_SECONDS = 3.0
BUSY_CODE = """
import time
_end = time.perf_counter() + {seconds}
while time.perf_counter() < _end:
    {body}
"""


def measure_server_cpu(client) -> dict:
    """Server CPU (% of a core, /proc) while a task prints a line per iteration, and while it is silent."""
    from benchmarks.curve_watchers import cpu_seconds

    pid = client.ping(brief=True)["pid"]
    out: dict = {"seconds": BUSY_SECONDS}
    for name, body in (("printing", "print('x' * 40)"), ("silent", "pass")):
        used, started = cpu_seconds(pid), time.perf_counter()
        zr_server.run_to_result(client, BUSY_CODE.format(seconds=BUSY_SECONDS, body=body), timeout=60)
        out[f"{name}_pct"] = round(100 * (cpu_seconds(pid) - used) / (time.perf_counter() - started), 1)
    return out


def measure() -> dict:
    return zr_server.measure_all({
        "event_rate": measure_event_rate,
        "overhead": measure_progress_overhead,
        "server_cpu": measure_server_cpu,
    })


if __name__ == "__main__":
    common.child_main(measure)
