"""The documented client API, as written: the paper's example, config, progress_callback,
and the blocking and asyncio clients agreeing method for method (real servers)."""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import threading
import time
from dataclasses import replace

import pytest
import zmq

from helpers import ROOT
from zmqruntime import AsyncExecutionClient, ExecutionClient, ExecutionFailed, RemoteError, ServerUnavailable
from zmqruntime import client as client_module
from zmqruntime.client import DEFAULT_BUSY_POLL, ZMQClient
from zmqruntime.protocol import BRIEF_PING

pytestmark = pytest.mark.timeout(90)

PIPELINE_CODE = """
from zmqruntime import progress
total = 0.0
for i in progress(range(n_items), desc="pipeline"):
    total += i * scale
total
"""
CONFIG_CODE = "n_items = 50\nscale = 0.5\n"
EXPECTED = sum(range(50)) * 0.5

# The paper's first example, character for character.
PAPER_EXAMPLE = """\
from zmqruntime import ExecutionClient

client = ExecutionClient(port=5555)
exec_id = client.execute(pipeline_code, config_code)  # Non-blocking
status = client.get_status(exec_id)  # Poll for results
results = client.get_results(exec_id)  # Retrieve when ready
"""


def _port_pair_free(port: int, offset: int = 1000) -> bool:
    for p in (port, port + offset):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
    return True


def test_the_papers_example_runs_verbatim(runtime_dir):
    """Port 5555 as printed; only if 5555 or 6555 is taken on this machine does the test use a free port
    (the text is otherwise unchanged), since another process's port is not ours to take."""
    from helpers import free_port

    source = PAPER_EXAMPLE
    if not _port_pair_free(5555):
        source = source.replace("port=5555", f"port={free_port()}")
    scope = {"pipeline_code": PIPELINE_CODE, "config_code": CONFIG_CODE}
    try:
        exec(compile(source, "<paper>", "exec"), scope)
        assert scope["status"]["status"] in ("queued", "running", "complete")
        assert scope["results"] == {"_": EXPECTED}
    finally:
        client = scope.get("client")
        if client is not None:
            client.shutdown()
            client.close()


def test_the_docs_flow_submit_poll_wait_with_a_progress_callback(server):
    """ExecutionClient: submit/poll/wait with an optional progress callback; serialize_task is JSON-friendly."""
    seen: list = []
    threads: set = set()

    def on_progress(event):
        seen.append(event)
        threads.add(threading.current_thread().name)

    client = server.new_client(progress_callback=on_progress)
    try:
        spec = client.serialize_task(PIPELINE_CODE, CONFIG_CODE)
        assert json.loads(json.dumps(spec)) == {"kind": "python", "code": PIPELINE_CODE, "config": CONFIG_CODE}
        exec_id = client.execute(PIPELINE_CODE, CONFIG_CODE)
        status = client.get_status(exec_id)
        assert status["execution_id"] == exec_id
        assert client.wait(exec_id, timeout=30)["status"] == "complete"
        assert client.get_results(exec_id) == {"_": EXPECTED}
        # the last progress event may still be on its way to the callback thread
        deadline = 5.0
        while deadline > 0 and not (seen and seen[-1]["done"] == 50):
            threading.Event().wait(0.02)
            deadline -= 0.02
        assert seen and all(e.type == "progress" and e.execution_id == exec_id for e in seen)
        assert seen[-1]["done"] == 50 and seen[-1]["total"] == 50 and seen[-1]["desc"] == "pipeline"
        assert [e.seq for e in seen] == sorted({e.seq for e in seen})  # once each, in order
        assert threads == {"zmqruntime-progress"}  # a background thread, not the caller's
        # another client's execution is not ours: no callback for it
        other = server.client.execute("from zmqruntime import progress\nfor _ in progress(range(5)): pass")
        server.client.wait(other, timeout=30)
        threading.Event().wait(0.2)
        assert all(e.execution_id == exec_id for e in seen)
        watch = client._progress_watch
    finally:
        client.close()
    assert not watch._thread.is_alive() and not watch.watching  # unsubscribed on close()


def test_progress_callback_bad_input(server):
    with pytest.raises(TypeError, match="progress_callback must be callable"):
        server.new_client(progress_callback="print")

    def boom(event):
        raise RuntimeError("a broken callback")

    client = server.new_client(progress_callback=boom)  # a raising callback is logged, nothing breaks
    try:
        exec_id = client.execute("from zmqruntime import progress\nfor _ in progress(range(3)): pass\n'ok'")
        assert client.result(exec_id, timeout=30) == {"_": "ok"}
    finally:
        client.close()
    assert server.client.ping()["ok"]


def test_config_as_source_and_as_a_mapping(server):
    client = server.client
    assert client.run("threshold * 2", "threshold = 21", timeout=30) == {"_": 42}
    assert client.run("f'{name}:{n}'", {"name": "run", "n": 3}, timeout=30) == {"_": "run:3"}
    # config runs in the task's namespace, before the task: the task sees and may change it
    assert client.run("limit += 1\nlimit", "limit = 9", timeout=30) == {"_": 10}
    assert client.run("x", config={"x": [1, 2]}, timeout=30) == {"_": [1, 2]}


def test_config_errors_are_reported_as_config_errors(server):
    client = server.client
    failing = client.execute("'never runs'", "1 / 0")
    assert client.wait(failing, timeout=30)["status"] == "failed"
    with pytest.raises(ExecutionFailed) as info:
        client.get_results(failing)
    assert "config failed: ZeroDivisionError: division by zero" in str(info.value)
    with pytest.raises(RemoteError) as bad:
        client.execute("1", "def (")  # refused before it is queued
    assert bad.value.code == "syntax_error" and bad.value.message.startswith("config failed:")
    assert client.run("'still serving'", timeout=30) == {"_": "still serving"}


def test_config_bad_input(server):
    client = server.client
    for config, match in ((42, "config must be Python source"), ({"not an id": 1}, "identifiers"),
                          ({"x": object()}, "JSON-able"), ({"x": float("nan")}, "JSON-able"), ([1], "config must be")):
        with pytest.raises(TypeError, match=match):
            client.execute("1", config)
    # a client that skips the checks: the server refuses with a clear error and goes on serving
    for bad in (42, ["x"], {"class": 1}, {"1x": 2}):
        with pytest.raises(RemoteError) as info:
            client._client.call("execute", {"task": {"kind": "python", "code": "1", "config": bad}})
        assert info.value.code == "bad_request" and "'config'" in info.value.message
    assert client.run("'ok'", timeout=30) == {"_": "ok"}


def test_custom_kinds_receive_config(start_server, monkeypatch):
    examples = str(ROOT / "examples")
    monkeypatch.syspath_prepend(examples)
    server = start_server('--ExecutionServer.task_kind_classes={"call": "call_kind:CallKind"}', extra_path=examples)
    from call_kind import CallClient

    client = CallClient(connection_file=str(server.connection_file))
    try:
        assert client.run(("builtins:round", [2.567]), {"ndigits": 1}, timeout=30) == {"_": 2.6}
        with pytest.raises(RemoteError) as info:
            client.execute(("builtins:round", [2.5]), "ndigits = 1")
        assert "config failed" in info.value.message
        assert client.run("n + 1", "n = 1", timeout=30) == {"_": 2}  # the python kind through the subclass
    finally:
        client.close()


# -- one client core: the blocking and asyncio APIs match ----------------------------------------


def _public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(getattr(cls, name)) for name in dir(cls)
            if not name.startswith("_") and callable(getattr(cls, name)) and name != "connect"}


def test_the_blocking_and_asyncio_clients_have_the_same_api():
    sync, asynchronous = _public_methods(ExecutionClient), _public_methods(AsyncExecutionClient)
    assert sorted(sync) == sorted(asynchronous)
    for name in sync:
        assert sync[name].parameters == asynchronous[name].parameters, name
        sync_is_coro = inspect.iscoroutinefunction(getattr(ExecutionClient, name))
        assert not sync_is_coro, name
    blocking_init = list(inspect.signature(ExecutionClient.__init__).parameters.values())[1:]
    async_connect = list(inspect.signature(AsyncExecutionClient.connect).parameters.values())
    assert blocking_init == async_connect
    for name in ("execute", "get_status", "list_executions", "cancel", "get_results", "wait", "result", "ping",
                 "shutdown", "run"):
        assert inspect.iscoroutinefunction(getattr(AsyncExecutionClient, name)), name


def test_both_clients_behave_alike_on_bad_input_and_timeouts(server):
    sync = server.client

    async def main():
        client = await AsyncExecutionClient.connect(connection_file=str(server.connection_file))
        try:
            # long enough that its 'done' event surely comes over the subscription (not a status poll)
            done = await client.execute("import time\ntime.sleep(0.5)\n6 * 7")
            assert await client.wait(done, timeout=30)
            assert done in client._kept_done
            # get_results reuses the result the 'done' event carried: no request needed
            requests: list = []
            real = client._client.request

            async def counting(msg_type, *args, **kwargs):
                requests.append(msg_type)
                return await real(msg_type, *args, **kwargs)

            client._client.request = counting
            assert await client.get_results(done) == {"_": 42}
            assert requests == []
            client._client.request = real
            assert (await client.ping(timeout=5))["server_id"]
            assert (await client.get_status(done, timeout=5))["status"] == "complete"
            assert (await client.cancel(done, timeout=5))["cancelled"] is False
            with pytest.raises(TypeError, match="reason must be a string"):
                await client.cancel(done, reason=3)
            with pytest.raises(ValueError, match="timeout"):
                await client.ping(timeout=-1)
            assert set(await client.ping(timeout=5, brief=True)) >= {"server_id", "start_time"}
            with pytest.raises(TypeError, match="brief must be True or False"):
                await client.ping(brief=1)
            with pytest.raises(TypeError, match="wait must be True or False"):
                await client.get_results(done, wait="yes")
            with pytest.raises(TypeError, match="release must be"):
                await client.get_results(done, release="no")
            with pytest.raises(TypeError, match="status must be"):
                await client.list_executions(status=1)
        finally:
            client.close()

    asyncio.run(asyncio.wait_for(main(), 60))
    exec_id = sync.execute("6 * 7")
    sync.wait(exec_id, timeout=30)
    with pytest.raises(TypeError, match="reason must be a string"):
        sync.cancel(exec_id, reason=3)
    with pytest.raises(ValueError, match="timeout"):
        sync.ping(timeout=-1)
    with pytest.raises(TypeError, match="wait must be True or False"):
        sync.get_results(exec_id, wait="yes")
    with pytest.raises(TypeError, match="release must be"):
        sync.get_results(exec_id, release="no")
    with pytest.raises(TypeError, match="status must be"):
        sync.list_executions(status=1)
    assert sync.get_results(exec_id) == {"_": 42}


def test_the_asyncio_client_times_out_against_a_silent_server(start_server):
    """IMMEDIATE in both clients: a request to a server that is gone fails within its timeout, never hangs."""
    server = start_server()
    info = server.client.info
    server.stop()

    async def main():
        client = AsyncExecutionClient(info, timeout=0.5)
        try:
            from zmqruntime import ServerUnavailable

            with pytest.raises(ServerUnavailable):
                await client.ping()
        finally:
            client.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_the_asyncio_client_subscribes_and_takes_a_progress_callback(server):
    seen: list = []
    progress: list = []
    got_done = threading.Event()

    def on_event(event):
        seen.append(event.type)
        if event.type == "done":
            got_done.set()

    async def main():
        client = await AsyncExecutionClient.connect(connection_file=str(server.connection_file),
                                                    progress_callback=progress.append)
        try:
            exec_id = await client.execute("from zmqruntime import progress\nfor _ in progress(range(4)): pass\n7",
                                           "unused = 1")
            sub = client.subscribe(on_event, exec_id)
            assert await client.result(exec_id, timeout=30) == {"_": 7}
            for _ in range(250):  # the last progress event may still be on its way to the callback thread
                if progress and progress[-1]["done"] == 4:
                    break
                await asyncio.sleep(0.02)
            return sub, client._progress_watch
        finally:
            client.close()

    sub, watch = asyncio.run(asyncio.wait_for(main(), 60))
    assert progress and progress[-1]["done"] == 4
    assert not watch._thread.is_alive() and not sub._thread.is_alive()  # both closed with the client
    with pytest.raises(TypeError, match="progress_callback must be callable"):
        AsyncExecutionClient(server.client.info, progress_callback=42)


def test_list_and_status_of_all_return_the_newest_up_to_a_limit(server):
    """``list`` and ``status`` of all walk back from the newest record: ``limit`` of them
    (oldest first) and ``more`` when older ones match too; bad limits are refused."""
    client = server.client
    ids = [client.execute(f"{i}") for i in range(5)]
    for exec_id in ids:
        client.wait(exec_id, timeout=30)
    mine = [row["execution_id"] for row in client.list_executions(session=client.session_name)]
    assert mine[-5:] == ids
    assert [row["execution_id"] for row in client.list_executions(session=client.session_name, limit=3)] == ids[2:]
    assert [row["execution_id"] for row in client.get_status(limit=2)] == ids[3:]
    wire = client._client.call("list", {"limit": 2})
    assert wire["more"] is True and len(wire["executions"]) == 2
    assert client._client.call("list", {"limit": 10_000})["more"] is False
    for bad in (0, -1, "3", True, 2.5):
        with pytest.raises(RemoteError, match="'limit' must be a positive integer"):
            client._client.call("list", {"limit": bad})
        with pytest.raises(RemoteError, match="'limit' must be a positive integer"):
            client._client.call("status", {"limit": bad})
        with pytest.raises(ValueError, match="limit must be a positive integer"):
            client.list_executions(limit=bad)
    with pytest.raises(TypeError, match="limit applies to the status of all"):
        client.get_status(ids[0], limit=3)


def test_the_asyncio_client_works_from_one_event_loop_to_the_next(server):
    """One AsyncExecutionClient used by two asyncio.run calls (a script's functions, a notebook's
    cells): its sockets are read by whichever loop is running."""
    client = AsyncExecutionClient(server.client.info, session="two-loops")
    try:
        assert asyncio.run(asyncio.wait_for(client.run("x = 20\nx + 1"), 30))["_"] == 21
        assert asyncio.run(asyncio.wait_for(client.run("x * 2"), 30))["_"] == 40
        assert asyncio.run(asyncio.wait_for(client.ping(), 30))["server_id"]
    finally:
        client.close()


def _spins(wire: ZMQClient, spun: list, msg_type: str, content: dict) -> dict:
    """The reply's content (ok or not) to a request sent with a full spin budget, plus ``spins``: how often it spun."""
    before = len(spun)
    wire._local.spin.seconds = wire.busy_poll
    reply = wire.request(msg_type, content)
    assert reply.msg_type == f"{msg_type}_reply"
    return {**reply.content, "spins": len(spun) - before}


def test_the_blocking_client_busy_polls_only_for_replies_that_start_no_work(server, monkeypatch):
    """``busy_poll``: bad values refused; the spin is used for ping/status/list/sessions/results and
    never for execute or cancel (a spin there takes the core the worker needs), nor when 0;
    replies match either way, and a silent peer still times out within the request's timeout."""
    info = server.client.info
    for bad in (-0.001, 1.5, float("nan"), float("inf"), True, "0.001", None):
        with pytest.raises(ValueError, match="busy_poll"):
            ZMQClient(info, busy_poll=bad)

    spun: list[float] = []
    real_spin = client_module.spin_until_readable

    def counting(socks, seconds, *args):
        spun.append(seconds)
        return real_spin(socks, seconds, *args)

    monkeypatch.setattr(client_module, "spin_until_readable", counting)
    # The suite's own threads (a spawned server's reaper, say) may still be alive: this process
    # counts as single-threaded until the part below that starts a thread on purpose.
    lone_thread = client_module.lone_thread
    monkeypatch.setattr(client_module, "lone_thread", lambda: True)
    pid = server.client.ping()["pid"]
    for busy_poll in (0, DEFAULT_BUSY_POLL):
        spun.clear()
        wire = ZMQClient(info, timeout=30, busy_poll=busy_poll)
        try:
            assert [wire.call("ping", BRIEF_PING)["pid"] for _ in range(20)] == [pid] * 20
            # how many of those spun depends on how fast replies came (a slow one halves the
            # next spin); a full budget is set before each request below, so each must spin
            reply = _spins(wire, spun, "execute", {"task": {"kind": "python", "code": "6 * 7"}})
            exec_id = reply["execution_id"]
            assert reply["spins"] == 0
            assert _spins(wire, spun, "cancel", {"execution_id": exec_id})["spins"] == 0
            for msg_type, content in [("status", {"execution_id": exec_id}), ("list", {}), ("sessions", {}),
                                      ("results", {"execution_id": exec_id})]:
                assert _spins(wire, spun, msg_type, content)["spins"] == (1 if busy_poll else 0), msg_type
            stop = threading.Event()
            other = threading.Thread(target=stop.wait, args=(30,))
            other.start()  # another Python thread: a spin (it holds the GIL) would take its turns
            monkeypatch.setattr(client_module, "lone_thread", lone_thread)
            try:
                assert not lone_thread()
                assert _spins(wire, spun, "status", {"execution_id": exec_id})["spins"] == 0
            finally:
                monkeypatch.setattr(client_module, "lone_thread", lambda: True)
                stop.set()
                other.join(5)
        finally:
            wire.close()
        if busy_poll:
            assert spun[0] == busy_poll and all(0 < s <= busy_poll for s in spun), spun
        else:
            assert spun == []

    with socket.socket() as probe:  # a peer that takes requests and never answers
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ctx = zmq.Context()
    silent = ctx.socket(zmq.ROUTER)
    silent.bind(f"tcp://127.0.0.1:{port}")
    wire = ZMQClient(replace(info, control_url=f"tcp://127.0.0.1:{port}", transport="tcp"), timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(ServerUnavailable):
            wire.call("ping", BRIEF_PING)
        assert 0.45 <= time.monotonic() - started < 5
    finally:
        wire.close()
        silent.close(0)
        ctx.term()
