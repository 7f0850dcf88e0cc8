"""Optional CurveZMQ encryption of both channels (``zmqruntime serve --curve``).

HMAC signing authenticates every message but encrypts nothing. For use
across a network the server can also turn on CurveZMQ: it makes a fresh
keypair at start, sets ``curve_server`` on its control ROUTER and data PUB,
and writes the *public* key (Z85) into the connection file as
``curve_server_key``. A client that finds that field connects every socket
as a CURVE client with an ephemeral keypair of its own; one that does not
(an old client, a plain socket) cannot complete the handshake and gets
nothing, not even the event topics.

CURVE here is encryption only: no ZAP handler is installed, so any client
knowing the server's public key may connect, and authentication stays the
HMAC key's job. The server's secret key never leaves its memory: the
connection file, which may be copied to remote machines, carries only what
clients need.
"""

from __future__ import annotations

from typing import Any

import zmq

from .errors import ServerStartError


def available() -> bool:
    """Was libzmq built with CURVE (libsodium or tweetnacl)?"""
    return bool(zmq.has("curve"))


def server_keypair() -> tuple[str, str]:
    """A fresh (public, secret) Z85 keypair, or ServerStartError if CURVE is missing."""
    if not available():
        raise ServerStartError(f"--curve needs a libzmq built with CURVE support; this one "
                               f"({zmq.zmq_version()}) has none")
    public, secret = zmq.curve_keypair()
    return public.decode("ascii"), secret.decode("ascii")


def secure_server_socket(sock: zmq.Socket, secret_key: str) -> None:
    """Make ``sock`` a CURVE server (before it binds)."""
    sock.curve_secretkey = secret_key.encode("ascii")
    sock.curve_server = True


def secure_client_socket(sock: zmq.Socket, info: Any) -> zmq.Socket:
    """Make ``sock`` a CURVE client if ``info`` names a server key (before it connects).

    ``info`` is a ConnectionInfo; a fresh client keypair is made per socket
    (the server authenticates no client key, so nothing is gained by reuse).
    """
    server_key = getattr(info, "curve_server_key", "")
    if server_key:
        public, secret = zmq.curve_keypair()
        sock.curve_serverkey = server_key.encode("ascii")
        sock.curve_publickey = public
        sock.curve_secretkey = secret
    return sock
