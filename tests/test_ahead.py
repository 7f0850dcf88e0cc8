"""Executions handed ahead to a session's worker (``LocalBackend.ahead``).

A busy session's worker gets its next executions at once and starts each the
moment the one before ends. What must not change: the order, a cancel that
stops exactly the execution it names (never the next one), a queued cancel
that never lets the execution start, the round robin between sessions, and
at-most-once execution when a worker dies. Real servers and workers; a
cancel pipe and interrupt guard are also tried directly.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from helpers import wait_until
from zmqruntime import ExecutionClient
from zmqruntime.execution.cancel_pipe import CANCEL, DROP, CancelReader, open_pipe
from zmqruntime.execution.worker import InterruptGuard


def _worker(client: ExecutionClient) -> dict:
    """The ping entry of the worker holding the client's session."""
    return next(w for w in client.ping()["workers"] if w["session"] == client.session_name)


def _queue_behind_a_blocker(client: ExecutionClient, tasks: list[str], blocker: float = 0.5) -> list[str]:
    """Queue ``tasks`` while the session runs a short blocker: when it ends they are handed ahead together."""
    client.run("0", timeout=30)  # the session's worker is up
    first = client.execute(f"import time\ntime.sleep({blocker})")
    wait_until(lambda: client.get_status(first)["status"] == "running", 10)
    return [client.execute(task) for task in tasks]


def test_a_busy_session_runs_its_executions_in_order_handed_ahead(server):
    client = server.client
    client.run("n = 0", timeout=30)
    ids = _queue_behind_a_blocker(client, [f"import time\ntime.sleep(0.01)\nn += 1\nassert n == {i + 1}, n\nn"
                                           for i in range(100)])
    seen = []
    deadline = time.monotonic() + 30
    while client.get_status(ids[-1])["status"] != "complete" and time.monotonic() < deadline:
        seen.append(_worker(client)["ahead"])
        time.sleep(0.01)
    assert [client.result(e, timeout=30)["_"] for e in ids] == list(range(1, 101))
    assert max(seen) > 0, "no execution was ever handed ahead"
    assert max(seen) <= 32, f"more handed ahead than LocalBackend.ahead allows: {max(seen)}"
    starts = [client.get_status(e)["started"] for e in ids]
    assert starts == sorted(starts)


def test_ahead_zero_runs_them_one_at_a_time(start_server):
    server = start_server("--LocalBackend.ahead=0")
    client = server.client
    client.run("n = 0", timeout=30)
    ids = _queue_behind_a_blocker(client, [f"n += 1\nassert n == {i + 1}, n\nn" for i in range(30)])
    seen = []
    deadline = time.monotonic() + 30
    while client.get_status(ids[-1])["status"] != "complete" and time.monotonic() < deadline:
        seen.append(_worker(client)["ahead"])
    assert [client.result(e, timeout=30)["_"] for e in ids] == list(range(1, 31))
    assert set(seen) == {0}


def test_a_cancel_of_one_handed_ahead_drops_it_at_once_while_another_runs(server):
    client = server.client
    client.run("ran = []", timeout=30)
    long_one, victim, after = _queue_behind_a_blocker(client, [
        "import time\ntime.sleep(8)\nran.append('long')", "ran.append('victim')", "ran.append('after')"])
    wait_until(lambda: client.get_status(long_one)["status"] == "running", 10)
    wait_until(lambda: _worker(client)["ahead"] == 2, 5)
    reply = client.cancel(victim)
    assert reply["cancelled"] and reply["status"] in ("queued", "cancelled")
    status = client.wait(victim, timeout=6)  # the worker drops it while the long one (8 s) still runs
    assert status["status"] == "cancelled" and "before it started" in status["reason"]
    assert client.get_status(long_one)["status"] == "running"
    assert client.wait(after, timeout=30)["status"] == "complete"
    assert client.run("ran", timeout=30) == {"_": ["long", "after"]}
    # a second cancel of it changes nothing
    again = client.cancel(victim)
    assert not again["cancelled"] and again["status"] == "cancelled"


def test_a_cancel_of_the_running_one_does_not_touch_those_handed_ahead(server):
    client = server.client
    client.run("ran = []", timeout=30)
    ids = _queue_behind_a_blocker(client, [
        "import time\nwhile True: time.sleep(0.01)", *[f"ran.append({i})" for i in range(5)]])
    wait_until(lambda: client.get_status(ids[0])["status"] == "running", 10)
    client.cancel(ids[0])
    assert client.wait(ids[0], timeout=20)["status"] == "cancelled"
    assert [client.wait(e, timeout=20)["status"] for e in ids[1:]] == ["complete"] * 5
    assert client.run("ran", timeout=30) == {"_": [0, 1, 2, 3, 4]}


def test_a_stray_sigint_does_not_stop_a_task_only_a_cancel_does(server):
    """The worker raises KeyboardInterrupt only for the execution its cancel pipe names."""
    client = server.client
    eid = client.execute("import time\ntime.sleep(1.5)\n'done'")
    wait_until(lambda: client.get_status(eid)["status"] == "running", 10)
    pid = client.get_status(eid)["worker_pid"]
    os.kill(pid, signal.SIGINT)
    assert client.result(eid, timeout=20) == {"_": "done"}
    loop = client.execute("import time\nwhile True: time.sleep(0.01)")
    wait_until(lambda: client.get_status(loop)["status"] == "running", 10)
    client.cancel(loop)
    assert client.wait(loop, timeout=20)["status"] == "cancelled"
    assert client.get_status(loop)["worker_pid"] == pid  # interrupted, not killed


def test_another_session_waiting_takes_back_what_was_handed_ahead(start_server):
    server = start_server("--concurrency", "1")
    a, b = server.new_client(session="a"), server.new_client(session="b")
    try:
        b.run("0", timeout=30)  # b's worker is up before a takes the only slot
        ids = _queue_behind_a_blocker(a, ["import time\ntime.sleep(0.2)"] * 10)
        wait_until(lambda: a.get_status(ids[0])["status"] == "running", 10)
        wait_until(lambda: _worker(a)["ahead"] > 0, 5)
        other = b.execute("'b ran'")
        assert b.result(other, timeout=30) == {"_": "b ran"}
        b_started = b.get_status(other)["started"]
        a_starts = [a.get_status(e)["started"] for e in ids]
        ran_before_b = sum(1 for t in a_starts if t is not None and t < b_started)
        print(f"\nexecutions of session a started before b's: {ran_before_b} of 10")
        # b waited for a's running execution, and at most the one a's worker had just started
        assert ran_before_b <= 2
        assert [a.wait(e, timeout=30)["status"] for e in ids] == ["complete"] * 10
    finally:
        a.close()
        b.close()


def test_a_worker_lost_with_executions_handed_ahead_runs_each_of_them_once(server, tmp_path: Path):
    client = server.client
    log = tmp_path / "ran.txt"
    tasks = ["import os, time\ntime.sleep(0.3)\nos._exit(3)",
             *[f"open({str(log)!r}, 'a').write('{i}\\n')" for i in range(5)]]
    ids = _queue_behind_a_blocker(client, tasks)
    crashed = client.wait(ids[0], timeout=30)
    assert crashed["status"] == "failed" and "exit code 3" in crashed["reason"]
    statuses = [client.wait(e, timeout=30) for e in ids[1:]]
    assert [s["status"] for s in statuses] == ["complete"] * 5
    assert statuses[0]["namespace_reset"]
    assert log.read_text().split() == ["0", "1", "2", "3", "4"]


def test_a_cancel_that_ends_in_a_kill_never_takes_one_handed_ahead_with_it(start_server, tmp_path: Path):
    """The running one ignores its interrupt and its worker is killed: those behind it run once, later."""
    server = start_server("--cancel-grace-period", "0.3", "--ExecutionServer.kill_grace_period=0.3")
    client = server.client
    log = tmp_path / "ran.txt"
    stubborn = ("import time\nprint('looping', flush=True)\nwhile True:\n    try:\n        time.sleep(0.01)\n"
                "    except KeyboardInterrupt:\n        pass")
    ids = _queue_behind_a_blocker(client, [stubborn, *[f"open({str(log)!r}, 'a').write('{i}\\n')" for i in range(5)]])
    wait_until(lambda: "looping" in client.get_status(ids[0])["stdout"], 20)
    assert _worker(client)["ahead"] == 5
    client.cancel(ids[0])
    wait_until(lambda: _worker(client)["ahead"] == 0, 5)  # taken back before the interrupt
    status = client.wait(ids[0], timeout=20)
    assert status["status"] == "cancelled" and "terminated" in status["reason"]
    assert [client.wait(e, timeout=30)["status"] for e in ids[1:]] == ["complete"] * 5
    assert log.read_text().split() == ["0", "1", "2", "3", "4"]


def test_pushed_values_keep_their_place_in_the_order(server):
    """Executions with pushed buffers are not handed ahead, but run in their turn."""
    import numpy as np

    client = server.client
    client.run("order = []", timeout=30)
    client.run("0", timeout=30)
    first = client.execute("import time\ntime.sleep(0.5)")
    wait_until(lambda: client.get_status(first)["status"] == "running", 10)
    ids = []
    for i in range(6):
        if i % 2:
            ids.append(client.execute(f"order.append(('push', {i}, int(arr.sum())))", push={"arr": np.arange(i)}))
        else:
            ids.append(client.execute(f"order.append(('plain', {i}))"))
    assert [client.wait(e, timeout=30)["status"] for e in ids] == ["complete"] * 6
    assert client.run("order", timeout=30) == {"_": [
        ("plain", 0), ("push", 1, 0), ("plain", 2), ("push", 3, 3), ("plain", 4), ("push", 5, 10)]}


# -- the cancel pipe and the interrupt guard, directly -------------------------------

def test_the_interrupt_guard_raises_only_for_the_execution_the_pipe_names():
    read_fd, writer = open_pipe()
    reader = CancelReader(read_fd)
    current = "aaaaaaaaaaaa"

    def meant() -> bool:
        reader.read()
        return current in reader.cancel

    guard = InterruptGuard(meant)
    try:
        guard.armed = True
        guard.handler(signal.SIGINT, None)  # nothing named: a stray signal
        assert writer.write(DROP, current)  # a take-back does not stop a running execution
        guard.handler(signal.SIGINT, None)
        assert writer.write(CANCEL, "bbbbbbbbbbbb")  # another execution's cancel
        guard.handler(signal.SIGINT, None)
        assert writer.write(CANCEL, current)
        with pytest.raises(KeyboardInterrupt):
            guard.handler(signal.SIGINT, None)
        # named (and signalled) before it starts: it never runs
        reader.cancel.clear()
        guard.armed = False
        writer.write(CANCEL, current)
        guard.handler(signal.SIGINT, None)  # no task runs: only noted
        ran = []
        with pytest.raises(KeyboardInterrupt):
            with guard.armed_section():
                ran.append(1)
        assert ran == [] and not guard.armed
        # a partial line counts only once whole
        reader.cancel.clear()
        os.write(writer.fd, b"cccc")
        reader.read()
        assert reader.cancel == set()
        os.write(writer.fd, b"cccccccc\n")
        reader.read()
        assert reader.cancel == {"ccccccccccc"}
        reader.keep_only({"other"})
        assert reader.cancel == set()
    finally:
        writer.close()
        reader.read()
        assert reader.closed  # the server's end is gone: the worker stops watching
        os.close(read_fd)
    assert not writer.write(CANCEL, current)  # closed: says so instead of raising
