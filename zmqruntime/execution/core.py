"""The one client core that ExecutionClient and AsyncExecutionClient both drive.

Why sans-IO generators, and not an asyncio core behind a thin sync wrapper
(as jupyter_client does): the blocking client is used from many threads at
once (a notebook's main thread waiting while a widget callback cancels) and
its no-op round trip is a few hundred microseconds; hopping to an event-loop
thread and back for every call would cost a measurable share of that and
tie every thread to one loop. So each algorithm (execute with its retries,
wait, result, the request contents and reply decoding) is written once here
as a generator that *yields* what it needs done:

* :class:`Request`: send one control request, resume with its reply content
  (an error reply or a timeout is thrown into the generator);
* :class:`Submit`: an ``execute`` (the async client may batch those of one
  loop turn into one ``execute_many``; both then drive :meth:`ClientCore._submit_flow`);
* :class:`AwaitDone`: wait up to N seconds for an execution's ``done`` event.

A client drives a flow with a loop that performs each step with its own I/O
(``ExecutionClient._drive`` blocks, ``AsyncExecutionClient._drive`` awaits),
so both clients have the same behaviour by construction. Subscriptions to
``done`` events go through a :class:`DoneChannel` (one per thread for the
blocking client, one per client for the asyncio one).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Generator, Mapping, Optional, Protocol, Sequence, Union

from .. import receive, serialize
from ..client import check_timeout, ok_or_raise, reply_content
from ..errors import ExecutionTimeout, RemoteError, ServerUnavailable
from ..protocol import FINAL_STATES, Message, new_execution_id, new_id
from ..transport import ConnectionInfo
from .events import Event
from .sessions import DEFAULT_SESSION, check_session_name

log = logging.getLogger("zmqruntime.client")

# wait(): how often to ask ``status`` while waiting for the 'done' event --
# fast when the event could have been missed, slowly otherwise.
UNSURE_POLL_START, UNSURE_POLL_MAX = 0.002, 0.5
PROMISED_POLL_START, PROMISED_POLL_MAX = 1.0, 2.0
#: A promised wait skips its safety-net ``status`` poll while other 'done' events keep
#: arriving on the channel (it is alive, so ours is not lost), but polls at least this often.
PROMISED_POLL_QUIET_MAX = 10.0
#: 'done' events a client keeps for get_results (inline results are <= 64 KiB each).
MAX_KEPT_DONE_EVENTS = 1024
#: Tries of one ``execute`` request (same request_id) within the client's timeout.
EXECUTE_ATTEMPTS = 3
#: ``run()``: seconds the execute reply may wait on the server for the outcome (``hold``).
#: A task that ends sooner costs one request and one reply, with no 'done' subscription;
#: a longer one is then waited for on the data channel as ``result()`` does.
RUN_HOLD = 0.5


@dataclass
class Request:
    """Step: one control request; resumes with the reply content (or the Message when ``raw``)."""

    msg_type: str
    content: dict[str, Any]
    buffers: Sequence[Any] = ()
    timeout: Optional[float] = None
    raw: bool = False


@dataclass
class Submit:
    """Step: queue one execution (content of an ``execute`` request); resumes with the ok reply."""

    content: dict[str, Any]
    buffers: list[Any]


@dataclass
class FetchInto:
    """Step: stream an execution's results into a directory part by part (``get_results(into=)``)."""

    execution_id: str
    into: Any
    release: bool


@dataclass
class AwaitDone:
    """Step: wait up to ``seconds`` for the 'done' Event of a subscribed execution (None if it did not come)."""

    execution_id: str
    seconds: float


@dataclass
class Upload:
    """Step: ``upload`` requests (content, [one buffer]), a few in flight; resumes with the reply contents."""

    parts: list[tuple[dict[str, Any], list[Any]]]


#: Pushed buffers at least this large go over the socket as ``upload`` parts (zmqruntime/uploads.py).
UPLOAD_FROM = 32 << 20
#: Bytes per ``upload`` part, and parts in flight at once: the server holds at most about their product.
UPLOAD_PART_BYTES = 16 << 20
UPLOAD_WINDOW = 4


Step = Union[Request, Submit, AwaitDone, FetchInto, Upload]
Flow = Generator[Step, Any, Any]


class DoneChannel(Protocol):
    """Subscriptions to ``<id>.done`` events, counted: ``execute`` takes one, ``wait`` another.

    An execution of the channel's own session (``subscribe``'s ``session``)
    needs no topic of its own: its end comes in the session's ``done_batch``
    (``unbatch`` subscribes to its ``<id>.done`` after all: an older server).

    ``promise`` records that the server said it saw our subscription
    (``done_subscribed`` in the execute reply): the event will reach us,
    so a wait need not poll ``status`` fast.
    """

    def subscribe(self, execution_id: str, session: Optional[str] = None) -> None: ...
    def unbatch(self, execution_id: str) -> None: ...
    def unsubscribe(self, execution_id: str) -> None: ...
    def forget(self, execution_id: str) -> None: ...
    def promise(self, execution_id: str) -> None: ...
    def is_promised(self, execution_id: str) -> bool: ...
    def heard_within(self, seconds: float) -> bool: ...


def check_id(execution_id: Any) -> str:
    if not isinstance(execution_id, str) or not execution_id:
        raise TypeError(f"execution_id must be a non-empty string, got {execution_id!r}")
    return execution_id


def check_config(config: Any) -> Any:
    """``config`` of the python kind: source code, or a mapping of names to JSON-able values."""
    if config is None or isinstance(config, str):
        return config
    if isinstance(config, Mapping):
        bad = [k for k in config if not (isinstance(k, str) and k.isidentifier())]
        if bad:
            raise TypeError(f"config names must be identifiers, got {bad[0]!r}")
        try:
            json.dumps(dict(config), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"config values must be JSON-able ({exc}); send other objects with push=") from None
        return dict(config)
    raise TypeError(f"config must be Python source (str) or a mapping of names to values, got {type(config).__name__}")


def results_in_done_event(done: Any) -> Optional[dict[str, Any]]:
    """The results a verified 'done' Event of a complete execution carries, else None."""
    return results_in_outcome(done.content, done.buffers) if isinstance(done, Event) else None


def results_in_outcome(done: Mapping[str, Any], buffers: Sequence[Any]) -> Optional[dict[str, Any]]:
    """The results a verified 'done' content (an event's, or a held execute reply's
    ``outcome``) carries with ``buffers``: its inline results, or ``{}`` when it returned
    nothing; else None: then ask the server. A dropped result still has names, so the
    server's ``results_expired`` explains it."""
    if done.get("status") == "complete":
        if done.get("inline_results"):
            return serialize.loads(buffers)
        if not done.get("result_names"):
            return {}
    return None


def decode_results(msg: Message) -> dict[str, Any]:
    """A verified ``results`` reply's values (its buffers unpickled)."""
    reply_content(msg)
    if not msg.buffers:
        return {}
    return serialize.loads(msg.buffers)


def _with_limit(content: dict[str, Any], limit: Optional[int]) -> dict[str, Any]:
    """``content`` asking for the newest ``limit`` executions (None: the server's default, 1,000)."""
    if limit is None:
        return content
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    return {**content, "limit": limit}


def parallel_map_request(fn: Callable[[Any], Any], items: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """The task and pushed values of a client-side ``parallel_map``: the function travels pickled by value."""
    from ..parallel import pickle_function

    if not callable(fn):
        raise TypeError(f"parallel_map needs a callable, got {type(fn).__name__}")
    code = ("from zmqruntime.parallel import parallel_map as _zr_parallel_map\n"
            "import cloudpickle as _zr_cloudpickle\n"
            "_zr_parallel_map(_zr_cloudpickle.loads(_zr_map_fn), _zr_map_items)")
    return code, {"_zr_map_fn": pickle_function(fn), "_zr_map_items": list(items)}


class ClientCore:
    """Requests, replies and the algorithms shared by both clients (see the module docstring).

    Subclasses set ``info``, ``timeout`` and ``closed``. Override
    :meth:`serialize_task` to send custom task kinds.
    """

    info: ConnectionInfo
    timeout: float
    #: Push large values through shared memory when the server is on this host (IPC or loopback).
    push_shm = True
    #: The session this client's executions run in (its namespace and queue on the server).
    session_name: str = DEFAULT_SESSION

    def _init_core(self) -> None:
        self._kept_done: dict[str, Event] = {}
        self._kept_lock = threading.Lock()

    @property
    def closed(self) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- requests -------------------------------------------------------------
    @staticmethod
    def _choose_session(session: Optional[str]) -> str:
        """``session`` checked, or a new one of this client's own."""
        if session is None:
            return f"client-{new_id()[:12]}"
        if not isinstance(session, str):
            raise TypeError(f"session must be a string, got {type(session).__name__}")
        return check_session_name(session)

    def serialize_task(self, task: Any, config: Any = None, results: Optional[Sequence[str]] = None) -> dict[str, Any]:
        """The JSON-friendly task for ``task``: Python source by default, or a dict with a ``kind``.

        ``config`` runs first in the task's namespace (source code) or binds
        names before it runs (a mapping); a custom kind receives it as the
        task's ``config`` field in ``validate_task`` and ``execute_task``.
        """
        if isinstance(task, str):
            spec: dict[str, Any] = {"kind": "python", "code": task}
            if results:
                if isinstance(results, str) or not all(isinstance(n, str) for n in results):
                    raise TypeError(f"results must be a list of variable names, got {results!r}")
                spec["results"] = list(results)
            if config is not None:
                spec["config"] = check_config(config)
            return spec
        if isinstance(task, Mapping) and isinstance(task.get("kind"), str):
            spec = dict(task)
            if config is not None:
                spec["config"] = config
            return spec
        raise TypeError(f"task must be Python source (str) or a dict with a 'kind', got {type(task).__name__}")

    def _execute_request(self, task: Any, config: Any, name: Optional[str], timeout: Optional[float],
                         results: Optional[Sequence[str]], push: Optional[Mapping[str, Any]],
                         request_id: Optional[str], session: Optional[str] = None) -> tuple[dict[str, Any], list[Any]]:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string, got {type(name).__name__}")
        if request_id is not None and (not isinstance(request_id, str) or not request_id):
            raise TypeError(f"request_id must be a non-empty string, got {request_id!r}")
        task_spec = self.serialize_task(task, config, results=results) if config is not None \
            else self.serialize_task(task, results=results)  # a subclass written before 'config' still works
        content: dict[str, Any] = {"task": task_spec, "name": name or "", "timeout": check_timeout(timeout),
                   "execution_id": new_execution_id(), "request_id": request_id or new_id(),
                   "session": self.session_name if session is None else self._choose_session(session)}
        buffers: list[Any] = []
        if push:
            if not isinstance(push, Mapping) or not all(isinstance(k, str) and k.isidentifier() for k in push):
                raise TypeError("push must be a mapping of variable names to values")
            buffers, files = receive.prepare_push(push, self.push_shm and receive.same_host(self.info))
            if files:  # large values wait in shared-memory files the server takes over
                content["shm"] = files
        return content, buffers

    def _run_request(self, task: Any, config: Any = None, *, name: Optional[str] = None,
                     results: Optional[Sequence[str]] = None, push: Optional[Mapping[str, Any]] = None,
                     request_id: Optional[str] = None, session: Optional[str] = None) -> tuple[dict[str, Any], list[Any]]:
        """``run``'s execute request: ``execute``'s arguments but its ``timeout``, which bounds run's wait."""
        return self._execute_request(task, config, name, None, results, push, request_id, session)

    @staticmethod
    def _push_over_socket(content: dict[str, Any], push: Any) -> tuple[dict[str, Any], list[Any]]:
        """The request again with every pushed byte in its buffers (the server found no shm file)."""
        receive.discard_push(content.pop("shm", []))
        return content, receive.prepare_push(push, False)[0]

    @staticmethod
    def _check_shm(shm: Any) -> None:
        if shm is not None and not isinstance(shm, bool):
            raise TypeError(f"shm must be True, False or None (automatic), got {shm!r}")

    @staticmethod
    def _status_content(execution_id: Optional[str], limit: Optional[int] = None) -> dict[str, Any]:
        if execution_id is None:
            return _with_limit({}, limit)
        if limit is not None:
            raise TypeError("limit applies to the status of all executions, not of one execution_id")
        return {"execution_id": check_id(execution_id)}

    @staticmethod
    def _status_of(reply: dict[str, Any], execution_id: Optional[str]) -> Any:
        return reply["executions"] if execution_id is None else reply["execution"]

    @staticmethod
    def _list_content(status: Optional[str], session: Optional[str], limit: Optional[int] = None) -> dict[str, Any]:
        if status is not None and not isinstance(status, str):
            raise TypeError(f"status must be a state name (str) or None, got {type(status).__name__}")
        if session is not None and not isinstance(session, str):
            raise TypeError(f"session must be a string or None, got {type(session).__name__}")
        content: dict[str, Any] = {"status": status} if status else {}
        if session is not None:
            content["session"] = session
        return _with_limit(content, limit)

    def _reset_content(self, session: Optional[str]) -> dict[str, Any]:
        if session is not None and not isinstance(session, str):
            raise TypeError(f"session must be a string or None, got {type(session).__name__}")
        return {"session": self.session_name if session is None else session}

    @staticmethod
    def _cancel_content(execution_id: str, reason: Optional[str]) -> dict[str, Any]:
        content = {"execution_id": check_id(execution_id)}
        if reason is not None:
            if not isinstance(reason, str):
                raise TypeError(f"reason must be a string, got {type(reason).__name__}")
            content["reason"] = reason
        return content

    # -- flows ------------------------------------------------------------------
    def _execute_flow(self, channel: DoneChannel, content: dict[str, Any], buffers: list[Any],
                      push: Optional[Mapping[str, Any]] = None) -> Flow:
        """Subscribe to the 'done' event, then submit: a fast task's event is not missed by wait()."""
        proposed = content["execution_id"]
        channel.subscribe(proposed, content.get("session"))
        self._watch_progress(proposed)
        try:
            reply = yield from self._send_execute_flow(self._queue_flow, content, buffers, push)
        except BaseException:  # refused or unanswered: nothing to wait for under this id
            channel.unsubscribe(proposed)
            self._unwatch_progress(proposed)
            raise
        exec_id = reply["execution_id"]
        if "done_batch" not in reply:  # an older server: it sends no done_batch, follow '<id>.done'
            channel.unbatch(exec_id)
        if exec_id != proposed:  # a repeated request_id: the execution accepted earlier
            self._follow_instead(proposed, exec_id, channel)
        elif reply.get("done_subscribed"):  # the server will publish 'done' to us: wait need not poll
            channel.promise(exec_id)
        return exec_id

    def _run_flow(self, channel: Callable[[], DoneChannel], content: dict[str, Any], buffers: list[Any],
                  push: Optional[Mapping[str, Any]], timeout: Optional[float]) -> Flow:
        """``run``: an execute whose reply waits up to RUN_HOLD for the outcome (``hold``).

        A task that ends in time comes back in that one reply (no 'done'
        subscription, no second message: the round trip a no-op pays); a
        longer one (or an older server's plain reply) is then waited for as
        ``result`` waits, its 'done' event backed by ``status`` polls since
        it may have gone by before the subscription.
        """
        timeout = check_timeout(timeout)
        started = time.monotonic()
        hold = RUN_HOLD if timeout is None else min(RUN_HOLD, timeout)
        proposed = content["execution_id"]
        self._watch_progress(proposed)
        try:
            reply, reply_buffers = yield from self._send_execute_flow(
                self._held_execute_flow, {**content, "hold": hold}, buffers, push)
        except BaseException:
            self._unwatch_progress(proposed)
            raise
        exec_id = reply["execution_id"]
        if exec_id != proposed:  # a repeated request_id: the execution accepted earlier
            self._follow_instead(proposed, exec_id)
        outcome = reply.get("outcome")
        if not isinstance(outcome, dict):  # not over within the hold
            left = None if timeout is None else max(0.001, timeout - (time.monotonic() - started))
            return (yield from self._result_flow(channel(), exec_id, left))
        results = results_in_outcome(outcome, reply_buffers)
        if results is not None:
            return results
        return (yield from self._results_flow(None, exec_id, False, None))  # over: its results, or why not

    def _follow_instead(self, proposed: str, exec_id: str, channel: Optional[DoneChannel] = None) -> None:
        """A repeated request_id named an earlier execution: its events are followed, not the proposed id's."""
        if channel is not None:
            channel.subscribe(exec_id)
            channel.unsubscribe(proposed)
        self._watch_progress(exec_id)
        self._unwatch_progress(proposed)

    def _send_execute_flow(self, submit: Callable[[dict[str, Any], list[Any]], Flow], content: dict[str, Any],
                           buffers: list[Any], push: Optional[Mapping[str, Any]]) -> Flow:
        """``submit`` the execute (large pushes uploaded first); again over the socket when the
        server cannot open our shared-memory files (another host's /dev/shm)."""
        try:
            try:
                return (yield from submit(*(yield from self._upload_flow(content, buffers))))
            except RemoteError as exc:
                if exc.code != "shm_unavailable":
                    raise
                return (yield from submit(*(yield from self._upload_flow(*self._push_over_socket(content, push)))))
        finally:
            receive.discard_push(content.get("shm", []))  # those the server did not take

    @staticmethod
    def _queue_flow(content: dict[str, Any], buffers: list[Any]) -> Flow:
        """One execute as a Submit step (the asyncio client batches those of a loop turn): its reply content."""
        return (yield Submit(content, buffers))

    def _held_execute_flow(self, content: dict[str, Any], buffers: list[Any]) -> Flow:
        """One execute with ``hold``, alone: its reply content and buffers (a held outcome's results)."""
        msg = yield from self._submit_flow(content, buffers, raw=True)
        return reply_content(msg), msg.buffers

    def _upload_flow(self, content: dict[str, Any], buffers: list[Any]) -> Flow:
        """Large pushed buffers sent ahead as ``upload`` parts: the execute then names them (``uploads``).

        The server verifies and stores each part while the next is on the
        wire (zmqruntime/uploads.py). A server without ``upload`` answers
        ``unknown_type``: the buffers then go in the execute itself.
        """
        large = [i for i, b in enumerate(buffers) if i and "shm" not in content
                 and len(memoryview(b).cast("B")) >= UPLOAD_FROM]
        if not large:
            return content, buffers
        parts: list[tuple[dict[str, Any], list[Any]]] = []
        entries = []
        for i in large:
            upload_id, view = new_id(), memoryview(buffers[i]).cast("B")
            for offset in range(0, len(view), UPLOAD_PART_BYTES):
                parts.append(({"upload": upload_id, "nbytes": len(view), "part_bytes": UPLOAD_PART_BYTES,
                               "offset": offset}, [view[offset:offset + UPLOAD_PART_BYTES]]))
            entries.append({"index": i, "upload": upload_id})
        try:
            yield Upload(parts)
        except RemoteError as exc:
            if exc.code != "unknown_type":
                raise
            return content, buffers  # an older server: everything in one message
        return {**content, "uploads": entries}, [b"" if i in large else b for i, b in enumerate(buffers)]

    def _submit_flow(self, content: dict[str, Any], buffers: Sequence[Any] = (), raw: bool = False) -> Flow:
        """One ``execute``, retried with the same request_id (Lazy Pirate) within the client's timeout
        (each attempt also waits out the reply's ``hold``)."""
        total = self.timeout
        hold = content.get("hold") or 0.0
        for attempt_timeout in self._attempt_timeouts(total):
            try:
                return (yield Request("execute", content, buffers, attempt_timeout + hold, raw))
            except ServerUnavailable:
                if self.closed:
                    raise
                log.info("no reply to execute (request_id %s) within %.3g s; retrying", content["request_id"],
                         attempt_timeout)
        raise self._execute_unavailable(total, [content["request_id"]])

    def _submit_many_flow(self, contents: list[dict[str, Any]]) -> Flow:
        """Several executes as one ``execute_many``, retried like one: the per-execution answers."""
        total = self.timeout
        for attempt_timeout in self._attempt_timeouts(total):
            try:
                reply = yield Request("execute_many", {"executions": contents}, (), attempt_timeout)
            except ServerUnavailable:
                if self.closed:
                    raise
                continue
            answers = reply["executions"]
            if len(answers) != len(contents):
                raise RemoteError("bad_reply", f"execute_many answered {len(answers)} of {len(contents)} executions", {})
            return answers
        raise self._execute_unavailable(total, [c["request_id"] for c in contents], "execute_many")

    def _wait_flow(self, channel: DoneChannel, execution_id: str, timeout: Optional[float]) -> Flow:
        """The 'done' Event, or the final status when a ``status`` poll saw it first.

        The data channel does the waiting. ``status`` is polled with a short
        backoff only when the 'done' event could have gone by unseen (the
        wait subscribed late, or the execute reply said the server had not
        yet seen our subscription); otherwise it is a slow safety net for a
        lost event: polling fast would cost every pending wait a request per
        interval, which is what limits pipelined throughput.
        """
        check_id(execution_id)
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        promised = channel.is_promised(execution_id)
        channel.subscribe(execution_id)
        backoff, cap = (PROMISED_POLL_START, PROMISED_POLL_MAX) if promised else (UNSURE_POLL_START, UNSURE_POLL_MAX)
        polled = time.monotonic()
        try:
            while True:
                seconds = backoff if deadline is None else min(backoff, deadline - time.monotonic())
                final = yield AwaitDone(execution_id, seconds)
                if final is not None:
                    break
                # Hundreds of pipelined waits would each poll every second or two: while
                # the channel delivers other 'done' events, ours is queued, not lost.
                if (cap == PROMISED_POLL_MAX and channel.heard_within(backoff)
                        and time.monotonic() - polled < PROMISED_POLL_QUIET_MAX
                        and (deadline is None or time.monotonic() < deadline)):
                    continue
                polled = time.monotonic()
                reply = yield Request("status", {"execution_id": execution_id})
                status = reply["execution"]
                if status["status"] in FINAL_STATES:
                    final = status
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise ExecutionTimeout(f"execution {execution_id} still {status['status']} after {timeout:g} s")
                if reply.get("done_subscribed") and cap < PROMISED_POLL_MAX:  # our subscription has arrived
                    channel.promise(execution_id)
                    backoff, cap = PROMISED_POLL_START, PROMISED_POLL_MAX
                else:
                    backoff = min(backoff * 2, cap)
        except BaseException:
            channel.unsubscribe(execution_id)  # not over yet: execute's own subscription stays
            raise
        channel.forget(execution_id)  # over: its 'done' event will not come again
        return final

    def _wait_status_flow(self, channel: DoneChannel, execution_id: str, timeout: Optional[float]) -> Flow:
        """``wait``: the final status; a complete 'done' event is kept for get_results."""
        final = yield from self._wait_flow(channel, execution_id, timeout)
        if isinstance(final, dict):
            return final
        if final.get("status") == "complete":
            self._keep_done_event(final)
        return (yield Request("status", {"execution_id": execution_id}))["execution"]

    def _result_flow(self, channel: DoneChannel, execution_id: str, timeout: Optional[float]) -> Flow:
        """``result``: wait, then the results -- from the 'done' event when it carries them (no request)."""
        results = results_in_done_event((yield from self._wait_flow(channel, execution_id, timeout)))
        if results is not None:
            return results
        return (yield from self._results_flow(None, execution_id, False, None))  # after the wait: ready

    def _results_flow(self, channel: Optional[Callable[[], DoneChannel]], execution_id: str, release: bool,
                      timeout: Optional[float], into: Any = None, shm: Optional[bool] = None) -> Flow:
        """``get_results``: a kept 'done' event's results when it has them, else fetched (``_fetch_flow``).

        With a ``channel`` factory ("retrieve when ready"), an execution still
        queued or running is waited for (``timeout`` bounds the whole call),
        then fetched; the channel is opened only then.
        """
        check_id(execution_id)
        if not isinstance(release, bool):
            raise TypeError(f"release must be True or False, got {release!r}")
        self._check_shm(shm)
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._kept_lock:
            done = self._kept_done.pop(execution_id, None)
        results = None if release or into is not None else results_in_done_event(done)
        if results is not None:
            return results
        try:
            return (yield from self._fetch_flow(execution_id, release, timeout, into, shm))
        except RemoteError as exc:
            if exc.code != "not_finished" or channel is None:
                raise
        left = None if deadline is None else max(0.001, deadline - time.monotonic())
        final = yield from self._wait_flow(channel(), execution_id, left)
        results = None if release or into is not None else results_in_done_event(final)
        if results is not None:
            return results
        left = None if deadline is None else max(0.001, deadline - time.monotonic())
        return (yield from self._fetch_flow(execution_id, release, left and min(left, self.timeout), into, shm))

    def _fetch_flow(self, execution_id: str, release: bool, timeout: Optional[float], into: Any,
                    shm: Optional[bool]) -> Flow:
        """The results from the server: into a directory, through shared memory (same host), or over the socket."""
        if into is not None:
            return (yield FetchInto(execution_id, into, release))
        if shm if shm is not None else receive.same_host(self.info):
            msg = yield Request("results", receive.shm_request(execution_id), (), timeout, raw=True)
            ok_or_raise(msg.content)
            results = receive.decode_shm_reply(msg)
            if results is not None:
                if release:
                    yield Request("results", receive.release_request(execution_id), (), timeout)
                return results
        msg = yield Request("results", {"execution_id": execution_id, "release": release}, (), timeout, raw=True)
        return decode_results(msg)

    # -- helpers ------------------------------------------------------------------
    def _keep_done_event(self, event: Event) -> None:
        """Remember a waited-for 'done' event for ``get_results`` (bounded: oldest go first)."""
        with self._kept_lock:
            self._kept_done[event.execution_id] = event
            while len(self._kept_done) > MAX_KEPT_DONE_EVENTS:
                self._kept_done.pop(next(iter(self._kept_done)))

    def _watch_progress(self, execution_id: str) -> None:
        """Hook: the progress_callback subscription follows this execution (see progress_watch.py)."""
        watcher = getattr(self, "_progress_watch", None)
        if watcher is not None:
            watcher.watch(execution_id)

    def _unwatch_progress(self, execution_id: str) -> None:
        watcher = getattr(self, "_progress_watch", None)
        if watcher is not None:
            watcher.unwatch(execution_id)

    @staticmethod
    def _attempt_timeouts(total: float) -> Any:
        """Per-attempt timeouts: the time left, shared by the attempts left."""
        deadline = time.monotonic() + total
        for attempt in range(EXECUTE_ATTEMPTS):
            yield max(0.001, (deadline - time.monotonic()) / (EXECUTE_ATTEMPTS - attempt))

    def _execute_unavailable(self, total: float, request_ids: Sequence[str], what: str = "execute") -> ServerUnavailable:
        """No reply to an execute (or execute_many) after every attempt: say what is safe to do next."""
        if len(request_ids) == 1:
            queued = (f"The execution may or may not have been queued; execute(..., request_id={request_ids[0]!r}) "
                      "submits it again without running it twice")
        else:
            queued = (f"The {len(request_ids)} executions may or may not have been queued; submitting them again "
                      "with the same request_ids runs none twice")
        return ServerUnavailable(
            f"no reply to {what!r} from the zmqruntime server at {self.info.control_url} within {total:g} s "
            f"({EXECUTE_ATTEMPTS} attempts): is it running? {queued}"
        )
