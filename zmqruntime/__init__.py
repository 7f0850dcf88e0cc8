"""zmqruntime: remote execution of Python over ZeroMQ.

The public API, re-exported::

    from zmqruntime import ExecutionClient, ExecutionServer, progress, Reporter
"""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    ExecutionCancelled,
    ExecutionFailed,
    ExecutionTimeout,
    RemoteError,
    ServerStartError,
    ServerUnavailable,
    ZMQRuntimeError,
)
from .execution import AsyncExecutionClient, Event, ExecutionClient, ExecutionServer, Subscription, TaskContext  # noqa: E402
from .parallel import parallel_map  # noqa: E402
from .reporting import Reporter, progress  # noqa: E402

__all__ = [
    "AsyncExecutionClient", "Event", "ExecutionCancelled", "ExecutionClient", "ExecutionFailed",
    "ExecutionServer", "ExecutionTimeout", "RemoteError", "Reporter", "ServerStartError",
    "ServerUnavailable", "Subscription", "TaskContext", "ZMQRuntimeError", "parallel_map", "progress", "__version__",
]
