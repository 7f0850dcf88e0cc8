"""Replay protection for the control channel: a captured request runs once.

A signature proves who wrote a message, not that it is new: anyone who can
see the traffic could send a captured ``execute`` again. The server
therefore rejects a correctly signed request when

* its signature was already seen (a history like jupyter_client's
  ``Session.digest_history``), or
* its header ``date`` is more than ``max_clock_skew`` seconds away from the
  server's clock, so a request older than the history cannot come back.

Why both, and why the history is kept for ``2 × max_clock_skew``: a request
first accepted at server time ``t1`` has ``|date − t1| ≤ S``; replayed at
``t2`` it passes the date check only if ``t2 ≤ date + S ≤ t1 + 2S``, and
until then its signature is still in the history. So no replay is accepted,
while a client whose clock is off by up to ``S`` works normally. The
history ages on the *monotonic* clock (wall-clock steps on the server do not
shorten it); only the date check compares clocks.

Memory is bounded: two generations of 128-bit signature prefixes, rotated
every ``2S`` (so each entry lives between ``2S`` and ``4S``), and at most
``max_entries`` in all (half per generation). A flood larger than that
rotates early; the
entries dropped before their time are counted (``early_evictions``) and
logged, since for them only the date check remains.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from .protocol import ProtocolError

log = logging.getLogger("zmqruntime.server")

DEFAULT_MAX_CLOCK_SKEW = 120.0
DEFAULT_MAX_ENTRIES = 500_000


def header_time(header: dict[str, Any]) -> Optional[float]:
    """The header's ``date`` as epoch seconds, or None when absent or unreadable.

    ISO 8601; a trailing ``Z`` and a missing offset both mean UTC.
    """
    date = header.get("date")
    if not isinstance(date, str) or not 10 <= len(date) <= 64:
        return None
    if date.endswith(("Z", "z")):
        date = date[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(date)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


class ReplayGuard:
    """Accepts each signed request once, and only while its date is fresh.

    ``max_clock_skew = 0`` turns the date check off (the history alone then
    guards, for as long as it holds an entry). ``clock`` and ``monotonic``
    are there for tests of the bookkeeping only.
    """

    def __init__(self, max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic):
        if not (isinstance(max_clock_skew, (int, float)) and math.isfinite(max_clock_skew) and max_clock_skew >= 0):
            raise ValueError(f"max_clock_skew must be a finite number >= 0, got {max_clock_skew!r}")
        if max_entries < 2:
            raise ValueError(f"max_entries must be at least 2, got {max_entries!r}")
        self.max_clock_skew = float(max_clock_skew)
        self.max_entries = max_entries
        self.retention = 2 * self.max_clock_skew if self.max_clock_skew else math.inf
        self._clock = clock
        self._monotonic = monotonic
        self._current: set[int] = set()
        self._previous: set[int] = set()
        self._rotated = monotonic()
        self.rejected_replays = 0
        self.rejected_stale = 0
        self.early_evictions = 0
        self._last_warning = -math.inf

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def check(self, signature: bytes, header: dict[str, Any]) -> None:
        """Record a verified request, or raise ProtocolError if it must not run.

        Codes: ``stale_message`` (``date`` missing, unreadable or too far from
        the server's clock) and ``replayed_message`` (signature already seen).
        """
        msg_id = header.get("msg_id") if isinstance(header.get("msg_id"), str) else None
        if self.max_clock_skew:
            sent = header_time(header)
            if sent is None:
                self.rejected_stale += 1
                raise ProtocolError("stale_message", "header 'date' must be an ISO 8601 time (replay protection "
                                    "needs it)", msg_id)
            skew = sent - self._clock()
            if abs(skew) > self.max_clock_skew:
                self.rejected_stale += 1
                raise ProtocolError(
                    "stale_message",
                    f"header 'date' is {skew:+.1f} s from the server's clock, more than max_clock_skew="
                    f"{self.max_clock_skew:g} s: a replayed old request, or a client clock that needs fixing",
                    msg_id)
        key = int(signature[:32], 16)  # 128 bits of the HMAC: ample to tell requests apart
        if key in self._current or key in self._previous:
            self.rejected_replays += 1
            raise ProtocolError("replayed_message", "this exact signed message was already received; "
                                "a request is accepted once (send a new one with a fresh msg_id)", msg_id)
        self._age()
        self._current.add(key)

    def _age(self) -> None:
        now = self._monotonic()
        if now - self._rotated >= self.retention:
            self._rotate(now, early=False)
        elif len(self._current) >= self.max_entries // 2:
            self._rotate(now, early=True)

    def _rotate(self, now: float, early: bool) -> None:
        if early:
            self.early_evictions += len(self._previous)
            if now - self._last_warning > 60:
                self._last_warning = now
                log.warning("replay history full (%d entries): %d signatures forgotten early; the date check "
                            "still refuses them after max_clock_skew", self.max_entries, len(self._previous))
        self._previous, self._current = self._current, set()
        self._rotated = now
