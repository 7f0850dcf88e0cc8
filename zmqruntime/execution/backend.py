"""Where code runs: the ``ExecutionBackend`` interface.

The ``ExecutionServer`` owns the records, the sessions' queues and the
scheduling (which session goes next, how many run at once). A backend only
runs what it is handed and reports back; it never queues or picks work
itself. That keeps one scheduler in the project (the server's round robin
over sessions) and leaves a cluster's own scheduler (dask's) to place tasks.

A backend runs *sessions*: each session has one namespace, held by one
worker of the backend, and runs one execution at a time (the server
guarantees that it never submits to a session that is busy). A backend
whose ``max_ahead()`` is above zero also takes a busy session's next
executions *ahead* (``queue_ahead``), starts each the moment the one before
ends, and says which it started with each ``backend_finished``; the server
hands them over only while no other session waits for a turn, and takes
them back (``take_back``) when one does. A backend may
drop a session's namespace (``release_session``) and must say when it lost
one (``BackendHost.backend_lost``), so the next execution of that session
can say ``namespace_reset``.

Backends are chosen by ``ExecutionServer.backend_class`` (a class or
``"module:Class"``, or one of the short names in ``BACKENDS``); each is a
``LoggingConfigurable``, so its options are traits set like any other
(``--LocalBackend.spare_workers=0``).

Threads: the server's loop is single-threaded. A backend whose callbacks
arrive on other threads (dask) hands them over with
``host.call_soon_threadsafe``; every ``backend_*`` call happens on the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, Protocol, Sequence

import zmq
from traitlets.config import LoggingConfigurable

#: ``--backend NAME`` short names.
BACKENDS = {
    "local": "zmqruntime.execution.local:LocalBackend",
    "dask": "zmqruntime.execution.dask_backend:DaskBackend",
}


@dataclass
class Job:
    """One execution handed to a backend."""

    execution_id: str
    session: str
    task: dict[str, Any]
    #: The seq of the 'running' event: the backend numbers its own events after it.
    seq: int
    #: Pushed values (pickle-5 frames), bound in the namespace before the task runs.
    buffers: list[Any] = field(default_factory=list)


@dataclass
class Loss:
    """A session's worker (and so its namespace) is gone."""

    session: str
    #: What it was running, if anything.
    execution_id: Optional[str]
    #: Human words: "exit code 3", "killed by signal SIGKILL (9)", "dask worker tcp://… left".
    description: str
    #: True when our own cancel escalation ended it (the execution is 'cancelled', not 'failed').
    escalated: bool = False
    #: Extra fields for the execution's error (exit_code, signal, worker …).
    detail: dict[str, Any] = field(default_factory=dict)


class BackendHost(Protocol):
    """What a backend gets from the server: its loop, and where to report."""

    context: zmq.Context
    key: str

    def add_socket(self, sock: zmq.Socket, handler: Callable[[], None]) -> None: ...
    def call_later(self, delay: float, callback: Callable[[], None]) -> None: ...
    def call_every(self, interval: float, callback: Callable[[], None]) -> None: ...
    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None: ...

    def backend_event(self, execution_id: str, event_type: str, content: dict[str, Any]) -> None:
        """An event of a running execution; the server numbers nothing, it signs and publishes."""

    def backend_signed_event(self, frames: list[bytes]) -> None:
        """An event the backend signed itself (``[topic, signature, header, content]``)."""

    def backend_finished(self, execution_id: str, outcome: dict[str, Any], buffers: list[Any],
                         started: Optional[str] = None) -> None:
        """The execution ended: ``outcome`` as ``runner.Outcome.message``, ``buffers`` its result frames;
        ``started``: the execution of the same session, handed ahead, that the backend started next."""

    def backend_not_started(self, execution_id: str) -> None:
        """An execution handed ahead was dropped before it started (cancelled, or taken back)."""

    def backend_lost(self, loss: Loss) -> None:
        """A session's worker is gone (killed, crashed, left the cluster)."""

    def backend_error(self, message: Optional[str]) -> None:
        """Workers cannot be started (``message`` says why), or can again (None)."""

    def backend_ready(self) -> None:
        """A worker the backend was waiting for is ready: a refused ``submit`` may succeed now."""


class ExecutionBackend(LoggingConfigurable):
    """Runs the executions the server hands it, one per session at a time."""

    #: Shown by ``ping`` and ``%zmq status``.
    name: ClassVar[str] = "backend"
    #: Threads of this backend run Python in the server's process (a dask client's event
    #: loop): the server then does not busy-poll (polling.py), which would hold the GIL.
    runs_threads: ClassVar[bool] = False

    def start(self, host: BackendHost) -> None:
        """Connect or start whatever runs code; raise a clear error if that is impossible."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop every worker this backend started; never blocks for long."""
        raise NotImplementedError

    @property
    def capacity(self) -> Optional[int]:
        """Executions it can run at once (None: as many as the server allows)."""
        return None

    def submit(self, job: Job, ahead: Sequence[Job] = ()) -> bool:
        """Run ``job`` in its session's namespace; report through the host.

        ``ahead`` (only when ``max_ahead()`` is above zero): the session's next
        executions, to start in order after it, as with ``queue_ahead``.

        False: it cannot start now (its worker is still starting, or none can be
        started); the server keeps it queued, first in line, and tries again when
        the backend calls ``backend_ready()`` or ``backend_error(None)``.
        """
        raise NotImplementedError

    def cancel(self, execution_id: str) -> bool:
        """Interrupt a running execution (escalating as needed), or drop one handed ahead before it
        starts; False if it is neither here."""
        raise NotImplementedError

    def max_ahead(self) -> int:
        """How many executions of a busy session it takes ahead (0: one at a time, no ``queue_ahead``)."""
        return 0

    def queue_ahead(self, session: str, jobs: list[Job]) -> None:
        """Start ``jobs`` (of a session now running) in order, each the moment the one before ends."""
        raise NotImplementedError

    def take_back(self, session: str) -> None:
        """Drop the session's executions handed ahead that have not started: the server queues them again.

        One may have started an instant before; the next ``backend_finished`` says so."""
        raise NotImplementedError

    def release_session(self, session: str) -> None:
        """Drop the session's namespace and whatever holds it (idle reaping, a deliberate reset)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What ``ping`` shows of the backend: its name, workers, addresses."""
        return {"name": self.name}

    def session_worker(self, session: str) -> Optional[dict[str, Any]]:
        """Which worker holds a session's namespace (None: none yet)."""
        return None

    def where(self, execution_id: str) -> Optional[str]:
        """Where a running execution runs (a pid, a worker address), for status."""
        return None


def resolve_backend(spec: Any) -> type:
    """A backend class from a class, a short name in ``BACKENDS`` or ``"module:Class"``."""
    if isinstance(spec, type):
        cls = spec
    elif isinstance(spec, str):
        path = BACKENDS.get(spec, spec)
        module, sep, name = path.partition(":")
        if not sep or not module or not name:
            raise ValueError(f"unknown backend {spec!r}: use one of {sorted(BACKENDS)} or 'module:Class'")
        import importlib

        try:
            cls = getattr(importlib.import_module(module), name)
        except ImportError as exc:
            raise ValueError(f"backend {spec!r} cannot be imported: {exc}") from None
        except AttributeError:
            raise ValueError(f"backend {spec!r}: module {module} has no {name}") from None
    else:
        raise ValueError(f"backend must be a name or a class, got {type(spec).__name__}")
    if not (isinstance(cls, type) and issubclass(cls, ExecutionBackend)):
        raise ValueError(f"backend {spec!r} is not an ExecutionBackend")
    return cls
