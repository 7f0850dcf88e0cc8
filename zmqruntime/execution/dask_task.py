"""The dask side of the dask backend: what runs inside a dask worker.

``run_execution`` is the dask task of one execution. It finds (or makes) its
session's namespace in this worker process (``NAMESPACES``: the session is
pinned to this worker by the server, so its variables stay here between
executions, as in a kernel), runs the task with the shared runner, and
returns the outcome and the result frames.

Events travel on dask's own machinery: ``Worker.log_event`` on a topic of
the server's (``zmqr-<server id>``), which the server subscribes to. That
needs no extra port or key on the workers (a batch job's workers often
cannot open connections back to a login node), rides dask's batched comms,
and the server signs the events before they reach any subscriber. Progress
is batched at the source (one ``progress_batch`` per ``BATCH_WINDOW``), so
the event rate dask carries stays small whatever the task does.

Dask runs tasks in threads, several per worker process, so stdout/stderr
and the progress sink are routed per thread (``ThreadRouter``) instead of
being swapped globally. Cancel raises KeyboardInterrupt in the task's thread
(``interrupt``, through ``thread_interrupt.py``: only while user code runs),
which stops pure-Python code between bytecodes; code blocked in C is the
server's to escalate (it restarts the worker).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from typing import Any, Optional, TextIO, cast

from .. import reporting
from ..protocol import PROGRESS_FIELDS
from .runner import StreamCapture, finite, run_task
from .thread_interrupt import ThreadInterrupts

#: Session name -> namespace, in this worker process.
NAMESPACES: dict[str, dict[str, Any]] = {}
#: The threads running executions here, for ``interrupt``.
INTERRUPTS = ThreadInterrupts()
#: Changes when the worker process does: a namespace made by another incarnation is gone.
INCARNATION = uuid.uuid4().hex
BATCH_WINDOW = 0.02
FLUSH_INTERVAL = 0.05


class DaskSink:
    """Numbers, batches and sends one execution's events through ``log_event``."""

    def __init__(self, worker: Any, topic: str, execution_id: str, seq: int):
        self.worker, self.topic, self.execution_id, self.seq = worker, topic, execution_id, seq
        self.lock = threading.Lock()
        self.rows: list[list[Any]] = []
        self.last_progress: Optional[float] = None

    def _send(self, event_type: str, content: dict[str, Any]) -> None:
        self.worker.log_event(self.topic, {"id": self.execution_id, "type": event_type, "content": content})

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        with self.lock:
            self._flush_locked()
            self.seq += 1
            self._send(event_type, {"execution_id": self.execution_id, "seq": self.seq, "time": time.time(), **data})

    def progress(self, done: float, total: Optional[float], desc: str, rate: float, elapsed: float) -> None:
        with self.lock:
            self.seq += 1
            self.rows.append([self.seq, time.time(), finite(done), finite(total), desc, finite(rate), elapsed])
            last = self.last_progress
            if last is None or time.monotonic() - last >= BATCH_WINDOW:
                self._flush_locked()

    def flush(self) -> None:
        with self.lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        rows, self.rows = self.rows, []
        if not rows:
            return
        self.last_progress = time.monotonic()
        if len(rows) == 1:
            self._send("progress", {"execution_id": self.execution_id, **dict(zip(PROGRESS_FIELDS, rows[0]))})
        else:
            self._send("progress_batch", {"execution_id": self.execution_id, "seq": rows[-1][0],
                                          "fields": list(PROGRESS_FIELDS), "events": rows})


class ThreadRouter:
    """Installed once per worker process: each task thread's output and progress go to its own sink."""

    def __init__(self) -> None:
        self.by_thread: dict[int, tuple[StreamCapture, StreamCapture, DaskSink]] = {}
        self.stdout, self.stderr = sys.stdout, sys.stderr
        sys.stdout = cast(TextIO, _Routed(self, 0, self.stdout))
        sys.stderr = cast(TextIO, _Routed(self, 1, self.stderr))
        reporting._set_sink(self.progress)
        threading.Thread(target=self._flusher, name="zmqruntime-dask-flush", daemon=True).start()

    def progress(self, *args: Any) -> None:
        found = self.by_thread.get(threading.get_ident())
        if found is not None:
            found[2].progress(*args)

    def _flusher(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL)
            for out, err, sink in list(self.by_thread.values()):
                try:
                    sink.flush()
                    out.flush()
                    err.flush()
                except Exception:  # never let the flusher die
                    pass


class _Routed:
    """A stream that writes to the current task thread's capture, else where it wrote before."""

    def __init__(self, router: ThreadRouter, index: int, fallback: Any):
        self.router, self.index, self.fallback = router, index, fallback

    def _target(self) -> Any:
        found = self.router.by_thread.get(threading.get_ident())
        return found[self.index] if found is not None else self.fallback

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fallback, name)


_router: Optional[ThreadRouter] = None
_router_lock = threading.Lock()


def router() -> ThreadRouter:
    global _router
    with _router_lock:
        if _router is None:
            _router = ThreadRouter()
        return _router


def run_execution(topic: str, execution_id: str, session: str, task: dict[str, Any], buffers: list[Any],
                  seq: int, app_class: str, task_kinds: dict[str, str]) -> dict[str, Any]:
    """The dask task of one execution: outcome message, result frames, where it ran."""
    INTERRUPTS.started(execution_id)  # first: a cancel from now on is this task's (see thread_interrupt.py)
    try:
        from distributed import get_worker

        from .. import serialize  # noqa: F401  (imported here so a worker fails early if zmqruntime is broken)
        from ..options import load_class

        worker = get_worker()
        routes = router()
        fresh = session not in NAMESPACES
        namespace = NAMESPACES.setdefault(session, {"__name__": "__main__", "__builtins__": __builtins__})
        sink = DaskSink(worker, topic, execution_id, seq)
        streams = (StreamCapture(sink.emit, "stdout"), StreamCapture(sink.emit, "stderr"))
        ident = threading.get_ident()
        routes.by_thread[ident] = (streams[0], streams[1], sink)
        try:
            app = load_class(app_class)(_worker_side=True, task_kind_classes=task_kinds)
            outcome = run_task(app, execution_id, task, buffers, namespace, sink,
                               interruptible=INTERRUPTS.armed(execution_id), install_progress=False)
        finally:
            routes.by_thread.pop(ident, None)
    finally:
        INTERRUPTS.finished(execution_id)
    streams[0].flush()
    streams[1].flush()
    sink.flush()
    return {"message": outcome.message(execution_id, sink.seq), "frames": outcome.frames,
            "worker": worker.address, "pid": os.getpid(), "incarnation": INCARNATION, "fresh": fresh}


def interrupt(execution_id: str) -> bool:
    """KeyboardInterrupt in the user code of ``execution_id`` (run on the worker by ``Client.run``);
    False when it has not started here (dask may then simply drop it)."""
    return INTERRUPTS.interrupt(execution_id)


def drop_namespace(session: str) -> bool:
    """Forget a session's namespace on this worker (released by the server)."""
    return NAMESPACES.pop(session, None) is not None
