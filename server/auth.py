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

Operators are checked the same way (:class:`OperatorCredentials`: their
current serial, revoked or not, and their role, all the store's), and each
Admin method needs a role, declared once in :data:`ADMIN_RULES`: a method
missing from it is refused to everyone. The interceptor also writes the
audit log (server/audit.py): every Admin call it refuses, and every call of
a method whose rule names a summary (the ones that change something), with
its outcome.
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
from typing import Any, Generic, TypeVar

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID
from google.protobuf.message import Message

from server import audit
from server.audit import Actor, Auditor
from server.ca import issuer_id
from server.handlers import responses, wrapped
from server.operators import Role
from server.pki import ROLE_NODE, ROLE_OPERATOR
from server.store import NodeCredential, OperatorCredential, Store

AGENT_SERVICE = "plumb.v1.Agent"
ADMIN_SERVICE = "plumb.v1.Admin"

# Which kind of certificate (its OU) may call which service. Services not
# listed (enrollment, health) need no client certificate: enrollment is how a
# node gets one.
POLICY: dict[str, str] = {
    AGENT_SERVICE: ROLE_NODE,
    ADMIN_SERVICE: ROLE_OPERATOR,
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """What calling one Admin method takes, and what it leaves in the audit log."""

    role: Role
    #: Set for a method that changes something: each call is recorded with
    #: this summary of its request and reply (server/audit.py). Reads are
    #: recorded only when refused.
    summary: audit.Summarize | None = None


#: Every Admin method and the role it needs: the one place that says so
#: (tests/server/test_auth.py checks it names every method of the service).
ADMIN_RULES: dict[str, Rule] = {
    # Reads: anyone who is an operator at all.
    "ListNodes": Rule(Role.VIEWER),
    "GetReport": Rule(Role.VIEWER),
    "ListDrift": Rule(Role.VIEWER),
    "GetCompliance": Rule(Role.VIEWER),
    "ListTokens": Rule(Role.VIEWER),  # ids, labels and bindings; never a secret
    "ListOperators": Rule(Role.VIEWER),
    "ListAudit": Rule(Role.VIEWER),
    "VerifyAudit": Rule(Role.VIEWER),
    # Its own certificate: any operator, for itself only (the caller's name).
    "RenewOperator": Rule(Role.VIEWER, audit.renew_operator),
    "ListManifests": Rule(Role.VIEWER),
    "ListRevisions": Rule(Role.VIEWER),
    "DiffRevisions": Rule(Role.VIEWER),  # sensitive resources are redacted in it
    # Desired state. Labels choose which manifests a node gets, as a push's
    # targets do: whoever may push may relabel.
    "Push": Rule(Role.OPERATOR, audit.push),
    # A plan shows what nodes hold (small files' content, in diffs): whoever may
    # push may look, and each look is recorded.
    "Plan": Rule(Role.OPERATOR, audit.plan),
    "GetRollout": Rule(Role.VIEWER),
    "ListRuns": Rule(Role.VIEWER),
    "ListWaivers": Rule(Role.VIEWER),
    # Accepting failures is not for those who push what fails: admins approve.
    "AddWaiver": Rule(Role.ADMIN, audit.add_waiver),
    "RevokeWaiver": Rule(Role.ADMIN, audit.revoke_waiver),
    "SteerRollout": Rule(Role.OPERATOR, audit.steer_rollout),
    "RemoveManifest": Rule(Role.OPERATOR, audit.remove_manifest),
    "Rollback": Rule(Role.OPERATOR, audit.rollback),
    "SetLabels": Rule(Role.OPERATOR, audit.set_labels),
    # Identities: tokens, nodes, operators.
    "CreateToken": Rule(Role.ADMIN, audit.create_token),
    "RevokeToken": Rule(Role.ADMIN, audit.revoke_token),
    "ReenrollNode": Rule(Role.ADMIN, audit.reenroll_node),
    "RevokeNode": Rule(Role.ADMIN, audit.revoke_node),
    "RemoveNode": Rule(Role.ADMIN, audit.remove_node),
    "AddOperator": Rule(Role.ADMIN, audit.add_operator),
    "RevokeOperator": Rule(Role.ADMIN, audit.revoke_operator),
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
    issuer: str = ""  # the issuing CA's key identifier, hex (server/ca.py)


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
        issuer=issuer_id(cert),
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
    """An expired certificate cannot renew itself: say who can bring its holder back."""
    name = peer.identity.name
    if peer.identity.role == ROLE_NODE:
        remedy = (
            f"enroll it again: an admin runs 'plumb node reenroll {name}' and the node "
            "'plumb-agent enroll --replace' with that token"
        )
    else:
        remedy = (
            "an admin adds this operator again ('plumb operator add', or "
            "'plumb-server operator add' on the server host)"
        )
    return Refusal(
        grpc.StatusCode.UNAUTHENTICATED,
        f"the certificate of {peer.identity} (serial {peer.serial}) expired at "
        f"{utc(peer.not_after)}: {remedy}",
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
    if not credential.allows(peer.serial):
        return Refusal(
            grpc.StatusCode.UNAUTHENTICATED,
            f"certificate serial {peer.serial} is not node {name}'s current one "
            "(revoked, replaced or renewed): re-enroll the node",
        )
    if credential.revoked_at is not None:
        return Refusal(
            grpc.StatusCode.UNAUTHENTICATED,
            f"the certificate of node {name} (serial {peer.serial}) was revoked at "
            f"{utc(credential.revoked_at)}: re-enroll the node",
        )
    return None


def operator_refusal_for(
    peer: PeerCert, credential: OperatorCredential | None, method: str, needed: Role, now: float
) -> Refusal | None:
    """Whether an operator's certificate may call ``method``, which needs ``needed``, now.

    Pure: ``credential`` is the store's word (None: no such operator).
    """
    name = peer.identity.name
    if now >= peer.not_after:
        return expired(peer)
    if credential is None:
        return Refusal(
            grpc.StatusCode.PERMISSION_DENIED,
            f"operator {name!r} is not known to this server: an admin adds operators "
            "('plumb operator add', or 'plumb-server operator add' on the server host)",
        )
    if credential.serial != peer.serial:
        return Refusal(
            grpc.StatusCode.UNAUTHENTICATED,
            f"certificate serial {peer.serial} is not operator {name}'s current one "
            "(revoked, replaced or renewed): use the config of its latest 'operator add' "
            "or 'operator renew'",
        )
    if credential.revoked_at is not None:
        return Refusal(
            grpc.StatusCode.UNAUTHENTICATED,
            f"operator {name} was revoked at {utc(credential.revoked_at)}: an admin can add "
            "it again, with a new certificate",
        )
    role = Role.parse(credential.role)
    if role is None or not role.allows(needed):
        return Refusal(
            grpc.StatusCode.PERMISSION_DENIED,
            f"operator {name!r} ({credential.role}) may not {method}: needs the {needed} role",
        )
    return None


_MISSING = object()

C = TypeVar("C")


class Credentials(Generic[C]):
    """What the store says of each identity of one kind, by name, cached in memory.

    Entries are dropped by :meth:`changed`, which the store calls after every
    commit that changes such an identity (``of`` in the subclasses subscribes
    it). A store read that raced such a change is answered but not kept (the
    generation check), so the cache never serves an answer older than the
    last change it heard of. With ``max_age_s``, an entry is also read again
    once it is that old: for changes the store cannot tell of (another
    process's). Thread-safe: the store calls :meth:`changed` from whichever
    thread committed.
    """

    def __init__(
        self,
        load: Callable[[str], C | None],
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.time,
        max_age_s: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._max_entries = max_entries
        self.clock = clock
        self._max_age_s = max_age_s
        self._monotonic = monotonic
        # name -> (credential or None, when it was read: monotonic)
        self._entries: collections.OrderedDict[str, tuple[C | None, float]] = (
            collections.OrderedDict()
        )
        self._generation = 0
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str], None]] = []

    def subscribe(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(name)`` after each change of ``name`` (in the changing thread),
        once the cache has forgotten it: what ends live streams of a revoked node."""
        self._listeners.append(listener)

    def changed(self, name: str) -> None:
        with self._lock:
            self._generation += 1
            self._entries.pop(name, None)
        for listener in self._listeners:
            listener(name)

    def get(self, name: str) -> C | None:
        """The credential of ``name`` (None: no such identity), from memory or else the store."""
        found = self._cached(name)
        if found is not _MISSING:
            return found  # type: ignore[return-value]
        with self._lock:
            generation = self._generation
        read_at = self._monotonic()
        credential = self._load(name)
        with self._lock:
            if self._generation == generation:  # no change since the read began
                self._entries[name] = (credential, read_at)
                self._entries.move_to_end(name)
                if len(self._entries) > self._max_entries:
                    self._entries.popitem(last=False)
        return credential

    async def lookup(self, name: str) -> C | None:
        """:meth:`get` for the event loop: a store read goes to a thread."""
        found = self._cached(name)
        if found is not _MISSING:
            return found  # type: ignore[return-value]
        return await asyncio.to_thread(self.get, name)

    def _cached(self, name: str) -> object:
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                return _MISSING
            credential, read_at = entry
            if self._max_age_s is not None and self._monotonic() - read_at >= self._max_age_s:
                del self._entries[name]
                return _MISSING
            self._entries.move_to_end(name)
            return credential


class NodeCredentials(Credentials[NodeCredential]):
    """Which certificate each node may use now, as the store says it (see :class:`Credentials`).

    Every change of a node goes through the server's own Store object (enroll,
    revoke, remove), so entries never need to age.
    """

    @classmethod
    def of(cls, store: Store) -> NodeCredentials:
        """Credentials read from ``store``, and forgotten whenever it changes them."""
        credentials = cls(store.credential)
        store.on_node_change(credentials.changed)
        return credentials

    async def refusal(self, peer: PeerCert) -> Refusal | None:
        """Why node ``peer`` may not be let in now; None: it may."""
        if peer.identity.role != ROLE_NODE:
            # Not a node: the interceptor asks OperatorCredentials for operators.
            # Here, for a caller that passes any certificate, its expiry only.
            return expired(peer) if self.clock() >= peer.not_after else None
        return refusal_for(peer, await self.lookup(peer.identity.name), self.clock())


#: How long the server believes what it read of an operator before reading it
#: again: ``plumb-server operator revoke`` changes the store from another
#: process, which the server's Store cannot tell it of. Admin calls are few;
#: a read a second of each operator that calls costs nothing.
OPERATOR_CACHE_S = 1.0


class OperatorCredentials(Credentials[OperatorCredential]):
    """Each operator's role, current serial and revocation, as the store says it.

    Forgotten at once on a change made through the server (an Admin call),
    and after :data:`OPERATOR_CACHE_S` anyway (a change made on the server
    host by ``plumb-server operator``).
    """

    @classmethod
    def of(cls, store: Store, max_age_s: float = OPERATOR_CACHE_S) -> OperatorCredentials:
        credentials = cls(store.operator_credential, max_age_s=max_age_s)
        store.on_operator_change(credentials.changed)
        return credentials

    async def refusal(
        self, peer: PeerCert, method: str, needed: Role
    ) -> tuple[OperatorCredential | None, Refusal | None]:
        """What the store says of operator ``peer``, and why it may not call ``method`` now."""
        credential = await self.lookup(peer.identity.name)
        return credential, operator_refusal_for(peer, credential, method, needed, self.clock())


# ------------------------------------------------------------ the interceptor


async def _peer_or_abort(context: grpc.aio.ServicerContext[Any, Any]) -> PeerCert:
    peer = peer_certificate(context)
    if peer is None:
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "a client certificate issued by this server's CA is required",
        )
    assert peer is not None
    return peer


def _wrong_kind(peer: PeerCert, role: str) -> Refusal:
    return Refusal(
        grpc.StatusCode.PERMISSION_DENIED,
        f"{peer.identity} may not call this service (needs role {role!r})",
    )


async def _authorize(
    context: grpc.aio.ServicerContext[Any, Any], role: str, credentials: NodeCredentials | None
) -> PeerCert:
    peer = await _peer_or_abort(context)
    if peer.identity.role != role:
        refused = _wrong_kind(peer, role)
        await context.abort(refused.code, refused.message)
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
        async for response in responses(behavior, request, context):
            yield response

    return guarded


#: Status codes that mean the server failed, not that the caller was refused.
_FAILURES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


class _AdminCall:
    """One call of an Admin method: who may make it, and what the audit log gets of it."""

    def __init__(
        self,
        method: str,
        operators: OperatorCredentials | None,
        auditor: Auditor | None,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        self.method = method
        self.rule = ADMIN_RULES.get(method)
        self.operators = operators
        self.auditor = auditor
        self.context = context
        self.actor: Actor | None = None

    async def enter(self, request: Any) -> PeerCert:
        """The caller's certificate, if it may make this call; otherwise refused and recorded."""
        peer = await _peer_or_abort(self.context)
        self.actor = Actor(peer.identity.role, peer.identity.name)
        refusal: Refusal | None
        if peer.identity.role != ROLE_OPERATOR:
            refusal = _wrong_kind(peer, ROLE_OPERATOR)
        elif self.rule is None:
            # Fail closed: a method added without a rule is no one's to call.
            refusal = Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"Admin.{self.method} declares no role (server/auth.py: ADMIN_RULES): "
                "refused to everyone",
            )
        elif self.operators is None:
            refusal = Refusal(
                grpc.StatusCode.PERMISSION_DENIED, "this server checks no operators: refused"
            )
        else:
            credential, refusal = await self.operators.refusal(peer, self.method, self.rule.role)
            if credential is not None:
                self.actor = Actor.operator(peer.identity.name, credential.role)
        if refusal is not None:
            reason = f"{refusal.code.name}: {refusal.message}"
            await self._record(request, None, audit.REFUSED, reason)
            await self.context.abort(refusal.code, refusal.message)
        return peer

    async def leave(self, request: Any, reply: Any, result: str, reason: str) -> None:
        """Record the call's outcome, if its method changes something."""
        if self.rule is not None and self.rule.summary is not None:
            await self._record(request, reply, result, reason)

    async def _record(self, request: Any, reply: Any, result: str, reason: str) -> None:
        if self.auditor is None or self.actor is None:
            return
        summarize = self.rule.summary if self.rule is not None else None
        if not isinstance(request, Message):  # a streaming method's requests: not summarised
            summary = audit.Summary({})
        elif summarize is None:
            summary = audit.Summary(audit.request_fields(request))
        else:
            summary = summarize(request, reply)
        if summary.refused is not None and result == audit.OK:
            result, reason = audit.REFUSED, summary.refused
        await self.auditor.arecord(
            self.actor,
            self.context.peer(),
            self.method,
            summary.details,
            result,
            reason,
            summary.revision,
        )

    def outcome(self) -> tuple[str, str]:
        """The result and reason of a call that was aborted (by the servicer, or for a failure)."""
        code = self.context.code()
        details = self.context.details() or ""
        if isinstance(details, bytes):
            details = details.decode(errors="replace")
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        result = audit.FAILED if code in _FAILURES else audit.REFUSED
        return result, f"{name}: {details}"


def _guard_admin_unary(
    behavior: Callable[..., Awaitable[Any]],
    method: str,
    operators: OperatorCredentials | None,
    auditor: Auditor | None,
) -> Callable[..., Any]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        call = _AdminCall(method, operators, auditor, context)
        _caller.set(await call.enter(request))
        try:
            reply = await behavior(request, context)
        except grpc.aio.AbortError:
            await call.leave(request, None, *call.outcome())
            raise
        except asyncio.CancelledError:
            # The caller went away (or the server is stopping): what the
            # servicer had begun may have been done. Recorded all the same.
            gone = "the call was cancelled before it answered: its change may have been made"
            await asyncio.shield(call.leave(request, None, audit.FAILED, gone))
            raise
        except Exception as exc:
            await call.leave(request, None, audit.FAILED, f"internal error ({type(exc).__name__})")
            raise
        await call.leave(request, reply, audit.OK, "")
        return reply

    return guarded


def _guard_admin_stream(
    behavior: Callable[..., AsyncIterator[Any]],
    method: str,
    operators: OperatorCredentials | None,
    auditor: Auditor | None,
) -> Callable[..., Any]:
    """A streaming Admin method (there is none yet): checked like any, recorded when refused."""

    async def guarded(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        call = _AdminCall(method, operators, auditor, context)
        _caller.set(await call.enter(request))
        async for response in responses(behavior, request, context):
            yield response

    return guarded


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        credentials: NodeCredentials | None = None,
        operators: OperatorCredentials | None = None,
        auditor: Auditor | None = None,
    ) -> None:
        """``credentials``: the store's word on node certificates (None checks expiry only);
        ``operators``: on operators (None refuses every Admin call); ``auditor``: where
        Admin calls are recorded (None records nothing)."""
        self.credentials = credentials
        self.operators = operators
        self.auditor = auditor

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if not handler:
            return handler
        _, service, method = details.method.split("/", 2)
        if service == ADMIN_SERVICE:
            return _guarded_admin(handler, method, self.operators, self.auditor)
        role = POLICY.get(service)
        if role is None:
            return handler
        return _guarded(handler, role, self.credentials)


def _guarded_admin(
    handler: grpc.RpcMethodHandler,
    method: str,
    operators: OperatorCredentials | None,
    auditor: Auditor | None,
) -> grpc.RpcMethodHandler:
    return wrapped(
        handler,
        lambda behavior: _guard_admin_unary(behavior, method, operators, auditor),
        lambda behavior: _guard_admin_stream(behavior, method, operators, auditor),
    )


def _guarded(
    handler: grpc.RpcMethodHandler, role: str, credentials: NodeCredentials | None
) -> grpc.RpcMethodHandler:
    return wrapped(
        handler,
        lambda behavior: _guard_unary(behavior, role, credentials),
        lambda behavior: _guard_stream(behavior, role, credentials),
    )
