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
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc

from protos import plumb_pb2 as pb
from protos import plumb_pb2_grpc as pb_grpc
from server import tokens
from server.errors import CSRRejected, NodeExists, TokenRefused
from server.pki import KeyPair, cert_pem, sign_node_csr
from server.ratelimit import Buckets
from server.store import Store

#: Enrollment attempts one source address may make: a burst, then so many a second.
#: A fleet enrolling through one NAT gets ENROLL_BURST at once and the rest
#: soon after (plumb-agent enroll waits and tries again when told to).
ENROLL_BURST = 100
ENROLL_RATE = 10.0


def _source(peer: str) -> str:
    """``ipv4:10.0.0.5:51234`` → ``10.0.0.5``; ``ipv6:[::1]:51234`` → ``::1``."""
    address = peer.partition(":")[2]
    host = address.rpartition(":")[0] or address
    return host.strip("[]")


class EnrollmentServicer(pb_grpc.EnrollmentServicer):  # type: ignore[misc]
    def __init__(
        self,
        store: Store,
        ca: KeyPair,
        agent_port: int,
        on_enrolled: Callable[[str], object] = lambda node: None,
        targeted_by: Callable[[str], list[str]] = lambda node: [],
    ) -> None:
        """``on_enrolled(node)`` runs after each enrollment (the fleet compiles its catalog);
        ``targeted_by(node)`` names the manifests that target ``node`` by name."""
        self.store = store
        self.ca = ca
        self.agent_port = agent_port
        self.on_enrolled = on_enrolled
        self.targeted_by = targeted_by
        self.attempts = Buckets(ENROLL_RATE, ENROLL_BURST)

    async def Enroll(
        self, request: pb.EnrollRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.EnrollResponse:
        # Before anything else is looked at: the cheapest refusal there is.
        source = _source(context.peer())
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
            return await asyncio.to_thread(self._enroll, token, request)
        except TokenRefused as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"enrollment refused: {exc}")
        except CSRRejected as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"enrollment refused: {exc}")
        except NodeExists as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"enrollment refused: {exc}")
        raise AssertionError("unreachable")

    def _enroll(self, token: tokens.Token, request: pb.EnrollRequest) -> pb.EnrollResponse:
        name = request.node_name
        found = self.store.check_enrollment(token.id, token.secret_sha256, name, time.time())
        if not found.binding.bound:
            self._check_not_targeted(token, name)
        cert = sign_node_csr(self.ca, request.csr_pem, name)
        labels = self.store.enroll(
            token.id, token.secret_sha256, name, format(cert.serial_number, "x"), time.time()
        )
        # Now, not at its first session: a catalog that cannot be compiled for
        # the new node (a collision only it makes) shows in `plumb nodes` at once.
        self.on_enrolled(name)
        return pb.EnrollResponse(
            certificate_pem=cert_pem(cert),
            ca_pem=cert_pem(self.ca.cert),
            node_name=name,
            agent_port=self.agent_port,
            labels=labels,
        )

    def _check_not_targeted(self, token: tokens.Token, name: str) -> None:
        """A name a manifest targets by name is for a token that names it, not any token."""
        manifests = self.targeted_by(name)
        if manifests:
            raise TokenRefused(
                f"the name {name!r} is targeted by name by manifest(s) {', '.join(manifests)}, "
                f"so only a token bound to it may enroll it, and token {token.id} is bound to "
                f"no name: enroll with a token from 'plumb token create --names {name}'"
            )
