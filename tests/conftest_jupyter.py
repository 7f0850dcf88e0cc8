"""Fixtures and a small driver for the Jupyter tests: a real kernel over jupyter_client.

Import from test modules with ``from conftest_jupyter import *`` (pytest puts
``tests/`` on ``sys.path``). Every kernel gets a private
``ZMQRUNTIME_RUNTIME_DIR`` and a free ``ZMQRUNTIME_PORT`` (never 7777), and
every server started under that runtime directory is shut down — and
killed, with its workers, if it does not go — at teardown.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest
from jupyter_client import KernelManager

from helpers import free_port, stop_servers  # noqa: F401 (re-exported for the Jupyter tests)

__all__ = ["KernelDriver", "CellResult", "PanelView", "LONG_JOB", "free_port", "stop_servers", "jkernel", "jupyter_env"]

LONG_JOB = """%%zmqexec {opts}
from zmqruntime import progress
import time
for i in progress(range({n}), desc="{desc}"):
    time.sleep(0.05)
"""


@dataclass
class CellResult:
    reply: dict[str, Any]
    messages: list[dict[str, Any]]
    seconds: float

    @property
    def ok(self) -> bool:
        return self.reply.get("status") == "ok"

    @property
    def stdout(self) -> str:
        return "".join(m["content"]["text"] for m in self.messages
                       if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")

    @property
    def stderr(self) -> str:
        return "".join(m["content"]["text"] for m in self.messages
                       if m["msg_type"] == "stream" and m["content"]["name"] == "stderr")

    @property
    def error(self) -> Optional[dict[str, Any]]:
        errs = [m["content"] for m in self.messages if m["msg_type"] == "error"]
        return errs[0] if errs else None

    @property
    def error_text(self) -> str:
        import re

        err = self.error or {}
        text = "\n".join(err.get("traceback") or []) + f"\n{err.get('ename')}: {err.get('evalue')}"
        return re.sub(r"\x1b\[[0-9;]*m", "", text)

    @property
    def result_text(self) -> Optional[str]:
        res = [m["content"]["data"].get("text/plain") for m in self.messages if m["msg_type"] == "execute_result"]
        return res[0] if res else None

    def comm_opens(self, model_name: Optional[str] = None) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["msg_type"] == "comm_open"
                and (model_name is None or m["content"]["data"]["state"].get("_model_name") == model_name)]


@dataclass
class Model:
    comm_id: str
    model_name: str
    state: dict[str, Any]
    updates: list[tuple[float, dict[str, Any]]] = field(default_factory=list)


class KernelDriver:
    """A kernel under test: run cells, watch IOPub (widgets), click, interrupt, restart."""

    def __init__(self, env: dict[str, str], cwd: str):
        self.env = env
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env, cwd=cwd)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self._lock = threading.RLock()
        self._other_replies: list[dict[str, Any]] = []
        self.iopub: list[tuple[float, dict[str, Any]]] = []
        self.models: dict[str, Model] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, name="iopub-collector", daemon=True)
        self._thread.start()

    # -- IOPub ------------------------------------------------------------------
    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.kc.iopub_channel.get_msg(timeout=0.05)
            except queue.Empty:
                continue
            except Exception:
                if self._stop.is_set():
                    return
                continue
            now = time.monotonic()
            with self._lock:
                self.iopub.append((now, msg))
                content = msg["content"]
                if msg["msg_type"] == "comm_open" and content.get("target_name") == "jupyter.widget":
                    state = dict(content["data"]["state"])
                    self.models[content["comm_id"]] = Model(content["comm_id"], state.get("_model_name", ""), state)
                elif msg["msg_type"] == "comm_msg":
                    model = self.models.get(content["comm_id"])
                    data = content.get("data", {})
                    if model is not None and data.get("method") in ("update", "echo_update"):
                        model.state.update(data.get("state", {}))
                        model.updates.append((now, dict(data.get("state", {}))))

    def messages_for(self, msg_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for _, m in self.iopub if m["parent_header"].get("msg_id") == msg_id]

    def _idle(self, msg_id: str) -> bool:
        return any(m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
                   for m in self.messages_for(msg_id))

    # -- running cells -------------------------------------------------------------
    def submit(self, code: str, subshell_id: Optional[str] = None) -> str:
        msg = self.kc.session.msg("execute_request", {"code": code, "silent": False, "store_history": True,
                                                      "user_expressions": {}, "allow_stdin": False,
                                                      "stop_on_error": False})
        if subshell_id is not None:
            msg["header"]["subshell_id"] = subshell_id
        self.kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    def collect(self, msg_id: str, timeout: float = 30.0, t0: Optional[float] = None) -> CellResult:
        t0 = time.monotonic() if t0 is None else t0
        deadline = t0 + timeout
        reply = None
        while reply is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no execute_reply within {timeout} s")
            try:
                msg = self.kc.get_shell_msg(timeout=remaining)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                reply = msg
            else:
                self._other_replies.append(msg)
        seconds = time.monotonic() - t0
        while not self._idle(msg_id):
            if time.monotonic() > deadline:
                raise TimeoutError("no idle status on IOPub")
            time.sleep(0.005)
        return CellResult(reply["content"], self.messages_for(msg_id), seconds)

    def run(self, code: str, timeout: float = 30.0, subshell_id: Optional[str] = None) -> CellResult:
        t0 = time.monotonic()
        msg_id = self.submit(code, subshell_id)
        return self.collect(msg_id, timeout, t0)

    def ok(self, code: str, timeout: float = 30.0) -> CellResult:
        res = self.run(code, timeout)
        assert res.ok, f"cell failed:\n{code}\n---\n{res.error_text}\n{res.stderr}"
        return res

    # -- widgets ---------------------------------------------------------------------
    def models_of(self, msg_id_or_result: Any, model_name: str) -> list[Model]:
        opens = msg_id_or_result.comm_opens(model_name)
        with self._lock:
            return [self.models[m["content"]["comm_id"]] for m in opens]

    def click(self, comm_id: str, subshell_id: Optional[str] = None) -> None:
        """A Button click exactly as a browser sends it: comm_msg on the shell channel."""
        msg = self.kc.session.msg("comm_msg", {"comm_id": comm_id,
                                               "data": {"method": "custom", "content": {"event": "click"}}})
        if subshell_id is not None:
            msg["header"]["subshell_id"] = subshell_id
        self.kc.shell_channel.send(msg)

    def wait_for(self, predicate, timeout: float = 20.0, interval: float = 0.02) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if predicate():
                    return True
            time.sleep(interval)
        with self._lock:
            return bool(predicate())

    # -- control ---------------------------------------------------------------------
    def control(self, msg_type: str, content: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        msg = self.kc.session.msg(msg_type, content)
        self.kc.control_channel.send(msg)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                reply = self.kc.control_channel.get_msg(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                continue
            if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                return reply["content"]
        raise TimeoutError(f"no {msg_type} reply")

    def create_subshell(self) -> str:
        return self.control("create_subshell_request", {})["subshell_id"]

    def interrupt(self) -> None:
        self.km.interrupt_kernel()

    def restart(self) -> None:
        self.km.restart_kernel(now=True)
        # Not kc.wait_for_ready(): it drains IOPub, which the collector thread owns.
        # Ready means: a kernel_info reply on shell *and* its idle status on IOPub
        # (the IOPub subscription reconnects on its own, a little later).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg_id = self.kc.kernel_info()
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                try:
                    self.kc.get_shell_msg(timeout=0.1)
                except queue.Empty:
                    pass
                if self._idle(msg_id):
                    return
        raise TimeoutError("the kernel did not come back after restart")

    def close(self) -> None:
        self._stop.set()
        try:
            self.kc.stop_channels()
        finally:
            self.km.shutdown_kernel(now=True)
        self._thread.join(2)


class PanelView:
    """The widget models one %%zmqexec cell opened."""

    def __init__(self, k: KernelDriver, res: CellResult):
        self.k = k
        self.bar = k.models_of(res, "FloatProgressModel")[0]
        html = k.models_of(res, "HTMLModel")
        self.info, self.status = html[0], html[1]
        self.output = self._with_class(k.models_of(res, "VBoxModel"), "zmqruntime-output")
        self.bars = self._with_class(k.models_of(res, "VBoxModel"), "zmqruntime-bars")
        self.button = k.models_of(res, "ButtonModel")[0]
        self.container = k.models_of(res, "VBoxModel")[-1]
        self.exec_id = re.search(r"<code>(\w+)</code>", self.status.state["value"]).group(1)

    def status_text(self) -> str:
        return re.sub(r"<[^>]+>", "", self.status.state.get("value", ""))

    def wait_status(self, word: str, timeout: float = 30.0) -> str:
        assert self.k.wait_for(lambda: word in self.status_text(), timeout), \
            f"panel never showed {word!r}: {self.status_text()!r}"
        return self.status_text()

    @staticmethod
    def _with_class(models: list[Model], css_class: str) -> Model:
        return next(m for m in models if css_class in m.state.get("_dom_classes", ()))

    def children(self, box: Model) -> list[Model]:
        """The models a box shows now (its ``children`` are ``IPY_MODEL_<comm id>`` references)."""
        with self.k._lock:
            return [self.k.models[c[len("IPY_MODEL_"):]] for c in box.state.get("children", ())
                    if c[len("IPY_MODEL_"):] in self.k.models]

    def outputs(self) -> list[dict[str, Any]]:
        """The outputs the panel's output area shows now, in order (across its Output segments)."""
        return [o for m in self.children(self.output) for o in m.state.get("outputs", ())]

    def output_text(self) -> str:
        return "".join(o.get("text", "") for o in self.outputs())

    def bar_rows(self) -> list[tuple[Model, Model]]:
        """(FloatProgress, HTML) of each tqdm row shown now."""
        rows = []
        for hbox in self.children(self.bars):
            bar, label = self.children(hbox)
            rows.append((bar, label))
        return rows


@pytest.fixture(scope="module")
def jupyter_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    runtime = tmp_path_factory.mktemp("zmqr-runtime")
    env = dict(os.environ)
    env.update(ZMQRUNTIME_RUNTIME_DIR=str(runtime), ZMQRUNTIME_PORT=str(free_port()),
               PYDEVD_DISABLE_FILE_VALIDATION="1", JUPYTER_PLATFORM_DIRS="1")
    yield env
    stop_servers(runtime)


@pytest.fixture(scope="module")
def jkernel(jupyter_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> KernelDriver:
    driver = KernelDriver(jupyter_env, str(tmp_path_factory.mktemp("kernel-cwd")))
    try:
        yield driver
    finally:
        driver.close()
