"""Hooks into tqdm, matplotlib and IPython, made once per worker process as they are imported.

A post-import hook (a ``sys.meta_path`` finder that wraps the loader of a few
named modules) runs right after the module is first imported, before user
code can take names from it:

* ``matplotlib``: our Agg backend (:mod:`.mpl_backend`) is chosen, whatever
  ``MPLBACKEND`` says (a task never opens a GUI window; the environment, and so a
  task's subprocesses, keep theirs);
* ``tqdm``, ``tqdm.autonotebook``, ``tqdm.notebook``: the names a user imports
  (``tqdm``, ``trange``, ``tqdm_notebook``, ...) become :class:`RemoteTqdm`, a
  subclass of ``tqdm.std.tqdm`` that, in a task, writes its text nowhere and
  reports its state as ``bar`` rows. ``tqdm.std.tqdm`` itself is not patched;
  ``tqdm.write`` and a user's subclass keep working (``tqdm.auto`` builds its
  class on ``tqdm.autonotebook``'s, so it reports too);
* IPython's ``display`` / ``update_display`` / ``clear_output`` /
  ``publish_display_data``: ours in a task, IPython's outside one.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import io
import sys
from types import ModuleType
from typing import Any, Callable, Optional

from . import capture
from .capture import MPL_BACKEND, active


def install() -> None:
    """Hook the modules already imported now, the others as they are imported."""
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
        module.use(MPL_BACKEND)


_remote_tqdm: Any = None


def _tqdm_class() -> Any:
    """:class:`RemoteTqdm`, made once ``tqdm.std`` exists."""
    global _remote_tqdm
    if _remote_tqdm is None:
        from tqdm.std import tqdm as std_tqdm

        class RemoteTqdm(std_tqdm):
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

    def write(self, text: str) -> int:
        return len(text)

    def isatty(self) -> bool:
        return False


_ipython_originals: dict[str, Any] = {}


def _hook_ipython(module: ModuleType) -> None:
    """Rebind IPython's display functions in ``module``: ours in a task, IPython's outside one."""
    for name, ours in (("display", capture.display), ("update_display", capture.update_display),
                       ("clear_output", capture.clear_output),
                       ("publish_display_data", capture.publish_display_data)):
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
