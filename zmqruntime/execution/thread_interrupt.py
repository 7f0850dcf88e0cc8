"""Cancel for tasks that run in threads: KeyboardInterrupt, but only in user code.

A backend that runs tasks in threads (dask runs several per worker process)
cannot send a signal to one task: it raises KeyboardInterrupt in the task's
thread with ``PyThreadState_SetAsyncExc``. That exception lands at the
thread's next bytecode boundary, wherever it is. Raised blindly, it could
land in the runner's own set-up before user code starts, or after user code
ended while the outcome is being packed or reported; there it escapes the
runner's ``try`` and the execution never reports at all.

So each execution's thread is tracked in three states: *started* (set-up),
*armed* (user code runs: ``runner.run_task`` enters ``armed(...)`` inside
its ``try``) and gone. ``interrupt``:

* armed: raises KeyboardInterrupt in the thread, once (it disarms);
* started, not yet armed: remembered, and raised when the section is
  entered, so the user code never starts;
* after the section: nothing (the task has ended; it completes);
* unknown: False, so the backend knows the task has not started here.

Leaving the armed section drops an interrupt that was sent but has not yet
landed, so none can land after it. Every step holds one lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from dataclasses import dataclass
from typing import Iterator, Optional


def _set_async_exc(ident: int, exc: Optional[type[BaseException]]) -> None:
    """Raise ``exc`` in thread ``ident`` at its next bytecode boundary; None: drop one not yet raised."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None if exc is None else ctypes.py_object(exc))


@dataclass
class _Task:
    ident: int
    armed: bool = False
    pending: bool = False  # interrupted before its user code started


class ThreadInterrupts:
    """Which thread runs which execution, and the one safe way to interrupt it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[str, _Task] = {}

    def started(self, execution_id: str) -> None:
        """Call first thing in the thread that runs ``execution_id``."""
        with self._lock:
            self._tasks[execution_id] = _Task(threading.get_ident())

    def finished(self, execution_id: str) -> None:
        """Call last thing in that thread (in a ``finally``)."""
        with self._lock:
            self._tasks.pop(execution_id, None)

    @contextlib.contextmanager
    def armed(self, execution_id: str) -> Iterator[None]:
        """The user code of ``execution_id``: the only place an interrupt may land."""
        with self._lock:
            task = self._tasks.get(execution_id)
            if task is None:  # not registered: run it, uninterruptible
                task = _Task(threading.get_ident())
            elif task.pending:
                task.pending = False
                raise KeyboardInterrupt("cancelled")
            task.armed = True
        try:
            yield
        finally:
            with self._lock:
                if not task.armed:  # interrupted: if it has not landed yet, it never will
                    _set_async_exc(task.ident, None)
                task.armed = False

    def interrupt(self, execution_id: str) -> bool:
        """Interrupt ``execution_id`` (see the module doc); False when no thread here runs it."""
        with self._lock:
            task = self._tasks.get(execution_id)
            if task is None:
                return False
            if task.armed:
                task.armed = False
                _set_async_exc(task.ident, KeyboardInterrupt)
            else:
                task.pending = True
            return True
