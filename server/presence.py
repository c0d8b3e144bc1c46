"""When each node was last heard from, and what its hello said, written in batches.

A hello used to cost a committed, fsynced write: in a reconnect storm of a
thousand agents, a thousand fsyncs before the last of them is greeted.
Presence is advisory (nothing is acknowledged on the strength of it), so it
is gathered in memory and written once a second in one transaction, and once
more when the server stops. Reports are not presence: they go through the
group-commit ingestor and are durable before their ack.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from server.store import NodeSeen, Store

log = logging.getLogger("plumb.server.presence")

FLUSH_INTERVAL_S = 1.0


class PresenceLog:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self._pending: dict[str, NodeSeen] = {}
        self._task: asyncio.Task[None] | None = None

    def seen(
        self,
        node: str,
        applied_revision: int | None = None,
        facts: Mapping[str, str] | None = None,
        clock_offset_s: float | None = None,
        conditions: list[dict[str, Any]] | None = None,
        run_interval_s: float | None = None,
    ) -> None:
        """Note that ``node`` was heard from now (and, from a hello, what it said).

        ``conditions``: what it now says is wrong with it (a hello, or a
        heartbeat that changed them); None: as before.
        """
        before = self._pending.get(node, NodeSeen(0.0))
        self._pending[node] = NodeSeen(
            last_seen=self.clock(),
            # A later bare "seen" (a report, a disconnect) keeps what the hello said.
            applied_revision=before.applied_revision
            if applied_revision is None
            else applied_revision,
            facts=before.facts if facts is None else dict(facts),
            clock_offset_s=before.clock_offset_s if clock_offset_s is None else clock_offset_s,
            conditions=before.conditions if conditions is None else conditions,
            run_interval_s=before.run_interval_s if run_interval_s is None else run_interval_s,
        )

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        if pending:
            await asyncio.to_thread(self.store.nodes_seen, pending)

    def start(self, interval_s: float = FLUSH_INTERVAL_S) -> None:
        self._task = asyncio.create_task(self._every(interval_s), name="plumb-presence")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.flush()

    async def _every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.flush()
            except Exception:  # presence is advisory: log, keep the server serving
                log.exception("recording node presence failed")
