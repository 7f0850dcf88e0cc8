"""Execution: the server-side engine, the worker process and the clients."""

from .client import AsyncExecutionClient, Event, ExecutionClient, Subscription
from .server import ExecutionServer
from .runner import TaskContext

__all__ = ["AsyncExecutionClient", "Event", "ExecutionClient", "ExecutionServer", "Subscription", "TaskContext"]
