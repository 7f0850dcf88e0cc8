"""A custom task kind: call an importable function with JSON arguments.

Run a server that knows it, and submit from a matching client::

    zmqruntime serve --port 7790 --ExecutionServer.task_kind_classes='{"call": "call_kind:CallKind"}'
    # (call_kind importable on the server and its workers: PYTHONPATH)

    from call_kind import CallClient
    client = CallClient(connection_file=...)
    exec_id = client.execute(("math:factorial", [20]))
    client.wait(exec_id); client.get_results(exec_id)   # {"_": 2432902008176640000}

The kind validates the task on the server before it is queued (``validate``)
and runs it in a worker (``run``); the client turns a Python value into the
JSON-friendly request (``serialize_task``). The ``config`` of
``execute(task, config)`` reaches both as the task's ``config`` field: here,
default keyword arguments (``client.execute(("builtins:round", [2.567]), {"ndigits": 1})``).
"""

from __future__ import annotations

import importlib
from typing import Any

from zmqruntime import ExecutionClient, TaskContext
from zmqruntime.execution.kinds import TaskKind
from zmqruntime.server import RequestError


class CallKind(TaskKind):
    """``{"kind": "call", "function": "module:name", "args": [...], "kwargs": {...}}``."""

    def validate(self, task: dict[str, Any]) -> dict[str, Any]:
        target = task.get("function")
        if not isinstance(target, str) or ":" not in target:
            raise RequestError("bad_request", "'function' must be 'module:name'")
        if not isinstance(task.get("args", []), list) or not isinstance(task.get("kwargs", {}), dict):
            raise RequestError("bad_request", "'args' must be a list and 'kwargs' an object")
        if not isinstance(task.get("config") or {}, dict):
            raise RequestError("bad_request", "config failed: a call task's config must be an object of "
                                              "keyword arguments")
        return task

    def run(self, task: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        module, _, name = task["function"].partition(":")
        function = getattr(importlib.import_module(module), name)
        kwargs = {**(task.get("config") or {}), **task.get("kwargs", {})}
        return {"_": function(*task.get("args", []), **kwargs)}


class CallClient(ExecutionClient):
    def serialize_task(self, task: Any, config: Any = None, results: Any = None) -> dict[str, Any]:
        if isinstance(task, tuple):
            function, args, *rest = task
            spec = {"kind": "call", "function": function, "args": list(args), "kwargs": rest[0] if rest else {}}
            if config is not None:
                spec["config"] = config
            return spec
        return super().serialize_task(task, config, results=results)
