"""The local backend: one worker process per session, on this machine.

Each session's namespace lives in its own worker process (``worker.py``),
started on the session's first execution and kept until the server releases
the session (idle reaping, a deliberate reset) or the process dies. One
spare worker is kept started and idle, so a new session's first execution
does not wait for a Python interpreter to boot.

Each worker binds an IPC endpoint of its own in the private runtime
directory and the server's ROUTER connects to it, admitting only our uid
and the pids of workers we started (``link.py`` says why it is this way
round). Messages are ``[b"M", json, *buffers]`` (control: ready / run /
finished / exit) or ``[b"E", packed event]`` (a data-channel event the
worker signed itself, relayed byte for byte); a malformed one is dropped.

A worker that cannot be started (no file descriptors left, a broken
environment) is retried at every check, backing off while new workers keep
dying during start-up; meanwhile the server is told why (``backend_error``),
so ``ping`` and the waiting executions' status say it; the server keeps them
queued until a worker starts again.

Interrupting is a ladder: SIGINT (KeyboardInterrupt in the task), then
SIGTERM after ``cancel_grace_period``, then SIGKILL after
``kill_grace_period``; the session's namespace goes with the process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

import zmq
from traitlets import Dict, Float, Int, Unicode

from ..frames import send_frames
from ..polling import readable
from ..protocol import EVENT_FRAMES, new_id, unpack_frames
from ..transport import runtime_dir
from .backend import BackendHost, ExecutionBackend, Job, Loss
from .link import KIND_CONTROL, KIND_EVENT, forget_endpoint, read_worker_message, secure_worker_router, worker_endpoint

CHECK_INTERVAL = 0.05
#: Longest wait before a worker start is tried again after new workers kept dying at start.
MAX_START_BACKOFF = 5.0


@dataclass
class WorkerHandle:
    worker_id: str
    process: subprocess.Popen
    url: str  # the IPC endpoint the worker binds
    session: Optional[str] = None
    ready: bool = False
    execution_id: Optional[str] = None
    escalation: int = 0  # 0 none, 1 SIGINT sent, 2 SIGTERM sent, 3 SIGKILL sent
    released: bool = False  # we asked it to exit: its exit is no loss

    @property
    def pid(self) -> int:
        return self.process.pid


def describe_exit(exit_code: int) -> str:
    """'exit code 3' or 'killed by signal SIGSEGV (11)', from a Popen return code."""
    if exit_code < 0:
        return f"killed by signal {signal_name(-exit_code)} ({-exit_code})"
    return f"exit code {exit_code}"


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class LocalBackend(ExecutionBackend):
    name = "local"

    cancel_grace_period = Float(2.0, help="Seconds after SIGINT before the worker is terminated.").tag(config=True)
    kill_grace_period = Float(1.0, help="Seconds after SIGTERM before the worker is killed.").tag(config=True)
    spare_workers = Int(1, help="Workers kept started and idle, so a new session starts at once.").tag(config=True)
    server_class = Unicode("zmqruntime.execution.server:ExecutionServer",
                           help="module:Class the workers import to run tasks (its execute_task).").tag(config=True)
    task_kind_classes = Dict(Unicode(), help="Extra task kinds the workers load (name -> module:Class).").tag(
        config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.host: Optional[BackendHost] = None
        self.workers: dict[str, WorkerHandle] = {}
        self.by_session: dict[str, WorkerHandle] = {}
        self.spares: list[WorkerHandle] = []
        self.sock: Optional[zmq.Socket] = None
        self.directory = ""
        self.running = False
        self.error: Optional[str] = None  # why workers cannot be started, while they cannot
        self._startup_failures = 0  # workers in a row that died before they were ready
        self._next_start = 0.0  # monotonic: no start attempt before this

    # -- lifecycle ----------------------------------------------------------
    def start(self, host: BackendHost) -> None:
        if self.spare_workers < 0:
            raise ValueError(f"spare_workers must be >= 0, got {self.spare_workers}")
        self.host = host
        self.sock = host.context.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.directory = str(runtime_dir())
        secure_worker_router(self.sock, getattr(host, "zap", None),
                             lambda pid: any(h.pid == pid for h in self.workers.values()))
        host.add_socket(self.sock, self._on_message)
        self.running = True
        self._top_up_spares()
        host.call_later(CHECK_INTERVAL, self._check)

    def stop(self, timeout: float = 2.0) -> None:
        import time

        self.running = False
        for handle in self.workers.values():
            self._send(handle, {"type": "exit"})
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
        self.by_session.clear()
        self.spares.clear()

    # -- the interface the server uses -----------------------------------------
    def submit(self, job: Job) -> bool:
        handle = self.by_session.get(job.session)
        if handle is None:
            handle = self.spares.pop(0) if self.spares else self._try_spawn()
            if handle is None:  # no worker can be started now: the server keeps the job queued
                return False
            handle.session = job.session
            self.by_session[job.session] = handle
            self._top_up_spares()
        if not handle.ready:  # still starting: the job stays queued until it says 'ready'
            return False
        handle.execution_id = job.execution_id
        self._send(handle, {"type": "run", "execution_id": job.execution_id, "task": job.task, "seq": job.seq},
                   job.buffers)
        return True

    def cancel(self, execution_id: str) -> bool:
        handle = next((h for h in self.workers.values() if h.execution_id == execution_id), None)
        if handle is None or handle.escalation:
            return False
        self._escalate(handle, execution_id)
        return True

    def release_session(self, session: str) -> None:
        handle = self.by_session.get(session)
        if handle is not None:
            self._release(handle)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "error": self.error, "workers": [
            {"pid": h.pid, "ready": h.ready, "session": h.session, "execution_id": h.execution_id}
            for h in self.workers.values()]}

    def session_worker(self, session: str) -> Optional[dict[str, Any]]:
        handle = self.by_session.get(session)
        return None if handle is None else {"pid": handle.pid, "ready": handle.ready}

    def where(self, execution_id: str) -> Optional[str]:
        handle = next((h for h in self.workers.values() if h.execution_id == execution_id), None)
        return None if handle is None else f"pid {handle.pid}"

    def worker_pid(self, execution_id: str) -> Optional[int]:
        handle = next((h for h in self.workers.values() if h.execution_id == execution_id), None)
        return None if handle is None else handle.pid

    # -- internals --------------------------------------------------------------
    def _spawn(self) -> WorkerHandle:
        assert self.host is not None and self.sock is not None
        worker_id = f"w-{new_id()[:8]}"
        url = worker_endpoint(self.directory, os.getpid(), worker_id)
        process = subprocess.Popen(
            [sys.executable, "-m", "zmqruntime.execution", "--url", url,
             "--worker-id", worker_id, "--server-class", self.server_class, "--parent-pid", str(os.getpid()),
             "--task-kinds", json.dumps(dict(self.task_kind_classes))],
            env=dict(os.environ, ZMQRUNTIME_WORKER_KEY=self.host.key), stdin=subprocess.DEVNULL,
        )
        handle = WorkerHandle(worker_id, process, url)
        self.workers[worker_id] = handle
        self.sock.connect(url)
        self.log.info("started worker %s (pid %d)", worker_id, process.pid)
        return handle

    def _try_spawn(self) -> Optional[WorkerHandle]:
        """A new worker, or None (and the reason reported) when none can be started now."""
        if time.monotonic() < self._next_start:
            return None
        reserve = getattr(self.host, "fd_reserve", None)  # descriptors kept back for exactly this
        try:
            return reserve.run(self._spawn) if reserve is not None else self._spawn()
        except OSError as exc:
            self._report(f"cannot start a worker process ({exc}); retrying every {CHECK_INTERVAL:g} s")
            return None

    def _report(self, message: Optional[str]) -> None:
        """Why workers cannot be started (None: they can again), to the log and the server."""
        if message == self.error:
            return
        if message is None:
            self.log.info("worker processes start again")
        else:
            self.log.error("%s", message)
        self.error = message
        assert self.host is not None
        report = getattr(self.host, "backend_error", None)
        if report is not None:
            report(message)

    def _recover(self) -> None:
        """After a failure: can a worker be started now? Then say so (the server resumes its queue)."""
        if self.spare_workers:
            if len(self.spares) >= self.spare_workers:
                self._report(None)
            return
        handle = self._try_spawn()  # no spares to prove it: start one and keep it as a spare
        if handle is not None:
            self.spares.append(handle)
            self._report(None)

    def _top_up_spares(self) -> None:
        while self.running and len(self.spares) < self.spare_workers:
            handle = self._try_spawn()
            if handle is None:
                return
            self.spares.append(handle)

    def _send(self, handle: WorkerHandle, msg: dict[str, Any], buffers: list[Any] = ()) -> None:  # type: ignore[assignment]
        if self.sock is None:
            return
        try:
            send_frames(self.sock, [handle.worker_id.encode(), KIND_CONTROL, json.dumps(msg).encode(), *buffers])
        except zmq.ZMQError as exc:
            self.log.warning("could not reach worker %s: %s", handle.worker_id, exc)

    def _release(self, handle: WorkerHandle) -> None:
        handle.released = True
        if handle.session is not None and self.by_session.get(handle.session) is handle:
            del self.by_session[handle.session]
        self._send(handle, {"type": "exit"})
        assert self.host is not None
        self.host.call_later(2.0, lambda: _kill_if_alive(handle))

    def _check(self) -> None:
        """Reap dead workers, report the sessions that lost their namespace, start what waits."""
        assert self.host is not None
        try:
            for handle in list(self.workers.values()):
                code = handle.process.poll()
                if code is not None:
                    self._reap(handle, code)
            if self.running:
                self._top_up_spares()
                if self.error is not None and time.monotonic() >= self._next_start:
                    self._recover()
        except Exception:  # a periodic check must outlive its own bugs
            self.log.exception("worker check failed; retrying in %g s", CHECK_INTERVAL)
        finally:
            if self.running:
                self.host.call_later(CHECK_INTERVAL, self._check)

    def _reap(self, handle: WorkerHandle, code: int) -> None:
        assert self.host is not None and self.sock is not None
        del self.workers[handle.worker_id]
        forget_endpoint(self.sock, handle.url)
        if not handle.ready and not handle.released:  # died during start-up: retry more and more slowly
            self._startup_failures += 1
            delay = min(MAX_START_BACKOFF, CHECK_INTERVAL * 2 ** self._startup_failures)
            self._next_start = time.monotonic() + delay
            self._report(f"a new worker process exited during start-up ({describe_exit(code)}); "
                         f"retrying in {delay:g} s")
        if handle in self.spares:  # nobody used it: the next check starts another
            self.spares.remove(handle)
            return
        if handle.released:
            return
        if not handle.ready:  # it never held the session's namespace: its queued job gets another worker
            if handle.session is not None and self.by_session.get(handle.session) is handle:
                del self.by_session[handle.session]
            return
        session = handle.session or ""
        if self.by_session.get(session) is handle:
            del self.by_session[session]
        how = describe_exit(code)
        self.log.warning("worker %s (pid %d, session %r) exited: %s", handle.worker_id, handle.pid, session, how)
        self.host.backend_lost(Loss(session, handle.execution_id, how, escalated=handle.escalation > 0,
                                    detail={"exit_code": code, "signal": signal_name(-code) if code < 0 else None,
                                            "pid": handle.pid}))

    def _escalate(self, handle: WorkerHandle, execution_id: str) -> None:
        if handle.execution_id != execution_id or handle.worker_id not in self.workers or handle.escalation >= 3:
            return
        sig, wait = [(signal.SIGINT, self.cancel_grace_period), (signal.SIGTERM, self.kill_grace_period),
                     (signal.SIGKILL, None)][handle.escalation]
        handle.escalation += 1
        self.log.info("cancel %s: sending %s to worker pid %d", execution_id, sig.name, handle.pid)
        try:
            os.kill(handle.pid, sig)
        except ProcessLookupError:
            return
        if wait is not None:
            assert self.host is not None
            self.host.call_later(wait, lambda: self._escalate(handle, execution_id))

    def _on_message(self) -> None:
        sock, host = self.sock, self.host
        assert sock is not None and host is not None
        for _ in range(1024):  # drain, but let the control channel have a turn
            if not readable(sock):
                return
            message = read_worker_message(sock)  # checked shape (link.py): a bad one is dropped
            if message is None:
                continue
            worker_id, link_kind, rest = message
            handle = self.workers.get(worker_id)
            if handle is None:  # not a worker we started
                continue
            if link_kind == KIND_EVENT:  # the hot path: small, copied, one frame
                event = unpack_frames(rest[0])
                if len(event) == EVENT_FRAMES:
                    host.backend_signed_event(event)
                continue
            try:
                msg = json.loads(rest[0].bytes)
                msg_type = msg["type"]
            except (ValueError, KeyError, TypeError):
                self.log.error("worker %s sent an unreadable message; ignored", handle.worker_id)
                continue
            if msg_type == "ready":
                handle.ready = True
                self._startup_failures = 0
                if handle.session is not None:  # a session waits for it
                    host.backend_ready()
            elif msg_type == "finished":
                handle.execution_id = None
                handle.escalation = 0
                host.backend_finished(msg["execution_id"], msg, rest[1:])


def _kill_if_alive(handle: WorkerHandle) -> None:
    """A released worker that did not exit when asked."""
    if handle.process.poll() is None:
        handle.process.kill()
