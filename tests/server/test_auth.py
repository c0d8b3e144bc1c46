"""The store's word on node certificates, cached (server/auth.py): pure, no network, no store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
import pytest

from server.auth import (
    Identity,
    NodeCredentials,
    PeerCert,
    peer_from_pem,
    refusal_for,
)
from server.pki import ROLE_NODE, ROLE_OPERATOR, cert_pem, create_ca, issue_keypair
from server.store import NodeCredential

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


def test_operators_are_checked_for_expiry_only() -> None:
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
            "certificate serial 5f3a is not node web-1's current one (revoked or replaced): "
            "re-enroll the node",
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
            "renew it, or enroll again",
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
    assert peer.not_after > time.time() + 300 * 86400
