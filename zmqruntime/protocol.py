"""The zmqruntime wire format: message model, signing and framing — no sockets.

Every message, on both channels, is a list of frames::

    [prefix ...] b"<ZMQR>" + signature, header, content [, buffer ...]

* ``prefix``: routing identities added by ROUTER sockets (control channel) or
  the topic (data channel: the execution id). Topics are signed, identities
  are not (they are chosen by ZeroMQ, not by the peer).
* the *signature frame* is the marker ``<ZMQR>`` followed by the signature:
  it both separates the prefix from the body and authenticates it (one frame
  rather than two: every frame costs a measurable ~10 µs per round trip).
* ``signature``: lowercase hex HMAC-SHA256, keyed by the connection file's key,
  over the length-prefixed topic, header and content frames and the digest
  of every buffer (a chunked SHA-256 tree, see :func:`buffer_digest` and
  :func:`compute_signature`). Digesting buffers
  lets the server forward a large result without re-reading it, while every
  byte is still covered by the signature.
* ``header``: UTF-8 JSON object (:class:`Header`).
* ``content``: UTF-8 JSON object, the message's fields.
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional, Sequence

SNDMORE = 2  # zmq.SNDMORE; the protocol module does not import zmq
PROTOCOL_VERSION = "1.0"
MARKER = b"<ZMQR>"
#: Length of the signature frame: marker + 64 hex digits.
SIGNATURE_FRAME_LEN = len(MARKER) + 64
SIGNATURE_SCHEME = "hmac-sha256"

#: Control requests a server understands; replies are ``<type>_reply``.
REQUEST_TYPES = ("ping", "execute", "execute_many", "status", "cancel", "results", "list", "sessions", "reset_session",
                 "shutdown")
#: Data-channel message types. The topic is always ``<execution_id>.<msg_type>``;
#: a client dispatches on the signed header's ``msg_type``.
EVENT_TYPES = ("status", "progress", "progress_batch", "stream", "done")
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


def is_execution_id(value: Any) -> bool:
    return (isinstance(value, str) and len(value) == EXECUTION_ID_LENGTH
            and all(c in "0123456789abcdef" for c in value))


#: Compact, strict JSON (no NaN/Infinity). One encoder for all messages:
#: ``json.dumps`` with arguments builds a new one per call (~1 us each time).
_encode_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def utcnow_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def new_key() -> str:
    """A fresh random signing key (hex, 256 bits)."""
    return os.urandom(32).hex()


#: Buffers are digested in chunks of this size (see :func:`buffer_digest`).
DIGEST_CHUNK = 4 * 1024 * 1024
_PARALLEL_FROM = 4 * DIGEST_CHUNK
_digest_pool: Optional[ThreadPoolExecutor] = None


def _chunk_digest(view: memoryview) -> bytes:
    return hashlib.sha256(view).digest()


def buffer_digest(buf: Any) -> bytes:
    """Digest of one payload buffer: a two-level SHA-256 tree.

    ``SHA256(SHA256(chunk_0) || SHA256(chunk_1) || ...)`` over consecutive
    4 MiB chunks (one chunk, possibly empty, for small buffers). Chunks are
    hashed in parallel threads (hashlib releases the GIL), so verifying a
    256 MiB result takes a fraction of a single-threaded SHA-256 pass.
    """
    global _digest_pool
    view = memoryview(buf).cast("B")
    n = len(view)
    chunks = [view[i : i + DIGEST_CHUNK] for i in range(0, n, DIGEST_CHUNK)] or [view]
    if n >= _PARALLEL_FROM and (os.cpu_count() or 1) > 1:
        if _digest_pool is None:
            _digest_pool = ThreadPoolExecutor(max_workers=os.cpu_count(), thread_name_prefix="zmqruntime-digest")
        leaves = list(_digest_pool.map(_chunk_digest, chunks))
    else:
        leaves = [_chunk_digest(c) for c in chunks]
    return hashlib.sha256(b"".join(leaves)).digest()


def compute_signature(
    key: bytes, topic: bytes, header: bytes, content: bytes, digests: Sequence[bytes]
) -> bytes:
    """HMAC-SHA256 over len-prefixed topic, header, content, then buffer digests."""
    signed = b"".join((
        len(topic).to_bytes(8, "big"), topic,
        len(header).to_bytes(8, "big"), header,
        len(content).to_bytes(8, "big"), content,
        len(digests).to_bytes(8, "big"), *digests,
    ))
    return hmac.digest(key, signed, "sha256").hex().encode("ascii")


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
    signature: bytes = b""  # the verified hex HMAC (replay checks key on it)

    @property
    def msg_type(self) -> str:
        return self.header["msg_type"]

    @property
    def msg_id(self) -> str:
        return self.header["msg_id"]

    @property
    def parent_id(self) -> str | None:
        return self.header.get("parent_id")


#: Frames at least this large are sent zero-copy; smaller ones are cheaper to copy.
ZERO_COPY_THRESHOLD = 64 * 1024


def send_frames(sock: Any, frames: Sequence[Any], flags: int = 0) -> None:
    """send_multipart, but zero-copy only for the frames where it pays off."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        big = not isinstance(frame, bytes) or len(frame) >= ZERO_COPY_THRESHOLD
        sock.send(frame, flags | (SNDMORE if i < last else 0), copy=not big)


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


class Session:
    """Signs outgoing and verifies incoming messages with one key.

    ``topic_frames`` tells :meth:`deserialize` how many prefix frames are a
    signed topic (1 on the data channel, 0 on the control channel).
    """

    def __init__(self, key: str | bytes, session_id: str | None = None):
        if isinstance(key, str):
            key = key.encode("ascii")
        if not key:
            raise ValueError("a non-empty signing key is required")
        self.key = key
        self.session_id = session_id or new_id()

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
    ) -> list[Any]:
        """Frames ready for ``send_multipart`` (topic first when given).

        ``digests`` may be supplied when the buffers' SHA-256 are already
        known (a stored result), so large buffers are not hashed again.
        """
        hdr = header or make_header(msg_type, self.session_id, parent_id)
        header_b = _encode_json(hdr).encode()
        content_b = _encode_json(content).encode()  # strict JSON only
        if digests is None:
            digests = [buffer_digest(b) for b in buffers]
        elif len(digests) != len(buffers):
            raise ValueError("one digest per buffer is required")
        sig = compute_signature(self.key, topic or b"", header_b, content_b, digests)
        frames: list[Any] = [topic] if topic is not None else []
        frames += [MARKER + sig, header_b, content_b]
        frames.extend(buffers)
        return frames

    def serialize_request(self, msg_type: str, content: dict[str, Any], buffers: Sequence[Any] = ()) -> tuple[list[Any], str]:
        """Frames of a new request and its ``msg_id`` (to match the reply)."""
        header = make_header(msg_type, self.session_id)
        return self.serialize(msg_type, content, buffers=buffers, header=header), header["msg_id"]

    # -- incoming ---------------------------------------------------------
    def split(self, frames: Sequence[Any]) -> tuple[list[bytes], list[Any]]:
        """Split identities/topic from the body at the signature frame."""
        for i, frame in enumerate(frames):
            if len(_view(frame)) == SIGNATURE_FRAME_LEN and _bytes(frame).startswith(MARKER):
                return [_bytes(f) for f in frames[:i]], list(frames[i:])
        raise ProtocolError("malformed", "no <ZMQR> signature frame")

    def _verify(self, frames: Sequence[Any], topic_frames: int) -> tuple[list[bytes], bytes, bytes, bytes, bytes, list[Any]]:
        """Split and check the signature: (prefix, topic, sig, header, content, buffers) or raise."""
        prefix, body = self.split(frames)
        if len(body) < 3:
            raise ProtocolError("malformed", f"expected signature, header and content frames, got {len(body)} frames")
        topic = prefix[-1] if topic_frames and prefix else b""
        sig, header_b, content_b = _bytes(body[0])[len(MARKER):], _bytes(body[1]), _bytes(body[2])
        buffers = body[3:]
        digests = [buffer_digest(_view(b)) for b in buffers]
        expected = compute_signature(self.key, topic, header_b, content_b, digests)
        if not hmac.compare_digest(sig, expected):
            raise SignatureError("bad_signature", "missing or invalid signature")
        return prefix, topic, sig, header_b, content_b, buffers

    def is_authentic(self, frames: Sequence[Any], *, topic_frames: int = 0) -> bool:
        """Whether the message is well framed and correctly signed, without decoding it."""
        try:
            self._verify(frames, topic_frames)
        except ProtocolError:
            return False
        return True

    def deserialize(self, frames: Sequence[Any], *, topic_frames: int = 0) -> Message:
        """Verify then decode; raise SignatureError / ProtocolError otherwise."""
        prefix, topic, sig, header_b, content_b, buffers = self._verify(frames, topic_frames)
        # From here on the message is authentic: errors are worth a reply.
        try:
            header = json.loads(header_b)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to parse
            raise ProtocolError("bad_message", f"header is not JSON: {exc}") from None
        msg_id = header.get("msg_id") if isinstance(header, dict) else None
        msg_id = msg_id if isinstance(msg_id, str) else None  # lets the error reply name its request
        try:
            content = json.loads(content_b)
        except (ValueError, RecursionError) as exc:
            raise ProtocolError("bad_message", f"content is not JSON: {exc}", msg_id) from None
        if not isinstance(header, dict) or not isinstance(content, dict):
            raise ProtocolError("bad_message", "header and content must be JSON objects", msg_id)
        for name in ("msg_id", "msg_type"):
            if not isinstance(header.get(name), str):
                raise ProtocolError("bad_message", f"header field {name!r} must be a string", msg_id)
        version = header.get("version")
        if not isinstance(version, str) or version.split(".")[0] != PROTOCOL_VERSION.split(".")[0]:
            raise ProtocolError(
                "unsupported_version",
                f"protocol version {version!r} not supported (server speaks {PROTOCOL_VERSION})", msg_id,
            )
        return Message(header, content, buffers, prefix, topic, sig)
