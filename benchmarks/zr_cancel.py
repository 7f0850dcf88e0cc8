"""zmqruntime: cancel latency of a running task -- a Python loop, and a C call.

Why: "Cancel" must stop a runaway cell promptly and only that cell.  Two cases:

  * ``cancel``: a pure-Python busy loop, the common case (the SIGINT lands
    between bytecodes, KeyboardInterrupt unwinds at once);
  * ``cancel_blocked``: a task blocked in C (``time.sleep(30)``): CPython
    checks signals when the sleep's system call is interrupted, so this shows
    whether the interrupt really reaches a task that is not running bytecode.

One sample:

  1. execute the loop; poll ``get_status`` until it reports ``running``;
  2. clock starts just before ``client.cancel(eid)``;
  3. clock stops when the subscriber callback receives an event for that
     execution whose status is ``cancelled``.

Target: <= 200 ms (median).  Both tasks give up by themselves after 30 s so a
broken cancel cannot wedge the server past the benchmark's own timeouts.
"""

from __future__ import annotations

import threading
import time

from benchmarks import common, zr_server

BUSY_LOOP = """
import time
_deadline = time.monotonic() + 30
_i = 0
while time.monotonic() < _deadline:
    _i += 1
"""
BLOCKED_IN_C = "import time\ntime.sleep(30)\n"
RUNNING_TIMEOUT = 10.0
CANCELLED_TIMEOUT = 10.0


class CancelWatcher:
    """Subscriber callback noting when each execution is first seen 'cancelled'."""

    def __init__(self) -> None:
        self.cancelled_at: dict = {}
        self.cond = threading.Condition()
        self.seen_any = threading.Event()

    def __call__(self, event) -> None:
        self.seen_any.set()
        if zr_server.event_status(event) == "cancelled":
            now = time.perf_counter()
            with self.cond:
                self.cancelled_at.setdefault(zr_server.event_exec_id(event), now)
                self.cond.notify_all()

    def wait(self, eid, timeout: float) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: eid in self.cancelled_at, timeout):
                raise TimeoutError(f"no 'cancelled' event for {eid} within {timeout}s")
            return self.cancelled_at[eid]


def status_of(client, eid) -> str | None:
    return zr_server.event_status(client.get_status(eid))


def wait_running(client, eid) -> None:
    deadline = time.monotonic() + RUNNING_TIMEOUT
    while (status := status_of(client, eid)) != "running":
        if status in ("complete", "failed", "cancelled") or time.monotonic() > deadline:
            raise RuntimeError(f"execution {eid} is {status!r}, never seen 'running'")
        time.sleep(0.002)


def measure_cancel(client, code: str = BUSY_LOOP) -> dict:
    watcher = CancelWatcher()
    sub = client.subscribe(watcher, execution_id=None)
    latencies, call_times = [], []
    try:
        # Warm-up: the first event arriving proves the subscription is live.  A
        # SUB socket joins late (events sent before it connected are not seen), so
        # keep running no-ops until one of their events arrives.
        deadline = time.monotonic() + RUNNING_TIMEOUT
        while not watcher.seen_any.is_set():
            if time.monotonic() > deadline:
                raise TimeoutError("subscription delivered no event within "
                                   f"{RUNNING_TIMEOUT}s of completed executions")
            client.wait(client.execute("None"), timeout=RUNNING_TIMEOUT)
            watcher.seen_any.wait(0.2)
        for _ in range(common.scaled(5, minimum=2)):
            eid = client.execute(code)
            wait_running(client, eid)
            time.sleep(0.05)  # let the loop be well under way, not just starting
            t0 = time.perf_counter()
            client.cancel(eid)
            call_times.append(time.perf_counter() - t0)
            latencies.append(watcher.wait(eid, CANCELLED_TIMEOUT) - t0)
            client.wait(eid, timeout=CANCELLED_TIMEOUT)
    finally:
        sub.close()
    result = common.summarize(latencies, "ms", 1e3)
    result["cancel_call_median_ms"] = common.summarize(call_times, "ms", 1e3)["median_ms"]
    return result


def measure() -> dict:
    return zr_server.measure_all({
        "cancel": measure_cancel,
        "cancel_blocked": lambda client: measure_cancel(client, BLOCKED_IN_C),
    })


if __name__ == "__main__":
    common.child_main(measure)
