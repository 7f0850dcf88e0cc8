"""Write the demo notebooks (``python notebooks/make_notebooks.py``).

The notebooks are generated so they stay small, reviewable and free of
stale outputs; CI executes them headless (``jupyter execute`` or nbclient)
with ``ZMQRUNTIME_PORT`` and ``ZMQRUNTIME_RUNTIME_DIR`` set to private values.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = """\
import os
PORT = int(os.environ.get("ZMQRUNTIME_PORT", 7777))  # CI runs the notebooks on a private port

%load_ext zmqruntime_jupyter
%zmq connect $PORT"""


def md(text: str) -> nbformat.NotebookNode:
    return new_markdown_cell(text.strip("\n"))


def code(text: str, **metadata) -> nbformat.NotebookNode:
    return new_code_cell(text.strip("\n"), metadata=metadata)


def quickstart() -> nbformat.NotebookNode:
    cells = [
        md("""
# zmqruntime quickstart

Run notebook cells on a **zmqruntime** server and watch them live: a progress bar,
the remote output as it is printed, a **Cancel** button, and the results back as
real Python objects. The kernel stays free while the remote code runs.

The first cell loads the extension and connects to the server on port 7777
(starting a persistent one if none is running: it outlives this kernel).
"""),
        code(SETUP),
        md("""
## Progress, output, result

Wrap any loop in `progress(...)`. The cell returns at once; the panel below
follows the remote execution until it ends.
"""),
        code("""
%%zmqexec --name squares
from zmqruntime import progress
import time

squares = []
for n in progress(range(40), desc="squaring"):
    time.sleep(0.05)               # pretend each item takes a while
    squares.append(n * n)
    if n % 10 == 0:
        print(f"processed {n}")
sum(squares)
"""),
        md("""
The cell's value is an **execution handle** (it is also `_`). It knows the
status, the latest progress and the output; `result()` waits for the end and
returns the value of the cell's last expression.
"""),
        code("""
job = _
print("status now:", job.status)
job.result()
"""),
        code("""
print(job.status, "|", job.progress)
print(job.output)
"""),
        md("""
## The remote namespace persists

Variables defined in one `%%zmqexec` cell are there in the next, as in a kernel.
`--block` waits in the cell instead (the bar keeps moving, and the kernel's ■
Interrupt becomes a remote cancel); the cell's value is the remote result.
"""),
        code("""
%%zmqexec --block
len(squares), squares[-1]
"""),
        md("""
## Figures, rich output and tqdm bars

What a cell shows locally, it shows under `%%zmqexec`: matplotlib figures (as
images; the server never opens a window), `display()` and rich reprs, the last
expression's repr, and tqdm bars as rows in the panel (nested bars nested; the
main bar follows the outer one).
"""),
        code("""
%%zmqexec --name plots
import matplotlib.pyplot as plt
from tqdm.auto import tqdm
import time

for epoch in tqdm(range(3), desc="epochs"):
    for n in tqdm(range(40), desc="batches", leave=False):
        time.sleep(0.01)
plt.plot(range(40), squares)
plt.title("squares, computed remotely")
plt.show()
"""),
        code("""
plots = _
plots.wait(timeout=60)
figures = [o for o in plots.outputs if "image/png" in o["data"]]
print(plots.status, "-", len(figures), "figure(s); tqdm rows:", [b["desc"] for b in plots.bars])
"""),
        md("""
## Sending data in, getting data out

`--push a,b` sends notebook variables to the server (pickled); `--out NAME` binds
the result into the notebook when the execution completes.
"""),
        code("""
weights = [0.5, 1.5, 2.0]
"""),
        code("""
%%zmqexec --push weights --out weighted --block
from zmqruntime import progress
total = 0.0
for w in progress(weights, desc="weighting"):
    total += w * sum(squares)
total
"""),
        code("""
weighted
"""),
        md("""
## `await` a handle

Handles are awaitable: `await` lets the kernel keep serving widgets and other
messages while you wait. `--quiet` runs without widgets (scripts, CI).
"""),
        code("""
%%zmqexec --name slow-mean --quiet
import statistics, time
time.sleep(1)
statistics.mean(squares)
"""),
        code("""
mean = await _
mean
"""),
        md("""
## Errors come back with the remote traceback

A failing cell shows the remote traceback in its panel; the handle reports the
error, and `result()` raises `ExecutionFailed` (with `.remote_traceback`).
"""),
        code("""
%%zmqexec --name oops
def divide(a, b):
    return a / b

divide(1, 0)
"""),
        code("""
failed = _
failed.wait(timeout=30)
print(failed.status, "-", failed.error["ename"] + ":", failed.error["evalue"])
"""),
        md("""
## What is on the server

`%zmq list` shows every execution the server remembers (also those of earlier
kernels: the server is persistent); `%zmq status` adds the server's health.
"""),
        code("%zmq list"),
        code("%zmq status"),
        md("""
## Summary

What this notebook did, in a few lines. Written to file descriptor 1, so it shows
here and, when the notebook runs headless (`jupyter execute`), on the terminal.
"""),
        code("""
summary = "\\n".join([
    "zmqruntime quickstart: every step ran on the server",
    f"  squares     {job.status:<9} sum of squares = {job.result()}",
    f"  plots       {plots.status:<9} {len(figures)} figure(s), tqdm rows {[b['desc'] for b in plots.bars]}",
    f"  weighted    complete  {weighted}",
    f"  await       complete  mean = {mean}",
    f"  oops        {failed.status:<9} {failed.error['ename']}: {failed.error['evalue']}",
])
os.write(1, (summary + "\\n").encode())
"""),
    ]
    return _notebook(cells)


def cancel_and_monitor() -> nbformat.NotebookNode:
    long_job = """
%%zmqexec --name {name} --out {var}
from zmqruntime import progress
import time

for step in progress(range(2400), desc="{desc}"):   # about two minutes if left alone
    time.sleep(0.05)
    if step % 20 == 0:
        print(f"step {{step}}")
"""
    cells = [
        md("""
# Cancel and monitor long jobs

Start a long job, keep working in the notebook while it streams, and cancel it
— with its **Cancel** button or with `%zmq cancel` — without touching anything
else the server runs.
"""),
        code(SETUP),
        md("""
## A long job

The cell returns at once; its panel streams the progress and the output.
"""),
        code(long_job.format(name="long-job", var="long_job", desc="simulating")),
        md("""
## The kernel stays free

This cell runs right away, while the job above keeps streaming into *its own*
panel (remote output never lands in the cell that happens to be running).
Panels update whenever the kernel is idle or awaiting; a cell that blocks
(`time.sleep`) pauses them until it ends, then they catch up.
"""),
        code("""
import asyncio
import time

t0 = time.perf_counter()
local = sum(i * i for i in range(100_000))
await asyncio.sleep(1.0)   # awaiting (not time.sleep) lets the panels above keep updating meanwhile
print(f"local work took {time.perf_counter() - t0:.2f} s")
p = long_job.progress
print(f"meanwhile the remote job is {long_job.status}: {p['done']:g} of {p['total']:g} steps")
"""),
        md("""
## Cancel with the button

In a live notebook you click **Cancel** in the job's panel. This notebook also
runs headless in CI, where nobody can click, so the next cell calls `click()` on
that same button widget: it runs exactly the handler a browser click runs.
"""),
        code("""
long_job.panel.cancel_button.click()
long_job.wait(timeout=30)
print(long_job.status, "-", long_job.info["reason"])
"""),
        md("""
## Cancel with `%zmq cancel`

Start another long job, look at the server's table, then cancel it by id.
"""),
        code(long_job.format(name="second-job", var="second_job", desc="second")),
        code("""
time.sleep(1.0)
%zmq list
"""),
        code("""
%zmq cancel {second_job.id}
second_job.wait(timeout=30)
print(second_job.status, "-", second_job.info["reason"])
"""),
        md("""
## Cancelled before it started

The server runs one execution at a time by default: a job submitted while
another runs waits in the queue, and cancelling it just removes it.
"""),
        code("""
%%zmqexec --name blocker --out blocker
import time
time.sleep(60)
"""),
        code("""
%%zmqexec --name queued --out queued
"this never runs"
"""),
        code("""
print("queued job is", queued.status)
queued.cancel()
blocker.cancel()
for job in (queued, blocker):
    job.wait(timeout=30)
    print(f"{job.name}: {job.status} - {job.info['reason']}")
"""),
        md("""
## Monitor

Everything the server did, and its health. The server is persistent: it keeps
running (and keeps finished results) after this kernel stops; `%zmq shutdown`
stops it.
"""),
        code("%zmq status"),
    ]
    return _notebook(cells)


def scale_out() -> nbformat.NotebookNode:
    cells = [
        md("""
# Scale out: the same cells on a dask cluster

A zmqruntime server can run its sessions on **dask.distributed** instead of local
worker processes. Everything else stays the same: live progress and output in the
panel, **Cancel**, results back, variables kept between cells, and
`parallel_map` fans one call out over every worker with one progress bar.

This notebook starts its own server with `--backend dask`: with no scheduler
address it starts a `LocalCluster` (one worker process per core). Against an
existing cluster, connect with `%zmq connect PORT --scheduler tcp://host:8786`.
"""),
        code("""
import os
PORT = int(os.environ.get("ZMQRUNTIME_SCALE_PORT", 7787))  # CI runs the notebooks on private ports

%load_ext zmqruntime_jupyter
%zmq connect $PORT --backend dask"""),
        code("%zmq status"),
        md("""
## A cell on a dask worker

The panel follows the execution; `%zmq status ID` (or the handle's `info`) names
the worker that ran it.
"""),
        code("""
%%zmqexec --name on-dask
from zmqruntime import progress
import os, time

for step in progress(range(20), desc="on a dask worker"):
    time.sleep(0.05)
print("ran in process", os.getpid())
data = [i * i for i in range(1000)]
len(data)
"""),
        code("""
on_dask = _
print(on_dask.result(), "-", on_dask.status)
%zmq status {on_dask.id}
"""),
        md("""
## Variables stay on the session's worker

The session is pinned to one worker; its namespace lives there between cells.
"""),
        code("""
%%zmqexec --block
sum(data)
"""),
        md("""
## `parallel_map`: one call, every worker, one bar

A function defined in the cell is sent by value. Results come back in order.
"""),
        code("""
%%zmqexec --block --name fan-out
from zmqruntime import parallel_map

def cpu_heavy(n):
    total = 0
    for i in range(200_000):
        total += (i * n) % 7
    return total

results = parallel_map(cpu_heavy, range(24), desc="fan-out")
len(results), results[:3]
"""),
        md("""
## Cancel stops running work

A long loop on a dask worker, cancelled with its **Cancel** button (clicked from
code here, since this notebook also runs headless in CI).
"""),
        code("""
%%zmqexec --name forever --out forever
import time
print("looping")
while True:
    time.sleep(0.01)
"""),
        code("""
import asyncio
for _ in range(200):                 # until it is running on its worker
    if forever.status == "running":
        break
    await asyncio.sleep(0.05)
forever.panel.cancel_button.click()
forever.wait(timeout=60)
print(forever.status, "-", forever.info["reason"])
"""),
        md("""
## Shut down

`%zmq shutdown` stops the server and the `LocalCluster` it started (a cluster
given by address is left running).
"""),
        code("%zmq shutdown"),
    ]
    return _notebook(cells)


def _notebook(cells: list) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def main() -> None:
    for name, build in (("quickstart", quickstart), ("cancel_and_monitor", cancel_and_monitor),
                        ("scale_out", scale_out)):
        nb = build()
        nbformat.validate(nb)
        nbformat.write(nb, HERE / f"{name}.ipynb")
        print(f"wrote {HERE / name}.ipynb ({len(nb.cells)} cells)")


if __name__ == "__main__":
    main()
