"""Bad input on the wire: every kind of wrong message gets an error reply or
is dropped (when unsigned), and the server goes on serving.

These tests speak raw pyzmq, not our client, so they send exactly the bytes
under test.
"""

from __future__ import annotations

import json
import pickle

import pytest
import zmq

from zmqruntime import RemoteError
from zmqruntime.curve import secure_client_socket
from zmqruntime.protocol import (
    MARKER,
    PACKED,
    SPLIT,
    ProtocolError,
    Session,
    SignatureError,
    compute_signature,
    encode_header,
    make_header,
)
from zmqruntime.transport import ConnectionInfo, choose_packed

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def raw(server, raw_dealer):
    """A raw DEALER connected to the server's control port, plus its session."""
    return raw_dealer, Session(server.client.info.key)


def recv_reply(sock, session, timeout_ms=10000):
    if not sock.poll(timeout_ms):
        return None
    return session.deserialize(sock.recv_multipart())


def assert_still_serving(server):
    assert server.client.ping()["pid"] == server.pid


def test_wrong_signature_is_dropped(server, raw):
    sock, _ = raw
    wrong = Session("not-the-key")
    sock.send_multipart(wrong.serialize("ping", {}))
    assert not sock.poll(500), "a wrongly signed message must not be answered"
    assert_still_serving(server)
    assert "bad signature" in server.log_path.read_text()


def test_missing_signature_is_dropped(server, raw):
    sock, session = raw
    frames = session.serialize("ping", {})
    frames[0] = MARKER  # the marker with no signature after it
    sock.send_multipart(frames)
    assert not sock.poll(500)
    assert_still_serving(server)


@pytest.mark.parametrize("frames", [
    [b"garbage"],
    [b"\x00\xff" * 100, b"more"],
    [MARKER],
    [MARKER + b"0" * 64],
    [MARKER + b"0" * 64, b"{}"],
    [b"", b"", b""],
])
def test_garbage_frames_are_dropped(server, raw, frames):
    sock, _ = raw
    sock.send_multipart(frames)
    assert not sock.poll(300)
    assert_still_serving(server)


def test_signed_but_not_json_gets_error_reply(server, raw):
    sock, session = raw
    header = b"{not json"
    content = b"{}"
    sig = compute_signature(session.key, b"", header, content, [])
    sock.send_multipart([MARKER + sig, header, content])
    reply = recv_reply(sock, session)
    assert reply is not None and reply.content["ok"] is False
    assert reply.content["error"]["code"] == "bad_message"
    assert_still_serving(server)


def test_unknown_message_type(server, raw):
    sock, session = raw
    frames, msg_id = session.serialize_request("reboot_everything", {})
    sock.send_multipart(frames)
    reply = recv_reply(sock, session)
    assert reply.msg_type == "error_reply" and reply.parent_id == msg_id
    assert reply.content["error"]["code"] == "unknown_type"
    assert "ping" in reply.content["error"]["message"]  # says what is valid


def test_unsupported_protocol_version(server, raw):
    sock, session = raw
    header = make_header("ping", session.session_id, version="99.0")
    sock.send_multipart(session.serialize("ping", {}, header=header))
    reply = recv_reply(sock, session)
    assert reply.content["error"]["code"] == "unsupported_version"
    assert reply.parent_id == header["msg_id"]  # a client can match it to its request
    assert_still_serving(server)


@pytest.mark.parametrize("msg_type,content,code", [
    ("execute", {}, "bad_request"),
    ("execute", {"task": "print(1)"}, "bad_request"),
    ("execute", {"task": {"kind": "python", "code": 42}}, "bad_request"),
    ("execute", {"task": {"kind": "shell", "code": "ls"}}, "unknown_task_kind"),
    ("execute", {"task": {"kind": "python", "code": "x = ("}}, "syntax_error"),
    ("execute", {"task": {"kind": "python", "code": "1"}, "timeout": "soon"}, "bad_request"),
    ("execute", {"task": {"kind": "python", "code": "1"}, "timeout": -1}, "bad_request"),
    ("execute", {"task": {"kind": "python", "code": "1"}, "name": 5}, "bad_request"),
    ("execute", {"task": {"kind": "python", "code": "1"}, "name": 0}, "bad_request"),
    ("cancel", {"execution_id": "0123456789ab", "reason": 0}, "bad_request"),
    ("execute", {"task": {"kind": "python", "code": "1", "results": ["not a name"]}}, "bad_request"),
    ("execute", {"task": {"kind": "python", "code": "1"}, "execution_id": "NOT-HEX-ID!"}, "bad_request"),
    ("execute", {"task": {"kind": "python", "code": "1"}, "execution_id": 7}, "bad_request"),
    ("status", {"execution_id": 123}, "bad_request"),
    ("status", {"execution_id": "nope"}, "unknown_execution"),
    ("cancel", {}, "bad_request"),
    ("cancel", {"execution_id": ["x"]}, "bad_request"),
    ("results", {"execution_id": "nope"}, "unknown_execution"),
    ("list", {"status": 3}, "bad_request"),
    ("ping", {"brief": "yes"}, "bad_request"),
    ("ping", {"brief": 1}, "bad_request"),
    ("ping", {"brief": []}, "bad_request"),
])
def test_wrong_field_types_get_error_replies(server, raw, msg_type, content, code):
    sock, session = raw
    frames, msg_id = session.serialize_request(msg_type, content)
    sock.send_multipart(frames)
    reply = recv_reply(sock, session)
    assert reply.msg_type == f"{msg_type}_reply" and reply.parent_id == msg_id
    assert reply.content["ok"] is False
    assert reply.content["error"]["code"] == code, reply.content
    assert reply.content["error"]["message"]
    assert_still_serving(server)


def test_brief_ping_answers_the_identity_only(server, raw):
    """``brief`` leaves out the load fields; what it keeps equals the full reply's."""
    full = server.client.ping()
    brief = server.client.ping(brief=True)
    assert set(brief) == {"ok", "server_id", "pid", "version", "protocol_version", "start_time", "uptime"}
    assert all(brief[k] == full[k] for k in brief if k != "uptime")
    assert brief["uptime"] >= full["uptime"]
    sock, session = raw
    for content in ({"brief": False}, {"brief": None}, {"other": 1}):  # the full reply
        frames, _ = session.serialize_request("ping", content)
        sock.send_multipart(frames)
        assert "workers" in recv_reply(sock, session).content, content
    with pytest.raises(TypeError, match="brief must be True or False"):
        server.client.ping(brief="yes")


@pytest.mark.parametrize("raw_timeout", [b"1e400", b"NaN", b"-Infinity"])
def test_non_finite_timeout_is_refused_and_server_survives(server, raw, raw_timeout):
    sock, session = raw
    header = json.dumps(make_header("execute", session.session_id)).encode()
    content = b'{"task":{"kind":"python","code":"1"},"timeout":' + raw_timeout + b"}"
    sock.send_multipart([MARKER + compute_signature(session.key, b"", header, content, []), header, content])
    reply = recv_reply(sock, session)
    assert reply.content["error"]["code"] == "bad_request" and "timeout" in reply.content["error"]["message"]
    assert_still_serving(server)
    assert server.client.get_status() is not None  # every record still encodes


def test_duplicate_execution_id_is_refused(server, raw):
    sock, session = raw
    content = {"task": {"kind": "python", "code": "'first'"}, "execution_id": "0123456789ab"}
    for expected in (True, False):
        frames, _ = session.serialize_request("execute", content)
        sock.send_multipart(frames)
        reply = recv_reply(sock, session)
        assert reply.content["ok"] is expected
    assert reply.content["error"]["code"] == "duplicate_execution_id"
    server.client.wait("0123456789ab", timeout=10)
    assert server.client.get_results("0123456789ab") == {"_": "first"}  # the original is untouched


def test_results_release_must_be_bool(server, raw):
    exec_id = server.client.execute("1")
    server.client.wait(exec_id, timeout=10)
    sock, session = raw
    frames, _ = session.serialize_request("results", {"execution_id": exec_id, "release": "yes"})
    sock.send_multipart(frames)
    assert recv_reply(sock, session).content["error"]["code"] == "bad_request"
    # nothing lost: the result is still there
    assert server.client.get_results(exec_id) == {"_": 1}


def test_oversized_request_gets_error_reply(start_server):
    server = start_server("--ExecutionServer.max_message_bytes=100000")
    with pytest.raises(RemoteError) as info:
        server.client.execute("x = 1", push={"blob": b"x" * 200_000})
    assert info.value.code == "too_large"
    assert server.client.run("'small is fine'", timeout=20) == {"_": "small is fine"}


def test_signature_covers_topic_header_content_and_buffers():
    session = Session("k" * 64)
    frames = session.serialize("stream", {"a": 1}, topic=b"abc", buffers=[b"payload"])
    assert session.deserialize(frames, topic_frames=1).content == {"a": 1}
    for index, tampered in [(0, b"abd"), (2, b'{"msg_id":"x"}'), (3, b'{"a":2}'), (4, b"payloaX")]:
        bad = list(frames)
        bad[index] = tampered
        with pytest.raises(SignatureError):
            session.deserialize(bad, topic_frames=1)
    with pytest.raises(SignatureError):  # a dropped buffer is detected too
        session.deserialize(frames[:-1], topic_frames=1)
    with pytest.raises(ProtocolError):
        session.deserialize([b"no delimiter"])


@pytest.mark.parametrize("text", ["ping", 'quote " and \\ back', "\u00fc \u2028 \U0001f600", "\x00\x1f"])
def test_header_written_in_place_is_the_json_encoders(text):
    """Headers are written field by field (fast path): byte for byte what the JSON encoder writes."""
    header = make_header(text, text, parent_id=text, msg_id=text)
    for parent in (text, None):
        header["parent_id"] = parent
        fast = encode_header(header["msg_id"], header["msg_type"], header["session"], header["date"],
                             header["version"], parent)
        assert fast == json.dumps(header, separators=(",", ":")).encode()
        assert json.loads(fast) == header


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "latin-1"])
def test_signed_header_not_in_utf8_is_a_bad_message(encoding):
    """UTF-8 is the wire's only encoding: a correctly signed frame in another is refused, not guessed."""
    session = Session("k" * 64)
    header = json.dumps(make_header("ping", session.session_id, msg_id="caf\u00e9"), ensure_ascii=False).encode(encoding)
    signature = compute_signature(session.key, b"", header, b"{}", [])
    with pytest.raises(ProtocolError) as info:
        session.deserialize([MARKER + signature, header, b"{}"])
    assert info.value.code == "bad_message" and not isinstance(info.value, SignatureError)


def test_session_requires_a_key():
    with pytest.raises(ValueError):
        Session("")


def test_data_channel_events_are_signed(server):
    """A subscriber with the wrong key sees nothing it would accept."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    secure_client_socket(sub, server.client.info)
    sub.connect(server.client.info.data_url)
    try:
        import time

        time.sleep(0.2)  # let the subscription reach the publisher (slow joiner)
        server.client.run("print('hello')", timeout=20)
        assert sub.poll(3000)
        frames = sub.recv_multipart()
        good = Session(server.client.info.key)
        event = good.deserialize(frames, topic_frames=1)
        assert frames[0] == f"{event.content['execution_id']}.{event.msg_type}".encode()  # topic = <id>.<type>
        with pytest.raises(SignatureError):
            Session("wrong").deserialize(frames, topic_frames=1)
        json.loads(frames[2])  # header is plain JSON
    finally:
        sub.close(0)
        ctx.term()


def _execute_many(sock, session, content, buffers=()):
    frames, _ = session.serialize_request("execute_many", content, buffers)
    sock.send_multipart(frames)
    reply = recv_reply(sock, session)
    assert reply is not None, "no reply to execute_many"
    return reply.content


def test_execute_many_answers_each_item_on_its_own(server, raw):
    """One request, several executions: good ones queued, bad ones refused with execute's errors."""
    sock, session = raw
    before = len(server.client.list_executions())
    items = [
        {"task": {"kind": "python", "code": "6 * 7"}, "execution_id": "a1b2c3d4e5f6", "request_id": "r-1"},
        {"task": {"kind": "python", "code": "6 *"}, "request_id": "r-2"},
        {"task": {"kind": "nope"}},
        "not an object",
        {"task": {"kind": "python", "code": "'again'"}, "request_id": "r-1"},  # same key, other task
        {"task": {"kind": "python", "code": "6 * 7"}, "execution_id": "a1b2c3d4e5f6", "request_id": "r-1"},
        {"task": {"kind": "python", "code": "'last'"}, "timeout": -1},
        {"task": {"kind": "python", "code": "'fine'"}},
    ]
    reply = _execute_many(sock, session, {"executions": items})
    answers = reply["executions"]
    assert reply["ok"] and len(answers) == len(items)
    assert answers[0]["ok"] and answers[0]["execution_id"] == "a1b2c3d4e5f6" and not answers[0]["duplicate"]
    codes = [a["error"]["code"] if not a["ok"] else None for a in answers]
    assert codes == [None, "syntax_error", "unknown_task_kind", "bad_request", "request_id_conflict", None,
                     "bad_request", None]
    assert "executions[3]" in answers[3]["error"]["message"]
    assert answers[5]["duplicate"] and answers[5]["execution_id"] == "a1b2c3d4e5f6"  # a retry: not queued again
    assert server.client.result("a1b2c3d4e5f6", timeout=10) == {"_": 42}
    assert server.client.result(answers[7]["execution_id"], timeout=10) == {"_": "fine"}
    assert len(server.client.list_executions()) == before + 2  # exactly the two accepted ones


@pytest.mark.parametrize("content, buffers, what", [
    ({}, (), "non-empty list"),
    ({"executions": []}, (), "non-empty list"),
    ({"executions": {"task": 1}}, (), "non-empty list"),
    ({"executions": [{"task": {"kind": "python", "code": "1"}}] * 3}, (), "max_batch=2"),
    ({"executions": [{"task": {"kind": "python", "code": "1"}}]}, (b"x",), "no buffers"),
])
def test_execute_many_refuses_a_bad_request_whole(start_server, content, buffers, what):
    server = start_server("--ExecutionServer.max_batch=2")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    secure_client_socket(sock, server.client.info)
    sock.connect(server.client.info.control_url)
    try:
        reply = _execute_many(sock, Session(server.client.info.key), content, buffers)
    finally:
        sock.close()
        ctx.term()
    assert not reply["ok"] and reply["error"]["code"] == "bad_request" and what in reply["error"]["message"]
    assert server.client.list_executions() == []  # nothing queued


# -- packed framing: signature frame, header and content as one head frame ------------------------


def test_packed_request_gets_a_packed_reply_and_split_a_split_one(server, raw):
    """The server answers in the framing of the request (docs/protocol.md section 2)."""
    sock, session = raw
    for packed, msg_id, reply_frames in ((True, "p" * 32, 1), (False, "s" * 32, 3)):
        frames = session.serialize("ping", {"brief": True}, packed=packed, msg_id=msg_id)
        assert len(frames) == reply_frames
        sock.send_multipart(frames)
        assert sock.poll(10000)
        reply = sock.recv_multipart()
        assert len(reply) == reply_frames and reply[0][:6] == MARKER
        msg = session.deserialize(reply)
        assert msg.packed is packed and msg.parent_id == msg_id and msg.content["ok"] is True


def test_packed_execute_with_buffers_and_its_results(server, raw):
    """Buffers follow the head as frames of their own, both ways, and stay covered by the signature."""
    sock, session = raw
    session.packed = True
    data = pickle.dumps({"x": bytes(range(256)) * 1000}, protocol=5)
    frames, msg_id = session.serialize_request("execute", {"task": {"kind": "python", "code": "len(x)"}},
                                               buffers=[data])
    sock.send_multipart(frames)
    assert sock.poll(10000)
    reply = session.deserialize(sock.recv_multipart())
    assert reply.packed and reply.content["ok"] is True, reply.content
    assert server.client.wait(reply.content["execution_id"], timeout=20)["status"] == "complete"
    frames, _ = session.serialize_request("results", {"execution_id": reply.content["execution_id"]})
    sock.send_multipart(frames)
    assert sock.poll(10000)
    raw_reply = sock.recv_multipart()
    msg = session.deserialize(raw_reply)
    assert msg.packed and len(raw_reply) == 1 + len(msg.buffers) and msg.buffers
    assert pickle.loads(msg.buffers[0], buffers=[bytes(b) for b in msg.buffers[1:]]) == {"_": 256_000}
    tampered = list(raw_reply)
    tampered[-1] = tampered[-1][:-1] + bytes([tampered[-1][-1] ^ 1])
    with pytest.raises(SignatureError):
        session.deserialize(tampered)


@pytest.mark.parametrize("mangle", ["length past the end", "no length", "flipped header byte", "flipped content byte"])
def test_broken_packed_heads_are_dropped(server, raw, mangle):
    sock, session = raw
    head = bytearray(session.serialize("ping", {}, packed=True)[0])
    if mangle == "length past the end":
        head[70:74] = (len(head)).to_bytes(4, "big")
    elif mangle == "no length":
        head = head[:72]
    elif mangle == "flipped header byte":
        head[80] ^= 1
    else:
        head[-2] ^= 1
    sock.send_multipart([bytes(head)])
    assert not sock.poll(300), "a broken packed head must not be answered"
    assert_still_serving(server)


def test_packed_signature_is_the_split_one():
    """The same signed input either way: packing changes the frames, not what is signed."""
    session = Session("k" * 64)
    split = session.serialize("ping", {"a": 1}, msg_id="m" * 32, buffers=[b"buf"])
    header = split[1]
    packed = session.serialize("ping", {"a": 1}, header=json.loads(header), buffers=[b"buf"], packed=True)
    assert packed[0] == split[0] + len(header).to_bytes(4, "big") + header + split[2]
    assert session.deserialize(packed).content == session.deserialize(split).content == {"a": 1}
    with pytest.raises(SignatureError):  # a dropped buffer is detected packed too
        session.deserialize(packed[:1])


def test_connection_file_and_ping_offer_packed_and_the_client_uses_it(server):
    assert server.client.info.framings == [PACKED, SPLIT]
    assert server.client.ping()["framings"] == [PACKED, SPLIT]
    assert server.client.session.packed is True


def test_framing_chosen_by_environment(server, monkeypatch):
    info = server.client.info
    old = ConnectionInfo.from_dict({k: v for k, v in info.to_dict().items() if k != "framings"})  # an older server's file
    assert choose_packed(info) is True and choose_packed(old) is False
    monkeypatch.setenv("ZMQRUNTIME_FRAMING", SPLIT)
    assert choose_packed(info) is False
    client = server.new_client(timeout=10)
    try:  # a split client works end to end, buffers included
        assert client.session.packed is False
        assert client.run("x * 2", push={"x": b"ab"}, timeout=20) == {"_": b"abab"}
    finally:
        client.close()
    monkeypatch.setenv("ZMQRUNTIME_FRAMING", PACKED)
    with pytest.raises(ValueError, match="server offers"):
        choose_packed(old)
    monkeypatch.setenv("ZMQRUNTIME_FRAMING", "one-frame")
    with pytest.raises(ValueError, match="ZMQRUNTIME_FRAMING must be"):
        choose_packed(info)


def test_oversized_packed_request_gets_too_large(start_server):
    """The head itself crosses max_message_bytes: its header still names the request to refuse."""
    server = start_server("--ExecutionServer.max_message_bytes=100000")
    assert server.client.session.packed
    with pytest.raises(RemoteError) as info:
        server.client.execute("x = " + repr("y" * 200_000))
    assert info.value.code == "too_large" and "max_message_bytes" in info.value.message
    assert server.client.run("'small is fine'", timeout=20) == {"_": "small is fine"}
