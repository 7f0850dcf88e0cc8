"""zmqruntime: control-channel round trips -- ping, no-op latency, pipelining.

Why: these are the numbers a user feels on every call, and each has a baseline
measured in the same run:

  * ``ping``        a brief ping (the identity only: a liveness check)
                    vs raw pyzmq DEALER/ROUTER       (target <= 1.5x)
  * ``ping_split``  the brief ping sent split (three frames, as a client that does not
                    pack them into one head frame): what packing saves, in the same run
  * ``ping_sleeping`` the brief ping with the client's busy-poll off (it sleeps in ``poll``
                    for the reply), as a client in a process with other Python threads
                    (a Jupyter kernel) always waits: for reference
  * ``ping_full``   the full reply (identity and load, ~0.9 KB): for reference
  * no-op latency   ``run("None")`` (execute -> result), one at a time
                    vs ipyparallel / dask / Ray      (target <= 0.5 ms, >= 8x / 15x / 3x faster)
  * pipelined       submit a batch of ``execute("None")``, then wait all and fetch all
                    results (as dask ``gather`` / ipyparallel ``get`` do)
                    vs ipyparallel / dask / Ray      (target >= 5x / >= 3x throughput)
  * engine only     the same batch as one ``execute_many`` on the wire, then ``status``
                    of its last execution until it is final (one session runs in order):
                    what the server and its worker do when the client does nothing per
                    execution. The async client's figure against it is the share the
                    per-execution client side (done subscription and event, futures,
                    results) leaves; for reference, not judged.

All share one server started in a child process (see zr_server.py) with two
worker processes, as the ipyparallel and dask baselines have two engines/workers.
"""

from __future__ import annotations

import contextlib
import time

from benchmarks import common, zr_server

NOOP = "None"
WORKERS = 2
SPARE_BOOT_PAUSE = 1.5  # s: a replacement spare worker boots in ~0.3-0.6 s on the 2-core machine


PING_BLOCKS = 5


def _brief_ping(client):
    return lambda: client.ping(brief=True)


@contextlib.contextmanager
def _split(client):
    packed, client.session.packed = client.session.packed, False
    try:
        yield
    finally:
        client.session.packed = packed


@contextlib.contextmanager
def _sleeping(client):
    """The client's busy-poll off: what a client in a process with other Python threads gets
    (a Jupyter kernel, a multi-threaded program), since only a lone thread spins."""
    busy_poll, client._client.busy_poll = client._client.busy_poll, 0.0
    try:
        yield
    finally:
        client._client.busy_poll = busy_poll


def measure_pings(client) -> dict:
    """The brief ping as a script's client sends it (``ping``, judged), sent split, and with the
    client's busy-poll off, in alternating blocks so drift on a noisy machine hits all three alike."""
    variants = {"ping": contextlib.nullcontext, "ping_split": _split, "ping_sleeping": _sleeping}
    samples: dict[str, list[float]] = {name: [] for name in variants}
    per_block = max(1, common.scaled(5000) // PING_BLOCKS)
    common.time_each(_brief_ping(client), n=0, warmup=500)
    for block in range(PING_BLOCKS):
        names = list(variants) if block % 2 == 0 else list(variants)[::-1]
        for name in names:
            with variants[name](client):
                samples[name] += common.time_each(_brief_ping(client), n=per_block, warmup=20)
    return {name: common.summarize(values, "us", 1e6) for name, values in samples.items()}


def measure_ping_full(client) -> dict:
    return common.summarize(common.time_each(client.ping, n=common.scaled(2000), warmup=200), "us", 1e6)


def measure_noop_latency(client) -> dict:
    # As for the pipelined rows: the client's session takes the server's spare worker on its
    # first execution and the server boots a replacement (~0.5 s of CPU); a steady state is
    # what is compared, so that boot ends before the timing starts.
    zr_server.run_to_result(client, NOOP)
    time.sleep(SPARE_BOOT_PAUSE)
    return common.summarize(
        common.time_each(lambda: zr_server.run_to_result(client, NOOP),
                         n=common.scaled(500), warmup=50),
        "ms", 1e3)


def measure_pipelined(client) -> dict:
    """AsyncExecutionClient: all executes in flight at once, then all results (wait included)."""
    import asyncio

    from zmqruntime import AsyncExecutionClient

    # One client and one session across the batches, as a script or notebook keeps its own
    # (and as the peers keep theirs): its worker is warm and its data-channel connection up.
    # A new client per batch timed that connection's race with the first execute_many as
    # well: waits whose subscription the server had not seen yet poll `status` (one request
    # per execution), which put some batches at ~2,000/s and others at ~3,500/s.
    aclient = AsyncExecutionClient(client.info, session="bench-pipelined")

    async def batch_async(n: int) -> None:
        ids = await asyncio.gather(*(aclient.execute(NOOP) for _ in range(n)))
        await asyncio.gather(*(aclient.result(eid, timeout=60) for eid in ids))

    try:
        # The session's first execution takes the server's spare worker, which the server then
        # replaces: let that boot (~0.5 s of CPU) finish before timing, or it shares the 2 cores.
        asyncio.run(batch_async(10))
        time.sleep(SPARE_BOOT_PAUSE)
        return common.throughput(lambda n: asyncio.run(batch_async(n)), common.batch_size(), reps=3)
    finally:
        aclient.close()


def measure_pipelined_engine(client) -> dict:
    """execute_many of the batch, then poll the last execution's status (every 1 ms) until final."""
    from zmqruntime.client import ZMQClient
    from zmqruntime.protocol import FINAL_STATES, new_id

    wire = ZMQClient(client.info, timeout=60)
    session = "bench-engine"

    def batch(n: int) -> None:
        executions = [{"task": {"kind": "python", "code": NOOP}, "session": session, "request_id": new_id()}
                      for _ in range(n)]
        answers = wire.call("execute_many", {"executions": executions})["executions"]
        last = answers[-1]["execution_id"]
        deadline = time.monotonic() + 60
        while wire.call("status", {"execution_id": last})["execution"]["status"] not in FINAL_STATES:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the last of {n} no-ops did not end within 60 s")
            time.sleep(0.001)

    try:
        batch(10)  # the session takes the spare worker; the server boots a replacement
        time.sleep(SPARE_BOOT_PAUSE)
        return common.throughput(batch, common.batch_size(), reps=3)
    finally:
        wire.close()


def measure_sequential_batch(client) -> dict:
    """The blocking client: submit a batch one request at a time, then the result of each."""
    def batch(n: int) -> None:
        ids = [client.execute(NOOP) for _ in range(n)]
        for eid in ids:
            client.result(eid, timeout=60)

    return common.throughput(batch, common.batch_size(), reps=3)


def measure() -> dict:
    results = zr_server.measure_all({
        "pings": measure_pings,
        "ping_full": measure_ping_full,
        "noop_latency": measure_noop_latency,
        "pipelined": measure_pipelined,
        "pipelined_engine": measure_pipelined_engine,
        "sync_batch": measure_sequential_batch,
    }, server_args=(f"--ExecutionServer.concurrency={WORKERS}",))
    pings = results.pop("pings")
    results.update(pings if "error" not in pings else dict.fromkeys(("ping", "ping_split", "ping_sleeping"), pings))
    return results


if __name__ == "__main__":
    common.child_main(measure)
