"""End to end in a real browser: JupyterLab + Chromium drive ``%%zmqexec``.

Everything is real: a ``jupyter lab`` server on loopback with a random token,
its ipykernel, the zmqruntime server the first ``%%zmqexec`` spawns, and
Debian's Chromium driven by Playwright (no browser download). The test reads
the *rendered page* — the ipywidgets progress bar's width, the panel's
done/total text, the output widget, the status line — and clicks the real
**Cancel** button, so it fails if the widgets, the comm round trip or the
data-channel stream into the kernel break anywhere along the way.

Screenshots of the key moments go to ``$ZMQRUNTIME_TEST_ARTIFACTS`` (else
``<repo>/.artifacts/e2e/``), with the JupyterLab log.

Run alone with ``python -m pytest -m browser``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from conftest_jupyter import free_port, stop_servers
from helpers import ROOT, server_env

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]

#: The test notebook: one cell per step of the user's flow.
SETUP, LONG_JOB, LOCAL, AFTER, PLOTS = range(5)
CELLS = [
    "%load_ext zmqruntime_jupyter",
    """%%zmqexec --name e2e-long
from zmqruntime import progress
import time
for step in progress(range(1200), desc="e2e-steps"):   # a minute unless cancelled
    time.sleep(0.05)
    if step % 20 == 0:
        print(f"remote step {step}")""",
    'print("local result", 6 * 7)',
    """%%zmqexec --name e2e-after
print("after the cancel")
6 * 7""",
    """%%zmqexec --name e2e-plots
import matplotlib.pyplot as plt
from tqdm.auto import tqdm
import time
for i in tqdm(range(3), desc="e2e-outer"):
    for j in tqdm(range(40), desc="e2e-inner", leave=(i == 2)):
        time.sleep(0.05)
plt.plot([1, 3, 2]); plt.title("remote figure"); plt.show()""",
]


def artifacts_dir() -> Path:
    d = Path(os.environ.get("ZMQRUNTIME_TEST_ARTIFACTS") or ROOT / ".artifacts" / "e2e")
    d.mkdir(parents=True, exist_ok=True)
    return d


def browser_missing(reason: str) -> NoReturn:
    """Skip with ``reason``, or fail where the browser test is required (``.ci/run`` sets the variable)."""
    if os.environ.get("ZMQRUNTIME_REQUIRE_BROWSER") == "1":
        pytest.fail(reason + " ZMQRUNTIME_REQUIRE_BROWSER=1 makes this test mandatory.", pytrace=False)
    pytest.skip(reason + " Set ZMQRUNTIME_REQUIRE_BROWSER=1 to make its absence a failure.")


def chromium_path() -> str:
    """Debian's chromium (or ``$ZMQRUNTIME_CHROMIUM``); without it the test skips, saying how to enable it."""
    path = os.environ.get("ZMQRUNTIME_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path or not os.access(path, os.X_OK):
        browser_missing("Chromium not found: the browser test needs Debian's package "
                        "(`sudo apt-get install -y chromium`, or ZMQRUNTIME_CHROMIUM=/path/to/chromium); "
                        "`.ci/run` installs it. Do not run `playwright install`.")
    return path


def poll(probe: Callable[[], Any], ok: Callable[[Any], bool], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Call ``probe`` until ``ok(value)``; fail saying what was expected and what was last seen."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not ok(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (waited {timeout:.0f} s); last seen: {value!r}")
        time.sleep(interval)
        value = probe()
    return value


# -- JupyterLab ------------------------------------------------------------------------------------


@dataclass
class Lab:
    url: str
    token: str
    proc: subprocess.Popen
    runtime_dir: Path
    log_path: Path

    def api(self, method: str, path: str) -> Any:
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def _write_lab_files(home: Path, root: Path) -> None:
    nb = new_notebook(cells=[new_code_cell(src) for src in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "e2e.ipynb")
    # No "would you like Jupyter news?" toast over the page, no update check.
    settings = home / ".jupyter" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """``jupyter lab`` on a free loopback port, with private HOME, Jupyter and zmqruntime dirs."""
    home, root = tmp_path / "home", tmp_path / "root"
    root.mkdir()
    runtime = Path(tempfile.mkdtemp(prefix="zr-e2e-", dir="/tmp"))  # short: IPC socket paths live here
    _write_lab_files(home, root)
    port, token = free_port(), secrets.token_hex(16)
    env = server_env()
    env.update(HOME=str(home), JUPYTER_CONFIG_DIR=str(home / ".jupyter"), JUPYTER_DATA_DIR=str(home / "data"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), JUPYTER_PLATFORM_DIRS="1",
               ZMQRUNTIME_RUNTIME_DIR=str(runtime), ZMQRUNTIME_PORT=str(free_port()),
               PYDEVD_DISABLE_FILE_VALIDATION="1")
    log_path = tmp_path / "jupyterlab.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    server = Lab(f"http://127.0.0.1:{port}", token, proc, runtime, log_path)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                server.api("GET", "/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"jupyter lab did not answer in 90 s:\n{server.log_tail()}") from None
                time.sleep(0.2)
        yield server
    finally:
        _stop_lab(server)
        stop_servers(runtime)  # the zmqruntime server the kernel spawned, its workers, any leftover kernel
        shutil.copy(log_path, artifacts_dir() / "jupyterlab.log")
        shutil.rmtree(runtime, ignore_errors=True)


def _stop_lab(server: Lab) -> None:
    """Shut the kernels down through the API, then stop jupyter lab's process group."""
    if server.proc.poll() is None:
        try:
            for kernel in server.api("GET", "/api/kernels"):
                server.api("DELETE", f"/api/kernels/{kernel['id']}")
        except OSError:
            pass
        os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(server.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.proc.wait(10)


# -- the page ----------------------------------------------------------------------------------------


@pytest.fixture
def chromium() -> str:
    """Checked before JupyterLab starts, so a missing browser fails at once."""
    path = chromium_path()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        browser_missing('Python playwright is missing: pip install -e ".[test]" (no `playwright install` needed: '
                        "the test uses Debian's chromium).")
    return path


@pytest.fixture
def page(chromium: str, lab: Lab, tmp_path: Path) -> Iterator[Any]:
    """A Chromium page on the test notebook (a fresh, empty profile)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 1000})
        try:
            pg = context.pages[0] if context.pages else context.new_page()
            pg.set_default_timeout(60_000)
            pg.goto(f"{lab.url}/lab/tree/e2e.ipynb?token={lab.token}")
            yield pg
        finally:
            context.close()


class Notebook:
    """The rendered notebook: run cells with the keyboard, read their prompts and widgets."""

    def __init__(self, page: Any):
        self.page = page
        self.cells = page.locator(".jp-Notebook .jp-Cell")

    def wait_loaded(self) -> None:
        poll(self.cells.count, lambda n: n == len(CELLS), 60, f"the notebook never showed its {len(CELLS)} cells")
        poll(lambda: self.page.locator(".jp-StatusBar-Widget").all_inner_texts(),
             lambda texts: any(re.search(r"Python 3 \(ipykernel\) \| Idle", t) for t in texts), 90,
             "the kernel never became idle in the status bar")

    def run(self, i: int) -> None:
        """Click into cell ``i`` and press Ctrl+Enter (run, stay), as a user does."""
        self.cells.nth(i).locator(".jp-InputArea-editor").click()
        self.page.keyboard.press("Control+Enter")

    def prompt(self, i: int) -> str:
        return self.cells.nth(i).locator(".jp-InputPrompt").inner_text().strip()

    def wait_executed(self, i: int, timeout: float = 60) -> None:
        poll(lambda: self.prompt(i), lambda p: re.fullmatch(r"\[\d+\]:", p) is not None, timeout,
             f"cell {i} never finished executing")

    def output_text(self, i: int) -> str:
        return self.cells.nth(i).locator(".jp-Cell-outputArea").inner_text()

    def panel(self, i: int) -> Panel:
        return Panel(self.cells.nth(i))


class Panel:
    """The zmqruntime widget panel in one cell's output (see zmqruntime_jupyter/panel.py)."""

    def __init__(self, cell: Any):
        self.cell = cell
        self.bar = cell.locator(".widget-hprogress .progress-bar").first  # the main bar (tqdm rows follow)
        self.bars = cell.locator(".zmqruntime-bars .widget-hprogress .progress-bar")  # one per tqdm row
        self.html = cell.locator(".widget-html-content")  # [0] done/total info, [1] status line
        self.output = cell.locator(".zmqruntime-output")  # the output area (its segments inside)
        self.button = cell.locator("button.widget-button")

    def visible(self) -> bool:
        return self.bar.count() == 1 and self.html.count() >= 2 and self.button.count() == 1

    def bar_percent(self, bar: Any = None) -> float:
        width = (bar or self.bar).evaluate("e => e.style.width") or "0%"
        return float(width.rstrip("%"))

    def row_percents(self) -> list[float]:
        return [self.bar_percent(self.bars.nth(i)) for i in range(self.bars.count())]

    def done(self) -> int:
        """``done`` from the panel's "done/total · rate · …" text (0 before any progress)."""
        m = re.match(r"\s*(\d+)/(\d+)", self.html.nth(0).inner_text())
        return int(m.group(1)) if m else 0

    def status(self) -> str:
        return self.html.nth(1).inner_text()

    def output_text(self) -> str:
        return self.output.inner_text()

    def state(self) -> dict[str, Any]:
        """Everything shown, for failure messages."""
        if not self.visible():
            return {"panel": "not rendered"}
        return {"bar%": self.bar_percent(), "info": self.html.nth(0).inner_text(), "status": self.status(),
                "button": self.button.inner_text(), "output": self.output_text()[-200:]}


def _screenshot(target: Any, name: str) -> Path:
    path = artifacts_dir() / name
    target.screenshot(path=str(path))
    return path


def test_zmqexec_progress_output_and_cancel_in_jupyterlab(page: Any, lab: Lab) -> None:
    nb = Notebook(page)
    (artifacts_dir() / "failure.png").unlink(missing_ok=True)  # only this run's failure, if any
    try:
        _flow(nb, page)
    except BaseException:
        _screenshot(page, "failure.png")
        raise


def _flow(nb: Notebook, page: Any) -> None:
    nb.wait_loaded()
    nb.run(SETUP)
    nb.wait_executed(SETUP)
    assert "Error" not in nb.output_text(SETUP), nb.output_text(SETUP)

    # 1. The job: the cell returns at once (non-blocking) and its panel appears.
    nb.run(LONG_JOB)
    nb.wait_executed(LONG_JOB)
    job = nb.panel(LONG_JOB)
    poll(job.visible, bool, 60, "the %%zmqexec cell never rendered its widget panel")

    # 2. The bar appears and advances: the done count and the bar's width both grow.
    first = poll(lambda: (job.done(), job.bar_percent()), lambda s: s[0] > 0 and s[1] > 0, 60,
                 "the progress bar never started moving")
    poll(lambda: (job.done(), job.bar_percent()), lambda s: s[0] >= max(first[0] + 20, 120) and s[1] > first[1], 60,
         f"the progress bar did not advance past {first} (done, width %) to 10 %")
    assert "running" in job.status(), job.state()
    _screenshot(page, "1-progress-advancing.png")
    _screenshot(nb.cells.nth(LONG_JOB), "widget-panel.png")

    # 3. Remote output streams into this cell's own output widget.
    poll(job.output_text, lambda t: "remote step 0" in t and "remote step 20" in t, 60,
         "remote stdout never appeared in the job's cell")

    # 4. The kernel is free: a plain cell runs and shows its result while the job goes on.
    nb.run(LOCAL)
    nb.wait_executed(LOCAL)
    poll(lambda: nb.output_text(LOCAL), lambda t: "local result 42" in t, 30,
         "the plain cell's output never appeared while the job ran")
    assert "remote step" not in nb.output_text(LOCAL), "remote output leaked into another cell"
    during = job.done()
    poll(job.done, lambda d: d > during, 60, "the job stopped advancing after the plain cell ran")
    assert "running" in job.status(), job.state()

    # 5. Clicking Cancel stops the job; the panel says so and the bar stops.
    assert job.button.inner_text().strip() == "Cancel", job.state()
    job.button.click()
    poll(job.status, lambda s: "cancelled" in s, 30, "the panel never showed 'cancelled' after clicking Cancel")
    assert "Cancel button" in job.status(), job.state()
    poll(lambda: job.button.inner_text().strip(), lambda t: t == "Cancelled", 30,
         "the Cancel button was not turned into 'Cancelled'")
    assert job.button.is_disabled(), job.state()
    stopped = job.done()
    assert stopped < 1200, f"the job ran to the end instead of being cancelled: {job.state()}"
    time.sleep(1.5)
    assert job.done() == stopped, f"progress kept moving after the cancel: {stopped} -> {job.state()}"
    _screenshot(page, "2-after-cancel.png")

    # 6. The server goes on serving: a following %%zmqexec cell completes.
    nb.run(AFTER)
    nb.wait_executed(AFTER)
    after = nb.panel(AFTER)
    poll(after.visible, bool, 60, "the second %%zmqexec cell never rendered its panel")
    poll(after.status, lambda s: "complete" in s, 60, "the %%zmqexec cell after the cancel never completed")
    poll(after.output_text, lambda t: "after the cancel" in t, 30, "the second job's output never appeared")
    poll(lambda: after.button.inner_text().strip(), lambda t: t == "Done", 30, "the second panel's button never said Done")
    assert after.bar_percent() == pytest.approx(100.0), after.state()
    assert "cancelled" in job.status(), f"the first panel changed after the second job: {job.state()}"
    _screenshot(page, "3-final.png")

    # 7. A matplotlib figure and nested tqdm bars: rows whose bars grow, then the image.
    nb.run(PLOTS)
    nb.wait_executed(PLOTS)
    plots = nb.panel(PLOTS)
    poll(plots.visible, bool, 60, "the plotting cell never rendered its panel")
    first = poll(plots.row_percents, lambda w: len(w) == 2 and w[1] > 0, 60, "two tqdm rows never appeared")
    poll(plots.row_percents, lambda w: len(w) >= 2 and (w[0] > first[0] or w[1] > first[1]), 60,
         f"the tqdm rows did not advance from {first}")
    _screenshot(nb.cells.nth(PLOTS), "4-tqdm-rows.png")
    poll(plots.status, lambda s: "complete" in s, 90, "the plotting cell never completed")
    img = plots.output.locator("img")
    poll(img.count, lambda n: n == 1, 30, "the remote figure was never rendered as an <img>")
    natural = poll(lambda: img.evaluate("e => [e.naturalWidth, e.naturalHeight]"), lambda wh: wh[0] > 100, 30,
                   "the figure's image never loaded")
    assert natural[1] > 100, natural
    rows = poll(plots.row_percents, lambda w: len(w) == 2, 30, "leave=False rows were not removed")
    assert rows == [pytest.approx(100.0), pytest.approx(100.0)], rows  # outer 3/3 and the last inner 40/40
    assert plots.bar_percent() == pytest.approx(100.0), plots.state()
    assert "it/s" not in plots.output_text() and "\r" not in plots.output_text()
    _screenshot(nb.cells.nth(PLOTS), "5-figure-and-bars.png")
