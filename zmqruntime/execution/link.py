"""The server end of the worker link, made safe: who may connect, what is read.

The link is a ROUTER on an IPC endpoint inside the runtime directory, which
:func:`~zmqruntime.transport.runtime_dir` has verified is ours and 0700, so
no other user can reach the socket file. On top of that the ROUTER asks the
server's ZAP handler (:mod:`zmqruntime.zap`), which admits only peers whose
``SO_PEERCRED`` uid is ours, and only messages from workers the pool started
(by their random routing id) are acted on.

A message that does not have the link's shape (a routing id that is not
ASCII, a missing kind frame, an event that is not exactly one frame) is
dropped and logged at a bounded rate, never raised into the server's loop.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import zmq

from ..limits import RateLimitedLog
from ..zap import IPC_DOMAIN

log = logging.getLogger("zmqruntime.execution")
_dropped = RateLimitedLog(log)

KIND_EVENT = b"E"
KIND_CONTROL = b"M"


def secure_worker_router(sock: zmq.Socket) -> None:
    """Before binding: let only our own uid connect (ZAP checks the peer's credentials)."""
    sock.setsockopt(zmq.ZAP_DOMAIN, IPC_DOMAIN)
    sock.setsockopt(zmq.HANDSHAKE_IVL, 5000)


def _drain(sock: zmq.Socket) -> None:
    while sock.getsockopt(zmq.RCVMORE):
        sock.recv(copy=False)


def read_worker_message(sock: zmq.Socket) -> Optional[tuple[str, bytes, list[Any]]]:
    """``(worker_id, kind, rest)`` of one message, or None if it was malformed (dropped).

    An event's ``rest`` is ``[packed bytes]``; a control message's is its
    zero-copy frames (JSON, then result buffers).
    """
    ident = sock.recv()
    if not sock.getsockopt(zmq.RCVMORE):
        _dropped.warning("dropped a worker-link message of one frame")
        return None
    kind = sock.recv()
    try:
        worker_id = ident.decode("ascii")
    except UnicodeDecodeError:
        _drain(sock)
        _dropped.warning("dropped a worker-link message whose routing id is not ASCII")
        return None
    if kind == KIND_EVENT:
        if not sock.getsockopt(zmq.RCVMORE):
            _dropped.warning("dropped an event from %s without its payload", worker_id[:40])
            return None
        payload = sock.recv()
        if sock.getsockopt(zmq.RCVMORE):
            _drain(sock)
            _dropped.warning("dropped an event from %s with extra frames", worker_id[:40])
            return None
        return worker_id, kind, [payload]
    if kind == KIND_CONTROL and sock.getsockopt(zmq.RCVMORE):
        return worker_id, kind, sock.recv_multipart(copy=False)
    _drain(sock)
    _dropped.warning("dropped a worker-link message of unknown kind %r from %s", kind[:8], worker_id[:40])
    return None
