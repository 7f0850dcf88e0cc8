"""Private files and directories: what makes the runtime directory safe on a shared machine.

The runtime directory holds the keys (connection files), the IPC endpoints of
both channels and of the worker link, the startup locks and the server logs.
Another local user who can write to it, or to a parent of it, can plant a
connection file or a socket and get the owner's code; one who can read it
reads the keys. So, like jupyter_core does for its runtime directory:

* every directory we create is made 0700 explicitly (``mkdir``'s mode is
  masked by the umask, and ``Path.mkdir(parents=True)`` ignores the mode for
  parents altogether);
* the runtime directory must be owned by the current user with no group or
  other access, and every ancestor must be owned by us or root and not
  writable by others unless sticky (``/tmp``): else :class:`InsecurePathError`
  with the fix spelled out, and nothing is written;
* a connection file is trusted only when it is a regular file owned by us
  and not readable or writable by anyone else;
* logs and locks are opened with ``O_NOFOLLOW`` and mode 0600 and checked
  after opening, so a planted symlink never makes us write elsewhere.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import ServerStartError


class InsecurePathError(ServerStartError):
    """A file or directory other users could read or change: refused, never used."""


def _describe(st: os.stat_result) -> str:
    return f"owner uid {st.st_uid}, mode {stat.filemode(st.st_mode)} ({stat.S_IMODE(st.st_mode):04o})"


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and any missing parents, each 0700 whatever the umask."""
    missing = []
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:  # another process won the race: checked below like any other
            continue
        os.chmod(d, 0o700, follow_symlinks=False)


def check_private_dir(path: Path) -> None:
    """Raise InsecurePathError unless ``path`` is a real directory only we can use,
    under ancestors that nobody else can rename or replace it in."""
    uid = os.geteuid()
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise InsecurePathError(f"the zmqruntime runtime directory {path} is not a directory "
                                f"({'a symlink' if stat.S_ISLNK(st.st_mode) else 'another kind of file'}); "
                                "refusing to use it")
    if st.st_uid != uid or st.st_mode & 0o077:
        raise InsecurePathError(
            f"the zmqruntime runtime directory {path} is not private ({_describe(st)}); it must be owned by "
            f"you (uid {uid}) with no group/other access, since it holds keys and sockets. "
            f"Fix it with `chmod 700 {path}` if it is yours, or point ZMQRUNTIME_RUNTIME_DIR at a private directory."
        )
    for parent in Path(os.path.realpath(path)).parents:
        pst = os.stat(parent)
        if pst.st_uid not in (uid, 0):
            raise InsecurePathError(f"{parent}, a parent of the zmqruntime runtime directory {path}, belongs to "
                                    f"another user ({_describe(pst)}); they could replace the runtime directory")
        if pst.st_mode & 0o022 and not pst.st_mode & stat.S_ISVTX:
            raise InsecurePathError(f"{parent}, a parent of the zmqruntime runtime directory {path}, is writable by "
                                    f"other users and not sticky ({_describe(pst)}); they could replace the "
                                    f"runtime directory. Fix it with `chmod go-w {parent}`.")


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (0700, parents too) if missing, then check it is private."""
    make_private_dirs(path)
    check_private_dir(path)
    return path


def check_private_file(path: str | os.PathLike[str], fd: int, what: str = "connection file") -> None:
    """Raise InsecurePathError unless the open ``fd`` is a regular file of ours that only we can access."""
    st = os.fstat(fd)
    uid = os.geteuid()
    if not stat.S_ISREG(st.st_mode):
        raise InsecurePathError(f"the {what} {path} is not a regular file; refusing to use it")
    if st.st_uid != uid:
        raise InsecurePathError(f"the {what} {path} belongs to another user ({_describe(st)}); "
                                f"only a file owned by you (uid {uid}) is trusted")
    if st.st_mode & 0o077:
        raise InsecurePathError(f"the {what} {path} is accessible by other users ({_describe(st)}); "
                                f"it holds a key: `chmod 600 {path}` if it is yours, then try again")


def open_private(path: str | os.PathLike[str], flags: int, what: str) -> int:
    """``os.open`` without following a symlink, creating with mode 0600, checked after opening."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component is a symlink
            raise InsecurePathError(f"the {what} {path} is a symbolic link; refusing to follow it") from None
        raise
    try:
        check_private_file(path, fd, what)
    except BaseException:
        os.close(fd)
        raise
    return fd
