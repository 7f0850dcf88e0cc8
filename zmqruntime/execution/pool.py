"""Where code runs: a pool of local worker processes behind a small interface.

The ExecutionServer only asks a pool for a free worker, hands it a task,
asks it to interrupt an execution, and hears back through a listener
(``worker_ready``, ``worker_event``, ``worker_finished``, ``worker_lost``).
A distributed back end (dask.distributed) is meant to implement the same
calls, with progress and output still flowing back as worker events.

Local workers (``worker.py``) are subprocesses connected to a ROUTER on a
private IPC endpoint. Interrupting one is a ladder: SIGINT (KeyboardInterrupt
in the task), then SIGTERM after ``cancel_grace`` seconds, then SIGKILL after
``kill_grace``. A worker that dies is replaced at once; the replacement's
first execution is flagged, since its namespace is new.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import zmq

from ..protocol import new_id, send_frames, unpack_frames
from ..transport import runtime_dir
from .link import forget_endpoint, read_worker_message, secure_worker_router, worker_endpoint
from .worker import KIND_CONTROL, KIND_EVENT

log = logging.getLogger("zmqruntime.execution")

from ..polling import EVENTS, POLLIN
CHECK_INTERVAL = 0.05


class PoolListener(Protocol):
    def worker_spawn_failed(self, message: Optional[str]) -> None: ...
    def worker_ready(self) -> None: ...
    def worker_event(self, frames: list[bytes]) -> None: ...
    def worker_finished(self, msg: dict[str, Any], buffers: list[Any]) -> None: ...
    def worker_lost(self, execution_id: Optional[str], exit_code: int, escalated: bool) -> None: ...


class Host(Protocol):
    """What the pool needs from the server's event loop."""

    context: zmq.Context

    def add_socket(self, sock: zmq.Socket, handler: Any) -> None: ...
    def call_later(self, delay: float, callback: Any) -> None: ...


@dataclass
class WorkerHandle:
    worker_id: str
    process: subprocess.Popen
    url: str  # the IPC endpoint the worker binds
    ready: bool = False
    execution_id: Optional[str] = None
    fresh_after_loss: bool = False
    escalation: int = 0  # 0 none, 1 SIGINT sent, 2 SIGTERM sent, 3 SIGKILL sent
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid


class LocalWorkerPool:
    def __init__(self, host: Host, listener: PoolListener, *, size: int, key: str, server_class: str,
                 cancel_grace: float, kill_grace: float):
        self.host = host
        self.listener = listener
        self.size = size
        self.key = key
        self.server_class = server_class
        self.cancel_grace = cancel_grace
        self.kill_grace = kill_grace
        self.workers: dict[str, WorkerHandle] = {}
        self.sock: Optional[zmq.Socket] = None
        self.directory = ""
        self.running = False
        self.spawn_error: Optional[str] = None  # why the pool is short of workers, while it is
        self._startup_failures = 0  # workers in a row that died before they were ready: back off
        self._next_spawn = 0.0

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> None:
        self.sock = self.host.context.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        # each worker binds its own endpoint and this ROUTER connects to it (why: link.py)
        self.directory = str(runtime_dir())
        secure_worker_router(self.sock, getattr(self.host, "zap", None),
                             lambda pid: any(h.pid == pid for h in self.workers.values()))
        self.host.add_socket(self.sock, self._on_message)
        self.running = True
        for _ in range(self.size):
            self._spawn()
        self.host.call_later(CHECK_INTERVAL, self._check)

    def stop(self, timeout: float = 2.0) -> None:
        self.running = False
        for handle in self.workers.values():
            try:
                self.sock.send_multipart([handle.worker_id.encode(), KIND_CONTROL, b'{"type":"exit"}'], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        deadline = time.monotonic() + timeout
        for handle in self.workers.values():
            try:
                handle.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                handle.process.kill()
                handle.process.wait(5)
        if self.sock is not None:
            for handle in self.workers.values():
                forget_endpoint(self.sock, handle.url)
            self.sock.close()
        self.workers.clear()

    def _spawn(self, fresh_after_loss: bool = False) -> WorkerHandle:
        worker_id = f"w-{new_id()[:8]}"
        url = worker_endpoint(self.directory, os.getpid(), worker_id)
        process = subprocess.Popen(
            [sys.executable, "-m", "zmqruntime.execution", "--url", url,
             "--worker-id", worker_id, "--server-class", self.server_class, "--parent-pid", str(os.getpid())],
            env=dict(os.environ, ZMQRUNTIME_WORKER_KEY=self.key), stdin=subprocess.DEVNULL,
        )
        handle = WorkerHandle(worker_id, process, url, fresh_after_loss=fresh_after_loss)
        self.workers[worker_id] = handle
        self.sock.connect(url)
        log.info("started worker %s (pid %d)", worker_id, process.pid)
        return handle

    def _check(self) -> None:
        """Reap dead workers, report what they were running, replace them.
        Runs again whatever happens (a failed respawn is retried next time)."""
        try:
            for handle in list(self.workers.values()):
                code = handle.process.poll()
                if code is None:
                    continue
                del self.workers[handle.worker_id]
                forget_endpoint(self.sock, handle.url)
                log.warning("worker %s (pid %d) exited with code %s", handle.worker_id, handle.pid, code)
                if not handle.ready:  # died during start-up: say so, and retry more and more slowly
                    self._startup_failures += 1
                    delay = min(5.0, CHECK_INTERVAL * 2 ** self._startup_failures)
                    self._next_spawn = time.monotonic() + delay
                    self._report(f"a new worker process exited during start-up (exit code {code}); "
                                 f"retrying in {delay:g} s")
                self.listener.worker_lost(handle.execution_id, code, handle.escalation > 0)
            if self.running and len(self.workers) < self.size and time.monotonic() >= self._next_spawn:
                self._respawn()
        except Exception:
            log.exception("worker pool check failed; retrying in %g s", CHECK_INTERVAL)
        finally:
            if self.running:
                self.host.call_later(CHECK_INTERVAL, self._check)

    def _respawn(self) -> None:
        """Bring the pool back to size; on failure (EMFILE...) say why and retry at the next check."""
        reserve = getattr(self.host, "fd_reserve", None)
        try:
            while len(self.workers) < self.size:
                if reserve is not None:
                    reserve.run(lambda: self._spawn(fresh_after_loss=True))
                else:
                    self._spawn(fresh_after_loss=True)
        except OSError as exc:
            self._report(f"cannot start a worker process ({exc}); retrying every {CHECK_INTERVAL:g} s")

    def _report(self, message: Optional[str]) -> None:
        """Why the pool is short of workers (None: it no longer is), to the log and the listener."""
        if message != self.spawn_error:
            if message is None:
                log.info("worker processes start again")
            else:
                log.error("%s", message)
        self.spawn_error = message
        self.listener.worker_spawn_failed(message)

    # -- the interface the server uses -----------------------------------------
    def free_worker(self) -> Optional[WorkerHandle]:
        return next((h for h in self.workers.values() if h.ready and h.execution_id is None), None)

    def run(self, handle: WorkerHandle, execution_id: str, task: dict[str, Any], seq: int,
            buffers: list[Any]) -> bool:
        """Start a task on ``handle``; True if its namespace is fresh after a loss."""
        handle.execution_id = execution_id
        fresh, handle.fresh_after_loss = handle.fresh_after_loss, False
        run = {"type": "run", "execution_id": execution_id, "task": task, "seq": seq}
        send_frames(self.sock, [handle.worker_id.encode(), KIND_CONTROL, json.dumps(run).encode(), *buffers])
        return fresh

    def interrupt(self, execution_id: str) -> bool:
        """Begin the SIGINT → SIGTERM → SIGKILL ladder; False if not running here."""
        handle = next((h for h in self.workers.values() if h.execution_id == execution_id), None)
        if handle is None or handle.escalation:
            return False
        self._escalate(handle, execution_id)
        return True

    def describe(self) -> list[dict[str, Any]]:
        return [{"pid": h.pid, "ready": h.ready, "execution_id": h.execution_id} for h in self.workers.values()]

    def running_ids(self) -> list[str]:
        return [h.execution_id for h in self.workers.values() if h.execution_id]

    # -- internals --------------------------------------------------------------
    def _escalate(self, handle: WorkerHandle, execution_id: str) -> None:
        if handle.execution_id != execution_id or handle.worker_id not in self.workers or handle.escalation >= 3:
            return
        sig, wait = [(signal.SIGINT, self.cancel_grace), (signal.SIGTERM, self.kill_grace),
                     (signal.SIGKILL, None)][handle.escalation]
        handle.escalation += 1
        log.info("cancel %s: sending %s to worker pid %d", execution_id, sig.name, handle.pid)
        try:
            os.kill(handle.pid, sig)
        except ProcessLookupError:
            return
        if wait is not None:
            self.host.call_later(wait, lambda: self._escalate(handle, execution_id))

    def _on_message(self) -> None:
        sock = self.sock
        for _ in range(1024):  # drain, but let the control channel have a turn
            if not sock.getsockopt(EVENTS) & POLLIN:
                return
            message = read_worker_message(sock)  # checked shape (link.py): a bad one is dropped
            if message is None:
                continue
            worker_id, kind, rest = message
            handle = self.workers.get(worker_id)
            if handle is None:  # not a worker we started
                continue
            if kind == KIND_EVENT:
                frames = unpack_frames(rest[0])
                if len(frames) == 4:
                    self.listener.worker_event(frames)
                continue
            try:
                msg = json.loads(rest[0].bytes)
                kind = msg["type"]
            except (ValueError, KeyError, TypeError):
                log.error("worker %s sent an unreadable message; ignored", worker_id)
                continue
            if kind == "ready":
                handle.ready = True
                self._startup_failures = 0
                if self.spawn_error is not None:
                    self._report(None)
                self.listener.worker_ready()
            elif kind == "finished":
                handle.execution_id = None
                handle.escalation = 0
                self.listener.worker_finished(msg, rest[1:])
