"""Where a brief ping's time goes: CPU per round trip by thread, and the server's steps in place.

Why: ``ping`` is judged against a raw pyzmq DEALER/ROUTER echo; the gap is
the Python zmqruntime runs per request (verify, replay check, dispatch, sign,
frame) on both sides. This module measures that gap instead of guessing it,
in three parts, each on a server of its own:

  * ``cpu``: CPU per round trip of every thread (main and ZeroMQ I/O, server
    and client), read from ``/proc`` over N round trips: the raw echo (the
    baseline's pattern and transport, IPC), ``zmqruntime serve`` as run (its
    busy-poll on, so idle spinning is counted too), and with its busy-poll
    off (``--ExecutionServer.busy_poll=0``: the server's main thread then
    spends CPU only on requests and wake-ups);
  * ``noop``: the same for a no-op ``run()`` (execute -> result), with the
    session's worker process beside the server and the client;
  * ``in_place``: the same server class run in a child process of this
    module with its steps wrapped in clocks (``_handle_request``, verify and
    decode, the replay check, encode and sign, send, receive): microseconds
    per ping of each while real pings arrive. The clocks add ~0.2 µs a step;
  * ``tight_loop``: the same decode and encode steps timed here, over and
    over, on one message: what they cost with every cache warm.

  * ``noop_timeline``: no-op ``run()`` calls against that same instrumented
    server, each cut into the segments of its path by clocks on both sides
    (``perf_counter`` is the system's monotonic clock, so the client's and
    the server's stamps compare): the client before its send, the hop to
    the server, the server until its message to the worker is sent, the
    worker with both link hops, the server from the worker's message until
    its reply is sent, the hop back, and the client after the reply.

``in_place / tight_loop`` is the factor by which Python runs slower between
sleeps and wake-ups than in a loop; with the server's step times it says how
much of the gap is Python (and what a compiled codec could take away).
Figures for reference only, never judged.
"""

from __future__ import annotations

import collections
import json
import os
import statistics
import sys
import time
import timeit

from benchmarks import common, zr_server

STATS_MARKER = "@@PING-STAGES@@"
TIMELINE_MARKER = "@@NOOP-TIMELINE@@"
WARMUP = 2000
#: The server's stamps of each no-op, in its order: execute received, its ``run`` sent to the
#: worker, the worker's ``finished`` received, the reply sent.
SERVER_STAMPS = ("received", "to_worker", "from_worker", "replied")
#: A no-op's segments: (name, from stamp, to stamp); ``start``, ``sent``, ``got`` and ``end`` are the client's.
TIMELINE = (("client before its send", "start", "sent"), ("hop to the server", "sent", "received"),
            ("server: execute until sent to the worker", "received", "to_worker"),
            ("worker and both link hops", "to_worker", "from_worker"),
            ("server: worker's end until the reply is sent", "from_worker", "replied"),
            ("hop back to the client", "replied", "got"), ("client after the reply", "got", "end"))


def _rounds() -> int:
    return common.sized(common.scaled(20000) * common.ROUNDS, 200)


def _thread_cpu(pid: int) -> dict[int, float]:
    import psutil

    return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}


def _per_round(before: dict[int, float], after: dict[int, float], main: int, n: int) -> dict:
    """Microseconds of CPU per round trip: the main thread, and the rest (ZeroMQ's I/O thread, any other)."""
    spent = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    main_us = spent.get(main, 0.0) / n * 1e6
    return {"main_us": round(main_us, 1), "other_threads_us": round(sum(spent.values()) / n * 1e6 - main_us, 1)}


def _measure_cpu(round_trip, server_pid: int, n: int, others: dict[str, int] | None = None) -> dict:
    """Wall and CPU per round trip of ``n`` calls: the server, this client, and any ``others`` (name -> pid)."""
    for _ in range(WARMUP):
        round_trip()
    pids = {"server": server_pid, "client": os.getpid(), **(others or {})}
    before = {name: _thread_cpu(pid) for name, pid in pids.items()}
    t0 = time.perf_counter()
    for _ in range(n):
        round_trip()
    wall = time.perf_counter() - t0
    after = {name: _thread_cpu(pid) for name, pid in pids.items()}
    return {"round_trip_us": round(wall / n * 1e6, 1),
            **{name: _per_round(before[name], after[name], pid, n) for name, pid in pids.items()}}


def raw_echo_cpu(n: int) -> dict:
    """The raw baseline's own DEALER/ROUTER echo over IPC (``baseline_reqrep``), measured the same way."""
    import zmq

    from benchmarks.baseline_reqrep import EchoPeer

    ctx = zmq.Context()
    peer = None
    try:
        peer = EchoPeer(ctx, "routerdealer_ipc")
        return _measure_cpu(peer.round_trip, peer.proc.pid, n)
    finally:
        if peer is not None:
            peer.close()
        ctx.term()


def zmqruntime_cpu(n: int, server_args: tuple[str, ...] = ()) -> dict:
    with zr_server.running_server(server_args) as (client, _port):
        pid = client.ping()["pid"]
        return _measure_cpu(lambda: client.ping(brief=True), pid, n)


def noop_cpu(n: int) -> dict:
    """The same for a no-op ``run()`` (execute -> result): the server, the session's worker, the client."""
    with zr_server.running_server(()) as (client, _port):
        zr_server.run_to_result(client, "None")
        zr_server.wait_workers_ready(client)  # the spare that replaced the session's worker has booted
        info = client.ping()
        worker = next(w["pid"] for w in info["workers"] if w.get("session"))
        return _measure_cpu(lambda: zr_server.run_to_result(client, "None"), info["pid"], n, {"worker": worker})


# ------------------------------------------------------------------ the server in place


def serve_instrumented(port: int, skip: int) -> None:
    """Child: the server ``zmqruntime serve`` runs, in this process, its steps wrapped in clocks;
    the first ``skip`` requests are not counted (warm-up); on shutdown, print the figures."""
    import zmqruntime.server as server_module
    from zmqruntime.execution.server import ExecutionServer

    spent: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    counting = [False]
    clock = time.perf_counter_ns

    def wrap(owner, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            t0 = clock()
            try:
                return inner(*args, **kwargs)
            finally:
                if counting[0]:
                    spent[label] += clock() - t0
                    calls[label] += 1
        setattr(owner, name, timed)

    server = ExecutionServer(port=port)
    server.bind()
    stamps = _stamp_noops(server)
    handle = server._handle_request
    seen = [0]

    def handle_request(frames, size):
        seen[0] += 1
        counting[0] = seen[0] > skip
        t0 = clock()
        handle(frames, size)
        if counting[0]:
            spent["handle_request (all of a request)"] += clock() - t0
            calls["handle_request (all of a request)"] += 1
    server._handle_request = handle_request
    wrap(server.session, "deserialize", "verify and decode")
    wrap(server.replay, "check", "replay check")
    wrap(server.session, "serialize", "encode and sign the reply")
    wrap(server_module, "send_frames", "send the reply")
    wrap(server_module, "recv_bounded", "receive the request")
    print("ready", flush=True)
    try:
        server.serve_forever()
    finally:
        n = max(1, calls["handle_request (all of a request)"] - 1)  # the last is the shutdown
        print(STATS_MARKER, json.dumps({label: round(ns / n / 1e3, 2) for label, ns in spent.items()}), flush=True)
        print(TIMELINE_MARKER, json.dumps(stamps), flush=True)


def _stamp_noops(server) -> dict[str, list[int]]:
    """Clocks (``perf_counter_ns``) at the server's four moments of every execute (SERVER_STAMPS)."""
    import zmqruntime.execution.local as local_module
    import zmqruntime.server as server_module

    clock = time.perf_counter_ns
    stamps: dict[str, list[int]] = {name: [] for name in SERVER_STAMPS}
    last_read = {"control": 0, "link": 0}
    _call_after(server_module, "recv_bounded", lambda args: last_read.__setitem__("control", clock()))
    _call_after(local_module, "read_worker_message", lambda args: last_read.__setitem__("link", clock()))
    # (before the call: an execute whose reply is held raises ReplyLater)
    _call_before(server, "handle_execute", lambda args: stamps["received"].append(last_read["control"]))
    _call_after(local_module.LocalBackend, "_send",
                lambda args: args[2].get("type") == "run" and stamps["to_worker"].append(clock()))
    _call_before(local_module.LocalBackend, "_finished", lambda args: stamps["from_worker"].append(last_read["link"]))
    _call_after(server, "answer", lambda args: stamps["replied"].append(clock()))
    return stamps


def _call_before(owner, name: str, then) -> object:
    """Replace ``owner.name`` by a function that calls ``then(args)`` and then it; return the original."""
    inner = getattr(owner, name)

    def hooked(*args, **kwargs):
        then(args)
        return inner(*args, **kwargs)
    setattr(owner, name, hooked)
    return inner


def _call_after(owner, name: str, then) -> object:
    """Replace ``owner.name`` by a function that calls it and then ``then(args)``; return the original."""
    inner = getattr(owner, name)

    def hooked(*args, **kwargs):
        result = inner(*args, **kwargs)
        then(args)
        return result
    setattr(owner, name, hooked)
    return inner


def in_place(n: int) -> dict:
    """The ping steps (``in_place_us``) and the no-op timeline (``noop_timeline_us``) of one instrumented server."""
    noops = max(20, n // 10)
    with zr_server.private_runtime_dir() as rdir:
        port = common.free_port_pair(zr_server.CONTROL_OFFSET)
        child = common.spawn_python(["-m", "benchmarks.profile_ping", "--serve", str(port), str(WARMUP)],
                                    env=common.python_env({"ZMQRUNTIME_RUNTIME_DIR": str(rdir)}))
        client = None
        try:
            common.read_line(child, 30, "ready")
            ExecutionClient, _ = zr_server.import_api()
            client = ExecutionClient(port=port, auto_spawn=False)
            for _ in range(WARMUP + n):
                client.ping(brief=True)
            zr_server.run_to_result(client, "None")
            zr_server.wait_workers_ready(client)
            ours = _client_noops(client, WARMUP // 10 + noops)
            client.shutdown()
            steps = json.loads(common.read_line(child, 30, STATS_MARKER))
            theirs = json.loads(common.read_line(child, 30, TIMELINE_MARKER))
            return {"in_place_us": steps, "noop_timeline_us": common.guarded(_timeline, ours, theirs, noops)}
        finally:
            if client is not None:
                client.close()
            common.reap(child)


def _client_noops(client, count: int) -> dict[str, list[int]]:
    """``count`` no-op ``run()`` calls, each stamped at its start, its send, its reply's arrival and its end."""
    import zmqruntime.client as client_module

    clock = time.perf_counter_ns
    stamps: dict[str, list[int]] = {"start": [], "sent": [], "got": [], "end": []}
    send = _call_after(client_module, "send_frames", lambda args: stamps["sent"].append(clock()))
    recv = _call_after(client_module, "recv_frames", lambda args: stamps["got"].append(clock()))
    try:
        for _ in range(count):
            stamps["start"].append(clock())
            zr_server.run_to_result(client, "None")
            stamps["end"].append(clock())
    finally:
        client_module.send_frames, client_module.recv_frames = send, recv  # type: ignore[assignment]
    return stamps


def _timeline(client: dict[str, list[int]], server: dict[str, list[int]], last: int) -> dict:
    """Median microseconds of each TIMELINE segment over the ``last`` no-ops (the server saw the
    warm-up run first: its lists are aligned on their ends)."""
    stamps = {**{k: v[-last:] for k, v in client.items()}, **{k: v[-last:] for k, v in server.items()}}
    counts = {k: len(v) for k, v in stamps.items()}
    if set(counts.values()) != {last}:
        raise RuntimeError(f"unmatched no-op stamps (one message each way per no-op expected): {counts}")
    # A stamp is taken after a send returns, so the peer's next stamp may come first (the sender
    # descheduled): ``sent`` after ``received``, ``replied`` after ``got``. Lines up only where no such
    # race is possible: the client starts a no-op before the server receives it, and the server
    # receives it before its reply reaches the client. Lists off by one break one or the other nearly always.
    inverted = sum(not start < received < got
                   for start, received, got in zip(stamps["start"], stamps["received"], stamps["got"]))
    if inverted > last // 100:
        raise RuntimeError(f"no-op stamps out of order in {inverted} of {last} no-ops: the client's and the "
                           "server's lists do not line up")
    out = {name: round(statistics.median((b - a) / 1e3 for a, b in zip(stamps[start], stamps[end])), 1)
           for name, start, end in TIMELINE}
    out["whole no-op"] = round(statistics.median((b - a) / 1e3 for a, b in zip(stamps["start"], stamps["end"])), 1)
    return out


def tight_loop() -> dict:
    """The decode and encode of a brief ping, timed over and over on one message (caches warm)."""
    from zmqruntime import protocol

    session = protocol.Session(protocol.new_key(), scheme=protocol.BLAKE3, packed=True)
    frames, msg_id = session.serialize_request("ping", {"brief": True})
    frames = [b"0123456789", *frames]  # as the ROUTER delivers it: the client's identity first
    reply = {"ok": True, "server_id": "0123456789ab", "pid": 12345, "version": "1.0", "uptime": 12.345678}
    number = common.sized(20000, 200)

    def per_call(fn) -> float:
        return round(min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6, 2)

    return {"verify and decode": per_call(lambda: session.deserialize(frames)),
            "encode and sign the reply": per_call(lambda: session.serialize(
                "ping_reply", reply, parent_id=msg_id, scheme=protocol.BLAKE3, packed=True))}


def measure() -> dict:
    n = _rounds()
    out = {"round_trips": n}
    out["raw_echo"] = common.guarded(raw_echo_cpu, n)
    out["zmqruntime"] = common.guarded(zmqruntime_cpu, n)
    out["zmqruntime_not_spinning"] = common.guarded(zmqruntime_cpu, n, ("--ExecutionServer.busy_poll=0",))
    out["noop"] = common.guarded(noop_cpu, max(1, n // 10))
    place = common.guarded(in_place, n)
    out.update(place if "error" not in place else {"in_place_us": place, "noop_timeline_us": place})
    out["tight_loop_us"] = common.guarded(tight_loop)
    return out


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve_instrumented(int(sys.argv[2]), int(sys.argv[3]))
    else:
        common.child_main(measure)
