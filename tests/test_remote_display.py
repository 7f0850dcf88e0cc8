"""Remote cells behave like local cells, seen by a plain client: display outputs, figures,
tqdm bars, the result's repr and stdin, as events (in order, one seq) and in ``status``.

A real server and worker over TCP; no kernel (tests/test_jupyter_output.py has the notebook side).
"""

from __future__ import annotations

import base64
import threading

import pytest

from helpers import wait_until, wait_until_subscribed

pytestmark = pytest.mark.timeout(90)

pytest.importorskip("matplotlib", reason="matplotlib is in the [test] extra: pip install -e '.[test]'")
pytest.importorskip("tqdm", reason="tqdm is in the [test] extra: pip install -e '.[test]'")


def run(server, code: str, **kwargs):
    """Execute ``code``; its events (all, in order) and final status."""
    client = server.client
    events, lock = [], threading.Lock()

    def on_event(event):
        with lock:
            events.append(event)

    sub = client.subscribe(on_event)
    try:
        wait_until_subscribed(client, events)
        exec_id = client.execute(code, **kwargs)
        status = client.wait(exec_id, timeout=60)
        wait_until(lambda: any(e.execution_id == exec_id and e.type == "done" for e in events))
    finally:
        sub.close()
    mine = [e for e in events if e.execution_id == exec_id]
    assert [e.seq for e in mine] == list(range(1, len(mine) + 1))  # one sequence, nothing lost
    return exec_id, mine, client.get_status(exec_id) if status else status


def png_size(b64: str) -> tuple[int, int]:
    png = base64.b64decode(b64)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_display_figures_and_result_arrive_in_order_with_the_text(start_server, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "TkAgg")  # a GUI backend named in the environment is not used
    server = start_server()
    exec_id, events, status = run(server, """
import matplotlib
import matplotlib.pyplot as plt
print("before")
plt.plot([1, 2, 3]); plt.show()
print("between")
class Table:
    def _repr_html_(self):
        return "<table><tr><td>1</td></tr></table>"
    def __repr__(self):
        return "Table()"
display(Table())
plt.figure(figsize=(2, 1)); plt.plot([3, 2, 1])  # left open: sent when the task ends
6 * 7
""")
    assert status["status"] == "complete", status
    seen = []
    for e in events:
        if e.type == "stream":
            seen.append(e["text"].strip())
        elif e.type == "display_data":
            seen.append("result" if e.get("result") else sorted(e["data"]))
    assert seen == ["before", ["image/png", "text/plain"], "between", ["text/html", "text/plain"],
                    "result", ["image/png", "text/plain"]]
    figs = [e for e in events if e.type == "display_data" and "image/png" in e["data"]]
    w, h = png_size(figs[0]["data"]["image/png"])
    assert w > 300 and h > 200 and figs[0]["metadata"]["image/png"] == {"width": w, "height": h}
    assert png_size(figs[1]["data"]["image/png"])[0] < w  # the small one
    result = next(e for e in events if e.get("result"))
    assert result["data"] == {"text/plain": "42"}
    assert server.client.get_results(exec_id) == {"_": 42}  # the value itself is still the result
    # A script can save a remote figure from status.
    outputs = status["outputs"]
    assert [sorted(o["data"]) for o in outputs][0] == ["image/png", "text/plain"]
    assert status["outputs_total"] == 4 and status["outputs_dropped"] == 0
    assert png_size(outputs[0]["data"]["image/png"]) == (w, h)
    # No GUI backend was ever chosen, even with MPLBACKEND naming one.
    exec_id, _, _ = run(server, "import os\nmatplotlib.get_backend(), os.environ.get('MPLBACKEND')")
    assert server.client.get_results(exec_id)["_"] == ("module://zmqruntime.execution.mpl_backend", "TkAgg")


def test_display_id_updates_and_clear_output(server):
    _, events, status = run(server, """
from IPython.display import HTML, clear_output, display, update_display
h = display(HTML("<i>one</i>"), display_id=True)
h.update(HTML("<i>two</i>"))
update_display("three", display_id=h.display_id)
for i in range(3):
    clear_output(wait=True)
    display(f"frame {i}")
""")
    kinds = [e.type for e in events if e.type in ("display_data", "update_display_data", "clear_output")]
    assert kinds == ["display_data", "update_display_data", "update_display_data"] + \
        ["clear_output", "display_data"] * 3
    first = next(e for e in events if e.type == "display_data")
    ids = {e["transient"]["display_id"] for e in events if e.type == "update_display_data"}
    assert ids == {first["transient"]["display_id"]}
    assert [e for e in events if e.type == "clear_output"][0]["wait"] is True
    # status: the clears removed the HTML output; only the last frame stays
    assert [o["data"]["text/plain"] for o in status["outputs"]] == ["'frame 2'"]
    assert status["outputs_total"] == 4 and status["outputs_dropped"] == 3


def test_tqdm_bars_become_rows_and_their_text_is_gone(server):
    _, events, status = run(server, """
import sys, time
from tqdm import tqdm
from tqdm.auto import trange
from tqdm import notebook as tqdm_notebook

class Mine(tqdm):  # a user's subclass keeps working
    pass

for i in tqdm(range(3), desc="outer"):
    for j in trange(30, desc="inner", leave=False):
        time.sleep(0.005)
    tqdm.write(f"wrote {i}")
for _ in Mine(range(5), desc="mine"):
    pass
for _ in tqdm_notebook.tqdm(range(4), desc="nb"):
    pass
plain = tqdm(range(2), file=sys.stdout, desc="explicit file")  # stdout is the panel too: a row, no text
for _ in plain:
    pass
""")
    assert status["status"] == "complete", status
    bars = [e for e in events if e.type == "bar"]
    by_desc: dict[str, list] = {}
    for e in bars:
        by_desc.setdefault(e["desc"], []).append(e)
    assert {"outer", "inner", "mine", "nb", "explicit file"} <= set(by_desc)
    outer = by_desc["outer"]
    assert outer[0]["n"] == 0 and outer[-1]["n"] == 3 and outer[-1]["closed"] and outer[-1]["position"] == 0
    inner = by_desc["inner"]
    assert {e["bar"] for e in inner} == {e["bar"] for e in inner if e["closed"]}  # three bars, each closed
    assert len({e["bar"] for e in inner}) == 3 and all(e["position"] == 1 and not e["leave"] for e in inner)
    assert all(e["n"] == 30 for e in inner if e["closed"])
    text = "".join(e["text"] for e in events if e.type == "stream")
    assert "wrote 0\nwrote 1\nwrote 2\n" in text  # tqdm.write still writes
    assert "\r" not in text and "it/s" not in text  # no bar text in the output
    # status: leave=False rows are gone, the others stay at their final state
    assert sorted(r["desc"] for r in status["bars"]) == ["explicit file", "mine", "nb", "outer"]
    assert all(r["closed"] and r["n"] == r["total"] for r in status["bars"])


def test_bars_are_throttled_at_the_source(server):
    _, events, _ = run(server, """
from tqdm import tqdm
import time
t_end = time.monotonic() + 1.0
with tqdm(total=None, desc="fast", mininterval=0, miniters=1) as bar:
    while time.monotonic() < t_end:
        bar.update(1)
""")
    rows = [e for e in events if e.type == "bar"]
    assert 3 <= len(rows) <= 1.0 / 0.1 + 3  # ~10 per second, plus the first and the final
    assert rows[-1]["closed"] and rows[-1]["n"] > 1000


def test_input_and_getpass_raise_a_clear_error(server):
    _, events, status = run(server, "name = input('your name? ')")
    assert status["status"] == "failed"
    assert status["error"]["ename"] == "NoStdinError"
    assert "remote cells have no stdin" in status["error"]["evalue"] and "--push" in status["error"]["evalue"]
    _, _, status = run(server, "import getpass\ngetpass.getpass()")
    assert status["error"]["ename"] == "NoStdinError"
    # and a task that catches EOFError (end of input) still can
    exec_id, _, status = run(server, "try:\n    input()\nexcept EOFError:\n    x = 'eof'\nx")
    assert server.client.get_results(exec_id) == {"_": "eof"}


def test_bad_reprs_and_huge_results_do_not_break_the_task(server):
    exec_id, events, status = run(server, """
class Broken:
    def _repr_html_(self):
        raise ValueError("no html today")
    def __repr__(self):
        return "Broken()"
display(Broken())
display({"text/plain": "raw bundle"}, raw=True)
display(1, 2)
"x" * (2 << 20)
""")
    assert status["status"] == "complete", status
    shown = [e["data"] for e in events if e.type == "display_data"]
    assert shown[0] == {"text/plain": "Broken()"}
    assert shown[1] == {"text/plain": "raw bundle"}
    assert shown[2:4] == [{"text/plain": "1"}, {"text/plain": "2"}]
    note = shown[4]["text/plain"]
    assert "too large to show here" in note and "handle.result()" in note and len(note) < 300
    assert "no html today" in "".join(e["text"] for e in events if e.type == "stream")
    assert len(server.client.get_results(exec_id)["_"]) == 2 << 20
    # wrong arguments are the user's error, with a clear message; the worker goes on
    _, _, status = run(server, "from IPython.display import update_display\nupdate_display(2)")
    assert status["status"] == "failed" and "display_id" in status["error"]["evalue"]
    exec_id, _, status = run(server, "1 + 1")
    assert status["status"] == "complete"


def test_tqdm_from_threads_and_pickled_bar_classes(server):
    """tqdm.contrib's thread_map (bars updated from pool threads) and a pickled tqdm class, as pools use."""
    exec_id, events, status = run(server, """
import pickle
from tqdm import tqdm
from tqdm.contrib.concurrent import thread_map
squares = thread_map(lambda x: x * x, range(20), desc="threads", max_workers=4)
assert pickle.loads(pickle.dumps(tqdm)) is tqdm
sum(squares)
""")
    assert status["status"] == "complete", status.get("error")
    assert server.client.get_results(exec_id) == {"_": sum(x * x for x in range(20))}
    rows = [e for e in events if e.type == "bar"]
    assert rows and rows[-1]["desc"] == "threads" and rows[-1]["n"] == 20 and rows[-1]["closed"]
