"""The Admin service: what the operator CLI calls (operator certificate only)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import grpc

from protos import plumb_pb2 as pb
from protos import plumb_pb2_grpc as pb_grpc
from protos.limits import MAX_PUSH_BYTES
from server import tokens
from server.compliance import Tally
from server.errors import UnknownNode
from server.fleet import Fleet, PushOutcome
from server.hub import Hub
from server.store import DriftRow, NodeRow, Revocation, StateLossRow, Store
from server.wire import STATUS_TO_PB, conditions_to_pb, report_from_body, state_loss_to_pb

DEFAULT_TOKEN_TTL_S = 3600
MAX_TOKEN_TTL_S = 30 * 24 * 3600
MAX_TOKEN_USES = 100_000
DEFAULT_DRIFT_LIMIT = 100
MAX_DRIFT_LIMIT = 10_000

#: How long a push waits, by default and at most, for targeted connected nodes
#: to acknowledge the new catalog before it answers.
DEFAULT_PUSH_WAIT_S = 5.0
MAX_PUSH_WAIT_S = 60.0


class AdminServicer(pb_grpc.AdminServicer):  # type: ignore[misc]
    def __init__(
        self, store: Store, fleet: Fleet, hub: Hub, ca_fingerprint: str, enroll_address: str
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.hub = hub
        self.ca_fingerprint = ca_fingerprint
        self.enroll_address = enroll_address

    async def CreateToken(
        self, request: pb.CreateTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateTokenResponse:
        if request.ttl_s > MAX_TOKEN_TTL_S or request.uses > MAX_TOKEN_USES:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a token lives at most {MAX_TOKEN_TTL_S} s and allows at most "
                f"{MAX_TOKEN_USES} uses (asked: {request.ttl_s} s, {request.uses} uses)",
            )
        token = tokens.new(self.ca_fingerprint)
        now = time.time()
        expires = now + (request.ttl_s or DEFAULT_TOKEN_TTL_S)
        uses = request.uses or 1
        await asyncio.to_thread(
            self.store.add_token,
            token.id,
            token.secret_sha256,
            dict(request.labels),
            now,
            expires,
            uses,
        )
        return pb.CreateTokenResponse(
            token=str(token), expires_at=expires, uses=uses, enroll_address=self.enroll_address
        )

    async def Push(
        self, request: pb.PushRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PushResponse:
        files = [(f.path, f.content) for f in request.files]
        size = sum(len(content.encode()) for _, content in files)
        if size > MAX_PUSH_BYTES:
            message = f"the manifests add up to {size} bytes; a push takes at most {MAX_PUSH_BYTES}"
            return pb.PushResponse(errors=[pb.ManifestError(message=message)])
        outcome = await asyncio.to_thread(self.fleet.push, files)
        if outcome.errors:
            return pb.PushResponse(
                errors=[
                    pb.ManifestError(file=e.file, line=e.line, field=e.field, message=e.message)
                    for e in outcome.errors
                ]
            )
        if outcome.unchanged:
            return pb.PushResponse(
                revision=outcome.revision, unchanged=True, unmatched_names=outcome.unmatched_names
            )
        wait_s = request.wait_s if request.wait_s > 0 else DEFAULT_PUSH_WAIT_S
        acks = await self._deliver(outcome, min(wait_s, MAX_PUSH_WAIT_S))
        delivered = sorted(n for n, ack in acks.items() if ack.accepted)
        refused = {n: ack.error for n, ack in acks.items() if not ack.accepted}
        return pb.PushResponse(
            revision=outcome.revision,
            targeted_nodes=outcome.targeted,
            delivered_nodes=delivered,
            undelivered_nodes=[n for n in outcome.targeted if n not in acks],
            refused_nodes=refused,
            unmatched_names=outcome.unmatched_names,
        )

    async def _deliver(self, outcome: PushOutcome, wait_s: float) -> dict[str, pb.CatalogAck]:
        """Send the new revision to every connected node; targeted ones' acks within ``wait_s``.

        Every connected node moves to the new revision (its catalog may be
        unchanged, but its revision is what compliance is counted at); only
        the targeted ones, whose catalog this push changes, are waited for.
        """
        connected = self.hub.connected_nodes()
        # Signing thousands of catalogs is CPU work: keep it off the event loop.
        signed = await asyncio.to_thread(self._sign_for, connected, outcome)
        return await self.hub.deliver(signed, set(outcome.targeted), wait_s)

    def _sign_for(self, nodes: set[str], outcome: PushOutcome) -> dict[str, pb.SignedCatalog]:
        signed = {}
        for node in nodes:
            payload = outcome.catalogs.get(node)
            # A node that enrolled during the push has no precompiled catalog.
            catalog = (
                self.fleet.sign(outcome.revision, payload)
                if payload is not None
                else self.fleet.signed_catalog(node)
            )
            if catalog is not None:
                signed[node] = catalog
        return signed

    async def ListNodes(
        self, request: pb.ListNodesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListNodesResponse:
        compliance = await asyncio.to_thread(self.fleet.compliance)
        latest, problems = compliance.revision, compliance.problems
        losses = await asyncio.to_thread(self.store.state_losses)
        listed = [
            pb.Node(
                name=n.name,
                labels=n.labels,
                connected=self.hub.connected(n.name),
                last_seen=n.last_seen,
                applied_revision=n.applied_revision,
                latest_revision=latest,
                compliance=_percent(compliance.by_node[n.name]),
                enrolled_at=n.enrolled_at,
                catalog_problem="\n".join(problems.get(n.name, [])),
                reported_revision=n.status_revision,
                clock_offset_s=math.nan if n.clock_offset_s is None else n.clock_offset_s,
                summary=_compliance(compliance.by_node[n.name]),
                losses=[state_loss_to_pb(x) for x in _losses_of(n, losses)],
                conditions=conditions_to_pb(n.conditions),
                **_identity_fields(n),
            )
            for n in compliance.nodes
        ]
        if request.removed:
            everyone = await asyncio.to_thread(self.store.list_nodes, True)
            listed += [_removed_node(n, latest) for n in everyone if n.decommissioned_at]
            listed.sort(key=lambda n: n.name)
        return pb.ListNodesResponse(nodes=listed)

    async def RevokeNode(
        self, request: pb.RevokeNodeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RevokeNodeResponse:
        done, ended = await self._revoking(self.store.revoke_node, request.node_name, context)
        return pb.RevokeNodeResponse(
            node_name=done.node,
            cert_serial=done.serial,
            revoked_at=done.at,
            already_revoked=done.already,
            sessions_ended=ended,
        )

    async def RemoveNode(
        self, request: pb.RemoveNodeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RemoveNodeResponse:
        done, ended = await self._revoking(self.store.decommission_node, request.node_name, context)
        return pb.RemoveNodeResponse(
            node_name=done.node,
            cert_serial=done.serial,
            decommissioned_at=done.at,
            already_removed=done.already,
            sessions_ended=ended,
        )

    async def _revoking(
        self,
        change: Callable[[str, float], Revocation],
        name: str,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> tuple[Revocation, int]:
        """Make ``change`` to node ``name`` in the store, and end its live session.

        NOT_FOUND for no such node. The store tells the hub, which ends the
        session by itself; the recheck here makes sure it has before the
        answer, which says whether there was one (0 or 1).
        """
        live = self.hub.live(name)
        try:
            done = await asyncio.to_thread(change, name, time.time())
        except UnknownNode as exc:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"{exc} (plumb nodes --all lists every node)"
            )
            raise AssertionError("unreachable") from exc
        await self.hub.recheck(name)
        return done, int(live is not None and self.hub.live(name) is not live)

    async def GetReport(
        self, request: pb.GetReportRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetReportResponse:
        body = await asyncio.to_thread(self.store.last_report, request.node_name)
        latest = await asyncio.to_thread(self.store.latest_revision_id)
        problems = await asyncio.to_thread(self.store.catalog_problems, latest)
        problem = "\n".join(problems.get(request.node_name, []))
        if body is None:
            return pb.GetReportResponse(
                found=False, catalog_problem=problem, latest_revision=latest
            )
        return pb.GetReportResponse(
            found=True,
            report=report_from_body(body),
            catalog_problem=problem,
            latest_revision=latest,
        )

    async def ListDrift(
        self, request: pb.ListDriftRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListDriftResponse:
        limit = min(request.limit or DEFAULT_DRIFT_LIMIT, MAX_DRIFT_LIMIT)
        rows = await asyncio.to_thread(self.store.drift, request.node_name or None, limit)
        return pb.ListDriftResponse(events=[_drift_event(r) for r in rows])

    async def GetCompliance(
        self, request: pb.GetComplianceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetComplianceResponse:
        result = await asyncio.to_thread(self.fleet.compliance)
        return pb.GetComplianceResponse(
            rows=[_compliance(r) for r in result.rows],
            fleet=_compliance(result.fleet),
            revision=result.revision,
        )


def _identity_fields(n: NodeRow) -> dict[str, Any]:
    return {
        "cert_serial": n.cert_serial,
        "revoked_at": n.revoked_at or 0.0,
        "decommissioned_at": n.decommissioned_at or 0.0,
    }


def _removed_node(n: NodeRow, latest: int) -> pb.Node:
    """A removed node, for ListNodes(removed=True): expected nothing, counted nowhere."""
    return pb.Node(
        name=n.name,
        labels=n.labels,
        connected=False,
        last_seen=n.last_seen,
        applied_revision=n.applied_revision,
        latest_revision=latest,
        compliance=-1.0,
        enrolled_at=n.enrolled_at,
        reported_revision=n.status_revision,
        clock_offset_s=math.nan if n.clock_offset_s is None else n.clock_offset_s,
        summary=pb.ComplianceRow(scope="node", name=n.name, percent=-1.0),
        conditions=conditions_to_pb(n.conditions),
        **_identity_fields(n),
    )


def _losses_of(n: NodeRow, losses: dict[str, list[StateLossRow]]) -> list[StateLossRow]:
    """What the node lost: since it was enrolled (a removed node of its name lost the rest)."""
    return [x for x in losses.get(n.name, []) if x.received_at >= n.enrolled_at]


def _drift_event(row: DriftRow) -> pb.DriftEvent:
    return pb.DriftEvent(
        id=row.id,
        node_name=row.node,
        report_id=row.report_id,
        resource_id=row.resource_id,
        manifest=row.manifest,
        status=STATUS_TO_PB[row.status],
        detected_at=row.detected_at,
        changes=[pb.Change(**c) for c in row.changes],
    )


def _percent(tally: Tally) -> float:
    return -1.0 if tally.percent is None else tally.percent


def _compliance(tally: Tally) -> pb.ComplianceRow:
    return pb.ComplianceRow(
        scope=tally.scope,
        name=tally.name,
        compliant=tally.compliant,
        expected=tally.expected,
        percent=_percent(tally),
        counts=tally.ordered_counts(),
    )
