"""Connected agents and their outboxes.

Each live Session stream owns an asyncio queue; anything put there (a new
catalog, an ack) is written to that stream. A node may hold more than one
session at a time (its daemon and a `plumb-agent run --once` beside it), so
a push goes to every live session of the node.

A catalog counts as delivered only when the agent says it verified and
cached it (a ``CatalogAck``), never because it was queued:
:meth:`Hub.deliver` sends catalogs and waits, for a bounded time, for those
acknowledgements.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from typing import Any

from protos import plumb_pb2 as pb

# Put on an outbox to end that session's stream.
CLOSE = object()


class Hub:
    def __init__(self) -> None:
        self._outboxes: dict[str, list[asyncio.Queue[Any]]] = {}
        # (node, revision) -> futures of pushes waiting for that acknowledgement.
        self._awaiting: dict[tuple[str, int], list[asyncio.Future[pb.CatalogAck]]] = {}

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

    def catalog_acked(self, node: str, ack: pb.CatalogAck) -> None:
        """An agent's answer to a catalog: wakes whoever waits for it."""
        for future in self._awaiting.pop((node, ack.revision), []):
            if not future.done():
                future.set_result(ack)

    async def deliver(
        self,
        catalogs: Mapping[str, pb.SignedCatalog],
        wait_for: Collection[str],
        wait_s: float,
    ) -> dict[str, pb.CatalogAck]:
        """Send each node its catalog; the acknowledgements of ``wait_for`` within ``wait_s``.

        Nodes without a live session are not sent anything (they get the
        catalog when they connect) and have no acknowledgement.
        """
        waiting: dict[str, asyncio.Future[pb.CatalogAck]] = {}
        loop = asyncio.get_running_loop()
        for node, catalog in catalogs.items():
            if node in wait_for and node in self._outboxes:
                future: asyncio.Future[pb.CatalogAck] = loop.create_future()
                self._awaiting.setdefault((node, catalog.revision), []).append(future)
                waiting[node] = future
            self.send(node, pb.ServerMessage(catalog=catalog))
        if waiting:
            await asyncio.wait(waiting.values(), timeout=wait_s)
        for node, future in waiting.items():
            if not future.done():
                future.cancel()
                revision = catalogs[node].revision
                pending = self._awaiting.get((node, revision), [])
                if future in pending:
                    pending.remove(future)
                if not pending:
                    self._awaiting.pop((node, revision), None)
        return {
            node: future.result()
            for node, future in waiting.items()
            if future.done() and not future.cancelled()
        }
