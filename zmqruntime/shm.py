"""Buffer files on one host: shared-memory segments and spill files.

A large buffer can move between processes of one host as a file instead of
through a socket: the writer puts the bytes in a file, the reader maps it.
The same file format serves two purposes (``spill.py`` decides which):

* **shared memory**: a file in :func:`default_dir` (``/dev/shm``, RAM), so a
  256 MiB array crosses from worker to client without a copy on the wire;
* **spill**: a file on disk, so a result larger than the server's memory is
  kept until it is fetched.

Why ``/dev/shm`` and not the runtime directory: the runtime directory is
often on disk (``~/.local/share``), ``/dev/shm`` is tmpfs on every Linux.
It is world-writable, so every file here is created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode 0600 under a 128-bit random name
(never someone else's file, never through a symlink), the sticky bit stops
other users from renaming or deleting it, and a reader checks the opened
file with ``fstat`` (regular file, our uid, no group/other permission bits,
the announced size) before it maps a byte. ``ZMQRUNTIME_SHM_DIR`` names
another directory (tests, or hosts without ``/dev/shm``).

Names are ``zmqr-<pid>-<32 hex>.buf``: ``pid`` is the process that owns the
file, so a server at start (and every minute) deletes files whose owner is
gone (a crashed client, worker or server leaves nothing behind for long).
"""

from __future__ import annotations

import mmap
import os
import re
import stat
import weakref
from pathlib import Path
from typing import Any, Iterable, Optional

from .transport import pid_alive, runtime_dir

NAME_RE = re.compile(r"^zmqr-(\d{1,10})-([0-9a-f]{32})\.buf$")
_COPY_STEP = 64 * 1024 * 1024


#: Arrays made by :func:`shared_array` in this process: (address, nbytes) -> file path.
_shared: dict[tuple[int, int], Path] = {}


class SegmentRefused(PermissionError):
    """A named buffer file failed the owner / mode / size checks: it is not mapped."""


def default_dir() -> Path:
    """Where shared-memory segments live: ``$ZMQRUNTIME_SHM_DIR``, ``/dev/shm`` or the runtime dir."""
    env = os.environ.get("ZMQRUNTIME_SHM_DIR")
    if env:
        return Path(env)
    dev_shm = Path("/dev/shm")
    if dev_shm.is_dir() and os.access(dev_shm, os.W_OK | os.X_OK):
        return dev_shm
    return runtime_dir()


def new_name(pid: Optional[int] = None) -> str:
    return f"zmqr-{os.getpid() if pid is None else pid}-{os.urandom(16).hex()}.buf"


def check_name(path: Any) -> Path:
    """``path`` as a Path if it names a buffer file (absolute, our naming scheme), else ValueError."""
    if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
        raise ValueError(f"a buffer file path must be an absolute path string, got {path!r}")
    p = Path(path)
    if not NAME_RE.match(p.name) or ".." in p.parts:
        raise ValueError(f"not a zmqruntime buffer file name: {path!r}")
    return p


def create(directory: Path, data: Any, source: Optional[tuple[int, int]] = None) -> Path:
    """Write ``data`` (a buffer) into a new private file in ``directory``; return its path.

    ``source`` = ``(fd, offset)`` copies from that file instead, in the kernel
    (``sendfile``): a memory-mapped array is never read into this process.
    """
    path = Path(directory) / new_name()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data).cast("B")
        n = len(view)
        if source is not None:
            _sendfile_all(fd, source[0], source[1], n)
        else:
            for start in range(0, n, _COPY_STEP):
                chunk = view[start:start + _COPY_STEP]
                while chunk:
                    chunk = chunk[os.write(fd, chunk):]
    except BaseException:
        os.close(fd)
        _unlink(path)
        raise
    os.close(fd)
    return path


def _sendfile_all(out_fd: int, in_fd: int, offset: int, count: int) -> None:
    done = 0
    while done < count:
        sent = os.sendfile(out_fd, in_fd, offset + done, count - done)
        if sent == 0:
            raise OSError(f"source file ended after {done} of {count} bytes")
        done += sent


def open_checked(path: Path, nbytes: int) -> int:
    """Open a buffer file for reading after checking what it is; return the fd.

    Refused (``SegmentRefused``): a symlink (``O_NOFOLLOW``), not a regular
    file, another owner, any group/other permission bit, a size other than
    ``nbytes``. ``FileNotFoundError`` when it does not exist (another host).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the last component is a symlink
            raise SegmentRefused(f"refusing buffer file {path}: it is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(st.st_mode):
            problem = "not a regular file"
        elif st.st_uid != os.getuid():
            problem = f"owned by uid {st.st_uid}, not by this user (uid {os.getuid()})"
        elif st.st_mode & 0o077:
            problem = f"mode {stat.S_IMODE(st.st_mode):04o} gives access to group or others (0600 required)"
        elif st.st_size != nbytes:
            problem = f"{st.st_size} bytes where {nbytes} were announced"
        if problem:
            raise SegmentRefused(f"refusing buffer file {path}: {problem}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def map_checked(path: Path, nbytes: int, writable: bool = True) -> Any:
    """Check then map a buffer file; a private (copy-on-write) mapping when ``writable``.

    Arrays rebuilt on it are writable and changing them never changes the file.
    """
    fd = open_checked(path, nbytes)
    try:
        if nbytes == 0:
            return bytearray() if writable else b""
        if writable:
            return mmap.mmap(fd, nbytes, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        return mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    finally:
        os.close(fd)


def adopt(path: Path, nbytes: int) -> tuple[Path, Any]:
    """Take over a buffer file another process wrote: check it, rename it to our pid, map it read-only.

    The rename makes this process its owner for the stale-file sweep.
    """
    mapped = map_checked(path, nbytes, writable=False)
    match = NAME_RE.match(path.name)
    assert match is not None
    mine = path.with_name(f"zmqr-{os.getpid()}-{match.group(2)}.buf")
    try:
        os.rename(path, mine)
    except BaseException:
        if hasattr(mapped, "close"):
            mapped.close()
        raise
    return mine, mapped


def remove(path: Optional[Path]) -> None:
    if path is not None:
        _unlink(path)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def clean_stale(directories: Iterable[Path]) -> int:
    """Delete buffer files of ours whose owning process is gone; return how many."""
    removed = 0
    uid = os.getuid()
    for directory in {Path(d) for d in directories}:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            match = NAME_RE.match(entry.name)
            if match is None:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_uid != uid or not stat.S_ISREG(st.st_mode) or pid_alive(int(match.group(1))):
                continue
            _unlink(Path(entry.path))
            removed += 1
    return removed


def shared_array(shape: Any, dtype: Any = "float64") -> Any:
    """A numpy array whose memory is a shared-memory file: pushing it copies nothing.

    ``execute(..., push={"x": arr})`` hands the worker the file itself (a
    new link to it), so the worker maps the very same memory: do not change
    the array until that execution has finished. The file is deleted when
    the array's memory is freed (or, after a crash, by the next server start).
    """
    import numpy as np

    dt = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if nbytes <= 0:
        raise ValueError(f"a shared array needs at least one byte, got shape {shape!r}")
    path = default_dir() / new_name()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, nbytes)
        mapped = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        _unlink(path)
        raise
    finally:
        os.close(fd)
    arr = np.frombuffer(mapped, dtype=dt).reshape(shape)
    key = (int(arr.ctypes.data), nbytes)
    _shared[key] = path
    weakref.finalize(mapped, _forget, key, path)
    return arr


def _forget(key: tuple[int, int], path: Path) -> None:
    _shared.pop(key, None)
    _unlink(path)


def link_shared(address: int, nbytes: int, directory: Path) -> Optional[Path]:
    """A new name for the file behind a :func:`shared_array` buffer (None if it is not one)."""
    path = _shared.get((address, nbytes))
    if path is None:
        return None
    new = Path(directory) / new_name()
    os.link(path, new)
    return new
