"""Which execution a worker should stop: a pipe from the server to each worker.

A local worker may hold executions of its session *ahead* (handed over to
start the moment the one before ends, see ``local.py``), so "SIGINT the
worker" alone no longer says which execution to stop: the running one may
have ended an instant before the signal lands, and the next one would take
the interrupt. So the server first writes the target's id into this pipe,
then signals; the worker's SIGINT handler reads the pipe and raises only
when its current execution is named. The worker also reads the pipe before
it starts each execution, and its flusher thread watches it while a task
runs: an execution named there before it started never starts, and the
worker reports it (``dropped``) within moments, even while a long task runs.

Two kinds of line, ASCII, one per target:

* ``c<id>``: cancel -- drop it if it has not started, interrupt it if it runs;
* ``d<id>``: take back -- drop it if it has not started, else let it run
  (the server put it back in its session's queue to let another session go
  first, and learns from the worker's next ``finished`` whether it had started).

Each write is one ``write`` of a few bytes to a non-blocking pipe: atomic,
and never blocks the server's loop. The server writes at most one line per
execution it handed over (a cancel acts once; a take-back clears the list),
so the pipe (64 KiB) cannot fill while the worker runs a long task.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

CANCEL = "c"
DROP = "d"


class CancelWriter:
    """The server's end of one worker's pipe."""

    def __init__(self, fd: int):
        self.fd: Optional[int] = fd
        os.set_blocking(fd, False)

    def write(self, kind: str, execution_id: str) -> bool:
        """Name ``execution_id`` to the worker; False if the worker is gone (or its pipe full)."""
        if self.fd is None:
            return False
        try:
            os.write(self.fd, f"{kind}{execution_id}\n".encode("ascii"))
            return True
        except (BlockingIOError, BrokenPipeError):
            return False

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class CancelReader:
    """The worker's end: what the server asked to cancel or to take back, so far."""

    def __init__(self, fd: int):
        self.fd = fd
        os.set_blocking(fd, False)
        self.cancel: set[str] = set()
        self.drop: set[str] = set()
        #: The server closed its end (it is gone): nothing more will come.
        self.closed = False
        self._partial = b""
        # The main thread (its signal handler included) and the flusher thread both read.
        # The handler only reads while user code runs, when the main thread holds no lock.
        self._lock = threading.Lock()

    def read(self) -> None:
        """Take in every line written so far (non-blocking)."""
        with self._lock:
            while not self.closed:
                try:
                    data = os.read(self.fd, 65536)
                except (BlockingIOError, InterruptedError):
                    return
                if not data:
                    self.closed = True
                    return
                *lines, self._partial = (self._partial + data).split(b"\n")
                for line in lines:
                    text = line.decode("ascii", "replace")
                    (self.cancel if text[:1] == CANCEL else self.drop).add(text[1:])

    def keep_only(self, execution_ids: set[Optional[str]]) -> None:
        """Forget what names no execution still waiting here (the rest ended or were dropped)."""
        if self.cancel:
            self.cancel &= execution_ids
        if self.drop:
            self.drop &= execution_ids


def open_pipe() -> tuple[int, CancelWriter]:
    """A new pipe: the read end (to pass to the worker) and the server's writer."""
    read_fd, write_fd = os.pipe()
    return read_fd, CancelWriter(write_fd)
