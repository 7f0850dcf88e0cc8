"""Injected faults: workers and servers killed, clients killed mid-transfer,
replies lost on the wire, wall-clock jumps.

Every fault here is real: signals to real processes, a real segfault, a
relay on a real socket that drops replies. Each test then checks that the
server (or a newly started one) goes on serving and that nothing was lost
or run twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
import zmq

from helpers import server_env, wait_until
from zmqruntime import ExecutionClient, RemoteError, ServerUnavailable
from zmqruntime.curve import secure_client_socket
from zmqruntime.protocol import split_body, unpack_body
from zmqruntime.transport import connection_file_name, read_connection_file, write_connection_file

pytestmark = pytest.mark.timeout(90)

MiB = 1 << 20


def gone(pid: int) -> bool:
    """Not running (exited, or a zombie waiting to be reaped)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def bytes_in_flight(port: int) -> int:
    """Bytes queued in the kernel, either way, on TCP connections to local ``port`` (Linux /proc/net/tcp)."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        ends = {int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)}
        if port in ends:
            tx, rx = fields[4].split(":")
            total += int(tx, 16) + int(rx, 16)
    return total


# -- the worker dies mid-task ---------------------------------------------------

DEATHS = {
    # kind: (task code, words the reason must contain, signal name or None)
    "sigkill": ("import time\nprint('started', flush=True)\ntime.sleep(60)", "killed by signal SIGKILL (9)", "SIGKILL"),
    "os_exit": ("import os\nos._exit(3)", "exit code 3", None),
    "segfault": ("import ctypes\nctypes.string_at(0)", "killed by signal SIGSEGV (11)", "SIGSEGV"),
}


@pytest.mark.parametrize("kind", list(DEATHS))
def test_worker_death_fails_the_execution_and_the_queue_goes_on(server, kind):
    code, reason, signame = DEATHS[kind]
    client = server.client
    client.run("survivor = 'set before the crash'", timeout=30)
    old_worker = session_worker(client)
    dying = client.execute(code, name=f"dies-{kind}")
    behind = client.execute("import os\n('survivor' in globals(), os.getpid())", name="behind")
    if kind == "sigkill":  # killed from outside while its code runs
        wait_until(lambda: "started" in client.get_status(dying)["stdout"], 30)
        os.kill(client.get_status(dying)["worker_pid"], signal.SIGKILL)

    status = client.wait(dying, timeout=30)
    assert status["status"] == "failed"
    assert reason in status["reason"] and "namespace reset" in status["reason"]
    assert status["error"]["ename"] == "WorkerDied" and status["error"]["signal"] == signame
    assert status["namespace_reset"]
    with pytest.raises(RemoteError) as info:
        client.get_results(dying)
    assert info.value.code == "execution_failed" and reason in info.value.message

    # the execution queued behind it runs once, on a fresh worker, and says the namespace is new
    after = client.wait(behind, timeout=30)
    assert after["status"] == "complete" and after["namespace_reset"]
    survived, new_worker = client.get_results(behind)["_"]
    assert survived is False and new_worker != old_worker
    assert wait_until(lambda: gone(old_worker), 10)  # the dead worker was reaped
    assert client.ping()["pid"] == server.pid and session_worker(client) == new_worker
    assert client.run("'still serving'", timeout=30) == {"_": "still serving"}


def session_worker(client) -> int:
    """The pid of the worker holding this client's session."""
    [pid] = [w["pid"] for w in client.ping()["workers"] if w["session"] == client.session_name]
    return pid


# -- the server dies mid-execution ------------------------------------------------

def test_server_killed_mid_execution_then_a_new_server_is_found(server, runtime_dir):
    client = server.new_client(timeout=2.0)
    running = client.execute("import time\nwhile True: time.sleep(0.05)", name="orphaned")
    wait_until(lambda: client.get_status(running)["status"] == "running", 30)
    workers = [w["pid"] for w in client.ping()["workers"]]
    outcome: dict = {}

    def waiter() -> None:  # blocked in wait() when the server dies
        t0 = time.monotonic()
        try:
            client.wait(running)
        except Exception as exc:  # noqa: BLE001 - the type is what we check
            outcome["error"] = exc
        outcome["elapsed"] = time.monotonic() - t0

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.3)
    server.proc.kill()
    server.proc.wait(10)
    thread.join(30)
    assert not thread.is_alive()
    assert isinstance(outcome["error"], ServerUnavailable), outcome
    for call in (lambda: client.get_status(running), lambda: client.get_results(running),
                 lambda: client.wait(running, timeout=30)):
        t0 = time.monotonic()
        with pytest.raises(ServerUnavailable):
            call()
        assert time.monotonic() - t0 < 2.0 + 5.0  # the client's timeout, plus slack for a loaded machine
    # the orphaned worker notices and exits although its task never ends
    wait_until(lambda: all(gone(pid) for pid in workers), 15)

    # the connection file is stale now; a client for that port starts a new persistent server
    path = runtime_dir / connection_file_name("tcp", server.port)
    assert path.exists() and read_connection_file(path).pid == server.pid
    fresh = ExecutionClient(port=server.port, transport="tcp", spawn_timeout=60, timeout=10)
    try:
        ping = fresh.ping()
        assert ping["pid"] != server.pid and ping["persistent"]
        assert read_connection_file(path).pid == ping["pid"]
        assert fresh.run("'new server'", timeout=30) == {"_": "new server"}
        with pytest.raises(RemoteError) as info:  # results die with their server (documented)
            fresh.get_status(running)
        assert info.value.code == "unknown_execution"
        with pytest.raises(ServerUnavailable):  # the old client holds the old key: a clear error, no mix-up
            client.ping()
    finally:
        fresh.shutdown()
        fresh.close()
        client.close()
    wait_until(lambda: gone(ping["pid"]), 15)


# -- clients die mid-request and mid-reply ------------------------------------------

KILLED_CLIENT = textwrap.dedent("""
    import sys
    import zmq
    from zmqruntime.protocol import Session
    from zmqruntime.transport import read_connection_file
    info = read_connection_file(sys.argv[1])
    session = Session(info.key)
    sock = zmq.Context().socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVHWM, 1)
    from zmqruntime.curve import secure_client_socket
    secure_client_socket(sock, info)
    sock.connect(info.control_url)
    sock.send_multipart(session.serialize_request("ping", {})[0])
    sock.recv_multipart()  # the connection is up (handshake done)
    print("connected", flush=True)
    sys.stdin.readline()
    if sys.argv[2] == "request":  # 64 MiB of pushed data: takes a while to arrive
        frames, _ = session.serialize_request(
            "execute", {"task": {"kind": "python", "code": "1"}, "name": "killed-mid-request"},
            [bytearray(64 * 2**20)])
    else:
        # Replies this client never reads fill its receive queue (RCVHWM 1), so libzmq stops
        # reading the connection and the large reply behind them stays on its way.
        for _ in range(4):
            sock.send_multipart(session.serialize_request("ping", {})[0])
        frames, _ = session.serialize_request("results", {"execution_id": sys.argv[3], "release": True})
    sock.send_multipart(frames)
    print("sending", flush=True)
    sys.stdin.readline()
""")


def start_doomed_client(server, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, str(server.connection_file), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=server_env())
    assert proc.stdout.readline().strip() == "connected"
    return proc


def test_client_killed_mid_request_does_not_disturb_the_server(server):
    doomed = start_doomed_client(server, "request")
    os.kill(server.pid, signal.SIGSTOP)  # the 64 MiB request can only get as far as the socket buffers
    try:
        doomed.stdin.write("go\n")
        doomed.stdin.flush()
        assert doomed.stdout.readline().strip() == "sending"
        wait_until(lambda: bytes_in_flight(server.port + 1000) > 1 * MiB, 20)  # the 64 MiB are on their way
        doomed.kill()
        doomed.wait(10)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    other = server.new_client(timeout=10)
    try:
        assert other.ping()["pid"] == server.pid
        assert other.run("'served'", timeout=30) == {"_": "served"}
        # the half-sent request was discarded whole: nothing from it was queued or run
        assert [e for e in other.list_executions() if e["name"] == "killed-mid-request"] == []
    finally:
        other.close()


def test_client_killed_mid_reply_frees_the_queued_reply(start_server):
    """A 200 MiB reply to a client that stops reading, then dies.

    The result is held in the server's memory (shared-memory result files
    off), which is the case where a queued reply could pin it.

    libzmq's ROUTER keeps what is queued for a connected peer; when the peer's
    connection goes, the queue goes with it (ROUTER_MANDATORY off: later
    replies to that peer are dropped). With ``release=True`` the record gave
    its copy up too, so the server's memory must come back down.
    """
    server = start_server("--cancel-grace-period", "0.5", "--ExecutionServer.shm_result_bytes=0")
    client = server.client
    big = client.execute("import numpy as np\nnp.ones(200 * 2**20, dtype=np.uint8)")
    assert client.wait(big, timeout=60)["status"] == "complete"
    holding = rss(server.pid)
    doomed = start_doomed_client(server, "reply", big)
    try:
        doomed.stdin.write("go\n")
        doomed.stdin.flush()
        assert doomed.stdout.readline().strip() == "sending"
        # the server has queued the reply (release=True: the record let go of it) ...
        wait_until(lambda: client.get_status(big)["results_expired"], 20)
        # ... which is stuck on its way; the server serves everyone else meanwhile
        other = server.new_client(timeout=10)
        assert other.run("sum(range(10))", timeout=30) == {"_": 45}
        other.close()
        assert bytes_in_flight(server.port + 1000) > 1 * MiB
        assert rss(server.pid) > holding - 100 * MiB  # still held by libzmq for the connected peer
    finally:
        doomed.kill()
        doomed.wait(10)
    # the peer is gone: its queued reply is freed
    wait_until(lambda: rss(server.pid) < holding - 150 * MiB, 20)
    assert client.ping()["pid"] == server.pid


# -- replies lost on the wire -----------------------------------------------------

class ReplyDroppingRelay:
    """A relay between clients and the server's control port that can lose replies.

    Clients connect to ``url``; requests pass through unchanged; replies whose
    ``msg_type`` is in ``drop`` are thrown away (``drop[type]`` of them).
    Counts the requests it forwarded per type, and the request_ids of executes.
    """

    def __init__(self, server_info):
        self.ctx = zmq.Context()
        self.front = self.ctx.socket(zmq.ROUTER)
        self.front.setsockopt(zmq.LINGER, 0)
        port = self.front.bind_to_random_port("tcp://127.0.0.1")
        self.url = f"tcp://127.0.0.1:{port}"
        self.back = self.ctx.socket(zmq.DEALER)
        self.back.setsockopt(zmq.LINGER, 0)
        secure_client_socket(self.back, server_info)  # the relay speaks CURVE to the server, plain to clients
        self.back.connect(server_info.control_url)
        self.drop: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.forwarded: dict[str, int] = {}
        self.request_ids: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        while not self._stop.is_set():
            for sock, _ in poller.poll(50):
                frames = sock.recv_multipart()
                _, header, content, _, _ = unpack_body(split_body(frames)[1])  # after any identity; split or packed
                kind = json.loads(header)["msg_type"]
                if sock is self.front:
                    self.forwarded[kind] = self.forwarded.get(kind, 0) + 1
                    if kind == "execute":
                        self.request_ids.append(json.loads(content).get("request_id"))
                    self.back.send_multipart(frames)
                elif self.drop.get(kind, 0) > 0:
                    self.drop[kind] -= 1
                    self.dropped[kind] = self.dropped.get(kind, 0) + 1
                else:
                    self.front.send_multipart(frames)

    def client_for(self, server, runtime_dir: Path, **kwargs) -> ExecutionClient:
        info = read_connection_file(server.connection_file)
        info.control_url = self.url
        info.curve_server_key = ""
        path = runtime_dir / "via-relay.json"
        write_connection_file(path, info)
        return ExecutionClient(connection_file=str(path), **kwargs)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.front.close()
        self.back.close()
        self.ctx.term()


@pytest.fixture
def relay(server):
    r = ReplyDroppingRelay(server.client.info)
    yield r
    r.close()


def ran_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_lost_execute_replies_are_retried_and_run_once(server, relay, runtime_dir, tmp_path):
    marks = tmp_path / "ran.txt"
    client = relay.client_for(server, runtime_dir, timeout=3.0)
    relay.drop["execute_reply"] = 2  # the first two answers never arrive
    t0 = time.monotonic()
    exec_id = client.execute(f"open({str(marks)!r}, 'a').write('ran\\n')", name="lost-reply")
    elapsed = time.monotonic() - t0
    assert relay.forwarded["execute"] == 3 and relay.dropped["execute_reply"] == 2
    assert len(set(relay.request_ids)) == 1  # the same request, three times
    assert elapsed < 3.0 + 2.0
    assert client.wait(exec_id, timeout=30)["status"] == "complete"
    assert ran_lines(marks) == ["ran"]  # queued and run exactly once
    assert [e["execution_id"] for e in server.client.list_executions() if e["name"] == "lost-reply"] == [exec_id]
    client.close()


def test_every_reply_lost_gives_a_clear_error_and_a_safe_resubmit(server, relay, runtime_dir, tmp_path):
    marks = tmp_path / "ran.txt"
    client = relay.client_for(server, runtime_dir, timeout=1.5)
    code = f"open({str(marks)!r}, 'a').write('ran\\n')"
    relay.drop["execute_reply"] = 3
    t0 = time.monotonic()
    with pytest.raises(ServerUnavailable) as info:
        client.execute(code, name="all-lost", request_id="job-42")
    assert time.monotonic() - t0 < 1.5 + 2.0
    assert "request_id='job-42'" in str(info.value) and "3 attempts" in str(info.value)
    # it did arrive: resubmitting with the same key returns that execution instead of a second one
    exec_id = client.execute(code, name="all-lost", request_id="job-42")
    assert client.wait(exec_id, timeout=30)["status"] == "complete"
    assert ran_lines(marks) == ["ran"]
    with pytest.raises(RemoteError) as conflict:  # the same key for different work is refused, precisely
        client.execute("'something else'", name="all-lost", request_id="job-42")
    assert conflict.value.code == "request_id_conflict" and conflict.value.details["differs"] == ["task"]
    assert conflict.value.details["execution_id"] == exec_id
    client.close()


def test_lost_reply_does_not_wedge_the_client_or_mismatch_replies(server, relay, runtime_dir):
    client = relay.client_for(server, runtime_dir, timeout=0.7)
    exec_id = client.execute("'x'")
    client.wait(exec_id, timeout=30)
    relay.drop["status_reply"] = 1
    with pytest.raises(ServerUnavailable):
        client.get_status(exec_id)
    # the next calls on the same client object each get their own answer
    assert client.ping()["pid"] == server.pid
    assert client.get_status(exec_id)["execution_id"] == exec_id
    assert client.get_results(exec_id) == {"_": "x"}
    client.close()


def test_async_execute_retries_a_lost_reply(server, relay, runtime_dir, tmp_path):
    import asyncio

    from zmqruntime import AsyncExecutionClient

    marks = tmp_path / "ran.txt"
    info = read_connection_file(server.connection_file)
    info.control_url = relay.url
    info.curve_server_key = ""  # the relay's front is plain (it speaks CURVE to the server)
    relay.drop["execute_reply"] = 1

    async def main() -> str:
        client = AsyncExecutionClient(info, timeout=2.0)
        try:
            exec_id = await client.execute(f"open({str(marks)!r}, 'a').write('ran\\n')")
            await client.wait(exec_id, timeout=30)
            return exec_id
        finally:
            client.close()

    asyncio.run(main())
    assert relay.dropped["execute_reply"] == 1 and relay.forwarded["execute"] == 2
    assert ran_lines(marks) == ["ran"]


def test_request_ids_and_execution_ids_allow_exactly_their_characters():
    """The checks behind ``request_id`` and ``execution_id``, character by character (Latin-1 and beyond)."""
    from zmqruntime.execution.server import RequestError, check_request_id
    from zmqruntime.protocol import is_execution_id

    def accepted(ch: str) -> bool:
        try:
            return check_request_id(f"a{ch}b") == f"a{ch}b"
        except RequestError:
            return False

    chars = [chr(i) for i in range(0x300)] + ["\u2028", "\uff01", "\U0001f600"]
    assert [ch for ch in chars if accepted(ch)] == [chr(i) for i in range(0x21, 0x7F)]
    assert [ch for ch in chars if is_execution_id("0" * 11 + ch)] == list("0123456789abcdef")
    assert not is_execution_id("0" * 11) and not is_execution_id("0" * 13) and not is_execution_id(0)


def test_request_id_validation(server):
    client = server.client
    for bad in ("", "with space", "x" * 129, "caf\u00e9", "tab\there", "del\x7f", "nl\n"):
        with pytest.raises(RemoteError) as info:
            client._client.call("execute", {"task": {"kind": "python", "code": "1"}, "request_id": bad})
        assert info.value.code == "bad_request" and "request_id" in info.value.message
    with pytest.raises(RemoteError) as info:
        client._client.call("execute", {"task": {"kind": "python", "code": "1"}, "request_id": 7})
    assert info.value.code == "bad_request" and "must be a string" in info.value.message
    with pytest.raises(TypeError):
        client.execute("1", request_id=7)
    first = client.execute("1", request_id="k" * 128, timeout=5)
    assert client.execute("1", request_id="k" * 128, timeout=5) == first
    with pytest.raises(RemoteError) as info:
        client.execute("1", request_id="k" * 128, timeout=6)
    assert info.value.code == "request_id_conflict" and info.value.details["differs"] == ["timeout"]
    with pytest.raises(RemoteError) as info:
        client.execute("1", request_id="k" * 128, timeout=5, push={"v": 1})
    assert info.value.details["differs"] == ["push"]


# -- wall-clock jumps ---------------------------------------------------------------

JUMPING_CLIENT = textwrap.dedent("""
    import json, sys, time
    real_time, jump, calls = time.time, float(sys.argv[2]), [0]
    def jumping_time():                 # the wall clock jumps right after the first reading
        calls[0] += 1
        return real_time() + (jump if calls[0] > 1 else 0.0)
    time.time = jumping_time
    from zmqruntime import ExecutionClient, ExecutionTimeout, ServerUnavailable
    client = ExecutionClient(connection_file=sys.argv[1], timeout=1.0)
    out = {}
    slow = client.execute("import time\\ntime.sleep(60)")
    t0 = time.monotonic()
    try:
        client.wait(slow, timeout=1.0)
    except ExecutionTimeout:
        out["wait"] = time.monotonic() - t0
    client.cancel(slow)
    print("pause the server", flush=True)
    sys.stdin.readline()
    for what, call in (("ping", client.ping), ("execute", lambda: client.execute("1"))):
        t0 = time.monotonic()
        try:
            call()
        except ServerUnavailable:
            out[what] = time.monotonic() - t0
    print(json.dumps(out), flush=True)
""")


@pytest.mark.parametrize("jump", [3600.0, -3600.0])
def test_client_timeouts_ignore_wall_clock_jumps(server, jump):
    proc = subprocess.Popen([sys.executable, "-c", JUMPING_CLIENT, str(server.connection_file), str(jump)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=server_env())
    try:
        assert proc.stdout.readline().strip() == "pause the server"
        os.kill(server.pid, signal.SIGSTOP)
        try:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            out, _ = proc.communicate(timeout=60)  # a wall-clock deadline would hang on -1 h
        finally:
            os.kill(server.pid, signal.SIGCONT)
    finally:
        proc.kill()
        proc.wait(10)
    elapsed = json.loads(out)
    assert set(elapsed) == {"wait", "ping", "execute"}
    for what, seconds in elapsed.items():  # a wall-clock deadline would end at once on +1 h
        assert 0.9 <= seconds < 1.0 + 5.0, (what, seconds)


JUMPING_SERVER = textwrap.dedent("""
    import os, sys, time
    real_time, flag = time.time, sys.argv[1]
    time.time = lambda: real_time() + (3600.0 if os.path.exists(flag) else 0.0)
    from zmqruntime.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def test_server_ages_and_timeouts_ignore_wall_clock_jumps(runtime_dir, port, tmp_path):
    flag = tmp_path / "jumped"
    log = open(tmp_path / "server.log", "wb")
    # max_clock_skew=0: the replay guard's date check compares the client's and the server's wall
    # clocks on purpose (docs/protocol.md 6.4); this test is about the server's own ages and timeouts.
    proc = subprocess.Popen([sys.executable, "-c", JUMPING_SERVER, str(flag), "serve", "--port", str(port),
                             "--transport", "tcp",
                             "--ExecutionServer.max_result_age=600", "--ZMQServer.max_clock_skew=0"],
                            stdout=log, stderr=log, env=server_env())
    client = None
    try:
        path = runtime_dir / connection_file_name("tcp", port)
        wait_until(path.exists, 30)
        client = ExecutionClient(connection_file=str(path), timeout=10)
        first = client.execute("'kept'")
        client.wait(first, timeout=30)
        flag.touch()  # the server's wall clock is now 1 h ahead: 'first' looks 1 h old by wall time
        second = client.execute("'second'")  # finishing with a result applies the retention limits
        client.wait(second, timeout=30)
        assert client.get_results(first) == {"_": "kept"}
        assert client.ping()["uptime"] < 600
        t0 = time.monotonic()
        timed = client.execute("import time\ntime.sleep(60)", timeout=1.0)
        status = client.wait(timed, timeout=30)
        assert status["status"] == "cancelled" and status["reason"] == "timeout after 1 s"
        assert 0.9 <= time.monotonic() - t0 < 15
    finally:
        if client is not None:
            try:
                client.shutdown()
            except ServerUnavailable:
                pass
            client.close()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()



def test_async_timeout_of_one_request_spares_the_others_in_flight(server):
    """One request timing out must not cost the replies of the others on the same socket."""
    import asyncio

    from zmqruntime import AsyncExecutionClient

    async def main():
        client = AsyncExecutionClient(server.client.info)
        try:
            await client.ping()  # connected
            os.kill(server.pid, signal.SIGSTOP)  # the server hears nothing for a while
            try:
                patient = asyncio.ensure_future(client._client.call("ping", {}, timeout=10))
                hasty = asyncio.ensure_future(client._client.call("ping", {}, timeout=0.3))
                with pytest.raises(ServerUnavailable):
                    await hasty
            finally:
                os.kill(server.pid, signal.SIGCONT)
            return await patient  # answered once the server runs again
        finally:
            client.close()

    reply = asyncio.run(asyncio.wait_for(main(), 30))
    assert reply["pid"] == server.pid


def test_unanswered_execute_many_fails_every_caller_clearly(server):
    """A batch that gets no reply at all: each execute() of it raises, naming the batch and what is safe."""
    import asyncio

    from zmqruntime import AsyncExecutionClient

    async def main():
        client = AsyncExecutionClient(server.client.info, timeout=0.6)
        try:
            await client.ping()
            os.kill(server.pid, signal.SIGSTOP)
            try:
                return await asyncio.gather(*(client.execute(f"{i}") for i in range(3)), return_exceptions=True)
            finally:
                os.kill(server.pid, signal.SIGCONT)
        finally:
            client.close()

    outcome = asyncio.run(asyncio.wait_for(main(), 30))
    assert all(isinstance(o, ServerUnavailable) for o in outcome), outcome
    assert "'execute_many'" in str(outcome[0]) and "3 executions" in str(outcome[0]) and "3 attempts" in str(outcome[0])
    assert server.client.ping()["pid"] == server.pid
