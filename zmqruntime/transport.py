"""Addresses, ports, connection files and the per-user runtime directory.

A server is found through its *connection file*: a JSON document (mode 0600,
written atomically once the sockets are bound) holding the transport, the
addresses of both channels, the signing key, the server's pid and start time.
Files live in the runtime directory:

* ``$ZMQRUNTIME_RUNTIME_DIR`` if set (tests use a private one each),
* else ``$XDG_RUNTIME_DIR/zmqruntime``,
* else ``~/.local/share/zmqruntime/runtime``.

A TCP server on data port P is ``server-P.json``; an IPC server named N is
``server-ipc-N.json``. The startup lock beside it is the same name + ``.lock``.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .private import ensure_private_dir, make_private_dirs, open_private
from .protocol import PACKED, SIGNATURE_SCHEME, SPLIT, available_schemes

DEFAULT_PORT = 7777
DEFAULT_CONTROL_OFFSET = 1000
DEFAULT_IP = "127.0.0.1"
TRANSPORTS = ("tcp", "ipc")
#: What a server is started with unless told otherwise: IPC, in the private runtime directory.
DEFAULT_TRANSPORT = "ipc"


def runtime_dir() -> Path:
    """The per-user runtime directory: created 0700 (parents too) if missing,
    and refused (:class:`~.private.InsecurePathError`) unless private."""
    env = os.environ.get("ZMQRUNTIME_RUNTIME_DIR")
    if env:
        path = Path(env)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "zmqruntime"
    else:
        path = Path.home() / ".local" / "share" / "zmqruntime" / "runtime"
    return ensure_private_dir(path)


def validate_port(port: Any, name: str = "port") -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise ValueError(f"{name} must be an integer, got {port!r}")
    if not 1 <= port <= 65535:
        raise ValueError(f"{name} must be between 1 and 65535, got {port}")
    return port


def connection_file_name(transport: str, port: int | None = None, name: str | None = None) -> str:
    if transport == "tcp":
        return f"server-{validate_port(port)}.json"
    if transport == "ipc":
        return f"server-ipc-{name or validate_port(port)}.json"
    raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")


@dataclass
class ConnectionInfo:
    """What a client needs to reach and authenticate to one server."""

    transport: str
    ip: str
    data_port: int
    control_port: int
    data_url: str
    control_url: str
    key: str
    signature_scheme: str = SIGNATURE_SCHEME  # what events are signed with: every peer reads it
    #: every scheme the server verifies (and answers a request in); absent in older files (= the one above)
    signature_schemes: list[str] = field(default_factory=list)
    #: the framings the server reads (and answers a request in); absent in older files (= split only)
    framings: list[str] = field(default_factory=list)
    pid: int = 0
    start_time: float = 0.0
    name: str = ""
    version: str = "1.0"
    curve_server_key: str = ""  # Z85 public key when the server encrypts with CurveZMQ, else ""
    curve_client_key: str = ""  # Z85 client keypair the server's ZAP handler admits (with CURVE)
    curve_client_secret: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConnectionInfo:
        known = {f for f in cls.__dataclass_fields__}
        missing = {"transport", "data_url", "control_url", "key"} - set(data)
        if missing:
            raise ValueError(f"connection file lacks {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})


def make_urls(transport: str, ip: str, data_port: int, control_port: int, name: str | None = None) -> tuple[str, str]:
    """Data and control URLs for a transport."""
    if transport == "tcp":
        return f"tcp://{ip}:{data_port}", f"tcp://{ip}:{control_port}"
    if transport == "ipc":
        base = runtime_dir() / f"zmqr-{name or data_port}"
        return f"ipc://{base}-data", f"ipc://{base}-control"
    raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")


def write_connection_file(path: Path, info: ConnectionInfo) -> None:
    """Atomically write ``info`` to ``path`` with mode 0600 (missing parents made 0700)."""
    make_private_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(info.to_dict(), fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_connection_file(path: str | os.PathLike[str]) -> ConnectionInfo:
    """The connection file's contents, trusted only if it is ours and private
    (:class:`~.private.InsecurePathError` otherwise)."""
    with os.fdopen(open_private(path, os.O_RDONLY, "connection file")) as fh:
        try:
            data = json.load(fh)
        except ValueError as exc:
            raise ValueError(f"connection file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"connection file {path} must hold a JSON object")
    return ConnectionInfo.from_dict(data)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    # A zombie child still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def remove_if_stale(path: Path) -> bool:
    """Delete a connection file whose server process is gone; True if removed."""
    try:
        info = read_connection_file(path)
    except (OSError, ValueError):  # unreadable or not ours (InsecurePathError): never deleted
        return False
    if pid_alive(info.pid):
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    return True


def port_is_free(port: int, ip: str = DEFAULT_IP) -> bool:
    """Could a server listen on ``port``? As libzmq binds: with SO_REUSEADDR, so
    connections of a crashed server lingering in TIME_WAIT do not count, while a
    process listening there does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


def choose_scheme(info: ConnectionInfo, preferred: str | None = None) -> str:
    """The signature scheme a client signs its requests with: the fastest both ends know.

    ``preferred`` (or ``$ZMQRUNTIME_SIGNATURE_SCHEME``) asks for one; it must be
    offered by the server and known here. ValueError, saying what each side
    speaks, when there is no scheme in common.
    """
    offered = list(info.signature_schemes or [info.signature_scheme])
    known = available_schemes()
    wanted = preferred or os.environ.get("ZMQRUNTIME_SIGNATURE_SCHEME") or None
    if wanted is not None:
        if wanted in offered and wanted in known:
            return wanted
        raise ValueError(f"signature scheme {wanted!r} asked for, but the server offers {offered} "
                         f"and this client knows {list(known)}")
    for scheme in known:
        if scheme in offered:
            return scheme
    raise ValueError(f"the server signs with {offered}, none of which this client knows ({list(known)}): "
                     "upgrade zmqruntime (or install the blake3 package)")


def choose_packed(info: ConnectionInfo) -> bool:
    """Whether a client sends its requests packed (one head frame): when the server
    reads them, unless ``$ZMQRUNTIME_FRAMING`` says ``split``.

    ValueError for any other value of the variable, or for ``packed`` asked of a
    server that does not offer it.
    """
    offered = PACKED in (info.framings or ())
    wanted = os.environ.get("ZMQRUNTIME_FRAMING") or None
    if wanted not in (None, PACKED, SPLIT):
        raise ValueError(f"$ZMQRUNTIME_FRAMING must be {PACKED!r} or {SPLIT!r}, got {wanted!r}")
    if wanted == PACKED and not offered:
        raise ValueError(f"framing {PACKED!r} asked for ($ZMQRUNTIME_FRAMING), but the server offers "
                         f"{info.framings or [SPLIT]}")
    return offered if wanted is None else wanted == PACKED
