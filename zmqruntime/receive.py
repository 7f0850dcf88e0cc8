"""Client side of large results and pushes: into a directory, or through shared memory.

``get_results(id, into=PATH)`` (:class:`DirectoryReceiver`): the result is
fetched in parts (``parts.py``) and written to files as they arrive, so the
client holds one part (8 MiB) at a time whatever the size. Trust, in order:
every part reply is signed (the HMAC covers its bytes and which slice of
which buffer it is); each buffer's digest, rebuilt from the parts' leaf
hashes as they are written, must equal the digest in the signed manifest;
only then is the pickle stream unpickled, on memory-mapped files. What is
left in ``PATH``:

* ``<name>.npy`` for each result that is a whole numpy array (a standard
  ``.npy`` file, ``numpy.load(..., mmap_mode="r")`` reads it later), or
  ``buffer-<i>.raw`` for another large buffer (its bytes from offset 4096);
* ``values.pickle``: the other results (a small pickle); ``index.json``
  says which file holds what. :func:`load_directory` reopens it all.

The returned arrays are ``numpy.memmap`` (copy-on-write: changing them
changes neither the files nor the server's result).

Same host (:func:`fetch_shm`): the ``results`` request asks for ``shm``; the
reply names the files that hold the large buffers, which are checked
(``shm.map_checked``: owner, mode, size, no symlink) and mapped. A client
proves it is on the server's host simply by opening the file the signed
reply names: on another host it does not exist, and the client asks again
over the socket. Used automatically over IPC and loopback TCP.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from . import serialize, shm
from .protocol import DIGEST_CHUNK, HMAC_SHA256, IncrementalDigest
from .transport import ConnectionInfo

#: Bytes asked for per ``part`` request (two digest leaves).
PART_BYTES = 2 * DIGEST_CHUNK
#: Buffers at least this large are written to their own file; smaller ones stay in memory.
FILE_MIN_BYTES = 1 << 20
#: Room left before a buffer's data for its ``.npy`` header (a multiple of 64, as numpy aligns).
HEADER_BYTES = 4096
#: Pushed buffers at least this large go through shared memory on one host.
PUSH_SHM_BYTES = 1 << 20


class ReceiveError(Exception):
    """A streamed result did not arrive whole and authentic (the partial files are deleted)."""


def same_host(info: ConnectionInfo) -> bool:
    """Whether the server is reached over IPC or loopback: worth trying shared memory."""
    if info.transport == "ipc":
        return True
    return info.ip in ("127.0.0.1", "::1", "localhost") or info.ip.startswith("127.")


def check_into(into: Any) -> Path:
    """The target directory: absent or empty; TypeError / ValueError otherwise."""
    if isinstance(into, bytes) or not isinstance(into, (str, os.PathLike)):
        raise TypeError(f"into must be a directory path (str or os.PathLike), got {type(into).__name__}")
    path = Path(into)
    if str(into) == "":
        raise ValueError("into must not be empty")
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"into={str(path)!r} exists and is not a directory")
        if any(path.iterdir()):
            raise ValueError(f"into={str(path)!r} is not empty: results are written to a new or empty directory")
    return path


class _Buffer:
    """One buffer being received: a file (large) or memory, plus its leaf hashes."""

    def __init__(self, index: int, nbytes: int, digest: bytes, directory: Path, scheme: str = HMAC_SHA256):
        self.index, self.nbytes, self.digest = index, nbytes, digest
        self.hasher = IncrementalDigest(scheme)
        self.received = 0
        self.path: Optional[Path] = None
        self.memory: Optional[bytearray] = None
        self.fd = -1
        if index > 0 and nbytes >= FILE_MIN_BYTES:
            self.path = directory / f"buffer-{index}.raw"
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            os.ftruncate(self.fd, HEADER_BYTES + nbytes)
        else:
            self.memory = bytearray(nbytes)

    def write(self, offset: int, data: memoryview) -> None:
        if offset != self.received:
            raise ReceiveError(f"buffer {self.index}: part at {offset}, expected {self.received}")
        self.hasher.update(data)
        if self.fd >= 0:
            done = 0
            while done < len(data):
                done += os.pwrite(self.fd, data[done:], HEADER_BYTES + offset + done)
        else:
            assert self.memory is not None
            self.memory[offset:offset + len(data)] = data
        self.received += len(data)

    def verify(self) -> None:
        if self.received != self.nbytes:
            raise ReceiveError(f"buffer {self.index}: {self.received} of {self.nbytes} bytes arrived")
        if self.hasher.digest() != self.digest:
            raise ReceiveError(f"buffer {self.index}: digest mismatch, the data is not the announced result")
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class DirectoryReceiver:
    """The request sequence of ``get_results(into=...)``; the client drives the I/O.

    ``manifest_request()`` → ``start(reply)`` → for each ``part_requests()``
    item, ``accept(request, reply)`` → ``finish()``; ``abort()`` on any error.
    """

    def __init__(self, execution_id: str, into: Any, part_bytes: int = PART_BYTES):
        self.execution_id = execution_id
        self.directory = check_into(into)
        self.part_bytes = part_bytes
        self.buffers: list[_Buffer] = []
        self.names: list[str] = []
        self._created_dir = False

    def manifest_request(self, release: bool = False) -> dict[str, Any]:
        content: dict[str, Any] = {"execution_id": self.execution_id, "manifest": True}
        if release:
            content["release"] = True
        return content

    def start(self, content: Mapping[str, Any], scheme: str = HMAC_SHA256) -> None:
        """The manifest reply's content; ``scheme``: the one it was signed with (its digests are under it)."""
        listed = content.get("buffers")
        if not isinstance(listed, list):
            raise ReceiveError("the manifest reply has no 'buffers' list (a server without streamed results?)")
        if not self.directory.exists():
            self.directory.mkdir(parents=True, mode=0o700)
            self._created_dir = True
        self.names = list(content.get("names") or [])
        for i, entry in enumerate(listed):
            self.buffers.append(_Buffer(i, int(entry["nbytes"]), bytes.fromhex(entry["digest"]), self.directory,
                                        scheme))

    def part_requests(self) -> Iterator[dict[str, Any]]:
        for buf in self.buffers:
            for offset in range(0, buf.nbytes, self.part_bytes):
                yield {"execution_id": self.execution_id, "part": [buf.index, offset, self.part_bytes]}

    def accept(self, request: Mapping[str, Any], reply: Any) -> None:
        """A verified ``part`` reply (a Message): check it is the slice asked for, write it."""
        index, offset, _ = request["part"]
        got = reply.content.get("part")
        buf = self.buffers[index]
        data = reply.buffers[0] if len(reply.buffers) == 1 else None
        view = memoryview(getattr(data, "buffer", data)).cast("B") if data is not None else None
        expected = min(self.part_bytes, buf.nbytes - offset)
        if got != [index, offset, expected] or view is None or len(view) != expected:
            raise ReceiveError(f"unexpected part reply {got!r} for {[index, offset, expected]}")
        buf.write(offset, view)

    def finish(self) -> dict[str, Any]:
        """Verify every buffer, then unpickle on the mapped files, write headers and the index."""
        import numpy as np

        for buf in self.buffers:
            buf.verify()
        if not self.buffers:
            return {}
        stream = self.buffers[0].memory
        maps: dict[int, Any] = {}
        oob: list[Any] = []
        for buf in self.buffers[1:]:
            if buf.path is not None:
                maps[buf.index] = np.memmap(buf.path, dtype=np.uint8, mode="c", offset=HEADER_BYTES,
                                            shape=(buf.nbytes,))
                oob.append(maps[buf.index])
            else:
                oob.append(buf.memory)
        results = pickle.loads(stream, buffers=oob)  # type: ignore[arg-type]
        return self._write_files(results, maps)

    def _write_files(self, results: dict[str, Any], maps: dict[int, Any]) -> dict[str, Any]:
        import numpy as np

        index: dict[str, Any] = {"arrays": {}, "raw": {}, "values": "values.pickle"}
        others = {}
        owner = {id(m): i for i, m in maps.items()}
        loaded: dict[int, Any] = {}  # buffer index -> the array reopened from its .npy file
        for name, value in results.items():
            i = _backing_map(value, owner) if isinstance(value, np.ndarray) else None
            if i is not None and i in loaded and value.shape == loaded[i].shape and value.dtype == loaded[i].dtype:
                results[name] = loaded[i]  # the same array under two names (``_`` and a variable)
                index["arrays"][name] = self.buffers[i].path.name  # type: ignore[union-attr]
                continue
            if (i is None or i in loaded or value.nbytes != maps[i].nbytes
                    or not (value.flags.c_contiguous or value.flags.f_contiguous)):
                others[name] = value
                continue
            _write_npy_header(self.buffers[i].path, value)  # type: ignore[arg-type]
            target = self.directory / f"{name}.npy"
            os.rename(self.buffers[i].path, target)  # type: ignore[arg-type]
            self.buffers[i].path = target
            index["arrays"][name] = target.name
            results[name] = loaded[i] = np.load(target, mmap_mode="c")
        for i in set(maps) - set(loaded):
            index["raw"][str(i)] = self.buffers[i].path.name  # type: ignore[union-attr]
        with open(self.directory / "values.pickle", "wb") as fh:
            pickle.dump(others, fh, protocol=5)
        (self.directory / "index.json").write_text(json.dumps(index, indent=1))
        return results

    def abort(self) -> None:
        """Delete what was written: a partial result is never left looking whole."""
        for buf in self.buffers:
            buf.close()
            if buf.path is not None:
                shm.remove(buf.path)
        for name in ("values.pickle", "index.json"):
            shm.remove(self.directory / name)
        if self._created_dir:
            try:
                self.directory.rmdir()
            except OSError:
                pass


def _backing_map(value: Any, owner: dict[int, int]) -> Optional[int]:
    base = value
    while base is not None:
        if id(base) in owner:
            return owner[id(base)]
        base = getattr(base, "base", None)
    return None


def _write_npy_header(path: Path, arr: Any) -> None:
    """A version 1.0 ``.npy`` header padded to exactly HEADER_BYTES, in the room left for it."""
    import numpy as np

    fortran = bool(arr.flags.f_contiguous and not arr.flags.c_contiguous)
    header = repr({"descr": np.lib.format.dtype_to_descr(arr.dtype), "fortran_order": fortran,
                   "shape": tuple(arr.shape)})
    body_len = HEADER_BYTES - 10
    text = header.ljust(body_len - 1) + "\n"
    if len(text) != body_len:
        raise ReceiveError(f"array header too long for {path.name}")
    with open(path, "r+b") as fh:
        fh.write(b"\x93NUMPY\x01\x00" + body_len.to_bytes(2, "little") + text.encode("latin1"))


def load_directory(path: Any) -> dict[str, Any]:
    """Reopen a directory written by ``get_results(into=...)``: arrays memory-mapped.

    It reads a pickle from disk: only for directories you wrote yourself.
    """
    import numpy as np

    directory = Path(path)
    index = json.loads((directory / "index.json").read_text())
    with open(directory / index["values"], "rb") as fh:
        results = pickle.load(fh)
    for name, filename in index["arrays"].items():
        results[name] = np.load(directory / filename, mmap_mode="c")
    return results


def fetch_into(request: Callable[[dict[str, Any]], Any], execution_id: str, into: Any, release: bool) -> dict[str, Any]:
    """Blocking driver: ``request(content)`` returns the verified reply Message (errors raised)."""
    rx = DirectoryReceiver(execution_id, into)
    try:
        manifest = request(rx.manifest_request())
        rx.start(manifest.content, manifest.scheme)
        for req in rx.part_requests():
            rx.accept(req, request(req))
        results = rx.finish()
    except BaseException:
        rx.abort()
        raise
    if release:
        request(rx.manifest_request(release=True))
    return results


async def fetch_into_async(request: Callable[[dict[str, Any]], Any], execution_id: str, into: Any,
                           release: bool) -> dict[str, Any]:
    """The asyncio driver: ``await request(content)``."""
    rx = DirectoryReceiver(execution_id, into)
    try:
        manifest = await request(rx.manifest_request())
        rx.start(manifest.content, manifest.scheme)
        for req in rx.part_requests():
            rx.accept(req, await request(req))
        results = rx.finish()
    except BaseException:
        rx.abort()
        raise
    if release:
        await request(rx.manifest_request(release=True))
    return results


# -- shared memory -------------------------------------------------------------
def shm_request(execution_id: str) -> dict[str, Any]:
    return {"execution_id": execution_id, "shm": True}


def decode_shm_reply(msg: Any) -> Optional[dict[str, Any]]:
    """Results of a verified ``shm`` reply, the named files mapped after their checks.

    None when a named file does not exist here (another host): ask over the
    socket. ``shm.SegmentRefused`` when one fails the owner/mode/size checks.
    """
    named = msg.content.get("shm")
    if not isinstance(named, list):
        raise ReceiveError("the reply to a shm results request has no 'shm' list")
    if not msg.buffers:
        return {}
    frames = [getattr(f, "buffer", f) for f in msg.buffers]
    for entry in named:
        index, nbytes = entry.get("index"), entry.get("nbytes")
        if not isinstance(index, int) or not 0 <= index < len(frames) or not isinstance(nbytes, int):
            raise ReceiveError(f"bad shm entry {entry!r}")
        try:
            frames[index] = shm.map_checked(shm.check_name(entry.get("path")), nbytes)
        except FileNotFoundError:
            return None
    return serialize.loads(frames)


def release_request(execution_id: str) -> dict[str, Any]:
    return {"execution_id": execution_id, "manifest": True, "release": True}


# -- pushes --------------------------------------------------------------------
def prepare_push(push: Mapping[str, Any], use_shm: bool) -> tuple[list[Any], list[dict[str, Any]]]:
    """Buffers of a push and, on one host, the shared-memory files holding the large ones.

    A ``numpy.memmap`` value is pickled as a plain view of its mapping (out
    of band, never copied into the pickle stream), and its file is copied
    into shared memory by the kernel (``sendfile``), never read into this process.
    """
    values, sources = _unwrap_memmaps(dict(push))
    buffers = serialize.dumps(values)
    if not use_shm:
        return buffers, []
    files: list[dict[str, Any]] = []
    directory = shm.default_dir()
    try:
        for i, buf in enumerate(buffers[1:], 1):
            view = memoryview(buf).cast("B")
            if len(view) < PUSH_SHM_BYTES:
                continue
            address = _address(view)
            source = sources.get((address, len(view))) if sources else None
            linked = shm.link_shared(address, len(view), directory)  # a shared_array: no copy at all
            if linked is not None:
                path = linked
            elif source is not None:
                with open(source[0], "rb") as fh:
                    path = shm.create(directory, view, source=(fh.fileno(), source[1]))
            else:
                path = shm.create(directory, view)
            files.append({"index": i, "path": str(path), "nbytes": len(view)})
            buffers[i] = b""
    except OSError:  # no shared memory here after all: send everything
        discard_push(files)
        return serialize.dumps(values), []
    return buffers, files


def discard_push(files: list[dict[str, Any]]) -> None:
    """Delete push files the server did not take (it renames those it takes)."""
    for f in files:
        shm.remove(Path(f["path"]))


def _unwrap_memmaps(values: dict[str, Any]) -> tuple[dict[str, Any], dict[tuple[int, int], tuple[str, int]]]:
    """Plain-array views of ``numpy.memmap`` values, and where each one's bytes lie in its file."""
    np = sys.modules.get("numpy")
    sources: dict[tuple[int, int], tuple[str, int]] = {}
    if np is None:
        return values, sources
    import mmap

    for name, value in values.items():
        if not isinstance(value, np.memmap):
            continue
        plain = value.view(np.ndarray)
        values[name] = plain
        mapping = getattr(value, "_mmap", None)
        if value.filename and mapping is not None and value.flags.c_contiguous:
            base = int(np.frombuffer(mapping, dtype=np.uint8).ctypes.data)
            start = value.offset - value.offset % mmap.ALLOCATIONGRANULARITY  # where the mapping begins
            sources[(plain.ctypes.data, plain.nbytes)] = (value.filename, start + plain.ctypes.data - base)
    return values, sources


def _address(view: memoryview) -> int:
    np = sys.modules.get("numpy")
    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data) if np is not None else -1
