"""ExecutionClient (blocking) and AsyncExecutionClient (asyncio).

Both build the same requests through :class:`ExecutionRequests`; only the
I/O differs. Subclass and override ``serialize_task`` to send custom task
kinds (the matching server subclass runs them in ``execute_task``).

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
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import zmq
import zmq.asyncio

from .. import receive, serialize
from .sessions import DEFAULT_SESSION, check_session_name
from ..curve import secure_client_socket
from ..polling import EVENTS, POLLIN
from ..client import AsyncZMQClient, ZMQClient, check_timeout, ok_or_raise, reply_content
from ..errors import ExecutionTimeout, RemoteError, ServerUnavailable
from ..protocol import FINAL_STATES, ProtocolError, Session, event_topic, new_execution_id, new_id
from ..spawn import ensure_server
from ..transport import DEFAULT_CONTROL_OFFSET, DEFAULT_IP, DEFAULT_PORT, ConnectionInfo, read_connection_file

log = logging.getLogger("zmqruntime.client")

# wait(): how often to ask ``status`` while waiting for the 'done' event --
# fast when the event could have been missed, slowly otherwise.
UNSURE_POLL_START, UNSURE_POLL_MAX = 0.002, 0.5
TRUSTED_POLL_START, TRUSTED_POLL_MAX = 1.0, 2.0

#: 'done' events an async client keeps for get_results (inline results are <= 64 KiB each).
MAX_KEPT_DONE_EVENTS = 1024
#: Tries of one ``execute`` request (same request_id) within the client's timeout.
EXECUTE_ATTEMPTS = 3


@dataclass
class Event:
    """One verified data-channel event.

    ``missed`` counts the events of this execution that this subscriber did
    not see before this one (a sequence gap); call ``get_status`` to recover
    the full state when it is non-zero.
    """

    type: str
    execution_id: str
    seq: int
    content: dict[str, Any] = field(default_factory=dict)
    missed: int = 0
    buffers: list[Any] = field(default_factory=list)  # inline results of a 'done' event

    def __getitem__(self, key: str) -> Any:
        return self.content[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.content.get(key, default)


def parse_event(session: Session, frames: Sequence[Any]) -> Optional[Event]:
    """One verified data-channel message as an Event (a ``progress_batch`` stays whole)."""
    try:
        msg = session.deserialize(frames, topic_frames=1)
    except ProtocolError:
        log.warning("dropped a data-channel message that failed verification")
        return None
    c = msg.content
    return Event(msg.msg_type, c.get("execution_id", ""), int(c.get("seq", 0)), c, buffers=msg.buffers)


def results_in_done_event(done: Any) -> Optional[dict[str, Any]]:
    """The results a verified 'done' Event of a complete execution carries (its inline
    results, or ``{}`` when it returned nothing), else None: then ask the server.
    A dropped result still has names, so the server's ``results_expired`` explains it."""
    if isinstance(done, Event) and done.get("status") == "complete":
        if done.get("inline_results"):
            return serialize.loads(done.buffers)
        if not done.get("result_names"):
            return {}
    return None


def parse_events(session: Session, frames: Sequence[Any]) -> list[Event]:
    """The events of one verified data-channel message: a ``progress_batch``
    becomes its progress events, in order; anything else is one event."""
    event = parse_event(session, frames)
    if event is None:
        return []
    if event.type != "progress_batch":
        return [event]
    try:
        return expand_progress_batch(event)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("dropped a malformed progress_batch of %s: %s", event.execution_id, exc)
        return []


def expand_progress_batch(batch: Event) -> list[Event]:
    """``progress_batch`` content -> one ``progress`` Event per row (docs/protocol.md)."""
    fields, rows, exec_id = batch["fields"], batch["events"], batch.execution_id
    if not isinstance(fields, list) or "seq" not in fields or not isinstance(rows, list):
        raise ValueError("'fields' must be a list naming 'seq' and 'events' a list")
    events = []
    for row in rows:
        if not isinstance(row, list) or len(row) != len(fields):
            raise ValueError(f"a row of {len(row) if isinstance(row, list) else type(row).__name__} "
                             f"values for {len(fields)} fields")
        content = dict(zip(fields, row))
        content["execution_id"] = exec_id
        seq = content["seq"]
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise ValueError(f"seq must be an integer, got {seq!r}")
        events.append(Event("progress", exec_id, seq, content))
    return events


class SequenceTracker:
    """Per-execution last seen seq → how many events were missed, and which are old news.

    An event whose ``seq`` is not above the last one seen for its execution
    is a duplicate or a replay (a captured event sent again): ``observe``
    returns False and the subscriber drops it, so a user callback sees each
    event of an execution at most once, in increasing ``seq`` order.
    """

    MAX_EXECUTIONS = 100_000

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.dropped = 0

    def observe(self, event: Event) -> bool:
        prev = self.last.get(event.execution_id)
        if prev is not None and event.seq <= prev:
            self.dropped += 1
            return False
        if prev is not None and event.seq > prev + 1:
            event.missed = event.seq - prev - 1
        self.last[event.execution_id] = event.seq
        if len(self.last) > self.MAX_EXECUTIONS:  # bounded: forget the execution first heard of
            del self.last[next(iter(self.last))]
        return True


class Subscription:
    """A background thread delivering events to ``callback`` until closed."""

    def __init__(self, info: ConnectionInfo, session: Session, callback: Callable[[Event], Any],
                 execution_id: Optional[str], context: zmq.Context):
        self.callback = callback
        self.execution_id = execution_id
        self._sock = context.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, 0)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, (execution_id or "").encode())
        secure_client_socket(self._sock, info)
        self._sock.connect(info.data_url)
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

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class DoneWaiter:
    """One thread's SUB socket that watches for 'done' events only.

    ``execute`` subscribes to ``<id>.done`` before sending the request (one
    small event per execution, whatever its progress rate) and ``wait``
    unsubscribes when it returns; ids never waited for are dropped after
    ``MAX_TOPICS`` newer ones (polling ``status`` still covers them).
    """

    MAX_TOPICS = 4096

    def __init__(self, context: zmq.Context, info: ConnectionInfo, session: Session):
        self.session = session
        self.sock = context.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 10_000)  # 'done' events only; overflow costs a status poll
        secure_client_socket(self.sock, info)
        self.sock.connect(info.data_url)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.topics: dict[str, int] = {}
        self.done: dict[str, Event] = {}
        self.trusted: set[str] = set()  # ids whose 'done' the server said it will publish to us

    def subscribe(self, execution_id: str) -> None:
        if execution_id not in self.topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, event_topic(execution_id, "done"))
        self.topics[execution_id] = self.topics.get(execution_id, 0) + 1
        while len(self.topics) > self.MAX_TOPICS:
            oldest = next(iter(self.topics))
            self.topics.pop(oldest)
            self.done.pop(oldest, None)
            self.trusted.discard(oldest)
            self.sock.setsockopt(zmq.UNSUBSCRIBE, event_topic(oldest, "done"))

    def unsubscribe(self, execution_id: str) -> None:
        count = self.topics.get(execution_id, 0) - 1
        if count > 0:
            self.topics[execution_id] = count
            return
        self.forget(execution_id)

    def forget(self, execution_id: str) -> None:
        """Drop the subscription whoever asked for it: the execution is over."""
        if self.topics.pop(execution_id, None) is not None:
            self.sock.setsockopt(zmq.UNSUBSCRIBE, event_topic(execution_id, "done"))
        self.done.pop(execution_id, None)
        self.trusted.discard(execution_id)

    def wait_done(self, execution_id: str, seconds: float) -> Optional[Event]:
        """Read events for up to ``seconds``; the 'done' event once it came."""
        end = time.monotonic() + max(0.0, seconds)
        while execution_id not in self.done:
            remaining = end - time.monotonic()
            if remaining <= 0 or not self.poller.poll(remaining * 1000):
                return None
            while self.sock.getsockopt(EVENTS) & POLLIN:
                frames = self.sock.recv_multipart(copy=False)
                event = parse_event(self.session, frames)
                if event is not None and event.type == "done" and event.execution_id in self.topics:
                    self.done[event.execution_id] = event
        return self.done[execution_id]


def _check_id(execution_id: Any) -> str:
    if not isinstance(execution_id, str) or not execution_id:
        raise TypeError(f"execution_id must be a non-empty string, got {execution_id!r}")
    return execution_id


def parallel_map_request(fn: Callable[[Any], Any], items: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """The task and pushed values of a client-side ``parallel_map``: the function travels pickled by value."""
    from ..parallel import pickle_function

    if not callable(fn):
        raise TypeError(f"parallel_map needs a callable, got {type(fn).__name__}")
    code = ("from zmqruntime.parallel import parallel_map as _zr_parallel_map\n"
            "import cloudpickle as _zr_cloudpickle\n"
            "_zr_parallel_map(_zr_cloudpickle.loads(_zr_map_fn), _zr_map_items)")
    return code, {"_zr_map_fn": pickle_function(fn), "_zr_map_items": list(items)}


class ExecutionRequests:
    """Request contents and reply decoding shared by both clients."""

    #: The session this client's executions run in (its namespace and queue on the server).
    session_name: str = DEFAULT_SESSION

    def _choose_session(self, session: Optional[str]) -> str:
        """``session`` checked, or a new one of this client's own."""
        if session is None:
            return f"client-{new_id()[:12]}"
        if not isinstance(session, str):
            raise TypeError(f"session must be a string, got {type(session).__name__}")
        return check_session_name(session)

    def _list_content(self, status: Optional[str], session: Optional[str]) -> dict[str, Any]:
        content: dict[str, Any] = {}
        if status is not None:
            if not isinstance(status, str):
                raise TypeError(f"status must be a string, got {type(status).__name__}")
            content["status"] = status
        if session is not None:
            content["session"] = session
        return content

    def serialize_task(self, task: Any, results: Optional[Sequence[str]] = None) -> dict[str, Any]:
        """The JSON-friendly task for ``task`` (Python source by default)."""
        if isinstance(task, str):
            spec: dict[str, Any] = {"kind": "python", "code": task}
            if results:
                if isinstance(results, str) or not all(isinstance(n, str) for n in results):
                    raise TypeError(f"results must be a list of variable names, got {results!r}")
                spec["results"] = list(results)
            return spec
        if isinstance(task, Mapping) and isinstance(task.get("kind"), str):
            return dict(task)
        raise TypeError(f"task must be Python source (str) or a dict with a 'kind', got {type(task).__name__}")

    def _execute_request(self, task: Any, name: Optional[str], timeout: Optional[float],
                         results: Optional[Sequence[str]], push: Optional[Mapping[str, Any]],
                         request_id: Optional[str] = None, session: Optional[str] = None) -> tuple[dict, list]:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string, got {type(name).__name__}")
        if request_id is not None and (not isinstance(request_id, str) or not request_id):
            raise TypeError(f"request_id must be a non-empty string, got {request_id!r}")
        content: dict[str, Any] = {"task": self.serialize_task(task, results=results), "name": name or "",
                   "timeout": check_timeout(timeout), "execution_id": new_execution_id(),
                   "request_id": request_id or new_id(),
                   "session": self.session_name if session is None else self._choose_session(session)}
        buffers: list = []
        if push:
            if not isinstance(push, Mapping) or not all(isinstance(k, str) and k.isidentifier() for k in push):
                raise TypeError("push must be a mapping of variable names to values")
            buffers, files = receive.prepare_push(push, self.push_shm and receive.same_host(self.info))
            if files:  # large values wait in shared-memory files the server takes over
                content["shm"] = files
        return content, buffers

    #: Push large values through shared memory when the server is on this host (IPC or loopback).
    push_shm = True
    info: ConnectionInfo

    @staticmethod
    def _push_over_socket(content: dict[str, Any], push: Any) -> tuple[dict, list]:
        """The request again with every pushed byte in its buffers (the server found no shm file)."""
        receive.discard_push(content.pop("shm", []))
        return content, receive.prepare_push(push, False)[0]

    @staticmethod
    def _check_shm(shm: Any) -> None:
        if shm is not None and not isinstance(shm, bool):
            raise TypeError(f"shm must be True, False or None (automatic), got {shm!r}")

    @staticmethod
    def _attempt_timeouts(total: float) -> Any:
        """Per-attempt timeouts: the time left, shared by the attempts left."""
        deadline = time.monotonic() + total
        for attempt in range(EXECUTE_ATTEMPTS):
            yield max(0.001, (deadline - time.monotonic()) / (EXECUTE_ATTEMPTS - attempt))

    @staticmethod
    def _execute_unavailable(info: ConnectionInfo, total: float, request_ids: Sequence[str],
                             what: str = "execute") -> ServerUnavailable:
        """No reply to an execute (or execute_many) after every attempt: say what is safe to do next."""
        if len(request_ids) == 1:
            queued = (f"The execution may or may not have been queued; execute(..., request_id={request_ids[0]!r}) "
                      "submits it again without running it twice")
        else:
            queued = (f"The {len(request_ids)} executions may or may not have been queued; submitting them again "
                      "with the same request_ids runs none twice")
        return ServerUnavailable(
            f"no reply to {what!r} from the zmqruntime server at {info.control_url} within {total:g} s "
            f"({EXECUTE_ATTEMPTS} attempts): is it running? {queued}"
        )

    @staticmethod
    def _decode_results(msg: Any) -> dict[str, Any]:
        reply_content(msg)
        if not msg.buffers:
            return {}
        return serialize.loads(msg.buffers)


class ExecutionClient(ExecutionRequests):
    """Submit, watch, cancel and fetch executions (blocking API).

    ``ExecutionClient(port=7777)`` connects to the server of that port (IPC
    or TCP, whichever is registered), starting a persistent IPC one if none
    answers (``auto_spawn=False`` to refuse; ``transport="tcp"`` for TCP).
    ``connection_file=`` connects to exactly that server.
    """

    def __init__(self, port: int = DEFAULT_PORT, *, ip: str = DEFAULT_IP, transport: Optional[str] = None,
                 name: Optional[str] = None, connection_file: Optional[str] = None,
                 timeout: float = 10.0, auto_spawn: bool = True, spawn_mode: str = "persistent",
                 spawn_timeout: float = 20.0, control_port_offset: int = DEFAULT_CONTROL_OFFSET,
                 server_args: Sequence[str] = (), session: Optional[str] = None):
        check_timeout(timeout, allow_none=False)
        self.session_name = self._choose_session(session)
        if connection_file is not None:
            info = read_connection_file(connection_file)
        elif auto_spawn:
            info = ensure_server(port, transport=transport, ip=ip, name=name, mode=spawn_mode,
                                 timeout=check_timeout(spawn_timeout, "spawn_timeout", allow_none=False),
                                 control_port_offset=control_port_offset, extra_args=tuple(server_args))
        else:
            from ..spawn import connection_path, find_any_server, find_server

            found = (find_any_server(port, name, timeout=timeout) if transport is None
                     else find_server(connection_path(port, transport, name), timeout=timeout))
            if found is None:
                raise ServerUnavailable(f"no zmqruntime server answers for port {port} and auto_spawn is off")
            info = found
        self.info = info
        self._client = ZMQClient(info, timeout=timeout)
        self.session = self._client.session
        self._local = threading.local()
        self._subs: list[Subscription] = []

    # -- requests -----------------------------------------------------------
    def ping(self, timeout: Optional[float] = None) -> dict[str, Any]:
        return self._client.call("ping", {}, timeout=timeout)

    def execute(self, task: Any, *, name: Optional[str] = None, timeout: Optional[float] = None,
                results: Optional[Sequence[str]] = None, push: Optional[Mapping[str, Any]] = None,
                request_id: Optional[str] = None, session: Optional[str] = None) -> str:
        """Queue ``task``; return its execution id at once.

        ``session`` runs it in that session (namespace and queue) instead of
        this client's own.

        Retried with the same ``request_id`` when a reply is lost, so the task
        is queued exactly once; pass ``request_id`` yourself to make a retry
        across calls (after ServerUnavailable) safe as well.
        """
        content, buffers = self._execute_request(task, name, timeout, results, push, request_id, session)
        proposed = content["execution_id"]
        waiter = self._waiter()
        # Subscribe before submitting, so a fast task's 'done' event is not missed by wait().
        waiter.subscribe(proposed)
        try:
            try:
                reply = self._call_idempotent(content, buffers)
            except RemoteError as exc:
                if exc.code != "shm_unavailable":
                    raise
                reply = self._call_idempotent(*self._push_over_socket(content, push))
            finally:
                receive.discard_push(content.get("shm", []))  # those the server did not take
        except BaseException:
            waiter.unsubscribe(proposed)
            raise
        exec_id = reply["execution_id"]
        if exec_id != proposed:  # a repeated request_id: the execution accepted earlier
            waiter.subscribe(exec_id)
            waiter.unsubscribe(proposed)
        elif reply.get("done_subscribed"):  # the server will publish 'done' to us: wait need not poll
            waiter.trusted.add(exec_id)
        return exec_id

    def _call_idempotent(self, content: dict[str, Any], buffers: list) -> dict[str, Any]:
        total = self._client.timeout
        for attempt_timeout in self._attempt_timeouts(total):
            try:
                return self._client.call("execute", content, buffers=buffers, timeout=attempt_timeout)
            except ServerUnavailable:
                if self._client.closed:
                    raise
                log.info("no reply to execute (request_id %s) within %.3g s; retrying", content["request_id"],
                         attempt_timeout)
        raise self._execute_unavailable(self.info, total, [content["request_id"]])

    def get_status(self, execution_id: Optional[str] = None, timeout: Optional[float] = None) -> Any:
        """One execution's full state, or a list of all when no id is given."""
        if execution_id is None:
            return self._client.call("status", {}, timeout=timeout)["executions"]
        return self._client.call("status", {"execution_id": _check_id(execution_id)}, timeout=timeout)["execution"]

    def list_executions(self, status: Optional[str] = None, session: Optional[str] = None) -> list[dict[str, Any]]:
        """Every execution the server remembers (``session=``: only that session's)."""
        return self._client.call("list", self._list_content(status, session))["executions"]

    def sessions(self) -> list[dict[str, Any]]:
        """The server's sessions: worker, queue length, running execution, idle time."""
        return self._client.call("sessions", {})["sessions"]

    def reset_session(self, session: Optional[str] = None) -> dict[str, Any]:
        """Drop a session's namespace (default: this client's); refused while it has work."""
        return self._client.call("reset_session", {"session": self.session_name if session is None else session})

    def cancel(self, execution_id: str, reason: Optional[str] = None, timeout: Optional[float] = None) -> dict[str, Any]:
        """Cancel one execution (queued: removed; running: interrupted)."""
        content = {"execution_id": _check_id(execution_id)}
        if reason is not None:
            if not isinstance(reason, str):
                raise TypeError(f"reason must be a string, got {type(reason).__name__}")
            content["reason"] = reason
        return self._client.call("cancel", content, timeout=timeout)

    def get_results(self, execution_id: str, release: bool = False, *, into: Any = None,
                    shm: Optional[bool] = None) -> dict[str, Any]:
        """The execution's results: ``{"_": last expression, name: value...}``.

        ``into=DIR``: written to files in DIR (new or empty) part by part as
        they arrive, arrays returned memory-mapped: for results larger than
        memory (see ``zmqruntime.receive``). ``shm``: map large buffers from
        shared memory (default: when the server is on this host).

        Raises ExecutionFailed (with the remote traceback), ExecutionCancelled,
        or RemoteError ``not_finished`` / ``results_expired``.
        """
        execution_id = _check_id(execution_id)
        self._check_shm(shm)
        if into is not None:
            return receive.fetch_into(self._results_request, execution_id, into, bool(release))
        if shm if shm is not None else receive.same_host(self.info):
            results = receive.decode_shm_reply(self._results_request(receive.shm_request(execution_id)))
            if results is not None:
                if release:
                    self._results_request(receive.release_request(execution_id))
                return results
        msg = self._client.request("results", {"execution_id": execution_id, "release": bool(release)},
                                   copy=False)
        return self._decode_results(msg)

    def _results_request(self, content: dict[str, Any]) -> Any:
        msg = self._client.request("results", content, copy=False)
        reply_content(msg)
        return msg

    def shutdown(self) -> dict[str, Any]:
        return self._client.call("shutdown", {})

    # -- waiting and events -------------------------------------------------
    def _waiter(self) -> "DoneWaiter":
        waiter = getattr(self._local, "waiter", None)
        if waiter is None:
            waiter = DoneWaiter(self._client.context, self.info, self.session)
            self._local.waiter = waiter
            self._client.adopt(waiter.sock)
        return waiter

    def wait(self, execution_id: str, timeout: Optional[float] = None) -> dict[str, Any]:
        """Block until the execution is final; return its status.

        ``timeout`` is an overall deadline: ExecutionTimeout is raised when it
        passes (the execution goes on). A dead server raises ServerUnavailable.
        """
        _check_id(execution_id)
        timeout = check_timeout(timeout)
        status = self._wait_final(execution_id, timeout)
        return status if isinstance(status, dict) else self.get_status(execution_id)

    def _wait_final(self, execution_id: str, timeout: Optional[float]) -> Any:
        """Wait for the 'done' event, polling ``status`` with a backoff meanwhile.

        Returns the final status (dict) when a poll saw it, or the 'done'
        Event when it arrived first (the caller fetches what it needs next).
        The poll is fast only when the event could have gone by unseen (see
        AsyncExecutionClient.wait); otherwise it is a slow safety net.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        waiter = self._waiter()
        trusted = execution_id in waiter.trusted
        waiter.subscribe(execution_id)
        try:
            backoff, cap = (TRUSTED_POLL_START, TRUSTED_POLL_MAX) if trusted else (UNSURE_POLL_START, UNSURE_POLL_MAX)
            while True:
                final = waiter.wait_done(execution_id, backoff if deadline is None else min(backoff, deadline - time.monotonic()))
                if final is not None:
                    break
                status = self.get_status(execution_id)
                if status["status"] in FINAL_STATES:
                    final = status
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise ExecutionTimeout(f"execution {execution_id} still {status['status']} after {timeout:g} s")
                backoff = min(backoff * 2, cap)
        except BaseException:
            waiter.unsubscribe(execution_id)  # not over yet: execute's own subscription stays
            raise
        waiter.forget(execution_id)  # over: its 'done' event will not come again
        return final

    def run(self, task: Any, *, timeout: Optional[float] = None, **kwargs: Any) -> dict[str, Any]:
        """execute + wait + get_results, for scripts (raises as get_results does)."""
        return self.result(self.execute(task, **kwargs), timeout=timeout)

    def parallel_map(self, fn: Callable[[Any], Any], items: Sequence[Any], *, timeout: Optional[float] = None,
                     name: Optional[str] = None) -> list[Any]:
        """``[fn(x) for x in items]`` on the server's backend (its cores, or its dask cluster), in order.

        One execution of this client's session with one progress bar; cancel it like any other.
        """
        task, push = parallel_map_request(fn, items)
        return self.run(task, timeout=timeout, push=push, name=name or "parallel_map")["_"]

    def result(self, execution_id: str, timeout: Optional[float] = None) -> dict[str, Any]:
        """Wait for the execution and return its results (``wait`` + ``get_results``,
        raising as they do), in one step: when the 'done' event carries the
        results or says there are none, no request is needed at all."""
        done = self._wait_final(_check_id(execution_id), check_timeout(timeout))
        results = results_in_done_event(done)  # verified with the event: no extra round trip
        return results if results is not None else self.get_results(execution_id)

    def subscribe(self, callback: Callable[[Event], Any], execution_id: Optional[str] = None) -> Subscription:
        """Call ``callback(event)`` on a background thread for each event.

        Events of one execution (``execution_id``) or of all. Close the
        returned Subscription to stop.
        """
        if not callable(callback):
            raise TypeError("callback must be callable")
        if execution_id is not None:
            _check_id(execution_id)
        sub = Subscription(self.info, self.session, callback, execution_id, self._client.context)
        self._subs.append(sub)
        return sub

    def close(self) -> None:
        for sub in self._subs:
            sub.close()
        self._subs.clear()
        self._client.close()

    def __enter__(self) -> "ExecutionClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncExecutionClient(ExecutionRequests):
    """The asyncio flavour, for use inside a running event loop.

    Build it with ``await AsyncExecutionClient.connect(port=...)`` (server
    discovery and auto-spawn run in a thread so the loop is not blocked), or
    directly from a ConnectionInfo.
    """

    def __init__(self, info: ConnectionInfo, timeout: float = 10.0, session: Optional[str] = None):
        self.session_name = self._choose_session(session)
        self.info = info
        self._client = AsyncZMQClient(info, timeout=timeout)
        self.session = self._client.session
        self._sub: Optional["zmq.asyncio.Socket"] = None
        self._sub_reader: Optional[asyncio.Task] = None
        self._done: dict[str, "asyncio.Future[None]"] = {}
        self._trusted: set[str] = set()  # ids whose 'done' the server said it will publish to us
        self._done_events: dict[str, Event] = {}  # 'done' events of waited-for executions, for get_results
        self._outbox: list[tuple[dict[str, Any], "asyncio.Future[dict[str, Any]]"]] = []  # executes of this turn
        self._sending: set["asyncio.Task[None]"] = set()
        self._to_unsubscribe: set[str] = set()  # 'done' topics to drop at the end of this loop turn

    @classmethod
    async def connect(cls, port: int = DEFAULT_PORT, *, timeout: float = 10.0, session: Optional[str] = None,
                      **kwargs: Any) -> "AsyncExecutionClient":
        loop = asyncio.get_running_loop()

        def discover() -> ConnectionInfo:
            sync = ExecutionClient(port, timeout=timeout, **kwargs)
            sync.close()
            return sync.info

        return cls(await loop.run_in_executor(None, discover), timeout=timeout, session=session)

    async def ping(self) -> dict[str, Any]:
        return await self._client.call("ping", {})

    async def execute(self, task: Any, *, name: Optional[str] = None, timeout: Optional[float] = None,
                      results: Optional[Sequence[str]] = None, push: Optional[Mapping[str, Any]] = None,
                      request_id: Optional[str] = None, session: Optional[str] = None) -> str:
        """Queue ``task``; return its id. Concurrent calls are pipelined on one socket.

        Calls made in the same turn of the event loop (``asyncio.gather`` of
        many ``execute``) travel as one ``execute_many`` request, each
        accepted or refused on its own; a call that pushes values goes alone.
        Idempotent and retried like :meth:`ExecutionClient.execute`.
        """
        content, buffers = self._execute_request(task, name, timeout, results, push, request_id, session)
        proposed = content["execution_id"]
        self._done_future(proposed)  # subscribe before submitting
        try:
            try:
                reply = await (self._submit_alone(content, buffers) if buffers else self._submit_batched(content))
            except RemoteError as exc:
                if exc.code != "shm_unavailable":
                    raise
                reply = await self._submit_alone(*self._push_over_socket(content, push))
            finally:
                receive.discard_push(content.get("shm", []))
        except BaseException:  # refused or unanswered: nothing to wait for under this id
            if self._done.pop(proposed, None) is not None and self._sub is not None:
                self._unsubscribe_soon(proposed)
            raise
        exec_id = reply["execution_id"]
        if exec_id != proposed:  # a repeated request_id: the execution accepted earlier
            self._done_future(exec_id)
            if self._done.pop(proposed, None) is not None:
                self._unsubscribe_soon(proposed)
        elif reply.get("done_subscribed"):  # the server will publish 'done' to us: wait need not poll
            self._trusted.add(exec_id)
        return exec_id

    async def _submit_alone(self, content: dict[str, Any], buffers: list[Any]) -> dict[str, Any]:
        total = self._client.timeout
        for attempt_timeout in self._attempt_timeouts(total):
            try:
                return await self._client.call("execute", content, buffers=buffers, timeout=attempt_timeout)
            except ServerUnavailable:
                continue
        raise self._execute_unavailable(self.info, total, [content["request_id"]])

    def _submit_batched(self, content: dict[str, Any]) -> "asyncio.Future[dict[str, Any]]":
        """Join this turn's outbox; the first call schedules sending it at the end of the turn."""
        loop = asyncio.get_running_loop()
        fut: "asyncio.Future[dict[str, Any]]" = loop.create_future()
        if not self._outbox:
            loop.call_soon(self._send_outbox)
        self._outbox.append((content, fut))
        return fut

    def _send_outbox(self) -> None:
        batch, self._outbox = self._outbox, []
        task = asyncio.ensure_future(self._send_batch(batch))
        self._sending.add(task)  # a strong reference until it is done
        task.add_done_callback(self._sending.discard)

    async def _send_batch(self, batch: list[tuple[dict[str, Any], "asyncio.Future[dict[str, Any]]"]]) -> None:
        try:
            if len(batch) == 1:
                answers = [await self._submit_alone(batch[0][0], [])]
            else:
                answers = await self._submit_many([content for content, _ in batch])
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

    async def _submit_many(self, contents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        total = self._client.timeout
        for attempt_timeout in self._attempt_timeouts(total):
            try:
                reply = await self._client.call("execute_many", {"executions": contents}, timeout=attempt_timeout)
            except ServerUnavailable:
                continue
            answers = reply["executions"]
            if len(answers) != len(contents):
                raise RemoteError("bad_reply", f"execute_many answered {len(answers)} of {len(contents)} executions", {})
            return answers
        raise self._execute_unavailable(self.info, total, [c["request_id"] for c in contents], "execute_many")

    async def get_status(self, execution_id: Optional[str] = None) -> Any:
        if execution_id is None:
            return (await self._client.call("status", {}))["executions"]
        return (await self._client.call("status", {"execution_id": _check_id(execution_id)}))["execution"]

    async def list_executions(self, status: Optional[str] = None, session: Optional[str] = None) -> list[dict[str, Any]]:
        return (await self._client.call("list", self._list_content(status, session)))["executions"]

    async def sessions(self) -> list[dict[str, Any]]:
        return (await self._client.call("sessions", {}))["sessions"]

    async def reset_session(self, session: Optional[str] = None) -> dict[str, Any]:
        return await self._client.call("reset_session", {"session": self.session_name if session is None else session})

    async def cancel(self, execution_id: str, reason: Optional[str] = None) -> dict[str, Any]:
        content = {"execution_id": _check_id(execution_id)}
        if reason is not None:
            content["reason"] = reason
        return await self._client.call("cancel", content)

    async def get_results(self, execution_id: str, release: bool = False, *, into: Any = None,
                          shm: Optional[bool] = None) -> dict[str, Any]:
        """The results; taken from the verified 'done' event when they rode along
        in it (small results, as ``ExecutionClient.run`` does), else fetched.
        ``into`` and ``shm`` as in :meth:`ExecutionClient.get_results`."""
        self._check_shm(shm)
        if into is not None:
            return await receive.fetch_into_async(self._results_request, _check_id(execution_id), into, bool(release))
        done = self._done_events.pop(_check_id(execution_id), None)
        results = None if release else results_in_done_event(done)
        if results is not None:
            return results
        if shm if shm is not None else receive.same_host(self.info):
            results = receive.decode_shm_reply(await self._results_request(receive.shm_request(execution_id)))
            if results is not None:
                if release:
                    await self._results_request(receive.release_request(execution_id))
                return results
        msg = await self._client.request("results", {"execution_id": execution_id, "release": bool(release)})
        return self._decode_results(msg)

    async def _results_request(self, content: dict[str, Any]) -> Any:
        msg = await self._client.request("results", content)
        reply_content(msg)
        return msg

    def _done_future(self, execution_id: str) -> "asyncio.Future[Event]":
        """A future resolved (with the event) by the data-channel reader when ``execution_id`` is done."""
        if self._sub is None:
            self._sub = zmq.asyncio.Context.instance().socket(zmq.SUB)
            self._sub.setsockopt(zmq.LINGER, 0)
            self._sub.setsockopt(zmq.RCVHWM, 10_000)
            secure_client_socket(self._sub, self.info)
            self._sub.connect(self.info.data_url)
            self._sub_reader = asyncio.ensure_future(self._read_events(self._sub))
        fut = self._done.get(execution_id)
        if fut is None:
            fut = self._done[execution_id] = asyncio.get_running_loop().create_future()
            if execution_id in self._to_unsubscribe:  # still subscribed: keep it that way
                self._to_unsubscribe.discard(execution_id)
            else:
                self._sub.setsockopt(zmq.SUBSCRIBE, event_topic(execution_id, "done"))
        return fut

    async def _read_events(self, sub: "zmq.asyncio.Socket") -> None:
        while True:
            event = parse_event(self.session, await sub.recv_multipart())
            if event is not None and event.type == "done":
                fut = self._done.get(event.execution_id)
                if fut is not None and not fut.done():
                    fut.set_result(event)

    def _keep_done_event(self, event: Event) -> None:
        """Remember a waited-for 'done' event for ``get_results`` (bounded: oldest go first)."""
        self._done_events[event.execution_id] = event
        while len(self._done_events) > MAX_KEPT_DONE_EVENTS:
            self._done_events.pop(next(iter(self._done_events)))

    async def wait(self, execution_id: str, timeout: Optional[float] = None) -> dict[str, Any]:
        """Wait for the 'done' event, then return the final status;
        ExecutionTimeout past ``timeout``. Many waits can run concurrently."""
        done = await self._wait_final(execution_id, timeout)
        if isinstance(done, dict):
            return done
        if done.get("status") == "complete":
            self._keep_done_event(done)  # get_results can then use its inline results
        return await self.get_status(execution_id)

    async def parallel_map(self, fn: Callable[[Any], Any], items: Sequence[Any], *,
                           timeout: Optional[float] = None, name: Optional[str] = None) -> list[Any]:
        """``[fn(x) for x in items]`` on the server's backend, in order (see ``ExecutionClient.parallel_map``)."""
        task, push = parallel_map_request(fn, items)
        execution_id = await self.execute(task, push=push, name=name or "parallel_map")
        return (await self.result(execution_id, timeout=timeout))["_"]

    async def result(self, execution_id: str, timeout: Optional[float] = None) -> dict[str, Any]:
        """Wait for the execution and return its results (``wait`` + ``get_results``,
        raising as they do), in one step: when the 'done' event carries the
        results or says there are none, no request is needed at all."""
        results = results_in_done_event(await self._wait_final(execution_id, timeout))
        return results if results is not None else await self.get_results(execution_id)

    async def _wait_final(self, execution_id: str, timeout: Optional[float]) -> "Event | dict[str, Any]":
        """The 'done' Event, or the final status when a ``status`` poll saw it first.

        The data channel does the waiting.  ``status`` is asked at the start
        and polled with a short backoff only when the 'done' event could have
        gone by unseen (the wait subscribed late, or the execute reply said
        the server had not yet seen our subscription: ``done_subscribed``).
        Otherwise it is a slow safety net for a lost event: polling fast would
        cost every pending wait a request per interval, which is what limited
        pipelined throughput.
        """
        _check_id(execution_id)
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        trusted = execution_id in self._trusted
        done = self._done_future(execution_id)
        backoff, cap = (TRUSTED_POLL_START, TRUSTED_POLL_MAX) if trusted else (UNSURE_POLL_START, UNSURE_POLL_MAX)
        status: Optional[dict[str, Any]] = None
        try:
            check = not trusted
            while True:
                if done.done():
                    return done.result()
                if check:
                    status = await self.get_status(execution_id)
                    if status["status"] in FINAL_STATES:
                        return status
                check = True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    state = status["status"] if status else "not done"
                    raise ExecutionTimeout(f"execution {execution_id} still {state} after {timeout:g} s")
                try:
                    await asyncio.wait_for(asyncio.shield(done), backoff if remaining is None else min(backoff, remaining))
                except asyncio.TimeoutError:
                    backoff = min(backoff * 2, cap)
        finally:
            self._trusted.discard(execution_id)
            if self._done.pop(execution_id, None) is not None and self._sub is not None:
                self._unsubscribe_soon(execution_id)

    def _unsubscribe_soon(self, execution_id: str) -> None:
        """Unsubscribe at the end of this loop turn, together with the others finished in it:
        each (un)subscribe may wake libzmq's I/O thread, and one wake-up serves a whole run."""
        if not self._to_unsubscribe:
            asyncio.get_running_loop().call_soon(self._flush_unsubscribes)
        self._to_unsubscribe.add(execution_id)

    def _flush_unsubscribes(self) -> None:
        ids, self._to_unsubscribe = self._to_unsubscribe, set()
        if self._sub is not None:
            for execution_id in ids:
                self._sub.setsockopt(zmq.UNSUBSCRIBE, event_topic(execution_id, "done"))

    async def shutdown(self) -> dict[str, Any]:
        return await self._client.call("shutdown", {})

    def close(self) -> None:
        for _, fut in self._outbox:  # not sent yet: they never will be
            fut.cancel()
        self._outbox = []
        for task in self._sending:  # and no batch in flight may open a socket after close
            task.cancel()
        if self._sub_reader is not None:
            self._sub_reader.cancel()
        if self._sub is not None:
            self._sub.close(linger=0)
            self._sub = None
        self._client.close()
