"""Connection files and auto-spawn: locking, stale files, foreign ports,
persistent and child modes, dead servers."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import server_env, wait_until
from zmqruntime import ExecutionClient, ServerStartError, ServerUnavailable
from zmqruntime.transport import connection_file_name, pid_alive

pytestmark = pytest.mark.timeout(90)


def kill_server(path):
    pid = json.loads(path.read_text())["pid"]
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 10)
    return pid


def test_auto_spawn_writes_private_connection_file(runtime_dir, port):
    client = ExecutionClient(port=port, spawn_timeout=30)
    try:
        # the default is IPC: socket files in the private runtime directory, not a port other users reach
        path = runtime_dir / connection_file_name("ipc", port)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        info = json.loads(path.read_text())
        assert info["data_port"] == port and info["control_port"] == port + 1000
        assert info["transport"] == "ipc" and info["control_url"].startswith(f"ipc://{runtime_dir}/")
        assert len(info["key"]) == 64 and info["pid"] == client.ping()["pid"]
        assert info["start_time"] > 0
        assert client.run("2 + 2", timeout=30) == {"_": 4}
        # a second client finds the same server instead of spawning
        other = ExecutionClient(port=port)
        assert other.ping()["server_id"] == client.ping()["server_id"]
        other.close()
        client.shutdown()
        wait_until(lambda: not path.exists(), 10)  # the server removes its own file
    finally:
        client.close()


RACE = textwrap.dedent("""
    import sys
    from zmqruntime import ExecutionClient
    c = ExecutionClient(port=int(sys.argv[1]), spawn_timeout=60)
    print(c.ping()["pid"], flush=True)
""")


def test_two_clients_racing_start_one_server(runtime_dir, port):
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(port)], stdout=subprocess.PIPE, text=True,
                              env=server_env()) for _ in range(3)]
    try:
        pids = {p.communicate(timeout=60)[0].strip() for p in procs}
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
    assert len(pids) == 1 and pids != {""}
    path = runtime_dir / connection_file_name("ipc", port)
    assert str(json.loads(path.read_text())["pid"]) in pids
    kill_server(path)


def test_stale_connection_file_is_cleaned(runtime_dir, port):
    path = runtime_dir / connection_file_name("tcp", port)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    path.write_text(json.dumps({"transport": "tcp", "ip": "127.0.0.1", "data_port": port,
                                "control_port": port + 1000, "data_url": f"tcp://127.0.0.1:{port}",
                                "control_url": f"tcp://127.0.0.1:{port + 1000}", "key": "ab" * 32,
                                "pid": dead.pid}))
    path.chmod(0o600)  # a file others could read is refused, never trusted (tests/test_shared_machine.py)
    client = ExecutionClient(port=port, transport="tcp", spawn_timeout=30)
    try:
        assert client.ping()["pid"] != dead.pid
        assert json.loads(path.read_text())["pid"] == client.ping()["pid"]
    finally:
        client.shutdown()
        client.close()


def test_port_held_by_foreign_process_is_a_clear_error(runtime_dir, port):
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        with pytest.raises(ServerStartError) as info:
            ExecutionClient(port=port, transport="tcp", spawn_timeout=10)
        assert str(port) in str(info.value) and "another process" in str(info.value)
        assert "never kills" in str(info.value)
        holder.getsockname()  # still ours, still open
    finally:
        holder.close()


def test_serve_on_taken_port_exits_with_message(runtime_dir, port):
    holder = socket.socket()
    holder.bind(("127.0.0.1", port + 1000))
    holder.listen()
    try:
        out = subprocess.run([sys.executable, "-m", "zmqruntime", "serve", "--port", str(port), "--transport", "tcp"],
                             capture_output=True, text=True, timeout=30, env=server_env())
        assert out.returncode == 3
        assert "control channel" in out.stderr and "Another process holds it" in out.stderr
    finally:
        holder.close()


def test_client_of_killed_server_gets_clear_error_within_timeout(server):
    client = server.new_client(timeout=1.0)
    client.run("'warm'", timeout=20)
    worker_pids = [w["pid"] for w in client.ping()["workers"]]
    server.proc.kill()
    server.proc.wait(10)
    # orphaned workers notice and exit by themselves
    wait_until(lambda: not any(pid_alive(p) for p in worker_pids), 10)
    t0 = time.monotonic()
    with pytest.raises(ServerUnavailable) as info:
        client.get_status()
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0 + 2.0  # bounded by the caller's timeout (plus scheduling slack)
    assert "no reply" in str(info.value) and "is it running" in str(info.value)
    with pytest.raises(ServerUnavailable):
        client.wait("whatever", timeout=5)
    client.close()


def test_client_usable_after_timeout_and_stale_reply_ignored(server):
    client = server.new_client(timeout=0.5)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        with pytest.raises(ServerUnavailable):
            client.ping()
    finally:
        os.kill(server.pid, signal.SIGCONT)
    # the next request gets its own reply, not the late one for the timed-out ping
    exec_id = client.execute("'after the pause'")
    assert isinstance(exec_id, str)
    client.wait(exec_id, timeout=10)
    assert client.get_results(exec_id) == {"_": "after the pause"}
    client.close()


def test_registered_but_unresponsive_server_is_left_alone(runtime_dir, start_server):
    server = start_server()
    os.kill(server.pid, signal.SIGSTOP)
    try:
        with pytest.raises(ServerUnavailable) as info:
            ExecutionClient(port=server.port, spawn_timeout=5)
        assert "left alone" in str(info.value)
        assert pid_alive(server.pid)
    finally:
        os.kill(server.pid, signal.SIGCONT)


CHILD_PARENT = textwrap.dedent("""
    import sys
    from zmqruntime import ExecutionClient
    c = ExecutionClient(port=int(sys.argv[1]), spawn_mode=sys.argv[2], spawn_timeout=60)
    print(c.ping()["pid"], flush=True)
    sys.stdin.read()   # live until told to exit
""")


@pytest.mark.parametrize("mode,survives", [("child", False), ("persistent", True)])
def test_spawn_modes(runtime_dir, port, mode, survives):
    parent = subprocess.Popen([sys.executable, "-c", CHILD_PARENT, str(port), mode], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=server_env())
    try:
        server_pid = int(parent.stdout.readline())
        assert pid_alive(server_pid)
        parent.stdin.close()
        parent.wait(20)
        if survives:
            time.sleep(1.5)  # longer than the child-mode parent check interval
            assert pid_alive(server_pid)
            client = ExecutionClient(port=port, auto_spawn=False)
            assert client.ping()["pid"] == server_pid and client.ping()["persistent"]
            client.shutdown()
            client.close()
        wait_until(lambda: not pid_alive(server_pid), 15)
    finally:
        parent.kill()
        parent.wait(10)


def test_ipc_transport_auto_spawn(runtime_dir, port):
    client = ExecutionClient(port=port, transport="ipc", spawn_timeout=30)
    try:
        assert client.info.control_url.startswith("ipc://")
        assert client.run("'over ipc'", timeout=30) == {"_": "over ipc"}
    finally:
        client.shutdown()
        client.close()


def test_client_argument_errors(runtime_dir, port):
    with pytest.raises(ValueError):
        ExecutionClient(port=0)
    with pytest.raises(ValueError):
        ExecutionClient(port="7777")
    with pytest.raises(ValueError):
        ExecutionClient(port=port, timeout=-1)
    with pytest.raises(ValueError):
        ExecutionClient(port=port, spawn_mode="forever")
    with pytest.raises(ServerUnavailable):
        ExecutionClient(port=port, auto_spawn=False, timeout=0.5)
    with pytest.raises(FileNotFoundError):
        ExecutionClient(connection_file=str(runtime_dir / "missing.json"))
    bad = runtime_dir / "bad.json"
    bad.write_text("{}")
    bad.chmod(0o600)
    with pytest.raises(ValueError):
        ExecutionClient(connection_file=str(bad))


def test_api_argument_errors(server):
    client = server.client
    with pytest.raises(TypeError):
        client.execute(123)
    with pytest.raises(TypeError):
        client.execute("1", results="x")
    with pytest.raises(TypeError):
        client.execute("1", name=3)
    with pytest.raises(ValueError):
        client.execute("1", timeout=0)
    with pytest.raises(TypeError):
        client.execute("1", push={"not an identifier": 1})
    with pytest.raises(TypeError):
        client.get_status(5)
    with pytest.raises(TypeError):
        client.cancel(None)
    with pytest.raises(ValueError):
        client.wait("x", timeout=-2)
    with pytest.raises(ValueError):
        client.wait("x", timeout=float("inf"))
    with pytest.raises(TypeError):
        client.cancel("0123456789ab", reason=3)
    with pytest.raises(TypeError):
        client.subscribe("not callable")
    from zmqruntime import ExecutionTimeout

    exec_id = client.execute("import time\ntime.sleep(5)")
    with pytest.raises(ExecutionTimeout):
        client.wait(exec_id, timeout=0.2)
    assert client.get_status(exec_id)["status"] in ("queued", "running")  # wait timing out did not cancel it
    client.cancel(exec_id)
    assert client.ping()["pid"] == server.pid
