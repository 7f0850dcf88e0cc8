"""Run one task, without sockets: the part every backend shares.

A backend (the local worker process, a dask task) hands ``run_task`` the
task, the pushed values, the namespace of its session and a ``TaskSink``
that carries events away however that backend likes (signed frames on an
IPC socket locally; dask's event topics on a cluster). ``run_task``
captures stdout/stderr as ``stream`` events, installs the progress sink,
runs the task kind's ``execute_task``, turns exceptions into an error with
the remote traceback, and packs the results as pickle-5 frames with their
digests. What comes back is an ``Outcome``: plain data, ready to be sent.

Interrupting is the caller's business: ``interruptible`` is a context
manager entered only around user code, so a backend can arm SIGINT (local)
or an asynchronous exception in the task's thread (dask) exactly there.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import io
import linecache
import math
import sys
import threading
import traceback
from dataclasses import dataclass, field
from types import CodeType
from typing import Any, Callable, ContextManager, Optional, Protocol

from .. import reporting, serialize, spill
from . import capture
from .json_results import json_form

STREAM_FLUSH_BYTES = 64 * 1024


class TaskSink(Protocol):
    """Where a running task's events go."""

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        """One event (``stream`` …) of the running execution, in order."""

    def progress(self, done: float, total: Optional[float], desc: str, rate: float, elapsed: float) -> None:
        """One progress report (a sink may batch these)."""

    def flush(self) -> None:
        """Send whatever the sink still holds (the task is ending)."""


@dataclass
class TaskContext:
    """What ``execute_task`` gets besides the task: the place to run it."""

    execution_id: str
    namespace: dict[str, Any]
    pushed: dict[str, Any] = field(default_factory=dict)
    progress: Callable[..., Any] = reporting.progress
    reporter: type = reporting.Reporter


@dataclass
class Outcome:
    """How a task ended: what the backend reports to the server."""

    status: str  # complete | failed | cancelled
    error: Optional[dict[str, Any]]
    result: dict[str, Any]  # names, digests (hex), nbytes, error
    frames: list[Any]

    def message(self, execution_id: str, seq: int) -> dict[str, Any]:
        return {"type": "finished", "execution_id": execution_id, "status": self.status, "error": self.error,
                "seq": seq, "result": self.result}


class StreamCapture(io.TextIOBase):
    """A text stream whose writes become ``stream`` events (buffered until ``flush``)."""

    def __init__(self, emit: Callable[[str, dict[str, Any]], None], name: str):
        self.emit = emit
        self.name = name
        self._parts: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        # held across take + emit, so the final flush of a task waits for a
        # flusher-thread flush already under way instead of racing past it
        self._flush_lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            self._parts.append(text)
            self._size += len(text)
            big = self._size >= STREAM_FLUSH_BYTES
        if big:
            self.flush()
        return len(text)

    def take(self) -> str:
        with self._lock:
            text = "".join(self._parts)
            self._parts.clear()
            self._size = 0
        return text

    def flush(self) -> None:
        with self._flush_lock:
            text = self.take()
            if text:
                self.emit("stream", {"name": self.name, "text": text})

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def isatty(self) -> bool:
        return False


class redirected:
    """``sys.stdout``/``sys.stderr`` replaced for the block (None: left alone).

    A class, not ``contextlib.contextmanager``: every task enters it, and a
    generator-based one costs about a microsecond more to enter and leave.
    """

    def __init__(self, stdout: Optional[io.TextIOBase], stderr: Optional[io.TextIOBase]):
        self.stdout, self.stderr = stdout, stderr
        self.old: tuple[Any, Any] = (None, None)

    def __enter__(self) -> None:
        self.old = sys.stdout, sys.stderr
        if self.stdout is not None:
            sys.stdout = self.stdout
        if self.stderr is not None:
            sys.stderr = self.stderr

    def __exit__(self, *exc: Any) -> None:
        sys.stdout, sys.stderr = self.old


def run_task(app: Any, execution_id: str, task: dict[str, Any], buffers: list[Any], namespace: dict[str, Any],
             sink: TaskSink, *, streams: tuple[Optional[StreamCapture], Optional[StreamCapture]] = (None, None),
             interruptible: Optional[ContextManager[Any]] = None, install_progress: bool = True) -> Outcome:
    """Run ``task`` with ``app.execute_task`` in ``namespace``; never raises for the task's own errors.

    ``streams`` replace ``sys.stdout``/``sys.stderr`` for the task, and the progress
    sink is installed (``install_progress``): right for a process running one task at a
    time. A backend running tasks in threads routes both per thread itself instead.
    """
    status, error = "complete", None
    results: dict[str, Any] = {}
    stdout, stderr = streams
    progress_sink = reporting.sink(sink.progress) if install_progress else contextlib.nullcontext()
    with redirected(stdout, stderr), progress_sink:
        rich = capture.install(sink.emit)  # display(), figures, tqdm bars, the result's repr, no stdin
        try:
            pushed = spill.load_pushed(buffers) if buffers else {}  # a frame may name a shared-memory file
            ctx = TaskContext(execution_id, namespace, pushed)
            namespace.update(pushed)
            with interruptible if interruptible is not None else contextlib.nullcontext():
                results = app.execute_task(task, ctx) or {}
                rich.show_result(results)
        except KeyboardInterrupt:
            status, error = "cancelled", format_error(*sys.exc_info())
        except BaseException:  # SystemExit too: the task failed, the process lives
            status, error = "failed", format_error(*sys.exc_info())
        finally:
            rich.uninstall()  # figures and bars left open are sent; stdin & co restored
    for stream in streams:
        if stream is not None:
            stream.flush()
    sink.flush()
    info, frames = pack_results(results)
    return Outcome(status, error, info, frames)


def pack_results(results: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """Results as pickle-5 frames plus what the server needs to know of them."""
    if not results:
        return {"names": [], "digests": [], "nbytes": 0, "error": None}, []
    try:
        frames = serialize.dumps(results)
    except serialize.SerializationError as exc:
        return {"names": sorted(results), "digests": [], "nbytes": 0, "error": str(exc)}, []
    nbytes = serialize.nbytes(frames)
    json_text = json_form(results, nbytes)  # small plain-JSON results also as JSON (results format "json")
    frames, digests, files = spill.place_result_buffers(frames)  # large buffers into files, where configured
    return {"names": sorted(results), "digests": digests, "files": files, "nbytes": nbytes, "error": None,
            "json": json_text}, frames


def run_python_source(task: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """The built-in ``python`` task kind: exec source, keep the namespace.

    Returns ``{"_": value of the last expression (if any), name: value ...}``
    for the names listed in ``task["results"]``.
    """
    code: str = task["code"]
    filename = f"<zmqexec-{ctx.execution_id}>"
    _remember_source(filename, code)
    body, last_expr = compile_task(code, filename)
    ns = ctx.namespace
    _apply_config(task.get("config"), ns, ctx.execution_id)
    exec(body, ns)
    results: dict[str, Any] = {}
    if last_expr is not None:
        value = eval(last_expr, ns)
        if value is not None:
            results["_"] = value
    missing = [n for n in task.get("results", []) if n not in ns]
    if missing:
        raise NameError(f"result variable(s) not defined after the task ran: {', '.join(missing)}")
    for name in task.get("results", []):
        results[name] = ns[name]
    return results


#: Compiled forms of recent short sources, by source (a notebook re-runs its cells, a pipeline
#: the same expression): compiling was a third of a no-op's time in the worker. Only code with
#: no nested code objects (functions, classes, comprehensions, lambdas) is kept, so giving it
#: each execution's file name (``co_filename``, what tracebacks show) is exact.
_compiled: dict[str, tuple[CodeType, Optional[CodeType]]] = {}
COMPILED_KEEP, COMPILED_MAX_CHARS = 256, 4096


def compile_task(code: str, filename: str) -> tuple[CodeType, Optional[CodeType]]:
    """``code`` compiled under ``filename``: its statements, and its last one apart when it is
    an expression (its value is the result ``_``)."""
    cached = _compiled.get(code)
    if cached is not None:
        body, last = cached
        return body.replace(co_filename=filename), last.replace(co_filename=filename) if last else None
    tree = ast.parse(code, filename=filename, mode="exec")
    last_expr = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last_stmt = tree.body.pop()
        assert isinstance(last_stmt, ast.Expr)
        last_expr = compile(ast.Expression(last_stmt.value), filename, "eval")
    body = compile(tree, filename, "exec")
    if len(code) <= COMPILED_MAX_CHARS and not _nests_code(body) and not (last_expr and _nests_code(last_expr)):
        _compiled[code] = (body, last_expr)
        if len(_compiled) > COMPILED_KEEP:
            del _compiled[next(iter(_compiled))]
    return body, last_expr


def _nests_code(code: CodeType) -> bool:
    return any(isinstance(c, CodeType) for c in code.co_consts)


class ConfigError(Exception):
    """The task's ``config`` raised: reported as "config failed: ..." (the cause chained)."""


def _apply_config(config: Any, ns: dict[str, Any], execution_id: str) -> None:
    """``config`` first, in the task's namespace: source code run, or names bound."""
    if config is None:
        return
    try:
        if isinstance(config, str):
            filename = f"<zmqexec-{execution_id}-config>"
            _remember_source(filename, config)
            exec(compile(config, filename, "exec"), ns)
        else:
            ns.update(config)
    except Exception as exc:
        raise ConfigError(f"config failed: {type(exc).__name__}: {exc}") from exc


#: Sources of this many recent executions stay in linecache, so tracebacks through
#: functions they defined show their lines; older ones are dropped (a long-lived
#: worker would otherwise keep every source it ever ran).
LINECACHE_KEEP = 1000
_remembered_sources: collections.deque[str] = collections.deque()


def _remember_source(filename: str, code: str) -> None:
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    _remembered_sources.append(filename)
    while len(_remembered_sources) > LINECACHE_KEEP:
        linecache.cache.pop(_remembered_sources.popleft(), None)


def finite(x: Any) -> Any:
    """NaN and infinities are not JSON: report them as null."""
    return x if x is None or math.isfinite(x) else None


def format_error(etype: Any, value: Any, tb: Any) -> dict[str, Any]:
    """The remote error as sent: name, message, traceback lines starting at the user's code."""
    while tb is not None and tb.tb_next is not None and "zmqruntime" in tb.tb_frame.f_code.co_filename:
        tb = tb.tb_next
    lines = traceback.format_exception(etype, value, tb)
    return {"ename": etype.__name__, "evalue": str(value), "traceback": lines}
