"""The agent's end of the Session stream.

A :class:`SessionClient` is one connection: it says hello, keeps the cached
catalog up to date as the server sends new ones (answering each with a
CatalogAck: verified and cached, or refused and why), sends spooled reports
and deletes them from the spool when acked. The daemon opens a new one
whenever the previous one broke; ``run --once`` opens one for the length of a
run.

The Welcome also says the highest report sequence the server has stored for
this node (the spool numbers new reports above it, should it have lost its
own count) and the server's time: a clock more than CLOCK_WARN_S off is said
in the log and kept in ``clock.json`` for ``plumb-agent status`` (reports are
ordered by sequence, never by the clock, but an operator should know).

A report larger than any server takes (protos/limits.py) is set aside at
once; one the server refuses anyway (the stream ends with RESOURCE_EXHAUSTED
or INVALID_ARGUMENT while it was the largest one in flight) is counted by the
spool, which sends it last from then on and sets it aside after a few
refusals, so it can never block the reports behind it.

The hello carries every loss of local state the server has not recorded yet
(agent/losses.py); the Welcome lists those it recorded. A spooled report
that does not parse is dropped (and counted as lost) rather than sent, so
one damaged row cannot break every session.

The agent sends a heartbeat every interval the server's Welcome names, so
the server can tell a frozen agent from an idle one; the agent notices a dead
server through HTTP/2 keepalive (agent.tls), and the daemon reconnects. The
hello and every heartbeat carry the node's conditions (agent/conditions.py);
when they change, a heartbeat goes at once.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from agent.cache import CatalogCache
from agent.conditions import Condition
from agent.errors import CatalogRejected
from agent.losses import SPOOLED_REPORTS
from agent.renewal import CertificateRenewal
from agent.spool import Spool
from agent.state import Enrollment, StateDir, write_atomic
from agent.tls import secure_channel, usable_trust, verify_catalog
from modules.catalog import Catalog
from protos import plumb_pb2 as pb
from protos import plumb_pb2_grpc as pb_grpc
from protos.limits import MAX_MESSAGE_BYTES

log = logging.getLogger("plumb.agent.session")

_FLUSH = object()  # send whatever the spool holds that this stream has not sent
_END = object()  # close our side of the stream
#: How often the heartbeat thread looks whether the conditions changed.
CONDITIONS_CHECK_S = 1.0
#: A clock further off the server's than this is worth telling the operator.
CLOCK_WARN_S = 60.0
# Stream endings that mean the server will not take a message sent to it.
_REFUSALS = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)


class SessionClient:
    def __init__(
        self,
        state: StateDir,
        enrollment: Enrollment,
        cache: CatalogCache,
        spool: Spool,
        facts: dict[str, str],
        on_catalog: Callable[[pb.SignedCatalog], None],
        conditions: Callable[[], list[Condition]] | None = None,
        renewal: CertificateRenewal | None = None,
        dry_run: Callable[[Catalog], pb.Report] | None = None,
        run_interval_s: float = 0.0,
    ) -> None:
        """``conditions()``: what is wrong with the node now (the state dir's, by default);
        ``renewal``: renews the node's certificate when the server says it is due (None:
        this session does not; the daemon's does); ``dry_run(catalog)``: evaluates a
        candidate catalog without changing anything, for ``plumb plan`` (None: this
        session answers that it does not)."""
        self.dry_run = dry_run
        #: How often this agent runs by itself; 0: it does not (said in the hello).
        self.run_interval_s = run_interval_s
        self.conditions = conditions or state.conditions.current
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
        #: Set once caught up or ended, whichever comes first: what run --once waits on.
        self.settled = threading.Event()
        #: When the stream was opened, and whether the server acked a report on it:
        #: what tells a session that made progress from one the server only answered.
        self.started_at = time.monotonic()
        self.acked_any = False
        self._acked = threading.Condition()
        self.error: str = ""
        #: The server ended the stream because a newer session of this node
        #: started (ABORTED): another process with this identity, see agent/daemon.py.
        self.replaced = False
        self._call: grpc.Call | None = None
        self._closed = threading.Event()
        self._state = state
        self._in_flight: dict[str, int] = {}  # sent on this stream, not acked yet: id -> size
        self._lock = threading.Lock()
        #: cache.losses.generation when the hello was made; None before.
        self.hello_generation: int | None = None
        self.renewal = renewal
        self._renew_within_s = 0.0
        self._renewing = False  # a RenewRequest sent on this stream, not answered yet
        #: The certificate was renewed on this stream: the next one opens with it.
        self.renewed = False

    def start(self) -> None:
        self.started_at = time.monotonic()
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
        revision, digest = self.cache.applied()
        self.hello_generation = self.cache.losses.generation
        yield pb.AgentMessage(
            hello=pb.Hello(
                node_name=self.enrollment.node,
                facts=self.facts,
                applied_revision=revision,
                applied_sha256=digest,
                run_interval_s=self.run_interval_s,
                agent_version=self.facts.get("agent_version", ""),
                sent_at=time.time(),
                losses=[loss.to_wire() for loss in self.cache.losses.pending()],
                conditions=[c.to_wire() for c in self.conditions()],
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
            if report_id in self._sent:
                continue
            self._sent.add(report_id)
            if len(body) > MAX_MESSAGE_BYTES:
                why = f"larger than any server takes ({len(body)} bytes > {MAX_MESSAGE_BYTES})"
                self.spool.set_aside(report_id, why)
                log.error("report %s set aside: %s", report_id, why)
                continue
            try:
                report = pb.Report.FromString(body)
            except DecodeError as exc:
                self._unreadable(report_id, exc)
                continue
            with self._lock:
                self._in_flight[report_id] = len(body)
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
            if isinstance(exc, grpc.Call) and exc.code() in _REFUSALS:
                self._refused(self.error)
            self.replaced = isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.ABORTED
        finally:
            self.ended.set()
            self.settled.set()
            with self._acked:
                self._acked.notify_all()

    def _handle(self, message: pb.ServerMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "welcome":
            welcome = message.welcome
            self.cache.losses.recorded(welcome.recorded_losses)
            self.spool.at_least(welcome.last_sequence)
            if welcome.server_time:
                self._check_clock(welcome.server_time)
            if welcome.heartbeat_interval_s > 0:
                self._start_heartbeat(welcome.heartbeat_interval_s)
            if welcome.trusted_ca_pem:
                self._trust(welcome.trusted_ca_pem)
            self._renew_within_s = welcome.renew_within_s
            if self.renewal is not None:
                offset = time.time() - welcome.server_time if welcome.server_time else 0.0
                self.renewal.new_session(offset)
            self.renew_if_due()
            # Reports that waited in memory for a sequence number have one now.
            self.flush()
            if message.welcome.latest_revision == self.cache.revision():
                self._caught_up()
        elif kind == "catalog":
            self._catalog(message.catalog)
        elif kind == "dry_run":
            self._dry_run(message.dry_run)
        elif kind == "renewed":
            self._renewed(message.renewed)
        elif kind == "ack":
            self.acked_any = True
            self.spool.ack(message.ack.report_id)
            with self._lock:
                self._in_flight.pop(message.ack.report_id, None)
            with self._acked:
                self._acked.notify_all()

    def _dry_run(self, request: pb.DryRun) -> None:
        """Evaluate a candidate catalog, off this thread (a run may hold the runner), and
        answer; never cached, never applied. It is verified like any catalog: what an
        evaluation reads and reports back is the signer's to ask, no one else's."""

        def answer(**result: Any) -> None:
            message = pb.AgentMessage(dry_run_result=pb.DryRunResult(id=request.id, **result))
            self._outbox.put(message)

        if self.dry_run is None:
            answer(error="this agent session does not evaluate plans (a one-shot run)")
            return
        try:
            catalog = verify_catalog(
                request.catalog, self._state.ca.read_bytes(), self.enrollment.node
            )
        except (CatalogRejected, OSError) as exc:
            log.error("refused the plan's catalog: %s", exc)
            answer(error=f"the candidate catalog did not verify: {exc}")
            return
        evaluate = self.dry_run

        def run() -> None:
            try:
                answer(report=evaluate(catalog))
            except Exception as exc:
                log.exception("dry run for a plan failed")
                answer(error=f"the dry run failed: {exc}")

        threading.Thread(target=run, daemon=True, name="plumb-dry-run").start()

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
        self._caught_up()

    def _trust(self, bundle: bytes) -> None:
        """Trust the CAs the server trusts: what carries this node through a CA rollover.

        Said by the server this session authenticated with the CAs trusted so
        far, so it is the server's word; the next session uses it.
        """
        try:
            if self._state.ca.read_bytes() == bundle:
                return
        except OSError:
            pass  # written anew below
        why = usable_trust(bundle)
        if why is not None:
            log.error("the server's CA certificates cannot be trusted (%s): kept the old ones", why)
            return
        try:
            write_atomic(self._state.ca, bundle)
        except OSError as exc:
            log.warning("cannot save the server's CA certificates (%s): next session", exc)
            return
        log.info(
            "this node now trusts %d CA certificate(s), as the server does",
            bundle.count(b"BEGIN CERTIFICATE"),
        )

    def renew_if_due(self) -> None:
        """Ask for a renewed certificate if it is due and not asked for on this stream yet."""
        if self.renewal is None:
            return
        with self._lock:  # the reading thread and the heartbeat's both ask
            if self._renewing or self.renewed or not self.renewal.due(self._renew_within_s):
                return
            self._renewing = True
        self._outbox.put(pb.AgentMessage(renew=self.renewal.request()))

    def _renewed(self, answer: pb.Renewed) -> None:
        self._renewing = False
        if self.renewal is None or not self.renewal.accept(answer):
            return
        # Done with this stream: reports not acked yet are resent on the next,
        # which the daemon opens at once, with the new certificate.
        self.renewed = True
        self._outbox.put(_END)

    def _caught_up(self) -> None:
        self.caught_up.set()
        self.settled.set()

    def made_progress(self, stable_s: float) -> bool:
        """Whether the server took a report on this stream, or it stayed up ``stable_s``.

        A server that answers but cannot store reports must not reset the
        agent's back-off: it would be hammered with reconnects.
        """
        return self.acked_any or time.monotonic() - self.started_at >= stable_s

    def _refused(self, why: str) -> None:
        """The server would not take what was sent: blame the largest report in flight."""
        with self._lock:
            culprit = max(self._in_flight, key=self._in_flight.__getitem__, default=None)
        if culprit is None:
            return
        if self.spool.refused(culprit, why):
            log.error(
                "report %s set aside: the server refused it again and again (%s)", culprit, why
            )
        else:
            log.warning("the server refused report %s (%s); it goes last from now on", culprit, why)

    def _check_clock(self, server_time: float) -> None:
        offset = time.time() - server_time
        clock = {"offset_s": round(offset, 3), "checked_at": time.time()}
        if abs(offset) > CLOCK_WARN_S:
            way = "ahead of" if offset > 0 else "behind"
            log.warning(
                "this host's clock is %.0f s %s the server's: reports are ordered by "
                "sequence, not by time, but check NTP on this host",
                abs(offset),
                way,
            )
        self._state.keep(self._state.clock, json.dumps(clock).encode())

    def _start_heartbeat(self, interval_s: float) -> None:
        threading.Thread(
            target=self._heartbeat, args=(interval_s,), daemon=True, name="plumb-heartbeat"
        ).start()

    def _heartbeat(self, interval_s: float) -> None:
        """Tell the server this agent is alive every interval, and its conditions when they change.

        While the node is not well (or reports wait in memory), and when that
        changes, a heartbeat also flushes: reports a full state dir kept in
        memory, or that it could not read, go out even when no run comes to say
        so. A node that is well reads its spool only when a run asks.
        """
        said = self.conditions()
        due = time.monotonic() + interval_s
        while not self._closed.wait(min(CONDITIONS_CHECK_S, interval_s)):
            if self.ended.is_set():
                return
            self.renew_if_due()
            now, conditions = time.monotonic(), self.conditions()
            if now >= due or conditions != said:
                beat = pb.Heartbeat(conditions=[c.to_wire() for c in conditions])
                self._outbox.put(pb.AgentMessage(heartbeat=beat))
                if conditions or conditions != said or self.spool.in_memory():
                    self.flush()
                said, due = conditions, now + interval_s


def _describe(exc: grpc.RpcError) -> str:
    if isinstance(exc, grpc.Call):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)
