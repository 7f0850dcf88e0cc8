"""ExecutionClient (blocking) and AsyncExecutionClient (asyncio): one core, two drivers.

Every algorithm -- execute with its retries, wait, result, the request
contents, reply decoding -- lives once in :mod:`.core` as a sans-IO flow;
each client only performs the flow's steps with its own I/O (see core.py
for why this and not an asyncio core behind a sync wrapper). The two
public APIs are the same method for method (a test compares their
signatures); the asyncio one's methods are coroutines, and it is built with
``await AsyncExecutionClient.connect(...)`` (same arguments as
``ExecutionClient(...)``) or from a ConnectionInfo.

Subclass and override ``serialize_task`` to send custom task kinds (the
matching server subclass runs them in ``execute_task``).

``wait`` listens on the data channel for the execution's ``done`` event and
also polls ``status`` with a backoff, so it neither misses an event sent
before its subscription took effect nor depends on events at all.

``execute`` is idempotent: each call carries a fresh ``request_id`` and, when
no reply comes in time, the very same request is sent again (up to
``EXECUTE_ATTEMPTS`` tries within the client's timeout, ZeroMQ's "Lazy
Pirate" pattern). The server answers a repeated ``request_id`` with the
execution it already accepted, so a lost request or a lost reply neither
loses nor duplicates the execution. If every attempt fails, the error names
the ``request_id``: passing it to ``execute(..., request_id=...)`` later
resubmits without risk of running the task twice.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import zmq

from .. import receive
from ..client import AsyncZMQClient, ZMQClient, check_timeout, ok_or_raise, positive_timeout, reply_content
from ..curve import subscriber_socket
from ..errors import RemoteError, ServerUnavailable
from ..frames import recv_frames
from ..loop_reader import LoopReader
from ..polling import readable
from ..protocol import BRIEF_PING, Session, event_topic, session_done_topic
from ..spawn import ensure_server
from ..transport import DEFAULT_CONTROL_OFFSET, DEFAULT_IP, DEFAULT_PORT, ConnectionInfo, read_connection_file
from .core import (
    EXECUTE_ATTEMPTS,
    MAX_KEPT_DONE_EVENTS,
    UPLOAD_WINDOW,
    AwaitDone,
    ClientCore,
    FetchInto,
    Flow,
    Request,
    Submit,
    Upload,
    check_id,
    parallel_map_request,
    results_in_done_event,
)
from .events import Event, SequenceTracker, done_events, expand_progress_batch, parse_event, parse_events
from .progress_watch import ProgressWatch

log = logging.getLogger("zmqruntime.client")

__all__ = ["AsyncExecutionClient", "Event", "ExecutionClient", "Subscription", "SequenceTracker", "parse_event",
           "parse_events", "expand_progress_batch", "results_in_done_event", "EXECUTE_ATTEMPTS",
           "MAX_KEPT_DONE_EVENTS"]


def discover(port: int = DEFAULT_PORT, *, ip: str = DEFAULT_IP, transport: Optional[str] = None,
             name: Optional[str] = None,
             connection_file: Optional[str] = None, timeout: float = 10.0, auto_spawn: bool = True,
             spawn_mode: str = "persistent", spawn_timeout: float = 20.0,
             control_port_offset: int = DEFAULT_CONTROL_OFFSET, server_args: Sequence[str] = ()) -> ConnectionInfo:
    """The server to talk to: that connection file, or the one of ``port`` (started if none answers)."""
    check_timeout(timeout, allow_none=False)
    if connection_file is not None:
        return read_connection_file(connection_file)
    if auto_spawn:
        return ensure_server(port, transport=transport, ip=ip, name=name, mode=spawn_mode,
                             timeout=positive_timeout(spawn_timeout, "spawn_timeout"),
                             control_port_offset=control_port_offset, extra_args=tuple(server_args))
    from ..spawn import connection_path, find_any_server, find_server

    found = (find_any_server(port, name, timeout=timeout) if transport is None
             else find_server(connection_path(port, transport, name), timeout=timeout))
    if found is None:
        raise ServerUnavailable(f"no zmqruntime server answers for port {port} and auto_spawn is off")
    return found


class Subscription:
    """A background thread delivering events to ``callback`` until closed."""

    def __init__(self, info: ConnectionInfo, session: Session, callback: Callable[[Event], Any],
                 execution_id: Optional[str], context: zmq.Context):
        self.callback = callback
        self.execution_id = execution_id
        self._sock = subscriber_socket(context, info, rcvhwm=0)
        self._sock.setsockopt(zmq.SUBSCRIBE, (execution_id or "").encode())
        self._session = session
        self._stop = threading.Event()
        self.tracker = SequenceTracker()
        self._thread = threading.Thread(target=self._run, name="zmqruntime-subscribe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sock = self._sock
        try:
            while not self._stop.is_set():
                if not sock.poll(50):
                    continue
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    for event in parse_events(self._session, frames):
                        if not self.tracker.observe(event):
                            continue  # a duplicate / replayed event (forged ones never parse)
                        try:
                            self.callback(event)
                        except Exception:
                            log.exception("subscriber callback raised (event %s %s)", event.type, event.execution_id)
        finally:
            sock.close(linger=0)

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class DoneWaiter:
    """One thread's SUB socket that watches for 'done' events only.

    ``execute`` subscribes to ``<id>.done`` before sending the request (one
    small event per execution, whatever its progress rate) and ``wait``
    unsubscribes when it returns; ids never waited for are dropped after
    ``MAX_TOPICS`` newer ones (polling ``status`` still covers them).
    Executions of the client's own session (``batch_session``) end in the
    session's ``done_batch`` events instead, subscribed to once.
    """

    MAX_TOPICS = 4096

    def __init__(self, context: zmq.Context, info: ConnectionInfo, session: Session,
                 batch_session: Optional[str] = None):
        self.session = session
        self.sock = subscriber_socket(context, info, rcvhwm=10_000)  # 'done' events only; overflow costs a status poll
        self.batch_session = batch_session
        if batch_session is not None:
            self.sock.setsockopt(zmq.SUBSCRIBE, session_done_topic(batch_session))
        self.batched: set[str] = set()  # ids whose end comes in the session's done_batch
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.topics: dict[str, int] = {}
        self.done: dict[str, Event] = {}
        self.promised: set[str] = set()  # ids whose 'done' the server said it will publish to us
        self.last_done = -math.inf  # monotonic time of the last 'done' event read

    def heard_within(self, seconds: float) -> bool:
        return time.monotonic() - self.last_done <= seconds

    def subscribe(self, execution_id: str, session: Optional[str] = None) -> None:
        if execution_id not in self.topics:
            if session is not None and session == self.batch_session:
                self.batched.add(execution_id)
            else:
                self.sock.setsockopt(zmq.SUBSCRIBE, event_topic(execution_id, "done"))
        self.topics[execution_id] = self.topics.get(execution_id, 0) + 1
        while len(self.topics) > self.MAX_TOPICS:
            self.forget(next(iter(self.topics)))

    def unbatch(self, execution_id: str) -> None:
        if execution_id in self.batched:
            self.batched.discard(execution_id)
            self.sock.setsockopt(zmq.SUBSCRIBE, event_topic(execution_id, "done"))

    def unsubscribe(self, execution_id: str) -> None:
        count = self.topics.get(execution_id, 0) - 1
        if count > 0:
            self.topics[execution_id] = count
            return
        self.forget(execution_id)

    def forget(self, execution_id: str) -> None:
        """Drop the subscription whoever asked for it: the execution is over."""
        if self.topics.pop(execution_id, None) is not None:
            if execution_id in self.batched:
                self.batched.discard(execution_id)  # the session's topic stays
            else:
                self.sock.setsockopt(zmq.UNSUBSCRIBE, event_topic(execution_id, "done"))
        self.done.pop(execution_id, None)
        self.promised.discard(execution_id)

    def promise(self, execution_id: str) -> None:
        self.promised.add(execution_id)

    def is_promised(self, execution_id: str) -> bool:
        return execution_id in self.promised

    def wait_done(self, execution_id: str, seconds: float) -> Optional[Event]:
        """Read events for up to ``seconds``; the 'done' event once it came."""
        end = time.monotonic() + max(0.0, seconds)
        while execution_id not in self.done:
            remaining = end - time.monotonic()
            if remaining <= 0 or not self.poller.poll(remaining * 1000):  # type: ignore[arg-type]
                return None
            while readable(self.sock):
                for event in done_events(parse_event(self.session, recv_frames(self.sock))):
                    self.last_done = time.monotonic()
                    if event.execution_id in self.topics:
                        self.done[event.execution_id] = event
        return self.done[execution_id]


class ExecutionClient(ClientCore):
    """Submit, watch, cancel and fetch executions (blocking API, usable from several threads).

    ``ExecutionClient(port=7777)`` connects to the server of that port (IPC
    or TCP, whichever is registered), starting a persistent IPC one if none
    answers (``auto_spawn=False`` to refuse; ``transport="tcp"`` for TCP).
    ``connection_file=`` connects to exactly that server.
    ``session`` names the server-side session (namespace and queue) this
    client's executions run in; by default a new one of its own.
    ``progress_callback=cb`` calls ``cb(event)`` on a background thread for
    every progress event of the executions this client submits.
    """

    def __init__(self, port: int = DEFAULT_PORT, *, ip: str = DEFAULT_IP, transport: Optional[str] = None,
                 name: Optional[str] = None, connection_file: Optional[str] = None,
                 timeout: float = 10.0, auto_spawn: bool = True, spawn_mode: str = "persistent",
                 spawn_timeout: float = 20.0, control_port_offset: int = DEFAULT_CONTROL_OFFSET,
                 server_args: Sequence[str] = (), session: Optional[str] = None,
                 progress_callback: Optional[Callable[[Event], Any]] = None):
        _check_callback(progress_callback)
        self.session_name = self._choose_session(session)
        self.info = discover(port, ip=ip, transport=transport, name=name, connection_file=connection_file,
                             timeout=timeout, auto_spawn=auto_spawn, spawn_mode=spawn_mode,
                             spawn_timeout=spawn_timeout, control_port_offset=control_port_offset,
                             server_args=server_args)
        self._client = ZMQClient(self.info, timeout=timeout)
        self.timeout = self._client.timeout
        self.session = self._client.session
        self._init_core()
        self._local = threading.local()
        self._subs: list[Subscription] = []
        self._progress_watch = ProgressWatch(self.info, self.session, progress_callback) if progress_callback else None

    @property
    def closed(self) -> bool:
        return self._client.closed

    # -- the driver -------------------------------------------------------------
    def _drive(self, flow: Flow) -> Any:
        """Run a core flow to its end, performing each step with blocking I/O."""
        value: Any = None
        error: Optional[BaseException] = None
        while True:
            try:
                step = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value
            value = error = None
            try:
                value = self._perform(step)
            except BaseException as exc:  # thrown into the flow: it cleans up and re-raises
                error = exc

    def _perform(self, step: Any) -> Any:
        if type(step) is Request:
            msg = self._client.request(step.msg_type, step.content, step.buffers, timeout=step.timeout,
                                       copy=not step.raw)
            return msg if step.raw else reply_content(msg)
        if type(step) is AwaitDone:
            return self._waiter().wait_done(step.execution_id, step.seconds)
        if type(step) is Submit:
            return self._drive(self._submit_flow(step.content, step.buffers))
        if type(step) is FetchInto:
            return receive.fetch_into(self._results_request, step.execution_id, step.into, step.release)
        if type(step) is Upload:
            return [reply_content(m) for m in self._client.request_window("upload", step.parts, UPLOAD_WINDOW)]
        raise TypeError(f"unknown step {step!r}")

    def _results_request(self, content: dict[str, Any]) -> Any:
        """One verified ``results`` reply (raises its error): what receive.fetch_into asks with."""
        msg = self._client.request("results", content, copy=False)
        reply_content(msg)
        return msg

    def _waiter(self) -> DoneWaiter:
        waiter = getattr(self._local, "waiter", None)
        if waiter is None:
            waiter = DoneWaiter(self._client.context, self.info, self.session, self.session_name)
            self._local.waiter = waiter
            self._client.adopt(waiter.sock)
        return waiter

    # -- the API (the same in AsyncExecutionClient) -------------------------------
    def ping(self, timeout: Optional[float] = None, *, brief: bool = False) -> dict[str, Any]:
        """The server's identity and load; ServerUnavailable when it does not answer in time.

        ``brief=True`` asks for the identity only (server_id, pid, versions, start_time,
        uptime): the cheapest signed round trip, for liveness checks.
        """
        return self._client.call("ping", _ping_content(brief), timeout=timeout)

    def execute(self, task: Any, config: Any = None, *, name: Optional[str] = None, timeout: Optional[float] = None,
                results: Optional[Sequence[str]] = None, push: Optional[Mapping[str, Any]] = None,
                request_id: Optional[str] = None, session: Optional[str] = None) -> str:
        """Queue ``task``; return its execution id at once.

        ``config`` (Python source, or a mapping of names to JSON values) runs
        first in the task's namespace; ``timeout`` bounds the run on the
        server; ``results`` names variables to return; ``push`` binds values
        (any picklable object) before the task runs; ``session`` runs it in
        that session instead of this client's own. Retried with the same
        ``request_id`` when a reply is lost, so the task is queued exactly
        once; pass ``request_id`` yourself to make a retry across calls
        (after ServerUnavailable) safe as well.
        """
        content, buffers = self._execute_request(task, config, name, timeout, results, push, request_id, session)
        return self._drive(self._execute_flow(self._waiter(), content, buffers, push))

    def get_status(self, execution_id: Optional[str] = None, timeout: Optional[float] = None,
                   limit: Optional[int] = None) -> Any:
        """One execution's full state, or a list of all (the newest ``limit``, default 1,000) when no id is given."""
        reply = self._client.call("status", self._status_content(execution_id, limit), timeout=timeout)
        return self._status_of(reply, execution_id)

    def list_executions(self, status: Optional[str] = None, session: Optional[str] = None,
                        timeout: Optional[float] = None, limit: Optional[int] = None) -> list[dict[str, Any]]:
        """A one-line summary of each execution the server remembers (``status``, ``session`` filter),
        oldest first: the newest ``limit`` of them (default 1,000)."""
        return self._client.call("list", self._list_content(status, session, limit), timeout=timeout)["executions"]

    def sessions(self, timeout: Optional[float] = None) -> list[dict[str, Any]]:
        """The server's sessions: worker, queue length, running execution, idle time."""
        return self._client.call("sessions", {}, timeout=timeout)["sessions"]

    def reset_session(self, session: Optional[str] = None, timeout: Optional[float] = None) -> dict[str, Any]:
        """Drop a session's namespace (default: this client's); refused while it has work."""
        return self._client.call("reset_session", self._reset_content(session), timeout=timeout)

    def cancel(self, execution_id: str, reason: Optional[str] = None, timeout: Optional[float] = None) -> dict[str, Any]:
        """Cancel one execution (queued: removed; running: interrupted)."""
        return self._client.call("cancel", self._cancel_content(execution_id, reason), timeout=timeout)

    def get_results(self, execution_id: str, release: bool = False, timeout: Optional[float] = None,
                    wait: bool = True, *, into: Any = None, shm: Optional[bool] = None) -> dict[str, Any]:
        """The execution's results, when ready: ``{"_": last expression, name: value...}``.

        An execution still queued or running is waited for (``timeout`` bounds
        the whole call: ExecutionTimeout); ``wait=False`` raises RemoteError
        ``not_finished`` instead. Raises ExecutionFailed (with the remote
        traceback), ExecutionCancelled, or RemoteError ``results_expired``.
        Results that rode along in a 'done' event ``wait`` saw need no request.
        ``release=True`` frees them on the server once received.
        ``into=DIR``: written to files in DIR (new or empty) part by part as
        they arrive, arrays returned memory-mapped: for results larger than
        memory (see ``zmqruntime.receive``). ``shm``: map large buffers from
        shared memory (default: when the server is on this host).
        """
        _check_wait(wait)
        return self._drive(self._results_flow(self._waiter if wait else None, execution_id, release, timeout,
                                              into, shm))

    def wait(self, execution_id: str, timeout: Optional[float] = None) -> dict[str, Any]:
        """Block until the execution is final; return its status.

        ``timeout`` is an overall deadline: ExecutionTimeout is raised when it
        passes (the execution goes on). A dead server raises ServerUnavailable.
        """
        return self._drive(self._wait_status_flow(self._waiter(), execution_id, timeout))

    def result(self, execution_id: str, timeout: Optional[float] = None) -> dict[str, Any]:
        """Wait for the execution and return its results (``wait`` + ``get_results``,
        raising as they do), in one step: when the 'done' event carries the
        results or says there are none, no request is needed at all."""
        return self._drive(self._result_flow(self._waiter(), execution_id, timeout))

    def run(self, task: Any, config: Any = None, *, timeout: Optional[float] = None, **kwargs: Any) -> dict[str, Any]:
        """execute + result, for scripts (``timeout`` is the wait's; raises as get_results does;
        ``kwargs`` as ``execute`` takes them). A short task's outcome comes back in the execute
        reply itself (see ``_run_flow``)."""
        content, buffers = self._run_request(task, config, **kwargs)
        return self._drive(self._run_flow(self._waiter, content, buffers, kwargs.get("push"), timeout))

    def parallel_map(self, fn: Callable[[Any], Any], items: Sequence[Any], *, timeout: Optional[float] = None,
                     name: Optional[str] = None) -> list[Any]:
        """``[fn(x) for x in items]`` on the server's backend (its cores, or its dask cluster), in order.

        One execution of this client's session with one progress bar; cancel it like any other.
        """
        task, push = parallel_map_request(fn, items)
        return self.run(task, timeout=timeout, push=push, name=name or "parallel_map")["_"]

    def subscribe(self, callback: Callable[[Event], Any], execution_id: Optional[str] = None) -> Subscription:
        """Call ``callback(event)`` on a background thread for each event.

        Events of one execution (``execution_id``) or of all. Close the
        returned Subscription to stop.
        """
        return _open_subscription(self, callback, execution_id)

    def shutdown(self, timeout: Optional[float] = None) -> dict[str, Any]:
        """Ask the server to stop (running executions are cancelled)."""
        return self._client.call("shutdown", {}, timeout=timeout)

    def close(self) -> None:
        """Close sockets and background threads (subscriptions, progress_callback)."""
        for sub in self._subs:
            sub.close()
        self._subs.clear()
        if self._progress_watch is not None:
            self._progress_watch.close()
        self._client.close()

    def __enter__(self) -> ExecutionClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _open_subscription(owner: Any, callback: Callable[[Event], Any], execution_id: Optional[str]) -> Subscription:
    """``subscribe`` of both clients: a Subscription thread, closed with its owner."""
    if not callable(callback):
        raise TypeError("callback must be callable")
    if execution_id is not None:
        check_id(execution_id)
    sub = Subscription(owner.info, owner.session, callback, execution_id, zmq.Context.instance())
    owner._subs.append(sub)
    return sub


def _ping_content(brief: Any) -> dict[str, Any]:
    if not isinstance(brief, bool):
        raise TypeError(f"brief must be True or False, got {brief!r}")
    return BRIEF_PING if brief else {}


def _check_wait(wait: Any) -> None:
    if not isinstance(wait, bool):
        raise TypeError(f"wait must be True or False, got {wait!r}")


def _check_callback(callback: Any) -> None:
    if callback is not None and not callable(callback):
        raise TypeError(f"progress_callback must be callable or None, got {type(callback).__name__}")


class AsyncDoneChannel:
    """The asyncio client's 'done' subscriptions: one SUB socket, a future per execution.

    The executions of the client's own session (``batch_session``) end in the
    session's ``done_batch`` events, subscribed to once: a pipelining client
    then makes no subscription per execution and reads one signed message for
    several that ended close together. Others are followed by ``<id>.done``.
    Unsubscribes are flushed at the end of the loop turn, together: each
    (un)subscribe may wake libzmq's I/O thread, and one wake-up serves a run.
    """

    MAX_TOPICS = DoneWaiter.MAX_TOPICS

    def __init__(self, info: ConnectionInfo, session: Session, batch_session: Optional[str] = None):
        self.session = session
        self.sock = subscriber_socket(zmq.Context.instance(), info, rcvhwm=10_000)
        self.batch_session = batch_session
        if batch_session is not None:
            self.sock.setsockopt(zmq.SUBSCRIBE, session_done_topic(batch_session))
        self.batched: set[str] = set()  # ids whose end comes in the session's done_batch
        self.topics: dict[str, int] = {}
        self.futures: dict[str, asyncio.Future[Event]] = {}
        self.promised: set[str] = set()
        self._to_unsubscribe: set[str] = set()
        self.last_done = -math.inf
        self._reader = LoopReader(self.sock, self._on_event, copy=True)

    def subscribe(self, execution_id: str, session: Optional[str] = None) -> None:
        if execution_id not in self.topics:
            self.futures[execution_id] = asyncio.get_running_loop().create_future()
            if session is not None and session == self.batch_session:
                self.batched.add(execution_id)
            elif execution_id in self._to_unsubscribe:  # still subscribed: keep it that way
                self._to_unsubscribe.discard(execution_id)
            else:
                self.sock.setsockopt(zmq.SUBSCRIBE, event_topic(execution_id, "done"))
        self.topics[execution_id] = self.topics.get(execution_id, 0) + 1
        while len(self.topics) > self.MAX_TOPICS:
            self.forget(next(iter(self.topics)))

    def unbatch(self, execution_id: str) -> None:
        if execution_id in self.batched:
            self.batched.discard(execution_id)
            self.sock.setsockopt(zmq.SUBSCRIBE, event_topic(execution_id, "done"))

    def unsubscribe(self, execution_id: str) -> None:
        count = self.topics.get(execution_id, 0) - 1
        if count > 0:
            self.topics[execution_id] = count
            return
        self.forget(execution_id)

    def forget(self, execution_id: str) -> None:
        if self.topics.pop(execution_id, None) is not None:
            if execution_id in self.batched:
                self.batched.discard(execution_id)  # the session's topic stays
            else:
                if not self._to_unsubscribe:
                    asyncio.get_running_loop().call_soon(self._flush_unsubscribes)
                self._to_unsubscribe.add(execution_id)
        self.futures.pop(execution_id, None)
        self.promised.discard(execution_id)

    def promise(self, execution_id: str) -> None:
        self.promised.add(execution_id)

    def is_promised(self, execution_id: str) -> bool:
        return execution_id in self.promised

    async def wait_done(self, execution_id: str, seconds: float) -> Optional[Event]:
        fut = self.futures.get(execution_id)
        if fut is None:
            return None
        if not fut.done() and seconds > 0:
            await asyncio.wait((fut,), timeout=seconds)
        return fut.result() if fut.done() else None

    def _flush_unsubscribes(self) -> None:
        ids, self._to_unsubscribe = self._to_unsubscribe, set()
        if not self.sock.closed:
            for execution_id in ids:
                self.sock.setsockopt(zmq.UNSUBSCRIBE, event_topic(execution_id, "done"))

    def heard_within(self, seconds: float) -> bool:
        return time.monotonic() - self.last_done <= seconds

    def _on_event(self, frames: list[Any]) -> None:
        for event in done_events(parse_event(self.session, frames)):
            self.last_done = time.monotonic()
            fut = self.futures.get(event.execution_id)
            if fut is not None and not fut.done():
                fut.set_result(event)

    def on_current_loop(self) -> bool:
        return self._reader.on_current_loop()

    def close(self) -> None:
        self._reader.close()


class AsyncExecutionClient(ClientCore):
    """The asyncio flavour of :class:`ExecutionClient`: the same methods, as coroutines.

    Build it with ``await AsyncExecutionClient.connect(port=...)`` (server
    discovery and auto-spawn run in a thread so the loop is not blocked), or
    directly from a ConnectionInfo. ``execute`` calls made in one turn of
    the event loop travel as one ``execute_many`` request.
    """

    def __init__(self, info: ConnectionInfo, timeout: float = 10.0, *, session: Optional[str] = None,
                 progress_callback: Optional[Callable[[Event], Any]] = None):
        _check_callback(progress_callback)
        self.session_name = self._choose_session(session)
        self.info = info
        self._client = AsyncZMQClient(info, timeout=timeout)
        self.timeout = self._client.timeout
        self.session = self._client.session
        self._init_core()
        self._channel: Optional[AsyncDoneChannel] = None
        self._outbox: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]] = []  # executes of this turn
        self._sending: set[asyncio.Task[None]] = set()
        self._subs: list[Subscription] = []
        self._progress_watch = ProgressWatch(info, self.session, progress_callback) if progress_callback else None

    @classmethod
    async def connect(cls, port: int = DEFAULT_PORT, *, ip: str = DEFAULT_IP, transport: Optional[str] = None,
                      name: Optional[str] = None, connection_file: Optional[str] = None,
                      timeout: float = 10.0, auto_spawn: bool = True, spawn_mode: str = "persistent",
                      spawn_timeout: float = 20.0, control_port_offset: int = DEFAULT_CONTROL_OFFSET,
                      server_args: Sequence[str] = (), session: Optional[str] = None,
                      progress_callback: Optional[Callable[[Event], Any]] = None) -> AsyncExecutionClient:
        """The asyncio twin of ``ExecutionClient(...)``: same arguments, discovery in a thread."""
        _check_callback(progress_callback)
        if session is not None:
            cls._choose_session(session)  # bad input fails before any discovery
        loop = asyncio.get_running_loop()
        info = await loop.run_in_executor(None, lambda: discover(
            port, ip=ip, transport=transport, name=name, connection_file=connection_file, timeout=timeout,
            auto_spawn=auto_spawn, spawn_mode=spawn_mode, spawn_timeout=spawn_timeout,
            control_port_offset=control_port_offset, server_args=server_args))
        return cls(info, timeout=timeout, session=session, progress_callback=progress_callback)

    @property
    def closed(self) -> bool:
        return self._client.closed

    # -- the driver -------------------------------------------------------------
    async def _drive(self, flow: Flow) -> Any:
        """Run a core flow to its end, performing each step with asyncio I/O."""
        value: Any = None
        error: Optional[BaseException] = None
        while True:
            try:
                step = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value
            value = error = None
            try:
                value = await self._perform(step)
            except BaseException as exc:  # CancelledError too: the flow cleans up and re-raises
                error = exc

    async def _perform(self, step: Any) -> Any:
        if type(step) is Request:
            msg = await self._client.request(step.msg_type, step.content, step.buffers, timeout=step.timeout)
            return msg if step.raw else reply_content(msg)
        if type(step) is AwaitDone:
            return await self._done_channel().wait_done(step.execution_id, step.seconds)
        if type(step) is Submit:
            if step.buffers:  # pushed values go alone
                return await self._drive(self._submit_flow(step.content, step.buffers))
            return await self._submit_batched(step.content)
        if type(step) is FetchInto:
            return await receive.fetch_into_async(self._results_request, step.execution_id, step.into, step.release)
        if type(step) is Upload:
            return await self._upload(step.parts)
        raise TypeError(f"unknown step {step!r}")

    async def _upload(self, parts: list[tuple[dict[str, Any], list[Any]]]) -> list[dict[str, Any]]:
        """The parts as requests, at most UPLOAD_WINDOW unanswered at a time; each reply checked."""
        window = asyncio.Semaphore(UPLOAD_WINDOW)
        failed: list[BaseException] = []

        async def one(content: dict[str, Any], buffers: list[Any]) -> dict[str, Any]:
            async with window:
                if failed:  # one part was refused: send no more (e.g. a server without 'upload')
                    raise failed[0]
                try:
                    return reply_content(await self._client.request("upload", content, buffers))
                except BaseException as exc:
                    failed.append(exc)
                    raise

        return list(await asyncio.gather(*(one(c, b) for c, b in parts)))

    async def _results_request(self, content: dict[str, Any]) -> Any:
        """One verified ``results`` reply (raises its error): what receive.fetch_into_async asks with."""
        msg = await self._client.request("results", content)
        reply_content(msg)
        return msg

    def _done_channel(self) -> AsyncDoneChannel:
        if self._channel is not None and not self._channel.on_current_loop():
            self._channel.close()  # made on an earlier event loop (another asyncio.run): start afresh
            self._channel = None
        if self._channel is None:
            if self.closed:
                raise ServerUnavailable("this client is closed")
            self._channel = AsyncDoneChannel(self.info, self.session, self.session_name)
        return self._channel

    def _submit_batched(self, content: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """Join this turn's outbox; the first call schedules sending it at the end of the turn."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        if not self._outbox:
            loop.call_soon(self._send_outbox)
        self._outbox.append((content, fut))
        return fut

    def _send_outbox(self) -> None:
        batch, self._outbox = self._outbox, []
        task = asyncio.ensure_future(self._send_batch(batch))
        self._sending.add(task)  # a strong reference until it is done
        task.add_done_callback(self._sending.discard)

    async def _send_batch(self, batch: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]]) -> None:
        try:
            if len(batch) == 1:
                answers = [await self._drive(self._submit_flow(batch[0][0]))]
            else:
                answers = await self._drive(self._submit_many_flow([content for content, _ in batch]))
        except BaseException as exc:  # no reply: every caller gets the error
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, fut), answer in zip(batch, answers):
            if fut.done():
                continue
            try:
                fut.set_result(ok_or_raise(answer))
            except RemoteError as exc:  # this one refused, the others queued
                fut.set_exception(exc)

    # -- the API (the same as ExecutionClient's, as coroutines) ---------------------
    async def ping(self, timeout: Optional[float] = None, *, brief: bool = False) -> dict[str, Any]:
        """The server's identity and load (``brief``: identity only); see ExecutionClient.ping."""
        return await self._client.call("ping", _ping_content(brief), timeout=timeout)

    async def execute(self, task: Any, config: Any = None, *, name: Optional[str] = None,
                      timeout: Optional[float] = None, results: Optional[Sequence[str]] = None,
                      push: Optional[Mapping[str, Any]] = None, request_id: Optional[str] = None,
                      session: Optional[str] = None) -> str:
        """Queue ``task``; return its id (see ExecutionClient.execute). Concurrent calls are pipelined:
        those of one loop turn go as one ``execute_many``, each accepted or refused on its own."""
        content, buffers = self._execute_request(task, config, name, timeout, results, push, request_id, session)
        return await self._drive(self._execute_flow(self._done_channel(), content, buffers, push))

    async def get_status(self, execution_id: Optional[str] = None, timeout: Optional[float] = None,
                         limit: Optional[int] = None) -> Any:
        """One execution's full state, or a list of all (the newest ``limit``, default 1,000) when no id is given."""
        reply = await self._client.call("status", self._status_content(execution_id, limit), timeout=timeout)
        return self._status_of(reply, execution_id)

    async def list_executions(self, status: Optional[str] = None, session: Optional[str] = None,
                              timeout: Optional[float] = None, limit: Optional[int] = None) -> list[dict[str, Any]]:
        """A one-line summary of each execution the server remembers (``status``, ``session`` filter),
        oldest first: the newest ``limit`` of them (default 1,000)."""
        return (await self._client.call("list", self._list_content(status, session, limit),
                                        timeout=timeout))["executions"]

    async def sessions(self, timeout: Optional[float] = None) -> list[dict[str, Any]]:
        """The server's sessions: worker, queue length, running execution, idle time."""
        return (await self._client.call("sessions", {}, timeout=timeout))["sessions"]

    async def reset_session(self, session: Optional[str] = None, timeout: Optional[float] = None) -> dict[str, Any]:
        """Drop a session's namespace (default: this client's); refused while it has work."""
        return await self._client.call("reset_session", self._reset_content(session), timeout=timeout)

    async def cancel(self, execution_id: str, reason: Optional[str] = None,
                     timeout: Optional[float] = None) -> dict[str, Any]:
        """Cancel one execution (queued: removed; running: interrupted)."""
        return await self._client.call("cancel", self._cancel_content(execution_id, reason), timeout=timeout)

    async def get_results(self, execution_id: str, release: bool = False, timeout: Optional[float] = None,
                          wait: bool = True, *, into: Any = None, shm: Optional[bool] = None) -> dict[str, Any]:
        """The execution's results, when ready (see ExecutionClient.get_results)."""
        _check_wait(wait)
        return await self._drive(self._results_flow(self._done_channel if wait else None, execution_id,
                                                    release, timeout, into, shm))

    async def wait(self, execution_id: str, timeout: Optional[float] = None) -> dict[str, Any]:
        """Wait for the execution to be final; return its status (ExecutionTimeout past ``timeout``)."""
        return await self._drive(self._wait_status_flow(self._done_channel(), execution_id, timeout))

    async def result(self, execution_id: str, timeout: Optional[float] = None) -> dict[str, Any]:
        """Wait for the execution and return its results (see ExecutionClient.result)."""
        return await self._drive(self._result_flow(self._done_channel(), execution_id, timeout))

    async def run(self, task: Any, config: Any = None, *, timeout: Optional[float] = None,
                  **kwargs: Any) -> dict[str, Any]:
        """execute + result (``timeout`` is the wait's; see ExecutionClient.run)."""
        content, buffers = self._run_request(task, config, **kwargs)
        return await self._drive(self._run_flow(self._done_channel, content, buffers, kwargs.get("push"), timeout))

    async def parallel_map(self, fn: Callable[[Any], Any], items: Sequence[Any], *,
                           timeout: Optional[float] = None, name: Optional[str] = None) -> list[Any]:
        """``[fn(x) for x in items]`` on the server's backend, in order (see ``ExecutionClient.parallel_map``)."""
        task, push = parallel_map_request(fn, items)
        return (await self.run(task, timeout=timeout, push=push, name=name or "parallel_map"))["_"]

    def subscribe(self, callback: Callable[[Event], Any], execution_id: Optional[str] = None) -> Subscription:
        """Call ``callback(event)`` on a background thread for each event (see ExecutionClient.subscribe)."""
        return _open_subscription(self, callback, execution_id)

    async def shutdown(self, timeout: Optional[float] = None) -> dict[str, Any]:
        """Ask the server to stop (running executions are cancelled)."""
        return await self._client.call("shutdown", {}, timeout=timeout)

    def close(self) -> None:
        """Close sockets and background threads; executes not yet sent never will be."""
        for _, fut in self._outbox:
            fut.cancel()
        self._outbox = []
        for task in self._sending:  # and no batch in flight may open a socket after close
            task.cancel()
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        for sub in self._subs:
            sub.close()
        self._subs.clear()
        if self._progress_watch is not None:
            self._progress_watch.close()
        self._client.close()

    async def __aenter__(self) -> AsyncExecutionClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
