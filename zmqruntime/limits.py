"""Bounds on what an unauthenticated peer can make the server do.

Before a message's signature is checked, nothing about it is trusted, so the
work it may cost is capped: each frame by libzmq's ``MAXMSGSIZE`` (the peer
is disconnected), the frame count and total size by :func:`recv_bounded`
(counted while the frames are received, before a single byte is hashed).
Log lines about dropped input go through :class:`RateLimitedLog`, so a flood
cannot fill the disk. :func:`raise_fd_limit` and :class:`FdReserve` keep a
burst of idle connections from leaving the server without the descriptors
it needs to respawn a worker.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from typing import Any, Callable, TypeVar

import zmq

from .frames import drop_rest, recv_frame

#: The soft RLIMIT_NOFILE is raised to the hard limit, but not beyond this.
FD_LIMIT_CAP = 1 << 16

T = TypeVar("T")


def recv_bounded(sock: zmq.Socket, max_frames: int, max_bytes: int, flags: int = 0) -> tuple[list[Any], int, bool]:
    """One multipart message (zero-copy frames), its bytes so far, and whether it is complete.

    A message with more than ``max_frames`` frames or ``max_bytes`` bytes is
    cut short (False): the frames before the limit are returned, and the one
    that crossed the byte limit (already in memory: its head may name the
    request to refuse); the rest are received and discarded unread, so the
    socket stays in step. ``flags`` apply to the first frame (``zmq.NOBLOCK``:
    ``zmq.Again`` when there is no message); the others are there once it is.
    """
    frames: list[Any] = []
    size = 0
    frame = recv_frame(sock, flags)
    while True:
        size += len(frame)
        if len(frames) >= max_frames or size > max_bytes:
            if size > max_bytes:
                frames.append(frame)
            drop_rest(sock, frame)
            return frames, size, False
        frames.append(frame)
        if not frame.more:
            return frames, size, True
        frame = recv_frame(sock)


class RateLimitedLog:
    """At most ``burst`` lines per ``interval`` seconds; the rest are counted and
    summed up in one line when the next window opens."""

    def __init__(self, logger: logging.Logger, burst: int = 100, interval: float = 10.0):
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self.total = 0  # every call, logged or not
        self._window = time.monotonic()
        self._logged = 0
        self._suppressed = 0

    def warning(self, msg: str, *args: Any) -> None:
        self.total += 1
        now = time.monotonic()
        if now - self._window >= self.interval:
            self.flush()
        if self._logged < self.burst:
            self._logged += 1
            self.logger.warning(msg, *args)
        else:
            self._suppressed += 1

    def flush(self) -> None:
        """End the window: log how many lines were left out of it, if any, and open a new one."""
        now = time.monotonic()
        if self._suppressed:
            self.logger.warning("%d more messages like the above were not logged in the last %.0f s "
                                "(%d in total since start)", self._suppressed, now - self._window, self.total)
        self._window, self._logged, self._suppressed = now, 0, 0


def raise_fd_limit(cap: int = FD_LIMIT_CAP) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards the hard limit (up to ``cap``); the (old, new) soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return soft, target
        except (ValueError, OSError):
            pass
    return soft, soft


def is_fd_exhaustion(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)


class FdReserve:
    """A few descriptors held back (``/dev/null``), given up when the process
    runs out so that what must not fail (a worker respawn) still gets some."""

    def __init__(self, count: int = 16):
        self.count = count
        self._fds: list[int] = []
        self.refill()

    def refill(self) -> None:
        while len(self._fds) < self.count:
            try:
                self._fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return

    def release(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)

    def run(self, action: Callable[[], T]) -> T:
        """``action()``; on EMFILE/ENFILE, once more with the reserve given up."""
        try:
            return action()
        except OSError as exc:
            if not is_fd_exhaustion(exc) or not self._fds:
                raise
        self.release()
        try:
            return action()
        finally:
            self.refill()

    def close(self) -> None:
        self.release()
        self.count = 0
