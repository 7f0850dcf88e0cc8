"""Property-based fuzzing of the control port of ONE live server.

Hypothesis sends random multipart messages, mutations of a valid signed
request, and correctly signed requests whose header and content fields hold
wrong values. Properties:

* unsigned or broken input is never answered and never runs anything: after
  each example a signed ``ping`` on the same connection is answered, and it
  is the *first* reply (the server handles a connection's messages in order);
* every correctly signed request gets exactly one reply, and a wrong one a
  precise error: the expected code, and a message that names the field;
* oversized input is bounded: over ``max_message_bytes`` gets ``too_large``,
  a frame over libzmq's MAXMSGSIZE costs the sender its connection only;
* at the end the server process is alive, its file descriptors and threads
  did not grow, and no execution was created by garbage.

Runs derandomized (the same examples every run) so CI is deterministic; the
module prints how many inputs were sent.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import psutil
import pytest
import zmq
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from helpers import ServerProcess, free_port
from zmqruntime.curve import secure_client_socket
from zmqruntime.protocol import MARKER, Session, compute_signature, is_execution_id, make_header

pytestmark = pytest.mark.timeout(180)

MAX_MESSAGE_BYTES = 64 * 1024
FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
COUNTS: Counter = Counter()


@pytest.fixture(scope="module")
def live():
    """One server for the whole module, in a private runtime dir; reaped at the end."""
    runtime = Path(tempfile.mkdtemp(prefix="zr-fz-", dir="/tmp"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZMQRUNTIME_RUNTIME_DIR", str(runtime))
        server = ServerProcess(runtime, free_port(), f"--ExecutionServer.max_message_bytes={MAX_MESSAGE_BYTES}")
        try:
            baseline_id = server.client.execute("'baseline'")  # gives `results` a real id to be wrong about
            server.client.wait(baseline_id, timeout=30)
            server.baseline_id = baseline_id
            yield server
        finally:
            server.stop()
            shutil.rmtree(runtime, ignore_errors=True)


class Wire:
    """A raw DEALER to the live server, with the key."""

    def __init__(self, server: ServerProcess):
        self.ctx = zmq.Context()
        self.session = Session(server.client.info.key)
        self.info = server.client.info
        self.url = self.info.control_url
        self.sock = self._connect()

    def _connect(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        secure_client_socket(sock, self.info)
        sock.connect(self.url)
        return sock

    def reconnect(self) -> None:
        self.sock.close(0)
        self.sock = self._connect()

    def recv(self, timeout_ms: int = 5000):
        assert self.sock.poll(timeout_ms), "no reply: the server stopped answering"
        return self.session.deserialize(self.sock.recv_multipart())

    def request(self, frames) -> object:
        self.sock.send_multipart(frames)
        return self.recv()

    def assert_only_ping_answers(self) -> None:
        """The next reply on this connection is our ping's: whatever was sent before got none.

        One exception: a signature frame whose marker became another ``<ZMQ?>``
        (a flipped byte) names an unknown scheme, and that is answered, with
        ``unknown_signature_scheme`` only (docs/protocol.md §6.2 step 1b).
        """
        frames, msg_id = self.session.serialize_request("ping", {})
        reply = self.request(frames)
        while reply.msg_type == "error_reply" and reply.content["error"]["code"] == "unknown_signature_scheme":
            COUNTS["unknown scheme markers answered"] += 1
            reply = self.recv()
        assert reply.parent_id == msg_id and reply.msg_type == "ping_reply", (reply.msg_type, reply.content)

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture(scope="module")
def wire(live):
    w = Wire(live)
    w.assert_only_ping_answers()
    proc = psutil.Process(live.pid)
    live.baseline_fds, live.baseline_threads = proc.num_fds(), proc.num_threads()
    yield w
    w.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
frame = st.one_of(
    st.binary(max_size=120),
    st.binary(min_size=64, max_size=64).map(lambda b: MARKER + b),  # shaped like a signature frame
    st.binary(min_size=68, max_size=160).map(lambda b: MARKER + b),  # shaped like a packed head
    st.sampled_from([b"", b"{}", MARKER, MARKER + b"0" * 64]),
)


@settings(FUZZ, max_examples=500)
@given(frames=st.lists(frame, min_size=1, max_size=8))
def test_random_frames_are_never_answered(wire, frames):
    wire.sock.send_multipart(frames)
    COUNTS["random frames"] += 1
    wire.assert_only_ping_answers()


def _valid_request(session: Session, packed: bool) -> list[bytes]:
    frames = session.serialize(
        "execute", {"task": {"kind": "python", "code": "open('/tmp/zr-fuzz-must-not-exist', 'w')"}},
        buffers=[b"pushed-buffer"], packed=packed)
    return [bytes(f) for f in frames]


def _verifies(session: Session, frames: list[bytes]) -> bool:
    try:
        session.deserialize(frames)
    except ValueError:
        return False
    return True


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 3), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("drop"), st.integers(0, 3)),
    st.tuples(st.just("duplicate"), st.integers(0, 3)),
    st.tuples(st.just("swap"), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("truncate"), st.integers(0, 3), st.integers(0, 10_000)),
    st.tuples(st.just("insert"), st.integers(1, 4), st.binary(max_size=80)),
)


def mutate(frames: list[bytes], op: tuple) -> list[bytes]:
    frames = list(frames)
    kind, i = op[0], op[1] % len(frames)
    if kind in ("flip", "truncate") and not frames[i]:
        return frames  # nothing to flip or cut in an empty frame
    if kind == "flip":
        data = bytearray(frames[i])
        data[op[2] % len(data)] ^= op[3]
        frames[i] = bytes(data)
    elif kind == "drop":
        del frames[i]
    elif kind == "duplicate":
        frames.insert(i, frames[i])
    elif kind == "swap":
        j = op[2] % len(frames)
        frames[i], frames[j] = frames[j], frames[i]
    elif kind == "truncate":
        frames[i] = frames[i][: op[2] % len(frames[i])]
    elif kind == "insert":
        frames.insert(max(1, op[1] % (len(frames) + 1)), op[2])
    return frames


@settings(FUZZ, max_examples=500)
@given(ops=st.lists(mutation, min_size=1, max_size=3), packed=st.booleans())
def test_mutated_signed_requests_are_never_answered(wire, ops, packed):
    original = _valid_request(wire.session, packed)
    frames = original
    for op in ops:
        if frames:
            frames = mutate(frames, op)
    if not frames or _verifies(wire.session, frames):
        return  # the signed part survived intact (e.g. swapped back, or only unsigned prefix frames changed)
    wire.sock.send_multipart(frames)
    COUNTS["mutated requests"] += 1
    wire.assert_only_ping_answers()


def _wrong(valid_none: bool = True):
    """JSON values of the wrong type for a string field (null excluded when null is valid)."""
    values = json_values.filter(lambda v: not isinstance(v, str))
    return values.filter(lambda v: v is not None) if valid_none else values


GOOD_TASK = {"kind": "python", "code": "1"}
WRONG_FIELDS = st.one_of(
    st.tuples(st.just("execute"), st.just("task"), json_values.filter(lambda v: not isinstance(v, dict)), st.just({})),
    st.tuples(st.just("execute"), st.just("name"), _wrong(), st.just({"task": GOOD_TASK})),
    st.tuples(st.just("execute"), st.just("timeout"),
              json_values.filter(lambda v: v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                                              or v <= 0)),
              st.just({"task": GOOD_TASK})),
    st.tuples(st.just("execute"), st.just("execution_id"),
              json_values.filter(lambda v: v is not None and not is_execution_id(v)), st.just({"task": GOOD_TASK})),
    st.tuples(st.just("status"), st.just("execution_id"), _wrong(), st.just({})),
    st.tuples(st.just("cancel"), st.just("execution_id"), _wrong(valid_none=False), st.just({})),
    st.tuples(st.just("cancel"), st.just("reason"), _wrong(), st.just({"execution_id": "0123456789ab"})),
    st.tuples(st.just("results"), st.just("execution_id"), _wrong(valid_none=False), st.just({})),
    st.tuples(st.just("results"), st.just("release"), json_values.filter(lambda v: not isinstance(v, bool)),
              st.none()),
    st.tuples(st.just("list"), st.just("status"), _wrong(), st.just({})),
)


@settings(FUZZ, max_examples=400)
@given(case=WRONG_FIELDS)
def test_wrong_field_values_get_a_precise_error(wire, live, case):
    msg_type, name, value, others = case
    content = dict(others if others is not None else {"execution_id": live.baseline_id})
    content[name] = value
    frames, msg_id = wire.session.serialize_request(msg_type, content)
    reply = wire.request(frames)
    COUNTS["wrong field values"] += 1
    assert reply.parent_id == msg_id and reply.msg_type == f"{msg_type}_reply"
    error = reply.content.get("error")
    assert reply.content["ok"] is False and error, (content, reply.content)
    assert error["code"] == "bad_request", (content, error)
    assert f"'{name}'" in error["message"], (name, error["message"])


HEADER_FIELDS = ("msg_id", "msg_type", "version", "date", "session", "parent_id")


@settings(FUZZ, max_examples=400)
@given(field=st.sampled_from(HEADER_FIELDS), value=json_values | st.just("__absent__"),
       msg_type=st.sampled_from(["ping", "status", "list", "cancel", "results", "reboot", ""]),
       content=st.dictionaries(st.text(max_size=8), json_values, max_size=4), packed=st.booleans())
def test_signed_requests_with_odd_headers_get_one_precise_reply(wire, field, value, msg_type, content, packed):
    assume(not (field == "msg_type" and value in ("execute", "shutdown")))  # those would act, not err
    header = make_header(msg_type, wire.session.session_id)
    if value == "__absent__":
        del header[field]
    else:
        header[field] = value
    frames = wire.session.serialize(msg_type, content, header=header, packed=packed)
    wire.sock.send_multipart(frames)
    COUNTS["odd headers"] += 1
    reply = wire.recv()
    msg_id = header.get("msg_id") if isinstance(header.get("msg_id"), str) else None
    assert reply.parent_id == msg_id and reply.packed is packed
    error = reply.content.get("error") or {}
    code = error.get("code")
    if field in ("msg_id", "msg_type") and not isinstance(header.get(field), str):
        assert code == "bad_message" and f"'{field}'" in error["message"]
    elif field == "version" and not (isinstance(value, str) and value.split(".")[0] == "1"):
        assert code == "unsupported_version" and "version" in error["message"]
    elif field == "date":  # absent, not a date, or a date far from now: replay protection refuses it
        assert code == "stale_message" and "date" in error["message"]
    elif header["msg_type"] not in ("ping", "status", "list", "cancel", "results"):
        assert code == "unknown_type" and "unknown message type" in error["message"]
    else:  # session / parent_id are informational: the request is served on its merits
        assert code in (None, "bad_request", "unknown_execution"), reply.content
    wire.assert_only_ping_answers()


@settings(FUZZ, max_examples=60)
@given(depth=st.sampled_from([1, 10, 100, 500, 5000, 100_000]), where=st.sampled_from(["header", "content"]),
       digits=st.sampled_from([1, 100, 4300, 4301, 20_000]))
def test_deep_nesting_and_huge_numbers_are_bad_messages_not_crashes(wire, depth, where, digits):
    nested = ("[" * depth + "]" * depth).encode()
    huge = ("9" * digits).encode()
    header = json.dumps(make_header("status", wire.session.session_id)).encode()
    content = b'{"execution_id":' + nested + b',"n":' + huge + b"}"
    if where == "header":
        header, content = header[:-1] + b',"x":' + nested + b',"n":' + huge + b"}", b"{}"
    sig = compute_signature(wire.session.key, b"", header, content, [])
    wire.sock.send_multipart([MARKER + sig, header, content])
    COUNTS["deep / huge JSON"] += 1
    if len(header) + len(content) > MAX_MESSAGE_BYTES:  # refused while received, before any hashing or parsing
        if _parses(header):  # its header names it: a too_large reply (docs/protocol.md 6.2 step 0)
            assert (wire.recv().content.get("error") or {}).get("code") == "too_large"
        wire.assert_only_ping_answers()  # else dropped
        return
    reply = wire.recv()
    code = (reply.content.get("error") or {}).get("code")
    if _parses(header) and _parses(content):  # then it is judged like any request
        assert code in (None, "bad_request", "too_large"), reply.content
    else:  # too deep or a number too long for Python's int(): a clear bad_message
        assert code == "bad_message" and "not JSON" in reply.content["error"]["message"], reply.content
    wire.assert_only_ping_answers()


def _parses(data: bytes) -> bool:
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return False
    return True


def test_oversized_requests_are_bounded(wire, live):
    frames, msg_id = wire.session.serialize_request("execute", {"task": {"kind": "python", "code": "1"}},
                                                    buffers=[b"x" * (MAX_MESSAGE_BYTES + 1)])
    reply = wire.request(frames)
    assert reply.parent_id == msg_id and reply.content["error"]["code"] == "too_large"
    assert "max_message_bytes" in reply.content["error"]["message"]
    # packed, the head itself over the limit: it is kept, so its header still names the request
    frames = wire.session.serialize("status", {"execution_id": "x" * (MAX_MESSAGE_BYTES + 1)}, packed=True,
                                    msg_id="o" * 32)
    reply = wire.request(frames)
    assert reply.packed and reply.parent_id == "o" * 32 and reply.content["error"]["code"] == "too_large"
    # a single frame over libzmq's MAXMSGSIZE (max(2 x limit, 1 MiB)): the connection is dropped, nothing else
    wire.sock.send_multipart([MARKER + b"0" * 64, b"{}", b"{}", b"y" * (2 << 20)])
    assert not wire.sock.poll(500)
    wire.reconnect()
    wire.assert_only_ping_answers()
    COUNTS["oversized"] += 2


def test_after_the_fuzzing_the_server_is_whole(wire, live):
    """Last in the module: alive, no leaked fds or threads, no execution made from garbage."""
    wire.assert_only_ping_answers()
    proc = psutil.Process(live.pid)
    assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    assert proc.num_fds() <= live.baseline_fds + 4, (live.baseline_fds, proc.num_fds())
    assert proc.num_threads() <= live.baseline_threads + 2
    assert [e["execution_id"] for e in live.client.list_executions()] == [live.baseline_id]
    total = sum(COUNTS.values())
    print(f"\nfuzzed inputs: {total} {dict(COUNTS)}")
    assert total >= 1500
    assert not Path("/tmp/zr-fuzz-must-not-exist").exists()
