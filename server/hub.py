"""Connected agents and their outboxes.

Each live Session stream owns an asyncio queue; anything put there (a new
catalog, an ack) is written to that stream. A node may hold more than one
session at a time (its daemon and a `plumb-agent run --once` beside it), so
a push goes to every live session of the node.
"""

from __future__ import annotations

import asyncio
from typing import Any

# Put on an outbox to end that session's stream.
CLOSE = object()


class Hub:
    def __init__(self) -> None:
        self._outboxes: dict[str, list[asyncio.Queue[Any]]] = {}

    def attach(self, node: str) -> asyncio.Queue[Any]:
        outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._outboxes.setdefault(node, []).append(outbox)
        return outbox

    def detach(self, node: str, outbox: asyncio.Queue[Any]) -> None:
        boxes = self._outboxes.get(node, [])
        if outbox in boxes:
            boxes.remove(outbox)
        if not boxes:
            self._outboxes.pop(node, None)

    def connected(self, node: str) -> bool:
        return node in self._outboxes

    def connected_nodes(self) -> set[str]:
        return set(self._outboxes)

    def send(self, node: str, message: Any) -> bool:
        """Queue ``message`` for every session of ``node``; False if it has none."""
        boxes = self._outboxes.get(node, [])
        for outbox in boxes:
            outbox.put_nowait(message)
        return bool(boxes)
