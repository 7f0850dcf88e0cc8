"""Baseline: raw pyzmq REQ/REP round trip of a small message.

Why: this is the floor for any request/reply over ZeroMQ on this machine in this
run.  zmqruntime's ``ping`` (signed, framed, dispatched) is judged as a ratio to
it (target <= 2x), so both must be measured side by side, not against a number
from another day.

The echo server is a separate process (as zmqruntime's server is), bound to a
random free loopback port that it reports back on stdout.
"""

from __future__ import annotations

import sys

import zmq

from benchmarks import common

PAYLOAD = b'{"type": "ping", "id": "0123456789abcdef"}'  # ~ a small control message


def serve() -> None:
    """Echo server (child process): REP socket, reply with what arrives."""
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.linger = 0
    port = rep.bind_to_random_port(f"tcp://{common.LOOPBACK}")
    print(f"READY {port}", flush=True)
    try:
        while True:
            msg = rep.recv()
            if msg == b"STOP":
                rep.send(b"bye")
                return
            rep.send(msg)
    finally:
        rep.close()
        ctx.term()


def measure() -> dict:
    proc = common.spawn_python(["-m", "benchmarks.baseline_reqrep", "--serve"])
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    req.rcvtimeo = req.sndtimeo = 5000  # bounded: a dead server raises zmq.Again
    try:
        port = int(common.read_line(proc, 15, "READY "))
        req.connect(f"tcp://{common.LOOPBACK}:{port}")

        def round_trip() -> None:
            req.send(PAYLOAD)
            req.recv()

        samples = common.time_each(round_trip, n=common.scaled(5000), warmup=500)
        result = common.summarize(samples, "us", 1e6)
        result["payload_bytes"] = len(PAYLOAD)
        req.send(b"STOP")
        req.recv()
        return result
    finally:
        req.close()
        ctx.term()
        common.reap(proc)


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve()
    else:
        common.child_main(measure)
