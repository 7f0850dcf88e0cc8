"""Shared fixtures: private runtime dirs, free ports, real server processes.

Every server here is a real ``python -m zmqruntime serve`` subprocess on a
loopback port (or an IPC path) chosen free for the test, and is shut down
and reaped at teardown, whatever the test did to it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from zmqruntime import ExecutionClient
from zmqruntime.transport import connection_file_name, pid_alive

ROOT = Path(__file__).resolve().parent.parent


def free_port(span: int = 1000) -> int:
    """A port P with P and P + span both free on 127.0.0.1."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + span > 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + span))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found")


@pytest.fixture
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # AF_UNIX paths are limited to ~107 bytes: keep IPC runtime dirs short.
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="zr-", dir="/tmp"))
    monkeypatch.setenv("ZMQRUNTIME_RUNTIME_DIR", str(d))
    yield d
    for f in d.glob("server-*.json"):
        try:
            import json

            pid = json.loads(f.read_text()).get("pid", 0)
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


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
