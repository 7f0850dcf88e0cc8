"""Starting one worker process, and what the local backend keeps of it.

Light on purpose (no zmq, no traitlets, no server): ``zmqruntime serve``
starts the first spare worker with it *before* it imports the server, so the
worker's interpreter boots while the server's does; a cold start then waits
for the slower of the two boots instead of both, one after the other. The
local backend adopts that worker only if it was started for what the server
would start one for (the same :class:`WorkerSpec`), and starts every other
worker with :func:`start_worker` too.

The worker binds ``url`` itself (``link.py`` says why); its signing key
reaches it in its environment, never on its command line, and it exits when
its parent is gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

from ..protocol import new_id
from .cancel_pipe import CancelWriter, open_pipe

#: The class whose ``execute_task`` a worker runs when the server names no other.
DEFAULT_SERVER_CLASS = "zmqruntime.execution.server:ExecutionServer"


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker is started with: a worker started for another spec is not interchangeable."""

    key: str
    server_class: str
    task_kinds: dict[str, str]
    directory: str  # where its IPC endpoint lives (the private runtime directory)


@dataclass(eq=False)
class WorkerHandle:
    worker_id: str
    process: subprocess.Popen
    url: str  # the IPC endpoint the worker binds
    cancels: CancelWriter  # names what to stop (cancel_pipe.py)
    spec: WorkerSpec
    session: Optional[str] = None
    ready: bool = False
    execution_id: Optional[str] = None
    escalation: int = 0  # 0 none, 1 SIGINT sent, 2 SIGTERM sent, 3 SIGKILL sent
    released: bool = False  # we asked it to exit: its exit is no loss
    #: Executions handed ahead, in the order it starts them.
    ahead: deque[str] = field(default_factory=deque)
    #: Cancelled while ahead (still in ``ahead``): dropped there, or interrupted if it started first.
    cancelled_ahead: set[str] = field(default_factory=set)
    #: Taken back while ahead: dropped there, or (if it started first) it runs; its 'dropped' or
    #: 'finished' says which.
    taken_back: set[str] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.process.pid


def worker_endpoint(directory: Any, server_pid: int, worker_id: str) -> str:
    return f"ipc://{directory}/zmqr-w-{server_pid}-{worker_id}"


def start_worker(spec: WorkerSpec) -> WorkerHandle:
    """Start a worker process for ``spec``, a child of this process (OSError if it cannot be)."""
    worker_id = f"w-{new_id()[:8]}"
    url = worker_endpoint(spec.directory, os.getpid(), worker_id)
    read_fd, cancels = open_pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "zmqruntime.execution", "--url", url,
             "--worker-id", worker_id, "--server-class", spec.server_class, "--parent-pid", str(os.getpid()),
             "--task-kinds", json.dumps(spec.task_kinds), "--cancel-fd", str(read_fd)],
            env=dict(os.environ, ZMQRUNTIME_WORKER_KEY=spec.key), stdin=subprocess.DEVNULL,
            pass_fds=(read_fd,),
        )
    except BaseException:
        cancels.close()
        raise
    finally:
        os.close(read_fd)
    return WorkerHandle(worker_id, process, url, cancels, spec)


def discard_worker(handle: WorkerHandle, timeout: float = 5.0) -> None:
    """Stop a worker nobody will use (it never had a session): kill it, reap it, remove its endpoint."""
    if handle.process.poll() is None:
        handle.process.kill()
    try:
        handle.process.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    handle.cancels.close()
    try:
        os.unlink(handle.url[len("ipc://"):])
    except OSError:
        pass
