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
takes the CPU from the one that has the work. So the worker never spins,
and the blocking client (``ZMQClient``) only for the reply to a request that
starts no work (``ping``, ``status``, ``list``, ``sessions``, ``results``), in
a process with no other Python thread (the spin holds the GIL):
``ping`` 99-106 µs sleeping, 85-93 µs spinning up to 1 ms, alternating on
one server, while a no-op ``run()`` (whose ``execute`` does not spin) did
not move (379 µs either way; with ``execute`` spinning too it was 440-516).

A spin pays only when the next message comes soon: a client waiting on its
reply sends the next request within a fraction of a millisecond, but a
worker's progress and output arrive every 5-50 ms while its task holds a
core, and a 2 ms spin after each of those takes CPU from that task.
:class:`SpinBudget` spins the full ``busy_poll`` while messages come back to
back and halves the spin after each longer gap, down to none. Measured: a
task printing a line per iteration cost the server 59.5 % of a core with a
fixed 2 ms spin, 15.2 % with this one; ping, no-op ``run()`` and pipelined
no-ops did not move.

Readiness is asked with ``zmq_poll`` and no wait (:func:`readable`, and one
call over all the sockets in the spin), never ``getsockopt(zmq.EVENTS)``.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence, Sized

import zmq

POLLIN = int(zmq.POLLIN)
_poll = zmq.zmq_poll


def readable(sock: zmq.Socket) -> bool:
    """Whether ``sock`` has a message now. ``zmq_poll`` with no wait: 0.66 µs against 0.93 for
    ``getsockopt(zmq.EVENTS)``, which turns the option number into an enum on every call."""
    return bool(_poll([(sock, POLLIN)], 0))


def spin_until_readable(socks: Sequence[zmq.Socket], spin: float, from_threads: Sized = ()
                        ) -> Optional[list[tuple[zmq.Socket, int]]]:
    """As soon as some of ``socks`` have a message, those (``(socket, POLLIN)`` pairs, as
    ``Poller.poll`` gives them, so the caller reads them without polling again); ``[]`` as
    soon as ``from_threads`` (callbacks queued by other threads) is not empty; None after
    ``spin`` seconds.

    The spin holds the GIL, so a server whose backend runs threads of its own in the
    process (a dask client's event loop) does not spin (``ExecutionBackend.runs_threads``):
    those threads waited out whole spins for it. Dropping the GIL every turn instead
    (``time.sleep(0)``) cost a local no-op 0.56 -> 0.82 ms: each such sleep is a system
    call that yields the CPU.
    """
    if spin <= 0:
        return None
    end = time.perf_counter() + spin
    items = [(s, POLLIN) for s in socks]  # one zmq_poll for all: 1.3 µs for three, 2.8 asked one by one
    while True:
        if from_threads:  # first: under a steady stream of messages they would wait
            return []
        ready = _poll(items, 0)
        if ready:
            return ready
        if time.perf_counter() >= end:
            return None


class SpinBudget:
    """How long the next spin may last: ``limit`` while messages come back to back, halved
    after each message that came later than ``limit / 4`` after the last (caught by the spin
    or not), and none once below ``limit / 16``; the next back-to-back message restores it."""

    def __init__(self, limit: float):
        self.limit = max(0.0, limit)
        self.seconds = self.limit
        self._soon = self.limit / 4
        self._idle_since: Optional[float] = None  # when the server last finished serving

    def idle(self) -> None:
        """The server has served what it had and is about to spin or sleep."""
        self._idle_since = time.perf_counter()

    def woke(self) -> None:
        """A message is ready: judge the gap since :meth:`idle` (once per idle period)."""
        if self._idle_since is not None:
            self.observe(time.perf_counter() - self._idle_since)
            self._idle_since = None

    def observe(self, gap: float) -> None:
        """A message came ``gap`` seconds after the server had last served one."""
        if gap <= self._soon:
            self.seconds = self.limit
        elif self.seconds:
            half = self.seconds / 2
            self.seconds = half if half >= self.limit / 16 else 0.0
