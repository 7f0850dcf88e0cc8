"""Baseline: dask.distributed with two single-threaded worker processes.

Why: dask.distributed is the engine zmqruntime scales out onto (its dask
backend), and the common choice for "submit Python, get a result".  It is the
second bar for no-op latency and throughput (target: zmqruntime >= 5x better).

Measured:
  * ``client.submit(noop, pure=False).result()`` one at a time -> median latency.
  * 500 ``client.submit(noop, pure=False)`` then ``client.gather`` -> tasks/s.
  * ``client.map(noop, range(500), pure=False)`` then ``gather`` -> tasks/s.

``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` on loopback,
no dashboard (no fixed port 8787 to collide with), bounded startup, closed in
``finally``.  If it cannot start here, the error text is the result.
"""

from __future__ import annotations

from benchmarks import common

STARTUP_TIMEOUT = 60


WORKERS = 2


def noop(_=None):
    return None


def measure() -> dict:
    try:
        import dask
        import distributed
    except ImportError as exc:
        return common.not_installed("dask.distributed", exc)

    cluster = client = None
    try:
        def start():
            c = distributed.LocalCluster(
                n_workers=WORKERS, threads_per_worker=1, processes=True,
                host=common.LOOPBACK, dashboard_address=None, silence_logs=40)
            return c, distributed.Client(c, timeout=STARTUP_TIMEOUT)

        cluster, client = common.call_with_timeout(start, STARTUP_TIMEOUT,
                                                   "dask LocalCluster start")
        client.wait_for_workers(WORKERS, timeout=STARTUP_TIMEOUT)

        latency = common.summarize(
            common.time_each(lambda: client.submit(noop, pure=False).result(timeout=30),
                             n=common.scaled(300), warmup=30),
            "ms", 1e3)

        def batch(n: int) -> None:
            futures = [client.submit(noop, pure=False) for _ in range(n)]
            client.gather(futures)

        pipelined = common.throughput(batch, common.batch_size(), reps=3)
        mapped = common.throughput(
            lambda n: client.gather(client.map(noop, range(n), pure=False)),
            common.batch_size(), reps=3)
        return {"version": distributed.__version__, "dask_version": dask.__version__,
                "workers": WORKERS, "latency": latency, "pipelined": pipelined, "map": mapped}
    finally:
        if client is not None:
            client.close(timeout=10)
        if cluster is not None:
            cluster.close(timeout=10)


if __name__ == "__main__":
    common.child_main(measure)
