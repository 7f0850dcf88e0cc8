"""Load: many clients at once, every request answered exactly once, every
execution run exactly once, no event lost below the documented rate.

Each execution appends its own key to a file; afterwards every expected
key must be there exactly once (none lost, none run twice). Each test is
bounded to well under a minute on a loaded 2-core machine.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import zmq

from helpers import server_env, wait_until
from zmqruntime.curve import secure_client_socket
from zmqruntime.protocol import Session

pytestmark = pytest.mark.timeout(120)

THREADS, PROCESSES, REQUESTS = 8, 4, 50

# One client's share of the load: M requests cycling execute / status / ping / results.
MIXED_LOAD = textwrap.dedent("""
    def mixed_load(client, who, requests, marks):
        replies = collections.Counter()
        executions = {}
        last = None
        for i in range(requests):
            op = ("execute", "status", "ping", "results")[i % 4]
            if op == "execute":
                key = f"{who}-{i}"
                last = client.execute(f"open({marks!r}, 'a').write({key!r} + '\\\\n')\\n{key!r}", name=who)
                executions[last] = key
            elif op == "status":
                assert client.get_status(last)["execution_id"] == last
            elif op == "ping":
                assert client.ping()["pid"] > 0
            else:
                client.wait(last, timeout=60)
                assert client.get_results(last) == {"_": executions[last]}
            replies[op] += 1
        for exec_id, key in executions.items():  # everything it submitted completes with its own result
            assert client.wait(exec_id, timeout=60)["status"] == "complete"
            assert client.get_results(exec_id) == {"_": key}
        return replies, sorted(executions.values())
""")
exec(MIXED_LOAD)

PROCESS_CLIENT = "import collections, json, sys\nfrom zmqruntime import ExecutionClient\n" + MIXED_LOAD + textwrap.dedent("""
    client = ExecutionClient(connection_file=sys.argv[1], timeout=30)
    replies, keys = mixed_load(client, sys.argv[2], int(sys.argv[3]), sys.argv[4])
    client.close()
    print(json.dumps({"replies": replies, "keys": keys}))
""")


def test_threads_and_processes_every_request_answered_every_execution_once(start_server, tmp_path):
    server = start_server("--ExecutionServer.concurrency=2", "--ExecutionServer.max_results=1000")
    marks = str(tmp_path / "ran.txt")
    procs = [subprocess.Popen([sys.executable, "-c", PROCESS_CLIENT, str(server.connection_file), f"p{n}",
                               str(REQUESTS), marks], stdout=subprocess.PIPE, text=True, env=server_env())
             for n in range(PROCESSES)]
    shared = server.new_client(timeout=30)  # the threads share one client object: it is thread-safe
    results: dict[str, tuple] = {}
    errors: list[BaseException] = []

    def run(who: str) -> None:
        try:
            results[who] = mixed_load(shared, who, REQUESTS, marks)  # noqa: F821 (defined by exec above)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"t{n}",)) for n in range(THREADS)]
    t0 = time.monotonic()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(100)
        outputs = [p.communicate(timeout=100)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
        shared.close()
    assert not errors, errors
    assert all(p.returncode == 0 for p in procs)
    for out in outputs:
        data = json.loads(out)
        results[data["keys"][0].split("-")[0]] = (collections.Counter(data["replies"]), data["keys"])
    elapsed = time.monotonic() - t0

    assert len(results) == THREADS + PROCESSES
    replies = sum((r[0] for r in results.values()), collections.Counter())
    assert sum(replies.values()) == (THREADS + PROCESSES) * REQUESTS  # every request got its one answer
    expected = sorted(k for r in results.values() for k in r[1])
    ran = Path(marks).read_text().splitlines()
    duplicates = [k for k, n in collections.Counter(ran).items() if n > 1]
    assert duplicates == [] and sorted(ran) == expected  # each execution ran exactly once, none lost
    listed = server.client.list_executions()
    assert len(listed) == len(expected) and all(e["status"] == "complete" for e in listed)
    print(f"{sum(replies.values())} requests ({dict(replies)}), {len(expected)} executions, "
          f"{THREADS} threads + {PROCESSES} processes, {elapsed:.1f} s")


def test_pipelined_requests_each_get_exactly_one_reply(server):
    """Raw DEALERs fire hundreds of requests without waiting; replies are
    matched by parent_id: each msg_id answered once, nothing extra. Half the
    executes repeat an earlier request_id: they must not create executions."""
    info = server.client.info
    session = Session(info.key)
    ctx = zmq.Context()
    socks = []
    per_socket, n_sockets = 400, 4
    sent: dict[str, tuple[int, str, dict]] = {}
    try:
        for _ in range(n_sockets):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            secure_client_socket(sock, info)
            sock.connect(info.control_url)
            socks.append(sock)
        for s, sock in enumerate(socks):
            for i in range(per_socket):
                kind = ("ping", "list", "status", "execute")[i % 4]
                content: dict = {}
                if kind == "execute":  # i // 8: each request_id is sent twice by this socket
                    content = {"task": {"kind": "python", "code": f"'{s}-{i // 8}'"}, "request_id": f"r{s}-{i // 8}"}
                frames, msg_id = session.serialize_request(kind, content)
                sent[msg_id] = (s, kind, content)
                sock.send_multipart(frames)
        answers: collections.Counter = collections.Counter()
        replies: dict[str, dict] = {}
        poller = zmq.Poller()
        for sock in socks:
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + 60
        while len(replies) < len(sent) and time.monotonic() < deadline:
            for sock, _ in poller.poll(100):
                msg = session.deserialize(sock.recv_multipart())
                answers[msg.parent_id] += 1
                replies[msg.parent_id] = msg.content
        for sock, _ in poller.poll(500):  # anything extra would show up here
            answers[session.deserialize(sock.recv_multipart()).parent_id] += 1
    finally:
        for sock in socks:
            sock.close()
        ctx.term()
    assert set(answers) == set(sent) and set(answers.values()) == {1}
    assert all(r["ok"] for r in replies.values())
    by_request = collections.defaultdict(list)
    for msg_id, (_sock, kind, content) in sent.items():
        if kind == "execute":
            by_request[content["request_id"]].append(replies[msg_id])
    for pair in by_request.values():
        assert len(pair) == 2 and pair[0]["execution_id"] == pair[1]["execution_id"]
        assert sorted(r["duplicate"] for r in pair) == [False, True]
    assert len(server.client.list_executions()) == len(by_request) == n_sockets * per_socket // 8
    print(f"{len(sent)} pipelined requests on {n_sockets} sockets, each answered once; "
          f"{len(by_request)} executions from {2 * len(by_request)} executes")


EVENTS, RATE = 20_000, 10_000  # the documented no-loss rate: 10,000 events/s per subscriber

FLOOD = f"""
import time
from zmqruntime import Reporter
r = Reporter(total={EVENTS}, desc="flood", min_interval=0)
t0 = time.monotonic()
for i in range({EVENTS}):
    r.update(1)
    if i % 100 == 99:  # paced at {RATE} events/s
        ahead = t0 + (i + 1) / {RATE} - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    if i % 1000 == 0:
        print(i)
r.close()
"""


def test_no_event_lost_at_the_documented_rate(server):
    subscribers = [server.new_client(timeout=10) for _ in range(3)]
    seen: list[list] = [[] for _ in subscribers]
    subs = [c.subscribe(seen[n].append) for n, c in enumerate(subscribers)]
    try:
        probe = server.client.execute("'probe'")  # wait until every subscription is live
        wait_until(lambda: all(any(e.execution_id == probe and e.type == "done" for e in s) for s in seen), 20)
        flood = server.client.execute(FLOOD, name="flood")
        assert server.client.wait(flood, timeout=60)["status"] == "complete"
        final_seq = server.client.get_status(flood)["seq"]
        wait_until(lambda: all(any(e.execution_id == flood and e.type == "done" for e in s) for s in seen), 20)
    finally:
        for sub in subs:
            sub.close()
        for c in subscribers:
            c.close()
    for events in seen:
        mine = [e for e in events if e.execution_id == flood]
        assert [e.seq for e in mine] == list(range(1, final_seq + 1))  # no gap, no duplicate, in order
        assert all(e.missed == 0 for e in mine)
        kinds = collections.Counter(e.type for e in mine)
        assert kinds["progress"] == EVENTS + 2 and kinds["stream"] >= 1 and kinds["done"] == 1
    print(f"{len(subscribers)} subscribers x {final_seq} events of one execution at ~{RATE}/s: none lost")


def test_thousands_of_pipelined_waits_get_their_done_events_without_polling(server):
    """2,500 executions in flight from one asyncio client: every 'done' subscription
    reaches the server (libzmq dropped those past the SUB socket's default send
    high-water mark of 1,000), so every wait ends on its event: one execute_many,
    no status polls and no results requests (the no-op results ride in the events)."""
    import asyncio

    from zmqruntime import AsyncExecutionClient

    n = 2_500
    sent: collections.Counter = collections.Counter()

    async def run() -> list:
        aclient = AsyncExecutionClient(server.client.info, session="pipelined")
        real_request = aclient._client.request

        async def counting(msg_type, *args, **kwargs):
            sent[msg_type] += 1
            return await real_request(msg_type, *args, **kwargs)

        aclient._client.request = counting  # type: ignore[method-assign]  # count what goes on the wire
        try:
            ids = await asyncio.gather(*(aclient.execute(f"{i} * 2") for i in range(n)))
            return await asyncio.wait_for(asyncio.gather(*(aclient.result(e, timeout=120) for e in ids)), 150)
        finally:
            aclient.close()

    results = asyncio.run(run())
    assert [r["_"] for r in results] == [2 * i for i in range(n)]
    assert sent.get("status", 0) == 0 and sent.get("results", 0) == 0, dict(sent)
    assert sent["execute_many"] >= 1 and sum(sent.values()) <= n // 100, dict(sent)


# -- the server's spin: full while messages come back to back, none while they come apart


def test_spin_budget_follows_the_gaps_between_messages():
    from zmqruntime.polling import SpinBudget

    spin = SpinBudget(0.002)
    assert spin.seconds == 0.002
    spin.observe(0.0001)  # a client's next request, back to back
    assert spin.seconds == 0.002
    seen = []
    for _ in range(6):  # a busy task's progress, every 5 ms
        spin.observe(0.005)
        seen.append(spin.seconds)
    assert seen == [0.001, 0.0005, 0.00025, 0.000125, 0.0, 0.0]
    spin.observe(0.0004)  # back to back again: the whole spin at once
    assert spin.seconds == 0.002
    assert SpinBudget(0).seconds == 0 and SpinBudget(-1).seconds == 0
