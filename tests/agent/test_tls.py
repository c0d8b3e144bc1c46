"""The agent applies only catalogs signed by its CA's catalog signer, for itself."""

from __future__ import annotations

import pytest

from agent.errors import CatalogRejected
from agent.tls import verify_catalog
from modules.catalog import Catalog, CatalogResource
from protos import plumb_pb2 as pb
from server.pki import (
    ROLE_NODE,
    ROLE_SIGNER,
    KeyPair,
    cert_pem,
    create_ca,
    issue_keypair,
    sign_payload,
)

CA = create_ca()
SIGNER = issue_keypair(CA, "plumb-server", ROLE_SIGNER)
CATALOG = Catalog(
    node="web-1",
    revision=7,
    resources=(CatalogResource(kind="file", name="motd", spec={"path": "/etc/motd"}),),
)


def _signed(payload: bytes, signer: KeyPair = SIGNER, revision: int = 7) -> pb.SignedCatalog:
    return pb.SignedCatalog(
        revision=revision,
        payload=payload,
        signature=sign_payload(signer.key, payload),
        signer_pem=cert_pem(signer.cert),
    )


def test_valid_catalog_verifies() -> None:
    assert verify_catalog(_signed(CATALOG.to_json()), cert_pem(CA.cert), "web-1") == CATALOG


def test_tampered_payload_is_rejected() -> None:
    signed = _signed(CATALOG.to_json())
    signed.payload = signed.payload.replace(b"/etc/motd", b"/etc/shdw")
    with pytest.raises(CatalogRejected, match="signature does not verify"):
        verify_catalog(signed, cert_pem(CA.cert), "web-1")


def test_signer_from_another_ca_is_rejected() -> None:
    rogue = issue_keypair(create_ca("Rogue"), "plumb-server", ROLE_SIGNER)
    with pytest.raises(CatalogRejected, match="not certified by our CA"):
        verify_catalog(_signed(CATALOG.to_json(), rogue), cert_pem(CA.cert), "web-1")


def test_a_node_certificate_may_not_sign_catalogs() -> None:
    node = issue_keypair(CA, "web-2", ROLE_NODE)
    with pytest.raises(CatalogRejected, match="may not sign catalogs"):
        verify_catalog(_signed(CATALOG.to_json(), node), cert_pem(CA.cert), "web-1")


def test_another_nodes_catalog_is_rejected() -> None:
    with pytest.raises(CatalogRejected, match="not this node 'web-2'"):
        verify_catalog(_signed(CATALOG.to_json()), cert_pem(CA.cert), "web-2")


def test_revision_mismatch_is_rejected() -> None:
    with pytest.raises(CatalogRejected, match="revision 7"):
        verify_catalog(_signed(CATALOG.to_json(), revision=8), cert_pem(CA.cert), "web-1")
