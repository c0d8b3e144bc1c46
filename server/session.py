"""The Agent service: one long-lived Session stream per connected agent.

    agent                                   server
    Hello(name, facts, applied revision,
          losses not yet recorded)       ->  (losses stored, each id once)
                                         <- Welcome(latest revision, losses recorded)
                                         <- SignedCatalog (if the agent is behind)
    CatalogAck(revision, accepted)       ->  (for every catalog: verified and cached, or not)
    Report(id, results)                  ->
                                         <- Ack(id)        (after the report is stored)
                                         <- SignedCatalog  (whenever the operator pushes)
    Heartbeat                            ->  (every HEARTBEAT_INTERVAL_S, whatever else is sent)
    RenewRequest(CSR)                    ->  (once its certificate is in its last third)
                                         <- Renewed(certificate)  (server.renewal)

The caller's name comes from its certificate (server.auth); a hello or report
naming anyone else ends the stream with PERMISSION_DENIED.

A node has one live session (server.hub): a newer one ends it with ABORTED.
It also ends, with UNAUTHENTICATED and a message saying what to do, the
moment its certificate may no longer be used: when the node is revoked,
removed or enrolled anew (server.hub: ``Hub.recheck``), and at the
certificate's notAfter, which the session schedules when it starts.

Liveness: one sweeper looks at every live stream every SWEEP_S seconds and
ends those from which nothing at all arrived for SILENT_LIMIT_S (a
heartbeat interval and a grace), so a frozen agent (SIGSTOP, a hung host, a
cut cable) stops counting as connected within DEAD_AFTER_S; HTTP/2
keepalive (server.app) catches a dead transport within 20 s as well. The
server sends no heartbeats of its own: agents notice a dead server by
keepalive, and a fleet's worth of server heartbeats would cost the server
as much as its pushes.

Limits on one node: one live session; one certificate renewed per session; and
reports (and renewal requests) read at REPORT_RATE a second after a burst of
REPORT_BURST. A node that sends faster is not refused (its reports are
real) but read more slowly: its stream's flow control then holds its agent
back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from protos import plumb_pb2 as pb
from protos import plumb_pb2_grpc as pb_grpc
from server.auth import PeerCert, Refusal, caller_certificate, expired
from server.cliviews import loss_phrase
from server.errors import IngestFailed
from server.fleet import Fleet
from server.given import GivenCatalogs, believed
from server.hub import CLOSE, Hub
from server.ingest import Ingestor
from server.presence import PresenceLog
from server.ratelimit import Buckets
from server.renewal import NodeRenewals
from server.store import Store
from server.wire import agent_time, conditions_record, report_record, state_loss_record

log = logging.getLogger("plumb.server.session")

#: Seconds between an agent's heartbeats; the Welcome tells the agent.
HEARTBEAT_INTERVAL_S = 15.0
#: A stream silent for longer than this is dead: an interval and a grace.
SILENT_LIMIT_S = HEARTBEAT_INTERVAL_S + 5.0
#: How often the sweeper looks.
SWEEP_S = 5.0
#: The documented bound: a silent agent is seen as gone within this many seconds.
DEAD_AFTER_S = SILENT_LIMIT_S + SWEEP_S
#: Losses recorded from one hello; an agent with more sends the rest next time.
MAX_LOSSES_PER_HELLO = 100
#: Reports one node may send: a burst (a spool emptied after an outage), then so many a second.
REPORT_BURST = 500
REPORT_RATE = 50.0


class _Refused(Exception):
    """The agent sent something it may not; ends its stream with this message."""


class AgentServicer(pb_grpc.AgentServicer):  # type: ignore[misc]
    def __init__(
        self,
        store: Store,
        fleet: Fleet,
        hub: Hub,
        ingestor: Ingestor,
        presence: PresenceLog,
        renewals: NodeRenewals | None = None,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
        trusted_ca_pem: bytes = b"",
        given: GivenCatalogs | None = None,
    ) -> None:
        """``renewals``: how node certificates are renewed (None: they are not);
        ``trusted_ca_pem``: the CA certificates agents are to trust (server/ca.py)."""
        self.store = store
        self.fleet = fleet
        self.hub = hub
        self.ingestor = ingestor
        self.given = given or GivenCatalogs(store)
        self.presence = presence
        self.heartbeat_interval_s = heartbeat_interval_s
        self.renewals = renewals
        self.trusted_ca_pem = trusted_ca_pem
        self.report_rate = Buckets(REPORT_RATE, REPORT_BURST)
        self._live: dict[asyncio.Queue[Any], tuple[str, _Stream]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the sweeper that ends silent streams (see the module docstring)."""
        self._sweeper = asyncio.create_task(self._sweep(), name="plumb-session-sweeper")

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_S)
            now = loop.time()
            for outbox, (name, heard) in list(self._live.items()):
                silent = now - heard.at
                if silent > SILENT_LIMIT_S:
                    log.warning("session of %s: nothing heard for %.0f s; ending it", name, silent)
                    del self._live[outbox]
                    outbox.put_nowait(CLOSE)

    async def Session(
        self, requests: AsyncIterator[pb.AgentMessage], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ServerMessage]:
        peer = caller_certificate()
        name = peer.identity.name
        hello = await _first_hello(requests, name, context)
        if self.renewals is not None:
            # Before attaching: a session still open with the certificate this
            # one retires is ended by the store's change, not left to compete.
            await self.renewals.in_use(peer, context.peer())
        outbox = self.hub.attach(name, peer)
        heard = _Stream(conditions_record(hello.conditions), peer, context.peer())
        self._live[outbox] = (name, heard)
        reader: asyncio.Task[None] | None = None
        # Ends the stream when the certificate does; the TLS layer looked only at the handshake.
        expiry = asyncio.get_running_loop().call_later(
            max(0.0, peer.not_after - time.time()), self.hub.end, name, outbox, expired(peer)
        )
        try:
            # Again, now that the session is one the hub would end: the
            # interceptor's check may be older than a revocation made while the
            # hello was awaited, whose recheck found no session to end.
            if not await self.hub.recheck(name):
                # Greet before reading on: if the agent half-closes right after its
                # hello, the welcome must still be queued ahead of the end of stream.
                await self._greet(hello, name, outbox, heard)
                reader = asyncio.create_task(self._read(requests, name, outbox, heard))
            async for message in _drain(outbox):
                if isinstance(message, Refusal):
                    _log_end(name, message)
                    await context.abort(message.code, message.message)
                yield message
        finally:
            expiry.cancel()
            if reader is not None:
                reader.cancel()
            self._live.pop(outbox, None)
            self.hub.detach(name, outbox)
            self.presence.seen(name)

    async def _greet(
        self, hello: pb.Hello, name: str, outbox: asyncio.Queue[Any], stream: _Stream
    ) -> None:
        now = time.time()
        # Latency makes the agent look behind by a few milliseconds: nothing a
        # clock worth warning about (a minute off, an hour off) is hidden by it.
        sent_at = agent_time(hello.sent_at)
        offset = sent_at - now if sent_at else None
        self.presence.seen(
            name,
            hello.applied_revision,
            hello.facts,
            offset,
            stream.conditions,
            hello.run_interval_s,
        )
        recorded = await self._record_losses(name, hello.losses) if hello.losses else []
        catalog = await asyncio.to_thread(self.fleet.signed_catalog, name, dict(hello.facts))
        last_sequence = await asyncio.to_thread(self.store.last_sequence, name)
        latest = catalog.revision if catalog is not None else 0
        welcome = pb.Welcome(
            latest_revision=latest,
            heartbeat_interval_s=self.heartbeat_interval_s,
            last_sequence=last_sequence,
            server_time=time.time(),
            recorded_losses=recorded,
            renew_within_s=self.renewals.renew_within_s(stream.peer) if self.renewals else 0.0,
            trusted_ca_pem=self.trusted_ca_pem,
        )
        outbox.put_nowait(pb.ServerMessage(welcome=welcome))
        if catalog is not None and _not_applied(catalog, hello):
            outbox.put_nowait(pb.ServerMessage(catalog=catalog))

    async def _record_losses(self, name: str, losses: Sequence[pb.StateLoss]) -> list[str]:
        """Store what the agent lost of its own state (each id once); the ids stored.

        Before the welcome, which tells the agent which it may stop sending.
        """
        rows = [state_loss_record(name, loss) for loss in losses[:MAX_LOSSES_PER_HELLO] if loss.id]
        recorded = await asyncio.to_thread(self.store.record_state_losses, rows, time.time())
        for row in rows:
            log.warning("node %s lost %s: %s", name, loss_phrase(row.what, row.count), row.detail)
        return recorded

    async def _read(
        self,
        requests: AsyncIterator[pb.AgentMessage],
        name: str,
        outbox: asyncio.Queue[Any],
        heard: _Stream,
    ) -> None:
        try:
            async for message in requests:
                heard.now()
                await self._handle(message, name, outbox, heard)
        except _Refused as exc:
            outbox.put_nowait(Refusal(grpc.StatusCode.PERMISSION_DENIED, str(exc)))
            return
        except IngestFailed as exc:  # not acked: the agent resends it on its next session
            log.info("session of %s ended: %s", name, exc)
        except Exception:  # the stream broke: the agent reconnects and resends
            log.debug("session of %s ended", name, exc_info=True)
        outbox.put_nowait(CLOSE)

    async def _handle(
        self, message: pb.AgentMessage, name: str, outbox: asyncio.Queue[Any], stream: _Stream
    ) -> None:
        kind = message.WhichOneof("kind")
        if kind == "heartbeat":
            # Written only when they changed: most heartbeats of a fleet say "alive" and no more.
            said = conditions_record(message.heartbeat.conditions)
            if said != stream.conditions:
                stream.conditions = said
                self.presence.seen(name, conditions=said)
            return
        if kind == "catalog_ack":
            self.hub.catalog_acked(name, message.catalog_ack)
            return
        if kind == "dry_run_result":
            self.hub.dry_run_answered(name, message.dry_run_result)
            return
        if kind == "renew":
            outbox.put_nowait(pb.ServerMessage(renewed=await self._renew(message.renew, stream)))
            return
        if kind != "report":
            raise _Refused(
                "only reports, catalog acknowledgements, heartbeats and renewals follow the hello"
            )
        wait = self.report_rate.take(name)
        if wait:
            if not stream.throttled:
                stream.throttled = True
                log.warning(
                    "node %s sends reports faster than %g a second (after a burst of %d): "
                    "reading them at that rate",
                    name,
                    REPORT_RATE,
                    REPORT_BURST,
                )
            await asyncio.sleep(wait)
        report = message.report
        if report.node_name != name:
            raise _Refused(f"node {name!r} may not report as {report.node_name!r}")
        given = await self.given.of(name, report.revision)
        if given is None:
            log.warning(
                "report %s of node %s is of revision %d, which it was never given: not stored",
                report.id,
                name,
                report.revision,
            )
            outbox.put_nowait(pb.ServerMessage(ack=pb.Ack(report_id=report.id)))
            return
        report, dropped = believed(report, given)
        if dropped:
            log.warning(
                "report %s of node %s names %d resource(s) not in its catalog at revision %d "
                "(%s): dropped",
                report.id,
                name,
                len(dropped),
                report.revision,
                ", ".join(dropped[:5]),
            )
        # Inline on purpose: ~0.2 ms of Python that holds the GIL wherever it
        # runs, so a thread would only add the cost of handing it over.
        record = report_record(report)
        # Acked only once committed: the agent deletes an acked report from its spool.
        await self.ingestor.submit(record)
        outbox.put_nowait(pb.ServerMessage(ack=pb.Ack(report_id=report.id)))
        self.hub.reported(name, report)

    async def _renew(self, request: pb.RenewRequest, stream: _Stream) -> pb.Renewed:
        if self.renewals is None:
            return pb.Renewed(error="this server does not renew certificates over the session")
        if stream.renewed:
            return pb.Renewed(error="one renewal per session: reconnect with the new certificate")
        # A CSR costs a signature: as a report does, it takes from the node's allowance.
        wait = self.report_rate.take(stream.peer.identity.name)
        if wait:
            await asyncio.sleep(wait)
        answer = await self.renewals.renew(stream.peer, request.csr_pem, stream.source)
        stream.renewed = not answer.error
        return answer


async def _first_hello(
    requests: AsyncIterator[pb.AgentMessage], name: str, context: grpc.aio.ServicerContext[Any, Any]
) -> pb.Hello:
    first = await anext(aiter(requests), None)
    if first is None or not first.HasField("hello"):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "a session starts with a hello")
    assert first is not None
    if first.hello.node_name != name:
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"node {name!r} may not open a session as {first.hello.node_name!r}",
        )
    return first.hello


def _log_end(name: str, refusal: Refusal) -> None:
    if refusal.code == grpc.StatusCode.ABORTED:
        log.info("session of %s: %s", name, refusal.message)
    else:
        log.warning("session of %s ended: %s", name, refusal.message)


class _Stream:
    """What the server keeps of one agent's stream: when anything last arrived
    on it (event-loop time), the conditions the agent last said, the
    certificate it was opened with and from where, and what it has used of
    its limits."""

    def __init__(self, conditions: list[dict[str, Any]], peer: PeerCert, source: str) -> None:
        self.at = asyncio.get_running_loop().time()
        self.conditions = conditions
        self.peer = peer
        self.source = source
        self.renewed = False  # a renewal was asked for on it
        self.throttled = False  # its reports were read more slowly (logged once)

    def now(self) -> None:
        self.at = asyncio.get_running_loop().time()


async def _drain(outbox: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    while (message := await outbox.get()) is not CLOSE:
        yield message


def _not_applied(catalog: pb.SignedCatalog, hello: pb.Hello) -> bool:
    """Whether the node's agent has some other catalog than ``catalog``.

    An older agent says only its revision; a newer one also the digest,
    which tells a catalog compiled again at the same revision apart.
    """
    if catalog.revision != hello.applied_revision:
        return True
    return bool(hello.applied_sha256) and (
        hashlib.sha256(catalog.payload).hexdigest() != hello.applied_sha256
    )
