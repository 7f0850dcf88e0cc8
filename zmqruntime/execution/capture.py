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

tqdm is hooked without patching tqdm's own class: after ``tqdm`` (or
``tqdm.autonotebook`` / ``tqdm.notebook``) is imported, the names a user
imports (``tqdm.tqdm``, ``tqdm.trange``, ...) are bound to :class:`RemoteTqdm`, a
subclass of ``tqdm.std.tqdm`` that writes its text to a file that discards it
and reports its state instead. ``tqdm.write``, ``tqdm.std.tqdm`` and a user's
own subclass keep working (a subclass of ``tqdm.tqdm`` simply reports too).
IPython's display functions are rebound the same way; outside a task every
hooked function behaves as the original.
"""

from __future__ import annotations

import base64
import builtins
import getpass
import importlib.abc
import importlib.util
import io
import json
import math
import os
import reprlib
import sys
import threading
import time
import weakref
from types import ModuleType
from typing import Any, Callable, Optional

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

_REPR_METHODS = (
    ("_repr_html_", "text/html"), ("_repr_markdown_", "text/markdown"), ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"), ("_repr_jpeg_", "image/jpeg"), ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"), ("_repr_javascript_", "application/javascript"),
    ("_repr_pdf_", "application/pdf"),
)
_BINARY = {"image/png", "image/jpeg", "application/pdf"}


class NoStdinError(EOFError):
    """``input()`` in a remote task: there is no one to type the answer."""


# -- mime bundles -------------------------------------------------------------------------------
def format_bundle(obj: Any, include: Any = None, exclude: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(data, metadata)`` for ``obj``, as IPython's formatter would build it (JSON-ready)."""
    if type(obj) in _PLAIN_TYPES:  # no _repr_*_ methods to look for
        return {"text/plain": plain_repr(obj)}, {}
    data: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    method = _repr_method(obj, "_repr_mimebundle_")
    if method is not None:
        got = _call_repr(method, include=include, exclude=exclude)
        if isinstance(got, tuple) and len(got) == 2:
            got, md = got
            metadata.update(md or {})
        if isinstance(got, dict):
            data.update(got)
    for name, mime in _REPR_METHODS:
        if mime in data:
            continue
        method = _repr_method(obj, name)
        value = _call_repr(method) if method is not None else None
        if isinstance(value, tuple) and len(value) == 2:
            value, md = value
            if md:
                metadata[mime] = md
        if value is not None:
            data[mime] = value
    if "text/plain" not in data:
        data["text/plain"] = plain_repr(obj)
    if include:
        data = {k: v for k, v in data.items() if k in include}
    if exclude:
        data = {k: v for k, v in data.items() if k not in exclude}
    return {k: _jsonable(k, v) for k, v in data.items()}, metadata


_PLAIN_TYPES = {int, float, bool, complex, str, bytes, bytearray, list, tuple, dict, set, frozenset, type(None)}
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 6, 2000, 2000
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxset = _SHORT.maxfrozenset = _SHORT.maxdict = _SHORT.maxdeque = 1000
#: Containers longer than this, and strings/bytes longer than RESULT_REPR_LIMIT, get an abridged repr:
#: a full ``repr`` of a huge value would cost more time and memory than the task.
LONG_CONTAINER = 1000


def plain_repr(obj: Any) -> str:
    """``repr(obj)``, abridged (``...``) for huge strings, bytes and builtin containers."""
    if isinstance(obj, (str, bytes, bytearray)) and len(obj) > RESULT_REPR_LIMIT:
        return _SHORT.repr(obj) + f"  # {type(obj).__name__} of length {len(obj):,}"
    if isinstance(obj, (list, tuple, dict, set, frozenset)) and len(obj) > LONG_CONTAINER:
        return _SHORT.repr(obj) + f"  # {type(obj).__name__} of length {len(obj):,}"
    return repr(obj)


def _repr_method(obj: Any, name: str) -> Optional[Callable[..., Any]]:
    if isinstance(obj, type):  # a class has unbound _repr_*_ methods: show the class itself
        return None
    method = getattr(obj, name, None)
    return method if callable(method) else None


def _call_repr(method: Callable[..., Any], **kwargs: Any) -> Any:
    try:
        return method(**kwargs) if kwargs else method()
    except TypeError:
        return method() if kwargs else None
    except Exception as exc:  # a broken repr must not fail the task
        print(f"{type(exc).__name__} in {getattr(method, '__name__', 'repr')}: {exc}", file=sys.stderr)
        return None


def _jsonable(mime: str, value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if mime in _BINARY or not _is_text(raw):
            return base64.b64encode(raw).decode("ascii")
        return raw.decode("utf-8")
    if mime == "application/json" or mime.endswith("+json"):
        return json.loads(json.dumps(value, default=str))
    return value if isinstance(value, str) else str(value)


def _is_text(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def bounded(data: dict[str, Any], limit: int, what: str, hint: str = "") -> dict[str, Any]:
    """Drop each entry larger than ``limit`` and say so in a one-line text/plain note."""
    sizes = {m: len(v) if isinstance(v, str) else len(json.dumps(v)) for m, v in data.items()}
    big = {m: n for m, n in sizes.items() if n > limit}
    if not big:
        return data
    out = {m: v for m, v in data.items() if m not in big}
    sizes_text = ", ".join(f"{m} {n} bytes" for m, n in big.items())
    note = f"[{what} too large to show here ({sizes_text})" + (f"; {hint}]" if hint else "]")
    out["text/plain"] = f"{out['text/plain']}\n{note}" if "text/plain" in out else note
    return out


# -- the capture of one task --------------------------------------------------------------------
class Capture:
    """Routes one task's display calls, figures and bars to ``emit``."""

    def __init__(self, emit: Emit):
        self.emit = emit
        self._bars: Optional["weakref.WeakKeyDictionary[Any, dict[str, Any]]"] = None  # made at the first bar
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
        ipy_display = _repr_method(obj, "_ipython_display_")
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
    cap.publish({k: _jsonable(k, v) for k, v in data.items()}, metadata, display_id=display_id,
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
    _install_once()
    scope = _TaskScope(Capture(emit))
    with _patch_lock:
        if not _by_thread:
            _patch_process()
        _by_thread[threading.get_ident()] = scope.capture
    return scope


def _uses_our_backend() -> bool:
    mpl = sys.modules.get("matplotlib")
    if mpl is None or "matplotlib.pyplot" not in sys.modules:
        return False
    try:
        return str(mpl.get_backend()) == MPL_BACKEND
    except Exception:
        return False


# -- hooks into tqdm and IPython, made once per process ------------------------------------------
_installed = False


def _install_once() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    hooks: dict[str, Callable[[ModuleType], None]] = {
        "matplotlib": _hook_matplotlib, "tqdm": _hook_tqdm_package, "tqdm.autonotebook": _hook_tqdm_frontend, "tqdm.notebook": _hook_tqdm_frontend,
        "IPython.core.display_functions": _hook_ipython, "IPython.core.display": _hook_ipython,
        "IPython.display": _hook_ipython}
    for name, hook in hooks.items():
        if name in sys.modules:
            hook(sys.modules[name])
    sys.meta_path.insert(0, _PostImportFinder(hooks))


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Runs ``hooks[name](module)`` right after module ``name`` is first imported."""

    def __init__(self, hooks: dict[str, Callable[[ModuleType], None]]):
        self.hooks = hooks
        self._finding: set[str] = set()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        hook = self.hooks.get(fullname)
        if hook is None or fullname in self._finding:
            return None
        self._finding.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _HookedLoader(spec.loader, hook)
        return spec


class _HookedLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, hook: Callable[[ModuleType], None]):
        self.loader = loader
        self.hook = hook

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader  # the module sees its real loader (resources, reload)
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        try:
            self.hook(module)
        except Exception as exc:  # never break the user's import
            print(f"zmqruntime: could not hook {module.__name__}: {exc}", file=sys.__stderr__)


def _hook_matplotlib(module: ModuleType) -> None:
    """Our backend, whatever MPLBACKEND or matplotlibrc say: a task never opens a GUI window.

    Set on the imported module (not through MPLBACKEND in the environment), so
    programs the task starts in a subprocess keep their own backend.
    """
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.switch_backend(MPL_BACKEND)
    else:
        module.use(MPL_BACKEND)  # type: ignore[attr-defined]


_remote_tqdm: Any = None


def _tqdm_class() -> Any:
    """:class:`RemoteTqdm`, made once ``tqdm.std`` exists."""
    global _remote_tqdm
    if _remote_tqdm is None:
        from tqdm.std import tqdm as std_tqdm  # type: ignore[import-untyped]

        class RemoteTqdm(std_tqdm):  # type: ignore[misc, valid-type]
            """A tqdm bar of a remote task: reports ``bar`` events; its text goes nowhere."""

            _reports = False  # True: this bar's text is discarded, its state sent as events

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs.pop("display", None)  # tqdm.notebook's argument
                if active() is not None and len(args) < 5 and kwargs.get("file") in (None, sys.stdout, sys.stderr):
                    kwargs["file"] = _Discard()
                    self._reports = True
                super().__init__(*args, **kwargs)

            def display(self, msg: Optional[str] = None, pos: Optional[int] = None) -> bool:
                cap = active()
                if cap is None or not self._reports:
                    return bool(super().display(msg, pos))
                if not self.disable:
                    cap.bar(self)
                return True

            def close(self) -> None:
                was_open = not getattr(self, "disable", True)
                super().close()
                cap = active()
                if was_open and cap is not None and self._reports:
                    cap.bar(self, closed=True)

        # picklable by name (a process pool's initializer may carry the class): see __getattr__ below
        RemoteTqdm.__module__, RemoteTqdm.__qualname__ = __name__, "RemoteTqdm"
        _remote_tqdm = RemoteTqdm
    return _remote_tqdm


def __getattr__(name: str) -> Any:
    if name == "RemoteTqdm":  # made lazily: tqdm is imported only by tasks that use it
        return _tqdm_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _trange(*args: Any, **kwargs: Any) -> Any:
    return _tqdm_class()(range(*args), **kwargs)


def _hook_tqdm_package(module: ModuleType) -> None:
    module.tqdm = _tqdm_class()  # type: ignore[attr-defined]
    module.trange = _trange  # type: ignore[attr-defined]


def _hook_tqdm_frontend(module: ModuleType) -> None:
    """tqdm.autonotebook / tqdm.notebook: in a worker the frontend is the panel, not a widget."""
    cls = _tqdm_class()
    for name in ("tqdm", "tqdm_notebook"):
        if hasattr(module, name):
            setattr(module, name, cls)
    for name in ("trange", "tnrange"):
        if hasattr(module, name):
            setattr(module, name, _trange)


class _Discard(io.TextIOBase):
    """Where a RemoteTqdm writes its text (nothing is kept: the bar is sent as events)."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:  # type: ignore[override]
        return len(text)

    def isatty(self) -> bool:
        return False


_ipython_originals: dict[str, Any] = {}


def _hook_ipython(module: ModuleType) -> None:
    """Rebind IPython's display functions in ``module``: ours in a task, IPython's outside one."""
    for name, ours in (("display", display), ("update_display", update_display),
                       ("clear_output", clear_output), ("publish_display_data", publish_display_data)):
        original = getattr(module, name, None)
        if original is None or getattr(original, "_zmqruntime", False):
            continue
        _ipython_originals.setdefault(name, original)
        setattr(module, name, _either(ours, _ipython_originals[name]))


def _either(ours: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        return (ours if active() is not None else original)(*args, **kwargs)

    call.__name__ = original.__name__
    call.__doc__ = original.__doc__
    call._zmqruntime = True  # type: ignore[attr-defined]
    return call


__all__ = ["Capture", "NoStdinError", "install", "display", "update_display", "clear_output",
           "format_bundle", "show_figures", "DisplayHandle"]
