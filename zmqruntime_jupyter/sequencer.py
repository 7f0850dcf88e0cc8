"""Sequence numbers on the notebook side: events applied in order, gaps noticed.

Every data-channel event carries a per-execution ``seq``. :class:`EventSequencer`
hands events to ``apply`` strictly in order and drops duplicates (the stream
and a pump may both deliver one). A missing seq is a gap: newer events are
buffered and ``repair`` is asked for a ``status`` snapshot; once the owner has
adopted it (:meth:`adopt`), :meth:`repaired` replays the buffer. Progress
events the stream skipped on purpose (superseded by a newer one, verified, see
:mod:`.stream`) are announced with :meth:`skipped` and are not gaps.
"""

from __future__ import annotations

import logging
from typing import Callable

from zmqruntime.execution.client import Event

log = logging.getLogger("zmqruntime.jupyter")

#: Events buffered while a gap is repaired (and skipped seqs remembered).
MAX_BUFFERED = 50_000


class EventSequencer:
    """Orders one execution's events; see the module docstring."""

    def __init__(self, apply: Callable[[Event], None], repair: Callable[[], None], label: str = ""):
        self._apply = apply
        self._repair = repair
        self.label = label
        self.seq = 0
        self.repairing = False
        self.gaps = 0  # sequence gaps seen (each one a status request)
        self.stopped = False
        self._buffer: list[Event] = []
        self._skipped: set[int] = set()  # seqs (> seq) of progress events skipped on purpose

    @property
    def skipped_pending(self) -> int:
        """How many skipped seqs are remembered (not yet covered by an applied event)."""
        return len(self._skipped)

    def skipped(self, seqs: list[int]) -> None:
        """These verified progress events were superseded in their batch: not gaps."""
        if self.stopped:
            return
        if len(self._skipped) + len(seqs) > MAX_BUFFERED:
            self._skipped.clear()  # nothing applied for that long: a gap, if any, recovers from status
        floor = self.seq
        self._skipped.update(s for s in seqs if s > floor)

    def offer(self, event: Event) -> None:
        """Apply ``event`` if it is next, buffer it during a repair, or start a repair."""
        if self.stopped or event.seq <= self.seq:
            return
        if self.repairing:
            if len(self._buffer) < MAX_BUFFERED:
                self._buffer.append(event)
            return
        if event.seq > self.seq + 1 and not all(s in self._skipped for s in range(self.seq + 1, event.seq)):
            log.debug("execution %s: missed event(s) before seq %d; recovering from status", self.label, event.seq)
            self.gaps += 1
            self._buffer = [event]
            self.hold()
            self._repair()
            return
        self._forget_skipped(event.seq)
        self.seq = event.seq
        self._apply(event)

    def hold(self) -> None:
        """Buffer events until :meth:`repaired` (a status request is on its way)."""
        self.repairing = True

    def adopt(self, seq: int) -> bool:
        """A status snapshot covers everything up to ``seq``; True if that is news."""
        if seq <= self.seq or self.stopped:
            return False
        self._forget_skipped(seq)
        self.seq = seq
        return True

    def repaired(self) -> None:
        """The snapshot is adopted: replay buffered events newer than it."""
        self.repairing = False
        buffered, self._buffer = sorted(self._buffer, key=lambda e: e.seq), []
        for event in buffered:
            self.offer(event)

    def repair_failed(self) -> None:
        self.repairing = bool(self._buffer)

    def stop(self) -> None:
        """Final state reached: nothing more is applied or buffered."""
        self.stopped = True
        self.repairing = False
        self._buffer = []
        self._skipped = set()

    def _forget_skipped(self, upto: int) -> None:
        if self._skipped:
            if upto - self.seq <= len(self._skipped):
                for s in range(self.seq + 1, upto + 1):
                    self._skipped.discard(s)
            else:
                self._skipped = {s for s in self._skipped if s > upto}
