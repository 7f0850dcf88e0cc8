"""Execution: the server-side engine, the worker process and the clients.

The public names are imported on first use (PEP 562), so the worker process
(``python -m zmqruntime.execution``) loads neither the clients nor the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_names

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


__getattr__, __dir__ = lazy_names(globals(), _LAZY, __all__)
