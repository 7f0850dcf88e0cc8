"""The panel's output area: each remote output reaches the frontend once.

An ipywidgets ``Output`` syncs its whole ``outputs`` list on every change, so
appending to one widget re-sends the history each time (quadratic traffic
for a long run). :class:`OutputArea` is a ``VBox`` of small ``Output``
segments instead:

* text goes to the last segment while it is shorter than ``SEGMENT_CHARS``,
  then a new segment starts: an update re-sends at most one segment;
* each display output gets its own segment, and a ``display_id`` update
  replaces just the segments showing that id;
* ``clear_output(wait=True)`` clears when the next output arrives;
* only the tail is kept (``max_chars`` of text, ``max_outputs`` displays):
  older segments are closed and a note says how much was dropped
  (``handle.output`` / ``handle.outputs`` keep more).

All segments share one ``Layout`` model, so a new segment costs one small
comm message plus its content.
"""

from __future__ import annotations

from typing import Any, Optional

import ipywidgets as W

#: Characters of text the widget keeps (the handle keeps 1 MiB).
WIDGET_KEEP_CHARS = 100_000
#: Display outputs the widget keeps.
WIDGET_KEEP_OUTPUTS = 100
#: Text per segment: the most a text update re-sends.
SEGMENT_CHARS = 4096


class _Segment:
    __slots__ = ("widget", "kind", "name", "text", "display_id")

    def __init__(self, widget: W.Output, kind: str, name: str = "", display_id: Optional[str] = None):
        self.widget = widget
        self.kind = kind  # "text" or "display"
        self.name = name
        self.text = ""
        self.display_id = display_id


class OutputArea:
    """Remote stdout/stderr and display outputs, appended linearly; see the module docstring."""

    def __init__(self, max_chars: int = WIDGET_KEEP_CHARS, max_outputs: int = WIDGET_KEEP_OUTPUTS,
                 segment_chars: int = SEGMENT_CHARS, layout: Optional[W.Layout] = None):
        self.max_chars = max_chars
        self.max_outputs = max_outputs
        self.segment_chars = segment_chars
        self.box = W.VBox(layout=layout or W.Layout(max_height="24em", overflow="auto"))
        self.box.add_class("zmqruntime-output")
        self._segment_layout = W.Layout()
        self._note = W.HTML()
        self._segments: list[_Segment] = []
        self._chars = 0
        self._displays = 0
        self.dropped_chars = 0
        self.dropped_outputs = 0
        self._clear_on_next = False
        self._changed_children = False

    # -- what the panel calls --------------------------------------------------------------
    def apply(self, items: list[tuple]) -> None:
        """Show ``items`` (("stream", name, text) | ("display", out) | ("update", out) | ("clear", wait))."""
        for item in self._tail(_merge_text(items)):
            kind = item[0]
            if kind == "stream":
                self.append_stream(item[1], item[2])
            elif kind == "display":
                self.add_display(item[1])
            elif kind == "update":
                self.update_display(item[1])
            elif kind == "clear":
                self.clear(wait=item[1])
        self._sync_children()

    def _tail(self, items: list[tuple]) -> list[tuple]:
        """Only what would survive trimming: a flood never creates widgets just to close them."""
        chars = displays = 0
        kept: list[tuple] = []
        for item in reversed(items):
            if item[0] == "stream":
                room = self.max_chars - chars
                if room <= 0:
                    self.dropped_chars += len(item[2])
                    continue
                if len(item[2]) > room:
                    self.dropped_chars += len(item[2]) - room
                    item = ("stream", item[1], item[2][-room:])
                chars += len(item[2])
            elif item[0] == "display":
                if displays >= self.max_outputs:
                    self.dropped_outputs += 1
                    continue
                displays += 1
            kept.append(item)
        if len(kept) < len(items) or chars < sum(len(i[2]) for i in items if i[0] == "stream"):
            self._changed_children = True  # the note says what was dropped
        kept.reverse()
        return kept

    def append_stream(self, name: str, text: str) -> None:
        if not text:
            return
        self._maybe_clear()
        while text:
            last = self._segments[-1] if self._segments else None
            if last is None or last.kind != "text" or last.name != name or len(last.text) >= self.segment_chars:
                last = self._new_segment("text", name)
            room = max(self.segment_chars - len(last.text), 0)
            piece, text = (text, "") if len(text) <= room else (text[:room], text[room:])
            last.text += piece
            last.widget.outputs = ({"output_type": "stream", "name": name, "text": last.text},)
            self._chars += len(piece)
        self._trim()

    def add_display(self, output: dict[str, Any]) -> None:
        self._maybe_clear()
        seg = self._new_segment("display", display_id=_display_id(output))
        seg.widget.outputs = (_clean(output),)
        self._displays += 1
        self._trim()

    def update_display(self, output: dict[str, Any]) -> None:
        display_id = _display_id(output)
        for seg in self._segments:
            if seg.kind == "display" and display_id and seg.display_id == display_id:
                seg.widget.outputs = (_clean(output),)

    def clear(self, wait: bool = False) -> None:
        if wait:
            self._clear_on_next = True
            return
        self._clear_on_next = False
        for seg in self._segments:
            seg.widget.close()
        self._segments = []
        self._chars = self._displays = 0
        self.dropped_chars = self.dropped_outputs = 0
        self._changed_children = True

    @property
    def outputs(self) -> list[dict[str, Any]]:
        """Every output shown now, in order (for tests and inspection)."""
        return [o for seg in self._segments for o in seg.widget.outputs]

    @property
    def segments(self) -> int:
        return len(self._segments)

    # -- internals --------------------------------------------------------------------------
    def _maybe_clear(self) -> None:
        if self._clear_on_next:
            self.clear(wait=False)

    def _new_segment(self, kind: str, name: str = "", display_id: Optional[str] = None) -> _Segment:
        seg = _Segment(W.Output(layout=self._segment_layout), kind, name, display_id)
        self._segments.append(seg)
        self._changed_children = True
        return seg

    def _trim(self) -> None:
        while self._segments and (self._chars > self.max_chars or self._displays > self.max_outputs):
            seg = self._segments.pop(0)
            if seg.kind == "text":
                self._chars -= len(seg.text)
                self.dropped_chars += len(seg.text)
            else:
                self._displays -= 1
                self.dropped_outputs += 1
            seg.widget.close()
            self._changed_children = True

    def _sync_children(self) -> None:
        if not self._changed_children:
            return
        self._changed_children = False
        children: list[W.Widget] = [seg.widget for seg in self._segments]
        if self.dropped_chars or self.dropped_outputs:
            what = []
            if self.dropped_chars:
                what.append(f"{self.dropped_chars:,} characters")
            if self.dropped_outputs:
                what.append(f"{self.dropped_outputs} outputs")
            self._note.value = (f"<span style='color:#6c757d'>[… {' and '.join(what)} of earlier output trimmed "
                                f"here; handle.output and handle.outputs keep more …]</span>")
            children.insert(0, self._note)
        self.box.children = tuple(children)


def _merge_text(items: list[tuple]) -> list[tuple]:
    """Consecutive text of one stream as one item (one widget update per flush)."""
    merged: list[tuple] = []
    for item in items:
        if item[0] == "stream" and merged and merged[-1][0] == "stream" and merged[-1][1] == item[1]:
            merged[-1] = ("stream", item[1], merged[-1][2] + item[2])
        else:
            merged.append(item)
    return merged


def _display_id(output: dict[str, Any]) -> Optional[str]:
    return (output.get("transient") or {}).get("display_id")


def _clean(output: dict[str, Any]) -> dict[str, Any]:
    """An nbformat display_data output (no transient or zmqruntime keys)."""
    return {"output_type": "display_data", "data": output.get("data") or {}, "metadata": output.get("metadata") or {}}
