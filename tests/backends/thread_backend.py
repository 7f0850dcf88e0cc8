"""A backend for the seam tests: runs each session's executions in a thread of the server.

It exists to prove the ``ExecutionBackend`` interface is neutral: its events
are plain (the server signs them), its reports arrive from other threads
through ``call_soon_threadsafe``, and the server's sessions, records, cancel
and results work unchanged. Never use it for real work: user code would run
inside the server process.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

from zmqruntime.execution.backend import BackendHost, ExecutionBackend, Job, Loss
from zmqruntime.execution.runner import StreamCapture, run_task
from zmqruntime.execution.thread_interrupt import ThreadInterrupts


class _Sink:
    def __init__(self, backend: ThreadBackend, job: Job):
        self.backend, self.job, self.seq = backend, job, job.seq

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        self.seq += 1
        content = {"execution_id": self.job.execution_id, "seq": self.seq, "time": time.time(), **data}
        self.backend.report(lambda: self.backend.host.backend_event(self.job.execution_id, event_type, content))

    def progress(self, done: float, total: Optional[float], desc: str, rate: float, elapsed: float) -> None:
        self.emit("progress", {"done": done, "total": total, "desc": desc, "rate": rate, "elapsed": elapsed})

    def flush(self) -> None:
        pass


class ThreadBackend(ExecutionBackend):
    name = "thread"

    def start(self, host: BackendHost) -> None:
        self.host = host
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.interrupts = ThreadInterrupts()

    def stop(self) -> None:
        pass

    def report(self, callback: Any) -> None:
        self.host.call_soon_threadsafe(callback)

    def submit(self, job: Job) -> bool:
        threading.Thread(target=self._run, args=(job,), daemon=True).start()
        return True

    def _run(self, job: Job) -> None:
        from zmqruntime.execution.server import ExecutionServer

        self.interrupts.started(job.execution_id)
        try:
            ns = self.namespaces.setdefault(job.session, {"__name__": "__main__"})
            sink = _Sink(self, job)
            streams = (StreamCapture(sink.emit, "stdout"), StreamCapture(sink.emit, "stderr"))
            outcome = run_task(ExecutionServer(_worker_side=True), job.execution_id, job.task, job.buffers, ns, sink,
                               streams=streams, interruptible=self.interrupts.armed(job.execution_id))
        finally:
            self.interrupts.finished(job.execution_id)
        self.report(lambda: self.host.backend_finished(job.execution_id, outcome.message(job.execution_id, sink.seq),
                                                       outcome.frames))

    def cancel(self, execution_id: str) -> bool:
        return self.interrupts.interrupt(execution_id)

    def release_session(self, session: str) -> None:
        self.namespaces.pop(session, None)
        self.report(lambda: self.host.backend_lost(Loss(session, None, "released")))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "workers": [], "sessions": sorted(self.namespaces)}

    def where(self, execution_id: str) -> Optional[str]:
        return "thread"
