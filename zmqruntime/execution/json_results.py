"""Results as JSON, for clients that have no pickle reader (``results`` with ``format: "json"``).

The worker (which already holds the values) writes the JSON form of a
result next to its pickle when every value is JSON-able and the result is
small; the server stores that text and serves it on request. The server
never unpickles anything: a worker's pickle is not the server's to run.
"""

from __future__ import annotations

import json
from typing import Any, Optional

#: Results whose pickle is larger than this get no JSON form (JSON of big data is slow and large).
JSON_RESULT_MAX_BYTES = 1 << 20
RESULT_FORMATS = ("pickle", "json")

_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def json_form(results: dict[str, Any], nbytes: int) -> Optional[str]:
    """``results`` as a JSON object's text, or None when a value is not plain JSON or it is too big.

    Plain JSON only: dict (string keys), list, tuple (as a list), str, int,
    float (finite), bool, None -- no numpy scalars, no custom encoders, so
    what a JSON client reads is what the task returned.
    """
    if not results or nbytes > JSON_RESULT_MAX_BYTES:
        return None
    try:
        if not _plain(results):
            return None
        return _encode(results)
    except (TypeError, ValueError, RecursionError):
        return None


def _plain(value: Any) -> bool:
    """Only types JSON keeps as they are (json.dumps would also turn ``{1: 2}`` into ``{"1": 2}``)."""
    kind = type(value)
    if value is None or kind in (str, int, float, bool):
        return True
    if kind in (list, tuple):
        return all(_plain(v) for v in value)
    if kind is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    return False
