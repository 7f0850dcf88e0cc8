"""Two notebooks (two real kernels) on one server: each has its own session."""

from __future__ import annotations

import re

import pytest

from conftest_jupyter import KernelDriver, jkernel, jupyter_env  # noqa: F401 (fixtures)


@pytest.mark.timeout(180)
def test_two_kernels_have_their_own_namespaces_and_queues(jkernel: KernelDriver, jupyter_env, tmp_path):
    a = jkernel
    b = KernelDriver(jupyter_env, str(tmp_path))
    try:
        for k in (a, b):
            k.ok("%load_ext zmqruntime_jupyter")
        a.ok("%%zmqexec --block\nsecret = 'A only'")
        assert b.ok("%%zmqexec --block\n'secret' in globals()").result_text == "False"
        assert a.ok("%%zmqexec --block\nsecret").result_text == "'A only'"

        # A's long job does not hold up B's trivial cell
        a.ok("%%zmqexec --name long --out long_job\nimport time\ntime.sleep(20)")
        assert b.ok("%%zmqexec --block\n6 * 7", timeout=15).result_text == "42"
        assert a.ok("print(long_job.status)").stdout.strip() == "running"

        # %zmq list shows this notebook's executions, --all every session's
        mine, every = b.ok("%zmq list").stdout, b.ok("%zmq list --all").stdout
        assert not re.search(r"\blong\b", mine) and re.search(r"\blong\s+running", every)
        sessions = a.ok("%zmq sessions").stdout
        session_a = re.search(r"this notebook's session: (\S+)\)", sessions).group(1)
        assert session_a.startswith("kernel:") and session_a in sessions

        a.ok("long_job.cancel()\nlong_job.wait(timeout=30)")
        assert "remote namespace dropped" in a.ok("%zmq reset").stdout
        assert a.ok("%%zmqexec --block\n'secret' in globals()").result_text == "False"

        # bad input to the new options
        for bad, words in (("%%zmqexec --session " + "x" * 300 + "\n1", "'session' must be 1 to 256"),
                           ("%zmq list --all --session x", "--all or --session"),
                           ("%zmq reset --session 'a\tb'", "printable")):
            res = b.run(bad)
            assert not res.ok and words in res.error_text + res.stderr, (bad, res.error_text, res.stderr)
    finally:
        b.close()
