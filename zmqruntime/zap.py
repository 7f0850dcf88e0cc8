"""Who may connect at all: a ZAP handler (ZeroMQ RFC 27) on the server's loop.

libzmq asks the handler bound at ``inproc://zeromq.zap.01`` in the server's
context before a peer's connection is accepted:

* every CURVE socket: only the client public key from the connection file is
  let in, so a peer without the file cannot complete the handshake, and so
  cannot even subscribe (it never learns a topic, let alone an event);
* sockets given :data:`IPC_DOMAIN` (IPC endpoints, the worker link), which
  use the NULL mechanism: libzmq passes the peer's ``SO_PEERCRED``
  credentials as ``<host>:<uid>:<gid>:<pid>`` in the request's address, and
  only our own uid is let in. The 0700 runtime directory already keeps other
  users out; this makes a misplaced endpoint fail closed as well.

The handler runs on the server's own loop: a request costs a few
microseconds and only happens once per connection.
"""

from __future__ import annotations

import hmac
import logging
import os
from typing import Callable

import zmq
from zmq.utils import z85

from .limits import RateLimitedLog

log = logging.getLogger("zmqruntime.server")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
IPC_DOMAIN = b"zmqruntime-ipc"


def peer_credentials(address: bytes) -> tuple[int | None, int | None]:
    """(uid, pid) from libzmq's IPC peer address ``host:uid:gid:pid``, or Nones."""
    parts = address.rsplit(b":", 3)
    if len(parts) != 4:
        return None, None
    try:
        return int(parts[1]), int(parts[3])
    except ValueError:
        return None, None


class ZapHandler:
    """Answers ZAP requests: CURVE by client key, IPC by peer uid."""

    def __init__(self, context: zmq.Context, curve_client_key: str = ""):
        self.sock = context.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)
        self.client_key = z85.decode(curve_client_key.encode("ascii")) if curve_client_key else b""
        self.uid = os.geteuid()
        self.refusals = RateLimitedLog(log)
        #: Further IPC domains whose peers must also pass a pid check (the worker link: our workers only).
        self.pid_checks: dict[bytes, Callable[[int], bool]] = {}

    def decide(self, domain: bytes, address: bytes, mechanism: bytes, credentials: list[bytes]) -> tuple[bool, str]:
        if mechanism == b"CURVE":
            ok = bool(self.client_key) and len(credentials) == 1 and hmac.compare_digest(credentials[0], self.client_key)
            return ok, "OK" if ok else "unknown client key"
        if mechanism == b"NULL" and (domain == IPC_DOMAIN or domain in self.pid_checks):
            uid, pid = peer_credentials(address)
            if uid != self.uid:
                return False, f"peer uid {uid} is not the server's"
            check = self.pid_checks.get(domain)
            if check is not None and (pid is None or not check(pid)):
                return False, f"peer pid {pid} is not one this server started"
            return True, "OK"
        return False, f"mechanism {mechanism.decode(errors='replace')} not accepted"

    def handle(self) -> None:
        sock = self.sock
        for _ in range(64):  # a bounded batch per loop turn
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return
            frames = sock.recv_multipart()
            if len(frames) < 6:  # libzmq always sends at least six; answer anyway to keep REP in step
                sock.send_multipart([b"1.0", frames[1] if len(frames) > 1 else b"", b"400", b"bad request", b"", b""])
                continue
            _version, request_id, domain, address, _identity, mechanism = frames[:6]
            ok, why = self.decide(domain, address, mechanism, frames[6:])
            if not ok:
                self.refusals.warning("refused a %s connection from %s: %s", mechanism.decode(errors="replace"),
                                      address.decode(errors="replace"), why)
            sock.send_multipart([b"1.0", request_id, b"200" if ok else b"400", why.encode(), b"", b""])

    def close(self) -> None:
        self.sock.close(linger=0)
