"""The tests' shared helpers and fixtures, one module (loaded by conftest.py's ``pytest_plugins``).

Test modules import helpers by name (``from helpers import free_port``);
fixtures (``runtime_dir``, ``port``, ``start_server``, ``server``,
``any_server``) need no import. Every server here is a real ``python -m
zmqruntime serve`` subprocess on a loopback port (or an IPC path) chosen free
for the test, and is shut down and reaped at teardown, whatever the test did
to it; anything else started under a test's private runtime directory is
found by its environment and stopped too (:func:`stop_servers`).
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from zmqruntime import ExecutionClient
from zmqruntime.transport import connection_file_name, pid_alive

__all__ = ["ROOT", "ServerProcess", "free_port", "server_env", "stop_servers", "wait_until"]

ROOT = Path(__file__).resolve().parent.parent


def free_port(span: int = 1000) -> int:
    """A data port P with P and P + span (the control port) both free; never 7777.

    Drawn below the kernel's ephemeral port range (32768+ on Linux), where
    jupyter_client picks the kernels' own ports, so a kernel started later
    cannot grab it between this check and the server's bind.
    """
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(20000, 32767 - span)
        if port == 7777:
            continue
        try:
            with socket.socket() as s1, socket.socket() as s2:
                s1.bind(("127.0.0.1", port))
                s2.bind(("127.0.0.1", port + span))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair found")


def _processes_under(runtime_dir: Path) -> list[psutil.Process]:
    """Every process started with ``ZMQRUNTIME_RUNTIME_DIR=runtime_dir`` (servers, workers, kernels)."""
    target = str(runtime_dir)
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get("ZMQRUNTIME_RUNTIME_DIR") == target:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def stop_servers(runtime_dir: Path, timeout: float = 5.0, by_environment: bool = True) -> None:
    """Shut down every zmqruntime server of ``runtime_dir``; kill whatever is left.

    Servers are found by their connection files and, with ``by_environment``,
    by environment too: a process whose ``ZMQRUNTIME_RUNTIME_DIR`` is this
    private directory is ours by construction (the Jupyter tests' kernels and
    the servers they spawned), so nothing outlives the test module. A plain
    test's teardown passes False: a module-scoped helper (a dask cluster, say)
    may have inherited the variable from the test that started it.
    """
    from zmqruntime.execution.client import ExecutionClient

    runtime_dir = Path(runtime_dir)
    pids = []
    for path in sorted(runtime_dir.glob("server-*.json")):
        try:
            pid = int(json.loads(path.read_text()).get("pid") or 0)
            if not pid_alive(pid):
                continue  # a server that is gone (killed by the test): nothing to ask
            pids.append(pid)
            client = ExecutionClient(connection_file=str(path), timeout=2.0, auto_spawn=False)
            try:
                client.shutdown()
            finally:
                client.close()
        except Exception:
            pass
    procs = _processes_under(runtime_dir) if by_environment else _existing(pids)
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(alive, timeout=timeout)
    assert not still, f"processes survived SIGKILL: {still}"


def _existing(pids: list[int]) -> list[psutil.Process]:
    found = []
    for pid in pids:
        try:
            found.append(psutil.Process(pid))
        except psutil.Error:
            continue
    return found


@pytest.fixture
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # AF_UNIX paths are limited to ~107 bytes: keep IPC runtime dirs short.
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="zr-", dir="/tmp"))
    monkeypatch.setenv("ZMQRUNTIME_RUNTIME_DIR", str(d))
    yield d
    stop_servers(d, by_environment=False)  # the servers a test left running (their workers follow)


@pytest.fixture
def port() -> int:
    return free_port()


def server_env(extra_path: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT)] + ([extra_path] if extra_path else []) + [env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


class ServerProcess:
    """A server subprocess plus the client tests talk to it with."""

    def __init__(self, runtime: Path, port: int, *args: str, transport: str = "tcp", extra_path: str | None = None):
        self.port = port
        self.transport = transport
        self.log_path = runtime / f"test-server-{port}.log"
        self.log = open(self.log_path, "wb")
        cmd = [sys.executable, "-m", "zmqruntime", "serve", "--port", str(port), "--transport", transport,
               "--log-level", "DEBUG", *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=server_env(extra_path))
        self.connection_file = runtime / connection_file_name(transport, port)
        deadline = time.monotonic() + 30
        while not self.connection_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start in 30 s")
            time.sleep(0.01)
        self.client = ExecutionClient(connection_file=str(self.connection_file), timeout=10)
        self.client.ping()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def new_client(self, **kwargs) -> ExecutionClient:
        return ExecutionClient(connection_file=str(self.connection_file), **kwargs)

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.client.shutdown()
                except Exception:
                    pass
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        finally:
            self.client.close()
            self.log.close()


@pytest.fixture
def start_server(runtime_dir: Path) -> Iterator:
    servers: list[ServerProcess] = []

    def start(*args: str, port: int | None = None, transport: str = "tcp", extra_path: str | None = None) -> ServerProcess:
        server = ServerProcess(runtime_dir, port or free_port(), *args, transport=transport, extra_path=extra_path)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server) -> ServerProcess:
    """A default server (TCP, concurrency 1, short cancel grace)."""
    return start_server("--cancel-grace-period", "0.5")


@pytest.fixture
def raw_dealer(server) -> Iterator:
    """A raw DEALER connected to the server's control port (CURVE when the server has it)."""
    import zmq

    from zmqruntime.curve import secure_client_socket

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    secure_client_socket(sock, server.client.info)
    sock.connect(server.client.info.control_url)
    yield sock
    sock.close()
    ctx.term()


@pytest.fixture
def private_shm_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private directory standing for /dev/shm (ZMQRUNTIME_SHM_DIR), removed afterwards;
    request it before any server starts."""
    import shutil
    import tempfile

    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    d = Path(tempfile.mkdtemp(prefix="zr-shm-", dir=base))
    monkeypatch.setenv("ZMQRUNTIME_SHM_DIR", str(d))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=["tcp", "ipc"])
def any_server(request, start_server) -> ServerProcess:
    """The same test over TCP and over IPC."""
    return start_server("--cancel-grace-period", "0.5", transport=request.param)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def wait_until_subscribed(client, events: list, timeout: float = 10.0) -> None:
    """Until a subscription that appends to ``events`` is live: it sees a probe's 'done' event.

    A probe that finishes before the SUB socket has connected is simply missed (PUB/SUB
    slow joiner), so probes are sent again until one is seen, within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        probe = client.execute("None")
        client.wait(probe, timeout=timeout)
        end = min(deadline, time.monotonic() + 0.5)
        while time.monotonic() < end:
            if any(e.execution_id == probe and e.type == "done" for e in list(events)):
                return
            time.sleep(0.01)
        if time.monotonic() >= deadline:
            raise AssertionError(f"the subscription saw no probe's events within {timeout} s")
