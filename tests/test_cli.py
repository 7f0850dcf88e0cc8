"""The zmqruntime CLI as a user runs it: real processes, real server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import server_env

pytestmark = pytest.mark.timeout(120)


def zr(*args, timeout=60, input=None):
    return subprocess.run([sys.executable, "-m", "zmqruntime", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=server_env(), input=input)


def test_help_is_readable():
    out = zr("--help")
    assert out.returncode == 0
    for command in ("serve", "ping", "submit", "status", "cancel", "list", "watch", "shutdown"):
        assert command in out.stdout
    sub = zr("submit", "--help")
    assert "--wait" in sub.stdout and "FILE" in sub.stdout.upper()


def test_submit_wait_shows_output_progress_and_result(runtime_dir, port, tmp_path):
    job = tmp_path / "job.py"
    job.write_text("from zmqruntime import progress\nimport time\n"
                   "for i in progress(range(5), desc='steps'):\n    print('step', i)\n    time.sleep(0.05)\n"
                   "sum(range(5))\n")
    out = zr("submit", job, "--wait", "--port", port)
    try:
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert len(lines[0]) == 12  # the execution id first
        assert [line for line in lines if line.startswith("step")] == [f"step {i}" for i in range(5)]
        assert lines[-1] == "10"
        assert "steps [" in out.stderr and "5/5" in out.stderr and "complete in" in out.stderr
        exec_id = lines[0]
        st = zr("status", exec_id, "--port", port)
        assert st.returncode == 0 and '"status": "complete"' in st.stdout
        ls = zr("list", "--port", port)
        assert exec_id in ls.stdout and "STATUS" in ls.stdout and "job.py" in ls.stdout
        ping = zr("ping", "--port", port)
        assert ping.returncode == 0 and "round trip" in ping.stdout
    finally:
        down = zr("shutdown", "--port", port)
    assert down.returncode == 0 and "shutting down" in down.stdout
    gone = zr("ping", "--port", port, "--timeout", "1")
    assert gone.returncode == 3 and "no zmqruntime server" in gone.stderr


def test_failing_and_cancelled_submissions(server, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("1 / 0\n")
    out = zr("submit", bad, "--wait", "--port", server.port)
    assert out.returncode == 1 and "ZeroDivisionError" in out.stderr and "failed" in out.stderr
    slow = tmp_path / "slow.py"
    slow.write_text("import time\ntime.sleep(30)\n")
    out = zr("submit", slow, "--port", server.port)
    exec_id = out.stdout.strip()
    cancel = zr("cancel", exec_id, "--port", server.port)
    assert cancel.returncode == 0 and "cancel requested" in cancel.stdout
    assert server.client.wait(exec_id, timeout=20)["status"] == "cancelled"
    again = zr("cancel", exec_id, "--port", server.port)
    assert again.returncode == 0 and "already cancelled" in again.stdout
    timed = zr("submit", slow, "--wait", "--exec-timeout", "0.5", "--port", server.port)
    assert timed.returncode == 1 and "timeout after 0.5 s" in timed.stderr


def test_watch_follows_one_execution(server):
    exec_id = server.client.execute("import time\nfor i in range(3):\n    print('tick', i)\n    time.sleep(0.2)")
    out = zr("watch", exec_id, "--port", server.port)
    assert out.returncode == 0
    assert "tick 2" in out.stdout


def test_submit_from_stdin(server):
    out = zr("submit", "-", "--wait", "--port", server.port, input="6 * 7\n")
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "42"


@pytest.mark.parametrize("args,message", [
    (["frobnicate"], "invalid choice"),
    (["ping", "--port", "notaport"], "expected a port number"),
    (["ping", "--port", "70000"], "port must be 1-65535"),
    (["submit"], "the following arguments are required"),
    (["submit", "x.py", "--exec-timeout", "-3"], "must be positive"),
    (["ping", "--bogus"], "unrecognized arguments"),
    (["list", "--limit", "0"], "must be 1 or more"),
    (["list", "--limit", "ten"], "expected a whole number"),
    (["serve", "--ExecutionServer.concurrency=many"], "expected an int"),
    (["serve", "--ExecutionServer.concurrency=0"], "concurrency must be >= 1"),
    (["serve", "--ExecutionServer.max_batch=0"], "max_batch must be >= 1"),
    (["serve", "--LocalBackend.ahead=-1"], "LocalBackend.ahead must be >= 0"),
    (["serve", "--LocalBackend.spare_workers=-2"], "LocalBackend.spare_workers must be >= 0"),
    (["serve", "--port", "65000"], "control port"),
])
def test_bad_flags_give_clear_errors(runtime_dir, args, message):
    out = zr(*args, timeout=30)
    assert out.returncode in (2, 3)
    assert message in out.stderr


def test_missing_file_and_missing_server(runtime_dir, port):
    out = zr("submit", "/nonexistent/job.py", "--port", port)
    assert out.returncode == 2 and "cannot read" in out.stderr
    out = zr("status", "--port", port, "--timeout", "1")
    assert out.returncode == 3 and "no zmqruntime server" in out.stderr


def test_serve_takes_traits_from_the_command_line(start_server):
    """--ExecutionServer.x=y is applied, not overridden by the default of a plain flag."""
    server = start_server("--ExecutionServer.concurrency=2", "--ExecutionServer.max_batch=7")
    info = server.client.ping()
    assert info["concurrency"] == 2 and info["backend"]["name"] == "local"
    explicit = start_server("--concurrency", "3")
    assert explicit.client.ping()["concurrency"] == 3


def test_submit_wait_shows_tqdm_rows_and_display_outputs(server, tmp_path):
    pytest.importorskip("tqdm", reason="tqdm is in the [test] extra: pip install -e '.[test]'")
    pytest.importorskip("matplotlib", reason="matplotlib is in the [test] extra: pip install -e '.[test]'")
    job = tmp_path / "bars.py"
    job.write_text("from tqdm import tqdm\nimport time\nimport matplotlib.pyplot as plt\n"
                   "for i in tqdm(range(2), desc='outer'):\n"
                   "    for j in tqdm(range(10), desc='inner', leave=False):\n        time.sleep(0.01)\n"
                   "plt.plot([1, 2]); plt.show()\n'done'\n")
    out = zr("submit", job, "--wait", "--port", server.port)
    assert out.returncode == 0, out.stderr
    assert "outer [" in out.stderr and "2/2" in out.stderr  # a row per bar (plain lines: not a tty)
    assert "  inner [" in out.stderr and "10/10" in out.stderr  # the nested one indented
    assert "it/s" not in out.stderr + out.stdout  # no tqdm text
    assert "[image/png output" in out.stdout and "zmqruntime status ID" in out.stdout
    assert out.stdout.splitlines()[-1] == "'done'"  # the value once (its repr event is not printed twice)
    assert out.stdout.count("'done'") == 1


def test_list_shows_the_newest_executions_up_to_the_limit(server):
    import json

    ids = [server.client.execute(f"{i}") for i in range(4)]
    for exec_id in ids:
        server.client.wait(exec_id, timeout=20)
    out = zr("list", "--limit", "2", "--json", "--port", server.port)
    assert out.returncode == 0, out.stderr
    assert [row["execution_id"] for row in json.loads(out.stdout)] == ids[-2:]
