"""``zmqruntime serve --curve``: both channels encrypted, clients follow the connection file.

A curve-aware client works end to end (results and events); a plain client
gets nothing (its request times out cleanly, its subscriber hears nothing);
and the bytes on the wire, seen through a recording TCP proxy, do not carry
the request in clear — while the same proxy does see it without ``--curve``,
which shows the check can fail.
"""

from __future__ import annotations

import json
import select
import socket
import stat
import threading
import time
from dataclasses import replace

import pytest
import zmq

from zmqruntime import ServerUnavailable
from zmqruntime.client import ZMQClient
from zmqruntime.curve import available

pytestmark = [pytest.mark.timeout(90),
              pytest.mark.skipif(not available(), reason="libzmq without CURVE support")]

SECRET = "SECRET-PAYLOAD-4f1c9e"


class RecordingProxy:
    """A loopback TCP relay to ``target`` that keeps every byte a client sends."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.recorded = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.listener.settimeout(0.1)
        pairs: dict[socket.socket, socket.socket] = {}
        try:
            while not self._stop.is_set():
                try:
                    client, _ = self.listener.accept()
                    upstream = socket.create_connection(self.target, timeout=5)
                    pairs[client], pairs[upstream] = upstream, client
                except socket.timeout:
                    pass
                if not pairs:
                    continue
                readable, _, _ = select.select(list(pairs), [], [], 0.05)
                for sock in readable:
                    data = sock.recv(65536)
                    peer = pairs.get(sock)
                    if not data or peer is None:
                        for s in (sock, peer):
                            if s is not None:
                                pairs.pop(s, None)
                                s.close()
                        continue
                    self.recorded += data
                    peer.sendall(data)
        finally:
            for s in pairs:
                s.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()


def run_through_proxy(server) -> bytes:
    info = server.client.info
    proxy = RecordingProxy(info.control_port)
    client = ZMQClient(replace(info, control_url=f"tcp://127.0.0.1:{proxy.port}"), timeout=10)
    try:
        reply = client.call("execute", {"task": {"kind": "python", "code": f"{SECRET!r}"}, "name": SECRET})
        server.client.wait(reply["execution_id"], timeout=30)
        assert server.client.get_results(reply["execution_id"]) == {"_": SECRET}
    finally:
        client.close()
        proxy.close()
    assert len(proxy.recorded) > 200  # the request and its reply went through the proxy
    return bytes(proxy.recorded)


def test_curve_server_works_end_to_end_and_plain_peers_get_nothing(start_server):
    server = start_server("--curve")
    info = server.client.info
    assert len(info.curve_server_key) == 40  # Z85 of 32 bytes
    text = server.connection_file.read_text()
    # the server's own secret key never leaves its memory; the client keypair is what ZAP admits
    assert [k for k in json.loads(text) if "secret" in k.lower()] == ["curve_client_secret"]
    assert stat.S_IMODE(server.connection_file.stat().st_mode) == 0o600

    events = []
    sub = server.client.subscribe(events.append)
    try:
        time.sleep(0.3)  # let the subscription reach the server
        exec_id = server.client.execute("from zmqruntime import progress\nfor i in progress(range(3)): print(i)\n6 * 7")
        assert server.client.wait(exec_id, timeout=30)["status"] == "complete"
        assert server.client.get_results(exec_id) == {"_": 42}
        deadline = time.monotonic() + 10
        while not any(e.type == "done" for e in events) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sub.close()
    assert {e.type for e in events} >= {"status", "progress", "stream", "done"}

    plain = ZMQClient(replace(info, curve_server_key=""), timeout=1.5)
    try:
        started = time.monotonic()
        with pytest.raises(ServerUnavailable):
            plain.call("ping", {})
        assert time.monotonic() - started < 5
    finally:
        plain.close()

    ctx = zmq.Context()
    spy = ctx.socket(zmq.SUB)
    spy.setsockopt(zmq.SUBSCRIBE, b"")
    spy.connect(info.data_url)
    try:
        time.sleep(0.3)
        server.client.run("print('not for spies')", timeout=30)
        assert not spy.poll(1000), "a plain subscriber must receive nothing from a CURVE publisher"
    finally:
        spy.close(0)
        ctx.term()
    assert server.client.ping()["pid"] == server.pid


@pytest.mark.parametrize("curve", [True, False])
def test_bytes_on_the_wire_are_encrypted_only_with_curve(start_server, curve):
    server = start_server("--curve" if curve else "--no-curve")
    wire = run_through_proxy(server)
    markers = (b"<ZMQR>", b"<ZMQB>")  # either signature scheme (the client picks BLAKE3 when offered)
    if curve:
        assert SECRET.encode() not in wire and b"execute" not in wire and not any(m in wire for m in markers)
    else:
        assert SECRET.encode() in wire and any(m in wire for m in markers)  # the check above can fail


def test_the_jupyter_event_stream_speaks_curve(start_server):
    """The kernel-side SUB socket follows the connection file too."""
    import asyncio

    from tornado.ioloop import IOLoop

    from zmqruntime.protocol import new_execution_id
    from zmqruntime_jupyter.stream import EventStream

    server = start_server("--curve")
    events = []
    loop = IOLoop()
    stream = EventStream(server.client.info, server.client.session, loop, events.append)
    exec_id = new_execution_id()
    stream.subscribe(exec_id)

    async def run() -> None:
        await asyncio.sleep(0.3)  # let the subscription reach the server
        reply = server.client._client.call("execute", {"task": {"kind": "python", "code": "print('via curve')"},
                                                       "execution_id": exec_id})
        assert reply["execution_id"] == exec_id
        deadline = time.monotonic() + 20
        while not any(e.type == "done" for e in events):
            assert time.monotonic() < deadline, [e.type for e in events]
            await asyncio.sleep(0.02)

    try:
        loop.run_sync(run, timeout=30)
    finally:
        stream.close()
        loop.close(all_fds=False)
    assert any(e.type == "stream" and e["text"] == "via curve\n" for e in events)
    assert stream.dropped == 0
