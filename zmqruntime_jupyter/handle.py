"""The execution handle a ``%%zmqexec`` cell returns (``_`` / ``--out``): a future-like facade.

It is the notebook-side model of one remote execution -- status, latest
progress, output, display outputs, tqdm bars, error -- made of parts with
one job each:

* :class:`~.sequencer.EventSequencer`: events in seq order, gaps noticed;
* :class:`~.outputs.OutputBuffer`: text tails, display outputs, bars, and what
  the panel has not shown yet;
* :class:`~.watchdog.StatusPoller`: ``status`` requests after a gap and when
  the stream is silent (its watchdog: a lost ``done`` never leaves a panel
  spinning), in the background or, in a pump, synchronously;
* :class:`~.controller.PanelController`: coalesced repaints, notes, requests
  from other threads.

The handle joins them: it applies events and ``status`` snapshots to the
state, and offers the user API: ``status``, ``progress``, ``output``,
``outputs``, ``bars``, ``wait()``, ``result()``, ``results()``, ``cancel()``,
and ``await handle``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from zmqruntime.errors import ZMQRuntimeError
from zmqruntime.execution.client import Event
from zmqruntime.execution.displaylog import OUTPUT_EVENTS
from zmqruntime.protocol import FINAL_STATES, progress_state

from .controller import CANCEL_REQUESTED, PanelController
from .outputs import OUTPUT_KEEP_CHARS, OutputBuffer
from .sequencer import MAX_BUFFERED, EventSequencer
from .stream import pump
from .watchdog import WATCH_FIRST, WATCH_SILENCE, StatusPoller

if TYPE_CHECKING:  # pragma: no cover
    from .connection import Connection
    from .panel import ExecutionPanel

#: A view older than this is refreshed from the server when read in a cell.
STALE_AFTER = 0.25

STATUS_FIELDS = ("status", "progress", "reason", "error", "namespace_reset", "has_results", "result_names",
                 "result_nbytes", "result_error", "created", "started", "finished", "name", "timeout",
                 "worker_pid", "results_expired")


class DetachedError(ZMQRuntimeError, RuntimeError):
    """The handle lost its connection (extension unloaded, server shut down)."""


class ExecutionHandle:
    """One remote execution, as seen from the notebook."""

    def __init__(self, execution_id: str, connection: Connection, *, name: str = "",
                 panel: Optional[ExecutionPanel] = None, out_name: Optional[str] = None,
                 user_ns: Optional[dict] = None, echo: Optional[Callable[[str, str], None]] = None,
                 result_in_cell: bool = False):
        self.id = execution_id
        self.name = name
        self.connection: Optional[Connection] = connection
        self.connection_key = connection.connection_file
        self.panel = panel
        self.out_name = out_name
        self._user_ns = user_ns
        self.state: dict[str, Any] = {"status": "queued", "progress": None, "reason": None, "error": None,
                                      "namespace_reset": False, "has_results": False, "name": name}
        self.poller = StatusPoller(self)
        self.sequencer = EventSequencer(self._apply, self.poller.gap, label=execution_id)
        # result_in_cell (--block): the cell's Out shows the value, so the panel does not repeat its repr
        self.buffer = OutputBuffer(echo=echo, for_panel=panel is not None, show_result=not result_in_cell)
        self.view = PanelController(panel, self._panel_snapshot, connection.loop)
        self.displayed_in: Optional[int] = None  # execution count of the cell that shows the panel
        self.cancel_origin: Optional[str] = None  # thread name of the last cancel() (diagnostics)
        self.created_local = time.time()
        self._last_update = time.monotonic()
        self._final = threading.Event()
        self._finalized = False
        self._results: Optional[dict[str, Any]] = None
        self._futures: list[asyncio.Future] = []
        if panel is not None:
            panel.bind(self)

    # -- public API -----------------------------------------------------------
    @property
    def final(self) -> bool:
        return self._final.is_set()

    @property
    def seq(self) -> int:
        return self.sequencer.seq

    @property
    def gaps(self) -> int:
        return self.sequencer.gaps

    @property
    def recovering(self) -> bool:
        return self.sequencer.repairing

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
        return self.buffer.text

    @property
    def stdout(self) -> str:
        return self.buffer.stdout

    @property
    def stderr(self) -> str:
        return self.buffer.stderr

    @property
    def outputs(self) -> list[dict[str, Any]]:
        """Display outputs (``{"output_type": "display_data", "data": {mime: ...}, ...}``), newest last."""
        self._fresh()
        return list(self.buffer.displays.outputs)

    @property
    def bars(self) -> list[dict[str, Any]]:
        """The tqdm bars of the execution: ``{bar, desc, n, total, rate, elapsed, position, ...}``."""
        self._fresh()
        return sorted(self.buffer.displays.bars.values(), key=lambda r: r["bar"])

    @property
    def info(self) -> dict[str, Any]:
        """A copy of everything known about the execution."""
        self._fresh()
        return self._snapshot()

    def fetch_output(self) -> dict[str, Any]:
        """The output the server keeps (1 MiB per stream, display outputs): ``{stdout, stderr, outputs}``."""
        status = self._client().get_status(self.id)
        return {k: status.get(k) for k in ("stdout", "stderr", "stdout_total", "stderr_total", "outputs")}

    def _snapshot(self) -> dict[str, Any]:
        return dict(self.state, execution_id=self.id, seq=self.seq, bars=self.bars_now())

    def bars_now(self) -> list[dict[str, Any]]:
        return sorted(self.buffer.displays.bars.values(), key=lambda r: r["bar"])

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
            self.view.note("cancel", CANCEL_REQUESTED)
        self.view.poke_from_any_thread()
        return reply

    def cancel_clicked(self) -> None:
        """The panel's Cancel button (any thread): cancel, and say so if it failed."""
        if self.final:
            return
        try:
            self.cancel(reason="cancelled with the Cancel button")
        except Exception as exc:  # never raise into the widget machinery
            self.view.note("cancel", f"cancel failed: {exc}")
            self.view.poke_from_any_thread()

    def note(self, key: str, text: str) -> None:
        """Show a short line under the panel's status (any thread)."""
        self.view.note(key, text)
        self.view.poke_from_any_thread()

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
        return (self._results or {}).get("_")

    # -- display ------------------------------------------------------------------
    def _ipython_display_(self) -> None:
        from IPython import get_ipython
        from IPython.display import display

        shell = get_ipython()
        count = getattr(shell, "execution_count", None)
        if self.displayed_in is not None and self.displayed_in == count:
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
        """The stream verified these progress events and skipped them on purpose (not gaps)."""
        if not self.final:
            self.sequencer.skipped(seqs)

    def on_event(self, event: Event) -> None:
        """Apply one verified event in sequence order; repair gaps."""
        if not self.final:
            self.sequencer.offer(event)

    def _apply(self, event: Event) -> None:
        self._last_update = time.monotonic()
        self.poller.watchdog.heard()
        self.view.unnote("contact")
        c = event.content
        kind = event.type
        if kind == "progress":
            self.state["progress"] = progress_state(c)
        elif kind == "stream":
            self.buffer.stream(c.get("name", "stdout"), c.get("text", ""))
        elif kind in OUTPUT_EVENTS:
            self.buffer.display_event(kind, dict(c))
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
        self.view.poke()

    # -- status polls (gap repair, the watchdog) and housekeeping ----------------------
    def tick(self, now: float) -> None:
        """Periodic housekeeping (connection timer or pump): a status poll if due, then the panel."""
        self.poller.tick(now)
        self.view.tick(now)

    def recovered(self, status: dict[str, Any]) -> None:
        """Adopt a full ``status`` snapshot, then replay buffered newer events."""
        self._last_update = time.monotonic()
        self.view.unnote("contact")
        if not self.state.get("created"):
            self.state["created"] = status.get("created")
        if status.get("name") and not self.name:
            self.name = self.state["name"] = status["name"]
        status_seq = status.get("seq", 0)
        if status_seq > self.seq and not self.final:
            note = self.buffer.reconcile(status)
            if note:
                self.view.note("gap", note)
            self.state.update({k: status.get(k) for k in STATUS_FIELDS if k in status})
            self.sequencer.adopt(status_seq)
        self.sequencer.repaired()
        if not self.final and status.get("status") in FINAL_STATES and status_seq >= self.seq:
            self._finish()
        else:
            self.view.poke()

    def recovery_failed(self, error: BaseException) -> None:
        self.sequencer.repair_failed()
        self.view.note("contact", f"lost contact with the server ({error}); retrying")
        self.poller.watchdog.retry_later()
        self.view.poke()

    def flush_ui(self) -> None:
        self.view.flush()

    def _finish(self) -> None:
        if self._finalized:
            return
        self._finalized = True
        self.sequencer.stop()
        self._final.set()
        self.view.reveal()
        self.view.poke(urgent=True)
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
        if self.poller.pumps or conn is None or conn.closed:
            try:
                ns[name] = self.result()
            except ZMQRuntimeError as exc:
                self.view.note("out", f"could not fetch the result for `{name}`: {exc}")
            return

        def bound(results: Optional[dict], error: Optional[BaseException]) -> None:
            if error is not None or results is None:
                self.view.note("out", f"could not fetch the result for `{name}`: {error}")
                self.view.poke()
                return
            self._results = results
            if ns.get(name) is self:
                ns[name] = results.get("_")
                self.view.note("out", f"`{name}` now holds the result")
                self.view.poke()

        conn.call_in_background(lambda: conn.client.get_results(self.id), bound)

    # -- UI ---------------------------------------------------------------------------
    def _panel_snapshot(self) -> tuple[dict[str, Any], list, bool]:
        return self._snapshot(), self.buffer.take(), self.final

    def _on_main(self, fn: Callable[[], None]) -> None:
        loop = self.view.loop
        if threading.current_thread() is threading.main_thread() or loop is None:
            fn()
        else:
            loop.add_callback(fn)

    # -- connection bookkeeping -----------------------------------------------------
    def _followed(self) -> bool:
        conn = self.connection
        return conn is not None and not conn.closed and self.id in conn.handles

    def _require_connection(self) -> Connection:
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
        self.poller.inflight = False
        self.sequencer.repairing = False
        if not self.final:
            self.view.note("detached", f"not following any more: {why}")
            self.view.poke(urgent=True)
        self.view.close()

    def attach(self, connection: Connection) -> None:
        """Follow again through a (new) connection, e.g. after ``%reload_ext``."""
        self.connection = connection
        self.connection_key = connection.connection_file
        self.view.rebind(connection.loop)
        self.view.unnote("detached")
        self.poller.watchdog.restart()
        if not self.final:
            connection.follow(self)

    def mark_unreachable(self, why: str) -> None:
        """The server is gone: a final state will never come over the wire."""
        if not self.final:
            self.view.note("detached", why)
            self.view.poke(urgent=True)


def handle_from_status(status: dict[str, Any], connection: Connection, **kwargs: Any) -> ExecutionHandle:
    """A handle for an execution this kernel did not start (or started before a restart)."""
    handle = ExecutionHandle(status["execution_id"], connection, name=status.get("name") or "", **kwargs)
    handle.recovered(status)
    return handle


__all__ = ["ExecutionHandle", "DetachedError", "handle_from_status", "OUTPUT_KEEP_CHARS", "MAX_BUFFERED",
           "WATCH_FIRST", "WATCH_SILENCE", "CANCEL_REQUESTED"]
