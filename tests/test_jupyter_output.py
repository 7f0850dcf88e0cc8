"""Remote cells behave like local cells, in a real kernel, observed on IOPub as a frontend sees it.

Figures, rich reprs, display_id updates, clear_output, tqdm rows and the result's repr reach
the ``%%zmqexec`` panel as widget state (comm messages); each output is sent to the frontend
once (the bytes are counted and printed as a figure).
"""

from __future__ import annotations

import base64
import json
import time

import pytest

from conftest_jupyter import KernelDriver, PanelView, free_port, jkernel, jupyter_env  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(120)

pytest.importorskip("matplotlib", reason="matplotlib is in the [test] extra: pip install -e '.[test]'")
pytest.importorskip("tqdm", reason="tqdm is in the [test] extra: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def k(jkernel: KernelDriver) -> KernelDriver:  # noqa: F811 (the fixture, imported above)
    jkernel.ok("%load_ext zmqruntime_jupyter")
    return jkernel


def finished_panel(k: KernelDriver, cell: str, outputs: int) -> PanelView:
    """Run ``cell``; its panel once complete and showing ``outputs`` outputs (they follow the status line)."""
    res = k.ok(cell)
    p = PanelView(k, res)
    p.wait_status("complete", timeout=60)
    assert k.wait_for(lambda: len(p.outputs()) == outputs, timeout=10), p.outputs()
    return p


def data_outputs(p: PanelView) -> list[dict]:
    return [o for o in p.outputs() if o.get("output_type") == "display_data"]


def test_figures_html_display_updates_and_the_result_repr(k: KernelDriver):
    p = finished_panel(k, """%%zmqexec --name rich
import matplotlib.pyplot as plt
from IPython.display import display
print("start")
plt.plot([1, 4, 9]); plt.title("remote"); plt.show()
class Frame:  # a DataFrame-like object
    def _repr_html_(self):
        return "<table class='frame'><tr><td>7</td></tr></table>"
    def __repr__(self):
        return "Frame(1 row)"
display(Frame())
h = display("one", display_id=True)
h.update("two")
print("end")
6 * 7
""", outputs=6)
    outs = p.outputs()
    kinds = [o.get("text", "").strip() if o["output_type"] == "stream" else sorted(o["data"]) for o in outs]
    assert kinds == ["start", ["image/png", "text/plain"], ["text/html", "text/plain"], ["text/plain"], "end",
                     ["text/plain"]]
    png = base64.b64decode(outs[1]["data"]["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 300 and height > 200
    assert "<table class='frame'>" in outs[2]["data"]["text/html"]
    assert outs[3]["data"]["text/plain"] == "'two'"  # replaced in place, not appended
    assert outs[5]["data"]["text/plain"] == "42"  # the result's repr
    assert not any("'one'" in json.dumps(o) for o in outs)
    assert k.ok("print(_.result())").stdout.strip() == "42"  # the value itself, as before


def test_nested_tqdm_bars_are_rows_and_the_main_bar_follows_the_outer_one(k: KernelDriver):
    res = k.ok("""%%zmqexec --name bars
from tqdm.auto import tqdm
import time
with tqdm(total=3, desc="outer") as outer, tqdm(total=60, desc="inner") as inner:
    for i in range(3):
        for j in range(20):
            time.sleep(0.01)
            inner.update(1)
        outer.update(1)
for _ in tqdm(range(5), desc="temporary", leave=False):
    time.sleep(0.05)
print("bars done")
""")
    p = PanelView(k, res)
    p.wait_status("complete", timeout=60)
    assert k.wait_for(lambda: len(p.children(p.bars)) == 2, timeout=10)
    rows = p.bar_rows()
    assert k.wait_for(lambda: [r[0].state.get("value") for r in rows] == [3, 60], timeout=10)
    assert [r[0].state["description"] for r in rows] == ["outer", "inner"]
    for (bar, label), total in zip(rows, (3, 60)):
        values = [s["value"] for _, s in bar.updates if "value" in s]
        assert values == sorted(values) and len(set(values)) >= 2, values  # advancing...
        assert bar.state["value"] == bar.state["max"] == total  # ...to the total
        assert f"{total}/{total}" in label.state["value"]
    assert p.bar.state["max"] == 3 and p.bar.state["value"] == 3  # the main bar: the outermost
    # the leave=False row was shown, then removed
    ever = {c for _, s in p.bars.updates for c in s.get("children", ())}
    assert len(ever) == 3 and len(p.bars.state["children"]) == 2
    text = p.output_text()
    assert text == "bars done\n" and "\r" not in text


def test_clear_output_wait_keeps_only_the_last_frame(k: KernelDriver):
    p = finished_panel(k, """%%zmqexec
from IPython.display import clear_output
import time
for i in range(5):
    clear_output(wait=True)
    print(f"frame {i}")
    time.sleep(0.15)
""", outputs=1)
    assert p.output_text() == "frame 4\n"


def test_input_in_a_remote_cell_gives_the_clear_error(k: KernelDriver):
    res = k.run("%%zmqexec --block --quiet\nname = input('your name? ')")
    assert not res.ok
    text = res.error_text + res.stderr
    assert "remote cells have no stdin" in text and "--push" in text


def test_ten_thousand_lines_reach_the_frontend_once(k: KernelDriver):
    """Bytes of widget traffic for 10,000 printed lines stay linear in the text (not a re-send per update)."""
    t0 = time.monotonic()
    res = k.ok("""%%zmqexec --name lines
import time
for i in range(10_000):
    print(f"line {i:05d} " + "x" * 40)
    if i % 250 == 0:
        time.sleep(0.05)
""")
    p = PanelView(k, res)
    p.wait_status("complete", timeout=90)
    assert k.wait_for(lambda: p.output_text().endswith("line 09999 " + "x" * 40 + "\n"), timeout=10)
    k.wait_for(lambda: False, timeout=0.5)  # anything still on its way counts too
    with k._lock:
        msgs = [m for t, m in k.iopub if t >= t0 and m["msg_type"] in ("comm_open", "comm_msg", "comm_close")]
    sent = sum(len(json.dumps(m["content"])) for m in msgs)
    text = 10_000 * len("line 00000 " + "x" * 40 + "\n")
    print(f"\n[figure] bytes to the frontend for 10,000 printed lines ({text:,} characters): {sent:,} "
          f"({sent / text:.2f} per character, {len(msgs)} comm messages, "
          f"{len(p.children(p.output))} output segments kept)")
    assert sent < 3 * text  # a re-send of the (100,000-character) tail per update would be many times this
    kept = p.output_text()
    assert kept.endswith("line 09999 " + "x" * 40 + "\n") and len(kept) <= 100_000
    assert k.ok("h = _\nprint(len(h.output.splitlines()))").stdout.strip() == "10000"  # the handle has it all
    assert k.ok("print(len(h.fetch_output()['stdout']))").stdout.strip() == str(text)  # so does the server


def test_a_block_cell_shows_its_value_once_and_figures_in_its_panel(k: KernelDriver):
    res = k.ok("""%%zmqexec --block
import matplotlib.pyplot as plt
plt.plot([1, 2]); plt.show()
6 * 7""")
    assert res.result_text == "42"  # the cell's Out
    p = PanelView(k, res)
    p.wait_status("complete")
    assert k.wait_for(lambda: len(p.outputs()) == 1, timeout=10), p.outputs()
    shown = [sorted(o["data"]) for o in data_outputs(p)]
    assert shown == [["image/png", "text/plain"]]  # the figure; the value is not repeated in the panel
