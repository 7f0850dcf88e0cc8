"""The display outputs and tqdm bars of one execution, folded from its events.

One model for every reader of ``display_data`` / ``update_display_data`` /
``clear_output`` / ``bar`` events (docs/protocol.md): the server's record (so
``status`` carries them and a script can save a remote figure), the Jupyter
handle and the terminal. Bounded: the newest ``max_outputs`` outputs within
``max_bytes`` are kept, with a count of those dropped.
"""

from __future__ import annotations

import json
from typing import Any, Optional

DISPLAY_EVENTS = ("display_data", "update_display_data", "clear_output")
BAR_EVENT = "bar"
OUTPUT_EVENTS = DISPLAY_EVENTS + (BAR_EVENT,)
MAX_OUTPUTS = 200
MAX_BYTES = 32 << 20
BAR_FIELDS = ("bar", "desc", "n", "total", "rate", "elapsed", "unit", "position", "leave", "closed")


def well_formed(kind: str, content: Any) -> bool:
    """Is this display/bar event's content usable? (Malformed ones are ignored, never applied.)"""
    if not isinstance(content, dict):
        return False
    if kind in ("display_data", "update_display_data"):
        data, metadata = content.get("data"), content.get("metadata", {})
        transient = content.get("transient", {})
        return (isinstance(data, dict) and all(isinstance(k, str) for k in data) and isinstance(metadata, dict)
                and isinstance(transient, dict) and (kind == "display_data" or bool(transient.get("display_id"))))
    if kind == BAR_EVENT:
        numbers = [content.get(k) for k in ("n", "total", "rate", "elapsed")]
        return type(content.get("bar")) is int and all(x is None or isinstance(x, (int, float)) for x in numbers)
    return kind == "clear_output"


def output_of(content: dict[str, Any]) -> dict[str, Any]:
    """The nbformat-style output of a display event: ``{"output_type": "display_data", ...}``."""
    out = {"output_type": "display_data", "data": content.get("data") or {}, "metadata": content.get("metadata") or {}}
    display_id = (content.get("transient") or {}).get("display_id")
    if display_id:
        out["transient"] = {"display_id": display_id}
    if content.get("result"):
        out["result"] = True
    return out


def display_id_of(output: dict[str, Any]) -> Optional[str]:
    return (output.get("transient") or {}).get("display_id")


class DisplayLog:
    """Outputs (in order), a display-id index for updates, and the bars' latest rows."""

    def __init__(self, max_outputs: int = MAX_OUTPUTS, max_bytes: int = MAX_BYTES):
        self.max_outputs = max_outputs
        self.max_bytes = max_bytes
        self.outputs: list[dict[str, Any]] = []
        self.total = 0  # display outputs ever added
        self.dropped = 0  # ... and not kept (limits, clear_output)
        self.bars: dict[int, dict[str, Any]] = {}
        self._sizes: list[int] = []
        self._clear_pending = False

    def apply(self, kind: str, content: dict[str, Any]) -> bool:
        """Fold one event in; False if it is not a well-formed display or bar event."""
        if not well_formed(kind, content):
            return False
        if kind == "display_data":
            self._add(output_of(content))
        elif kind == "update_display_data":
            self.update(output_of(content))
        elif kind == "clear_output":
            if content.get("wait"):
                self._clear_pending = True
            else:
                self.clear()
        elif kind == BAR_EVENT:
            self.bar(content)
        else:
            return False
        return True

    def _add(self, output: dict[str, Any]) -> None:
        if self._clear_pending:
            self.clear()
        self.outputs.append(output)
        self._sizes.append(len(json.dumps(output["data"])))
        self.total += 1
        while len(self.outputs) > self.max_outputs or (len(self.outputs) > 1 and sum(self._sizes) > self.max_bytes):
            self.outputs.pop(0)
            self._sizes.pop(0)
            self.dropped += 1

    def update(self, output: dict[str, Any]) -> list[int]:
        """Replace every output with the same display id; the indexes replaced."""
        display_id = display_id_of(output)
        hits = [i for i, o in enumerate(self.outputs) if display_id and display_id_of(o) == display_id]
        for i in hits:
            self.outputs[i] = output
            self._sizes[i] = len(json.dumps(output["data"]))
        return hits

    def clear(self) -> None:
        self.dropped += len(self.outputs)
        self.outputs.clear()
        self._sizes.clear()
        self._clear_pending = False

    def bar(self, content: dict[str, Any]) -> None:
        row = {k: content.get(k) for k in BAR_FIELDS}
        row["position"] = row["position"] if type(row["position"]) is int else 0
        bar_id: int = content["bar"]
        if row["closed"] and not row["leave"]:
            self.bars.pop(bar_id, None)  # leave=False: the row goes away when done
        else:
            self.bars[bar_id] = row

    def outermost_bar(self) -> Optional[dict[str, Any]]:
        """The bar a single progress bar should follow: lowest position, then the newest."""
        if not self.bars:
            return None
        return min(self.bars.values(), key=lambda r: (r.get("position") or 0, -(r.get("bar") or 0)))

    def to_status(self) -> dict[str, Any]:
        return {"outputs": list(self.outputs), "outputs_total": self.total, "outputs_dropped": self.dropped,
                "bars": sorted(self.bars.values(), key=lambda r: r["bar"])}

    def adopt(self, status: dict[str, Any]) -> None:
        """Take the server's view (``status``) after events were missed."""
        self.outputs = list(status.get("outputs") or [])
        self._sizes = [len(json.dumps(o.get("data") or {})) for o in self.outputs]
        self.total = int(status.get("outputs_total") or len(self.outputs))
        self.dropped = int(status.get("outputs_dropped") or 0)
        self.bars = {r["bar"]: r for r in status.get("bars") or [] if isinstance(r, dict) and "bar" in r}


__all__ = ["DisplayLog", "DISPLAY_EVENTS", "BAR_EVENT", "OUTPUT_EVENTS", "output_of", "display_id_of", "well_formed"]
