"""Only holders of the connection file's key get anything done, and a
captured message cannot be used twice.

Control channel: unsigned, wrongly signed, tampered, truncated, re-ordered
and replayed requests have no side effect (no execution is created, the
marker file the code would write never appears), are logged, and the server
keeps answering ``ping``. Data channel: an attacker who owns the endpoint a
subscriber connects to cannot get a forged, duplicated or replayed event to
the user. Non-loopback binds are refused before any socket exists unless
asked for with a strong key. Everything speaks raw pyzmq where the bytes
under test matter.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import free_port, server_env, wait_until
from zmqruntime import ExecutionClient
from zmqruntime.curve import secure_client_socket
from zmqruntime.protocol import MARKER, Session, make_header, session_done_topic
from zmqruntime.replay import ReplayGuard
from zmqruntime.transport import ConnectionInfo, read_connection_file, write_connection_file

pytestmark = pytest.mark.timeout(90)

DROPPED = "dropped a"  # the server's log line for every unanswered message


class Raw:
    """A raw DEALER on the server's control port."""

    def __init__(self, server, context: zmq.Context):
        self.session = Session(server.client.info.key)
        self.sock = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        secure_client_socket(self.sock, server.client.info)
        self.sock.connect(server.client.info.control_url)

    def send(self, frames) -> None:
        self.sock.send_multipart(frames)

    def reply(self, timeout_ms: int = 3000):
        if not self.sock.poll(timeout_ms):
            return None
        return self.session.deserialize(self.sock.recv_multipart())


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def marker_request(session: Session, marker: Path) -> tuple[list[bytes], str]:
    """A signed execute (no client-chosen id, so nothing but replay protection stops a re-run)."""
    code = f"open({str(marker)!r}, 'a').write('ran\\n')"
    return session.serialize_request("execute", {"task": {"kind": "python", "code": code}})


def dropped_lines(server) -> int:
    return sum(DROPPED in line for line in server.log_path.read_text().splitlines())


def bad_variants(frames: list[bytes]) -> dict[str, list[bytes]]:
    """Every way of breaking a signed [sigframe, header, content] request tested here."""
    sig, header, content = frames
    other = Session("f" * 64)
    variants = {
        "unsigned (no signature frame)": [header, content],
        "marker without signature": [MARKER, header, content],
        "zero signature": [MARKER + b"0" * 64, header, content],
        "signed with another key": other.serialize("execute", json.loads(content), header=json.loads(header)),
        "signature with one flipped digit": [sig[:-1] + (b"0" if sig[-1:] != b"0" else b"1"), header, content],
        "uppercase hex signature": [MARKER + sig[len(MARKER):].upper(), header, content],
        "content tampered": [sig, header, content.replace(b"ran", b"RAN")],
        "header tampered": [sig, header.replace(b'"execute"', b'"execute" '), content],
        "extra buffer appended": [sig, header, content, b"extra"],
    }
    for n in range(1, len(frames)):
        variants[f"first {n} frame(s) only"] = frames[:n]
    for i, name in enumerate(("signature frame", "header", "content")):
        for cut in (1, len(frames[i]) // 2):
            broken = list(frames)
            broken[i] = frames[i][:-cut]
            variants[f"{name} truncated by {cut} byte(s)"] = broken
    for order in itertools.permutations(range(3)):
        if order != (0, 1, 2):
            variants[f"frames re-ordered {order}"] = [frames[i] for i in order]
    return variants


def test_bad_requests_are_dropped_logged_and_have_no_side_effect(server, ctx, tmp_path):
    raw = Raw(server, ctx)
    marker = tmp_path / "marker"
    frames, _ = marker_request(raw.session, marker)
    variants = bad_variants(frames)
    assert len(variants) >= 20
    for name, bad in variants.items():
        before = dropped_lines(server)
        raw.send(bad)
        assert raw.reply(200) is None, f"{name}: must not be answered"
        assert server.client.ping()["executions"] == 0, name  # requests are handled in order: it was seen
        wait_until(lambda before=before: dropped_lines(server) > before, 5)  # and logged
    assert server.client.list_executions() == []
    assert not marker.exists()
    # the untouched request still works: the variants were refused for what they broke
    raw.send(frames)
    reply = raw.reply()
    assert reply.content["ok"] is True
    server.client.wait(reply.content["execution_id"], timeout=30)
    assert marker.read_text() == "ran\n"


def test_a_replayed_request_is_refused_and_runs_once(server, ctx, tmp_path):
    raw = Raw(server, ctx)
    marker = tmp_path / "marker"
    frames, msg_id = marker_request(raw.session, marker)
    raw.send(frames)
    first = raw.reply()
    assert first.content["ok"] is True
    server.client.wait(first.content["execution_id"], timeout=30)
    assert marker.read_text() == "ran\n"

    eavesdropper = Raw(server, ctx)  # another connection, same captured bytes
    for sock in (raw, eavesdropper, raw):
        sock.send(frames)
        reply = sock.reply()
        assert reply.msg_type == "error_reply" and reply.parent_id == msg_id
        assert reply.content["error"]["code"] == "replayed_message"
    ping_frames, ping_id = raw.session.serialize_request("ping", {})
    for expected in (True, False):  # even a harmless ping is accepted once
        raw.send(ping_frames)
        assert raw.reply().content["ok"] is expected
    executions = server.client.list_executions()
    assert [e["execution_id"] for e in executions] == [first.content["execution_id"]]
    assert marker.read_text() == "ran\n"  # not a second line
    assert server.client.ping()["pid"] == server.pid
    assert server.log_path.read_text().count("refused a control message (replayed_message)") == 4


def dated(session: Session, msg_type: str, date) -> list[bytes]:
    header = make_header(msg_type, session.session_id)
    if date is None:
        del header["date"]
    else:
        header["date"] = date
    return session.serialize(msg_type, {}, header=header)


def test_requests_dated_outside_the_skew_window_are_refused(server, ctx):
    raw = Raw(server, ctx)
    now = datetime.now(timezone.utc)
    refused = {
        "an hour old": (now - timedelta(hours=1)).isoformat(),
        "an hour ahead": (now + timedelta(hours=1)).isoformat(),
        "no date": None,
        "not a date": "yesterday",
        "a number": 1735732800,
    }
    for name, date in refused.items():
        raw.send(dated(raw.session, "ping", date))
        reply = raw.reply()
        assert reply.content["error"]["code"] == "stale_message", name
        assert "date" in reply.content["error"]["message"]
    accepted = {  # a client whose clock is off by a minute, other ISO spellings
        "a minute slow": (now - timedelta(minutes=1)).isoformat(),
        "a minute fast": (now + timedelta(minutes=1)).isoformat(),
        "Z suffix": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "naive (UTC)": now.replace(tzinfo=None).isoformat(),
        "other offset": now.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat(),
    }
    for name, date in accepted.items():
        raw.send(dated(raw.session, "ping", date))
        assert raw.reply().content["ok"] is True, name


def test_skew_check_can_be_turned_off_and_replays_still_fail(start_server, ctx):
    server = start_server("--ZMQServer.max_clock_skew=0")
    raw = Raw(server, ctx)
    old = dated(raw.session, "ping", "2001-01-01T00:00:00+00:00")
    raw.send(old)
    assert raw.reply().content["ok"] is True
    raw.send(old)
    assert raw.reply().content["error"]["code"] == "replayed_message"


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(skew=st.floats(-119.9, 119.9), sent=st.floats(0, 1000), traffic=st.integers(0, 50),
       later=st.lists(st.floats(0, 2000), min_size=1, max_size=5))
def test_replay_guard_never_accepts_a_replay(skew, sent, traffic, later):
    """The window argument of zmqruntime/replay.py, checked on simulated clocks."""
    clock = {"t": sent}
    guard = ReplayGuard(max_clock_skew=120, max_entries=10_000, clock=lambda: clock["t"],
                        monotonic=lambda: clock["t"])

    def header(i):
        return {"msg_id": str(i), "date": datetime.fromtimestamp(clock["t"] + skew, timezone.utc).isoformat()}

    first = header("captured")
    guard.check(b"a" * 64, first)  # a client whose clock is off by `skew` is served
    for delay in sorted(later):
        clock["t"] = sent + delay
        for i in range(traffic):  # other requests go on meanwhile
            guard.check(f"{i:032x}".encode() * 2, header(i))
        traffic = 0
        with pytest.raises(Exception) as info:
            guard.check(b"a" * 64, first)
        assert info.value.code in ("replayed_message", "stale_message")


def test_replay_history_is_bounded():
    guard = ReplayGuard(max_clock_skew=120, max_entries=1000)
    now = datetime.now(timezone.utc).isoformat()
    for i in range(5000):
        guard.check(f"{i:032x}".encode() * 2, {"msg_id": str(i), "date": now})
        assert len(guard) <= 1000
    assert guard.early_evictions > 0  # and counted, since those rely on the date check alone


# -- data channel ---------------------------------------------------------------------------------------------------

def capture_events(server, ctx, code: str) -> list[list[bytes]]:
    """The genuine data-channel messages of one execution, as a wiretap sees them."""
    tap = ctx.socket(zmq.SUB)
    tap.setsockopt(zmq.SUBSCRIBE, b"")
    secure_client_socket(tap, server.client.info)
    tap.connect(server.client.info.data_url)
    time.sleep(0.3)  # slow joiner: let the subscription reach the server
    exec_id = server.client.execute(code)
    server.client.wait(exec_id, timeout=30)
    events: list[list[bytes]] = []
    while tap.poll(1000):
        frames = tap.recv_multipart()
        if frames[0].startswith(exec_id.encode()):
            events.append(frames)
        if frames[0] == f"{exec_id}.done".encode():
            break
    tap.close(0)
    assert events and events[-1][0].endswith(b".done")
    return events


class RoguePublisher:
    """An attacker's XPUB that a victim's subscriber connects to; XPUB shows when it has subscribed."""

    def __init__(self, ctx: zmq.Context):
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.url = f"tcp://127.0.0.1:{self.port}"

    def wait_subscribed(self, timeout_ms: int = 10_000) -> bytes:
        assert self.sock.poll(timeout_ms), "the victim never subscribed"
        return self.sock.recv()

    def publish(self, frames) -> None:
        self.sock.send_multipart(frames)


def victim_connection_file(server, tmp_path: Path, data_url: str) -> str:
    """The server's connection file, but with the data channel pointing at the attacker."""
    info = replace(server.client.info, data_url=data_url)
    path = tmp_path / "victim.json"
    write_connection_file(path, info)
    return str(path)


def forgeries(genuine: list[list[bytes]]) -> list[list[bytes]]:
    topic, sig, header, content = genuine[1][:4]
    evil = content.replace(b'"running"', b'"complete"')
    forged = Session("0" * 64).serialize("status", json.loads(evil), topic=topic)
    return [
        forged,                                         # signed with a guessed key
        [topic, MARKER + b"0" * 64, header, evil],      # unsigned
        [topic, sig, header, evil],                     # genuine signature, tampered content
        [topic.replace(b".status", b".done"), sig, header, content],  # genuine, re-topic'd
        [topic, header, content],                       # no signature frame
    ]


@pytest.fixture
def plain_server(start_server):
    """Without CURVE, so that a victim's subscriber can be pointed at an attacker's plain publisher
    at all (with CURVE it never completes the handshake): signatures alone must stop forgeries."""
    return start_server("--cancel-grace-period", "0.5", "--no-curve")


def test_forged_and_replayed_events_never_reach_a_subscriber(plain_server, ctx, tmp_path):
    server = plain_server
    genuine = capture_events(server, ctx, "print('hello')\n'x'")
    sentinel = capture_events(server, ctx, "'sentinel'")
    rogue = RoguePublisher(ctx)
    victim = ExecutionClient(connection_file=victim_connection_file(server, tmp_path, rogue.url))
    seen: list = []
    got_sentinel = threading.Event()

    def callback(event):
        seen.append(event)
        if event.execution_id == sentinel[0][0][:12].decode() and event.type == "done":
            got_sentinel.set()

    sub = victim.subscribe(callback)
    try:
        rogue.wait_subscribed()
        for frames in forgeries(genuine):
            rogue.publish(frames)
        for frames in genuine:                   # the real stream, once
            rogue.publish(frames)
        for frames in genuine + genuine[::-1]:   # replayed: again, then backwards
            rogue.publish(frames)
        for frames in forgeries(genuine):
            rogue.publish(frames)
        for frames in sentinel:                  # published last: once it is seen, all the rest was handled
            rogue.publish(frames)
        assert got_sentinel.wait(10)
    finally:
        sub.close()
        victim.close()
    mine = [e for e in seen if e.execution_id == genuine[0][0][:12].decode()]
    assert [e.seq for e in mine] == list(range(1, len(genuine) + 1))  # each once, in order
    assert [e.type for e in mine] == [f[0].decode().split(".")[1] for f in genuine]
    assert sub.tracker.dropped == len(genuine) * 2  # every replay noticed and dropped
    assert mine[1].type == "status" and mine[1]["status"] == "running"  # not the forged "complete"


def test_a_forged_done_does_not_end_a_wait(plain_server, ctx, tmp_path):
    """Neither a forged ``<id>.done`` (an execution of another session) nor a forged
    ``done_batch`` (the client's own session) ends a wait: each is dropped unverified."""
    server = plain_server
    rogue = RoguePublisher(ctx)
    victim = ExecutionClient(connection_file=victim_connection_file(server, tmp_path, rogue.url))
    try:
        slow = "import time\ntime.sleep(1.5)\n'slow'"
        mine = victim.execute(slow)
        batch_topic = session_done_topic(victim.session_name)  # its own session's ends come in a done_batch
        assert rogue.wait_subscribed() == b"\x01" + batch_topic
        other = victim.execute(slow, session="another")  # followed by '<id>.done'
        assert rogue.wait_subscribed() == b"\x01" + f"{other}.done".encode()
        guessed = Session("1" * 64)

        def fake_done(exec_id: str) -> dict:
            return {"execution_id": exec_id, "seq": 99, "status": "complete", "result_names": ["_"],
                    "inline_results": False}

        stop = threading.Event()

        def flood():
            while not stop.is_set():
                rogue.publish(guessed.serialize("done", fake_done(other), topic=f"{other}.done".encode()))
                rogue.publish(guessed.serialize("done_batch", {"session": victim.session_name,
                                                               "outcomes": [fake_done(mine)]}, topic=batch_topic))
                time.sleep(0.01)

        attacker = threading.Thread(target=flood)
        attacker.start()
        try:
            statuses = [victim.wait(exec_id, timeout=30) for exec_id in (mine, other)]
        finally:
            stop.set()
            attacker.join(5)
        for exec_id, status in zip((mine, other), statuses):
            assert status["status"] == "complete" and status["finished"] - status["started"] >= 1.4
            assert victim.get_results(exec_id) == {"_": "slow"}
    finally:
        victim.close()


# -- binding ---------------------------------------------------------------------------------------------------------

def serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zmqruntime", "serve", *args], capture_output=True, text=True,
                          timeout=timeout, env=server_env())


@pytest.mark.parametrize("extra,message", [
    ([], "pass --allow-public-bind"),
    (["--allow-public-bind", "--ZMQServer.key=short"], "at least 32 characters"),
])
def test_public_bind_is_refused_before_any_socket_is_bound(runtime_dir, extra, message):
    port = free_port()
    holders = []
    for p in (port, port + 1000):  # hold both ports (loopback): binding 0.0.0.0 would fail with another message
        holder = socket.socket()
        holder.bind(("127.0.0.1", p))
        holder.listen()
        holders.append(holder)
    try:
        out = serve("--ip", "0.0.0.0", "--port", str(port), *extra)
    finally:
        for holder in holders:
            holder.close()
    assert out.returncode == 3
    assert message in out.stderr and "refusing to bind non-loopback address '0.0.0.0'" in out.stderr
    assert "Another process holds it" not in out.stderr
    assert not list(runtime_dir.glob("server-*.json"))


def test_connection_file_is_private_and_never_seen_half_written(tmp_path):
    """Readers racing a writer see the old file or the new one, never a partial one; always mode 0600."""
    path = tmp_path / "server-1.json"
    infos = [replace(_INFO, key=f"{i:064x}", name="n" * (i % 7) * 500) for i in range(150)]
    write_connection_file(path, infos[0])
    errors: list = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                info = read_connection_file(path)
                assert info in infos
                assert stat.S_IMODE(path.stat().st_mode) == 0o600
            except FileNotFoundError:
                errors.append("file missing during a rewrite")
            except Exception as exc:
                errors.append(repr(exc))

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    for info in infos:
        write_connection_file(path, info)
    stop.set()
    for t in readers:
        t.join(10)
    assert errors == []
    assert read_connection_file(path) == infos[-1]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left behind


_INFO = ConnectionInfo(transport="tcp", ip="127.0.0.1", data_port=1, control_port=1001, data_url="tcp://127.0.0.1:1",
                       control_url="tcp://127.0.0.1:1001", key="0" * 64)


def test_the_jupyter_stream_shows_no_forged_or_replayed_event(plain_server, ctx, tmp_path):
    server = plain_server
    """The kernel-side path: EventStream on a tornado loop, routed to an ExecutionHandle."""
    from tornado.ioloop import IOLoop

    from zmqruntime_jupyter.connection import Connection
    from zmqruntime_jupyter.handle import ExecutionHandle

    tap = ctx.socket(zmq.SUB)
    tap.setsockopt(zmq.SUBSCRIBE, b"")
    secure_client_socket(tap, server.client.info)
    tap.connect(server.client.info.data_url)
    time.sleep(0.3)
    exec_id = server.client.execute("import time\nprint('real')\ntime.sleep(3)\n'x'")
    captured: list[list[bytes]] = []
    while not any(f[0].endswith(b".stream") for f in captured):  # queued, running, the 'real' line
        assert tap.poll(10_000), "the execution's first events never came"
        captured.append(tap.recv_multipart())
    tap.close(0)

    rogue = RoguePublisher(ctx)
    path = victim_connection_file(server, tmp_path, rogue.url)
    loop = IOLoop()
    conn = Connection(path, ExecutionClient(connection_file=path), loop)
    handle = ExecutionHandle(exec_id, conn)
    try:
        conn.follow(handle)  # subscribes, then takes the baseline from the real server
        assert handle.output == "real\n" and handle.status_cached == "running"
        topic = f"{exec_id}.stream".encode()
        forged = [
            Session("2" * 64).serialize("stream", {"execution_id": exec_id, "seq": handle.seq + 1,
                                                   "name": "stdout", "text": "FORGED\n"}, topic=topic),
            Session("2" * 64).serialize("done", {"execution_id": exec_id, "seq": handle.seq + 2, "status": "failed",
                                                 "reason": "FORGED"}, topic=f"{exec_id}.done".encode()),
            *forgeries(captured),
        ]
        sent = forged + captured + captured[::-1]  # forgeries, then genuine events replayed twice

        async def attack() -> None:
            deadline = time.monotonic() + 10
            while not rogue.sock.poll(0):  # the stream's subscription reaches the rogue XPUB
                assert time.monotonic() < deadline, "the stream never subscribed"
                await asyncio.sleep(0.01)
            for frames in sent:
                rogue.publish(frames)
            while conn.stream.received < len(sent):
                assert time.monotonic() < deadline, (conn.stream.received, len(sent))
                await asyncio.sleep(0.01)

        loop.run_sync(attack, timeout=20)
        assert conn.stream.dropped == len(forged)  # failed verification
        assert conn.stream.applied == 2 * len(captured)  # authentic, handed on ... and ignored by seq
        assert "FORGED" not in handle.output and handle.output == "real\n"
        assert handle.status_cached in ("running", "complete") and handle.state.get("reason") != "FORGED"
    finally:
        conn.close("test over")
        loop.close(all_fds=False)
