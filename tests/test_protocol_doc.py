"""docs/protocol.md's worked signing examples match the implementation.

The spec is normative for clients in other languages; if the signing code
or the examples drift apart, this fails.
"""

from __future__ import annotations

import json
import re

from helpers import ROOT
from zmqruntime.protocol import buffer_digest, compute_signature

DOC = (ROOT / "docs" / "protocol.md").read_text()
KEY = b"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"


def test_control_request_example():
    section = DOC.split("### 3.4 Worked example", 1)[1]
    header = re.search(r"header  \(179 bytes\):\n(\{.*?\})\n", section).group(1).encode()
    content = re.search(r"content \(107 bytes\):\n(\{.*?\})\n", section).group(1).encode()
    expected = re.search(r"signature = ([0-9a-f]{64})", section).group(1).encode()
    assert buffer_digest(b"hello, buffer").hex() in section
    assert compute_signature(KEY, b"", header, content, [buffer_digest(b"hello, buffer")]) == expected


def test_blake3_scheme_example():
    """§3.5: the §3.4 request signed under the blake3 scheme."""
    from zmqruntime.protocol import BLAKE3, blake3_key

    example = DOC.split("### 3.4 Worked example", 1)[1]
    header = re.search(r"header  \(179 bytes\):\n(\{.*?\})\n", example).group(1).encode()
    content = re.search(r"content \(107 bytes\):\n(\{.*?\})\n", example).group(1).encode()
    section = DOC.split("### 3.5 The blake3 scheme", 1)[1].split("### 3.6", 1)[0]
    digest = buffer_digest(b"hello, buffer", BLAKE3)
    assert blake3_key(KEY).hex() in section and digest.hex() in section
    assert buffer_digest(b"", BLAKE3).hex() in section
    expected = re.search(r"blake3 signature = ([0-9a-f]{64})", section).group(1).encode()
    assert compute_signature(KEY, b"", header, content, [digest], BLAKE3) == expected


def test_data_channel_event_example():
    section = DOC.split("A data-channel event, topic `", 1)[1]
    topic = section.split("`", 1)[0].encode()
    header = re.search(r"header  \(\d+ bytes\): (\{.*?\})\n", section).group(1).encode()
    content = re.search(r"content \(\d+ bytes\): (\{.*?\})\n", section).group(1).encode()
    expected = re.search(r"signature = ([0-9a-f]{64})", section).group(1).encode()
    assert topic.endswith(b".status")
    assert compute_signature(KEY, topic, header, content, []) == expected


def test_the_client_checklist_comes_first():
    head = DOC.split("Contents", 1)[0]
    assert "## Client checklist" in head and "MUST" in head and "SHOULD" in head


def test_the_doc_names_what_protocol_py_defines():
    from zmqruntime.protocol import EVENT_TYPES, PROGRESS_BATCH_TOPIC, PROGRESS_FIELDS, REQUEST_TYPES, STATES

    data_types = re.search(r"\| data \| (.*) \|", DOC).group(1)
    assert re.findall(r"`(\w+)`", data_types) == list(EVENT_TYPES)
    assert json.dumps(list(PROGRESS_FIELDS)) in DOC
    assert PROGRESS_BATCH_TOPIC == "progress_batch" and "progress.batch" not in DOC
    requests = re.search(r"\| control, requests \| (.*) \|", DOC).group(1)
    assert re.findall(r"`(\w+)`", requests) == list(REQUEST_TYPES)
    for state in STATES:
        assert f"`{state}`" in DOC


def test_the_execution_failed_example_is_what_the_server_sends(server):
    section = DOC.split("### 7.5 `results`", 1)[1].split("### 7.6", 1)[0]
    example = json.loads(re.search(r"```json\n(\{\"ok\": false, \"error\": \{\"code\": \"execution_failed\".*?)\n```",
                                   section, re.S).group(1))
    client = server.client
    exec_id = client.execute("x = 1\ny = 0\nx / y")
    client.wait(exec_id, timeout=30)
    sent = client._client.request("results", {"execution_id": exec_id}).content
    assert sent.keys() == example.keys() and sent["error"].keys() == example["error"].keys()
    assert sent["error"]["message"] == example["error"]["message"]
    assert sent["error"]["remote_error"].keys() == example["error"]["remote_error"].keys()
    tb, doc_tb = sent["error"]["remote_error"]["traceback"], example["error"]["remote_error"]["traceback"]
    assert tb[0] == doc_tb[0] and tb[-1] == doc_tb[-1]
    # the frame line (the caret line under it depends on the Python version)
    assert tb[1].splitlines()[0] == doc_tb[1].replace("7b92fd45002d", exec_id).splitlines()[0]
