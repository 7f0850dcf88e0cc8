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

import ctypes
import functools
import hashlib
import mmap
import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional

from .protocol import BLAKE3, DIGEST_CHUNK, HMAC_SHA256, available_schemes, buffer_digest

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


def manifest(rec: Any, base: dict[str, Any], scheme: str = HMAC_SHA256) -> Reply:
    """Sizes and digests, under the request's signature scheme (the digests the parts will be checked against)."""
    digests = ensure_digests(rec, scheme)
    buffers = [{"nbytes": _size(f), "digest": d.hex()} for f, d in zip(rec.result_frames, digests)]
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


def shm_reply(rec: Any, base: dict[str, Any], scheme: str = HMAC_SHA256) -> Reply:
    """Name the file-held buffers instead of sending them; send the rest (nothing large is hashed)."""
    by_index = {f.index: f for f in rec.result_files}
    frames = [b"" if i in by_index else f for i, f in enumerate(rec.result_frames)]
    empty = buffer_digest(b"", scheme)
    digests = [empty if i in by_index else _digest_of(rec, i, scheme) for i in range(len(frames))]
    named = [{"index": f.index, "path": str(f.path), "nbytes": f.nbytes} for f in rec.result_files]
    return {**base, "shm": named}, frames, digests


_hasher: Optional[ThreadPoolExecutor] = None


def _table(rec: Any, scheme: str) -> list[Any]:
    """The record's digests under ``scheme``: bytes, a Future (being hashed) or ``b""`` (not yet)."""
    if scheme == HMAC_SHA256:
        table = rec.result_digests
    else:
        table = rec.result_digests_by.setdefault(scheme, [])
    if len(table) != len(rec.result_frames):
        table[:] = [b""] * len(rec.result_frames)
    return table


def seed_digests(rec: Any, files: list[Any]) -> None:
    """Digests the worker reported with its result files (``{"blake3": hex}`` per file entry)."""
    if BLAKE3 not in available_schemes():
        return
    table = _table(rec, BLAKE3)
    for entry in files:
        index, digest = entry.get("index"), entry.get(BLAKE3)
        if isinstance(index, int) and 0 <= index < len(table) and isinstance(digest, str) and len(digest) == 64:
            try:
                table[index] = bytes.fromhex(digest)
            except ValueError:
                continue


def start_digests(rec: Any) -> None:
    """Start hashing the buffers the worker left undigested (buffer files), in the background.

    A same-host client never needs them; a remote one then finds them ready
    (the old design hashed in the worker, before ``done``: this keeps that
    cost off the execution's latency). Only under the fastest scheme this
    server knows (BLAKE3 when it has it: what the reference clients sign
    with); HMAC-SHA256 digests of files are made when a peer asks for them.
    One background job at a time, hashing with every core: a client that
    fetches over the socket right after ``done`` waits for it (measured:
    a niced single-threaded hasher cost that client 0.93x -> 0.6x of raw,
    and gained a same-host client nothing).
    """
    global _hasher
    scheme = available_schemes()[0]
    table = _table(rec, scheme)
    for f in rec.result_files:
        if not table[f.index]:
            if _hasher is None:
                _hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zmqruntime-file-digest")
            table[f.index] = _hasher.submit(file_digest, f.path, f.nbytes, scheme)


def ensure_digests(rec: Any, scheme: str = HMAC_SHA256) -> list[bytes]:
    """Every buffer's digest under ``scheme``, waiting for background hashing or computing what is missing.

    Files are hashed from the file, not from the server's mapping.
    """
    return [_digest_of(rec, i, scheme) for i in range(len(rec.result_frames))]


def _digest_of(rec: Any, index: int, scheme: str) -> bytes:
    table = _table(rec, scheme)
    d = table[index]
    if isinstance(d, Future):
        d = table[index] = d.result()
    elif not d:
        held = next((f for f in rec.result_files if f.index == index), None)
        d = table[index] = (file_digest(held.path, held.nbytes, scheme) if held is not None
                            else buffer_digest(rec.result_frames[index], scheme))
    return d


def file_digest(path: Any, nbytes: int, scheme: str = HMAC_SHA256, threads: bool = True) -> bytes:
    """The §3.2 digest of a file's first ``nbytes`` under ``scheme``.

    BLAKE3: the package maps the file and hashes it (with several threads
    unless ``threads`` is false).
    SHA-256 tree: read one chunk at a time (chunks in parallel threads:
    ``pread`` and ``hashlib`` both release the GIL).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    if scheme == BLAKE3:
        try:
            if os.fstat(fd).st_size == nbytes and nbytes:
                import blake3

                hasher = blake3.blake3(max_threads=blake3.blake3.AUTO if threads else 1)
                return hasher.update_mmap(f"/proc/self/fd/{fd}").digest()
            return buffer_digest(os.pread(fd, nbytes, 0), scheme)
        finally:
            os.close(fd)

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


def populated_frames(rec: Any) -> list[Any]:
    """The result's frames to send whole over the socket, file-held ones mapped again and filled.

    The server's own mapping is filled page by page (a fault each 64 KiB)
    while libzmq copies from it. ``MAP_POPULATE`` fills a new mapping in one
    call, but a file's first mapping by this process costs 20-30 ms per
    256 MiB, all before the send's first byte. Where the kernel has
    ``MADV_POPULATE_READ`` (Linux 5.14), a buffer of ``FILL_AHEAD_BYTES`` or
    more is filled instead by a helper thread, in steps, while libzmq
    already sends its first pages.
    """
    frames = list(rec.result_frames)
    if not hasattr(mmap, "MAP_POPULATE"):
        return frames
    for f in rec.result_files:
        if not f.nbytes:
            continue
        ahead = f.nbytes >= FILL_AHEAD_BYTES and _populate_read() is not None
        try:
            fd = os.open(f.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:  # copy-on-write only so that ctypes may take its address for madvise; nothing writes it
                mapping = (mmap.mmap(fd, f.nbytes, access=mmap.ACCESS_COPY) if ahead else
                           mmap.mmap(fd, f.nbytes, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ))
            finally:
                os.close(fd)
        except (OSError, ValueError):
            continue  # the server's own mapping still works
        frames[f.index] = memoryview(mapping)
        if ahead:
            address = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
            threading.Thread(target=_fill, args=(mapping, address), name="zmqruntime-fill", daemon=True).start()
    return frames


#: ``madvise(MADV_POPULATE_READ)``: fill page tables from the page cache without reading the data.
MADV_POPULATE_READ = 22
#: Buffers this large are filled by a helper thread while they are sent; smaller ones up front.
FILL_AHEAD_BYTES = 16 << 20
#: Bytes filled per ``madvise`` call: the sender waits at most for one step.
FILL_STEP = 8 << 20


@functools.cache
def _populate_read() -> Optional[Callable[[int, int, int], int]]:
    """libc's ``madvise`` if it takes ``MADV_POPULATE_READ`` here (tried once, on one page), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
        fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
        page = mmap.mmap(-1, mmap.PAGESIZE)
        try:
            address = ctypes.addressof(ctypes.c_char.from_buffer(page))
            works = fn(address, mmap.PAGESIZE, MADV_POPULATE_READ) == 0
        finally:
            page.close()
    except (OSError, AttributeError, ValueError, BufferError):
        return None
    return fn if works else None


def _fill(mapping: mmap.mmap, address: int) -> None:
    """Fill ``mapping``'s page tables in order, ahead of the sender; ctypes drops the GIL for each step.

    The thread's reference keeps the mapping alive however early the send ends.
    """
    madvise = _populate_read()
    assert madvise is not None
    size = len(mapping)
    for start in range(0, size, FILL_STEP):
        if madvise(address + start, min(FILL_STEP, size - start), MADV_POPULATE_READ) != 0:
            return  # the send faults the rest in itself


def _read(rec: Any, index: int, start: int, end: int) -> Any:
    """A slice of a buffer: a view of memory or of a shared-memory file's mapping (zero-copy), or read
    from a spill file on disk (so the server's mapping of it stays cold)."""
    held = next((f for f in rec.result_files if f.index == index), None)
    if held is None or held.kind == "shm":  # memory, or shared memory: a view, sent without a copy
        return memoryview(rec.result_frames[index]).cast("B")[start:end]
    fd = os.open(held.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return os.pread(fd, end - start, start)
    finally:
        os.close(fd)


def _size(frame: Any) -> int:
    return len(memoryview(frame).cast("B"))
