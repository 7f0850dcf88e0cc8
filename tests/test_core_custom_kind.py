"""The execute_task / serialize_task hooks with a real custom task kind."""

from __future__ import annotations

import pytest

from helpers import ROOT
from zmqruntime import ExecutionFailed, RemoteError

pytestmark = pytest.mark.timeout(60)

EXAMPLES = str(ROOT / "examples")


@pytest.fixture
def call_server(start_server, monkeypatch):
    monkeypatch.syspath_prepend(EXAMPLES)
    return start_server('--ExecutionServer.task_kind_classes={"call": "call_kind:CallKind"}', extra_path=EXAMPLES)


def test_custom_kind_runs_and_python_kind_still_works(call_server):
    from call_kind import CallClient

    client = CallClient(connection_file=str(call_server.connection_file))
    try:
        exec_id = client.execute(("math:factorial", [20]))
        assert client.wait(exec_id, timeout=20)["status"] == "complete"
        assert client.get_results(exec_id) == {"_": 2432902008176640000}
        kw = client.execute(("builtins:sorted", [[3, 1, 2]], {"reverse": True}))
        client.wait(kw, timeout=20)
        assert client.get_results(kw) == {"_": [3, 2, 1]}
        assert client.run("'source still runs'", timeout=20) == {"_": "source still runs"}
        assert client.get_status(exec_id)["kind"] == "call"
    finally:
        client.close()


def test_custom_kind_bad_input(call_server):
    from call_kind import CallClient

    client = CallClient(connection_file=str(call_server.connection_file))
    try:
        with pytest.raises(RemoteError) as info:
            client.execute(("no_colon", []))
        assert info.value.code == "bad_request"
        with pytest.raises(RemoteError) as info:
            client.execute({"kind": "teleport"})
        assert info.value.code == "unknown_task_kind" and "call" in info.value.message
        failing = client.execute(("math:sqrt", [-1]))
        client.wait(failing, timeout=20)
        with pytest.raises(ExecutionFailed) as err:
            client.get_results(failing)
        assert "math domain error" in str(err.value)
    finally:
        client.close()


def test_plain_server_rejects_custom_kind(server):
    with pytest.raises(RemoteError) as info:
        server.client.execute({"kind": "call", "function": "math:factorial", "args": [3]})
    assert info.value.code == "unknown_task_kind"


def test_a_task_kind_that_cannot_be_loaded_is_refused_at_serve_time(runtime_dir):
    import subprocess
    import sys

    for spec, words in (('{"call": "no_such_module:Kind"}', "cannot import 'no_such_module:Kind'"),
                        ('{"call": "os:path"}', "is not a TaskKind class")):
        out = subprocess.run([sys.executable, "-m", "zmqruntime", "serve", "--port", "1",
                              f"--ExecutionServer.task_kind_classes={spec}"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 3 and words in out.stderr, out.stderr
