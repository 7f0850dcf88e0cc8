"""Large results and pushes: into a directory, spilled to disk, through shared memory.

Real servers and workers in their own processes; the files are looked at
where they really are (a private shared-memory directory per test).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest

from helpers import ServerProcess, free_port, server_env
from zmqruntime import AsyncExecutionClient, RemoteError
from zmqruntime.receive import load_directory
from zmqruntime.shm import SegmentRefused

pytestmark = pytest.mark.timeout(120)

MIB = 1 << 20


@pytest.fixture(autouse=True)
def shm_dir(private_shm_dir: Path) -> Path:
    """Every test here gets a private /dev/shm stand-in, set before any server starts."""
    return private_shm_dir


def buffer_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("zmqr-*.buf"))


#: Task-side (and test-side) helper: the type of the object that finally holds an array's memory.
BACKING = ("def backing(a):\n"
           "    while True:\n"
           "        nxt = a.obj if isinstance(a, memoryview) else getattr(a, 'base', None)\n"
           "        if nxt is None:\n"
           "            return type(a).__name__\n"
           "        a = nxt\n")
namespace: dict = {}
exec(BACKING, namespace)
backing = namespace["backing"]


def finished(client, code: str, **kwargs) -> str:
    exec_id = client.execute(code, **kwargs)
    assert client.wait(exec_id, timeout=60)["status"] == "complete"
    return exec_id


# -- shared memory -------------------------------------------------------------
def test_result_through_shared_memory_then_released(server, shm_dir):
    client = server.client
    exec_id = finished(client, "import numpy as np\narr = np.arange(1_000_000, dtype=np.float64)\narr * 2",
                       results=["arr"])
    files = buffer_files(shm_dir)
    assert len(files) == 2 and all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    results = client.get_results(exec_id)  # same host: mapped, not sent
    assert results["arr"][-1] == 999_999 and results["_"][-1] == 1_999_998
    assert backing(results["arr"]) == "mmap"
    results["arr"][0] = -1.0  # a private mapping: writable, the server's copy is untouched
    again = client.get_results(exec_id, shm=False)  # over the socket, from the server's mapping
    assert again["arr"][0] == 0 and np.array_equal(again["_"], results["_"])
    client.get_results(exec_id, release=True)
    assert buffer_files(shm_dir) == []
    with pytest.raises(RemoteError) as info:
        client.get_results(exec_id)
    assert info.value.code == "results_expired"


def test_a_large_result_over_the_socket_is_whole_while_its_pages_are_filled(server, shm_dir):
    """64 MiB: sent from a mapping a helper thread fills while libzmq sends; every byte arrives, twice,
    and the server's copy-on-write mapping adds no anonymous memory."""
    client = server.client
    exec_id = finished(client, "import numpy as np\nnp.arange(8 * 1024 * 1024, dtype=np.float64)")
    server_proc = psutil.Process(server.pid)
    anon_before = server_proc.memory_info().rss - server_proc.memory_info().shared
    expected = np.arange(8 * MIB, dtype=np.float64)
    for _ in range(2):
        got = client.get_results(exec_id, shm=False)["_"]
        assert backing(got) != "mmap" and np.array_equal(got, expected)
        del got
    info = server_proc.memory_info()
    assert (info.rss - info.shared) - anon_before < 16 * MIB
    assert client.ping()["ok"]


def test_a_large_pickle_stream_goes_through_shared_memory_too(server, shm_dir, tmp_path):
    client = server.client
    exec_id = finished(client, "b'x' * 3_000_000")  # bytes are pickled in band: buffer 0 is large
    assert len(buffer_files(shm_dir)) == 1
    assert client.get_results(exec_id)["_"] == b"x" * 3_000_000
    assert client.get_results(exec_id, shm=False)["_"][-1:] == b"x"
    assert client.get_results(exec_id, into=tmp_path / "d")["_"] == b"x" * 3_000_000


def test_push_from_a_memory_mapped_file_through_shared_memory(server, shm_dir, tmp_path):
    data = np.memmap(tmp_path / "input.f64", dtype=np.float64, mode="w+", shape=(3 * MIB // 8,))
    data[:] = 2.0
    data.flush()
    client = server.client
    exec_id = finished(client, BACKING + "(backing(x), float(x.sum()), x.flags.writeable)", push={"x": data})
    kind, total, writable = client.get_results(exec_id)["_"]
    assert kind == "mmap" and total == 2.0 * data.size and writable  # the worker mapped the file
    assert buffer_files(shm_dir) == []  # the push file is gone once the execution is final


def test_push_of_a_large_memmap_does_not_read_it_into_the_client(server, shm_dir, tmp_path):
    path = tmp_path / "big.f64"
    with open(path, "wb") as fh:  # written without mapping it here
        for _ in range(16):
            fh.write(np.full(MIB // 2, 4.0).tobytes())
    data = np.memmap(path, dtype=np.float64, mode="r")
    me = psutil.Process()
    before = me.memory_info().rss
    exec_id = server.client.execute("float(x.sum())", push={"x": data})
    grew = me.memory_info().rss - before
    assert server.client.wait(exec_id, timeout=60)["status"] == "complete"
    assert server.client.get_results(exec_id)["_"] == 4.0 * data.size
    assert grew < 16 * MIB, f"the client read the file: RSS grew by {grew / MIB:.1f} MiB"  # 64 MiB file


def test_push_of_a_shared_array_copies_nothing(server, shm_dir):
    from zmqruntime.shm import shared_array

    arr = shared_array((512, 1024), dtype=np.float64)
    arr[:] = 3.0
    (own,) = buffer_files(shm_dir)
    client = server.client
    exec_id = finished(client, BACKING + "(backing(x), float(x.sum()))", push={"x": arr})
    assert client.get_results(exec_id)["_"] == ("mmap", 3.0 * arr.size)
    assert buffer_files(shm_dir) == [own] and own.stat().st_nlink == 1  # the server's link is gone
    del arr
    import gc

    gc.collect()
    assert buffer_files(shm_dir) == []  # freed with the array


def test_push_over_the_socket_when_shared_memory_is_off(server, shm_dir):
    client = server.client
    client.push_shm = False
    exec_id = finished(client, BACKING + "(backing(x), float(x.sum()))", push={"x": np.ones(MIB)})
    kind, total = client.get_results(exec_id)["_"]
    assert kind != "mmap" and total == MIB


@pytest.mark.parametrize("tamper", ["chmod", "chown", "symlink"])
def test_a_tampered_segment_is_refused(server, shm_dir, tamper):
    if tamper == "chown" and os.getuid() != 0:
        pytest.skip("changing a file's owner needs root")
    client = server.client
    exec_id = finished(client, "import numpy as np\nnp.ones(2 * 1024 * 1024)")
    (segment,) = buffer_files(shm_dir)
    if tamper == "chmod":
        os.chmod(segment, 0o640)
        expected = "mode 0640"
    elif tamper == "chown":
        import pwd

        os.chown(segment, pwd.getpwnam("nobody").pw_uid, -1)
        expected = "owned by uid"
    else:
        moved = segment.with_name("elsewhere")
        os.rename(segment, moved)
        os.symlink(moved, segment)
        expected = "symbolic link"
    with pytest.raises(SegmentRefused, match=expected):
        client.get_results(exec_id)
    assert client.ping()["ok"]  # still serving
    if tamper != "symlink":  # the server's own mapping still serves it over the socket
        assert client.get_results(exec_id, shm=False)["_"].sum() == 2 * MIB


def test_a_worker_file_that_fails_the_checks_is_not_adopted(start_server, shm_dir):
    """A result file replaced before the server adopts it (wider mode) is refused, clearly."""
    server = start_server()
    client = server.client
    code = ("import numpy as np, os, glob\n"
            "from zmqruntime import spill\n"
            "orig = spill.shm.create\n"
            "def loose(d, data, source=None):\n"
            "    p = orig(d, data, source)\n"
            "    os.chmod(p, 0o644)\n"
            "    return p\n"
            "spill.shm.create = loose\n"
            "r = np.ones(2 * 1024 * 1024)\n")
    finished(client, code)
    exec_id = client.execute("r")
    status = client.wait(exec_id, timeout=30)
    assert status["status"] == "complete" and "refused" in (status["result_error"] or "")
    with pytest.raises(RemoteError) as info:
        client.get_results(exec_id)
    assert info.value.code == "unpicklable_result" and "0644" in info.value.message
    assert buffer_files(shm_dir) == []
    finished(client, "spill.shm.create = orig")


# -- into a directory ----------------------------------------------------------
def test_results_into_a_directory(server, shm_dir, tmp_path):
    client = server.client
    exec_id = finished(client, "import numpy as np\n"
                               "big = np.arange(5 * 1024 * 1024, dtype=np.int32).reshape(1024, -1)\n"
                               "fort = np.asfortranarray(np.ones((600, 700)))\n"
                               "small = {'label': 'x', 'n': 3, 'tiny': np.zeros(3)}\n"
                               "nested = [np.full(300_000, 7.0)]\n",
                       results=["big", "fort", "small", "nested"])
    out = tmp_path / "out"
    results = client.get_results(exec_id, into=out)
    assert isinstance(results["big"], np.memmap) and results["big"].shape == (1024, 5 * 1024)
    assert results["big"][-1, -1] == 5 * 1024 * 1024 - 1
    assert isinstance(results["fort"], np.memmap) and results["fort"].flags.f_contiguous
    assert results["small"]["label"] == "x" and results["nested"][0][-1] == 7.0
    names = sorted(p.name for p in out.iterdir())
    assert "big.npy" in names and "fort.npy" in names and "values.pickle" in names and "index.json" in names
    plain = np.load(out / "big.npy")  # a standard .npy file
    assert plain.dtype == np.int32 and plain[0, 1] == 1
    reopened = load_directory(out)
    assert np.array_equal(reopened["fort"], results["fort"]) and reopened["small"]["n"] == 3
    assert client.get_results(exec_id)["big"][0, 0] == 0  # still held: into= does not release


def test_async_client_into_and_shared_memory(server, shm_dir, tmp_path):
    exec_id = finished(server.client, "import numpy as np\nnp.arange(600_000.0)")

    async def main():
        client = AsyncExecutionClient(server.client.info)
        try:
            via_shm = await client.get_results(exec_id)
            via_dir = await client.get_results(exec_id, into=tmp_path / "a", release=True)
            return via_shm, via_dir
        finally:
            client.close()

    via_shm, via_dir = asyncio.run(main())
    assert via_shm["_"][-1] == via_dir["_"][-1] == 599_999
    assert buffer_files(shm_dir) == []  # released


def test_into_bad_input(server, shm_dir, tmp_path):
    client = server.client
    exec_id = finished(client, "import numpy as np\nnp.ones(300_000)")
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("x")
    with pytest.raises(TypeError, match="into"):
        client.get_results(exec_id, into=123)
    with pytest.raises(TypeError, match="into"):
        client.get_results(exec_id, into=b"/tmp/x")
    with pytest.raises(ValueError, match="not a directory"):
        client.get_results(exec_id, into=tmp_path / "file")
    with pytest.raises(ValueError, match="not empty"):
        client.get_results(exec_id, into=tmp_path / "full")
    with pytest.raises(TypeError, match="shm"):
        client.get_results(exec_id, shm="yes")
    failed = client.execute("1 / 0")
    client.wait(failed, timeout=30)
    with pytest.raises(RemoteError) as info:
        client.get_results(failed, into=tmp_path / "never")
    assert info.value.code == "execution_failed" and not (tmp_path / "never").exists()
    assert (tmp_path / "full" / "keep").read_text() == "x"
    assert client.get_results(exec_id, into=tmp_path / "ok")["_"].sum() == 300_000  # still serving


def test_bad_wire_fields_get_bad_request(server, shm_dir):
    client = server.client
    exec_id = finished(client, "import numpy as np\nnp.ones(3 * 1024 * 1024)")
    call = server.client._client.call
    bad = [
        {"manifest": "yes"}, {"shm": 1}, {"part": [0, 0]}, {"part": "0,0,1"}, {"part": [0, True, 1]},
        {"part": [0, 1, 4096]}, {"part": [9, 0, 4096]}, {"part": [1, 0, 0]}, {"part": [1, 0, 1 << 40]},
        {"part": [1, 1 << 40, 4 << 20]}, {"manifest": True, "shm": True}, {"shm": True, "release": True},
        {"part": [1, 0, 4 << 20], "release": True},
    ]
    for fields in bad:
        with pytest.raises(RemoteError) as info:
            call("results", {"execution_id": exec_id, **fields})
        assert info.value.code == "bad_request", fields
    manifest = call("results", {"execution_id": exec_id, "manifest": True})
    assert [b["nbytes"] for b in manifest["buffers"]][1] == 24 * MIB
    part = server.client._client.request("results", {"execution_id": exec_id, "part": [1, 4 << 20, 4 << 20]})
    assert part.content["part"] == [1, 4 << 20, 4 << 20] and len(part.buffers[0]) == 4 << 20
    # execute's 'shm' field
    foreign = shm_dir / f"zmqr-{os.getpid()}-{'0' * 32}.buf"
    for field, code in [("x", "bad_request"), ([], "bad_request"), ([{"index": "1"}], "bad_request"),
                        ([{"index": 1, "path": "/etc/passwd", "nbytes": 1}], "bad_request"),
                        ([{"index": 1, "path": str(foreign), "nbytes": 8}], "shm_unavailable"),
                        ([{"index": 5, "path": str(foreign), "nbytes": 8}], "bad_request")]:
        with pytest.raises(RemoteError) as info:
            call("execute", {"task": {"kind": "python", "code": "x"}, "shm": field},
                 buffers=[b"\x80\x05N.", b""])
        assert info.value.code == code, field
    foreign.write_bytes(b"12345678")
    os.chmod(foreign, 0o644)
    with pytest.raises(RemoteError) as info:
        call("execute", {"task": {"kind": "python", "code": "x"},
                         "shm": [{"index": 1, "path": str(foreign), "nbytes": 8}]}, buffers=[b"\x80\x05N.", b""])
    assert info.value.code == "shm_refused" and "0644" in info.value.message
    assert client.get_results(exec_id)["_"].sum() == 3 * MIB  # still serving


# -- spill to disk, retention ----------------------------------------------------
def test_large_result_spills_to_disk_and_retention_deletes_it(start_server, shm_dir, tmp_path):
    spill = tmp_path / "spill"
    server = start_server("--ExecutionServer.spill_result_bytes=8000000", f"--ExecutionServer.spill_dir={spill}",
                          "--ExecutionServer.max_spill_bytes=30000000")
    client = server.client
    finished(client, "import numpy as np")
    server_rss = psutil.Process(server.pid).memory_info().rss
    first = finished(client, "np.full(2_500_000, 1.0)")  # 20 MB: spilled
    assert len(buffer_files(spill)) == 1 and buffer_files(shm_dir) == []
    assert psutil.Process(server.pid).memory_info().rss - server_rss < 10_000_000  # held on disk, not in RAM
    assert client.get_results(first, into=tmp_path / "a")["_"].sum() == 2_500_000
    assert client.get_results(first, shm=False)["_"][-1] == 1.0  # over the socket from the file
    small = finished(client, "np.full(300_000, 3.0)")  # 2.4 MB: shared memory, counted as memory
    assert len(buffer_files(shm_dir)) == 1
    second = finished(client, "np.full(2_500_000, 2.0)")  # disk total over 30 MB: the first goes
    with pytest.raises(RemoteError) as info:
        client.get_results(first)
    assert info.value.code == "results_expired"
    assert len(buffer_files(spill)) == 1
    assert client.get_results(second)["_"][0] == 2.0 and client.get_results(small)["_"][0] == 3.0


def test_memory_retention_deletes_shared_memory_files(start_server, shm_dir):
    client = start_server("--ExecutionServer.max_results=1").client
    first = finished(client, "import numpy as np\nnp.ones(300_000)")
    assert len(buffer_files(shm_dir)) == 1
    finished(client, "np.ones(400_000)")
    assert len(buffer_files(shm_dir)) == 1
    with pytest.raises(RemoteError):
        client.get_results(first)


# -- crashes -----------------------------------------------------------------------
CRASHING_CLIENT = """
import os, signal, sys
import numpy as np
from zmqruntime.receive import prepare_push
buffers, files = prepare_push({"x": np.ones(1 << 20)}, True)
print(files[0]["path"], flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_nothing_left_after_a_client_or_server_crash(runtime_dir, shm_dir):
    server = ServerProcess(runtime_dir, free_port())
    try:
        exec_id = finished(server.client, "import numpy as np\nnp.ones(500_000)")
        # a client killed after writing a push segment, before sending it
        out = subprocess.run([sys.executable, "-c", CRASHING_CLIENT], env=server_env(), capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == -signal.SIGKILL
        orphan = Path(out.stdout.strip())
        assert orphan.exists()
        # a client that mapped a result and was killed: the server's file stays, and serves
        mapped = subprocess.run([sys.executable, "-c",
                                 "import os, signal, sys\nfrom zmqruntime import ExecutionClient\n"
                                 f"c = ExecutionClient(connection_file={str(server.connection_file)!r})\n"
                                 f"r = c.get_results({exec_id!r})\nassert r['_'].sum() == 500_000\n"
                                 "os.kill(os.getpid(), signal.SIGKILL)"],
                                env=server_env(), capture_output=True, text=True, timeout=60)
        assert mapped.returncode == -signal.SIGKILL, mapped.stderr
        assert server.client.get_results(exec_id)["_"].sum() == 500_000
        server.proc.kill()  # the server crashes, its result file stays behind for now
        server.proc.wait(10)
        assert len(buffer_files(shm_dir)) == 2
    finally:
        server.stop()
    again = ServerProcess(runtime_dir, free_port())  # the next start sweeps files of dead processes
    try:
        assert buffer_files(shm_dir) == []
    finally:
        again.stop()


# -- size ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_gib_result_into_a_directory_with_bounded_client_memory(start_server, shm_dir, tmp_path):
    """2 GiB arrive in files while this process's RSS grows by at most 64 MiB."""
    server = start_server("--ExecutionServer.spill_result_bytes=1073741824",
                          f"--ExecutionServer.spill_dir={tmp_path / 'spill'}")
    client = server.client
    exec_id = client.execute("import numpy as np\nbig = np.ones(1 << 28)\nbig[-1] = 5.0\nbig", timeout=300)
    assert client.wait(exec_id, timeout=300)["status"] == "complete"
    finished(client, "del big")
    me = psutil.Process()
    before = me.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], me.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        results = client.get_results(exec_id, into=tmp_path / "out", release=True)
    finally:
        done.set()
        sampler.join(5)
    grew = peak[0] - before
    assert grew <= 64 * MIB, f"client RSS grew by {grew / MIB:.1f} MiB"
    arr = results["_"]
    assert isinstance(arr, np.memmap) and arr.nbytes == 2 << 30 and arr[0] == 1.0 and arr[-1] == 5.0
    assert buffer_files(tmp_path / "spill") == []  # released
    del results, arr

