"""Task kinds: what a task is, checked on the server and run by a worker.

A kind is a small class with two methods: ``validate`` runs in the server
before a task is queued (cheap checks; a bad task is refused with a clear
``RequestError`` and nothing runs), ``run`` runs in whichever worker the
backend uses and returns ``{name: value}`` results. The built-in ``python``
kind runs source code; others plug in by configuration, without a server
subclass::

    zmqruntime serve --ExecutionServer.task_kind_classes='{"call": "call_kind:CallKind"}'

The mapping travels to every worker (local processes, dask workers), which
import the same classes, so the module must be importable there too.
"""

from __future__ import annotations

import keyword
from typing import Any, Mapping

from ..server import RequestError
from .runner import TaskContext, run_python_source


class TaskKind:
    """One kind of task. Subclass, then name it in ``ExecutionServer.task_kind_classes``."""

    def validate(self, task: dict[str, Any]) -> dict[str, Any]:
        """Server side, before queueing: return the task (possibly normalised) or raise RequestError."""
        return task

    def run(self, task: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        """Worker side: do the work in ``ctx.namespace``; return the results."""
        raise NotImplementedError


class PythonSource(TaskKind):
    """``{"kind": "python", "code": ..., "results": [names], "config": ...}``: source run in the session's namespace.

    ``config`` (optional) runs first in the same namespace: source code, or an
    object of names bound to values (docs/protocol.md, ``execute``).
    """

    def validate(self, task: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(task.get("code"), str):
            raise RequestError("bad_request", "python task needs 'code' as a string")
        names = task.get("results", [])
        if not isinstance(names, list) or not all(
                isinstance(n, str) and n.isidentifier() and not keyword.iskeyword(n) for n in names):
            raise RequestError("bad_request", "'results' must be a list of variable names")
        check_syntax(task["code"])
        check_python_config(task.get("config"))
        return task

    def run(self, task: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        return run_python_source(task, ctx)


#: Sources seen to compile, most recent last: the same cell submitted again (a
#: loop of ``execute``) skips the compile, which on a freshly woken server costs
#: more than the rest of accepting it. Short sources only, so it stays small.
_COMPILED: dict[str, None] = {}
COMPILED_CACHE_ENTRIES, COMPILED_CACHE_MAX_CHARS = 256, 4096


def check_syntax(code: str) -> None:
    """RequestError ``syntax_error`` unless ``code`` compiles (the compile is not kept)."""
    if code in _COMPILED:
        return
    try:
        compile(code, "<zmqexec>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise RequestError("syntax_error", f"{exc.msg} (line {exc.lineno})", lineno=exc.lineno,
                           text=exc.text) from None
    if len(code) <= COMPILED_CACHE_MAX_CHARS:
        _COMPILED[code] = None
        if len(_COMPILED) > COMPILED_CACHE_ENTRIES:
            del _COMPILED[next(iter(_COMPILED))]


def check_python_config(config: Any) -> None:
    """A python task's ``config``: null, source that compiles, or an object of names to values."""
    if config is None:
        return
    if isinstance(config, str):
        try:
            compile(config, "<zmqexec-config>", "exec", dont_inherit=True)
        except SyntaxError as exc:
            raise RequestError("syntax_error", f"config failed: {exc.msg} (line {exc.lineno})",
                               lineno=exc.lineno, text=exc.text, where="config") from None
        return
    if not isinstance(config, dict) or not all(isinstance(k, str) and k.isidentifier() and not keyword.iskeyword(k)
                                               for k in config):
        raise RequestError("bad_request", "'config' must be Python source (a string) or an object whose keys "
                                          "are variable names")


BUILTIN_KINDS = {"python": "zmqruntime.execution.kinds:PythonSource"}


def load_kinds(specs: Mapping[str, str]) -> dict[str, TaskKind]:
    """``{name: TaskKind instance}`` from ``{name: "module:Class"}``; ValueError saying what is wrong."""
    import importlib

    kinds: dict[str, TaskKind] = {}
    for name, spec in {**BUILTIN_KINDS, **specs}.items():
        if not isinstance(name, str) or not name or not isinstance(spec, str):
            raise ValueError(f"task kinds map names to 'module:Class' strings, got {name!r}: {spec!r}")
        module, sep, attr = spec.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr) if sep else None
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"task kind {name!r}: cannot import {spec!r}: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, TaskKind)):
            raise ValueError(f"task kind {name!r}: {spec!r} is not a TaskKind class")
        kinds[name] = cls()
    return kinds
