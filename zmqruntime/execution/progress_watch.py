"""``progress_callback``: cb(event) for every progress event of a client's own executions.

One background thread owns one SUB socket (ZeroMQ sockets are not
thread-safe), so the threads that submit executions never touch it: they
queue "watch"/"unwatch" commands and wake the thread through an inproc
pair. The thread subscribes to ``<id>.progress`` (which also matches the
``<id>.progress_batch`` topic) and ``<id>.done`` of each watched execution,
calls the callback for each progress event (a batch expanded, in ``seq``
order, duplicates dropped), and unsubscribes when the execution's ``done``
event arrives or the client closes.

Events the server published before the subscription reached it are not
replayed (``get_status`` has the latest progress). The subscription is
filtered (progress and done only), so the other events' ``seq`` numbers
are gaps that mean nothing: ``event.missed`` is always 0 here.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable

import zmq

from ..curve import subscriber_socket
from ..protocol import Session, event_topic, new_id
from ..transport import ConnectionInfo
from .events import Event, SequenceTracker, parse_events

log = logging.getLogger("zmqruntime.client")


class ProgressWatch:
    """The thread behind ``ExecutionClient(..., progress_callback=cb)``."""

    def __init__(self, info: ConnectionInfo, session: Session, callback: Callable[[Event], Any]):
        if not callable(callback):
            raise TypeError(f"progress_callback must be callable, got {type(callback).__name__}")
        self.callback = callback
        self._session = session
        context: zmq.Context = zmq.Context.instance()
        self._sub = subscriber_socket(context, info, rcvhwm=0)
        url = f"inproc://zmqruntime-progress-{new_id()}"
        self._wake_in = context.socket(zmq.PULL)
        self._wake_in.bind(url)
        self._wake_out = context.socket(zmq.PUSH)
        self._wake_out.setsockopt(zmq.LINGER, 0)
        self._wake_out.connect(url)
        self._lock = threading.Lock()  # guards the command queue and the wake socket
        self._commands: collections.deque[tuple[bool, str]] = collections.deque()
        self._watched: set[str] = set()  # touched by the thread only
        self._stop = threading.Event()
        self.tracker = SequenceTracker()
        self._thread = threading.Thread(target=self._run, name="zmqruntime-progress", daemon=True)
        self._thread.start()

    def watch(self, execution_id: str) -> None:
        self._command(True, execution_id)

    def unwatch(self, execution_id: str) -> None:
        self._command(False, execution_id)

    def _command(self, watch: bool, execution_id: str) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            self._commands.append((watch, execution_id))
            self._wake_out.send(b"", zmq.NOBLOCK)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and drop every subscription (idempotent)."""
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
            self._wake_out.send(b"", zmq.NOBLOCK)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self._wake_out.close(linger=0)

    @property
    def watching(self) -> set[str]:
        """The executions currently subscribed to (a copy, for tests and diagnostics)."""
        return set(self._watched)

    # -- the thread ---------------------------------------------------------------
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sub, zmq.POLLIN)
        poller.register(self._wake_in, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(200))
                if self._wake_in in ready:
                    self._apply_commands()
                if self._sub in ready:
                    self._drain()
        finally:
            self._sub.close(linger=0)
            self._wake_in.close(linger=0)
            self._watched.clear()

    def _apply_commands(self) -> None:
        with self._lock:
            while True:
                try:
                    self._wake_in.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
            commands, self._commands = list(self._commands), collections.deque()
        for watch, execution_id in commands:
            (self._subscribe if watch else self._unsubscribe)(execution_id)

    def _subscribe(self, execution_id: str) -> None:
        if execution_id not in self._watched:
            self._watched.add(execution_id)
            self._sub.setsockopt(zmq.SUBSCRIBE, event_topic(execution_id, "progress"))
            self._sub.setsockopt(zmq.SUBSCRIBE, event_topic(execution_id, "done"))

    def _unsubscribe(self, execution_id: str) -> None:
        if execution_id in self._watched:
            self._watched.discard(execution_id)
            self._sub.setsockopt(zmq.UNSUBSCRIBE, event_topic(execution_id, "progress"))
            self._sub.setsockopt(zmq.UNSUBSCRIBE, event_topic(execution_id, "done"))

    def _drain(self) -> None:
        while True:
            try:
                frames = self._sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            for event in parse_events(self._session, frames):
                if event.execution_id not in self._watched or not self.tracker.observe(event):
                    continue
                if event.type == "done":
                    self._unsubscribe(event.execution_id)
                elif event.type == "progress":
                    event.missed = 0  # a filtered subscription: gaps are the other event types
                    try:
                        self.callback(event)
                    except Exception:
                        log.exception("progress_callback raised (execution %s)", event.execution_id)
