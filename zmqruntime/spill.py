"""Large buffers kept in files instead of process memory (results and pushed values).

Where a large result buffer lives, decided once, by the worker that made it:

* a result whose total size is at least ``spill_result_bytes`` goes to
  **spill** files on disk (``spill_dir``, the runtime directory by default):
  the server keeps it until it is fetched even when it is larger than the
  server's free memory, and sends it from the file;
* otherwise every buffer of at least ``shm_result_bytes`` goes to a
  **shared-memory** file (``shm_dir``, ``/dev/shm`` by default): a client on
  the same host maps it (no copy on the wire), a remote one receives it over
  the socket from the server's read-only mapping;
* the rest travels as frames, as before.

The worker writes the file (``shm.create``: private, ``O_EXCL``,
``O_NOFOLLOW``) and reports ``{"index", "path", "nbytes", "kind"}``; the
server checks and adopts it (``shm.adopt``: renamed to its own pid, mapped
read-only) and deletes it when the result is released, dropped by retention
or forgotten, and when it stops. Files of dead processes are swept at start
and every minute (``shm.clean_stale``).

Pushed values (``execute`` with ``shm``): the client writes large push
buffers into shared-memory files; the server adopts them and passes their
names to the worker in a first frame starting with :data:`FILES_MARK`
(a pickle stream starts with ``\\x80``, so the two never mix), and deletes
them once the execution is final.

Workers learn the settings from ``ZMQRUNTIME_BULK`` (JSON), set by the
server before it starts them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from . import serialize, shm
from .protocol import BLAKE3, available_schemes, buffer_digest

log = logging.getLogger("zmqruntime.spill")

ENV = "ZMQRUNTIME_BULK"
#: Spill files are made only for buffers at least this large.
MIN_SPILL_BUFFER = 1 << 20
FILES_MARK = b"ZMQR-FILES"


@dataclass
class BufferFile:
    """One buffer of a result or push held in a file (server side)."""

    index: int
    path: Path
    nbytes: int
    kind: str  # "shm" or "spill"


@dataclass
class Settings:
    shm_dir: Path
    shm_bytes: int  # 0: no shared-memory results
    spill_dir: Path
    spill_bytes: int  # 0: no spill

    def to_env(self) -> str:
        return json.dumps({"shm_dir": str(self.shm_dir), "shm_bytes": self.shm_bytes,
                           "spill_dir": str(self.spill_dir), "spill_bytes": self.spill_bytes})

    @classmethod
    def from_env(cls) -> Optional[Settings]:
        raw = os.environ.get(ENV)
        if not raw:
            return None
        d = json.loads(raw)
        return cls(Path(d["shm_dir"]), int(d["shm_bytes"]), Path(d["spill_dir"]), int(d["spill_bytes"]))


# -- worker side -------------------------------------------------------------
def place_result_buffers(frames: list[Any], settings: Optional[Settings] = None
                         ) -> tuple[list[Any], list[str], list[dict[str, Any]]]:
    """Move large result buffers into files: (frames, hex digests, files).

    A moved buffer's frame becomes empty and its HMAC-SHA256 digest ``""``
    (made by the server only if a peer of that scheme asks: a 1 GiB spill
    used to cost the execution a second of SHA-256 here); its BLAKE3 digest
    is hashed beside the file's writing and reported in the file entry
    (``"blake3"``), so a client fetching it over the socket never waits.
    """
    settings = settings if settings is not None else Settings.from_env()
    sizes = [len(memoryview(f).cast("B")) for f in frames]
    spill = bool(settings and settings.spill_bytes and sum(sizes) >= settings.spill_bytes)
    out: list[Any] = []
    digests: list[str] = []
    files: list[dict[str, Any]] = []
    for i, (frame, n) in enumerate(zip(frames, sizes)):
        kind = None
        if settings is not None:
            if spill and n >= MIN_SPILL_BUFFER:
                kind = "spill"
            elif settings.shm_bytes and n >= settings.shm_bytes:
                kind = "shm"
        path = None
        fast: Optional[Future] = None
        if kind is not None:
            fast = _hash_beside(frame)
            try:
                path = shm.create(settings.spill_dir if kind == "spill" else settings.shm_dir, frame)  # type: ignore[union-attr]
            except OSError as exc:  # full tmpfs or disk: the frame still works
                print(f"zmqruntime: could not write a {kind} file ({exc}); sending the buffer", file=sys.__stderr__)
        if path is None:
            out.append(frame)
            digests.append(buffer_digest(frame).hex())
            continue
        out.append(b"")
        digests.append("")
        entry = {"index": i, "path": str(path), "nbytes": n, "kind": kind}
        if fast is not None:
            entry[BLAKE3] = fast.result().hex()
        files.append(entry)
    return out, digests, files


_hasher: Optional[ThreadPoolExecutor] = None


def _hash_beside(frame: Any) -> Optional[Future]:
    """The buffer's BLAKE3 digest, hashed on another core while this thread writes its file.

    The copy into a new file is the slower of the two (the kernel allocates
    every page), so the digest a client fetching over the socket needs is
    ready when the file is, at no cost to the execution's latency on a
    machine with a free core. None without the blake3 package.
    """
    global _hasher
    if BLAKE3 not in available_schemes():
        return None
    if _hasher is None:
        _hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zmqruntime-result-digest")
    return _hasher.submit(buffer_digest, frame, BLAKE3, True)


def load_pushed(buffers: list[Any]) -> Any:
    """Unpickle pushed values, mapping the files the server named (checked first)."""
    first = buffers[0]
    head = first.bytes if hasattr(first, "bytes") else bytes(first)
    if not head.startswith(FILES_MARK):
        return serialize.loads(buffers)
    frames = list(buffers[1:])
    for f in json.loads(head[len(FILES_MARK):]):
        frames[f["index"]] = shm.map_checked(Path(f["path"]), f["nbytes"])
    return serialize.loads(frames)


# -- server side -------------------------------------------------------------
class FileStore:
    """The server's view: adopt, serve and delete buffer files; sweep stale ones."""

    def __init__(self, settings: Settings):
        self.settings = settings

    @property
    def directories(self) -> list[Path]:
        return [self.settings.shm_dir, self.settings.spill_dir, shm.default_dir()]

    def start(self) -> None:
        for d in (self.settings.shm_dir, self.settings.spill_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.environ[ENV] = self.settings.to_env()  # inherited by the workers the pool starts
        self.sweep()

    def sweep(self) -> None:
        removed = shm.clean_stale(self.directories)
        if removed:
            log.info("deleted %d buffer file(s) left by processes that are gone", removed)

    def _checked_path(self, entry: Any, nbuffers: int, what: str) -> tuple[int, Path, int]:
        if not isinstance(entry, dict):
            raise ValueError(f"{what} entries must be objects, got {type(entry).__name__}")
        index, path, nbytes = entry.get("index"), entry.get("path"), entry.get("nbytes")
        for name, value in (("index", index), ("nbytes", nbytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{what} '{name}' must be a non-negative integer, got {value!r}")
        assert isinstance(index, int) and isinstance(nbytes, int)
        if index >= nbuffers:
            raise ValueError(f"{what} index {index} is out of range ({nbuffers} buffers)")
        p = shm.check_name(path)
        if p.parent not in self.directories:
            raise ValueError(f"{what} file {path!r} is not in a buffer directory of this server")
        return index, p, nbytes

    def adopt_results(self, files: list[dict[str, Any]], frames: list[Any]) -> list[BufferFile]:
        """Take over the worker's result files; their mappings replace the empty frames.

        Raises OSError / ValueError (files already adopted are deleted again).
        """
        adopted: list[BufferFile] = []
        try:
            for entry in files:
                index, path, nbytes = self._checked_path(entry, len(frames), "result file")
                mine, mapped = shm.adopt(path, nbytes)
                adopted.append(BufferFile(index, mine, nbytes, "spill" if entry.get("kind") == "spill" else "shm"))
                frames[index] = memoryview(mapped) if nbytes else b""
        except BaseException:
            self.discard(files)
            delete(adopted)
            raise
        return adopted

    def discard(self, files: list[Any]) -> None:
        """Delete result files a worker reported for an execution nobody will fetch."""
        for entry in files:
            try:
                _, path, _ = self._checked_path(entry, 1 << 30, "result file")
            except ValueError:
                continue
            shm.remove(path)

    def adopt_push(self, field: Any, buffers: list[Any]) -> tuple[list[Any], list[BufferFile]]:
        """The ``shm`` field of an execute request: adopt the client's files.

        Returns the frames for the worker (names first) and the files to
        delete once the execution is final. ValueError: a bad field;
        FileNotFoundError: no such file here (another host); shm.SegmentRefused.
        """
        if field is None:
            return buffers, []
        if not isinstance(field, list) or not field:
            raise ValueError(f"'shm' must be a non-empty list of {{index, path, nbytes}} objects, got {field!r}"[:300])
        adopted: list[BufferFile] = []
        seen: set[int] = set()
        try:
            for entry in field:
                index, path, nbytes = self._checked_path(entry, len(buffers), "shm")
                if index == 0 or index in seen:
                    raise ValueError(f"shm index {index} is the pickle stream or named twice")
                frame = buffers[index]
                if len(frame.buffer if hasattr(frame, "buffer") else frame):
                    raise ValueError(f"buffer {index} is named in 'shm' but is not empty")
                seen.add(index)
                mine, mapped = shm.adopt(path, nbytes)
                if hasattr(mapped, "close"):
                    mapped.close()
                adopted.append(BufferFile(index, mine, nbytes, "shm"))
        except BaseException:
            delete(adopted)
            raise
        return hand_over(adopted, buffers), adopted


def hand_over(files: list[BufferFile], buffers: list[Any]) -> list[Any]:
    """The frames a worker gets for a push whose large buffers are in ``files``: their names first."""
    names = [{"index": f.index, "path": str(f.path), "nbytes": f.nbytes} for f in files]
    return [FILES_MARK + json.dumps(names).encode(), *buffers]


def delete(files: list[BufferFile]) -> None:
    for f in files:
        shm.remove(f.path)


def disk_bytes(files: list[BufferFile]) -> int:
    return sum(f.nbytes for f in files if f.kind == "spill")
