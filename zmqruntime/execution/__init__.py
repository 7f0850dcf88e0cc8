"""Execution: the server-side engine, the worker process and the clients."""

from .client import AsyncExecutionClient, Event, ExecutionClient, Subscription
from .runner import TaskContext
from .server import ExecutionServer

__all__ = ["AsyncExecutionClient", "Event", "ExecutionClient", "ExecutionServer", "Subscription", "TaskContext"]
