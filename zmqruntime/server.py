"""ZMQServer: the sockets, the control loop, ping and request dispatch.

One thread runs a ``zmq.Poller`` loop over the control ROUTER (and any
socket a subclass registers), plus a small timer heap. A plain poller is used
rather than a tornado loop because every request is answered inline in
microseconds and nothing here needs coroutines; the loop never blocks on
anything but the poll itself, so no command can wait on a task.

Requests are dispatched to ``handle_<type>`` methods, which return the reply
content (and optionally buffers), or raise :class:`ReplyLater` and
``answer`` the request later. :class:`RequestError` becomes an error
reply with its code; any other exception becomes an ``internal`` error reply
and is logged — the server goes on serving either way. Messages that fail
signature checks are dropped and logged, never answered. A correctly signed
request seen before, or dated too far from the server's clock, is refused
with an error reply and never dispatched (:mod:`.replay`).
"""

from __future__ import annotations

import collections
import heapq
import ipaddress
import itertools
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import zmq
from traitlets import Bool, CaselessStrEnum, Float, Int, Unicode, validate
from traitlets.config import Configurable
from zmq import NOBLOCK

from . import __version__
from . import curve as _curve
from .errors import ServerStartError
from .frames import send_frames
from .limits import FdReserve, RateLimitedLog, raise_fd_limit, recv_bounded
from .polling import SpinBudget, readable, spin_until_readable
from .protocol import (
    BRIEF_PING_FIELDS,
    FRAMINGS,
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    Message,
    ProtocolError,
    Session,
    SignatureError,
    available_schemes,
    new_id,
    new_key,
    split_body,
    unpack_body,
)
from .replay import DEFAULT_MAX_CLOCK_SKEW, DEFAULT_MAX_ENTRIES, ReplayGuard
from .transport import (
    DEFAULT_CONTROL_OFFSET,
    DEFAULT_IP,
    DEFAULT_PORT,
    DEFAULT_TRANSPORT,
    ConnectionInfo,
    connection_file_name,
    make_urls,
    pid_alive,
    read_connection_file,
    runtime_dir,
    write_connection_file,
)
from .zap import IPC_DOMAIN, ZapHandler

log = logging.getLogger("zmqruntime.server")

#: Shortest signing key accepted on a non-loopback interface (a generated key has 64).
MIN_PUBLIC_KEY_CHARS = 32
#: Largest message the data channel reads (a subscription: 1 byte + topic prefix); libzmq
#: drops the connection of a peer that sends more.
MAX_SUBSCRIPTION_BYTES = 1024
#: Subscription messages read per loop turn, and distinct prefixes tracked at most.
SUBSCRIPTIONS_PER_TURN = 1024
MAX_TRACKED_SUBSCRIPTIONS = 65536

Reply = tuple[dict[str, Any], list[Any], Optional[list[bytes]]]


class RequestError(Exception):
    """A request that cannot be served; becomes ``{"ok": false, "error": ...}``."""

    def __init__(self, code: str, message: str, **extra: Any):
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


class ReplyLater(Exception):
    """Raised by a handler that answers later: it kept ``HeldRequest.of(msg)`` and will
    ``answer`` it (an ``execute`` with ``hold``: the reply waits for the outcome)."""


@dataclass(frozen=True)
class HeldRequest:
    """Who asked, and how to sign the answer: what a later reply needs of its request."""

    prefix: list[bytes]
    msg_id: str
    msg_type: str
    scheme: str
    packed: bool = False

    @classmethod
    def of(cls, msg: Message) -> HeldRequest:
        return cls(msg.prefix, msg.msg_id, msg.msg_type, msg.scheme, msg.packed)


class ZMQServer(Configurable):
    """Binds both channels, writes the connection file, serves requests."""

    ip = Unicode(DEFAULT_IP, help="Interface to bind; loopback unless you explicitly choose otherwise.").tag(config=True)
    port = Int(DEFAULT_PORT, help="Data (PUB) port; control port is port + control_port_offset.").tag(config=True)
    control_port_offset = Int(DEFAULT_CONTROL_OFFSET, help="Control port = port + offset.").tag(config=True)
    transport = CaselessStrEnum(["tcp", "ipc"], default_value=DEFAULT_TRANSPORT,
                                help="ipc (default: socket files in the private runtime directory) or tcp "
                                     "(CurveZMQ-encrypted unless curve=False).").tag(config=True)
    name = Unicode("", help="Name of an IPC server (defaults to the port).").tag(config=True)
    connection_file = Unicode("", help="Where to write the connection file (default: runtime dir).").tag(config=True)
    key = Unicode("", help="Signing key; a random one is generated when empty.").tag(config=True)
    max_message_bytes = Int(1 << 30, help="Largest control request accepted (bytes).").tag(config=True)
    max_message_frames = Int(4096, help="Most frames a control request may have (checked before any "
                             "hashing, like max_message_bytes).").tag(config=True)
    pub_hwm = Int(100_000, help="Data-channel send high-water mark (messages per subscriber).").tag(config=True)
    parent_pid = Int(0, help="Child mode: exit when this process dies (0 = persistent).").tag(config=True)
    allow_public_bind = Bool(False, help="Allow binding a non-loopback interface.").tag(config=True)
    curve = Bool(None, allow_none=True, help="Encrypt and authenticate both channels with CurveZMQ "
                 "(default: on for TCP, off for IPC, whose socket files sit in the private runtime "
                 "directory). False on TCP lets any local user read the data channel.").tag(config=True)
    handshake_timeout = Float(5.0, help="Seconds a new connection may take to complete its ZeroMQ handshake "
                              "before it is dropped (bounds idle connections holding descriptors).").tag(config=True)
    max_clock_skew = Float(DEFAULT_MAX_CLOCK_SKEW, help="Requests dated further than this (seconds) from the "
                           "server's clock are refused (replay protection; 0 = no date check).").tag(config=True)
    replay_history = Int(DEFAULT_MAX_ENTRIES, help="Signatures of seen requests remembered at most "
                         "(replay protection).").tag(config=True)
    busy_poll = Float(0.002, help="Longest busy-poll after serving before sleeping (latency vs CPU; 0 = off); "
                                  "shorter, down to none, while messages come further apart.").tag(config=True)

    @validate("max_message_frames", "handshake_timeout")
    def _check_positive(self, proposal: Any) -> Any:
        value = proposal["value"]
        if not value > 0:
            raise ValueError(f"{proposal['trait'].name} must be positive, got {value}")
        return value

    @validate("port")
    def _check_port(self, proposal: Any) -> int:
        port = proposal["value"]
        if not 1 <= port <= 65535:
            raise ValueError(f"port must be between 1 and 65535, got {port}")
        return port

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.session = Session(self.key or new_key())
        self.key = self.session.key.decode()
        self.replay = ReplayGuard(self.max_clock_skew, self.replay_history)
        self.server_id = new_id()[:12]
        self.start_time = time.time()
        self._start_monotonic = time.monotonic()
        self.context: Optional[zmq.Context] = None
        self.control: Optional[zmq.Socket] = None
        self.pub: Optional[zmq.Socket] = None
        self._subscriptions: set[bytes] = set()
        # How many tracked prefixes have each length: wants() tries only those lengths (usually one or two).
        self._prefix_lengths: collections.Counter[int] = collections.Counter()
        self._subscriptions_overflow = False  # too many prefixes to track: publish everything
        self._subscriptions_current = False  # read this loop turn (see wants)
        self.dropped = RateLimitedLog(log)
        self.zap: Optional[ZapHandler] = None
        self.fd_reserve: Optional[FdReserve] = None
        self.poller = zmq.Poller()
        self._handlers: dict[zmq.Socket, Callable[[], None]] = {}
        self._sockets: list[zmq.Socket] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._soon: list[Callable[[], None]] = []
        # callbacks handed over from other threads, and the pipe that wakes the loop for them
        self._from_threads: collections.deque[Callable[[], None]] = collections.deque()
        self._wake_r, self._wake_w = -1, -1
        self._timer_ids = itertools.count()
        self._running = False
        self.connection_path: Optional[Path] = None
        self.info: Optional[ConnectionInfo] = None
        self._ping_identity: Optional[dict[str, Any]] = None
        self._brief_identity: dict[str, Any] = {}

    # -- lifecycle ----------------------------------------------------------
    @property
    def control_port(self) -> int:
        return self.port + self.control_port_offset

    def _default_connection_path(self) -> Path:
        return runtime_dir() / connection_file_name(self.transport, self.port, self.name or None)

    @property
    def uses_curve(self) -> bool:
        return self.transport == "tcp" if self.curve is None else bool(self.curve)

    def bind(self) -> ConnectionInfo:
        """Bind both channels and write the connection file."""
        self._check_public_bind()
        curve_public, curve_secret = _curve.server_keypair() if self.uses_curve else ("", "")  # fails before any socket
        client_public, client_secret = _curve.server_keypair() if self.uses_curve else ("", "")
        old_limit, new_limit = raise_fd_limit()
        if new_limit != old_limit:
            log.info("raised the soft open-file limit from %d to %d", old_limit, new_limit)
        if not 1 <= self.control_port <= 65535:
            raise ServerStartError(f"control port {self.control_port} (port + offset) is out of range")
        data_url, control_url = make_urls(self.transport, self.ip, self.port, self.control_port, self.name or None)
        self.context = zmq.Context()
        self.fd_reserve = FdReserve()
        # Who may connect at all (CURVE client key, IPC peer uid): before any socket binds.
        self.zap = ZapHandler(self.context, client_public)
        # XPUB, not PUB: the same data channel for subscribers, but the server
        # sees the subscriptions, so an event nobody subscribed to is never
        # built, signed or relayed (see ``wants``).
        self.pub = self.context.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.SNDHWM, self.pub_hwm)
        self.pub.setsockopt(zmq.LINGER, 1000)
        self.control = self.context.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.LINGER, 1000)
        self.control.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.control.setsockopt(zmq.MAXMSGSIZE, max(self.max_message_bytes * 2, 1 << 20))
        self.pub.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)  # subscriptions are all it reads
        for sock in (self.pub, self.control):
            sock.setsockopt(zmq.HANDSHAKE_IVL, max(1, int(self.handshake_timeout * 1000)))
            if self.uses_curve:
                _curve.secure_server_socket(sock, curve_secret)
            elif self.transport == "ipc":
                sock.setsockopt(zmq.ZAP_DOMAIN, IPC_DOMAIN)  # ZAP checks the peer's uid
        for sock, url, what in ((self.pub, data_url, "data"), (self.control, control_url, "control")):
            try:
                sock.bind(url)
            except zmq.ZMQError as exc:
                self.close()
                raise ServerStartError(
                    f"cannot bind the {what} channel at {url}: {exc.strerror}. "
                    "Another process holds it; choose another --port (zmqruntime never kills a process it did not start)."
                ) from None
        self.add_socket(self.zap.sock, self.zap.handle)
        self.add_socket(self.control, self._on_control)
        self.add_socket(self.pub, self._read_subscriptions)
        self.info = ConnectionInfo(
            transport=self.transport, ip=self.ip, data_port=self.port, control_port=self.control_port,
            data_url=data_url, control_url=control_url, key=self.key, signature_schemes=list(available_schemes()),
            framings=list(FRAMINGS), pid=os.getpid(),
            start_time=self.start_time, name=self.name, curve_server_key=curve_public,
            curve_client_key=client_public, curve_client_secret=client_secret,
        )
        self.connection_path = Path(self.connection_file) if self.connection_file else self._default_connection_path()
        write_connection_file(self.connection_path, self.info)
        log.info("serving on %s (control) and %s (data); connection file %s", control_url, data_url, self.connection_path)
        return self.info

    def _check_public_bind(self) -> None:
        """Refuse, before any socket exists, a non-loopback bind that was not asked for or is unsafe."""
        if self.transport != "tcp" or _is_loopback(self.ip):
            return
        if not self.allow_public_bind:
            raise ServerStartError(
                f"refusing to bind non-loopback address {self.ip!r}; pass --allow-public-bind to do so on purpose"
            )
        if len(self.key) < MIN_PUBLIC_KEY_CHARS:
            raise ServerStartError(
                f"refusing to bind non-loopback address {self.ip!r} with a {len(self.key)}-character signing key: "
                f"a public server needs a key of at least {MIN_PUBLIC_KEY_CHARS} characters "
                "(leave the key unset to get a random 256-bit one)"
            )
        if not self.uses_curve:
            log.warning("binding %s without --curve: traffic is signed but NOT encrypted; "
                        "prefer an SSH tunnel or --curve", self.ip)

    def add_socket(self, sock: zmq.Socket, handler: Callable[[], None]) -> None:
        self.poller.register(sock, zmq.POLLIN)
        self._handlers[sock] = handler
        self._sockets = [s for s in self._handlers if isinstance(s, zmq.Socket)]  # the spin reads zmq sockets only

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the current request has been answered."""
        self._soon.append(callback)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the server's loop, from any thread (a backend's callbacks)."""
        self._from_threads.append(callback)
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except (BlockingIOError, OSError):  # full pipe: the loop is already woken
                pass

    def _on_wake(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except (BlockingIOError, OSError):
            pass
        while self._from_threads:
            self._soon.append(self._from_threads.popleft())

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_ids), callback))

    def call_every(self, interval: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` every ``interval`` seconds while serving; an exception is
        logged and the next run is still scheduled (a periodic check never stops)."""
        def tick() -> None:
            try:
                callback()
            except Exception:
                log.exception("periodic check %s failed; it runs again in %g s",
                              getattr(callback, "__name__", callback), interval)
            finally:
                if self._running:
                    self.call_later(interval, tick)

        self.call_later(interval, tick)

    def serve_forever(self) -> None:
        if self.control is None:
            self.bind()
        self._running = True
        if self.parent_pid:
            self.call_every(0.5, self._watch_parent)
        self.call_every(self.dropped.interval, self.dropped.flush)  # "N more not logged" without waiting for more
        self._install_signal_handlers()
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self.add_socket(self._wake_r, self._on_wake)  # type: ignore[arg-type]  # zmq polls plain fds too
        self.on_start()
        served = False
        spin = SpinBudget(self.busy_poll)
        try:
            while self._running:
                timeout = 100.0
                if self._timers:
                    timeout = max(0.0, min(timeout, (self._timers[0][0] - time.monotonic()) * 1000))
                ready = None
                if served:
                    spin.idle()
                if self._soon:
                    timeout = 0.0
                elif served:
                    # a timer due sooner (e.g. a done_batch) ends the spin (timeout is its ms)
                    ready = spin_until_readable(self._sockets, min(spin.seconds, timeout / 1000),
                                                self._from_threads)
                    if ready is not None:
                        timeout = 0.0
                served = False
                if not ready:  # else the spin found sockets ready: read those without polling again
                    # whole ms, rounded up: a timer due in 0.4 ms must not make this a busy loop of poll(0)
                    ready = self.poller.poll(math.ceil(timeout))
                if ready:
                    spin.woke()
                self._subscriptions_current = False
                for sock, _ in ready:
                    try:
                        self._handlers[sock]()
                    except Exception:  # a bad message must never take the server down
                        log.exception("handler of %s failed; serving on", sock)
                    served = True
                self._run_soon()
                self._run_timers()
        finally:
            self.on_stop()
            self.close()

    def stop(self) -> None:
        self._running = False

    def _run_soon(self) -> None:
        soon, self._soon = self._soon, []
        for callback in soon:
            try:
                callback()
            except Exception:
                log.exception("deferred callback failed")

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, callback = heapq.heappop(self._timers)
            try:
                callback()
            except Exception:
                log.exception("timer callback failed")

    def _watch_parent(self) -> None:
        if not pid_alive(self.parent_pid):
            log.info("parent process %d is gone; child-mode server exits", self.parent_pid)
            self.stop()

    def _install_signal_handlers(self) -> None:
        def on_signal(signum: int, frame: Any) -> None:
            log.info("signal %d: shutting down", signum)
            self.stop()

        try:
            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
        except ValueError:  # not the main thread (embedded use): rely on shutdown requests
            pass

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        if self.connection_path is not None:
            try:
                # only remove the file if it is still ours
                if self.info and read_connection_file(self.connection_path).pid == os.getpid():
                    self.connection_path.unlink()
            except (OSError, ValueError, ServerStartError):
                pass
        for sock in (self.control, self.pub):
            if sock is not None and not sock.closed:
                sock.close()
        if self.zap is not None:
            self.zap.close()
        if self.fd_reserve is not None:
            self.fd_reserve.close()
        if self.info is not None and self.info.transport == "ipc":
            for url in (self.info.data_url, self.info.control_url):
                try:
                    os.unlink(url[len("ipc://"):])
                except OSError:
                    pass
        if self.context is not None:
            self.context.term()
            self.context = None

    # hooks for subclasses
    def on_start(self) -> None:
        pass

    def on_stop(self) -> None:
        pass

    # -- control channel ----------------------------------------------------
    def _on_control(self) -> None:
        sock = self.control
        assert sock is not None
        # frames: routing identity, signature, header, content, buffers; bytes: + framing slack
        max_frames, max_bytes = self.max_message_frames + 4, self.max_message_bytes + 4096
        # Called when the poll found a request: the first is read without asking again
        # (NOBLOCK all the same); the rest are drained while readable() says so (cheaper
        # than catching zmq.Again), 256 at most: other sockets and timers get a turn.
        try:
            frames, size, complete = recv_bounded(sock, max_frames, max_bytes, NOBLOCK)
        except zmq.Again:
            return
        for turn in range(256):
            if turn:
                frames, size, complete = recv_bounded(sock, max_frames, max_bytes)
            if complete:
                self._handle_request(frames, size)
            else:
                self._refuse_oversized(frames, size > max_bytes)
            if not readable(sock):
                return

    def _refuse_oversized(self, frames: list[Any], too_many_bytes: bool) -> None:
        """A request over the frame-count or size limit, caught before any hashing: a
        ``too_large`` reply if its header names it (checking its signature would mean
        hashing it all), else dropped."""
        what = (f"more than max_message_bytes={self.max_message_bytes} bytes" if too_many_bytes
                else f"more than {self.max_message_frames} frames")
        try:
            ident, body = split_body(frames)
            _, header_b, _, _, packed = unpack_body(body)
            header = json.loads(header_b)
            msg_id, msg_type = header.get("msg_id"), header.get("msg_type")
            if not isinstance(msg_id, str) or not isinstance(msg_type, str):
                raise ValueError(msg_id)
        except (ProtocolError, ValueError, AttributeError, UnicodeDecodeError, RecursionError):
            self.dropped.warning("dropped a control message with %s (not hashed)", what)
            return
        self.dropped.warning("refused a %s request with %s (not hashed)", msg_type[:40], what)
        reply_type = f"{msg_type}_reply" if msg_type in REQUEST_TYPES else "error_reply"
        self._reply(ident, reply_type, msg_id, _error("too_large", f"request with {what}"), packed=packed)

    def _handle_request(self, frames: list[Any], size: int) -> None:
        """Verify, check for replay, dispatch and answer one request of ``size`` bytes."""
        try:
            msg = self.session.deserialize(frames)
        except SignatureError:
            self.dropped.warning("dropped a control message with a missing or bad signature (%d frames)", len(frames))
            return
        except ProtocolError as exc:
            self.dropped.warning("dropped a malformed control message: %s", exc.message)
            if exc.code != "malformed":  # signed (or an unknown scheme's), so worth an answer, in its framing
                ident, body = split_body(frames)
                self._reply(ident, "error_reply", exc.msg_id, _error(exc.code, exc.message), packed=unpack_body(body)[4])
            return
        try:
            self.replay.check(msg.signature, msg.header)
        except ProtocolError as exc:
            log.warning("refused a control message (%s): %s", exc.code, exc.message)
            self._reply(msg.prefix, "error_reply", exc.msg_id, _error(exc.code, exc.message), packed=msg.packed)
            return
        msg_type = msg.msg_type
        reply_type = f"{msg_type}_reply" if msg_type in REQUEST_TYPES else "error_reply"
        buffers: list[Any] = []
        digests: Optional[list[bytes]] = None
        try:
            if size > self.max_message_bytes:
                raise RequestError("too_large", f"request of {size} bytes exceeds max_message_bytes={self.max_message_bytes}")
            if msg_type not in REQUEST_TYPES:
                raise RequestError("unknown_type", f"unknown message type {msg_type!r}; expected one of {', '.join(REQUEST_TYPES)}")
            content, buffers, digests = getattr(self, f"handle_{msg_type}")(msg)
            content = {"ok": True, **content}
        except ReplyLater:  # the handler answers later (``answer``); its deferred work starts now
            self._run_soon()
            return
        except RequestError as exc:
            content = _error(exc.code, exc.message, **exc.extra)
        except Exception as exc:  # a bug must not take the server down
            log.exception("internal error handling %s", msg_type)
            content = _error("internal", f"{type(exc).__name__}: {exc}")
            buffers, digests = [], None
        # Work the handler deferred (an execute's dispatch to a worker) goes out before the
        # reply: the worker starts while the reply is signed and sent. Nothing it starts can
        # be announced before the reply, since this loop handles the worker's answer later.
        self._run_soon()
        try:
            self._reply(msg.prefix, reply_type, msg.msg_id, content, buffers, digests, msg.scheme, msg.packed)
        except (TypeError, ValueError) as exc:  # a reply that is not strict JSON: answer, never die
            log.exception("could not encode the %s reply", msg_type)
            self._reply(msg.prefix, reply_type, msg.msg_id, _error("internal", f"reply not encodable: {exc}"),
                        scheme=msg.scheme, packed=msg.packed)
            return
        if msg_type == "shutdown" and content.get("ok"):
            self.stop()

    def answer(self, held: HeldRequest, content: dict[str, Any], buffers: Sequence[Any] = (),
               digests: Optional[list[bytes]] = None) -> None:
        """The ok reply to a request a handler held (``ReplyLater``)."""
        self._reply(held.prefix, f"{held.msg_type}_reply", held.msg_id, {"ok": True, **content}, list(buffers),
                    digests, held.scheme, held.packed)

    def _reply(self, ident: list[bytes], msg_type: str, parent_id: Optional[str], content: dict[str, Any],
               buffers: list[Any] = (), digests: Optional[list[bytes]] = None,  # type: ignore[assignment]
               scheme: Optional[str] = None, packed: bool = False) -> None:
        """Sign with the request's scheme (``scheme``), else HMAC-SHA256, which every peer reads; frame
        packed when the request was (``packed``), else split, which every peer reads."""
        frames = self.session.serialize(msg_type, content, parent_id=parent_id, buffers=buffers, digests=digests,
                                        scheme=scheme, packed=packed)
        assert self.control is not None  # bound: requests come from it
        send_frames(self.control, ident + frames)

    def publish(self, topic: bytes, msg_type: str, content: dict[str, Any], buffers: list[Any] = (),  # type: ignore[assignment]
                digests: Optional[list[bytes]] = None) -> None:
        """Sign and send an event, unless no subscriber's prefix matches ``topic``."""
        if self.wants(topic):
            self.send_event(topic, msg_type, content, buffers, digests)

    def send_event(self, topic: bytes, msg_type: str, content: dict[str, Any], buffers: Sequence[Any] = (),
                   digests: Optional[list[bytes]] = None) -> None:
        """Sign and send an event whose topic ``wants`` already said yes to (its content built only then)."""
        assert self.pub is not None  # bound: wants() read its subscriptions
        send_frames(self.pub, self.session.serialize(msg_type, content, topic=topic, buffers=buffers, digests=digests))

    # -- data channel subscriptions -------------------------------------------
    def _read_subscriptions(self) -> None:
        """Track the data channel's subscribed prefixes (XPUB reports each
        prefix's first subscribe and last unsubscribe, across subscribers)."""
        sock = self.pub
        assert sock is not None
        subs = self._subscriptions
        for _ in range(SUBSCRIPTIONS_PER_TURN):  # bounded: a flood cannot hold the loop
            if not readable(sock):
                return
            msg = sock.recv()
            prefix = msg[1:]
            if msg[:1] == b"\x01":
                if prefix in subs:
                    continue
                if len(subs) < MAX_TRACKED_SUBSCRIPTIONS:
                    subs.add(prefix)
                    self._prefix_lengths[len(prefix)] += 1
                elif not self._subscriptions_overflow:
                    self._subscriptions_overflow = True
                    log.warning("more than %d distinct subscriptions on the data channel: every event is "
                                "published from now on", MAX_TRACKED_SUBSCRIPTIONS)
            elif msg[:1] == b"\x00" and prefix in subs:
                subs.discard(prefix)
                lengths = self._prefix_lengths
                lengths[len(prefix)] -= 1
                if not lengths[len(prefix)]:
                    del lengths[len(prefix)]

    def wants(self, topic: bytes) -> bool:
        """Would any subscriber receive ``topic``?  (PUB/SUB matching is by prefix.)

        Subscriptions that arrived since the loop turn began are read first
        (once per turn: asking the XPUB socket costs a system call, and an
        execution's events are decided several times a turn), so a subscriber
        loses at most what a late-joining one may (docs/protocol.md §9.4).
        """
        subs = self._current_subscriptions()
        if self._subscriptions_overflow:
            return True
        if not subs:
            return False
        return any(topic[:n] in subs for n in self._prefix_lengths if n <= len(topic))

    def wanted_exactly(self, topic: bytes) -> bool:
        """Has a subscriber asked for ``topic`` itself, not merely for a prefix of it (such as
        everything)?  For messages that repeat what other events already say (a ``done_batch``):
        only those who asked for that form get it."""
        return topic in self._current_subscriptions() or self._subscriptions_overflow

    def _current_subscriptions(self) -> set[bytes]:
        """The subscribed prefixes, with those that arrived since the loop turn began (read once a turn)."""
        if not self._subscriptions_current:
            self._subscriptions_current = True
            self._read_subscriptions()
        return self._subscriptions

    # -- built-in handlers ----------------------------------------------------
    def ping_info(self) -> dict[str, Any]:
        return {}

    def handle_ping(self, msg: Any) -> Reply:
        brief = msg.content.get("brief")
        if brief is not None and not isinstance(brief, bool):
            raise RequestError("bad_request", "'brief' must be true, false or null")
        if self._ping_identity is None:  # what never changes while serving, gathered once
            self._ping_identity = {
                "server_id": self.server_id,
                "pid": os.getpid(),
                "version": __version__,
                "protocol_version": PROTOCOL_VERSION,
                "signature_schemes": list(available_schemes()),
                "framings": list(FRAMINGS),
                "start_time": self.start_time,
                "transport": self.transport,
                "data_url": self.info.data_url if self.info else None,
                "control_url": self.info.control_url if self.info else None,
                "persistent": not self.parent_pid,
            }
            self._brief_identity = {k: self._ping_identity[k] for k in BRIEF_PING_FIELDS}
        uptime = time.monotonic() - self._start_monotonic
        if brief:  # a liveness check: who answers, nothing else (a small reply costs less to sign and read)
            return {**self._brief_identity, "uptime": uptime}, [], None
        return {**self._ping_identity, "uptime": uptime, **self.ping_info()}, [], None

    def handle_shutdown(self, msg: Any) -> Reply:
        return {"server_id": self.server_id}, [], None


def _error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message, **extra}}


def _is_loopback(ip: str) -> bool:
    if ip == "localhost":
        return True
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False
