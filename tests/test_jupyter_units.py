"""Unit tests of the extension's model: no kernel, no server.

The handle's event path (ordering, duplicates, gap repair from ``status``,
output reconciliation), the coalescer's rate bound and the output widget's
bounded merging are checked here directly, quickly and deterministically.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import pytest

from zmqruntime.execution.client import Event
from zmqruntime_jupyter.handle import ExecutionHandle
from zmqruntime_jupyter.output_area import OutputArea
from zmqruntime_jupyter.outputs import OutputBuffer
from zmqruntime_jupyter.panel import ExecutionPanel, progress_text
from zmqruntime_jupyter.stream import Coalescer

pytestmark = pytest.mark.timeout(30)


class FakeClient:
    def __init__(self) -> None:
        self.status: dict[str, Any] = {}
        self.status_calls = 0
        self.cancelled: list[tuple[str, Optional[str]]] = []

    def get_status(self, exec_id: str) -> dict[str, Any]:
        self.status_calls += 1
        return dict(self.status)

    def cancel(self, exec_id: str, reason: Optional[str] = None) -> dict[str, Any]:
        self.cancelled.append((exec_id, reason))
        return {"execution_id": exec_id, "cancelled": True, "status": "running"}

    def get_results(self, exec_id: str) -> dict[str, Any]:
        return {"_": 42}


class FakeConnection:
    """Just what a handle uses; background calls run inline (loop=None)."""

    def __init__(self) -> None:
        self.connection_file = "/tmp/fake.json"
        self.loop = None
        self.closed = False
        self.client = FakeClient()
        self.handles: dict[str, ExecutionHandle] = {}

    def call_in_background(self, fn, callback) -> None:
        try:
            result = fn()
        except Exception as exc:  # pragma: no cover - not used here
            callback(None, exc)
        else:
            callback(result, None)

    def unfollow(self, handle: ExecutionHandle) -> None:
        self.handles.pop(handle.id, None)

    def follow(self, handle: ExecutionHandle) -> None:
        self.handles[handle.id] = handle


def ev(kind: str, seq: int, **content: Any) -> Event:
    return Event(kind, "abc", seq, {"execution_id": "abc", "seq": seq, **content})


def status(seq: int, **kw: Any) -> dict[str, Any]:
    base = {"execution_id": "abc", "status": "running", "seq": seq, "progress": None, "stdout": "", "stderr": "",
            "output_truncated": False, "has_results": False, "reason": None, "error": None}
    base.update(kw)
    return base


def make() -> tuple[ExecutionHandle, FakeConnection]:
    conn = FakeConnection()
    handle = ExecutionHandle("abc", conn)  # type: ignore[arg-type]
    conn.handles["abc"] = handle
    return handle, conn


def test_events_apply_in_order_and_duplicates_are_ignored():
    h, _ = make()
    h.recovered(status(1, status="queued"))
    h.on_event(ev("status", 2, status="running"))
    h.on_event(ev("stream", 3, name="stdout", text="a\n"))
    h.on_event(ev("stream", 3, name="stdout", text="a\n"))  # duplicate (stream + pump)
    h.on_event(ev("progress", 4, done=5, total=10, desc="x", rate=1.0, elapsed=5.0))
    assert h.output == "a\n" and h.seq == 4
    assert h.progress["done"] == 5 and h.status_cached == "running"
    h.on_event(ev("done", 5, status="complete", has_results=True, reason=None, error=None))
    assert h.final and h.status_cached == "complete"


def test_gap_is_repaired_from_status_without_duplicating_output():
    h, conn = make()
    h.recovered(status(2))
    h.on_event(ev("stream", 3, name="stdout", text="one\n"))
    # events 4 and 5 lost; 6 arrives: the handle asks for status (seq 5)
    conn.client.status = status(5, stdout="one\ntwo\nthree\n", stderr="warn\n",
                                progress={"done": 3, "total": 9, "desc": "", "rate": 1, "elapsed": 3})
    h.on_event(ev("stream", 6, name="stdout", text="four\n"))
    assert conn.client.status_calls == 1
    assert h.stdout == "one\ntwo\nthree\nfour\n"
    assert h.stderr == "warn\n"
    assert h.seq == 6 and h.progress["done"] == 3


def test_status_with_stream_totals_marks_dropped_output():
    h, conn = make()
    h.recovered(status(1))
    # The server kept only the last 4 characters of 10 (stdout_total is exact).
    conn.client.status = status(9, stdout="ghij", stdout_total=10, output_truncated=True)
    h.on_event(ev("stream", 10, name="stdout", text="K"))
    assert "6 characters of output dropped" in h.stdout
    assert h.stdout.endswith("ghijK")


def test_lost_done_is_found_by_the_watchdog_status_poll():
    h, conn = make()
    h.recovered(status(1, status="queued"))
    assert not h.final
    conn.client.status = status(4, status="complete", has_results=True)
    h.tick(time.monotonic() + 60)  # the watchdog is due: it polls status
    assert h.final and h.state["has_results"]


def test_cancel_from_another_thread_only_marks_ui_dirty():
    import threading

    h, conn = make()
    h.recovered(status(1))
    t = threading.Thread(target=h.cancel_clicked, name="subshell-like")
    t.start()
    t.join(5)
    assert conn.client.cancelled == [("abc", "cancelled with the Cancel button")]
    assert h.cancel_origin == "subshell-like"
    assert h.view.dirty_from_other_thread


def test_coalescer_bounds_flush_rate():
    calls: list[float] = []
    c = Coalescer(lambda: calls.append(time.monotonic()), loop=None, interval=0.1)
    end = time.monotonic() + 0.55
    while time.monotonic() < end:
        c.poke()
        c.pump()
    c.poke(urgent=True)
    assert 2 <= len(calls) <= 8  # at most 1 + 0.55/0.1 + the urgent one, however many pokes
    gaps = [b - a for a, b in zip(calls, calls[1:-1])]
    assert all(g >= 0.099 for g in gaps)


def test_output_area_appends_in_segments_and_keeps_a_bounded_tail():
    area = OutputArea(max_chars=100, segment_chars=30)
    for _ in range(30):
        area.apply([("stream", "stdout", "x" * 9 + "\n")])
    assert sum(len(o["text"]) for o in area.outputs) <= 100
    assert area.dropped_chars == 300 - sum(len(o["text"]) for o in area.outputs)
    assert "trimmed" in area.box.children[0].value  # the note says so
    area.apply([("stream", "stderr", "err\n")])
    assert area.outputs[-1] == {"output_type": "stream", "name": "stderr", "text": "err\n"}


def test_output_area_display_updates_replace_and_clear_waits_for_the_next_output():
    area = OutputArea()
    shown = {"output_type": "display_data", "data": {"text/plain": "one"}, "metadata": {},
             "transient": {"display_id": "d1"}}
    area.apply([("stream", "stdout", "a\n"), ("display", shown), ("stream", "stdout", "b\n")])
    assert [o.get("text") or o["data"]["text/plain"] for o in area.outputs] == ["a\n", "one", "b\n"]
    area.apply([("update", {**shown, "data": {"text/plain": "two"}})])
    assert [o.get("text") or o["data"]["text/plain"] for o in area.outputs] == ["a\n", "two", "b\n"]
    area.apply([("clear", True)])
    assert len(area.outputs) == 3  # wait=True: cleared only when the next output comes
    area.apply([("stream", "stdout", "c\n")])
    assert area.outputs == [{"output_type": "stream", "name": "stdout", "text": "c\n"}]


def test_progress_text_and_panel_render():
    assert progress_text({"done": 50, "total": 100, "rate": 10.0, "elapsed": 5.0}) == \
        "50/100 · 10/s · elapsed 0:05 · ETA 0:05"
    assert progress_text({"done": 7, "total": None, "rate": 0, "elapsed": 1}).startswith("7 done")
    # a cancelled (final) execution has no ETA, whatever its done/total
    assert "ETA" not in progress_text({"done": 50, "total": 100, "rate": 10.0, "elapsed": 5.0}, final=True)
    panel = ExecutionPanel("abc", "job")
    panel.render({"status": "running", "progress": {"done": 3, "total": 4, "desc": "d", "rate": 1, "elapsed": 3}},
                 [("stream", "stdout", "a"), ("stream", "stdout", "b"), ("stream", "stderr", "c")], [], False)
    assert panel.bar.value == 3 and panel.bar.max == 4 and panel.bar.description == "d"
    assert [o["text"] for o in panel.output.outputs] == ["ab", "c"]
    panel.render({"status": "failed", "error": {"ename": "E", "evalue": "v", "traceback": ["Traceback\n", "E: v\n"]}},
                 [], [], True)
    assert "failed" in panel.status_label.value and "E: v" in panel.status_label.value
    assert panel.cancel_button.disabled
    assert "Traceback" in panel.output.outputs[-1]["text"]


# -- progress floods: superseded progress events are skipped, not gaps --------------------------------

KEY = "k" * 64
EID = "a1b2c3d4e5f6"


def wire(kind: str, seq: int, key: str = KEY, **data: Any) -> list[bytes]:
    """One data-channel message as subscribers receive it (content laid out as the worker does)."""
    from zmqruntime.protocol import Session, event_topic

    content = {"execution_id": EID, "seq": seq, "time": 1.0, **data}
    return Session(key).serialize(kind, content, topic=event_topic(EID, kind))


def prog(seq: int, key: str = KEY) -> list[bytes]:
    return wire("progress", seq, key, done=seq, total=100, desc="flood", rate=1.0, elapsed=1.0)


def out(seq: int, text: str) -> list[bytes]:
    return wire("stream", seq, name="stdout", text=text)


def flood_handle() -> tuple[ExecutionHandle, FakeConnection, Any]:
    from zmqruntime.protocol import Session
    from zmqruntime_jupyter.stream import EventBatches

    conn = FakeConnection()
    h = ExecutionHandle(EID, conn)  # type: ignore[arg-type]
    conn.handles[EID] = h
    h.recovered(status(2, execution_id=EID))  # queued (1), running (2) already known
    batches = EventBatches(Session(KEY), lambda e: conn.handles[e.execution_id].on_event(e),
                           lambda eid, seqs: conn.handles[eid].skipped_progress(seqs))
    return h, conn, batches


def test_flood_batch_applies_every_stream_event_and_only_the_newest_progress():
    h, conn, batches = flood_handle()
    applied: list[tuple[str, int]] = []
    inner = batches.on_event
    batches.on_event = lambda e: (applied.append((e.type, e.seq)), inner(e))
    batches.handle_batch([prog(3), prog(4), out(5, "a\n"), prog(6), prog(7), prog(8), out(9, "b\n"),
                          prog(10), prog(11)])
    assert applied == [("stream", 5), ("stream", 9), ("progress", 11)]  # arrival order, newest progress only
    assert (batches.received, batches.skipped, batches.applied, batches.dropped) == (9, 6, 3, 0)
    assert h.output == "a\nb\n" and h.progress["done"] == 11 and h.seq == 11
    assert conn.client.status_calls == 0 and h.gaps == 0  # no recovery
    assert h.sequencer.skipped_pending == 0
    # The next batch goes on from there; a stale repeat of an old seq changes nothing.
    batches.handle_batch([prog(7), prog(12), out(13, "c\n"), prog(14), wire("status", 15, status="complete"),
                          wire("done", 16, status="complete", has_results=False)])
    assert h.final and h.output == "a\nb\nc\n" and h.progress["done"] == 14
    assert conn.client.status_calls == 0 and h.gaps == 0


def test_a_lost_stream_event_is_still_a_gap_among_skipped_progress():
    h, conn, batches = flood_handle()
    # stream 5 ("a\n") was lost on the way: 6-8 and 10 are skipped progress, but 5 is not.
    conn.client.status = status(9, execution_id=EID, stdout="a\nb\n",
                                progress={"done": 8, "total": 100, "desc": "flood", "rate": 1.0, "elapsed": 1.0})
    batches.handle_batch([prog(3), prog(4), prog(6), prog(7), prog(8), out(9, "b\n"), prog(10), prog(11)])
    assert h.gaps == 1 and conn.client.status_calls == 1  # one recovery
    assert h.output == "a\nb\n"  # repaired from status, nothing twice
    assert h.seq == 11 and h.progress["done"] == 11 and not h.recovering


def test_an_unauthentic_superseded_progress_message_does_not_excuse_a_gap():
    h, conn, batches = flood_handle()
    conn.client.status = status(4, execution_id=EID)
    batches.handle_batch([prog(3, key="x" * 64), prog(4)])  # 3 fails verification
    assert batches.dropped == 1 and batches.skipped == 0
    assert h.gaps == 1 and conn.client.status_calls == 1 and h.seq == 4


def test_the_workers_own_wire_form_is_recognised_as_skippable():
    """The fast path reads seq from the content bytes: check it against the real emitter."""
    from zmqruntime.execution.worker import KIND_EVENT
    from zmqruntime.protocol import Session, unpack_frames
    from zmqruntime_jupyter.stream import skippable, triage

    sent: list[bytes] = []
    w = emitter(sent)
    for i in range(3):
        w._progress_sent = None  # as if no progress was ever sent: each goes alone
        w._progress_sink(i, 3, "d", 1.0, 0.5)
    batch = [unpack_frames(d) for d in sent if d != KIND_EVENT]
    to_apply, superseded = triage(batch)
    assert len(to_apply) == 1 and skippable(Session(KEY), superseded[EID.encode()]) == [3, 4]


def emitter(sent: list) -> Any:
    """A Worker with only its event-sending parts, writing to ``sent``."""
    import threading

    from zmqruntime.execution.worker import InterruptGuard, Worker
    from zmqruntime.protocol import Session

    class Sock:
        def send(self, data: Any, flags: int = 0) -> None:
            sent.append(data)

    w = Worker.__new__(Worker)
    w.session, w.lock, w.guard, w.sock = Session(KEY), threading.Lock(), InterruptGuard(), Sock()
    w.execution_id, w.seq = EID, 2
    w._progress_rows, w._progress_sent = [], None
    return w


def test_a_fresh_workers_first_progress_goes_at_once_whatever_the_uptime(monkeypatch):
    """On a freshly booted machine the monotonic clock reads near zero: the first event must not wait."""
    from zmqruntime.execution import worker
    from zmqruntime.execution.worker import KIND_EVENT
    from zmqruntime.protocol import unpack_frames

    monkeypatch.setattr(worker.time, "monotonic", lambda: 0.001)  # seconds after boot
    sent: list[bytes] = []
    w = emitter(sent)
    w._progress_sink(1, 10, "first", 1.0, 0.1)
    msgs = [unpack_frames(d) for d in sent if d != KIND_EVENT]
    assert [m[0].decode().split(".", 1)[1] for m in msgs] == ["progress"]


def test_a_progress_batch_applies_its_newest_event_and_skips_the_rest(monkeypatch):
    """Fast progress leaves the worker as one progress_batch; the kernel applies only its newest row."""
    from zmqruntime.execution import worker
    from zmqruntime.execution.worker import KIND_EVENT
    from zmqruntime.protocol import unpack_frames

    monkeypatch.setattr(worker, "PROGRESS_BATCH_WINDOW", 600.0)  # "back to back", however loaded the machine
    sent: list[bytes] = []
    w = emitter(sent)
    for i in range(1, 6):  # back to back: the first goes alone, the other four wait for a flush
        w._progress_sink(i, 100, "flood", 1.0, 0.5)
    w.flush_progress()
    w.emit("stream", {"name": "stdout", "text": "x\n"})
    msgs = [unpack_frames(d) for d in sent if d != KIND_EVENT]
    assert [m[0].decode().split(".", 1)[1] for m in msgs] == ["progress", "progress_batch", "stream"]
    h, conn, batches = flood_handle()
    applied: list[tuple[str, int]] = []
    inner = batches.on_event
    batches.on_event = lambda e: (applied.append((e.type, e.seq)), inner(e))
    batches.handle_batch(msgs)
    assert applied == [("progress", 3), ("progress", 7), ("stream", 8)]
    assert batches.skipped == 3 and h.gaps == 0 and conn.client.status_calls == 0
    assert h.progress["done"] == 5 and h.output == "x\n" and h.seq == 8


def test_a_server_whose_pid_is_not_local_is_asked_before_it_is_called_gone(server):
    """A connection file copied from another host (through an SSH tunnel) names a pid that is
    not running here: the connection stays current while the server answers, and not after."""
    import json
    import os
    import signal

    from zmqruntime.execution.client import ExecutionClient
    from zmqruntime_jupyter.connection import Connection

    data = json.loads(server.connection_file.read_text())
    data["pid"] = 4_000_000  # beyond any pid of this machine: as if it ran elsewhere
    copied = server.connection_file.with_name("copied-from-remote.json")
    copied.write_text(json.dumps(data))
    copied.chmod(0o600)  # as a copy must be: a connection file others can read is refused
    conn = Connection(str(copied), ExecutionClient(connection_file=str(copied)), None)
    try:
        assert conn.still_current()  # not a local process, but it answers: current
        os.kill(server.pid, signal.SIGKILL)
        server.proc.wait(10)
        assert not conn.still_current()  # no answer within the short timeout: gone
    finally:
        conn.client.close()


# -- display outputs and tqdm rows in the handle and the panel ---------------------------------------

def test_display_events_reach_the_panel_once_in_order_and_malformed_ones_are_ignored():
    conn = FakeConnection()
    panel = ExecutionPanel("abc", "job")
    h = ExecutionHandle("abc", conn, panel=panel)  # type: ignore[arg-type]
    h.recovered(status(2))
    shown = {"data": {"text/html": "<b>x</b>", "text/plain": "x"}, "metadata": {}, "transient": {"display_id": "d"}}
    for seq, (kind, content) in enumerate([
        ("stream", {"name": "stdout", "text": "a\n"}),
        ("display_data", shown),
        ("display_data", {"data": ["not", "a", "bundle"]}),  # malformed: ignored
        ("update_display_data", {"data": {"text/plain": "y"}}),  # no display_id: ignored
        ("bar", {"bar": "one", "n": 1}),  # malformed: ignored
        ("bar", {"bar": 1, "desc": "outer", "n": 2, "total": 4, "rate": 1.0, "elapsed": 2.0, "position": 0,
                 "leave": True, "closed": False}),
        ("update_display_data", {**shown, "data": {"text/plain": "y"}}),
        ("stream", {"name": "stdout", "text": "b\n"}),
    ], start=3):
        h.on_event(ev(kind, seq, **content))
    h.flush_ui()
    assert h.gaps == 0 and h.seq == 10
    outs = panel.output.outputs
    assert [o.get("text") or o["data"] for o in outs] == ["a\n", {"text/plain": "y"}, "b\n"]
    assert h.outputs == [{"output_type": "display_data", "data": {"text/plain": "y"}, "metadata": {},
                          "transient": {"display_id": "d"}}]
    assert [b["desc"] for b in h.bars] == ["outer"] and panel.bar.max == 4 and panel.bar.value == 2
    h.flush_ui()  # nothing new: nothing re-sent
    assert panel.output.outputs == outs


def test_a_gap_recovers_display_outputs_and_bars_from_status():
    h, conn = make()
    h.recovered(status(2))
    h.on_event(ev("display_data", 3, data={"text/plain": "first"}, metadata={}))
    out2 = {"output_type": "display_data", "data": {"text/plain": "second"}, "metadata": {}}
    conn.client.status = status(5, outputs=[{"output_type": "display_data", "data": {"text/plain": "first"},
                                             "metadata": {}}, out2],
                                outputs_total=2, outputs_dropped=0,
                                bars=[{"bar": 1, "desc": "b", "n": 5, "total": 5, "position": 0, "leave": True,
                                       "closed": True}])
    h.on_event(ev("stream", 6, name="stdout", text="z\n"))  # 4 and 5 lost
    assert h.gaps == 1 and h.seq == 6
    assert [o["data"]["text/plain"] for o in h.outputs] == ["first", "second"]
    assert h.bars[0]["n"] == 5


def test_a_flood_of_displays_in_one_flush_creates_only_the_widgets_it_keeps(monkeypatch):
    import ipywidgets as W

    made: list = []

    class CountedOutput(W.Output):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            made.append(self)

    monkeypatch.setattr(W, "Output", CountedOutput)
    area = OutputArea(max_outputs=10)
    area.apply([("display", {"data": {"text/plain": str(i)}, "metadata": {}}) for i in range(1000)])
    assert [o["data"]["text/plain"] for o in area.outputs] == [str(i) for i in range(990, 1000)]
    assert area.dropped_outputs == 990 and "990 outputs" in area.box.children[0].value
    assert len(made) == 10  # only the segments it keeps were ever made (each one a comm to the frontend)


def test_a_missed_display_update_is_applied_in_place_from_status():
    conn = FakeConnection()
    panel = ExecutionPanel("abc", "job")
    h = ExecutionHandle("abc", conn, panel=panel)  # type: ignore[arg-type]
    h.recovered(status(2))
    shown = {"data": {"text/plain": "v1"}, "metadata": {}, "transient": {"display_id": "d"}}
    h.on_event(ev("display_data", 3, **shown))
    updated = {"output_type": "display_data", "data": {"text/plain": "v2"}, "metadata": {},
               "transient": {"display_id": "d"}}
    conn.client.status = status(4, outputs=[updated], outputs_total=1, outputs_dropped=0, bars=[])
    h.on_event(ev("stream", 5, name="stdout", text="after\n"))  # the update (4) was lost
    h.flush_ui()
    assert [o.get("text") or o["data"]["text/plain"] for o in panel.output.outputs] == ["v2", "after\n"]


def test_a_block_cells_value_recovered_from_status_stays_out_of_its_panel():
    """A --block cell's Out shows the value; a gap repaired from ``status`` must not show it
    in the panel as well (the suite once caught the panel showing '42' beside the cell's Out)."""
    figure = {"output_type": "display_data", "data": {"image/png": "iVBOR"}, "metadata": {}}
    value = {"output_type": "display_data", "data": {"text/plain": "42"}, "metadata": {}, "result": True}
    status = {"outputs": [figure, value], "outputs_total": 2}
    for show_result, shown in ((False, [figure]), (True, [figure, value])):
        buffer = OutputBuffer(show_result=show_result)
        buffer.reconcile(status)
        assert [item[1] for item in buffer.take() if item[0] == "display"] == shown
