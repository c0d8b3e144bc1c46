"""The Enrollment service: a token and a CSR in, a node certificate out."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import grpc

from protos import plumb_pb2 as pb
from protos import plumb_pb2_grpc as pb_grpc
from server import tokens
from server.errors import CSRRejected, NodeExists, TokenRefused
from server.pki import KeyPair, cert_pem, sign_node_csr
from server.store import Store

# A DNS label or dotted host name: node names end up in certificates and paths.
# At most 64 characters: the name is the certificate's common name, which
# X.509 limits to 64 (the agent checks the same before it makes its CSR).
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
NODE_NAME = re.compile(rf"^(?=.{{1,64}}$){_LABEL}(\.{_LABEL})*$")


class EnrollmentServicer(pb_grpc.EnrollmentServicer):  # type: ignore[misc]
    def __init__(
        self,
        store: Store,
        ca: KeyPair,
        agent_port: int,
        on_enrolled: Callable[[str], object] = lambda node: None,
    ) -> None:
        """``on_enrolled(node)`` runs after each enrollment (the fleet compiles its catalog)."""
        self.store = store
        self.ca = ca
        self.agent_port = agent_port
        self.on_enrolled = on_enrolled

    async def Enroll(
        self, request: pb.EnrollRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.EnrollResponse:
        token = tokens.parse(request.token)
        if token is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the token is malformed")
        assert token is not None
        if not NODE_NAME.match(request.node_name):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"invalid node name {request.node_name!r}: use a lower-case host name of at "
                "most 64 characters (letters, digits, '-' and '.')",
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
        cert = sign_node_csr(self.ca, request.csr_pem, request.node_name)
        labels = self.store.enroll(
            token.id,
            token.secret_sha256,
            request.node_name,
            format(cert.serial_number, "x"),
            time.time(),
        )
        # Now, not at its first session: a catalog that cannot be compiled for
        # the new node (a collision only it makes) shows in `plumb nodes` at once.
        self.on_enrolled(request.node_name)
        return pb.EnrollResponse(
            certificate_pem=cert_pem(cert),
            ca_pem=cert_pem(self.ca.cert),
            node_name=request.node_name,
            agent_port=self.agent_port,
            labels=labels,
        )
