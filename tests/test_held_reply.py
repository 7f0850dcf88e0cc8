"""``execute`` with ``hold``: the reply waits for the outcome, and ``run()`` uses it.

A short task's result comes back in the execute reply itself (no 'done'
subscription, no second message); a long one's reply goes out plain when
the hold runs out and the client waits as ``result()`` does. Real servers,
raw DEALER sockets for the wire, both clients for ``run``.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import zmq

from zmqruntime import AsyncExecutionClient, ExecutionTimeout, RemoteError, serialize
from zmqruntime.execution import core
from zmqruntime.protocol import HMAC_SHA256, Session, new_execution_id

pytestmark = pytest.mark.timeout(90)


def send_execute(sock, session: Session, code: str, **fields) -> str:
    frames, msg_id = session.serialize_request("execute", {"task": {"kind": "python", "code": code}, **fields})
    sock.send_multipart(frames)
    return msg_id


def recv_reply(sock, session: Session, timeout_s: float = 20.0):
    assert sock.poll(int(timeout_s * 1000)), f"no reply within {timeout_s} s"
    return session.deserialize(sock.recv_multipart())


@pytest.fixture
def raw(server, raw_dealer):
    return raw_dealer, Session(server.client.info.key)


def test_a_short_tasks_outcome_rides_in_the_held_reply(raw):
    sock, session = raw
    msg_id = send_execute(sock, session, "6 * 7", hold=30)
    reply = recv_reply(sock, session)  # long before the 30 s hold: it came with the outcome
    assert reply.parent_id == msg_id and reply.content["ok"] and reply.content["status"] == "complete"
    outcome = reply.content["outcome"]
    assert outcome["status"] == "complete" and outcome["inline_results"] and outcome["result_names"] == ["_"]
    assert serialize.loads(reply.buffers) == {"_": 42}
    assert not sock.poll(300), "one reply only"

    send_execute(sock, session, "1 / 0", hold=30)
    failed = recv_reply(sock, session).content
    assert failed["status"] == "failed" and failed["outcome"]["error"]["ename"] == "ZeroDivisionError"


def test_a_long_tasks_reply_goes_out_plain_when_the_hold_runs_out(server, raw):
    sock, session = raw
    exec_id = new_execution_id()
    send_execute(sock, session, "import time; time.sleep(2); 'late'", hold=0.3, execution_id=exec_id)
    reply = recv_reply(sock, session).content
    # sent while the task still ran (its status says so), not held until it ended
    assert reply["ok"] and reply["execution_id"] == exec_id and "outcome" not in reply
    assert reply["status"] in ("queued", "running"), reply
    assert server.client.result(exec_id, timeout=30) == {"_": "late"}
    assert not sock.poll(300), "the hold's reply was the only one"


def test_a_held_reply_answers_with_the_cancel(server, raw):
    sock, session = raw
    exec_id = new_execution_id()
    send_execute(sock, session, "import time; time.sleep(60)", hold=30, execution_id=exec_id)
    assert not sock.poll(200), "still running: the reply is held"
    server.client.cancel(exec_id)
    reply = recv_reply(sock, session).content
    assert reply["status"] == "cancelled" and reply["outcome"]["status"] == "cancelled"


@pytest.mark.parametrize("hold", ["1", -1, 60.5, True, [1], {"s": 1}])
def test_a_bad_hold_is_refused_and_nothing_is_queued(server, raw, hold):
    sock, session = raw
    send_execute(sock, session, "1", hold=hold)
    reply = recv_reply(sock, session).content
    assert not reply["ok"] and reply["error"]["code"] == "bad_request" and "'hold'" in reply["error"]["message"]
    assert server.client.list_executions() == []


def test_execute_many_refuses_hold_per_item(server, raw):
    sock, session = raw
    frames, _ = session.serialize_request("execute_many", {"executions": [
        {"task": {"kind": "python", "code": "1"}, "hold": 1},
        {"task": {"kind": "python", "code": "2"}},
    ]})
    sock.send_multipart(frames)
    first, second = recv_reply(sock, session).content["executions"]
    assert not first["ok"] and first["error"]["code"] == "bad_request" and "hold" in first["error"]["message"]
    assert second["ok"] and server.client.result(second["execution_id"], timeout=20) == {"_": 2}


@pytest.mark.parametrize("scheme", [HMAC_SHA256, "blake3"])
def test_run_gets_a_short_result_without_opening_the_data_channel(server, scheme, monkeypatch):
    """The whole run is one request and its reply: no thread of the client opened a SUB socket."""
    monkeypatch.setenv("ZMQRUNTIME_SIGNATURE_SCHEME", scheme)
    client = server.new_client(timeout=30)
    try:
        assert client.session.scheme == scheme
        got: list = []
        worker = threading.Thread(target=lambda: got.append(client.run("[6 * 7] * 3", timeout=30)))
        worker.start()
        worker.join(40)
        assert got == [{"_": [42, 42, 42]}]
        assert not [s for s in client._client._sockets if s.type == zmq.SUB], "a SUB socket was opened"
    finally:
        client.close()


def test_run_past_the_hold_still_returns_and_raises_as_result_does(server, monkeypatch):
    monkeypatch.setattr(core, "RUN_HOLD", 0.2)
    client = server.new_client(timeout=30)
    try:
        assert client.run("import time; time.sleep(0.8); 5", timeout=30) == {"_": 5}
        with pytest.raises(RemoteError) as failed:
            client.run("import time; time.sleep(0.5); 1 / 0", timeout=30)
        assert "ZeroDivisionError" in str(failed.value)
        with pytest.raises(ExecutionTimeout):
            client.run("import time; time.sleep(5)", timeout=0.5)
        # a retry under the same request_id returns the first execution's result, not a second run
        first = client.run("import random; random.random()", request_id="same-run", timeout=30)
        assert client.run("import random; random.random()", request_id="same-run", timeout=30) == first
    finally:
        client.close()


def test_async_run_short_and_long(server, monkeypatch):
    monkeypatch.setattr(core, "RUN_HOLD", 0.2)

    async def main():
        client = AsyncExecutionClient(server.client.info, timeout=30)
        try:
            short, long_ = await asyncio.gather(client.run("'a' * 3", timeout=30),
                                                client.run("import time; time.sleep(0.6); 'b'", timeout=30))
            with pytest.raises(RemoteError):
                await client.run("raise ValueError('no')", timeout=30)
            with pytest.raises(TypeError):
                await client.run("1", nonsense=True)
            return short, long_
        finally:
            client.close()

    assert asyncio.run(asyncio.wait_for(main(), 60)) == ({"_": "aaa"}, {"_": "b"})
