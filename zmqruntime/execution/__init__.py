"""Execution: the server-side engine, the worker process and the clients.

The public names are imported on first use (PEP 562), so the worker process
(``python -m zmqruntime.execution``) loads neither the clients nor the server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import AsyncExecutionClient, Event, ExecutionClient, Subscription
    from .runner import TaskContext
    from .server import ExecutionServer

_LAZY = {
    **dict.fromkeys(("AsyncExecutionClient", "Event", "ExecutionClient", "Subscription"), ".client"),
    "TaskContext": ".runner",
    "ExecutionServer": ".server",
}

__all__ = ["AsyncExecutionClient", "Event", "ExecutionClient", "ExecutionServer", "Subscription", "TaskContext"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
