"""The ``results`` request's bulk forms: ``manifest``, ``part`` and ``shm`` (server side).

A plain ``results`` reply carries every buffer at once, so the receiver holds
the whole result. For results larger than memory the client asks instead:

1. ``{"manifest": true}``: names, sizes and digests of the buffers, no data;
2. ``{"part": [index, offset, length]}`` as many times as needed: one signed
   reply per slice of one buffer, ``offset`` a multiple of
   :data:`~zmqruntime.protocol.DIGEST_CHUNK`, ``length`` at most
   :data:`MAX_PART` and a multiple of ``DIGEST_CHUNK`` (or reaching the end),
   so each part is a whole number of digest leaves and the receiver can
   check each buffer's digest as it writes it;
3. ``{"manifest": true, "release": true}`` to drop the result (optional).

``{"shm": true}`` (same host only) answers like a plain request, except that
buffers the server holds in files are named in the ``shm`` field instead of
sent (their frames are empty): the client maps them (``shm.map_checked``).

Only one form per request. docs/protocol.md §7.5 is the normative text.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Optional

from .protocol import DIGEST_CHUNK, buffer_digest
from .spill import EMPTY_DIGEST

#: Largest slice one ``part`` reply carries.
MAX_PART = 64 * 1024 * 1024
Reply = tuple[dict[str, Any], list[Any], Optional[list[bytes]]]


class PartError(ValueError):
    """A bad manifest/part/shm field: the caller answers ``bad_request``."""


def requested_form(content: dict[str, Any]) -> Optional[str]:
    """``"manifest"``, ``"part"``, ``"shm"`` or None (a plain request); PartError when malformed."""
    forms = []
    for name in ("manifest", "shm"):
        value = content.get(name, False)
        if not isinstance(value, bool):
            raise PartError(f"'{name}' must be true or false, got {value!r}"[:200])
        if value:
            forms.append(name)
    if content.get("part") is not None:
        part = content["part"]
        if (not isinstance(part, list) or len(part) != 3
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in part)):
            raise PartError(f"'part' must be [buffer index, offset, length] (three integers), got {part!r}"[:200])
        forms.append("part")
    if len(forms) > 1:
        raise PartError(f"at most one of 'manifest', 'part', 'shm' per request, got {forms}")
    if forms and forms[0] in ("part", "shm") and content.get("release"):
        raise PartError(f"'release' cannot go with '{forms[0]}': release with a manifest request once the "
                        "data is in hand")
    return forms[0] if forms else None


def manifest(rec: Any, base: dict[str, Any]) -> Reply:
    ensure_digests(rec)
    buffers = [{"nbytes": _size(f), "digest": d.hex()} for f, d in zip(rec.result_frames, rec.result_digests)]
    return {**base, "buffers": buffers}, [], None


def part(rec: Any, spec: list[int]) -> Reply:
    index, offset, length = spec
    if not 0 <= index < len(rec.result_frames):
        raise PartError(f"buffer index {index} out of range: the result has {len(rec.result_frames)} buffers")
    size = _size(rec.result_frames[index])
    if offset < 0 or offset % DIGEST_CHUNK or (offset >= size and not offset == size == 0):
        raise PartError(f"offset {offset} must be a multiple of {DIGEST_CHUNK} below the buffer's size {size}")
    if length < 1 or length > MAX_PART or (length % DIGEST_CHUNK and offset + length < size):
        raise PartError(f"length {length} must be 1..{MAX_PART}, a multiple of {DIGEST_CHUNK} unless it reaches "
                        f"the end of the buffer")
    end = min(size, offset + length)
    data = _read(rec, index, offset, end)
    return {"execution_id": rec.execution_id, "part": [index, offset, end - offset]}, [data], None


def shm_reply(rec: Any, base: dict[str, Any]) -> Reply:
    """Name the file-held buffers instead of sending them; send the rest."""
    by_index = {f.index: f for f in rec.result_files}
    frames = [b"" if i in by_index else f for i, f in enumerate(rec.result_frames)]
    digests = [EMPTY_DIGEST if i in by_index else d for i, d in enumerate(rec.result_digests)]
    named = [{"index": f.index, "path": str(f.path), "nbytes": f.nbytes} for f in rec.result_files]
    return {**base, "shm": named}, frames, digests


_hasher: Optional[ThreadPoolExecutor] = None


def start_digests(rec: Any) -> None:
    """Start hashing the buffers the worker left undigested (shared-memory files), in the background.

    A same-host client never needs them; a remote one then finds them ready
    (the old design hashed in the worker, before ``done``: this keeps that
    cost off the execution's latency). One background thread at a time.
    """
    global _hasher
    for f in rec.result_files:
        if not rec.result_digests[f.index]:
            if _hasher is None:
                _hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zmqruntime-file-digest")
            rec.result_digests[f.index] = _hasher.submit(file_digest, f.path, f.nbytes)


def ensure_digests(rec: Any) -> None:
    """Every buffer's digest, waiting for background hashing or computing what is missing.

    Files are read, not the server's mapping, so their pages do not stay
    resident in the server.
    """
    files = {f.index: f for f in rec.result_files}
    for i, d in enumerate(rec.result_digests):
        if isinstance(d, Future):
            rec.result_digests[i] = d.result()
        elif not d:
            held = files.get(i)
            rec.result_digests[i] = (file_digest(held.path, held.nbytes) if held is not None
                                     else buffer_digest(rec.result_frames[i]))


def file_digest(path: Any, nbytes: int) -> bytes:
    """The §3.2 digest of a file's first ``nbytes``, read one chunk at a time (chunks in parallel).

    ``pread`` and ``hashlib`` both release the GIL, so threads use every core.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def leaf(offset: int) -> bytes:
        return hashlib.sha256(os.pread(fd, min(DIGEST_CHUNK, nbytes - offset), offset)).digest()

    try:
        offsets = range(0, nbytes, DIGEST_CHUNK)
        if len(offsets) > 1:
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                leaves = list(pool.map(leaf, offsets))
        else:
            leaves = [leaf(o) for o in offsets]
    finally:
        os.close(fd)
    return hashlib.sha256(b"".join(leaves or [hashlib.sha256(b"").digest()])).digest()


def _read(rec: Any, index: int, start: int, end: int) -> Any:
    """A slice of a buffer: read from its file (the server's mapping stays cold) or a view of memory."""
    held = next((f for f in rec.result_files if f.index == index), None)
    if held is None:
        return memoryview(rec.result_frames[index]).cast("B")[start:end]
    fd = os.open(held.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return os.pread(fd, end - start, start)
    finally:
        os.close(fd)


def _size(frame: Any) -> int:
    return len(memoryview(frame).cast("B"))
