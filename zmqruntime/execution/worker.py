"""The worker process: runs tasks outside the server's control loop.

One worker runs one task at a time in its main thread and keeps a persistent
namespace between tasks (like a kernel keeps variables between cells).

Link to the server: a DEALER socket bound on a private IPC endpoint inside
the 0700 runtime directory, to which the server connects (checking that
this process is the worker it started, see ``link.py``); messages on it
are ``[b"M", json, *buffers]`` (control, see ``_send_control``) or
``[b"E", packed event]``. Data-channel events are signed by the worker
itself with the connection key; their frames travel packed into one (half
the per-event cost on both ends) and the server forwards them to
subscribers byte for byte.

Cancel: the server sends SIGINT. The handler raises KeyboardInterrupt only
while user code of the current task runs; inside our own critical sections
(sending a message) it is deferred to the end of the section, so a
multipart message is never cut in half.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Iterator, Optional

import zmq

from ..frames import recv_frames, send_frames
from ..options import load_class
from ..protocol import PROGRESS_BATCH_TOPIC, PROGRESS_FIELDS, SNDMORE, Session, event_topic, pack_frames
from .link import KIND_CONTROL, KIND_EVENT
from .runner import StreamCapture, finite, run_task

STREAM_FLUSH_INTERVAL = 0.05
#: Progress events closer together than this are sent as one ``progress_batch``
#: message (docs/protocol.md): under a flood, signing and sending each event
#: alone costs more than the task itself; a lone event still goes at once.
PROGRESS_BATCH_WINDOW = 0.005
PROGRESS_BATCH_MAX = 1024


class InterruptGuard:
    """SIGINT → KeyboardInterrupt, but only in user code, never mid-send.

    ``with guard:`` marks a critical section (a send). Only the main thread's
    sections count: Python runs signal handlers on the main thread, so that
    is the only thread an interrupt can land in; a section entered by the
    flusher thread must neither delay the interrupt nor, on leaving, raise
    it in the wrong thread.
    """

    def __init__(self) -> None:
        self.armed = False
        self.critical = 0
        self.pending = False
        self._main = threading.get_ident()

    def __enter__(self) -> None:
        if threading.get_ident() == self._main:
            self.critical += 1

    def __exit__(self, *exc: Any) -> None:
        if threading.get_ident() == self._main:
            self.leave_critical()

    def handler(self, signum: int, frame: Any) -> None:
        if not self.armed:
            return
        if self.critical:
            self.pending = True
            return
        self.armed = False
        raise KeyboardInterrupt("cancelled")

    @contextlib.contextmanager
    def armed_section(self) -> Iterator[None]:
        """The block where SIGINT may raise: the user code of a task."""
        self.pending = False
        self.armed = True
        try:
            yield
        finally:
            self.armed = False

    def leave_critical(self) -> None:
        self.critical -= 1
        if not self.critical and self.pending and self.armed:
            self.pending = False
            self.armed = False
            raise KeyboardInterrupt("cancelled")


class Worker:
    def __init__(self, url: str, key: str, worker_id: str, server_class: str, parent_pid: int,
                 task_kinds: Optional[dict[str, str]] = None):
        self.session = Session(key)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, worker_id.encode())
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.bind(url)  # the server connects (execution/link.py says why)
        self.lock = threading.Lock()
        self.guard = InterruptGuard()
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
        self.execution_id: Optional[str] = None
        self.seq = 0
        self.tasks = load_class(server_class)(_worker_side=True, task_kind_classes=task_kinds or {})  # runs execute_task
        self.stdout = StreamCapture(self.emit, "stdout")
        self.stderr = StreamCapture(self.emit, "stderr")
        self._stop = threading.Event()
        self.parent_pid = parent_pid
        self._progress_rows: list[list[Any]] = []  # progress events waiting to go as one batch
        self._progress_sent: Optional[float] = None  # monotonic time of the last progress send; None: never

    # -- sending ------------------------------------------------------------
    def _send(self, frames: list[Any]) -> None:
        with self.guard, self.lock:
            send_frames(self.sock, frames)

    def _send_control(self, content: dict[str, Any], buffers: list[Any] = ()) -> None:  # type: ignore[assignment]
        self._send([KIND_CONTROL, json.dumps(content).encode(), *buffers])

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        """Sign and send one data-channel event of the running execution."""
        exec_id = self.execution_id
        if exec_id is None:
            return
        with self.guard, self.lock:
            self._flush_progress_locked()  # keep events in seq order
            self.seq += 1
            self._send_event_locked(exec_id, event_type, {"execution_id": exec_id, "seq": self.seq,
                                                          "time": time.time(), **data})

    def _send_event_locked(self, exec_id: str, event_type: str, content: dict[str, Any], topic_type: str = "") -> None:
        frames = self.session.serialize(event_type, content, topic=event_topic(exec_id, topic_type or event_type))
        # One frame on the internal link; the server re-frames it for subscribers.
        self.sock.send(KIND_EVENT, SNDMORE)
        self.sock.send(pack_frames(frames))

    def _progress_sink(self, done: float, total: Optional[float], desc: str, rate: float, elapsed: float) -> None:
        """A progress event: sent at once when alone, batched when they come fast."""
        exec_id = self.execution_id
        if exec_id is None:
            return
        with self.guard, self.lock:
            self.seq += 1
            self._progress_rows.append([self.seq, time.time(), finite(done), finite(total), desc,
                                        finite(rate), elapsed])
            last = self._progress_sent
            if (last is None or time.monotonic() - last >= PROGRESS_BATCH_WINDOW
                    or len(self._progress_rows) >= PROGRESS_BATCH_MAX):
                self._flush_progress_locked()

    def _flush_progress_locked(self) -> None:
        rows, exec_id = self._progress_rows, self.execution_id
        if not rows or exec_id is None:
            return
        self._progress_rows = []
        self._progress_sent = time.monotonic()
        if len(rows) == 1:
            self._send_event_locked(exec_id, "progress", {"execution_id": exec_id, **dict(zip(PROGRESS_FIELDS, rows[0]))})
        else:
            self._send_event_locked(exec_id, "progress_batch", {
                "execution_id": exec_id, "seq": rows[-1][0], "fields": list(PROGRESS_FIELDS), "events": rows,
            }, topic_type=PROGRESS_BATCH_TOPIC)

    def flush_progress(self) -> None:
        with self.guard, self.lock:
            self._flush_progress_locked()

    def _flush_streams(self) -> None:
        self.flush_progress()
        self.stdout.flush()
        self.stderr.flush()

    def _flusher(self) -> None:
        """Flush output every 50 ms; exit at once if the server process is gone.

        A SIGKILLed server cannot stop its workers, so each worker watches its
        parent: an orphaned worker (even one stuck in user code) ends itself.
        """
        while not self._stop.wait(STREAM_FLUSH_INTERVAL):
            if os.getppid() != self.parent_pid:
                os._exit(3)
            try:
                self._flush_streams()
            except Exception:  # never let the flusher die silently mid-task
                traceback.print_exc(file=sys.__stderr__)

    # -- running ------------------------------------------------------------
    def run_forever(self) -> None:
        signal.signal(signal.SIGINT, self.guard.handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        threading.Thread(target=self._flusher, name="zmqruntime-flush", daemon=True).start()
        self._send_control({"type": "ready", "pid": os.getpid()})
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while True:
            with self.lock:
                ready = poller.poll(50)
                frames = recv_frames(self.sock) if ready else None
            if frames is None:
                continue
            msg = json.loads(frames[1].bytes)
            if msg["type"] == "exit":
                break
            if msg["type"] == "run":
                self.run_task(msg, frames[2:])
        self._stop.set()
        self.sock.close()
        self.ctx.term()

    def run_task(self, msg: dict[str, Any], buffers: list[Any]) -> None:
        exec_id = msg["execution_id"]
        self.execution_id = exec_id
        self.seq = msg["seq"]
        outcome = run_task(self.tasks, exec_id, msg["task"], buffers, self.namespace, self,
                           streams=(self.stdout, self.stderr), interruptible=self.guard.armed_section())
        self.execution_id = None
        self._send_control(outcome.message(exec_id, self.seq), outcome.frames)

    # -- TaskSink ------------------------------------------------------------
    def progress(self, done: float, total: Optional[float], desc: str, rate: float, elapsed: float) -> None:
        self._progress_sink(done, total, desc, rate, elapsed)

    def flush(self) -> None:
        self.flush_progress()


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="zmqruntime worker (started by the server)")
    parser.add_argument("--url", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--parent-pid", type=int, required=True, help="the server: exit when it is gone")
    parser.add_argument("--server-class", default="zmqruntime.execution.server:ExecutionServer")
    parser.add_argument("--task-kinds", type=json.loads, default={}, help="extra task kinds, JSON: name -> module:Class")
    args = parser.parse_args(argv)
    key = os.environ.pop("ZMQRUNTIME_WORKER_KEY", "")
    if not key:
        parser.error("ZMQRUNTIME_WORKER_KEY is not set")
    if os.getppid() != args.parent_pid:  # the server died while we were starting
        sys.exit(3)
    Worker(args.url, key, args.worker_id, args.server_class, args.parent_pid, args.task_kinds).run_forever()


if __name__ == "__main__":
    main()
