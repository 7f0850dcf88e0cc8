"""The local backend: one worker process per session, on this machine.

Each session's namespace lives in its own worker process (``worker.py``),
started on the session's first execution and kept until the server releases
the session (idle reaping, a deliberate reset) or the process dies. One
spare worker is kept started and idle, so a new session's first execution
does not wait for a Python interpreter to boot; ``zmqruntime serve`` starts
the first one before it imports the server (``worker_process.py``), and the
backend adopts it if it was started with this backend's ``WorkerSpec``.

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

A busy session's worker is handed up to ``ahead`` of its next executions
at once (one message), and starts each the moment the one before ends: a
session running many short executions costs the server one message per
``ahead // 2`` executions instead of one each, and the worker never waits
for a round trip between them. Its ``finished`` message names what it
started next. Only while no other session waits for a turn (sessions.py):
when one does, the server takes the rest back (``take_back``).

Each worker reads a cancel pipe (``cancel_pipe.py``) that names the
execution a cancel is for, so an interrupt meant for one execution never
stops the next one, and one handed ahead can be dropped before it starts.
Interrupting is a ladder: SIGINT (KeyboardInterrupt in the task), then
SIGTERM after ``cancel_grace_period``, then SIGKILL after
``kill_grace_period``; the session's namespace goes with the process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any, Optional, Sequence

import zmq
from traitlets import Dict, Float, Int, Unicode

from ..frames import send_frames
from ..polling import readable
from ..protocol import EVENT_FRAMES, unpack_frames
from ..transport import runtime_dir
from .backend import BackendHost, ExecutionBackend, Job, Loss
from .cancel_pipe import CANCEL, DROP
from .link import (
    KIND_CONTROL,
    KIND_EVENT,
    decode_message,
    encode_message,
    forget_endpoint,
    read_worker_message,
    secure_worker_router,
)
from .worker_process import DEFAULT_SERVER_CLASS, WorkerHandle, WorkerSpec, discard_worker, start_worker

CHECK_INTERVAL = 0.05
#: Longest wait before a worker start is tried again after new workers kept dying at start.
MAX_START_BACKOFF = 5.0


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
    ahead = Int(32, help="Executions of a busy session handed to its worker at once, so each starts the moment "
                         "the one before ends (0: one at a time).").tag(config=True)
    spare_workers = Int(1, help="Workers kept started and idle, so a new session starts at once.").tag(config=True)
    server_class = Unicode(DEFAULT_SERVER_CLASS,
                           help="module:Class the workers import to run tasks (its execute_task).").tag(config=True)
    task_kind_classes = Dict(Unicode(), help="Extra task kinds the workers load (name -> module:Class).").tag(
        config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        for name in ("spare_workers", "ahead"):  # checked when made: before the server binds a socket
            if getattr(self, name) < 0:
                raise ValueError(f"LocalBackend.{name} must be >= 0, got {getattr(self, name)}")
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
        self._early: Optional[WorkerHandle] = None  # started before the server (adopt_spare)

    # -- lifecycle ----------------------------------------------------------
    def start(self, host: BackendHost) -> None:
        self.host = host
        self.sock = host.context.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.directory = str(runtime_dir())
        secure_worker_router(self.sock, getattr(host, "zap", None),
                             lambda pid: any(h.pid == pid for h in self.workers.values()))
        host.add_socket(self.sock, self._on_message)
        self.running = True
        self._adopt_early()
        self._top_up_spares()
        host.call_later(CHECK_INTERVAL, self._check)

    def stop(self, timeout: float = 2.0) -> None:
        self.running = False
        if self._early is not None:  # never started
            discard_worker(self._early)
            self._early = None
        for handle in self.workers.values():
            self._send(handle, {"type": "exit"})
        deadline = time.monotonic() + timeout
        for handle in self.workers.values():
            try:
                handle.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                handle.process.kill()
                handle.process.wait(5)
        for handle in self.workers.values():
            handle.cancels.close()
        if self.sock is not None:
            for handle in self.workers.values():
                forget_endpoint(self.sock, handle.url)
            self.sock.close()
        self.workers.clear()
        self.by_session.clear()
        self.spares.clear()

    # -- the interface the server uses -----------------------------------------
    def submit(self, job: Job, ahead: Sequence[Job] = ()) -> bool:
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
        handle.ahead.extend(j.execution_id for j in ahead)
        run = {"type": "run", "execution_id": job.execution_id, "task": job.task, "seq": job.seq}
        if ahead:
            run["ahead"] = _runs(ahead)
        self._send(handle, run, job.buffers)
        return True

    def max_ahead(self) -> int:
        return self.ahead

    def queue_ahead(self, session: str, jobs: list[Job]) -> None:
        handle = self.by_session[session]
        after = handle.ahead[-1] if handle.ahead else handle.execution_id  # the worker checks it still is
        handle.ahead.extend(job.execution_id for job in jobs)
        self._send(handle, {"type": "ahead", "after": after, "runs": _runs(jobs)})

    def take_back(self, session: str) -> None:
        handle = self.by_session.get(session)
        if handle is None:
            return
        for execution_id in handle.ahead:
            handle.cancels.write(DROP, execution_id)
        handle.taken_back.update(handle.ahead)
        handle.ahead.clear()

    def cancel(self, execution_id: str) -> bool:
        for handle in self.workers.values():
            if handle.execution_id == execution_id:
                if handle.escalation:
                    return False
                handle.cancels.write(CANCEL, execution_id)
                self._escalate(handle, execution_id)
                return True
            if execution_id in handle.ahead or execution_id in handle.taken_back:
                # The worker drops it and says so; if it started it an instant ago, it is stopped.
                if execution_id not in handle.cancelled_ahead:
                    handle.cancelled_ahead.add(execution_id)
                    handle.cancels.write(CANCEL, execution_id)
                return True
        return False

    def release_session(self, session: str) -> None:
        handle = self.by_session.get(session)
        if handle is not None:
            self._release(handle)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "error": self.error, "workers": [
            {"pid": h.pid, "ready": h.ready, "session": h.session, "execution_id": h.execution_id,
             "ahead": len(h.ahead)} for h in self.workers.values()]}

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
    def spec(self) -> WorkerSpec:
        """What this backend starts its workers with (the server's key: known once it is the host)."""
        assert self.host is not None
        return WorkerSpec(self.host.key, self.server_class, dict(self.task_kind_classes), self.directory)

    def adopt_spare(self, handle: WorkerHandle) -> None:
        """A worker started before the server (``zmqruntime serve``): kept as the first spare at
        ``start`` if it was started for this backend's spec, else discarded there."""
        self._early = handle

    def _adopt_early(self) -> None:
        handle, self._early = self._early, None
        if handle is None:
            return
        why = self._unfit(handle)
        if why is not None:
            self.log.info("discarded worker pid %d, started before the server: %s", handle.pid, why)
            discard_worker(handle)
            return
        self._register(handle, "adopted worker %s (pid %d), started before the server")
        self.spares.append(handle)

    def _unfit(self, handle: WorkerHandle) -> Optional[str]:
        """Why a worker started before the server cannot be this backend's spare (None: it can)."""
        if handle.process.poll() is not None:
            return "it exited"
        if not self.spare_workers:
            return "no spares are kept"
        if handle.spec != self.spec():
            return "it was started for other settings"
        return None

    def _bulk_settings(self) -> Optional[str]:
        """The server's result-file settings (``spill.Settings``), as workers read them."""
        files = getattr(self.host, "files", None)
        return None if files is None else str(files.settings.to_env())

    def _spawn(self) -> WorkerHandle:
        handle = start_worker(self.spec())
        self._register(handle)
        return handle

    def _register(self, handle: WorkerHandle, what: str = "started worker %s (pid %d)") -> None:
        assert self.sock is not None
        self.workers[handle.worker_id] = handle  # before it connects: the ZAP check asks for its pid
        self.sock.connect(handle.url)
        self.log.info(what, handle.worker_id, handle.pid)

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
            send_frames(self.sock, [handle.worker_id.encode(), KIND_CONTROL, encode_message(msg), *buffers])
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
        self._on_message()  # what it said before it died (which execution it had started) comes first
        del self.workers[handle.worker_id]
        handle.cancels.close()
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
                msg = decode_message(rest[0].bytes)
                msg_type = msg["type"]
            except (ValueError, KeyError, TypeError):
                self.log.error("worker %s sent an unreadable message; ignored", handle.worker_id)
                continue
            if msg_type == "ready":
                handle.ready = True
                self._send(handle, {"type": "settings", "bulk": self._bulk_settings()})
                self._startup_failures = 0
                if handle.session is not None:  # a session waits for it
                    host.backend_ready()
            elif msg_type == "finished":
                self._finished(handle, msg, rest[1:])
            elif msg_type == "dropped":
                self._dropped(handle, msg.get("execution_ids"))

    def _finished(self, handle: WorkerHandle, msg: dict[str, Any], buffers: list[Any]) -> None:
        """An execution ended; the worker names the one it started next (handed ahead), if any."""
        assert self.host is not None
        started = msg.get("next")
        if started is not None and not (isinstance(started, str) and (
                started in handle.ahead or started in handle.taken_back)):
            self.log.error("worker %s started %r, which it was not given; ignored", handle.worker_id, started)
            started = None
        if started is None:
            # Nothing runs there: whatever is still listed came after it ran out and is turned down
            # (an 'ahead' names the execution it follows); the server queues them again.
            handle.ahead.clear()
            handle.taken_back.clear()
            handle.cancelled_ahead.clear()
        else:
            if started in handle.ahead:
                handle.ahead.remove(started)  # the first: it runs them in order
            handle.taken_back.discard(started)
        handle.execution_id = started
        handle.escalation = 0
        if started is not None and started in handle.cancelled_ahead:  # it started as the cancel came
            handle.cancelled_ahead.discard(started)
            self._escalate(handle, started)
        self.host.backend_finished(msg["execution_id"], msg, buffers, started=started)

    def _dropped(self, handle: WorkerHandle, execution_ids: Any) -> None:
        """Executions handed ahead that the worker dropped before they started (cancelled, taken back)."""
        assert self.host is not None
        if not isinstance(execution_ids, list):
            self.log.error("worker %s sent an unreadable 'dropped'; ignored", handle.worker_id)
            return
        for execution_id in execution_ids:
            if not isinstance(execution_id, str) or not (
                    execution_id in handle.ahead or execution_id in handle.taken_back):
                continue
            if execution_id in handle.ahead:
                handle.ahead.remove(execution_id)
            handle.taken_back.discard(execution_id)
            handle.cancelled_ahead.discard(execution_id)
            self.host.backend_not_started(execution_id)


def _runs(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """Jobs handed ahead, as the worker reads them (no pushed buffers: those go one at a time)."""
    return [{"execution_id": job.execution_id, "task": job.task, "seq": job.seq} for job in jobs]


def _kill_if_alive(handle: WorkerHandle) -> None:
    """A released worker that did not exit when asked."""
    if handle.process.poll() is None:
        handle.process.kill()
