"""A custom task kind: call an importable function with JSON arguments.

Run a server with it and submit from a matching client::

    zmqruntime serve --port 7790 --server-class call_kind:CallServer   # call_kind importable (PYTHONPATH)

    from call_kind import CallClient
    client = CallClient(connection_file=...)
    exec_id = client.execute(("math:factorial", [20]))
    client.wait(exec_id); client.get_results(exec_id)   # {"_": 2432902008176640000}

The server side validates the task before queueing it (``validate_task``)
and the worker side runs it (``execute_task``); the client turns a Python
value into the JSON-friendly request (``serialize_task``). The ``config``
of ``execute(task, config)`` reaches both as the task's ``config`` field:
here, default keyword arguments (``client.execute(("builtins:round", [2.567]), {"ndigits": 1})``).
"""

from __future__ import annotations

import importlib
from typing import Any

from zmqruntime import ExecutionClient, ExecutionServer, TaskContext
from zmqruntime.server import RequestError


class CallServer(ExecutionServer):
    task_kinds = ExecutionServer.task_kinds + ("call",)

    def validate_task(self, task: Any) -> dict[str, Any]:
        if isinstance(task, dict) and task.get("kind") == "call":
            target = task.get("function")
            if not isinstance(target, str) or ":" not in target:
                raise RequestError("bad_request", "'function' must be 'module:name'")
            if not isinstance(task.get("args", []), list) or not isinstance(task.get("kwargs", {}), dict):
                raise RequestError("bad_request", "'args' must be a list and 'kwargs' an object")
            if not isinstance(task.get("config") or {}, dict):
                raise RequestError("bad_request", "config failed: a call task's config must be an object of "
                                                  "keyword arguments")
            return task
        return super().validate_task(task)

    def execute_task(self, task: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        if task["kind"] != "call":
            return super().execute_task(task, ctx)
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
