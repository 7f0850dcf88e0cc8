"""Cancel of a task running in a thread (dask, the seam tests' thread backend).

The KeyboardInterrupt must land in the task's user code and nowhere else:
one sent while the runner is still setting up must stop the task before
its code runs, and one sent after the code ended must not escape the runner
(the execution would then never report). Real threads and the real runner;
each wait is bounded.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

import pytest

from zmqruntime.execution.runner import Outcome, run_task
from zmqruntime.execution.server import ExecutionServer
from zmqruntime.execution.thread_interrupt import ThreadInterrupts

WAIT = 20.0


class Sink:
    """Collects nothing; ``on_flush`` runs when the runner flushes (after the user code)."""

    def __init__(self) -> None:
        self.on_flush: Optional[Any] = None

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        pass

    def progress(self, *args: Any) -> None:
        pass

    def flush(self) -> None:
        if self.on_flush is not None:
            self.on_flush()


class TaskThread(threading.Thread):
    """Runs one execution the way the thread backends do: started, run_task(armed), finished."""

    def __init__(self, interrupts: ThreadInterrupts, code: str, namespace: dict[str, Any],
                 before_run: Optional[threading.Event] = None, sink: Optional[Sink] = None):
        super().__init__(daemon=True)
        self.interrupts, self.code, self.namespace = interrupts, code, namespace
        self.before_run, self.sink = before_run, sink or Sink()
        self.registered = threading.Event()
        self.outcome: Optional[Outcome] = None
        self.escaped: Optional[BaseException] = None
        self.after_loop_done = False

    def run(self) -> None:
        try:
            self.interrupts.started("e1")
            try:
                self.registered.set()
                if self.before_run is not None:  # the runner's set-up, held open by the test
                    assert self.before_run.wait(WAIT)
                self.outcome = run_task(ExecutionServer(_worker_side=True), "e1", {"kind": "python", "code": self.code},
                                        [], self.namespace, self.sink, interruptible=self.interrupts.armed("e1"),
                                        install_progress=False)
            finally:
                self.interrupts.finished("e1")
            deadline = time.monotonic() + 0.3  # bytecode boundaries where a stray interrupt would land
            while time.monotonic() < deadline:
                pass
            self.after_loop_done = True
        except BaseException as exc:  # noqa: BLE001 -- the point: nothing may escape
            self.escaped = exc


def finished(thread: TaskThread) -> TaskThread:
    thread.join(WAIT)
    assert not thread.is_alive(), "the task thread did not end"
    assert thread.escaped is None, f"an interrupt escaped the runner: {thread.escaped!r}"
    assert thread.after_loop_done
    assert thread.outcome is not None
    return thread


@pytest.mark.parametrize("times", [1, 2])
def test_interrupt_during_user_code_cancels_it(times: int):
    """One interrupt per armed section: a second call finds it disarmed and raises nothing more."""
    interrupts = ThreadInterrupts()
    started = threading.Event()
    thread = TaskThread(interrupts, "started.set()\nwhile True:\n    pass", {"started": started})
    thread.start()
    assert started.wait(WAIT)
    assert interrupts.interrupt("e1") is True
    for _ in range(times - 1):
        interrupts.interrupt("e1")
    outcome = finished(thread).outcome
    assert outcome is not None and outcome.status == "cancelled"
    assert outcome.error is not None and outcome.error["ename"] == "KeyboardInterrupt"


def test_interrupt_during_setup_stops_the_task_before_its_code_runs():
    interrupts = ThreadInterrupts()
    setup_done = threading.Event()
    namespace: dict[str, Any] = {}
    thread = TaskThread(interrupts, "ran = True", namespace, before_run=setup_done)
    thread.start()
    assert thread.registered.wait(WAIT)
    assert interrupts.interrupt("e1") is True  # still in set-up: remembered, nothing raised there
    setup_done.set()
    outcome = finished(thread).outcome
    assert outcome is not None and outcome.status == "cancelled"
    assert "ran" not in namespace


def test_interrupt_after_user_code_ended_changes_nothing():
    interrupts = ThreadInterrupts()
    sink = Sink()
    sink.on_flush = lambda: interrupts.interrupt("e1")  # the runner flushes after the user code
    namespace: dict[str, Any] = {}
    thread = TaskThread(interrupts, "ran = True", namespace, sink=sink)
    thread.start()
    outcome = finished(thread).outcome
    assert outcome is not None and outcome.status == "complete"
    assert namespace.get("ran") is True


def test_interrupt_of_an_execution_no_thread_runs_is_refused():
    interrupts = ThreadInterrupts()
    assert interrupts.interrupt("nope") is False
    thread = TaskThread(interrupts, "x = 1", {})
    thread.start()
    finished(thread)
    assert interrupts.interrupt("e1") is False  # over and forgotten
