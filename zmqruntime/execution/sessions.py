"""Sessions: a namespace and a FIFO queue each, served fairly.

A session is what a notebook (or a client) expects of a kernel: its own
variables and its own queue. Executions of one session run one at a time,
in the order submitted; sessions run side by side, up to the server's
``concurrency``. When more sessions have work than may run, they take turns
(round robin): a session that just ran goes to the back of the line, so no
session starves another however much it submits.

A busy session may have executions *ahead*: taken from its queue and handed
to its worker, which starts each the moment the one before ends (local.py).
They still count as queued, and count as the session's turn: so the server
hands them over only while no other session waits for a turn, and takes
them back (``put_back``) as soon as one does.

The table only decides *what runs next*; where it runs (and who holds the
namespace) is the backend's business. A session whose namespace was lost
(its worker died, was reaped when idle, or was reset on request) is flagged,
so its next execution says ``namespace_reset``.

A request without a session belongs to ``DEFAULT_SESSION`` (what a client
written before sessions existed gets).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

DEFAULT_SESSION = "default"
SESSION_MAX_LENGTH = 256


def check_session_name(value: Any) -> str:
    """The session named by a request; ValueError saying what is wrong."""
    if value is None:
        return DEFAULT_SESSION
    if not isinstance(value, str):
        raise ValueError(f"'session' must be a string, got {type(value).__name__}")
    if not 1 <= len(value) <= SESSION_MAX_LENGTH:
        raise ValueError(f"'session' must be 1 to {SESSION_MAX_LENGTH} characters, got {len(value)}")
    if not value.isprintable():
        raise ValueError(f"'session' must be printable text (no control characters), got {value[:40]!r}")
    return value


@dataclass
class SessionState:
    name: str
    queue: deque[str] = field(default_factory=deque)
    running: Optional[str] = None
    #: Taken from the queue and handed to the backend to start, in order, after ``running``.
    ahead: deque[str] = field(default_factory=deque)
    #: Handed ahead and neither started nor dropped there yet (those taken back too): until the
    #: backend says, only it knows whether one started.
    handed: set[str] = field(default_factory=set)
    created: float = field(default_factory=time.time)
    last_active: float = field(default_factory=time.monotonic)
    executions: int = 0
    #: A worker of the backend holds this session's namespace.
    has_namespace: bool = False
    #: The namespace was lost: the next execution says ``namespace_reset``.
    namespace_lost: bool = False

    @property
    def busy(self) -> bool:
        return self.running is not None or bool(self.queue) or bool(self.ahead)

    @property
    def waiting(self) -> int:
        """Executions not started yet: handed ahead or queued."""
        return len(self.ahead) + len(self.queue)

    def idle_for(self, now: Optional[float] = None) -> float:
        return 0.0 if self.busy else (time.monotonic() if now is None else now) - self.last_active


class SessionTable:
    """Every session the server knows, and the round-robin line of those with work."""

    def __init__(self, max_sessions: int = 10_000):
        self.sessions: dict[str, SessionState] = {}
        self.max_sessions = max_sessions
        #: Sessions with queued work and nothing running, in turn order (may hold stale names: skipped).
        self._line: deque[str] = deque()
        self.running = 0
        #: Sessions with executions handed ahead.
        self.with_ahead: set[str] = set()

    def __iter__(self) -> Iterator[SessionState]:
        return iter(list(self.sessions.values()))

    def __len__(self) -> int:
        return len(self.sessions)

    def get(self, name: str) -> Optional[SessionState]:
        return self.sessions.get(name)

    def open(self, name: str) -> SessionState:
        state = self.sessions.get(name)
        if state is None:
            self._forget_idle()
            state = self.sessions[name] = SessionState(name)
        return state

    def enqueue(self, name: str, execution_id: str) -> None:
        state = self.open(name)
        state.queue.append(execution_id)
        state.executions += 1
        state.last_active = time.monotonic()
        if state.running is None and len(state.queue) == 1:
            self._line.append(name)

    def remove_queued(self, name: str, execution_id: str) -> None:
        state = self.sessions.get(name)
        if state is None:
            return
        if execution_id in state.queue:
            state.queue.remove(execution_id)  # an emptied session is skipped when its turn comes
        elif execution_id in state.ahead:
            state.ahead.remove(execution_id)
            if not state.ahead:
                self.with_ahead.discard(name)

    def take_ahead(self, state: SessionState, count: int) -> list[str]:
        """Move the first ``count`` queued executions of a running session to its ``ahead``."""
        taken = [state.queue.popleft() for _ in range(min(count, len(state.queue)))]
        if taken:
            state.ahead.extend(taken)
            state.handed.update(taken)
            self.with_ahead.add(state.name)
        return taken

    def dropped(self, name: str, execution_id: str) -> None:
        """The backend dropped one handed ahead before it started."""
        state = self.sessions.get(name)
        if state is not None:
            state.handed.discard(execution_id)

    def lost(self, name: str) -> list[str]:
        """The session's worker is gone: what was handed ahead is queued again; the ids."""
        state = self.sessions.get(name)
        if state is None:
            return []
        self.put_back(name)
        handed = list(state.handed)
        state.handed.clear()
        return handed

    def put_back(self, name: str) -> None:
        """The session's executions handed ahead go back to the front of its queue (in order).

        Its running execution still holds its turn: ``finished`` puts it back in line.
        """
        state = self.sessions.get(name)
        self.with_ahead.discard(name)
        if state is not None and state.ahead:
            state.queue.extendleft(reversed(state.ahead))
            state.ahead.clear()

    def others_wait(self) -> bool:
        """A session with work waits for a turn (nothing of it runs)."""
        for name in self._line:
            state = self.sessions.get(name)
            if state is not None and state.running is None and state.queue:
                return True
        return False

    def next(self, skip: frozenset[str] | set[str] = frozenset()) -> Optional[tuple[SessionState, str]]:
        """The next (session, execution id) to run, marking it running; None when nothing waits.

        Sessions in ``skip`` keep their place in line (their worker is not ready yet).
        """
        passed: list[str] = []
        try:
            while self._line:
                name = self._line.popleft()
                state = self.sessions.get(name)
                if state is None or state.running is not None or not state.queue:
                    continue
                if name in skip:
                    passed.append(name)
                    continue
                state.running = state.queue.popleft()
                state.last_active = time.monotonic()
                self.running += 1
                return state, state.running
            return None
        finally:
            self._line.extendleft(reversed(passed))

    def requeue(self, name: str, execution_id: str) -> None:
        """``next`` picked it but it could not start: first in its queue and first in line again."""
        state = self.sessions[name]
        if state.running == execution_id:
            state.running = None
            self.running -= 1
        state.queue.appendleft(execution_id)
        self._line.appendleft(name)

    def finished(self, name: str, execution_id: str, started: Optional[str] = None) -> list[str]:
        """The session's running execution ended: back of the line if more waits.

        ``started``: the backend started that one in its place (handed ahead); it runs now.
        Else nothing runs there, and what was handed ahead never started: those ids
        are returned (queued again).
        """
        state = self.sessions.get(name)
        if state is None or state.running != execution_id:
            return []
        if started is not None:
            state.handed.discard(started)
            if state.ahead and state.ahead[0] == started:
                state.ahead.popleft()
            elif started in state.ahead:
                state.ahead.remove(started)
            elif started in state.queue:  # put back an instant too late: it had started
                state.queue.remove(started)
            if not state.ahead:
                self.with_ahead.discard(name)
            state.running = started
            state.last_active = time.monotonic()
            return []
        if state.ahead:  # handed ahead, but the backend ran out before they came: queued again
            self.put_back(name)
        not_started = list(state.handed)
        state.handed.clear()
        state.running = None
        state.last_active = time.monotonic()
        self.running -= 1
        if state.queue:
            self._line.append(name)
        return not_started

    def queued(self, most: Optional[int] = None) -> list[str]:
        """Queued execution ids, session by session in queue order (at most ``most``)."""
        found: list[str] = []
        for state in self.sessions.values():
            for eid in (*state.ahead, *state.queue) if state.ahead else state.queue:
                if most is not None and len(found) >= most:
                    return found
                found.append(eid)
        return found

    def queued_count(self) -> int:
        return sum(s.waiting for s in self.sessions.values())

    def idle_with_namespace(self, idle_timeout: float) -> list[SessionState]:
        """Sessions whose worker has been idle longer than ``idle_timeout`` (oldest first)."""
        now = time.monotonic()
        found = [s for s in self.sessions.values() if s.has_namespace and not s.busy and s.idle_for(now) >= idle_timeout]
        return sorted(found, key=lambda s: s.last_active)

    def least_recently_used_idle(self, exclude: str) -> Optional[SessionState]:
        found = [s for s in self.sessions.values() if s.has_namespace and not s.busy and s.name != exclude]
        return min(found, key=lambda s: s.last_active, default=None)

    def with_namespace(self) -> int:
        return sum(1 for s in self.sessions.values() if s.has_namespace)

    def _forget_idle(self) -> None:
        """Past ``max_sessions``, forget the longest-idle sessions that hold nothing."""
        if len(self.sessions) < self.max_sessions:
            return
        empty = sorted((s for s in self.sessions.values() if not s.busy and not s.has_namespace),
                       key=lambda s: s.last_active)
        for state in empty[: max(1, len(self.sessions) - self.max_sessions + 1)]:
            del self.sessions[state.name]

    def describe(self, state: SessionState, worker: Optional[dict[str, Any]]) -> dict[str, Any]:
        return {"session": state.name, "queued": state.waiting, "running": state.running,
                "executions": state.executions, "idle_seconds": round(state.idle_for(), 3),
                "created": state.created, "worker": worker, "namespace_lost": state.namespace_lost}
