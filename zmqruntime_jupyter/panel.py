"""The widget panel of one execution: progress bar, status, live output, Cancel.

The panel is a pure view of an :class:`~zmqruntime_jupyter.handle.ExecutionHandle`:
``render`` is called by the handle's coalescer (about ten times a second at
most) and sends each widget's changes as one message (``hold_sync``).

Remote output goes to an ``Output`` widget through ``append_stdout`` /
``append_stderr``: widget updates are addressed to the widget's model, so
output lands in this cell's output area even when it arrives while another
cell runs. :class:`LiveOutput` merges consecutive chunks of one stream into
one output entry and keeps only the tail, so a chatty job neither grows the
message size without bound nor makes the browser render thousands of nodes.
"""

from __future__ import annotations

import html
import time
from typing import Any, Callable, Optional

import ipywidgets as W

#: Characters of output the widget keeps (the handle keeps 1 MiB).
WIDGET_KEEP_CHARS = 100_000
TRIM_NOTE = "[… earlier output trimmed here; handle.output keeps more …]\n"

_STYLE = {
    "queued": ("#6c757d", "⏳", "info"),
    "running": ("#0d6efd", "▶", "info"),
    "complete": ("#198754", "✔", "success"),
    "failed": ("#dc3545", "✖", "danger"),
    "cancelled": ("#b35c00", "■", "warning"),
}


class LiveOutput(W.Output):
    """An Output widget for streamed text: merged chunks, bounded size."""

    max_chars = WIDGET_KEEP_CHARS

    def _append_stream_output(self, text: str, stream_name: str) -> None:  # ipywidgets hook
        outs = [dict(o) for o in self.outputs]
        trimmed = bool(outs) and outs[0].get("text") == TRIM_NOTE
        last = outs[-1] if outs and not (trimmed and len(outs) == 1) else None
        if last is not None and last.get("output_type") == "stream" and last.get("name") == stream_name:
            last["text"] = last["text"] + text
        else:
            outs.append({"output_type": "stream", "name": stream_name, "text": text})
        body = outs[1:] if trimmed else outs
        excess = sum(len(o.get("text", "")) for o in body) - self.max_chars
        while excess > 0 and body:
            first = body[0]
            n = len(first.get("text", ""))
            if n <= excess:
                body.pop(0)
                excess -= n
            else:
                first["text"] = first["text"][excess:]
                excess = 0
            trimmed = True
        if trimmed:
            outs = [{"output_type": "stream", "name": "stderr", "text": TRIM_NOTE}] + body
        self.outputs = tuple(outs)


def _duration(seconds: Optional[float]) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) else str(x)


def progress_text(p: Optional[dict[str, Any]], final: bool = False) -> str:
    """``done/total · rate · elapsed · ETA`` for the info label (no ETA once final)."""
    if not p:
        return ""
    done, total = p.get("done") or 0, p.get("total")
    rate, elapsed = p.get("rate") or 0.0, p.get("elapsed")
    parts = [f"{_num(done)}/{_num(total)}" if total else f"{_num(done)} done"]
    parts.append(f"{rate:.3g}/s" if rate else "–/s")
    parts.append(f"elapsed {_duration(elapsed)}")
    if total and rate and done < total and not final:
        parts.append(f"ETA {_duration((total - done) / rate)}")
    return " · ".join(parts)


class ExecutionPanel:
    """Bar + info, status line, live output and a Cancel button for one execution.

    ``progress_after`` > 0 keeps the panel hidden until the execution has
    run that long (or finished), so quick cells stay uncluttered.
    """

    def __init__(self, execution_id: str, name: str = "", on_cancel: Optional[Callable[[], None]] = None,
                 progress_after: float = 0.0):
        self.execution_id = execution_id
        self.name = name
        self._on_cancel = on_cancel
        self.bar = W.FloatProgress(value=0.0, min=0.0, max=1.0, description=name or "zmqexec", bar_style="info",
                                   style={"description_width": "initial"}, layout=W.Layout(width="45%"))
        self.info = W.HTML(value="")
        self.status_label = W.HTML(value=self._status_html("queued", "", []))
        self.output = LiveOutput(layout=W.Layout(max_height="24em", overflow="auto"))
        self.cancel_button = W.Button(description="Cancel", button_style="danger", icon="stop",
                                      tooltip=f"Cancel execution {execution_id}", layout=W.Layout(width="auto"))
        self.cancel_button.on_click(self._clicked)
        self.box = W.VBox([W.HBox([self.bar, self.info, self.cancel_button]), self.status_label, self.output])
        self.progress_after = max(0.0, float(progress_after))
        self._born = time.monotonic()
        self.revealed = self.progress_after <= 0
        self.container = W.VBox([self.box] if self.revealed else [])
        self._handle: Any = None
        self._last_final_rendered = False

    # -- wiring -----------------------------------------------------------------
    def bind(self, handle: Any) -> None:
        self._handle = handle

    def _clicked(self, _button: Any) -> None:
        """The Cancel button: runs on the kernel's main thread when idle, or on a
        subshell thread (JupyterLab, ipykernel >= 7). ``cancel`` is thread-safe."""
        if self._on_cancel is not None:
            self._on_cancel()
        elif self._handle is not None:
            self._handle.cancel_clicked()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.container)

    def reveal_due(self, now: float) -> bool:
        return not self.revealed and now - self._born >= self.progress_after

    def reveal(self) -> None:
        if not self.revealed:
            self.revealed = True
            self.container.children = (self.box,)

    # -- rendering ------------------------------------------------------------------
    def _status_html(self, status: str, detail: str, notes: list[str]) -> str:
        color, icon, _ = _STYLE.get(status, ("#6c757d", "•", "info"))
        ident = f"<code>{html.escape(self.execution_id)}</code>"
        name = f" <i>{html.escape(self.name)}</i>" if self.name else ""
        head = f"<span style='color:{color}'><b>{icon} {html.escape(status)}</b></span>"
        text = f"{head}{html.escape(detail)} · {ident}{name}"
        if notes:
            text += "".join(f"<br><span style='color:#6c757d'>{html.escape(n)}</span>" for n in notes)
        return text

    def render(self, info: dict[str, Any], chunks: list[tuple[str, str]], notes: list[str], final: bool) -> None:
        status = info.get("status", "queued")
        p = info.get("progress")
        _, _, bar_style = _STYLE.get(status, ("", "", "info"))
        with self.bar.hold_sync():
            if p and p.get("total"):
                self.bar.max = float(p["total"])
                self.bar.value = float(min(p.get("done") or 0, p["total"]))
            elif status == "complete":
                self.bar.max, self.bar.value = 1.0, 1.0
            if p and p.get("desc"):
                self.bar.description = str(p["desc"])[:40]
            self.bar.bar_style = bar_style
        self.info.value = html.escape(progress_text(p, final))
        if info.get("namespace_reset"):
            notes = notes + ["the remote worker was restarted: variables from earlier cells are gone"]
        self.status_label.value = self._status_html(status, self._detail(info), notes)
        if chunks:
            with self.output.hold_sync():
                for name, text in _merge(chunks):
                    if name == "stderr":
                        self.output.append_stderr(text)
                    else:
                        self.output.append_stdout(text)
        if final and not self._last_final_rendered:
            self._last_final_rendered = True
            err = info.get("error") or {}
            if status == "failed" and err.get("traceback"):
                self.output.append_stderr("".join(err["traceback"]))
            with self.cancel_button.hold_sync():
                self.cancel_button.disabled = True
                self.cancel_button.description = {"complete": "Done", "cancelled": "Cancelled"}.get(status, "Failed")
                self.cancel_button.button_style = ""

    @staticmethod
    def _detail(info: dict[str, Any]) -> str:
        status = info.get("status")
        if status == "complete":
            took = ""
            if info.get("started") and info.get("finished"):
                secs = info["finished"] - info["started"]
                took = f" in {secs:.2f} s" if secs < 60 else f" in {_duration(secs)}"
            if info.get("result_error"):
                return f"{took}; result could not be pickled: {info['result_error']}"
            if info.get("has_results"):
                return f"{took}; result ready ({info.get('result_nbytes', 0)} B): handle.result()"
            return f"{took}; no result value"
        if status == "failed":
            err = info.get("error") or {}
            what = f"{err.get('ename')}: {err.get('evalue')}" if err.get("ename") else (info.get("reason") or "")
            return f": {what}"
        if status == "cancelled":
            return f": {info.get('reason') or 'cancelled'}"
        return ""


def _merge(chunks: list[tuple[str, str]]) -> list[tuple[str, str]]:
    merged: list[tuple[str, str]] = []
    for name, text in chunks:
        if merged and merged[-1][0] == name:
            merged[-1] = (name, merged[-1][1] + text)
        else:
            merged.append((name, text))
    return merged
