"""The audit log in a real store (SQLite): appended, chained, and every tampering found.

Tampering is done as an attacker with the store file would do it: sqlite3 on
the file, behind the Store's back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from protos import plumb_pb2 as pb
from server import audit
from server.audit import GENESIS, Actor, Entry, Record
from server.store import ManifestSource, Store

T0 = 1_800_000_000.0
ALICE = Actor.operator("alice", "admin")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "plumb.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    store = Store.create(f"sqlite:///{db}")
    yield store
    store.close()


def entry(action: str = "CreateToken", **details: object) -> Entry:
    return Entry(ALICE, "10.0.0.5:53211", action, details or {"token": "0a1b2c3d"})


def fill(store: Store, count: int) -> list[Record]:
    return [store.audit(entry(token=f"{i:08x}"), T0 + i) for i in range(count)]


def sql(db: Path, statement: str, *params: object) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.execute(statement, params)
        conn.commit()
    finally:
        conn.close()


def test_entries_are_numbered_and_each_holds_the_hash_of_the_one_before(store: Store) -> None:
    first, second, third = fill(store, 3)
    assert [first.id, second.id, third.id] == [1, 2, 3]
    assert first.prev_hash == GENESIS
    assert second.prev_hash == first.hash and third.prev_hash == second.hash
    # The hash is SHA-256 over the canonical form, which any tool can recompute.
    form = json.loads(second.canonical_form())
    assert form == {
        "id": 2,
        "at": T0 + 1,
        "actor_kind": "operator",
        "actor": "alice",
        "role": "admin",
        "peer": "10.0.0.5:53211",
        "action": "CreateToken",
        "details": '{"token":"00000001"}',
        "result": "ok",
        "reason": "",
        "revision": None,
        "prev_hash": first.hash,
    }
    assert second.hash == hashlib.sha256(second.canonical_form()).hexdigest()
    assert store.audit_entries() == ([first, second, third], False)
    check = store.verify_audit()
    assert (check.intact, check.entries, check.head_id, check.head_hash) == (
        True,
        3,
        3,
        third.hash,
    )


def test_an_empty_log_is_intact(store: Store) -> None:
    check = store.verify_audit()
    assert (check.intact, check.entries, check.head_id) == (True, 0, 0)


def test_listing_takes_the_newest_since_a_time_oldest_first(store: Store) -> None:
    records = fill(store, 6)
    assert store.audit_entries(limit=2) == (records[4:], True)
    assert store.audit_entries(since=T0 + 3) == (records[3:], False)
    assert store.audit_entries(since=T0 + 3, limit=2) == (records[4:], True)


def test_a_push_entry_is_written_onto_its_revision(store: Store) -> None:
    revision = store.add_revision([ManifestSource("web", "web.yaml", "name: web\n")], T0)
    fill(store, 1)
    pushed = store.audit(dataclasses.replace(entry("Push"), revision=revision), T0 + 5)
    assert store.revision_audit_id(revision) == pushed.id == 2
    assert pushed.revision == revision


def test_concurrent_appends_make_one_unbroken_chain(store: Store) -> None:
    def append(worker: int) -> None:
        for i in range(10):
            store.audit(entry(token=f"{worker}-{i}"), T0 + i)

    threads = [threading.Thread(target=append, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records, _ = store.audit_entries(limit=100)
    assert [r.id for r in records] == list(range(1, 41))
    assert store.verify_audit().intact


# ------------------------------------------------------------ tampering, found


def test_an_edited_entry_breaks_the_chain_there(store: Store, db: Path) -> None:
    fill(store, 5)
    sql(db, "UPDATE audit_log SET actor = 'mallory' WHERE id = 3")
    check = store.verify_audit()
    assert (check.intact, check.broken_at) == (False, 3)
    assert check.problem == ("entry 3 was changed after it was written: its hash does not match it")


def test_an_edited_entry_with_its_hash_recomputed_breaks_it_at_the_next(
    store: Store, db: Path
) -> None:
    records = fill(store, 5)
    forged = dataclasses.replace(records[2], details='{"token":"ffffffff"}')
    forged = dataclasses.replace(forged, hash=audit.digest(forged))
    sql(db, "UPDATE audit_log SET details = ?, hash = ? WHERE id = 3", forged.details, forged.hash)
    check = store.verify_audit()
    assert (check.intact, check.broken_at) == (False, 4)
    assert "entry 4 does not follow entry 3: its prev_hash is not entry 3's hash" in str(
        check.problem
    )


def test_a_deleted_entry_is_named(store: Store, db: Path) -> None:
    fill(store, 5)
    sql(db, "DELETE FROM audit_log WHERE id = 2")
    check = store.verify_audit()
    assert (check.intact, check.broken_at) == (False, 2)
    assert check.problem == "entry 2 is missing before entry 3 (deleted?)"


def test_the_first_entry_deleted_is_found_too(store: Store, db: Path) -> None:
    fill(store, 3)
    sql(db, "DELETE FROM audit_log WHERE id = 1")
    check = store.verify_audit()
    assert (check.broken_at, check.problem) == (1, "entry 1 is missing before entry 2 (deleted?)")


def test_entries_cut_off_the_end_are_found_by_the_head(store: Store, db: Path) -> None:
    fill(store, 5)
    sql(db, "DELETE FROM audit_log WHERE id >= 4")
    check = store.verify_audit()
    assert (check.intact, check.broken_at) == (False, 4)
    assert check.problem == (
        "entries 4-5 are missing from the end of the log (deleted?): the log's head is entry 5"
    )


def test_after_a_break_appends_go_on_but_the_break_stays_found(store: Store, db: Path) -> None:
    fill(store, 3)
    sql(db, "UPDATE audit_log SET result = 'refused' WHERE id = 2")
    fill(store, 2)
    assert store.verify_audit().broken_at == 2


# ------------------------------------------------------------ what is recorded, and what never


def test_a_push_records_its_files_by_hash_never_their_content() -> None:
    secret = "password: hunter2-very-secret\n"
    request = pb.PushRequest(files=[pb.ManifestFile(path="db.yaml", content=secret)])
    reply = pb.PushResponse(revision=7, targeted_nodes=["db-1", "db-2"])
    summary = audit.push(request, reply)
    assert summary.details == {
        "files": [
            {
                "path": "db.yaml",
                "bytes": len(secret),
                "sha256": hashlib.sha256(secret.encode()).hexdigest(),
            }
        ],
        "message": None,
        "revision": 7,
        "unchanged": False,
        "targeted": 2,
    }
    assert (summary.refused, summary.revision) == (None, 7)
    assert "hunter2" not in json.dumps(summary.details)


def test_a_refused_push_says_where_never_the_message() -> None:
    request = pb.PushRequest(files=[pb.ManifestFile(path="db.yaml", content="x")])
    error = pb.ManifestError(file="db.yaml", line=3, field="spec.mode", message="got 'hunter2'")
    summary = audit.push(request, pb.PushResponse(errors=[error, error]))
    assert summary.refused == "2 manifest error(s), the first at db.yaml:3 (spec.mode)"
    assert summary.revision is None


def test_a_token_is_recorded_by_its_id_never_the_token() -> None:
    token = "plumb1.0a1b2c3d." + "s" * 32 + "." + "f" * 64
    reply = pb.CreateTokenResponse(token=token, id="0a1b2c3d", expires_at=T0, uses=1)
    summary = audit.create_token(pb.CreateTokenRequest(names=["db-2"]), reply)
    assert summary.details["token"] == "0a1b2c3d"
    assert "s" * 32 not in json.dumps(summary.details)


def test_an_operator_is_recorded_without_its_csr() -> None:
    request = pb.AddOperatorRequest(name="bob", role="viewer", csr_pem=b"-----BEGIN...")
    reply = pb.AddOperatorResponse(operator=pb.OperatorInfo(name="bob", cert_serial="5f"))
    summary = audit.add_operator(request, reply)
    assert summary.details == {"operator": "bob", "role": "viewer", "cert_serial": "5f"}


def test_long_requests_are_summarised_not_copied() -> None:
    request = pb.CreateTokenRequest(names=[f"web-{i}" for i in range(1000)])
    names = audit.create_token(request, None).details["names"]
    assert len(names) == audit.MAX_ITEMS + 1 and names[-1] == "... (980 more)"
    assert audit.request_fields(pb.GetReportRequest(node_name="x" * 5000))["node_name"] == (
        "x" * audit.MAX_TEXT + "... (5000 characters)"
    )


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:5123", "127.0.0.1:5123"),
        ("ipv6:[::1]:5123", "[::1]:5123"),
        ("ipv6:%5B::1%5D:5123", "[::1]:5123"),
        ("local", "local"),
    ],
)
def test_peers_are_recorded_as_address_and_port(peer: str, address: str) -> None:
    assert audit.peer_address(peer) == address
