"""zmqruntime: kernel responsiveness while a ``%%zmqexec`` job streams progress.

Why: a non-blocking ``%%zmqexec`` cell leaves the kernel free for other cells
while the kernel's ZMQStream feeds the job's panel.  The target (benchmarks/README.md)
is "a trivial cell runs within 50 ms while a job streams progress at full
rate": the event path must not starve the kernel's shell handler.

Set-up: a zmqruntime server (child process, free port pair, private
``ZMQRUNTIME_RUNTIME_DIR``), then a real ipykernel started by jupyter_client
(``KernelManager`` with that runtime dir and ``ZMQRUNTIME_PORT`` in its
environment), ``%load_ext zmqruntime_jupyter``, ``%zmq connect <port>``.

One sample = one ``1+1`` cell, sent on the shell channel from here:

  * ``reply``: ``execute_request`` sent -> ``execute_reply`` received;
  * ``idle``:  ``execute_request`` sent -> ``status: idle`` (same parent) on IOPub.

``CELLS`` samples (after ``WARMUP``), ``PAUSE`` s apart, in three scenarios of
the same run and the same kernel:

  * ``baseline``:  no job running;
  * ``throttled``: a job in ``progress(range(N), desc=...)`` with a tiny sleep
    per item (default throttle: one event per 0.1 s);
  * ``flood``:     a job in ``progress(range(N), min_interval=0)`` doing nothing
    else: one event per item, as fast as the worker can send them.

During each job the progress-bar widget updates (IOPub ``comm_msg`` /
``update`` to the ``FloatProgress`` model carrying ``value``) are counted:
the panel is meant to coalesce to about 10 per second.  Two stats cells
bracket the samples and give, for that window, the kernel's own counters
(messages its ``EventStream`` received / skipped / applied / dropped, gaps
its handles repaired) and its CPU time: the whole process and its main
thread (the IO loop that runs the event path), as a share of one core and as
main-thread microseconds per event received.  The job's own rate (items =
progress events with ``min_interval=0``) is read from its handle afterwards.

Every job stops by itself after ``JOB_MAX_S`` even if nothing cancels it;
each is cancelled as soon as its samples are taken.  Every wait is bounded,
the kernel is shut down and the server reaped in ``finally`` (also on SIGTERM
from ``run.py``'s timeout; and the kernel's parent poller ends it if this
process is killed outright).  No assertion on any figure.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import threading
import time

from benchmarks import common, zr_server

CELLS = common.scaled(30, minimum=8)
WARMUP = 3
PAUSE = 0.05            # seconds between trivial cells
CELL_TIMEOUT = 30.0     # one trivial cell, worst case
KERNEL_READY_TIMEOUT = 60.0
STREAMING_TIMEOUT = 20.0
JOB_MAX_S = 45.0        # a job ends by itself after this, cancelled or not
TRIVIAL = "1+1"

THROTTLED_JOB = """%%zmqexec --name bench-throttled
from zmqruntime import progress
import time
_t_end = time.monotonic() + {max_s}
for i in progress(range(10**7), desc="throttled"):
    time.sleep(0.0005)
    if time.monotonic() > _t_end:
        break
"""

FLOOD_JOB = """%%zmqexec --name bench-flood
from zmqruntime import progress
import time
_t_end = time.monotonic() + {max_s}
for i in progress(range(10**9), desc="flood", min_interval=0):
    if not i & 1023 and time.monotonic() > _t_end:
        break
"""

# Printed by a cell as one line: the kernel-side counters of the event stream.
STATS_CELL = """import json as _j, resource as _r, time as _t, zmqruntime_jupyter as _z
_st = _z.current_state()
_s = [c.stream for c in _st.connections.values() if c.stream is not None]
_n = {k: sum(getattr(s, k, 0) for s in _s) for k in ("received", "events", "skipped", "applied", "dropped")}
_n["gaps"] = sum(getattr(h, "gaps", 0) for h in _st.handles.values())
_u = _r.getrusage(_r.RUSAGE_SELF)
_n["cpu_s"], _n["main_thread_cpu_s"] = _u.ru_utime + _u.ru_stime, _t.thread_time()
print("@@STATS@@", _j.dumps(_n))
"""

JOB_INFO_CELL = """import json as _j
print("@@JOB@@", _j.dumps({{"status": {name}.status, "progress": {name}.progress}}))
"""


class IOPubWatcher:
    """Reads IOPub on a thread: idle times per request, progress-bar updates."""

    def __init__(self, kc) -> None:
        self.kc = kc
        self.cond = threading.Condition()
        self.idle_at: dict[str, float] = {}
        self.bar_comms: dict[str, str] = {}          # comm id -> parent msg id of the cell
        self.bar_updates: list[tuple[float, str]] = []  # (time, comm id) with a new value
        self.iopub_messages = 0
        self.stdout: dict[str, str] = {}  # parent msg id -> stdout text
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-iopub", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.kc.iopub_channel.get_msg(timeout=0.05)
            except queue.Empty:
                continue
            except Exception:  # channel closed under us at shutdown
                if self._stop.is_set():
                    return
                continue
            now = time.perf_counter()
            kind, content = msg["msg_type"], msg["content"]
            parent = msg["parent_header"].get("msg_id", "")
            with self.cond:
                self.iopub_messages += 1
                if kind == "stream" and content.get("name") == "stdout":
                    self.stdout[parent] = self.stdout.get(parent, "") + content.get("text", "")
                elif kind == "status" and content.get("execution_state") == "idle":
                    self.idle_at[parent] = now
                    self.cond.notify_all()
                elif kind == "comm_open" and content.get("target_name") == "jupyter.widget":
                    state = content.get("data", {}).get("state", {})
                    if state.get("_model_name") in ("FloatProgressModel", "IntProgressModel"):
                        self.bar_comms[content["comm_id"]] = parent
                elif kind == "comm_msg" and content.get("comm_id") in self.bar_comms:
                    data = content.get("data", {})
                    if data.get("method") == "update" and "value" in data.get("state", {}):
                        self.bar_updates.append((now, content["comm_id"]))
                        self.cond.notify_all()

    def wait_idle(self, msg_id: str, timeout: float) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: msg_id in self.idle_at, timeout):
                raise TimeoutError(f"no idle status for {msg_id} within {timeout}s")
            return self.idle_at[msg_id]

    def stdout_of(self, msg_id: str) -> str:
        with self.cond:
            return self.stdout.get(msg_id, "")

    def bar_of(self, cell_msg_id: str) -> str | None:
        with self.cond:
            return next((c for c, p in self.bar_comms.items() if p == cell_msg_id), None)

    def updates_of(self, comm_id: str, since: float = 0.0, until: float = float("inf")) -> list[float]:
        with self.cond:
            return [t for t, c in self.bar_updates if c == comm_id and since <= t < until]

    def wait_updates(self, comm_id: str, n: int, timeout: float) -> None:
        with self.cond:
            if not self.cond.wait_for(
                    lambda: sum(1 for _, c in self.bar_updates if c == comm_id) >= n, timeout):
                raise TimeoutError(f"the job's progress bar did not move within {timeout}s "
                                   "(is the job streaming?)")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


class Kernel:
    """A real ipykernel over jupyter_client, driven from this thread."""

    def __init__(self, env: dict, cwd: str) -> None:
        from jupyter_client import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.kc = None
        self.watcher = None
        self.km.start_kernel(env=env, cwd=cwd)
        try:
            self.kc = self.km.client()
            self.kc.start_channels()
            self.kc.wait_for_ready(timeout=KERNEL_READY_TIMEOUT)
            self.watcher = IOPubWatcher(self.kc)
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int | None:
        """The kernel process's pid (jupyter_client's local provisioner), for /proc readings."""
        return getattr(self.km.provisioner, "pid", None)

    def send(self, code: str) -> str:
        return self.kc.execute(code, silent=False, store_history=True, allow_stdin=False)

    def wait_reply(self, msg_id: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no execute_reply within {timeout}s")
            try:
                msg = self.kc.get_shell_msg(timeout=left)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg

    def run(self, code: str, timeout: float = CELL_TIMEOUT) -> tuple[str, dict]:
        """Run a cell to its idle status; raise if it failed; (msg id, reply content)."""
        msg_id = self.send(code)
        reply = self.wait_reply(msg_id, timeout)["content"]
        self.watcher.wait_idle(msg_id, timeout)
        if reply.get("status") != "ok":
            raise RuntimeError(f"cell failed: {code.splitlines()[0]!r}: "
                               f"{reply.get('ename')}: {reply.get('evalue')}")
        return msg_id, reply

    def printed(self, code: str, marker: str) -> str:
        """Run a cell; return the rest of its stdout line starting with ``marker``."""
        msg_id, _ = self.run(code)
        text = self.watcher.stdout_of(msg_id)
        m = re.search(re.escape(marker) + r" (.*)", text)
        if not m:
            raise RuntimeError(f"no {marker} line in the cell's output: {text[-300:]!r}")
        return m.group(1)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
        with contextlib.suppress(Exception):
            if self.kc is not None:
                self.kc.stop_channels()
        with contextlib.suppress(Exception):
            self.km.shutdown_kernel(now=True)


# ------------------------------------------------------------------ measuring


def summary_ms(samples: list[float]) -> dict:
    out = common.summarize(samples, "ms", 1e3)
    out["max_ms"] = max(samples) * 1e3
    return out


def trivial_cells(kernel: Kernel, n: int = CELLS, warmup: int = WARMUP) -> dict:
    """``n`` timed ``1+1`` cells: request -> reply, and request -> idle."""
    to_reply, to_idle = [], []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        msg_id = kernel.send(TRIVIAL)
        reply = kernel.wait_reply(msg_id, CELL_TIMEOUT)
        t_reply = time.perf_counter()
        t_idle = kernel.watcher.wait_idle(msg_id, CELL_TIMEOUT)
        if reply["content"].get("status") != "ok":
            raise RuntimeError(f"{TRIVIAL!r} failed: {reply['content']}")
        if i >= warmup:
            to_reply.append(t_reply - t0)
            to_idle.append(t_idle - t0)
        time.sleep(PAUSE)
    return {"reply": summary_ms(to_reply), "idle": summary_ms(to_idle),
            "samples_reply_ms": [round(x * 1e3, 2) for x in to_reply],
            "samples_idle_ms": [round(x * 1e3, 2) for x in to_idle]}


def stream_stats(kernel: Kernel) -> dict:
    import json

    return json.loads(kernel.printed(STATS_CELL, "@@STATS@@"))


def with_job(kernel: Kernel, job_code: str, name: str) -> dict:
    """Start a non-blocking job, sample trivial cells while it streams, cancel it."""
    import json

    job_msg, _ = kernel.run(job_code.format(max_s=JOB_MAX_S))
    kernel.run(f"{name} = _")  # the cell's value is the handle
    bar = kernel.watcher.bar_of(job_msg)
    if bar is None:
        raise RuntimeError("the %%zmqexec cell opened no progress-bar widget")
    kernel.watcher.wait_updates(bar, 3, STREAMING_TIMEOUT)
    before = stream_stats(kernel)
    t_start = time.perf_counter()
    cells = trivial_cells(kernel)
    t_end = time.perf_counter()
    after = stream_stats(kernel)
    t_after = time.perf_counter()
    window = t_end - t_start
    updates = kernel.watcher.updates_of(bar, t_start, t_end)
    kernel.run(f"{name}.cancel()\n{name}.wait(timeout=20)", timeout=CELL_TIMEOUT)
    job = json.loads(kernel.printed(JOB_INFO_CELL.format(name=name), "@@JOB@@"))
    prog = job.get("progress") or {}
    counters = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    span = t_after - t_start  # the stats cells bracket the sampling window
    received = counters.get("events", 0)  # events, not messages: a progress_batch holds many
    cells.update({
        "window_s": round(window, 3),
        "widget_updates": len(updates),
        "widget_updates_per_s": len(updates) / window if window > 0 else None,
        "kernel_events": counters,
        "kernel_events_received_per_s": received / span if span > 0 else None,
        # CPU the kernel process (all threads) and its main thread (the IO loop) used
        # during the window, as a share of one core; main-thread CPU per event received
        "kernel_cpu_pct": 100 * counters.get("cpu_s", 0) / span if span > 0 else None,
        "kernel_main_thread_cpu_pct": 100 * counters.get("main_thread_cpu_s", 0) / span if span > 0 else None,
        "kernel_main_thread_us_per_event": (1e6 * counters.get("main_thread_cpu_s", 0) / received
                                            if received else None),
        "job_status": job.get("status"),
        "job_items": prog.get("done"),
        "job_items_per_s": (prog["done"] / prog["elapsed"]) if prog.get("done") and prog.get("elapsed") else None,
    })
    return cells


@contextlib.contextmanager
def connected_kernel(port: int, runtime_dir: str):
    """A real ipykernel with ``%load_ext zmqruntime_jupyter`` and ``%zmq connect <port>``; shut down after."""
    env = common.python_env({"ZMQRUNTIME_RUNTIME_DIR": runtime_dir, "ZMQRUNTIME_PORT": str(port),
                             "PYDEVD_DISABLE_FILE_VALIDATION": "1", "JUPYTER_PLATFORM_DIRS": "1"})
    kernel = None
    try:
        kernel = Kernel(env, cwd=runtime_dir)
        kernel.run("%load_ext zmqruntime_jupyter")
        kernel.run(f"%zmq connect {port} --no-spawn")
        yield kernel
    finally:
        if kernel is not None:
            kernel.close()


def measure_kernel(port: int, runtime_dir: str) -> dict:
    with connected_kernel(port, runtime_dir) as kernel:
        result = {"cells": CELLS, "pause_s": PAUSE}
        result["baseline"] = common.guarded(trivial_cells, kernel)
        result["throttled"] = common.guarded(with_job, kernel, THROTTLED_JOB, "_zr_job_throttled")
        time.sleep(0.5)  # let the kernel settle between jobs
        result["flood"] = common.guarded(with_job, kernel, FLOOD_JOB, "_zr_job_flood")
        return result


def _terminated(signum, frame):  # run.py's timeout: clean up in the finally blocks
    raise SystemExit(128 + signum)


def measure_with_server(key: str, fn, server_args: tuple[str, ...] = (), warm_tasks: int = 0) -> dict:
    """``{key: fn(client, port, runtime_dir)}`` against a server child process, for a kernel benchmark.

    What every kernel benchmark needs around its measurement: clean-up on
    run.py's SIGTERM, a plain "not available" entry when ipykernel,
    jupyter_client or zmqruntime does not import, and the server (its own
    failure, or ``fn``'s, as an entry).  ``warm_tasks`` no-ops run first so
    the server's workers are up.
    """
    signal.signal(signal.SIGTERM, _terminated)
    try:
        import ipykernel  # noqa: F401
        import jupyter_client  # noqa: F401

        import zmqruntime_jupyter  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return {key: {"error": f"not available: {type(exc).__name__}: {exc}", "unavailable": True}}
    try:
        zr_server.import_api()
    except zr_server.NotAvailable as exc:
        return {key: zr_server.unavailable_or_error(exc)}
    try:
        with zr_server.running_server(server_args) as (client, port):
            for _ in range(warm_tasks):
                zr_server.run_to_result(client, "None", timeout=60)
            return {key: common.guarded(fn, client, port, os.environ["ZMQRUNTIME_RUNTIME_DIR"])}
    except Exception as exc:  # noqa: BLE001 -- the server itself did not come up
        return {key: common.error_entry(exc, "server")}


def measure() -> dict:
    return measure_with_server("kernel", lambda _client, port, runtime_dir: measure_kernel(port, runtime_dir))


if __name__ == "__main__":
    common.child_main(measure)
