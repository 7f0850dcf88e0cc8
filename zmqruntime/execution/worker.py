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

Executions of the session may arrive *ahead* (``ahead`` messages): the
worker keeps them in order and starts each the moment the one before ends,
without a round trip to the server. Its ``finished`` message names the
execution it starts next (``next``), so the server knows what runs.

Cancel: the server names the execution in the worker's cancel pipe
(``cancel_pipe.py``), then sends SIGINT. The handler raises
KeyboardInterrupt only while user code of the named execution runs; inside
our own critical sections (sending a message) it is deferred to the end of
the section, so a multipart message is never cut in half. An execution
named before it started is dropped (a cancel, a take-back) and never runs.

Threads: the main thread runs tasks and reads the link; a flusher sends
buffered output every 50 ms and reads the cancel pipe; a watcher ends the
process as soon as the server (its parent) is gone, taking no lock.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any, Callable, Optional

import zmq

from .. import spill
from ..frames import recv_frames, send_frames
from ..limits import raise_fd_limit
from ..options import load_class
from ..protocol import PROGRESS_BATCH_TOPIC, PROGRESS_FIELDS, SNDMORE, Session, event_topic, pack_frames
from .cancel_pipe import CancelReader
from .link import KIND_CONTROL, KIND_EVENT, decode_message, encode_message
from .runner import StreamCapture, finite, run_task

STREAM_FLUSH_INTERVAL = 0.05
#: How often a worker looks whether its server (its parent) is still alive.
PARENT_CHECK_INTERVAL = 0.05
#: Progress events closer together than this are sent as one ``progress_batch``
#: message (docs/protocol.md): under a flood, signing and sending each event
#: alone costs more than the task itself; a lone event still goes at once.
PROGRESS_BATCH_WINDOW = 0.005
PROGRESS_BATCH_MAX = 1024


class InterruptGuard:
    """SIGINT → KeyboardInterrupt, but only in user code, never mid-send, and only when meant.

    ``with guard:`` marks a critical section (a send). Only the main thread's
    sections count: Python runs signal handlers on the main thread, so that
    is the only thread an interrupt can land in; a section entered by the
    flusher thread must neither delay the interrupt nor, on leaving, raise
    it in the wrong thread.

    ``meant()`` says whether a cancel names the task now running (the
    worker reads its cancel pipe, ``cancel_pipe.py``): a SIGINT meant for a
    task that ended an instant before it landed must not stop the next one.
    It is also asked as a task starts if a SIGINT came while none ran, so a
    cancel that came first wins.
    """

    def __init__(self, meant: Optional[Callable[[], bool]] = None) -> None:
        self.armed = False
        self.critical = 0
        self.pending = False
        self.meant = meant or (lambda: True)
        self._targeted = meant is not None  # without a pipe every SIGINT counts, and none came first
        self.signalled = False  # a SIGINT came while no task ran: look at the pipe as the next starts
        self._main = threading.get_ident()

    def __enter__(self) -> None:
        if threading.get_ident() == self._main:
            self.critical += 1

    def __exit__(self, *exc: Any) -> None:
        if threading.get_ident() == self._main:
            self.leave_critical()

    def handler(self, signum: int, frame: Any) -> None:
        if not self.armed:
            self.signalled = True
            return
        if self.critical:
            self.pending = True
            return
        if self.meant():
            self.armed = False
            raise KeyboardInterrupt("cancelled")

    def armed_section(self) -> _ArmedSection:
        """The block where SIGINT may raise: the user code of a task."""
        return _ArmedSection(self)

    def arm(self) -> None:
        """Enter the armed section (``KeyboardInterrupt`` at once if a cancel came first)."""
        self.pending = False
        self.critical += 1  # asking meant() reads the pipe: a signal meanwhile only marks pending
        self.armed = True  # from here a signal marks pending; one before it marked signalled
        cancelled = self._targeted and self.signalled and self.meant()
        self.signalled = False
        self.critical -= 1
        if cancelled or (self.pending and self.meant()):
            self.armed = False
            raise KeyboardInterrupt("cancelled before it started")

    def leave_critical(self) -> None:
        self.critical -= 1
        if not self.critical and self.pending and self.armed:
            self.pending = False
            if self.meant():
                self.armed = False
                raise KeyboardInterrupt("cancelled")


class _ArmedSection:
    """``with guard.armed_section():`` (a class rather than a generator context manager: one per task)."""

    def __init__(self, guard: InterruptGuard):
        self.guard = guard

    def __enter__(self) -> None:
        self.guard.arm()

    def __exit__(self, *exc: Any) -> None:
        self.guard.armed = False


class Worker:
    def __init__(self, url: str, key: str, worker_id: str, server_class: str, parent_pid: int,
                 task_kinds: Optional[dict[str, str]] = None, cancel_fd: Optional[int] = None):
        self.session = Session(key)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, worker_id.encode())
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.bind(url)  # the server connects (execution/link.py says why)
        self.lock = threading.Lock()
        self.cancels = CancelReader(cancel_fd) if cancel_fd is not None else None
        self.guard = InterruptGuard(self._cancel_meant if self.cancels is not None else None)
        #: Executions handed over and not started yet: (run message, pushed buffers), in order.
        self.pending: deque[tuple[dict[str, Any], list[Any]]] = deque()
        #: The last execution sent with 'run' (not ahead): never dropped, it starts (and stops at once
        #: if cancelled), so that its 'finished' tells the server what runs after it.
        self.submitted: Optional[str] = None
        #: Executions were handed ahead since the last 'run': more may come (an 'ahead') for this chain.
        self.chain_open = False
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
    def _send_control(self, content: dict[str, Any], buffers: list[Any] = ()) -> None:  # type: ignore[assignment]
        with self.guard, self.lock:
            self._send_control_locked(content, buffers)

    def _send_control_locked(self, content: dict[str, Any], buffers: list[Any] = ()) -> None:  # type: ignore[assignment]
        send_frames(self.sock, [KIND_CONTROL, encode_message(content), *buffers])

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
        """Flush output every 50 ms; drop what a cancel names.

        It watches the cancel pipe, so an execution handed ahead and then
        cancelled is dropped and reported at once, not when the running task ends.
        """
        while not self._stop.is_set():
            named = self._wait_for_cancel_or_tick()
            try:
                self._flush_streams()
                if named:  # the lock only when the pipe says something: the idle main loop holds it often
                    with self.guard, self.lock:
                        self._drop_named_locked()
            except Exception:  # never let the flusher die silently mid-task
                traceback.print_exc(file=sys.__stderr__)

    def _watch_parent(self) -> None:
        """Exit at once when the server is gone (a SIGKILLed server cannot stop its workers).

        A thread of its own that takes no lock: the others may wait forever,
        e.g. the main thread in a send to a server that died before it
        connected, holding the worker's lock, and the flusher for that lock.
        So an orphaned worker ends itself even when stuck in user code or a send.
        """
        while os.getppid() == self.parent_pid:
            time.sleep(PARENT_CHECK_INTERVAL)
        os._exit(3)

    def _wait_for_cancel_or_tick(self) -> bool:
        """Wait one flush interval, or less if the cancel pipe has something: whether it has."""
        if self.cancels is None or self.cancels.closed:
            self._stop.wait(STREAM_FLUSH_INTERVAL)
            return False
        return bool(select.select([self.cancels.fd], [], [], STREAM_FLUSH_INTERVAL)[0])

    # -- running ------------------------------------------------------------
    def run_forever(self) -> None:
        signal.signal(signal.SIGINT, self.guard.handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        threading.Thread(target=self._watch_parent, name="zmqruntime-parent", daemon=True).start()
        threading.Thread(target=self._flusher, name="zmqruntime-flush", daemon=True).start()
        self._send_control({"type": "ready", "pid": os.getpid()})
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        ended: Optional[tuple[dict[str, Any], list[Any]]] = None  # the last outcome, not sent yet
        while True:
            if not self.pending and (ended is None or self.chain_open):
                # Nothing to start: wait for work; or, when the server may still be sending more
                # of this chain (an 'ahead'), look once before saying that nothing runs next.
                with self.lock:
                    ready = poller.poll(50 if ended is None else 0)
                    msg_type = self._take_message(ended) if ready else None
                if msg_type == "exit":
                    break
                if ended is None or msg_type is not None:
                    continue
            with self.guard, self.lock:
                if self.cancels is not None and self._holds_ahead():
                    self._drop_named_locked()  # reported before the 'finished' that says what runs next
                task = self.pending.popleft() if self.pending else None
                if ended is not None:  # the server learns what ended and what runs now in one message
                    message, result_frames = ended
                    next_id = task[0]["execution_id"] if task else None
                    self._send_control_locked({**message, "next": next_id}, result_frames)
                    ended = None
                    if task is None:
                        self.chain_open = False  # said: nothing runs; a late 'ahead' is turned down
            if task is not None:
                ended = self.run_task(*task)
        if ended is not None:
            self._send_control({**ended[0], "next": None}, ended[1])
        self._stop.set()
        with self.lock:  # not while the flusher sends
            self.sock.close()
        self.ctx.term()

    def _take_message(self, ended: Optional[tuple[dict[str, Any], list[Any]]]) -> str:
        """Read one message from the server (the lock held): its type."""
        frames = recv_frames(self.sock)
        msg = decode_message(frames[1].bytes)
        if msg["type"] == "run":  # the server counts it as started: only its start may cancel it
            self.pending.append((msg, frames[2:]))
            self.submitted = msg["execution_id"]
            self.pending.extend((run, []) for run in msg.get("ahead", ()))
            self.chain_open = bool(msg.get("ahead"))
        elif msg["type"] == "settings":  # sent first: this worker may have started before the server knew them
            if isinstance(msg.get("bulk"), str):
                os.environ[spill.ENV] = msg["bulk"]  # where large results go (spill.py)
            else:
                os.environ.pop(spill.ENV, None)
        elif msg["type"] == "ahead" and msg["after"] == self._last_given(ended):
            self.pending.extend((run, []) for run in msg["runs"])
            self.chain_open = True
        # else an 'ahead' for a chain that ended (we said "next": null): the server queues them again
        return str(msg["type"])

    def _holds_ahead(self) -> bool:
        """Something waits here that a cancel or take-back may drop (not just the one sent with 'run')."""
        return len(self.pending) > 1 or (bool(self.pending) and self.pending[0][0]["execution_id"] != self.submitted)

    def _last_given(self, ended: Optional[tuple[dict[str, Any], list[Any]]]) -> Optional[str]:
        """The execution the next 'ahead' may follow: the last waiting, or the one that just ended."""
        if self.pending:
            return str(self.pending[-1][0]["execution_id"])
        return None if ended is None else str(ended[0]["execution_id"])

    def _drop_named_locked(self) -> None:
        """Drop the waiting executions the cancel pipe names and tell the server (the lock held)."""
        assert self.cancels is not None
        self.cancels.read()
        named = self.cancels.cancel | self.cancels.drop
        if not named:
            return
        named.discard(self.submitted)
        dropped = [t[0]["execution_id"] for t in self.pending if t[0]["execution_id"] in named]
        if dropped:
            self.pending = deque(t for t in self.pending if t[0]["execution_id"] not in named)
            self._send_control_locked({"type": "dropped", "execution_ids": dropped})
        # What names the running execution stays: its SIGINT handler reads it there.
        self.cancels.keep_only({t[0]["execution_id"] for t in self.pending} | {self.execution_id, self.submitted})

    def _cancel_meant(self) -> bool:
        """Does a cancel name the execution now running? (InterruptGuard asks.)"""
        assert self.cancels is not None
        self.cancels.read()
        return self.execution_id in self.cancels.cancel

    def run_task(self, msg: dict[str, Any], buffers: list[Any]) -> tuple[dict[str, Any], list[Any]]:
        """Run one execution: its ``finished`` message and result frames, to send."""
        exec_id = msg["execution_id"]
        self.execution_id = exec_id
        self.seq = msg["seq"]
        outcome = run_task(self.tasks, exec_id, msg["task"], buffers, self.namespace, self,
                           streams=(self.stdout, self.stderr), interruptible=self.guard.armed_section())
        self.execution_id = None
        return outcome.message(exec_id, self.seq), outcome.frames

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
    parser.add_argument("--server-class", required=True, help="module:Class whose execute_task runs the tasks")
    parser.add_argument("--task-kinds", type=json.loads, default={}, help="extra task kinds, JSON: name -> module:Class")
    parser.add_argument("--cancel-fd", type=int, default=None, help="read end of the cancel pipe (cancel_pipe.py)")
    args = parser.parse_args(argv)
    key = os.environ.pop("ZMQRUNTIME_WORKER_KEY", "")
    if not key:
        parser.error("ZMQRUNTIME_WORKER_KEY is not set")
    if os.getppid() != args.parent_pid:  # the server died while we were starting
        sys.exit(3)
    raise_fd_limit()  # as the server's own: whether or not it was started before the server raised its limit
    Worker(args.url, key, args.worker_id, args.server_class, args.parent_pid, args.task_kinds,
           args.cancel_fd).run_forever()


if __name__ == "__main__":
    main()
