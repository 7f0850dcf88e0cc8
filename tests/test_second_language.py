"""A client in another language, from docs/protocol.md alone: results as JSON, and the Node example.

The Node test needs ``node`` (>= 18) and the example's one dependency
(``npm ci --prefix examples/node``, which installs the ``zeromq`` package with
its prebuilt binary). Without them it skips and says so; ``.ci/run`` sets
``ZMQRUNTIME_REQUIRE_NODE=1`` so CI can never skip it silently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from helpers import ROOT
from zmqruntime import RemoteError

pytestmark = pytest.mark.timeout(90)

NODE_DIR = ROOT / "examples" / "node"
CODE = """
from zmqruntime import progress
total = 0
for i in progress(range(n), desc="node"):
    total += i
{"total": total, "mixed": [1, 2.5, "x", None, True], "pair": (1, 2)}
"""
EXPECTED = {"_": {"total": sum(range(20)), "mixed": [1, 2.5, "x", None, True], "pair": [1, 2]}}


def _json_results(client, execution_id, **extra):
    return client._client.call("results", {"execution_id": execution_id, **extra})


def test_results_as_json(server):
    client = server.client
    exec_id = client.execute(CODE, "n = 20", results=["total"])
    client.wait(exec_id, timeout=30)
    reply = _json_results(client, exec_id, format="json")
    assert reply["format"] == "json" and reply["values"] == {**EXPECTED, "total": 190}
    assert client.get_results(exec_id)["_"]["pair"] == (1, 2)  # the pickle form is untouched
    nothing = client.execute("x = 1")
    client.wait(nothing, timeout=30)
    assert _json_results(client, nothing, format="json")["values"] == {}


@pytest.mark.parametrize("value", ["{1: 'int key'}", "{1, 2}", "float('nan')", "b'bytes'",
                                   "__import__('numpy').arange(3)", "'x' * (2 << 20)"])
def test_results_that_are_not_plain_json_are_refused_clearly(server, value):
    client = server.client
    exec_id = client.execute(value)
    client.wait(exec_id, timeout=30)
    with pytest.raises(RemoteError) as info:
        _json_results(client, exec_id, format="json")
    assert info.value.code == "not_json" and "format 'pickle'" in info.value.message
    assert client.get_results(exec_id)["_"] is not None  # still there as pickle


def test_results_format_bad_input(server):
    client = server.client
    exec_id = client.execute("[1, 2]")
    client.wait(exec_id, timeout=30)
    for bad in ("xml", 3, None, ["json"]):
        with pytest.raises(RemoteError) as info:
            _json_results(client, exec_id, format=bad)
        assert info.value.code == "bad_request" and "'format'" in info.value.message
    assert _json_results(client, exec_id, format="pickle")["names"] == ["_"]
    assert client.run("'still serving'", timeout=30) == {"_": "still serving"}


def node_missing(reason: str) -> None:
    if os.environ.get("ZMQRUNTIME_REQUIRE_NODE") == "1":
        pytest.fail(reason + " ZMQRUNTIME_REQUIRE_NODE=1 makes this test mandatory.", pytrace=False)
    pytest.skip(reason + " Set ZMQRUNTIME_REQUIRE_NODE=1 to make its absence a failure.")


def node_command() -> str:
    node = shutil.which("node")
    if node is None:
        node_missing("Node.js not found: the second-language client test needs `node` >= 18 "
                     "(Debian: `apt-get install -y nodejs npm`).")
    if not (NODE_DIR / "node_modules" / "zeromq").is_dir():
        node_missing("The Node example's dependency is not installed: run `npm ci --prefix examples/node` "
                     "(the `zeromq` npm package, with its prebuilt binary).")
    return node


def test_the_node_client_runs_a_task_and_reads_json_results(server):
    node = node_command()
    proc = subprocess.run([node, "client.mjs", str(server.connection_file), CODE, "n = 20"], cwd=NODE_DIR,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("RESULT ")
    assert json.loads(lines[-1][len("RESULT "):]) == EXPECTED
    progress = [line for line in lines if line.startswith("progress ")]
    assert progress and progress[-1] == "progress 20/20 node"
    # a config error reaches the Node client as a failed execution, said plainly
    failed = subprocess.run([node, "client.mjs", str(server.connection_file), "1", "1 / 0"], cwd=NODE_DIR,
                            capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1 and "failed" in failed.stderr
    assert server.client.ping()["ok"]
