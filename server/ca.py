"""Rolling the CA over: a new CA trusted alongside the old one during an overlap.

The CA lives 20 years (server/pki.py), but a CA key thought exposed, or a
policy, may want a new one sooner. Replacing it at once would cut every node
off: agents trust only the CA they pinned at enrollment. So the change goes
in three steps, each a ``plumb-server ca`` command run on the server host
with the server stopped, then a restart:

``begin``
    makes the next CA (``ca-next.key``, ``ca-next.crt``). Nothing is issued
    by it yet; the server trusts it beside the current one and hands both to
    every agent in its welcome (agents keep them as their ``ca.crt``), to
    every new node at enrollment and to operators in ``plumb operator
    renew``. Wait until every node has connected once (``plumb-server ca
    status`` counts them).
``switch``
    makes the next CA the issuing one: a new server certificate and a new
    catalog signer, both from it. The old CA's certificate stays trusted
    (``ca-previous.crt``; its key is gone), so every node still connects
    with the certificate it has, and is told in the welcome to renew it at
    once: its next certificate comes from the new CA. Operators run ``plumb
    operator renew``.
``finish``
    stops trusting the old CA. Refused while a node not removed still has a
    certificate from it (``--force`` overrides: such nodes must re-enroll).

Each node's certificate issuer (the issuing CA's key identifier) is kept in
the store (``nodes.cert_issuer``) from enrollment and renewal on, which is
what ``status`` and ``finish`` count.
"""

from __future__ import annotations

import dataclasses
import os

from cryptography import x509

from server.errors import PlumbServerError
from server.pki import PKI, cert_pem, create_ca, issue_server, key_pem, new_signer, write_private

NEXT = "ca-next"
PREVIOUS = "ca-previous"


def key_id(cert: x509.Certificate) -> str:
    """A CA's subject key identifier, hex: what the certificates it issued name as their issuer."""
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()


def issuer_id(cert: x509.Certificate) -> str:
    """The key identifier of the CA that issued ``cert``; empty if it does not say."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return ""
    return aki.key_identifier.hex() if aki.key_identifier else ""


@dataclasses.dataclass(frozen=True)
class Trust:
    """The issuing CA, and the other one trusted during a rollover (if any)."""

    issuing: x509.Certificate
    next: x509.Certificate | None = None
    previous: x509.Certificate | None = None

    @property
    def phase(self) -> str:
        return "begun" if self.next else "switched" if self.previous else "none"

    @property
    def certificates(self) -> list[x509.Certificate]:
        return [c for c in (self.issuing, self.next, self.previous) if c is not None]

    @property
    def bundle(self) -> bytes:
        """Every CA certificate trusted now, PEM, the issuing one first."""
        return b"".join(cert_pem(c) for c in self.certificates)


def trust(pki: PKI) -> Trust:
    def optional(name: str) -> x509.Certificate | None:
        path = pki.path(name)
        return x509.load_pem_x509_certificate(path.read_bytes()) if path.exists() else None

    issuing = pki.load("ca").cert
    return Trust(issuing, optional(f"{NEXT}.crt"), optional(f"{PREVIOUS}.crt"))


def begin(pki: PKI) -> x509.Certificate:
    """Make the next CA; refused while a rollover is under way."""
    current = trust(pki)
    if current.phase != "none":
        raise PlumbServerError(
            f"a CA rollover is under way already ({current.phase}): "
            f"'plumb-server ca {'switch' if current.phase == 'begun' else 'finish'}' is next"
        )
    pair = create_ca()
    # The certificate last: a crash before it leaves no next CA, only a key to overwrite.
    write_private(pki.path(f"{NEXT}.key"), key_pem(pair.key))
    write_private(pki.path(f"{NEXT}.crt"), cert_pem(pair.cert))
    return pair.cert


def switch(pki: PKI) -> x509.Certificate:
    """Make the next CA the issuing one; the old one stays trusted. The new issuing CA."""
    if trust(pki).phase != "begun":
        raise PlumbServerError("no CA rollover has begun: 'plumb-server ca begin' first")
    old, new = pki.load("ca"), pki.load(NEXT)
    # In an order a crash can be resumed from (resume_switch, at every start):
    # the old CA kept as trusted first, then the new one made the issuing one.
    write_private(pki.path(f"{PREVIOUS}.crt"), cert_pem(old.cert))
    pki.replace("ca", new)
    resume_switch(pki)
    return new.cert


def resume_switch(pki: PKI) -> None:
    """Finish a switch a crash interrupted; nothing to do otherwise.

    The next CA already issuing is dropped as "next"; a server certificate or
    a catalog signer not from the issuing CA is issued anew from it.
    """
    ca = pki.load("ca")
    if pki.path(f"{NEXT}.crt").exists():
        staged = x509.load_pem_x509_certificate(pki.path(f"{NEXT}.crt").read_bytes())
        if staged == ca.cert:
            for suffix in (".key", ".crt"):
                pki.path(f"{NEXT}{suffix}").unlink(missing_ok=True)
    issuing = key_id(ca.cert)
    server = pki.load("server")
    if issuer_id(server.cert) != issuing:
        sans = server.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in sans]
        pki.replace("server", issue_server(ca, names))
    if issuer_id(pki.load("signer").cert) != issuing:
        pki.replace("signer", new_signer(ca))


def finish(pki: PKI) -> x509.Certificate:
    """Stop trusting the previous CA; its certificate (now gone from the trust)."""
    current = trust(pki)
    if current.previous is None:
        raise PlumbServerError(
            "no CA rollover to finish: 'plumb-server ca begin', then 'switch', come first"
        )
    os.unlink(pki.path(f"{PREVIOUS}.crt"))
    return current.previous
