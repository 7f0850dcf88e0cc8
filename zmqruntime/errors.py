"""Exceptions a zmqruntime user can catch, in one place.

``ServerUnavailable`` (absent, dead or unreachable server) is deliberately
distinct from ``ExecutionCancelled``: a dead server is never reported as a
cancelled execution.
"""

from __future__ import annotations

from typing import Any, Optional


class ZMQRuntimeError(Exception):
    """Base class of every zmqruntime error."""


class ServerUnavailable(ZMQRuntimeError, ConnectionError):
    """No server answered within the caller's timeout (absent, dead, unreachable)."""


class ServerStartError(ZMQRuntimeError, RuntimeError):
    """A server could not be started (port held by another process, bad options...)."""


class RemoteError(ZMQRuntimeError):
    """The server answered a request with an error reply."""

    def __init__(self, code: str, message: str, details: Optional[dict[str, Any]] = None):
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message
        self.details = details or {}


class ExecutionFailed(RemoteError):
    """The task raised; ``remote_traceback`` holds the formatted remote traceback."""

    @property
    def remote_traceback(self) -> str:
        return "".join((self.details.get("remote_error") or {}).get("traceback", []))

    def __str__(self) -> str:
        tb = self.remote_traceback
        return f"{super().__str__()}\n\nRemote traceback:\n{tb}" if tb else super().__str__()


class ExecutionCancelled(RemoteError):
    """The execution was cancelled (by request or by its timeout)."""


class ExecutionTimeout(ZMQRuntimeError, TimeoutError):
    """``wait`` ran out of time; the execution itself goes on."""


def error_for_code(code: str) -> type[RemoteError]:
    return {"execution_failed": ExecutionFailed, "execution_cancelled": ExecutionCancelled}.get(code, RemoteError)
