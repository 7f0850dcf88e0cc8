"""Baseline: the transport floor of a no-op -- a round trip relayed through a second process.

Why: a no-op ``execute`` goes client -> server -> worker -> server -> client, four
hops, where a ``ping`` goes two. Its floor on this machine is that relay done in
raw pyzmq with nothing else: the client a DEALER, the server a ROUTER bound on
IPC that busy-polls for 2 ms after serving (as zmqruntime's does), the worker a
blocking echo. zmqruntime's no-op is shown as a ratio to it, so what is ours
(the Python of four processes' worth of handling) and what is ZeroMQ's (the
hops) can be told apart.

Two links between the relay and its worker are measured side by side:

* ``zmq``: the worker binds a DEALER on IPC and the relay's ROUTER connects
  (zmqruntime's link today). Each ZeroMQ hop passes through both peers' I/O
  threads: the sender's, the kernel socket, the receiver's, then the receiver.
* ``socketpair``: an ``AF_UNIX`` ``SOCK_SEQPACKET`` pair the relay creates and
  the worker inherits; each hop is one ``send`` and one ``recv``, no I/O thread.

The echo servers are processes of their own (``python -m benchmarks.baseline_relay
--serve KIND``); each relay starts its worker and stops it when told ``STOP``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import zmq

from benchmarks import common
from benchmarks.baseline_reqrep import EchoPeer, time_peers

KINDS = ("zmq", "socketpair")
SPIN_S = 0.002  # zmqruntime's ZMQServer.busy_poll default
STOP = b"STOP"


def _worker_zmq(url: str) -> None:
    """Echo on a DEALER bound at ``url`` (the relay's ROUTER connects)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.setsockopt(zmq.IDENTITY, b"w")
    sock.bind(url)
    while True:
        frames = sock.recv_multipart()
        if frames[-1] == STOP:
            break
        sock.send_multipart(frames)
    sock.close()
    ctx.term()


def _worker_socketpair(fd: int) -> None:
    """Echo on an inherited SOCK_SEQPACKET end (one datagram per message)."""
    sock = socket.socket(fileno=fd)
    while True:
        msg = sock.recv(1 << 16)
        if not msg or msg == STOP:
            break
        sock.sendall(msg)
    sock.close()


def serve(kind: str) -> None:
    """Relay (child process): clients' requests to a worker of its own and back, busy-polling after each."""
    ipc_dir = tempfile.mkdtemp(prefix="bench-relay-")
    ctx = zmq.Context()
    front = ctx.socket(zmq.ROUTER)
    front.linger = 0
    url = f"ipc://{os.path.join(ipc_dir, 'front')}"
    front.bind(url)
    worker_url = f"ipc://{os.path.join(ipc_dir, 'worker')}"
    own_end = None
    if kind == "zmq":
        worker = subprocess.Popen([sys.executable, "-m", "benchmarks.baseline_relay", "--worker-url", worker_url])
        link = ctx.socket(zmq.ROUTER)
        link.linger = 0
        link.router_mandatory = True  # a send before the worker is connected raises, not drops
        link.rcvtimeo = 10000
        link.connect(worker_url)
        link_item: object = link
    else:
        own_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        worker = subprocess.Popen([sys.executable, "-m", "benchmarks.baseline_relay", "--worker-fd",
                                   str(child_end.fileno())], pass_fds=[child_end.fileno()])
        child_end.close()
        link_item = own_end.fileno()
    items = [(front, zmq.POLLIN), (link_item, zmq.POLLIN)]
    if kind == "zmq":  # the ROUTER learns the worker's routing id when it connects: wait for that
        deadline = time.monotonic() + 10
        while True:
            try:
                link.send_multipart([b"w", b"M", b"hello"], flags=zmq.NOBLOCK)
                link.recv_multipart()
                break
            except zmq.ZMQError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
    print(f"READY {url}", flush=True)
    client = b""
    served = False
    try:
        while True:
            ready = []
            if served:  # spin first, as zmqruntime's server does after serving
                end = time.perf_counter() + SPIN_S
                while not ready and time.perf_counter() < end:
                    ready = zmq.zmq_poll(items, 0)
            if not ready:
                ready = zmq.zmq_poll(items, 1000)
            served = bool(ready)
            for item, _ in ready:
                if item is front:
                    client, payload = front.recv_multipart()
                    if payload == STOP:
                        front.send_multipart([client, payload])
                        return
                    if kind == "zmq":
                        link.send_multipart([b"w", b"M", payload])
                    else:
                        assert own_end is not None
                        own_end.send(payload)
                else:
                    payload = link.recv_multipart()[-1] if kind == "zmq" else own_end.recv(1 << 16)  # type: ignore[union-attr]
                    front.send_multipart([client, payload])
    finally:
        try:
            if kind == "zmq":
                link.send_multipart([b"w", STOP])
            else:
                own_end.send(STOP)  # type: ignore[union-attr]
            worker.wait(5)
        except (zmq.ZMQError, OSError, subprocess.TimeoutExpired):
            worker.kill()
            worker.wait(5)
        front.close()
        if kind == "zmq":
            link.close()
        ctx.term()
        shutil.rmtree(ipc_dir, ignore_errors=True)


class RelayPeer(EchoPeer):
    """Client side of one relay: one relayed round trip per call."""

    module = "benchmarks.baseline_relay"
    payload = b'{"type": "run", "id": "0123456789abcdef"}'

    def close(self) -> None:
        try:
            self.sock.send(STOP)
            self.sock.recv()
            self.proc.wait(10)  # it stops its worker and removes its IPC directory
        except (zmq.ZMQError, subprocess.TimeoutExpired):
            pass
        self.sock.close()
        common.reap(self.proc)


def measure() -> dict:
    samples = time_peers(lambda ctx: [RelayPeer(ctx, kind) for kind in KINDS], common.scaled(3000, minimum=50), 6)
    return {kind: common.summarize(times, "us", 1e6) for kind, times in samples.items()}


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve(sys.argv[sys.argv.index("--serve") + 1])
    elif "--worker-url" in sys.argv:
        _worker_zmq(sys.argv[sys.argv.index("--worker-url") + 1])
    elif "--worker-fd" in sys.argv:
        _worker_socketpair(int(sys.argv[sys.argv.index("--worker-fd") + 1]))
    else:
        common.child_main(measure)
