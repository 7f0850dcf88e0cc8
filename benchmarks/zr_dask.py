"""zmqruntime on dask: overhead against raw dask on the same cluster, events, parallel_map.

Why: the dask backend must cost little on top of dask itself, and scale out:

  * no-op execute -> result through a ``--backend dask`` server vs raw
    ``client.submit(noop).result()`` on the same LocalCluster, in alternating blocks (target <= 1.2x);
  * progress events/s from a task running on a dask worker, none lost (>= 10k/s);
  * a CPU-bound ``parallel_map`` on 2 workers vs 1 (target >= 1.8x on 2 cores),
    beside dask's own ``client.map`` speedup on the same cluster and work; both
    warm (a first small map has connected the task's worker client);
  * local ``parallel_map`` (worker processes) vs ``ProcessPoolExecutor.map``
    on the same work, same number of processes.

One LocalCluster (2 worker processes, 1 thread each) is started here; the
zmqruntime server connects to it by address, so both sides use the same
workers.
"""

from __future__ import annotations

import time

from benchmarks import common, zr_server

NOOP = "None"
NOOP_BLOCKS = 6  # raw and zmqruntime no-op samples alternate in this many blocks


def _noop() -> None:
    return None


def _burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += (i * 7) % 13
    return total


def _burn_all(work: int, items: int) -> list[int]:
    return [_burn(work) for _ in range(items)]


BURN_CODE = """
def _burn(n):
    total = 0
    for i in range(n):
        total += (i * 7) % 13
    return total
"""


def measure() -> dict:
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        return common.not_installed("dask.distributed", exc)
    out: dict = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as raw:
        n = common.scaled(300, minimum=3)
        with zr_server.running_server(("--backend", "dask", "--scheduler", cluster.scheduler_address,
                                       "--ExecutionServer.concurrency=2")) as (client, _port):
            raw_lat, zr_lat = _alternating(lambda: raw.submit(_noop, pure=False).result(),
                                           lambda: client.run(NOOP, timeout=60), n)
            out["raw_submit_result"] = common.summarize(raw_lat, "ms", 1e3)
            out["zr_noop"] = common.summarize(zr_lat, "ms", 1e3)
            out["overhead_ratio"] = round(out["zr_noop"]["median_ms"] / out["raw_submit_result"]["median_ms"], 3)
            out["progress"] = common.guarded(_progress_rate, client)
            items = common.sized(32, 4)
            work = common.sized(2_000_000, 10_000)
            client.run(BURN_CODE, timeout=60)
            # warm, as the raw side's client is: the task's first worker_client connects to the
            # scheduler and imports cloudpickle (~0.1 s, once per worker process)
            _timed(client, "parallel_map(_burn, [10, 10])")
            out["parallel_map_2_workers_s"] = _timed(client, f"parallel_map(_burn, [{work}] * {items})")
            out["serial_1_worker_s"] = _timed(client, f"[_burn(x) for x in [{work}] * {items}]")
            out["parallel_speedup"] = round(out["serial_1_worker_s"] / out["parallel_map_2_workers_s"], 2)
        # dask itself on the same cluster and work: a task computing the items in a loop vs
        # client.map from outside (what 2 workers can give dask here, for the same row)
        t0 = time.perf_counter()
        raw.submit(_burn_all, work, items, pure=False).result()
        serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        raw.gather(raw.map(_burn, [work] * items, pure=False))
        out["raw_map_speedup"] = round(serial / (time.perf_counter() - t0), 2)
    out["local"] = common.guarded(_local_vs_process_pool)
    return out


def _alternating(raw_call, zr_call, n: int) -> list[list[float]]:
    """``n`` samples of each in alternating blocks on the same cluster: a slow stretch of the
    machine, or of dask's own timing, falls on both sides of the ratio."""
    blocks = min(NOOP_BLOCKS, n)
    sizes = [n // blocks + (1 if block < n % blocks else 0) for block in range(blocks)]
    return common.time_alternating([raw_call, zr_call], sizes, warmup=20, block_warmup=2)


def _timed(client, expr: str) -> float:
    t0 = time.perf_counter()
    client.run("from zmqruntime import parallel_map\n" + expr, timeout=600)
    return round(time.perf_counter() - t0, 3)


def _progress_rate(client) -> dict:
    """A task on a dask worker reports every iteration; count what a subscriber receives."""
    n = common.sized(200_000, 2_000)
    got: list = []
    sub = client.subscribe(lambda e: got.append(e) if e.type == "progress" else None)
    time.sleep(0.3)
    t0 = time.perf_counter()
    eid = client.execute(f"from zmqruntime import progress\nfor i in progress(range({n}), min_interval=0): pass")
    client.wait(eid, timeout=300)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (not got or got[-1]["done"] < n):
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    sub.close()
    mine = [e for e in got if e.execution_id == eid]
    seqs = [e.seq for e in mine]
    gaps = sum(1 for a, b in zip(seqs, seqs[1:]) if b != a + 1)
    return {"events": len(mine), "events_per_s": round(len(mine) / wall), "seq_gaps": gaps,
            "last_done": mine[-1]["done"] if mine else None}


def _local_vs_process_pool() -> dict:
    """Local backend's parallel_map against concurrent.futures on the same work (2 processes each)."""
    from concurrent.futures import ProcessPoolExecutor

    items = common.sized(32, 4)
    work = common.sized(2_000_000, 10_000)
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_burn, [10] * 2))  # started
        t0 = time.perf_counter()
        list(pool.map(_burn, [work] * items))
        pool_s = time.perf_counter() - t0
    with zr_server.running_server(("--ExecutionServer.concurrency=2",)) as (client, _port):
        client.run(BURN_CODE + "\nfrom zmqruntime import parallel_map\nparallel_map(_burn, [10, 10], processes=2)",
                   timeout=120)
        zr_s = _timed(client, f"parallel_map(_burn, [{work}] * {items})")
    return {"process_pool_s": round(pool_s, 3), "parallel_map_s": zr_s, "ratio": round(zr_s / pool_s, 3)}


if __name__ == "__main__":
    common.child_main(measure)
