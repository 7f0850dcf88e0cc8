"""Baseline: ipyparallel with one local engine -- latency and pipelined throughput.

Why: ipyparallel is the established "run Python remotely over ZeroMQ" tool, so
it is the bar for zmqruntime's no-op execute latency and throughput (target:
>= 5x better).  Same machine, same run, same no-op.

Measured:
  * ``view.apply_sync(noop)`` one at a time -> median latency.
  * 500 ``view.apply_async(noop)`` then wait for all results -> tasks/s.

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


def noop():
    return None


def measure() -> dict:
    ipython_dir = tempfile.mkdtemp(prefix="bench-ipython-")
    os.environ["IPYTHONDIR"] = ipython_dir  # before ipyparallel reads it
    cluster = client = None
    try:
        import ipyparallel as ipp

        cluster = ipp.Cluster(n=1, controller_ip=common.LOOPBACK, log_level=40)
        common.call_with_timeout(cluster.start_cluster_sync, STARTUP_TIMEOUT,
                                 "ipyparallel cluster start")
        client = common.call_with_timeout(cluster.connect_client_sync, STARTUP_TIMEOUT,
                                          "ipyparallel client connect")
        client.wait_for_engines(1, timeout=STARTUP_TIMEOUT)
        view = client[0]

        latency = common.summarize(
            common.time_each(lambda: view.apply_sync(noop), n=common.scaled(300), warmup=30),
            "ms", 1e3)

        def batch(n: int) -> None:
            results = [view.apply_async(noop) for _ in range(n)]
            for ar in results:
                ar.get(timeout=60)

        pipelined = common.throughput(batch, common.scaled(500), reps=3)
        return {"version": ipp.__version__, "latency": latency, "pipelined": pipelined}
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
