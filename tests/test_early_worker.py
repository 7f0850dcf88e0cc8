"""``zmqruntime serve`` starts its first spare worker before it imports the
server, so the two interpreters boot side by side; the local backend adopts
that worker only if it was started for the server's own settings."""

from __future__ import annotations

import re
import resource
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from helpers import server_env, wait_until

pytestmark = pytest.mark.timeout(120)

BACKENDS = str(Path(__file__).parent / "backends")
SHM_RESULT = "import numpy as np\nnp.arange(1 << 19, dtype=np.float64)"  # 4 MiB: over the 1 MiB threshold


def worker_children(server) -> list[psutil.Process]:
    children = psutil.Process(server.pid).children()
    return [p for p in children if "zmqruntime.execution" in " ".join(p.cmdline())]


def log_text(server) -> str:
    server.log.flush()
    return server.log_path.read_text()


def result_via_shared_memory(client, shm_dir: Path) -> None:
    exec_id = client.execute(SHM_RESULT)
    assert client.wait(exec_id, timeout=60)["status"] == "complete"
    assert len(list(shm_dir.glob("zmqr-*.buf"))) == 1  # the worker knew the server's result-file settings
    assert client.get_results(exec_id)["_"][-1] == (1 << 19) - 1


def test_the_first_spare_is_started_early_and_adopted(start_server, private_shm_dir):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, 256)  # the server raises its own soft limit (towards the hard one) when it binds
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        server = start_server()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    wait_until(lambda: "adopted worker" in log_text(server), 30)
    adopted = re.search(r"adopted worker (w-\w+) \(pid (\d+)\)", log_text(server))
    assert adopted is not None
    pid = int(adopted.group(2))
    assert [p.pid for p in worker_children(server)] == [pid]  # no second worker was started beside it
    wait_until(lambda: server.client.ping()["workers"][0]["ready"], 30)
    # Started before the server raised its open-file limit, it has the same one.
    limit = psutil.Process(server.pid).rlimit(psutil.RLIMIT_NOFILE)
    assert limit[0] > low and psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE) == limit
    assert "discarded worker" not in log_text(server)
    # The first session runs on it, and it got the settings the server made after it started.
    result_via_shared_memory(server.client, private_shm_dir)
    assert server.client.ping()["workers"][0]["pid"] == pid


def test_configuration_options_mean_no_early_worker(start_server, private_shm_dir):
    server = start_server("--LocalBackend.spare_workers=2")
    wait_until(lambda: len(worker_children(server)) == 2, 30)
    assert "adopted worker" not in log_text(server) and "discarded worker" not in log_text(server)
    result_via_shared_memory(server.client, private_shm_dir)


def test_an_early_worker_started_for_other_settings_is_discarded(start_server, private_shm_dir):
    # The class's own task kinds are not what the CLI could know before importing it.
    server = start_server("--server-class", "kinds_server:KindsServer", extra_path=BACKENDS)
    wait_until(lambda: "discarded worker" in log_text(server), 30)
    discarded = re.search(r"discarded worker pid (\d+)", log_text(server))
    assert discarded is not None and not psutil.pid_exists(int(discarded.group(1)))
    assert "adopted worker" not in log_text(server)
    wait_until(lambda: len(worker_children(server)) == 1, 30)  # a spare of its own instead
    exec_id = server.client.execute({"kind": "source", "code": "6 * 7"})  # its own kind: its worker has it
    assert server.client.wait(exec_id, timeout=60)["status"] == "complete"
    assert server.client.get_results(exec_id)["_"] == 42
    result_via_shared_memory(server.client, private_shm_dir)


def test_a_server_that_cannot_bind_leaves_no_early_worker(start_server, runtime_dir, tmp_path):
    first = start_server()
    out = tmp_path / "serve.out"  # a file, not a pipe: a worker holding a pipe would make us wait for it
    with open(out, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "zmqruntime", "serve", "--port", str(first.port),
                                 "--transport", "tcp"], env=server_env(), stdout=fh, stderr=subprocess.STDOUT)
    pid = proc.pid
    try:
        assert proc.wait(60) == 3, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # Checked at once: a worker left behind would still be booting, or about to notice its parent is gone.
    left = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = p.info["cmdline"] or []
        if "zmqruntime.execution" in cmdline and "--parent-pid" in cmdline and \
                cmdline[cmdline.index("--parent-pid") + 1] == str(pid):
            left.append(p)
    assert left == []  # killed and reaped before the server exited
    assert not list(runtime_dir.glob(f"zmqr-w-{pid}-*"))  # nor its endpoint file
    assert "zmqruntime serve:" in out.read_text()
