"""CurveZMQ encryption and client authentication of both channels.

On by default for TCP (``--no-curve`` turns it off), off for IPC (the 0700
runtime directory already keeps other users away from the socket files;
``--curve`` turns it on there too). HMAC signing authenticates every message
but encrypts nothing, and on a shared machine any local user can connect to
a loopback port: without CURVE they would read every event.

At start the server makes two fresh keypairs: its own (the secret half never
leaves its memory) and one for its clients. The connection file (mode 0600)
carries the server's public key (``curve_server_key``) and the client
keypair (``curve_client_key``, ``curve_client_secret``). The server's ZAP
handler (:mod:`.zap`) admits only that client key, so a peer without the
connection file cannot complete the handshake: it cannot subscribe, send a
request, or learn a topic. A client that finds ``curve_server_key`` connects
every socket as a CURVE client, which also proves the server: a process
that binds the port after the server died cannot complete the handshake
without the server's secret key, so it never receives a request.
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

    ``info`` is a ConnectionInfo; the client keypair comes from it (the one the
    server's ZAP handler admits); a file without one gets a fresh pair per socket.
    """
    server_key = getattr(info, "curve_server_key", "")
    if server_key:
        if getattr(info, "curve_client_secret", ""):
            public, secret = info.curve_client_key.encode("ascii"), info.curve_client_secret.encode("ascii")
        else:
            public, secret = zmq.curve_keypair()
        sock.curve_serverkey = server_key.encode("ascii")
        sock.curve_publickey = public
        sock.curve_secretkey = secret
    return sock


def subscriber_socket(context: zmq.Context, info: Any, rcvhwm: int) -> zmq.Socket:
    """A SUB socket connected to ``info``'s data channel (CURVE when the server encrypts).

    Its send high-water mark is unlimited: subscriptions travel to the server as
    messages, and past the default of 1,000 in flight libzmq drops the rest
    silently, so a client that subscribed to 2,000 pipelined executions at once
    never got half of their 'done' events. The client bounds its own subscriptions.
    """
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.SNDHWM, 0)
    secure_client_socket(sock, info)
    sock.connect(info.data_url)
    return sock
