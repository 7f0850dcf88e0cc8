"""The wire's JSON and header dates (zmqruntime.wire_json, protocol.utcnow_iso): the fast paths
give exactly what the stdlib gives, output and errors, and a date every peer parses."""

from __future__ import annotations

import json
import math
import re
import time
from datetime import datetime, timedelta, timezone

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqruntime import wire_json
from zmqruntime.limits import recv_bounded
from zmqruntime.protocol import utcnow_iso

pytestmark = pytest.mark.timeout(120)

REFERENCE = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
LENIENT = json.JSONEncoder(separators=(",", ":"), allow_nan=True)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def outcome(fn, value):
    """What ``fn(value)`` gives: its result, or its exception's type and message."""
    try:
        return fn(value)
    except Exception as exc:  # noqa: BLE001 -- compared, not handled
        return type(exc), str(exc)


def test_the_fast_paths_are_in_use():
    """On CPython the C encoders and scanner are there: otherwise the tests below compare the stdlib with itself."""
    assert wire_json._c_encode is not None and wire_json._c_encode_lenient is not None and wire_json._scan is not None


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_encode_is_the_stdlib_encoders_byte_for_byte(value):
    assert wire_json.encode(value) == REFERENCE.encode(value)


@settings(max_examples=300, deadline=None)
@given(json_values, st.sampled_from(["", " ", "\n\t "]), st.sampled_from(["", " ", "\r\n"]))
def test_decode_is_json_loads(value, before, after):
    text = before + REFERENCE.encode(value) + after
    assert outcome(wire_json.decode, text) == outcome(json.loads, text)


@pytest.mark.parametrize("value", [float("nan"), {"a": float("inf")}, [-math.inf], {"a": object()}, {"a": b"x"},
                                   {(1,): 2}, "plain string", {1: True, None: 2.5}])
def test_encode_refuses_what_the_stdlib_refuses_with_the_same_error(value):
    assert outcome(wire_json.encode, value) == outcome(REFERENCE.encode, value)


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20))
def test_encode_lenient_is_the_stdlib_encoders_with_nan_and_reads_back(value):
    """The worker link's encoder: NaN and infinities written as json.dumps writes them, and decoded back."""
    text = wire_json.encode_lenient(value)
    assert text == LENIENT.encode(value)
    assert repr(wire_json.decode(text)) == repr(json.loads(text))


@pytest.mark.parametrize("value", [{"a": object()}, {"a": b"x"}, {(1,): 2}, "plain string", {1: True, None: 2.5}])
def test_encode_lenient_refuses_what_the_stdlib_refuses_with_the_same_error(value):
    assert outcome(wire_json.encode_lenient, value) == outcome(LENIENT.encode, value)


def test_cycles_and_too_deep_nesting_are_value_errors():
    cyclic: dict = {}
    cyclic["self"] = cyclic
    deep: list = []
    inner = deep
    for _ in range(100_000):
        inner.append([])
        inner = inner[0]
    for value in (cyclic, deep):
        for encode in (wire_json.encode, wire_json.encode_lenient):
            with pytest.raises(ValueError):
                encode(value)
    assert wire_json.encode({"after": [1]}) == '{"after":[1]}'  # nothing left over from the failures
    assert wire_json.encode_lenient({"after": [1]}) == '{"after":[1]}'


@pytest.mark.parametrize("text", ["", " ", "{", "{}x", '{"a":1} {}', "[1,]", "nul", '{"a":"\\x"}', "\x00", "{} \x00",
                                  "NaN", '{"a":Infinity}', "[" * 100_000])
def test_decode_of_odd_input_is_json_loads(text):
    """Errors (same type and message) and the stdlib's leniencies (NaN, Infinity) alike."""
    assert repr(outcome(wire_json.decode, text)) == repr(outcome(json.loads, text))


ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")


def test_header_dates_are_iso_utc_microseconds_and_now():
    before = datetime.now(timezone.utc)
    dates = [utcnow_iso() for _ in range(2000)]
    time.sleep(1.01)  # across a second boundary: the cached second moves on
    dates.append(utcnow_iso())
    after = datetime.now(timezone.utc)
    assert all(ISO_UTC.fullmatch(d) for d in dates), dates[:3]
    parsed = [datetime.fromisoformat(d) for d in dates]
    assert parsed == sorted(parsed)
    assert before - timedelta(milliseconds=1) <= parsed[0] and parsed[-1] <= after + timedelta(milliseconds=1)
    assert parsed[-1] - parsed[0] >= timedelta(seconds=1)


def test_recv_bounded_without_a_message_and_noblock_raises_again():
    """The server reads the first request of a wake-up without asking the socket again, NOBLOCK:
    a wake-up with nothing to read must cost a zmq.Again, never a blocked server."""
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        pull.bind("inproc://bounded")
        push.connect("inproc://bounded")
        with pytest.raises(zmq.Again):
            recv_bounded(pull, 8, 1 << 20, zmq.NOBLOCK)
        push.send_multipart([b"a", b"bb"])
        assert pull.poll(5000)
        frames, size, complete = recv_bounded(pull, 8, 1 << 20, zmq.NOBLOCK)
        assert [f.bytes for f in frames] == [b"a", b"bb"] and size == 3 and complete
    finally:
        pull.close(0)
        push.close(0)
        ctx.term()
