"""The server's certificate authority (cryptography, EC P-256).

Layout under ``<data>/pki``::

    ca.key ca.crt           the CA; signs node CSRs online
    server.key server.crt   the TLS identity of both listeners (SANs from init)
    signer.key signer.crt   signs catalogs, so agents can verify cached copies

Every certificate the CA issues to a client names its role in the
organizational unit (``OU=node`` or ``OU=operator``) and its name in the
common name. The role is what keeps a node from ever being an operator,
whatever name it asked for.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from server.errors import CSRRejected

ROLE_NODE = "node"
ROLE_OPERATOR = "operator"
ROLE_SIGNER = "catalog-signer"

DAY_S = 86400
#: The CA outlives every fleet it is likely to serve: replacing it means a new
#: trust anchor on every host (README: "Rolling the CA over").
CA_TTL_S = 20 * 365 * DAY_S
SERVER_TTL_S = 825 * DAY_S
#: Nodes and operators: short-lived and renewed (server.toml's node_cert_ttl_s
#: and operator_cert_ttl_s; these are their defaults).
CLIENT_TTL_S = 90 * DAY_S
#: The catalog signer: rotated by the server once a third of this is left
#: (server/signer.py), long before agents could find it expired.
SIGNER_TTL_S = 365 * DAY_S


def renew_within(lifetime_s: float) -> float:
    """How long before expiry a certificate of that lifetime is renewed: its last third.

    A third leaves the agent (or the operator, or the server's signer
    rotation) weeks to get it done at the default lifetimes, through outages,
    and still renews rarely.
    """
    return lifetime_s / 3


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lower-case hex: what enrollment tokens pin."""
    return cert.fingerprint(hashes.SHA256()).hex()


def write_private(path: Path, data: bytes) -> None:
    """Write a secret so it is never readable by others, not even for an instant."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def replace_pair(key_path: Path, cert_path: Path, key_data: bytes, cert_data: bytes) -> None:
    """Put a new key and its certificate in place of the old pair, even across a crash.

    Two files cannot be renamed at once, and a key beside another key's
    certificate signs what nobody can verify (the catalog signer) or locks
    its holder out (an operator). So the pair is staged whole beside them
    (``*.next``, the certificate written last) and then moved in, key first;
    :func:`finish_replace` completes a move a crash interrupted.
    """
    write_private(_staged(key_path), key_data)
    write_private(_staged(cert_path), cert_data)
    finish_replace(key_path, cert_path)


def finish_replace(key_path: Path, cert_path: Path) -> None:
    """Finish moving a staged pair in, or drop one that was never staged whole."""
    staged_key, staged_cert = _staged(key_path), _staged(cert_path)
    if staged_cert.is_file():
        if staged_key.is_file():
            os.replace(staged_key, key_path)
        os.replace(staged_cert, cert_path)
        fd = os.open(cert_path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)  # the renames, durable
        finally:
            os.close(fd)
    elif staged_key.is_file():
        staged_key.unlink()


def _staged(path: Path) -> Path:
    """``signer.key`` -> ``signer.next.key``: where a replacement is staged."""
    return path.with_name(f"{path.stem}.next{path.suffix}")


def _name(common_name: str, role: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if role:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, "plumb"))
    return x509.Name(attrs)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, lifetime_s: float
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # Backdated a little so a host whose clock lags slightly still accepts it.
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(seconds=lifetime_s))
    )


def _leaf_extensions(
    builder: x509.CertificateBuilder,
    usage: x509.ObjectIdentifier,
    ca: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
) -> x509.CertificateBuilder:
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )


@dataclasses.dataclass(frozen=True)
class KeyPair:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def create_ca(common_name: str = "Plumb CA") -> KeyPair:
    key = generate_key()
    name = _name(common_name)
    cert = (
        _builder(name, name, key.public_key(), CA_TTL_S)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(key, cert)


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def issue_server(ca: KeyPair, sans: list[str]) -> KeyPair:
    key = generate_key()
    cert = (
        _leaf_extensions(
            _builder(_name(sans[0], "server"), ca.cert.subject, key.public_key(), SERVER_TTL_S),
            ExtendedKeyUsageOID.SERVER_AUTH,
            ca.cert,
            key.public_key(),
        )
        .add_extension(_san(sans), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return KeyPair(key, cert)


def issue_client(
    ca: KeyPair,
    public_key: ec.EllipticCurvePublicKey,
    name: str,
    role: str,
    lifetime_s: float = CLIENT_TTL_S,
) -> x509.Certificate:
    """A client certificate naming ``name`` with ``role`` (node, operator, catalog-signer)."""
    return _leaf_extensions(
        _builder(_name(name, role), ca.cert.subject, public_key, lifetime_s),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ca.cert,
        public_key,
    ).sign(ca.key, hashes.SHA256())


def issue_keypair(ca: KeyPair, name: str, role: str, lifetime_s: float = CLIENT_TTL_S) -> KeyPair:
    """A fresh key and its client certificate, for identities the server itself makes."""
    key = generate_key()
    return KeyPair(key, issue_client(ca, key.public_key(), name, role, lifetime_s))


def sign_node_csr(
    ca: KeyPair, csr_pem: bytes, node_name: str, lifetime_s: float = CLIENT_TTL_S
) -> x509.Certificate:
    """Check a node's CSR (well formed, self-signed, EC P-256) and sign it for ``node_name``.

    The subject is the CA's choice, never the CSR's: ``CN=node_name, OU=node``.
    """
    return issue_client(ca, csr_public_key(csr_pem), node_name, ROLE_NODE, lifetime_s)


def csr_public_key(csr_pem: bytes) -> ec.EllipticCurvePublicKey:
    """The key of a well-formed, self-signed EC P-256 CSR; CSRRejected for anything else."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CSRRejected(f"the certificate request is not valid PEM: {exc}") from exc
    if not csr.is_signature_valid:
        raise CSRRejected("the certificate request's signature does not verify")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise CSRRejected("the certificate request must carry an EC P-256 key")
    if public_key.curve.name != "secp256r1":
        raise CSRRejected(f"the certificate request's key is on {public_key.curve.name}, not P-256")
    return public_key


def sign_operator_csr(
    ca: KeyPair, csr_pem: bytes, name: str, lifetime_s: float = CLIENT_TTL_S
) -> x509.Certificate:
    """An operator certificate for ``name`` from a CSR its holder made (the key stays there).

    ``OU=operator`` whatever the CSR asked: the role (viewer, operator,
    admin) is the store's, not the certificate's (server/operators.py).
    """
    return issue_client(ca, csr_public_key(csr_pem), name, ROLE_OPERATOR, lifetime_s)


def new_signer(ca: KeyPair) -> KeyPair:
    """A catalog-signing key and its certificate (``OU=catalog-signer``)."""
    return issue_keypair(ca, "plumb-server", ROLE_SIGNER, SIGNER_TTL_S)


def serial_of(cert: x509.Certificate) -> str:
    """A certificate's serial as the store keeps it: lower-case hex."""
    return format(cert.serial_number, "x")


def sign_payload(key: ec.EllipticCurvePrivateKey, payload: bytes) -> bytes:
    return key.sign(payload, ec.ECDSA(hashes.SHA256()))


def verify_payload(cert: x509.Certificate, payload: bytes, signature: bytes) -> bool:
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    try:
        public_key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


class PKI:
    """The CA and the server's own key pairs, as stored under ``<data>/pki``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        return self.directory / name

    def exists(self) -> bool:
        return self.path("ca.crt").exists()

    def create(self, sans: list[str]) -> None:
        ca = create_ca()
        self.save("ca", ca)
        self.save("server", issue_server(ca, sans))
        self.save("signer", new_signer(ca))

    def save(self, stem: str, pair: KeyPair) -> None:
        write_private(self.path(f"{stem}.key"), key_pem(pair.key))
        write_private(self.path(f"{stem}.crt"), cert_pem(pair.cert))

    def replace(self, stem: str, pair: KeyPair) -> None:
        """Make ``pair`` the ``stem``'s in place of the one there, even across a crash."""
        replace_pair(
            self.path(f"{stem}.key"),
            self.path(f"{stem}.crt"),
            key_pem(pair.key),
            cert_pem(pair.cert),
        )

    def load(self, stem: str) -> KeyPair:
        finish_replace(self.path(f"{stem}.key"), self.path(f"{stem}.crt"))
        key = serialization.load_pem_private_key(self.path(f"{stem}.key").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return KeyPair(key, x509.load_pem_x509_certificate(self.path(f"{stem}.crt").read_bytes()))
