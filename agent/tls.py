"""Certificates on the agent: pinning the CA, channel credentials, catalog signatures."""

from __future__ import annotations

import datetime
import functools
import logging
import socket
import ssl

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.errors import CatalogNotValidNow, CatalogRejected, EnrollError
from agent.state import StateDir
from modules.catalog import Catalog
from protos import plumb_pb2 as pb
from protos.limits import MAX_MESSAGE_BYTES

log = logging.getLogger("plumb.agent")

SIGNER_ROLE = "catalog-signer"

# Keepalives find a dead server (or a dead NAT entry) within 20 s instead of
# waiting for TCP to give up; the server pings as often (server.app).
CHANNEL_OPTIONS = [
    # Above every message's own bound (protos/limits.py), not gRPC's 4 MiB.
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise EnrollError(f"server address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def fetch_pinned_ca(address: str, fingerprint: str, timeout: float = 10.0) -> bytes:
    """The CA certificate (PEM) that ``address`` presents, if its SHA-256 is ``fingerprint``.

    The chain is read without verification on purpose: nothing from it is
    trusted unless it matches the fingerprint the operator gave us in the
    token, so a server in the middle cannot substitute its own CA.
    """
    host, port = split_address(address)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            chain = _unverified_chain(tls)
    except OSError as exc:
        raise EnrollError(f"cannot reach {address}: {exc}") from exc
    for der in chain:
        cert = x509.load_der_x509_certificate(der)
        if cert.fingerprint(hashes.SHA256()).hex() == fingerprint:
            return cert.public_bytes(serialization.Encoding.PEM)
    raise EnrollError(
        f"no certificate presented by {address} matches the CA fingerprint in "
        "the token; refusing to trust this server (wrong server, or a token "
        "from another Plumb installation?)"
    )


def _unverified_chain(tls: ssl.SSLSocket) -> list[bytes]:
    # Public from Python 3.13; the same method on the internal object before.
    getter = getattr(tls, "get_unverified_chain", None)
    if getter is not None:
        return list(getter())
    internal = tls._sslobj  # type: ignore[attr-defined]
    return [
        c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
        for c in internal.get_unverified_chain()
    ]


def certificate_request(key: ec.EllipticCurvePrivateKey, node: str) -> bytes:
    """A CSR for ``node``'s key (the server decides the certificate's subject)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def trusted_cas(ca_pem: bytes) -> list[x509.Certificate]:
    """The CA certificates in ``ca.crt``: one, or two during a CA rollover (server/ca.py)."""
    return x509.load_pem_x509_certificates(ca_pem)


def issued_by_one_of(cert: x509.Certificate, ca_pem: bytes) -> None:
    """Return if one of the CAs in ``ca_pem`` issued ``cert``; raise ValueError (why) if none."""
    why = "no CA certificate"
    for ca in trusted_cas(ca_pem):
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as exc:
            why = str(exc) or type(exc).__name__
        else:
            return
    raise ValueError(why)


def usable_trust(bundle: bytes) -> str | None:
    """Why ``bundle`` cannot be this node's trust (None: it can): CA certificates only."""
    try:
        cas = trusted_cas(bundle)
    except ValueError as exc:
        return f"not PEM certificates: {exc}"
    for ca in cas:
        try:
            is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            return f"{ca.subject.rfc4514_string()} is not a CA certificate"
    return None


def issued_certificate(
    cert_pem: bytes, ca_pem: bytes, key: ec.EllipticCurvePrivateKey
) -> x509.Certificate | str:
    """The certificate in ``cert_pem`` if our CA issued it for ``key``; else why not."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        issued_by_one_of(cert, ca_pem)
    except ValueError as exc:
        return f"the certificate does not verify against this node's CA: {exc}"
    if cert.public_key() != key.public_key():
        return "the certificate is for another key"
    return cert


def channel_credentials(state: StateDir) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        state.ca.read_bytes(), state.key.read_bytes(), state.cert.read_bytes()
    )


def secure_channel(state: StateDir, address: str) -> grpc.Channel:
    return grpc.secure_channel(address, channel_credentials(state), options=CHANNEL_OPTIONS)


def verify_catalog(
    signed: pb.SignedCatalog, ca_pem: bytes, node: str, *, check_time: bool = True
) -> Catalog:
    """The catalog inside ``signed``, only if our CA's signer signed it, for this node.

    ``check_time=False`` (the cached copy) skips the signer's validity period:
    the catalog was verified, time included, when it arrived, and keeping on
    enforcing it must not depend on this host's clock being right (a clock a
    day behind would otherwise stop all repair). It is said in the log.
    """
    signer = _certified_signer(ca_pem, signed.signer_pem)
    if check_time:
        _check_validity(signer)
    elif not _valid_now(signer):
        _warn_clock_once(signer)
    key = signer.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    try:
        key.verify(signed.signature, signed.payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise CatalogRejected("catalog signature does not verify") from None
    try:
        catalog = Catalog.from_json(signed.payload)
    except (ValueError, KeyError, TypeError) as exc:  # signed, yet not a catalog we can read
        raise CatalogRejected(f"catalog payload is not a catalog: {exc!r}") from exc
    if catalog.node != node or catalog.revision != signed.revision:
        raise CatalogRejected(
            f"catalog is for node {catalog.node!r} revision "
            f"{catalog.revision}, not this node {node!r}"
        )
    return catalog


@functools.lru_cache(maxsize=8)
def _certified_signer(ca_pem: bytes, signer_pem: bytes) -> x509.Certificate:
    """The signer certificate, once it is known to be our CA's catalog signer.

    Cached by the exact bytes of both certificates: the server's signer rarely
    changes, and checking its chain is most of a verification's cost. Only
    successes are cached (a rejection raises); validity in time is checked on
    every use, by the caller.
    """
    try:
        signer = x509.load_pem_x509_certificate(signer_pem)
        issued_by_one_of(signer, ca_pem)
    except ValueError as exc:
        raise CatalogRejected(f"catalog signer is not certified by our CA: {exc}") from exc
    role = signer.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if [a.value for a in role] != [SIGNER_ROLE]:
        raise CatalogRejected("catalog was signed by a certificate that may not sign catalogs")
    return signer


def _valid_now(signer: x509.Certificate) -> bool:
    now = datetime.datetime.now(datetime.UTC)
    return bool(signer.not_valid_before_utc <= now <= signer.not_valid_after_utc)


def _check_validity(signer: x509.Certificate) -> None:
    if not _valid_now(signer):
        raise CatalogNotValidNow(
            f"catalog signer certificate is not valid now (valid from "
            f"{signer.not_valid_before_utc:%Y-%m-%d %H:%M} to "
            f"{signer.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)"
        )


@functools.cache
def _warn_clock_once(signer: x509.Certificate) -> None:
    log.warning(
        "the cached catalog's signer certificate is not valid by this host's clock "
        "(valid %s to %s, now %s): enforcing the catalog anyway, as it verified when it "
        "arrived; if this host's clock is wrong, fix it (NTP)",
        signer.not_valid_before_utc.isoformat(),
        signer.not_valid_after_utc.isoformat(),
        datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
