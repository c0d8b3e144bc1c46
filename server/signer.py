"""The catalog-signing key, rotated by the server long before it expires.

Agents verify every catalog against the signer certificate it carries
(``SignedCatalog.signer_pem``): issued by their CA, ``OU=catalog-signer``,
valid when it arrives. Any signer the CA certified is as good as another, so
old and new are both accepted during a rotation without a list of either:
catalogs already on their way were signed by the old one, still valid then,
and a cached catalog is enforced whatever its signer's dates say by now
(agent/tls.py). What must not happen is a signer that expires while it is in
use: every agent would then refuse every new catalog. So once less than a
third of its lifetime is left (about four months, at SIGNER_TTL_S), the
server makes a new key and certificate, stores them in place of the old
(``PKI.replace``, safe across a crash) and signs with them from then on. It
looks at start and every ROTATE_CHECK_S; each rotation goes to the audit log
as the server's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from cryptography import x509

from server import audit
from server.audit import Actor, Auditor
from server.auth import utc
from server.fleet import Fleet
from server.pki import PKI, KeyPair, new_signer, renew_within, serial_of

log = logging.getLogger("plumb.server")

#: How often a running server looks at its signer's remaining lifetime.
ROTATE_CHECK_S = 3600.0


def rotation_due(cert: x509.Certificate, now: float) -> bool:
    """Whether ``cert`` is in the last third of its lifetime (or past it)."""
    not_before = cert.not_valid_before_utc.timestamp()
    not_after = cert.not_valid_after_utc.timestamp()
    return not_after - now < renew_within(not_after - not_before)


class SignerRotation:
    def __init__(
        self,
        pki: PKI,
        ca: KeyPair,
        fleet: Fleet,
        auditor: Auditor | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pki = pki
        self.ca = ca
        self.fleet = fleet
        self.auditor = auditor
        self.clock = clock

    def rotate_if_due(self) -> KeyPair | None:
        """Rotate the signer if it is due (a commit and a key made: call from a thread)."""
        old = self.fleet.signer
        if not rotation_due(old.cert, self.clock()):
            return None
        new = new_signer(self.ca)
        self.pki.replace("signer", new)
        self.fleet.use_signer(new)
        details = {
            "replaced_serial": serial_of(old.cert),
            "replaced_not_after": utc(old.cert.not_valid_after_utc.timestamp()),
            "cert_serial": serial_of(new.cert),
            "not_after": utc(new.cert.not_valid_after_utc.timestamp()),
        }
        log.info(
            "catalog signer rotated: %s (until %s) replaces %s (until %s)",
            details["cert_serial"],
            details["not_after"],
            details["replaced_serial"],
            details["replaced_not_after"],
        )
        if self.auditor is not None:
            self.auditor.record(Actor.server(), audit.LOCAL, "RotateSigner", details)
        return new

    async def keep_rotating(self) -> None:
        """Look every ROTATE_CHECK_S, for as long as the server runs (cancel to stop)."""
        while True:
            await asyncio.sleep(ROTATE_CHECK_S)
            try:
                await asyncio.to_thread(self.rotate_if_due)
            except Exception:  # the next look tries again; the old signer is still valid
                log.exception("could not rotate the catalog signer")
