"""User-given options shared by the CLI, the %zmq magics and the server: seconds,
ports, ``module:Class`` specs, and the one table format of execution summaries.

Kept apart from cli.py so the Jupyter extension and the server need not import
the command line to parse the same things the same way.
"""

from __future__ import annotations

import argparse
import importlib
import math
import time
from typing import Any


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds, got {text}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type (shared with the %%zmqexec magic): seconds > 0."""
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def nonnegative_seconds(text: str) -> float:
    """argparse type: seconds >= 0."""
    value = _seconds(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1-65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, got {value}")
    return value


def positive_count(text: str) -> int:
    """argparse type: a whole number >= 1 (e.g. ``list --limit``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def session_name(text: str) -> str:
    """argparse type (shared with the magics): a session name the server accepts."""
    from .execution.sessions import check_session_name

    try:
        return check_session_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def format_table(rows: list[dict[str, Any]]) -> str:
    """A readable table of execution summaries (used by the CLI and %zmq)."""
    if not rows:
        return "(no executions)"
    header = ("ID", "NAME", "STATUS", "PROGRESS", "AGE", "RESULT", "SESSION")
    lines = [header]
    now = time.time()
    for r in rows:
        p = r.get("progress") or {}
        prog = ""
        if p:
            prog = f"{p['done']:g}/{p['total']:g}" if p.get("total") else f"{p['done']:g}"
        result = f"{r.get('result_nbytes', 0)} B" if r.get("has_results") else (r.get("reason") or "")[:40]
        lines.append((r["execution_id"], (r.get("name") or "")[:24], r["status"], prog,
                      f"{now - r['created']:.0f}s", result, (r.get("session") or "")[:32]))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines)


def format_sessions(rows: list[dict[str, Any]]) -> str:
    """A readable table of sessions (used by the CLI and %zmq sessions)."""
    if not rows:
        return "(no sessions)"
    lines = [("SESSION", "WORKER", "RUNNING", "QUEUED", "RUNS", "IDLE")]
    for r in rows:
        worker = r.get("worker") or {}
        where = worker.get("address") or (f"pid {worker['pid']}" if worker.get("pid") else "-")
        lines.append((r["session"][:40], where, r.get("running") or "-", str(r["queued"]), str(r["executions"]),
                      f"{r['idle_seconds']:.0f}s"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines)


def load_class(spec: str) -> Any:
    """``"package.module:ClassName"`` -> the class (ValueError when the spec has no colon)."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"expected 'module:Class', got {spec!r}")
    return getattr(importlib.import_module(module), name)
