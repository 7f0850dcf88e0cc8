"""A kernel restart does not touch the persistent server: earlier executions and their
results are still there, and a running one can be followed again with a live panel."""

from __future__ import annotations

import re

import pytest

from conftest_jupyter import LONG_JOB, KernelDriver, PanelView, jkernel, jupyter_env  # noqa: F401 (fixtures)


@pytest.mark.timeout(120)
def test_restart_keeps_server_executions_and_results(jkernel: KernelDriver):
    k = jkernel
    k.ok("%load_ext zmqruntime_jupyter")
    done = PanelView(k, k.ok("%%zmqexec --name before-restart\nmarker = 'kept'\nsum(range(100))"))
    done.wait_status("complete")
    running = PanelView(k, k.ok(LONG_JOB.format(opts="--name survivor", n=60, desc="survivor")))
    running.wait_status("running")
    pid = k.ok("import zmqruntime_jupyter as z\n"
               "print(list(z.current_state().connections.values())[0].client.info.pid)").stdout.strip()

    k.restart()

    assert "zmqruntime_jupyter" not in k.ok("import sys\nprint(list(sys.modules))").stdout
    k.ok("%load_ext zmqruntime_jupyter")
    listing = k.ok("%zmq list").stdout
    assert re.search(rf"{done.exec_id}\s+before-restart\s+complete", listing)
    assert re.search(rf"{running.exec_id}\s+survivor\s+(running|complete)", listing)
    assert f"(pid {pid})" in k.ok("%zmq status").stdout  # the same server process
    assert k.ok(f"%zmq result {done.exec_id}").result_text == "4950"
    res = k.ok(f"h = %zmq handle {running.exec_id}\nh")
    if "running" in k.ok("print(h.status)").stdout:
        assert res.comm_opens("ButtonModel")  # a live panel for the execution started before the restart
    assert k.ok("print(h.wait(timeout=30)['status'], h.progress['done'])").stdout == "complete 60\n"
    # the same notebook finds its session again: its remote variables are still there
    assert k.ok("%%zmqexec --block\nmarker").result_text == "'kept'"
