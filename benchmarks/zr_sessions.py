"""zmqruntime: sessions -- the cost of a new session, and latency/throughput vs active sessions.

Why: every notebook (every client) has its own session, with its own worker
process. What a user feels:

  * the first execution of a new session: with the warm spare worker ready, and
    back to back (the spare was just taken: a worker boots meanwhile);
  * no-op latency of one session while 1, 4 or 16 sessions are busy at once
    (each in its own thread, executing no-ops one after another);
  * pipelined no-ops from 1, 4 and 16 sessions at once (each an async client
    with its share of the batch in flight), total tasks/s.

The server runs with concurrency 2 (the cores), as the other benchmarks' peers.
"""

from __future__ import annotations

import threading
import time

from benchmarks import common, zr_server

NOOP = "None"
SESSIONS = (1, 4, 16)


def measure_new_session(client) -> dict:
    """First execution of a brand new session (a new client each time)."""
    ExecutionClient, _ = zr_server.import_api()
    ready, back_to_back = [], []
    for i in range(common.scaled(20, minimum=2)):
        time.sleep(1.0)  # the spare worker has booted again
        c = ExecutionClient(port=client.info.data_port, auto_spawn=False, session=f"bench-new-{i}-ready")
        t0 = time.perf_counter()
        c.run(NOOP, timeout=30)
        ready.append(time.perf_counter() - t0)
        c2 = ExecutionClient(port=client.info.data_port, auto_spawn=False, session=f"bench-new-{i}-b2b")
        t0 = time.perf_counter()
        c2.run(NOOP, timeout=30)
        back_to_back.append(time.perf_counter() - t0)
        for done in (c, c2):
            done.reset_session()
            done.close()
    return {"spare_ready": common.summarize(ready, "ms", 1e3),
            "back_to_back": common.summarize(back_to_back, "ms", 1e3)}


def measure_latency_vs_sessions(client) -> dict:
    ExecutionClient, _ = zr_server.import_api()
    out = {}
    for k in SESSIONS:
        clients = [ExecutionClient(port=client.info.data_port, auto_spawn=False, session=f"bench-lat-{k}-{i}")
                   for i in range(k)]
        for c in clients:
            c.run(NOOP, timeout=30)  # workers up
        per_client = common.scaled(400, minimum=5) // k + 1
        samples: list[float] = []
        lock = threading.Lock()

        def loop(c, n: int = per_client, into: list = samples, lock: threading.Lock = lock) -> None:
            mine = common.time_each(lambda: c.run(NOOP, timeout=30), n=n, warmup=2)
            with lock:
                into.extend(mine)

        threads = [threading.Thread(target=loop, args=(c,)) for c in clients]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        wall = time.perf_counter() - t0
        entry = common.summarize(samples, "ms", 1e3)
        entry["tasks_per_s"] = round(len(samples) / wall, 1)
        out[f"{k}_sessions"] = entry
        for c in clients:
            c.reset_session()
            c.close()
    return out


def measure_pipelined_vs_sessions(client) -> dict:
    import asyncio

    from zmqruntime import AsyncExecutionClient

    out = {}
    for k in SESSIONS:
        # k clients, one session each, kept across the batches (as zr_roundtrip's pipelined row)
        clients = [AsyncExecutionClient(client.info, session=f"bench-pipe-{k}-{i}") for i in range(k)]

        async def batch_async(n: int, clients: list = clients) -> None:
            share = max(1, n // len(clients))
            ids = await asyncio.gather(*(c.execute(NOOP) for c in clients for _ in range(share)))
            owners = [c for c in clients for _ in range(share)]
            await asyncio.gather(*(c.result(eid, timeout=120) for c, eid in zip(owners, ids)))

        try:
            asyncio.run(batch_async(len(clients)))  # each session takes a worker: the server boots spares
            zr_server.wait_workers_ready(client)
            out[f"{k}_sessions"] = common.throughput(lambda n: asyncio.run(batch_async(n)), common.batch_size(),
                                                     reps=3)
        finally:
            for c in clients:
                c.close()
    return out


def measure() -> dict:
    result = zr_server.measure_all({
        "new_session": measure_new_session,
        "latency": measure_latency_vs_sessions,
        "pipelined": measure_pipelined_vs_sessions,
    }, server_args=("--ExecutionServer.concurrency=2", "--ExecutionServer.max_session_workers=64"))
    result["note"] = "medians; latency_vs_sessions: each session in its own thread, one no-op at a time"
    return result


if __name__ == "__main__":
    common.child_main(measure)
