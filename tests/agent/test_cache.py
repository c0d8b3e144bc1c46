"""A cached catalog that does not parse or verify is set aside, never applied, never fatal."""

from __future__ import annotations

import datetime
import logging
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from agent.cache import CatalogCache
from agent.errors import CatalogNotValidNow, CatalogRejected
from agent.losses import CACHED_CATALOG, LossLog
from agent.state import KEEP_SET_ASIDE, StateDir
from modules.catalog import Catalog, CatalogResource
from protos import plumb_pb2 as pb
from server.pki import (
    ROLE_SIGNER,
    KeyPair,
    cert_pem,
    create_ca,
    generate_key,
    issue_keypair,
    sign_payload,
)

CA = create_ca()
SIGNER = issue_keypair(CA, "plumb-server", ROLE_SIGNER)


def catalog(node: str = "web-1", revision: int = 3) -> Catalog:
    resource = CatalogResource(kind="file", name="motd", spec={"path": "/etc/motd"})
    return Catalog(node=node, revision=revision, resources=(resource,))


def signed(cat: Catalog, signer: KeyPair = SIGNER) -> pb.SignedCatalog:
    payload = cat.to_json()
    return pb.SignedCatalog(
        revision=cat.revision,
        payload=payload,
        signature=sign_payload(signer.key, payload),
        signer_pem=cert_pem(signer.cert),
    )


def expired_signer() -> KeyPair:
    """Our CA's catalog signer, whose certificate ended yesterday."""
    key = generate_key()
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "plumb-server"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ROLE_SIGNER),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(CA.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(now - datetime.timedelta(days=1))
        .sign(CA.key, hashes.SHA256())
    )
    return KeyPair(key, cert)


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    state = StateDir(tmp_path / "state")
    state.ensure()
    state.ca.write_bytes(cert_pem(CA.cert))
    return state


def rejected(state: StateDir) -> list[Path]:
    return sorted(state.path.glob("catalog.pb.rejected-*"))


GOOD = signed(catalog()).SerializeToString()
BAD = {
    "garbage": b"\xff\xfe this is not a protobuf message \x00" * 50,
    "truncated": GOOD[: len(GOOD) // 2],
    "empty": b"",
    "another node's": signed(catalog(node="web-2")).SerializeToString(),
    "signed by another CA": signed(
        catalog(), issue_keypair(create_ca("Rogue"), "plumb-server", ROLE_SIGNER)
    ).SerializeToString(),
    "tampered": GOOD.replace(b"/etc/motd", b"/etc/shdw"),
}


@pytest.mark.parametrize("damage", BAD)
def test_a_bad_cached_catalog_is_set_aside_logged_once_and_noted_as_lost(
    state: StateDir, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    state.catalog.write_bytes(BAD[damage])
    cache = CatalogCache(state, "web-1")
    with caplog.at_level(logging.ERROR, "plumb.agent"):
        assert cache.load() is None
        assert cache.revision() == 0  # so the hello asks the server for a fresh one
        assert cache.load() is None
    assert not state.catalog.exists()
    [aside] = rejected(state)
    assert aside.read_bytes() == BAD[damage]  # kept, as it was, for inspection
    assert stat.S_IMODE(aside.stat().st_mode) == 0o600
    [line] = [r.getMessage() for r in caplog.records]  # once, naming the reason and the copy
    assert "rejected" in line and aside.name in line
    [loss] = LossLog(state).pending()
    assert (loss.what, loss.count) == (CACHED_CATALOG, 1)
    assert aside.name in loss.detail


def test_a_fresh_catalog_after_a_rejection_is_cached_and_loaded(state: StateDir) -> None:
    state.catalog.write_bytes(BAD["garbage"])
    cache = CatalogCache(state, "web-1")
    assert cache.load() is None
    assert cache.accept(signed(catalog(revision=4))) == catalog(revision=4)
    assert cache.load() == catalog(revision=4)
    assert len(rejected(state)) == 1


def test_a_good_cached_catalog_is_loaded_and_left_in_place(state: StateDir) -> None:
    state.catalog.write_bytes(GOOD)
    cache = CatalogCache(state, "web-1")
    assert cache.load() == catalog()
    assert cache.revision() == 3
    assert state.catalog.read_bytes() == GOOD and rejected(state) == []
    assert LossLog(state).pending() == []


def test_a_catalog_refused_from_the_server_is_never_cached(state: StateDir) -> None:
    state.catalog.write_bytes(GOOD)
    with pytest.raises(CatalogRejected, match="not this node"):
        CatalogCache(state, "web-1").accept(signed(catalog(node="web-2")))
    assert state.catalog.read_bytes() == GOOD


def test_a_cached_catalog_is_enforced_whatever_the_clock_says(
    state: StateDir, caplog: pytest.LogCaptureFixture
) -> None:
    """It verified, time included, when it arrived: a wrong clock must not stop its repairs."""
    old = signed(catalog(), expired_signer()).SerializeToString()
    state.catalog.write_bytes(old)
    cache = CatalogCache(state, "web-1")
    with caplog.at_level(logging.WARNING, "plumb.agent"):
        loaded = cache.load()
        assert loaded is not None and loaded.revision == 3
        assert cache.revision() == 3
    assert state.catalog.read_bytes() == old and rejected(state) == []
    [line] = [r.getMessage() for r in caplog.records]  # once
    assert "not valid by this host's clock" in line and "enforcing the catalog anyway" in line
    assert LossLog(state).pending() == []


def test_a_new_catalog_from_a_signer_outside_its_validity_is_refused(state: StateDir) -> None:
    with pytest.raises(CatalogNotValidNow, match="not valid now"):
        CatalogCache(state, "web-1").accept(signed(catalog(), expired_signer()))
    assert not state.catalog.exists()


def test_status_reads_only(state: StateDir) -> None:
    state.catalog.write_bytes(BAD["garbage"])
    cache = CatalogCache(state, "web-1")
    status = cache.status()
    assert status.revision == 0
    assert status.problem is not None and "does not parse" in status.problem
    assert state.catalog.read_bytes() == BAD["garbage"]  # the daemon sets it aside, not status
    cache.load()
    after = cache.status()
    assert after.problem is not None and after.problem.startswith("the cached one was rejected")
    assert rejected(state)[0].name in after.problem


def test_only_the_newest_rejected_copies_are_kept(state: StateDir) -> None:
    cache = CatalogCache(state, "web-1")
    for i in range(KEEP_SET_ASIDE + 3):
        state.catalog.write_bytes(b"garbage %d" % i)
        assert cache.load() is None
    copies = rejected(state)
    assert len(copies) == KEEP_SET_ASIDE
    kept = sorted(p.read_bytes() for p in copies)
    assert kept == sorted(b"garbage %d" % i for i in range(3, KEEP_SET_ASIDE + 3))


def test_an_older_catalog_is_refused_as_a_replay_and_the_newer_kept(state: StateDir) -> None:
    cache = CatalogCache(state, "web-1")
    cache.accept(signed(catalog(revision=7)))
    with pytest.raises(CatalogRejected, match="revision 3 is older than revision 7"):
        cache.accept(signed(catalog(revision=3)))  # signed by our own signer: a replay
    assert cache.load() == catalog(revision=7)
    assert cache.accept(signed(catalog(revision=7))) == catalog(revision=7)  # sent again: fine
    assert cache.accept(signed(catalog(revision=8))) == catalog(revision=8)
