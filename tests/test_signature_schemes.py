"""Signature schemes (hmac-sha256, blake3) and pushes in upload parts, against real servers.

Each scheme carries results and pushes both ways; a tampered buffer is
refused before anything is unpickled, under each; a marker naming an unknown
scheme gets a clear error reply; 1 GiB goes both ways without a second copy.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest

from zmqruntime import AsyncExecutionClient, RemoteError
from zmqruntime.execution.core import UPLOAD_FROM
from zmqruntime.protocol import (
    BLAKE3,
    HMAC_SHA256,
    SCHEME_MARKERS,
    Session,
    SignatureError,
    compute_signature,
    make_header,
)
from zmqruntime.transport import ConnectionInfo, choose_scheme

pytestmark = pytest.mark.timeout(120)

MIB = 1 << 20
SCHEMES = [HMAC_SHA256, BLAKE3]


@pytest.fixture(autouse=True)
def shm_dir(private_shm_dir: Path) -> Path:
    """Every test here gets a private /dev/shm stand-in, set before any server starts."""
    return private_shm_dir


@pytest.fixture
def raw(raw_dealer):
    """A raw DEALER on the server's control port."""
    return raw_dealer


class Evil:
    """Unpickling it makes a directory: proof that something was unpickled."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


def recv(sock, session: Session, timeout_ms: int = 10000):
    assert sock.poll(timeout_ms), "no reply"
    return session.deserialize(sock.recv_multipart())


def finished(client, code: str, **kwargs) -> str:
    exec_id = client.execute(code, **kwargs)
    assert client.wait(exec_id, timeout=60)["status"] == "complete"
    return exec_id


@pytest.mark.parametrize("scheme", SCHEMES)
def test_results_and_pushes_under_each_scheme(server, scheme, monkeypatch, tmp_path):
    monkeypatch.setenv("ZMQRUNTIME_SIGNATURE_SCHEME", scheme)
    client = server.new_client(timeout=30)
    try:
        assert client.session.scheme == scheme and scheme in client.ping()["signature_schemes"]
        client.push_shm = False
        big = np.arange((UPLOAD_FROM + 3 * MIB) // 8, dtype=np.float64)  # sent as upload parts
        exec_id = finished(client, "(float(x.sum()), float(y.sum()), x.nbytes)\n",
                           push={"x": big, "y": np.ones(1000)})
        assert client.get_results(exec_id)["_"] == (float(big.sum()), 1000.0, big.nbytes)
        exec_id = finished(client, "import numpy as np\narr = np.arange(5 * 1024 * 1024 // 8, dtype=np.float64)\narr",
                           results=["arr"])
        over_socket = client.get_results(exec_id, shm=False)
        assert np.array_equal(over_socket["_"], over_socket["arr"]) and over_socket["_"][-1] == 5 * MIB // 8 - 1
        into = client.get_results(exec_id, into=tmp_path / "out")  # manifest digests under the scheme, in parts
        assert np.array_equal(into["arr"], over_socket["arr"])
        assert client.get_results(exec_id)["arr"][-1] == 5 * MIB // 8 - 1  # same host: mapped
        # a large result over the socket: received with about its own size, not two copies
        exec_id = finished(client, f"import numpy as np\nnp.arange({(37 * MIB) // 8}.0)")
        me = psutil.Process()
        before = me.memory_info().rss
        value = client.get_results(exec_id, shm=False, release=True)["_"]
        assert value.nbytes == 37 * MIB and value[-1] == value.size - 1 and value[12345] == 12345
        assert me.memory_info().rss - before <= 1.5 * value.nbytes
    finally:
        client.close()


def test_async_client_pushes_in_upload_parts(server, shm_dir):
    big = np.arange((UPLOAD_FROM + MIB) // 8, dtype=np.float64)

    async def main():
        client = AsyncExecutionClient(server.client.info)
        client.push_shm = False
        try:
            exec_id = await client.execute("(float(x.sum()), x.nbytes)", push={"x": big})
            await client.wait(exec_id, timeout=60)
            back = await client.execute("x * 2")
            await client.wait(back, timeout=60)
            doubled = (await client.get_results(back, shm=False, release=True))["_"]  # over the socket
            assert doubled.nbytes == big.nbytes and doubled[-1] == 2 * big[-1]
            return (await client.get_results(exec_id))["_"], client.session.scheme
        finally:
            client.close()

    (total, nbytes), scheme = asyncio.run(main())
    assert total == float(big.sum()) and nbytes == big.nbytes and scheme == BLAKE3
    assert list(shm_dir.glob("zmqr-*.buf")) == []  # the staged upload went with the execution


OLD_SERVER = """
from zmqruntime import ExecutionServer
from zmqruntime.server import RequestError


class WithoutUpload(ExecutionServer):
    \"\"\"A server from before 'upload': the request type is unknown to it.\"\"\"

    def handle_upload(self, msg):
        raise RequestError("unknown_type", "unknown message type 'upload'")
"""


def test_a_server_without_upload_gets_the_push_in_one_message(start_server, tmp_path):
    (tmp_path / "old_server.py").write_text(OLD_SERVER)
    server = start_server("--server-class", "old_server:WithoutUpload", extra_path=str(tmp_path))
    client = server.new_client(timeout=30)
    try:
        client.push_shm = False
        big = np.arange((UPLOAD_FROM + MIB) // 8, dtype=np.float64)
        exec_id = finished(client, "float(x.sum())", push={"x": big})
        assert client.get_results(exec_id)["_"] == float(big.sum())
    finally:
        client.close()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_tampered_result_is_refused_before_unpickling(server, raw, scheme, tmp_path):
    """A real signed reply, one buffer byte changed: the signature check fails before any unpickling."""
    session = Session(server.client.info.key, scheme=scheme)
    exec_id = finished(server.client, "import numpy as np\nnp.ones(2 * 1024 * 1024)")
    frames, msg_id = session.serialize_request("results", {"execution_id": exec_id})
    raw.send_multipart(frames)
    assert raw.poll(10000)
    reply = raw.recv_multipart()
    assert reply[0][:6] == SCHEME_MARKERS[scheme]  # answered in the request's scheme
    assert session.deserialize(list(reply)).parent_id == msg_id
    tampered = list(reply)
    data = bytearray(tampered[4])
    data[len(data) // 2] ^= 1
    tampered[4] = bytes(data)
    with pytest.raises(SignatureError):
        session.deserialize(tampered)
    marker = tmp_path / "unpickled"
    evil = list(reply)
    evil[3] = pickle.dumps(Evil(marker), protocol=5)  # a forged pickle stream in place of the real one
    with pytest.raises(SignatureError):
        session.deserialize(evil)
    assert not marker.exists()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_tampered_push_is_dropped_and_never_unpickled(server, raw, scheme, tmp_path):
    """Pushed bytes changed after signing (in one message, and in an upload part): never unpickled."""
    session = Session(server.client.info.key, scheme=scheme)
    marker = tmp_path / "unpickled"
    stream = pickle.dumps({"x": Evil(marker)}, protocol=5)
    content = {"task": {"kind": "python", "code": "1"}}
    frames = session.serialize("execute", content, buffers=[stream])
    frames[-1] = stream.replace(b"unpickled", b"unpickleD")
    raw.send_multipart(frames)
    assert not raw.poll(500), "a wrongly signed execute must not be answered"
    part = {"upload": "ab" * 16, "nbytes": 2 * MIB, "part_bytes": MIB, "offset": 0}
    frames = session.serialize("upload", part, buffers=[b"\x00" * MIB])
    frames[-1] = b"\x01" * MIB
    raw.send_multipart(frames)
    assert not raw.poll(500), "a wrongly signed upload part must not be answered"
    frames = session.serialize("execute", {**content, "uploads": [{"index": 1, "upload": "ab" * 16}]},
                               buffers=[stream, b""])
    raw.send_multipart(frames)
    reply = recv(raw, session)
    assert reply.content["error"]["code"] == "unknown_upload"  # the tampered part was never accepted
    assert server.client.ping()["pid"] == server.pid
    assert not marker.exists()


def test_an_unknown_scheme_gets_a_clear_error(server, raw):
    session = Session(server.client.info.key)
    header = make_header("ping", session.session_id)
    header_b, content_b = json.dumps(header).encode(), b"{}"
    sig = compute_signature(session.key, b"", header_b, content_b, [])
    raw.send_multipart([b"<ZMQX>" + sig, header_b, content_b])
    reply = recv(raw, session)
    assert reply.parent_id == header["msg_id"] and reply.msg_type == "error_reply"
    error = reply.content["error"]
    assert error["code"] == "unknown_signature_scheme"
    assert "<ZMQX>" in error["message"] and "hmac-sha256" in error["message"] and "blake3" in error["message"]
    assert server.client.ping()["pid"] == server.pid
    # the other direction: a connection file offering only a scheme this client does not know
    info = ConnectionInfo.from_dict({**server.client.info.to_dict(), "signature_scheme": "rot13",
                                     "signature_schemes": ["rot13"]})
    with pytest.raises(ValueError, match="rot13.*none of which this client knows"):
        choose_scheme(info)
    with pytest.raises(ValueError, match="'md5' asked for"):
        choose_scheme(server.client.info, "md5")
    old = ConnectionInfo.from_dict({k: v for k, v in server.client.info.to_dict().items()
                                    if k != "signature_schemes"})
    assert choose_scheme(old) == HMAC_SHA256  # a file written before schemes were listed


def test_upload_bad_input(server):
    call = server.client._client.call
    good = {"upload": "cd" * 16, "nbytes": 3 * MIB, "part_bytes": 2 * MIB, "offset": 0}
    bad = [
        ({**good, "upload": "xyz"}, [b"\x00" * (2 * MIB)]),
        ({**good, "part_bytes": 3}, [b"\x00" * (2 * MIB)]),
        ({**good, "offset": MIB}, [b"\x00" * (2 * MIB)]),
        ({**good, "nbytes": -1}, [b"\x00" * (2 * MIB)]),
        (good, [b"\x00" * 10]),
        (good, []),
    ]
    for content, buffers in bad:
        with pytest.raises(RemoteError) as info:
            call("upload", content, buffers=buffers)
        assert info.value.code == "bad_request", content
    assert call("upload", good, buffers=[b"\x00" * (2 * MIB)])["received"] == 1
    with pytest.raises(RemoteError) as info:
        call("upload", good, buffers=[b"\x00" * (2 * MIB)])
    assert info.value.code == "bad_request" and "twice" in info.value.message
    task = {"task": {"kind": "python", "code": "x"}}
    stream = pickle.dumps({"x": None}, protocol=5)
    for field, code in [("x", "bad_request"), ([{"index": 0, "upload": "cd" * 16}], "bad_request"),
                        ([{"index": 1, "upload": "ef" * 16}], "unknown_upload"),
                        ([{"index": 1, "upload": "cd" * 16}], "incomplete_upload")]:
        with pytest.raises(RemoteError) as info:
            call("execute", {**task, "uploads": field}, buffers=[stream, b""])
        assert info.value.code == code, field
    with pytest.raises(RemoteError) as info:
        call("execute", {**task, "uploads": [{"index": 1, "upload": "cd" * 16}]}, buffers=[stream, b"x"])
    assert info.value.code == "bad_request" and "not empty" in info.value.message


def test_too_large_an_upload_is_refused(start_server):
    server = start_server("--ExecutionServer.max_upload_bytes=4194304")
    with pytest.raises(RemoteError) as info:
        server.client._client.call("upload", {"upload": "12" * 16, "nbytes": 8 * MIB, "part_bytes": MIB,
                                              "offset": 0}, buffers=[b"\x00" * MIB])
    assert info.value.code == "too_large" and "max_upload_bytes" in info.value.message


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """The largest RSS increase of one process while the block runs (sampled every 5 ms)."""

    def __init__(self, pid: int, anonymous: bool = False):
        self.proc = psutil.Process(pid)
        self.anonymous = anonymous
        self.before = self._read()
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> int:
        info = self.proc.memory_info()
        return info.rss - info.shared if self.anonymous else info.rss

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._read())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def grew(self) -> int:
        return self.peak - self.before


GIB = 1 << 30


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_one_gib_result_and_push_without_a_second_copy(start_server, shm_dir, tmp_path):
    """1 GiB both ways at the default limits: received with at most 1.1x the array, relayed with none."""
    if mem_available() < 8 * GIB:
        pytest.skip(f"needs 8 GiB available (client array, staged push, result, received copy); "
                    f"MemAvailable is {mem_available() / GIB:.1f} GiB")
    server = start_server(f"--ExecutionServer.spill_dir={tmp_path / 'spill'}")
    client = server.new_client(timeout=120)
    try:
        worker = client.ping()["workers"][0]["pid"]
        # push over the socket: upload parts, the server holds a few parts, the worker maps the staged file
        client.push_shm = False
        arr = np.ones(GIB // 8)
        arr[-1] = 3.0
        with PeakRSS(server.pid, anonymous=True) as relay:
            exec_id = finished(client, "float(x[-1]) + x.nbytes", push={"x": arr})
        assert client.get_results(exec_id)["_"] == 3.0 + GIB
        assert relay.grew <= 0.15 * GIB, f"the server relay grew by {relay.grew / MIB:.0f} MiB"
        del arr
        assert list(shm_dir.glob("zmqr-*.buf")) == []  # the staged push is gone with the execution
        # a 1 GiB result: spilled to disk (spill_result_bytes), fetched over the socket and mapped
        exec_id = finished(client, "import numpy as np\nnp.full(1 << 27, 2.0)", timeout=300)
        with PeakRSS(os.getpid()) as received:
            results = client.get_results(exec_id, shm=False)
            value = results["_"]
            assert value.nbytes == GIB and value[0] == 2.0 and value[-1] == 2.0
        assert received.grew <= 1.1 * GIB, f"the client grew by {received.grew / GIB:.2f}x the array"
        del results, value
        mapped = client.get_results(exec_id, release=True)["_"]  # same host: the spill file, mapped
        assert mapped.nbytes == GIB and mapped[-1] == 2.0
        del mapped
        assert list((tmp_path / "spill").glob("zmqr-*.buf")) == []
        assert psutil.pid_exists(worker)
    finally:
        client.close()
