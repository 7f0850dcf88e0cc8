"""docs/protocol.md's worked signing examples match the implementation.

The spec is normative for clients in other languages; if the signing code
or the examples drift apart, this fails.
"""

from __future__ import annotations

import re

from zmqruntime.protocol import buffer_digest, compute_signature
from conftest import ROOT

DOC = (ROOT / "docs" / "protocol.md").read_text()
KEY = b"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"


def test_control_request_example():
    section = DOC.split("### 3.4 Worked example", 1)[1]
    header = re.search(r"header  \(179 bytes\):\n(\{.*?\})\n", section).group(1).encode()
    content = re.search(r"content \(107 bytes\):\n(\{.*?\})\n", section).group(1).encode()
    expected = re.search(r"signature = ([0-9a-f]{64})", section).group(1).encode()
    assert buffer_digest(b"hello, buffer").hex() in section
    assert compute_signature(KEY, b"", header, content, [buffer_digest(b"hello, buffer")]) == expected


def test_data_channel_event_example():
    section = DOC.split("A data-channel event, topic `", 1)[1]
    topic = section.split("`", 1)[0].encode()
    header = re.search(r"header  \(\d+ bytes\): (\{.*?\})\n", section).group(1).encode()
    content = re.search(r"content \(\d+ bytes\): (\{.*?\})\n", section).group(1).encode()
    expected = re.search(r"signature = ([0-9a-f]{64})", section).group(1).encode()
    assert topic.endswith(b".status")
    assert compute_signature(KEY, topic, header, content, []) == expected
