"""Curve: result bandwidth vs result size, 1 KiB -> 1 GiB, beside raw zero-copy.

Why: the 256 MiB row is one point; small results are dominated by the round
trip and large ones by copying and hashing, and this shows where one turns
into the other, against the best ZeroMQ can do at the same size.

For each size (a float64 numpy array), in turn:
  * ``zr``: the task builds the array (untimed, ``wait`` first); the clock
    runs around ``get_results`` until the array is in hand and one byte of
    every page read (as zr_bigresult.py: a shared-memory result is mapped);
  * ``raw``: a sender process replies to a REQ with the array, pickle-5
    out-of-band, ``copy=False`` both ways, its pages read the same way (as
    baseline_zerocopy.py).
The two alternate sample by sample.  1 GiB is measured only when the machine
has room (``MemAvailable`` >= 10 GiB: sender, server relay and receiver may
each hold a copy); otherwise its point says why it is missing.
"""

from __future__ import annotations

import pickle
import sys
import time
from pathlib import Path

from benchmarks import common, zr_server

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
if common.SMOKE:
    SIZES = (KiB, MiB)
elif common.QUICK:
    SIZES = (KiB, 32 * KiB, MiB, 32 * MiB, 256 * MiB, GiB)
else:
    SIZES = (KiB, 32 * KiB, MiB, 8 * MiB, 32 * MiB, 256 * MiB, GiB)
FILL = 1.5
NEEDS_FREE = 10 * GiB  # for the 1 GiB point


def reps_for(size: int) -> int:
    n = max(3, min(200, (64 * MiB) // size))
    return max(2, n // 4) if common.QUICK else (2 if common.SMOKE else n)


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def sender() -> None:
    """Child: reply to b"<size>" with a float64 array of that many bytes, zero-copy."""
    import numpy as np
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    port = sock.bind_to_random_port(f"tcp://{common.LOOPBACK}")
    print(f"PORT {port}", flush=True)
    cache: dict = {}
    while True:
        req = sock.recv()
        if req == b"quit":
            sock.send(b"bye")
            break
        size = int(req)
        if size not in cache:
            cache.clear()
            cache[size] = np.full(size // 8, FILL, dtype=np.float64)
        bufs: list = []
        header = pickle.dumps(cache[size], protocol=5, buffer_callback=bufs.append)
        sock.send_multipart([header] + [b.raw() for b in bufs], copy=False)
    sock.close(linger=0)
    ctx.term()


def raw_once(sock, size: int) -> float:
    t0 = time.perf_counter()
    sock.send(str(size).encode())
    frames = sock.recv_multipart(copy=False)
    arr = pickle.loads(frames[0].buffer, buffers=[f.buffer for f in frames[1:]])
    common.touch_pages(arr)
    elapsed = time.perf_counter() - t0
    if arr.nbytes != size:
        raise AssertionError(f"raw: got {arr.nbytes} bytes, expected {size}")
    return elapsed


def zr_once(client, size: int) -> float:
    eid = client.execute(f"import numpy as np\nnp.full({size // 8}, {FILL}, dtype=np.float64)")
    client.wait(eid, timeout=120)
    t0 = time.perf_counter()
    arr = zr_server.last_value(client.get_results(eid, release=True))
    common.touch_pages(arr)  # a shared-memory result is only mapped until its pages are read
    elapsed = time.perf_counter() - t0
    if getattr(arr, "nbytes", None) != size:
        raise AssertionError(f"zmqruntime: got {getattr(arr, 'nbytes', '?')} bytes, expected {size}")
    return elapsed


def point(client, sock, size: int) -> dict:
    if size >= GiB and mem_available() < NEEDS_FREE:
        return {"error": f"skipped: MemAvailable {mem_available() / GiB:.1f} GiB < {NEEDS_FREE / GiB:.0f} GiB"}
    zr_once(client, size)  # warmups
    raw_once(sock, size)
    zr, raw = [], []
    for _ in range(reps_for(size)):
        zr.append(zr_once(client, size))
        raw.append(raw_once(sock, size))
    out = {"bytes": size}
    for name, xs in (("zr", zr), ("raw", raw)):
        s = common.summarize(xs, "ms", 1e3)
        s["gb_per_s"] = size / 1e9 / (s["median_ms"] / 1e3)
        out[name] = s
    out["fraction_of_raw"] = out["zr"]["gb_per_s"] / out["raw"]["gb_per_s"]
    return out


def measure_curve(client, _port: int) -> dict:
    import zmq

    proc = common.spawn_python(["-m", "benchmarks.curve_sizes", "--sender"])
    ctx = zmq.Context()
    sock = None
    try:
        port = int(common.read_line(proc, 30, "PORT"))
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.RCVTIMEO, 120_000)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://{common.LOOPBACK}:{port}")
        points = {str(size): common.guarded(point, client, sock, size) for size in SIZES}
        sock.send(b"quit")
        sock.recv()
        return {"sizes": list(SIZES), "points": points}
    finally:
        if sock is not None:
            sock.close(linger=0)
        ctx.term()
        common.reap(proc)


def measure() -> dict:
    return zr_server.measure_curve(measure_curve)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--sender"]:
        sender()
    else:
        common.child_main(measure)
