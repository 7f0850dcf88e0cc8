"""Baseline: ipyparallel with two local engines -- latency and pipelined throughput.

Why: ipyparallel is the established "run Python remotely over ZeroMQ" tool, so
it is the bar for zmqruntime's no-op execute latency and throughput (target:
>= 5x better).  Same machine, same run, same no-op.

Measured on a load-balanced view of a 2-engine cluster (as zmqruntime runs
with two workers in its throughput rows):
  * ``view.apply_sync(noop)`` one at a time -> median latency.
  * 500 ``view.apply_async(noop)`` then wait for all results -> tasks/s.
  * ``view.map_async(noop, range(500))`` then wait -> tasks/s (its batch API).

The cluster lives under a throw-away IPYTHONDIR (nothing written to ~/.ipython),
startup is bounded, and the cluster is stopped in ``finally``.  If it cannot
start here, the error text is the result.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from benchmarks import common

STARTUP_TIMEOUT = 60


ENGINES = 2


def noop(_=None):
    return None


def measure() -> dict:
    ipython_dir = tempfile.mkdtemp(prefix="bench-ipython-")
    os.environ["IPYTHONDIR"] = ipython_dir  # before ipyparallel reads it
    cluster = client = None
    try:
        try:
            import ipyparallel as ipp
        except ImportError as exc:
            return common.not_installed("ipyparallel", exc)

        cluster = ipp.Cluster(n=ENGINES, controller_ip=common.LOOPBACK, log_level=40)
        common.call_with_timeout(cluster.start_cluster_sync, STARTUP_TIMEOUT,
                                 "ipyparallel cluster start")
        client = common.call_with_timeout(cluster.connect_client_sync, STARTUP_TIMEOUT,
                                          "ipyparallel client connect")
        client.wait_for_engines(ENGINES, timeout=STARTUP_TIMEOUT)
        view = client.load_balanced_view()

        latency = common.summarize(
            common.time_each(lambda: view.apply_sync(noop), n=common.scaled(300), warmup=30),
            "ms", 1e3)

        def batch(n: int) -> None:
            results = [view.apply_async(noop) for _ in range(n)]
            for ar in results:
                ar.get(timeout=60)

        pipelined = common.throughput(batch, common.batch_size(), reps=3)
        mapped = common.throughput(lambda n: view.map_async(noop, range(n)).get(timeout=60),
                                   common.batch_size(), reps=3)
        return {"version": ipp.__version__, "engines": ENGINES, "latency": latency,
                "pipelined": pipelined, "map": mapped}
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            try:
                cluster.stop_cluster_sync()
            except Exception:  # noqa: BLE001 -- the process group is reaped anyway
                pass
        shutil.rmtree(ipython_dir, ignore_errors=True)


if __name__ == "__main__":
    common.child_main(measure)
