"""Cancel (queued and running), escalation, timeout and worker crashes.

Each test checks that only the targeted execution is affected and that the
server keeps answering ping while and after it happens.
"""

from __future__ import annotations

import signal
import time

import pytest

from helpers import wait_until
from zmqruntime import ExecutionCancelled

pytestmark = pytest.mark.timeout(60)

BUSY_LOOP = """
from zmqruntime import progress
n = 0
for i in progress(range(10**10), desc="spinning"):
    n += 1
"""


def wait_running(client, exec_id, timeout=20.0):
    wait_until(lambda: client.get_status(exec_id)["status"] == "running", timeout)


def test_cancel_queued_execution_only_removes_it(server):
    client = server.client
    blocker = client.execute("import time\ntime.sleep(1.0)\n'blocker done'")
    wait_running(client, blocker)
    queued = client.execute("ran_queued = True")  # a side effect that must never happen
    after = client.execute("'after'")
    assert set(client.ping()["queued"]) == {queued, after}
    reply = client.cancel(queued)
    assert reply["cancelled"] is True
    status = client.get_status(queued)
    assert status["status"] == "cancelled" and "before it started" in status["reason"]
    assert status["started"] is None
    assert client.wait(blocker, timeout=20)["status"] == "complete"
    assert client.get_results(blocker) == {"_": "blocker done"}
    assert client.wait(after, timeout=20)["status"] == "complete"
    with pytest.raises(ExecutionCancelled):
        client.get_results(queued)
    assert client.run("'ran_queued' in globals()", timeout=20) == {"_": False}  # it never ran


def test_cancel_running_interrupts_only_target(server):
    client = server.client
    client.run("keep_me = 'still here'", timeout=20)
    running = client.execute(BUSY_LOOP, name="spin")
    queued = client.execute("keep_me")
    wait_running(client, running)
    wait_until(lambda: (client.get_status(running)["progress"] or {}).get("done", 0) > 0)
    t0 = time.monotonic()
    client.cancel(running, reason="user pressed cancel")
    client.ping()  # answers while the cancel is in flight
    status = client.wait(running, timeout=20)
    assert status["status"] == "cancelled"
    assert status["reason"] == "user pressed cancel"
    assert status["error"]["ename"] == "KeyboardInterrupt"
    assert not status["namespace_reset"]  # interrupted, not killed
    print(f"cancel took {1000 * (time.monotonic() - t0):.0f} ms")
    # the queued one runs next, in the same namespace
    assert client.wait(queued, timeout=20)["status"] == "complete"
    assert client.get_results(queued) == {"_": "still here"}


def test_cancel_interrupts_when_the_server_was_started_with_sigint_ignored(start_server):
    """A background job of a non-interactive shell starts with SIGINT ignored, and an ignored
    signal stays ignored across exec. Ray's workers then cannot be cancelled; ours install
    their own handler, so a cancel still interrupts (not the terminate step of the ladder)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # what the server process inherits
    try:
        server = start_server("--cancel-grace-period", "10")
    finally:
        signal.signal(signal.SIGINT, previous)
    client = server.client
    running = client.execute(BUSY_LOOP)
    wait_running(client, running)
    client.cancel(running)
    status = client.wait(running, timeout=8)  # before the 10 s grace period could terminate it
    assert status["status"] == "cancelled"
    assert status["error"]["ename"] == "KeyboardInterrupt"
    assert not status["namespace_reset"]


def test_cancel_escalates_when_task_ignores_interrupt(start_server):
    server = start_server("--cancel-grace-period", "0.3", "--ExecutionServer.kill_grace_period=0.3")
    client = server.client
    stubborn = client.execute("""
import time
print("looping", flush=True)
while True:
    try:
        time.sleep(0.01)
    except KeyboardInterrupt:
        pass
""")
    # in its loop: a cancel that came before its code started would stop it at once ("before it started")
    wait_until(lambda: "looping" in client.get_status(stubborn)["stdout"], 20)
    old_pid = client.get_status(stubborn)["worker_pid"]
    client.cancel(stubborn)
    status = client.wait(stubborn, timeout=20)
    assert status["status"] == "cancelled"
    assert "terminated" in status["reason"] and "namespace reset" in status["reason"]
    assert status["namespace_reset"]
    # a fresh worker serves the next execution and says the namespace is new
    nxt = client.execute("import os\nos.getpid()")
    nxt_status = client.wait(nxt, timeout=30)
    assert nxt_status["status"] == "complete" and nxt_status["namespace_reset"]
    assert client.get_results(nxt)["_"] != old_pid


def test_timeout_cancels_through_the_same_path(server):
    client = server.client
    exec_id = client.execute(BUSY_LOOP, timeout=0.5)
    status = client.wait(exec_id, timeout=20)
    assert status["status"] == "cancelled"
    assert status["reason"] == "timeout after 0.5 s"
    assert client.run("'fine'", timeout=20) == {"_": "fine"}


def test_worker_crash_fails_execution_and_next_one_works(server):
    client = server.client
    crash = client.execute("import os\nos._exit(7)")
    status = client.wait(crash, timeout=20)
    assert status["status"] == "failed"
    assert "exit code 7" in status["reason"] and "died" in status["reason"]
    assert client.ping()["pid"] == server.pid
    assert client.run("6 * 7", timeout=30) == {"_": 42}


def test_task_waiting_behind_a_crash_still_runs(server):
    client = server.client
    crash = client.execute("import time, os\ntime.sleep(0.3)\nos._exit(9)")
    behind = client.execute("import os\nos.getpid()")  # queued behind the crash
    assert client.wait(crash, timeout=20)["status"] == "failed"
    status = client.wait(behind, timeout=30)
    assert status["status"] == "complete" and status["namespace_reset"]  # ran once, on the new worker
    assert client.get_results(behind)["_"] != client.get_status(crash)["worker_pid"]


def test_cancel_finished_and_unknown_executions(server):
    client = server.client
    done = client.execute("1")
    client.wait(done, timeout=20)
    reply = client.cancel(done)
    assert reply["cancelled"] is False and reply["status"] == "complete"
    assert client.get_results(done) == {"_": 1}
    from zmqruntime import RemoteError

    with pytest.raises(RemoteError) as info:
        client.cancel("doesnotexist")
    assert info.value.code == "unknown_execution"


def test_server_keeps_pinging_while_task_burns_cpu(server):
    client = server.client
    exec_id = client.execute(BUSY_LOOP)
    wait_running(client, exec_id)
    for _ in range(200):
        assert client.ping()["running"] == [exec_id]
    client.cancel(exec_id)
    assert client.wait(exec_id, timeout=20)["status"] == "cancelled"


def test_interrupt_guard_counts_only_the_main_threads_sections():
    """The flusher thread's sends must neither hold back an interrupt nor raise it in the wrong thread."""
    import threading

    from zmqruntime.execution.worker import InterruptGuard

    guard = InterruptGuard()
    guard.armed = True
    raised: list[BaseException] = []
    entered, release = threading.Event(), threading.Event()

    def flusher() -> None:
        try:
            with guard:  # a send on another thread, while the interrupt arrives
                entered.set()
                release.wait(5)
        except BaseException as exc:  # a KeyboardInterrupt here would kill the flusher
            raised.append(exc)

    t = threading.Thread(target=flusher)
    t.start()
    assert entered.wait(5)
    with pytest.raises(KeyboardInterrupt):  # not deferred: no main-thread section is open
        guard.handler(2, None)
    release.set()
    t.join(5)
    assert raised == [] and guard.critical == 0
    # on the main thread a section does defer it, to the section's end
    guard.armed = True
    with pytest.raises(KeyboardInterrupt):
        with guard:
            guard.handler(2, None)
            assert guard.pending  # deferred, not raised mid-send


def test_ping_names_the_first_queued_ids_and_counts_them_all(server):
    """A ping's size does not grow with the queue: the first 100 ids, in order, and the total."""
    client = server.client
    blocker = client.execute("import time\ntime.sleep(30)")
    wait_running(client, blocker)
    waiting = [client.execute("None") for _ in range(150)]
    info = client.ping()
    assert info["queued"] == waiting[:100] and info["queued_total"] == 150
    for exec_id in [blocker, *waiting]:
        client.cancel(exec_id)
    client.wait(blocker, timeout=20)
    assert wait_until(lambda: client.ping()["queued_total"] == 0, 20)
