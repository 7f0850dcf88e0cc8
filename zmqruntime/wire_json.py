"""Strict JSON for message headers and contents, through the json module's C parts directly.

Every message's header and content are JSON, so every request, reply and
event pays an encode on one side and two decodes on the other.
``json.JSONEncoder.encode`` builds a new C encoder (and a dict for circular
checks) on every call, and ``JSONDecoder.decode`` matches a whitespace
regex on both sides of the document; for the small objects of a control
message those wrappers are about a third of the time (``timeit``, Python
3.11: a brief ``ping`` reply's content 3.4 µs -> 2.2 µs; a header 1.7 µs ->
1.2 µs to decode). Here one C encoder and one C scanner are made once, and
the stdlib's full path is the fallback (and the reference: the output is
the same, byte for byte, and so are the errors):

* :func:`encode`: compact separators, ASCII only, no NaN or infinity
  (``ValueError``), unknown types ``TypeError``. Without the circular-check
  dict a cycle recurses until Python's recursion limit; that and any other
  nesting too deep to encode is a ``ValueError`` too.
* :func:`decode`: one JSON document from a ``str`` (leading or trailing
  whitespace and every error are left to ``json.JSONDecoder.decode``).
* :func:`encode_lenient`: the same as :func:`encode` but NaN and infinity
  are written as ``json.dumps`` writes them (``NaN``, ``Infinity``), which
  :func:`decode` reads back: for the server's internal link to its workers,
  where every message carries JSON too and a stray float must not end a task.
"""

from __future__ import annotations

import json
import json.scanner
from json.encoder import encode_basestring_ascii
from typing import Any, Callable, Optional

#: A JSON string literal, as :func:`encode` writes one (``"..."``, ASCII only).
quote = encode_basestring_ascii

_reference = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_lenient_reference = json.JSONEncoder(separators=(",", ":"), allow_nan=True)
_decoder = json.JSONDecoder()
_full_decode = _decoder.decode


def _make_c_encoder(reference: json.JSONEncoder) -> Optional[Callable[[Any, int], Any]]:
    """The C encoder ``reference.encode`` would build, made once; None where the json module has none
    (or a signature this code does not know: it is checked against the reference on a sample)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        c_encode = make(None, reference.default, encode_basestring_ascii, None, ":", ",", False, False,
                        reference.allow_nan)
        sample = {"a": [1, 2.5, None, True, "\u00e9\n"], "b": {"c": -0.0}}
        if "".join(c_encode(sample, 0)) != reference.encode(sample):
            return None
    except Exception:  # noqa: BLE001 -- any other json version: the reference path serves
        return None
    return c_encode


def _make_scanner() -> Optional[Callable[[str, int], tuple[Any, int]]]:
    make = getattr(json.scanner, "c_make_scanner", None)
    return make(_decoder) if make is not None else None


_c_encode = _make_c_encoder(_reference)
_c_encode_lenient = _make_c_encoder(_lenient_reference)
_scan = _make_scanner()


def _encoder(c_encode: Optional[Callable[[Any, int], Any]], reference: json.JSONEncoder) -> Callable[[Any], str]:
    """An encode function over ``c_encode``, falling back to ``reference`` (one call deep: every message pays it)."""
    def encode(obj: Any) -> str:
        if c_encode is None or isinstance(obj, str):  # a bare str is not a chunk list: the reference handles it
            return reference.encode(obj)
        try:
            return "".join(c_encode(obj, 0))
        except RecursionError:
            raise ValueError("JSON content nested too deep (or circular)") from None
    return encode


#: ``obj`` as compact, strict JSON (``ValueError`` for NaN, infinity, cycles; ``TypeError`` for other types).
encode = _encoder(_c_encode, _reference)
#: ``obj`` as compact JSON, NaN and infinity allowed (``ValueError`` for cycles; ``TypeError`` for other types).
encode_lenient = _encoder(_c_encode_lenient, _lenient_reference)


def decode(text: str) -> Any:
    """One JSON document (``json.JSONDecodeError``, a ``ValueError``, when it is not)."""
    if _scan is not None:
        try:
            obj, end = _scan(text, 0)
        except StopIteration:  # not a value at offset 0 (empty, whitespace first, not JSON)
            return _full_decode(text)
        if end == len(text):
            return obj
    return _full_decode(text)  # trailing whitespace or data, or no C scanner
