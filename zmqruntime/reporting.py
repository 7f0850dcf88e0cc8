"""Progress reporting from inside a task (exported as ``zmqruntime.progress``): ``progress(iterable)`` and ``Reporter``.

Inside a zmqruntime worker, reports become ``progress`` events on the data
channel. Calls are cheap: the clock is read only every few iterations and a
report is sent at most every ``min_interval`` seconds; the final state is
always sent. Outside a worker (plain Python) nothing is sent and the
iterable is passed through unchanged, so task code runs anywhere.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")

#: Installed by the worker while a task runs: ``sink(done, total, desc, rate, elapsed)``.
_sink: Optional[Callable[[float, Optional[float], str, float, float], None]] = None

DEFAULT_MIN_INTERVAL = 0.1


def _set_sink(sink: Optional[Callable[..., None]]) -> None:
    global _sink
    _sink = sink


class sink:
    """Reports go to ``fn`` inside the block (a backend's runner installs it around a task; a class,
    not ``contextlib.contextmanager``, which costs about a microsecond more per task)."""

    def __init__(self, fn: Callable[..., None]):
        self.fn = fn

    def __enter__(self) -> None:
        _set_sink(self.fn)

    def __exit__(self, *exc: Any) -> None:
        _set_sink(None)


class Reporter:
    """Lower-level progress: call ``update(n)`` / ``set(done)``, then ``close()``.

    >>> r = Reporter(total=100, desc="loading")
    >>> for chunk in chunks: r.update(len(chunk))
    >>> r.close()
    """

    def __init__(self, total: Optional[float] = None, desc: str = "", min_interval: float = DEFAULT_MIN_INTERVAL):
        if total is not None and (isinstance(total, bool) or not isinstance(total, (int, float)) or total < 0):
            raise ValueError(f"total must be a non-negative number or None, got {total!r}")
        if not isinstance(desc, str):
            raise TypeError(f"desc must be a string, got {type(desc).__name__}")
        if isinstance(min_interval, bool) or not isinstance(min_interval, (int, float)) or min_interval < 0:
            raise ValueError(f"min_interval must be a non-negative number, got {min_interval!r}")
        self.total = total
        self.desc = desc
        self.done: float = 0
        self.min_interval = float(min_interval)
        self.start = time.monotonic()
        self._last_sent = -1.0
        self._closed = False
        self._send()

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def update(self, n: float = 1) -> None:
        self.done += n
        self._maybe_send()

    def set(self, done: float, total: Optional[float] = None, desc: Optional[str] = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if desc is not None:
            self.desc = desc
        self._maybe_send()

    def _maybe_send(self) -> None:
        if _sink is not None and time.monotonic() - self._last_sent >= self.min_interval:
            self._send()

    def _send(self) -> None:
        sink = _sink
        if sink is None:
            return
        now = time.monotonic()
        self._last_sent = now
        elapsed = now - self.start
        sink(self.done, self.total, self.desc, self.done / elapsed if elapsed > 0 else 0.0, elapsed)

    def close(self) -> None:
        """Send the final state (always, regardless of throttling)."""
        if not self._closed:
            self._closed = True
            self._send()

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(
    iterable: Iterable[T],
    total: Optional[float] = None,
    desc: str = "",
    min_interval: float = DEFAULT_MIN_INTERVAL,
) -> Iterator[T]:
    """Yield from ``iterable``, reporting progress (tqdm-like).

    ``total`` defaults to ``len(iterable)`` when it has one.
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except (TypeError, AttributeError):
            total = None
    if _sink is None:
        # Not in a worker: validate arguments the same way, then pass through.
        Reporter(total, desc, min_interval)
        yield from iterable
        return
    yield from _progress_loop(iter(iterable), Reporter(total, desc, min_interval))


def _progress_loop(it: Iterator[T], reporter: Reporter) -> Iterator[T]:
    """The hot loop: read the clock only every ``stride`` items.

    ``stride`` adapts so the clock is read roughly every millisecond-scale
    chunk, keeping the per-item cost near a bare generator's.
    """
    monotonic = time.monotonic
    interval = reporter.min_interval
    stride = 1
    count = 0
    since_check = 0
    last_check = monotonic()
    try:
        for item in it:
            yield item
            count += 1
            since_check += 1
            if since_check >= stride:
                now = monotonic()
                if now - last_check < interval / 8 and stride < 1 << 16:
                    stride <<= 1
                elif now - last_check > interval and stride > 1:
                    stride >>= 1
                since_check = 0
                last_check = now
                if now - reporter._last_sent >= interval:
                    reporter.done = count
                    reporter._send()
    finally:
        reporter.done = count
        reporter.close()
