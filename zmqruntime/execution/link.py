"""The server end of the worker link, made safe: who may connect, what is read.

Each worker *binds* its DEALER on an IPC endpoint of its own inside the
runtime directory (verified ours and 0700 by
:func:`~zmqruntime.transport.runtime_dir`), and the server's ROUTER
*connects* to it. So the server process has no IPC listener for the link:
libzmq (4.3) aborts the whole process when an IPC listener's ``accept``
fails with EMFILE, which a flood of TCP connections would otherwise turn
into a crash at the next worker respawn. A connecter simply retries.

Each connection is checked by the server's ZAP handler
(:mod:`zmqruntime.zap`): the peer's ``SO_PEERCRED`` uid must be ours and its
pid one of the workers the pool started. Only messages from known routing
ids are acted on.

A message that does not have the link's shape (a routing id that is not
ASCII, a missing kind frame, an event that is not exactly one frame) is
dropped and logged at a bounded rate, never raised into the server's loop.

A control message's JSON goes through :mod:`zmqruntime.wire_json`'s C
encoder and scanner (:func:`encode_message`, :func:`decode_message`): two
of them per execution on each side, where ``json.dumps`` / ``json.loads``
cost 1.5-2 µs more each in a tight loop (4 and 5.5 µs against 2.1 and 3.7 to
encode a ``run`` and a ``finished`` message, 3.5 and 5.9 against 1.7 and 5.1
to decode them).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import zmq

from .. import wire_json
from ..frames import drop_rest, recv_frame, recv_frames
from ..limits import RateLimitedLog

log = logging.getLogger("zmqruntime.execution")
_dropped = RateLimitedLog(log)

KIND_EVENT = b"E"
KIND_CONTROL = b"M"


WORKER_DOMAIN = b"zmqruntime-workers"


def encode_message(msg: dict[str, Any]) -> bytes:
    """A control message's JSON frame (NaN and infinity allowed, as ``json.dumps`` allows them)."""
    return wire_json.encode_lenient(msg).encode()


def decode_message(data: bytes) -> Any:
    """A control message's JSON frame read back (``ValueError`` when it is not JSON, not UTF-8, or nested too deep)."""
    try:
        return wire_json.decode(data.decode())
    except RecursionError:
        raise ValueError("JSON nested too deep") from None


def secure_worker_router(sock: zmq.Socket, zap: Any, is_worker_pid: Callable[[int], bool]) -> None:
    """Before connecting: each peer must be our uid and one of our workers' pids (checked by ZAP)."""
    if zap is not None:
        zap.pid_checks[WORKER_DOMAIN] = is_worker_pid
        sock.setsockopt(zmq.ZAP_DOMAIN, WORKER_DOMAIN)
    sock.setsockopt(zmq.HANDSHAKE_IVL, 5000)
    sock.setsockopt(zmq.RECONNECT_IVL, 5)  # a new worker binds a moment after it is started


def forget_endpoint(sock: zmq.Socket, url: str) -> None:
    """Stop connecting to a dead worker's endpoint and remove its socket file."""
    try:
        sock.disconnect(url)
    except zmq.ZMQError:
        pass
    try:
        os.unlink(url[len("ipc://"):])
    except OSError:
        pass


def read_worker_message(sock: zmq.Socket) -> tuple[str, bytes, list[Any]] | None:
    """``(worker_id, kind, rest)`` of one message, or None if it was malformed (dropped).

    An event's ``rest`` is ``[packed bytes]``; a control message's is its
    zero-copy frames (JSON, then result buffers).
    """
    ident = recv_frame(sock)
    if not ident.more:
        _dropped.warning("dropped a worker-link message of one frame")
        return None
    kind_frame = recv_frame(sock)
    kind = kind_frame.bytes
    try:
        worker_id = ident.bytes.decode("ascii")
    except UnicodeDecodeError:
        drop_rest(sock, kind_frame)
        _dropped.warning("dropped a worker-link message whose routing id is not ASCII")
        return None
    if kind == KIND_EVENT:
        if not kind_frame.more:
            _dropped.warning("dropped an event from %s without its payload", worker_id[:40])
            return None
        payload = recv_frame(sock)
        if payload.more:
            drop_rest(sock, payload)
            _dropped.warning("dropped an event from %s with extra frames", worker_id[:40])
            return None
        return worker_id, kind, [payload.bytes]
    if kind == KIND_CONTROL and kind_frame.more:
        return worker_id, kind, recv_frames(sock)
    drop_rest(sock, kind_frame)
    _dropped.warning("dropped a worker-link message of unknown kind %r from %s", kind[:8], worker_id[:40])
    return None
