"""ZMQClient / AsyncZMQClient: signed requests with timeouts that never wedge.

Why DEALER and not REQ: a REQ socket whose reply is lost stays stuck in the
"waiting for reply" state. Each request here carries a ``msg_id``; replies
are matched on ``parent_id`` and late replies to abandoned requests are
dropped. After a timeout the socket is closed with LINGER 0 and replaced,
so a request queued for a dead server can never reach the next server that
binds the port.

The sync client keeps one socket per thread (zmq sockets are not
thread-safe), so several threads can use one client at once — for example
the notebook's main thread waiting while a widget callback cancels on
another thread. Sockets of threads that have ended are closed when the next
thread opens one, so a long-lived client used from many short-lived threads
holds sockets (and file descriptors) for live threads only. The asyncio
client multiplexes coroutines on one socket.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any, Optional, Sequence

import zmq

from .curve import secure_client_socket
from .errors import RemoteError, ServerUnavailable, error_for_code
from .frames import recv_frames, send_frames
from .loop_reader import LoopReader, send_when_possible
from .polling import SpinBudget, spin_until_readable
from .protocol import BRIEF_PING, Message, ProtocolError, Session
from .transport import ConnectionInfo, choose_packed, choose_scheme

DEFAULT_TIMEOUT = 10.0
#: How long (s) the blocking client busy-polls for a reply before it sleeps (``ZMQClient(busy_poll=)``).
DEFAULT_BUSY_POLL = 0.001
#: The requests it busy-polls for: none starts work on a worker, whose core a spin would take
#: (``execute`` may even hold its reply until the task is done; ``cancel`` wakes the worker).
SPIN_REQUESTS = frozenset({"ping", "status", "list", "sessions", "results"})


def check_timeout(timeout: Any, name: str = "timeout", allow_none: bool = True) -> Optional[float]:
    if timeout is None and allow_none:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"{name} must be a positive finite number{' or None' if allow_none else ''}, got {timeout!r}")
    return float(timeout)


def positive_timeout(timeout: Any, name: str = "timeout") -> float:
    """``check_timeout`` for a value that may not be None: always a float."""
    checked = check_timeout(timeout, name, allow_none=False)
    assert checked is not None  # allow_none=False
    return checked


def reply_content(msg: Message) -> dict[str, Any]:
    """The reply's content, or the matching RemoteError raised."""
    return ok_or_raise(msg.content)


def ok_or_raise(content: dict[str, Any]) -> dict[str, Any]:
    """``content`` when it says ``ok``, else its error raised as the matching RemoteError."""
    if content.get("ok"):
        return content
    error = content.get("error") or {}
    code = error.get("code", "unknown")
    raise error_for_code(code)(code, error.get("message", "error reply without a message"), error)


def needs_proof(info: ConnectionInfo) -> bool:
    """Plaintext TCP: nothing proves who listens on the port (another local user may
    bind it once the server is gone), so a socket's first request other than ``ping``
    waits for a signed ``ping`` reply, and sockets never reconnect by themselves.
    With CURVE the handshake proves the server's key; IPC endpoints sit in the
    private runtime directory."""
    return info.transport == "tcp" and not getattr(info, "curve_server_key", "")


def lone_thread() -> bool:
    """Whether this is the process's only Python thread: a busy-poll holds the GIL, so it
    spins only while no other thread could want it."""
    return threading.active_count() == 1


class _BaseClient:
    def __init__(self, info: ConnectionInfo, timeout: float = DEFAULT_TIMEOUT):
        self.info = info
        self.timeout: float = positive_timeout(timeout)
        self.session = Session(info.key, scheme=choose_scheme(info), packed=choose_packed(info))
        self.needs_proof = needs_proof(info)

    def _configure(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        if self.needs_proof:  # a new peer on this endpoint must prove the key again: on a new socket
            sock.setsockopt(zmq.RECONNECT_IVL, -1)
        secure_client_socket(sock, self.info)

    def _unavailable(self, timeout: float, what: str) -> ServerUnavailable:
        return ServerUnavailable(
            f"no reply to {what!r} from the zmqruntime server at {self.info.control_url} within {timeout:g} s "
            f"(server pid {self.info.pid or '?'}): is it running?"
        )


class ZMQClient(_BaseClient):
    """Blocking requests, safe to use from several threads.

    The reply to a request in :data:`SPIN_REQUESTS` is busy-polled for, up to
    ``busy_poll`` seconds (less while replies come later than a quarter of it:
    :class:`~zmqruntime.polling.SpinBudget`), before the thread sleeps in
    ``poll``: a process woken from ``poll`` handles the reply at a fraction of its
    speed on this class of machine (``ping`` 99-106 µs sleeping, 85-93 spinning).
    Only in a process with one Python thread: the spin holds the GIL, and with
    four threads sharing a client it cut their ``status`` requests from 8,700 to
    3,700-4,300 per second. ``busy_poll=0`` never spins.
    """

    def __init__(self, info: ConnectionInfo, timeout: float = DEFAULT_TIMEOUT, context: Optional[zmq.Context] = None,
                 busy_poll: float = DEFAULT_BUSY_POLL):
        super().__init__(info, timeout)
        if isinstance(busy_poll, bool) or not isinstance(busy_poll, (int, float)) or not 0 <= busy_poll <= 1:
            raise ValueError(f"busy_poll must be a number of seconds from 0 to 1, got {busy_poll!r}")
        self.busy_poll = float(busy_poll)
        self.context = context or zmq.Context.instance()
        self._local = threading.local()
        self._sockets: dict[zmq.Socket, threading.Thread] = {}  # socket -> the thread that uses it
        self._lock = threading.Lock()
        self.closed = False

    def adopt(self, sock: zmq.Socket) -> None:
        """Track a socket of the calling thread (closed by close(), or once the thread has ended)."""
        with self._lock:
            dead = [s for s, owner in self._sockets.items() if not owner.is_alive()]
            for s in dead:
                del self._sockets[s]
                s.close(linger=0)
            self._sockets[sock] = threading.current_thread()

    def _socket(self) -> zmq.Socket:
        if self.closed:
            raise ServerUnavailable("this client is closed")
        sock = getattr(self._local, "sock", None)
        if sock is None or sock.closed:
            sock = self.context.socket(zmq.DEALER)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            self._configure(sock)
            sock.connect(self.info.control_url)
            self._local.proven = False
            self._local.sndtimeo = None
            self._local.sock = sock
            self._local.poller = zmq.Poller()
            self._local.poller.register(sock, zmq.POLLIN)
            self._local.spin = SpinBudget(self.busy_poll)
            self.adopt(sock)
        return sock

    def _send_timeout(self, sock: zmq.Socket, timeout: float) -> None:
        """SNDTIMEO for this request: set only when it changes (most requests share the default)."""
        millis = max(1, int(timeout * 1000))
        if self._local.sndtimeo != millis:
            sock.setsockopt(zmq.SNDTIMEO, millis)
            self._local.sndtimeo = millis

    def _discard_socket(self) -> None:
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            with self._lock:
                self._sockets.pop(sock, None)
            sock.close(linger=0)
            self._local.sock = None

    def request(self, msg_type: str, content: dict[str, Any], buffers: Sequence[Any] = (),
                timeout: Optional[float] = None, copy: bool = True) -> Message:
        """Send one request, return its verified reply message (ok or not)."""
        timeout = self.timeout if timeout is None else positive_timeout(timeout)
        deadline = time.monotonic() + timeout
        sock = self._socket()
        if self.needs_proof and not self._local.proven and msg_type != "ping":
            self.request("ping", BRIEF_PING, timeout=timeout)  # a signed reply: the peer holds the key
            self._local.proven = True
            timeout = max(0.001, deadline - time.monotonic())
        frames, msg_id = self.session.serialize_request(msg_type, content, buffers)
        self._send_timeout(sock, timeout)
        try:
            send_frames(sock, frames)
        except zmq.Again:
            self._discard_socket()
            raise self._unavailable(timeout, msg_type) from None
        spin: Optional[SpinBudget] = (self._local.spin if self.busy_poll and msg_type in SPIN_REQUESTS
                                      and lone_thread() else None)
        sent = time.perf_counter() if spin is not None else 0.0
        while True:
            remaining = deadline - time.monotonic()
            ready = None
            if spin is not None and spin.seconds:
                ready = spin_until_readable((sock,), min(spin.seconds, remaining))
            if not ready and (remaining <= 0 or not self._local.poller.poll(remaining * 1000)):
                self._discard_socket()
                raise self._unavailable(timeout, msg_type)
            if spin is not None:  # the first reply's delay sets the next spin (spun for or not)
                spin.observe(time.perf_counter() - sent)
                spin = None
            reply = recv_frames(sock, copy=copy)
            try:
                msg = self.session.deserialize(reply)
            except ProtocolError:
                continue  # unsigned / foreign frames are dropped
            if msg.parent_id == msg_id:
                return msg

    def request_window(self, msg_type: str, items: Sequence[tuple[dict[str, Any], Sequence[Any]]], window: int,
                       timeout: Optional[float] = None) -> list[Message]:
        """Several requests of one type, at most ``window`` unanswered at a time: their replies, in order.

        ``timeout`` bounds the wait for each next reply (a long upload takes
        as long as it takes while replies keep coming). After an error reply
        no further request is sent: the replies then stop at the ones in flight.
        """
        timeout = self.timeout if timeout is None else positive_timeout(timeout)
        sock = self._socket()
        if self.needs_proof and not self._local.proven:
            self.request("ping", BRIEF_PING, timeout=timeout)
            self._local.proven = True
        replies: list[Optional[Message]] = [None] * len(items)
        pending: dict[str, int] = {}
        sent = 0
        self._send_timeout(sock, timeout)
        deadline = time.monotonic() + timeout
        failed = False
        while (sent < len(items) and not failed) or pending:
            while sent < len(items) and not failed and len(pending) < window:
                frames, msg_id = self.session.serialize_request(msg_type, *items[sent])
                try:
                    send_frames(sock, frames)
                except zmq.Again:
                    self._discard_socket()
                    raise self._unavailable(timeout, msg_type) from None
                pending[msg_id] = sent
                sent += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._local.poller.poll(remaining * 1000):
                self._discard_socket()
                raise self._unavailable(timeout, msg_type)
            try:
                msg = self.session.deserialize(recv_frames(sock, copy=True))
            except ProtocolError:
                continue
            index = pending.pop(msg.parent_id or "", None)
            if index is not None:
                replies[index] = msg
                failed = failed or not msg.content.get("ok")
                deadline = time.monotonic() + timeout
        return [r for r in replies if r is not None]

    def call(self, msg_type: str, content: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return reply_content(self.request(msg_type, content, **kwargs))

    def close(self) -> None:
        self.closed = True
        with self._lock:
            for sock in self._sockets:
                sock.close(linger=0)
            self._sockets.clear()


class AsyncZMQClient(_BaseClient):
    """asyncio requests on one socket; a reader task routes replies to futures."""

    def __init__(self, info: ConnectionInfo, timeout: float = DEFAULT_TIMEOUT):
        super().__init__(info, timeout)
        self.context: zmq.Context = zmq.Context.instance()
        self._sock: Optional[zmq.Socket] = None
        self._pending: dict[str, asyncio.Future] = {}
        self._reader: Optional[LoopReader] = None
        self._proven: Optional[zmq.Socket] = None  # the socket whose peer answered a signed ping
        self.closed = False

    def _socket(self) -> zmq.Socket:
        if self.closed:
            raise ServerUnavailable("this client is closed")
        if self._sock is None:
            self._sock = self.context.socket(zmq.DEALER)
            # IMMEDIATE as in the blocking client: nothing queued toward a server that is not
            # connected; the send then waits for one, so request() bounds it by its timeout.
            self._sock.setsockopt(zmq.IMMEDIATE, 1)
            self._configure(self._sock)
            self._sock.connect(self.info.control_url)
            self._reader = LoopReader(self._sock, self._on_reply)
        elif self._reader is not None and not self._reader.on_current_loop():
            # Used again from a new event loop (another asyncio.run): read there. Requests
            # left waiting on the old loop can never complete; they are forgotten.
            self._reader.detach()
            self._pending = {k: f for k, f in self._pending.items() if f.get_loop() is asyncio.get_running_loop()}
            self._reader = LoopReader(self._sock, self._on_reply)
        return self._sock

    def _on_reply(self, frames: list[Any]) -> None:
        try:
            msg = self.session.deserialize(frames)
        except ProtocolError:
            return  # unsigned / foreign frames are dropped
        fut = self._pending.pop(msg.parent_id or "", None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def _reset(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        elif self._sock is not None:
            self._sock.close(linger=0)
        self._sock = None

    async def request(self, msg_type: str, content: dict[str, Any], buffers: Sequence[Any] = (),
                      timeout: Optional[float] = None) -> Message:
        timeout = self.timeout if timeout is None else check_timeout(timeout, allow_none=False)
        assert timeout is not None
        if self.needs_proof and msg_type != "ping" and self._proven is not self._socket():
            sock = self._socket()
            started = time.monotonic()
            await self.request("ping", BRIEF_PING, timeout=timeout)  # a signed reply: the peer holds the key
            self._proven = sock
            timeout = max(0.001, timeout - (time.monotonic() - started))
        frames, msg_id = self.session.serialize_request(msg_type, content, buffers)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._pending[msg_id] = fut
        # One timer bounds the send (it waits for a connected server: IMMEDIATE) and the reply.
        timer = loop.call_later(timeout, _expire, fut)
        try:
            sock = self._socket()
            await send_when_possible(sock, frames, send_frames, until=fut)
            if self._reader is not None:
                self._reader.poke()  # the send may have taken the edge of a reply that arrived meanwhile
            return await fut
        except asyncio.TimeoutError:
            self._pending.pop(msg_id, None)
            # A fresh socket drops whatever is still queued for a server that may be gone, but
            # it would also lose the replies of the other requests in flight: only when none are.
            if not self._pending:
                self._reset()
            raise self._unavailable(timeout, msg_type) from None
        finally:
            timer.cancel()
            self._pending.pop(msg_id, None)

    async def call(self, msg_type: str, content: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return reply_content(await self.request(msg_type, content, **kwargs))

    def close(self) -> None:
        self.closed = True
        self._reset()
        for fut in self._pending.values():
            fut.cancel()
        self._pending.clear()


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(asyncio.TimeoutError())


__all__ = ["ZMQClient", "AsyncZMQClient", "RemoteError", "ServerUnavailable", "check_timeout", "ok_or_raise",
           "reply_content"]
