"""Data-channel events as the clients see them: verified, batches expanded, gaps counted.

Decoding the wire shapes (topics, batch rows) is protocol.py's business; this
module turns verified messages into :class:`Event` objects and numbers them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from ..protocol import ProtocolError, Session, done_batch_outcomes, progress_batch_events

log = logging.getLogger("zmqruntime.client")


@dataclass
class Event:
    """One verified data-channel event.

    ``missed`` counts the events of this execution that this subscriber did
    not see before this one (a sequence gap); call ``get_status`` to recover
    the full state when it is non-zero.
    """

    type: str
    execution_id: str
    seq: int
    content: dict[str, Any] = field(default_factory=dict)
    missed: int = 0
    buffers: list[Any] = field(default_factory=list)  # inline results of a 'done' event

    def __getitem__(self, key: str) -> Any:
        return self.content[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.content.get(key, default)


def parse_event(session: Session, frames: Sequence[Any]) -> Optional[Event]:
    """One verified data-channel message as an Event (a ``progress_batch`` stays whole)."""
    try:
        msg = session.deserialize(frames, topic_frames=1)
    except ProtocolError:
        log.warning("dropped a data-channel message that failed verification")
        return None
    c = msg.content
    return Event(msg.msg_type, c.get("execution_id", ""), int(c.get("seq", 0)), c, buffers=msg.buffers)


def parse_events(session: Session, frames: Sequence[Any]) -> list[Event]:
    """The events of one verified data-channel message: a ``progress_batch``
    becomes its progress events, in order; a ``done_batch`` none (whoever
    receives it also receives each execution's ``done``); anything else is one event."""
    event = parse_event(session, frames)
    if event is None or event.type == "done_batch":  # repeats 'done' events, for the waiters of one session
        return []
    if event.type != "progress_batch":
        return [event]
    try:
        return expand_progress_batch(event)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("dropped a malformed progress_batch of %s: %s", event.execution_id, exc)
        return []


def done_events(event: Optional[Event]) -> list[Event]:
    """The 'done' events a verified message stands for: itself, or a ``done_batch``'s, in order."""
    if event is None:
        return []
    if event.type == "done":
        return [event]
    if event.type != "done_batch":
        return []
    try:
        outcomes = done_batch_outcomes(event.content, event.buffers)
    except ValueError as exc:
        log.warning("dropped a malformed done_batch: %s", exc)
        return []
    return [Event("done", c["execution_id"], int(c.get("seq", 0)), c, buffers=b) for c, b in outcomes]


def expand_progress_batch(batch: Event) -> list[Event]:
    """``progress_batch`` -> one ``progress`` Event per row (rows decoded by protocol.py)."""
    return [Event("progress", batch.execution_id, content["seq"], content)
            for content in progress_batch_events(batch.content)]


class SequenceTracker:
    """Per-execution last seen seq → how many events were missed, and which are old news.

    An event whose ``seq`` is not above the last one seen for its execution
    is a duplicate or a replay (a captured event sent again): ``observe``
    returns False and the subscriber drops it, so a user callback sees each
    event of an execution at most once, in increasing ``seq`` order.
    """

    MAX_EXECUTIONS = 100_000

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.dropped = 0

    def observe(self, event: Event) -> bool:
        prev = self.last.get(event.execution_id)
        if prev is not None and event.seq <= prev:
            self.dropped += 1
            return False
        if prev is not None and event.seq > prev + 1:
            event.missed = event.seq - prev - 1
        self.last[event.execution_id] = event.seq
        if len(self.last) > self.MAX_EXECUTIONS:  # bounded: forget the execution first heard of
            del self.last[next(iter(self.last))]
        return True
