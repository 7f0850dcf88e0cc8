"""What a remote task shows, as events: rich display, figures, tqdm bars, the result's repr.

A cell run under ``%%zmqexec`` should show what it shows locally. While a task
runs, :func:`install` (called by the worker around each task) routes:

* ``display(obj)`` (the builtin a notebook has, and ``IPython.display``'s
  ``display`` / ``update_display`` / ``clear_output`` / ``publish_display_data``
  when IPython is installed) to ``display_data`` / ``update_display_data`` /
  ``clear_output`` events, with the mime bundle built from the object's
  ``_repr_mimebundle_`` / ``_repr_*_`` methods (no IPython needed);
* matplotlib to an Agg backend of our own (:mod:`.mpl_backend`, chosen as
  matplotlib is imported, never a GUI one): ``plt.show()``
  and figures left open at the end of the task become ``image/png`` outputs;
* tqdm bars (``tqdm``, ``tqdm.auto``, ``tqdm.notebook``) to ``bar`` events,
  throttled here at the source; their ``\\r`` text is not written anywhere;
* ``input()`` / ``getpass()`` to a clear :class:`NoStdinError`.

It depends on one callable, ``emit(event_type, content)``, never on a socket,
so any runner can use it. Stdout/stderr are flushed before each display event
(``sys.stdout.flush()``), which keeps outputs in order with the text around them.

How tqdm, matplotlib and IPython are reached (without patching tqdm's own
class) is in :mod:`.importhooks`; mime bundles are built by :mod:`.mimebundle`.
Outside a task every hooked function behaves as the original.
"""

from __future__ import annotations

import base64
import builtins
import getpass
import io
import math
import os
import sys
import threading
import time
import weakref
from typing import Any, Callable, Optional

from .mimebundle import bounded, format_bundle, jsonable, repr_method

Emit = Callable[[str, dict[str, Any]], None]

MPL_BACKEND = "module://zmqruntime.execution.mpl_backend"
#: The last expression's repr: each mime entry above this is replaced by a note.
RESULT_REPR_LIMIT = 1 << 20
#: Any other display output above this is replaced by a note.
DISPLAY_LIMIT = 16 << 20
#: A tqdm bar reports at most this often (its final state always goes).
BAR_MIN_INTERVAL = 0.1
NO_STDIN = ("remote cells have no stdin: input() and getpass() cannot ask for a value; "
            "pass values in with --push (e.g. `%%zmqexec --push name`) or as variables")

class NoStdinError(EOFError):
    """``input()`` in a remote task: there is no one to type the answer."""


# -- the capture of one task --------------------------------------------------------------------
class Capture:
    """Routes one task's display calls, figures and bars to ``emit``."""

    def __init__(self, emit: Emit):
        self.emit = emit
        self._bars: Optional[weakref.WeakKeyDictionary[Any, dict[str, Any]]] = None  # made at the first bar
        self._next_bar = 0
        self._lock = threading.Lock()

    def send(self, event_type: str, content: dict[str, Any]) -> None:
        """Flush the text streams first, so the event lands after the text printed before it."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        self.emit(event_type, content)

    # display ------------------------------------------------------------------------
    def publish(self, data: dict[str, Any], metadata: Optional[dict[str, Any]] = None,
                display_id: Optional[str] = None, update: bool = False) -> None:
        content: dict[str, Any] = {"data": bounded(data, DISPLAY_LIMIT, "this output is"), "metadata": metadata or {}}
        if display_id is not None:
            content["transient"] = {"display_id": str(display_id)}
        self.send("update_display_data" if update else "display_data", content)

    def clear(self, wait: bool = False) -> None:
        self.send("clear_output", {"wait": bool(wait)})

    def show_result(self, results: dict[str, Any]) -> None:
        """The last expression's rich repr (bounded), as a cell shows ``Out[n]``."""
        value = results.get("_")
        if value is None:
            return
        if isinstance(value, (str, bytes, bytearray)) and len(value) > RESULT_REPR_LIMIT:
            data: dict[str, Any] = {"text/plain": f"[the result's repr is too large to show here "
                                                  f"({type(value).__name__} of length {len(value):,}); "
                                                  f"handle.result() fetches the value]"}
            metadata: dict[str, Any] = {}
        else:
            try:
                data, metadata = format_bundle(value)
            except Exception as exc:
                data, metadata = {"text/plain": f"[the result's repr failed: {type(exc).__name__}: {exc}]"}, {}
            data = bounded(data, RESULT_REPR_LIMIT, "the result's repr is", "handle.result() fetches the value")
        self.send("display_data", {"data": data, "metadata": metadata, "result": True})

    # tqdm ----------------------------------------------------------------------------
    def bar(self, bar: Any, closed: bool = False) -> None:
        """Report a tqdm bar's state: throttled, except the first and the final one."""
        now = time.monotonic()
        with self._lock:
            if self._bars is None:
                self._bars = weakref.WeakKeyDictionary()
            info = self._bars.get(bar)
            if info is None:
                self._next_bar += 1
                info = self._bars[bar] = {"id": self._next_bar, "sent": -1.0}
            elif not closed and now - info["sent"] < BAR_MIN_INTERVAL:
                return
            info["sent"] = now
        self.send("bar", _bar_row(bar, info["id"], closed))

    def end_bars(self) -> None:
        """Bars still open when the task ends are reported closed (their final state)."""
        if self._bars is None:
            return
        for bar in list(self._bars.keys()):
            if not getattr(bar, "disable", True):
                self.bar(bar, closed=True)
        self._bars = None


def _bar_row(bar: Any, bar_id: int, closed: bool) -> dict[str, Any]:
    fd = bar.format_dict
    n, total, elapsed = fd.get("n") or 0, fd.get("total"), fd.get("elapsed") or 0.0
    rate = fd.get("rate")
    if rate is None and elapsed > 0:
        rate = n / elapsed
    scale = fd.get("unit_scale")
    if scale and scale is not True:  # a numeric unit_scale multiplies n and total
        n, total = n * scale, (total * scale if total is not None else None)
        rate = rate * scale if rate is not None else None
    return {"bar": bar_id, "desc": str(fd.get("prefix") or ""), "n": _num(n), "total": _num(total),
            "rate": _num(rate), "elapsed": _num(elapsed), "unit": str(fd.get("unit") or "it"),
            "position": abs(int(getattr(bar, "pos", 0) or 0)), "leave": bool(getattr(bar, "leave", True)),
            "closed": closed}


def _num(x: Any) -> Any:
    if x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


#: The capture of each thread running a task. One worker process runs one task at a
#: time (then threads the task starts report to it too); a threaded backend runs several.
_by_thread: dict[int, Capture] = {}


def active() -> Optional[Capture]:
    """The capture of the task this thread works for, if any."""
    cap = _by_thread.get(threading.get_ident())
    if cap is None and len(_by_thread) == 1:  # a thread started by the only running task
        cap = next(iter(list(_by_thread.values())), None)
    return cap


# -- public display functions (the builtin ``display`` in tasks) ---------------------------------
class DisplayHandle:
    """What ``display(obj, display_id=True)`` returns: ``update(obj)`` replaces the output."""

    def __init__(self, display_id: Optional[str] = None):
        self.display_id = display_id or os.urandom(16).hex()

    def __repr__(self) -> str:
        return f"<DisplayHandle display_id={self.display_id}>"

    def display(self, obj: Any, **kwargs: Any) -> None:
        display(obj, display_id=self.display_id, **kwargs)

    def update(self, obj: Any, **kwargs: Any) -> None:
        update_display(obj, display_id=self.display_id, **kwargs)


def display(*objs: Any, include: Any = None, exclude: Any = None, metadata: Optional[dict[str, Any]] = None,
            transient: Optional[dict[str, Any]] = None, display_id: Any = None, raw: bool = False,
            clear: bool = False, update: bool = False, **kwargs: Any) -> Optional[DisplayHandle]:
    """IPython's ``display()``, for remote tasks: each object becomes a ``display_data`` event."""
    cap = active()
    if cap is None:
        print(*objs)
        return None
    if display_id is True:
        display_id = os.urandom(16).hex()
    if transient and transient.get("display_id"):
        display_id = transient["display_id"]
    if clear:
        cap.clear(wait=True)
    for obj in objs:
        ipy_display = repr_method(obj, "_ipython_display_")
        if ipy_display is not None and not raw:
            ipy_display()
            continue
        md: dict[str, Any]
        if raw:
            data, md = dict(obj), {}
        else:
            data, md = format_bundle(obj, include, exclude)
        if metadata:
            md = {**md, **metadata}
        cap.publish(data, md, display_id=display_id, update=update)
    return DisplayHandle(display_id) if display_id is not None and not update else None


def update_display(obj: Any, *, display_id: Any, **kwargs: Any) -> None:
    kwargs["update"] = True
    display(obj, display_id=display_id, **kwargs)


def clear_output(wait: bool = False) -> None:
    cap = active()
    if cap is None:
        print("\033[2K\r", end="")
        return
    cap.clear(wait)


def publish_display_data(data: dict[str, Any], metadata: Optional[dict[str, Any]] = None, source: Any = None,
                         *, transient: Optional[dict[str, Any]] = None, **kwargs: Any) -> None:
    cap = active()
    if cap is None:
        return
    display_id = (transient or {}).get("display_id")
    cap.publish({k: jsonable(k, v) for k, v in data.items()}, metadata, display_id=display_id,
                update=bool(kwargs.get("update")))


def show_figures() -> None:
    """Every open matplotlib figure as an ``image/png`` output, then closed (``plt.show()``)."""
    cap = active()
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    from matplotlib._pylab_helpers import Gcf

    managers = Gcf.get_all_fig_managers()
    try:
        if cap is not None:
            for manager in managers:
                cap.publish(*_figure_bundle(manager.canvas.figure))
    finally:
        if managers:
            plt.close("all")


def _figure_bundle(fig: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    buf = io.BytesIO()
    fig.canvas.print_figure(buf, format="png", bbox_inches="tight")
    png = buf.getvalue()
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    data = {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": repr(fig)}
    return data, {"image/png": {"width": width, "height": height}}


# -- stdin ------------------------------------------------------------------------------------------
class _NoStdin(io.TextIOBase):
    def readable(self) -> bool:
        return True

    def read(self, size: Optional[int] = -1) -> str:
        raise NoStdinError(NO_STDIN)

    def readline(self, size: Optional[int] = -1) -> str:  # type: ignore[override]
        raise NoStdinError(NO_STDIN)

    def isatty(self) -> bool:
        return False


_NO_STDIN = _NoStdin()


def _no_getpass(prompt: str = "Password: ", stream: Any = None) -> str:
    raise NoStdinError(NO_STDIN)


# -- install / uninstall around a task --------------------------------------------------------------
class _TaskScope:
    """One task's capture; ``uninstall`` ends it."""

    def __init__(self, capture: Capture):
        self.capture = capture

    def show_result(self, results: dict[str, Any]) -> None:
        self.capture.show_result(results)

    def uninstall(self) -> None:
        """Send figures left open and bars left open, then restore stdin & co. (after the last task)."""
        try:
            if _uses_our_backend():
                show_figures()
            self.capture.end_bars()
        except Exception as exc:  # the task is over: report, never break the worker
            print(f"zmqruntime: sending the task's figures failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            with _patch_lock:
                _by_thread.pop(threading.get_ident(), None)
                if not _by_thread:
                    _unpatch_process()


_patch_lock = threading.Lock()
_saved: dict[str, Any] = {}


def _patch_process() -> None:
    """While tasks run: no stdin, no getpass, and ``display`` as a builtin (as in a notebook)."""
    _saved.update(stdin=sys.stdin, getpass=getpass.getpass, display=getattr(builtins, "display", None))
    sys.stdin = _NO_STDIN
    getpass.getpass = _no_getpass
    if _saved["display"] is None:
        builtins.display = display  # type: ignore[attr-defined]


def _unpatch_process() -> None:
    sys.stdin = _saved.pop("stdin", sys.stdin)
    getpass.getpass = _saved.pop("getpass", getpass.getpass)
    if _saved.pop("display", None) is None and getattr(builtins, "display", None) is display:
        del builtins.display  # type: ignore[attr-defined]


def install(emit: Emit) -> _TaskScope:
    """Start capturing for the task this thread runs. Call ``uninstall()`` on the result when it ends."""
    _install_hooks()
    scope = _TaskScope(Capture(emit))
    with _patch_lock:
        if not _by_thread:
            _patch_process()
        _by_thread[threading.get_ident()] = scope.capture
    return scope


_hooked = False


def _install_hooks() -> None:
    global _hooked
    if not _hooked:
        _hooked = True
        from . import importhooks

        importhooks.install()


def _uses_our_backend() -> bool:
    mpl = sys.modules.get("matplotlib")
    if mpl is None or "matplotlib.pyplot" not in sys.modules:
        return False
    try:
        return str(mpl.get_backend()) == MPL_BACKEND
    except Exception:
        return False


__all__ = ["Capture", "NoStdinError", "install", "display", "update_display", "clear_output",
           "format_bundle", "show_figures", "DisplayHandle"]
