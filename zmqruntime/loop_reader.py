"""LoopReader: a plain zmq socket drained by the running asyncio loop.

Why not ``zmq.asyncio``: its sockets make a future, a poller registration
and a handful of flag-enum conversions for every ``recv``, which measured
as the largest share of the asyncio client's CPU per no-op execution (about
90 enum conversions and 2 futures per task when 2,000 are pipelined). Here
the socket's file descriptor is registered once with ``loop.add_reader``
and one callback reads every message that is ready.

libzmq's descriptor is edge-triggered and a ``send`` on the socket may
consume the edge of a message that arrived meanwhile, so :meth:`poke` must
be called after sending: it drains on the next loop turn.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import zmq

from .frames import recv_frames
from .polling import readable

log = logging.getLogger("zmqruntime.client")

#: Messages read per loop turn before yielding to other callbacks (the rest on the next turn).
MESSAGES_PER_TURN = 256


class LoopReader:
    """Call ``on_message(frames)`` on the loop for every message ``sock`` receives."""

    def __init__(self, sock: zmq.Socket, on_message: Callable[[list[Any]], None], *, copy: bool = False):
        self.sock = sock
        self.on_message = on_message
        self.copy = copy
        self.loop = asyncio.get_running_loop()
        self.fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]  # an int for FD
        self._scheduled = False
        self.loop.add_reader(self.fd, self.drain)
        self.poke()  # a message may be waiting already (the edge came before we registered)

    def poke(self) -> None:
        """Drain on the next loop turn (after a send, or when the edge may have been missed)."""
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._drain_soon)

    def _drain_soon(self) -> None:
        self._scheduled = False
        self.drain()

    def drain(self) -> None:
        sock = self.sock
        for _ in range(MESSAGES_PER_TURN):
            if sock.closed or not readable(sock):
                return
            frames = recv_frames(sock, zmq.NOBLOCK, copy=self.copy)
            try:
                self.on_message(frames)
            except Exception:  # one bad message must not stop the reading
                log.exception("error handling a message")
        self.poke()  # more are waiting: let other callbacks run first

    def detach(self) -> None:
        """Stop reading on this loop (nothing to undo on a closed one); the socket stays open."""
        if not self.loop.is_closed():
            self.loop.remove_reader(self.fd)

    def close(self) -> None:
        """Stop reading and close the socket (LINGER 0)."""
        self.detach()
        self.sock.close(linger=0)

    def on_current_loop(self) -> bool:
        """Whether the running loop is the one this reader serves (a client may outlive an ``asyncio.run``)."""
        return self.loop is asyncio.get_running_loop()


async def send_when_possible(sock: zmq.Socket, frames: list[Any], send: Callable[..., None],
                             until: asyncio.Future[Any]) -> None:
    """``send(sock, frames, NOBLOCK)``, retried while libzmq says "not now" (no connected
    peer under IMMEDIATE, or the high-water mark) and ``until`` is not done (its timer)."""
    delay = 0.0002
    while not until.done():
        try:
            send(sock, frames, zmq.NOBLOCK)
            return
        except zmq.Again:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
