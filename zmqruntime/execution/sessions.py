"""Sessions: a namespace and a FIFO queue each, served fairly.

A session is what a notebook (or a client) expects of a kernel: its own
variables and its own queue. Executions of one session run one at a time,
in the order submitted; sessions run side by side, up to the server's
``concurrency``. When more sessions have work than may run, they take turns
(round robin): a session that just ran goes to the back of the line, so no
session starves another however much it submits.

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
    created: float = field(default_factory=time.time)
    last_active: float = field(default_factory=time.monotonic)
    executions: int = 0
    #: A worker of the backend holds this session's namespace.
    has_namespace: bool = False
    #: The namespace was lost: the next execution says ``namespace_reset``.
    namespace_lost: bool = False

    @property
    def busy(self) -> bool:
        return self.running is not None or bool(self.queue)

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
        if state is not None and execution_id in state.queue:
            state.queue.remove(execution_id)  # an emptied session is skipped when its turn comes

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

    def finished(self, name: str, execution_id: str) -> None:
        """The session's running execution ended: back of the line if more waits."""
        state = self.sessions.get(name)
        if state is None or state.running != execution_id:
            return
        state.running = None
        state.last_active = time.monotonic()
        self.running -= 1
        if state.queue:
            self._line.append(name)

    def queued(self, most: Optional[int] = None) -> list[str]:
        """Queued execution ids, session by session in queue order (at most ``most``)."""
        found: list[str] = []
        for state in self.sessions.values():
            for eid in state.queue:
                if most is not None and len(found) >= most:
                    return found
                found.append(eid)
        return found

    def queued_count(self) -> int:
        return sum(len(s.queue) for s in self.sessions.values())

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
        return {"session": state.name, "queued": len(state.queue), "running": state.running,
                "executions": state.executions, "idle_seconds": round(state.idle_for(), 3),
                "created": state.created, "worker": worker, "namespace_lost": state.namespace_lost}
