"""zmqruntime plumbing shared by the zr_* benchmarks: import, server, events.

Why: every zmqruntime measurement needs the same three things, and they are
the places most likely to change while the package is young --

  * ``import_api()``: the public API, or a clean "not available: <error>" so
    the baselines still run when zmqruntime is broken or not installed;
  * ``running_server()``: a server in a child process on a free port pair with
    a private runtime dir (``ZMQRUNTIME_RUNTIME_DIR``), connected client,
    shut down and reaped afterwards whatever happens;
  * ``event_field()`` / ``run_to_result()``: readers of the event and result
    shapes (``Event`` attributes and content, ``client.run``), in one place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common

CONTROL_OFFSET = 1000  # zmqruntime.transport.DEFAULT_CONTROL_OFFSET: control port = data port + 1000
READY_TIMEOUT = 20.0


class NotAvailable(Exception):
    """zmqruntime (or the part a benchmark needs) does not import yet."""


def import_api():
    """``(ExecutionClient, zmqruntime module)`` or raise NotAvailable."""
    try:
        import zmqruntime
        from zmqruntime import ExecutionClient, ExecutionServer  # noqa: F401 -- the contract
    except Exception as exc:  # noqa: BLE001 -- ImportError or a broken package
        raise NotAvailable(f"not available: {type(exc).__name__}: {exc}") from exc
    return ExecutionClient, zmqruntime


def unavailable_or_error(exc: BaseException) -> dict:
    if isinstance(exc, NotAvailable):
        return {"error": str(exc), "unavailable": True}
    return common.error_entry(exc)


def measure_all(measurements: dict, server_args: tuple[str, ...] = ()) -> dict:
    """Run each ``name -> fn(client)`` against one server; one failure stays local."""
    try:
        import_api()
    except NotAvailable as exc:
        return {name: unavailable_or_error(exc) for name in measurements}
    try:
        with running_server(server_args) as (client, _port):
            return {name: common.guarded(fn, client) for name, fn in measurements.items()}
    except Exception as exc:  # noqa: BLE001 -- the server itself did not come up
        entry = common.error_entry(exc, "server")
        return {name: entry for name in measurements}


def measure_curve(fn: Any, server_args: tuple[str, ...] = ()) -> dict:
    """``{"curve": fn(client, port)}`` against one server; its own failure, or the server's, as an entry."""
    try:
        import_api()
    except NotAvailable as exc:
        return {"curve": unavailable_or_error(exc)}
    try:
        with running_server(server_args) as (client, port):
            return {"curve": common.guarded(fn, client, port)}
    except Exception as exc:  # noqa: BLE001 -- the server itself did not come up
        return {"curve": common.error_entry(exc, "server")}


def connection_file(runtime_dir: Path, port: int) -> Path:
    return runtime_dir / f"server-ipc-{port}.json"  # `serve` without --transport: IPC, the default


def server_pid(runtime_dir: Path, port: int) -> int | None:
    try:
        return int(json.loads(connection_file(runtime_dir, port).read_text()).get("pid") or 0) or None
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def private_runtime_dir():
    """A fresh ZMQRUNTIME_RUNTIME_DIR for this process, restored afterwards."""
    path = Path(tempfile.mkdtemp(prefix="bench-zmqr-"))
    old = os.environ.get("ZMQRUNTIME_RUNTIME_DIR")
    os.environ["ZMQRUNTIME_RUNTIME_DIR"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("ZMQRUNTIME_RUNTIME_DIR", None)
        else:
            os.environ["ZMQRUNTIME_RUNTIME_DIR"] = old
        shutil.rmtree(path, ignore_errors=True)


def wait_for_connection_file(proc: subprocess.Popen, path: Path, timeout: float) -> None:
    """The server writes its connection file once bound: wait for it (bounded)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"server exited rc={proc.returncode} before writing {path.name}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"server did not write {path.name} within {timeout}s")
        time.sleep(0.005)


def stop_server(client, proc: subprocess.Popen | None, runtime_dir: Path, port: int) -> None:
    """Polite shutdown, then make sure: the child we spawned, and the pid it wrote."""
    pid = server_pid(runtime_dir, port)
    if client is not None:
        with contextlib.suppress(Exception):
            client.shutdown()
        with contextlib.suppress(Exception):
            client.close()
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        common.reap(proc)
    elif pid:  # auto-spawned by our client in this private runtime dir
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.02)
        if _alive(pid):
            common.kill_pid(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


@contextlib.contextmanager
def running_server(server_args: tuple[str, ...] = ()):
    """Yield ``(client, port)`` for a server started as a child process.

    ``server_args`` go to ``zmqruntime serve`` (e.g. a trait such as
    ``--ExecutionServer.concurrency=2``).
    """
    ExecutionClient, _ = import_api()
    with private_runtime_dir() as rdir:
        port = common.free_port_pair(CONTROL_OFFSET)
        log = open(rdir / "server.log", "w")
        proc = client = None
        try:
            proc = common.spawn_python(
                ["-m", "zmqruntime", "serve", "--port", str(port), *server_args],
                env=common.python_env({"ZMQRUNTIME_RUNTIME_DIR": str(rdir)}),
                stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_for_connection_file(proc, connection_file(rdir, port), READY_TIMEOUT)
            except Exception as exc:
                log.flush()
                tail = (rdir / "server.log").read_text()[-1500:]
                raise RuntimeError(f"{exc}; server log tail: {tail}") from exc
            # we started the server: never let the client spawn another
            client = ExecutionClient(port=port, auto_spawn=False)
            yield client, port
        finally:
            stop_server(client, proc, rdir, port)
            log.close()


def wait_workers_ready(client, timeout: float = 60.0) -> None:
    """Until every worker process the server has (sessions' and spares) says it is ready:
    boots started by new sessions then no longer share the CPU with what is timed next."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = client.ping().get("workers") or []
        if workers and all(w.get("ready") for w in workers):
            return
        time.sleep(0.05)
    raise TimeoutError(f"the server's workers were not all ready within {timeout:g} s")


# ------------------------------------------------------------ readers


def event_field(event, name, default=None):
    """A field of an ``Event`` (attribute first, then its content) or of a status dict."""
    if isinstance(event, dict):
        return event.get(name, default)
    if hasattr(event, name):
        return getattr(event, name)
    return event.get(name, default)


def event_type(event) -> str | None:
    return event_field(event, "type")


def event_exec_id(event) -> str | None:
    return event_field(event, "execution_id")


def event_seq(event) -> int | None:
    seq = event_field(event, "seq")
    return int(seq) if seq is not None else None


def event_status(event) -> str | None:
    return event_field(event, "status")


def run_to_result(client, code: str, timeout: float = 10.0):
    """execute -> wait -> get_results, returning the value of the last expression."""
    return last_value(client.run(code, timeout=timeout))


def last_value(results):
    """The value of the last expression (``results["_"]``)."""
    return results.get("_")
