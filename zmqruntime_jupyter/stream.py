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

Progress floods. A task may report progress tens of thousands of times a
second, while the panel shows the latest about ten times a second; decoding
and applying every one of them would saturate the kernel. Both consumers
therefore drain the socket in batches and :func:`triage` each batch by its
topic frame (``<execution id>.<event type>``, readable without decoding):
for every execution only the *newest* ``progress`` message of the batch is
decoded and applied; older ones are *superseded*. A superseded message is
still authenticated (HMAC only: its topic, hence its type, and its content
are covered by the signature) and its ``seq`` is read from the signed
content bytes without a JSON parse; the handle is told that this seq was a
progress event skipped on purpose (:meth:`ExecutionHandle.skipped_progress`),
so it does not count as a sequence gap. Everything else (``status``,
``stream``, ``done``) is decoded and applied in order as before, and a seq
that is neither applied nor an authenticated skipped progress event is still
a gap, repaired from ``get_status``: a lost ``stream`` event is never taken
for a skipped progress one.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

import zmq
from zmq.eventloop.zmqstream import ZMQStream

from zmqruntime.curve import subscriber_socket
from zmqruntime.errors import ExecutionTimeout
from zmqruntime.execution.client import Event, expand_progress_batch, parse_event
from zmqruntime.protocol import Session, peek_event_seq
from zmqruntime.transport import ConnectionInfo

if TYPE_CHECKING:  # pragma: no cover
    from .handle import ExecutionHandle

log = logging.getLogger("zmqruntime.jupyter")

#: Widget flushes per second at most (spec: "about 10 per second").
UPDATE_INTERVAL = 0.1
#: Time spent reading queued events per IO-loop turn (the batch is then
#: handled) before yielding to other kernel work. Under a progress flood 2 ms
#: gave a trivial cell a lower median latency than 5 ms (benchmarks/zr_kernel.py).
DRAIN_BUDGET_S = 0.002
#: Receive high-water mark: a flood beyond this is dropped by ZeroMQ and
#: recovered from ``status`` (sequence gap), instead of growing the kernel.
RCV_HWM = 20_000
#: Messages taken off the socket per batch at most.
MAX_BATCH = 4096
#: Rough cost of decoding and applying one event (reading one costs ~5 µs):
#: each message of a batch that needs it shortens the batch's time budget.
FULL_EVENT_COST_S = 30e-6

_PROGRESS_SUFFIX = b".progress"


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


def _sub_socket(context: zmq.Context, info: ConnectionInfo, hwm: int = RCV_HWM) -> zmq.Socket:
    return subscriber_socket(context, info, rcvhwm=hwm)  # CurveZMQ when the server encrypts


def triage(batch: list[list[bytes]]) -> tuple[list[list[bytes]], dict[bytes, list[tuple[int, list[bytes]]]]]:
    """Split a drained batch into ``(to_apply, superseded)`` by reading topic frames only.

    ``to_apply``: the messages to verify, decode and apply, in arrival order --
    every non-progress message and, per execution, the newest progress one.
    ``superseded``: ``execution id -> [(seq, frames)]`` of the older progress
    messages; nothing in them is verified yet (see :func:`skippable`).
    """
    newest: dict[bytes, int] = {}
    for i, frames in enumerate(batch):
        if frames and frames[0].endswith(_PROGRESS_SUFFIX):
            newest[frames[0]] = i
    if not newest:
        return batch, {}
    to_apply: list[list[bytes]] = []
    superseded: dict[bytes, list[tuple[int, list[bytes]]]] = {}
    for i, frames in enumerate(batch):
        topic = frames[0] if frames else b""
        if newest.get(topic, i) != i:
            execution_id = topic[: -len(_PROGRESS_SUFFIX)]
            seq = peek_event_seq(frames, execution_id)
            if seq is not None:
                superseded.setdefault(execution_id, []).append((seq, frames))
                continue
        to_apply.append(frames)
    return to_apply, superseded


def skippable(session: Session, messages: list[tuple[int, list[bytes]]]) -> list[int]:
    """The seqs of those superseded progress messages that are authentic; the rest are dropped."""
    return [seq for seq, frames in messages if session.is_authentic(frames, topic_frames=1)]


def _drain(sock: zmq.Socket, batch: list[list[bytes]], budget: float) -> None:
    """Append what is queued on ``sock`` to ``batch``, for about ``budget`` seconds.

    Each message that will be decoded and applied (anything but progress)
    shortens the budget by its estimated cost, so a batch stays about
    ``budget`` long to handle whatever its mix.
    """
    deadline = time.monotonic() + budget
    for frames in batch:
        if not frames[0].endswith(_PROGRESS_SUFFIX):
            deadline -= FULL_EVENT_COST_S
    while len(batch) < MAX_BATCH and time.monotonic() < deadline and not sock.closed:
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        batch.append(frames)
        if not frames[0].endswith(_PROGRESS_SUFFIX):
            deadline -= FULL_EVENT_COST_S


class EventBatches:
    """Handles drained batches of data-channel messages (no socket: testable alone).

    :func:`triage`, then tell ``on_skipped(execution_id, seqs)`` the seqs of
    the authentic superseded progress events, then verify, decode and pass
    every other message to ``on_event`` in arrival order.

    Counters: ``received`` messages handled (``events`` in them), ``applied`` events decoded and
    passed on, ``skipped`` superseded progress events (verified, not
    decoded), ``dropped`` messages that failed verification.
    """

    def __init__(self, session: Session, on_event: Callable[[Event], None],
                 on_skipped: Optional[Callable[[str, list[int]], None]] = None):
        self.session = session
        self.on_event = on_event
        self.on_skipped = on_skipped
        self.received = 0
        self.events = 0  # events in the messages received (a progress_batch holds many)
        self.applied = 0
        self.skipped = 0
        self.dropped = 0

    def handle_batch(self, batch: list[list[bytes]]) -> None:
        self.received += len(batch)
        self.events += len(batch)
        to_apply, superseded = triage(batch)
        for execution_id, messages in superseded.items():
            seqs = skippable(self.session, messages)
            self.skipped += len(seqs)
            if len(seqs) < len(messages):
                self.dropped += len(messages) - len(seqs)
                log.warning("dropped %d data-channel message(s) that failed verification",
                            len(messages) - len(seqs))
            if seqs and self.on_skipped is not None:
                try:
                    self.on_skipped(execution_id.decode("ascii", "replace"), seqs)
                except Exception:
                    log.exception("zmqruntime: noting skipped progress events failed")
        for frames in to_apply:
            self._handle(frames)

    def _handle(self, frames: list[bytes]) -> None:
        event = parse_event(self.session, frames)
        if event is None:
            self.dropped += 1
            return
        if event.type == "progress_batch":
            event = self._newest_of_batch(event)
            if event is None:
                return
        self.applied += 1
        try:
            self.on_event(event)
        except Exception:
            log.exception("zmqruntime: handling event %s of %s failed", event.type, event.execution_id)


    def _newest_of_batch(self, batch: Event) -> Optional[Event]:
        """A verified ``progress_batch``: its newest event is applied, the
        older ones are superseded (their seqs told to ``on_skipped``; only
        the newest row becomes an Event, so a flood costs one parse per batch)."""
        try:
            fields, rows = batch["fields"], batch["events"]
            at = fields.index("seq")
            seqs = [row[at] for row in rows[:-1]]
            newest = expand_progress_batch(Event(batch.type, batch.execution_id, batch.seq,
                                                 {**batch.content, "events": rows[-1:]}))
            if not all(type(s) is int for s in seqs):
                raise ValueError("seq must be an integer")
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            self.dropped += 1
            log.warning("dropped a malformed progress_batch: %s", exc)
            return None
        self.skipped += len(seqs)
        self.events += len(seqs)
        if seqs and self.on_skipped is not None:
            try:
                self.on_skipped(batch.execution_id, seqs)
            except Exception:
                log.exception("zmqruntime: noting skipped progress events failed")
        return newest[-1] if newest else None


class EventStream(EventBatches):
    """The data channel of one server on the kernel's IO loop.

    Verified events are passed to ``on_event``; the caller routes them by
    ``execution_id`` (and the skipped progress seqs given to ``on_skipped``).
    One socket per server (not per execution) keeps the kernel's file
    descriptors constant however many cells run.
    """

    def __init__(self, info: ConnectionInfo, session: Session, loop: Any, on_event: Callable[[Event], None],
                 context: Optional[zmq.Context] = None,
                 on_skipped: Optional[Callable[[str, list[int]], None]] = None):
        super().__init__(session, on_event, on_skipped)
        self.topics: set[str] = set()
        self._sock = _sub_socket(context or zmq.Context.instance(), info)
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
        batch = [frames]
        _drain(self._sock, batch, DRAIN_BUDGET_S)
        self.handle_batch(batch)

    def close(self) -> None:
        if not self.closed:
            self.stream.on_recv(None)
            self.stream.close(linger=0)
        self.topics.clear()


def pump(handle: ExecutionHandle, timeout: Optional[float] = None, context: Optional[zmq.Context] = None) -> None:
    """Follow ``handle`` from the calling (cell) thread until it is final.

    Used where IO-loop callbacks cannot run: ``%%zmqexec --block`` and
    ``handle.wait()``. Polls a private SUB socket, feeds the handle, and
    drives its coalescer, watchdog and ``--progress-after`` reveal itself,
    so the panel keeps moving while the cell waits. Raises
    ``ExecutionTimeout`` after ``timeout`` seconds; KeyboardInterrupt
    propagates to the caller (who decides whether it means "cancel").
    """
    conn = handle.connection
    assert conn is not None, "the handle is not attached to a server"
    client = conn.client
    deadline = None if timeout is None else time.monotonic() + timeout
    sock = _sub_socket(context or zmq.Context.instance(), client.info)
    sock.setsockopt(zmq.SUBSCRIBE, handle.id.encode())
    own_id = handle.id

    def skipped(execution_id: str, seqs: list[int]) -> None:
        if execution_id == own_id:
            handle.skipped_progress(seqs)

    batches = EventBatches(client.session, handle.on_event, skipped)
    try:
        with handle.poller.pumping():
            # Subscribe first, then take the baseline: nothing can fall between.
            handle.recovered(client.get_status(handle.id))
            while not handle.final:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise ExecutionTimeout(f"execution {handle.id} still {handle.status_cached} after {timeout:g} s")
                wait = min(UPDATE_INTERVAL / 2, handle.poller.watchdog.seconds_left(now))
                if deadline is not None:
                    wait = min(wait, deadline - now)
                if sock.poll(int(max(0.0, wait) * 1000)):
                    batch: list[list[bytes]] = []
                    _drain(sock, batch, DRAIN_BUDGET_S * 4)
                    batches.handle_batch(batch)
                if handle.final:
                    break
                handle.tick(time.monotonic())  # the watchdog (status polls) and the panel
    finally:
        sock.close(linger=0)
        handle.flush_ui()
