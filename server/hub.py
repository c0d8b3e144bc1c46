"""Connected agents and their outboxes.

Each live Session stream owns an asyncio queue; anything put there (a new
catalog, an ack) is written to that stream, and a :class:`~server.auth.Refusal`
put there ends the stream with its status and message.

One live session per node. A second session of a node replaces the first,
which is ended with ABORTED ("replaced by a newer session of this node"): an
agent that reconnects after a connection broke without the server noticing
simply takes the dead stream's place, and a node can never hold thousands of
streams. (Two processes with one node's identity, a daemon and a `plumb-agent
run --once` beside it, take turns: the daemon waits before it comes back, see
agent/daemon.py.)

A live session ends as soon as its certificate may no longer be used:
:meth:`Hub.recheck` asks the node's credentials (server.auth) and ends it if
they refuse. The hub does that by itself whenever the store changes a node
(enrolled, revoked, removed: :meth:`Hub.watch`), and the session schedules
its own end at its certificate's expiry (server/session.py).

A catalog counts as delivered only when the agent says it verified and
cached it (a ``CatalogAck``), never because it was queued:
:meth:`Hub.deliver` sends catalogs and waits, for a bounded time, for those
acknowledgements.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Collection, Mapping
from typing import Any

import grpc

from protos import plumb_pb2 as pb
from server.auth import NodeCredentials, PeerCert, Refusal

# Put on an outbox to end that session's stream.
CLOSE = object()

#: What ends a node's session when another session of the node starts.
REPLACED = Refusal(grpc.StatusCode.ABORTED, "replaced by a newer session of this node")


@dataclasses.dataclass(frozen=True)
class _Live:
    outbox: asyncio.Queue[Any]
    peer: PeerCert  # the certificate the session was let in with


class Hub:
    def __init__(self, credentials: NodeCredentials | None = None) -> None:
        """``credentials``: what :meth:`recheck` asks; None: sessions are never rechecked."""
        self.credentials = credentials
        self._sessions: dict[str, _Live] = {}
        # (node, revision) -> futures of pushes waiting for that acknowledgement.
        self._awaiting: dict[tuple[str, int], list[asyncio.Future[pb.CatalogAck]]] = {}
        self._rechecks: set[asyncio.Task[int]] = set()
        self._reported: list[Callable[[str, pb.Report], None]] = []
        self._acknowledged: list[Callable[[float], None]] = []
        # node -> (revision, loop time) of the newest catalog sent to it: one per node.
        self._sent_at: dict[str, tuple[int, float]] = {}
        self._disconnected: list[Callable[[str], None]] = []
        # (node, dry run id) -> the plan waiting for that node's answer.
        self._dry_runs: dict[tuple[str, str], asyncio.Future[pb.DryRunResult]] = {}

    def watch(self) -> None:
        """Recheck a node's live session whenever the store changes the node (call on the loop)."""
        if self.credentials is None:
            return
        loop = asyncio.get_running_loop()

        def changed(node: str) -> None:  # in whichever thread committed the change
            loop.call_soon_threadsafe(self._recheck_soon, node)

        self.credentials.subscribe(changed)

    def attach(self, node: str, peer: PeerCert) -> asyncio.Queue[Any]:
        """A new session of ``node``: its outbox. The node's previous session is ended."""
        outbox: asyncio.Queue[Any] = asyncio.Queue()
        previous = self._sessions.get(node)
        self._sessions[node] = _Live(outbox, peer)
        if previous is not None:
            previous.outbox.put_nowait(REPLACED)
        return outbox

    def detach(self, node: str, outbox: asyncio.Queue[Any]) -> None:
        """The session of ``outbox`` ended; a newer session of the node stays."""
        live = self._sessions.get(node)
        if live is not None and live.outbox is outbox:
            del self._sessions[node]
            for listener in self._disconnected:
                listener(node)

    def listen(
        self, reported: Callable[[str, pb.Report], None], disconnected: Callable[[str], None]
    ) -> None:
        """Be told (on the loop) of each report a session stored, and of each node whose
        last session ended (a newer one replacing it is not an end)."""
        self._reported.append(reported)
        self._disconnected.append(disconnected)

    def on_acknowledged(self, listener: Callable[[float], None]) -> None:
        """Be told, for each catalog an agent accepted, the seconds since it was sent."""
        self._acknowledged.append(listener)

    def connected_count(self) -> int:
        return len(self._sessions)  # one read: safe from another thread (the metrics')

    def reported(self, node: str, report: pb.Report) -> None:
        """A session stored ``report`` of ``node``: tell the listeners."""
        for listener in self._reported:
            listener(node, report)

    def end(self, node: str, outbox: asyncio.Queue[Any], refusal: Refusal) -> bool:
        """End the session of ``outbox`` with ``refusal``; whether it was the node's live one.

        It stops counting as connected at once, before its stream has ended.
        """
        outbox.put_nowait(refusal)
        live = self._sessions.get(node)
        self.detach(node, outbox)
        return live is not None and live.outbox is outbox

    async def recheck(self, node: str) -> int:
        """End ``node``'s live session if its certificate may no longer be used; how many ended."""
        live = self._sessions.get(node)
        if live is None or self.credentials is None:
            return 0
        refusal = await self.credentials.refusal(live.peer)
        if refusal is None:
            return 0
        return int(self.end(node, live.outbox, refusal))

    def _recheck_soon(self, node: str) -> None:
        task = asyncio.create_task(self.recheck(node), name=f"plumb-recheck-{node}")
        self._rechecks.add(task)  # held, or the loop may drop it unfinished
        task.add_done_callback(self._rechecks.discard)

    def live(self, node: str) -> object | None:
        """A token for the node's live session, to tell later whether it is still the one."""
        return self._sessions.get(node)

    def connected(self, node: str) -> bool:
        return node in self._sessions

    def connected_nodes(self) -> set[str]:
        return set(self._sessions)

    def send(self, node: str, message: Any) -> bool:
        """Queue ``message`` for the session of ``node``; False if it has none."""
        live = self._sessions.get(node)
        if live is not None:
            live.outbox.put_nowait(message)
        return live is not None

    def catalog_acked(self, node: str, ack: pb.CatalogAck) -> None:
        """An agent's answer to a catalog: wakes whoever waits for it."""
        sent = self._sent_at.get(node)
        if sent is not None and sent[0] == ack.revision:
            del self._sent_at[node]
            if ack.accepted:
                took = asyncio.get_running_loop().time() - sent[1]
                for listener in self._acknowledged:
                    listener(took)
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
            if node in wait_for and node in self._sessions:
                future: asyncio.Future[pb.CatalogAck] = loop.create_future()
                self._awaiting.setdefault((node, catalog.revision), []).append(future)
                waiting[node] = future
            if self.send(node, pb.ServerMessage(catalog=catalog)):
                self._sent_at[node] = (catalog.revision, loop.time())
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

    async def dry_run(
        self, requests: Mapping[str, pb.DryRun], wait_s: float
    ) -> dict[str, pb.DryRunResult]:
        """Ask each connected node to evaluate its candidate; the answers within ``wait_s``.

        Nodes without a live session are not asked and have no answer, nor
        have those slower than ``wait_s`` (their late answers are dropped).
        """
        loop = asyncio.get_running_loop()
        waiting: dict[str, asyncio.Future[pb.DryRunResult]] = {}
        for node, request in requests.items():
            if node not in self._sessions:
                continue
            future: asyncio.Future[pb.DryRunResult] = loop.create_future()
            self._dry_runs[(node, request.id)] = future
            waiting[node] = future
            self.send(node, pb.ServerMessage(dry_run=request))
        try:
            if waiting:
                await asyncio.wait(waiting.values(), timeout=wait_s)
        finally:
            for node, request in requests.items():
                self._dry_runs.pop((node, request.id), None)
        return {n: f.result() for n, f in waiting.items() if f.done() and not f.cancelled()}

    def dry_run_answered(self, node: str, result: pb.DryRunResult) -> None:
        """A node's answer to a dry run: wakes the plan that asked (a late one is dropped)."""
        future = self._dry_runs.get((node, result.id))
        if future is not None and not future.done():
            future.set_result(result)
