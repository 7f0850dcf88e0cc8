"""A server as it was before ``done_batch``: no session topic, no ``done_batch`` reply field.

The reference clients must still get every result from it (they follow
``<id>.done`` when the execute reply does not name ``done_batch``).
"""

from __future__ import annotations

from typing import Any

from zmqruntime import ExecutionServer


class PreBatchServer(ExecutionServer):
    def wanted_exactly(self, topic: bytes) -> bool:
        return False  # never sends a done_batch, nor counts its subscription in done_subscribed

    def _accept_execute(self, c: dict[str, Any], buffers: list[Any]) -> dict[str, Any]:
        reply = super()._accept_execute(c, buffers)
        reply.pop("done_batch", None)
        return reply
