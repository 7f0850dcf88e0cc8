"""Server connections and the extension's state, with an explicit lifecycle.

Everything the extension opens — clients, the ``ZMQStream`` per server, the
watchdog timer, the background thread for status/result calls — is owned by
one :class:`ExtensionState` and closed by :meth:`ExtensionState.close`, so
``%unload_ext`` / ``%reload_ext`` leave no socket, stream or callback behind.
Executions still running at unload are handed to the next load, which
re-attaches them (their panels keep moving after ``%reload_ext``).

A connection is keyed by its connection file (``server-<port>.json`` in the
runtime directory, or the file given with ``--connection-file``): that file
is what survives a kernel restart, and it is re-read before reuse so a
server that was replaced on the same port is noticed instead of timing out.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence

from tornado.ioloop import PeriodicCallback

from zmqruntime.errors import ServerUnavailable, ZMQRuntimeError
from zmqruntime.execution.client import Event, ExecutionClient
from zmqruntime.execution.sessions import SESSION_MAX_LENGTH
from zmqruntime.spawn import connection_path, find_server
from zmqruntime.transport import DEFAULT_PORT, pid_alive, read_connection_file

from .handle import ExecutionHandle
from .stream import EventStream

log = logging.getLogger("zmqruntime.jupyter")

#: Environment variable giving the default server port (tests, CI, notebooks).
PORT_ENV = "ZMQRUNTIME_PORT"
REQUEST_TIMEOUT = 10.0
#: A server started from the notebook may start a dask LocalCluster first: seconds.
SPAWN_TIMEOUT = 60.0
TICK_MS = 50
#: How long still_current waits for a ping from a server whose pid is not local.
STALE_CHECK_TIMEOUT = 1.0
MAX_HANDLES = 1000


def default_port() -> int:
    text = os.environ.get(PORT_ENV, "")
    try:
        return int(text) if text else DEFAULT_PORT
    except ValueError:
        log.warning("ignoring %s=%r (not a port number)", PORT_ENV, text)
        return DEFAULT_PORT


class Connection:
    """One server: its client, its event stream, the executions followed on it."""

    def __init__(self, connection_file: str, client: ExecutionClient, loop: Any):
        self.connection_file = connection_file  # a path; the HMAC key is client.info.key
        self.client = client
        self.loop = loop
        self.closed = False
        self.handles: dict[str, ExecutionHandle] = {}
        self.stream: Optional[EventStream] = None
        self._ticker: Optional[PeriodicCallback] = None
        if loop is not None:
            self.stream = EventStream(client.info, client.session, loop, self._route,
                                      on_skipped=self._route_skipped)
            self._ticker = PeriodicCallback(self._tick, TICK_MS)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zmqruntime-jupyter")

    @property
    def port(self) -> int:
        return self.client.info.data_port

    def still_current(self) -> bool:
        """Does the connection file still describe the server we talk to?

        The same key and pid as when we connected, and the server alive: a
        local pid that is running says so at once. A pid that is not running
        here may be a server on another host reached through a tunnel (its
        connection file copied over), so then it is asked: a signed ping
        reply with the same start time within a short timeout.
        """
        try:
            info = read_connection_file(self.connection_file)
        except (OSError, ValueError):
            return False
        mine = self.client.info
        if info.key != mine.key or info.pid != mine.pid:
            return False
        if pid_alive(info.pid):
            return True
        try:
            return self.client.ping(timeout=STALE_CHECK_TIMEOUT, brief=True).get("start_time") == info.start_time
        except ZMQRuntimeError:
            return False

    # -- following executions -------------------------------------------------
    def follow(self, handle: ExecutionHandle) -> None:
        """Subscribe to the execution's topic, then take a status baseline."""
        if self.closed:
            return
        self.handles[handle.id] = handle
        if self.stream is not None:
            self.stream.subscribe(handle.id)
        if self._ticker is not None and not self._ticker.is_running():
            self._ticker.start()
        handle.recovered(self.client.get_status(handle.id))

    def unfollow(self, handle: ExecutionHandle) -> None:
        self.handles.pop(handle.id, None)
        if self.stream is not None:
            self.stream.unsubscribe(handle.id)
        if not self.handles and self._ticker is not None and self._ticker.is_running():
            self._ticker.stop()

    def _route(self, event: Event) -> None:
        handle = self.handles.get(event.execution_id)
        if handle is not None:
            handle.on_event(event)

    def _route_skipped(self, execution_id: str, seqs: list[int]) -> None:
        handle = self.handles.get(execution_id)
        if handle is not None:
            handle.skipped_progress(seqs)

    def _tick(self) -> None:
        now = time.monotonic()
        for handle in list(self.handles.values()):
            handle.tick(now)  # its watchdog polls status when the stream is silent

    # -- background calls -------------------------------------------------------
    def submit(self, fn: Callable[[], Any]) -> Future:
        """Run a blocking client call off the kernel's loop (thread-safe client)."""
        return self._executor.submit(fn)

    def call_in_background(self, fn: Callable[[], Any],
                           callback: Callable[[Any, Optional[BaseException]], None]) -> None:
        """``fn()`` on the background thread; ``callback(result, error)`` back on the loop."""
        if self.loop is None:
            try:
                result = fn()
            except Exception as exc:
                callback(None, exc)
            else:
                callback(result, None)
            return

        def deliver(fut: Future) -> None:
            if self.closed or fut.cancelled():
                return
            exc = fut.exception()
            try:
                callback(None, exc) if exc is not None else callback(fut.result(), None)
            except Exception:
                log.exception("zmqruntime background callback failed")

        try:
            fut = self._executor.submit(fn)
        except RuntimeError:  # executor shut down
            return
        fut.add_done_callback(lambda f: self.loop.add_callback(deliver, f) if not self.closed else None)

    def close(self, why: str) -> list[ExecutionHandle]:
        """Close everything; return the unfinished handles (now detached)."""
        if self.closed:
            return []
        self.closed = True
        if self._ticker is not None:
            self._ticker.stop()
        if self.stream is not None:
            self.stream.close()
        live = [h for h in self.handles.values() if not h.final]
        for handle in list(self.handles.values()):
            handle.detach(why)
        self.handles.clear()
        # Let an in-flight call finish (bounded by the request timeout) so its
        # thread's socket is not closed under it, then close every socket.
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.client.close()
        return live


class ExtensionState:
    """What one loaded extension owns: connections, handles, the kernel loop."""

    def __init__(self, shell: Any):
        self.shell = shell
        kernel = getattr(shell, "kernel", None)
        # The kernel's tornado IOLoop (ipykernel); None in a terminal IPython,
        # where only blocking mode can work.
        self.loop = getattr(kernel, "io_loop", None)
        self.connections: dict[str, Connection] = {}
        self.default_file: Optional[str] = None
        #: This notebook's session on every server: its namespace and queue.
        self.session = kernel_session()
        self.handles: OrderedDict[str, ExecutionHandle] = OrderedDict()
        self.closed = False

    # -- connections --------------------------------------------------------------
    def connect(self, port: Optional[int] = None, connection_file: Optional[str] = None, *,
                spawn: bool = True, make_default: bool = False,
                server_args: Sequence[str] = ()) -> tuple[Connection, bool]:
        """The connection to use; ``(connection, started_a_server)``.

        With neither argument: the default connection (set by ``%zmq connect``
        or the first use), else the server on ``$ZMQRUNTIME_PORT`` / 7777.
        """
        if connection_file is not None:
            path = os.path.abspath(os.path.expanduser(connection_file))
        elif port is not None:
            path = str(connection_path(port))
        elif self.default_file is not None:
            path = self.default_file
            port = _port_from_file(path)
        else:
            port = default_port()
            path = str(connection_path(port))
        conn = self.connections.get(path)
        if conn is not None and not conn.still_current():
            self.drop(conn, "the server behind this connection went away or was replaced")
            conn = None
        started = False
        if conn is None:
            if port is None:  # exactly the server of a connection file: never spawn
                if not os.path.exists(path):
                    raise ServerUnavailable(f"connection file {path} does not exist")
                client = ExecutionClient(connection_file=path, timeout=REQUEST_TIMEOUT, session=self.session)
                try:
                    client.ping(timeout=2.0, brief=True)
                except ServerUnavailable:
                    client.close()
                    raise
            else:
                client, started = self._client_for_port(port, spawn, server_args)
            conn = Connection(path, client, self.loop)
            self.connections[path] = conn
        if make_default or self.default_file is None:
            self.default_file = path
        return conn, started

    def _client_for_port(self, port: int, spawn: bool, server_args: Sequence[str] = ()) -> tuple[ExecutionClient, bool]:
        path = connection_path(port)
        if find_server(path, timeout=2.0) is not None:
            return ExecutionClient(port, timeout=REQUEST_TIMEOUT, auto_spawn=False, session=self.session), False
        if not spawn:
            raise ServerUnavailable(f"no zmqruntime server answers on port {port} (looked for {path})")
        return ExecutionClient(port, timeout=REQUEST_TIMEOUT, auto_spawn=True, spawn_mode="persistent",
                               session=self.session, server_args=server_args, spawn_timeout=SPAWN_TIMEOUT), True

    def connection_for_file(self, path: str) -> Connection:
        """Re-open a connection by its connection file (re-attaching handles)."""
        conn = self.connections.get(path)
        if conn is not None and conn.still_current():
            return conn
        if conn is not None:
            self.drop(conn, "the server went away or was replaced")
        client = ExecutionClient(connection_file=path, timeout=REQUEST_TIMEOUT, session=self.session)
        conn = Connection(path, client, self.loop)
        self.connections[path] = conn
        return conn

    def drop(self, conn: Connection, why: str) -> None:
        """Forget a connection (server shut down / gone); its handles are told why."""
        self.connections.pop(conn.connection_file, None)
        if self.default_file == conn.connection_file:
            self.default_file = None
        conn.close(why)

    # -- handles --------------------------------------------------------------------
    def register(self, handle: ExecutionHandle) -> None:
        self.handles[handle.id] = handle
        self.handles.move_to_end(handle.id)
        while len(self.handles) > MAX_HANDLES:
            old_id, old = next(iter(self.handles.items()))
            if not old.final:
                break
            del self.handles[old_id]

    def adopt(self, handle: ExecutionHandle) -> bool:
        """Re-attach a handle detached by a previous unload; False if its server is gone."""
        try:
            conn = self.connection_for_file(handle.connection_key)
            handle.attach(conn)
        except Exception as exc:  # server gone: the panel says so
            handle.mark_unreachable(f"could not re-attach: {exc}")
            return False
        self.register(handle)
        return True

    def close(self, why: str) -> list[ExecutionHandle]:
        """Close every connection; return unfinished handles for a later load."""
        self.closed = True
        live: list[ExecutionHandle] = []
        for conn in list(self.connections.values()):
            live.extend(conn.close(why))
        self.connections.clear()
        self.default_file = None
        return live


def kernel_session() -> str:
    """The session of this notebook, the same again after a kernel restart.

    Jupyter Server tells a kernel its notebook's path (``JPY_SESSION_NAME``);
    without it the kernel's connection file (kept across restarts) names it;
    in a plain IPython, the process does.
    """
    path = os.environ.get("JPY_SESSION_NAME")
    if path:
        text = f"nb:{path}"
        if len(text) > SESSION_MAX_LENGTH or not text.isprintable():
            text = "nb:" + hashlib.sha256(path.encode()).hexdigest()[:32]
        return text
    try:
        from ipykernel import get_connection_file

        name = os.path.basename(get_connection_file())
    except Exception:  # not in a kernel
        return f"ipython:{os.getpid()}"
    return "kernel:" + name.removeprefix("kernel-").removesuffix(".json")


def _port_from_file(path: str) -> Optional[int]:
    """``<runtime dir>/server-7777.json`` → 7777 (so a remembered default can respawn)."""
    name = os.path.basename(path)
    if name.startswith("server-") and name.endswith(".json"):
        try:
            port = int(name[len("server-"):-len(".json")])
        except ValueError:
            return None
        if str(connection_path(port)) == path:
            return port
    return None
