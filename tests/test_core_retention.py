"""Result retention: count, bytes, fetched-first eviction, release."""

from __future__ import annotations

import pytest

from zmqruntime import RemoteError
from zmqruntime.execution.records import ExecutionRecord, RecordStore

pytestmark = pytest.mark.timeout(60)


def expired(client, exec_id):
    with pytest.raises(RemoteError) as info:
        client.get_results(exec_id)
    return info.value.code == "results_expired"


def test_count_limit_drops_fetched_results_first(start_server):
    client = start_server("--ExecutionServer.max_results=2").client
    a = client.execute("'a'")
    client.wait(a, timeout=20)
    assert client.get_results(a) == {"_": "a"}  # fetched: first to go
    b = client.execute("'b'")
    client.wait(b, timeout=20)
    c = client.execute("'c'")
    client.wait(c, timeout=20)
    assert expired(client, a)
    assert client.get_results(b) == {"_": "b"} and client.get_results(c) == {"_": "c"}
    status = client.get_status(a)
    assert status["status"] == "complete" and status["results_expired"]  # the record stays


def test_byte_limit(start_server):
    client = start_server("--ExecutionServer.max_result_bytes=3000000").client
    big = [client.execute(f"b'{i}' * 1_000_000") for i in range(4)]
    for e in big:
        client.wait(e, timeout=20)
    assert expired(client, big[0])
    assert client.get_results(big[3])["_"][:1] == b"3"


def test_result_over_the_byte_limit_is_never_announced(start_server):
    client = start_server("--ExecutionServer.max_result_bytes=1000").client
    events = []
    exec_id = client.execute("b'x' * 5000")
    sub = client.subscribe(events.append, execution_id=exec_id)
    status = client.wait(exec_id, timeout=20)
    assert status["status"] == "complete" and status["results_expired"] and not status["has_results"]
    assert expired(client, exec_id)
    from helpers import wait_until

    done = wait_until(lambda: [e for e in events if e.type == "done"] or None, 10)
    sub.close()
    assert done[0]["has_results"] is False
    with pytest.raises(RemoteError) as info:  # run() does not pretend there was nothing
        client.run("b'y' * 5000", timeout=20)
    assert info.value.code == "results_expired"


def test_release_frees_immediately(server):
    client = server.client
    e = client.execute("list(range(5))")
    client.wait(e, timeout=20)
    assert client.get_results(e, release=True) == {"_": [0, 1, 2, 3, 4]}
    assert expired(client, e)


def test_age_limit_and_record_cap_unit():
    store = RecordStore(max_records=3, max_results=10, max_result_bytes=10**9, max_result_age=60)
    for i in range(5):
        rec = ExecutionRecord(f"id{i}", {"kind": "python"}, status="complete", finished_clock=1000.0 + i)
        rec.result_frames, rec.result_nbytes = [b"x"], 1
        store.add(rec)
    assert [r.execution_id for r in store] == ["id2", "id3", "id4"]  # oldest finished records forgotten
    assert store.enforce(now=1000.0 + 62.5) == ["id2"]  # only the one older than 60 s
    running = ExecutionRecord("live", {"kind": "python"}, status="running")
    store.add(running)
    store.add(ExecutionRecord("new", {"kind": "python"}, status="queued"))
    assert "live" in store and "new" in store  # unfinished records are never dropped


def test_record_cap_forgets_in_finishing_order_and_never_the_unfinished():
    """Past max_records the oldest *finished* records go, however many queued ones
    sit in front of them (trimming no longer scans the store on every add)."""
    store = RecordStore(max_records=3, max_results=10, max_result_bytes=10**9, max_result_age=60)
    queued = [ExecutionRecord(f"q{i}", {"kind": "python"}, status="queued") for i in range(5)]
    for rec in queued:
        store.add(rec)
    assert len(store) == 5  # nothing finished: nothing may be forgotten

    def finish(rec: ExecutionRecord) -> None:
        rec.status = "complete"
        store.finished(rec)

    finish(queued[3])  # out of submission order
    store.add(ExecutionRecord("late", {"kind": "python"}, status="queued"))
    assert [r.execution_id for r in store] == ["q0", "q1", "q2", "q4", "late"]
    finish(queued[1])
    finish(queued[0])
    store.add(ExecutionRecord("later", {"kind": "python"}, status="queued"))
    assert [r.execution_id for r in store] == ["q2", "q4", "late", "later"]  # both finished ones, and only those


def _held(store: RecordStore, exec_id: str, clock: float, nbytes: int = 1, fetched: bool = False) -> ExecutionRecord:
    """A finished record holding ``nbytes`` of results, held by ``store`` as the server holds one."""
    rec = ExecutionRecord(exec_id, {"kind": "python"}, status="complete", finished_clock=clock)
    rec.result_frames, rec.result_nbytes = [b"x" * nbytes], nbytes
    store.add(rec)
    store.hold(rec)
    if fetched:
        store.mark_fetched(rec)
    return rec


def test_count_limit_evicts_fetched_oldest_first_then_unfetched_oldest_first():
    store = RecordStore(max_records=100, max_results=3, max_result_bytes=10**9, max_result_age=60)
    _held(store, "u0", 1.0)
    _held(store, "f1", 2.0, fetched=True)
    _held(store, "u2", 3.0)
    _held(store, "f3", 4.0, fetched=True)
    assert store.enforce(now=10.0) == ["f1"]  # fetched before an older unfetched one
    _held(store, "u4", 5.0)
    assert store.enforce(now=10.0) == ["f3"]
    _held(store, "u5", 6.0)
    assert store.enforce(now=10.0) == ["u0"]  # no fetched one left: the oldest unfetched
    assert list(store.holding) == ["u2", "u4", "u5"]
    assert store.get("u0").results_expired and not store.get("u0").has_results


def test_results_dropped_elsewhere_leave_the_counts():
    """A release (the client's, or a refused file) drops a result outside ``enforce``: the store stops
    counting it at once, so no other result is evicted in its place."""
    store = RecordStore(max_records=100, max_results=2, max_result_bytes=100, max_result_age=60)
    a = _held(store, "a", 1.0, nbytes=60, fetched=True)
    _held(store, "b", 2.0, nbytes=30)
    a.drop_results()  # as ``results`` with ``release`` does
    _held(store, "c", 3.0, nbytes=60)  # 2 results, 90 bytes: within both limits
    assert store.enforce(now=10.0) == []
    assert list(store.holding) == ["b", "c"]
    _held(store, "d", 4.0, nbytes=20, fetched=True)  # 3 results, 110 bytes
    assert store.enforce(now=10.0) == ["d"]  # the fetched one goes first, and that is enough


def test_byte_limit_evicts_until_under():
    store = RecordStore(max_records=100, max_results=100, max_result_bytes=100, max_result_age=60)
    for i in range(4):
        _held(store, f"r{i}", float(i + 1), nbytes=40)
    assert store.enforce(now=10.0) == ["r0", "r1"]  # 160 bytes -> 80
    assert list(store.holding) == ["r2", "r3"]


def test_age_limit_follows_finishing_order_even_when_held_out_of_order():
    store = RecordStore(max_records=100, max_results=100, max_result_bytes=10**9, max_result_age=60)
    _held(store, "new", 50.0)
    _held(store, "old", 5.0)  # finished earlier, held later
    assert list(store.holding) == ["old", "new"]
    assert store.enforce(now=100.0) == ["old"]
    assert store.enforce(now=111.0) == ["new"]
    assert not store.holding
