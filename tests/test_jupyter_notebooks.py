"""The demo notebooks run headless from start to finish (as CI runs them).

Equivalent to ``ZMQRUNTIME_PORT=<free> ZMQRUNTIME_RUNTIME_DIR=<tmp> jupyter execute notebooks/*.ipynb``.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest_jupyter import free_port, stop_servers

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def private_server(tmp_path_factory: pytest.TempPathFactory):
    runtime = tmp_path_factory.mktemp("nb-runtime")
    mp = pytest.MonkeyPatch()
    mp.setenv("ZMQRUNTIME_RUNTIME_DIR", str(runtime))
    mp.setenv("ZMQRUNTIME_PORT", str(free_port()))
    try:
        yield runtime
    finally:
        mp.undo()
        stop_servers(runtime)


def run_notebook(name: str, timeout: int = 60) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


@pytest.mark.timeout(120)
def test_quickstart_notebook(private_server):
    nb = run_notebook("quickstart")
    text = _text(nb)
    assert "20540" in text  # sum of the squares, fetched as a real value
    assert "(40, 1521)" in text  # the remote namespace persisted
    assert "failed - ZeroDivisionError: division by zero" in text
    assert re.search(r"squares\s+complete", text)
    assert "complete - 1 figure(s); tqdm rows: ['epochs']" in text  # a remote figure and tqdm rows
    widget_views = [o for c in nb.cells for o in c.get("outputs", [])
                    if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(widget_views) >= 3


@pytest.mark.timeout(120)
def test_cancel_and_monitor_notebook(private_server):
    nb = run_notebook("cancel_and_monitor")
    text = _text(nb)
    assert "cancelled - cancelled with the Cancel button" in text
    assert "cancelled - cancelled with %zmq cancel" in text
    assert "queued job is queued" in text
    assert "queued: cancelled - cancelled from the notebook (before it started)" in text
    assert "blocker: cancelled" in text
    assert re.search(r"long-job\s+cancelled", text)


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_scale_out_notebook_runs_on_a_local_dask_cluster(private_server, monkeypatch):
    monkeypatch.setenv("ZMQRUNTIME_SCALE_PORT", str(free_port()))
    nb = run_notebook("scale_out", timeout=180)
    text = _text(nb)
    assert re.search(r"backend\s+dask tcp://127\.0\.0\.1:\d+", text)
    assert re.search(r"worker\s+tcp://127\.0\.0\.1:\d+", text) and "ran in process" in text
    assert "1000 - complete" in text and "332833500" in text
    assert "(24, [0, 599994, 599997])" in text
    assert "cancelled - cancelled with the Cancel button" in text
    assert "has shut down" in text
