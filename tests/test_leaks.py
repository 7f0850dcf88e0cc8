"""Leaks: after thousands of executions, the server's file descriptors,
threads, child processes and memory are back at their warm-up level, and
the records held are what the retention policy says. Same for a client.

The bounds are leak bounds, not performance thresholds: a per-execution
leak of even a few hundred bytes over 1,400 executions, or one descriptor
per hundred, would cross them.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import psutil
import pytest

from zmqruntime import AsyncExecutionClient, RemoteError
from zmqruntime.transport import read_connection_file

pytestmark = pytest.mark.timeout(180)

MiB = 1 << 20
WARM_UP, MEASURED = 600, 1400
MAX_RECORDS, MAX_RESULTS = 500, 50


def sample(pid: int) -> dict:
    proc = psutil.Process(pid)
    return {"fds": proc.num_fds(), "threads": proc.num_threads(),
            "children": sorted(c.pid for c in proc.children(recursive=True)), "rss": proc.memory_info().rss}


async def run_batch(client: AsyncExecutionClient, start: int, count: int, window: int = 32) -> list[str]:
    """``count`` executions, ``window`` in flight at a time; each one's result is checked."""
    ids: list[str] = []
    limit = asyncio.Semaphore(window)

    async def one(i: int) -> None:
        async with limit:
            exec_id = await client.execute(f"{i}")
            ids.append(exec_id)
            status = await client.wait(exec_id, timeout=60)
            assert status["status"] == "complete", status
            assert await client.get_results(exec_id) == {"_": i}

    await asyncio.gather(*(one(i) for i in range(start, start + count)))
    return ids


def test_server_returns_to_steady_state_after_thousands_of_executions(start_server):
    server = start_server(f"--ExecutionServer.max_records={MAX_RECORDS}", f"--ExecutionServer.max_results={MAX_RESULTS}")
    info = read_connection_file(server.connection_file)

    async def main() -> tuple[dict, dict, list[str], float]:
        client = AsyncExecutionClient(info, timeout=30)
        try:
            first = await run_batch(client, 0, WARM_UP)
            gc.collect()
            warm = sample(server.pid)
            t0 = time.monotonic()
            await run_batch(client, WARM_UP, MEASURED)
            elapsed = time.monotonic() - t0
            await asyncio.sleep(0.5)  # let the last replies and events drain
            return warm, sample(server.pid), first, elapsed
        finally:
            client.close()

    warm, end, first, elapsed = asyncio.run(main())
    print(f"{WARM_UP + MEASURED} executions ({MEASURED} measured in {elapsed:.1f} s): "
          f"fds {warm['fds']}->{end['fds']}, threads {warm['threads']}->{end['threads']}, "
          f"children {warm['children']}->{end['children']}, rss {warm['rss'] / MiB:.1f}->{end['rss'] / MiB:.1f} MiB")
    assert end["fds"] <= warm["fds"] + 2
    assert end["threads"] <= warm["threads"]
    assert end["children"] == warm["children"]  # the same worker, nothing left behind
    assert end["rss"] - warm["rss"] < 20 * MiB

    # retention: at most MAX_RECORDS records, the newest; results only for the newest MAX_RESULTS
    client = server.client
    records = client.get_status()
    assert len(records) == MAX_RECORDS
    with pytest.raises(RemoteError) as forgotten:
        client.get_status(first[0])
    assert forgotten.value.code == "unknown_execution"
    held = [r for r in records if r["has_results"]]
    assert len(held) == MAX_RESULTS
    newest = sorted(records, key=lambda r: r["finished"])[-MAX_RESULTS:]
    assert {r["execution_id"] for r in held} == {r["execution_id"] for r in newest}
    assert all(r["results_expired"] for r in records if not r["has_results"])
    assert client.ping()["executions"] == MAX_RECORDS


def test_client_descriptors_and_threads_return_after_many_calls_and_close(server):
    me = psutil.Process()
    gc.collect()
    before = {"fds": me.num_fds(), "threads": me.num_threads()}
    client = server.new_client(timeout=30)
    for i in range(20):
        client.run(f"{i}", timeout=30)
    warm = {"fds": me.num_fds(), "threads": me.num_threads()}
    for i in range(300):
        assert client.run(f"{i}", timeout=30) == {"_": i}
        client.ping()

    def short_lived(i: int) -> None:  # a new thread each time: its sockets must not pile up
        assert client.run(f"{i}", timeout=30) == {"_": i}

    for i in range(40):
        t = threading.Thread(target=short_lived, args=(i,))
        t.start()
        t.join(60)
    subs = [client.subscribe(lambda e: None) for _ in range(3)]
    for sub in subs:
        sub.close()
    gc.collect()
    after = {"fds": me.num_fds(), "threads": me.num_threads()}
    print(f"client fds {before['fds']} -> warm {warm['fds']} -> {after['fds']}, threads {warm['threads']} -> {after['threads']}")
    # the last short-lived thread's two sockets (4 fds) are closed only when the next thread opens
    # one: allow those, and a little slack. Without that cleanup, 40 threads would add ~160.
    assert after["fds"] <= warm["fds"] + 6
    assert after["threads"] <= warm["threads"]
    client.close()
    gc.collect()
    closed = {"fds": me.num_fds(), "threads": me.num_threads()}
    assert closed["fds"] <= before["fds"] and closed["threads"] <= before["threads"]


def test_worker_keeps_a_bounded_number_of_sources_for_tracebacks():
    """Each execution's source goes to linecache (tracebacks show its lines); only the newest stay."""
    import linecache

    from zmqruntime.execution import runner
    from zmqruntime.execution.runner import LINECACHE_KEEP, TaskContext, run_python_source

    ns: dict = {}
    before = len(linecache.cache)
    for i in range(LINECACHE_KEEP + 50):
        run_python_source({"kind": "python", "code": f"x = {i}"}, TaskContext(f"{i:012x}", ns, {}))
    ours = [k for k in linecache.cache if str(k).startswith("<zmqexec-")]
    assert len(ours) == LINECACHE_KEEP and len(linecache.cache) <= before + LINECACHE_KEEP
    assert f"<zmqexec-{LINECACHE_KEEP + 49:012x}>" in linecache.cache  # the newest is kept
    assert "<zmqexec-000000000000>" not in linecache.cache  # the oldest went
    assert ns["x"] == LINECACHE_KEEP + 49 and len(runner._remembered_sources) == LINECACHE_KEEP
