"""The node's certificate, renewed by the agent over its own session before it expires.

The server's Welcome says how long before expiry to renew (the last third of
a node certificate's lifetime: 30 days at the default 90). Once the
certificate is that close, the daemon's session makes a new key, keeps it
beside the old one (``node.next.key``) and sends a CSR (``RenewRequest``). The
answer, a certificate the agent checks (our CA's, for the new key), is moved
in with the key as one pair (``StateDir.replace_identity``); the session then
ends itself and the daemon opens the next with the new certificate, which
makes the server retire the old one (server/renewal.py).

Until then nothing is lost whatever fails: the old certificate stays good on
the server and on disk. A failed renewal is said loudly and retried — an
error in the agent's log, the node condition ``certificate_renewal`` (shown
by ``plumb nodes``) saying why and when the certificate expires, and another
try after RETRY_S (at once on the next session). Only a certificate that
actually expires locks the node out of its server; its cached catalog is
still enforced (agent/tls.py), and ``plumb node reenroll`` brings it back.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from agent.conditions import CERTIFICATE_RENEWAL, Conditions
from agent.errors import RenewalFailed
from agent.state import StateDir
from agent.tls import certificate_request, issued_certificate, private_pem
from protos import plumb_pb2 as pb

log = logging.getLogger("plumb.agent")

#: After a failed renewal, the next try on the same session waits this long.
RETRY_S = 600.0


def _utc(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


class CertificateRenewal:
    """When to renew, the renewal under way, and the condition a failure holds."""

    def __init__(self, state: StateDir, node: str, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.node = node
        self.clock = clock
        self.conditions = Conditions()
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._retry_at = 0.0  # monotonic
        #: This host's clock minus the server's, at the last welcome.
        self._offset_s = 0.0

    def expires_at(self) -> datetime.datetime:
        cert = x509.load_pem_x509_certificate(self.state.cert.read_bytes())
        return cert.not_valid_after_utc

    def new_session(self, offset_s: float) -> None:
        """A session opened, its welcome saying this host's clock is ``offset_s`` ahead of the
        server's. A renewal that failed on the last one may be tried at once."""
        self._retry_at = 0.0
        self._offset_s = offset_s

    def due(self, renew_within_s: float) -> bool:
        """Whether to ask now: the server renews, the certificate is that close, no retry wait."""
        if renew_within_s <= 0 or time.monotonic() < self._retry_at:
            return False
        try:
            expires = self.expires_at().timestamp()
        except (OSError, ValueError) as exc:  # the session just opened with it: a fluke
            self.failed(f"cannot read {self.state.cert}: {exc}")
            return False
        # By the server's clock, which is the one that will refuse the
        # certificate: a host whose clock is months ahead would otherwise
        # renew again and again, every new certificate looking old to it.
        return expires - (self.clock() - self._offset_s) < renew_within_s

    def expired_note(self) -> str | None:
        """What to tell the operator once the certificate has expired (None: it has not).

        An expired certificate cannot renew itself: the server refuses it at
        the handshake, before any message could say why.
        """
        try:
            expires = self.expires_at()
        except (OSError, ValueError):
            return None
        if expires.timestamp() > self.clock():
            return None
        return (
            f"this node's certificate expired at {_utc(expires)}, so the server refuses it; "
            "the cached catalog is still enforced. Enroll the node again: an admin runs "
            f"'plumb node reenroll {self.node}', then this host 'plumb-agent enroll --replace' "
            "with that token"
        )

    def request(self) -> pb.RenewRequest:
        """A CSR for a new key, which is kept (in memory) until the answer comes."""
        self._key = ec.generate_private_key(ec.SECP256R1())
        log.info("renewing this node's certificate (it expires at %s)", _utc(self.expires_at()))
        return pb.RenewRequest(csr_pem=certificate_request(self._key, self.node))

    def accept(self, renewed: pb.Renewed) -> bool:
        """Install the renewed certificate; True once it is the node's (reconnect with it).

        A refusal or a certificate that does not check out is a failure:
        logged, held as a condition, tried again later. Never raises.
        """
        try:
            self._install(renewed)
        except RenewalFailed as exc:
            self.failed(str(exc))
            return False
        self._retry_at = 0.0
        self.conditions.clear(CERTIFICATE_RENEWAL)
        return True

    def _install(self, renewed: pb.Renewed) -> None:
        key, self._key = self._key, None
        if renewed.error:
            raise RenewalFailed(f"the server refused: {renewed.error}")
        if key is None:
            raise RenewalFailed("an answer came to a renewal this agent did not ask for")
        cert = issued_certificate(renewed.certificate_pem, self.state.ca.read_bytes(), key)
        if isinstance(cert, str):
            raise RenewalFailed(f"the server's answer is unusable: {cert}")
        try:
            self.state.replace_identity(private_pem(key), renewed.certificate_pem)
        except OSError as exc:
            raise RenewalFailed(
                f"cannot save the new certificate in {self.state.path}: {exc}"
            ) from exc
        log.info(
            "this node's certificate was renewed: serial %x, valid until %s",
            cert.serial_number,
            _utc(cert.not_valid_after_utc),
        )

    def failed(self, why: str) -> None:
        self._retry_at = time.monotonic() + RETRY_S
        try:
            expiry = f"the certificate expires at {_utc(self.expires_at())} and "
        except (OSError, ValueError):
            expiry = "the certificate "
        detail = f"{expiry}could not be renewed: {why}; the agent tries again"
        log.error("certificate renewal failed: %s", detail)
        self.conditions.hold(CERTIFICATE_RENEWAL, detail)
