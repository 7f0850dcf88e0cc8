"""Sessions: each client (notebook) has its own namespace and queue on a shared server.

Real servers in real processes; the figures printed here (latency of a trivial
execution while another session is busy, the fairness spread) are reported, not
asserted as timings.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import free_port, wait_until
from zmqruntime import ExecutionClient, RemoteError


def test_two_clients_do_not_see_each_others_variables(server):
    a, b = server.client, server.new_client()
    try:
        a.run("secret = 'only in A'", timeout=30)
        assert b.run("'secret' in globals()", timeout=30) == {"_": False}
        assert a.run("secret", timeout=30) == {"_": "only in A"}
        # a name shares one deliberately
        shared = server.new_client(session="team")
        shared.run("common = 42", timeout=30)
        assert b.run("common", timeout=30, session="team") == {"_": 42}
        shared.close()
    finally:
        b.close()


def test_a_trivial_execution_is_not_queued_behind_another_sessions_job(start_server):
    server = start_server("--concurrency", "2")
    a, b = server.client, server.new_client()
    try:
        b.run("0", timeout=30)  # B's worker exists: we measure the queue, not a first start
        idle = _median_latency(b)
        long_job = a.execute("import time\ntime.sleep(3)")
        wait_until(lambda: a.get_status(long_job)["status"] == "running", 10)
        busy = _median_latency(b)
        assert a.get_status(long_job)["status"] == "running"  # B finished while A was still busy
        print(f"\ntrivial execution in session B: {idle * 1e3:.2f} ms idle server, "
              f"{busy * 1e3:.2f} ms while session A runs a 3 s job")
        assert a.wait(long_job, timeout=30)["status"] == "complete"
    finally:
        b.close()


def _median_latency(client: ExecutionClient, n: int = 9) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        assert client.run("1 + 1", timeout=10) == {"_": 2}
        times.append(time.perf_counter() - t0)
    return sorted(times)[n // 2]


def test_sessions_take_turns_when_more_have_work_than_may_run(start_server):
    """Three sessions each queue 50 executions behind a blocker: they are served round robin."""
    server = start_server("--concurrency", "1")
    blocker_client = server.new_client(session="blocker")
    clients = [server.new_client(session=f"s{i}") for i in range(3)]
    try:
        for c in clients:
            c.run("0", timeout=30)  # every session's worker is up
        blocker = blocker_client.execute("import time\ntime.sleep(1.5)")
        wait_until(lambda: blocker_client.get_status(blocker)["status"] == "running", 10)
        ids = {c.session_name: [c.execute(f"{n}") for n in range(50)] for c in clients}
        for c in clients:
            for eid in ids[c.session_name]:
                assert c.wait(eid, timeout=60)["status"] == "complete"
        runs = sorted((r["started"], r["session"]) for r in server.client.list_executions()
                      if r["session"] in ids and r["execution_id"] in set(sum(ids.values(), [])))
        order = [session for _, session in runs]
        assert len(order) == 150
        # every window of three consecutive starts has each session exactly once
        windows = [order[i:i + 3] for i in range(0, 150, 3)]
        unfair = [w for w in windows if sorted(w) != ["s0", "s1", "s2"]]
        first_30 = {s: order[:30].count(s) for s in ("s0", "s1", "s2")}
        print(f"\nfairness: first 30 starts per session {first_30}; {len(unfair)} of 50 windows not round robin")
        assert not unfair, f"not round robin: {unfair[:3]}"
    finally:
        for c in (blocker_client, *clients):
            c.close()


def test_an_idle_session_is_released_and_then_says_namespace_reset(start_server):
    server = start_server("--session-idle-timeout", "1")
    client = server.client
    client.run("x = 1", timeout=30)
    pid = _session(client)["worker"]["pid"]
    wait_until(lambda: _session(client)["worker"] is None, 20)
    wait_until(lambda: not _alive(pid), 10)  # the worker process went away
    eid = client.execute("'x' in globals()")
    status = client.wait(eid, timeout=30)
    assert status["namespace_reset"] and client.get_results(eid) == {"_": False}
    again = client.execute("y = 2")
    assert not client.wait(again, timeout=30)["namespace_reset"]  # said once, then a normal session


def test_a_crash_in_one_session_leaves_the_others_namespaces_intact(server):
    a, b = server.client, server.new_client()
    try:
        a.run("mine = 'a'", timeout=30)
        b.run("mine = 'b'", timeout=30)
        crash = a.execute("import os\nos._exit(3)")
        assert a.wait(crash, timeout=30)["status"] == "failed"
        eid = b.execute("mine")
        status = b.wait(eid, timeout=30)
        assert not status["namespace_reset"] and b.get_results(eid) == {"_": "b"}
        eid = a.execute("'mine' in globals()")
        assert a.wait(eid, timeout=30)["namespace_reset"] and a.get_results(eid) == {"_": False}
    finally:
        b.close()


def test_reset_session_drops_the_namespace_and_is_refused_while_busy(server):
    client = server.client
    client.run("kept = 1", timeout=30)
    running = client.execute("import time\ntime.sleep(30)")
    wait_until(lambda: client.get_status(running)["status"] == "running", 10)
    with pytest.raises(RemoteError) as info:
        client.reset_session()
    assert info.value.code == "session_busy" and "cancel it first" in info.value.message
    client.cancel(running)
    client.wait(running, timeout=30)
    client.run("kept = 2", timeout=30)  # the cancel did not have to kill the worker
    reply = client.reset_session()
    assert reply["session"] == client.session_name and reply["reset"] is True
    eid = client.execute("'kept' in globals()")
    assert client.wait(eid, timeout=30)["namespace_reset"] and client.get_results(eid) == {"_": False}
    with pytest.raises(RemoteError) as info:
        client.reset_session("no-such-session")
    assert info.value.code == "unknown_session"


def test_sessions_and_list_show_each_session(server):
    a, b = server.client, server.new_client(session="other")
    try:
        a.run("1", timeout=30)
        b.run("2", timeout=30)
        rows = {r["session"]: r for r in a.sessions()}
        assert {a.session_name, "other"} <= set(rows)
        assert rows["other"]["worker"]["pid"] > 0 and rows["other"]["queued"] == 0 and rows["other"]["executions"] == 1
        mine = a.list_executions(session=a.session_name)
        assert mine and {r["session"] for r in mine} == {a.session_name}
        assert {r["session"] for r in a.list_executions()} >= {a.session_name, "other"}
        assert a.get_status(mine[0]["execution_id"])["session"] == a.session_name
    finally:
        b.close()


def test_a_request_without_a_session_runs_in_the_default_session(server):
    """Clients written before sessions existed send none: they share the 'default' session."""
    raw = server.client._client
    content = {"task": {"kind": "python", "code": "legacy = 1"}}
    eid = raw.call("execute", content)["execution_id"]
    server.client.wait(eid, timeout=30)
    assert server.client.get_status(eid)["session"] == "default"
    assert server.client.run("legacy", timeout=30, session="default") == {"_": 1}


@pytest.mark.parametrize("bad,error", [
    (5, TypeError), ("", ValueError), ("a\x00b", ValueError), ("x" * 257, ValueError),
])
def test_bad_session_names_are_refused_by_the_client(server, bad, error):
    with pytest.raises(error, match="session"):
        ExecutionClient(connection_file=str(server.connection_file), session=bad)
    with pytest.raises(error, match="session"):
        server.client.execute("1", session=bad)


@pytest.mark.parametrize("bad", [5, "", "a\nb", "x" * 257, ["s"]])
def test_bad_session_fields_on_the_wire_get_bad_request(server, bad):
    raw = server.client._client
    for msg_type, content in (("execute", {"task": {"kind": "python", "code": "1"}, "session": bad}),
                              ("list", {"session": bad}), ("reset_session", {"session": bad})):
        with pytest.raises(RemoteError) as info:
            raw.call(msg_type, content)
        assert info.value.code == "bad_request" and "session" in info.value.message
    assert server.client.run("'still serving'", timeout=30) == {"_": "still serving"}


def test_cli_sessions_and_bad_session_flags(server):
    server.client.run("1", timeout=30)
    out = _zr("sessions", "--connection-file", str(server.connection_file))
    assert out.returncode == 0 and server.client.session_name in out.stdout and "SESSION" in out.stdout
    out = _zr("list", "--sessions", "--connection-file", str(server.connection_file))
    assert out.returncode == 0 and server.client.session_name in out.stdout
    out = _zr("list", "--session", server.client.session_name, "--connection-file", str(server.connection_file))
    assert out.returncode == 0 and server.client.session_name in out.stdout
    for args in (["list", "--session", ""], ["submit", "x.py", "--session", "a\tb"]):
        out = _zr(*args, "--connection-file", str(server.connection_file))
        assert out.returncode == 2 and "session" in out.stderr


def test_serve_refuses_bad_session_settings_and_backends(runtime_dir):
    for args, words in ((["--session-idle-timeout", "0"], "must be positive"),
                        (["--ExecutionServer.max_session_workers=1", "--concurrency", "2"], "max_session_workers"),
                        (["--backend", "nosuch"], "unknown backend"),
                        (["--backend", "os:path"], "not an ExecutionBackend")):
        out = _zr("serve", "--port", str(free_port()), *args)
        assert out.returncode in (2, 3) and words in out.stderr, (args, out.stderr)


def _zr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zmqruntime", *args], capture_output=True, text=True, timeout=60)


def _session(client: ExecutionClient) -> dict:
    return next(r for r in client.sessions() if r["session"] == client.session_name)


def _alive(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


def test_the_backend_seam_runs_a_backend_that_is_not_the_local_pool(start_server):
    """A backend in threads (tests/backends): plain events signed by the server, reports from
    other threads, sessions, cancel and results, all through the ExecutionBackend interface."""
    backends = str(Path(__file__).parent / "backends")
    server = start_server("--backend", "thread_backend:ThreadBackend", extra_path=backends)
    client, other = server.client, server.new_client()
    try:
        assert client.ping()["backend"]["name"] == "thread"
        events = []
        sub = client.subscribe(events.append)
        eid = client.execute("from zmqruntime import progress\n"
                             "for i in progress(range(3), desc='t'): print(i)\nsecret = 7\nsecret * 6")
        assert client.result(eid, timeout=30) == {"_": 42}
        wait_until(lambda: any(e.type == "done" and e.execution_id == eid for e in events), 10)
        mine = [e for e in events if e.execution_id == eid]
        assert "".join(e["text"] for e in mine if e.type == "stream") == "0\n1\n2\n"
        assert [e.seq for e in mine] == sorted(e.seq for e in mine) and mine[-1].type == "done"
        assert client.get_status(eid)["progress"]["done"] == 3 and client.get_status(eid)["worker"] == "thread"
        assert other.run("'secret' in globals()", timeout=30) == {"_": False}  # its own session
        loop = client.execute("while True: pass")
        wait_until(lambda: client.get_status(loop)["status"] == "running", 10)
        client.cancel(loop)
        assert client.wait(loop, timeout=30)["status"] == "cancelled"
        sub.close()
    finally:
        other.close()


def test_the_async_client_has_its_own_session_and_can_name_one(server):
    import asyncio

    from zmqruntime import AsyncExecutionClient

    async def main() -> tuple:
        mine = AsyncExecutionClient(server.client.info, session="async-one")
        other = AsyncExecutionClient(server.client.info)
        try:
            first = await mine.execute("value = 'async'")
            await mine.result(first, timeout=30)
            seen = await other.execute("'value' in globals()")
            named = await other.execute("value", session="async-one")
            listed = await mine.list_executions(session="async-one")
            return ((await other.result(seen, timeout=30))["_"], (await other.result(named, timeout=30))["_"],
                    {r["session"] for r in listed}, other.session_name)
        finally:
            mine.close()
            other.close()

    seen, named, sessions, other_name = asyncio.run(asyncio.wait_for(main(), 60))
    assert seen is False and named == "async" and sessions == {"async-one"}
    assert other_name.startswith("client-")
    with pytest.raises(TypeError, match="session"):
        AsyncExecutionClient(server.client.info, session=3)
