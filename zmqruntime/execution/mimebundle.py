"""Mime bundles without IPython: what ``display(obj)`` sends for an object.

The same rules as IPython's formatter, in brief: ``_repr_mimebundle_`` first,
then each ``_repr_*_`` method, then ``text/plain`` from ``repr`` (abridged for
huge strings and containers, whose full repr would cost more than the task).
Binary values (PNG, JPEG, PDF) become base64 strings, so a bundle is JSON.
"""

from __future__ import annotations

import base64
import json
import reprlib
import sys
from typing import Any, Callable, Optional

#: Strings and bytes longer than this get an abridged text/plain.
LONG_TEXT = 1 << 20

_REPR_METHODS = (
    ("_repr_html_", "text/html"), ("_repr_markdown_", "text/markdown"), ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"), ("_repr_jpeg_", "image/jpeg"), ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"), ("_repr_javascript_", "application/javascript"),
    ("_repr_pdf_", "application/pdf"),
)
_BINARY = {"image/png", "image/jpeg", "application/pdf"}



def format_bundle(obj: Any, include: Any = None, exclude: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(data, metadata)`` for ``obj``, as IPython's formatter would build it (JSON-ready)."""
    if type(obj) in _PLAIN_TYPES:  # no _repr_*_ methods to look for
        return {"text/plain": plain_repr(obj)}, {}
    data: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    method = repr_method(obj, "_repr_mimebundle_")
    if method is not None:
        got = _call_repr(method, include=include, exclude=exclude)
        if isinstance(got, tuple) and len(got) == 2:
            got, md = got
            metadata.update(md or {})
        if isinstance(got, dict):
            data.update(got)
    for name, mime in _REPR_METHODS:
        if mime in data:
            continue
        method = repr_method(obj, name)
        value = _call_repr(method) if method is not None else None
        if isinstance(value, tuple) and len(value) == 2:
            value, md = value
            if md:
                metadata[mime] = md
        if value is not None:
            data[mime] = value
    if "text/plain" not in data:
        data["text/plain"] = plain_repr(obj)
    if include:
        data = {k: v for k, v in data.items() if k in include}
    if exclude:
        data = {k: v for k, v in data.items() if k not in exclude}
    return {k: jsonable(k, v) for k, v in data.items()}, metadata


_PLAIN_TYPES = {int, float, bool, complex, str, bytes, bytearray, list, tuple, dict, set, frozenset, type(None)}
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 6, 2000, 2000
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxset = _SHORT.maxfrozenset = _SHORT.maxdict = _SHORT.maxdeque = 1000
#: Containers longer than this, and strings/bytes longer than RESULT_REPR_LIMIT, get an abridged repr:
#: a full ``repr`` of a huge value would cost more time and memory than the task.
LONG_CONTAINER = 1000


def plain_repr(obj: Any) -> str:
    """``repr(obj)``, abridged (``...``) for huge strings, bytes and builtin containers."""
    if isinstance(obj, (str, bytes, bytearray)) and len(obj) > LONG_TEXT:
        return _SHORT.repr(obj) + f"  # {type(obj).__name__} of length {len(obj):,}"
    if isinstance(obj, (list, tuple, dict, set, frozenset)) and len(obj) > LONG_CONTAINER:
        return _SHORT.repr(obj) + f"  # {type(obj).__name__} of length {len(obj):,}"
    return repr(obj)


def repr_method(obj: Any, name: str) -> Optional[Callable[..., Any]]:
    """``obj.<name>`` if it is a method to call (a class's unbound ones are not)."""
    if isinstance(obj, type):  # a class has unbound _repr_*_ methods: show the class itself
        return None
    method = getattr(obj, name, None)
    return method if callable(method) else None


def _call_repr(method: Callable[..., Any], **kwargs: Any) -> Any:
    try:
        return method(**kwargs) if kwargs else method()
    except TypeError:
        return method() if kwargs else None
    except Exception as exc:  # a broken repr must not fail the task
        print(f"{type(exc).__name__} in {getattr(method, '__name__', 'repr')}: {exc}", file=sys.stderr)
        return None


def jsonable(mime: str, value: Any) -> Any:
    """A bundle value as JSON: bytes as base64 (binary types) or text."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if mime in _BINARY or not _is_text(raw):
            return base64.b64encode(raw).decode("ascii")
        return raw.decode("utf-8")
    if mime == "application/json" or mime.endswith("+json"):
        return json.loads(json.dumps(value, default=str))
    return value if isinstance(value, str) else str(value)


def _is_text(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def bounded(data: dict[str, Any], limit: int, what: str, hint: str = "") -> dict[str, Any]:
    """Drop each entry larger than ``limit`` and say so in a one-line text/plain note."""
    sizes = {m: len(v) if isinstance(v, str) else len(json.dumps(v)) for m, v in data.items()}
    big = {m: n for m, n in sizes.items() if n > limit}
    if not big:
        return data
    out = {m: v for m, v in data.items() if m not in big}
    sizes_text = ", ".join(f"{m} {n} bytes" for m, n in big.items())
    note = f"[{what} too large to show here ({sizes_text})" + (f"; {hint}]" if hint else "]")
    out["text/plain"] = f"{out['text/plain']}\n{note}" if "text/plain" in out else note
    return out
