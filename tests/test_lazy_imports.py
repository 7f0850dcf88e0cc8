"""The package imports its public names on first use: a worker or server process starts without
loading the clients (asyncio with them), and every public name still resolves as before."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import zmqruntime
import zmqruntime.execution

pytestmark = pytest.mark.timeout(60)


def modules_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after ``statement``."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    return set(json.loads(out.stdout))


def test_a_worker_and_the_cli_start_without_the_clients():
    for statement in ("import zmqruntime.execution.worker", "import zmqruntime.cli"):
        loaded = modules_after(statement)
        assert not {"asyncio", "zmqruntime.execution.client", "zmqruntime.receive"} & loaded, statement
    assert "zmqruntime.execution.server" not in modules_after("import zmqruntime.execution.worker")


def test_every_public_name_resolves_and_unknown_names_are_attribute_errors():
    from zmqruntime import ExecutionClient, TaskContext, parallel_map, progress  # noqa: F401

    for name in zmqruntime.__all__:
        assert getattr(zmqruntime, name) is not None, name
        assert name in dir(zmqruntime)
    for name in zmqruntime.execution.__all__:
        assert getattr(zmqruntime.execution, name) is getattr(zmqruntime, name), name
    assert zmqruntime.ExecutionClient is zmqruntime.execution.client.ExecutionClient
    for module in (zmqruntime, zmqruntime.execution):
        with pytest.raises(AttributeError, match="no_such_name"):
            module.no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        exec("from zmqruntime import no_such_name")
