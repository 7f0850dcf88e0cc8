"""Pickle protocol 5 with out-of-band buffers, for results and pushed values.

``dumps`` returns a list of buffers: the pickle stream first, then every
out-of-band buffer (numpy arrays, bytearrays, ...) *without copying it*.
Each becomes one zero-copy ZeroMQ frame. ``loads`` rebuilds the object on
the received frames' memory, so a 256 MiB array costs 256 MiB on the
receiver, not 512. Arrays rebuilt this way are views of the message's
memory (``arr.flags.owndata`` is False); they stay valid as long as the
array lives.

Only call :func:`loads` on frames whose signature has been verified.
"""

from __future__ import annotations

import pickle
from typing import Any, Sequence


class SerializationError(Exception):
    """A value could not be pickled (the message says which and why)."""


def dumps(obj: Any) -> list[memoryview | bytes]:
    oob: list[pickle.PickleBuffer] = []
    try:
        head = pickle.dumps(obj, protocol=5, buffer_callback=oob.append)
    except Exception as exc:  # pickle raises many types; report them uniformly
        raise SerializationError(f"cannot pickle {type(obj).__name__}: {exc}") from exc
    views: list[memoryview | bytes] = [head]
    for buf in oob:
        view = buf.raw()
        views.append(view)
    return views


def loads(frames: Sequence[Any]) -> Any:
    if not frames:
        raise SerializationError("no frames to unpickle")
    views = [getattr(f, "buffer", None) or memoryview(f) for f in frames]
    return pickle.loads(views[0], buffers=views[1:])


def nbytes(frames: Sequence[Any]) -> int:
    return sum(len(getattr(f, "buffer", None) or memoryview(f).cast("B")) for f in frames)
