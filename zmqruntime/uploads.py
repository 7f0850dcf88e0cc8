"""Pushed buffers sent in parts (``upload`` requests), server side: verified, written, handed over.

Why: a push travels client → server → worker. Sent as one ``execute``
message, the server can do nothing until the last byte arrived (ZeroMQ
delivers a message whole), then hashes it all, then sends it all again to
the worker: three passes one after the other, about half the bandwidth of
one raw transfer. Sent as ``upload`` parts (each an ordinary signed request
carrying one slice), the passes overlap: while part *k+1* is on the wire the
server verifies part *k* (its signature covers the slice's digest) and
writes it into a private shared-memory file, which the worker then maps
(as a same-host ``shm`` push, see ``spill.py``). The server holds one part
at a time, never the whole buffer, and nothing is unpickled anywhere before
every part was verified (the worker unpickles only once the ``execute``
naming the complete upload was accepted).

Lifecycle: the first part creates the file (``nbytes`` long); parts may
arrive in any order, each exactly once; an ``execute`` whose ``uploads``
field names the upload takes the file over (it is then deleted with the
execution's other pushed files). Uploads not taken within
:data:`IDLE_SECONDS` of their last part are deleted by the sweep, and so is
a crashed server's file (``shm.clean_stale``). docs/protocol.md §7.2.3 is
the normative text.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import shm
from .spill import BufferFile

#: An upload's parts are this size at most (and its ``part_bytes`` a multiple of 1 MiB).
MAX_PART_BYTES = 64 << 20
UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{32}$")
#: An upload nobody sent a part of for this long, and no execute took, is deleted.
IDLE_SECONDS = 300.0


class UploadError(ValueError):
    """A bad ``upload`` request or ``uploads`` field: ``code`` is the error reply's."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class Upload:
    path: Path
    fd: int
    nbytes: int
    part_bytes: int
    offsets: set[int] = field(default_factory=set)
    last_part: float = field(default_factory=time.monotonic)

    @property
    def parts(self) -> int:
        return max(1, -(-self.nbytes // self.part_bytes))

    @property
    def complete(self) -> bool:
        return len(self.offsets) == self.parts


def _int(content: dict[str, Any], name: str) -> int:
    value = content.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UploadError("bad_request", f"'{name}' must be a non-negative integer, got {value!r}"[:200])
    return value


class UploadStore:
    """The uploads in progress, bounded by ``max_bytes`` in total."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory = directory
        self.max_bytes = max_bytes
        self.uploads: dict[str, Upload] = {}

    @property
    def staged_bytes(self) -> int:
        return sum(u.nbytes for u in self.uploads.values())

    def accept_part(self, content: dict[str, Any], buffers: list[Any]) -> dict[str, Any]:
        """Write one verified part; the reply's content (``received`` parts of ``parts``)."""
        upload_id = content.get("upload")
        if not isinstance(upload_id, str) or not UPLOAD_ID_RE.match(upload_id):
            raise UploadError("bad_request", f"'upload' must be 32 lowercase hex digits, got {upload_id!r}"[:200])
        nbytes, part_bytes, offset = _int(content, "nbytes"), _int(content, "part_bytes"), _int(content, "offset")
        if not part_bytes or part_bytes % (1 << 20) or part_bytes > MAX_PART_BYTES:
            raise UploadError("bad_request", f"'part_bytes' must be a multiple of 1 MiB up to {MAX_PART_BYTES}, "
                                             f"got {part_bytes}")
        if len(buffers) != 1:
            raise UploadError("bad_request", f"an upload part carries exactly one buffer, got {len(buffers)}")
        data = memoryview(getattr(buffers[0], "buffer", buffers[0])).cast("B")
        expected = min(part_bytes, nbytes - offset) if offset < nbytes or offset == nbytes == 0 else -1
        if offset % part_bytes or expected < 0 or len(data) != expected:
            raise UploadError("bad_request", f"upload {upload_id}: a part at offset {offset} must start at a "
                                             f"multiple of {part_bytes} below {nbytes} and hold {max(expected, 0)} "
                                             f"bytes, got {len(data)}")
        upload = self.uploads.get(upload_id)
        if upload is None:  # only a well-formed part starts an upload
            upload = self._create(upload_id, nbytes, part_bytes)
        elif (nbytes, part_bytes) != (upload.nbytes, upload.part_bytes):
            raise UploadError("bad_request", f"upload {upload_id}: nbytes/part_bytes differ from its first part's")
        if offset in upload.offsets:
            raise UploadError("bad_request", f"upload {upload_id}: the part at offset {offset} was sent twice")
        done = 0
        while done < len(data):
            done += os.pwrite(upload.fd, data[done:], offset + done)
        upload.offsets.add(offset)
        upload.last_part = time.monotonic()
        return {"upload": upload_id, "received": len(upload.offsets), "parts": upload.parts}

    def _create(self, upload_id: str, nbytes: int, part_bytes: int) -> Upload:
        if self.staged_bytes + nbytes > self.max_bytes:
            raise UploadError("too_large", f"an upload of {nbytes} bytes would exceed max_upload_bytes="
                                           f"{self.max_bytes} (uploads in progress: {self.staged_bytes} bytes)")
        path = self.directory / shm.new_name()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, nbytes)
        except OSError as exc:
            os.close(fd)
            shm.remove(path)
            raise UploadError("too_large", f"cannot stage an upload of {nbytes} bytes: {exc}") from None
        upload = self.uploads[upload_id] = Upload(path, fd, nbytes, part_bytes)
        return upload

    def take(self, field_value: Any, buffers: list[Any]) -> list[BufferFile]:
        """The ``uploads`` field of an execute: the complete uploads it names, now the execution's files.

        Each entry is ``{"index", "upload"}``; buffer ``index`` (≥ 1) must be
        empty in the request. Nothing is taken unless every entry is valid.
        """
        if not isinstance(field_value, list) or not field_value:
            raise UploadError("bad_request", f"'uploads' must be a non-empty list of {{index, upload}} objects, "
                                             f"got {field_value!r}"[:300])
        chosen: list[tuple[int, str, Upload]] = []
        for entry in field_value:
            index = entry.get("index") if isinstance(entry, dict) else None
            upload_id = entry.get("upload") if isinstance(entry, dict) else None
            if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index < len(buffers):
                raise UploadError("bad_request", f"uploads index {index!r} is not a buffer of this request "
                                                 f"(1..{len(buffers) - 1})")
            if any(index == i or upload_id == u for i, u, _ in chosen):
                raise UploadError("bad_request", f"uploads entry {entry!r} names a buffer or upload twice"[:200])
            frame = buffers[index]
            if len(getattr(frame, "buffer", frame)):
                raise UploadError("bad_request", f"buffer {index} is named in 'uploads' but is not empty")
            upload = self.uploads.get(upload_id) if isinstance(upload_id, str) else None
            if upload is None:
                raise UploadError("unknown_upload", f"no upload {upload_id!r} in progress (expired, taken, or "
                                                    "never started): send its parts again")
            if not upload.complete:
                raise UploadError("incomplete_upload", f"upload {upload_id} has {len(upload.offsets)} of "
                                                       f"{upload.parts} parts")
            chosen.append((index, str(upload_id), upload))
        files = []
        for index, upload_id, upload in chosen:
            del self.uploads[upload_id]
            os.close(upload.fd)
            files.append(BufferFile(index, upload.path, upload.nbytes, "shm"))
        return files

    def sweep(self, now: float | None = None) -> int:
        """Delete uploads idle for :data:`IDLE_SECONDS`; how many."""
        now = time.monotonic() if now is None else now
        stale = [u for u, up in self.uploads.items() if now - up.last_part > IDLE_SECONDS]
        for upload_id in stale:
            self.discard(upload_id)
        return len(stale)

    def discard(self, upload_id: str) -> None:
        upload = self.uploads.pop(upload_id, None)
        if upload is not None:
            os.close(upload.fd)
            shm.remove(upload.path)

    def close(self) -> None:
        for upload_id in list(self.uploads):
            self.discard(upload_id)
