"""Who is calling, decided in one place.

Every RPC passes through :class:`AuthInterceptor`. It reads the verified peer
certificate from the TLS layer, turns it into an :class:`Identity` (role from
the certificate's OU, name from its CN), refuses callers whose role may not
call that service, and leaves the identity in a context variable for the
servicer (:func:`caller`). Servicers never trust a name sent in a message:
they compare it with the caller's.

A certificate the CA signed is not enough. The TLS layer checks expiry only
at the handshake, and an HTTP/2 connection outlives it, so every call checks
the certificate's notAfter again. And the store is the source of truth for
which certificate each node may use now (``nodes.cert_serial``, revoked or
removed): a node's call is refused unless its certificate's serial is the
node's current one and the node is neither revoked nor removed. That answer
comes from :class:`NodeCredentials`, a cache the store invalidates whenever it
changes a node (``Store.on_node_change``), so the check costs a dict lookup.
Live streams are ended the same moment (server.hub: ``Hub.recheck``).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import dataclasses
import datetime
import functools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from server.pki import ROLE_NODE, ROLE_OPERATOR
from server.store import NodeCredential, Store

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


@dataclasses.dataclass(frozen=True)
class PeerCert:
    """What the server needs of a verified client certificate."""

    identity: Identity
    serial: str  # lower-case hex, as the store keeps it (nodes.cert_serial)
    not_after: float  # unix seconds


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why a call, or a live stream, is refused: the status and a sentence saying what to do."""

    code: grpc.StatusCode
    message: str


_caller: contextvars.ContextVar[PeerCert] = contextvars.ContextVar("plumb_caller")


def caller() -> Identity:
    """The authenticated caller of the current RPC (set by the interceptor)."""
    return _caller.get().identity


def caller_certificate() -> PeerCert:
    """The certificate the current RPC's caller was let in with (set by the interceptor)."""
    return _caller.get()


def identity_from_pem(pem: bytes) -> Identity | None:
    peer = peer_from_pem(pem)
    return None if peer is None else peer.identity


@functools.lru_cache(maxsize=4096)
def peer_from_pem(pem: bytes) -> PeerCert | None:
    cert = x509.load_pem_x509_certificate(pem)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if len(cn) != 1 or len(ou) != 1:
        return None
    return PeerCert(
        identity=Identity(role=str(ou[0].value), name=str(cn[0].value)),
        serial=format(cert.serial_number, "x"),
        not_after=cert.not_valid_after_utc.timestamp(),
    )


def peer_certificate(context: grpc.aio.ServicerContext[Any, Any]) -> PeerCert | None:
    """The peer's certificate, which the TLS layer has already verified against the CA."""
    pems = context.auth_context().get("x509_pem_cert")
    return peer_from_pem(pems[0]) if pems else None


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> Identity | None:
    """The identity in the peer's certificate, which the TLS layer has already verified."""
    peer = peer_certificate(context)
    return None if peer is None else peer.identity


def utc(timestamp: float) -> str:
    """A time in refusals: ``2026-12-01 22:10:03 UTC`` (the agent's log may be anywhere)."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def expired(peer: PeerCert) -> Refusal:
    return Refusal(
        grpc.StatusCode.UNAUTHENTICATED,
        f"the certificate of {peer.identity} (serial {peer.serial}) expired at "
        f"{utc(peer.not_after)}: renew it, or enroll again",
    )


def refusal_for(peer: PeerCert, credential: NodeCredential | None, now: float) -> Refusal | None:
    """Whether a node's certificate may be used now, given what the store says of the node.

    Pure: ``credential`` is the store's word (None: no such node).
    """
    name = peer.identity.name
    if now >= peer.not_after:
        return expired(peer)
    if credential is None:
        return Refusal(grpc.StatusCode.PERMISSION_DENIED, f"node {name!r} is not enrolled")
    if credential.decommissioned_at is not None:
        return Refusal(
            grpc.StatusCode.UNAUTHENTICATED,
            f"node {name} was removed (plumb node rm) at {utc(credential.decommissioned_at)}: "
            "enroll it again with a new token to bring it back",
        )
    if credential.serial != peer.serial:
        return Refusal(
            grpc.StatusCode.UNAUTHENTICATED,
            f"certificate serial {peer.serial} is not node {name}'s current one "
            "(revoked or replaced): re-enroll the node",
        )
    if credential.revoked_at is not None:
        return Refusal(
            grpc.StatusCode.UNAUTHENTICATED,
            f"the certificate of node {name} (serial {peer.serial}) was revoked at "
            f"{utc(credential.revoked_at)}: re-enroll the node",
        )
    return None


_MISSING = object()


class NodeCredentials:
    """Which certificate each node may use now, as the store says it, cached in memory.

    Entries are dropped by :meth:`changed`, which the store calls after every
    commit that changes a node's serial or state (:meth:`of` subscribes it).
    A store read that raced such a change is answered but not kept (the
    generation check), so the cache never serves an answer older than the
    last change it heard of. Thread-safe: the store calls :meth:`changed` from
    whichever thread committed.
    """

    def __init__(
        self,
        load: Callable[[str], NodeCredential | None],
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._load = load
        self._max_entries = max_entries
        self.clock = clock
        self._entries: collections.OrderedDict[str, NodeCredential | None] = (
            collections.OrderedDict()
        )
        self._generation = 0
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str], None]] = []

    @classmethod
    def of(cls, store: Store) -> NodeCredentials:
        """Credentials read from ``store``, and forgotten whenever it changes them."""
        credentials = cls(store.credential)
        store.on_node_change(credentials.changed)
        return credentials

    def subscribe(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(name)`` after each change of node ``name`` (in the changing thread),
        once the cache has forgotten it: what ends live streams of a revoked node."""
        self._listeners.append(listener)

    def changed(self, name: str) -> None:
        with self._lock:
            self._generation += 1
            self._entries.pop(name, None)
        for listener in self._listeners:
            listener(name)

    def get(self, name: str) -> NodeCredential | None:
        """The credential of ``name`` (None: no such node), from memory or else the store."""
        found = self._cached(name)
        if found is not _MISSING:
            return found  # type: ignore[return-value]
        with self._lock:
            generation = self._generation
        credential = self._load(name)
        with self._lock:
            if self._generation == generation:  # no change since the read began
                self._entries[name] = credential
                if len(self._entries) > self._max_entries:
                    self._entries.popitem(last=False)
        return credential

    async def lookup(self, name: str) -> NodeCredential | None:
        """:meth:`get` for the event loop: a store read goes to a thread."""
        found = self._cached(name)
        if found is not _MISSING:
            return found  # type: ignore[return-value]
        return await asyncio.to_thread(self.get, name)

    async def refusal(self, peer: PeerCert) -> Refusal | None:
        """Why ``peer`` may not be let in now; None: it may."""
        if peer.identity.role != ROLE_NODE:
            # Operators are not in the store (yet): their certificates are
            # checked for expiry only.
            return expired(peer) if self.clock() >= peer.not_after else None
        return refusal_for(peer, await self.lookup(peer.identity.name), self.clock())

    def _cached(self, name: str) -> object:
        with self._lock:
            if name not in self._entries:
                return _MISSING
            self._entries.move_to_end(name)
            return self._entries[name]


async def _authorize(
    context: grpc.aio.ServicerContext[Any, Any], role: str, credentials: NodeCredentials | None
) -> PeerCert:
    peer = peer_certificate(context)
    if peer is None:
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "a client certificate issued by this server's CA is required",
        )
    assert peer is not None
    if peer.identity.role != role:
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{peer.identity} may not call this service (needs role {role!r})",
        )
    if credentials is not None:
        refusal = await credentials.refusal(peer)
        if refusal is not None:
            await context.abort(refusal.code, refusal.message)
    elif time.time() >= peer.not_after:
        refused = expired(peer)
        await context.abort(refused.code, refused.message)
    return peer


def _guard_unary(
    behavior: Callable[..., Awaitable[Any]], role: str, credentials: NodeCredentials | None
) -> Callable[..., Any]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        _caller.set(await _authorize(context, role, credentials))
        return await behavior(request, context)

    return guarded


def _guard_stream(
    behavior: Callable[..., AsyncIterator[Any]], role: str, credentials: NodeCredentials | None
) -> Callable[..., Any]:
    async def guarded(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        _caller.set(await _authorize(context, role, credentials))
        async for response in behavior(request, context):
            yield response

    return guarded


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, credentials: NodeCredentials | None = None) -> None:
        """``credentials``: the store's word on node certificates; None checks expiry only."""
        self.credentials = credentials

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        role = POLICY.get(details.method.split("/")[1]) if handler else None
        if role is None:
            return handler
        return _guarded(handler, role, self.credentials)


def _guarded(
    handler: grpc.RpcMethodHandler, role: str, credentials: NodeCredentials | None
) -> grpc.RpcMethodHandler:
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            _guard_unary(handler.unary_unary, role, credentials), **codec
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            _guard_stream(handler.unary_stream, role, credentials), **codec
        )
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(
            _guard_stream(handler.stream_stream, role, credentials), **codec
        )
    return grpc.stream_unary_rpc_method_handler(
        _guard_unary(handler.stream_unary, role, credentials), **codec
    )
