"""When to ask the server for a ``status`` because the stream went quiet.

A ``done`` published before our subscription took effect, or lost, must never
leave a panel spinning. The first poll comes soon after following starts,
then the delay doubles up to the silence limit; any event pushes the next
poll to the silence limit. One instance per handle, driven by the handle's
``tick`` from the connection's timer or from a pump (the same code in both).
"""

from __future__ import annotations

import time

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
