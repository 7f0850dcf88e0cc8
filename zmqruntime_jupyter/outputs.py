"""Remote output as the notebook keeps it: text tails, display outputs, tqdm bars.

:class:`OutputBuffer` is fed the ``stream`` and display/bar events of one
execution in order. It keeps the last ``OUTPUT_KEEP_CHARS`` of stdout, stderr
and both interleaved (``handle.output``), the display outputs and bars
(:class:`~zmqruntime.execution.displaylog.DisplayLog`), and the items the panel
has not shown yet, in arrival order, each exactly once: the panel appends
them, it never re-sends what it already showed. After a gap it reconciles from
a ``status`` snapshot, appending only what it had not seen. The server keeps
the same amount of text per stream (``handle.fetch_output()`` reads it).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from zmqruntime.execution.displaylog import DisplayLog, display_id_of, output_of
from zmqruntime.protocol import OUTPUT_KEEP_CHARS

#: What the panel is told, in order: ("stream", name, text) | ("display", output) |
#: ("update", output) | ("clear", wait)
Item = tuple


class OutputBuffer:
    def __init__(self, echo: Optional[Callable[[str, str], None]] = None, for_panel: bool = True,
                 show_result: bool = True):
        self.stdout = ""
        self.stderr = ""
        self.text = ""
        self.seen = {"stdout": 0, "stderr": 0}  # characters ever received per stream
        self.displays = DisplayLog()
        self.bars_changed = False
        self._echo = echo  # --quiet --block: remote text straight to the cell's streams
        self._for_panel = for_panel
        self._show_result = show_result  # the last expression's repr (a --block cell's Out shows the value)
        self._pending: list[Item] = []

    # -- events -------------------------------------------------------------------------
    def stream(self, name: str, text: str) -> None:
        if not text:
            return
        name = "stderr" if name == "stderr" else "stdout"
        self.seen[name] += len(text)
        if name == "stdout":
            self.stdout = (self.stdout + text)[-OUTPUT_KEEP_CHARS:]
        else:
            self.stderr = (self.stderr + text)[-OUTPUT_KEEP_CHARS:]
        self.text = (self.text + text)[-OUTPUT_KEEP_CHARS:]
        if self._echo is not None:
            self._echo(name, text)
        self._queue(("stream", name, text))

    def display_event(self, kind: str, content: dict[str, Any]) -> None:
        """``display_data`` / ``update_display_data`` / ``clear_output`` / ``bar`` (malformed ones ignored)."""
        if not self.displays.apply(kind, content):
            return
        if kind == "display_data":
            if self._shows(content):
                self._queue(("display", output_of(content)))
        elif kind == "update_display_data":
            self._queue(("update", output_of(content)))
        elif kind == "clear_output":
            self._queue(("clear", bool(content.get("wait"))))
        elif kind == "bar":
            self.bars_changed = True
        if self._echo is not None and kind == "display_data" and not content.get("result"):  # Out shows it
            self._echo("stdout", _plain(content) + "\n")

    def _shows(self, display: dict[str, Any]) -> bool:
        """Whether the panel shows this display: not the last expression's value when the cell's Out does."""
        return self._show_result or not display.get("result")

    def _queue(self, item: Item) -> None:
        if self._for_panel:
            self._pending.append(item)

    def take(self) -> list[Item]:
        """The items the panel has not shown yet (each handed out once)."""
        items, self._pending = self._pending, []
        self.bars_changed = False
        return items

    # -- catching up from a status snapshot -------------------------------------------------
    def reconcile(self, status: dict[str, Any]) -> Optional[str]:
        """Append what the stream missed; a note if some of it is gone for good."""
        note = None
        for name in ("stdout", "stderr"):
            note = self._reconcile_text(name, status) or note
        if "outputs" in status:
            self._reconcile_displays(status)
        return note

    def _reconcile_text(self, name: str, status: dict[str, Any]) -> Optional[str]:
        text = status.get(name) or ""
        total = status.get(f"{name}_total")  # exact, if the server reports it
        if total is None and not status.get("output_truncated"):
            total = len(text)
        seen = self.seen[name]
        if total is None:
            # Server kept only the tail and does not say how long the stream was.
            if seen == 0 and text:
                self.stream(name, "[… earlier output truncated on the server …]\n" + text)
            elif text:
                return "some output was dropped while catching up (see handle.refresh())"
            return None
        start = total - len(text)
        if seen < start:
            self.stream(name, f"\n[… {start - seen} characters of output dropped …]\n")
            self.seen[name] = seen = start
        missing = text[seen - start:]
        if missing:
            self.stream(name, missing)
        self.seen[name] = max(self.seen[name], total)
        return None

    def _reconcile_displays(self, status: dict[str, Any]) -> None:
        outputs = list(status.get("outputs") or [])
        mine = {display_id_of(o): o for o in self.displays.outputs if display_id_of(o)}
        for output in outputs:  # a display_id update that was missed: replace in place
            old = mine.get(display_id_of(output))
            if old is not None and old.get("data") != output.get("data"):
                self._queue(("update", output))
        missed = int(status.get("outputs_total") or 0) - self.displays.total
        if missed > 0:
            for output in outputs[-missed:]:
                if self._shows(output):
                    self._queue(("display", output))
            if missed > len(outputs):
                self.stream("stderr", f"[… {missed - len(outputs)} display output(s) dropped …]\n")
        self.displays.adopt(status)
        self.bars_changed = True


def _plain(content: dict[str, Any]) -> str:
    data = content.get("data") or {}
    text = data.get("text/plain")
    if text is not None:
        return str(text)
    return "<" + ", ".join(sorted(data)) + " output>"
