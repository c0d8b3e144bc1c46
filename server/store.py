"""The server's store: one schema, written with SQLAlchemy Core.

Why SQLAlchemy Core and not hand-written SQL: the same table definitions and
queries run on SQLite (the embedded default) and PostgreSQL (for several
replicas), with the dialect differences (upserts, JSON, pool behaviour) kept
inside the library. Callers see only :class:`Store` methods and plain
dataclasses, never SQL or rows.

SQLite runs in WAL mode so readers (CLI queries) never block the writer
(report ingest).

The schema is versioned: ``metadata`` below is what the code expects, and
the Alembic revisions in server/migrations bring any earlier store to it
(:func:`migrate`). A store is created once, by ``plumb-server init``
(:meth:`Store.create`), and from then on only opened: a store that is
missing, empty, damaged, newer than this code, or not SQLite is refused with
a :class:`StoreError` saying what to do, never replaced by a new empty one.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from modules.base import Status
from server import audit as audit_
from server import history
from server import tokens as tokens_
from server.errors import (
    LastAdmin,
    NodeExists,
    OperatorExists,
    StoreError,
    TokenRefused,
    UnknownNode,
    UnknownOperator,
    UnknownToken,
)
from server.targeting import Subject

log = logging.getLogger("plumb.server.store")

metadata = sa.MetaData()


def _serial_id() -> sa.Column[int]:
    # SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
    return sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    )


nodes = sa.Table(
    "nodes",
    metadata,
    sa.Column("name", sa.String(253), primary_key=True),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("cert_serial", sa.String(64), nullable=False),
    sa.Column("enrolled_at", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False, server_default="0"),
    sa.Column("applied_revision", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("facts", sa.JSON, nullable=False),
    # finished_at of the newest run report folded into resource_status, so an
    # old report delivered late from a spool never overwrites newer status.
    sa.Column("status_as_of", sa.Float, nullable=False, server_default="0"),
    # The catalog revision that report ran: compliance counts a node's status
    # only for the revision it was reported at ("pending" otherwise).
    sa.Column("status_revision", sa.BigInteger, nullable=False, server_default="0"),
    # The sequence of that report (its agent numbers its reports): what decides
    # which report is a node's newest, before its clock does (status_as_of).
    sa.Column("status_sequence", sa.BigInteger, nullable=False, server_default="0"),
    # The agent's clock minus the server's at its last hello; NULL: not known.
    sa.Column("clock_offset_s", sa.Float, nullable=True),
    # What its agent last said is wrong with it now: [{"name", "detail", "since"}];
    # NULL: it never said (an agent older than conditions).
    sa.Column("conditions", sa.JSON, nullable=True),
    # When its certificate (cert_serial) was revoked (`plumb node revoke`, or
    # `node rm`); NULL: it is not. A revoked node stays listed, and counted in
    # compliance, until it is enrolled again under a new certificate.
    sa.Column("revoked_at", sa.Float, nullable=True),
    # When it was removed (`plumb node rm`); NULL: it was not. A removed node is
    # left out of `plumb nodes`, pushes and compliance; its reports and drift
    # events stay. Enrolling its name again makes a new node of it.
    sa.Column("decommissioned_at", sa.Float, nullable=True),
    # The token its current certificate was enrolled with (a re-enroll's, after
    # one); NULL: enrolled before this was recorded.
    sa.Column("enrolled_by_token", sa.String(32), nullable=True),
    # A renewed certificate issued over the node's session and not used yet:
    # both it and cert_serial are good until a session opens with it, which
    # makes it cert_serial (Store.certificate_in_use). NULL: none.
    sa.Column("next_cert_serial", sa.String(64), nullable=True),
    # When the certificate cert_serial names expires; NULL: not recorded.
    sa.Column("cert_not_after", sa.Float, nullable=True),
    # The key identifier (hex) of the CA that issued it (server/ca.py); NULL: not recorded.
    sa.Column("cert_issuer", sa.String(64), nullable=True),
    # How often its agent runs by itself, as its last hello said (seconds);
    # NULL: not said (an older agent), 0: it does not (one-shot runs only).
    sa.Column("run_interval_s", sa.Float, nullable=True),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("secret_sha256", sa.String(64), nullable=False),  # never the secret itself
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("uses_left", sa.Integer, nullable=False),
    sa.Column("uses", sa.Integer, nullable=False),
    # The names it allows (server/tokens.py): a list of exact names, or one
    # fnmatch pattern, or (both NULL) any name not targeted by name.
    sa.Column("names", sa.JSON, nullable=True),
    sa.Column("name_pattern", sa.String(253), nullable=True),
    # Made by `plumb node reenroll`: it may replace the certificate of an
    # existing node of its (one) name; no other token ever may.
    sa.Column("reenroll", sa.Boolean, nullable=False, server_default="0"),
    # When `plumb token revoke` revoked it; NULL: not revoked. Kept, not
    # deleted: nodes record which token enrolled them.
    sa.Column("revoked_at", sa.Float, nullable=True),
)

revisions = sa.Table(
    "revisions",
    metadata,
    _serial_id(),
    sa.Column("created_at", sa.Float, nullable=False),
    # [{"name", "file", "source"}]: the complete manifest set of this revision.
    sa.Column("manifests", sa.JSON, nullable=False),
    # The audit log's entry of the push that stored it (server/audit.py); NULL:
    # pushed before the log existed (or the entry could not be written).
    sa.Column("audit_id", sa.BigInteger, nullable=True),
    # Who made it: the operator certificate's name; NULL: made before this was recorded.
    sa.Column("author", sa.String(253), nullable=True),
    # What the operator said of it (`plumb push -m`); NULL when nothing.
    sa.Column("message", sa.Text, nullable=True),
    # server/history.py content_hash of the manifest set: equal sets, equal hashes.
    sa.Column("content_sha256", sa.String(64), nullable=True),
    # [{"name", "file", "source"}]: manifests removed with --purge, whose
    # resources agents remove (server/compiler.py); carried by later revisions
    # until a manifest of that name is pushed again. NULL: none.
    sa.Column("purged", sa.JSON, nullable=True),
    # What made it: "push", "remove", "rollback"; NULL: a push before this was recorded.
    sa.Column("origin", sa.String(16), nullable=True),
)

# An accepted exception to compliance (plumb waiver add): results of a control,
# or of one resource, on the nodes a selector picks, count as "waived" until
# it expires or is revoked. Never deleted: evidence of who accepted what.
waivers = sa.Table(
    "waivers",
    metadata,
    _serial_id(),
    sa.Column("control", sa.String(253), nullable=True),  # or:
    sa.Column("resource_id", sa.String(512), nullable=True),
    sa.Column("target", sa.Text, nullable=True),  # a selector; NULL: every node
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("approver", sa.String(253), nullable=False),  # the operator's identity
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
)

# A staged rollout of one revision (server/rollout.py): which nodes get it
# in which batch, and how far it got. It lives here, so it survives a restart.
rollouts = sa.Table(
    "rollouts",
    metadata,
    _serial_id(),
    sa.Column("revision", sa.BigInteger, nullable=False),  # what it rolls out
    # What the nodes not reached yet keep meanwhile.
    sa.Column("previous_revision", sa.BigInteger, nullable=False),
    # running, paused, halted, done, aborted (server/rollout.py: State)
    sa.Column("state", sa.String(16), nullable=False),
    # {"canary": "1", "batch": "25%", "max_failures": "0", "batch_timeout_s": 300.0,
    #  "pause_after_canary": false}: as the operator gave them.
    sa.Column("settings", sa.JSON, nullable=False),
    sa.Column("max_failures", sa.Integer, nullable=False),  # resolved: failures allowed
    sa.Column("kind", sa.String(16), nullable=False),  # "push" or "rollback" (of another)
    sa.Column("author", sa.String(253), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("reason", sa.Text, nullable=True),  # why it halted, or was aborted
)

rollout_nodes = sa.Table(
    "rollout_nodes",
    metadata,
    sa.Column("rollout_id", sa.BigInteger, primary_key=True),
    sa.Column("node", sa.String(253), primary_key=True),
    sa.Column("batch", sa.Integer, nullable=False),  # 0 first (the canary, if any)
    # waiting (keeps the previous revision), sent, succeeded, failed
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=True),  # why it failed
    sa.Column("sent_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
)

catalogs = sa.Table(
    "catalogs",
    metadata,
    sa.Column("node", sa.String(253), primary_key=True),
    sa.Column("revision", sa.BigInteger, primary_key=True),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    # The names of the manifests (and purged ones) that selected the node when
    # it was compiled: {"manifests": [...], "purged": [...]}. A node whose
    # facts or labels now select others is compiled again. NULL: not recorded.
    sa.Column("selected", sa.JSON, nullable=True),
)

# Why a node has no catalog at a revision: compiling it failed (two of its
# resources would manage one object, a require into a manifest that does not
# target it). Only nodes that enrolled after the push can get here: a push
# that fails for any known node is refused whole.
catalog_problems = sa.Table(
    "catalog_problems",
    metadata,
    sa.Column("node", sa.String(253), primary_key=True),
    sa.Column("revision", sa.BigInteger, primary_key=True),
    sa.Column("problems", sa.JSON, nullable=False),  # ["web.yaml:7: path /etc/x is ...", ...]
    sa.Column("recorded_at", sa.Float, nullable=False),
)

reports = sa.Table(
    "reports",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # made by the agent: idempotent ingest
    sa.Column("node", sa.String(253), nullable=False, index=True),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("noop", sa.Boolean, nullable=False),
    sa.Column("trigger", sa.String(16), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float, nullable=False, index=True),
    sa.Column("received_at", sa.Float, nullable=False),
    # The agent's number for it (0 from agents older than sequence numbers).
    sa.Column("sequence", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("summary", sa.JSON, nullable=False),
    # The report as the agent sent it: its protobuf encoding. Everything worth a
    # query is in columns and the status/drift tables; converting every report
    # to JSON would cost ~1 ms each, a thousand reports a second of one core.
    # What only a report shows (errors, durations, each resource's observed
    # state) lives here alone; `plumb report` reads it back from here.
    sa.Column("body", sa.LargeBinary, nullable=False),
)

# A node's reports by their agent's numbering: its newest, its last sequence.
sa.Index("ix_reports_node_sequence", reports.c.node, reports.c.sequence)

resource_status = sa.Table(
    "resource_status",
    metadata,
    sa.Column("node", sa.String(253), primary_key=True),
    sa.Column("resource_id", sa.String(512), primary_key=True),
    sa.Column("manifest", sa.String(63), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("controls", sa.JSON, nullable=False),
    sa.Column("report_id", sa.String(64), nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

drift_events = sa.Table(
    "drift_events",
    metadata,
    _serial_id(),
    sa.Column("node", sa.String(253), nullable=False, index=True),
    sa.Column("report_id", sa.String(64), nullable=False),
    sa.Column("resource_id", sa.String(512), nullable=False),
    sa.Column("manifest", sa.String(63), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("changes", sa.JSON, nullable=False),
    sa.Column("detected_at", sa.Float, nullable=False, index=True),
    # The resource's controls: tags (["CIS-1.1", ...]); NULL: stored before they were kept.
    sa.Column("controls", sa.JSON, nullable=True),
    sa.UniqueConstraint("report_id", "resource_id"),
)

# What agents reported losing of their own state (a damaged report spool set
# aside, a cached catalog that did not verify), so an operator can see "web-1
# lost 12 spooled reports at T". The id is the agent's: a hello sent twice is
# recorded once.
state_losses = sa.Table(
    "state_losses",
    metadata,
    sa.Column("node", sa.String(253), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("what", sa.String(32), nullable=False),  # "spooled_reports", "cached_catalog"
    sa.Column("count", sa.BigInteger, nullable=True),  # NULL: nobody can tell how many
    sa.Column("found_at", sa.Float, nullable=False),  # the agent's clock
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),  # the server's clock
)

# Who may call the Admin service, and as what (server/operators.py): the store
# is the source of truth for an operator's role, its one current certificate
# and whether it is revoked. A revoked operator keeps its row; adding its name
# again makes it current again, under a new certificate.
operators = sa.Table(
    "operators",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),  # viewer, operator, admin
    sa.Column("cert_serial", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
)

# The audit log (server/audit.py): appended to, never changed. Entries are
# numbered 1, 2, 3, ... by the store (not by the database), each holding the
# hash of the one before: an edited or deleted entry breaks the chain.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("at", sa.Float, nullable=False, index=True),
    sa.Column("actor_kind", sa.String(16), nullable=False),
    sa.Column("actor", sa.String(253), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("peer", sa.String(255), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("details", sa.Text, nullable=False),  # canonical JSON, as hashed
    sa.Column("result", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=True),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# The last entry of the audit log: one row ("audit"), updated in the
# transaction of each append. Its update is that transaction's first write,
# so appends never race (SQLite's write lock, PostgreSQL's row lock), and an
# entry cut off the end of the log leaves a head naming it.
audit_head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("chain", sa.String(16), primary_key=True),
    sa.Column("last_id", sa.BigInteger, nullable=False),
    sa.Column("last_hash", sa.String(64), nullable=False),
)
AUDIT_CHAIN = "audit"

#: Statuses of a drift event: the resource differed from a spec it had converged to,
#: and was repaired, left as it was (audit, noop) or could not be repaired.
DRIFT = (Status.REPAIRED, Status.DRIFTED, Status.FAILED)


@dataclasses.dataclass(frozen=True)
class NodeRow:
    name: str
    labels: dict[str, str]
    enrolled_at: float
    last_seen: float
    applied_revision: int
    #: The revision of the newest run report in its current status; 0 = none.
    status_revision: int = 0
    #: What its last hello said about the host (os, agent version, ...).
    facts: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Its clock minus the server's at its last hello; None: not known yet.
    clock_offset_s: float | None = None
    #: What its agent last said is wrong with it: {"name", "detail", "since"} each.
    conditions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: The serial of its current certificate, lower-case hex.
    cert_serial: str = ""
    #: When that certificate was revoked; None: it is not.
    revoked_at: float | None = None
    #: When the node was removed (`plumb node rm`); None: it was not.
    decommissioned_at: float | None = None
    #: The id of the token it was last enrolled with; None: not recorded (an older store).
    enrolled_by_token: str | None = None
    #: When its current certificate expires; None: not recorded (issued by an older server).
    cert_not_after: float | None = None
    #: A renewed certificate issued and not used yet; None: none.
    next_cert_serial: str | None = None
    #: The key identifier of the CA that issued its certificate; None: not recorded.
    cert_issuer: str | None = None
    #: When its newest run report's run ended, by its agent's clock; 0: none yet.
    status_as_of: float = 0.0
    #: How often its agent runs by itself (seconds); None: not known; 0: it does not.
    run_interval_s: float | None = None

    @property
    def last_report_at(self) -> float | None:
        """When its newest run ended, by the server's clock (its clock's offset taken off)."""
        if not self.status_as_of:
            return None
        return self.status_as_of - (self.clock_offset_s or 0.0)

    @property
    def subject(self) -> Subject:
        """What targets select it by: its name, labels and facts."""
        return Subject(self.name, self.labels, self.facts)


@dataclasses.dataclass(frozen=True)
class NodeCredential:
    """What decides whether a node's certificate is still good: the store's word on it."""

    serial: str  # of the one certificate the node may use, lower-case hex
    revoked_at: float | None = None
    decommissioned_at: float | None = None
    #: A renewed certificate, good as well until it is used (then the only one).
    next_serial: str | None = None
    #: The key identifier of the CA that issued the current one; None: not recorded.
    issuer: str | None = None

    def allows(self, serial: str) -> bool:
        return serial in (self.serial, self.next_serial)


@dataclasses.dataclass(frozen=True)
class OperatorCredential:
    """What decides whether an operator's certificate is still good, and what it may do."""

    role: str  # viewer, operator, admin (server/operators.py: Role)
    serial: str  # of the one certificate the operator may use, lower-case hex
    revoked_at: float | None = None


@dataclasses.dataclass(frozen=True)
class OperatorRow:
    name: str
    role: str
    cert_serial: str
    created_at: float
    revoked_at: float | None = None


@dataclasses.dataclass(frozen=True)
class Revocation:
    """What revoking (or removing) a node did."""

    node: str
    serial: str  # the certificate revoked
    at: float  # when it was revoked (or removed); the first time, if it already was
    already: bool  # it already was: nothing changed


@dataclasses.dataclass(frozen=True)
class TokenRow:
    """An enrollment token as the store keeps it: everything but its secret."""

    id: str
    labels: dict[str, str]
    created_at: float
    expires_at: float
    uses: int  # how many enrollments it allows in all
    uses_left: int
    binding: tokens_.Binding = tokens_.UNBOUND
    reenroll: bool = False
    revoked_at: float | None = None
    #: Nodes whose current certificate it enrolled.
    nodes: tuple[str, ...] = ()

    def state(self, now: float) -> str:
        """``revoked``, ``expired``, ``used_up`` or ``valid`` (the first that holds)."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= now:
            return "expired"
        if self.uses_left <= 0:
            return "used_up"
        return "valid"


@dataclasses.dataclass(frozen=True)
class NodeSeen:
    """A node's presence: when it was last heard from, and what it said in its hello."""

    last_seen: float
    applied_revision: int | None = None
    facts: dict[str, str] | None = None
    clock_offset_s: float | None = None  # the agent's clock minus ours, from its hello
    #: Its conditions, from a hello or a heartbeat that changed them; None: unchanged.
    conditions: list[dict[str, Any]] | None = None
    run_interval_s: float | None = None  # from its hello: how often it runs by itself


@dataclasses.dataclass(frozen=True)
class ManifestSource:
    name: str
    file: str
    source: str


@dataclasses.dataclass(frozen=True)
class Selected:
    """The names of the manifests, and of the purged ones, that select a node."""

    manifests: tuple[str, ...] = ()
    purged: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class RevisionMeta:
    """What a new revision records beside its manifests."""

    #: The operator certificate's name; None: not known (a test, a migration).
    author: str | None = None
    message: str = ""
    #: "push", "remove" or "rollback".
    origin: str = "push"
    #: Manifests removed with --purge (see ``revisions.purged``).
    purged: tuple[ManifestSource, ...] = ()


@dataclasses.dataclass(frozen=True)
class WaiverRow:
    id: int
    control: str | None
    resource_id: str | None
    target: str | None
    reason: str
    approver: str
    created_at: float
    expires_at: float
    revoked_at: float | None = None

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if now >= self.expires_at else "active"


@dataclasses.dataclass(frozen=True)
class RolloutNode:
    node: str
    batch: int
    state: str  # waiting, sent, succeeded, failed
    reason: str | None = None
    sent_at: float | None = None
    finished_at: float | None = None


@dataclasses.dataclass(frozen=True)
class NewRollout:
    """What a staged push stores with its revision, in the same transaction."""

    previous_revision: int
    settings: dict[str, Any]
    max_failures: int
    batches: tuple[tuple[str, ...], ...]  # node names, batch by batch
    kind: str = "push"


@dataclasses.dataclass(frozen=True)
class RolloutRow:
    id: int
    revision: int
    previous_revision: int
    state: str
    settings: dict[str, Any]
    max_failures: int
    kind: str
    author: str | None
    created_at: float
    updated_at: float
    reason: str | None
    nodes: tuple[RolloutNode, ...]


@dataclasses.dataclass(frozen=True)
class RevisionRow:
    """One stored revision, as ``plumb history`` shows it."""

    id: int
    created_at: float
    manifests: tuple[ManifestSource, ...]
    author: str | None
    message: str
    content_sha256: str
    origin: str
    purged: tuple[ManifestSource, ...]
    audit_id: int | None


@dataclasses.dataclass(frozen=True)
class ResultRecord:
    """One resource's outcome in a report, as the store needs it."""

    resource_id: str
    manifest: str
    status: Status
    changes: list[dict[str, str]]
    controls: list[str]
    drift: bool = False  # differed from a spec it had already converged to


@dataclasses.dataclass(frozen=True)
class ReportRecord:
    id: str
    node: str
    revision: int
    noop: bool
    trigger: str
    started_at: float
    finished_at: float
    results: list[ResultRecord]
    body: bytes  # the wire report (protobuf), returned verbatim by last_report()
    sequence: int = 0  # the agent's number for it; 0 from agents older than that


@dataclasses.dataclass(frozen=True)
class DriftFilter:
    """Which drift events ``plumb drift`` asks for; each field set narrows them."""

    kind: str | None = None
    manifest: str | None = None
    control: str | None = None
    since: float | None = None  # detected at or after (unix seconds)
    unrepaired: bool = False  # only what was not repaired (drifted in audit, or failed)

    def conditions(self) -> list[Any]:
        c = drift_events.c
        found: list[Any] = []
        if self.kind:
            found.append(c.resource_id.startswith(f"{self.kind}/", autoescape=True))
        if self.manifest:
            found.append(c.manifest == self.manifest)
        if self.control:
            # The tag as JSON writes it, inside the JSON array: an exact member.
            tag = json.dumps(self.control)
            found.append(sa.cast(c.controls, sa.Text).contains(tag, autoescape=True))
        if self.since is not None:
            found.append(c.detected_at >= self.since)
        if self.unrepaired:
            found.append(c.status != Status.REPAIRED.value)
        return found


@dataclasses.dataclass(frozen=True)
class RunRow:
    """One run of a node, as ``plumb runs`` lists it (its report without the results)."""

    id: str
    revision: int
    noop: bool
    trigger: str
    started_at: float
    finished_at: float
    received_at: float
    sequence: int
    summary: dict[str, int]  # resources per status


@dataclasses.dataclass(frozen=True)
class DriftRow:
    id: int
    node: str
    report_id: str
    resource_id: str
    manifest: str
    status: Status
    changes: list[dict[str, str]]
    detected_at: float


@dataclasses.dataclass(frozen=True)
class StateLossRow:
    """Something a node lost of its own state, as it reported it."""

    node: str
    id: str
    what: str
    count: int | None  # None: unknown
    found_at: float  # the agent's clock
    detail: str
    received_at: float = 0.0  # the server's clock


@dataclasses.dataclass(frozen=True)
class StatusRow:
    """One resource's current status on one node, from the node's newest run report."""

    node: str
    resource_id: str
    status: Status


WAL_CHECKPOINT_PAGES = 10_000  # 40 MiB of 4 KiB pages: see _Checkpointer


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a report is acknowledged (and deleted from the agent's spool) only
    # after its commit, so the commit must survive a power cut, not just a crash.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    # Copying the WAL back into the database is _Checkpointer's job, in its own
    # thread; a writer checkpoints itself only when the WAL has grown this many
    # pages (40 MiB) anyway, which keeps the WAL bounded even under sustained
    # ingest (it restarts from its beginning only after a complete checkpoint).
    cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
    cursor.close()


def open_engine(url: str) -> Engine:
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class _Checkpointer:
    """Checkpoints SQLite's WAL in a thread of its own, whenever a batch of reports was committed.

    A checkpoint copies every page written since the last one from the WAL
    into the database file and syncs it: with the default automatic
    checkpoint, that is done by the committing writer, inside its commit,
    and costs as much as the commit itself. A PASSIVE checkpoint blocks no
    reader or writer, so here it runs beside the next batch (SQLite releases
    the GIL meanwhile): the writer only appends to the WAL and syncs it.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._wanted = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def poke(self) -> None:
        with self._lock:
            if self._stopping:
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="plumb-wal-checkpoint", daemon=True
                )
                self._thread.start()
        self._wanted.set()

    def close(self) -> None:
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wanted.set()
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopping:
                return
            try:
                with self._engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except sa.exc.SQLAlchemyError as exc:  # the writers' own checkpoints still run
                log.warning("WAL checkpoint failed: %s", exc)


# ------------------------------------------------------------ creating, opening, migrating


@dataclasses.dataclass(frozen=True)
class Migration:
    """What :func:`migrate` did to a store."""

    store: str  # the file
    from_revision: str | None  # None: made by Plumb 0.1.0, which recorded no revision
    to_revision: str

    @property
    def changed(self) -> bool:
        return self.from_revision != self.to_revision

    def __str__(self) -> str:
        if not self.changed:
            return f"store already at head ({self.to_revision}): {self.store}"
        before = self.from_revision or "0.1.0 (no revision recorded)"
        return f"store migrated from {before} to {self.to_revision}: {self.store}"


def store_path(url: str) -> Path:
    """The store's file, if this version can keep a store at ``url``; StoreError otherwise."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise StoreError(f"the store URL {url!r} is not a SQLAlchemy URL") from exc
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        raise StoreError(
            "PostgreSQL is not supported yet (only the embedded SQLite store): "
            "leave store_url empty, or set it to sqlite:///PATH"
        )
    if backend != "sqlite":
        raise StoreError(
            f"the store URL {parsed.render_as_string()} is not supported: "
            "only the embedded SQLite store is (sqlite:///PATH)"
        )
    if not parsed.database or parsed.database == ":memory:":
        raise StoreError(f"the store URL {url} names no file (sqlite:///PATH)")
    return Path(parsed.database)


def check_new(url: str) -> Path:
    """The file a new store would be created in; StoreError if it exists or cannot be used."""
    path = store_path(url)
    if path.exists():
        raise StoreError(f"the store {path} already exists: a store is never replaced")
    return path


def migrate(url: str) -> Migration:
    """Check the store and upgrade it to the head revision (``run`` at start, and ``migrate``).

    A store made by Plumb 0.1.0 (no revision, tables exactly those of
    revision 0001) is stamped 0001 first. Stamp and upgrade are one
    transaction, so a store is either at head afterwards or as it was. Refused
    with StoreError, changing nothing: a missing or empty file, one that
    PRAGMA quick_check finds damaged, unknown tables, or a revision this code
    does not know (a newer Plumb's; a store is never downgraded).
    """
    path = store_path(url)
    _check_file(path)
    # Outside the migration's transaction, which would hold the write lock
    # while quick_check reads the whole file.
    check = sa.create_engine(url)
    try:
        with _translated(path, "checking"), check.connect() as conn:
            _quick_check(conn, path)
            recorded = _recorded_revision(conn)
    finally:
        check.dispose()
    if recorded == head_on_disk():
        # The common start: nothing to do, and no need to load Alembic (a
        # quarter of a second of imports) to find that out.
        return Migration(str(path), recorded, recorded)
    engine = _migration_engine(url)
    try:
        with _translated(path, "migrating"), engine.begin() as conn:
            before = _known_revision(conn, path)
            if before is None:
                _migrations().stamp(conn, _migrations().FIRST)
            _migrations().upgrade(conn)
            after = _migrations().current(conn)
    finally:
        engine.dispose()
    assert after is not None
    return Migration(str(path), before, after)


def _recovery(path: Path) -> str:
    return (
        f"restore {path.name} from a backup, or start afresh with "
        "'plumb-server init --data-dir NEW_DIR' (every agent then enrolls again); "
        "plumb-server creates a store only at init, as an empty one would forget every node"
    )


def _check_file(path: Path) -> None:
    # Checked before SQLite sees the path: it would create a missing file, and
    # it takes an empty one for an empty database.
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise StoreError(f"the store {path} is missing: {_recovery(path)}") from None
    except OSError as exc:
        raise StoreError(f"cannot read the store {path}: {exc.strerror}") from exc
    if size == 0:
        raise StoreError(f"the store {path} is empty (0 bytes): {_recovery(path)}")


# SQLite's error names (sqlite3.Error.sqlite_errorname) for "not a database"
# and "database disk image is malformed", with their extended variants.
_DAMAGED = ("SQLITE_NOTADB", "SQLITE_CORRUPT")


@contextmanager
def _translated(path: Path, doing: str) -> Iterator[None]:
    """SQLite's and Alembic's errors while ``doing`` something to the store, as StoreError."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        reason = str(exc.orig)
        if getattr(exc.orig, "sqlite_errorname", "").startswith(_DAMAGED):
            raise StoreError(
                f"the store {path} is damaged or not a SQLite database ({reason}): "
                "restore it from a backup"
            ) from exc
        raise StoreError(f"{doing} the store {path} failed: {reason}") from exc
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(f"{doing} the store {path} failed: {exc}") from exc
    except Exception as exc:
        # Alembic's own errors (CommandError: a revision it cannot find), by
        # module rather than by import: importing Alembic costs every start.
        if not type(exc).__module__.startswith("alembic"):
            raise
        raise StoreError(f"{doing} the store {path} failed: {exc}") from exc


def _quick_check(conn: Connection, path: Path) -> None:
    """PRAGMA quick_check: every page and record readable (O(size), no index cross-check)."""
    rows = [str(row[0]) for row in conn.exec_driver_sql("PRAGMA quick_check(10)")]
    if rows == ["ok"]:
        return
    # A row may hold several lines, under a "*** in database main ***" heading.
    found = [line for row in rows for line in row.splitlines() if not line.startswith("***")]
    more = " (and more)" if len(found) > 3 else ""
    raise StoreError(
        f"the store {path} is damaged, PRAGMA quick_check found: "
        f"{'; '.join(found[:3])}{more}; restore it from a backup"
    )


def _known_revision(conn: Connection, path: Path) -> str | None:
    """The store's revision, None for a store of Plumb 0.1.0; StoreError if it is neither."""
    revision = _migrations().current(conn)
    if revision is None:
        if not _migrations().tables(conn):
            raise StoreError(f"the store {path} has no tables: {_recovery(path)}")
        problems = _migrations().differences(conn, _migrations().FIRST)
        if problems:
            raise StoreError(
                f"the store {path} records no schema revision and its tables are not "
                f"Plumb 0.1.0's ({'; '.join(problems)}): not touching it"
            )
        return None
    if not _migrations().known(revision):
        raise StoreError(_too_new(path, revision))
    return str(revision)


def _require_head(conn: Connection, path: Path) -> None:
    if _recorded_revision(conn) == head_on_disk():
        return
    revision, head = _migrations().current(conn), _migrations().head()
    if revision == head:
        return
    if revision is not None and not _migrations().known(revision):
        raise StoreError(_too_new(path, revision))
    raise StoreError(
        f"the store {path} is at schema revision {revision or 'none (Plumb 0.1.0)'}, "
        f"this plumb-server needs {head}: run 'plumb-server migrate' "
        "(plumb-server run does it at start)"
    )


def _migrations() -> ModuleType:
    """server.migrations, imported on first need: it loads Alembic, which a store
    already at head never needs (see migrate)."""
    from server import migrations

    return migrations


def head_on_disk() -> str:
    """The newest revision, from the names of the files in versions/ (NNNN_what.py).

    Equal to ``migrations.head()`` (a test says so), which asks Alembic and
    so costs its imports; revisions are one numbered line, so the highest
    number is the head.
    """
    return max(p.name[:4] for p in _VERSIONS.glob("[0-9][0-9][0-9][0-9]_*.py"))


_VERSIONS = Path(__file__).resolve().parent / "migrations" / "versions"


def _recorded_revision(conn: Connection) -> str | None:
    """The revision the store records (Alembic's version table), read without Alembic."""
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    revision = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    return None if revision is None else str(revision)


def _too_new(path: Path, revision: str) -> str:
    return (
        f"the store {path} is at schema revision {revision}, which this plumb-server does not "
        f"know (its newest is {_migrations().head()}): a newer Plumb upgraded it. Run that "
        "version, or restore a backup made before the upgrade; a store is never downgraded"
    )


def _migration_engine(url: str) -> Engine:
    """An engine whose transactions hold DDL too: for creating and migrating the store.

    Python's sqlite3 module (in its default, legacy mode) commits every CREATE
    or ALTER on its own, so a migration cut short would leave half a schema.
    Here the module starts no transaction itself and SQLAlchemy's BEGIN is
    IMMEDIATE: the write lock is held from the first statement to the commit.

    None of open_engine's settings: a store that is refused is left exactly as
    it was (not even switched to WAL), and foreign keys stay unenforced while
    batch operations rebuild tables, as Alembic's batch mode requires.
    """
    engine = sa.create_engine(url)
    sa.event.listen(engine, "connect", _no_driver_transactions)
    sa.event.listen(engine, "begin", _begin_immediate)
    return engine


def _no_driver_transactions(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None


def _begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class Store:
    """Everything the server keeps. Methods are the only way in."""

    def __init__(self, url: str) -> None:
        """Open an existing store at the head revision; StoreError if it is not one.

        :meth:`create` makes a new store; :func:`migrate` brings an older one to head.
        """
        path = store_path(url)
        _check_file(path)
        check = sa.create_engine(url)  # without open_engine's settings: see _migration_engine
        try:
            with _translated(path, "opening"), check.connect() as conn:
                _require_head(conn, path)
        finally:
            check.dispose()
        self.engine = open_engine(url)
        self._checkpointer = (
            _Checkpointer(self.engine) if self.engine.dialect.name == "sqlite" else None
        )
        self._node_listeners: list[Callable[[str], None]] = []
        self._operator_listeners: list[Callable[[str], None]] = []

    @classmethod
    def create(cls, url: str) -> Self:
        """Make a new, empty store at the head revision and open it.

        ``plumb-server init``'s job, and the one way tests get a fresh store.
        An existing file is never replaced.
        """
        path = check_new(url)
        engine = _migration_engine(url)
        try:
            with _translated(path, "creating"), engine.begin() as conn:
                _migrations().upgrade(conn)
        finally:
            engine.dispose()
        return cls(url)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # ------------------------------------------------------------ tokens, nodes

    def add_token(
        self,
        token_id: str,
        secret_sha256: str,
        labels: Mapping[str, str],
        created_at: float,
        expires_at: float,
        uses: int,
        binding: tokens_.Binding = tokens_.UNBOUND,
        reenroll: bool = False,
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                tokens.insert().values(
                    id=token_id,
                    secret_sha256=secret_sha256,
                    labels=dict(labels),
                    created_at=created_at,
                    expires_at=expires_at,
                    uses_left=uses,
                    uses=uses,
                    names=None if binding.names is None else list(binding.names),
                    name_pattern=binding.pattern,
                    reenroll=reenroll,
                )
            )

    def check_enrollment(
        self, token_id: str, secret_sha256: str, node: str, now: float
    ) -> TokenRow:
        """What :meth:`enroll` would refuse, found by reading only: before any CSR work.

        TokenRefused (unknown, revoked, expired, used up, or a name the token
        does not allow) or NodeExists (the name is taken and this is no
        re-enroll token); the token otherwise. Nothing is spent: the use is
        spent by :meth:`enroll`, which checks all of it again, atomically.
        """
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(tokens).where(tokens.c.id == token_id)).first()
            token = _check_token(row, secret_sha256, now)
            _check_name(token, node)
            taken = conn.execute(
                sa.select(nodes.c.name).where(
                    nodes.c.name == node, nodes.c.decommissioned_at.is_(None)
                )
            ).first()
        if taken and not token.reenroll:
            raise NodeExists(_taken(node))
        return token

    def enroll(
        self,
        token_id: str,
        secret_sha256: str,
        node: str,
        cert_serial: str,
        now: float,
        cert_not_after: float | None = None,
        cert_issuer: str | None = None,
    ) -> dict[str, str]:
        """Spend one use of a token and register ``node``, atomically. Returns its labels.

        A re-enroll token bound to an enrolled node's name replaces that
        node's certificate serial (its old certificate is no longer its
        current one; a revocation ends with it) and keeps its labels and
        history; any other token is refused an enrolled name. The name of a
        removed node (`plumb node rm`) may be enrolled again with any token
        that allows it: that makes a new node, with the new certificate as its
        only one; the removed node's reports and drift events stay.
        """
        with self._tx() as conn:
            # The write first: it takes SQLite's write lock before anything is
            # read, so no enrollment running beside this one can change what
            # is read below before the commit. A refusal rolls the use back.
            spent = conn.execute(
                tokens.update()
                .where(
                    tokens.c.id == token_id,
                    tokens.c.uses_left > 0,
                    tokens.c.revoked_at.is_(None),
                    tokens.c.expires_at > now,
                )
                .values(uses_left=tokens.c.uses_left - 1)
            )
            row = conn.execute(sa.select(tokens).where(tokens.c.id == token_id)).first()
            if spent.rowcount != 1:
                token = _check_token(row, secret_sha256, now)  # says why, if it can
                raise TokenRefused(_used_up(token))
            token = _known(row, secret_sha256)
            _check_name(token, node)
            existing = conn.execute(sa.select(nodes).where(nodes.c.name == node)).first()
            if existing is not None and existing.decommissioned_at is not None:
                _forget_removed_node(conn, node)
                existing = None
            if existing is None:
                conn.execute(
                    nodes.insert().values(
                        name=node,
                        labels=token.labels,
                        cert_serial=cert_serial,
                        cert_not_after=cert_not_after,
                        cert_issuer=cert_issuer,
                        enrolled_at=now,
                        facts={},
                        enrolled_by_token=token_id,
                    )
                )
                labels = dict(token.labels)
            elif not token.reenroll:
                raise NodeExists(_taken(node))
            else:
                conn.execute(
                    nodes.update()
                    .where(nodes.c.name == node)
                    .values(
                        cert_serial=cert_serial,
                        cert_not_after=cert_not_after,
                        cert_issuer=cert_issuer,
                        next_cert_serial=None,
                        enrolled_at=now,
                        enrolled_by_token=token_id,
                        revoked_at=None,
                    )
                )
                labels = dict(existing.labels)
        self._node_changed(node)
        return labels

    def list_tokens(self, now: float, include_all: bool = False) -> list[TokenRow]:
        """Tokens, oldest first: those still valid at ``now``, or every one with ``include_all``."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(tokens).order_by(tokens.c.created_at, tokens.c.id))
            found = [_token_row(r) for r in rows]
            by_token: dict[str, list[str]] = {}
            query = (
                sa.select(nodes.c.enrolled_by_token, nodes.c.name)
                .where(nodes.c.enrolled_by_token.is_not(None))
                .order_by(nodes.c.name)
            )
            for token_id, name in conn.execute(query):
                by_token.setdefault(token_id, []).append(name)
        return [
            dataclasses.replace(t, nodes=tuple(by_token.get(t.id, ())))
            for t in found
            if include_all or t.state(now) == "valid"
        ]

    def revoke_token(self, token_id: str, now: float) -> tuple[TokenRow, bool] | None:
        """Revoke a token: it enrolls nothing more. None if there is no such token.

        Returns the token and whether this call revoked it (False: it was
        revoked before, and keeps that time). Nodes it enrolled stay enrolled.
        """
        with self._tx() as conn:
            changed = conn.execute(
                tokens.update()
                .where(tokens.c.id == token_id, tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            row = conn.execute(sa.select(tokens).where(tokens.c.id == token_id)).first()
        return None if row is None else (_token_row(row), changed.rowcount == 1)

    def node(self, name: str, removed: bool = False) -> NodeRow | None:
        """The node named ``name``; a removed one only if ``removed``."""
        query = sa.select(nodes).where(nodes.c.name == name)
        if not removed:
            query = query.where(nodes.c.decommissioned_at.is_(None))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _node_row(row) if row else None

    def list_nodes(self, removed: bool = False) -> list[NodeRow]:
        """The nodes of the fleet by name; with ``removed``, also the removed ones."""
        query = sa.select(nodes).order_by(nodes.c.name)
        if not removed:
            query = query.where(nodes.c.decommissioned_at.is_(None))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_node_row(r) for r in rows]

    def set_labels(
        self, name: str, put: Mapping[str, str], remove: Sequence[str]
    ) -> tuple[NodeRow, NodeRow] | None:
        """Set ``put`` and drop ``remove`` on node ``name``'s labels, atomically.

        Returns the node before and after; None if no such (live) node.
        """
        with self._tx() as conn:
            where = (nodes.c.name == name, nodes.c.decommissioned_at.is_(None))
            row = conn.execute(sa.select(nodes).where(*where)).first()
            if row is None:
                return None
            before = _node_row(row)
            labels = {k: v for k, v in before.labels.items() if k not in set(remove)}
            labels.update(put)
            conn.execute(nodes.update().where(*where).values(labels=labels))
        return before, dataclasses.replace(before, labels=labels)

    # ------------------------------------------------------------ node identities

    def on_node_change(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(name)`` after each commit that changes which certificate
        node ``name`` may use (enrolled, revoked, removed), in the committing thread.

        What caches that (server.auth.NodeCredentials) learns of changes this
        way, whoever makes them. One process per store (app.py's lock), so
        these are all the changes there are.
        """
        self._node_listeners.append(listener)

    def _node_changed(self, name: str) -> None:
        _tell(self._node_listeners, "node", name)

    def credential(self, name: str) -> NodeCredential | None:
        """Which certificate ``name`` may use, and whether it is revoked or removed."""
        query = sa.select(
            nodes.c.cert_serial,
            nodes.c.revoked_at,
            nodes.c.decommissioned_at,
            nodes.c.next_cert_serial,
            nodes.c.cert_issuer,
        )
        with self.engine.connect() as conn:
            row = conn.execute(query.where(nodes.c.name == name)).first()
        if row is None:
            return None
        return NodeCredential(
            row.cert_serial,
            row.revoked_at,
            row.decommissioned_at,
            row.next_cert_serial,
            row.cert_issuer,
        )

    def offer_certificate(self, name: str, current_serial: str, next_serial: str) -> bool:
        """Record a renewed certificate of ``name``, issued to the holder of ``current_serial``.

        False (nothing recorded) unless ``current_serial`` is still the node's
        certificate and the node is neither revoked nor removed. Both
        certificates are good until a session opens with the new one
        (:meth:`certificate_in_use`); a renewal offered again replaces one not
        used yet.
        """
        with self._tx() as conn:
            changed = conn.execute(
                nodes.update()
                .where(
                    nodes.c.name == name,
                    nodes.c.cert_serial == current_serial,
                    nodes.c.revoked_at.is_(None),
                    nodes.c.decommissioned_at.is_(None),
                )
                .values(next_cert_serial=next_serial)
            ).rowcount
        if changed:
            self._node_changed(name)
        return bool(changed)

    def certificate_in_use(
        self, name: str, serial: str, not_after: float, issuer: str
    ) -> str | None:
        """A session opened with ``serial``: if it is ``name``'s renewed certificate, make it
        the only one.

        The serial it replaces (refused from now on), or None when ``serial``
        is not the node's renewed certificate. Either way the certificate's
        expiry and issuer are recorded if they were not (one written only
        when it changes).
        """
        with self._tx() as conn:
            recorded = conn.execute(
                nodes.update()
                .where(
                    nodes.c.name == name,
                    nodes.c.cert_serial == serial,
                    sa.or_(nodes.c.cert_issuer.is_(None), nodes.c.cert_issuer != issuer),
                )
                .values(
                    cert_issuer=issuer,
                    cert_not_after=sa.func.coalesce(nodes.c.cert_not_after, not_after),
                )
            ).rowcount
            row = conn.execute(
                sa.select(nodes.c.cert_serial).where(
                    nodes.c.name == name,
                    nodes.c.next_cert_serial == serial,
                    nodes.c.revoked_at.is_(None),
                    nodes.c.decommissioned_at.is_(None),
                )
            ).first()
            if row is None:
                if recorded:
                    self._node_changed(name)  # the credential cache holds the issuer
                return None
            # Conditional on what was read: a change made in between wins.
            changed = conn.execute(
                nodes.update()
                .where(
                    nodes.c.name == name,
                    nodes.c.cert_serial == row.cert_serial,
                    nodes.c.next_cert_serial == serial,
                )
                .values(
                    cert_serial=serial,
                    next_cert_serial=None,
                    cert_not_after=not_after,
                    cert_issuer=issuer,
                )
            ).rowcount
            if not changed:
                return None
        self._node_changed(name)
        return str(row.cert_serial)

    def revoke_node(self, name: str, now: float) -> Revocation:
        """Revoke ``name``'s certificate: it connects no more until the node is enrolled again.

        Revoking a revoked (or removed) node changes nothing; UnknownNode if
        there is no such node.
        """
        with self._tx() as conn:
            # The write first: on SQLite it takes the write lock, so what is read
            # next is what is committed (a read first could race an ingest).
            changed = conn.execute(
                nodes.update()
                .where(nodes.c.name == name, nodes.c.revoked_at.is_(None))
                .values(revoked_at=now)
            ).rowcount
            row = _identity_row(conn, name)
        if changed:
            self._node_changed(name)
        return Revocation(name, row.cert_serial, row.revoked_at, already=not changed)

    def decommission_node(self, name: str, now: float) -> Revocation:
        """Remove ``name`` from the fleet (`plumb node rm`), revoking its certificate.

        It is left out of list_nodes, node, pushes and compliance from now on;
        its reports, drift events and losses stay. ``at`` is when it was
        removed. Removing it again changes nothing; UnknownNode if there is no
        such node.
        """
        with self._tx() as conn:
            changed = conn.execute(
                nodes.update()
                .where(nodes.c.name == name, nodes.c.decommissioned_at.is_(None))
                .values(
                    decommissioned_at=now,
                    revoked_at=sa.func.coalesce(nodes.c.revoked_at, now),
                )
            ).rowcount
            row = _identity_row(conn, name)
        if changed:
            self._node_changed(name)
        return Revocation(name, row.cert_serial, row.decommissioned_at, already=not changed)

    def nodes_seen(self, seen: Mapping[str, NodeSeen]) -> None:
        """Record presence of many nodes in one transaction.

        Values only move forward (revisions and times only grow), so a batch
        written late never undoes a newer report's applied revision.
        """
        with self._tx() as conn:
            conn.execute(
                nodes.update()
                .where(nodes.c.name == sa.bindparam("n"))
                .values(last_seen=_greatest(nodes.c.last_seen, sa.bindparam("t"))),
                [{"n": n, "t": s.last_seen} for n, s in seen.items()],
            )
            revisions_seen = [
                {"n": n, "r": s.applied_revision}
                for n, s in seen.items()
                if s.applied_revision is not None
            ]
            if revisions_seen:
                conn.execute(
                    nodes.update()
                    .where(nodes.c.name == sa.bindparam("n"))
                    .values(
                        applied_revision=_greatest(nodes.c.applied_revision, sa.bindparam("r"))
                    ),
                    revisions_seen,
                )
            given = seen.items()
            _set_each(conn, "clock_offset_s", {n: s.clock_offset_s for n, s in given})
            _set_each(conn, "facts", {n: s.facts for n, s in given})
            _set_each(conn, "conditions", {n: s.conditions for n, s in given})
            _set_each(conn, "run_interval_s", {n: s.run_interval_s for n, s in given})

    # ------------------------------------------------------------ operators

    def on_operator_change(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(name)`` after each commit that changes operator ``name``
        (added, revoked, its certificate replaced), in the committing thread.

        Only changes made through this Store object: ``plumb-server operator``
        commands change the store from another process, which is why
        server.auth's cache of operators also forgets what it holds after a
        second.
        """
        self._operator_listeners.append(listener)

    def add_operator(self, name: str, role: str, cert_serial: str, now: float) -> OperatorRow:
        """Make ``name`` an operator with ``role``, whose one certificate is ``cert_serial``.

        OperatorExists if an operator of that name is current; a revoked one's
        name is taken again (a new certificate, the new role, not revoked).
        """
        with self._tx() as conn:
            # The write first (it takes SQLite's write lock): a revoked row of
            # the name becomes the new operator; none, a new row is inserted.
            taken = conn.execute(
                operators.update()
                .where(operators.c.name == name, operators.c.revoked_at.is_not(None))
                .values(role=role, cert_serial=cert_serial, created_at=now, revoked_at=None)
            ).rowcount
            if not taken:
                exists = conn.execute(
                    sa.select(operators.c.name).where(operators.c.name == name)
                ).first()
                if exists is not None:
                    raise OperatorExists(
                        f"an operator named {name!r} exists: revoke it first to give the "
                        "name a new certificate, or choose another name"
                    )
                conn.execute(
                    operators.insert().values(
                        name=name, role=role, cert_serial=cert_serial, created_at=now
                    )
                )
        self._operator_changed(name)
        return OperatorRow(name, role, cert_serial, now)

    def operator(self, name: str) -> OperatorRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(operators).where(operators.c.name == name)).first()
        return _operator_row(row) if row else None

    def list_operators(self, revoked: bool = False) -> list[OperatorRow]:
        """Operators by name: the current ones, and with ``revoked`` the revoked ones too."""
        query = sa.select(operators).order_by(operators.c.name)
        if not revoked:
            query = query.where(operators.c.revoked_at.is_(None))
        with self.engine.connect() as conn:
            return [_operator_row(r) for r in conn.execute(query)]

    def operator_credential(self, name: str) -> OperatorCredential | None:
        """What operator ``name`` may do, with which certificate; None: no such operator."""
        query = sa.select(operators.c.role, operators.c.cert_serial, operators.c.revoked_at)
        with self.engine.connect() as conn:
            row = conn.execute(query.where(operators.c.name == name)).first()
        if row is None:
            return None
        return OperatorCredential(row.role, row.cert_serial, row.revoked_at)

    def revoke_operator(
        self, name: str, now: float, keep_an_admin: bool = False
    ) -> tuple[OperatorRow, bool]:
        """Revoke operator ``name``: its next call is refused. Returns it, and whether this
        call revoked it (False: it already was, and keeps that time).

        UnknownOperator if there is no such operator; with ``keep_an_admin``,
        LastAdmin if it is the last current admin (the Admin service keeps
        one; ``plumb-server operator`` on the server host may revoke any).
        """
        with self._tx() as conn:
            changed = conn.execute(
                operators.update()
                .where(operators.c.name == name, operators.c.revoked_at.is_(None))
                .values(revoked_at=now)
            ).rowcount
            row = conn.execute(sa.select(operators).where(operators.c.name == name)).first()
            if row is None:
                raise UnknownOperator(f"no operator is named {name!r}")
            if changed and keep_an_admin and row.role == "admin" and not _admins_left(conn):
                raise LastAdmin(  # raised inside the transaction: the revocation rolls back
                    f"{name} is the last admin: add another admin first (an admin that "
                    "revokes itself can only come back through 'plumb-server operator add' "
                    "on the server host)"
                )
        if changed:
            self._operator_changed(name)
        return _operator_row(row), bool(changed)

    def renew_operator(self, name: str, old_serial: str, new_serial: str) -> bool:
        """Make ``new_serial`` operator ``name``'s one certificate, if ``old_serial`` still is.

        For certificate renewal: False (nothing changed) if the operator is
        unknown, revoked, or its current certificate is not ``old_serial``
        (renewed already, or replaced). The old certificate is refused from
        the next call on.
        """
        with self._tx() as conn:
            changed = conn.execute(
                operators.update()
                .where(
                    operators.c.name == name,
                    operators.c.cert_serial == old_serial,
                    operators.c.revoked_at.is_(None),
                )
                .values(cert_serial=new_serial)
            ).rowcount
        if changed:
            self._operator_changed(name)
        return bool(changed)

    def _operator_changed(self, name: str) -> None:
        _tell(self._operator_listeners, "operator", name)

    # ------------------------------------------------------------ audit log

    def audit(self, entry: audit_.Entry, now: float) -> audit_.Record:
        """Append ``entry`` to the audit log, chained to the entry before; the entry as stored.

        A push's entry (``entry.revision``) is written onto its revision's
        row too, in the same transaction.
        """
        with self._tx() as conn:
            # The first write of the transaction: it takes the write lock, so
            # the head read next is the last entry until this one commits.
            locked = conn.execute(
                audit_head.update()
                .where(audit_head.c.chain == AUDIT_CHAIN)
                .values(last_id=audit_head.c.last_id)
            ).rowcount
            if not locked:
                raise StoreError(
                    "the audit log has no head row (audit_head): the store was tampered with "
                    "or damaged; 'plumb audit --verify' says how"
                )
            head = conn.execute(
                sa.select(audit_head).where(audit_head.c.chain == AUDIT_CHAIN)
            ).one()
            record = audit_.seal(int(head.last_id) + 1, now, entry, head.last_hash)
            conn.execute(audit_log.insert().values(**dataclasses.asdict(record)))
            conn.execute(
                audit_head.update()
                .where(audit_head.c.chain == AUDIT_CHAIN)
                .values(last_id=record.id, last_hash=record.hash)
            )
            if entry.revision:
                conn.execute(
                    revisions.update()
                    .where(revisions.c.id == entry.revision, revisions.c.audit_id.is_(None))
                    .values(audit_id=record.id)
                )
        return record

    def audit_entries(
        self, since: float | None = None, limit: int = 100
    ) -> tuple[list[audit_.Record], bool]:
        """The newest ``limit`` entries at or after ``since``, oldest first; whether there are
        older ones that were left out."""
        query = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit + 1)
        if since is not None:
            query = query.where(audit_log.c.at >= since)
        with self.engine.connect() as conn:
            found = [_audit_record(r) for r in conn.execute(query)]
        return found[:limit][::-1], len(found) > limit

    def verify_audit(self) -> audit_.Check:
        """Walk the whole audit log: the first entry that breaks its hash chain, if any."""
        with self.engine.connect() as conn:
            head = conn.execute(
                sa.select(audit_head).where(audit_head.c.chain == AUDIT_CHAIN)
            ).first()
            rows = conn.execute(sa.select(audit_log).order_by(audit_log.c.id))
            head_id, head_hash = (
                (0, audit_.GENESIS) if head is None else (head.last_id, head.last_hash)
            )
            return audit_.verify((_audit_record(r) for r in rows), int(head_id), head_hash)

    def revision_audit_id(self, revision: int) -> int | None:
        """The audit entry of the push that stored ``revision``; None if it has none."""
        query = sa.select(revisions.c.audit_id).where(revisions.c.id == revision)
        with self.engine.connect() as conn:
            found = conn.execute(query).scalar()
        return None if found is None else int(found)

    # ------------------------------------------------------------ revisions, catalogs

    def add_revision(
        self,
        manifests: Sequence[ManifestSource],
        now: float,
        meta: RevisionMeta | None = None,
        rollout: NewRollout | None = None,
    ) -> int:
        """Store a revision; with ``rollout``, its staged rollout in the same transaction
        (a crash between the two would hand the revision to every node at once)."""
        meta = meta or RevisionMeta()
        body = [dataclasses.asdict(m) for m in manifests]
        purged = [dataclasses.asdict(m) for m in meta.purged] or None
        with self._tx() as conn:
            result = conn.execute(
                revisions.insert().values(
                    created_at=now,
                    manifests=body,
                    author=meta.author,
                    message=meta.message or None,
                    content_sha256=history.content_hash({m.name: m.source for m in manifests}),
                    purged=purged,
                    origin=meta.origin,
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            revision = int(key[0])
            if rollout is not None:
                _insert_rollout(conn, revision, rollout, meta.author, now)
            return revision

    # ------------------------------------------------------------ waivers

    def add_waiver(self, waiver: WaiverRow) -> WaiverRow:
        """Store ``waiver`` (its id is made here); the stored row."""
        values = dataclasses.asdict(waiver)
        values.pop("id")
        with self._tx() as conn:
            key = conn.execute(waivers.insert().values(**values)).inserted_primary_key
        assert key is not None
        return dataclasses.replace(waiver, id=int(key[0]))

    def waivers(self) -> list[WaiverRow]:
        """Every waiver ever made, oldest first (expired and revoked ones too)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(waivers).order_by(waivers.c.id)).all()
        return [WaiverRow(**{c.name: getattr(r, c.name) for c in waivers.c}) for r in rows]

    def revoke_waiver(self, waiver_id: int, now: float) -> WaiverRow | None:
        """Revoke a waiver (once: a revoked one keeps its first time); None: no such waiver."""
        with self._tx() as conn:
            conn.execute(
                waivers.update()
                .where(waivers.c.id == waiver_id, waivers.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            row = conn.execute(sa.select(waivers).where(waivers.c.id == waiver_id)).first()
        return (
            None if row is None else WaiverRow(**{c.name: getattr(row, c.name) for c in waivers.c})
        )

    # ------------------------------------------------------------ rollouts

    def latest_rollout(self) -> RolloutRow | None:
        """The newest rollout, whatever its state; None if there never was one."""
        with self.engine.connect() as conn:
            newest = conn.execute(sa.select(sa.func.max(rollouts.c.id))).scalar()
            return None if newest is None else _rollout_row(conn, int(newest))

    def rollout(self, rollout_id: int) -> RolloutRow | None:
        with self.engine.connect() as conn:
            return _rollout_row(conn, rollout_id)

    def set_rollout_state(
        self,
        rollout_id: int,
        state: str,
        now: float,
        reason: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        values: dict[str, Any] = {"state": state, "updated_at": now, "reason": reason}
        if settings is not None:
            values["settings"] = dict(settings)
        with self._tx() as conn:
            conn.execute(rollouts.update().where(rollouts.c.id == rollout_id).values(**values))

    def set_rollout_nodes(
        self,
        rollout_id: int,
        states: Mapping[str, tuple[str, str | None]],
        now: float,
    ) -> None:
        """Move nodes of a rollout to ``{node: (state, reason)}``; sent_at / finished_at
        are set as the state says."""
        with self._tx() as conn:
            for node, (state, reason) in states.items():
                values: dict[str, Any] = {"state": state, "reason": reason}
                values["sent_at" if state == "sent" else "finished_at"] = now
                conn.execute(
                    rollout_nodes.update()
                    .where(rollout_nodes.c.rollout_id == rollout_id, rollout_nodes.c.node == node)
                    .values(**values)
                )
            conn.execute(
                rollouts.update().where(rollouts.c.id == rollout_id).values(updated_at=now)
            )

    def revision_row(self, revision: int) -> RevisionRow | None:
        """Everything ``revision`` records; None if there is no such revision."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(revisions).where(revisions.c.id == revision)).first()
        return None if row is None else _revision_row(row)

    def revision_rows(self, limit: int, before: int | None = None) -> list[RevisionRow]:
        """The newest ``limit`` revisions (older than ``before`` if given), newest first."""
        query = sa.select(revisions).order_by(revisions.c.id.desc()).limit(limit)
        if before is not None:
            query = query.where(revisions.c.id < before)
        with self.engine.connect() as conn:
            return [_revision_row(r) for r in conn.execute(query)]

    def latest_revision_id(self) -> int:
        """The newest revision's number; 0 before the first push. Cheap: no manifests."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(revisions.c.id))).scalar() or 0)

    def revision(self, revision: int) -> list[ManifestSource]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(revisions).where(revisions.c.id == revision)).first()
        return [ManifestSource(**m) for m in row.manifests] if row else []

    def latest_revision(self) -> tuple[int, list[ManifestSource]]:
        """The newest revision and its manifests; (0, []) before the first push."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(revisions).order_by(revisions.c.id.desc()).limit(1)
            ).first()
        if row is None:
            return 0, []
        return int(row.id), [ManifestSource(**m) for m in row.manifests]

    def save_catalogs(
        self,
        revision: int,
        payloads: Mapping[str, bytes],
        selected: Mapping[str, Selected] | None = None,
    ) -> None:
        """Store catalogs of one revision in one transaction; existing ones are kept.

        ``selected`` is what selected each node (see ``catalogs.selected``).
        """
        selected = selected or {}
        with self._tx() as conn:
            existing = {
                row.node
                for row in conn.execute(
                    sa.select(catalogs.c.node).where(
                        catalogs.c.revision == revision, catalogs.c.node.in_(list(payloads))
                    )
                )
            }
            rows = [
                {
                    "node": node,
                    "revision": revision,
                    "payload": payload,
                    "selected": _selected_json(selected.get(node)),
                }
                for node, payload in payloads.items()
                if node not in existing
            ]
            if rows:
                conn.execute(catalogs.insert(), rows)

    def replace_catalog(self, node: str, revision: int, payload: bytes, selected: Selected) -> None:
        """Store the node's catalog at ``revision`` anew: what selects it has changed."""
        with self._tx() as conn:
            conn.execute(
                catalogs.delete().where(catalogs.c.node == node, catalogs.c.revision == revision)
            )
            conn.execute(
                catalogs.insert().values(
                    node=node,
                    revision=revision,
                    payload=payload,
                    selected=_selected_json(selected),
                )
            )

    def catalog_entry(self, node: str, revision: int) -> tuple[bytes, Selected | None] | None:
        """The node's catalog at ``revision`` and what selected it (None: not recorded)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(catalogs.c.payload, catalogs.c.selected).where(
                    catalogs.c.node == node, catalogs.c.revision == revision
                )
            ).first()
        if row is None:
            return None
        chosen = row.selected
        picked = (
            None
            if chosen is None
            else Selected(tuple(chosen["manifests"]), tuple(chosen["purged"]))
        )
        return bytes(row.payload), picked

    def catalog(self, node: str, revision: int) -> bytes | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(catalogs.c.payload).where(
                    catalogs.c.node == node, catalogs.c.revision == revision
                )
            ).first()
        return bytes(row.payload) if row else None

    # ------------------------------------------------------------ reports

    def ingest_report(self, report: ReportRecord, now: float) -> bool:
        """Store a report once; False if this id was already stored (nothing changes)."""
        return self.ingest_reports([report], now)[0]

    def ingest_reports(self, batch: Sequence[ReportRecord], now: float) -> list[bool]:
        """Store a batch of reports in one transaction: one commit (one fsync) for all.

        The outcome is the same as ingesting them one by one in this order: per
        report, True if it was stored, False if its id was already stored (also
        earlier in this batch), in which case it changes nothing. ``now`` is the
        time of receipt of every report in the batch.
        """
        if not batch:
            return []
        with self._tx() as conn:
            known = _stored_report_ids(conn, {r.id for r in batch})
            stored: list[bool] = []
            fresh: list[ReportRecord] = []
            for report in batch:
                is_new = report.id not in known
                stored.append(is_new)
                if is_new:
                    known.add(report.id)
                    fresh.append(report)
            if fresh:
                # The first write: on SQLite it takes the write lock, so what
                # _update_nodes reads next cannot change before the commit.
                _insert_rows(conn, reports, _REPORT_COLUMNS, _report_rows(fresh, now))
                offsets = _update_nodes(conn, fresh, now)
                _insert_rows(conn, drift_events, _DRIFT_COLUMNS, _drift_rows(fresh, offsets))
        if fresh and self._checkpointer is not None:
            self._checkpointer.poke()
        return stored

    def last_sequence(self, node: str) -> int:
        """The highest report sequence stored for ``node``; 0 when none."""
        query = sa.select(sa.func.max(reports.c.sequence)).where(reports.c.node == node)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def runs(
        self, node: str, since: float | None = None, limit: int = 100
    ) -> tuple[list[RunRow], bool]:
        """Node ``node``'s runs, newest first (finished since ``since``), and whether
        older ones matched but ``limit`` left them out."""
        query = sa.select(*(c for c in reports.c if c.name != "body")).where(reports.c.node == node)
        if since is not None:
            query = query.where(reports.c.finished_at >= since)
        query = query.order_by(reports.c.sequence.desc(), reports.c.finished_at.desc())
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit + 1)).all()
        found = [
            RunRow(
                r.id,
                int(r.revision),
                bool(r.noop),
                r.trigger,
                r.started_at,
                r.finished_at,
                r.received_at,
                int(r.sequence),
                dict(r.summary),
            )
            for r in rows[:limit]
        ]
        return found, len(rows) > limit

    def report(self, node: str, report_id: str) -> bytes | None:
        """One run's report as the agent sent it; None: no such run of that node."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(reports.c.body).where(reports.c.node == node, reports.c.id == report_id)
            ).first()
        return bytes(row.body) if row else None

    def last_report(self, node: str) -> bytes | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(reports.c.body)
                .where(reports.c.node == node)
                .order_by(reports.c.sequence.desc(), reports.c.finished_at.desc())
                .limit(1)
            ).first()
        return bytes(row.body) if row else None

    def count_drift_events(self) -> int:
        with self.engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(drift_events)).scalar()
        return int(count or 0)

    def count_reports(self, node: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(reports)
        if node:
            query = query.where(reports.c.node == node)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def drift(
        self, node: str | None = None, limit: int = 100, only: DriftFilter | None = None
    ) -> list[DriftRow]:
        """The newest drift events by when they were detected (not when they arrived)."""
        order = (drift_events.c.detected_at.desc(), drift_events.c.id.desc())
        query = sa.select(drift_events).order_by(*order).limit(limit)
        if node:
            query = query.where(drift_events.c.node == node)
        for condition in (only or DriftFilter()).conditions():
            query = query.where(condition)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            DriftRow(
                id=r.id,
                node=r.node,
                report_id=r.report_id,
                resource_id=r.resource_id,
                manifest=r.manifest,
                status=Status(r.status),
                changes=list(r.changes),
                detected_at=r.detected_at,
            )
            for r in rows
        ]

    def statuses(self) -> list[StatusRow]:
        """Every node's current status of every resource it last reported."""
        columns = (resource_status.c.node, resource_status.c.resource_id, resource_status.c.status)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(*columns)).all()
        return [StatusRow(r.node, r.resource_id, Status(r.status)) for r in rows]

    # ------------------------------------------------------------ state losses

    def record_state_losses(self, losses: Sequence[StateLossRow], now: float) -> list[str]:
        """Record what nodes lost, each id once; the ids now recorded (new or already known)."""
        if not losses:
            return []
        with self._tx() as conn:
            known = {
                (row.node, row.id)
                for row in conn.execute(
                    sa.select(state_losses.c.node, state_losses.c.id).where(
                        state_losses.c.id.in_([x.id for x in losses])
                    )
                )
            }
            fresh = {(x.node, x.id): x for x in losses if (x.node, x.id) not in known}
            if fresh:
                conn.execute(
                    state_losses.insert(),
                    [{**dataclasses.asdict(x), "received_at": now} for x in fresh.values()],
                )
        return [x.id for x in losses]

    def state_losses(self, node: str | None = None) -> dict[str, list[StateLossRow]]:
        """Node → what it reported losing, newest first; nodes that lost nothing are absent."""
        query = sa.select(state_losses).order_by(
            state_losses.c.found_at.desc(), state_losses.c.received_at.desc()
        )
        if node is not None:
            query = query.where(state_losses.c.node == node)
        found: dict[str, list[StateLossRow]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                r = row._mapping  # a Row's .count is tuple.count, not the column
                found.setdefault(r["node"], []).append(
                    StateLossRow(
                        node=r["node"],
                        id=r["id"],
                        what=r["what"],
                        count=None if r["count"] is None else int(r["count"]),
                        found_at=r["found_at"],
                        detail=r["detail"],
                        received_at=r["received_at"],
                    )
                )
        return found

    # ------------------------------------------------------------ catalog problems

    def record_catalog_problem(
        self, node: str, revision: int, problems: Sequence[str], now: float
    ) -> None:
        """Note why ``node`` has no catalog at ``revision`` (the newest note wins)."""
        with self._tx() as conn:
            conn.execute(
                catalog_problems.delete().where(
                    catalog_problems.c.node == node, catalog_problems.c.revision == revision
                )
            )
            conn.execute(
                catalog_problems.insert().values(
                    node=node, revision=revision, problems=list(problems), recorded_at=now
                )
            )

    def catalog_problems(self, revision: int) -> dict[str, list[str]]:
        """Node → why it has no catalog at ``revision``, for the nodes that have none."""
        query = sa.select(catalog_problems.c.node, catalog_problems.c.problems).where(
            catalog_problems.c.revision == revision
        )
        with self.engine.connect() as conn:
            return {row.node: list(row.problems) for row in conn.execute(query)}


def _tell(listeners: Sequence[Callable[[str], None]], what: str, name: str) -> None:
    for listener in listeners:
        try:
            listener(name)
        except Exception:  # committed already: the caller must hear that it was
            log.exception("a listener to changes of %s %s failed", what, name)


def _operator_row(row: Any) -> OperatorRow:
    return OperatorRow(row.name, row.role, row.cert_serial, row.created_at, row.revoked_at)


def _admins_left(conn: Connection) -> int:
    query = sa.select(sa.func.count()).where(
        operators.c.role == "admin", operators.c.revoked_at.is_(None)
    )
    return int(conn.execute(query).scalar_one())


def _audit_record(row: Any) -> audit_.Record:
    r = row._mapping
    return audit_.Record(
        id=int(r["id"]),
        at=r["at"],
        actor_kind=r["actor_kind"],
        actor=r["actor"],
        role=r["role"],
        peer=r["peer"],
        action=r["action"],
        details=r["details"],
        result=r["result"],
        reason=r["reason"],
        revision=None if r["revision"] is None else int(r["revision"]),
        prev_hash=r["prev_hash"],
        hash=r["hash"],
    )


def _known(row: Any, secret_sha256: str) -> TokenRow:
    if row is None or not hmac.compare_digest(row.secret_sha256, secret_sha256):
        raise UnknownToken("unknown token")
    return _token_row(row)


def _check_token(row: Any, secret_sha256: str, now: float) -> TokenRow:
    token = _known(row, secret_sha256)
    if token.revoked_at is not None:
        raise TokenRefused(f"token {token.id} has been revoked")
    if token.expires_at <= now:
        raise TokenRefused(f"token {token.id} has expired")
    if token.uses_left <= 0:
        raise TokenRefused(_used_up(token))
    return token


def _used_up(token: TokenRow) -> str:
    return f"token {token.id} has been used up (it allowed {token.uses} use(s))"


def _check_name(token: TokenRow, node: str) -> None:
    if not token.binding.allows(node):
        raise TokenRefused(f"token {token.id} allows {token.binding}, not {node!r}")


def _taken(node: str) -> str:
    return (
        f"a node named {node!r} is already enrolled; to give it a new certificate "
        f"(a new host, a lost key), enroll with a token from 'plumb node reenroll {node}'"
    )


def _token_row(row: Any) -> TokenRow:
    return TokenRow(
        id=row.id,
        labels=dict(row.labels),
        created_at=row.created_at,
        expires_at=row.expires_at,
        uses=int(row.uses),
        uses_left=int(row.uses_left),
        binding=tokens_.binding(row.names, row.name_pattern),
        reenroll=bool(row.reenroll),
        revoked_at=row.revoked_at,
    )


def _identity_row(conn: Connection, name: str) -> Any:
    query = sa.select(nodes.c.cert_serial, nodes.c.revoked_at, nodes.c.decommissioned_at)
    row = conn.execute(query.where(nodes.c.name == name)).first()
    if row is None:
        raise UnknownNode(f"no node named {name!r} is enrolled")
    return row


def _forget_removed_node(conn: Connection, name: str) -> None:
    """Before its name is enrolled again: what a removed node was, but not what it did.

    Its row goes, and with it its current status and its catalogs (compiled
    for its labels, which the new node need not have: they are compiled
    again). Its reports, drift events and losses are its history: they stay.
    """
    conn.execute(nodes.delete().where(nodes.c.name == name))
    for table in (resource_status, catalogs, catalog_problems):
        conn.execute(table.delete().where(table.c.node == name))


def _greatest(column: Any, value: Any) -> Any:
    # Portable GREATEST(column, value): SQLite has no GREATEST, PostgreSQL no 2-arg max.
    return sa.case((column < value, value), else_=column)


def _set_each(conn: sa.Connection, column: str, values: Mapping[str, Any]) -> None:
    """Set ``column`` of every node in ``values`` that has a value (not None), in one statement."""
    given = [{"n": n, "v": v} for n, v in values.items() if v is not None]
    if given:
        conn.execute(
            nodes.update()
            .where(nodes.c.name == sa.bindparam("n"))
            .values({column: sa.bindparam("v", type_=nodes.c[column].type)}),
            given,
        )


def _node_row(row: Any) -> NodeRow:
    return NodeRow(
        name=row.name,
        labels=dict(row.labels),
        enrolled_at=row.enrolled_at,
        last_seen=row.last_seen,
        applied_revision=int(row.applied_revision),
        status_revision=int(row.status_revision),
        facts=dict(row.facts),
        clock_offset_s=row.clock_offset_s,
        conditions=list(row.conditions or []),
        cert_serial=row.cert_serial,
        revoked_at=row.revoked_at,
        decommissioned_at=row.decommissioned_at,
        enrolled_by_token=row.enrolled_by_token,
        cert_not_after=row.cert_not_after,
        next_cert_serial=row.next_cert_serial,
        cert_issuer=row.cert_issuer,
        status_as_of=row.status_as_of,
        run_interval_s=row.run_interval_s,
    )


def _summary_json(results: Sequence[ResultRecord]) -> str:
    """The report's count per status, as JSON: {"in_sync": 48, "repaired": 1, ...}."""
    # list.count compares by identity first: much cheaper than hashing enum members.
    statuses = [r.status for r in results]
    return _SUMMARY_JSON % tuple(statuses.count(s) for s in Status)


# What json.dumps makes of {status: count} (status values need no escaping).
_SUMMARY_JSON = "{" + ", ".join(f'"{s.value}": %d' for s in Status) + "}"


def _chunks(items: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    # Keeps every IN (...) list well below SQLite's limit on bound parameters.
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _stored_report_ids(conn: Connection, ids: set[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(sorted(ids)):
        found.update(conn.execute(sa.select(reports.c.id).where(reports.c.id.in_(chunk))).scalars())
    return found


# Rows of the ingest path are plain tuples in these columns' order, with JSON
# values already serialised (as sa.JSON would: json.dumps), for _insert_rows.
# A status goes in as ``status._value_``, the plain str: the ``value``
# property is a Python call, and this runs for every resource of every report.
_REPORT_COLUMNS = (
    "id",
    "node",
    "revision",
    "noop",
    "trigger",
    "started_at",
    "finished_at",
    "received_at",
    "summary",
    "body",
    "sequence",
)
_DRIFT_COLUMNS = (
    "node",
    "report_id",
    "resource_id",
    "manifest",
    "status",
    "changes",
    "detected_at",
    "controls",
)
_STATUS_COLUMNS = (
    "node",
    "resource_id",
    "manifest",
    "status",
    "controls",
    "report_id",
    "updated_at",
)


def _insert_rows(
    conn: Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """INSERT ``rows`` with one executemany handed straight to the database driver.

    Report ingest writes tens of thousands of rows per second (50 resource
    statuses per report). SQLAlchemy's per-row parameter handling costs
    several times what SQLite needs to store such a row, so these statements
    are still compiled by SQLAlchemy for the dialect at hand, but their rows
    skip it. ``inline()``: no RETURNING of generated ids, which nobody reads.
    """
    if not rows:
        return
    compiled = table.insert().inline().compile(dialect=conn.dialect, column_keys=list(columns))
    params: Sequence[Any]
    if compiled.positional:
        order = [columns.index(key) for key in compiled.positiontup or ()]
        if order == list(range(len(columns))):
            params = rows
        else:
            params = [tuple(row[i] for i in order) for row in rows]
    else:
        params = [dict(zip(columns, row, strict=True)) for row in rows]
    conn.exec_driver_sql(compiled.string, params)


def _report_rows(fresh: Sequence[ReportRecord], now: float) -> list[tuple[Any, ...]]:
    return [
        (
            r.id,
            r.node,
            r.revision,
            r.noop,
            r.trigger,
            r.started_at,
            r.finished_at,
            now,
            _summary_json(r.results),
            r.body,
            r.sequence,
        )
        for r in fresh
    ]


def _drift_rows(
    fresh: Sequence[ReportRecord], offsets: Mapping[str, float | None]
) -> list[tuple[Any, ...]]:
    """A drift event per drifted result; detected when the run ended, by the server's clock.

    The agent's time of the run, less its clock's offset from the server's as
    last measured (at its hello): events of nodes with skewed clocks then sort
    by when they really happened.
    """
    return [
        (
            report.node,
            report.id,
            r.resource_id,
            r.manifest,
            r.status._value_,
            json.dumps(r.changes),
            report.finished_at - (offsets.get(report.node) or 0.0),
            json.dumps(r.controls),
        )
        for report in fresh
        for r in report.results
        if r.drift and r.status in DRIFT
    ]


def _update_nodes(
    conn: Connection, fresh: Sequence[ReportRecord], now: float
) -> dict[str, float | None]:
    """Mark each reporting node seen, move its applied revision, and fold its newest report.

    One UPDATE per node, however many of its reports the batch holds. A
    node's newest report is the one with the highest sequence (its agent
    numbers its reports in the order its runs ended), then the latest
    finished_at (only reports of agents older than sequence numbers tie at
    0), the later one in the batch on a full tie; it is folded only if it is
    at least as new as what the node's status already reflects: an old report
    delivered late never overwrites newer status, whatever the agent's clock
    said. Returns each node's clock offset, for the drift events' times.
    """
    by_node: dict[str, list[ReportRecord]] = {}
    for report in fresh:
        by_node.setdefault(report.node, []).append(report)
    current = {
        row.name: row
        for chunk in _chunks(sorted(by_node))
        for row in conn.execute(
            sa.select(
                nodes.c.name,
                nodes.c.applied_revision,
                nodes.c.status_as_of,
                nodes.c.status_revision,
                nodes.c.status_sequence,
                nodes.c.clock_offset_s,
            )
            .where(nodes.c.name.in_(chunk))
            .with_for_update()
        )
    }
    updates: list[dict[str, Any]] = []
    folded: list[ReportRecord] = []
    for name, row in current.items():
        # As if ingested one by one, in batch order: each report is folded if it
        # is at least as new as the status so far; a folded run (not a noop
        # run) also moves the applied revision.
        newest: ReportRecord | None = None
        key: tuple[int, float] = (row.status_sequence, row.status_as_of)
        applied = int(row.applied_revision)
        for report in by_node[name]:
            if _order(report) >= key:
                newest, key = report, _order(report)
                if not report.noop:
                    applied = report.revision
        if newest is not None:
            folded.append(newest)
        updates.append(
            {
                "b_name": name,
                "b_seen": now,
                "b_applied": applied,
                "b_as_of": key[1],
                "b_status_revision": row.status_revision if newest is None else newest.revision,
                "b_status_sequence": key[0],
            }
        )
    if updates:
        conn.execute(_UPDATE_NODE, updates)
    _fold_status(conn, folded)
    return {name: row.clock_offset_s for name, row in current.items()}


def _order(report: ReportRecord) -> tuple[int, float]:
    """Which of a node's reports is newer: its sequence first, its clock only for a tie."""
    return report.sequence, report.finished_at


_UPDATE_NODE = (
    nodes.update()
    .where(nodes.c.name == sa.bindparam("b_name"))
    .values(
        last_seen=sa.bindparam("b_seen"),
        applied_revision=sa.bindparam("b_applied"),
        status_as_of=sa.bindparam("b_as_of"),
        status_revision=sa.bindparam("b_status_revision"),
        status_sequence=sa.bindparam("b_status_sequence"),
    )
)


def _fold_status(conn: Connection, folded: Sequence[ReportRecord]) -> None:
    """Make each of these reports its node's current status (one report per node)."""
    if not folded:
        return
    for chunk in _chunks([r.node for r in folded]):
        conn.execute(resource_status.delete().where(resource_status.c.node.in_(chunk)))
    # Most resources carry one of a few control lists: serialise each list once.
    controls: dict[tuple[str, ...], str] = {}
    rows = []
    for report in folded:
        for r in report.results:
            key = tuple(r.controls)
            tags = controls.get(key)
            if tags is None:
                tags = controls[key] = json.dumps(r.controls)
            rows.append(
                (
                    report.node,
                    r.resource_id,
                    r.manifest,
                    r.status._value_,
                    tags,
                    report.id,
                    report.finished_at,
                )
            )
    _insert_rows(conn, resource_status, _STATUS_COLUMNS, rows)


def _revision_row(row: Any) -> RevisionRow:
    manifests = tuple(ManifestSource(**m) for m in row.manifests)
    return RevisionRow(
        id=int(row.id),
        created_at=float(row.created_at),
        manifests=manifests,
        author=row.author,
        message=row.message or "",
        content_sha256=row.content_sha256
        or history.content_hash({m.name: m.source for m in manifests}),
        origin=row.origin or "push",
        purged=tuple(ManifestSource(**m) for m in row.purged or ()),
        audit_id=None if row.audit_id is None else int(row.audit_id),
    )


def _selected_json(selected: Selected | None) -> dict[str, list[str]] | None:
    if selected is None:
        return None
    return {"manifests": list(selected.manifests), "purged": list(selected.purged)}


def _insert_rollout(
    conn: Connection, revision: int, new: NewRollout, author: str | None, now: float
) -> None:
    result = conn.execute(
        rollouts.insert().values(
            revision=revision,
            previous_revision=new.previous_revision,
            state="running",
            settings=new.settings,
            max_failures=new.max_failures,
            kind=new.kind,
            author=author,
            created_at=now,
            updated_at=now,
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    rows = [
        {"rollout_id": int(key[0]), "node": node, "batch": number, "state": "waiting"}
        for number, batch in enumerate(new.batches)
        for node in batch
    ]
    if rows:
        conn.execute(rollout_nodes.insert(), rows)


def _rollout_row(conn: Connection, rollout_id: int) -> RolloutRow | None:
    row = conn.execute(sa.select(rollouts).where(rollouts.c.id == rollout_id)).first()
    if row is None:
        return None
    members = conn.execute(
        sa.select(rollout_nodes)
        .where(rollout_nodes.c.rollout_id == rollout_id)
        .order_by(rollout_nodes.c.batch, rollout_nodes.c.node)
    ).all()
    return RolloutRow(
        id=int(row.id),
        revision=int(row.revision),
        previous_revision=int(row.previous_revision),
        state=row.state,
        settings=dict(row.settings),
        max_failures=int(row.max_failures),
        kind=row.kind,
        author=row.author,
        created_at=row.created_at,
        updated_at=row.updated_at,
        reason=row.reason,
        nodes=tuple(
            RolloutNode(m.node, int(m.batch), m.state, m.reason, m.sent_at, m.finished_at)
            for m in members
        ),
    )
