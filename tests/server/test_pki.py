from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from server.auth import Identity, identity_from_pem
from server.errors import CSRRejected
from server.pki import (
    PKI,
    ROLE_NODE,
    ROLE_OPERATOR,
    cert_pem,
    create_ca,
    issue_keypair,
    key_pem,
    new_signer,
    sign_node_csr,
    write_private,
)
from server.signer import rotation_due
from server.tokens import hash_secret, new, parse

CA = create_ca()


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, cn: str = "asked") -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_node_certificate_names_the_node_whatever_the_csr_asked() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = sign_node_csr(CA, _csr(key, cn="operator"), "web-1")
    cert.verify_directly_issued_by(CA.cert)
    assert identity_from_pem(cert_pem(cert)) == Identity(role=ROLE_NODE, name="web-1")
    assert cert.public_key() == key.public_key()


def test_operator_identity() -> None:
    operator = issue_keypair(CA, "operator", ROLE_OPERATOR)
    assert identity_from_pem(cert_pem(operator.cert)) == Identity(ROLE_OPERATOR, "operator")


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        (b"not a csr", "not valid PEM"),
        (_csr(rsa.generate_private_key(65537, 2048)), "EC P-256"),
        (_csr(ec.generate_private_key(ec.SECP384R1())), "secp384r1, not P-256"),
    ],
)
def test_unusable_csr_is_rejected(csr: bytes, message: str) -> None:
    with pytest.raises(CSRRejected, match=message):
        sign_node_csr(CA, csr, "web-1")


def test_token_round_trip_and_hash() -> None:
    token = new("ab" * 32)
    assert parse(str(token)) == token
    assert token.secret_sha256 == hash_secret(token.secret) != token.secret
    assert parse(str(token).replace("plumb1", "plumb2")) is None
    assert parse(str(token)[:-1]) is None


def test_a_replaced_pair_is_loaded_whole_even_after_a_crash_mid_move(tmp_path: Path) -> None:
    pki = PKI(tmp_path / "pki")
    old, new = new_signer(CA), new_signer(CA)
    pki.save("signer", old)
    # Staged whole and the key moved in, then a crash: the certificate follows at load.
    pki.save("signer.next", new)
    os.replace(pki.path("signer.next.key"), pki.path("signer.key"))
    loaded = pki.load("signer")
    assert loaded.cert.serial_number == new.cert.serial_number
    assert loaded.key.public_key() == loaded.cert.public_key()
    assert not pki.path("signer.next.crt").exists()
    # Only the key staged, then a crash: the old pair stands.
    pki.replace("signer", old)
    write_private(pki.path("signer.next.key"), key_pem(new.key))
    assert pki.load("signer").cert.serial_number == old.cert.serial_number
    assert not pki.path("signer.next.key").exists()


@pytest.mark.parametrize(("left_days", "due"), [(200, False), (122, False), (121, True), (0, True)])
def test_a_signer_is_rotated_in_the_last_third_of_its_life(left_days: int, due: bool) -> None:
    cert = new_signer(CA).cert  # 365 days (and the 5 minutes it is backdated)
    now = cert.not_valid_after_utc.timestamp() - left_days * 86400
    assert rotation_due(cert, now) is due
