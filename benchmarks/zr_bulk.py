"""Large results and pushes: bandwidth vs size for every path, beside raw pyzmq.

Why: the design promises that large arrays move over the socket at close to
raw zero-copy speed, through shared memory on one host much faster (target:
a 256 MiB result and push at >= 3x raw socket bandwidth), and into files
with bounded memory -- all with peak RSS <= 1.1x the array on every process.

Paths, each at 1 MiB, 16 MiB, 256 MiB and 2 GiB (--quick stops at 256 MiB,
--smoke at 8 MiB):

* ``raw``: a pyzmq REP process sends ``[pickle header, array]`` zero-copy
  (as ``baseline_zerocopy``); ``raw_push`` sends the array the other way;
* ``socket``: ``get_results(id, shm=False)``, every byte authenticated;
* ``shm``: ``get_results(id)`` on one host: the buffer is mapped from a
  shared-memory file;
* ``disk``: ``get_results(id, into=DIR)``, streamed to files in parts;
* ``push_socket`` / ``push_shm``: ``execute("x.nbytes", push={"x": arr})``
  until its ``done`` (so it includes a round of task dispatch, ~1 ms);
  ``push_socket`` sends a buffer of 32 MiB or more as ``upload`` parts
  (docs/protocol.md §7.2.3: the server verifies and stores each part while
  the next is on the wire, the worker maps the result; two hops to raw's one);
  ``push_shm`` copies the array into a shared-memory file once;
  ``push_shared`` pushes a ``zmqruntime.shm.shared_array`` (allocated in
  shared memory, filled before the clock starts): nothing is copied.

Two clocks per result path: ``fetch`` (the array is in hand) and ``touch``
(fetch plus reading one byte of every page, so a lazily mapped file pays its
page faults: the honest figure for shared memory; the ratio uses it).
Peak RSS is sampled (every 2 ms, psutil) in this process (client), the
server, its worker and the raw sender, as the increase over the value just
before the transfer divided by the array size; ``<process>_anon`` counts
anonymous memory only (RSS minus file-backed and shared pages: a
memory-mapped file read from disk is page cache the kernel can drop).
"""

from __future__ import annotations

import pickle
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from benchmarks import common, zr_server

MIB = 1 << 20
if common.SMOKE:
    SIZES = [MIB, 8 * MIB]
elif common.QUICK:
    SIZES = [MIB, 16 * MIB, 256 * MIB]
else:
    SIZES = [MIB, 16 * MIB, 256 * MIB, 2048 * MIB]


def reps(size: int) -> int:
    return 1 if size >= 1024 * MIB else common.scaled(3 if size >= 256 * MIB else 10, minimum=1)


class PeakRSS:
    """Sample the RSS of some processes in a thread; peak increase per process."""

    def __init__(self, pids: dict[str, int]):
        import psutil

        self.procs = {name: psutil.Process(pid) for name, pid in pids.items() if pid}
        self.before = {name: self._read(p) for name, p in self.procs.items()}
        self.peak = dict(self.before)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _read(p) -> tuple[int, int]:
        """(RSS, anonymous RSS): file and shared-memory pages are the rest."""
        info = p.memory_info()
        return info.rss, info.rss - info.shared

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            for name, p in self.procs.items():
                try:
                    rss, anon = self._read(p)
                except Exception:  # noqa: BLE001 -- a process that ended
                    continue
                old_rss, old_anon = self.peak[name]
                self.peak[name] = (max(old_rss, rss), max(old_anon, anon))

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)

    def ratios(self, size: int) -> dict[str, float]:
        """Peak increase / size per process: ``name`` (RSS) and ``name_anon`` (anonymous memory only)."""
        out = {}
        for name in self.procs:
            out[name] = round((self.peak[name][0] - self.before[name][0]) / size, 3)
            out[f"{name}_anon"] = round((self.peak[name][1] - self.before[name][1]) / size, 3)
        return out


def summary(fetch: list[float], touched: list[float], size: int, rss: dict[str, float]) -> dict:
    f, t = min(fetch), min(touched)
    return {"fetch_ms": round(f * 1e3, 3), "touch_ms": round(t * 1e3, 3),
            "fetch_gb_s": round(size / 1e9 / f, 3), "gb_per_s": round(size / 1e9 / t, 3),
            "peak_rss_increase_ratio": rss}


# -- raw pyzmq --------------------------------------------------------------------
def serve() -> None:
    """Raw sender/receiver (child process): GET <n> -> the array; PUT -> ack."""
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.linger = 0
    port = rep.bind_to_random_port(f"tcp://{common.LOOPBACK}")
    print(f"READY {port}", flush=True)
    arrays: dict[int, list] = {}
    try:
        while True:
            frames = rep.recv_multipart(copy=False)
            cmd = frames[0].bytes
            if cmd == b"STOP":
                rep.send(b"bye")
                return
            if cmd.startswith(b"GET"):
                n = int(cmd.split()[1])
                if n not in arrays:
                    arrays.clear()
                    arr = np.full(n // 8, 1.5)
                    bufs: list[pickle.PickleBuffer] = []
                    head = pickle.dumps(arr, protocol=5, buffer_callback=bufs.append)
                    arrays[n] = [head, *[b.raw() for b in bufs]]
                rep.send_multipart(arrays[n], copy=False)
            else:  # PUT: rebuild the array, as a worker would
                arr = pickle.loads(frames[1].buffer, buffers=[f.buffer for f in frames[2:]])
                rep.send(str(arr.nbytes).encode())
                del arr, frames
    finally:
        rep.close()
        ctx.term()


def measure_raw() -> dict:
    proc = common.spawn_python(["-m", "benchmarks.zr_bulk", "--serve"])
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    req.rcvtimeo = req.sndtimeo = 120_000
    out: dict = {}
    try:
        req.connect(f"tcp://{common.LOOPBACK}:{int(common.read_line(proc, 30, 'READY '))}")
        for size in SIZES:
            req.send(f"GET {size}".encode())  # warm: the sender builds its array
            req.recv_multipart(copy=False)
            fetch, touched = [], []
            with PeakRSS({"client": _self_pid(), "sender": proc.pid}) as rss:
                for _ in range(reps(size)):
                    t0 = time.perf_counter()
                    req.send(f"GET {size}".encode())
                    frames = req.recv_multipart(copy=False)
                    arr = pickle.loads(frames[0].buffer, buffers=[f.buffer for f in frames[1:]])
                    t1 = time.perf_counter()
                    common.touch_pages(arr)
                    fetch.append(t1 - t0)
                    touched.append(time.perf_counter() - t0)
                    del arr, frames
            entry = {"raw": summary(fetch, touched, size, rss.ratios(size))}
            arr = np.full(size // 8, 2.5)
            times = []
            with PeakRSS({"client": _self_pid(), "sender": proc.pid}) as rss:
                for _ in range(reps(size)):
                    bufs: list[pickle.PickleBuffer] = []
                    t0 = time.perf_counter()
                    head = pickle.dumps(arr, protocol=5, buffer_callback=bufs.append)
                    req.send_multipart([b"PUT", head, *[b.raw() for b in bufs]], copy=False)
                    req.recv()
                    times.append(time.perf_counter() - t0)
            del arr
            entry["raw_push"] = summary(times, times, size, rss.ratios(size))
            out[str(size)] = entry
        req.send(b"STOP")
        req.recv()
    finally:
        req.close()
        ctx.term()
        common.reap(proc)
    return out


def _self_pid() -> int:
    import os

    return os.getpid()


# -- zmqruntime ---------------------------------------------------------------------
def measure_zr(client) -> dict:
    client._client.timeout = 300.0  # a 2 GiB request takes seconds, not the default 10 s
    client.wait(client.execute("import numpy as np"), timeout=60)  # the worker's imports are not the transfer's
    out: dict = {}
    scratch = Path(tempfile.mkdtemp(prefix="zr-bulk-"))
    try:
        for size in SIZES:
            entry: dict = {}
            for path in ("socket", "shm", "disk"):
                entry[path] = common.guarded(result_path, client, size, path, scratch)
            arr = np.full(size // 8, 2.5)
            for path in ("push_socket", "push_shm"):
                entry[path] = common.guarded(push_path, client, arr, path == "push_shm")
            del arr
            from zmqruntime.shm import shared_array

            shared = shared_array((size // 8,))
            shared[:] = 2.5
            entry["push_shared"] = common.guarded(push_path, client, shared, True)
            client.push_shm = True
            del shared
            out[str(size)] = entry
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out



def result_path(client, size: int, path: str, scratch: Path) -> dict:
    from zmqruntime.receive import release_request

    make = f"np.full({size // 8}, 1.5)"
    fetch, touched = [], []
    rss_all: dict[str, float] = {}
    for i in range(reps(size)):
        worker = client.ping()["workers"][0]["pid"]
        target = scratch / f"{size}-{i}"
        with PeakRSS({"client": _self_pid(), "server": client.info.pid, "worker": worker}) as rss:
            eid = client.execute(make)
            client.wait(eid, timeout=300)
            t0 = time.perf_counter()
            if path == "disk":
                results = client.get_results(eid, into=target)
            else:
                results = client.get_results(eid, shm=(path == "shm"))
            arr = results["_"]
            t1 = time.perf_counter()
            common.touch_pages(arr)
            t2 = time.perf_counter()
            assert arr.nbytes == size and arr[-1] == 1.5
            del arr, results
        fetch.append(t1 - t0)
        touched.append(t2 - t0)
        for k, v in rss.ratios(size).items():
            rss_all[k] = max(rss_all.get(k, 0.0), v)
        client._client.call("results", release_request(eid))  # frees the server's copy
        shutil.rmtree(target, ignore_errors=True)
    return summary(fetch, touched, size, rss_all)


def push_path(client, arr: np.ndarray, use_shm: bool) -> dict:
    size = arr.nbytes
    client.push_shm = use_shm
    times = []
    rss_all: dict[str, float] = {}
    for _ in range(reps(size)):
        worker = client.ping()["workers"][0]["pid"]
        with PeakRSS({"client": _self_pid(), "server": client.info.pid, "worker": worker}) as rss:
            t0 = time.perf_counter()
            eid = client.execute("x.nbytes", push={"x": arr})
            client.wait(eid, timeout=300)
            times.append(time.perf_counter() - t0)
        for k, v in rss.ratios(size).items():
            rss_all[k] = max(rss_all.get(k, 0.0), v)
        assert client.get_results(eid)["_"] == size
    return summary(times, times, size, rss_all)


def measure() -> dict:
    raw = common.guarded(measure_raw)
    zr = zr_server.measure_all({"bulk": measure_zr})["bulk"]
    sizes: dict = {}
    for size in SIZES:
        key = str(size)
        sizes[key] = {**(raw.get(key, {}) if "error" not in raw else {}),
                      **(zr.get(key, {}) if "error" not in zr else {})}
    result: dict = {"sizes": sizes}
    for name in ("raw", "zr"):
        src = raw if name == "raw" else zr
        if "error" in src:
            result[f"{name}_error"] = src["error"]
    ref = str(256 * MIB) if str(256 * MIB) in sizes else str(SIZES[-1])
    row = sizes.get(ref, {})
    try:
        result["headline"] = {
            "size": int(ref),
            "result_shm_vs_raw": round(row["shm"]["gb_per_s"] / row["raw"]["gb_per_s"], 2),
            "result_socket_vs_raw": round(row["socket"]["gb_per_s"] / row["raw"]["gb_per_s"], 2),
            "result_disk_vs_raw": round(row["disk"]["gb_per_s"] / row["raw"]["gb_per_s"], 2),
            "push_shm_vs_raw": round(row["push_shm"]["gb_per_s"] / row["raw_push"]["gb_per_s"], 2),
            "push_shared_vs_raw": round(row["push_shared"]["gb_per_s"] / row["raw_push"]["gb_per_s"], 2),
            "push_socket_vs_raw": round(row["push_socket"]["gb_per_s"] / row["raw_push"]["gb_per_s"], 2),
        }
    except (KeyError, ZeroDivisionError) as exc:
        result["headline"] = {"error": f"missing figure: {exc}"}
    return result


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve()
    else:
        common.child_main(measure)
