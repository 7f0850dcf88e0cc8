"""Another local user, without the connection file, against a real server.

The attacker runs as uid/gid 65534 (``nobody``): a fresh interpreter imports
this file as root, drops its privileges with setgroups/setgid/setuid and then only uses
what such a user could (addresses and ports, which are no secret; never the
key). Everything it could be stopped by is enforced by the kernel on that
uid: file modes of the runtime directory and socket files, SO_PEERCRED, and
the CurveZMQ handshake for which it lacks the keys. Needs root to switch
uid; skipped with that reason otherwise.

Attacks, each against a real ``zmqruntime serve`` process:

* read the data channel (no event with default settings; the ``--no-curve``
  opt-out shows the check can fail);
* subscription floods and huge subscriptions (ping answered during and
  after, server RSS bounded);
* oversized and many-frame requests (refused before any hashing);
* ~1,100 idle connections under a low fd limit while a worker dies (the
  queue moves again once the attacker leaves);
* a rogue server on the freed port (receives no code);
* the worker link (other uids refused by ZAP even when the socket file is
  reachable; malformed frames never crash the server);
* an unsigned-message flood (log lines rate-limited);
* runtime directory, connection files, logs and locks with the wrong owner,
  mode or a planted symlink (refused, nothing written through them).
"""

from __future__ import annotations

import encodings.idna  # noqa: F401 - imported before the attacker drops to uid 65534: it cannot read the stdlib
import json
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import psutil
import pytest
import zmq

from helpers import server_env, wait_until
from zmqruntime import ExecutionClient, ServerUnavailable
from zmqruntime.private import InsecurePathError
from zmqruntime.transport import connection_file_name
from zmqruntime.transport import runtime_dir as get_runtime_dir

NOBODY = 65534
pytestmark = [
    pytest.mark.attack,
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="switching the attacker to another uid (nobody) needs root"),
]
SECRET = "SECRET-CODE-9d2a71"


#: The attacker's interpreter: imports as root (uid 65534 cannot read this Python's stdlib), then
#: drops its privileges and runs one module-level function of this file.
ATTACKER = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
fn = getattr(__import__(sys.argv[2]), sys.argv[3])
args = json.loads(sys.argv[4])
os.setgroups([])
os.setgid(int(sys.argv[5]))
os.setuid(int(sys.argv[5]))
try:
    out = {"ok": fn(*args)}
except BaseException as exc:
    out = {"error": f"{type(exc).__name__}: {exc}"}
sys.stdout.write("\\n" + json.dumps(out))
"""


def as_other_user(fn: Callable[..., Any], *args: Any, timeout: float = 30.0) -> Any:
    """Run ``fn(*args)`` as uid/gid 65534 in a fresh interpreter; its JSON result, or its error re-raised.

    A fresh process, not a fork of this one: a fork copies the locks other threads of the
    test process hold at that moment, and a child that needs one of them never finishes.
    """
    cmd = [sys.executable, "-c", ATTACKER, os.path.dirname(os.path.abspath(__file__)), fn.__module__,
           fn.__name__, json.dumps(args), str(NOBODY)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the attacker did not finish within {timeout} s") from None
    lines = done.stdout.strip().splitlines()
    out = json.loads(lines[-1]) if lines else {"error": f"no result (exit {done.returncode}): {done.stderr[-500:]}"}
    if "error" in out:
        raise AssertionError(f"attacker failed: {out['error']}")
    return out["ok"]


class RSSWatch:
    """Peak resident memory of a process, sampled every 20 ms."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def pings_during(server, seconds: float, timeout: float = 5.0) -> list[float]:
    """Ping the server back to back for ``seconds``; every round trip (each must succeed)."""
    times, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        server.client.ping(timeout=timeout)
        times.append(time.monotonic() - t0)
        time.sleep(0.05)
    return times


def log_lines(server, needle: str) -> int:
    return sum(needle in line for line in server.log_path.read_text(errors="replace").splitlines())


# -- attacker bodies (run as nobody) ----------------------------------------------

def _listen_sub(url: str, seconds: float, curve_server_key: str = "") -> int:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    if curve_server_key:  # knows the server's public key (not secret) but has no admitted client key
        public, secret = zmq.curve_keypair()
        sub.curve_serverkey, sub.curve_publickey, sub.curve_secretkey = curve_server_key.encode(), public, secret
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(url)
    got, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        if sub.poll(50):
            sub.recv_multipart()
            got += 1
    ctx.destroy(0)
    return got


def _subscription_flood(url: str, seconds: float) -> dict[str, int]:
    ctx = zmq.Context()
    socks = []
    for _ in range(8):
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.connect(url)
        socks.append(s)
    sent = huge = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for s in socks:
            for i in range(200):
                topic = b"%d-%d" % (sent, i)
                s.setsockopt(zmq.SUBSCRIBE, topic)
                s.setsockopt(zmq.UNSUBSCRIBE, topic)
                s.setsockopt(zmq.SUBSCRIBE, topic)  # and leave some subscribed
            sent += 600
        if huge < 300:  # distinct 16 KiB prefixes: stored, they would cost the server ~1 MiB of trie each
            socks[huge % len(socks)].setsockopt(zmq.SUBSCRIBE, b"%05d" % huge + b"h" * (16 << 10))
            huge += 1
    # no ctx.destroy(): the child exits at once (libzmq's teardown of these tries is slow and deep)
    return {"messages": sent, "huge": huge}


def _oversized_requests(url: str, count: int, frames: int, frame_bytes: int) -> int:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.connect(url)
    payload = b"z" * frame_bytes
    header = json.dumps({"msg_id": "x" * 32, "msg_type": "execute", "session": "s", "date": "", "version": "1.0"})
    for _ in range(count):
        sock.send_multipart([b"<ZMQR>" + b"0" * 64, header.encode(), b"{}"] + [payload] * frames)
    time.sleep(1.0)
    ctx.destroy(2000)
    return count


def _unsigned_flood(url: str, count: int) -> int:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(url)
    for i in range(count):
        sock.send_multipart([b"junk", b"%d" % i])
    ctx.destroy(5000)
    return count


def _idle_connections(port: int, count: int, hold: float) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 64)), hard))
    conns = []
    for _ in range(count):  # non-blocking: once the server stops accepting, SYNs just wait
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        conns.append(c)
    time.sleep(hold)
    for c in conns:
        c.close()
    return len(conns)


def _rogue_router(port: int, seconds: float) -> list[str]:
    """Bind the freed control port and record whatever arrives."""
    ctx = zmq.Context()
    rogue = ctx.socket(zmq.ROUTER)
    rogue.setsockopt(zmq.LINGER, 0)
    for _ in range(100):
        try:
            rogue.bind(f"tcp://127.0.0.1:{port}")
            break
        except zmq.ZMQError:
            time.sleep(0.05)
    else:
        raise RuntimeError("could not bind the freed port")
    got, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        if rogue.poll(50):
            got.append(b"|".join(rogue.recv_multipart()).decode(errors="replace"))
    ctx.destroy(0)
    return got


def _worker_link_intruder(url: str) -> str:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, b"w-intruder")
    sock.connect(url)
    sock.send_multipart([b"M", json.dumps({"type": "ready", "pid": 1}).encode()])
    got = sock.poll(1500)
    ctx.destroy(0)
    return "answered" if got else "nothing"


# -- files ----------------------------------------------------------------------

def test_runtime_dir_with_wrong_owner_or_mode_is_refused(runtime_dir, port):
    os.chmod(runtime_dir, 0o777)
    with pytest.raises(InsecurePathError, match="not private.*chmod 700"):
        get_runtime_dir()
    out = subprocess.run([sys.executable, "-m", "zmqruntime", "serve", "--port", str(port)],
                         capture_output=True, text=True, timeout=30, env=server_env(), check=False)
    assert out.returncode == 3 and "not private" in out.stderr, out.stderr
    assert list(runtime_dir.iterdir()) == []  # nothing written into it
    os.chmod(runtime_dir, 0o700)
    os.chown(runtime_dir, NOBODY, NOBODY)
    try:
        with pytest.raises(InsecurePathError, match="owner uid 65534"):
            get_runtime_dir()
    finally:
        os.chown(runtime_dir, 0, 0)
    get_runtime_dir()  # private again: accepted


def test_parents_are_created_private_whatever_the_umask(runtime_dir, monkeypatch):
    target = runtime_dir / "a" / "b" / "rt"
    monkeypatch.setenv("ZMQRUNTIME_RUNTIME_DIR", str(target))
    old = os.umask(0)
    try:
        assert get_runtime_dir() == target
    finally:
        os.umask(old)
    for d in (runtime_dir / "a", runtime_dir / "a" / "b", target):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


def test_connection_file_not_ours_or_not_private_is_refused(start_server):
    server = start_server(transport="ipc")
    path = server.connection_file
    os.chmod(path, 0o644)
    with pytest.raises(InsecurePathError, match="accessible by other users"):
        ExecutionClient(connection_file=str(path))
    os.chmod(path, 0o600)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(InsecurePathError, match="belongs to another user"):
        ExecutionClient(connection_file=str(path))
    with pytest.raises(InsecurePathError):  # auto-discovery by port does not trust it either
        ExecutionClient(port=server.port, auto_spawn=False, timeout=2)
    os.chown(path, 0, 0)
    assert ExecutionClient(connection_file=str(path)).ping()["pid"] == server.pid


@pytest.mark.parametrize("which", ["log", "lock"])
def test_log_and_lock_symlinks_are_not_followed(runtime_dir, port, tmp_path, which):
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    base = runtime_dir / connection_file_name("ipc", port)
    link = base.with_suffix(".log") if which == "log" else base.with_name(base.name + ".lock")
    link.symlink_to(victim)
    with pytest.raises(InsecurePathError, match="symbolic link"):
        ExecutionClient(port=port, spawn_timeout=20)
    assert victim.read_text() == "untouched\n"
    assert not base.exists()  # no server was started through it


def test_a_spawned_servers_log_is_private(runtime_dir, port):
    client = ExecutionClient(port=port, spawn_timeout=30)
    try:
        log = runtime_dir / connection_file_name("ipc", port).replace(".json", ".log")
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
    finally:
        client.shutdown()
        client.close()


# -- confidentiality ----------------------------------------------------------------

def test_no_event_reaches_a_local_user_without_the_connection_file(start_server):
    servers = {"tcp (default: CURVE)": start_server(), "ipc": start_server(transport="ipc"),
               "tcp --no-curve": start_server("--no-curve")}
    got: dict[str, int] = {}
    for label, server in servers.items():
        info = server.client.info
        result: dict[str, int] = {}
        spy = threading.Thread(target=lambda info=info, result=result: result.update(
            n=as_other_user(_listen_sub, info.data_url, 4.0)))
        spy.start()
        time.sleep(1.0)  # the subscription has reached the server, if it could
        for _ in range(3):
            server.client.run(f"print({SECRET!r})", timeout=30)
        spy.join(30)
        got[label] = result["n"]
        if info.curve_server_key:  # even knowing the public server key, without the client key: nothing
            assert as_other_user(_listen_sub, info.data_url, 1.5, info.curve_server_key) == 0
        assert server.client.ping()["pid"] == server.pid
    assert got["tcp (default: CURVE)"] == 0 and got["ipc"] == 0, got
    assert got["tcp --no-curve"] > 0, got  # the opt-out is what it says: the check above can fail


def test_rogue_server_on_the_freed_port_receives_no_code(start_server):
    for args in ((), ("--no-curve",)):
        server = start_server(*args)
        client = server.new_client(timeout=2.0)
        client.ping()
        server.proc.kill()
        server.proc.wait(10)
        seen: dict[str, list[str]] = {}
        rogue = threading.Thread(target=lambda seen=seen, port=server.client.info.control_port: seen.update(
            got=as_other_user(_rogue_router, port, 6.0)))
        rogue.start()
        time.sleep(1.0)
        for _ in range(2):
            with pytest.raises(ServerUnavailable):
                client.execute(f"print({SECRET!r})", push={"data": SECRET})
        rogue.join(30)
        client.close()
        assert not any(SECRET in m for m in seen["got"]), (args, seen["got"][:3])
        assert not any("execute" in m for m in seen["got"]), args


# -- bounded work before authentication ---------------------------------------------------

def test_subscription_flood_and_huge_subscriptions_do_not_stall_or_bloat(start_server):
    server = start_server("--no-curve")  # the worst case: a stranger can reach the data channel
    watch = RSSWatch(server.pid)
    result: dict[str, Any] = {}
    attack = threading.Thread(target=lambda: result.update(
        as_other_user(_subscription_flood, server.client.info.data_url, 8.0, timeout=60)))
    attack.start()
    try:
        during = pings_during(server, 8.0)
    finally:
        attack.join(60)
    after = pings_during(server, 1.0)
    assert server.client.run("6 * 7", timeout=30) == {"_": 42}
    watch.stop()
    growth = (watch.peak - watch.start) / 2**20
    print(f"\nsubscription flood: {result.get('messages')} messages, {result.get('huge')} huge; "
          f"ping max {max(during) * 1e3:.1f} ms during, {max(after) * 1e3:.1f} ms after; server RSS "
          f"{watch.start / 2**20:.0f} MiB -> peak {watch.peak / 2**20:.0f} MiB (+{growth:.0f} MiB)")
    assert result["messages"] > 10_000
    assert growth < 256, f"server RSS grew by {growth:.0f} MiB"


def test_oversized_and_many_frame_requests_are_refused_before_hashing(start_server):
    server = start_server("--no-curve", "--ExecutionServer.max_message_bytes=1000000",
                          "--ExecutionServer.max_message_frames=64")
    url = server.client.info.control_url
    before = log_lines(server, "(not hashed)")
    watch = RSSWatch(server.pid)
    as_other_user(_oversized_requests, url, 20, 8, 600_000, timeout=60)  # 4.8 MB each, 8 frames
    as_other_user(_oversized_requests, url, 20, 50_000, 0, timeout=60)  # 50,000 empty frames each
    wait_until(lambda: log_lines(server, "(not hashed)") > before, 10)
    assert server.client.ping(timeout=5)["pid"] == server.pid
    watch.stop()
    print(f"\noversized requests: server RSS peak {watch.peak / 2**20:.0f} MiB")
    assert server.client.list_executions() == []


def test_unsigned_flood_is_logged_at_a_bounded_rate(start_server):
    server = start_server("--no-curve")
    as_other_user(_unsigned_flood, server.client.info.control_url, 20_000, timeout=60)
    wait_until(lambda: log_lines(server, "were not logged") >= 1, 25)  # the count, once its window ends
    dropped = log_lines(server, "dropped a control message")
    assert dropped <= 250, dropped  # 100 per 10 s window, not one per message
    assert server.client.ping()["pid"] == server.pid


def test_the_queue_moves_again_after_fd_exhaustion_and_a_worker_death(start_server):
    server = start_server()
    assert server.client.run("1", timeout=30) == {"_": 1}
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (256, 256))  # so that ~1,100 connections exhaust it
    worker = _session_worker(server.client)
    proc = psutil.Process(server.pid)
    fds = {"peak": proc.num_fds()}
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.05):
            fds["peak"] = max(fds["peak"], proc.num_fds())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result: dict[str, int] = {}
    attack = threading.Thread(target=lambda: result.update(
        n=as_other_user(_idle_connections, server.client.info.control_port, 1100, 4.0, timeout=60)))
    attack.start()
    time.sleep(2.0)
    os.kill(worker, signal.SIGKILL)  # dies while the server has no descriptors to spare
    wait_until(lambda: worker not in [w["pid"] for w in server.client.ping()["workers"]], 10)
    queued = server.client.execute("'after the storm'")
    status = server.client.get_status(queued)
    attack.join(60)
    sampling.set()
    sampler.join(5)
    print(f"\nfd exhaustion: {result['n']} connections opened; server fds peak {fds['peak']} of 256; "
          f"queued execution during the attack: {status['status']} ({status.get('reason')})")
    assert result["n"] >= 1000, result
    assert fds["peak"] >= 250, fds  # the server really ran out
    assert server.client.wait(queued, timeout=60)["status"] == "complete"
    assert server.client.get_results(queued) == {"_": "after the storm"}
    new_worker = _session_worker(server.client)
    assert new_worker != worker
    fresh = server.new_client(timeout=10)  # new clients are accepted again
    assert fresh.ping()["pid"] == server.pid
    fresh.close()


def test_a_failed_respawn_is_retried_and_the_queue_says_why(start_server):
    server = start_server("--LocalBackend.spare_workers=0")  # no spare: the session's next worker must start
    assert server.client.run("1", timeout=30) == {"_": 1}
    soft, hard = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)
    worker = _session_worker(server.client)
    # far below what is open: the server opens nothing new, even with its reserve given up (and a worker
    # started anyway inherits the limit and dies during start-up): either way no worker can start
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (8, hard))
    try:
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: worker not in [w["pid"] for w in server.client.ping()["workers"]], 10)
        queued = server.client.execute("'moved'")
        wait_until(lambda: server.client.ping()["worker_error"], 10)
        error = server.client.ping()["worker_error"]
        assert "cannot start a worker process" in error or "exited during start-up" in error, error
        wait_until(lambda: server.client.get_status(queued).get("reason"), 10)
        status = server.client.get_status(queued)
        assert status["status"] == "queued" and "worker process" in status["reason"], status
    finally:
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert server.client.wait(queued, timeout=60)["status"] == "complete"  # retried: the queue moves
    assert server.client.get_results(queued) == {"_": "moved"}
    assert server.client.ping()["worker_error"] is None


# -- the worker link and IPC endpoints ------------------------------------------------------

def test_ipc_endpoints_refuse_other_users_even_when_reachable(start_server, runtime_dir):
    server = start_server(transport="ipc")
    control = server.client.info.control_url[len("ipc://"):]
    # A misconfiguration after start (directory and socket file opened up): ZAP still refuses another uid.
    os.chmod(runtime_dir, 0o711)
    os.chmod(control, 0o777)
    try:
        assert as_other_user(_worker_link_intruder, f"ipc://{control}") == "nothing"
    finally:
        os.chmod(runtime_dir, 0o700)
    wait_until(lambda: log_lines(server, "peer uid 65534 is not the server's") >= 1, 10)
    assert server.client.ping()["pid"] == server.pid


MALFORMED_FROM_THE_WORKER = """
import gc, zmq
link = next(o for o in gc.get_objects() if isinstance(o, zmq.Socket) and o.socket_type == zmq.DEALER
            and not o.closed)
for frames in ([b"Q", b"?"], [b"E"], [b"E", b"a", b"b"], [b"M"], [b"M", b"not json"], [b"M", b'{"type": 7}'],
               [b"E", b"\\xff\\xff\\xff\\xff"], [b"M", b"\\xff{}"], [b"M", b"[" * 100000], [b"M", b'{"type": NaN}'],
               [b"M", b'{"type": "finished"}']):
    link.send_multipart(frames)
'x'
"""


def test_malformed_worker_frames_never_crash_the_server(start_server):
    server = start_server(transport="ipc")
    exec_id = server.client.execute(MALFORMED_FROM_THE_WORKER)
    assert server.client.wait(exec_id, timeout=30)["status"] == "complete"
    assert server.client.run("'still serving'", timeout=30) == {"_": "still serving"}
    assert server.proc.poll() is None
    wait_until(lambda: log_lines(server, "dropped") >= 1 or log_lines(server, "unreadable") >= 1, 10)


@pytest.fixture
def link(tmp_path):
    """A worker-link ROUTER (the server's end), and ``connect(routing_id)`` for a worker's DEALER."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"ipc://{tmp_path}/link")

    def connect(routing_id: bytes) -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, routing_id)
        sock.connect(f"ipc://{tmp_path}/link")
        return sock

    yield router, connect
    ctx.destroy(0)


def test_a_non_ascii_routing_id_on_the_link_is_dropped(link):
    from zmqruntime.execution.link import read_worker_message

    router, connect = link
    connect(b"\xff\xfe-not-ascii").send_multipart([b"M", b"{}"])
    good = connect(b"w-good")
    time.sleep(0.2)
    good.send_multipart([b"M", b'{"type": "ready"}'])
    seen = []
    for _ in range(2):
        assert router.poll(5000)
        seen.append(read_worker_message(router))
    assert seen[0] is None or seen[1] is None
    ok = [m for m in seen if m is not None]
    assert len(ok) == 1 and ok[0][0] == "w-good" and ok[0][1] == b"M"


@pytest.mark.parametrize("frames", [
    [b"E"],                       # an event kind and nothing else
    [b"E", b"packed", b"extra"],  # an event with a frame too many
    [b"?", b"x", b"y"],           # a kind the link does not know
    [b"M"],                       # a control message without its JSON
], ids=["event-no-payload", "event-extra-frames", "unknown-kind", "control-no-json"])
def test_malformed_link_messages_are_dropped_whole(link, frames):
    """Each malformed shape is dropped with all its frames: the next message reads intact."""
    from zmqruntime.execution.link import read_worker_message

    router, connect = link
    worker = connect(b"w-1")
    worker.send_multipart(frames)
    worker.send_multipart([b"M", b'{"type": "ready"}', b"buffer"])
    assert router.poll(5000)
    assert read_worker_message(router) is None
    assert router.poll(5000)
    worker_id, kind, rest = read_worker_message(router)
    assert (worker_id, kind, [bytes(f.buffer) for f in rest]) == ("w-1", b"M", [b'{"type": "ready"}', b"buffer"])


# -- bad input to the new options ------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["--ExecutionServer.max_message_frames=0"], "max_message_frames must be positive"),
    (["--ExecutionServer.handshake_timeout=-1"], "handshake_timeout must be positive"),
    (["--no-curve", "--transport", "udp"], "invalid choice"),
])
def test_bad_security_options_are_clear_errors(runtime_dir, port, args, message):
    out = subprocess.run([sys.executable, "-m", "zmqruntime", "serve", "--port", str(port), *args],
                         capture_output=True, text=True, timeout=30, env=server_env(), check=False)
    assert out.returncode in (2, 3) and message in out.stderr, out.stderr
    assert not list(runtime_dir.glob("server-*.json"))


def test_a_client_with_a_wrong_transport_is_a_clear_error(runtime_dir, port):
    with pytest.raises(ValueError, match="transport must be one of"):
        ExecutionClient(port=port, transport="udp", spawn_timeout=5)


def _session_worker(client: Any) -> int:
    """The pid of the worker holding this client's session."""
    [pid] = [w["pid"] for w in client.ping()["workers"] if w["session"] == client.session_name]
    return pid
