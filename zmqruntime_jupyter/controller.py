"""Drives one execution's panel: coalesced repaints, notes, requests from any thread.

The handle owns the model; this owns the way it reaches the widgets. Repaints
go through a :class:`~.stream.Coalescer` (about ten per second, however fast
events come; final states at once). Widget callbacks may run on another
thread (JupyterLab's subshells): :meth:`poke_from_any_thread` only sets a
flag and asks the kernel's loop to repaint, so widgets are touched from the
main thread only. Notes are short lines under the status ("cancel
requested…", "lost contact…"), settable from any thread.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

from .stream import Coalescer

CANCEL_REQUESTED = "cancel requested…"

#: ``snapshot() -> (info, items, final)``: what to render now.
Snapshot = Callable[[], tuple[dict[str, Any], list, bool]]


class PanelController:
    def __init__(self, panel: Any, snapshot: Snapshot, loop: Any):
        self.panel = panel
        self._snapshot = snapshot
        self._loop = loop
        self._notes: dict[str, str] = {}
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self.coalescer = Coalescer(self._render, loop)

    # -- notes ----------------------------------------------------------------------------
    def note(self, key: str, text: str) -> None:
        with self._lock:
            self._notes[key] = text

    def unnote(self, key: str) -> None:
        with self._lock:
            self._notes.pop(key, None)

    def notes(self) -> list[str]:
        with self._lock:
            return list(self._notes.values())

    # -- repaints -----------------------------------------------------------------------------
    def poke(self, urgent: bool = False) -> None:
        """Something changed (main thread): repaint within the coalescing interval."""
        self.coalescer.poke(urgent=urgent)

    def poke_from_any_thread(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.coalescer.poke()
            return
        self._dirty.set()
        loop = self._loop
        if loop is not None:
            loop.add_callback(lambda: self.tick(time.monotonic()))

    @property
    def dirty_from_other_thread(self) -> bool:
        return self._dirty.is_set()

    def tick(self, now: float) -> None:
        """Housekeeping from the connection's timer or a pump: flags, reveal, due repaints."""
        if self._dirty.is_set():
            self._dirty.clear()
            self.coalescer.poke()
        if self.panel is not None and self.panel.reveal_due(now):
            self.panel.reveal()
        self.coalescer.pump()

    def flush(self) -> None:
        if self.panel is not None:
            self.coalescer.poke(urgent=True)

    def reveal(self) -> None:
        if self.panel is not None:
            self.panel.reveal()

    def _render(self) -> None:
        if self.panel is None:
            return
        info, items, final = self._snapshot()
        with self._lock:
            if final and self._notes.get("cancel") == CANCEL_REQUESTED:
                del self._notes["cancel"]  # answered: the final status says what happened
            notes = list(self._notes.values())
        self.panel.render(info, items, notes, final)

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        self.coalescer.close()
        self._loop = None

    def rebind(self, loop: Any) -> None:
        """A new connection (``%reload_ext``): repaint through its loop."""
        self.coalescer.close()
        self._loop = loop
        self.coalescer = Coalescer(self._render, loop)

    @property
    def loop(self) -> Optional[Any]:
        return self._loop
