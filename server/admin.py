"""The Admin service: what the operator CLI calls (operator certificates only).

Who may call which method, and what the audit log records of it, is
server/auth.py's (``ADMIN_RULES``): the servicer only does the work.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from protos import plumb_pb2 as pb
from protos import plumb_pb2_grpc as pb_grpc
from protos.limits import MAX_PUSH_BYTES
from server import operators, targeting, tokens
from server import rollout as rollout_
from server.auth import caller_certificate
from server.compliance import SCOPES, Tally, node_state
from server.config import ServerConfig
from server.errors import (
    CSRRejected,
    LastAdmin,
    ManifestError,
    OperatorExists,
    UnknownNode,
    UnknownOperator,
)
from server.fleet import Fleet, PushOutcome, Staging
from server.given import Given, GivenCatalogs
from server.hub import Hub
from server.pki import CLIENT_TTL_S, KeyPair, cert_pem, serial_of, sign_operator_csr
from server.rollout import Rollouts
from server.store import (
    DriftFilter,
    DriftRow,
    NewRollout,
    NodeRow,
    RevisionMeta,
    Revocation,
    RolloutRow,
    StateLossRow,
    Store,
    TokenRow,
    WaiverRow,
)
from server.wire import (
    STATUS_TO_PB,
    audit_entry,
    conditions_to_pb,
    operator_info,
    report_from_body,
    state_loss_to_pb,
)

DEFAULT_TOKEN_TTL_S = 3600
#: A re-enroll token replaces a node's identity: it lives a quarter of an hour
#: unless asked otherwise, and enrolls once.
DEFAULT_REENROLL_TTL_S = 900
#: How many names one token may be bound to.
MAX_TOKEN_NAMES = 1000
DEFAULT_DRIFT_LIMIT = 100
MAX_DRIFT_LIMIT = 10_000
DEFAULT_AUDIT_LIMIT = 100
MAX_AUDIT_LIMIT = 10_000
DEFAULT_HISTORY_LIMIT = 50
DEFAULT_RUNS_LIMIT = 50
MAX_RUNS_LIMIT = 10_000
MAX_HISTORY_LIMIT = 10_000

#: How long a push waits, by default and at most, for targeted connected nodes
#: to acknowledge the new catalog before it answers.
DEFAULT_PUSH_WAIT_S = 5.0
#: How long a plan waits, by default, for the nodes' dry runs.
DEFAULT_PLAN_WAIT_S = 10.0
MAX_PUSH_WAIT_S = 60.0


class AdminServicer(pb_grpc.AdminServicer):  # type: ignore[misc]
    def __init__(
        self,
        store: Store,
        fleet: Fleet,
        hub: Hub,
        ca_fingerprint: str,
        enroll_address: str,
        token_caps: TokenCaps | None = None,
        ca: KeyPair | None = None,
        operator_cert_ttl_s: float = CLIENT_TTL_S,
        trusted_ca_pem: bytes = b"",
        given: GivenCatalogs | None = None,
        rollouts: Rollouts | None = None,
    ) -> None:
        """``ca`` certifies operators (AddOperator, RenewOperator), for
        ``operator_cert_ttl_s`` seconds; None: those are refused."""
        self.store = store
        self.fleet = fleet
        self.hub = hub
        self.ca_fingerprint = ca_fingerprint
        self.enroll_address = enroll_address
        self.token_caps = token_caps or TokenCaps()
        self.ca = ca
        self.operator_cert_ttl_s = operator_cert_ttl_s
        #: Told what each push sends, so the reports that follow are checked from memory.
        self.given = given
        #: Staged rollouts (server/rollout.py); None: pushes go to every node at once.
        self.rollouts = rollouts
        #: What an operator's config trusts (server/ca.py): ``ca``'s alone but in a rollover.
        self.trusted_ca_pem = trusted_ca_pem or (cert_pem(ca.cert) if ca is not None else b"")

    # ------------------------------------------------------------ tokens

    async def CreateToken(
        self, request: pb.CreateTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateTokenResponse:
        problem = self.token_caps.problem(request.ttl_s, request.uses) or _binding_problem(request)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        names = list(dict.fromkeys(request.names)) or None
        binding = tokens.binding(names, request.name_pattern or None)
        return await self._new_token(
            dict(request.labels),
            request.ttl_s or min(DEFAULT_TOKEN_TTL_S, self.token_caps.max_ttl_s),
            request.uses or 1,
            binding,
            reenroll=False,
        )

    async def ReenrollNode(
        self, request: pb.ReenrollNodeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateTokenResponse:
        name = request.node_name
        problem = self.token_caps.problem(request.ttl_s, 1)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        if not tokens.valid_node_name(name):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"invalid node name {name!r}: {tokens.NAME_RULE}"
            )
        if await asyncio.to_thread(self.store.node, name) is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no node named {name!r} is enrolled: a new node enrolls with a token "
                f"from 'plumb token create' (--names {name} binds it to that name)",
            )
        # No labels of its own: the node keeps the labels it has.
        binding = tokens.binding([name], None)
        ttl = request.ttl_s or min(DEFAULT_REENROLL_TTL_S, self.token_caps.max_ttl_s)
        return await self._new_token({}, ttl, 1, binding, reenroll=True)

    async def _new_token(
        self,
        labels: dict[str, str],
        ttl_s: int,
        uses: int,
        binding: tokens.Binding,
        reenroll: bool,
    ) -> pb.CreateTokenResponse:
        token = tokens.new(self.ca_fingerprint)
        now = time.time()
        expires = now + ttl_s
        await asyncio.to_thread(
            self.store.add_token,
            token.id,
            token.secret_sha256,
            labels,
            now,
            expires,
            uses,
            binding,
            reenroll,
        )
        return pb.CreateTokenResponse(
            token=str(token),
            expires_at=expires,
            uses=uses,
            enroll_address=self.enroll_address,
            id=token.id,
            names=binding.names or (),
            name_pattern=binding.pattern or "",
            reenroll=reenroll,
        )

    async def ListTokens(
        self, request: pb.ListTokensRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListTokensResponse:
        now = time.time()
        rows = await asyncio.to_thread(self.store.list_tokens, now, request.all)
        return pb.ListTokensResponse(tokens=[_token_info(t, now) for t in rows])

    async def RevokeToken(
        self, request: pb.RevokeTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RevokeTokenResponse:
        if not tokens.TOKEN_ID.fullmatch(request.id):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{request.id!r} is not a token id (8 hex digits, as 'plumb token list' shows)",
            )
        now = time.time()
        found = await asyncio.to_thread(self.store.revoke_token, request.id, now)
        if found is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no token has the id {request.id} ('plumb token list --all' shows them all)",
            )
        assert found is not None
        token, revoked_now = found
        return pb.RevokeTokenResponse(
            token=_token_info(token, now), already_revoked=not revoked_now
        )

    async def Push(
        self, request: pb.PushRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PushResponse:
        files = [(f.path, f.content) for f in request.files]
        too_big = _too_big(files)
        if too_big is not None:
            return pb.PushResponse(errors=[too_big])
        blocked = self._blocked()
        if blocked is not None:
            return blocked
        staged = self._staging(request)
        if isinstance(staged, pb.PushResponse):
            return staged
        meta = RevisionMeta(author=_author(), message=request.message)
        outcome = await asyncio.to_thread(self.fleet.push, files, meta, staged)
        return await self._answer(outcome, request.wait_s)

    def _staging(
        self, request: pb.PushRequest | pb.RollbackRequest, kind: str = "push"
    ) -> Staging | pb.PushResponse | None:
        """The staged rollout a request asks for (None: none), or why it is refused."""
        if not request.HasField("rollout"):
            return None
        if self.rollouts is None:
            return _refused("this server does not run staged rollouts")
        try:
            settings = rollout_.Settings.of(request.rollout)
        except rollout_.SettingsError as exc:
            return _refused(str(exc))
        return functools.partial(settings.new_rollout, kind=kind)

    def _blocked(self) -> pb.PushResponse | None:
        """A refusal while a rollout is in progress: a new revision would hand its
        content to every node."""
        why = self.rollouts.blocking() if self.rollouts is not None else None
        return None if why is None else _refused(why)

    async def Plan(
        self, request: pb.PlanRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PlanResponse:
        files = [(f.path, f.content) for f in request.files]
        too_big = _too_big(files)
        if too_big is not None:
            return pb.PlanResponse(errors=[too_big])
        selector = await _selector(request.target, context) if request.target else None
        removal = (request.remove_manifest, request.purge) if request.remove_manifest else None
        outcome = await asyncio.to_thread(self.fleet.plan, files, selector, removal)
        if outcome.errors:
            return pb.PlanResponse(
                base_revision=outcome.base_revision, errors=_manifest_errors(outcome.errors)
            )
        connected = self.hub.connected_nodes()

        def sign() -> dict[str, pb.DryRun]:  # CPU work for thousands: off the event loop
            return {
                node: pb.DryRun(
                    id=uuid.uuid4().hex, catalog=self.fleet.sign(outcome.revision, payload)
                )
                for node, payload in outcome.catalogs.items()
                if node in connected
            }

        asked = await asyncio.to_thread(sign)
        wait_s = min(request.wait_s or DEFAULT_PLAN_WAIT_S, MAX_PUSH_WAIT_S)
        answers = await self.hub.dry_run(asked, wait_s)
        reply = pb.PlanResponse(
            base_revision=outcome.base_revision,
            unchanged=outcome.unchanged,
            offline=sorted(n for n in outcome.catalogs if n not in connected),
            no_answer=sorted(n for n in asked if n not in answers),
        )
        for node, answer in sorted(answers.items()):
            if answer.error or answer.report.node_name != node:
                reply.refused[node] = answer.error or "it answered for another node"
            else:
                reply.answered.append(pb.NodePlan(node_name=node, report=answer.report))
        return reply

    async def RemoveManifest(
        self, request: pb.RemoveManifestRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PushResponse:
        blocked = self._blocked()
        if blocked is not None:
            return blocked
        meta = RevisionMeta(author=_author(), message=request.message, origin="remove")
        outcome = await asyncio.to_thread(self.fleet.remove, request.name, request.purge, meta)
        return await self._answer(outcome, request.wait_s)

    async def Rollback(
        self, request: pb.RollbackRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PushResponse:
        blocked = self._blocked()
        if blocked is not None:
            return blocked
        staged = self._staging(request, kind="rollback")
        if isinstance(staged, pb.PushResponse):
            return staged
        meta = RevisionMeta(author=_author(), message=request.message, origin="rollback")
        outcome = await asyncio.to_thread(
            self.fleet.rollback, request.to, request.name or None, meta, staged
        )
        return await self._answer(outcome, request.wait_s)

    async def GetRollout(
        self, request: pb.GetRolloutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RolloutInfo:
        row = await asyncio.to_thread(self.store.latest_rollout)
        if row is None:
            return pb.RolloutInfo()
        latest = await asyncio.to_thread(self.store.latest_revision_id)
        return rollout_info(row, current=row.revision == latest)

    async def SteerRollout(
        self, request: pb.SteerRolloutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SteerRolloutResponse:
        if self.rollouts is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no staged rollouts here")
        assert self.rollouts is not None
        rollouts = self.rollouts
        try:
            if request.action == "resume":
                row = await asyncio.to_thread(rollouts.resume)
                return pb.SteerRolloutResponse(rollout=rollout_info(row, True))
            if request.action == "abort":
                why = request.message or f"aborted by {_author() or 'an operator'}"
                row = await asyncio.to_thread(rollouts.abort, why)
                return pb.SteerRolloutResponse(rollout=rollout_info(row, True))
            if request.action == "rollback":
                return await self._roll_back(rollouts, request)
        except rollout_.SettingsError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"unknown action {request.action!r}: resume, abort or rollback",
        )
        raise AssertionError("unreachable")

    async def _roll_back(
        self, rollouts: Rollouts, request: pb.SteerRolloutRequest
    ) -> pb.SteerRolloutResponse:
        """A new revision with the previous content, in batches to the nodes the rollout
        reached, never halting (a halted rollback would leave the fleet split again)."""
        row, reached = rollouts.reached()
        settings = rollout_.Settings.of(_wire_settings(row.settings))
        back = dataclasses.replace(
            settings, canary=None, max_failures=rollout_.Amount(100, percent=True)
        )
        if row.state in rollout_.ACTIVE:
            await asyncio.to_thread(rollouts.abort, f"rolled back by {_author() or 'an operator'}")

        def staged(latest: int, targeted: list[str]) -> NewRollout:
            return back.new_rollout(latest, [n for n in targeted if n in reached], "rollback")

        meta = RevisionMeta(
            author=_author(),
            message=request.message or f"rollback of rollout {row.id} (revision {row.revision})",
            origin="rollback",
        )
        outcome = await asyncio.to_thread(
            self.fleet.rollback, row.previous_revision, None, meta, staged
        )
        answer = await self._answer(outcome, request.wait_s)
        now = await asyncio.to_thread(self.store.latest_rollout)
        assert now is not None
        return pb.SteerRolloutResponse(rollout=rollout_info(now, True), rollback=answer)

    async def _answer(self, outcome: PushOutcome, wait_s: float) -> pb.PushResponse:
        """A new revision's answer, once the targeted connected nodes acknowledged it
        (or ``wait_s`` passed); a refusal or an unchanged revision at once."""
        if outcome.errors:
            return pb.PushResponse(errors=_manifest_errors(outcome.errors))
        if outcome.unchanged:
            return pb.PushResponse(
                revision=outcome.revision,
                unchanged=True,
                unmatched_names=outcome.unmatched_names,
                unmatched_manifests=outcome.unmatched_manifests,
            )
        wait_s = wait_s if wait_s > 0 else DEFAULT_PUSH_WAIT_S
        if outcome.staged is not None and self.rollouts is not None:
            self.rollouts.poke()  # its driver hands the staged nodes their batches
        acks = await self._deliver(outcome, min(wait_s, MAX_PUSH_WAIT_S))
        delivered = sorted(n for n, ack in acks.items() if ack.accepted)
        refused = {n: ack.error for n, ack in acks.items() if not ack.accepted}
        return pb.PushResponse(
            revision=outcome.revision,
            targeted_nodes=outcome.targeted,
            delivered_nodes=delivered,
            undelivered_nodes=[n for n in outcome.targeted if n not in acks],
            refused_nodes=refused,
            released=_resource_nodes(outcome.released),
            purging=_resource_nodes(outcome.purging),
            unmatched_names=outcome.unmatched_names,
            unmatched_manifests=outcome.unmatched_manifests,
            rollout_id=self.rollouts.current.id
            if outcome.staged is not None and self.rollouts is not None and self.rollouts.current
            else 0,
        )

    async def _deliver(self, outcome: PushOutcome, wait_s: float) -> dict[str, pb.CatalogAck]:
        """Send the new revision to every connected node; targeted ones' acks within ``wait_s``.

        Every connected node moves to the new revision (its catalog may be
        unchanged, but its revision is what compliance is counted at); only
        the targeted ones, whose catalog this push changes, are waited for.
        """
        # A staged push's nodes get it from its rollout, batch by batch.
        connected = self.hub.connected_nodes() - (outcome.staged or frozenset())
        # Signing thousands of catalogs is CPU work: keep it off the event loop.
        signed, givens = await asyncio.to_thread(self._sign_for, connected, outcome)
        if self.given is not None:
            self.given.remember(givens)
        return await self.hub.deliver(signed, set(outcome.targeted), wait_s)

    def _sign_for(
        self, nodes: set[str], outcome: PushOutcome
    ) -> tuple[dict[str, pb.SignedCatalog], dict[tuple[str, int], Given]]:
        """The signed catalog of each node, and what each is given (parsed here, in a thread)."""
        signed, givens = {}, {}
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
                givens[(node, catalog.revision)] = Given.of(catalog.payload)
        return signed, givens

    async def ListNodes(
        self, request: pb.ListNodesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListNodesResponse:
        selector = await _selector(request.target, context) if request.target else None
        compliance = await asyncio.to_thread(self.fleet.compliance)
        latest, problems = compliance.revision, compliance.problems
        now, after = time.time(), self.fleet.no_report_after_runs
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
                enrolled_by_token=n.enrolled_by_token or "",
                facts=n.facts,
                kept_revision=self.rollouts.pinned(n.name) or 0 if self.rollouts else 0,
                state=node_state(n, self.hub.connected(n.name), latest, now, after),
                last_report_at=n.last_report_at or 0.0,
                run_interval_s=n.run_interval_s or 0.0,
                **_identity_fields(n),
            )
            for n in compliance.nodes
            if selector is None or selector.matches(n.subject)
        ]
        if request.removed and selector is None:
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
        if request.run_id:
            body = await asyncio.to_thread(self.store.report, request.node_name, request.run_id)
            if body is None:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"node {request.node_name!r} has no run {request.run_id!r} "
                    f"('plumb runs {request.node_name}' lists them)",
                )
        else:
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

    async def ListRuns(
        self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListRunsResponse:
        limit = min(request.limit or DEFAULT_RUNS_LIMIT, MAX_RUNS_LIMIT)
        rows, more = await asyncio.to_thread(
            self.store.runs, request.node_name, request.since or None, limit
        )
        return pb.ListRunsResponse(
            runs=[
                pb.RunInfo(
                    id=r.id,
                    revision=r.revision,
                    noop=r.noop,
                    trigger=_trigger(r.trigger),
                    started_at=r.started_at,
                    finished_at=r.finished_at,
                    received_at=r.received_at,
                    sequence=r.sequence,
                    counts={k: v for k, v in r.summary.items() if v},
                )
                for r in rows
            ],
            more=more,
        )

    async def AddWaiver(
        self, request: pb.AddWaiverRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.WaiverInfo:
        try:
            row = await asyncio.to_thread(
                self.fleet.add_waiver,
                request.control or None,
                request.resource_id or None,
                request.target or None,
                request.reason,
                request.expires_at,
                _author() or "unknown",
            )
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("unreachable") from exc
        return _waiver_info(row, time.time())

    async def ListWaivers(
        self, request: pb.ListWaiversRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListWaiversResponse:
        now = time.time()
        rows = await asyncio.to_thread(self.store.waivers)
        shown = [w for w in rows if request.all or w.state(now) == "active"]
        return pb.ListWaiversResponse(waivers=[_waiver_info(w, now) for w in shown])

    async def RevokeWaiver(
        self, request: pb.RevokeWaiverRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.WaiverInfo:
        now = time.time()
        row = await asyncio.to_thread(self.store.revoke_waiver, request.id, now)
        if row is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no waiver has the id {request.id} ('plumb waiver list --all' shows them)",
            )
            raise AssertionError("unreachable")
        return _waiver_info(row, now)

    async def ListDrift(
        self, request: pb.ListDriftRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListDriftResponse:
        limit = min(request.limit or DEFAULT_DRIFT_LIMIT, MAX_DRIFT_LIMIT)
        only = DriftFilter(
            kind=request.kind or None,
            manifest=request.manifest or None,
            control=request.control or None,
            since=request.since or None,
            unrepaired=request.unrepaired,
        )
        rows = await asyncio.to_thread(self.store.drift, request.node_name or None, limit, only)
        return pb.ListDriftResponse(events=[_drift_event(r) for r in rows])

    async def GetCompliance(
        self, request: pb.GetComplianceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetComplianceResponse:
        if request.by and request.by not in SCOPES:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"--by {request.by!r}: one of {', '.join(SCOPES)}",
            )
        selector = await _selector(request.target, context) if request.target else None
        result = await asyncio.to_thread(self.fleet.compliance, selector)
        return pb.GetComplianceResponse(
            rows=[_compliance(r) for r in result.rows if not request.by or r.scope == request.by],
            fleet=_compliance(result.fleet),
            revision=result.revision,
        )

    # ------------------------------------------------------------ manifests and revisions

    async def ListManifests(
        self, request: pb.ListManifestsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListManifestsResponse:
        revision, views, purging = await asyncio.to_thread(self.fleet.manifests)
        return pb.ListManifestsResponse(
            revision=revision,
            manifests=[
                pb.ManifestInfo(
                    name=v.manifest.name,
                    file=v.manifest.file,
                    target=str(v.manifest.target),
                    resources=len(v.manifest.resources),
                    nodes=v.nodes,
                    changed_in=v.changed_in.id,
                    author=v.changed_in.author or "",
                    changed_at=v.changed_in.created_at,
                    mode=v.manifest.mode.value,
                )
                for v in views
            ],
            purging=purging,
        )

    async def ListRevisions(
        self, request: pb.ListRevisionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListRevisionsResponse:
        limit = min(request.limit or DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT)
        changes = await asyncio.to_thread(self.fleet.history, limit, request.manifest or None)
        return pb.ListRevisionsResponse(
            revisions=[
                pb.RevisionInfo(
                    revision=c.row.id,
                    created_at=c.row.created_at,
                    author=c.row.author or "",
                    message=c.row.message,
                    origin=c.row.origin,
                    content_sha256=c.row.content_sha256,
                    added=c.added,
                    changed=c.changed,
                    removed=c.removed,
                    purged=c.purged,
                )
                for c in changes
            ]
        )

    async def DiffRevisions(
        self, request: pb.DiffRevisionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DiffRevisionsResponse:
        latest = await asyncio.to_thread(self.store.latest_revision_id)
        new = request.new or latest
        for rev in (request.old, new):
            if not 0 <= rev <= latest:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"there is no revision {rev}: revisions go from 1 to {latest} "
                    "('plumb history' lists them)",
                )
        texts, resources = await asyncio.to_thread(self.fleet.diff, request.old, new)
        return pb.DiffRevisionsResponse(
            old=request.old,
            new=new,
            manifests=[
                pb.ManifestDiff(name=t.name, change=t.change, unified=t.unified()) for t in texts
            ],
            resources=[
                pb.ResourceDiff(
                    resource_id=r.resource_id, change=r.change, fields=r.fields, nodes=r.nodes
                )
                for r in resources
            ],
        )

    async def SetLabels(
        self, request: pb.SetLabelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SetLabelsResponse:
        name = request.node_name
        both = set(request.set) & set(request.remove)
        if both:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"label {sorted(both)[0]!r} is both set and removed: say one",
            )
        try:
            done = await asyncio.to_thread(
                self.fleet.relabel, name, dict(request.set), list(request.remove)
            )
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("unreachable") from exc
        except UnknownNode as exc:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no node named {name!r} is enrolled ('plumb nodes' lists them)",
            )
            raise AssertionError("unreachable") from exc
        reply = pb.SetLabelsResponse(
            node_name=name,
            labels=done.node.labels,
            matched_before=done.before.manifests,
            matched_after=done.after.manifests,
        )
        if done.catalog is None:
            if done.before != done.after:
                latest = await asyncio.to_thread(self.store.latest_revision_id)
                problems = await asyncio.to_thread(self.store.catalog_problems, latest)
                reply.catalog_problem = "\n".join(problems.get(name, []))
            return reply
        revision, payload = done.catalog
        reply.revision = revision
        if self.hub.connected(name):
            signed = self.fleet.sign(revision, payload)
            if self.given is not None:
                self.given.remember({(name, revision): Given.of(payload)})
            wait_s = min(request.wait_s or DEFAULT_PUSH_WAIT_S, MAX_PUSH_WAIT_S)
            acks = await self.hub.deliver({name: signed}, {name}, wait_s)
            ack = acks.get(name)
            reply.delivered = ack is not None and ack.accepted
            reply.refused = ack.error if ack is not None and not ack.accepted else ""
        return reply

    # ------------------------------------------------------------ operators

    async def AddOperator(
        self, request: pb.AddOperatorRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AddOperatorResponse:
        name, role = request.name, operators.Role.parse(request.role)
        if not operators.valid_name(name):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"invalid operator name {name!r}: {operators.NAME_RULE}",
            )
        if role is None:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"invalid role {request.role!r}: one of {operators.ROLES}",
            )
        assert role is not None
        current = await asyncio.to_thread(self.store.operator, name)
        if current is not None and current.revoked_at is None:
            # Before any CSR work, as enrollment does: the store checks again.
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS, f"an operator named {name!r} exists"
            )
        if self.ca is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this server has no CA")
        assert self.ca is not None
        try:
            cert = sign_operator_csr(self.ca, request.csr_pem, name, self.operator_cert_ttl_s)
            row = await asyncio.to_thread(
                self.store.add_operator, name, role, serial_of(cert), time.time()
            )
        except CSRRejected as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("unreachable") from exc
        except OperatorExists as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
            raise AssertionError("unreachable") from exc
        return pb.AddOperatorResponse(
            operator=operator_info(row),
            certificate_pem=cert_pem(cert),
            ca_pem=self.trusted_ca_pem,
        )

    async def ListOperators(
        self, request: pb.ListOperatorsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListOperatorsResponse:
        rows = await asyncio.to_thread(self.store.list_operators, request.all)
        return pb.ListOperatorsResponse(operators=[operator_info(r) for r in rows])

    async def RenewOperator(
        self, request: pb.RenewOperatorRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RenewOperatorResponse:
        peer = caller_certificate()
        name = peer.identity.name
        if self.ca is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this server has no CA")
        assert self.ca is not None
        try:
            cert = sign_operator_csr(self.ca, request.csr_pem, name, self.operator_cert_ttl_s)
        except CSRRejected as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("unreachable") from exc
        renewed = await asyncio.to_thread(
            self.store.renew_operator, name, peer.serial, serial_of(cert)
        )
        row = await asyncio.to_thread(self.store.operator, name)
        if not renewed or row is None:
            # The caller was let in a moment ago: another renewal, or a
            # revocation, came in between.
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"certificate serial {peer.serial} is no longer operator {name}'s "
                "(renewed or revoked meanwhile): nothing was changed",
            )
        assert row is not None
        return pb.RenewOperatorResponse(
            operator=operator_info(row),
            certificate_pem=cert_pem(cert),
            replaced_serial=peer.serial,
            trusted_ca_pem=self.trusted_ca_pem,
        )

    async def RevokeOperator(
        self, request: pb.RevokeOperatorRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RevokeOperatorResponse:
        try:
            row, revoked_now = await asyncio.to_thread(
                self.store.revoke_operator, request.name, time.time(), True
            )
        except UnknownOperator as exc:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"{exc} ('plumb operator list --all' lists them)"
            )
            raise AssertionError("unreachable") from exc
        except LastAdmin as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise AssertionError("unreachable") from exc
        return pb.RevokeOperatorResponse(
            operator=operator_info(row), already_revoked=not revoked_now
        )

    # ------------------------------------------------------------ audit log

    async def ListAudit(
        self, request: pb.ListAuditRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListAuditResponse:
        limit = min(request.limit or DEFAULT_AUDIT_LIMIT, MAX_AUDIT_LIMIT)
        since = request.since or None
        records, more = await asyncio.to_thread(self.store.audit_entries, since, limit)
        return pb.ListAuditResponse(entries=[audit_entry(r) for r in records], more=more)

    async def VerifyAudit(
        self, request: pb.VerifyAuditRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.VerifyAuditResponse:
        check = await asyncio.to_thread(self.store.verify_audit)
        return pb.VerifyAuditResponse(
            intact=check.intact,
            entries=check.entries,
            head_id=check.head_id,
            head_hash=check.head_hash if check.head_id else "",
            broken_at=check.broken_at or 0,
            problem=check.problem or "",
        )


def _waiver_info(w: WaiverRow, now: float) -> pb.WaiverInfo:
    return pb.WaiverInfo(
        id=w.id,
        control=w.control or "",
        resource_id=w.resource_id or "",
        target=w.target or "",
        reason=w.reason,
        approver=w.approver,
        created_at=w.created_at,
        expires_at=w.expires_at,
        revoked_at=w.revoked_at or 0.0,
        state=w.state(now),
    )


def _refused(why: str) -> pb.PushResponse:
    return pb.PushResponse(errors=[pb.ManifestError(message=why)])


def _wire_settings(settings: Mapping[str, Any]) -> pb.RolloutSettings:
    return pb.RolloutSettings(
        canary=settings.get("canary") or "",
        batch=settings.get("batch") or "",
        max_failures=settings.get("max_failures") or "",
        batch_timeout_s=float(settings.get("batch_timeout_s") or 0),
        pause_after_canary=bool(settings.get("pause_after_canary")),
    )


def rollout_info(row: RolloutRow, current: bool) -> pb.RolloutInfo:
    return pb.RolloutInfo(
        id=row.id,
        revision=row.revision,
        previous_revision=row.previous_revision,
        state=row.state,
        settings=_wire_settings(row.settings),
        max_failures=row.max_failures,
        kind=row.kind,
        author=row.author or "",
        created_at=row.created_at,
        updated_at=row.updated_at,
        reason=row.reason or "",
        nodes=[
            pb.RolloutNodeInfo(
                node_name=n.node,
                batch=n.batch,
                state=n.state,
                reason=n.reason or "",
                sent_at=n.sent_at or 0.0,
                finished_at=n.finished_at or 0.0,
            )
            for n in row.nodes
        ],
        current=current,
    )


def _trigger(word: str) -> str:
    """A stored trigger word (``push``) as the wire enum's name; unspecified for one it lacks."""
    name = word.upper()
    return name if name in pb.Trigger.keys() else "TRIGGER_UNSPECIFIED"  # noqa: SIM118


def _too_big(files: Sequence[tuple[str, str]]) -> pb.ManifestError | None:
    size = sum(len(content.encode()) for _, content in files)
    if size > MAX_PUSH_BYTES:
        message = f"the manifests add up to {size} bytes; a push takes at most {MAX_PUSH_BYTES}"
        return pb.ManifestError(message=message)
    return None


def _manifest_errors(errors: Sequence[ManifestError]) -> list[pb.ManifestError]:
    return [
        pb.ManifestError(file=e.file, line=e.line, field=e.field, message=e.message) for e in errors
    ]


def _author() -> str | None:
    """Who calls: the operator's certificate identity (None outside an RPC, as in tests)."""
    try:
        return caller_certificate().identity.name
    except LookupError:
        return None


async def _selector(text: str, context: grpc.aio.ServicerContext[Any, Any]) -> targeting.Selector:
    try:
        return targeting.parse(text)
    except targeting.SelectorError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        raise AssertionError("unreachable") from exc


def _resource_nodes(found: Mapping[str, Sequence[str]]) -> list[pb.ResourceNodes]:
    return [pb.ResourceNodes(resource_id=r, nodes=n) for r, n in sorted(found.items())]


def _identity_fields(n: NodeRow) -> dict[str, Any]:
    return {
        "cert_serial": n.cert_serial,
        "revoked_at": n.revoked_at or 0.0,
        "decommissioned_at": n.decommissioned_at or 0.0,
        "cert_not_after": n.cert_not_after or 0.0,
        "next_cert_serial": n.next_cert_serial or "",
        "cert_issuer": n.cert_issuer or "",
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
        enrolled_by_token=n.enrolled_by_token or "",
        **_identity_fields(n),
    )


def _losses_of(n: NodeRow, losses: dict[str, list[StateLossRow]]) -> list[StateLossRow]:
    """What the node lost: since it was enrolled (a removed node of its name lost the rest)."""
    return [x for x in losses.get(n.name, []) if x.received_at >= n.enrolled_at]


@dataclasses.dataclass(frozen=True)
class TokenCaps:
    """What a token may be asked for at most (server.toml: token_max_ttl_s, token_max_uses)."""

    max_ttl_s: int = ServerConfig.token_max_ttl_s
    max_uses: int = ServerConfig.token_max_uses

    def problem(self, ttl_s: int, uses: int) -> str | None:
        """Why a token of ``ttl_s`` seconds and ``uses`` uses is refused; None if it is not."""
        if ttl_s > self.max_ttl_s:
            return (
                f"a token lives at most {self.max_ttl_s} s ({_duration(self.max_ttl_s)}; "
                f"the server's token_max_ttl_s), not {ttl_s} s"
            )
        if uses > self.max_uses:
            return (
                f"a token enrolls at most {self.max_uses} nodes (the server's "
                f"token_max_uses), not {uses}"
            )
        return None


def _duration(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


def _binding_problem(request: pb.CreateTokenRequest) -> str | None:
    if request.names and request.name_pattern:
        return "a token is bound to names or to a name pattern, not both"
    if len(request.names) > MAX_TOKEN_NAMES:
        return f"a token is bound to at most {MAX_TOKEN_NAMES} names, not {len(request.names)}"
    for name in request.names:
        if not tokens.valid_node_name(name):
            return f"invalid node name {name!r}: {tokens.NAME_RULE}"
    if request.name_pattern:
        return tokens.pattern_problem(request.name_pattern)
    return None


def _token_info(token: TokenRow, now: float) -> pb.TokenInfo:
    return pb.TokenInfo(
        id=token.id,
        labels=token.labels,
        names=token.binding.names or (),
        name_pattern=token.binding.pattern or "",
        reenroll=token.reenroll,
        created_at=token.created_at,
        expires_at=token.expires_at,
        uses=token.uses,
        uses_left=token.uses_left,
        revoked_at=token.revoked_at or 0.0,
        state=token.state(now),
        nodes=token.nodes,
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
        percent_with_waivers=-1.0 if tally.expected == 0 else tally.percent_with_waivers or 0.0,
    )
