"""zmqruntime: the kernel while a cell floods tqdm updates and prints 10,000 lines, remote and local.

Why: a ``%%zmqexec`` cell should behave like a local cell (tqdm bars, printed
text) without costing the notebook what the local cell costs: a local loop
under ``tqdm(..., mininterval=0)`` blocks the kernel and sends every redraw
of its bar to the frontend as text.  Issue 11 asks for the kernel's CPU and
the trivial-cell latency while a remote cell does that, side by side with the
same cell run locally, and for the bytes sent to the frontend for 10,000
printed lines (the output must grow linearly, not re-send its history).

Set-up as in zr_kernel.py (a real ipykernel via jupyter_client,
``%load_ext zmqruntime_jupyter``, ``%zmq connect`` to a server child
process), reusing its ``Kernel`` driver.  One cell body, ``FLOOD_CELL``:
``for i in tqdm(range(...), mininterval=0)`` (plain ``from tqdm import tqdm``;
in a worker it is zmqruntime's reporting subclass) for ``DURATION_S`` seconds,
printing ``LINES`` lines of ~60 characters evenly over that time (all of them,
however fast the loop runs), then one ``@@FLOOD@@`` line with the items it
did.  Three scenarios, in one kernel, one after another:

  * ``idle``:   nothing running (the baseline);
  * ``remote``: the body as a non-blocking ``%%zmqexec`` cell;
  * ``local``:  the same body as a plain cell: it blocks the kernel, so a
    trivial cell sent meanwhile waits for it to end -- measured as it is,
    since that is the point of the comparison.

In each, ``CELLS`` trivial ``1+1`` cells are sent open-loop (one every
``0.75 * DURATION_S / CELLS`` seconds, not waiting for the previous one, so a
blocked kernel queues them as a user's cells would): ``execute_request`` sent
-> ``status: idle`` on IOPub (median, p90, max).  Over the scenario's window
(from the flood cell sent to its output delivered: once the cell is idle, or
the remote execution final, the last IOPub message before ``QUIET_S`` of
quiet) this process reads,
from outside the kernel so it works while the kernel is blocked:

  * the kernel process's CPU and its main thread's (``/proc``, sampled every
    20 ms so the window can end at the last IOPub message), as a share of one
    core;
  * every IOPub message the kernel published (a raw ``SUB`` socket of our
    own on its IOPub port): count and bytes (the sum of all frame sizes), by
    message type; bytes per printed line, and over the printed text.

Last, ``remote_tenth``: the remote cell again, printing a tenth of the lines
in the same time.  What the other nine tenths cost, per line and over their
text (``remote_marginal_*``), is the growth figure: about 1x the text if
each line reaches the frontend about once, far more if updates re-sent the
output's history (the quadratic growth issue 11 §5 rules out).

Every wait is bounded; the kernel is shut down and the server reaped in
``finally`` (also on run.py's SIGTERM).  No assertion on any figure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections import Counter
from typing import Any

from benchmarks import common, zr_kernel

DURATION_S = 1.5 if common.SMOKE else 5.0 if common.QUICK else 8.0
LINES = 300 if common.SMOKE else 10_000
CELLS = 5 if common.SMOKE else 15 if common.QUICK else 30
QUIET_S = 0.5            # IOPub silent this long = the cell's output is delivered
DRAIN_TIMEOUT = 60.0     # the most we wait for that
CELL_END_TIMEOUT = 120.0  # a flood cell's end, past DURATION_S (the local one sends a lot)
LINE = "line {n:5d}: text printed by the flood cell, about sixty chars"

FLOOD_CELL = """from tqdm import tqdm as _tqdm
import json as _json, time as _time
_lines, _printed, _t0 = {lines}, 0, _time.monotonic()
for _i in _tqdm(range(10**9), mininterval=0):
    _t = _time.monotonic() - _t0
    while _printed < _lines * min(1.0, _t / {duration}):
        print({line!r}.format(n=_printed))
        _printed += 1
    if _t >= {duration}:
        break
while _printed < _lines:
    print({line!r}.format(n=_printed))
    _printed += 1
print("@@FLOOD@@", _json.dumps({{"items": _i + 1, "lines": _printed, "seconds": _time.monotonic() - _t0}}))
"""
REMOTE_NAME = "_zr_flood"
DELIMITER = b"<IDS|MSG>"  # between the routing frames and the signed parts of a Jupyter message


# ------------------------------------------------------------------ readings from outside the kernel


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process (or one of its threads) from /proc, in seconds."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # fields 14, 15 of stat(5)


class CpuSampler:
    """The kernel's CPU seconds (process, main thread) every ``PERIOD`` s, so a window can end in the past."""

    PERIOD = 0.02

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.lock = threading.Lock()
        self.samples: list[tuple[float, float, float]] = []  # (time, process s, main thread s)
        self._stop = threading.Event()
        self._take()
        self._thread = threading.Thread(target=self._run, name="bench-kernel-cpu", daemon=True)
        self._thread.start()

    def _take(self) -> None:
        sample = (time.perf_counter(), cpu_seconds(self.pid), cpu_seconds(self.pid, self.pid))
        with self.lock:
            self.samples.append(sample)

    def _run(self) -> None:
        while not self._stop.wait(self.PERIOD):
            with contextlib.suppress(OSError):  # the kernel gone at shutdown
                self._take()

    def at(self, t: float) -> tuple[float, float]:
        """(process, main thread) CPU seconds at the first sample taken at or after ``t`` (bounded wait)."""
        deadline = time.perf_counter() + 5
        while True:
            with self.lock:
                later = [s for s in self.samples if s[0] >= t]
            if later:
                return later[0][1], later[0][2]
            if time.perf_counter() > deadline:
                raise TimeoutError("no CPU sample of the kernel within 5 s")
            time.sleep(self.PERIOD)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


class IOPubBytes:
    """Counts every message the kernel publishes on IOPub, in bytes, on its own ``SUB`` socket."""

    def __init__(self, connection_info: dict) -> None:
        import zmq

        self._ctx = zmq.Context()
        self.sock = self._ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 0)  # never drop on our side: we count what the kernel sent
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.setsockopt(zmq.LINGER, 0)
        info = connection_info
        self.sock.connect(f"{info['transport']}://{info['ip']}:{info['iopub_port']}")
        self.lock = threading.Lock()
        self.messages: list[tuple[float, int, str]] = []  # (arrival, bytes, msg_type)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-iopub-bytes", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import zmq

        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(50):
                continue
            frames = self.sock.recv_multipart(copy=False)
            now = time.perf_counter()
            size = sum(len(f) for f in frames)
            with self.lock:
                self.messages.append((now, size, _msg_type(frames)))

    def last_arrival(self) -> float:
        with self.lock:
            return self.messages[-1][0] if self.messages else 0.0

    def wait_quiet(self, quiet: float = QUIET_S, timeout: float = DRAIN_TIMEOUT) -> float:
        """Wait until nothing arrived for ``quiet`` s; the time of the last arrival."""
        deadline = time.perf_counter() + timeout
        while True:
            now = time.perf_counter()
            last = self.last_arrival()
            if now - last >= quiet:
                return last
            if now > deadline:
                raise TimeoutError(f"IOPub still busy after {timeout}s")
            time.sleep(min(0.05, quiet))

    def between(self, start: float, end: float) -> dict:
        with self.lock:
            window = [(size, kind) for t, size, kind in self.messages if start <= t <= end]
        by_type: Counter[str] = Counter()
        count: Counter[str] = Counter()
        for size, kind in window:
            by_type[kind] += size
            count[kind] += 1
        return {"messages": len(window), "bytes": sum(by_type.values()),
                "bytes_by_type": dict(by_type), "messages_by_type": dict(count)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close(0)
        self._ctx.term()


def _msg_type(frames: list) -> str:
    """The ``msg_type`` of a raw Jupyter message (the header frame follows the delimiter and the HMAC)."""
    for i, frame in enumerate(frames[:-2]):
        if len(frame) == len(DELIMITER) and frame.bytes == DELIMITER:
            try:
                return str(json.loads(frames[i + 2].bytes).get("msg_type", "?"))
            except ValueError:
                return "?"
    return "?"


# ------------------------------------------------------------------ one scenario


def send_probes(kernel: zr_kernel.Kernel, n: int, period: float) -> list[tuple[str, float]]:
    """``n`` trivial cells, one every ``period`` s, open-loop; ``(msg id, time sent)`` each."""
    sent = []
    start = time.perf_counter()
    for i in range(n):
        delay = start + i * period - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t0 = time.perf_counter()
        sent.append((kernel.send(zr_kernel.TRIVIAL), t0))
    return sent


def probe_latencies(kernel: zr_kernel.Kernel, sent: list[tuple[str, float]], timeout: float) -> dict:
    """Request -> idle of each probe (replies read in order, each checked)."""
    to_idle = []
    for msg_id, t0 in sent:
        reply = kernel.wait_reply(msg_id, timeout)
        if reply["content"].get("status") != "ok":
            raise RuntimeError(f"{zr_kernel.TRIVIAL!r} failed: {reply['content']}")
        to_idle.append(kernel.watcher.wait_idle(msg_id, timeout) - t0)
    return {"idle": zr_kernel.summary_ms(to_idle), "samples_idle_ms": [round(x * 1e3, 2) for x in to_idle]}


def flood_stats(text: str) -> dict:
    m = re.search(r"@@FLOOD@@ (\{.*\})", text)
    if not m:
        raise RuntimeError(f"the flood cell printed no @@FLOOD@@ line: {text[-300:]!r}")
    stats = json.loads(m.group(1))
    stats["items_per_s"] = stats["items"] / stats["seconds"] if stats["seconds"] else None
    return stats


def scenario(kernel: zr_kernel.Kernel, iopub: IOPubBytes, cpu: CpuSampler, client: Any, where: str,
             lines: int = LINES) -> dict:
    """One window: the flood cell printing ``lines`` (``where``: remote, local, or none for idle), probes beside it."""
    iopub.wait_quiet()
    period = 0.75 * DURATION_S / CELLS
    timeout = DURATION_S + CELL_END_TIMEOUT
    cell = FLOOD_CELL.format(lines=lines, duration=DURATION_S, line=LINE)
    t0 = time.perf_counter()
    cpu0, main0 = cpu.at(t0)
    flood: dict = {}
    if where == "remote":
        kernel.run(f"%%zmqexec --name bench-flood\n{cell}")
        # the cell's value is its handle; its id lets this process wait for the end without the kernel
        exec_id = kernel.printed(f"{REMOTE_NAME} = _\nprint('@@ID@@', {REMOTE_NAME}.id)", "@@ID@@").strip()
        sent = send_probes(kernel, CELLS, period)
        probes = probe_latencies(kernel, sent, timeout)
        status = client.wait(exec_id, timeout=timeout)
        if status.get("status") != "complete":
            raise RuntimeError(f"the remote flood cell ended {status.get('status')}: {status.get('error')}")
        flood = flood_stats(client.get_status(exec_id).get("stdout") or "")
    elif where == "local":
        msg_id = kernel.send(cell)
        sent = send_probes(kernel, CELLS, period)
        reply = kernel.wait_reply(msg_id, timeout)["content"]  # before the probes' replies, in order
        kernel.watcher.wait_idle(msg_id, timeout)
        if reply.get("status") != "ok":
            raise RuntimeError(f"the local flood cell failed: {reply.get('ename')}: {reply.get('evalue')}")
        probes = probe_latencies(kernel, sent, timeout)
        flood = flood_stats(kernel.watcher.stdout_of(msg_id))
    else:
        probes = probe_latencies(kernel, send_probes(kernel, CELLS, period), timeout)
    t_end = iopub.wait_quiet()  # the last message: the cell's output (and the probes') delivered
    cpu1, main1 = cpu.at(t_end)
    window = t_end - t0
    traffic = iopub.between(t0, t_end)
    printed = flood.get("lines") or 0
    return {
        **probes,
        "flood": flood,
        "window_s": round(window, 3),
        "kernel_cpu_s": round(cpu1 - cpu0, 3),
        "kernel_cpu_pct": 100 * (cpu1 - cpu0) / window,
        "kernel_main_thread_cpu_pct": 100 * (main1 - main0) / window,
        "iopub": traffic,
        "iopub_bytes_per_line": traffic["bytes"] / printed if printed else None,
        # over the text printed (LINE + newline per line): 1.0 would be the text alone, once
        "iopub_bytes_over_text": traffic["bytes"] / (printed * (len(LINE.format(n=0)) + 1)) if printed else None,
    }


def measure_flood(client: Any, port: int, runtime_dir: str) -> dict:
    with zr_kernel.connected_kernel(port, runtime_dir) as kernel:
        if kernel.pid is None:
            raise RuntimeError("the kernel's pid is unknown (not a local provisioner?)")
        iopub = IOPubBytes(kernel.km.get_connection_info())
        cpu = CpuSampler(kernel.pid)
        try:
            # tqdm imported on both sides and the remote worker up, outside the windows
            kernel.run("import tqdm")
            kernel.run("%%zmqexec --block --quiet\nimport tqdm", timeout=60)
            result: dict = {"duration_s": DURATION_S, "lines": LINES, "cells": CELLS,
                            "line_chars": len(LINE.format(n=0)) + 1}
            for where in ("idle", "remote", "local"):
                result[where] = common.guarded(scenario, kernel, iopub, cpu, client, where)
                time.sleep(0.5)  # let the kernel settle between scenarios
            # the same remote cell printing a tenth of the lines: what the other 90 % cost (linear growth)
            tenth = common.guarded(scenario, kernel, iopub, cpu, client, "remote", LINES // 10)
            result["remote_tenth"] = tenth
            full = result["remote"]
            if "error" not in full and "error" not in tenth:
                extra_lines = full["flood"]["lines"] - tenth["flood"]["lines"]
                marginal = (full["iopub"]["bytes"] - tenth["iopub"]["bytes"]) / extra_lines
                result["remote_marginal_bytes_per_line"] = marginal
                result["remote_marginal_over_text"] = marginal / result["line_chars"]
            return result
        finally:
            cpu.close()
            with contextlib.suppress(Exception):
                iopub.close()


def measure() -> dict:
    return zr_kernel.measure_with_server("flood", measure_flood)


if __name__ == "__main__":
    common.child_main(measure)
