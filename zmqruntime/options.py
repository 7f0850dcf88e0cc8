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


def format_table(rows: list[dict[str, Any]]) -> str:
    """A readable table of execution summaries (used by the CLI and %zmq)."""
    if not rows:
        return "(no executions)"
    header = ("ID", "NAME", "STATUS", "PROGRESS", "AGE", "RESULT")
    lines = [header]
    now = time.time()
    for r in rows:
        p = r.get("progress") or {}
        prog = ""
        if p:
            prog = f"{p['done']:g}/{p['total']:g}" if p.get("total") else f"{p['done']:g}"
        result = f"{r.get('result_nbytes', 0)} B" if r.get("has_results") else (r.get("reason") or "")[:40]
        lines.append((r["execution_id"], (r.get("name") or "")[:24], r["status"], prog,
                      f"{now - r['created']:.0f}s", result))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines)


def load_class(spec: str) -> Any:
    """``"package.module:ClassName"`` -> the class (ValueError when the spec has no colon)."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"expected 'module:Class', got {spec!r}")
    return getattr(importlib.import_module(module), name)
