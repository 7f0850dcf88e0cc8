"""ExecutionServer: records, sessions and their queues, cancel and results.

User code never runs in the server's process: an ``ExecutionBackend``
(``backend.py``; the local process pool by default, or a dask cluster) runs
it, so the control loop keeps answering in microseconds while tasks burn
CPU. The server keeps the one scheduler: each session (``sessions.py``: a
namespace and a FIFO queue) runs one execution at a time, sessions run side
by side up to ``concurrency``, served round robin.

Lifecycle of an execution and who emits which event::

    execute  -> queued   (server: status, seq 1)
    dispatch -> running  (server: status)
    task     -> progress / stream events (backend; numbered after 'running')
    finish   -> complete | failed | cancelled (server: status, then done)

Cancel of a queued execution removes it. Cancel of a running one asks the
backend to interrupt it (locally: SIGINT, then SIGTERM and SIGKILL after
grace periods; the session's namespace is then lost and its next execution
says so). A per-execution ``timeout`` takes the same path.

Custom task kinds: a ``TaskKind`` (``kinds.py``) named in
``task_kind_classes``; every worker loads the same classes. Subclassing and
overriding ``validate_task`` / ``execute_task`` still works (the worker
imports the server class by name, so it must be importable).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

from traitlets import Any as AnyTrait
from traitlets import Dict, Float, Int, Unicode

from .. import parts, shm, spill
from ..frames import send_frames
from ..protocol import (
    EXECUTION_ID_LENGTH,
    PROGRESS_BATCH_TOPIC,
    event_topic,
    is_execution_id,
    new_execution_id,
    session_done_topic,
)
from ..server import HeldRequest, Reply, ReplyLater, RequestError, ZMQServer
from ..uploads import UploadError, UploadStore
from .backend import ExecutionBackend, Job, Loss, resolve_backend
from .json_results import RESULT_FORMATS
from .kinds import load_kinds
from .records import ExecutionRecord, RecordStore
from .runner import TaskContext
from .sessions import SessionState, SessionTable, check_session_name

log = logging.getLogger("zmqruntime.execution")

#: ``request_id``: what a client may use as an idempotency key (printable ASCII, no spaces).
REQUEST_ID_MAX_LENGTH = 128
#: Longest an ``execute`` may ask its reply to wait for the outcome (``hold``, seconds).
MAX_HOLD = 60.0
#: Seconds between ``done_batch`` events while a session's executions end back to back. An
#: end after a quiet spell, or one that leaves its session with nothing queued or running,
#: goes out at the end of the loop turn; during a stream of ends, those of the next
#: DONE_BATCH_GAP go as one message (at 4,000 ends/s, ~4 of them).
DONE_BATCH_GAP = 0.001


def check_request_id(value: Any) -> Optional[str]:
    """The validated ``request_id`` of an execute request (None when absent)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError("bad_request", f"'request_id' must be a string, got {type(value).__name__}")
    # printable ASCII without the space: '!' to '~' (str methods: 0.2 µs, a loop over the characters 3.9)
    if not 1 <= len(value) <= REQUEST_ID_MAX_LENGTH or not (value.isascii() and value.isprintable()) or " " in value:
        raise RequestError("bad_request", f"'request_id' must be 1 to {REQUEST_ID_MAX_LENGTH} printable ASCII "
                                          f"characters without spaces, got {value[:40]!r}{'...' if len(value) > 40 else ''}")
    return value


def check_hold(value: Any) -> float:
    """An ``execute``'s ``hold``: seconds its reply may wait for the outcome (0: reply at once)."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= MAX_HOLD:
        raise RequestError("bad_request", f"'hold' must be a number of seconds from 0 to {MAX_HOLD:g}, got {value!r}")
    return float(value)


def request_fingerprint(task: dict[str, Any], name: str, timeout: Any, buffers: list[Any],
                        session: str) -> dict[str, Any]:
    """What must match for a repeated ``request_id`` to be the same request.

    The values themselves (the record keeps the task anyway), compared with
    ``==`` only when a request_id repeats: hashing them on every ``execute``
    cost more than the rest of accepting a no-op. Pushed buffers are compared
    by count and sizes: hashing them again would cost a pass over possibly
    gigabytes on the control loop, and a client retrying sends the very same
    frames.
    """
    sizes = [len(b.buffer) if hasattr(b, "buffer") else len(b) for b in buffers]
    return {"task": task, "name": name, "timeout": timeout, "push": sizes, "session": session}


#: Executions a ``list`` or ``status`` (of all) returns unless the request sets ``limit``: the newest.
DEFAULT_LIST_LIMIT = 1000
#: Queued ids a ``ping`` reply names (``queued_total`` counts them all).
PING_QUEUED_IDS = 100


def json_reply(rec: ExecutionRecord, content: dict[str, Any]) -> dict[str, Any]:
    """A ``results`` reply with ``format: "json"``: the values inline, or ``not_json``."""
    if rec.result_json is None and rec.result_names:
        raise RequestError("not_json", f"the results of {rec.execution_id} are not plain JSON values (or are larger "
                                       "than 1 MiB): fetch them with format 'pickle'", names=rec.result_names)
    return {**content, "format": "json", "values": json.loads(rec.result_json or "{}")}


class ExecutionServer(ZMQServer):
    concurrency = Int(os.cpu_count() or 1,
                      help="Executions running at once, over all sessions (default: the machine's cores).").tag(config=True)
    backend_class = AnyTrait("local", help="Where code runs: 'local', 'dask', 'module:Class' or an "
                                           "ExecutionBackend subclass.").tag(config=True)
    session_idle_timeout = Float(1800.0, help="Seconds a session's worker may sit idle before it is released "
                                              "(its next execution says namespace_reset).").tag(config=True)
    max_session_workers = Int(64, help="Sessions holding a namespace at once; past it the least recently "
                                       "used idle one is released.").tag(config=True)
    cancel_grace_period = Float(2.0, help="Seconds after SIGINT before the worker is terminated.").tag(config=True)
    kill_grace_period = Float(1.0, help="Seconds after SIGTERM before the worker is killed.").tag(config=True)
    max_records = Int(1000, help="Executions remembered (oldest finished ones forgotten first).").tag(config=True)
    max_batch = Int(10_000, help="Most executions one execute_many request may carry.").tag(config=True)
    max_results = Int(100, help="Results kept at most (count).").tag(config=True)
    max_result_bytes = Int(4 << 30, help="Results kept at most (total bytes).").tag(config=True)
    max_result_age = Float(24 * 3600.0, help="Results older than this (seconds) are dropped.").tag(config=True)
    inline_result_bytes = Int(64 * 1024, help="Results up to this size also travel in the 'done' event.").tag(config=True)
    shm_result_bytes = Int(1 << 20, help="Result buffers at least this large are kept in shared-memory files "
                                         "(a client on this host maps them); 0 = never.").tag(config=True)
    shm_dir = Unicode("", help="Directory of shared-memory files (default /dev/shm, or $ZMQRUNTIME_SHM_DIR).").tag(config=True)
    spill_result_bytes = Int(1 << 30, help="Results at least this large are kept in files on disk instead of "
                                           "memory; 0 = never.").tag(config=True)
    spill_dir = Unicode("", help="Directory of spill files (default: the runtime directory).").tag(config=True)
    max_spill_bytes = Int(64 << 30, help="Results kept at most in spill files (total bytes on disk).").tag(config=True)
    max_upload_bytes = Int(4 << 30, help="Pushed bytes staged at most by 'upload' parts not yet taken by an "
                                         "execute (total, in shared-memory files).").tag(config=True)
    worker_server_class = Unicode("", help="module:Class the workers import (default: this class).").tag(config=True)
    task_kind_classes = Dict(Unicode(), help="Task kinds besides 'python': name -> 'module:Class' "
                                             "(a TaskKind, importable on the workers too).").tag(config=True)

    #: Kinds a subclass validates and runs itself (overriding validate_task / execute_task); most
    #: applications add a TaskKind through ``task_kind_classes`` instead.
    task_kinds: tuple[str, ...] = ()

    def __init__(self, _worker_side: bool = False, **kwargs: Any):
        if _worker_side:
            # In a worker only execute_task is used: skip ZMQServer's key and
            # sockets, initialise just the traitlets Configurable underneath.
            super(ZMQServer, self).__init__(**kwargs)
            self.kinds = load_kinds(self.task_kind_classes)
            return
        super().__init__(**kwargs)
        self.kinds = load_kinds(self.task_kind_classes)
        for name in ("concurrency", "max_batch", "max_session_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_session_workers < self.concurrency:
            raise ValueError(f"max_session_workers ({self.max_session_workers}) must be >= concurrency "
                             f"({self.concurrency})")
        if not self.session_idle_timeout > 0:
            raise ValueError(f"session_idle_timeout must be > 0, got {self.session_idle_timeout}")
        self.backend_type = resolve_backend(self.backend_class)
        self.records = RecordStore(self.max_records, self.max_results, self.max_result_bytes, self.max_result_age,
                                   self.max_spill_bytes)
        from ..transport import runtime_dir

        self.files = spill.FileStore(spill.Settings(
            Path(self.shm_dir) if self.shm_dir else shm.default_dir(), max(0, self.shm_result_bytes),
            Path(self.spill_dir) if self.spill_dir else runtime_dir(), max(0, self.spill_result_bytes)))
        self.uploads = UploadStore(self.files.settings.shm_dir, max(0, self.max_upload_bytes))
        self.sessions = SessionTable()
        # Made now, so bad backend settings fail before any socket is bound; started in on_start.
        self.backend: ExecutionBackend = self.backend_type(parent=self, **self._backend_settings())
        self._backend_started = False
        self._backend_error: Optional[str] = None
        #: executions whose ``execute`` reply waits for their outcome (``hold``): request, reply so far
        self._held: dict[str, tuple[HeldRequest, dict[str, Any]]] = {}
        #: per session, the 'done' contents (with their inline buffers and digests) of the ends not
        #: sent yet whose session topic has a subscriber: one ``done_batch`` each (DONE_BATCH_GAP)
        self._done_batches: dict[str, list[tuple[dict[str, Any], list[Any], list[bytes]]]] = {}
        self._done_batch_sent = -math.inf  # monotonic time of the last done_batch send

    # -- worker side --------------------------------------------------------
    def execute_task(self, task: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        """Run one task in the worker; return ``{name: value}`` results."""
        kind = self.kinds.get(task["kind"])
        if kind is None:
            raise ValueError(f"{type(self).__name__} cannot run task kind {task['kind']!r}")
        return kind.run(task, ctx)

    # -- server side --------------------------------------------------------
    def validate_task(self, task: Any) -> dict[str, Any]:
        """Check a task before it is queued; raise RequestError if it is bad."""
        if not isinstance(task, dict):
            raise RequestError("bad_request", f"'task' must be an object, got {type(task).__name__}")
        kind = task.get("kind")
        if kind in self.task_kinds:  # a subclass's own kind: its override validated it
            return task
        if not isinstance(kind, str) or kind not in self.kinds:
            raise RequestError("unknown_task_kind",
                               f"task kind {kind!r} is not one of {sorted({*self.kinds, *self.task_kinds})}")
        return self.kinds[kind].validate(task)

    def on_start(self) -> None:
        if self.backend.runs_threads and not self._configured(type(self), "busy_poll"):
            self.busy_poll = 0.0  # its threads need the GIL the spin would hold
        self.files.start()  # before the workers: they inherit its settings
        self.backend.start(self)  # type: ignore[arg-type]  # bound by now: context is set
        self._backend_started = True
        self.call_every(60.0, self._enforce_retention)
        self.call_every(min(60.0, self.session_idle_timeout / 4), self._reap_idle_sessions)

    def _backend_settings(self) -> dict[str, Any]:
        """Server traits a backend shares by name (the cancel grace periods, the worker class)."""
        shared = {"cancel_grace_period": self.cancel_grace_period, "kill_grace_period": self.kill_grace_period,
                  "server_class": self.worker_server_class or f"{type(self).__module__}:{type(self).__qualname__}",
                  "task_kind_classes": dict(self.task_kind_classes)}
        traits = self.backend_type.class_traits()  # type: ignore[attr-defined]
        return {k: v for k, v in shared.items() if traits.get(k) is not None
                and not self._configured(self.backend_type, k)}

    def _configured(self, cls: type, name: str) -> bool:
        return any(name in self.config.get(c.__name__, {}) for c in cls.__mro__)

    def on_stop(self) -> None:
        for rec in list(self.records):
            if not rec.final:
                self._finish(rec, "cancelled", reason="server shut down")
        self._send_done_batches()  # the loop has stopped: its end-of-turn work does not run again
        if self._backend_started:
            self.backend.stop()
        for rec in self.records:  # results do not outlive the server: nor do their files
            rec.drop_results()
            rec.drop_push()
        self.uploads.close()

    def ping_info(self) -> dict[str, Any]:
        described = self.backend.describe()
        return {
            "concurrency": self.concurrency,
            "queued": self.sessions.queued(most=PING_QUEUED_IDS),  # a ping costs the same however long the queue
            "queued_total": self.sessions.queued_count(),
            "running": [s.running for s in self.sessions if s.running],
            "workers": described.get("workers", []),
            "backend": described,
            "worker_error": described.get("error"),
            "sessions": len(self.sessions),
            "executions": len(self.records),
        }

    # -- BackendHost: what the backend tells us ---------------------------------
    def backend_error(self, message: Optional[str]) -> None:
        """The backend cannot start workers (``message`` says why) or can again (None).

        Waiting executions carry the reason, so ``status`` tells why nothing moves;
        once it clears, scheduling resumes.
        """
        shown, self._backend_error = self._backend_error, message
        for exec_id in self.sessions.queued():
            rec = self.records.get(exec_id)
            if rec is not None and (message is not None or rec.reason == shown):
                rec.reason = message
        if message is None:
            self._schedule()

    def backend_ready(self) -> None:
        self._schedule()

    def backend_signed_event(self, frames: list[bytes]) -> None:
        """Forward a backend-signed event as is; the record parses it later.

        Nothing is decoded here (the topic starts with the execution id): the raw
        header/content pair is queued on the record and folded into its
        state when someone asks for it, which keeps the relay cheap under
        event floods.
        """
        rec = self.records.get(frames[0][:EXECUTION_ID_LENGTH].decode("ascii", "replace"))
        if rec is None or rec.final:
            return
        topic, _signature, header, content = frames  # protocol.EVENT_FRAMES, checked by the backend
        rec.queue_event(header, content)
        if self.wants(frames[0]):
            assert self.pub is not None  # bound: wants() read its subscriptions
            send_frames(self.pub, frames)

    def backend_event(self, execution_id: str, event_type: str, content: dict[str, Any]) -> None:
        """An unsigned event from a backend whose events do not travel on their own: sign and relay."""
        rec = self.records.get(execution_id)
        if rec is None or rec.final:
            return
        topic_type = PROGRESS_BATCH_TOPIC if event_type == "progress_batch" else event_type
        frames = self.session.serialize(event_type, content, topic=event_topic(execution_id, topic_type))
        self.backend_signed_event(frames)

    def backend_finished(self, execution_id: str, msg: dict[str, Any], buffers: list[Any],
                         started: Optional[str] = None) -> None:
        rec = self.records.get(execution_id)
        session = rec.session if rec is not None else self._session_running(execution_id)
        if session is not None:  # its session moves on first: the next one (if handed ahead) runs already
            self._moved_on(session, execution_id, started)
        if rec is None or rec.final:  # nobody will fetch it: delete the files the worker wrote
            self.files.discard(msg["result"].get("files") or [])
            self._schedule()
            return
        rec.absorb_events()
        rec.seq = max(rec.seq, msg["seq"])
        result = msg["result"]
        rec.result_names = result["names"]
        rec.result_error = result["error"]
        rec.result_frames = list(buffers)
        rec.result_digests = [bytes.fromhex(d) for d in result["digests"]]
        rec.result_nbytes = result["nbytes"]
        rec.result_json = result.get("json")
        if msg.get("namespace_reset"):  # the backend found the namespace gone only when it ran
            rec.namespace_reset = True
        if result.get("files"):
            try:
                rec.result_files = self.files.adopt_results(result["files"], rec.result_frames)
            except (OSError, ValueError) as exc:
                log.error("execution %s: result buffer file refused: %s", rec.execution_id, exc)
                rec.drop_results()
                rec.result_error = f"result buffer file refused: {exc}"
            parts.seed_digests(rec, result["files"])  # the worker hashed them as it wrote them
            parts.start_digests(rec)  # any it did not: for clients that fetch over the socket
            if rec.result_nbytes <= self.inline_result_bytes:
                parts.ensure_digests(rec)  # it rides in the 'done' event (HMAC-SHA256: every subscriber's)
        status = msg["status"]
        error = msg["error"]
        if status == "cancelled":
            reason = rec.reason or "interrupted"
        elif status == "failed" and error:
            reason = f"{error['ename']}: {error['evalue']}"[:500]  # lists and tables say why at a glance
        else:
            reason = None
        self._finish(rec, status, reason=reason, error=error, schedule_first=True)

    def backend_lost(self, loss: Loss) -> None:
        state = self.sessions.get(loss.session)
        if state is not None:
            state.has_namespace = False
            state.namespace_lost = True
            # handed ahead, never started: they wait for a new worker (or end, if cancelled meanwhile)
            self._not_started(self.sessions.lost(loss.session))
        rec = self.records.get(loss.execution_id) if loss.execution_id else None
        if rec is not None and not rec.final:
            rec.namespace_reset = True
            if loss.escalated and rec.reason:  # a cancel or timeout we escalated
                self._finish(rec, "cancelled",
                             reason=f"{rec.reason}; worker terminated after the grace period (remote namespace reset)")
            else:
                self._finish(rec, "failed",
                             reason=f"worker process died unexpectedly ({loss.description}); remote namespace reset",
                             error={"ename": "WorkerDied", "evalue": f"worker {loss.description}", "traceback": [],
                                    **loss.detail})
        self._schedule()

    # -- scheduling -------------------------------------------------------------
    def _capacity(self) -> int:
        cap = self.backend.capacity
        return self.concurrency if cap is None else min(self.concurrency, cap)

    def _schedule(self) -> None:
        """Start queued executions, round robin over sessions, up to the capacity.

        A session whose execution the backend cannot start yet (its worker is
        booting) keeps its place, first in line, and the others go on.
        """
        waiting: set[str] = set()
        while self.sessions.running < self._capacity():
            picked = self.sessions.next(skip=waiting)
            if picked is None:
                return
            state, exec_id = picked
            rec = self.records.get(exec_id)
            if rec is None:  # forgotten while queued (cannot happen: queued records are never trimmed)
                self.sessions.finished(state.name, exec_id)
                continue
            if not self._dispatch(state, rec):
                self.sessions.requeue(state.name, exec_id)
                waiting.add(state.name)
                if self._backend_error is not None:  # reported while it was being handed over
                    rec.reason = self._backend_error
        if self.sessions.with_ahead and self.sessions.others_wait():
            for name in list(self.sessions.with_ahead):  # their turn is over: another session waits
                self.backend.take_back(name)
                self.sessions.put_back(name)

    def _dispatch(self, state: SessionState, rec: ExecutionRecord) -> bool:
        """Hand ``rec`` to the backend; False (and back in its queue) if the backend cannot start it now."""
        if not state.has_namespace:
            self._make_room_for(state)
        # Hand over first, then announce: the 'running' event keeps the seq it
        # would have had, the backend numbers its events after it.
        seq = rec.seq + 1 + (rec.seq == 0)  # a 'queued' event not yet out takes the next one first
        job = Job(rec.execution_id, state.name, rec.task, seq, rec.push_frames)
        ahead = self._ahead_jobs(state)  # in the same message: the worker may end this one at once
        if not (self.backend.submit(job, ahead) if ahead else self.backend.submit(job)):
            return False
        self.sessions.take_ahead(state, len(ahead))
        if rec.seq == 0:  # its 'queued' event is not out yet
            self._emit_status(rec)
        if state.namespace_lost:
            rec.namespace_reset = True
            state.namespace_lost = False
        state.has_namespace = True
        self._mark_running(rec, seq)
        return True

    def _mark_running(self, rec: ExecutionRecord, seq: int) -> None:
        """The backend started ``rec``: record it and announce it with the seq reserved for it."""
        rec.seq = seq
        rec.status = "running"
        rec.started = time.time()
        if rec.reason == self._backend_error:  # a "cannot start a worker" note no longer applies
            rec.reason = None
        where = getattr(self.backend, "worker_pid", None)
        rec.worker_pid = where(rec.execution_id) if where else None
        rec.worker = self.backend.where(rec.execution_id)
        self._emit_status(rec, seq=rec.seq)
        if rec.timeout:
            exec_id = rec.execution_id
            self.call_later(rec.timeout, lambda: self._on_timeout(exec_id))

    def _hand_ahead(self, state: SessionState) -> None:
        """Give a running session's worker its next executions at once, while nobody else waits.

        Each then starts the moment the one before ends, and the server sends one
        message per ``max_ahead // 2`` executions instead of one each. Executions
        with pushed values go one at a time (their frames travel with ``submit``).
        """
        jobs = self._ahead_jobs(state)
        if jobs:
            self.sessions.take_ahead(state, len(jobs))
            self.backend.queue_ahead(state.name, jobs)

    def _ahead_jobs(self, state: SessionState) -> list[Job]:
        """The session's next executions to hand ahead now (none if enough are, or others wait)."""
        most = self.backend.max_ahead()
        if not most or not state.queue or len(state.ahead) > most // 2 or self.sessions.others_wait():
            return []
        jobs: list[Job] = []
        for exec_id in itertools.islice(state.queue, most - len(state.ahead)):
            rec = self.records.get(exec_id)
            if rec is None or rec.push_frames or exec_id in state.handed:  # (taken back, not settled yet)
                break
            if rec.seq == 0:  # its 'queued' event is not out yet
                self._emit_status(rec)
            rec.ahead_seq = rec.seq + 1
            jobs.append(Job(exec_id, state.name, rec.task, rec.ahead_seq))
        return jobs

    def _moved_on(self, session: str, ended: str, started: Optional[str]) -> None:
        """The session's running execution ended; the backend started ``started`` (handed ahead) in its place."""
        self._not_started(self.sessions.finished(session, ended, started))
        rec = self.records.get(started) if started is not None else None
        if rec is None or rec.final:  # none; or one cancelled an instant too late (the backend stops it)
            return
        self._mark_running(rec, max(rec.seq, rec.ahead_seq))
        self._hand_ahead(self.sessions.sessions[session])

    def backend_not_started(self, execution_id: str) -> None:
        rec = self.records.get(execution_id)
        if rec is not None:
            self.sessions.dropped(rec.session, execution_id)
            self._not_started([execution_id])

    def _not_started(self, execution_ids: list[str]) -> None:
        """Executions handed ahead that certainly did not start: a cancel that waited for that ends them."""
        for exec_id in execution_ids:
            rec = self.records.get(exec_id)
            if rec is not None and rec.cancelling and not rec.final:
                self.sessions.remove_queued(rec.session, exec_id)
                self._finish(rec, "cancelled", reason=f"{rec.reason} (before it started)")

    def _session_running(self, execution_id: str) -> Optional[str]:
        """The session whose running slot an execution holds (its record may be gone)."""
        return next((s.name for s in self.sessions if s.running == execution_id), None)

    def _make_room_for(self, state: SessionState) -> None:
        """Past ``max_session_workers`` namespaces, release the least recently used idle one."""
        while self.sessions.with_namespace() >= self.max_session_workers:
            victim = self.sessions.least_recently_used_idle(exclude=state.name)
            if victim is None:
                return
            self._release_session(victim)

    def _release_session(self, state: SessionState) -> None:
        log.info("releasing session %r (idle %.0f s)", state.name, state.idle_for())
        self.backend.release_session(state.name)
        state.has_namespace = False
        state.namespace_lost = True

    def _reap_idle_sessions(self) -> None:
        for state in self.sessions.idle_with_namespace(self.session_idle_timeout):
            self._release_session(state)

    def _on_timeout(self, exec_id: str) -> None:
        rec = self.records.get(exec_id)
        if rec is not None and rec.status == "running":
            self._cancel_running(rec, f"timeout after {rec.timeout:g} s")

    def _cancel_running(self, rec: ExecutionRecord, reason: str) -> None:
        if rec.reason is None:
            rec.reason = reason
        if rec.session in self.sessions.with_ahead:
            # Nothing may start after it on its worker while it is being stopped: if it ignores the
            # interrupt and the worker is killed, the next one must not die with it.
            self.backend.take_back(rec.session)
            self.sessions.put_back(rec.session)
        self.backend.cancel(rec.execution_id)

    # -- records and events ---------------------------------------------------
    def _emit_status(self, rec: ExecutionRecord, seq: Optional[int] = None) -> None:
        """Publish the record's status; ``seq`` when already reserved, else the next."""
        if seq is None:
            rec.absorb_events()
            rec.seq += 1
            seq = rec.seq
        topic = event_topic(rec.execution_id, "status")
        if self.wants(topic):  # most executions have no status subscriber: skip building the event
            self.send_event(topic, "status", {
                "execution_id": rec.execution_id, "seq": seq, "time": time.time(), "status": rec.status,
                "reason": rec.reason, "namespace_reset": rec.namespace_reset,
            })

    def _finish(self, rec: ExecutionRecord, status: str, *, reason: Optional[str] = None,
                error: Optional[dict[str, Any]] = None, schedule_first: bool = False) -> None:
        """Record the end of ``rec`` and announce it (status, then 'done').

        ``schedule_first``: start the next queued executions before the
        announcements are signed and sent, so a session's next task runs on
        its worker while this one's events go out (pipelined throughput).
        """
        if rec.status == "running":
            self.sessions.finished(rec.session, rec.execution_id)
        rec.status = status
        rec.drop_push()
        rec.finished = time.time()
        rec.finished_clock = time.monotonic()
        rec.reason = reason
        rec.error = error
        self.records.finished(rec)
        if rec.has_results:
            self.records.hold(rec)
            self.records.enforce()  # before 'done' announces them: a result over the limits is dropped now
        if schedule_first:
            self._schedule()
        held = self._held.pop(rec.execution_id, None)
        self._emit_status(rec)
        rec.seq += 1
        # Small results ride along, so a waiting client needs no extra round trip.
        inline = rec.has_results and rec.result_nbytes <= self.inline_result_bytes
        done = {
            "execution_id": rec.execution_id, "seq": rec.seq, "time": time.time(), "status": status,
            "reason": reason, "error": error, "has_results": rec.has_results, "result_names": rec.result_names,
            "result_nbytes": rec.result_nbytes, "result_error": rec.result_error,
            "namespace_reset": rec.namespace_reset, "inline_results": inline,
        }
        frames = rec.result_frames if inline else []
        if held is not None:  # the client waits on its execute reply: the outcome goes there
            request, reply = held
            self.answer(request, {**reply, "status": status, "outcome": done}, frames,
                        rec.result_digests if inline and request.scheme == self.session.scheme else None)
        self.publish(event_topic(rec.execution_id, "done"), "done", done, frames,
                     rec.result_digests if inline else None)
        if self.wanted_exactly(session_done_topic(rec.session)):
            self._batch_done(rec.session, done, frames, rec.result_digests if inline else [])

    def _batch_done(self, session: str, done: dict[str, Any], frames: list[Any], digests: list[bytes]) -> None:
        """Queue a 'done' content for the session's next ``done_batch`` (see DONE_BATCH_GAP)."""
        first = not self._done_batches
        self._done_batches.setdefault(session, []).append((done, frames, digests))
        state = self.sessions.get(session)
        if state is None or not state.busy:  # its session's last end for now: nothing to wait for
            self.call_soon(self._send_done_batches)
        elif first:
            wait = self._done_batch_sent + DONE_BATCH_GAP - time.monotonic()
            if wait > 0:
                self.call_later(wait, self._send_done_batches)
            else:
                self.call_soon(self._send_done_batches)

    def _send_done_batches(self) -> None:
        """One signed ``done_batch`` per session for the ends queued since the last one: a
        pipelining client then reads, verifies and parses one message for all of them."""
        if not self._done_batches:  # sent already (by an earlier turn's end or timer)
            return
        batches, self._done_batches = self._done_batches, {}
        self._done_batch_sent = time.monotonic()
        for session, ends in batches.items():
            outcomes = [{**done, "nbuffers": len(frames)} for done, frames, _ in ends]
            buffers = [b for _, frames, _ in ends for b in frames]
            digests = [d for _, _, ds in ends for d in ds]
            self.send_event(session_done_topic(session), "done_batch", {"session": session, "outcomes": outcomes},
                            buffers, digests)

    def _done_reaches_subscriber(self, exec_id: str, session: Optional[str]) -> bool:
        """Will this execution's end be published to a subscriber, as ``done`` or in a ``done_batch``?"""
        return self.wants(event_topic(exec_id, "done")) or (
            session is not None and self.wanted_exactly(session_done_topic(session)))

    def _enforce_retention(self) -> None:
        self.records.enforce()
        self.files.sweep()
        self.uploads.sweep()

    def _record(self, msg: Any) -> ExecutionRecord:
        """The record the request names; RequestError when it names none or an unknown one."""
        exec_id = msg.content.get("execution_id")
        if not isinstance(exec_id, str):
            raise RequestError("bad_request", f"'execution_id' must be a string, got {type(exec_id).__name__}")
        rec = self.records.get(exec_id)
        if rec is None:
            raise RequestError("unknown_execution", f"no execution with id {exec_id!r}")
        return rec

    # -- handlers -----------------------------------------------------------
    def handle_execute(self, msg: Any) -> Reply:
        hold = check_hold(msg.content.get("hold"))
        reply = self._accept_execute(msg.content, list(msg.buffers))
        if not hold or reply["duplicate"]:
            return reply, [], None
        # The reply waits (up to ``hold`` s) for the outcome: a short task's client then needs
        # neither a 'done' subscription nor a second message (see _finish and _hold_expired).
        exec_id = reply["execution_id"]
        self._held[exec_id] = (HeldRequest.of(msg), reply)
        self.call_later(hold, lambda: self._hold_expired(exec_id))
        raise ReplyLater

    def _hold_expired(self, exec_id: str) -> None:
        """The held execute reply of a still-unfinished execution goes out as a plain reply."""
        held = self._held.pop(exec_id, None)
        if held is None:  # finished (answered with its outcome) in time
            return
        request, reply = held
        rec = self.records.get(exec_id)
        self.answer(request, {**reply, "status": rec.status if rec is not None else reply["status"],
                              "done_subscribed": self._done_reaches_subscriber(
                                  exec_id, rec.session if rec is not None else None)})

    def handle_execute_many(self, msg: Any) -> Reply:
        """Several ``execute`` contents in one request, each accepted or refused on its own."""
        items = msg.content.get("executions")
        if not isinstance(items, list) or not items:
            raise RequestError("bad_request", "'executions' must be a non-empty list of execute request contents")
        if len(items) > self.max_batch:
            raise RequestError("bad_request", f"at most max_batch={self.max_batch} executions per execute_many, "
                                              f"got {len(items)}")
        if msg.buffers:
            raise RequestError("bad_request", "execute_many carries no buffers: push values with execute")
        answers = []
        for i, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise RequestError("bad_request", f"executions[{i}] must be an object, got {type(item).__name__}")
                if item.get("hold") is not None:
                    raise RequestError("bad_request", f"executions[{i}]: 'hold' applies to execute, not execute_many")
                answers.append({"ok": True, **self._accept_execute(item, [])})
            except RequestError as exc:
                answers.append({"ok": False, "error": {"code": exc.code, "message": exc.message, **exc.extra}})
        return {"executions": answers}, [], None

    def _accept_execute(self, c: dict[str, Any], buffers: list[Any]) -> dict[str, Any]:
        """Validate one execute content and queue it: the reply content, or RequestError."""
        task = self.validate_task(c.get("task"))
        name = c.get("name", "")
        if name is None:
            name = ""
        if not isinstance(name, str):
            raise RequestError("bad_request", f"'name' must be a string, got {type(name).__name__}")
        timeout = c.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not math.isfinite(timeout) or timeout <= 0):
            raise RequestError("bad_request", f"'timeout' must be a positive number or null, got {timeout!r}")
        exec_id = c.get("execution_id")
        if exec_id is not None and not is_execution_id(exec_id):
            raise RequestError("bad_request", f"'execution_id' must be 12 lowercase hex digits, got {exec_id!r}")
        try:
            session = check_session_name(c.get("session"))
        except ValueError as exc:
            raise RequestError("bad_request", str(exc)) from None
        request_id = check_request_id(c.get("request_id"))
        fingerprint = request_fingerprint(task, name, timeout, buffers, session) if request_id is not None else {}
        if request_id is not None:
            seen = self.records.by_request_id(request_id)
            if seen is not None:  # a retry of a request already accepted: same execution, not run again
                return self._repeated_execute(seen, request_id, fingerprint)
        if exec_id is None:
            exec_id = new_execution_id()
        elif exec_id in self.records:
            raise RequestError("duplicate_execution_id", f"execution id {exec_id} is already in use")
        buffers, push_files = self._adopt_push(c.get("shm"), c.get("uploads"), buffers)
        rec = ExecutionRecord(exec_id, task, name=name, session=session, timeout=timeout, push_frames=buffers,
                              push_files=push_files,
                              request_id=request_id, request_fingerprint=fingerprint)
        self.records.add(rec)
        self.sessions.enqueue(session, exec_id)
        self.call_soon(lambda: self._submitted(rec))  # dispatched once accepted, before the reply goes out
        # Whether the session's done_batch (or the '<id>.done' event) will reach a subscriber:
        # the client that subscribed before submitting can then wait on the event alone.
        batched = self.wanted_exactly(session_done_topic(session))
        done_subscribed = batched or self.wants(event_topic(exec_id, "done"))
        return {"execution_id": exec_id, "status": rec.status, "duplicate": False, "done_subscribed": done_subscribed,
                "session": session, "done_batch": batched}

    def handle_upload(self, msg: Any) -> Reply:
        """One part of a pushed buffer (uploads.py): verified already, written to its staging file."""
        try:
            return self.uploads.accept_part(msg.content, list(msg.buffers)), [], None
        except UploadError as exc:
            raise RequestError(exc.code, str(exc)) from None
        except OSError as exc:
            raise RequestError("too_large", f"cannot write the upload part: {exc}") from None

    def _adopt_push(self, field: Any, uploads: Any, buffers: list[Any]) -> tuple[list[Any], list[Any]]:
        """Pushed buffers the client left in shared-memory files (``shm``, see spill.py) or sent as
        ``upload`` parts (``uploads``, see uploads.py)."""
        if uploads is not None:
            if field is not None:
                raise RequestError("bad_request", "'shm' and 'uploads' cannot go together in one execute")
            try:
                files = self.uploads.take(uploads, buffers)
            except UploadError as exc:
                raise RequestError(exc.code, str(exc)) from None
            return spill.hand_over(files, buffers), files
        try:
            return self.files.adopt_push(field, buffers)
        except FileNotFoundError as exc:
            raise RequestError("shm_unavailable", f"shared-memory file not found on the server's host: {exc}; "
                                                  "send the values as buffers") from None
        except shm.SegmentRefused as exc:
            raise RequestError("shm_refused", str(exc)) from None
        except (OSError, ValueError) as exc:
            raise RequestError("bad_request", str(exc)) from None

    def _repeated_execute(self, rec: ExecutionRecord, request_id: str, fingerprint: dict[str, Any]) -> dict[str, Any]:
        """The answer to an ``execute`` whose ``request_id`` was seen: the same id, or a conflict."""
        differs = sorted(k for k in fingerprint if fingerprint[k] != rec.request_fingerprint.get(k))
        if differs:
            raise RequestError(
                "request_id_conflict",
                f"request_id {request_id!r} was already used for execution {rec.execution_id} "
                f"with a different {', '.join(differs)}; use a new request_id for a new execution",
                execution_id=rec.execution_id, differs=differs)
        return {"execution_id": rec.execution_id, "status": rec.status, "duplicate": True}

    def _submitted(self, rec: ExecutionRecord) -> None:
        if rec.status == "queued" and rec.seq == 0:
            self._emit_status(rec)
        self._schedule()

    def handle_status(self, msg: Any) -> Reply:
        rec = self._record(msg) if msg.content.get("execution_id") is not None else None
        if rec is not None:
            rec.absorb_events()
            # As in the execute reply: a waiting client that now sees its subscription arrived
            # can stop polling fast (its 'done' event will come).
            done_subscribed = not rec.final and self._done_reaches_subscriber(rec.execution_id, rec.session)
            return {"execution": rec.to_status(), "done_subscribed": done_subscribed}, [], None
        # all executions (the newest `limit`): without their buffered output (ask per id for that)
        found, more = self._newest(msg.content, lambda r: True)
        for r in found:
            r.absorb_events()
        return {"executions": [r.to_status(include_output=False) for r in found], "more": more}, [], None

    def handle_list(self, msg: Any) -> Reply:
        status = msg.content.get("status")
        if status is not None and not isinstance(status, str):
            raise RequestError("bad_request", "'status' filter must be a string")
        session = msg.content.get("session")
        if session is not None:
            session = self._session_name(session)
        found, more = self._newest(msg.content, lambda r: (status is None or r.status == status)
                                   and (session is None or r.session == session))
        for r in found:
            r.absorb_events()
        return {"executions": [r.summary() for r in found], "more": more}, [], None

    @staticmethod
    def _list_limit(content: dict[str, Any]) -> int:
        limit = content.get("limit")
        if limit is None:
            return DEFAULT_LIST_LIMIT
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise RequestError("bad_request", f"'limit' must be a positive integer, got {limit!r}")
        return limit

    def _newest(self, content: dict[str, Any], keep: Callable[[ExecutionRecord], bool]) -> tuple[list[ExecutionRecord], bool]:
        """The newest ``limit`` records ``keep`` accepts, oldest first, and whether older ones match too.

        Walks back from the newest record, so a request costs O(limit) however many
        records the server keeps (``list`` of 100,000 records held the loop for seconds).
        """
        limit = self._list_limit(content)
        found: list[ExecutionRecord] = []
        more = False
        for rec in self.records.newest_first():
            if not keep(rec):
                continue
            if len(found) == limit:
                more = True
                break
            found.append(rec)
        found.reverse()
        return found, more

    def handle_sessions(self, msg: Any) -> Reply:
        """Every session: its worker, queue length, what runs, how long it has been idle."""
        return {"sessions": [self.sessions.describe(s, self.backend.session_worker(s.name)) for s in self.sessions],
                "idle_timeout": self.session_idle_timeout}, [], None

    def handle_reset_session(self, msg: Any) -> Reply:
        """Drop a session's namespace on purpose (``%zmq reset``); refused while it has work."""
        name = self._session_name(msg.content.get("session"))
        state = self.sessions.get(name)
        if state is None:
            raise RequestError("unknown_session", f"no session named {name!r}")
        if state.busy:
            raise RequestError("session_busy", f"session {name!r} has {'a running' if state.running else 'a queued'} "
                                               "execution: cancel it first", running=state.running,
                               queued=[*state.ahead, *state.queue])
        dropped = state.has_namespace
        if dropped:
            self._release_session(state)
        return {"session": name, "reset": dropped}, [], None

    def _session_name(self, value: Any) -> str:
        try:
            return check_session_name(value)
        except ValueError as exc:
            raise RequestError("bad_request", str(exc)) from None

    def handle_cancel(self, msg: Any) -> Reply:
        reason = msg.content.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise RequestError("bad_request", f"'reason' must be a string, got {type(reason).__name__}")
        reason = reason or "cancelled by request"
        rec = self._record(msg)
        if rec.final:
            return {"execution_id": rec.execution_id, "cancelled": False, "status": rec.status,
                    "message": f"execution already {rec.status}"}, [], None
        state = self.sessions.get(rec.session)
        if rec.status == "queued" and state is not None and rec.execution_id in state.handed:
            # Handed ahead to its worker: it drops it and says so (or, if it had just started it, stops it).
            if not rec.cancelling:
                rec.cancelling = True
                rec.reason = reason
                self.backend.cancel(rec.execution_id)
        elif rec.status == "queued":
            self.sessions.remove_queued(rec.session, rec.execution_id)
            rec.push_frames = []
            self._finish(rec, "cancelled", reason=f"{reason} (before it started)")
        else:
            self._cancel_running(rec, reason)
        return {"execution_id": rec.execution_id, "cancelled": True, "status": rec.status}, [], None

    def handle_results(self, msg: Any) -> Reply:
        rec = self._record(msg)
        release = msg.content.get("release", False)
        if not isinstance(release, bool):
            raise RequestError("bad_request", "'release' must be true or false")
        fmt = msg.content.get("format", "pickle")
        if fmt not in RESULT_FORMATS:
            raise RequestError("bad_request", f"'format' must be one of {list(RESULT_FORMATS)}, got {fmt!r}")
        if not rec.final:
            raise RequestError("not_finished", f"execution {rec.execution_id} is still {rec.status}", status=rec.status)
        if rec.status == "failed":
            raise RequestError("execution_failed", rec.reason or (rec.error or {}).get("evalue", "failed"),
                               status=rec.status, remote_error=rec.error)
        if rec.status == "cancelled":
            raise RequestError("execution_cancelled", rec.reason or "cancelled", status=rec.status)
        if rec.result_error:
            raise RequestError("unpicklable_result", rec.result_error, status=rec.status)
        if rec.results_expired:
            raise RequestError("results_expired", f"results of {rec.execution_id} were dropped by the retention policy")
        try:
            form = parts.requested_form(msg.content)
        except parts.PartError as exc:
            raise RequestError("bad_request", str(exc)) from None
        if fmt == "json" and form is not None:
            raise RequestError("bad_request", f"'format' \"json\" cannot go with '{form}'")
        content = {"execution_id": rec.execution_id, "names": rec.result_names, "nbytes": rec.result_nbytes}
        if fmt == "json":
            reply: Any = json_reply(rec, content), [], []
        else:
            try:
                reply = (parts.manifest(rec, content, msg.scheme) if form == "manifest"
                         else parts.part(rec, msg.content["part"]) if form == "part"
                         else parts.shm_reply(rec, content, msg.scheme) if form == "shm" else None)
            except parts.PartError as exc:
                raise RequestError("bad_request", str(exc)) from None
            if reply is None:  # digests under the request's scheme: its reply is signed with it
                reply = content, parts.populated_frames(rec), parts.ensure_digests(rec, msg.scheme)
        self.records.mark_fetched(rec)
        if release:
            rec.drop_results()  # the reply keeps its own references to the frames
            rec.results_expired = True
        return reply

