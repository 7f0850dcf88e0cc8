"""The main flow against a real server, over TCP and IPC:
execute → progress/stream events → status → results."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from zmqruntime import AsyncExecutionClient, ExecutionFailed, ExecutionTimeout, RemoteError
from zmqruntime.curve import secure_client_socket
from zmqruntime.protocol import FINAL_STATES

pytestmark = pytest.mark.timeout(60)

PROGRESS_TASK = """
from zmqruntime import progress
import time
total = 0
for i in progress(range(50), desc="summing", min_interval=0):
    total += i
    if i % 10 == 0:
        print("at", i)
total
"""


def collect_events(client, execution_id=None):
    events, lock = [], threading.Lock()

    def on_event(event):
        with lock:
            events.append(event)

    sub = client.subscribe(on_event, execution_id=execution_id)
    return events, sub


def test_full_flow_with_events(any_server):
    client = any_server.client
    events, sub = collect_events(client)
    # Make sure the subscription is live before submitting (PUB/SUB slow joiner):
    from helpers import wait_until, wait_until_subscribed

    wait_until_subscribed(client, events)

    exec_id = client.execute(PROGRESS_TASK, name="sum")
    status = client.wait(exec_id, timeout=20)
    assert status["status"] == "complete", status
    assert client.get_results(exec_id) == {"_": sum(range(50))}
    wait_until(lambda: any(e.execution_id == exec_id and e.type == "done" for e in events))
    sub.close()

    mine = [e for e in events if e.execution_id == exec_id]
    types = [e.type for e in mine]
    assert types[0] == "status" and mine[0]["status"] == "queued"
    assert [e["status"] for e in mine if e.type == "status"] == ["queued", "running", "complete"]
    assert types[-1] == "done" and mine[-1]["status"] == "complete"
    # one sequence, no gaps, no duplicates
    assert [e.seq for e in mine] == list(range(1, len(mine) + 1))
    assert all(e.missed == 0 for e in mine)
    progress = [e["done"] for e in mine if e.type == "progress"]
    assert progress == sorted(progress) and progress[-1] == 50
    assert mine[[e.type for e in mine].index("progress")]["desc"] == "summing"
    out = "".join(e["text"] for e in mine if e.type == "stream" and e["name"] == "stdout")
    assert out == "".join(f"at {i}\n" for i in range(0, 50, 10))
    # status recovers everything a late subscriber missed
    assert status["stdout"] == out
    assert status["progress"]["done"] == 50 and status["progress"]["total"] == 50
    assert status["seq"] == mine[-1].seq
    assert status["name"] == "sum"


def test_namespace_persists_between_executions(server):
    client = server.client
    first = client.execute("import math\nradius = 2.0")
    client.wait(first, timeout=10)
    second = client.execute("area = math.pi * radius ** 2", results=["area", "radius"])
    client.wait(second, timeout=10)
    assert client.get_results(second) == {"area": pytest.approx(12.566, rel=1e-3), "radius": 2.0}


def test_exception_returns_remote_traceback(server):
    client = server.client
    exec_id = client.execute("def inner():\n    raise ValueError('bad value 42')\ninner()")
    status = client.wait(exec_id, timeout=10)
    assert status["status"] == "failed"
    assert status["error"]["ename"] == "ValueError"
    assert status["reason"] == "ValueError: bad value 42"
    assert "bad value 42" in status["error"]["evalue"]
    tb = "".join(status["error"]["traceback"])
    assert "inner()" in tb and "raise ValueError" in tb  # source lines are shown
    with pytest.raises(ExecutionFailed) as info:
        client.get_results(exec_id)
    assert "raise ValueError" in info.value.remote_traceback
    # the worker survived: the next execution works
    assert client.run("1 + 1", timeout=10) == {"_": 2}


@pytest.mark.parametrize("code", ["x = 0\n1 / x", "[1 / i for i in range(1)]"])  # kept compiled, and not
def test_the_same_source_again_names_its_own_execution_and_lines(server, code):
    """A re-run source (the worker keeps short ones compiled) still reports where it failed."""
    client = server.client
    tracebacks = {}
    for _ in range(2):
        exec_id = client.execute(code)
        status = client.wait(exec_id, timeout=10)
        assert status["status"] == "failed" and status["error"]["ename"] == "ZeroDivisionError"
        tracebacks[exec_id] = "".join(status["error"]["traceback"])
    for exec_id, tb in tracebacks.items():
        assert f"<zmqexec-{exec_id}>" in tb and "1 / " in tb, tb  # its own file name, its line shown


def test_stderr_and_missing_result_name(server):
    client = server.client
    exec_id = client.execute("import sys\nprint('oops', file=sys.stderr)\nx = 1", results=["x", "y"])
    status = client.wait(exec_id, timeout=10)
    assert status["stderr"] == "oops\n"
    assert status["status"] == "failed" and "y" in status["error"]["evalue"]


def test_non_finite_progress_is_reported_as_null(server):
    client = server.client
    exec_id = client.execute("from zmqruntime import Reporter\nr = Reporter(total=float('inf'))\n"
                             "r.set(float('nan'))\nr.close()")
    status = client.wait(exec_id, timeout=10)
    assert status["status"] == "complete"
    assert status["progress"]["total"] is None and status["progress"]["done"] is None


def test_status_of_all_leaves_output_out(server):
    client = server.client
    exec_id = client.execute("print('x' * 1000)")
    client.wait(exec_id, timeout=10)
    assert client.get_status(exec_id)["stdout"] == "x" * 1000 + "\n"
    assert client.get_status(exec_id)["stdout_total"] == 1001
    everything = {s["execution_id"]: s for s in client.get_status()}
    assert "stdout" not in everything[exec_id] and everything[exec_id]["status"] == "complete"


def test_unpicklable_result_is_a_clear_error(server):
    client = server.client
    exec_id = client.execute("import threading\nthreading.Lock()")
    assert client.wait(exec_id, timeout=10)["status"] == "complete"
    with pytest.raises(RemoteError) as info:
        client.get_results(exec_id)
    assert info.value.code == "unpicklable_result" and "lock" in info.value.message.lower()


def test_push_values_into_remote_namespace(server):
    client = server.client
    data = np.arange(10.0)
    exec_id = client.execute("data.sum() * factor", push={"data": data, "factor": 3})
    client.wait(exec_id, timeout=10)
    assert client.get_results(exec_id) == {"_": 135.0}


def test_large_numpy_result_round_trips_intact(server):
    client = server.client
    exec_id = client.execute(
        "import numpy as np\narr = np.random.default_rng(7).random(64 * 2**20 // 8)\narr", results=[]
    )
    assert client.wait(exec_id, timeout=60)["status"] == "complete"
    value = client.get_results(exec_id)["_"]
    expected = np.random.default_rng(7).random(64 * 2**20 // 8)
    assert value.nbytes == 64 * 2**20
    assert np.array_equal(value, expected)
    assert not value.flags.owndata  # a view of the received frame's memory: no copy was made
    # fetching again works (results are kept until the retention policy drops them)
    assert np.array_equal(client.get_results(exec_id)["_"][:10], expected[:10])


def test_results_of_unfinished_execution(server):
    client = server.client
    exec_id = client.execute("import time\ntime.sleep(30)")
    with pytest.raises(RemoteError) as info:
        client.get_results(exec_id, wait=False)
    assert info.value.code == "not_finished"
    with pytest.raises(ExecutionTimeout):  # "retrieve when ready", bounded by its timeout
        client.get_results(exec_id, timeout=0.3)
    client.cancel(exec_id)
    assert client.wait(exec_id, timeout=10)["status"] == "cancelled"


def test_list_and_status_all(server):
    client = server.client
    ids = [client.execute(f"{i} * 2", name=f"job{i}") for i in range(3)]
    for i in ids:
        client.wait(i, timeout=10)
    listed = {r["execution_id"]: r for r in client.list_executions()}
    assert set(ids) <= set(listed)
    assert listed[ids[1]]["name"] == "job1" and listed[ids[1]]["status"] == "complete"
    assert {r["execution_id"] for r in client.list_executions(status="complete")} >= set(ids)
    assert set(ids) <= {s["execution_id"] for s in client.get_status()}


def test_concurrency_runs_two_sessions_in_parallel(start_server):
    """Two clients are two sessions: with concurrency 2 their executions run at once."""
    server = start_server("--concurrency", "2")
    client, other = server.client, server.new_client()
    # Two tasks that each wait for the other's file: they only finish if both run at once.
    import tempfile

    d = tempfile.mkdtemp()
    code = """
import os, time
open(os.path.join({d!r}, {me!r}), 'w').close()
deadline = time.time() + 15
while not os.path.exists(os.path.join({d!r}, {other!r})):
    assert time.time() < deadline, 'the other task never ran concurrently'
    time.sleep(0.01)
"""
    a = client.execute(code.format(d=d, me="a", other="b"))
    b = other.execute(code.format(d=d, me="b", other="a"))
    assert client.wait(a, timeout=30)["status"] == "complete"
    assert other.wait(b, timeout=30)["status"] == "complete"
    sessions = {w["session"] for w in client.ping()["workers"] if w["session"]}
    assert sessions == {client.session_name, other.session_name}
    other.close()


def test_many_threads_share_one_client(server):
    client = server.client
    errors, results = [], {}

    def work(n):
        try:
            eid = client.execute(f"{n} ** 2")
            client.wait(eid, timeout=30)
            results[n] = client.get_results(eid)["_"]
            for _ in range(20):
                client.ping()
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert results == {n: n * n for n in range(8)}


def test_async_client_flow(server):
    async def main():
        client = AsyncExecutionClient(server.client.info)
        try:
            pong = await client.ping()
            ids = [await client.execute(f"{n} + 100") for n in range(3)]
            # concurrent requests on one socket are matched to their replies
            statuses = await asyncio.gather(*(client.wait(i, timeout=20) for i in ids))
            assert all(s["status"] == "complete" for s in statuses)
            values = [await client.get_results(i) for i in ids]
            listed = await client.list_executions()
            return pong, values, listed
        finally:
            client.close()

    pong, values, listed = asyncio.run(asyncio.wait_for(main(), 30))
    assert pong["pid"] == server.pid
    assert values == [{"_": 100}, {"_": 101}, {"_": 102}]
    assert len(listed) >= 3


def test_async_results_ride_the_done_event_when_small(server):
    """After wait(), small results come from the verified 'done' event (no results request:
    the server still counts them unfetched); big ones and release=True are fetched."""
    async def main():
        client = AsyncExecutionClient(server.client.info)
        try:
            small, nothing, big, released = [await client.execute(code) for code in (
                "'small'", "None", "import numpy as np\nnp.arange(100_000)", "'gone'")]
            for eid in (small, nothing, big, released):
                assert (await client.wait(eid, timeout=20))["status"] == "complete"
            got = [await client.get_results(small), await client.get_results(nothing),
                   await client.get_results(big), await client.get_results(released, release=True)]
            fetched = [(await client.get_status(e))["results_fetched"] for e in (small, big, released)]
            return got, fetched
        finally:
            client.close()

    got, fetched = asyncio.run(asyncio.wait_for(main(), 40))
    assert got[0] == {"_": "small"} and got[1] == {} and got[3] == {"_": "gone"}
    assert np.array_equal(got[2]["_"], np.arange(100_000))
    assert fetched == [False, True, True]  # only the small one never needed a results request


def test_result_waits_and_returns_results_or_raises(server):
    """result() = wait + get_results, for both clients; failures raise as get_results does."""
    client = server.client
    ok, bad = client.execute("import time\ntime.sleep(0.2)\n6 * 7"), client.execute("1 / 0")
    assert client.result(ok, timeout=20) == {"_": 42}
    with pytest.raises(ExecutionFailed, match="ZeroDivisionError"):
        client.result(bad, timeout=20)
    with pytest.raises(TypeError):
        client.result(None)  # type: ignore[arg-type]

    async def main():
        aclient = AsyncExecutionClient(client.info)
        try:
            ids = [await aclient.execute(c) for c in ("'a'", "None", "import numpy as np\nnp.ones(100_000)", "1 / 0")]
            got = [await aclient.result(i, timeout=20) for i in ids[:3]]
            with pytest.raises(ExecutionFailed, match="ZeroDivisionError"):
                await aclient.result(ids[3], timeout=20)
            slow = await aclient.execute("import time\ntime.sleep(5)")
            from zmqruntime.errors import ExecutionTimeout
            with pytest.raises(ExecutionTimeout):
                await aclient.result(slow, timeout=0.2)
            await aclient.cancel(slow)
            return got
        finally:
            aclient.close()

    got = asyncio.run(asyncio.wait_for(main(), 40))
    assert got[0] == {"_": "a"} and got[1] == {} and got[2]["_"].sum() == 100_000


def test_async_executes_of_one_turn_travel_as_one_execute_many(server):
    """gather(execute...) is one request; a bad task fails alone; a push goes as its own execute."""
    sent: list[str] = []

    async def main():
        client = AsyncExecutionClient(server.client.info)
        real_request = client._client.request

        async def counting_request(msg_type, content, *args, **kwargs):
            sent.append(msg_type)
            return await real_request(msg_type, content, *args, **kwargs)

        client._client.request = counting_request
        try:
            codes = [f"{i} * 2" for i in range(40)]
            outcome = await asyncio.gather(*(client.execute(c) for c in codes[:20]),
                                           client.execute("1 +"),  # a syntax error, in the same batch
                                           client.execute("x * 3", push={"x": 5}),
                                           *(client.execute(c) for c in codes[20:]), return_exceptions=True)
            ids = [o for o in outcome if isinstance(o, str)]
            values = await asyncio.gather(*(client.result(i, timeout=30) for i in ids))
            await asyncio.sleep(0)  # the end of the turn: finished 'done' topics are unsubscribed together
            assert not client._channel.topics and not client._channel._to_unsubscribe and not client._outbox
            return outcome, values
        finally:
            client.close()

    outcome, values = asyncio.run(asyncio.wait_for(main(), 60))
    # 41 items in one request, the push alone (status polls, the waits' safety net on a slow machine, aside)
    assert sorted(m for m in sent if m != "status") == ["execute", "execute_many"]
    assert isinstance(outcome[20], RemoteError) and outcome[20].code == "syntax_error"
    assert [v["_"] for v in values] == [i * 2 for i in range(20)] + [15] + [i * 2 for i in range(20, 40)]


def test_async_resubmit_with_the_same_request_id_follows_the_first_execution(server):
    async def main():
        client = AsyncExecutionClient(server.client.info)
        try:
            first = await client.execute("6 * 7", request_id="same-key")
            again = await client.execute("6 * 7", request_id="same-key")
            value = await client.result(again, timeout=20)
            await asyncio.sleep(0)
            assert not client._channel.topics and not client._channel._to_unsubscribe  # nothing left subscribed
            return first, again, value
        finally:
            client.close()

    first, again, value = asyncio.run(asyncio.wait_for(main(), 30))
    assert first == again and value == {"_": 42}


def test_async_connect_discovers_server(server, runtime_dir):
    async def main():
        client = await AsyncExecutionClient.connect(port=server.port, auto_spawn=False)
        try:
            return await client.ping()
        finally:
            client.close()

    assert asyncio.run(asyncio.wait_for(main(), 30))["pid"] == server.pid


def test_subscribe_to_one_execution_only(server):
    client = server.client
    seen = []
    target = client.execute("import time\ntime.sleep(0.3)\nprint('target')")
    sub = client.subscribe(seen.append, execution_id=target)
    other = client.execute("print('other')")
    client.wait(other, timeout=20)
    client.wait(target, timeout=20)
    from helpers import wait_until

    wait_until(lambda: any(e.type == "done" for e in seen))
    sub.close()
    assert {e.execution_id for e in seen} == {target}
    assert all(e["status"] in FINAL_STATES for e in seen if e.type == "done")


FLOOD_TASK = """
from zmqruntime import progress
for i in progress(range(20000), desc="flood", min_interval=0):
    pass
"""


def test_progress_flood_arrives_batched_and_complete(server):
    """Fast progress goes as progress_batch messages; expanded, every event is there, in order."""
    import zmq

    from zmqruntime.execution.client import parse_events
    from zmqruntime.protocol import Session

    client = server.client
    session = Session(client.info.key)
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    secure_client_socket(sub, client.info)
    sub.connect(client.info.data_url)
    try:
        from helpers import wait_until

        def probe_seen() -> bool:  # the subscription is live once a probe's 'done' arrives
            client.wait(client.execute("None"), timeout=10)
            return bool(sub.poll(200))

        wait_until(probe_seen, timeout=10)
        while sub.poll(100):
            sub.recv_multipart()
        exec_id = client.execute(FLOOD_TASK)
        assert client.wait(exec_id, timeout=30)["status"] == "complete"
        kinds, events = [], []
        while True:
            if not sub.poll(5000):
                raise AssertionError("no 'done' event within 5 s")
            frames = sub.recv_multipart()
            if not frames[0].startswith(exec_id.encode()):
                continue
            kinds.append(frames[0].decode().split(".", 1)[1])
            events += parse_events(session, frames)
            if events and events[-1].type == "done":
                break
    finally:
        sub.close()
    progress = [e for e in events if e.type == "progress"]
    assert "progress_batch" in kinds  # batching really happened...
    assert len(kinds) < len(progress) / 10  # ...and saved most messages
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # nothing lost, in order
    done = [e["done"] for e in progress]
    assert done == sorted(done) and set(range(20001)) <= set(done)  # one event per item (min_interval=0)
    assert progress[-1]["done"] == 20000 and progress[-1]["desc"] == "flood"
    assert all(e.execution_id == exec_id and isinstance(e["time"], float) for e in progress)
    assert client.get_status(exec_id)["progress"]["done"] == 20000


def test_malformed_progress_batch_is_dropped_not_raised():
    """A signed but malformed progress_batch yields no events (and no exception)."""
    from zmqruntime.execution.client import parse_events
    from zmqruntime.protocol import PROGRESS_FIELDS, Session, event_topic

    session = Session("k" * 64)
    topic = event_topic("a1b2c3d4e5f6", "progress_batch")
    good = {"execution_id": "a1b2c3d4e5f6", "seq": 2, "fields": list(PROGRESS_FIELDS),
            "events": [[1, 1.0, 1, 2, "d", 1.0, 1.0], [2, 1.0, 2, 2, "d", 1.0, 1.0]]}
    assert [e.seq for e in parse_events(session, session.serialize("progress_batch", good, topic=topic))] == [1, 2]
    for bad in ({**good, "events": [[1, 1.0]]}, {**good, "fields": "seq"}, {**good, "events": "x"},
                {**good, "events": [["one", 1.0, 1, 2, "d", 1.0, 1.0]]}, {k: v for k, v in good.items() if k != "fields"}):
        assert parse_events(session, session.serialize("progress_batch", bad, topic=topic)) == []
    # and a forged one (wrong key) never parses
    assert parse_events(session, Session("x" * 64).serialize("progress_batch", good, topic=topic)) == []


def test_a_finished_wait_leaves_no_done_subscription(server):
    from zmqruntime.errors import ExecutionTimeout

    client = server.new_client()
    try:
        ids = [client.execute(f"{i}") for i in range(5)]
        assert all(client.wait(i, timeout=10)["status"] == "complete" for i in ids)
        assert client._waiter().topics == {}  # nothing left subscribed once waited for
        slow = client.execute("import time\ntime.sleep(5)")
        with pytest.raises(ExecutionTimeout):
            client.wait(slow, timeout=0.2)
        assert slow in client._waiter().topics  # not over: execute's subscription stays for a later wait
        client.cancel(slow)
        assert client.wait(slow, timeout=10)["status"] == "cancelled"
        assert client._waiter().topics == {}
    finally:
        client.close()
