"""A session's ``done_batch``: the ends of its executions in one signed message.

A real server in its own process over TCP and IPC; a raw SUB socket reads
the batches as any client would, and the reference clients (asyncio and
blocking) wait on them. A server from before ``done_batch`` (a subclass that
neither sends one nor names it in its replies) still serves those clients.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import zmq

from zmqruntime import AsyncExecutionClient, ExecutionClient
from zmqruntime.client import ZMQClient
from zmqruntime.curve import subscriber_socket
from zmqruntime.execution.core import results_in_done_event
from zmqruntime.execution.events import done_events, parse_event, parse_events
from zmqruntime.protocol import done_batch_outcomes, new_id, session_done_topic

pytestmark = pytest.mark.timeout(120)

BACKENDS = str(Path(__file__).parent / "backends")


def test_done_batch_outcomes_split_the_buffers_and_refuse_bad_shapes():
    a = {"execution_id": "a" * 12, "nbuffers": 2}
    b = {"execution_id": "b" * 12, "nbuffers": 0}
    c = {"execution_id": "c" * 12}  # no nbuffers: none
    assert done_batch_outcomes({"outcomes": [a, b, c]}, [b"1", b"2"]) == [(a, [b"1", b"2"]), (b, []), (c, [])]
    for content, buffers in [
        ({}, []),  # no outcomes
        ({"outcomes": {"a": 1}}, []),
        ({"outcomes": ["x"]}, []),
        ({"outcomes": [{"nbuffers": 0}]}, []),  # no execution_id
        ({"outcomes": [{"execution_id": 7}]}, []),
        ({"outcomes": [{**a, "nbuffers": -1}]}, []),
        ({"outcomes": [{**a, "nbuffers": True}]}, [b"1"]),
        ({"outcomes": [{**a, "nbuffers": "1"}]}, [b"1"]),
        ({"outcomes": [a]}, [b"1"]),  # names more buffers than there are
        ({"outcomes": [b]}, [b"1"]),  # leaves a buffer unnamed
    ]:
        with pytest.raises(ValueError):
            done_batch_outcomes(content, buffers)


def test_a_malformed_done_batch_is_dropped_whole(server):
    """Signed by the server's key but with counts that do not add up: no 'done' comes of it."""
    session = server.client.session
    frames = session.serialize("done_batch", {"session": "s", "outcomes": [{"execution_id": "a" * 12, "nbuffers": 2}]},
                               topic=session_done_topic("s"), buffers=[b"x"])
    event = parse_event(session, frames)
    assert event is not None and event.type == "done_batch"
    assert done_events(event) == []
    assert parse_events(session, frames) == []  # a general subscriber ignores done_batch (it gets each 'done')


def _read_outcomes(sock: zmq.Socket, session, want: int, timeout: float = 30.0) -> tuple[list, int]:
    """Every 'done' the batches on ``sock`` carried, until ``want`` of them; and how many messages."""
    outcomes, messages = [], 0
    deadline = time.monotonic() + timeout
    while len(outcomes) < want:
        left = deadline - time.monotonic()
        assert left > 0, f"{len(outcomes)} of {want} outcomes within {timeout} s"
        if sock.poll(left * 1000):
            event = parse_event(session, sock.recv_multipart())
            assert event is not None and event.type == "done_batch"
            messages += 1
            outcomes += done_events(event)
    return outcomes, messages


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_a_session_subscriber_gets_its_sessions_ends_in_order_with_inline_results(start_server, transport):
    server = start_server(transport=transport)
    client = server.client
    ours, other = subscriber_socket(zmq.Context.instance(), client.info, 10_000), \
        subscriber_socket(zmq.Context.instance(), client.info, 10_000)
    try:
        ours.setsockopt(zmq.SUBSCRIBE, session_done_topic("s1"))
        other.setsockopt(zmq.SUBSCRIBE, session_done_topic("s"))  # a prefix of our session's name
        client.run("0", session="s1", timeout=30)  # the session's worker is up
        ours.poll(2000) and ours.recv_multipart()  # that run's own batch, if the subscription was in time
        n = 40
        executions = [{"task": {"kind": "python", "code": f"{i} * 3"}, "session": "s1", "request_id": new_id()}
                      for i in range(n)]
        wire = ZMQClient(client.info, timeout=30)
        try:
            answers = wire.call("execute_many", {"executions": executions})["executions"]
        finally:
            wire.close()
        assert all(a["ok"] and a["done_batch"] and a["done_subscribed"] for a in answers)
        ids = [a["execution_id"] for a in answers]
        outcomes, messages = _read_outcomes(ours, client.session, n)
        assert [o.execution_id for o in outcomes] == ids  # one session runs in order
        assert [results_in_done_event(o) for o in outcomes] == [{"_": 3 * i} for i in range(n)]
        assert all(o["status"] == "complete" and o["inline_results"] for o in outcomes)
        print(f"{n} ends in {messages} done_batch messages")
        assert not other.poll(200)  # the other session's topic got none of ours
    finally:
        ours.close(0)
        other.close(0)


def test_the_clients_wait_on_done_batches_and_on_done_for_other_sessions(server):
    async def pipelined() -> tuple[list, dict, dict]:
        client = AsyncExecutionClient(server.client.info, session="pipe")
        try:
            ids = await asyncio.gather(*(client.execute(f"{i} + 1") for i in range(300)))
            assert client._channel is not None and client._channel.batched >= set(ids)  # no '<id>.done' topics
            results = await asyncio.gather(*(client.result(e, timeout=60) for e in ids))
            elsewhere = await client.result(await client.execute("'other'", session="elsewhere"), timeout=60)
            failed = await client.execute("1 / 0")
            with pytest.raises(Exception) as info:
                await client.result(failed, timeout=60)
            channel = client._channel
            assert channel is not None and not channel.batched and not channel.topics  # nothing left over
            return results, elsewhere, {"error": type(info.value).__name__}
        finally:
            client.close()

    results, elsewhere, failure = asyncio.run(pipelined())
    assert results == [{"_": i + 1} for i in range(300)]
    assert elsewhere == {"_": "other"}
    assert failure == {"error": "ExecutionFailed"}

    blocking = server.new_client(session="blocking")
    try:
        ids = [blocking.execute(f"{i} * 2") for i in range(50)]
        assert blocking._waiter().batched >= set(ids)
        assert [blocking.result(e, timeout=60) for e in ids] == [{"_": 2 * i} for i in range(50)]
        assert blocking.result(blocking.execute("'x'", session="elsewhere"), timeout=60) == {"_": "x"}
    finally:
        blocking.close()


def test_a_server_without_done_batch_still_serves_the_clients(start_server):
    server = start_server("--server-class", "pre_batch_server:PreBatchServer", extra_path=BACKENDS)
    wire = ZMQClient(server.client.info, timeout=30)
    try:
        reply = wire.call("execute", {"task": {"kind": "python", "code": "1"}})
    finally:
        wire.close()
    assert "done_batch" not in reply  # the stand-in for an older server

    async def pipelined() -> list:
        client = AsyncExecutionClient(server.client.info, session="pipe")
        try:
            ids = await asyncio.gather(*(client.execute(f"{i} + 1") for i in range(100)))
            channel = client._channel
            assert channel is not None and not channel.batched and set(ids) <= set(channel.topics)  # '<id>.done'
            return list(await asyncio.gather(*(client.result(e, timeout=60) for e in ids)))
        finally:
            client.close()

    t0 = time.monotonic()
    assert asyncio.run(pipelined()) == [{"_": i + 1} for i in range(100)]
    blocking = ExecutionClient(connection_file=str(server.connection_file), session="blocking")
    try:
        ids = [blocking.execute(f"{i} * 2") for i in range(20)]
        assert not blocking._waiter().batched and set(ids) <= set(blocking._waiter().topics)
        assert [blocking.result(e, timeout=60) for e in ids] == [{"_": 2 * i} for i in range(20)]
    finally:
        blocking.close()
    print(f"through '<id>.done' from a server without done_batch: {time.monotonic() - t0:.2f} s")
