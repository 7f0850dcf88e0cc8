"""Busy-poll briefly before blocking: lower latency for a little CPU.

A Python process that sleeps in ``epoll`` between messages wakes slowly on
this class of machine: right after a wake-up the same request handling
costs several times what it costs in a tight loop. So the server, once it
has served something, checks its sockets in a tight loop for a short while
(``ZMQServer.busy_poll``, default 2 ms) before it blocks again; an idle
server spins once and then sleeps.

Measured on the 2-core reference machine (medians, same runs): no-op
``run()`` 1.21-1.23 ms without, 0.94-1.17 ms with the server spinning; ping
382-430 µs without, 284-378 µs with. Spinning in the client and the worker
as well made things *worse* (1.3-4.6 ms): on two cores a spinning process
takes the CPU from the one that has the work. So only the server spins.
"""

from __future__ import annotations

import time
from typing import Sequence, Sized

import zmq

POLLIN = int(zmq.POLLIN)
EVENTS = int(zmq.EVENTS)  # a plain int: the enum costs ~1 us per getsockopt


def spin_until_readable(socks: Sequence[zmq.Socket], spin: float, from_threads: Sized = ()) -> bool:
    """True as soon as one of ``socks`` has a message or ``from_threads`` (callbacks queued
    by other threads) is not empty, False after ``spin`` seconds.

    The spin holds the GIL, so a server whose backend runs threads of its own in the
    process (a dask client's event loop) does not spin (``ExecutionBackend.runs_threads``):
    those threads waited out whole spins for it. Dropping the GIL every turn instead
    (``time.sleep(0)``) cost a local no-op 0.56 -> 0.82 ms: each such sleep is a system
    call that yields the CPU.
    """
    if spin <= 0:
        return False
    end = time.perf_counter() + spin
    getters = [s.getsockopt for s in socks]
    events = EVENTS
    while True:
        for get in getters:
            if int(get(events)) & POLLIN:
                return True
        if from_threads:
            return True
        if time.perf_counter() >= end:
            return False
