"""Baseline: raw pyzmq zero-copy transfer of a 256 MiB numpy array.

Why: it is the best a ZeroMQ result transfer can do here -- pickle protocol 5
with the array's memory as an out-of-band buffer, sent and received with
``copy=False``.  zmqruntime's ``get_results`` of the same array is judged as a
fraction of this bandwidth (target >= 60 %) and by the same memory measure.

Shape of one sample (mirrors "ask for a result, get it"): the receiver (this
process) sends a tiny request on REQ; the sender process replies with
``[pickle header, raw array buffer]``; the clock stops once the array is
rebuilt in the receiver.  Memory: the receiver is a fresh process, so
``peak RSS after - RSS before`` is what receiving the array cost it.
"""

from __future__ import annotations

import pickle
import sys
import time

import numpy as np
import zmq

from benchmarks import common

NBYTES = common.sized(256 * 2**20, 8 * 2**20)
FILL = 1.5


def make_array() -> np.ndarray:
    return np.full(NBYTES // 8, FILL, dtype=np.float64)  # pages really touched


def serve() -> None:
    """Sender (child process): reply to every request with the array, zero-copy."""
    arr = make_array()
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(arr, protocol=5, buffer_callback=buffers.append)
    frames = [header] + [b.raw() for b in buffers]
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.linger = 0
    port = rep.bind_to_random_port(f"tcp://{common.LOOPBACK}")
    print(f"READY {port}", flush=True)
    try:
        while rep.recv() != b"STOP":
            rep.send_multipart(frames, copy=False)
        rep.send(b"bye")
    finally:
        rep.close()
        ctx.term()


def measure() -> dict:
    proc = common.spawn_python(["-m", "benchmarks.baseline_zerocopy", "--serve"])
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    req.rcvtimeo = req.sndtimeo = 30_000
    try:
        port = int(common.read_line(proc, 30, "READY "))
        req.connect(f"tcp://{common.LOOPBACK}:{port}")
        rss_before = common.current_rss_bytes()

        def fetch() -> float:
            t0 = time.perf_counter()
            req.send(b"GET")
            frames = req.recv_multipart(copy=False)
            arr = pickle.loads(frames[0].buffer, buffers=[f.buffer for f in frames[1:]])
            common.touch_pages(arr)  # as zr_bigresult does: every page read
            elapsed = time.perf_counter() - t0
            assert arr.nbytes == NBYTES and arr[0] == FILL and arr[-1] == FILL
            return elapsed

        fetch()  # warmup (also the first, page-faulting receive)
        times = [fetch() for _ in range(common.scaled(5, minimum=2))]
        peak = common.peak_rss_bytes()
        req.send(b"STOP")
        req.recv()
        return common.transfer_summary(times, NBYTES, rss_before, peak)
    finally:
        req.close()
        ctx.term()
        common.reap(proc)


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve()
    else:
        common.child_main(measure)
