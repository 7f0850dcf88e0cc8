"""Baseline: raw pyzmq round trips of a small message -- REQ/REP and DEALER/ROUTER.

Why: this is the floor for any request/reply over ZeroMQ on this machine in this
run.  zmqruntime's ``ping`` (signed, framed, dispatched) is judged as a ratio to
REQ/REP (target <= 2x), so both must be measured side by side, not against a
number from another day.  DEALER/ROUTER is the socket pair zmqruntime really
uses (an identity frame on the server side, no lock-step envelope), shown beside
it so the cost of the pattern itself is visible, over TCP and over IPC (the
transport a local zmqruntime server uses by default, and the one its ``ping``
is judged against: the same pattern on the same transport, target <= 1.5x).

Each echo server is a separate process (as zmqruntime's server is), bound to a
random free loopback port that it reports back on stdout.  The two patterns are
measured in alternating blocks, so drift on a noisy machine hits both alike.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Callable

import zmq

from benchmarks import common

PAYLOAD = b'{"type": "ping", "id": "0123456789abcdef"}'  # ~ a small control message
BLOCKS = 5


KINDS = ("reqrep", "routerdealer", "routerdealer_ipc")


def serve(kind: str) -> None:
    """Echo server (child process): REP, or ROUTER echoing [identity, payload]; TCP or IPC."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP if kind == "reqrep" else zmq.ROUTER)
    sock.linger = 0
    ipc_dir = None
    if kind.endswith("_ipc"):
        ipc_dir = tempfile.mkdtemp(prefix="bench-echo-")
        url = f"ipc://{os.path.join(ipc_dir, 'echo')}"
        sock.bind(url)
    else:
        url = f"tcp://{common.LOOPBACK}:{sock.bind_to_random_port(f'tcp://{common.LOOPBACK}')}"
    print(f"READY {url}", flush=True)
    try:
        while True:
            frames = sock.recv_multipart()
            sock.send_multipart(frames)
            if frames[-1] == b"STOP":
                return
    finally:
        sock.close()
        ctx.term()
        if ipc_dir:
            shutil.rmtree(ipc_dir, ignore_errors=True)


class EchoPeer:
    """Client side of one echo server: one round trip per call (``module --serve kind`` runs the server)."""

    module = "benchmarks.baseline_reqrep"
    payload = PAYLOAD

    def __init__(self, ctx: zmq.Context, kind: str) -> None:
        self.kind = kind
        self.proc = common.spawn_python(["-m", self.module, "--serve", kind])
        self.sock = ctx.socket(zmq.REQ if kind == "reqrep" else zmq.DEALER)
        self.sock.linger = 0
        self.sock.rcvtimeo = self.sock.sndtimeo = 5000  # bounded: a dead server raises zmq.Again
        try:
            url = common.read_line(self.proc, 15, "READY ").strip()
        except BaseException:
            self.sock.close()
            common.reap(self.proc)
            raise
        self.sock.connect(url)

    def round_trip(self) -> None:
        self.sock.send(self.payload)
        self.sock.recv()

    def close(self) -> None:
        try:
            self.sock.send(b"STOP")
            self.sock.recv()
        except zmq.ZMQError:
            pass
        self.sock.close()
        common.reap(self.proc)


def time_peers(peers_of: Callable[[zmq.Context], list[EchoPeer]], total: int, blocks: int) -> dict[str, list[float]]:
    """Round-trip samples (seconds) of each peer, by kind, timed in alternating blocks; every peer closed after."""
    ctx = zmq.Context()
    peers: list[EchoPeer] = []
    try:
        peers = peers_of(ctx)
        per_block = max(1, total // blocks)
        timed = common.time_alternating([p.round_trip for p in peers], [per_block] * blocks,
                                        warmup=200, block_warmup=10)  # every peer warm before any timing
        return {peer.kind: times for peer, times in zip(peers, timed)}
    finally:
        for peer in peers:
            peer.close()
        ctx.term()


def measure() -> dict:
    samples = time_peers(lambda ctx: [EchoPeer(ctx, kind) for kind in KINDS], common.scaled(5000, minimum=50), BLOCKS)
    result = common.summarize(samples["reqrep"], "us", 1e6)  # the judged baseline
    result["payload_bytes"] = len(PAYLOAD)
    result["router_dealer"] = common.summarize(samples["routerdealer"], "us", 1e6)
    result["router_dealer_ipc"] = common.summarize(samples["routerdealer_ipc"], "us", 1e6)
    return result


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve(sys.argv[sys.argv.index("--serve") + 1])
    else:
        common.child_main(measure)
