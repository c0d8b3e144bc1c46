"""Who is calling, decided in one place.

Every RPC passes through :class:`AuthInterceptor`. It reads the verified peer
certificate from the TLS layer, turns it into an :class:`Identity` (role from
the certificate's OU, name from its CN), refuses callers whose role may not
call that service, and leaves the identity in a context variable for the
servicer (:func:`caller`). Servicers never trust a name sent in a message:
they compare it with the caller's.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from server.pki import ROLE_NODE, ROLE_OPERATOR

# Which role may call which service. Services not listed (enrollment, health)
# need no client certificate: enrollment is how a node gets one.
POLICY: dict[str, str] = {
    "plumb.v1.Agent": ROLE_NODE,
    "plumb.v1.Admin": ROLE_OPERATOR,
}


@dataclasses.dataclass(frozen=True)
class Identity:
    role: str
    name: str

    def __str__(self) -> str:
        return f"{self.role} {self.name!r}"


_caller: contextvars.ContextVar[Identity] = contextvars.ContextVar("plumb_caller")


def caller() -> Identity:
    """The authenticated caller of the current RPC (set by the interceptor)."""
    return _caller.get()


@functools.lru_cache(maxsize=4096)
def identity_from_pem(pem: bytes) -> Identity | None:
    cert = x509.load_pem_x509_certificate(pem)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if len(cn) != 1 or len(ou) != 1:
        return None
    return Identity(role=str(ou[0].value), name=str(cn[0].value))


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> Identity | None:
    """The identity in the peer's certificate, which the TLS layer has already verified."""
    pems = context.auth_context().get("x509_pem_cert")
    return identity_from_pem(pems[0]) if pems else None


async def _authorize(context: grpc.aio.ServicerContext[Any, Any], role: str) -> Identity:
    identity = peer_identity(context)
    if identity is None:
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "a client certificate issued by this server's CA is required",
        )
    assert identity is not None
    if identity.role != role:
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{identity} may not call this service (needs role {role!r})",
        )
    return identity


def _guard_unary(behavior: Callable[..., Awaitable[Any]], role: str) -> Callable[..., Any]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        _caller.set(await _authorize(context, role))
        return await behavior(request, context)

    return guarded


def _guard_stream(behavior: Callable[..., AsyncIterator[Any]], role: str) -> Callable[..., Any]:
    async def guarded(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        _caller.set(await _authorize(context, role))
        async for response in behavior(request, context):
            yield response

    return guarded


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        role = POLICY.get(details.method.split("/")[1]) if handler else None
        if role is None:
            return handler
        return _guarded(handler, role)


def _guarded(handler: grpc.RpcMethodHandler, role: str) -> grpc.RpcMethodHandler:
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_guard_unary(handler.unary_unary, role), **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            _guard_stream(handler.unary_stream, role), **codec
        )
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(
            _guard_stream(handler.stream_stream, role), **codec
        )
    return grpc.stream_unary_rpc_method_handler(_guard_unary(handler.stream_unary, role), **codec)
