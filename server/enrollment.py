"""The Enrollment service: a token and a CSR in, a node certificate out.

Everything about the token is checked before the CSR is even parsed: the
enrollment listener takes calls from anyone, and parsing and signing cost
far more than a store lookup. In order: the token's form, the node name's
form, then (in the store, read only) the token itself — known, not revoked,
not expired, uses left —, the name against the token's binding, the name not
taken (unless the token is a re-enroll token for it), and for a token bound
to no name, the name not one a manifest targets by name. Only then is the
CSR parsed and signed; the store then spends the use and records the node
in one transaction, checking the token and the name again.

Each enrollment goes to the audit log (server/audit.py), as the token that
made it, from the caller's address: the node, its new certificate's serial,
and for a re-enrollment the serial it replaced. So does each refusal of a
genuine token (a name it does not allow, used up, a name taken, a bad CSR);
a refusal of a token nobody can show is genuine (malformed, unknown, a wrong
secret) is not, since anyone may send those.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc

from protos import plumb_pb2 as pb
from protos import plumb_pb2_grpc as pb_grpc
from server import audit, tokens
from server.audit import Actor, Auditor
from server.ca import key_id
from server.errors import CSRRejected, NodeExists, TokenRefused, UnknownToken
from server.pki import CLIENT_TTL_S, KeyPair, cert_pem, serial_of, sign_node_csr
from server.ratelimit import Buckets
from server.sources import source_of
from server.store import Store

#: Enrollment attempts one source address may make: a burst, then so many a second.
#: A fleet enrolling through one NAT gets ENROLL_BURST at once and the rest
#: soon after (plumb-agent enroll waits and tries again when told to).
ENROLL_BURST = 100
ENROLL_RATE = 10.0


class EnrollmentServicer(pb_grpc.EnrollmentServicer):  # type: ignore[misc]
    def __init__(
        self,
        store: Store,
        ca: KeyPair,
        agent_port: int,
        on_enrolled: Callable[[str], object] = lambda node: None,
        targeted_by: Callable[[str], list[str]] = lambda node: [],
        auditor: Auditor | None = None,
        cert_ttl_s: float = CLIENT_TTL_S,
        trusted_ca_pem: bytes = b"",
    ) -> None:
        """``on_enrolled(node)`` runs after each enrollment (the fleet compiles its catalog);
        ``targeted_by(node)`` names the manifests that target ``node`` by name;
        ``auditor`` records enrollments (None: nowhere); ``cert_ttl_s``: how long
        node certificates live (server.toml's node_cert_ttl_s); ``trusted_ca_pem``:
        the CA certificates a new node is to trust (default: ``ca``'s alone)."""
        self.store = store
        self.ca = ca
        self.agent_port = agent_port
        self.on_enrolled = on_enrolled
        self.targeted_by = targeted_by
        self.attempts = Buckets(ENROLL_RATE, ENROLL_BURST)
        self.auditor = auditor
        self.cert_ttl_s = cert_ttl_s
        self.trusted_ca_pem = trusted_ca_pem or cert_pem(ca.cert)
        self.issuer = key_id(ca.cert)

    async def Enroll(
        self, request: pb.EnrollRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.EnrollResponse:
        # Before anything else is looked at: the cheapest refusal there is.
        source = source_of(context.peer())
        wait = self.attempts.take(source)
        if wait:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many enrollment attempts from {source}: {ENROLL_RATE:g} a second "
                f"after a burst of {ENROLL_BURST:g}; try again in {wait:.1f} s",
            )
        token = tokens.parse(request.token)
        if token is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the token is malformed")
        assert token is not None
        if not tokens.valid_node_name(request.node_name):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"invalid node name {request.node_name!r}: {tokens.NAME_RULE}",
            )
        try:
            return await asyncio.to_thread(self._audited, token, request, context.peer())
        except TokenRefused as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"enrollment refused: {exc}")
        except CSRRejected as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"enrollment refused: {exc}")
        except NodeExists as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"enrollment refused: {exc}")
        raise AssertionError("unreachable")

    def _audited(
        self, token: tokens.Token, request: pb.EnrollRequest, peer: str
    ) -> pb.EnrollResponse:
        """:meth:`_enroll`, recorded in the audit log (in this thread: it commits)."""
        try:
            response, details = self._enroll(token, request)
        except UnknownToken:
            raise
        except (TokenRefused, NodeExists, CSRRejected) as exc:
            self._record(token, peer, {"node": request.node_name}, audit.REFUSED, str(exc))
            raise
        self._record(token, peer, details, audit.OK, "")
        return response

    def _record(
        self, token: tokens.Token, peer: str, details: dict[str, Any], result: str, reason: str
    ) -> None:
        if self.auditor is not None:
            self.auditor.record(Actor.token(token.id), peer, "Enroll", details, result, reason)

    def _enroll(
        self, token: tokens.Token, request: pb.EnrollRequest
    ) -> tuple[pb.EnrollResponse, dict[str, Any]]:
        name = request.node_name
        found = self.store.check_enrollment(token.id, token.secret_sha256, name, time.time())
        if not found.binding.bound:
            self._check_not_targeted(token, name)
        cert = sign_node_csr(self.ca, request.csr_pem, name, self.cert_ttl_s)
        # What it replaces, for the audit log: a re-enrollment's old certificate.
        before = self.store.credential(name) if found.reenroll else None
        serial = serial_of(cert)
        not_after = cert.not_valid_after_utc.timestamp()
        labels = self.store.enroll(
            token.id,
            token.secret_sha256,
            name,
            serial,
            time.time(),
            cert_not_after=not_after,
            cert_issuer=self.issuer,
        )
        # Now, not at its first session: a catalog that cannot be compiled for
        # the new node (a collision only it makes) shows in `plumb nodes` at once.
        self.on_enrolled(name)
        response = pb.EnrollResponse(
            certificate_pem=cert_pem(cert),
            ca_pem=self.trusted_ca_pem,
            node_name=name,
            agent_port=self.agent_port,
            labels=labels,
        )
        replaced = (
            before.serial if before is not None and before.decommissioned_at is None else None
        )
        details = {
            "node": name,
            "cert_serial": serial,
            "reenroll": replaced is not None,
            "replaced_serial": replaced,
            "labels": dict(sorted(labels.items())),
        }
        return response, details

    def _check_not_targeted(self, token: tokens.Token, name: str) -> None:
        """A name a manifest targets by name is for a token that names it, not any token."""
        manifests = self.targeted_by(name)
        if manifests:
            raise TokenRefused(
                f"the name {name!r} is targeted by name by manifest(s) {', '.join(manifests)}, "
                f"so only a token bound to it may enroll it, and token {token.id} is bound to "
                f"no name: enroll with a token from 'plumb token create --names {name}'"
            )
