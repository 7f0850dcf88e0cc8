"""Finding a live server, or starting one: lock, spawn, readiness.

``ensure_server`` is what a client calls:

1. read the connection file for the requested port/name; a file whose pid
   is dead is stale and removed; a live one must also answer ``ping``;
2. otherwise take the startup lock (``flock`` on ``<file>.lock``), look
   again (another client may have won the race), check that the ports are
   free — a port held by a process that is not a reachable zmqruntime
   server is a clear error, and nothing is ever killed — then start
   ``sys.executable -m zmqruntime serve`` in a new session (so a notebook's
   Stop/Interrupt does not signal it) and wait until it answers ``ping``.
   No fixed sleeps: readiness is the ping.

Persistent servers outlive their parent; child servers (``mode="child"``)
watch the parent pid and exit when it is gone.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from .client import ZMQClient
from .errors import RemoteError, ServerStartError, ServerUnavailable
from .private import open_private
from .protocol import BRIEF_PING
from .transport import (
    DEFAULT_CONTROL_OFFSET,
    DEFAULT_IP,
    DEFAULT_TRANSPORT,
    ConnectionInfo,
    connection_file_name,
    port_is_free,
    read_connection_file,
    remove_if_stale,
    runtime_dir,
    validate_port,
)

SPAWN_MODES = ("persistent", "child")


def connection_path(port: int, transport: Optional[str] = None, name: Optional[str] = None) -> Path:
    """The connection file of the server for ``port``; ``transport=None``: the one
    registered (IPC's, else TCP's), or where a new default (IPC) server would write it."""
    if transport is None:
        for candidate in ("ipc", "tcp"):
            path = runtime_dir() / connection_file_name(candidate, port, name)
            if path.exists():
                return path
        transport = DEFAULT_TRANSPORT
    return runtime_dir() / connection_file_name(transport, port, name)


def ping_info(info: ConnectionInfo, timeout: float) -> Optional[dict]:
    """The server's brief ping reply (its identity), or None if it does not answer in time."""
    client = ZMQClient(info, timeout=timeout)
    try:
        return client.call("ping", BRIEF_PING)
    except (ServerUnavailable, RemoteError):
        return None
    finally:
        client.close()


def find_server(path: Path, timeout: float = 2.0) -> Optional[ConnectionInfo]:
    """The live server described by ``path``, or None (stale files removed)."""
    if not path.exists() or remove_if_stale(path):
        return None
    try:
        info = read_connection_file(path)
    except (OSError, ValueError):
        return None
    return info if ping_info(info, timeout) is not None else None


def find_any_server(port: int, name: Optional[str] = None, timeout: float = 2.0) -> Optional[ConnectionInfo]:
    """The live server registered for ``port`` (or ``name``): IPC first, then TCP."""
    for transport in ("ipc", "tcp"):
        info = find_server(connection_path(port, transport, name), timeout)
        if info is not None:
            return info
    return None


@contextmanager
def startup_lock(path: Path, timeout: float) -> Iterator[None]:
    """Inter-process lock beside the connection file, bounded by ``timeout``."""
    lock_path = path.with_name(path.name + ".lock")
    fd = open_private(lock_path, os.O_RDWR | os.O_CREAT, "startup lock")
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ServerStartError(f"timed out waiting for the startup lock {lock_path}") from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def ensure_server(
    port: int,
    *,
    transport: Optional[str] = None,
    ip: str = DEFAULT_IP,
    name: Optional[str] = None,
    control_port_offset: int = DEFAULT_CONTROL_OFFSET,
    mode: str = "persistent",
    timeout: float = 20.0,
    extra_args: tuple[str, ...] = (),
) -> ConnectionInfo:
    """Connect to the server for ``port`` (or ``name``), starting one if needed.

    ``transport=None``: a live server of either transport registered for the
    port, else a new IPC one (its socket files sit in the private runtime
    directory, out of other users' reach, with no encryption cost).
    """
    validate_port(port)
    if mode not in SPAWN_MODES:
        raise ValueError(f"mode must be one of {SPAWN_MODES}, got {mode!r}")
    if transport is None and ip != DEFAULT_IP:
        transport = "tcp"  # an interface only means something for TCP
    if transport is None:
        found = find_any_server(port, name, timeout=min(timeout, 2.0))
        if found is not None:
            return found
        # one registered but not answering is reported below, never shadowed by a new server
        transport = next((t for t in ("ipc", "tcp") if connection_path(port, t, name).exists()), DEFAULT_TRANSPORT)
    path = connection_path(port, transport, name)
    info = find_server(path, timeout=min(timeout, 2.0))
    if info is not None:
        return info
    with startup_lock(path, timeout):
        info = find_server(path, timeout=min(timeout, 2.0))
        if info is not None:
            return info
        if path.exists():
            raise ServerUnavailable(
                f"a zmqruntime server is registered in {path} (pid {read_connection_file(path).pid}) "
                "but does not answer ping; it was not started by this client, so it is left alone. "
                "Stop it (zmqruntime shutdown / kill that pid) or use another port."
            )
        if transport == "tcp":
            for p in (port, port + control_port_offset):
                if not port_is_free(p, ip):
                    raise ServerStartError(
                        f"port {p} on {ip} is held by another process that is not a zmqruntime server we know of; "
                        "choose another port (zmqruntime never kills a process it did not start)"
                    )
        return _spawn(path, port, transport, ip, name, control_port_offset, mode, timeout, extra_args)


def server_command(port: int, transport: str, ip: str, name: Optional[str], control_port_offset: int,
                   mode: str, extra_args: tuple[str, ...] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "zmqruntime", "serve", "--port", str(port), "--transport", transport,
           "--ip", ip, "--control-port-offset", str(control_port_offset)]
    if name:
        cmd += ["--name", name]
    if mode == "child":
        cmd += ["--parent-pid", str(os.getpid())]
    return cmd + list(extra_args)


def _spawn(path: Path, port: int, transport: str, ip: str, name: Optional[str], control_port_offset: int,
           mode: str, timeout: float, extra_args: tuple[str, ...]) -> ConnectionInfo:
    log_path = path.with_suffix(".log")
    # O_NOFOLLOW and 0600: a planted symlink never makes the server append to another file
    with os.fdopen(open_private(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "server log"), "ab") as log_file:
        proc = subprocess.Popen(
            server_command(port, transport, ip, name, control_port_offset, mode, extra_args),
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            start_new_session=True, close_fds=True,
        )
    # Reap it whenever it exits, so a long-lived parent never keeps a zombie.
    threading.Thread(target=proc.wait, name=f"zmqruntime-reaper-{proc.pid}", daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(
                f"the zmqruntime server exited with code {proc.returncode} during start-up:\n{_tail(log_path)}"
            )
        if path.exists():
            try:
                info = read_connection_file(path)
            except (OSError, ValueError):
                info = None
            if info is not None and info.pid == proc.pid:
                if ping_info(info, timeout=max(0.05, min(1.0, deadline - time.monotonic()))) is not None:
                    return info
        time.sleep(0.002)
    raise ServerStartError(
        f"the zmqruntime server (pid {proc.pid}) did not answer ping within {timeout:g} s; it keeps running. "
        f"Log {log_path}:\n{_tail(log_path)}"
    )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        with os.fdopen(open_private(path, os.O_RDONLY, "server log"), errors="replace") as fh:
            return "\n".join(fh.read().splitlines()[-lines:])
    except (OSError, ServerStartError):
        return "(no log)"
