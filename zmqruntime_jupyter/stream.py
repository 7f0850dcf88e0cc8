"""Getting data-channel events into the kernel: the ZMQStream, the pump, coalescing.

Two ways to consume events, because of one hard fact: callbacks registered
on the kernel's IO loop (a ``ZMQStream``) only fire while the kernel is idle
or awaiting, never while a synchronous cell runs.

* :class:`EventStream` — one SUB socket per server, wrapped in a
  ``zmq.eventloop.zmqstream.ZMQStream`` on the kernel's tornado IOLoop,
  subscribed to the topic (execution id) of every execution the notebook
  follows. This drives the non-blocking ``%%zmqexec`` panels.
* :func:`pump` — a private SUB socket polled *inside* a running cell
  (``%%zmqexec --block``, ``handle.wait()``), which updates the widgets
  itself; widget messages are sent from the cell as it runs.

Both hand verified events (``parse_event`` checks the signature first) to
the handle, which orders them by sequence number and recovers gaps with
``get_status``. :class:`Coalescer` keeps widget traffic at about ten
updates per second however fast events arrive.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

import zmq
from zmq.eventloop.zmqstream import ZMQStream

from zmqruntime.errors import ExecutionTimeout
from zmqruntime.execution.client import Event, parse_event
from zmqruntime.protocol import Session
from zmqruntime.transport import ConnectionInfo

if TYPE_CHECKING:  # pragma: no cover
    from .handle import ExecutionHandle

log = logging.getLogger("zmqruntime.jupyter")

#: Widget flushes per second at most (spec: "about 10 per second").
UPDATE_INTERVAL = 0.1
#: Events handled per IO-loop turn before yielding to other kernel work.
DRAIN_BUDGET_S = 0.005
#: Receive high-water mark: a flood beyond this is dropped by ZeroMQ and
#: recovered from ``status`` (sequence gap), instead of growing the kernel.
RCV_HWM = 20_000


class Coalescer:
    """Run ``flush`` at most once per ``interval``, however often it is poked.

    On the IO loop it arms one ``call_later`` timer; inside a blocking cell
    the caller drives it with :meth:`pump` (timers cannot fire there).
    ``poke(urgent=True)`` flushes at once (final states show immediately).
    Main thread only; other threads go through ``loop.add_callback``.
    """

    def __init__(self, flush: Callable[[], None], loop: Any, interval: float = UPDATE_INTERVAL):
        self._flush = flush
        self._loop = loop
        self.interval = interval
        self._last = 0.0
        self._dirty = False
        self._timer: Any = None
        self._closed = False
        self.flushes = 0

    def poke(self, urgent: bool = False) -> None:
        if self._closed:
            return
        self._dirty = True
        if urgent:
            self._flush_now()
            return
        if self._timer is None and self._loop is not None:
            delay = max(0.0, self._last + self.interval - time.monotonic())
            self._timer = self._loop.call_later(delay, self._on_timer)

    def pump(self) -> None:
        """Flush if something changed and the interval has passed (blocking mode)."""
        if self._dirty and not self._closed and time.monotonic() - self._last >= self.interval:
            self._flush_now()

    def _on_timer(self) -> None:
        self._timer = None
        if self._dirty and not self._closed:
            self._flush_now()

    def _flush_now(self) -> None:
        if self._timer is not None:
            self._loop.remove_timeout(self._timer)
            self._timer = None
        self._dirty = False
        self._last = time.monotonic()
        self.flushes += 1
        try:
            self._flush()
        except Exception:  # a broken widget must not kill the event path
            log.exception("zmqruntime panel update failed")

    def close(self) -> None:
        self._closed = True
        if self._timer is not None and self._loop is not None:
            self._loop.remove_timeout(self._timer)
        self._timer = None


def _sub_socket(context: zmq.Context, url: str, hwm: int = RCV_HWM) -> zmq.Socket:
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.connect(url)
    return sock


class EventStream:
    """The data channel of one server on the kernel's IO loop.

    Verified events are passed to ``on_event``; the caller routes them by
    ``execution_id``. One socket per server (not per execution) keeps the
    kernel's file descriptors constant however many cells run.
    """

    def __init__(self, info: ConnectionInfo, session: Session, loop: Any, on_event: Callable[[Event], None],
                 context: Optional[zmq.Context] = None):
        self.session = session
        self.on_event = on_event
        self.topics: set[str] = set()
        self.received = 0
        self.dropped = 0
        self._sock = _sub_socket(context or zmq.Context.instance(), info.data_url)
        self.stream = ZMQStream(self._sock, io_loop=loop)
        self.stream.on_recv(self._on_recv, copy=True)

    @property
    def closed(self) -> bool:
        return self.stream.closed()

    def subscribe(self, execution_id: str) -> None:
        if execution_id not in self.topics and not self.closed:
            self.topics.add(execution_id)
            self._sock.setsockopt(zmq.SUBSCRIBE, execution_id.encode())

    def unsubscribe(self, execution_id: str) -> None:
        if execution_id in self.topics:
            self.topics.discard(execution_id)
            if not self.closed:
                self._sock.setsockopt(zmq.UNSUBSCRIBE, execution_id.encode())

    def _on_recv(self, frames: list[bytes]) -> None:
        # ZMQStream hands us one message per loop turn; drain what is queued
        # for a few milliseconds so a flood costs one turn, not thousands,
        # and other kernel work (a cell, a click) still gets in between.
        self._handle(frames)
        deadline = time.monotonic() + DRAIN_BUDGET_S
        sock = self._sock
        while time.monotonic() < deadline and not sock.closed:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._handle(frames)

    def _handle(self, frames: list[bytes]) -> None:
        event = parse_event(self.session, frames)
        if event is None:
            self.dropped += 1
            return
        self.received += 1
        try:
            self.on_event(event)
        except Exception:
            log.exception("zmqruntime: handling event %s of %s failed", event.type, event.execution_id)

    def close(self) -> None:
        if not self.closed:
            self.stream.on_recv(None)
            self.stream.close(linger=0)
        self.topics.clear()


def pump(handle: "ExecutionHandle", timeout: Optional[float] = None, context: Optional[zmq.Context] = None) -> None:
    """Follow ``handle`` from the calling (cell) thread until it is final.

    Used where IO-loop callbacks cannot run: ``%%zmqexec --block`` and
    ``handle.wait()``. Polls a private SUB socket, feeds the handle, and
    drives its coalescer, watchdog and ``--progress-after`` reveal itself,
    so the panel keeps moving while the cell waits. Raises
    ``ExecutionTimeout`` after ``timeout`` seconds; KeyboardInterrupt
    propagates to the caller (who decides whether it means "cancel").
    """
    conn = handle.connection
    client = conn.client
    deadline = None if timeout is None else time.monotonic() + timeout
    sock = _sub_socket(context or zmq.Context.instance(), client.info.data_url)
    sock.setsockopt(zmq.SUBSCRIBE, handle.id.encode())
    handle._pumping += 1
    try:
        # Subscribe first, then take the baseline: nothing can fall between.
        handle.recovered(client.get_status(handle.id))
        while not handle.final:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise ExecutionTimeout(f"execution {handle.id} still {handle.status_cached} after {timeout:g} s")
            wait = min(UPDATE_INTERVAL / 2, handle.next_watch - now)
            if deadline is not None:
                wait = min(wait, deadline - now)
            if sock.poll(max(0.0, wait) * 1000):
                end = time.monotonic() + DRAIN_BUDGET_S * 4
                while time.monotonic() < end:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    event = parse_event(client.session, frames)
                    if event is not None:
                        handle.on_event(event)
            if handle.final:
                break
            now = time.monotonic()
            if handle.recovering or now >= handle.next_watch:
                handle.watchdog_fired()
                handle.recovered(client.get_status(handle.id))
            handle.tick(now)
    finally:
        handle._pumping -= 1
        sock.close(linger=0)
        handle.flush_ui()
