"""One suite, every backend: the local process pool and a real dask cluster.

The dask cluster is a real ``dask scheduler`` and two ``dask worker`` processes
(with nannies, as on separate hosts), started once for the module on loopback
and reaped at the end. Each test starts its own zmqruntime server in front of
the backend. Marked ``cluster``: ``python -m pytest -m cluster`` runs them alone.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Iterator

import pytest

from helpers import ROOT, ServerProcess, wait_until
from zmqruntime import ExecutionClient, RemoteError

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

EXAMPLES = str(ROOT / "examples")


def _free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaskCluster:
    """``dask scheduler`` + 2 ``dask worker`` processes, each in its own process group."""

    def __init__(self, tmp: str):
        self.port = _free()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.log = open(os.path.join(tmp, "dask.log"), "w")
        # the workers can import the project and its examples (a custom task kind), as the server can
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), EXAMPLES, os.environ.get("PYTHONPATH", "")]))
        common = {"stdout": self.log, "stderr": subprocess.STDOUT, "start_new_session": True, "cwd": tmp, "env": env}
        self.procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                                        "127.0.0.1", "--port", str(self.port), "--no-dashboard"], **common)]
        for _ in range(2):
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--host", "127.0.0.1",
                 "--nthreads", "1", "--nanny", "--no-dashboard", "--death-timeout", "60"], **common))
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)

    def stop(self) -> None:
        for p in reversed(self.procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        self.log.close()


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory) -> Iterator[DaskCluster]:
    cluster = DaskCluster(str(tmp_path_factory.mktemp("dask")))
    try:
        yield cluster
    finally:
        cluster.stop()


KINDS = '--ExecutionServer.task_kind_classes={"call": "call_kind:CallKind"}'


@pytest.fixture(params=["local", "dask"])
def backend(request, start_server) -> ServerProcess:
    if request.param == "local":
        return start_server("--cancel-grace-period", "1", KINDS, extra_path=EXAMPLES)
    cluster = request.getfixturevalue("dask_cluster")
    return start_server("--backend", "dask", "--scheduler", cluster.address, "--cancel-grace-period", "1", KINDS,
                        extra_path=EXAMPLES)


def is_dask(server: ServerProcess) -> bool:
    return server.client.ping()["backend"]["name"] == "dask"


def test_progress_and_output_stream_live_with_sequence_numbers(backend):
    client = backend.client
    events: list = []
    sub = client.subscribe(events.append)
    eid = client.execute("from zmqruntime import progress\nimport time\n"
                         "for i in progress(range(20), desc='work', min_interval=0):\n"
                         "    print('line', i)\n    time.sleep(0.01)\n'finished'")
    assert client.result(eid, timeout=60) == {"_": "finished"}
    wait_until(lambda: any(e.type == "done" and e.execution_id == eid for e in events), 10)
    sub.close()
    mine = [e for e in events if e.execution_id == eid]
    seqs = [e.seq for e in mine]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and not any(e.missed for e in mine)
    out = "".join(e["text"] for e in mine if e.type == "stream")
    assert out == "".join(f"line {i}\n" for i in range(20))
    done = [e["done"] for e in mine if e.type == "progress"]
    assert done and done[-1] == 20
    status = client.get_status(eid)
    assert status["progress"]["done"] == 20 and status["worker"]


def test_a_custom_task_kind_runs_on_every_backend(backend):
    task = {"kind": "call", "function": "math:factorial", "args": [20]}
    assert backend.client.run(task, timeout=60) == {"_": 2432902008176640000}
    with pytest.raises(RemoteError) as info:
        backend.client.execute({"kind": "call", "function": "no colon"})
    assert info.value.code == "bad_request"


def test_variables_persist_within_a_session_and_not_across(backend):
    a, b = backend.client, backend.new_client()
    try:
        a.run("import numpy as np\narr = np.arange(1_000_000)", timeout=60)
        got = a.run("arr * 2", timeout=60)["_"]
        assert got.shape == (1_000_000,) and int(got[-1]) == 1_999_998
        assert b.run("'arr' in globals()", timeout=60) == {"_": False}
    finally:
        b.close()


def test_cancel_stops_a_running_python_loop_and_keeps_the_namespace(backend):
    client = backend.client
    client.run("kept = 'yes'", timeout=60)
    loop = client.execute("print('looping', flush=True)\nwhile True:\n    pass")
    wait_until(lambda: "looping" in client.get_status(loop)["stdout"], 60)
    t0 = time.monotonic()
    client.cancel(loop)
    status = client.wait(loop, timeout=60)
    took = time.monotonic() - t0
    print(f"\ncancel of a running loop ({client.ping()['backend']['name']}): {took * 1e3:.0f} ms")
    assert status["status"] == "cancelled" and not status["namespace_reset"]
    assert client.run("kept", timeout=60) == {"_": "yes"}  # interrupted, not killed


def test_cancel_of_a_task_blocked_in_c_frees_the_worker(backend):
    client = backend.client
    blocked = client.execute("import ctypes\nprint('blocking', flush=True)\nctypes.CDLL(None).sleep(120)")
    wait_until(lambda: "blocking" in client.get_status(blocked)["stdout"], 60)
    client.cancel(blocked)
    status = client.wait(blocked, timeout=90)
    assert status["status"] == "cancelled"
    if is_dask(backend):  # a thread in C cannot be interrupted: its worker was restarted
        assert "worker terminated" in status["reason"] and status["namespace_reset"]
    # the worker is free again: the session runs its next execution at once
    assert client.run("'free'", timeout=60) == {"_": "free"}


def test_parallel_map_returns_ordered_results_with_one_bar(backend):
    client = backend.client
    events: list = []
    sub = client.subscribe(events.append)
    code = ("from zmqruntime import parallel_map\n"
            "offset = 100\n"
            "def shifted(x):\n    return x * x + offset\n"
            "parallel_map(shifted, range(30), desc='squares')")
    eid = client.execute(code)
    assert client.result(eid, timeout=120) == {"_": [x * x + 100 for x in range(30)]}
    wait_until(lambda: any(e.type == "done" and e.execution_id == eid for e in events), 10)
    sub.close()
    bars = {e["desc"] for e in events if e.execution_id == eid and e.type == "progress"}
    last = [e for e in events if e.execution_id == eid and e.type == "progress"][-1]
    assert bars == {"squares"} and last["done"] == 30 and last["total"] == 30
    # from the client too, with a lambda pickled by value
    assert client.parallel_map(lambda x: -x, [1, 2, 3], timeout=120) == [-1, -2, -3]


def test_parallel_map_raises_the_first_remote_error_and_can_be_cancelled(backend):
    client = backend.client
    failing = client.execute("from zmqruntime import parallel_map\n"
                             "parallel_map(lambda x: 10 // (x - 5), range(10))")
    status = client.wait(failing, timeout=120)
    assert status["status"] == "failed" and status["error"]["ename"] == "ZeroDivisionError"
    slow = client.execute("from zmqruntime import parallel_map\nimport time\n"
                          "parallel_map(lambda x: time.sleep(60), range(4))")
    wait_until(lambda: (client.get_status(slow)["progress"] or {}).get("total") == 4, 60)
    time.sleep(0.5)
    client.cancel(slow)
    assert client.wait(slow, timeout=90)["status"] == "cancelled"
    assert client.run("1 + 1", timeout=60) == {"_": 2}  # nothing left behind holds the session


def test_a_function_that_cannot_be_pickled_is_named_in_the_error(backend):
    client = backend.client
    eid = client.execute("import threading\nfrom zmqruntime import parallel_map\nlock = threading.Lock()\n"
                         "def uses_lock(x):\n    return lock\nparallel_map(uses_lock, [1])")
    status = client.wait(eid, timeout=60)
    assert status["status"] == "failed" and "uses_lock" in status["reason"]
    with pytest.raises(TypeError, match="parallel_map needs a callable"):
        client.parallel_map(42, [1])


def test_a_killed_dask_worker_fails_its_execution_naming_the_worker(dask_cluster, start_server):
    server = start_server("--backend", "dask", "--scheduler", dask_cluster.address)
    client = server.client
    eid = client.execute("import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(120)")
    wait_until(lambda: client.get_status(eid)["stdout"].strip(), 60)
    worker = client.get_status(eid)["worker"]
    os.kill(int(client.get_status(eid)["stdout"].split()[0]), signal.SIGKILL)
    status = client.wait(eid, timeout=90)
    assert status["status"] == "failed" and worker in status["reason"] and status["error"]["worker"] == worker
    assert client.run("'still serving'", timeout=90) == {"_": "still serving"}
    info = client.ping()["backend"]
    assert info["scheduler"] == dask_cluster.address and info["workers"]


def test_an_unreachable_scheduler_is_a_clear_error_at_serve_time(runtime_dir):
    port = _free()
    out = subprocess.run([sys.executable, "-m", "zmqruntime", "serve", "--port", str(_free()), "--backend", "dask",
                          "--scheduler", f"tcp://127.0.0.1:{port}", "--DaskBackend.connect_timeout=2"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 3 and f"cannot reach the dask scheduler at tcp://127.0.0.1:{port}" in out.stderr
    out = subprocess.run([sys.executable, "-m", "zmqruntime", "serve", "--backend", "local", "--scheduler", "x"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--scheduler goes with --backend dask" in out.stderr


def test_ping_and_status_show_the_backend(dask_cluster, start_server):
    server = start_server("--backend", "dask", "--scheduler", dask_cluster.address)
    client: ExecutionClient = server.client
    eid = client.execute("1")
    client.wait(eid, timeout=60)
    backend = client.ping()["backend"]
    workers = {w["address"] for w in backend["workers"]}
    assert backend["name"] == "dask" and len(workers) == 2
    assert client.get_status(eid)["worker"] in workers
    session = next(s for s in client.sessions() if s["session"] == client.session_name)
    assert session["worker"]["address"] in workers
    with pytest.raises(RemoteError):
        client.get_results("000000000000")


def test_any_cluster_class_is_configuration(start_server, runtime_dir):
    """--DaskBackend.cluster=module:Class with JSON kwargs: here distributed's own LocalCluster."""
    server = start_server("--backend", "dask", "--DaskBackend.cluster=distributed:LocalCluster",
                          '--DaskBackend.cluster_kwargs={"n_workers": 1, "threads_per_worker": 1, '
                          '"dashboard_address": None}')
    assert len(server.client.ping()["backend"]["workers"]) == 1
    assert server.client.run("21 * 2", timeout=60) == {"_": 42}
    out = subprocess.run([sys.executable, "-m", "zmqruntime", "serve", "--port", str(_free()), "--backend", "dask",
                          "--DaskBackend.cluster=nosuch_module:Cluster"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 3 and "cannot import dask cluster class 'nosuch_module:Cluster'" in out.stderr


def test_display_outputs_figures_and_tqdm_rows_on_every_backend(backend):
    """What a remote cell shows (display, a figure, tqdm bars, the result's repr) is the same on each backend."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("tqdm")
    client = backend.client
    eid = client.execute("import matplotlib.pyplot as plt\nfrom tqdm import tqdm\n"
                         "for i in tqdm(range(5), desc='bar'):\n    pass\n"
                         "display({'text/html': '<b>hi</b>', 'text/plain': 'hi'}, raw=True)\n"
                         "plt.plot([1, 2]); plt.show()\n6 * 7")
    assert client.result(eid, timeout=60) == {"_": 42}
    status = client.get_status(eid)
    kinds = [sorted(o["data"]) for o in status["outputs"]]
    assert kinds == [["text/html", "text/plain"], ["image/png", "text/plain"], ["text/plain"]]
    assert status["outputs"][-1]["data"]["text/plain"] == "42" and status["outputs"][-1]["result"]
    assert [(b["desc"], b["n"], b["closed"]) for b in status["bars"]] == [("bar", 5, True)]
    assert "\r" not in status["stderr"]


def test_finished_executions_leave_no_results_on_the_cluster(dask_cluster, start_server):
    """The server keeps an execution's outcome itself: the dask future is released (with
    the next submit, or within about a second) so no result stays in a worker's memory."""
    from distributed import Client

    server = start_server("--backend", "dask", "--scheduler", dask_cluster.address)
    client: ExecutionClient = server.client
    ids = [client.execute(f"bytes({n} << 20)") for n in (1, 2, 3)]
    for eid in ids:
        assert len(client.result(eid, timeout=60)["_"]) >> 20 in (1, 2, 3)
    with Client(dask_cluster.address, timeout=30) as observer:
        def held() -> list[str]:
            who_has = observer.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.tasks))
            return [k for k in who_has if str(k).startswith("zmqr-")]
        wait_until(lambda: not held(), timeout=20, interval=0.2)
        assert not held()
