"""zmqruntime_jupyter: run notebook cells on a zmqruntime server, live.

    %load_ext zmqruntime_jupyter

    %%zmqexec
    from zmqruntime import progress
    for f in progress(files, desc="segmenting"):
        ...

gives a ``%%zmqexec`` cell magic (non-blocking, with a progress bar, live
output and a Cancel button) and a ``%zmq`` line magic (``status``,
``list``, ``cancel``, ``result``, ``handle``, ``connect``, ``shutdown``).

Lifecycle: everything the extension opens belongs to one state object kept
on the shell; ``%unload_ext`` closes it (sockets, streams, timers, threads)
and unregisters the magics; ``%reload_ext`` is unload + load, and the new
load re-attaches executions that were still running, so their panels keep
updating and nothing is duplicated.
"""

from __future__ import annotations

from typing import Any, Optional

__version__ = "0.1.0"

_STATE_ATTR = "_zmqruntime_jupyter_state"
_DETACHED_ATTR = "_zmqruntime_jupyter_detached"
_MAGICS = (("cell", "zmqexec"), ("line", "zmq"))


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext zmqruntime_jupyter``."""
    from .connection import ExtensionState
    from .magics import ZMQMagics

    if getattr(ipython, _STATE_ATTR, None) is not None:
        unload_ipython_extension(ipython)  # loaded again without an unload: start clean
    state = ExtensionState(ipython)
    setattr(ipython, _STATE_ATTR, state)
    ipython.register_magics(ZMQMagics(ipython, state))
    detached = getattr(ipython, _DETACHED_ATTR, None) or []
    setattr(ipython, _DETACHED_ATTR, [])
    for handle in detached:
        state.adopt(handle)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext zmqruntime_jupyter``: close everything, remove the magics."""
    state = getattr(ipython, _STATE_ATTR, None)
    if state is not None:
        live = state.close("the zmqruntime_jupyter extension was unloaded")
        kept = getattr(ipython, _DETACHED_ATTR, None) or []
        setattr(ipython, _DETACHED_ATTR, kept + live)
        setattr(ipython, _STATE_ATTR, None)
    manager = getattr(ipython, "magics_manager", None)
    if manager is not None:
        for kind, name in _MAGICS:
            manager.magics[kind].pop(name, None)
        manager.registry.pop("ZMQMagics", None)


def current_state(ipython: Optional[Any] = None) -> Any:
    """The loaded extension's state (connections, handles), or None."""
    if ipython is None:
        from IPython import get_ipython

        ipython = get_ipython()
    return getattr(ipython, _STATE_ATTR, None)


def get_handle(execution_id: str) -> Any:
    """The handle of an execution started in this kernel session (KeyError if unknown)."""
    state = current_state()
    if state is None:
        raise RuntimeError("the zmqruntime_jupyter extension is not loaded")
    return state.handles[execution_id]


def __getattr__(name: str) -> Any:  # lazy: importing the package must not need ipywidgets
    if name == "ExecutionHandle":
        from .handle import ExecutionHandle

        return ExecutionHandle
    if name == "ExecutionPanel":
        from .panel import ExecutionPanel

        return ExecutionPanel
    raise AttributeError(name)


__all__ = ["load_ipython_extension", "unload_ipython_extension", "current_state", "get_handle",
           "ExecutionHandle", "ExecutionPanel", "__version__"]
