"""The zmqruntime wire format: message model, signing and framing — no sockets.

Every message, on both channels, is a list of frames::

    [prefix ...] b"<ZMQR>" + signature, header, content [, buffer ...]

* ``prefix``: routing identities added by ROUTER sockets (control channel) or
  the topic (data channel: the execution id). Topics are signed, identities
  are not (they are chosen by ZeroMQ, not by the peer).
* the *signature frame* is the marker ``<ZMQR>`` followed by the signature:
  it both separates the prefix from the body and authenticates it (one frame
  rather than two: every frame costs a measurable ~10 µs per round trip).
* ``signature``: 64 lowercase hex digits, keyed by the connection file's key,
  over the length-prefixed topic, header and content frames and the digest
  of every buffer (see :func:`buffer_digest` and :func:`compute_signature`).
  Two *schemes*, named by the marker: ``<ZMQR>`` is HMAC-SHA256 over a
  chunked SHA-256 tree of each buffer (every peer speaks it), ``<ZMQB>``
  keyed BLAKE3 over the BLAKE3 of each buffer (about five times faster on
  bulk data here: the digest no longer costs as much as the transfer). A
  reply is signed with the scheme of its request; events always use
  HMAC-SHA256 (every subscriber can read them). Digesting buffers
  lets the server forward a large result without re-reading it, while every
  byte is still covered by the signature.
* ``header``: UTF-8 JSON object (:class:`Header`).
* ``content``: UTF-8 JSON object, the message's fields.
* *packed* framing: a client whose connection file lists ``packed`` in
  ``framings`` may send signature frame, header and content as one frame
  (the *head*: the 70 signature-frame bytes, the header's length in 4
  bytes big-endian, the header, the content); the reply comes packed too.
  Two frames fewer each way cost 6-11 µs less per round trip here. The
  signature is the same either way; events are always sent split.
* ``buffers``: raw bytes (pickle protocol 5 data and out-of-band buffers).

``docs/protocol.md`` is the normative description; keep the two in step.
Nothing here unpickles anything: verification comes first, decoding of
buffers is the caller's business once :meth:`Session.deserialize` returned.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from . import wire_json

SNDMORE = 2  # zmq.SNDMORE; the protocol module does not import zmq
PROTOCOL_VERSION = "1.0"
HMAC_SHA256 = "hmac-sha256"
BLAKE3 = "blake3"
MARKER = b"<ZMQR>"  # the HMAC-SHA256 scheme's marker (every peer's)
#: The marker at the start of a signature frame names its scheme.
SCHEME_MARKERS = {HMAC_SHA256: MARKER, BLAKE3: b"<ZMQB>"}
_MARKER_SCHEMES = {m: name for name, m in SCHEME_MARKERS.items()}
#: Length of the signature frame: marker + 64 hex digits.
SIGNATURE_FRAME_LEN = len(MARKER) + 64
SIGNATURE_SCHEME = HMAC_SHA256  # the scheme every peer understands (connection file ``signature_scheme``)
#: Framings, named in the connection file's ``framings``: signature frame, header and
#: content as three frames (every peer's), or packed into one head frame.
SPLIT, PACKED = "split", "packed"
FRAMINGS = (PACKED, SPLIT)
#: A packed head: the signature frame's bytes, then the header's length (4 bytes, big-endian).
PACKED_HEAD_MIN = SIGNATURE_FRAME_LEN + 4

#: Control requests a server understands; replies are ``<type>_reply``.
#: A brief ``ping``'s request content: the server's identity only (docs/protocol.md §7.1).
BRIEF_PING: dict[str, Any] = {"brief": True}
#: The fields of a brief ``ping`` reply (besides ``ok`` and ``uptime``).
BRIEF_PING_FIELDS = ("server_id", "pid", "version", "protocol_version", "start_time")
REQUEST_TYPES = ("ping", "execute", "execute_many", "status", "cancel", "results", "list", "sessions", "reset_session",
                 "shutdown", "upload")
#: Data-channel message types. The topic is ``<execution_id>.<msg_type>``, except a
#: ``done_batch``'s (:func:`session_done_topic`); a client dispatches on the signed
#: header's ``msg_type``.
EVENT_TYPES = ("status", "progress", "progress_batch", "stream", "done", "done_batch")
#: A progress event's state, as ``status`` replies and records keep it.
PROGRESS_STATE_FIELDS = ("done", "total", "desc", "rate", "elapsed")
#: A ``progress_batch`` message carries several progress events (one row each,
#: these fields in this order) on topic ``<execution_id>.progress_batch``, so a
#: subscription to ``<execution_id>.progress`` (a prefix) receives both forms.
PROGRESS_FIELDS = ("seq", "time", *PROGRESS_STATE_FIELDS)
PROGRESS_BATCH_TOPIC = "progress_batch"
#: Execution states; the first two are active, the last three final.
STATES = ("queued", "running", "complete", "failed", "cancelled")
ACTIVE_STATES = STATES[:2]
FINAL_STATES = frozenset(STATES[2:])
#: Characters of stdout/stderr a ``status`` reply (and a client's buffer) keeps: the newest.
OUTPUT_KEEP_CHARS = 1 << 20
#: Frames of a data-channel message without buffers: topic, signature frame, header, content.
EVENT_FRAMES = 4


class ProtocolError(ValueError):
    """A message that cannot be accepted: carries a stable error ``code``.

    ``malformed`` (no delimiter, too few frames) is raised before the
    signature is checked; ``bad_message`` and ``unsupported_version`` after,
    so those messages are authentic and deserve an error reply.
    """

    def __init__(self, code: str, message: str, msg_id: Optional[str] = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.msg_id = msg_id  # of the offending message, when its header could be read


class SignatureError(ProtocolError):
    """Missing or wrong signature: such a message is dropped, never answered."""


def new_id() -> str:
    return os.urandom(16).hex()


EXECUTION_ID_LENGTH = 12


def new_execution_id() -> str:
    """12 hex digits: short enough to type, fixed length so topics never prefix-match."""
    return os.urandom(EXECUTION_ID_LENGTH // 2).hex()


def event_topic(execution_id: str, event_type: str) -> bytes:
    """Data-channel topic: ``<execution id>.<event type>``.

    Subscribing to the id (a prefix) follows one execution, to ``<id>.done``
    only its end, to ``""`` everything.
    """
    return f"{execution_id}.{event_type}".encode()


def progress_batch_events(content: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``progress`` event contents a ``progress_batch`` content stands for, in order.

    Each row of ``events`` pairs with ``fields``; ``execution_id`` is the
    batch's. ValueError when the shape is wrong (a bad row, a non-integer seq).
    """
    fields, rows, exec_id = content.get("fields"), content.get("events"), content.get("execution_id", "")
    if not isinstance(fields, list) or "seq" not in fields or not isinstance(rows, list):
        raise ValueError("'fields' must be a list naming 'seq' and 'events' a list")
    events = []
    for row in rows:
        if not isinstance(row, list) or len(row) != len(fields):
            raise ValueError(f"a row of {len(row) if isinstance(row, list) else type(row).__name__} "
                             f"values for {len(fields)} fields")
        event = dict(zip(fields, row))
        event["execution_id"] = exec_id
        seq = event["seq"]
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise ValueError(f"seq must be an integer, got {seq!r}")
        events.append(event)
    return events


def session_done_topic(session: str) -> bytes:
    """Data-channel topic of one session's ``done_batch`` events: ``@<session>`` and a NUL.

    A client subscribes to it once instead of to ``<id>.done`` per execution,
    and the server sends the 'done' contents of the session's executions that
    ended close together as one signed message. Execution ids never start
    with ``@``, and no session name holds a NUL, so this topic is no prefix of
    another session's or of any execution's.
    """
    return b"@" + session.encode() + b"\x00"


def done_batch_outcomes(content: dict[str, Any], buffers: Sequence[Any]) -> list[tuple[dict[str, Any], list[Any]]]:
    """The ``done`` event contents of a ``done_batch``, each with its share of the buffers, in order.

    ``outcomes`` lists the contents; each one's ``nbuffers`` counts its inline
    result buffers, taken in turn from the message's. ValueError when the
    shape is wrong (a missing id, counts that do not add up to the buffers).
    """
    outcomes = content.get("outcomes")
    if not isinstance(outcomes, list):
        raise ValueError("'outcomes' must be a list")
    split, start = [], 0
    for outcome in outcomes:
        if not isinstance(outcome, dict) or not isinstance(outcome.get("execution_id"), str):
            raise ValueError("each outcome must be an object with a string 'execution_id'")
        n = outcome.get("nbuffers", 0)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0 or start + n > len(buffers):
            raise ValueError(f"outcome of {outcome['execution_id'][:40]!r}: bad 'nbuffers' {n!r}")
        split.append((outcome, list(buffers[start:start + n])))
        start += n
    if start != len(buffers):
        raise ValueError(f"the outcomes name {start} buffers, the message has {len(buffers)}")
    return split


def progress_state(content: dict[str, Any]) -> dict[str, Any]:
    """The progress part of a ``progress`` event's content (what a status reply shows)."""
    return {k: content.get(k) for k in PROGRESS_STATE_FIELDS}


#: The reference signers write an event's content with these keys first
#: (``{"execution_id":"<id>","seq":<n>,...}``): see :func:`peek_event_seq`.
_EVENT_HEAD = b'{"execution_id":"'
_SEQ_KEY = b'","seq":'


def peek_event_seq(frames: Sequence[bytes], execution_id: bytes) -> Optional[int]:
    """The ``seq`` of a buffer-less event, read from its content bytes without a JSON parse, or None.

    Key order in JSON is free (docs/protocol.md), so this only recognises
    the layout the reference worker and server write (``execution_id`` then
    ``seq`` first); anything else gives None and the caller takes the full
    path (verify, decode). A shortcut to skip superseded progress events,
    never a second parser: use the value only once :meth:`Session.is_authentic`
    said the bytes are the signer's.
    """
    if len(frames) != EVENT_FRAMES:
        return None
    content = frames[3]
    n = len(_EVENT_HEAD) + len(execution_id)
    if not (content.startswith(_EVENT_HEAD) and content[len(_EVENT_HEAD):n] == execution_id
            and content[n:n + len(_SEQ_KEY)] == _SEQ_KEY):
        return None
    start = n + len(_SEQ_KEY)
    end = content.find(b",", start, start + 21)
    digits = content[start:end] if end > 0 else b""
    return int(digits) if digits.isdigit() else None  # bytes.isdigit(): ASCII digits only


_LOWER_HEX = frozenset("0123456789abcdef")


def is_execution_id(value: Any) -> bool:
    return isinstance(value, str) and len(value) == EXECUTION_ID_LENGTH and _LOWER_HEX.issuperset(value)


_encode_json = wire_json.encode  # strict, compact JSON (no NaN/Infinity): every header and content
_decode_json = wire_json.decode
_quote = wire_json.quote  # a JSON string, as _encode_json writes it (ensure_ascii)
_MAJOR = PROTOCOL_VERSION.split(".")[0]
_second: tuple[int, str] = (-1, "")  # the last whole second utcnow_iso formatted, and its text


def utcnow_iso() -> str:
    """Now, UTC, as ISO 8601 with microseconds (``2026-11-30T22:54:55.377242+00:00``): what
    ``datetime.now(timezone.utc).isoformat()`` gives, in a third of its time (every message's
    header has one), by formatting each second once. Unlike ``isoformat`` it keeps ``.000000``."""
    global _second
    sec, nanos = divmod(time.time_ns(), 1_000_000_000)
    second = _second  # one tuple, replaced whole: threads never see a second with another's text
    if sec != second[0]:
        second = _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{second[1]}.{nanos // 1000:06d}+00:00"


def encode_header(msg_id: str, msg_type: str, session: str, date: str, version: str,
                  parent_id: Optional[str]) -> bytes:
    """``_encode_json(make_header(...))`` byte for byte, a microsecond sooner: every message has one,
    so its six fields are written in place (each string escaped as the encoder escapes it)."""
    parent = "null" if parent_id is None else _quote(parent_id)
    return (f'{{"msg_id":{_quote(msg_id)},"msg_type":{_quote(msg_type)},"session":{_quote(session)},'
            f'"date":{_quote(date)},"version":{_quote(version)},"parent_id":{parent}}}').encode()


def new_key() -> str:
    """A fresh random signing key (hex, 256 bits)."""
    return os.urandom(32).hex()


#: Buffers are digested in chunks of this size (see :func:`buffer_digest`).
DIGEST_CHUNK = 4 * 1024 * 1024
_PARALLEL_FROM = 4 * DIGEST_CHUNK
#: BLAKE3 hashes a buffer this large with several threads (its own tree). Below, one thread: an
#: upload part (16 MiB) is hashed while the I/O threads move the others, and on 2 cores extra hashing
#: threads only fight them (measured: 0.75-0.95x raw push with one thread, 0.5-0.8x with two).
_BLAKE3_THREADS_FROM = 32 << 20
_digest_pool: Optional[ThreadPoolExecutor] = None

_blake3: Any
try:  # the fast scheme is optional: without the package a peer speaks HMAC-SHA256 only
    import blake3 as _blake3
except ImportError:  # pragma: no cover - blake3 is a dependency; this is for vendored installs
    _blake3 = None


def available_schemes() -> tuple[str, ...]:
    """The signature schemes this process can verify and sign, preferred first."""
    return (BLAKE3, HMAC_SHA256) if _blake3 is not None else (HMAC_SHA256,)


def check_scheme(scheme: Any) -> str:
    if scheme not in available_schemes():
        raise ValueError(f"signature scheme {scheme!r} is not available here; known: {list(available_schemes())}")
    return scheme


def _chunk_digest(view: memoryview) -> bytes:
    return hashlib.sha256(view).digest()


def buffer_digest(buf: Any, scheme: str = HMAC_SHA256, one_thread: bool = False) -> bytes:
    """Digest of one payload buffer under ``scheme`` (32 bytes).

    ``hmac-sha256``: a two-level SHA-256 tree,
    ``SHA256(SHA256(chunk_0) || SHA256(chunk_1) || ...)`` over consecutive
    4 MiB chunks (one chunk, possibly empty, for small buffers); chunks are
    hashed in parallel threads (hashlib releases the GIL).

    ``blake3``: the plain BLAKE3 hash of the buffer (BLAKE3 is a tree
    itself: the package hashes a large buffer with several threads, and a
    receiver of parts can feed them to one hasher in order). ``one_thread``:
    BLAKE3 without helper threads (when the caller keeps the other cores busy).
    """
    global _digest_pool
    view = memoryview(buf).cast("B")
    n = len(view)
    if scheme == BLAKE3:
        assert _blake3 is not None, "blake3 scheme without the blake3 package"
        threads = _blake3.blake3.AUTO if n >= _BLAKE3_THREADS_FROM and not one_thread else 1
        return _blake3.blake3(view, max_threads=threads).digest()
    chunks = [view[i : i + DIGEST_CHUNK] for i in range(0, n, DIGEST_CHUNK)] or [view]
    if n >= _PARALLEL_FROM and (os.cpu_count() or 1) > 1:
        if _digest_pool is None:
            _digest_pool = ThreadPoolExecutor(max_workers=os.cpu_count(), thread_name_prefix="zmqruntime-digest")
        leaves = list(_digest_pool.map(_chunk_digest, chunks))
    else:
        leaves = [_chunk_digest(c) for c in chunks]
    return hashlib.sha256(b"".join(leaves)).digest()


class IncrementalDigest:
    """A buffer's :func:`buffer_digest` fed in consecutive slices (parts as they arrive).

    Under ``hmac-sha256`` every slice but the last must be a multiple of
    :data:`DIGEST_CHUNK` (the leaves of the tree); BLAKE3 takes any split.
    """

    def __init__(self, scheme: str = HMAC_SHA256):
        self.scheme = scheme
        self._leaves: list[bytes] = []
        self._b3 = _blake3.blake3(max_threads=_blake3.blake3.AUTO) if scheme == BLAKE3 and _blake3 else None

    def update(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        if self._b3 is not None:
            self._b3.update(view)
            return
        for start in range(0, len(view), DIGEST_CHUNK):
            self._leaves.append(hashlib.sha256(view[start:start + DIGEST_CHUNK]).digest())

    def digest(self) -> bytes:
        if self._b3 is not None:
            return self._b3.digest()
        return hashlib.sha256(b"".join(self._leaves or [hashlib.sha256(b"").digest()])).digest()


#: BLAKE3's key is 32 bytes: derived from the connection file's key string (its ASCII bytes).
BLAKE3_KEY_CONTEXT = "zmqruntime 1.0 blake3 signature key"


def blake3_key(key: bytes) -> bytes:
    assert _blake3 is not None, "blake3 scheme without the blake3 package"
    return _blake3.blake3(key, derive_key_context=BLAKE3_KEY_CONTEXT).digest()


_length = struct.Struct(">Q").pack  # the 8-byte big-endian lengths of the signed input (a third faster than to_bytes)


def compute_signature(
    key: bytes, topic: bytes, header: bytes, content: bytes, digests: Sequence[bytes], scheme: str = HMAC_SHA256,
    blake3_key_bytes: Optional[bytes] = None,
) -> bytes:
    """The signature (64 lowercase hex ASCII bytes) over len-prefixed topic, header, content, then buffer digests.

    ``hmac-sha256``: HMAC-SHA256 keyed by ``key``. ``blake3``: keyed BLAKE3
    (32-byte output), keyed by :func:`blake3_key` of ``key`` (pass it in
    ``blake3_key_bytes`` to skip deriving it per message).
    """
    signed = b"".join((
        _length(len(topic)), topic,
        _length(len(header)), header,
        _length(len(content)), content,
        _length(len(digests)), *digests,
    ))
    if scheme == BLAKE3:
        assert _blake3 is not None, "blake3 scheme without the blake3 package"
        return _blake3.blake3(signed, key=blake3_key_bytes or blake3_key(key)).digest().hex().encode()
    return hmac.digest(key, signed, "sha256").hex().encode()


def make_header(msg_type: str, session: str, parent_id: Optional[str] = None,
                msg_id: Optional[str] = None, version: str = PROTOCOL_VERSION) -> dict[str, Any]:
    """A message header (see docs/protocol.md, "Header")."""
    return {
        "msg_id": msg_id or new_id(),
        "msg_type": msg_type,
        "session": session,
        "date": utcnow_iso(),
        "version": version,
        "parent_id": parent_id,
    }


@dataclass
class Message:
    """One decoded, verified message."""

    header: dict[str, Any]
    content: dict[str, Any]
    buffers: list[Any] = field(default_factory=list)
    prefix: list[bytes] = field(default_factory=list)
    topic: bytes = b""
    signature: bytes = b""  # the verified hex signature (replay checks key on it)
    scheme: str = HMAC_SHA256  # the signature scheme it came with: a reply uses the same
    packed: bool = False  # whether it came in one head frame: a reply uses the same framing

    @property
    def msg_type(self) -> str:
        return self.header["msg_type"]

    @property
    def msg_id(self) -> str:
        return self.header["msg_id"]

    @property
    def parent_id(self) -> str | None:
        return self.header.get("parent_id")


def pack_frames(frames: Sequence[bytes]) -> bytes:
    """Several small frames as one (4-byte big-endian length before each)."""
    return b"".join(len(f).to_bytes(4, "big") + f for f in frames)


def unpack_frames(data: bytes) -> list[bytes]:
    frames, i = [], 0
    while i < len(data):
        n = int.from_bytes(data[i : i + 4], "big")
        frames.append(data[i + 4 : i + 4 + n])
        i += 4 + n
    return frames


def _bytes(frame: Any) -> bytes:
    """Frame (zmq.Frame, bytes, memoryview) to bytes for small frames."""
    if isinstance(frame, bytes):
        return frame
    data = getattr(frame, "bytes", None)
    if data is not None:
        return data
    return bytes(frame)


def _view(frame: Any) -> memoryview:
    buf = getattr(frame, "buffer", None)
    return buf if buf is not None else memoryview(frame)


class UnknownScheme(ProtocolError):
    """A signature frame whose marker names a scheme this peer does not know.

    Raised before any verification; the server answers it (signed with
    HMAC-SHA256, which every peer reads) so the sender learns why.
    """


def _starts_body(frame: Any) -> bool:
    """A signature frame (70 bytes) or a packed head (74 or more), both ``<ZMQ`` + one character + ``>`` first."""
    n = len(frame)  # bytes, zmq.Frame and memoryview of bytes all have it: identities fail here
    if n != SIGNATURE_FRAME_LEN and n < PACKED_HEAD_MIN:
        return False
    start = frame if isinstance(frame, bytes) else _view(frame)
    return start[:4] == b"<ZMQ" and start[5:6] == b">"


def split_body(frames: Sequence[Any]) -> tuple[list[bytes], list[Any]]:
    """(prefix, body): identities/topic split from the body at the signature frame (or packed head)."""
    for i, frame in enumerate(frames):
        if _starts_body(frame):
            return [_bytes(f) for f in frames[:i]], list(frames[i:])
    raise ProtocolError("malformed", "no <ZMQR> signature frame")


def unpack_body(body: Sequence[Any]) -> tuple[bytes, bytes, bytes, list[Any], bool]:
    """(signature frame, header, content, buffers, packed) of a body that starts at its first frame."""
    head = _bytes(body[0])
    if len(head) == SIGNATURE_FRAME_LEN:
        if len(body) < 3:
            raise ProtocolError("malformed", f"expected signature, header and content frames, got {len(body)} frames")
        return head, _bytes(body[1]), _bytes(body[2]), list(body[3:]), False
    end = PACKED_HEAD_MIN + int.from_bytes(head[SIGNATURE_FRAME_LEN:PACKED_HEAD_MIN], "big")
    if end > len(head):
        raise ProtocolError("malformed", f"packed head of {len(head)} bytes names a header ending at byte {end}")
    return head[:SIGNATURE_FRAME_LEN], head[PACKED_HEAD_MIN:end], head[end:], list(body[1:]), True


class Session:
    """Signs outgoing and verifies incoming messages with one key.

    ``scheme`` is what :meth:`serialize` signs with unless told otherwise;
    :meth:`deserialize` accepts every scheme :func:`available_schemes` lists
    and reports which one a message used (``Message.scheme``).
    ``topic_frames`` tells :meth:`deserialize` how many prefix frames are a
    signed topic (1 on the data channel, 0 on the control channel).
    """

    def __init__(self, key: str | bytes, session_id: str | None = None, scheme: str = HMAC_SHA256,
                 packed: bool = False):
        if isinstance(key, str):
            key = key.encode("ascii")
        if not key:
            raise ValueError("a non-empty signing key is required")
        self.key = key
        self.session_id = session_id or new_id()
        self.scheme = check_scheme(scheme)
        self.packed = packed  # what serialize sends: one head frame instead of three
        self._blake3_key = blake3_key(key) if _blake3 is not None else None

    def sign(self, topic: bytes, header: bytes, content: bytes, digests: Sequence[bytes], scheme: str) -> bytes:
        return compute_signature(self.key, topic, header, content, digests, scheme, self._blake3_key)

    # -- outgoing ---------------------------------------------------------
    def serialize(
        self,
        msg_type: str,
        content: dict[str, Any],
        *,
        parent_id: str | None = None,
        topic: bytes | None = None,
        buffers: Sequence[Any] = (),
        digests: Sequence[bytes] | None = None,
        header: dict[str, Any] | None = None,
        scheme: str | None = None,
        msg_id: str | None = None,
        packed: bool | None = None,
    ) -> list[Any]:
        """Frames ready for ``send_multipart`` (topic first when given).

        ``digests`` may be supplied when the buffers' digests (under
        ``scheme``) are already known (a stored result), so large buffers
        are not hashed again. ``packed``: one head frame instead of three
        (default: the session's ``packed``).
        """
        scheme = scheme or self.scheme
        if header is None:
            header_b = encode_header(msg_id or new_id(), msg_type, self.session_id, utcnow_iso(), PROTOCOL_VERSION,
                                     parent_id)
        else:
            header_b = _encode_json(header).encode()
        content_b = _encode_json(content).encode()  # strict JSON only
        if digests is None:
            digests = [buffer_digest(b, scheme) for b in buffers]
        elif len(digests) != len(buffers):
            raise ValueError("one digest per buffer is required")
        sig = self.sign(topic or b"", header_b, content_b, digests, scheme)
        frames: list[Any] = [topic] if topic is not None else []
        if self.packed if packed is None else packed:
            frames.append(b"".join((SCHEME_MARKERS[scheme], sig, len(header_b).to_bytes(4, "big"), header_b, content_b)))
        else:
            frames += [SCHEME_MARKERS[scheme] + sig, header_b, content_b]
        frames.extend(buffers)
        return frames

    def serialize_request(self, msg_type: str, content: dict[str, Any], buffers: Sequence[Any] = ()) -> tuple[list[Any], str]:
        """Frames of a new request and its ``msg_id`` (to match the reply)."""
        msg_id = new_id()
        return self.serialize(msg_type, content, buffers=buffers, msg_id=msg_id), msg_id

    # -- incoming ---------------------------------------------------------
    def _verify(self, frames: Sequence[Any], topic_frames: int
                ) -> tuple[list[bytes], bytes, bytes, bytes, bytes, list[Any], str, bool]:
        """Split and check the signature: (prefix, topic, sig, header, content, buffers, scheme, packed) or raise."""
        prefix, body = split_body(frames)
        sigframe, header_b, content_b, buffers, packed = unpack_body(body)
        topic = prefix[-1] if topic_frames and prefix else b""
        scheme = _MARKER_SCHEMES.get(sigframe[:len(MARKER)])
        if scheme is None or scheme not in available_schemes():
            raise UnknownScheme("unknown_signature_scheme",
                                f"unknown signature scheme marker {sigframe[:6]!r}: this peer verifies "
                                + ", ".join(f"{SCHEME_MARKERS[n].decode()} ({n})" for n in available_schemes()),
                                _peek_msg_id(header_b))
        sig = sigframe[len(MARKER):]
        digests = [buffer_digest(_view(b), scheme) for b in buffers]
        expected = self.sign(topic, header_b, content_b, digests, scheme)
        if not hmac.compare_digest(sig, expected):
            raise SignatureError("bad_signature", "missing or invalid signature")
        return prefix, topic, sig, header_b, content_b, buffers, scheme, packed

    def is_authentic(self, frames: Sequence[Any], *, topic_frames: int = 0) -> bool:
        """Whether the message is well framed and correctly signed, without decoding it."""
        try:
            self._verify(frames, topic_frames)
        except ProtocolError:
            return False
        return True

    def deserialize(self, frames: Sequence[Any], *, topic_frames: int = 0) -> Message:
        """Verify then decode; raise SignatureError / ProtocolError otherwise."""
        prefix, topic, sig, header_b, content_b, buffers, scheme, packed = self._verify(frames, topic_frames)
        # From here on the message is authentic: errors are worth a reply.
        # UTF-8 decoded here (the protocol's only encoding), so json.loads need not detect one.
        # A UnicodeDecodeError is a ValueError: "not JSON", as any other unreadable frame.
        try:
            header = _decode_json(header_b.decode())
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to parse
            raise ProtocolError("bad_message", f"header is not JSON: {exc}") from None
        msg_id = header.get("msg_id") if isinstance(header, dict) else None
        msg_id = msg_id if isinstance(msg_id, str) else None  # lets the error reply name its request
        try:
            content = _decode_json(content_b.decode())
        except (ValueError, RecursionError) as exc:
            raise ProtocolError("bad_message", f"content is not JSON: {exc}", msg_id) from None
        if not isinstance(header, dict) or not isinstance(content, dict):
            raise ProtocolError("bad_message", "header and content must be JSON objects", msg_id)
        for name in ("msg_id", "msg_type"):
            if not isinstance(header.get(name), str):
                raise ProtocolError("bad_message", f"header field {name!r} must be a string", msg_id)
        version = header.get("version")
        if version != PROTOCOL_VERSION and (not isinstance(version, str) or version.split(".")[0] != _MAJOR):
            raise ProtocolError(
                "unsupported_version",
                f"protocol version {version!r} not supported (server speaks {PROTOCOL_VERSION})", msg_id,
            )
        return Message(header, content, buffers, prefix, topic, sig, scheme, packed)


def _peek_msg_id(header_b: bytes) -> Optional[str]:
    """The ``msg_id`` of a header that could not be verified, only to address an error reply to it."""
    try:
        header = json.loads(header_b)
    except (ValueError, RecursionError):
        return None
    msg_id = header.get("msg_id") if isinstance(header, dict) else None
    return msg_id if isinstance(msg_id, str) else None
