"""The store's word on node and operator certificates, cached, and the roles of Admin methods
(server/auth.py): pure, no network, no store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
import pytest

from protos import plumb_pb2 as pb
from server.auth import (
    ADMIN_RULES,
    Credentials,
    Identity,
    NodeCredentials,
    PeerCert,
    operator_refusal_for,
    peer_from_pem,
    refusal_for,
)
from server.operators import Role
from server.pki import ROLE_NODE, ROLE_OPERATOR, cert_pem, create_ca, issue_keypair
from server.store import NodeCredential, OperatorCredential

NOW = 1_800_000_000.0
PEER = PeerCert(Identity(ROLE_NODE, "web-1"), serial="5f3a", not_after=NOW + 3600)


class Loads:
    """A store stand-in: node -> credential, counting reads."""

    def __init__(self, credentials: dict[str, NodeCredential] | None = None) -> None:
        self.credentials = dict(credentials or {})
        self.reads = 0
        self.during_read: list[Callable[[], None]] = []  # run inside the next read

    def __call__(self, name: str) -> NodeCredential | None:
        self.reads += 1
        found = self.credentials.get(name)
        while self.during_read:
            self.during_read.pop()()  # a commit racing the read
        return found


def test_a_credential_is_read_once_then_served_from_memory() -> None:
    loads = Loads({"web-1": NodeCredential("5f3a")})
    credentials = NodeCredentials(loads)
    for _ in range(5):
        assert credentials.get("web-1") == NodeCredential("5f3a")
    assert loads.reads == 1


def test_a_change_of_the_node_is_seen_at_the_next_call() -> None:
    loads = Loads({"web-1": NodeCredential("5f3a")})
    credentials = NodeCredentials(loads)
    assert credentials.get("web-1") == NodeCredential("5f3a")
    loads.credentials["web-1"] = NodeCredential("5f3a", revoked_at=NOW)
    assert credentials.get("web-1") == NodeCredential("5f3a")  # nobody said it changed
    credentials.changed("web-1")
    assert credentials.get("web-1") == NodeCredential("5f3a", revoked_at=NOW)
    assert loads.reads == 2


def test_a_change_of_another_node_keeps_this_one_cached() -> None:
    loads = Loads({"web-1": NodeCredential("5f3a"), "web-2": NodeCredential("0b0b")})
    credentials = NodeCredentials(loads)
    credentials.get("web-1")
    credentials.changed("web-2")
    credentials.get("web-1")
    assert loads.reads == 1


def test_unknown_nodes_are_cached_too_until_one_enrolls() -> None:
    loads = Loads()
    credentials = NodeCredentials(loads)
    assert credentials.get("ghost") is None
    assert credentials.get("ghost") is None
    assert loads.reads == 1
    loads.credentials["ghost"] = NodeCredential("77")
    credentials.changed("ghost")
    assert credentials.get("ghost") == NodeCredential("77")


def test_a_read_that_raced_a_change_is_answered_but_not_kept() -> None:
    """The read began before the change was committed: what it found may be stale."""
    loads = Loads({"web-1": NodeCredential("5f3a")})
    credentials = NodeCredentials(loads)

    def commit_revocation() -> None:
        loads.credentials["web-1"] = NodeCredential("5f3a", revoked_at=NOW)
        credentials.changed("web-1")

    loads.during_read.append(commit_revocation)
    assert credentials.get("web-1") == NodeCredential("5f3a")  # read before the commit
    assert credentials.get("web-1") == NodeCredential("5f3a", revoked_at=NOW)
    assert loads.reads == 2


def test_listeners_hear_of_a_change_after_the_cache_forgot_it() -> None:
    loads = Loads({"web-1": NodeCredential("5f3a")})
    credentials = NodeCredentials(loads)
    credentials.get("web-1")
    heard: list[tuple[str, NodeCredential | None]] = []
    credentials.subscribe(lambda name: heard.append((name, credentials.get(name))))
    loads.credentials["web-1"] = NodeCredential("9999")
    credentials.changed("web-1")
    assert heard == [("web-1", NodeCredential("9999"))]


def test_the_cache_is_bounded() -> None:
    loads = Loads()
    credentials = NodeCredentials(loads, max_entries=2)
    for name in ("a", "b", "a", "c"):  # "a" used again: "b" is the oldest
        credentials.get(name)
    assert loads.reads == 3
    credentials.get("a")
    assert loads.reads == 3
    credentials.get("b")
    assert loads.reads == 4


def test_refusal_on_the_event_loop_reads_through_once() -> None:
    loads = Loads({"web-1": NodeCredential("5f3a")})
    credentials = NodeCredentials(loads, clock=lambda: NOW)

    async def twice() -> list[object]:
        return [await credentials.refusal(PEER), await credentials.refusal(PEER)]

    assert asyncio.run(twice()) == [None, None]
    assert loads.reads == 1


def test_node_credentials_check_other_certificates_for_expiry_only() -> None:
    """Operators are OperatorCredentials' (below): a node's cache never reads them."""
    loads = Loads()
    credentials = NodeCredentials(loads, clock=lambda: NOW)
    operator = PeerCert(Identity(ROLE_OPERATOR, "operator"), "1", not_after=NOW + 1)
    assert asyncio.run(credentials.refusal(operator)) is None
    late = PeerCert(Identity(ROLE_OPERATOR, "operator"), "1", not_after=NOW)
    refusal = asyncio.run(credentials.refusal(late))
    assert refusal is not None and refusal.code == grpc.StatusCode.UNAUTHENTICATED
    assert loads.reads == 0


# ------------------------------------------------------------ what is refused, and how


@pytest.mark.parametrize(
    ("credential", "now", "code", "message"),
    [
        (NodeCredential("5f3a"), NOW, None, None),
        (None, NOW, grpc.StatusCode.PERMISSION_DENIED, "node 'web-1' is not enrolled"),
        (
            NodeCredential("0b0b"),
            NOW,
            grpc.StatusCode.UNAUTHENTICATED,
            "certificate serial 5f3a is not node web-1's current one "
            "(revoked, replaced or renewed): re-enroll the node",
        ),
        (
            NodeCredential("5f3a", revoked_at=NOW - 60),
            NOW,
            grpc.StatusCode.UNAUTHENTICATED,
            "the certificate of node web-1 (serial 5f3a) was revoked at 2027-01-15 07:59:00 UTC: "
            "re-enroll the node",
        ),
        (
            NodeCredential("5f3a", revoked_at=NOW - 60, decommissioned_at=NOW - 60),
            NOW,
            grpc.StatusCode.UNAUTHENTICATED,
            "node web-1 was removed (plumb node rm) at 2027-01-15 07:59:00 UTC: enroll it "
            "again with a new token to bring it back",
        ),
        (
            NodeCredential("5f3a"),
            NOW + 3600,
            grpc.StatusCode.UNAUTHENTICATED,
            "the certificate of node 'web-1' (serial 5f3a) expired at 2027-01-15 09:00:00 UTC: "
            "enroll it again: an admin runs 'plumb node reenroll web-1' and the node "
            "'plumb-agent enroll --replace' with that token",
        ),
    ],
)
def test_refusals_say_what_to_do(
    credential: NodeCredential | None,
    now: float,
    code: grpc.StatusCode | None,
    message: str | None,
) -> None:
    refusal = refusal_for(PEER, credential, now)
    assert (refusal and refusal.code, refusal and refusal.message) == (code, message)


def test_the_serial_is_read_as_the_store_keeps_it() -> None:
    pair = issue_keypair(create_ca(), "web-1", ROLE_NODE)
    peer = peer_from_pem(cert_pem(pair.cert))
    assert peer is not None
    assert peer.identity == Identity(ROLE_NODE, "web-1")
    # As server/enrollment.py stores it: format(serial, "x").
    assert peer.serial == format(pair.cert.serial_number, "x")
    assert peer.not_after == pair.cert.not_valid_after_utc.timestamp()
    # 90 days, renewed in their last third (server/renewal.py).
    assert time.time() + 89 * 86400 < peer.not_after <= time.time() + 90 * 86400


# ------------------------------------------------------------ roles of the Admin methods


ADMIN_METHODS = pb.DESCRIPTOR.services_by_name["Admin"].methods


def test_every_admin_method_declares_the_role_it_needs() -> None:
    """A new RPC without a rule is refused to everyone at run time; this says so at once."""
    declared = set(ADMIN_RULES)
    methods = {m.name for m in ADMIN_METHODS}
    assert methods - declared == set(), "Admin methods without a role in server/auth.py"
    assert declared - methods == set(), "rules in server/auth.py for no Admin method"


def test_every_admin_method_is_unary_so_each_call_s_outcome_is_recorded() -> None:
    streaming = [m.name for m in ADMIN_METHODS if m.client_streaming or m.server_streaming]
    assert streaming == []


def test_every_method_beyond_a_viewer_s_is_recorded_in_the_audit_log() -> None:
    """What needs more than a viewer changes something: each call gets an entry.

    (A change a viewer may make, renewing its own certificate say, names a
    summary too; reads name none and are recorded only when refused.)
    """
    for method, rule in ADMIN_RULES.items():
        if rule.role != Role.VIEWER:
            assert rule.summary is not None, method
    assert {m for m, r in ADMIN_RULES.items() if r.summary is None} == {
        "DiffRevisions",
        "GetCompliance",
        "GetReport",
        "GetRollout",
        "ListAudit",
        "ListRuns",
        "ListDrift",
        "ListManifests",
        "ListNodes",
        "ListOperators",
        "ListRevisions",
        "ListTokens",
        "ListWaivers",
        "VerifyAudit",
    }


def test_the_roles_as_the_readme_says() -> None:
    by_role = {role: sorted(m for m, r in ADMIN_RULES.items() if r.role == role) for role in Role}
    assert by_role == {
        Role.VIEWER: [
            "DiffRevisions",
            "GetCompliance",
            "GetReport",
            "GetRollout",
            "ListAudit",
            "ListDrift",
            "ListManifests",
            "ListNodes",
            "ListOperators",
            "ListRevisions",
            "ListRuns",
            "ListTokens",
            "ListWaivers",
            "RenewOperator",
            "VerifyAudit",
        ],
        Role.OPERATOR: ["Plan", "Push", "RemoveManifest", "Rollback", "SetLabels", "SteerRollout"],
        Role.ADMIN: [
            "AddOperator",
            "AddWaiver",
            "CreateToken",
            "ReenrollNode",
            "RemoveNode",
            "RevokeNode",
            "RevokeOperator",
            "RevokeToken",
            "RevokeWaiver",
        ],
    }


ALICE = PeerCert(Identity(ROLE_OPERATOR, "alice"), serial="5f3a", not_after=NOW + 3600)


@pytest.mark.parametrize(
    ("credential", "needed", "now", "code", "message"),
    [
        (OperatorCredential("viewer", "5f3a"), Role.VIEWER, NOW, None, None),
        (OperatorCredential("admin", "5f3a"), Role.OPERATOR, NOW, None, None),
        (
            OperatorCredential("viewer", "5f3a"),
            Role.OPERATOR,
            NOW,
            grpc.StatusCode.PERMISSION_DENIED,
            "operator 'alice' (viewer) may not Push: needs the operator role",
        ),
        (
            OperatorCredential("operator", "5f3a"),
            Role.ADMIN,
            NOW,
            grpc.StatusCode.PERMISSION_DENIED,
            "operator 'alice' (operator) may not Push: needs the admin role",
        ),
        (
            OperatorCredential("root", "5f3a"),  # not a role (a store edited by hand)
            Role.VIEWER,
            NOW,
            grpc.StatusCode.PERMISSION_DENIED,
            "operator 'alice' (root) may not Push: needs the viewer role",
        ),
        (
            None,
            Role.VIEWER,
            NOW,
            grpc.StatusCode.PERMISSION_DENIED,
            "operator 'alice' is not known to this server: an admin adds operators "
            "('plumb operator add', or 'plumb-server operator add' on the server host)",
        ),
        (
            OperatorCredential("admin", "0b0b"),
            Role.VIEWER,
            NOW,
            grpc.StatusCode.UNAUTHENTICATED,
            "certificate serial 5f3a is not operator alice's current one (revoked, replaced "
            "or renewed): use the config of its latest 'operator add' or 'operator renew'",
        ),
        (
            OperatorCredential("admin", "5f3a", revoked_at=NOW - 60),
            Role.VIEWER,
            NOW,
            grpc.StatusCode.UNAUTHENTICATED,
            "operator alice was revoked at 2027-01-15 07:59:00 UTC: an admin can add it "
            "again, with a new certificate",
        ),
        (
            OperatorCredential("admin", "5f3a"),
            Role.VIEWER,
            NOW + 3600,
            grpc.StatusCode.UNAUTHENTICATED,
            "the certificate of operator 'alice' (serial 5f3a) expired at 2027-01-15 09:00:00 "
            "UTC: an admin adds this operator again ('plumb operator add', or "
            "'plumb-server operator add' on the server host)",
        ),
    ],
)
def test_operator_refusals_say_why(
    credential: OperatorCredential | None,
    needed: Role,
    now: float,
    code: grpc.StatusCode | None,
    message: str | None,
) -> None:
    refusal = operator_refusal_for(ALICE, credential, "Push", needed, now)
    assert (refusal and refusal.code, refusal and refusal.message) == (code, message)


def test_an_entry_older_than_max_age_is_read_again() -> None:
    """For changes the store cannot tell of: plumb-server operator, another process."""
    loads = Loads({"alice": NodeCredential("5f3a")})
    clock = [100.0]
    credentials: Credentials[NodeCredential] = Credentials(
        loads, max_age_s=1.0, monotonic=lambda: clock[0]
    )
    credentials.get("alice")
    clock[0] += 0.9
    credentials.get("alice")
    assert loads.reads == 1
    loads.credentials["alice"] = NodeCredential("5f3a", revoked_at=NOW)
    clock[0] += 0.1
    assert credentials.get("alice") == NodeCredential("5f3a", revoked_at=NOW)
    assert loads.reads == 2
