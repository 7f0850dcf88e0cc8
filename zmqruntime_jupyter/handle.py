"""The execution handle a ``%%zmqexec`` cell returns (``_`` / ``--out``).

It is the notebook-side model of one remote execution: status, latest
progress, output so far, error. Events come in from the IO-loop stream or a
blocking pump and are applied strictly in sequence order; a gap (dropped
events, late subscription) is repaired from ``get_status``. Progress events
the stream skipped on purpose (superseded by a newer one, authenticated,
see :mod:`.stream`) are announced with :meth:`ExecutionHandle.skipped_progress`
and are not gaps; any other missing seq is. A watchdog
polls ``get_status`` when the stream is silent so a lost ``done`` can never
leave a panel spinning. The widget panel only ever renders this model.

User-facing API: ``status``, ``progress``, ``output``, ``wait()``,
``result()``, ``results()``, ``cancel()``, and ``await handle``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from zmqruntime.errors import ZMQRuntimeError
from zmqruntime.execution.client import Event
from zmqruntime.protocol import FINAL_STATES, OUTPUT_KEEP_CHARS, progress_state

from .stream import Coalescer, pump

if TYPE_CHECKING:  # pragma: no cover
    from .connection import Connection
    from .panel import ExecutionPanel

log = logging.getLogger("zmqruntime.jupyter")

#: Output kept per handle (the server keeps the same amount per stream).
#: Watchdog: first status poll this soon after following (catches a 'done'
#: published before the subscription took effect), doubling up to the
#: silence limit; any event pushes the next poll to the silence limit.
WATCH_FIRST = 0.05
WATCH_SILENCE = 2.0
#: A view older than this is refreshed from the server when read in a cell.
STALE_AFTER = 0.25
#: Events buffered while a gap is being repaired.
MAX_BUFFERED = 50_000

STATUS_FIELDS = ("status", "progress", "reason", "error", "namespace_reset", "has_results", "result_names",
                 "result_nbytes", "result_error", "created", "started", "finished", "name", "timeout",
                 "worker_pid", "results_expired")

CANCEL_REQUESTED = "cancel requested…"


class DetachedError(ZMQRuntimeError, RuntimeError):
    """The handle lost its connection (extension unloaded, server shut down)."""


class ExecutionHandle:
    """One remote execution, as seen from the notebook."""

    def __init__(self, execution_id: str, connection: "Connection", *, name: str = "",
                 panel: Optional["ExecutionPanel"] = None, out_name: Optional[str] = None,
                 user_ns: Optional[dict] = None, echo: Optional[Callable[[str, str], None]] = None):
        self.id = execution_id
        self.name = name
        self.connection: Optional["Connection"] = connection
        self.connection_key = connection.connection_file
        self.panel = panel
        self.out_name = out_name
        self._user_ns = user_ns
        self._echo = echo  # --quiet --block: remote output straight to the cell's streams
        self.seq = 0
        self.state: dict[str, Any] = {"status": "queued", "progress": None, "reason": None, "error": None,
                                      "namespace_reset": False, "has_results": False, "name": name}
        self.stdout = ""
        self.stderr = ""
        self._output = ""
        self._seen = {"stdout": 0, "stderr": 0}
        self._pending_out: list[tuple[str, str]] = []
        self._notes: dict[str, str] = {}
        self._notes_lock = threading.Lock()  # notes may be set from a click on another thread
        self.recovering = False
        self._recovery_inflight = False
        self._buffer: list[Event] = []
        # seqs (> self.seq) of progress events the stream verified and skipped on purpose
        self._skipped: set[int] = set()
        self.gaps = 0  # sequence gaps seen (each one a status request)
        self._watch_delay = WATCH_FIRST
        self.next_watch = time.monotonic() + WATCH_FIRST
        self._pumping = 0
        self._last_update = time.monotonic()
        self._final = threading.Event()
        self._finalized = False
        self._results: Optional[dict[str, Any]] = None
        self._futures: list[asyncio.Future] = []
        self._cross_thread_dirty = threading.Event()
        self._displayed_in: Optional[int] = None
        self.cancel_origin: Optional[str] = None  # thread name of the last cancel() (diagnostics)
        self.created_local = time.time()
        loop = connection.loop
        self._loop = loop
        self.coalescer = Coalescer(self._render, loop)
        if panel is not None:
            panel.bind(self)

    # -- public API -----------------------------------------------------------
    @property
    def final(self) -> bool:
        return self._final.is_set()

    @property
    def status_cached(self) -> str:
        return self.state["status"]

    @property
    def status(self) -> str:
        """queued / running / complete / failed / cancelled."""
        self._fresh()
        return self.state["status"]

    @property
    def progress(self) -> Optional[dict[str, Any]]:
        """Latest progress: ``{done, total, desc, rate, elapsed}`` or None."""
        self._fresh()
        return self.state.get("progress")

    @property
    def error(self) -> Optional[dict[str, Any]]:
        """``{ename, evalue, traceback}`` of a failed execution."""
        self._fresh()
        return self.state.get("error")

    @property
    def output(self) -> str:
        """Remote stdout and stderr so far, interleaved as they arrived (last 1 MiB)."""
        self._fresh()
        return self._output

    @property
    def info(self) -> dict[str, Any]:
        """A copy of everything known about the execution."""
        self._fresh()
        return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        return dict(self.state, execution_id=self.id, seq=self.seq)

    def _fresh(self) -> None:
        """Refresh a stale view before answering a question about it.

        The IO loop cannot deliver events while a synchronous cell runs, so a
        cell that reads ``handle.progress`` would otherwise see the state of
        when it started. One ``status`` request (~1 ms) fixes that.
        """
        if self.final or threading.current_thread() is not threading.main_thread():
            return
        if time.monotonic() - self._last_update < STALE_AFTER:
            return
        try:
            self.refresh()
        except ZMQRuntimeError:
            pass

    def refresh(self) -> dict[str, Any]:
        """Fetch the full state from the server now (blocking, ~1 ms)."""
        self.recovered(self._client().get_status(self.id))
        return self._snapshot()

    def wait(self, timeout: Optional[float] = None) -> dict[str, Any]:
        """Block until final; return :attr:`info`. ExecutionTimeout after ``timeout``.

        In the kernel's main thread this pumps events itself, so the panel
        keeps moving while the cell waits. Interrupting the kernel stops the
        wait; the execution goes on (``cancel()`` stops it).
        """
        if not self.final:
            if threading.current_thread() is threading.main_thread():
                pump(self, timeout=timeout)
            else:
                # Another thread: the main loop may be busy; wait on the server,
                # then let the main thread adopt the final state.
                self._client().wait(self.id, timeout=timeout)
                status = self._client().get_status(self.id)
                self._on_main(lambda: self.recovered(status))
                return dict(status)
        return self._snapshot()

    def results(self, timeout: Optional[float] = None) -> dict[str, Any]:
        """All results: ``{"_": last expression value, ...}`` (fetched once, then cached).

        Raises ExecutionFailed (with ``remote_traceback``) or ExecutionCancelled.
        """
        if self._results is None:
            self.wait(timeout)
            self._results = self._client().get_results(self.id)
        return self._results

    def result(self, timeout: Optional[float] = None) -> Any:
        """The value of the cell's last expression (None if it had none)."""
        return self.results(timeout).get("_")

    def cancel(self, reason: Optional[str] = None) -> dict[str, Any]:
        """Cancel this execution only. Safe from any thread (widget callbacks too)."""
        self.cancel_origin = threading.current_thread().name
        reply = self._client().cancel(self.id, reason=reason or "cancelled from the notebook")
        if reply.get("cancelled"):
            self._note("cancel", CANCEL_REQUESTED)
        self._from_any_thread()
        return reply

    def cancel_clicked(self) -> None:
        """The panel's Cancel button (any thread): cancel, and say so if it failed."""
        if self.final:
            return
        try:
            self.cancel(reason="cancelled with the Cancel button")
        except Exception as exc:  # never raise into the widget machinery
            self._note("cancel", f"cancel failed: {exc}")
            self._from_any_thread()

    def __await__(self):
        return self._await_result().__await__()

    async def _await_result(self) -> Any:
        if not self.final:
            conn = self._require_connection()
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            self._futures.append(fut)
            if not self._followed():
                conn.follow(self)
            await fut
        if self._results is None:
            conn = self._require_connection()
            self._results = await asyncio.wrap_future(conn.submit(lambda: conn.client.get_results(self.id)))
        return self._results.get("_")

    # -- display ------------------------------------------------------------------
    def _ipython_display_(self) -> None:
        from IPython import get_ipython
        from IPython.display import display

        shell = get_ipython()
        count = getattr(shell, "execution_count", None)
        if self._displayed_in is not None and self._displayed_in == count:
            return  # the cell that created it already shows the panel
        if self.panel is not None:
            display(self.panel)
        else:
            display({"text/plain": repr(self)}, raw=True)

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        st = self.state
        extra = ""
        p = st.get("progress")
        if p and not self.final:
            extra = f" {p['done']:g}/{p['total']:g}" if p.get("total") else f" {p['done']:g}"
        if st.get("reason") and st["status"] == "cancelled":
            extra = f": {st['reason']}"
        if st.get("error") and st["status"] == "failed":
            extra = f": {st['error'].get('ename')}: {st['error'].get('evalue')}"
        if self.out_name and not self.final:
            extra += f" (`{self.out_name}` will hold the value when it completes)"
        return f"<ExecutionHandle {self.id}{label} {st['status']}{extra}>"

    # -- event path (main thread) -------------------------------------------------
    def skipped_progress(self, seqs: list[int]) -> None:
        """The stream verified these progress events and skipped them on purpose.

        They were superseded by a newer progress event of the same batch,
        which is applied, so their seqs are not gaps. Only authenticated
        progress events are announced here (``stream.skippable``), so a
        missing ``stream``/``status``/``done`` event still shows as a gap.
        """
        if self.final:
            return
        if len(self._skipped) + len(seqs) > MAX_BUFFERED:
            self._skipped.clear()  # nothing applied for that long: a gap, if any, recovers from status
        floor = self.seq
        self._skipped.update(s for s in seqs if s > floor)

    def _contiguous(self, seq: int) -> bool:
        """Is every seq between the last applied one and ``seq`` a skipped progress event?"""
        skipped = self._skipped
        return all(s in skipped for s in range(self.seq + 1, seq))

    def on_event(self, event: Event) -> None:
        """Apply one verified event in sequence order; repair gaps."""
        if self.final or event.seq <= self.seq:
            return  # duplicate (stream + pump) or already covered by a status
        if self.recovering:
            if len(self._buffer) < MAX_BUFFERED:
                self._buffer.append(event)
            return
        if event.seq > self.seq + 1 and not self._contiguous(event.seq):
            log.debug("execution %s: missed event(s) before seq %d; recovering from status", self.id, event.seq)
            self.gaps += 1
            self._buffer = [event]
            self._request_recovery()
            return
        self._apply(event)

    def _forget_skipped(self, upto: int) -> None:
        """Drop the skipped-progress notes at or below ``upto`` (now covered)."""
        if self._skipped:
            if upto - self.seq <= len(self._skipped):
                for s in range(self.seq + 1, upto + 1):
                    self._skipped.discard(s)
            else:
                self._skipped = {s for s in self._skipped if s > upto}

    def _apply(self, event: Event) -> None:
        self._forget_skipped(event.seq)
        self.seq = event.seq
        self._last_update = time.monotonic()
        self.next_watch = time.monotonic() + WATCH_SILENCE
        self._watch_delay = WATCH_FIRST
        self._unnote("contact")
        c = event.content
        kind = event.type
        if kind == "progress":
            self.state["progress"] = progress_state(c)
        elif kind == "stream":
            self._append(c.get("name", "stdout"), c.get("text", ""))
        elif kind == "status":
            self.state["status"] = c.get("status", self.state["status"])
            self.state["reason"] = c.get("reason")
            self.state["namespace_reset"] = bool(c.get("namespace_reset"))
            if c.get("status") == "running" and not self.state.get("started"):
                self.state["started"] = c.get("time")
        elif kind == "done":
            for key in ("status", "reason", "error", "has_results", "result_names", "result_nbytes",
                        "result_error", "namespace_reset"):
                if key in c:
                    self.state[key] = c[key]
            self.state["finished"] = c.get("time")
            self._finish()
            return
        self.coalescer.poke()

    def _append(self, name: str, text: str) -> None:
        if not text:
            return
        name = "stderr" if name == "stderr" else "stdout"
        self._seen[name] += len(text)
        if name == "stdout":
            self.stdout = (self.stdout + text)[-OUTPUT_KEEP_CHARS:]
        else:
            self.stderr = (self.stderr + text)[-OUTPUT_KEEP_CHARS:]
        self._output = (self._output + text)[-OUTPUT_KEEP_CHARS:]
        if self._echo is not None:
            self._echo(name, text)
        if self.panel is not None:
            self._pending_out.append((name, text))

    def _request_recovery(self) -> None:
        self.recovering = True
        if self._pumping or self._recovery_inflight:
            return  # the pump repairs synchronously / one request at a time
        conn = self.connection
        if conn is None or conn.closed:
            return
        self._recovery_inflight = True

        def done(status: Optional[dict], error: Optional[BaseException]) -> None:
            self._recovery_inflight = False
            if error is not None:
                self.recovery_failed(error)
            else:
                self.recovered(status)

        conn.call_in_background(lambda: conn.client.get_status(self.id), done)

    def recovered(self, status: dict[str, Any]) -> None:
        """Adopt a full ``status`` snapshot, then replay buffered newer events."""
        self.recovering = False
        self._last_update = time.monotonic()
        self._unnote("contact")
        if not self.state.get("created"):
            self.state["created"] = status.get("created")
        if status.get("name") and not self.name:
            self.name = self.state["name"] = status["name"]
        if status.get("seq", 0) > self.seq and not self.final:
            for name in ("stdout", "stderr"):
                self._reconcile_output(name, status)
            self.state.update({k: status.get(k) for k in STATUS_FIELDS if k in status})
            self._forget_skipped(status["seq"])
            self.seq = status["seq"]
        buffered, self._buffer = sorted(self._buffer, key=lambda e: e.seq), []
        for event in buffered:
            self.on_event(event)
        if not self.final and status.get("status") in FINAL_STATES and status.get("seq", 0) >= self.seq:
            self._finish()
        else:
            self.coalescer.poke()

    def recovery_failed(self, error: BaseException) -> None:
        self.recovering = bool(self._buffer)
        self._note("contact", f"lost contact with the server ({error}); retrying")
        self.next_watch = time.monotonic() + max(self._watch_delay, 1.0)
        self.coalescer.poke()

    def _reconcile_output(self, name: str, status: dict[str, Any]) -> None:
        """Append what the stream missed, using the server's buffered output."""
        text = status.get(name) or ""
        total = status.get(f"{name}_total")  # exact, if the server reports it
        if total is None and not status.get("output_truncated"):
            total = len(text)
        seen = self._seen[name]
        if total is None:
            # Server kept only the tail and does not say how long the stream was.
            if seen == 0 and text:
                self._append(name, "[… earlier output truncated on the server …]\n" + text)
            elif text:
                self._note("gap", "some output was dropped while catching up (see handle.refresh())")
            return
        start = total - len(text)
        if seen < start:
            self._append(name, f"\n[… {start - seen} characters of output dropped …]\n")
            self._seen[name] = start
            seen = start
        missing = text[seen - start:]
        if missing:
            self._append(name, missing)
        self._seen[name] = max(self._seen[name], total)

    def watchdog_fired(self) -> None:
        """Called before a watchdog status poll: back off the next one."""
        self._watch_delay = min(self._watch_delay * 2, WATCH_SILENCE)
        self.next_watch = time.monotonic() + self._watch_delay

    def tick(self, now: float) -> None:
        """Periodic housekeeping from the connection timer or a pump."""
        if self._cross_thread_dirty.is_set():
            self._cross_thread_dirty.clear()
            self.coalescer.poke()
        if self.panel is not None and self.panel.reveal_due(now):
            self.panel.reveal()
        self.coalescer.pump()

    def flush_ui(self) -> None:
        if self.panel is not None:
            self.coalescer.poke(urgent=True)

    def _finish(self) -> None:
        if self._finalized:
            return
        self._finalized = True
        self._buffer = []
        self._skipped = set()
        self.recovering = False
        self._final.set()
        if self.panel is not None:
            self.panel.reveal()
        self.coalescer.poke(urgent=True)
        conn = self.connection
        if conn is not None:
            conn.unfollow(self)
        for fut in self._futures:
            if not fut.done():
                fut.set_result(None)
        self._futures.clear()
        self._bind_out()

    def _bind_out(self) -> None:
        """``--out NAME``: NAME becomes the value once the execution completes."""
        ns, name = self._user_ns, self.out_name
        if ns is None or not name or ns.get(name) is not self:
            return
        if self.state["status"] != "complete":
            return  # NAME keeps the handle, whose status/result() explain what happened
        if not self.state.get("has_results"):
            self._results = {}
            ns[name] = None
            return
        conn = self.connection
        if self._pumping or conn is None or conn.closed:
            try:
                ns[name] = self.result()
            except ZMQRuntimeError as exc:
                self._note("out", f"could not fetch the result for `{name}`: {exc}")
            return

        def bound(results: Optional[dict], error: Optional[BaseException]) -> None:
            if error is not None:
                self._note("out", f"could not fetch the result for `{name}`: {error}")
                self.coalescer.poke()
                return
            self._results = results
            if ns.get(name) is self:
                ns[name] = results.get("_")
                self._note("out", f"`{name}` now holds the result")
                self.coalescer.poke()

        conn.call_in_background(lambda: conn.client.get_results(self.id), bound)

    # -- UI ---------------------------------------------------------------------------
    def _render(self) -> None:
        if self.panel is None:
            return
        chunks, self._pending_out = self._pending_out, []
        with self._notes_lock:
            if self.final and self._notes.get("cancel") == CANCEL_REQUESTED:
                del self._notes["cancel"]  # answered: the final status says what happened
            notes = list(self._notes.values())
        self.panel.render(self._snapshot(), chunks, notes, self.final)

    def _note(self, key: str, text: str) -> None:
        with self._notes_lock:
            self._notes[key] = text

    def _unnote(self, key: str) -> None:
        with self._notes_lock:
            self._notes.pop(key, None)

    def _on_main(self, fn: Callable[[], None]) -> None:
        if threading.current_thread() is threading.main_thread() or self._loop is None:
            fn()
        else:
            self._loop.add_callback(fn)

    def _from_any_thread(self) -> None:
        """Ask for a repaint from any thread (a pump picks it up too)."""
        if threading.current_thread() is threading.main_thread():
            self.coalescer.poke()
        else:
            self._cross_thread_dirty.set()
            if self._loop is not None:
                self._loop.add_callback(lambda: self.tick(time.monotonic()))

    # -- connection bookkeeping -----------------------------------------------------
    def _followed(self) -> bool:
        conn = self.connection
        return conn is not None and not conn.closed and self.id in conn.handles

    def _require_connection(self) -> "Connection":
        conn = self.connection
        if conn is None or conn.closed:
            raise DetachedError(
                f"execution {self.id} is not attached to a server connection (the extension was unloaded or "
                f"the server shut down); `%load_ext zmqruntime_jupyter` re-attaches, "
                f"`%zmq handle {self.id}` gets a fresh handle"
            )
        return conn

    def _client(self) -> Any:
        return self._require_connection().client

    def detach(self, why: str) -> None:
        """Stop following (extension unloaded / connection closed); the panel says why."""
        self.connection = None
        self.recovering = False
        self._recovery_inflight = False
        if not self.final:
            self._note("detached", f"not following any more: {why}")
            self.coalescer.poke(urgent=True)
        self.coalescer.close()
        self._loop = None

    def attach(self, connection: "Connection") -> None:
        """Follow again through a (new) connection, e.g. after ``%reload_ext``."""
        self.connection = connection
        self.connection_key = connection.connection_file
        self._loop = connection.loop
        self.coalescer = Coalescer(self._render, connection.loop)
        self._unnote("detached")
        self._watch_delay = WATCH_FIRST
        self.next_watch = time.monotonic() + WATCH_FIRST
        if not self.final:
            connection.follow(self)

    def mark_unreachable(self, why: str) -> None:
        """The server is gone: a final state will never come over the wire."""
        if not self.final:
            self._note("detached", why)
            self.coalescer.poke(urgent=True)


def handle_from_status(status: dict[str, Any], connection: "Connection", **kwargs: Any) -> ExecutionHandle:
    """A handle for an execution this kernel did not start (or started before a restart)."""
    handle = ExecutionHandle(status["execution_id"], connection, name=status.get("name") or "", **kwargs)
    handle.recovered(status)
    return handle


__all__ = ["ExecutionHandle", "DetachedError", "handle_from_status"]
