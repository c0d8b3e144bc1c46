"""The Admin service: what the operator CLI calls (operator certificate only)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from protos import plumb_pb2 as pb
from protos import plumb_pb2_grpc as pb_grpc
from server import tokens
from server.fleet import Fleet, PushOutcome
from server.hub import Hub
from server.store import ComplianceRow, DriftRow, Store
from server.wire import STATUS_TO_PB, report_from_body

DEFAULT_TOKEN_TTL_S = 3600
DEFAULT_DRIFT_LIMIT = 100


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
        outcome = await asyncio.to_thread(self.fleet.push, files)
        if outcome.errors:
            return pb.PushResponse(
                errors=[
                    pb.ManifestError(file=e.file, line=e.line, field=e.field, message=e.message)
                    for e in outcome.errors
                ]
            )
        delivered = await self._deliver(outcome)
        return pb.PushResponse(
            revision=outcome.revision,
            targeted_nodes=outcome.targeted,
            delivered_nodes=sorted(delivered),
        )

    async def _deliver(self, outcome: PushOutcome) -> list[str]:
        """Send the new revision's catalog to every connected node, at once."""
        connected = self.hub.connected_nodes()
        # Signing thousands of catalogs is CPU work: keep it off the event loop.
        signed = await asyncio.to_thread(self._sign_for, connected, outcome)
        return [
            node
            for node, catalog in signed.items()
            if self.hub.send(node, pb.ServerMessage(catalog=catalog))
        ]

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
        rows = await asyncio.to_thread(self.store.list_nodes)
        latest, _ = await asyncio.to_thread(self.store.latest_revision)
        compliance = {
            r.name: r.percent
            for r in await asyncio.to_thread(self.store.compliance)
            if r.scope == "node"
        }
        return pb.ListNodesResponse(
            nodes=[
                pb.Node(
                    name=n.name,
                    labels=n.labels,
                    connected=self.hub.connected(n.name),
                    last_seen=n.last_seen,
                    applied_revision=n.applied_revision,
                    latest_revision=latest,
                    compliance=compliance.get(n.name, -1.0),
                    enrolled_at=n.enrolled_at,
                )
                for n in rows
            ]
        )

    async def GetReport(
        self, request: pb.GetReportRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetReportResponse:
        body = await asyncio.to_thread(self.store.last_report, request.node_name)
        if body is None:
            return pb.GetReportResponse(found=False)
        return pb.GetReportResponse(found=True, report=report_from_body(body))

    async def ListDrift(
        self, request: pb.ListDriftRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListDriftResponse:
        rows = await asyncio.to_thread(
            self.store.drift, request.node_name or None, request.limit or DEFAULT_DRIFT_LIMIT
        )
        return pb.ListDriftResponse(events=[_drift_event(r) for r in rows])

    async def GetCompliance(
        self, request: pb.GetComplianceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetComplianceResponse:
        rows = await asyncio.to_thread(self.store.compliance)
        by_node = [r for r in rows if r.scope == "node"]
        fleet = ComplianceRow(
            "fleet", "fleet", sum(r.compliant for r in by_node), sum(r.evaluated for r in by_node)
        )
        return pb.GetComplianceResponse(
            rows=[_compliance(r) for r in rows], fleet=_compliance(fleet)
        )


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


def _compliance(row: ComplianceRow) -> pb.ComplianceRow:
    return pb.ComplianceRow(
        scope=row.scope,
        name=row.name,
        compliant=row.compliant,
        evaluated=row.evaluated,
        percent=row.percent,
    )
