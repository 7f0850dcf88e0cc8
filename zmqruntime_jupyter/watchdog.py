"""Status polls of one handle: when the stream went quiet (the watchdog), and after a gap.

A ``done`` published before our subscription took effect, or lost, must never
leave a panel spinning. The first poll comes soon after following starts,
then the delay doubles up to the silence limit; any event pushes the next
poll to the silence limit. One instance per handle, driven by the handle's
``tick`` from the connection's timer or from a pump (the same code in both).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator, Optional

WATCH_FIRST = 0.05
WATCH_SILENCE = 2.0


class Watchdog:
    def __init__(self, first: float = WATCH_FIRST, silence: float = WATCH_SILENCE):
        self.first = first
        self.silence = silence
        self.restart()

    def restart(self) -> None:
        """Start over (following begins, or begins again after a re-attach)."""
        self.delay = self.first
        self.next = time.monotonic() + self.first

    def heard(self) -> None:
        """An event arrived: the stream is alive."""
        self.delay = self.first
        self.next = time.monotonic() + self.silence

    def due(self, now: float) -> bool:
        return now >= self.next

    def fired(self) -> None:
        """A poll is being made: back off the next one."""
        self.delay = min(self.delay * 2, self.silence)
        self.next = time.monotonic() + self.delay

    def retry_later(self) -> None:
        """The poll failed (server unreachable): try again in a while."""
        self.next = time.monotonic() + max(self.delay, 1.0)

    def seconds_left(self, now: float) -> float:
        return self.next - now


class StatusPoller:
    """Asks the server for a handle's ``status``: after a sequence gap, or when the watchdog is due.

    On the kernel's loop one request at a time runs in the background and its
    answer is adopted back on the loop (``handle.recovered``). While a pump
    follows the handle (a cell waits, :meth:`pumping`) polls are synchronous
    instead, so their errors reach the waiting cell; a background request in
    flight could not land during a pump anyway (the loop is not running).
    """

    def __init__(self, handle: Any):
        self.handle = handle  # uses: id, final, connection, sequencer, recovered(), recovery_failed()
        self.watchdog = Watchdog()
        self.inflight = False
        self.pumps = 0

    @contextlib.contextmanager
    def pumping(self) -> Iterator[None]:
        self.pumps += 1
        try:
            yield
        finally:
            self.pumps -= 1

    def gap(self) -> None:
        """The sequencer saw a gap: ask now (a pump asks on its next tick)."""
        if not self.pumps:
            self.request()

    def request(self) -> None:
        """One background ``status`` request; events wait in the sequencer until it is adopted."""
        handle = self.handle
        handle.sequencer.hold()
        conn = handle.connection
        if self.inflight or conn is None or conn.closed:
            return
        self.inflight = True

        def done(status: Optional[dict], error: Optional[BaseException]) -> None:
            self.inflight = False
            if error is not None:
                handle.recovery_failed(error)
            else:
                handle.recovered(status or {})

        conn.call_in_background(lambda: conn.client.get_status(handle.id), done)

    def due(self, now: float) -> bool:
        if self.handle.final:
            return False
        if self.pumps:
            return self.watchdog.due(now) or self.handle.sequencer.repairing
        return not self.inflight and self.watchdog.due(now)

    def tick(self, now: float) -> None:
        """Poll if due: synchronously in a pump, else in the background."""
        if self.due(now):
            self.watchdog.fired()
            if self.pumps:
                handle = self.handle
                handle.recovered(handle.connection.client.get_status(handle.id))
            else:
                self.request()
