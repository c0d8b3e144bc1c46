"""Node certificates renewed over the agent's own session.

A node certificate lives ``node_cert_ttl_s`` (server.toml; 90 days by
default). The Welcome tells the agent to renew once less than a third of that
is left; the agent then makes a new key and sends a CSR on its live session
(``RenewRequest``). The session's certificate is what proves who asks: the
new certificate names the session's node whatever the CSR says, and only a
node whose current certificate the session was opened with (not revoked, not
removed) gets one.

The store then knows two good certificates for the node: the current one and
the renewed one (``nodes.next_cert_serial``). The first session opened with the
renewed one makes it the only one (:meth:`NodeRenewals.in_use`): the old
certificate is refused from then on, and a session still open with it is ended
at once (the store's change reaches the hub). Until then nothing is lost if the
agent never got the answer, or crashed before saving it: it still holds the old
certificate, and asks again.

Each renewal, and each old certificate retired by its use, goes to the audit
log as the node that asked, from its address.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from protos import plumb_pb2 as pb
from server import audit
from server.audit import Actor, Auditor
from server.auth import NodeCredentials, PeerCert, utc
from server.ca import key_id
from server.errors import CSRRejected
from server.pki import CLIENT_TTL_S, KeyPair, cert_pem, renew_within, serial_of, sign_node_csr
from server.store import Store

log = logging.getLogger("plumb.server")


class NodeRenewals:
    def __init__(
        self,
        store: Store,
        ca: KeyPair,
        cert_ttl_s: float = CLIENT_TTL_S,
        auditor: Auditor | None = None,
        credentials: NodeCredentials | None = None,
    ) -> None:
        """``credentials``: the cached word of the store on each node (None: ask the store
        at every session)."""
        self.store = store
        self.credentials = credentials
        self.ca = ca
        self.cert_ttl_s = cert_ttl_s
        self.auditor = auditor
        self._issuing = key_id(ca.cert)

    def renew_within_s(self, peer: PeerCert) -> float:
        """What the Welcome says: renew once less than this is left.

        At once (infinity) for a certificate another CA issued than the one
        issuing now: the old CA of a rollover (server/ca.py), trusted only
        until the rollover finishes.
        """
        if peer.issuer and peer.issuer != self._issuing:
            return math.inf
        return renew_within(self.cert_ttl_s)

    async def renew(self, peer: PeerCert, csr_pem: bytes, source: str) -> pb.Renewed:
        """A renewed certificate for the session's node, or why not (never an exception)."""
        return await asyncio.to_thread(self._renew, peer, csr_pem, source)

    def _renew(self, peer: PeerCert, csr_pem: bytes, source: str) -> pb.Renewed:
        name = peer.identity.name
        details: dict[str, Any] = {"node": name, "replaces_serial": peer.serial}
        try:
            cert = sign_node_csr(self.ca, csr_pem, name, self.cert_ttl_s)
        except CSRRejected as exc:
            return self._refused(name, source, details, f"renewal refused: {exc}")
        serial = serial_of(cert)
        if not self.store.offer_certificate(name, peer.serial, serial):
            why = (
                f"renewal refused: certificate serial {peer.serial} is no longer node "
                f"{name}'s (revoked, removed or re-enrolled meanwhile)"
            )
            return self._refused(name, source, details, why)
        not_after = cert.not_valid_after_utc.timestamp()
        details.update(cert_serial=serial, not_after=utc(not_after))
        log.info("node %s renewed its certificate: %s until %s", name, serial, utc(not_after))
        self._record(name, source, "RenewCertificate", details, audit.OK, "")
        return pb.Renewed(certificate_pem=cert_pem(cert))

    def _refused(self, name: str, source: str, details: dict[str, Any], why: str) -> pb.Renewed:
        log.warning("node %s: %s", name, why)
        self._record(name, source, "RenewCertificate", details, audit.REFUSED, why)
        return pb.Renewed(error=why)

    async def in_use(self, peer: PeerCert, source: str) -> None:
        """A session opened with ``peer``: if that is a renewed certificate, retire the old one."""
        name = peer.identity.name
        if self.credentials is not None:
            # Most sessions: the certificate in use is the node's, its issuer
            # recorded; nothing to write, and the cache says so without a read.
            known = await self.credentials.lookup(name)
            if known is not None and known.serial == peer.serial and known.issuer == peer.issuer:
                return
        retired = await asyncio.to_thread(
            self.store.certificate_in_use, name, peer.serial, peer.not_after, peer.issuer
        )
        if retired is None:
            return
        log.info("node %s uses its renewed certificate %s: %s retired", name, peer.serial, retired)
        details = {"node": name, "cert_serial": peer.serial, "revoked_serial": retired}
        await asyncio.to_thread(
            self._record, name, source, "RetireCertificate", details, audit.OK, ""
        )

    def _record(
        self, name: str, source: str, action: str, details: dict[str, Any], result: str, why: str
    ) -> None:
        if self.auditor is not None:
            self.auditor.record(Actor.node(name), source, action, details, result, why)
