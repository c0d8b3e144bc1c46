"""The agent's end of the Session stream.

A :class:`SessionClient` is one connection: it says hello, keeps the cached
catalog up to date as the server sends new ones (answering each with a
CatalogAck: verified and cached, or refused and why), sends spooled reports
and deletes them from the spool when acked. The daemon opens a new one
whenever the previous one broke; ``run --once`` opens one for the length of a
run.

The hello carries every loss of local state the server has not recorded yet
(agent/losses.py); the Welcome lists those it recorded. A spooled report
that does not parse is dropped (and counted as lost) rather than sent, so
one damaged row cannot break every session.

The agent sends a heartbeat every interval the server's Welcome names, so
the server can tell a frozen agent from an idle one; the agent notices a dead
server through HTTP/2 keepalive (agent.tls), and the daemon reconnects.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator

import grpc
from google.protobuf.message import DecodeError

from agent.cache import CatalogCache
from agent.errors import CatalogRejected
from agent.losses import SPOOLED_REPORTS
from agent.spool import Spool
from agent.state import Enrollment, StateDir
from agent.tls import secure_channel
from protos import plumb_pb2 as pb
from protos import plumb_pb2_grpc as pb_grpc

log = logging.getLogger("plumb.agent.session")

_FLUSH = object()  # send whatever the spool holds that this stream has not sent
_END = object()  # close our side of the stream
_HEARTBEAT = pb.AgentMessage(heartbeat=pb.Heartbeat())


class SessionClient:
    def __init__(
        self,
        state: StateDir,
        enrollment: Enrollment,
        cache: CatalogCache,
        spool: Spool,
        facts: dict[str, str],
        on_catalog: Callable[[pb.SignedCatalog], None],
    ) -> None:
        self.cache = cache
        self.spool = spool
        self.enrollment = enrollment
        self.facts = facts
        self.on_catalog = on_catalog
        self._channel = secure_channel(state, enrollment.server)
        self._outbox: queue.Queue[object] = queue.Queue()
        self._sent: set[str] = set()
        self.caught_up = threading.Event()  # welcome seen and any newer catalog cached
        self.alive = threading.Event()  # at least one message arrived on this stream
        self.ended = threading.Event()
        self._acked = threading.Condition()
        self.error: str = ""
        self._call: grpc.Call | None = None
        self._closed = threading.Event()
        #: cache.losses.generation when the hello was made; None before.
        self.hello_generation: int | None = None

    def start(self) -> None:
        stub = pb_grpc.AgentStub(self._channel)
        responses = stub.Session(self._requests())
        self._call = responses
        threading.Thread(
            target=self._read, args=(responses,), daemon=True, name="plumb-session"
        ).start()

    def flush(self) -> None:
        """Send every spooled report this stream has not sent yet."""
        self._outbox.put(_FLUSH)

    def wait_acked(self, timeout: float) -> bool:
        """Wait until the spool is empty (everything acknowledged) or the stream ended."""
        with self._acked:
            return self._acked.wait_for(
                lambda: self.ended.is_set() or self.spool.count() == 0, timeout
            )

    def close(self) -> None:
        self._closed.set()
        self._outbox.put(_END)
        if self._call is not None:
            self._call.cancel()
        self._channel.close()

    def _requests(self) -> Iterator[pb.AgentMessage]:
        # First the revision: a cached catalog that does not verify is set
        # aside right here, and that loss goes in this very hello.
        revision = self.cache.revision()
        self.hello_generation = self.cache.losses.generation
        yield pb.AgentMessage(
            hello=pb.Hello(
                node_name=self.enrollment.node,
                facts=self.facts,
                applied_revision=revision,
                agent_version=self.facts.get("agent_version", ""),
                losses=[loss.to_wire() for loss in self.cache.losses.pending()],
            )
        )
        yield from self._reports()
        while (item := self._outbox.get()) is not _END:
            if item is _FLUSH:
                yield from self._reports()
            elif isinstance(item, pb.AgentMessage):
                yield item

    def _reports(self) -> Iterator[pb.AgentMessage]:
        for report_id, body in self.spool.pending():
            if report_id not in self._sent:
                self._sent.add(report_id)
                try:
                    report = pb.Report.FromString(body)
                except DecodeError as exc:
                    self._unreadable(report_id, exc)
                    continue
                yield pb.AgentMessage(report=report)

    def _unreadable(self, report_id: str, exc: DecodeError) -> None:
        """Drop a spooled report that does not parse: sent, it would end every session."""
        log.error("spooled report %s does not parse (%s): dropped as lost", report_id, exc)
        self.spool.ack(report_id)
        detail = f"report {report_id} in the spool did not parse ({exc}); dropped"
        self.cache.losses.record(SPOOLED_REPORTS, 1, detail)

    def _read(self, responses: Iterator[pb.ServerMessage]) -> None:
        try:
            for message in responses:
                self.alive.set()
                self._handle(message)
        except grpc.RpcError as exc:
            self.error = _describe(exc)
        finally:
            self.ended.set()
            with self._acked:
                self._acked.notify_all()

    def _handle(self, message: pb.ServerMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "welcome":
            self.cache.losses.recorded(message.welcome.recorded_losses)
            if message.welcome.heartbeat_interval_s > 0:
                self._start_heartbeat(message.welcome.heartbeat_interval_s)
            if message.welcome.latest_revision == self.cache.revision():
                self.caught_up.set()
        elif kind == "catalog":
            self._catalog(message.catalog)
        elif kind == "ack":
            self.spool.ack(message.ack.report_id)
            with self._acked:
                self._acked.notify_all()

    def _catalog(self, signed: pb.SignedCatalog) -> None:
        try:
            self.cache.accept(signed)
        except CatalogRejected as exc:
            # Never apply what we cannot verify; keep enforcing the last good one.
            log.error("refused catalog revision %d: %s", signed.revision, exc)
            ack = pb.CatalogAck(revision=signed.revision, accepted=False, error=str(exc))
        else:
            self.on_catalog(signed)
            ack = pb.CatalogAck(revision=signed.revision, accepted=True)
        self._outbox.put(pb.AgentMessage(catalog_ack=ack))
        self.caught_up.set()

    def _start_heartbeat(self, interval_s: float) -> None:
        threading.Thread(
            target=self._heartbeat, args=(interval_s,), daemon=True, name="plumb-heartbeat"
        ).start()

    def _heartbeat(self, interval_s: float) -> None:
        """Tell the server this agent is alive, every interval, until the session ends."""
        while not self._closed.wait(interval_s) and not self.ended.is_set():
            self._outbox.put(_HEARTBEAT)


def _describe(exc: grpc.RpcError) -> str:
    if isinstance(exc, grpc.Call):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)
