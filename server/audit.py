"""The audit log: who changed what, when, from where, and what came of it.

Recorded, one entry each, in the store (``audit_log``):

- every Admin call that changes something (Push, CreateToken, RevokeToken,
  ReenrollNode, RevokeNode, RemoveNode, AddOperator, RevokeOperator), whether
  it succeeded or not; what each records is its summary function below,
  named in ``server.auth.ADMIN_RULES``;
- every Admin call refused by the interceptor (no such operator, a revoked or
  replaced certificate, too low a role), reads included;
- every enrollment and re-enrollment, and every refused one whose token was
  genuine (a wrong name, a used-up token): one with an unknown token is not,
  as anyone can send those and fill the log (server/enrollment.py);
- the operator commands run on the server host (``plumb-server init``,
  ``operator add``, ``operator revoke``), as the local user who ran them.

Reads that succeed are not recorded: ``plumb nodes`` polled by a dashboard
would bury the changes under the reads, and each entry is a synchronous
commit competing with report ingest for the store's one writer.

An entry holds who (``actor_kind``, ``actor``, ``role``), when (``at``, the
server's clock), from where (``peer``: the caller's address and port, or
``local``), what (``action`` and ``details``: a short JSON summary of the
arguments — never a token's secret, a manifest's content or a CSR, only
their ids, names, sizes and hashes), the result (``ok``, ``refused`` or
``failed``, with the ``reason``), and for a push the ``revision`` it stored
(the revision's row names the entry back: ``revisions.audit_id``).

**Hash-chained.** Entries are numbered 1, 2, 3, ... without gaps, and each
holds ``prev_hash``, the hash of the one before (64 zeros for the first),
and ``hash``: SHA-256 over its canonical form (:func:`canonical_form`, the
entry's fields as compact JSON with sorted keys, ``prev_hash`` included).
The store keeps the last entry's id and hash apart (``audit_head``), updated
in the same transaction as each append. :func:`verify` walks the log and
names the first entry that breaks it: an edited entry (its hash no longer
matches its content), a deleted one (a gap in the numbers, or a
``prev_hash`` that is not the previous entry's hash), entries cut off the
end (the head names an entry that is not there). What a chain cannot show
is a log rewritten whole, every hash recomputed, by someone who can write
the store: ``plumb audit --verify`` prints the head's id and hash so it can
be kept elsewhere, and an entry whose hash was noted must still have it.

**Recording from elsewhere** (certificate renewal, say). From a thread
(the store commits; never on the event loop)::

    auditor.record(Actor.node("web-1"), peer, "RenewCertificate",
                   {"old_serial": "5f3a", "new_serial": "77b0"})

or ``await auditor.arecord(...)`` from a coroutine. The ``Auditor`` is made
in server/app.py next to the store; ``reason`` says why for a result other
than ``ok``. ``Store.audit(Entry(...), now)`` is the same without the
server's log line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import hashlib
import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format
from google.protobuf.message import Message

from protos import plumb_pb2 as pb

if TYPE_CHECKING:
    from server.store import Store

log = logging.getLogger("plumb.audit")

GENESIS = "0" * 64
OK = "ok"
REFUSED = "refused"
FAILED = "failed"

LOCAL = "local"  # the peer of what was done on the server host itself


@dataclasses.dataclass(frozen=True)
class Actor:
    """Who did it: an operator (with its role then), a node, a token, a local user, the server."""

    kind: str
    name: str
    role: str = ""

    @classmethod
    def operator(cls, name: str, role: str = "") -> Actor:
        return cls("operator", name, role)

    @classmethod
    def node(cls, name: str) -> Actor:
        return cls("node", name)

    @classmethod
    def token(cls, token_id: str) -> Actor:
        """An enrollment: the enrolling host has no identity yet, only its token."""
        return cls("token", token_id)

    @classmethod
    def local(cls) -> Actor:
        """The user running a ``plumb-server`` command on the server host."""
        return cls(LOCAL, getpass.getuser())

    @classmethod
    def server(cls) -> Actor:
        return cls("server", "plumb-server")

    def __str__(self) -> str:
        role = f" ({self.role})" if self.role else ""
        return f"{self.kind} {self.name}{role}"


@dataclasses.dataclass(frozen=True)
class Entry:
    """What is recorded: the log adds its number, time and hashes (:class:`Record`)."""

    actor: Actor
    peer: str
    action: str
    details: Mapping[str, Any]
    result: str = OK
    reason: str = ""
    revision: int | None = None  # the revision a push stored


@dataclasses.dataclass(frozen=True)
class Record:
    """An entry as the log holds it. ``details`` is its canonical JSON text, as hashed."""

    id: int
    at: float
    actor_kind: str
    actor: str
    role: str
    peer: str
    action: str
    details: str
    result: str
    reason: str
    revision: int | None
    prev_hash: str
    hash: str

    def canonical_form(self) -> bytes:
        return canonical_form(self)


def canonical(value: Any) -> str:
    """JSON that is the same for the same value: sorted keys, no spaces, UTF-8 as is."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


# The fields hashed, in this order; everything but the hash itself.
HASHED = (
    "id",
    "at",
    "actor_kind",
    "actor",
    "role",
    "peer",
    "action",
    "details",
    "result",
    "reason",
    "revision",
    "prev_hash",
)


def canonical_form(record: Record) -> bytes:
    """What an entry's hash is taken over: its fields (but the hash) as canonical JSON.

    ``at`` is a float and JSON writes it as Python's shortest round-trip
    form, which the store gives back exactly (a double in and out).
    """
    return canonical({name: getattr(record, name) for name in HASHED}).encode()


def digest(record: Record) -> str:
    return hashlib.sha256(canonical_form(record)).hexdigest()


def seal(number: int, at: float, entry: Entry, prev_hash: str) -> Record:
    """The entry as entry ``number`` of the log, after the one whose hash is ``prev_hash``."""
    unsealed = Record(
        id=number,
        at=at,
        actor_kind=entry.actor.kind,
        actor=entry.actor.name,
        role=entry.actor.role,
        peer=entry.peer,
        action=entry.action,
        details=canonical(dict(entry.details)),
        result=entry.result,
        reason=entry.reason,
        revision=entry.revision,
        prev_hash=prev_hash,
        hash="",
    )
    return dataclasses.replace(unsealed, hash=digest(unsealed))


@dataclasses.dataclass(frozen=True)
class Check:
    """What :func:`verify` found."""

    entries: int  # how many were read
    head_id: int  # the last entry read (0: none)
    head_hash: str
    broken_at: int | None = None  # the first entry that breaks the chain
    problem: str | None = None

    @property
    def intact(self) -> bool:
        return self.broken_at is None


def verify(records: Iterable[Record], head_id: int, head_hash: str) -> Check:
    """Walk the log in id order; the first entry that breaks the chain, if one does.

    ``head_id``/``head_hash``: what the store says the last entry is. A
    missing entry is named by its number (``broken_at``), which no longer exists.
    """
    count, last_id, last_hash = 0, 0, GENESIS
    for record in records:
        count += 1
        broken = _break(record, last_id, last_hash)
        if broken is not None:
            return Check(count, last_id, last_hash, *broken)
        last_id, last_hash = record.id, record.hash
    if head_id > last_id:
        return Check(
            count,
            last_id,
            last_hash,
            last_id + 1,
            f"{_entries(last_id + 1, head_id)} missing from the end of the log (deleted?): "
            f"the log's head is entry {head_id}",
        )
    if (last_id, last_hash) != (head_id, head_hash):
        return Check(
            count,
            last_id,
            last_hash,
            head_id + 1 if head_id < last_id else last_id,
            f"the log's recorded head (entry {head_id}, hash {head_hash[:12]}...) is not its "
            f"last entry (entry {last_id}, hash {last_hash[:12]}...)",
        )
    return Check(count, last_id, last_hash)


def _entries(first: int, last: int) -> str:
    return f"entry {first} is" if first == last else f"entries {first}-{last} are"


def _break(record: Record, last_id: int, last_hash: str) -> tuple[int, str] | None:
    """Where and how ``record`` breaks the chain after entry ``last_id`` (None: it does not)."""
    if record.id != last_id + 1:
        if record.id <= last_id:
            return record.id, f"entry {record.id} comes after entry {last_id}: out of order"
        gone = _entries(last_id + 1, record.id - 1)
        return last_id + 1, f"{gone} missing before entry {record.id} (deleted?)"
    if digest(record) != record.hash:
        return record.id, (
            f"entry {record.id} was changed after it was written: its hash does not match it"
        )
    if record.prev_hash != last_hash:
        before = f"entry {last_id}'s hash" if last_id else "the chain's start (64 zeros)"
        return record.id, (
            f"entry {record.id} does not follow entry {last_id}: its prev_hash is not "
            f"{before} (one of them was replaced)"
        )
    return None


class Auditor:
    """Appends entries to the store's log, and a line per entry to the server's log."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def record(
        self,
        actor: Actor,
        peer: str,
        action: str,
        details: Mapping[str, Any],
        result: str = OK,
        reason: str = "",
        revision: int | None = None,
    ) -> Record | None:
        """Append one entry (a commit: call it from a thread). None if it could not be written.

        What was done is done by then: an entry that cannot be written is
        logged as an error, loudly, and the call's answer stands.
        """
        entry = Entry(actor, peer_address(peer), action, details, result, reason, revision)
        try:
            done = self.store.audit(entry, self.clock())
        except Exception:
            log.exception("could not write the audit entry of %s by %s: %s", action, actor, entry)
            return None
        log.info(
            "audit %d %s: %s %s from %s: %s%s",
            done.id,
            done.hash,
            actor,
            action,
            done.peer,
            result,
            f" ({reason})" if reason else "",
        )
        return done

    async def arecord(
        self,
        actor: Actor,
        peer: str,
        action: str,
        details: Mapping[str, Any],
        result: str = OK,
        reason: str = "",
        revision: int | None = None,
    ) -> Record | None:
        """:meth:`record` from a coroutine: the commit goes to a thread."""
        return await asyncio.to_thread(
            self.record, actor, peer, action, details, result, reason, revision
        )


def peer_address(peer: str) -> str:
    """gRPC's ``ipv4:127.0.0.1:5123`` (or ``ipv6:%5B::1%5D:5123``) as ``127.0.0.1:5123``."""
    scheme, sep, rest = peer.partition(":")
    if sep and scheme in ("ipv4", "ipv6"):
        return urllib.parse.unquote(rest)
    return peer


# ------------------------------------------------------------ what each Admin call records

#: Longest string and list kept in details: a summary, not a copy of the request.
MAX_TEXT = 200
MAX_ITEMS = 20


@dataclasses.dataclass(frozen=True)
class Summary:
    """What an Admin call records of itself, given its request and (if it answered) its reply."""

    details: dict[str, Any]
    #: The call answered, but refused what it was asked: why (a push with manifest errors).
    refused: str | None = None
    revision: int | None = None  # the revision a push stored


#: (request, reply or None when the call was refused or failed) -> Summary.
Summarize = Callable[[Any, Any], Summary]


def _text(value: str) -> str:
    return value if len(value) <= MAX_TEXT else f"{value[:MAX_TEXT]}... ({len(value)} characters)"


def _few(items: Sequence[str]) -> list[str] | None:
    if not items:
        return None
    kept = [_text(x) for x in items[:MAX_ITEMS]]
    return [*kept, f"... ({len(items) - MAX_ITEMS} more)"] if len(items) > MAX_ITEMS else kept


def _labels(labels: Mapping[str, str]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in sorted(labels.items())[:MAX_ITEMS]}


def request_fields(request: Message) -> dict[str, Any]:
    """A read's request as it was sent (reads carry no secrets), strings cut short."""
    fields = json_format.MessageToDict(request, preserving_proto_field_name=True)
    return {
        key: _text(value) if isinstance(value, str) else value
        for key, value in list(fields.items())[:MAX_ITEMS]
    }


def create_token(request: pb.CreateTokenRequest, reply: pb.CreateTokenResponse | None) -> Summary:
    details: dict[str, Any] = {
        "labels": _labels(request.labels),
        "ttl_s": request.ttl_s or None,  # None: the server's default
        "uses": request.uses or None,
        "names": _few(request.names),
        "name_pattern": _text(request.name_pattern) or None,
    }
    if reply is not None:  # its id, never the token itself: the token is the secret
        details.update(token=reply.id, expires_at=reply.expires_at, uses=reply.uses)
    return Summary(details)


def revoke_token(request: pb.RevokeTokenRequest, reply: pb.RevokeTokenResponse | None) -> Summary:
    details: dict[str, Any] = {"token": _text(request.id)}
    if reply is not None:
        details["already_revoked"] = reply.already_revoked
    return Summary(details)


def reenroll_node(request: pb.ReenrollNodeRequest, reply: pb.CreateTokenResponse | None) -> Summary:
    details: dict[str, Any] = {"node": _text(request.node_name), "ttl_s": request.ttl_s or None}
    if reply is not None:
        details.update(token=reply.id, expires_at=reply.expires_at)
    return Summary(details)


def _files(files: Sequence[pb.ManifestFile]) -> list[dict[str, Any]]:
    """Pushed files by path, size and SHA-256: their content may hold secrets."""
    return [
        {
            "path": _text(f.path),
            "bytes": len(f.content.encode()),
            "sha256": hashlib.sha256(f.content.encode()).hexdigest(),
        }
        for f in files[:MAX_ITEMS]
    ]


def push(request: pb.PushRequest, reply: pb.PushResponse | None) -> Summary:
    """The files by path, size and SHA-256 (their content may hold secrets), and what came of it."""
    details: dict[str, Any] = {
        "files": _files(request.files),
        "message": _text(request.message) or None,
    }
    if request.HasField("rollout"):
        details["rollout"] = _staged(request.rollout)
    if len(request.files) > MAX_ITEMS:
        details["more_files"] = len(request.files) - MAX_ITEMS
    return _new_revision(details, reply)


def plan(request: pb.PlanRequest, reply: pb.PlanResponse | None) -> Summary:
    """The files by hash, as for a push, the selector, and who answered."""
    details: dict[str, Any] = {
        "files": _files(request.files),
        "target": _text(request.target) or None,
    }
    if reply is None:
        return Summary(details)
    if reply.errors:
        return Summary(details, refused=f"{len(reply.errors)} manifest error(s)")
    details.update(
        base_revision=reply.base_revision,
        answered=len(reply.answered),
        no_answer=len(reply.no_answer),
        offline=len(reply.offline),
    )
    return Summary(details)


def steer_rollout(
    request: pb.SteerRolloutRequest, reply: pb.SteerRolloutResponse | None
) -> Summary:
    details: dict[str, Any] = {
        "action": _text(request.action),
        "message": _text(request.message) or None,
    }
    if reply is None:
        return Summary(details)
    details.update(rollout=reply.rollout.id, state=reply.rollout.state)
    if reply.HasField("rollback"):
        return _new_revision(details, reply.rollback)
    return Summary(details)


def add_waiver(request: pb.AddWaiverRequest, reply: pb.WaiverInfo | None) -> Summary:
    details: dict[str, Any] = {
        "control": _text(request.control) or None,
        "resource": _text(request.resource_id) or None,
        "target": _text(request.target) or None,
        "reason": _text(request.reason),
        "expires_at": request.expires_at,
    }
    if reply is not None:
        details["waiver"] = reply.id
    return Summary(details)


def revoke_waiver(request: pb.RevokeWaiverRequest, reply: pb.WaiverInfo | None) -> Summary:
    return Summary({"waiver": request.id})


def remove_manifest(request: pb.RemoveManifestRequest, reply: pb.PushResponse | None) -> Summary:
    details: dict[str, Any] = {
        "manifest": _text(request.name),
        "purge": request.purge,
        "message": _text(request.message) or None,
    }
    return _new_revision(details, reply)


def rollback(request: pb.RollbackRequest, reply: pb.PushResponse | None) -> Summary:
    details: dict[str, Any] = {
        "to": request.to,
        "manifest": _text(request.name) or None,  # None: the whole revision
        "message": _text(request.message) or None,
    }
    if request.HasField("rollout"):
        details["rollout"] = _staged(request.rollout)
    return _new_revision(details, reply)


def _staged(r: pb.RolloutSettings) -> dict[str, Any]:
    return {
        "canary": _text(r.canary) or None,
        "batch": _text(r.batch) or None,
        "max_failures": _text(r.max_failures) or None,
        "batch_timeout_s": r.batch_timeout_s or None,
        "pause_after_canary": r.pause_after_canary,
    }


def set_labels(request: pb.SetLabelsRequest, reply: pb.SetLabelsResponse | None) -> Summary:
    details: dict[str, Any] = {
        "node": _text(request.node_name),
        "set": _labels(request.set),
        "remove": _few(request.remove),
    }
    if reply is not None:
        details.update(
            matched_before=_few(reply.matched_before),
            matched_after=_few(reply.matched_after),
            delivered=reply.delivered,
        )
    return Summary(details)


def _new_revision(details: dict[str, Any], reply: pb.PushResponse | None) -> Summary:
    """What came of a call that proposes a new revision (push, manifest rm, rollback)."""
    if reply is None:
        return Summary(details)
    if reply.errors:
        # Where, never the message: a message may quote the value it refused.
        first = reply.errors[0]
        at = f"{first.file}:{first.line}" if first.file else "the push as a whole"
        field = f" ({first.field})" if first.field else ""
        why = f"{len(reply.errors)} manifest error(s), the first at {_text(at)}{_text(field)}"
        return Summary(details, refused=why)
    details.update(
        revision=reply.revision, unchanged=reply.unchanged, targeted=len(reply.targeted_nodes)
    )
    return Summary(details, revision=None if reply.unchanged else reply.revision)


def revoke_node(request: pb.RevokeNodeRequest, reply: pb.RevokeNodeResponse | None) -> Summary:
    details: dict[str, Any] = {"node": _text(request.node_name)}
    if reply is not None:
        details.update(
            cert_serial=reply.cert_serial,
            already_revoked=reply.already_revoked,
            sessions_ended=reply.sessions_ended,
        )
    return Summary(details)


def remove_node(request: pb.RemoveNodeRequest, reply: pb.RemoveNodeResponse | None) -> Summary:
    details: dict[str, Any] = {"node": _text(request.node_name)}
    if reply is not None:
        details.update(
            cert_serial=reply.cert_serial,
            already_removed=reply.already_removed,
            sessions_ended=reply.sessions_ended,
        )
    return Summary(details)


def add_operator(request: pb.AddOperatorRequest, reply: pb.AddOperatorResponse | None) -> Summary:
    details: dict[str, Any] = {"operator": _text(request.name), "role": _text(request.role)}
    if reply is not None:
        details["cert_serial"] = reply.operator.cert_serial
    return Summary(details)


def renew_operator(
    request: pb.RenewOperatorRequest, reply: pb.RenewOperatorResponse | None
) -> Summary:
    details: dict[str, Any] = {}
    if reply is not None:
        details.update(
            operator=reply.operator.name,
            cert_serial=reply.operator.cert_serial,
            replaced_serial=reply.replaced_serial,
        )
    return Summary(details)


def revoke_operator(
    request: pb.RevokeOperatorRequest, reply: pb.RevokeOperatorResponse | None
) -> Summary:
    details: dict[str, Any] = {"operator": _text(request.name)}
    if reply is not None:
        details.update(
            role=reply.operator.role,
            cert_serial=reply.operator.cert_serial,
            already_revoked=reply.already_revoked,
        )
    return Summary(details)
